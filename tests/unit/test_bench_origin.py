"""The origin bench's text work: the store's and the origin's tables of cluster.toml, keys set
in a table, and the summary of py-spy's collapsed stacks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from headwater.bench.origin import origin_sections, postgres_origin_sections, set_key, split_tables, \
    summarise_collapsed

REPO_CONFIG = Path(__file__).resolve().parents[2] / "cluster.toml"

TEXT = """\
# a comment before any table
[cluster]
name = "x"

[gateway]
port = 9000

[gateway.limits]
max_header_size = "64KiB"

[[storage]]
id = "st1"
port = 9100

[origin]
port = 8090
admin_port = 9090
part_size = "5MiB"

[origin.oauth]
audience = "a"

[[origin.clients]]
id = "creator-app"

[transcoder]
admin_port = 9098
"""


def test_split_tables_keeps_whole_tables_and_their_subtables() -> None:
    store = tomllib.loads(split_tables(TEXT, ("cluster", "gateway", "storage")))
    assert set(store) == {"cluster", "gateway", "storage"}
    assert store["gateway"]["limits"]["max_header_size"] == "64KiB"
    assert store["storage"] == [{"id": "st1", "port": 9100}]
    origin = tomllib.loads(split_tables(TEXT, ("origin",)))
    assert set(origin) == {"origin"} and origin["origin"]["oauth"]["audience"] == "a"
    assert origin["origin"]["clients"] == [{"id": "creator-app"}]


def test_set_key_replaces_in_its_table_only_or_adds_after_the_header() -> None:
    text = set_key(TEXT, "origin", "part_size", '"8MiB"')
    text = set_key(text, "origin", "max_upload_size", '"1GiB"')
    text = set_key(text, "gateway", "port", "19000")
    doc = tomllib.loads(text)
    assert doc["origin"]["part_size"] == "8MiB" and doc["origin"]["max_upload_size"] == "1GiB"
    assert doc["gateway"]["port"] == 19000 and doc["storage"][0]["port"] == 9100
    assert "max_upload_size" not in doc["origin"]["oauth"]
    with pytest.raises(ValueError):
        set_key(TEXT, "licence", "port", "1")


def test_origin_sections_move_every_port_and_set_the_part_size() -> None:
    ports = iter(range(30000, 30100))
    doc = tomllib.loads(origin_sections(TEXT, ports, part_size=8 << 20, max_upload=256 << 20))
    assert (doc["origin"]["port"], doc["origin"]["admin_port"], doc["transcoder"]["admin_port"]) == \
        (30000, 30001, 30002)
    assert doc["origin"]["part_size"] == 8 << 20 and doc["origin"]["max_upload_size"] == 256 << 20
    assert "gateway" not in doc and "cluster" not in doc


def test_the_repository_cluster_toml_splits_into_a_store_and_an_origin() -> None:
    text = REPO_CONFIG.read_text()
    store = tomllib.loads(split_tables(text, ("cluster", "objstore", "users", "gateway", "metadata", "storage")))
    assert "dns" not in store and "edge" not in store and store["gateway"]["port"] == 9000
    ports = iter(range(31000, 31100))
    origin = tomllib.loads(origin_sections(text, ports, part_size=1 << 20, max_upload=1 << 20))
    assert set(origin) == {"licence", "origin", "transcoder"}
    assert all(v >= 31000 for t in origin.values() for k, v in t.items() if k.endswith("port"))


def test_the_second_origin_on_postgresql_has_its_own_folder_bucket_and_database() -> None:
    ports = iter(range(31000, 31100))
    body = origin_sections(REPO_CONFIG.read_text(), ports, part_size=1 << 20, max_upload=1 << 20)
    pg = tomllib.loads(postgres_origin_sections(body, dsn="host=127.0.0.1 port=5 dbname=origin",
                                                data_dir=Path("/tmp/x/origin-pg"), bucket="uploads-pg"))
    origin = pg["origin"]
    assert (origin["data_dir"], origin["uploads_bucket"]) == ("/tmp/x/origin-pg", "uploads-pg")
    assert origin["catalogue"]["backend"] == "postgresql" and origin["catalogue"]["dsn"].endswith("dbname=origin")
    bare = tomllib.loads(postgres_origin_sections("[origin]\nport = 1\n", dsn="d", data_dir=Path("/o"), bucket="b"))
    assert bare["origin"]["catalogue"] == {"backend": "postgresql", "dsn": "d"}


def test_summarise_collapsed_by_running_frame_and_by_own_function_once_per_stack() -> None:
    text = ("main (headwater/cli.py:1);loop (origin/app.py:5);fsync (os.py:9) 6\n"
            "main (headwater/cli.py:1);loop (origin/app.py:6);loop (origin/app.py:7);send (origin/s3.py:3) 4\n"
            "garbage line\n")
    samples, running, own = summarise_collapsed(text)
    assert samples == 10
    assert running == [("fsync (os.py:9)", 0.6), ("send (origin/s3.py:3)", 0.4)]
    assert dict(own) == {"loop (origin/app.py)": 1.0, "send (origin/s3.py)": 0.4}
    assert summarise_collapsed("") == (0, [], [])


def test_step_timer_keeps_an_inner_step_out_of_the_outer_and_restores() -> None:
    import time as _time
    import types

    from headwater.bench.origin import StepTimer

    ns = types.SimpleNamespace()
    ns.inner = lambda: _time.sleep(0.05)
    ns.outer = lambda: (_time.sleep(0.02), ns.inner())
    original_outer = ns.outer
    with StepTimer() as t:
        t.wrap(ns, "inner", "in")
        t.wrap(ns, "outer", "out")
        t0 = _time.perf_counter()
        ns.outer()
        wall = _time.perf_counter() - t0
    # The inner sleep counts for "in" only: "out" keeps its own 0.02 s, and the two add up to the call.
    assert t.seconds["in"] >= 0.05 and t.seconds["out"] >= 0.02
    assert t.seconds["out"] <= wall - t.seconds["in"] and t.seconds["in"] + t.seconds["out"] <= wall
    assert ns.outer is original_outer


def test_step_timer_counts_other_threads_and_shadowed_calls_beside_the_critical_path() -> None:
    import threading
    import time as _time
    import types

    from headwater.bench.origin import StepTimer

    ns = types.SimpleNamespace()
    ns.beat = lambda seconds: _time.sleep(seconds)
    ns.key = lambda: _time.sleep(0.04)
    ns.pack = lambda: (_time.sleep(0.02), ns.beat(0.03))

    def encode() -> None:  # the ladder: a heartbeat inside it, the key on another thread meanwhile
        side = threading.Thread(target=ns.key)
        side.start()
        _time.sleep(0.02)
        ns.beat(0.3)
        side.join()

    ns.encode = encode
    with StepTimer() as t:
        t.wrap(ns, "beat", "catalogue")
        t.wrap(ns, "key", "title key")
        t.wrap(ns, "pack", "packaging")
        t.wrap(ns, "encode", "ladder", shadows=True)
        ns.encode()
        ns.pack()
    # The heartbeat inside the ladder and the key on the side thread are overlapped, and the
    # ladder keeps all its seconds; the heartbeat inside packaging is a step of its own.
    assert t.overlapped["title key"] >= 0.04 and t.overlapped["catalogue"] >= 0.3
    assert t.seconds["ladder"] >= 0.32 and "title key" not in t.seconds
    assert 0.03 <= t.seconds["catalogue"] < 0.3 and t.seconds["packaging"] >= 0.02
