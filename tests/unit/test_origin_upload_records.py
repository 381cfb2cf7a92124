"""The upload records in the catalogue's database (SQLite here: two :class:`UploadRecords` on one
file stand for two origin hosts): the lease and its fence, on a fake clock; and ``[[origin.hosts]]``
in cluster.toml (several origin daemons from one ``[origin]`` table, refused on SQLite)."""

from __future__ import annotations

import pytest

from headwater.clock import FakeClock
from headwater.config import ConfigError, loads
from headwater.origin.catalogue import CatalogueConfig, open_catalogue
from headwater.origin.upload.records import LeaseLost, UploadRecords
from headwater.origin.upload.tus import UploadState

UID = "0" * 31 + "1"


def state(**kw) -> UploadState:
    base = dict(id=UID, owner="creator-app", length=100, metadata="", created=0.0, expires=3600.0,
                store_upload_id="mp", key=f"uploads/{UID}")
    return UploadState(**{**base, **kw})


@pytest.fixture
def hosts(tmp_path):
    clock = FakeClock(start=1000.0)
    config = CatalogueConfig(backend="sqlite", path=tmp_path / "catalogue.sqlite3")
    cats = [open_catalogue(config, clock=clock) for _ in range(2)]
    yield clock, [UploadRecords(c, clock=clock, lease_s=30.0) for c in cats]
    for c in cats:
        c.close()


def test_one_holder_at_a_time_and_a_lapsed_holder_can_write_nothing(hosts):
    clock, (a, b) = hosts
    a.insert(state())
    fence_a, st = a.acquire(UID, "a")
    assert st == state()
    assert b.acquire(UID, "b") is None  # held
    a.put(state(spooled=10, segments=(("incomplete/x/0.1", 10),)), fence=fence_a)
    assert b.get(UID).offset == 10  # the other host reads what the holder wrote
    clock.advance(29)
    a.renew(UID, fence_a)  # pushed on: still A's 29 s later
    clock.advance(29)
    assert b.acquire(UID, "b") is None
    clock.advance(31)  # A stalled: its lease lapsed
    fence_b, st = b.acquire(UID, "b")
    assert fence_b > fence_a and st.offset == 10
    with pytest.raises(LeaseLost) as e:
        a.put(state(spooled=20), fence=fence_a)
    assert e.value.http_status == 409 and e.value.code == "upload_locked"
    with pytest.raises(LeaseLost):
        a.renew(UID, fence_a)
    with pytest.raises(LeaseLost):
        a.delete(UID, fence=fence_a)
    a.release(UID, fence_a)  # a stale release frees nothing
    assert a.acquire(UID, "a") is None
    assert b.get(UID).offset == 10
    b.put(state(spooled=20), fence=fence_b, release=True)  # the last write gives the lease back
    fence_a2, st = a.acquire(UID, "a")
    assert fence_a2 > fence_b and st.offset == 20


def test_what_the_janitor_and_the_bounds_read(hosts):
    clock, (a, b) = hosts
    a.insert(state())
    a.insert(state(id="0" * 31 + "2", expires=900.0))
    a.insert(state(id="0" * 31 + "3", completed=500.0))
    a.insert(state(id="0" * 31 + "4", owner="other-app"))
    assert b.open_count("creator-app") == 2 and b.open_count("other-app") == 1
    assert [s.id for s in b.expired(clock.time())] == ["0" * 31 + "2"]
    assert [s.id for s in b.completed_before(600.0)] == ["0" * 31 + "3"]
    assert len(b.unfinished()) == 3 and b.count() == 4
    assert b.acquire("f" * 32, "b") is None  # no such upload


HOSTS = '''[[origin.hosts]]
id = "origin-a"
port = 22001
admin_port = 22002

[[origin.hosts]]
id = "origin-b"
host = "127.0.0.2"
port = 22003
admin_port = 22004
data_dir = "/srv/origin-b"
'''
PG = '[origin.catalogue]\nbackend = "postgresql"\ndsn = "host=db"\n'


def test_several_hosts_from_one_origin_table():
    cfg = loads(f'[origin]\ntls = false\nport = 8443\npart_size = "8MiB"\n{PG}{HOSTS}', path="cluster.toml")
    a, b = cfg.origin.hosts
    assert [d.id for d in cfg.daemons()] == ["origin-a", "origin-b"] and cfg.daemon("origin-b") is b
    assert (a.host, a.port, a.admin_port, a.part_size) == ("127.0.0.1", 22001, 22002, 8 * 1024 * 1024)
    assert (b.host, b.port, str(b.data_dir)) == ("127.0.0.2", 22003, "/srv/origin-b")
    assert a.data_dir.name == "origin-a"
    # One iss for every host: the table's URL.
    assert a.issuer == b.issuer == "http://127.0.0.1:8443"
    assert a.catalogue_config.dsn == b.catalogue_config.dsn == "host=db"
    single = loads("[origin]\ntls = false\n", path="cluster.toml")
    assert [d.id for d in single.daemons()] == ["origin"]


def test_several_hosts_on_sqlite_are_refused_naming_the_key_and_line():
    with pytest.raises(ConfigError, match=r"cluster\.toml:9: origin\.hosts\[1\]: .*postgresql"):
        loads(f"[origin]\ntls = false\n\n{HOSTS}", path="cluster.toml")
    with pytest.raises(ConfigError, match=r"cluster\.toml:4: origin\.catalogue\.backend"):
        loads(f'[origin]\ntls = false\n[origin.catalogue]\nbackend = "sqlite"\n{HOSTS}', path="cluster.toml")
    one = HOSTS.split("\n\n")[0] + "\n"
    assert loads(f"[origin]\ntls = false\n{one}", path="cluster.toml").origin.hosts[0].id == "origin-a"
    with pytest.raises(ConfigError, match=r"origin\.hosts\[0\]\.tls"):
        loads(f"[origin]\ntls = false\n{PG}{one}tls = true\n", path="cluster.toml")
    with pytest.raises(ConfigError, match="used twice"):
        loads(f"[origin]\ntls = false\n{PG}{HOSTS.replace('origin-b', 'origin-a')}", path="cluster.toml")
