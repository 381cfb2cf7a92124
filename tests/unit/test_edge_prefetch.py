"""edge.prefetch: segment numbers found and advanced, runs bounded, gains counted (sans-IO)."""

from __future__ import annotations

import pytest

from headwater.edge.prefetch import PrefetchConfig, PrefetchPlanner, SegmentNamer, DEFAULT_SEGMENT_PATTERN


@pytest.mark.parametrize("path, following", [
    ("/t/1/seg-1.m4s", ["/t/1/seg-2.m4s", "/t/1/seg-3.m4s"]),
    ("/t/1/seg-00042.m4s", ["/t/1/seg-00043.m4s", "/t/1/seg-00044.m4s"]),
    ("/t/1/720p/video-99.ts", ["/t/1/720p/video-100.ts", "/t/1/720p/video-101.ts"]),
    ("/t/9/a_0998.cmfv", ["/t/9/a_0999.cmfv", "/t/9/a_1000.cmfv"]),
    ("/t/3/17.m4s", ["/t/3/18.m4s", "/t/3/19.m4s"]),
    ("/t/1/manifest.mpd", []),
    ("/t/1/init.mp4", []),
    ("/t/1/seg-x.m4s", []),
    ("/t/12/seg.m4s", []),
])
def test_the_default_pattern_finds_the_segment_number_and_keeps_its_padding(path, following):
    assert SegmentNamer(DEFAULT_SEGMENT_PATTERN).following(path, 2) == following


def test_a_configured_pattern_needs_one_group_and_count_zero_is_nothing():
    namer = SegmentNamer(r"/chunk/(\d+)$")
    assert namer.following("/live/chunk/0007", 1) == ["/live/chunk/0008"]
    assert namer.following("/live/chunk/0007", 0) == []
    with pytest.raises(ValueError):
        SegmentNamer(r"seg-\d+\.m4s")
    with pytest.raises(ValueError):
        SegmentNamer(r"(a)(\d+)")
    with pytest.raises(ValueError):  # RE2: no backreferences
        SegmentNamer(r"(\d+)\1")


def test_runs_are_capped_and_a_recent_trigger_starts_nothing():
    p = PrefetchPlanner(PrefetchConfig(max_concurrent=2, recent_seconds=10, recent_keys=2))
    assert p.start(b"a", 0) == "start"
    assert p.start(b"a", 1) == "recent"
    assert p.start(b"b", 1) == "start"
    assert p.start(b"c", 1) == "busy"
    p.finish()
    assert p.start(b"c", 2) == "start"
    p.finish(), p.finish()
    assert p.running == 0
    assert p.start(b"b", 5) == "recent"
    assert p.start(b"a", 10.5) == "start"  # its window is over
    p.finish()
    # The memo is bounded: the oldest trigger is forgotten.
    assert len(p._recent) == 2 and b"b" not in p._recent
    assert p.results == {"busy": 1}


def test_what_prefetching_gained_is_counted_once_per_fetched_key():
    p = PrefetchPlanner(PrefetchConfig(used_keys=2))
    p.fetched(b"k1")
    p.fetched(b"k2")
    p.fetched(b"k3")  # k1 forgotten (bounded)
    p.forget(b"k3")   # failed: never counted
    assert not p.requested(b"k1") and not p.requested(b"k3")
    assert p.requested(b"k2") and not p.requested(b"k2")
    p.count("fetched")
    h = p.health(requests=4)
    assert h["used"] == 1 and h["hit_ratio_gained"] == 0.25 and h["prefetch_fetched"] == 1
    assert p.health(0)["hit_ratio_gained"] == 0.0
