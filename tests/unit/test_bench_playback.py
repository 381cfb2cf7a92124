"""The playback bench's pure parts: the world's TOML (read by the real config loader on top of
the repo's store sections), the browser's output as cold and warm plays, the medians and the
report beside the goals."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.bench.origin import STORE_TABLES, split_tables
from headwater.bench.playback import (COLD_GOAL_MS, POP_A, POP_B, WARM_GOAL_MS, WORLD_NODES, WORLD_PORTS, Play,
                                      plays_from, render, signing_key, summarise, world_sections)
from headwater.config import load

REPO_CONFIG = Path(__file__).resolve().parents[2] / "cluster.toml"


def test_the_world_sections_load_as_one_cluster(tmp_path):
    ports = {name: 20000 + i for i, name in enumerate(WORLD_PORTS)}
    pub, priv = signing_key(tmp_path / "keys")
    text = split_tables(REPO_CONFIG.read_text(), STORE_TABLES) + world_sections(
        ports, public_key=pub, private_key=priv, health_interval_s=0.5, fall=2, scheme="cenc")
    (tmp_path / "cluster.toml").write_text(text)
    cfg = load(tmp_path / "cluster.toml")
    pops = {i: cfg.daemon(i) for i in ("pop-a", "pop-b")}
    assert {pops["pop-a"].host, pops["pop-b"].host} == {POP_A, POP_B}
    assert pops["pop-a"].port == pops["pop-b"].port == ports["pop"]  # one port: the CDN name's
    assert [p.name for p in cfg.dns.steering.pops] == ["pop-a", "pop-b"]
    assert cfg.dns.health.interval_s == 0.5
    assert cfg.transcoder.scheme == "cenc"
    assert cfg.origin.delivery.cdn_base_url == f"http://video.cdn.headwater.test:{ports['pop']}"
    assert {n for n, _, _ in WORLD_NODES} <= {d.id for d in cfg.daemons()}
    with pytest.raises(ValueError, match="dns"):
        world_sections({k: v for k, v in ports.items() if k != "dns"}, public_key=Path("a"), private_key=Path("b"))


def test_a_titles_first_viewer_is_cold_and_the_rest_warm():
    # Only answers up to the first frame count: the later ones are not part of the startup.
    doc = {"plays": [{"titleId": 3, "startMs": 900, "clickToFrameMs": 1000, "firstFrameAt": 50,
                      "cdn": [{"t": 10, "xcache": "Miss from pop-a"}, {"t": 20, "xcache": "Miss from pop-a"},
                              {"t": 30, "xcache": "Hit from pop-a"}, {"t": 60, "xcache": "Miss from pop-a"}]},
                     {"titleId": 3, "startMs": 300, "clickToFrameMs": 350},
                     {"titleId": 4, "startMs": None, "clickToFrameMs": None},
                     {"titleId": 4, "startMs": 250, "clickToFrameMs": 300}]}
    plays = plays_from(doc)
    assert [(p.title, p.cold) for p in plays] == [(3, True), (3, False), (4, True), (4, False)]
    assert (plays[0].cdn_misses, plays[0].cdn_requests) == (2, 3)
    s = summarise(plays)
    # A play with no frame counts as slower than any: the cold median of [900, none] is no figure.
    assert s.cold_median_ms is None and not s.cold_met
    assert s.warm_median_ms == 275 and s.warm_met


def test_the_report_puts_each_median_beside_its_goal():
    plays = [Play(1, True, 3500, 3600), Play(1, False, 2100, 2200), Play(2, True, 4500, 4600),
             Play(2, False, 1900, 2000), Play(3, True, 3900, 4000), Play(3, False, 2500, 2600)]
    s = summarise(plays)
    assert s.cold_median_ms == 3900 and s.cold_met  # goal < 4 s
    assert s.warm_median_ms == 2100 and not s.warm_met  # goal < 2 s
    text = render(plays, load_start="1.0 1.0 1.0", load_end="2.0 2.0 2.0", clip_s=8, cpus=2)
    assert f"cold median 3.90 s (goal < {COLD_GOAL_MS // 1000} s): met" in text
    assert f"warm median 2.10 s (goal < {WARM_GOAL_MS // 1000} s): NOT met" in text
    assert "load average 1.0 1.0 1.0 at the start, 2.0 2.0 2.0 at the end" in text
    assert text.count(" cold ") == 3 and text.count(" warm ") == 3


# --- the load generator's pure parts (bench/viewer_load.py) ------------------------------------

def test_the_playback_clock_counts_a_late_segment_as_a_stall_and_moves_later_deadlines():
    from headwater.bench.viewer_load import PlaybackClock

    c = PlaybackClock([2.0, 2.0, 2.0, 1.0], ahead_s=4.0)
    c.started(100.0)  # segment 0 arrived: playback runs from here
    assert c.due(1) == 102.0 and c.request_at(1) == 98.0  # may be fetched at once: 4 s of lead
    assert c.request_at(3) == 102.0  # never more than two segments ahead
    assert c.arrived(1, 101.5) == 0.0 and c.stalls == 0  # in time
    assert c.arrived(2, 104.75) == 0.75 and c.stalls == 1  # due at 104: 0.75 s of rebuffering
    assert c.due(3) == 106.75 and c.request_at(3) == 102.75  # every later deadline moved by the stall
    assert c.arrived(3, 106.0) == 0.0
    assert c.played_s() == 7.0 and c.ended() == 107.75
    with pytest.raises(RuntimeError):
        PlaybackClock([2.0], ahead_s=1).due(0)


def test_a_viewer_paced_in_fake_time_waits_for_playback_and_records_its_rebuffer():
    import asyncio

    from headwater.bench.viewer_load import Target, play_one

    master = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=100000\nvideo-2.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=300000\nvideo-1.m3u8\n"
    media = (b'#EXTM3U\n#EXT-X-MAP:URI="video-2/init.mp4"\n' + b"".join(
        b"#EXTINF:2.000,\nvideo-2/seg-%d.m4s\n" % i for i in range(1, 6)) + b"#EXT-X-ENDLIST\n")
    now = [0.0]
    fetched: list[tuple[float, str]] = []
    slow = {"/titles/7/v1/video-2/seg-4.m4s": 9.0}  # one segment takes 9 s: deadline missed

    async def sleep(s: float) -> None:
        now[0] += s

    async def get(pq: str) -> tuple[int, bytes, str]:
        path, query = pq.split("?", 1)
        assert query == "Policy=p&Signature=s"  # the grant on every request
        fetched.append((now[0], path))
        now[0] += slow.get(path, 0.1)
        body = {"/titles/7/v1/master.m3u8": master, "/titles/7/v1/video-2.m3u8": media}.get(path, b"x" * 10)
        return 200, body, "Hit from pop-a"

    play = {"hls": "http://cdn:1/titles/7/v1/master.m3u8?Policy=p&Signature=s",
            "cdn": {"query": "Policy=p&Signature=s"}}
    lag: list[float] = []
    r = asyncio.run(play_one(get, Target(7, "pop-a", "http://x", "cdn", play), 0.9, watch_s=9.0, ahead_s=4.0,
                             now=lambda: now[0], sleep=sleep, lag=lag))
    assert r.error == "" and r.rung == 1  # 0.9 of a two-rung ladder: the second (lower) variant
    paths = [p for _, p in fetched]
    assert paths[:4] == ["/titles/7/v1/master.m3u8", "/titles/7/v1/video-2.m3u8", "/titles/7/v1/video-2/init.mp4",
                         "/titles/7/v1/video-2/seg-1.m4s"]
    assert paths[4:] == [f"/titles/7/v1/video-2/seg-{i}.m4s" for i in (2, 3, 4, 5)]  # 9 s: five segments
    assert r.startup_s == pytest.approx(0.4)  # four requests of 0.1 s
    # Playback from 0.4: seg-3 is due at 4.4 and may be asked for from 0.4; seg-4 (due 6.4) not
    # before 2.4 — the viewer waits instead of racing ahead.
    t = dict((p, at) for at, p in fetched)
    assert t["/titles/7/v1/video-2/seg-4.m4s"] == pytest.approx(2.4)
    # seg-4 arrives at 11.4, due at 6.4: 5 s stalled; seg-5 then due at 10.4: on time.
    assert r.stalls == 1 and r.stalled_s == pytest.approx(5.0)
    assert r.played_s == 10.0 and r.segments == 5 and r.bytes == len(master) + len(media) + 60
    assert now[0] == pytest.approx(15.4)  # it stays until its last segment has played
    assert lag and all(x == pytest.approx(0) for x in lag)


def test_a_viewer_that_gets_a_403_fails_without_a_startup():
    import asyncio

    from headwater.bench.viewer_load import Target, play_one

    async def get(pq: str) -> tuple[int, bytes, str]:
        return 403, b"", ""

    r = asyncio.run(play_one(get, Target(1, "pop-b", "http://x", "cdn",
                                         {"hls": "http://c/t/master.m3u8", "cdn": {"query": ""}}),
                             0.0, watch_s=10, ahead_s=4))
    assert r.startup_s is None and "403" in r.error


def test_zipf_choice_favours_the_first_title_as_the_weights_say():
    import random

    from headwater.bench.viewer_load import pick_titles, zipf_weights

    w = zipf_weights(4, 1.0)
    assert sum(w) == pytest.approx(1) and w[0] == pytest.approx(2 * w[1]) == pytest.approx(4 * w[3])
    picks = pick_titles([10, 11, 12, 13], 20000, alpha=1.0, rng=random.Random(5))
    for tid, share in zip((10, 11, 12, 13), w):
        assert picks.count(tid) / len(picks) == pytest.approx(share, abs=0.015)


def test_tier_figures_come_from_the_counters_moves_between_two_scrapes():
    from headwater.bench.viewer_load import parse_metrics, tier_figures

    def scrape(hit: int, miss: int, fetch: int, tier: str = "pop") -> dict:
        return parse_metrics(
            f'# HELP hw_edge_requests_total x\n'
            f'hw_edge_requests_total{{tier="{tier}",result="Hit"}} {hit}\n'
            f'hw_edge_requests_total{{result="Miss",tier="{tier}"}} {miss}\n'
            f'hw_edge_response_bytes_total{{tier="{tier}",result="Hit"}} {hit * 100}\n'
            f'hw_edge_response_bytes_total{{tier="{tier}",result="Miss"}} {miss * 100}\n'
            f'hw_edge_upstream_fetches_total{{tier="{tier}",target="origin"}} {fetch}\n'
            f'hw_edge_upstream_fetches_total{{tier="{tier}",target="shield-1"}} 99\n'
            f'process_cpu_seconds_total 3\n')

    before = {"pop-a": scrape(5, 5, 0), "shield-1": scrape(0, 2, 2, "shield")}
    after = {"pop-a": scrape(14, 6, 0), "pop-b": scrape(3, 1, 0), "shield-1": scrape(1, 5, 5, "shield")}
    pop, shield = tier_figures(before, after)
    assert (pop.tier, pop.requests, pop.hits) == ("pop", 14, 12)  # pop-a moved 9+1, pop-b (new) 3+1
    assert pop.hit_ratio == pytest.approx(12 / 14) and pop.byte_hit_ratio == pytest.approx(12 / 14)
    assert (shield.tier, shield.requests, shield.hits, shield.origin_fetches) == ("shield", 4, 1, 3)


def test_the_load_report_has_the_percentiles_the_rebuffer_ratio_and_the_generators_cpu():
    from headwater.bench.viewer_load import TierFigure, ViewerResult, percentile, render_load, summarise_viewers

    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile([5, 1, 3, 2, 4], 95) == 5 and percentile([], 50) is None
    rs = [ViewerResult(1, "pop-a", 0, startup_s=0.1 * i, segments=10, bytes=1000, played_s=20.0) for i in range(1, 20)]
    rs[0].stalled_s, rs[0].stalls = 20.0, 2
    rs.append(ViewerResult(2, "pop-b", -1, error="403 for /x"))  # no start: slower than any
    f = summarise_viewers(rs)
    assert f.startup_p50_s == pytest.approx(1.0) and f.startup_p95_s == pytest.approx(1.9)
    assert f.rebuffer_ratio == pytest.approx(20 / (19 * 20 + 20)) and f.viewers_stalled == 1
    assert f.per_pop == {"pop-a": 19, "pop-b": 1} and (f.started, f.failed) == (19, 1)
    text = render_load(f, [TierFigure("pop", 100, 90, 1e6, 9e5, 0), TierFigure("shield", 10, 4, 1e5, 4e4, 6)],
                       titles=4, clip_s=40, watch_s=40, wall_s=50, gen_cpu_s=10, lag_p95_s=0.02,
                       load_start="1", load_end="2", cpus=2, errors=["403 for /x"], prediction="SIM",
                       daemon_cpu_s={"pop-a": 45.0})
    assert "p50 1000 ms, p95 1900 ms  (19/20 started, 1 failed)" in text
    assert "pop              100    90.00 %" in text and "origin: 6 fetches, ~0.06 MB" in text
    assert "10.0 CPU s over 50 s wall (20 % of a core)" in text and text.endswith("SIM")
    assert "daemons: pop-a 45.0 CPU s (90 %)" in text and "WARNING" not in text
    late = render_load(f, [], titles=4, clip_s=40, watch_s=40, wall_s=50, gen_cpu_s=10, lag_p95_s=1.5,
                       load_start="1", load_end="2", cpus=2)
    assert "WARNING: the generator's sleeps woke late" in late  # its figures are not only the CDN's


def test_a_sessions_cpu_counts_the_process_and_its_workers_only(tmp_path):
    import os

    from headwater.bench.viewer_load import session_cpu_seconds

    tick = os.sysconf("SC_CLK_TCK")
    for pid, sid, ut, st in ((10, 10, 3 * tick, tick), (11, 10, tick, 0), (12, 99, 50 * tick, 0)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(
            f"{pid} (head water) S 1 {sid} {sid} 0 -1 0 0 0 0 0 {ut} {st} 0 0 20 0 1 0 0 0 0\n")
    (tmp_path / "self").mkdir()
    assert session_cpu_seconds(10, proc=str(tmp_path)) == 5.0
    assert session_cpu_seconds(os.getsid(0)) > 0  # the real /proc: this test's own session


def test_the_simulators_scenario_for_the_run_loads(tmp_path):
    from headwater.bench.simulate.scenario import loads_scenario
    from headwater.bench.viewer_load import scenario_toml

    sc = loads_scenario(scenario_toml(titles=4, clip_s=40, segment_s=2, viewers=1000, ladder_kbps=(300, 100),
                                      alpha=1.0, watch_s=40, ramp_s=10, pops=("pop-a", "pop-b"),
                                      regionals=("regional-1", "regional-2"), shields=("shield-1",)))
    assert sc.catalogue.titles == 4 and sc.catalogue.runtime_max_s == 40 and sc.catalogue.new_per_day == 0
    assert sc.media.segment_s == 2 and [r.kbps for r in sc.media.ladder] == [300, 100]
    assert sc.viewers.peak_concurrent == 1000 and set(sc.viewers.diurnal) == {1.0}
    assert sc.window.duration_s == 50 and sc.window.warmup_s == 0  # the run, from empty caches
    assert sc.pops == ("pop-a", "pop-b") and sc.tiers.shields == ("shield-1",) and sc.sampling_rate == 1.0
