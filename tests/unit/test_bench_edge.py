"""`bench edge`'s pure parts: h2load's and wrk's summaries, the Zipf trace and the LRU yardstick,
which cache made an origin fetch, and the generated configs (read by our config loader, and by
``nginx -t`` when nginx is installed)."""

from __future__ import annotations

import math
import random
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from headwater import config as hwconfig
from headwater.bench import edge
from headwater.bench.http_core import parse_wrk

# h2load 1.52 against a TLS server, -D 2000ms --warm-up-time 500ms (progress lines cut).
H2LOAD_TLS = """\
starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 500ms of warm-up time and 2s of main duration for measurements.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Warm-up started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.53s, 69.00 req/s, 11.77MB/s
requests: 138 total, 322 started, 138 done, 136 succeeded, 2 failed, 0 errored, 1 timeout
status codes: 244 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 23.55MB (24693196) total, 9.69KB (9920) headers (space savings 88.88%), 24.26MB (25436160) data
                     min         max         mean         sd        +/- sd
time for request:      1.38s       2.13s    812.50ms    235.83ms    50.72%
time for connect:    43.68ms       1.14s    591.24ms    329.53ms    56.52%
time to 1st byte:   241.38ms       1.32s    768.59ms    332.90ms    60.87%
req/s           :       0.00        3.95        2.13        1.85    62.50%
"""

H2LOAD_H2C = """\
Application protocol: h2c
finished in 3.51s, 314.33 req/s, 325.39KB/s
requests: 943 total, 943 started, 943 done, 943 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1100 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.08MB (1133056) total, 20.65KB (21145) headers (space savings 93.12%), 1.04MB (1092608) data
                     min         max         mean         sd        +/- sd
time for request:    23.70ms    881.19ms    105.44ms     80.09ms    85.05%
"""

WRK = """\
Running 2s test @ http://127.0.0.1:42555/1k
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   149.81ms  270.39ms   1.96s    91.05%
    Req/Sec   370.12    120.50   600.00     70.00%
  Latency Distribution
     50%   52.10ms
     75%  120.00ms
     90%  400.00ms
     99%    1.50s
  1442 requests in 2.00s, 1.62MB read
  Socket errors: connect 0, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 2
Requests/sec:    720.33
Transfer/sec:      0.81MB
"""


def test_parse_h2load_tls_summary():
    h = edge.parse_h2load(H2LOAD_TLS)
    assert h.rps == pytest.approx(69.0) and h.protocol == "h2"
    assert (h.done, h.succeeded, h.failed, h.errored, h.timeout) == (138, 136, 2, 0, 1)
    assert h.status_2xx == 244 and h.data_bytes == 25436160
    assert h.mean_ms == pytest.approx(812.5) and h.max_ms == pytest.approx(2130.0)


def test_parse_h2load_h2c_and_microseconds():
    h = edge.parse_h2load(H2LOAD_H2C)
    assert h.protocol == "h2c" and h.rps == pytest.approx(314.33) and h.succeeded == 943
    assert h.mean_ms == pytest.approx(105.44) and h.max_ms == pytest.approx(881.19)
    fast = edge.parse_h2load(H2LOAD_H2C.replace("105.44ms", "950us").replace("881.19ms", "2.5s"))
    assert fast.mean_ms == pytest.approx(0.95) and fast.max_ms == pytest.approx(2500.0)


def test_parse_h2load_refuses_a_run_without_a_summary():
    with pytest.raises(ValueError, match="finished in"):
        edge.parse_h2load("starting benchmark...\nconnect to 127.0.0.1:1 failed\n")
    with pytest.raises(ValueError, match="requests:"):
        edge.parse_h2load("finished in 1.00s, 5.00 req/s, 1KB/s\n")


def test_parse_wrk_counts_socket_errors_and_non_2xx():
    w = parse_wrk(WRK)
    assert w["rps"] == pytest.approx(720.33) and w["requests"] == 1442
    assert w["errors"] == 1 + 3 + 2
    assert w["p50_ms"] == pytest.approx(52.1) and w["p99_ms"] == pytest.approx(1500.0)


def test_zipf_trace_is_skewed_deterministic_and_in_range():
    trace = edge.zipf_trace(1000, 20_000, s=1.0, rng=random.Random(1))
    assert trace == edge.zipf_trace(1000, 20_000, s=1.0, rng=random.Random(1))
    assert min(trace) >= 0 and max(trace) < 1000
    counts = Counter(trace)
    # P(rank 1) / P(rank 2) = 2 with s = 1; the most popular object is index 0.
    assert counts.most_common(1)[0][0] == 0
    assert 1.6 < counts[0] / counts[1] < 2.5
    harmonic = sum(1 / k for k in range(1, 1001))
    assert counts[0] / len(trace) == pytest.approx(1 / harmonic, rel=0.1)
    flat = Counter(edge.zipf_trace(10, 20_000, s=0.0, rng=random.Random(2)))
    assert max(flat.values()) / min(flat.values()) < 1.2  # s = 0: uniform


def test_lru_fetches_counts_misses_after_the_warm_up():
    trace = [0, 1, 2, 0, 1, 2, 3, 0]
    # Two slots: 0,1 -> miss, miss; 2 evicts 0; every later request misses too.
    assert edge.lru_fetches(trace, object_bytes=10, capacity_bytes=20) == 8
    assert edge.lru_fetches(trace, object_bytes=10, capacity_bytes=30) == 5  # 0,1,2,3 and 0 after 3
    assert edge.lru_fetches(trace, object_bytes=10, capacity_bytes=30, warm=3) == 2
    assert edge.lru_fetches(trace, object_bytes=10, capacity_bytes=5) == len(trace)  # holds nothing
    # Charged 5 more an entry, 30 bytes hold two objects, not three.
    assert edge.lru_fetches(trace, object_bytes=10, capacity_bytes=30, entry_overhead=5) == \
        edge.lru_fetches(trace, object_bytes=10, capacity_bytes=20)
    big = edge.zipf_trace(500, 5000, s=0.9, rng=random.Random(3))
    small_cache = edge.lru_fetches(big, object_bytes=1, capacity_bytes=50)
    large_cache = edge.lru_fetches(big, object_bytes=1, capacity_bytes=400)
    assert large_cache < small_cache <= len(big)  # a larger cache fetches less


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert edge.percentile(values, 50) == 50.0
    assert edge.percentile(values, 99) == 99.0
    assert edge.percentile([3.0], 99) == 3.0
    assert math.isnan(edge.percentile([], 50))


def test_fetcher_of_origin_log_lines():
    assert edge.fetcher_of("1.1 pop (headwater)|-|/1k") == "ours"
    assert edge.fetcher_of("1.1 cpop (headwater), 1.1 regional (headwater)|-|/cold/1") == "ours"
    assert edge.fetcher_of("1.1 nginx|-|/2m") == "nginx"
    assert edge.fetcher_of("-|32769|/2m") == "varnish"
    assert edge.fetcher_of("-|-|/1k") == "direct"


def test_generated_cluster_tomls_load(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    solo = tmp_path / "solo.toml"
    solo.write_text(edge.solo_cluster_toml(tmp_path / "var", origin_port=8080, pop=(9001, 9002, 9003), cert=cert,
                                           key=key, ram="256MiB", zipf_pop=(9004, 9005), zipf_ram="8MiB",
                                           zipf_disk="16MiB"))
    cfg = hwconfig.load(str(solo))
    pop, zpop = cfg.edge
    assert (pop.tier, pop.port, pop.tls_port, pop.workers, pop.ram_bytes) == ("pop", 9001, 9003, 1, 256 << 20)
    assert (zpop.ram_bytes, zpop.disk_bytes) == (8 << 20, 16 << 20)
    assert cfg.distributions[0].origin.port == 8080 and cfg.log_level == "warning"
    chain = tmp_path / "chain.toml"
    chain.write_text(edge.chain_cluster_toml(tmp_path / "var2", origin_port=8080, ports=list(range(9100, 9106))))
    tiers = [(e.id, e.tier, e.port) for e in hwconfig.load(str(chain)).edge]
    assert tiers == [("cpop", "pop", 9100), ("regional", "regional", 9102), ("shield", "shield", 9104)]


def test_varnish_argv_has_one_pool_and_the_origin():
    argv = edge.varnish_argv("/usr/sbin/varnishd", Path("/tmp/v"), port=6081, origin_port=8080, malloc="24m")
    joined = " ".join(argv)
    assert "-a 127.0.0.1:6081" in joined and "-b 127.0.0.1:8080" in joined and "-s malloc,24m" in joined
    assert "thread_pools=1" in joined and "-n /tmp/v" in joined and "-F" in argv


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="no nginx")
def test_nginx_accepts_the_generated_configs(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "1",
                    "-subj", "/CN=t"], check=True, capture_output=True)
    for name, text in (
        ("origin.conf", edge.origin_nginx_conf(tmp_path, tmp_path / "www", port=18080, direct_port=18081,
                                                memory_port=18082)),
        ("cache.conf", edge.cache_nginx_conf(tmp_path, origin_port=18080, port=18083, tls_port=18084, h2c_port=18085,
                                              cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")),
    ):
        (tmp_path / name).write_text(text)
        r = subprocess.run([nginx, "-t", "-q", "-c", str(tmp_path / name), "-p", str(tmp_path)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_the_hit_table_says_how_many_processes_serve_and_their_cpu_per_request():
    import argparse
    stack = edge.Stack(origin=1, direct=2, memory=3, fetch_log=Path("/nonexistent"), h1={"ours": 4, "nginx": 5},
                       h2c={}, tls={}, chain_pop=6, zipf_pop=7, versions={"nginx": "1.22", "varnish": "7.1"},
                       pids={"ours": [10], "nginx": [11], "varnish": [12]})
    figs = {"ours": [edge.Figure(rps=20_000, gbit_per_s=0.16, errors=0, cpu_us=40.0)],
            "nginx": [edge.Figure(rps=40_000, gbit_per_s=0.33, errors=0, cpu_us=20.0)]}
    args = argparse.Namespace(threads=2, conns=64, h2_conns=32, h2_streams=8, seconds=5.0, rounds=1)
    lines = edge.render_hits(stack, {"h1": {"1k": figs}}, None, None, None, args,
                             measured_fetches={"ours": 0, "nginx": 0, "varnish": 0})
    text = "\n".join(lines)
    assert "serving processes: ours 1 (POP workers = 1), nginx 1 (worker_processes 1)" in text
    assert "0.50x" in next(line for line in lines if line.startswith("HTTP/1.1 1 KiB") and "k/s" in line)
    cpu_row = next(line for line in lines if line.startswith("HTTP/1.1 1 KiB") and "k/s" not in line)
    assert cpu_row.split()[3:6] == ["40.0", "20.0", "nan"] and "2.00x" in cpu_row


def test_protos_and_objects_are_picked_from_what_the_bench_knows():
    assert edge._choices("h1", ("h1", "h2c")) == ["h1"]
    assert edge._choices("1k, 2m", tuple(edge.OBJECTS)) == ["1k", "2m"]
    with pytest.raises(Exception):
        edge._choices("h3", ("h1", "h2c"))


def test_playback_sessions_are_deterministic_sequential_and_bounded():
    sessions = edge.playback_sessions(400, titles=8, segments=60, rng=random.Random(11))
    assert sessions == edge.playback_sessions(400, titles=8, segments=60, rng=random.Random(11))
    assert all(s.segments and all(0 <= n < 60 for n in s.segments) for s in sessions)
    assert {s.rendition for s in sessions} == set(edge.RENDITIONS)
    assert Counter(s.title for s in sessions).most_common(1)[0][0] == 0  # Zipf: title 0 the most watched
    steps = Counter(b - a for s in sessions for a, b in zip(s.segments, s.segments[1:]))
    assert min(steps) >= 1 and steps[1] > 0.9 * sum(steps.values())  # mostly n, n+1, ...: a few seeks ahead
    assert any(5 <= step <= 20 for step in steps)
    # Some viewers abandon early, others play to the end: prefetching past the last watched is wasted.
    assert any(len(s.segments) < 10 and s.segments[-1] < 50 for s in sessions)
    assert any(s.segments[-1] == 59 for s in sessions)
    assert sum(s.segments[0] == 0 for s in sessions) > len(sessions) // 2  # most start at the beginning
    first = sessions[0]
    assert first.paths()[0] == edge.segment_path(first.title, first.rendition, first.segments[0])
    assert edge.segment_path(3, "720p", 42) == "/p/t3/720p/seg-00042.m4s"


def test_x_cache_hits_and_the_origins_segment_log():
    assert edge.is_hit("Hit from cpop") and edge.is_hit("RefreshHit from cpop") and edge.is_hit("StaleHit from cpop")
    assert not edge.is_hit("Miss from cpop") and not edge.is_hit("") and not edge.is_hit("Error from cpop")
    lines = ["200|61440|/p/t0/720p/seg-00001.m4s", "404|153|/p/t0/720p/seg-00060.m4s", "200|-|/p/x"]
    assert edge.segment_fetches(lines) == {"fetches": 3, "not_found": 1, "bytes": 61440 + 153}


def test_prefetch_summary_weighs_hits_by_requests_and_bytes():
    played = [edge.Played(ms=1.0, bytes=100, hit=True, status=200),
              edge.Played(ms=3.0, bytes=300, hit=False, status=200),
              edge.Played(ms=2.0, bytes=100, hit=True, status=200),
              edge.Played(ms=9.0, bytes=0, hit=False, status=502)]
    s = edge.prefetch_summary(played)
    assert (s["requests"], s["errors"]) == (4, 1)
    assert s["hit_ratio"] == pytest.approx(2 / 3) and s["byte_hit_ratio"] == pytest.approx(200 / 500)
    assert (s["p50_ms"], s["p99_ms"], s["miss_p50_ms"]) == (2.0, 9.0, 3.0)


def test_the_prefetch_chain_differs_only_in_its_segment_behaviour(tmp_path):
    on, off = tmp_path / "on.toml", tmp_path / "off.toml"
    ports = list(range(9100, 9106))
    on.write_text(edge.chain_cluster_toml(tmp_path / "v1", origin_port=8080, ports=ports, prefetch=3))
    off.write_text(edge.chain_cluster_toml(tmp_path / "v2", origin_port=8080, ports=ports, prefetch=0))
    (dist_on,), (dist_off,) = hwconfig.load(str(on)).distributions, hwconfig.load(str(off)).distributions
    segment = edge.segment_path(0, "360p", 1)
    assert (dist_on.route(segment).cache.prefetch, dist_off.route(segment).cache.prefetch) == (3, 0)
    assert dist_on.route("/1k").cache.prefetch == 0  # only segments
    assert [e.tier for e in hwconfig.load(str(on)).edge] == ["pop", "regional", "shield"]


def test_segments_are_files_until_the_renditions_end(tmp_path):
    edge.write_segments(tmp_path, titles=2, segments=3)
    for title in range(2):
        for rendition, size in edge.RENDITIONS.items():
            assert (tmp_path / edge.segment_path(title, rendition, 2).lstrip("/")).stat().st_size == size
            assert not (tmp_path / edge.segment_path(title, rendition, 3).lstrip("/")).exists()


def test_the_prefetch_table_reports_off_against_on():
    import argparse

    args = argparse.Namespace(prefetch_sessions=2, prefetch_titles=1, prefetch_segments=4, prefetch_viewers=1,
                              prefetch_think=0.1, prefetch_seed=1, prefetch_depth=3)
    run = dict(requests=1000, errors=0, p50_ms=5.0, p99_ms=50.0, miss_p50_ms=20.0, seconds=10.0, distinct_segments=350)
    result = {"off": edge.PrefetchRun(**run, hit_ratio=0.3, byte_hit_ratio=0.35, regional_fetches=700,
                                      origin_fetches=700, origin_not_found=0, origin_bytes=10 * edge.MiB,
                                      pop_prefetch={}),
              "on": edge.PrefetchRun(**run, hit_ratio=0.8, byte_hit_ratio=0.82, regional_fetches=760,
                                     origin_fetches=760, origin_not_found=4, origin_bytes=11 * edge.MiB,
                                     pop_prefetch={"prefetch_fetched": 500, "used": 440})}
    text = "\n".join(edge.render_prefetch(result, args))
    assert re.search(r"POP hit ratio, requests \(%\)\s+30\.0\s+80\.0\s+\+50\.0", text)
    assert re.search(r"origin fetches / 1,000 requests\s+700\s+760\s+\+60", text)
    assert re.search(r"regional fetches / 1,000 requests\s+700\s+760\s+\+60", text)
    assert "fetched 500, used 440" in text
    assert "hit ratio 65.0 %, 350 fetches / 1,000 requests" in text
