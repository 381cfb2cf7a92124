"""`bench dns`'s pure parts: dnsperf 2.10's text, the p99 from its verbose lines, the query file,
the zone and the configs it writes."""

from __future__ import annotations

import math
import struct
import tomllib

import dnslib
import pytest

from headwater.bench import dns as bench_dns

# Real dnsperf 2.10.0 output (a 2 s run against Knot on this machine).
SUMMARY = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -B -d q.bin -s 127.0.0.1 -p 15353 -l 2 -c 4 -q 100
[Status] Sending queries (to 127.0.0.1:15353)
[Status] Started at: Wed Dec  2 09:21:51 2026
[Status] Stopping after 2.000000 seconds
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         135411
  Queries completed:    135399 (99.99%)
  Queries lost:         12 (0.01%)

  Response codes:       NOERROR 135000 (99.71%), NXDOMAIN 399 (0.29%)
  Average packet size:  request 40, response 56
  Run time (s):         2.001704
  Queries per second:   67647.864020

  Average Latency (s):  0.001094 (min 0.000020, max 0.017866)
  Latency StdDev (s):   0.000855

"""

VERBOSE = """\
[Status] Stopping after 1.000000 seconds
> NOERROR binary input 0.000139
> NOERROR binary input 0.000059
> T binary input
> NXDOMAIN video.cdn.headwater.test A 0.004237
> NOERROR binary input 0.000060
"""


def test_parse_dnsperf_summary():
    r = bench_dns.parse_dnsperf(SUMMARY)
    assert (r.sent, r.completed, r.lost) == (135411, 135399, 12)
    assert r.qps == pytest.approx(67647.86402)
    assert r.run_seconds == pytest.approx(2.001704)
    assert (r.latency_avg_s, r.latency_min_s, r.latency_max_s) == (0.001094, 0.000020, 0.017866)
    assert r.latency_stddev_s == 0.000855
    assert r.rcodes == {"NOERROR": 135000, "NXDOMAIN": 399}
    assert r.p99_s is None


def test_parse_dnsperf_refuses_output_without_statistics():
    with pytest.raises(ValueError, match="Queries sent"):
        bench_dns.parse_dnsperf("Error: socket: Connection refused\n")


def test_verbose_latencies_and_percentile():
    answered, timed_out = bench_dns.latencies_from_verbose(VERBOSE)
    assert answered == [0.000139, 0.000059, 0.004237, 0.000060]
    assert timed_out == 1
    # 5 queries: the 99th percentile is the 5th slowest, a lost one.
    assert math.isinf(bench_dns.percentile(answered, timed_out, 99.0))
    assert bench_dns.percentile(answered, timed_out, 50.0) == 0.000139
    lat = [i / 1000 for i in range(1, 1001)]  # 1..1000 ms
    assert bench_dns.percentile(lat, 0, 99.0) == pytest.approx(0.990)
    assert bench_dns.percentile(lat, 5, 99.0) == pytest.approx(0.995)  # 1005 queries, 5 lost
    assert math.isnan(bench_dns.percentile([], 0, 99.0))


def _records(blob: bytes) -> list[dnslib.DNSRecord]:
    out, at = [], 0
    while at < len(blob):
        (n,) = struct.unpack_from("!H", blob, at)
        out.append(dnslib.DNSRecord.parse(blob[at + 2:at + 2 + n]))
        at += 2 + n
    return out


def test_query_file_mixes_ecs_and_plain_queries():
    spec = bench_dns.ZoneSpec(names=50)
    queries = _records(bench_dns.query_file(spec, count=2000, ecs_share=0.5, subnets=64, seed=3))
    assert len(queries) == 2000
    ecs, plain = [], []
    for q in queries:
        assert q.header.rd == 0 and len(q.questions) == 1 and q.q.qtype == dnslib.QTYPE.A
        opts = [o for rr in q.ar if rr.rtype == dnslib.QTYPE.OPT for o in rr.rdata]
        (ecs if opts else plain).append((q, opts))
    assert 850 <= len(ecs) <= 1150
    subnets = set()
    for q, opts in ecs:
        assert str(q.q.qname) == "video.cdn.headwater.test."
        (opt,) = opts
        assert opt.code == 8
        family, source, scope = struct.unpack_from("!HBB", opt.data)
        assert (family, source, scope, len(opt.data)) == (1, 24, 0, 4 + 3)
        subnets.add(opt.data[4:])
    assert 50 <= len(subnets) <= 64
    names = {str(q.q.qname) for q, _ in plain}
    assert "video.cdn.headwater.test." not in names and len(names) > 40


def test_zone_and_configs_describe_the_same_zone(tmp_path):
    spec = bench_dns.ZoneSpec(names=20)
    zone = bench_dns.knot_zone(spec)
    records = dnslib.RR.fromZone(zone)
    assert len(records) == 2 + 1 + len(spec.static())  # SOA, NS, video, the static ones
    toml = tomllib.loads(bench_dns.headwater_cluster_toml(
        spec, port=15353, admin_port=15354, workers=2, healthz="http://127.0.0.1:1/healthz",
        data_dir=tmp_path))
    dns = toml["dns"]
    assert (dns["port"], dns["workers"], dns["zone"]) == (15353, 2, "cdn.headwater.test.")
    assert len(dns["records"]) == len(spec.static())
    assert dns["steered"] == [{"name": "video", "answers": 1}]
    assert len(dns["pops"]) == len(spec.pops) and dns["rrl"]["enabled"] is False
    conf = bench_dns.knot_conf(tmp_path, 15353, 2)
    assert "listen: 127.0.0.1@15353" in conf and "udp-workers: 2" in conf
