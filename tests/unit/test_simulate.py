"""The CDN simulator (bench/simulate): scenario reading, the workload generator's distributions
and determinism, SHARDS, the tier model on the edge's own classes, sweeps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from headwater.bench.simulate.engine import prepare, simulate
from headwater.bench.simulate.report import summarise
from headwater.bench.simulate.scenario import ConfigError, load_scenario, loads_scenario
from headwater.bench.simulate.shards import MODULUS, Shards, shard_by
from headwater.bench.simulate.sweep import parse_sweeps, run_sweep, sweep_points
from headwater.bench.simulate.tiers import HIT, MISS, PLAIN_DISK, STALE, cache_keys, run_node
from headwater.bench.simulate.workload import (_InverseCdf, _watch_seconds, diurnal_at, generate,
                                               rung_of, segment_of, zipf_weights)
from headwater.edge.cache.behaviour import DEFAULT_BEHAVIOUR
from headwater.edge.cache.cachekey import cache_key

TINY = """
name = "tiny"
seed = 3
[sampling]
rate = 1.0
[window]
start = "20:30"
duration = "16min"
warmup = "6min"
[catalogue]
titles = 150
new_per_day = 2
zipf_alpha = 1.0
runtime_median = "12min"
runtime_min = "6min"
runtime_max = "20min"
[viewers]
peak_concurrent = 200
[tiers]
pop_ram = "1GiB"
pop_disk = "20GiB"
regional = "60GiB"
shield = "200GiB"
shields = ["s1"]
[capacity]
pop_egress = "10Gbps"
[[region]]
name = "r"
population = 1
pops = ["p1", "p2"]
regionals = ["g1", "g2"]
"""


@pytest.fixture(scope="module")
def tiny():
    return loads_scenario(TINY, path="tiny.toml")


def test_prime_peak_matches_the_seeds():
    sc = load_scenario("prime-peak")
    assert sc.viewers.mau == 50_000_000
    assert sc.viewers.peak_concurrent == 2_000_000
    # 2 M viewers at the ladder's mean bitrate: the seeds' 10 Tbit/s prime peak.
    assert sc.viewers.peak_concurrent * sc.media.mean_kbps * 1e3 == pytest.approx(10e12, rel=0.02)
    cap = sc.capacity
    assert (cap.target_egress_bps, cap.target_fetches_per_s, cap.target_hit_ratio) == (300e12, 37.5e6, 0.9)
    assert sc.tiers.policy == "s3fifo" and len(sc.pops) >= 30


@pytest.mark.parametrize("edit, key", [
    (("policy = ", 'policy = "arc"\n'), "tiers.policy"),
    (("[sampling]\nrate = 1.0", "[sampling]\nrate = 2.0"), "sampling.rate"),
    (("duration = \"16min\"", "duration = \"soon\""), "window.duration"),
    (("zipf_alpha = 1.0", "zipf_alpha = 1.0\nzipf_beta = 2"), "catalogue.zipf_beta"),
])
def test_scenario_errors_name_the_key(edit, key):
    old, new = edit
    text = TINY.replace("[tiers]\n", "[tiers]\n" + new) if old == "policy = " else TINY.replace(old, new)
    with pytest.raises(ConfigError) as e:
        loads_scenario(text, path="bad.toml")
    assert key in str(e.value) and "bad.toml:" in str(e.value)


def test_ladder_shares_must_add_up():
    text = TINY + '[media]\n[[media.ladder]]\nname = "a"\nkbps = 100\nshare = 0.5\n'
    with pytest.raises(ConfigError, match="media.ladder.*add up"):
        loads_scenario(text)


def test_generator_is_deterministic(tiny):
    a, b = generate(tiny), generate(tiny)
    for f in ("time", "pop", "obj", "size", "first", "manifest"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    c = generate(dataclasses.replace(tiny, seed=4))
    assert len(c) != len(a) or not np.array_equal(c.obj, a.obj)
    assert np.all(np.diff(a.time) >= 0)


def test_zipf_draws_follow_the_weights():
    w = zipf_weights(1000, 0.9)
    draws = _InverseCdf(w).draw(np.random.default_rng(1).random(400_000))
    counts = np.bincount(draws, minlength=1000)
    expect = w / w.sum() * 400_000
    assert np.allclose(counts[:20], expect[:20], rtol=0.05)
    # The log-log slope over the head is -alpha.
    slope = np.polyfit(np.log(np.arange(1, 101)), np.log(counts[:100]), 1)[0]
    assert slope == pytest.approx(-0.9, abs=0.05)


def test_abandonment_shares(tiny):
    rng = np.random.default_rng(5)
    runtime = np.full(200_000, 3000.0)
    watch = _watch_seconds(rng, runtime, tiny)
    v = tiny.viewers
    assert (watch == 3000.0).mean() == pytest.approx(v.complete_share, abs=0.01)
    early = watch[watch < 3000][: 1000]
    assert early.size
    # The early leavers' exponential: its mean shows in the short sessions.
    short = watch[watch < 60]
    expected_short = v.early_share * (1 - np.exp(-60 / v.early_mean_s)) + \
        (1 - v.early_share - v.complete_share) * 60 / 3000
    assert len(short) / len(watch) == pytest.approx(expected_short, abs=0.01)


def test_sessions_follow_the_ladder_and_the_diurnal_curve(tiny):
    big = dataclasses.replace(tiny, viewers=dataclasses.replace(tiny.viewers, peak_concurrent=3000))
    req = generate(big)
    firsts = req.object_ids[req.obj[req.first]]
    rungs = np.bincount([rung_of(int(i)) for i in firsts], minlength=len(big.media.ladder)) / len(firsts)
    assert np.allclose(rungs, [r.share for r in big.media.ladder], atol=0.03)
    assert all(segment_of(int(i)) == 0 for i in firsts)
    # Concurrency tracks peak * diurnal(t) (sessions begun before the window included).
    minutes = np.arange(len(req.concurrency))
    want = 3000 * diurnal_at(big.viewers.diurnal, big.window.start_h + (minutes + 0.5) / 60)
    assert np.allclose(req.concurrency[2:], want[2:], rtol=0.08)


def test_shards_keeps_the_rate_and_whole_keys():
    s = Shards.at_rate(0.01)
    ids = np.arange(2_000_000, dtype=np.int64) * 7919
    kept = s.keep(ids)
    assert kept.mean() == pytest.approx(0.01, rel=0.03)
    assert np.array_equal(kept, s.keep(ids.copy()))          # a key is always or never kept
    assert s.threshold == round(0.01 * MODULUS) and s.scale(1000_000) == int(1000_000 * s.rate)
    groups = shard_by(np.array([1, 0, 1, 2, 0]), 3)
    assert [g.tolist() for g in groups] == [[1, 4], [0, 2], [3]]


def test_shards_error_is_small(tiny):
    """Sampled (20 %) vs unsampled on the same scenario: the hit ratios the report prints."""
    big = dataclasses.replace(tiny, viewers=dataclasses.replace(tiny.viewers, peak_concurrent=700))
    full = summarise(simulate(big, rate=1.0))
    sampled = summarise(simulate(big, rate=0.2))
    assert sampled.sampled_requests < full.sampled_requests / 4
    for a, b in zip(full.tiers[:3], sampled.tiers[:3]):
        assert abs(a.request_hit_ratio - b.request_hit_ratio) < 0.03, (a, b)
    assert abs(full.edge_request_hit_ratio - sampled.edge_request_hit_ratio) < 0.03
    assert sampled.egress_gbps == pytest.approx(full.egress_gbps, rel=0.1)


def test_keys_are_the_edges_cache_keys():
    class Req:
        method, path, query = "GET", "/vod/t1/720p/00003.m4s", ""

        class headers:
            get = staticmethod(lambda n, d=None: d)
            get_all = staticmethod(lambda n: [])

    assert cache_keys([Req.path]) == [cache_key(Req(), DEFAULT_BEHAVIOUR, distribution="vod")]


def test_node_freshness_and_eviction():
    keys = [b"a", b"b", b"c"]
    # 100-byte cache: a, b fit; c evicts; a after its TTL is stale (revalidated), not a miss.
    codes = run_node("lru", 100, 10.0, keys, [0, 1, 0, 0, 2, 1], [50, 50, 50, 50, 50, 50],
                     [0.0, 1.0, 2.0, 20.0, 21.0, 22.0], disk=PLAIN_DISK)
    assert codes.tolist() == [MISS, MISS, HIT, STALE, MISS, MISS]


def test_run_is_deterministic_and_consistent(tiny):
    a = summarise(simulate(tiny))
    b = summarise(simulate(tiny, workers=2))
    assert a.tiers == b.tiers and a.origin_gbps == b.origin_gbps
    c = summarise(simulate(tiny, prepared=prepare(tiny)))      # a sweep group's shared stream
    assert c.tiers == a.tiers
    assert 0 < a.edge_request_hit_ratio < 1
    assert sum(a.served_share) == pytest.approx(1.0)
    # A longer TTL never raises origin requests; a bigger POP disk never lowers the edge hit ratio.
    short = summarise(simulate(tiny.with_sweep("ttl", 30.0)))
    assert short.origin_requests_per_s > a.origin_requests_per_s
    assert short.tiers[0].request_hit_ratio < a.tiers[0].request_hit_ratio


def test_sweep_points_and_local_run(tiny):
    sweeps = parse_sweeps(["segment=2,4", "ttl=10s,1h"])
    assert sweeps == [("segment", [2.0, 4.0]), ("ttl", [10.0, 3600.0])]
    points = sweep_points(sweeps)
    assert points[1] == {"segment": 2.0, "ttl": 3600.0} and len(points) == 4
    with pytest.raises(ValueError):
        parse_sweeps(["colour=red"])
    res = run_sweep(tiny, points[:2], workers=2)   # two local processes
    assert [r.ttl_s for r in res] == [10.0, 3600.0]
    assert res[0].origin_requests_per_s > res[1].origin_requests_per_s


def test_pop_promotes_to_ram_as_the_edge_does():
    """Misses go into both tiers; a key RAM lost comes back into it on its second disk hit
    (the edge's Promoter), not on its first."""
    from headwater.bench.simulate.tiers import POP_DISK_HIT, POP_MISS, POP_RAM_HIT, run_pop

    keys = [b"a", b"b", b"c"]
    codes = run_pop("lru", 200, 10_000, float("inf"), keys, [0, 1, 2, 0, 0, 0], [100] * 6,
                    [float(t) for t in range(6)], ram_max_entry_bytes=150, ram_overhead=False,
                    disk=PLAIN_DISK)
    assert codes.tolist() == [POP_MISS, POP_MISS, POP_MISS, POP_DISK_HIT, POP_DISK_HIT, POP_RAM_HIT]


def test_disk_tier_is_charged_as_the_edge_s_disk_store():
    """A disk tier (regional, shield, a POP's disk) holds what the edge's DiskStore holds: each
    entry costs its body, store key and 4 KiB; the policy aims 5 % below the capacity; bodies
    above capacity // 16 are not kept."""
    from headwater.edge.store.disk import charged

    keys = [b"a", b"b", b"c"]
    cap = 3 * charged(b"a", 100)  # three entries of 100 bytes fill it; the headroom leaves two
    codes = run_node("lru", cap, float("inf"), keys, [0, 1, 2, 0], [100] * 4, [0.0, 1.0, 2.0, 3.0])
    assert codes.tolist() == [MISS, MISS, MISS, MISS]  # c evicted a
    assert run_node("lru", cap, float("inf"), keys, [0, 1, 0], [100] * 3, [0.0, 1.0, 2.0]).tolist() == [MISS, MISS, HIT]
    # above capacity // 16: never stored
    big = cap // 16 + 1
    assert run_node("lru", cap, float("inf"), keys, [0, 0], [big] * 2, [0.0, 1.0]).tolist() == [MISS, MISS]
    assert run_node("lru", cap, float("inf"), keys, [0, 0], [big] * 2, [0.0, 1.0],
                    disk=PLAIN_DISK).tolist() == [MISS, HIT]
