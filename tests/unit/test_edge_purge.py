"""headwater.edge.purge: invalidation paths, surrogate keys, the purge log and its replicas."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.clock import FakeClock
from headwater.config import ConfigError, Reader
from headwater.edge import purge as pg
from headwater.edge.purge import InvalidPurge, PurgeBatch, PurgeGap, PurgeLog


def shield_log(**kw) -> PurgeLog:
    return PurgeLog("video", epoch="e1", **kw)


# --- paths and tags ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/*", "/titles/1/*", "/titles/1/seg-*", "/a.mpd", "/a.mpd?lang=en",
                                  "/a.mpd*", "/%E2%82%AC.txt"])
def test_valid_paths(path: str) -> None:
    assert pg.validate_path(path) == path


@pytest.mark.parametrize(("path", "why"), [
    ("titles/1/*", "start with /"), ("/titles/*/a.mpd", "only at the end"), ("/a b", "ASCII"),
    ("/€", "ASCII"), ("/a\nb", "ASCII"), ("/" + "a" * pg.MAX_PATH_CHARS, "longer"), (7, "string"),
])
def test_invalid_paths(path, why: str) -> None:
    with pytest.raises(InvalidPurge, match=why):
        pg.validate_path(path)


def test_matching_follows_cloudfront() -> None:
    p = pg.Purge(seq=1, at=0.0, paths=("/titles/1/*", "/a.mpd"), tags=("title-9",))
    assert p.matches("/titles/1/seg-1.m4s") and p.matches("/titles/1/") and p.matches("/titles/1/x?y=1")
    assert not p.matches("/titles/10/seg") and not p.matches("/titles/1")
    assert p.matches("/a.mpd") and not p.matches("/a.mpd?lang=en") and not p.matches("/A.mpd")
    assert p.matches("/other", ["x", "title-9"]) and not p.matches("/other", ["title-90"])
    assert pg.Purge(seq=1, at=0.0, paths=("/*",)).matches("/anything/at/all?q")


def test_surrogate_keys() -> None:
    assert pg.parse_surrogate_keys("  title-1  season-2 title-1\tall ") == ("title-1", "season-2", "all")
    assert pg.parse_surrogate_keys("") == ()
    with pytest.raises(InvalidPurge):
        pg.parse_surrogate_keys(" ".join(f"k{i}" for i in range(pg.MAX_SURROGATE_KEYS + 1)))
    with pytest.raises(InvalidPurge):
        pg.parse_surrogate_keys("x" * (pg.MAX_TAG_CHARS + 1))


def test_invalidation_request_body() -> None:
    dist, paths, tags = pg.parse_invalidation_request(
        b'{"distribution": "video", "paths": ["/titles/1/*", "/titles/1/*"], "tags": ["t1"]}')
    assert (dist, paths, tags) == ("video", ("/titles/1/*",), ("t1",))
    for body, why in [(b"nope", "not JSON"), (b"[]", "object"), (b"{}", "nothing to purge"),
                      (b'{"paths": "/a"}', "arrays"), (b'{"paths": ["a"]}', "start with /"),
                      (b'{"paths": ["/a"], "colour": 1}', "unknown field"),
                      (b'{"tags": ["a b"]}', "visible ASCII")]:
        with pytest.raises(InvalidPurge, match=why):
            pg.parse_invalidation_request(body)
    with pytest.raises(InvalidPurge, match="at most 2"):
        pg.parse_invalidation_request(b'{"paths": ["/a", "/b", "/c"]}', max_items=2)


# --- the log -------------------------------------------------------------------------------------------

def test_sequence_numbers_and_the_hit_path_check() -> None:
    log = shield_log()
    assert log.last_seq == 0 and not log.is_purged("/a", (), 0)
    p1 = log.append(["/titles/1/*"], now=100.0)
    p2 = log.append(tags=["season-2"], now=101.0)
    p3 = log.append(["/exact.mpd", "/x*"], now=102.0)
    assert (p1.seq, p2.seq, p3.seq) == (1, 2, 3) and log.last_seq == 3
    # Stored before purge 1 (purge_seq 0): caught by it; stored after it (purge_seq >= 1): not.
    assert log.is_purged("/titles/1/seg-1.m4s", (), 0)
    assert not log.is_purged("/titles/1/seg-1.m4s", (), 1)
    assert log.is_purged("/other", ("season-2",), 1) and not log.is_purged("/other", ("season-2",), 2)
    assert log.is_purged("/exact.mpd", (), 2) and not log.is_purged("/exact.mpd?v=2", (), 2)
    assert log.is_purged("/xyz", (), 2) and not log.is_purged("/y", ("season-3",), 0)
    assert pg.is_purged("/titles/1/a", ["t"], 0, log)
    with pytest.raises(InvalidPurge):
        log.append(now=103.0)
    with pytest.raises(InvalidPurge):
        log.append(["/a*b"], now=103.0)
    assert log.last_seq == 3  # refused purges take no number


def test_since_pages_and_a_replica_catches_up() -> None:
    log = shield_log()
    for i in range(25):
        log.append([f"/p{i}"], now=float(i))
    replica = PurgeLog("video", epoch="e1")
    pulls = 0
    while True:
        batch = log.since(replica.last_seq, limit=10)
        replica.apply(PurgeBatch.from_json(batch.to_json()))  # through the wire format
        pulls += 1
        if not batch.more:
            break
    assert pulls == 3 and replica.last_seq == 25 and replica.purges() == log.purges()
    assert log.since(25).purges == () and not log.since(25).more
    assert replica.apply(log.since(20)).added == 0  # idempotent: old purges are skipped


def test_a_pop_that_was_down_applies_what_it_missed_before_serving() -> None:
    """Shield → regional → POP, with purge_seq travelling with the content (Hw-Purge-Seq)."""
    clock = FakeClock()
    shield = shield_log()
    regional = PurgeLog("video", epoch="e1")
    pop = PurgeLog("video", epoch="e1")
    # The shield fetches seg-1 from the origin at seq 0; the regional and the POP store it with 0.
    stored = {"shield": 0, "regional": 0, "pop": 0}
    # The POP goes down; a purge is issued and reaches the regional only.
    shield.append(["/titles/1/*"], now=clock.time())
    regional.apply(shield.since(regional.last_seq))
    assert regional.is_purged("/titles/1/seg-1.m4s", (), stored["regional"])
    # The POP comes back: its replica says seq 0, it pulls before serving, and its copy is purged.
    assert not pop.is_purged("/titles/1/seg-1.m4s", (), stored["pop"])  # (why it must pull first)
    pop.apply(shield.since(pop.last_seq))
    assert pop.is_purged("/titles/1/seg-1.m4s", (), stored["pop"])
    # Refetched through the regional (which refetched from the shield → origin at seq 1).
    stored["regional"] = shield.last_seq
    stored["pop"] = stored["regional"]
    assert not pop.is_purged("/titles/1/seg-1.m4s", (), stored["pop"])


def test_stale_content_from_a_lagging_tier_is_still_caught() -> None:
    """A regional that has not applied purge 2 passes on old content with Hw-Purge-Seq 1: the POP,
    which has applied 2, stores it with 1 and purge 2 still catches it."""
    shield = shield_log()
    shield.append(["/a"], now=1.0)
    shield.append(["/b"], now=2.0)
    pop = PurgeLog("video", epoch="e1")
    pop.apply(shield.since(0))
    assert pop.is_purged("/b", (), 1) and not pop.is_purged("/a", (), 1)


def test_gaps_and_wrong_distributions_are_refused_unchanged() -> None:
    log = shield_log()
    for i in range(5):
        log.append([f"/p{i}"], now=float(i))
    replica = PurgeLog("video", epoch="e1")
    hole = PurgeBatch(distribution="video", epoch="e1", floor_seq=0, last_seq=5,
                      purges=log.purges()[2:])
    with pytest.raises(PurgeGap):
        replica.apply(hole)
    assert replica.last_seq == 0
    with pytest.raises(PurgeGap):
        PurgeLog("other", epoch="e1").apply(log.since(0))


def test_compaction_is_conservative() -> None:
    clock = FakeClock(start=1000.0)
    log = shield_log(retention_s=100.0)
    log.append(["/old"], now=clock.time())           # seq 1 at 1000
    clock.advance(50)
    log.append(["/newer"], now=clock.time())         # seq 2 at 1050
    clock.advance(60)
    assert log.compact(clock.time()) == 1 and log.floor_seq == 1 and len(log) == 1
    # Content from before seq 1 can no longer be vouched for: purged, whatever its path.
    assert log.is_purged("/unrelated", (), 0)
    assert not log.is_purged("/unrelated", (), 1) and log.is_purged("/newer", (), 1)
    # The compacted purge no longer matches content stored after it (it was dropped).
    assert not log.is_purged("/old", (), 1)
    # A replica that missed the compacted purge adopts the floor.
    replica = PurgeLog("video", epoch="e1")
    replica.apply(log.since(0))
    assert replica.floor_seq == 1 and replica.last_seq == 2 and replica.is_purged("/x", (), 0)
    clock.advance(1000)
    assert log.compact(clock.time()) == 1 and len(log) == 0 and log.floor_seq == 2
    assert log.since(0).purges == () and log.since(0).floor_seq == 2


def test_max_purges_bounds_memory() -> None:
    log = shield_log(max_purges=10)
    for i in range(25):
        log.append([f"/p{i}*"], now=0.0)
    assert len(log) == 10 and log.floor_seq == 15 and log.last_seq == 25
    assert log.is_purged("/p20/x", (), 16) and log.is_purged("/zzz", (), 14)


def test_another_epoch_resets_the_replica() -> None:
    old = PurgeLog("video", epoch="e1")
    for i in range(3):
        old.append([f"/p{i}"], now=0.0)
    replica = PurgeLog("video", epoch="e1")
    replica.apply(old.since(0))
    new = PurgeLog("video", epoch="e2")  # the shield lost its log and started a new one
    new.append(["/q"], now=1.0)
    # The tier asks since(3) of a log that holds only seq 1: the epoch tells it everything changed.
    applied = replica.apply(new.since(replica.last_seq))
    assert applied == pg.Applied(added=0, reset=True)
    assert replica.epoch == "e2" and replica.last_seq == 0 and len(replica) == 0
    applied = replica.apply(new.since(replica.last_seq))
    assert applied == pg.Applied(added=1, reset=False) and replica.last_seq == 1


def test_a_log_gone_backwards_resets_the_replica() -> None:
    shield = shield_log()
    for i in range(5):
        shield.append([f"/p{i}"], now=0.0)
    backup = shield.dumps()
    shield.append(["/p5"], now=1.0)
    replica = PurgeLog("video", epoch="e1")
    replica.apply(shield.since(0))
    restored2 = PurgeLog.loads(backup)  # same epoch, seq 6 forgotten
    applied = replica.apply(restored2.since(replica.last_seq))
    assert applied.reset and replica.last_seq == 0 and len(replica) == 0


def test_persistence_round_trip() -> None:
    log = shield_log(retention_s=10.0)
    log.append(["/a*"], tags=["t"], now=1.0)
    log.append(["/b"], now=20.0)
    log.compact(25.0)
    again = PurgeLog.loads(log.dumps(), retention_s=10.0)
    assert again.purges() == log.purges() and (again.floor_seq, again.last_seq) == (1, 2)
    assert again.epoch == "e1" and again.is_purged("/b", (), 1) and again.is_purged("/a", (), 0)
    for junk in (b"", b"{}", b'{"distribution":"v","epoch":"e","floor_seq":0,"last_seq":2,"purges":[]}',
                 b'{"distribution":"v","epoch":"e","floor_seq":0,"last_seq":1,"purges":[{"seq":2,"at":0}]}',
                 b'{"distribution":"v","epoch":"e","floor_seq":0,"last_seq":1,"purges":[3]}'):
        with pytest.raises(InvalidPurge):
            PurgeLog.loads(junk)


# --- the compiled index agrees with the plain definition ------------------------------------------------

_segments = st.sampled_from(["", "a", "ab", "b", "t/", "t/1", "t/1/", "x?q"])
_paths = st.builds(lambda parts: "/" + "".join(parts), st.lists(_segments, max_size=4))
_patterns = st.one_of(_paths, st.builds(lambda p: p + "*", _paths))
_tags = st.sampled_from(["t1", "t2", "t3"])


@settings(max_examples=120, deadline=None)
@given(purges=st.lists(st.tuples(st.lists(_patterns, max_size=2), st.lists(_tags, max_size=1)),
                       min_size=1, max_size=10),
       probes=st.lists(st.tuples(_paths, st.lists(_tags, max_size=1), st.integers(0, 12)), max_size=8),
       keep=st.integers(1, 12))
def test_is_purged_equals_the_definition(purges, probes, keep: int) -> None:
    log = shield_log(max_purges=keep)
    everything = []
    for i, (paths, tags) in enumerate(purges):
        if paths or tags:
            everything.append(log.append(paths, tags, now=float(i)))
    for path, tags, stored in probes:
        expected = (stored < log.floor_seq
                    or any(p.seq > stored and p.matches(path, tags) for p in everything))
        assert log.is_purged(path, tags, stored) is expected, (path, tags, stored)


# --- config ----------------------------------------------------------------------------------------------

def test_read_purge_config() -> None:
    r = Reader("cluster.toml", "[cdn.purge]\nretention_seconds = 0\n")
    assert pg.read_purge_config(r, None) == pg.PurgeConfig()
    got = pg.read_purge_config(r, {"retention_seconds": 3600, "max_purges": 50, "long_poll_seconds": 0})
    assert got.retention_s == 3600.0 and got.max_purges == 50 and got.long_poll_s == 0.0
    with pytest.raises(ConfigError, match=r"cluster.toml:2: cdn.purge.retention_seconds: 0.0 must be positive"):
        pg.read_purge_config(r, {"retention_seconds": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        pg.read_purge_config(r, {"retention": 1})
    with pytest.raises(ConfigError, match="at least 1"):
        pg.read_purge_config(r, {"batch_limit": 0})
