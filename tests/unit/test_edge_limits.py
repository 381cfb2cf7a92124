"""headwater.edge.limits: token buckets, connection caps, the rule list, bounded tables."""

from __future__ import annotations

import ipaddress
import time

import pytest

from headwater.clock import FakeClock
from headwater.config import ConfigError, Reader
from headwater.edge import limits as lim
from headwater.edge.limits import Action, ClientLimits, Guard, RateLimit, Rule

SECRET = b"0123456789abcdef"


def guard(rules=(), **kw) -> Guard:
    limits = ClientLimits(**{"rate": RateLimit(requests_per_s=10.0, burst=20.0), **kw})
    return Guard(limits, rules, secret=SECRET)


def get(g: Guard, clock: FakeClock, ip: str = "192.0.2.1", path: str = "/v/seg.m4s", method: str = "GET",
        ua: str = "player/1.0", country: str | None = None) -> lim.Decision:
    return g.check_request(client_ip=ip, method=method, path=path, user_agent=ua, country=country,
                           now=clock.monotonic())


# --- token buckets -------------------------------------------------------------------------------------

def test_burst_then_rate_then_retry_after() -> None:
    clock = FakeClock()
    g = guard()
    assert all(get(g, clock).allowed for _ in range(20))  # the burst
    d = get(g, clock)
    assert d.action is Action.LIMIT and d.status == 429 and d.reason == "rate"
    assert d.retry_after_s == 1 and d.headers() == [("retry-after", "1")] and b"429" in d.body()
    clock.advance(0.1)  # one token at 10/s
    assert get(g, clock).allowed and not get(g, clock).allowed
    clock.advance(100)  # refills to the burst, not beyond
    assert sum(get(g, clock).allowed for _ in range(30)) == 20


def test_refused_requests_take_no_tokens() -> None:
    clock = FakeClock()
    g = guard()
    for _ in range(20):
        get(g, clock)
    for _ in range(1000):
        assert not get(g, clock).allowed  # a flood...
    clock.advance(0.1)
    assert get(g, clock).allowed  # ...does not push the next token further away


def test_retry_after_is_honest_at_low_rates() -> None:
    clock = FakeClock()
    g = guard(rate=RateLimit(requests_per_s=0.1, burst=1))
    assert get(g, clock).allowed
    d = get(g, clock)
    assert d.retry_after_s == 10
    clock.advance(9.5)
    assert get(g, clock).retry_after_s == 1
    clock.advance(0.5)
    assert get(g, clock).allowed


def test_clients_by_ipv4_address_and_ipv6_64() -> None:
    clock = FakeClock()
    g = guard(rate=RateLimit(requests_per_s=1.0, burst=1))
    assert get(g, clock, ip="192.0.2.1").allowed and not get(g, clock, ip="192.0.2.1").allowed
    assert get(g, clock, ip="192.0.2.2").allowed  # another /32
    assert not get(g, clock, ip="::ffff:192.0.2.1").allowed  # the same IPv4 client on a dual-stack socket
    assert get(g, clock, ip="2001:db8:1:2::1").allowed
    assert not get(g, clock, ip="2001:db8:1:2:ffff:ffff:ffff:ffff").allowed  # same /64
    assert get(g, clock, ip="2001:db8:1:3::1").allowed  # another /64
    assert lim.client_prefix("junk") == lim.client_prefix("more junk") == (0, 0)
    assert lim.client_prefix("10.1.2.3", ipv4_prefix=24) == lim.client_prefix("10.1.2.200", ipv4_prefix=24)


# --- bounded memory ---------------------------------------------------------------------------------------

def test_a_spray_of_sources_cannot_grow_the_table_or_free_a_flooder() -> None:
    clock = FakeClock()
    g = guard(rate=RateLimit(requests_per_s=1.0, burst=5), max_clients=512)
    flooder = "198.51.100.7"
    for _ in range(5):
        assert get(g, clock, ip=flooder).allowed
    assert not get(g, clock, ip=flooder).allowed
    # 30,000 spoofed-looking sources, one request each (58 times the table).
    base = int(ipaddress.ip_address("10.0.0.0"))
    for i in range(30_000):
        get(g, clock, ip=str(ipaddress.ip_address(base + i)))
    stats = g.statistics()
    assert stats.buckets <= stats.bucket_capacity <= 512 and stats.evictions > 25_000
    # The flooder's empty bucket was never the fullest in its set: still limited.
    assert not get(g, clock, ip=flooder).allowed


def test_eviction_prefers_the_fullest_bucket() -> None:
    clock = FakeClock()
    buckets = lim.TokenBuckets(lim.WAYS, secret=SECRET)  # one set of WAYS slots
    rate = RateLimit(requests_per_s=1.0, burst=10)
    for k in range(lim.WAYS):
        buckets.take(("k", k), rate, clock.monotonic())
    for _ in range(9):
        buckets.take(("k", 0), rate, clock.monotonic())  # k0 nearly empty
    buckets.take(("new",), rate, clock.monotonic())
    assert buckets.evictions == 1 and ("k", 0) in buckets._buckets and len(buckets) == lim.WAYS


def test_a_spray_of_clients_keeps_the_table_at_its_bound() -> None:
    """20,000 clients through a 4,096-bucket table: it fills, never grows past its bound, and
    every check is answered (the hot path's cost is measured in bench, not here)."""
    clock = FakeClock()
    g = guard(max_clients=4096)
    for i in range(20_000):
        assert get(g, clock, ip=f"10.{i >> 8 & 255}.{i & 255}.1").allowed
    st = g.statistics()
    assert st.buckets <= st.bucket_capacity <= 4096 + 8
    assert st.evictions >= 20_000 - st.bucket_capacity


# --- connections ----------------------------------------------------------------------------------------

def test_connection_cap_per_client() -> None:
    g = guard(max_connections_per_client=2)
    assert g.connection_opened("192.0.2.1").allowed and g.connection_opened("192.0.2.1").allowed
    d = g.connection_opened("192.0.2.1")
    assert d.action is Action.LIMIT and d.reason == "connections"
    assert g.connection_opened("192.0.2.2").allowed
    g.connection_closed("192.0.2.1")
    assert g.connection_opened("192.0.2.1").allowed
    for _ in range(2):
        g.connection_closed("192.0.2.1")
    g.connection_closed("192.0.2.2")
    assert g.statistics().clients_connected == 0  # entries go when their last connection does


def test_connection_table_is_bounded() -> None:
    g = guard(max_clients=3)
    for i in range(3):
        assert g.connection_opened(f"192.0.2.{i}").allowed
    d = g.connection_opened("192.0.2.9")
    assert d.reason == "table-full" and not d.allowed
    assert g.connection_opened("192.0.2.0").allowed  # a known client is still counted
    g.connection_closed("192.0.2.1")
    assert g.connection_opened("192.0.2.9").allowed
    assert g.statistics().rejected == {"table-full": 1}


# --- rules ------------------------------------------------------------------------------------------------

RULES = (
    Rule(name="monitor", action=Action.ALLOW, cidrs=(ipaddress.ip_network("203.0.113.0/24"),)),
    Rule(name="bad-net", action=Action.BLOCK, cidrs=(ipaddress.ip_network("198.51.100.0/24"),
                                                      ipaddress.ip_network("2001:db8:bad::/48"))),
    Rule(name="no-admin", action=Action.BLOCK, paths=("/admin/*", "/_hw/*")),
    Rule(name="no-writes", action=Action.BLOCK, methods=frozenset({"POST", "PUT", "DELETE"}), paths=("/v/*",)),
    Rule(name="scrapers", action=Action.BLOCK, user_agent_contains=("python-requests", "Scrapy")),
    Rule(name="bots", action=Action.BLOCK, user_agent_regex=r"(?i)\bbot\b/\d"),
    Rule(name="login", action=Action.LIMIT, paths=("/login",), rate=RateLimit(requests_per_s=1.0, burst=2)),
    Rule(name="embargo", action=Action.BLOCK, countries=frozenset({"XX"})),
)


def test_first_match_wins_and_each_condition() -> None:
    clock = FakeClock()
    g = guard(RULES)
    assert get(g, clock, ip="198.51.100.9").reason == "rule:bad-net"
    assert get(g, clock, ip="2001:db8:bad:1::5").status == 403
    assert get(g, clock, path="/admin/users").reason == "rule:no-admin"
    assert get(g, clock, path="/_hw/invalidate?x=1").reason == "rule:no-admin"  # query ignored
    assert get(g, clock, path="/administrator").allowed
    assert get(g, clock, method="post", path="/v/x").reason == "rule:no-writes"
    assert get(g, clock, method="GET", path="/v/x").allowed
    assert get(g, clock, ua="python-requests/2.31").reason == "rule:scrapers"
    assert get(g, clock, ua="scrapy/2.0 (+https://scrapy.org)").reason == "rule:scrapers"  # case-insensitive
    assert get(g, clock, ua="Evil Bot/3").reason == "rule:bots"
    assert get(g, clock, ua="Robotics/3").allowed
    assert get(g, clock, country="XX").reason == "rule:embargo"
    assert get(g, clock, country=None).allowed  # unknown country: a country rule does not match
    # The monitor network is allowed first, even on blocked paths, and is never rate limited.
    assert get(g, clock, ip="203.0.113.5", path="/admin/x").allowed
    assert all(get(g, clock, ip="203.0.113.5").allowed for _ in range(500))
    d = get(g, clock, path="/admin/x")
    assert d.body().startswith(b"403") and d.headers() == []


def test_a_limit_rule_has_its_own_bucket_and_still_pays_the_default_one() -> None:
    clock = FakeClock()
    g = guard(RULES)
    assert get(g, clock, path="/login").allowed and get(g, clock, path="/login").allowed
    d = get(g, clock, path="/login")
    assert d.status == 429 and d.reason == "rule:login" and d.retry_after_s == 1
    assert get(g, clock, path="/other").allowed  # the client's general bucket is not empty
    assert get(g, clock, ip="192.0.2.99", path="/login").allowed  # per client
    # Requests through the login rule also drew from the general bucket (20 burst): 2 + 1 so far.
    got = sum(get(g, clock, path="/other").allowed for _ in range(30))
    assert got == 20 - 3


def test_address_only_block_rules_refuse_the_connection() -> None:
    g = guard(RULES)
    assert g.connection_opened("198.51.100.1").reason == "rule:bad-net"
    assert g.connection_opened("192.0.2.1").allowed  # decided per request (path, UA ... rules)
    assert g.connection_opened("203.0.113.1").allowed  # the allow rule comes first
    assert g.connection_opened("192.0.2.2", country="XX").allowed  # an earlier rule could still match
    only_net = guard((Rule(name="embargo", action=Action.BLOCK, countries=frozenset({"XX"})),))
    assert only_net.connection_opened("192.0.2.2", country="XX").reason == "rule:embargo"


def test_regex_cost_is_bounded() -> None:
    """A pattern that backtracks exponentially in Python's re is linear in RE2."""
    clock = FakeClock()
    g = guard((Rule(name="evil", action=Action.BLOCK, user_agent_regex=r"^(a+)+$"),),
              max_user_agent_chars=4096)
    t0 = time.perf_counter()
    d = get(g, clock, ua="a" * 4000 + "!")
    # Python's re would take longer than the age of the universe here; RE2 takes microseconds.
    assert d.allowed and time.perf_counter() - t0 < 5.0
    with pytest.raises(ValueError, match="RE2"):
        lim.compile_regex(r"(a)\1")


def test_user_agent_is_cut_before_matching() -> None:
    clock = FakeClock()
    g = guard((Rule(name="tail", action=Action.BLOCK, user_agent_contains=("evil",)),), max_user_agent_chars=100)
    assert get(g, clock, ua="x" * 100 + "evil").allowed
    assert get(g, clock, ua="x" * 90 + "evil").reason == "rule:tail"


def test_disabled_allows_everything() -> None:
    clock = FakeClock()
    g = guard(RULES, enabled=False)
    assert get(g, clock, path="/admin/x").allowed and g.connection_opened("198.51.100.1").allowed


def test_statistics_count_rejections_by_reason() -> None:
    clock = FakeClock()
    g = guard(RULES, rate=RateLimit(requests_per_s=1.0, burst=1))
    get(g, clock)
    get(g, clock)
    get(g, clock, path="/admin/")
    s = g.statistics()
    assert s.allowed == 1 and s.rejected == {"rate": 1, "rule:no-admin": 1}


# --- config -------------------------------------------------------------------------------------------------

def test_read_client_limits() -> None:
    r = Reader("cluster.toml", "[cdn.client_limits]\nburst = 0\n")
    assert lim.read_client_limits(r, None) == ClientLimits()
    got = lim.read_client_limits(r, {"requests_per_second": 5, "burst": 50, "ipv6_prefix": 56,
                                     "max_connections_per_client": 8})
    assert got.rate == RateLimit(requests_per_s=5.0, burst=50.0) and got.ipv6_prefix == 56
    for data, message in [({"burst": 0}, r"cluster.toml:2: cdn.client_limits.burst: 0 must be at least 1"),
                          ({"ipv4_prefix": 33}, "outside 1..32"), ({"requests_per_second": 0}, "positive"),
                          ({"rate": 1}, "unknown key"), ({"enabled": "yes"}, "true or false")]:
        with pytest.raises(ConfigError, match=message):
            lim.read_client_limits(r, data)


def test_read_rules() -> None:
    r = Reader("cluster.toml", "")
    rules = lim.read_rules(r, [
        {"name": "bad", "action": "block", "cidrs": ["198.51.100.0/24", "2001:db8::1"]},
        {"action": "limit", "paths": ["/login"], "requests_per_second": 2},
        {"name": "ua", "action": "block", "user_agent_regex": "(?i)curl/", "methods": ["post"],
         "countries": ["xx"]},
    ])
    assert [x.name for x in rules] == ["bad", "rule-2", "ua"]
    assert rules[1].rate == RateLimit(requests_per_s=2.0, burst=2.0)
    assert rules[2].methods == frozenset({"POST"}) and rules[2].countries == frozenset({"XX"})
    assert lim.read_rules(r, None) == ()
    for entries, message in [
        ([{"action": "drop"}], "not one of allow, block, limit"),
        ([{"action": "block", "cidrs": ["10.0.0.0/33"]}], "not an address or CIDR"),
        ([{"action": "block", "user_agent_regex": "(?<=x)y"}], "RE2"),
        ([{"action": "block", "paths": ["admin"]}], "must start with"),
        ([{"action": "limit"}], "requests_per_second: is required"),
        ([{"action": "block", "requests_per_second": 1}], "only a \"limit\" rule"),
        ([{"action": "block", "countries": ["XXX"]}], "two-letter"),
        ([{"name": "a", "action": "block"}, {"name": "a", "action": "allow"}], "appears twice"),
        ([{"action": "block", "methods": [1]}], "array of non-empty strings"),
        ([{"action": "block", "colour": "red"}], "unknown key"),
        ({"action": "block"}, "array of tables"),
    ]:
        with pytest.raises(ConfigError, match=message):
            lim.read_rules(r, entries)


def test_cdn_geo_is_read_when_a_rule_names_countries(tmp_path) -> None:
    from headwater.edge.config import read_cdn
    from headwater.geo.config import packaged_geoip_db

    r = Reader("cluster.toml", "", root=tmp_path)
    assert read_cdn(r, {"rules": [{"action": "block", "paths": ["/x"]}]}).geo is None  # no lookups at all
    by_country = read_cdn(r, {"rules": [{"action": "block", "countries": ["gb"]}]})
    assert by_country.geo is not None and by_country.geo.geoip_db == packaged_geoip_db()
    placed = read_cdn(r, {"rules": [{"action": "block", "countries": ["GB"]}],
                          "geo": {"rules": [{"cidr": "10.0.0.0/8", "lat": 51.5, "lon": -0.1, "country": "gb"}]}})
    assert placed.geo is not None and placed.geo.rules[0].country == "GB"
    (tmp_path / "not.mmdb").write_bytes(b"no")
    with pytest.raises(ConfigError, match="cdn.geo.geoip_db: cannot open"):
        read_cdn(r, {"rules": [{"action": "block", "countries": ["GB"]}], "geo": {"geoip_db": "not.mmdb"}})
    with pytest.raises(ConfigError, match="cdn.geo.rules"):
        read_cdn(r, {"geo": {"rules": [{"cidr": "10.0.0.1/8", "lat": 0, "lon": 0}]}})
