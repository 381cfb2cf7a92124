"""The socket side of purges, without sockets: cache keys to purge paths, the purge fields an
entry is stored and sent with, the purged-entry check, the home's durable log, feed batches."""

from __future__ import annotations

import json
import os
import stat

import anyio
import pytest

from headwater.config import ClusterConfig
from headwater.edge.entry import encode_meta
from headwater.edge.cache.model import StoredResponse
from headwater.edge.config import Distribution, EdgeConfig, Origin
from headwater.edge.invalidation import (MAX_FEED_BYTES, Invalidation, _bounded_batch, purge_home,
                                         purge_path_of_key, write_atomically)
from headwater.edge.purge import PurgeBatch, PurgeLog
from headwater.edge.store.ram import RamStore

DIST = Distribution(name="video", origin=Origin(url="http://o", kind="http"))


def node(tier: str, id_: str, tmp_path) -> EdgeConfig:
    return EdgeConfig(id=id_, tier=tier, port=1, admin_port=2, lat=0.0, lon=0.0, cache_dir=tmp_path / id_)


def cluster(tmp_path) -> ClusterConfig:
    return ClusterConfig(name="t", edge=(node("pop", "pop-1", tmp_path), node("shield", "shield-1", tmp_path)),
                         distributions=(DIST,))


def stored(seq: int | None, tags: str | None = None) -> StoredResponse:
    headers = [("cache-control", "max-age=60")]
    if tags is not None:
        headers.append(("surrogate-key", tags))
    if seq is not None:
        headers.append(("hw-purge-seq", str(seq)))
    return StoredResponse(200, tuple(headers), 0.0, 0.0, 1)


def test_purge_paths_from_both_key_layouts_normalised():
    assert purge_path_of_key(b"video\x00/t/1/a.m4s") == ("video", "/t/1/a.m4s")
    assert purge_path_of_key(b"video\x00/t/%7e1/a?lang=en") == ("video", "/t/~1/a?lang=en")
    assert purge_path_of_key(b"video\x00/t/%2f\x00lang=en\x00\x00\x00br") == ("video", "/t/%2F?lang=en")
    assert purge_path_of_key(b"video\x00/t\x00\x00h:v\x00\x00") == ("video", "/t")


def test_the_home_is_the_first_shield_else_the_top_tier_present(tmp_path):
    assert purge_home(cluster(tmp_path)).id == "shield-1"
    assert purge_home(ClusterConfig(name="t", edge=(node("pop", "p", tmp_path),))).id == "p"
    assert purge_home(ClusterConfig(name="t")) is None


def run(fn):
    return anyio.run(fn, backend="asyncio")


def test_stamp_outgoing_and_the_hit_check_at_each_tier(tmp_path):
    async def main():
        cfg = cluster(tmp_path)
        shield = Invalidation(cluster=cfg, node=cfg.edge[1], distributions=[DIST], stores=[], top=True)
        pop = Invalidation(cluster=cfg, node=cfg.edge[0], distributions=[DIST], stores=[], top=False)
        await shield.open()
        await pop.open()
        assert shield.is_home and shield.ready and not pop.is_home and not pop.ready
        # The shield stamps with its own log, whatever the origin claims; a POP with its upstream's.
        origin_says = [("a", "1"), ("hw-purge-seq", "999")]
        assert shield.stamp(origin_says, shield.origin_seq("video")) == [("a", "1"), ("hw-purge-seq", "0")]
        assert pop.origin_seq("video") is None
        assert pop.stamp(origin_says, None) == [("a", "1"), ("hw-purge-seq", "999")]
        assert pop.stamp([("hw-purge-seq", "x9")], None) == [("hw-purge-seq", "0")]
        # Purge fields never reach viewers; between tiers a hit says this tier's log.
        out = [("x", "1"), ("surrogate-key", "t"), ("hw-purge-seq", "0")]
        assert pop.outgoing(list(out), stored(0), b"video\x00/t") == [("x", "1")]
        assert pop.outgoing(list(out), None, None) == [("x", "1")]  # passed through: stripped too
        await shield._append(shield.dists["video"], ("/t/1/*",), ("tag-a",))
        assert shield.outgoing(list(out), stored(0), b"video\x00/t")[-1] == ("hw-purge-seq", "1")
        assert shield.outgoing(list(out), stored(0), None) == out  # a miss passes on what it got
        # The hit check: by path, by tag, not what was stored after the purge.
        assert shield.purged(b"video\x00/t/1/a\x00\x00\x00\x00", stored(0))
        assert shield.purged(b"video\x00/t/1/a\x00\x00\x00\x00\x02slice:3", stored(0))  # a slice of it
        assert shield.purged(b"video\x00/t/2/a", stored(None, "x tag-a"))
        assert not shield.purged(b"video\x00/t/2/a", stored(0, "x"))
        assert not shield.purged(b"video\x00/t/1/a", stored(1))
        assert not shield.purged(b"other\x00/t/1/a", stored(0))
        assert pop.upstream_headers("video") == [("hw-purge-min-seq", "0")]
        assert shield.upstream_headers("video") == []
    run(main)


def test_the_home_log_is_durable_and_swept(tmp_path):
    async def main():
        cfg = cluster(tmp_path)
        ram = RamStore(1 << 20)

        def fill():
            for path, st in (("/t/1/a", stored(0)), ("/t/2/b", stored(0, "tag-b")), ("/t/3/c", stored(0))):
                key = f"video\x00{path}\x00\x00\x00\x00".encode()
                w = ram.begin(key, encode_meta(st, key))
                w.write(b"x")
                w.commit()

        fill()
        home = Invalidation(cluster=cfg, node=cfg.edge[1], distributions=[DIST], stores=[ram], top=True,
                            epoch=lambda: "e1")
        await home.open()
        assert ram.keys_matching(lambda k, m: True) == []  # a new log vouches for nothing stored before
        fill()
        d = home.dists["video"]
        await home._append(d, ("/t/1/*",), ("tag-b",))
        assert sorted(ram.keys_matching(lambda k, m: True)) == [b"video\x00/t/3/c\x00\x00\x00\x00"]
        assert home.counts["entries_removed"] == 3 + 2
        # In-flight fetches a purge may cover are detached: later requests start their own.
        home.flights.update({b"video\x00/t/1/z": object(), b"video\x00/t/9/z": object(), b"other\x00/t/1/z": 1})
        await home._append(d, ("/t/1/*",), ())
        assert sorted(home.flights) == [b"other\x00/t/1/z", b"video\x00/t/9/z"]
        await home._append(d, (), ("any-tag",))  # a fetch's tags are unknown: a tag purge detaches all
        assert sorted(home.flights) == [b"other\x00/t/1/z"]
        mode = stat.S_IMODE(os.stat(d.path).st_mode)
        assert mode == 0o600 and [p.name for p in d.path.parent.iterdir()] == ["video.log.json"]
        again = Invalidation(cluster=cfg, node=cfg.edge[1], distributions=[DIST], stores=[], top=True,
                             epoch=lambda: "e2")
        await again.open()
        assert (again.dists["video"].log.epoch, again.dists["video"].log.last_seq) == ("e1", 3)
        # A log that cannot be read starts a new lineage (replicas then reset).
        d.path.write_bytes(b"{not json")
        third = Invalidation(cluster=cfg, node=cfg.edge[1], distributions=[DIST], stores=[], top=True,
                             epoch=lambda: "e3")
        await third.open()
        assert (third.dists["video"].log.epoch, third.dists["video"].log.last_seq) == ("e3", 0)
    run(main)


def test_feed_batches_are_halved_to_fit(monkeypatch):
    import headwater.edge.invalidation as invalidation

    log = PurgeLog("video", epoch="e")
    for i in range(40):
        log.append([f"/{i}/" + "x" * 4000 + "/*"], now=0.0)
    whole = PurgeBatch.from_json(_bounded_batch(log, 0, 1000))
    assert len(whole.purges) == 40 and not whole.more and len(_bounded_batch(log, 0, 1000)) < MAX_FEED_BYTES
    monkeypatch.setattr(invalidation, "MAX_FEED_BYTES", 3 * 4200)
    part = PurgeBatch.from_json(_bounded_batch(log, 0, 1000))
    assert part.more and 1 <= len(part.purges) <= 2 and part.purges[0].seq == 1


def test_write_atomically_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "f.json"
    write_atomically(target, b"one")
    write_atomically(target, json.dumps({"two": 2}).encode())
    assert json.loads(target.read_bytes()) == {"two": 2}
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]
    assert stat.S_IMODE(os.stat(target.parent).st_mode) == 0o700


def test_admission_waits_for_the_catch_up_and_for_purges_a_lower_tier_asks_for(tmp_path, monkeypatch):
    import headwater.edge.invalidation as invalidation
    from headwater.http.types import Headers, Request

    monkeypatch.setattr(invalidation, "CATCH_UP_WAIT_S", 0.05)
    monkeypatch.setattr(invalidation, "MIN_SEQ_WAIT_S", 0.05)

    def request(min_seq: str | None) -> Request:
        headers = Headers([("hw-purge-min-seq", min_seq)] if min_seq is not None else [])
        return Request(method="GET", target="/t", path="/t", query="", headers=headers, body=None)  # type: ignore[arg-type]

    async def main():
        base = cluster(tmp_path)
        cfg = base.replace(edge=(*base.edge, node("regional", "regional-1", tmp_path)))
        regional = Invalidation(cluster=cfg, node=cfg.edge[2], distributions=[DIST], stores=[], top=False)
        pop = Invalidation(cluster=cfg, node=cfg.edge[0], distributions=[DIST], stores=[], top=False)
        await regional.open()
        await pop.open()
        with pytest.raises(invalidation.NotCaughtUp):  # never pulled: it cannot vouch for its cache
            await regional.admit(request(None), DIST)
        assert regional.health()["status"] == "catching_up"
        assert not pop.settled(DIST) and not regional.settled(DIST)  # (the hit path must admit)
        regional.dists["video"].mark_ready()
        pop.dists["video"].mark_ready()
        # Caught up, a POP admits every request (the hit path skips admit); a regional still
        # reads each request's Hw-Purge-Min-Seq.
        assert pop.settled(DIST) and not regional.settled(DIST)
        assert "status" not in regional.health()
        assert await regional.admit(request("0"), DIST) is True
        assert await regional.admit(request("5"), DIST) is False   # behind what the POP applied: bypass
        assert await regional.admit(request("9" * 40), DIST) is True  # not a sequence number: ignored
        assert await pop.admit(request("5"), DIST) is True  # a POP's clients are viewers: never honoured
    run(main)


def test_the_purge_home_must_run_one_worker(tmp_path):
    from headwater.config import ConfigError, load

    text = """
[[distributions]]
name = "video"
origin = "http://127.0.0.1:1"

[[edge]]
id = "pop-1"
tier = "pop"
port = 2
admin_port = 3
lat = 0.0
lon = 0.0

[[edge]]
id = "shield-1"
tier = "shield"
port = 4
admin_port = 5
workers = {workers}

[cdn.purge]
long_poll_seconds = 5
"""
    path = tmp_path / "c.toml"
    path.write_text(text.format(workers=1))
    cfg = load(str(path))
    assert purge_home(cfg).id == "shield-1" and cfg.cdn.purge.long_poll_s == 5
    path.write_text(text.format(workers=2))
    with pytest.raises(ConfigError, match=r"edge\[1\]\.workers.*purge log"):
        load(str(path))
