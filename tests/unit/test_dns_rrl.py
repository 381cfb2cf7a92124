"""Response rate limiting: BIND's credit accounting, slip, window recovery, prefixes, the bounded
table under a random-source flood, and the [dns.rrl] reader. A fake clock (``now`` passed in)."""

from __future__ import annotations

import random
import socket
import tomllib

import pytest

from headwater.config import ConfigError, Reader
from headwater.dns.rrl import (
    WAYS,
    ResponseRateLimiter,
    RrlConfig,
    Verdict,
    add_rrl_metrics,
    read_rrl,
)
from headwater.metrics import Registry

SEND, DROP, SLIP = Verdict.SEND, Verdict.DROP, Verdict.SLIP
SECRET = b"0123456789abcdef"


def limiter(**kw) -> ResponseRateLimiter:
    return ResponseRateLimiter(RrlConfig(**kw), secret=SECRET)


def run(rrl, ip, n, *, start, rate_qps, kind="answer", qname="video.cdn.test.", zone=""):
    """``n`` responses to ``ip`` evenly spaced at ``rate_qps`` from ``start``; the verdicts."""
    return [rrl.decide(ip, kind, qname, start + i / rate_qps, zone=zone) for i in range(n)]


def test_steady_client_under_the_limit_is_never_limited():
    rrl = limiter(responses_per_second=20)
    verdicts = run(rrl, "198.51.100.7", 19 * 600, start=1000.0, rate_qps=19)  # 10 minutes at 19/s
    assert set(verdicts) == {SEND}
    assert rrl.statistics().dropped == rrl.statistics().slipped == 0


def test_burst_of_one_second_then_limited():
    rrl = limiter(responses_per_second=20, slip=0)
    verdicts = [rrl.decide("198.51.100.7", "answer", "a.test.", 5.0) for _ in range(25)]
    assert verdicts == [SEND] * 20 + [DROP] * 5  # credit never exceeds one second's worth


def test_spoofed_flood_of_one_victim_prefix_is_limited_with_the_slip_ratio():
    rrl = limiter(responses_per_second=10, window_seconds=15, slip=2)
    rng = random.Random(7)
    # 10 s of 2,000 q/s from sources spoofed all over the victim's /24, same answer each time
    # (the reflection pattern): 20,000 responses, about 10/s may go out in full.
    verdicts = [rrl.decide(f"203.0.113.{rng.randrange(256)}", "answer", "VIDEO.cdn.test.",
                           100.0 + i / 2000) for i in range(20_000)]
    sent = verdicts.count(SEND)
    # The first second's credit goes out; after that the account sits at its floor (a flood
    # debits faster than the rate refills), so nothing more in full until the flood stops.
    assert verdicts[:10] == [SEND] * 10 and sent == 10
    withheld = [v for v in verdicts if v is not SEND]
    assert abs(withheld.count(SLIP) - withheld.count(DROP)) <= 1  # slip 2: every other one
    # The withheld ones alternate drop, slip, drop, slip...
    assert withheld[:6] == [DROP, SLIP, DROP, SLIP, DROP, SLIP]
    st = rrl.statistics()
    assert (st.sent, st.dropped + st.slipped) == (sent, len(withheld))
    assert st.buckets == 1  # one /24, one name (case folded)
    # Another /24 asking the same name meanwhile is not affected.
    assert rrl.decide("203.0.114.1", "answer", "video.cdn.test.", 110.0) is SEND


@pytest.mark.parametrize("slip, expect", [(0, {DROP}), (1, {SLIP}), (3, None)])
def test_slip_zero_always_drops_one_always_slips(slip, expect):
    rrl = limiter(responses_per_second=5, slip=slip)
    withheld = [v for v in run(rrl, "192.0.2.1", 300, start=0.0, rate_qps=1000) if v is not SEND]
    assert len(withheld) > 250
    if expect is not None:
        assert set(withheld) == expect
    else:
        assert withheld[:6] == [DROP, DROP, SLIP, DROP, DROP, SLIP]


def test_window_recovery():
    rrl = limiter(responses_per_second=10, window_seconds=15, slip=0)
    run(rrl, "192.0.2.9", 5000, start=0.0, rate_qps=1000)  # 5 s flood: the debt hits its floor
    end = 5.0
    # The debt is window x rate = 150 credits; refilled at 10/s it takes 15 s to clear.
    assert rrl.decide("192.0.2.9", "answer", "video.cdn.test.", end + 14.0) is DROP
    assert rrl.decide("192.0.2.9", "answer", "video.cdn.test.", end + 15.3) is SEND
    rrl2 = limiter(responses_per_second=10, window_seconds=2, slip=0)
    run(rrl2, "192.0.2.9", 5000, start=0.0, rate_qps=1000)
    assert rrl2.decide("192.0.2.9", "answer", "video.cdn.test.", end + 1.5) is DROP
    assert rrl2.decide("192.0.2.9", "answer", "video.cdn.test.", end + 2.3) is SEND


def test_ipv4_prefixing():
    rrl = limiter(responses_per_second=3, slip=0, ipv4_prefix=24)
    for last in (1, 77, 254):  # three hosts of one /24 share one account
        assert rrl.decide(f"10.9.8.{last}", "answer", "x.test.", 1.0) is SEND
    assert rrl.decide("10.9.8.200", "answer", "x.test.", 1.0) is DROP
    assert rrl.decide("10.9.9.1", "answer", "x.test.", 1.0) is SEND  # the next /24 does not
    assert rrl.decide("::ffff:10.9.8.5", "answer", "x.test.", 1.0) is DROP  # v4-mapped is v4


def test_ipv6_prefixing():
    rrl = limiter(responses_per_second=2, slip=0, ipv6_prefix=56)
    assert rrl.decide("2001:db8:0:ab00::1", "answer", "x.test.", 1.0) is SEND
    assert rrl.decide("2001:db8:0:abff:ffff::9", "answer", "x.test.", 1.0) is SEND  # same /56
    assert rrl.decide("2001:db8:0:ab12::", "answer", "x.test.", 1.0) is DROP
    assert rrl.decide("2001:db8:0:ac00::1", "answer", "x.test.", 1.0) is SEND  # the next /56
    assert rrl.decide("fe80::1%eth0", "answer", "x.test.", 1.0) is SEND
    with pytest.raises(ValueError):
        rrl.decide("not-an-ip", "answer", "x.test.", 1.0)


def test_accounts_by_kind_and_name():
    rrl = limiter(responses_per_second=2, errors_per_second=1, nxdomains_per_second=1, slip=0)
    ip = "192.0.2.50"
    # Answers count per qname: a second name has its own account.
    assert run(rrl, ip, 3, start=0.0, rate_qps=1e6, qname="a.test.") == [SEND, SEND, DROP]
    assert rrl.decide(ip, "answer", "b.test.", 0.0) is SEND
    # NXDOMAIN counts per zone, whatever the (random) qname: random subdomains do not evade it.
    assert rrl.decide(ip, "nxdomain", "r1.cdn.test.", 0.0, zone="cdn.test.") is SEND
    assert rrl.decide(ip, "nxdomain", "r2.cdn.test.", 0.0, zone="cdn.test.") is DROP
    assert rrl.decide(ip, "nxdomain", "q.other.test.", 0.0, zone="other.test.") is SEND
    # Errors share one account per prefix, whatever the name.
    assert rrl.decide(ip, "error", "foreign.example.", 0.0) is SEND
    assert rrl.decide(ip, "error", "elsewhere.example.", 0.0) is DROP
    with pytest.raises(ValueError):
        rrl.decide(ip, "bogus", "a.test.", 0.0)


def test_zero_rate_and_disabled_are_unlimited():
    assert set(run(limiter(responses_per_second=0), "192.0.2.1", 500, start=0, rate_qps=1e6)) == {SEND}
    off = limiter(enabled=False, responses_per_second=1)
    assert set(run(off, "192.0.2.1", 500, start=0, rate_qps=1e6)) == {SEND}
    assert off.statistics().sent == 500 and len(off) == 0


def test_exempt_networks():
    cfg = RrlConfig(responses_per_second=1, slip=0,
                    exempt=(__import__("ipaddress").ip_network("192.0.2.0/28"),))
    rrl = ResponseRateLimiter(cfg, secret=SECRET)
    assert set(run(rrl, "192.0.2.3", 50, start=0, rate_qps=1e6)) == {SEND}
    assert run(rrl, "192.0.2.30", 2, start=0, rate_qps=1e6) == [SEND, DROP]


def _random_source_flood(sources: int, max_buckets: int) -> None:
    """``sources`` responses to random /24s at 100k q/s, interleaved with a victim /24's flood
    (1k q/s, already in debt) and a legitimate client asking 5 names once a second each."""
    rrl = limiter(responses_per_second=10, window_seconds=15, slip=2, max_buckets=max_buckets)
    rng = random.Random(11)
    run(rrl, "203.0.113.9", 2000, start=0.0, rate_qps=1000)  # the victim's account is in debt
    addresses = [socket.inet_ntoa((rng.randrange(1, 224 << 24)).to_bytes(4, "big"))
                 for _ in range(min(sources, 100_000))]
    legit_sent = seconds = 0
    for i in range(sources):
        t = 2.0 + i / 100_000
        rrl.decide(addresses[i % len(addresses)], "answer", "video.cdn.test.", t)
        if i % 100 == 0:  # an eviction would give the victim fresh credit: it would get answers
            assert rrl.decide("203.0.113.77", "answer", "video.cdn.test.", t) is not SEND
        if i % 100_000 == 0:
            seconds += 1
            for n in range(5):
                legit_sent += rrl.decide("198.51.100.20", "answer", f"n{n}.cdn.test.", t) is SEND
            assert len(rrl) <= max_buckets
    st = rrl.statistics()
    assert st.buckets == st.capacity == max_buckets  # full, never beyond
    assert st.evictions >= sources * 0.9
    assert legit_sent == 5 * seconds  # every one of the legitimate client's answers went out


def test_random_source_flood_keeps_the_table_bounded_and_spares_the_victim_and_the_legit():
    _random_source_flood(60_000, 512)


@pytest.mark.slow
def test_random_source_flood_of_a_million_sources():
    _random_source_flood(1_000_000, 4096)


def test_eviction_takes_the_account_with_most_credit():
    rrl = limiter(responses_per_second=10, slip=0, max_buckets=WAYS)  # one set of WAYS slots
    for k in range(WAYS - 1):  # WAYS-1 accounts flooded into debt
        run(rrl, f"10.{k}.0.1", 100, start=0.0, rate_qps=1e4)
    rrl.decide("10.200.0.1", "answer", "video.cdn.test.", 0.0)  # one answer: nearly full credit
    assert len(rrl) == WAYS
    for k in range(50):  # new accounts evict only the one with credit (and each other)
        rrl.decide(f"10.100.{k}.1", "answer", "video.cdn.test.", 0.5)
    for k in range(WAYS - 1):
        assert rrl.decide(f"10.{k}.0.1", "answer", "video.cdn.test.", 0.5) is DROP
    assert rrl.statistics().evictions == 50


def test_metrics_are_monotonic_counters():
    registry = Registry()
    rrl = limiter(responses_per_second=1, slip=2)
    add_rrl_metrics(registry, lambda: rrl)
    run(rrl, "192.0.2.1", 5, start=0, rate_qps=1e6)  # send, drop, slip, drop, slip
    text = registry.render()
    assert 'hw_dns_rrl_responses_total{verdict="sent"} 1' in text
    assert 'hw_dns_rrl_responses_total{verdict="dropped"} 2' in text
    assert 'hw_dns_rrl_responses_total{verdict="slipped"} 2' in text
    assert "hw_dns_rrl_buckets 1" in text
    run(rrl, "192.0.2.1", 2, start=0, rate_qps=1e6)
    assert 'hw_dns_rrl_responses_total{verdict="dropped"} 3' in registry.render()


# --- the reader -----------------------------------------------------------------------------------

def read(text: str):
    data = tomllib.loads(text)
    r = Reader("cluster.toml", text)
    return read_rrl(r, data["dns"]["rrl"])


def test_read_rrl_defaults_and_values():
    cfg = read("[dns.rrl]\n")
    assert cfg == RrlConfig()
    cfg = read("[dns]\nid = 'x'\n\n[dns.rrl]\nresponses_per_second = 5\nwindow_seconds = 30\n"
               "slip = 0\nipv4_prefix = 32\nipv6_prefix = 64\nmax_buckets = 1000\n"
               "exempt = ['10.0.0.0/8']\nenabled = false\n")
    assert (cfg.responses_per_second, cfg.errors_per_second, cfg.nxdomains_per_second) == (5, 5, 5)
    assert (cfg.window_seconds, cfg.slip, cfg.ipv4_prefix, cfg.ipv6_prefix) == (30, 0, 32, 64)
    assert cfg.max_buckets == 1000 and not cfg.enabled and str(cfg.exempt[0]) == "10.0.0.0/8"
    assert read("[dns.rrl]\nresponses_per_second = 5\nerrors_per_second = 1\n").errors_per_second == 1


@pytest.mark.parametrize("line, key", [
    ("slip = 11", "dns.rrl.slip"),
    ("window_seconds = 0", "dns.rrl.window_seconds"),
    ("window_seconds = 7200", "dns.rrl.window_seconds"),
    ("ipv4_prefix = 33", "dns.rrl.ipv4_prefix"),
    ("ipv6_prefix = 0", "dns.rrl.ipv6_prefix"),
    ("responses_per_second = -1", "dns.rrl.responses_per_second"),
    ("max_buckets = 0", "dns.rrl.max_buckets"),
    ("slip = 'two'", "dns.rrl.slip"),
    ("exempt = ['10.0.0.300/8']", "dns.rrl.exempt"),
    ("table_size = 5", "dns.rrl.table_size"),
])
def test_read_rrl_errors_name_key_and_line(line, key):
    with pytest.raises(ConfigError) as e:
        read(f"[dns]\nid = 'x'\n[dns.rrl]\nenabled = true\n{line}\n")
    assert e.value.key == key
    assert e.value.line == 5
    assert str(e.value).startswith(f"cluster.toml:5: {key}: ")


def test_set_associative_table_with_tiny_capacity():
    rrl = limiter(responses_per_second=1, max_buckets=3)  # fewer slots than WAYS: one set of 3
    assert rrl.capacity == 3 < WAYS
    for i in range(10):
        rrl.decide(f"10.0.{i}.1", "answer", "x.test.", 0.0)
    assert len(rrl) == 3


# --- the daemon's UDP path (dns-core's DnsServer) with a limiter attached ---------------------------

def test_daemon_udp_path_sends_drops_and_slips(tmp_path):
    import dnslib

    from headwater import config as hwconfig
    from headwater.dns.daemon import DnsServer

    cfg = hwconfig.loads(f"""
[cluster]
data_dir = "{tmp_path}"
[dns]
id = "dns-1"
port = 15410
admin_port = 15411
zone = "cdn.headwater.test."
[[dns.records]]
name = "www"
type = "A"
value = "10.0.0.1"
[[dns.pops]]
name = "pop-1"
ipv4 = ["127.0.0.1"]
lat = 51.5
lon = 0.0
healthz = "http://127.0.0.1:1/healthz"
""")
    now = [100.0]
    server = DnsServer(cfg, cfg.daemon("dns-1"), registry=Registry(), clock=lambda: now[0])
    server.rrl = limiter(responses_per_second=2, slip=2)  # what build_rrl is to return
    query = dnslib.DNSRecord.question("WWW.cdn.headwater.test", "A")
    query.header.rd = 0
    replies = [server.on_datagram(query.pack(), ("192.0.2.1", 5000)) for _ in range(6)]
    parsed = [None if r is None else dnslib.DNSRecord.parse(r) for r in replies]
    assert [p is not None and p.header.tc == 0 and len(p.rr) == 1 for p in parsed] == [True] * 2 + [False] * 4
    assert parsed[2] is None and parsed[4] is None  # dropped
    for slipped in (parsed[3], parsed[5]):  # truncated, empty, the question kept
        assert slipped.header.tc == 1 and slipped.header.qr == 1 and not slipped.rr
        assert str(slipped.q.qname) == "WWW.cdn.headwater.test."
    now[0] += 20.0  # past the window: answered again
    assert dnslib.DNSRecord.parse(server.on_datagram(query.pack(), ("192.0.2.9", 5000))).rr
    assert rrl_counts(server) == {"SEND": 3, "DROP": 2, "SLIP": 2}


def rrl_counts(server) -> dict[str, int]:
    return dict(server.rrl_counts)
