"""GeoDNS steering, sans-IO: config readers, locations (rules and the shipped GeoLite2 file),
great-circle distance, the choice of POPs (distance / weight, answers, health, max_load, fail
open), the ECS scope, determinism and ``headwater dns explain``."""

from __future__ import annotations

import ipaddress
import json
import logging
import tomllib
from pathlib import Path

import pytest

from headwater.clock import FakeClock
from headwater.config import ConfigError, Reader
from headwater.dns.health.tracker import HealthTracker, StaticHealthView
from headwater.dns.steering.config import Pop, SteeringConfig, read_steering
from headwater.dns.steering.distance import EARTH_RADIUS_KM, great_circle_km
from headwater.dns.steering.explain import explain, explain_command
from headwater.dns.steering.steer import Steered, Steering
from headwater.geo.config import GeoRule, packaged_geoip_db
from headwater.geo.locate import Locator

net = ipaddress.ip_network

CONFIG = """\
[dns]
steered_ttl = 30
[[dns.steered]]
name = "video"
answers = 1
[[dns.steered]]
name = "Live"
answers = 2
[[dns.pops]]
name = "lon"
ipv4 = ["192.0.2.1", "192.0.2.2"]
ipv6 = ["2001:db8::1"]
lat = 51.5074
lon = -0.1278
region = "eu"
healthz = "http://127.0.0.1:9081/healthz"
max_load = 0.9
[[dns.pops]]
name = "fra"
ipv4 = ["192.0.2.11"]
ipv6 = ["2001:db8::11"]
lat = 50.1109
lon = 8.6821
region = "eu"
healthz = "http://127.0.0.1:9082/healthz"
[[dns.pops]]
name = "nyc"
ipv4 = ["192.0.2.21"]
lat = 40.7128
lon = -74.0060
region = "us"
healthz = "https://127.0.0.1:9083/healthz"
[[dns.pops]]
name = "syd"
ipv4 = ["192.0.2.31"]
lat = -33.8688
lon = 151.2093
region = "ap"
healthz = "http://127.0.0.1:9084/healthz"
[dns.geo]
geoip_db = ""
[[dns.geo.rules]]
cidr = "10.0.0.0/8"
lat = -33.9
lon = 151.2
country = "au"
[[dns.geo.rules]]
cidr = "10.1.0.0/16"
lat = 40.7
lon = -74.0
country = "US"
[[dns.geo.rules]]
cidr = "fd00::/8"
lat = 50.1
lon = 8.7
"""


def read(text: str = CONFIG) -> SteeringConfig:
    return read_steering(Reader("cluster.toml", text), tomllib.loads(text)["dns"])


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read(text)
    return info.value


@pytest.fixture(scope="module")
def cfg() -> SteeringConfig:
    return read()


@pytest.fixture(scope="module")
def locator(cfg: SteeringConfig):
    loc = Locator(cfg.geo)
    yield loc
    loc.close()


def steering(cfg: SteeringConfig, locator: Locator, health=None) -> Steering:
    return Steering(cfg, health if health is not None else StaticHealthView(), locator=locator)


def tracker(cfg: SteeringConfig, *, rise: int = 2, fall: int = 2) -> HealthTracker:
    return HealthTracker(cfg.pops, rise, fall, FakeClock())


def down(t: HealthTracker, *names: str) -> None:
    for name in names:
        for _ in range(t.fall):
            t.record(name, False, error="test")


# --- config ---------------------------------------------------------------------------------------

def test_config_reads_pops_geo_rules_and_steered_names(cfg: SteeringConfig) -> None:
    assert [p.name for p in cfg.pops] == ["lon", "fra", "nyc", "syd"]
    lon = cfg.pop("lon")
    assert lon.ipv4 == ("192.0.2.1", "192.0.2.2") and lon.ipv6 == ("2001:db8::1",)
    assert lon.max_load == 0.9 and lon.weight == 1.0 and lon.region == "eu"
    assert cfg.pop("nyc").max_load is None and cfg.pop("nyc").addresses(6) == ()
    assert [s.name for s in cfg.steered] == ["video", "live"] and cfg.steered[1].answers == 2
    assert cfg.geo.rules[0] == GeoRule(network=net("10.0.0.0/8"), lat=-33.9, lon=151.2, country="AU")
    assert cfg.steered_ttl == 30


def test_default_geo_database_is_the_shipped_geolite2_city_file(cfg: SteeringConfig) -> None:
    assert cfg.geo.geoip_db == packaged_geoip_db()
    assert cfg.geo.geoip_db.name == "GeoLite2-City.mmdb" and cfg.geo.geoip_db.is_file()


@pytest.mark.parametrize("old, new, key, message", [
    ('lat = 51.5074', 'lat = 91', "dns.pops[0].lat", "outside -90..90"),
    ('lon = -0.1278', 'lon = -180.5', "dns.pops[0].lon", "outside -180..180"),
    ('ipv4 = ["192.0.2.1", "192.0.2.2"]', 'ipv4 = ["192.0.2.300"]', "dns.pops[0].ipv4", "not an IP address"),
    ('ipv4 = ["192.0.2.1", "192.0.2.2"]', 'ipv4 = ["2001:db8::5"]', "dns.pops[0].ipv4", "not an IPv4 address"),
    ('ipv6 = ["2001:db8::1"]', 'ipv6 = ["192.0.2.9"]', "dns.pops[0].ipv6", "not an IPv6 address"),
    ('healthz = "http://127.0.0.1:9081/healthz"', 'healthz = "ftp://127.0.0.1/healthz"',
     "dns.pops[0].healthz", "http:// or https://"),
    ('max_load = 0.9', 'max_load = 1.5', "dns.pops[0].max_load", "outside 0..1"),
    ('max_load = 0.9', 'weight = 0', "dns.pops[0].weight", "must be positive"),
    ('name = "fra"', 'name = "lon"', "dns.pops[1].name", "defined twice"),
    ('answers = 2', 'answers = 0', "dns.steered[1].answers", "outside 1..16"),
    ('cidr = "10.1.0.0/16"', 'cidr = "10.1.0.1/16"', "dns.geo.rules[1].cidr", "host bits"),
    ('country = "au"', 'country = "AUS"', "dns.geo.rules[0].country", "two-letter"),
    ('geoip_db = ""', 'geoip_db = "/nonexistent/City.mmdb"', "dns.geo.geoip_db", "cannot open"),
    ('region = "eu"', 'colour = "eu"', "dns.pops[0].colour", "unknown key"),
])
def test_config_errors_name_the_key_and_its_line(old: str, new: str, key: str, message: str) -> None:
    text = CONFIG.replace(old, new, 1)
    assert text != CONFIG
    err = config_error(text)
    line = next(n for n, (a, b) in enumerate(zip(text.splitlines(), CONFIG.splitlines()), 1) if a != b)
    assert err.key == key and message in str(err)
    assert err.line == line, str(err)


def test_config_needs_a_pop_and_a_pop_needs_an_address() -> None:
    assert "at least one POP" in str(config_error("[dns]\n"))
    text = CONFIG.replace('ipv4 = ["192.0.2.31"]\n', "", 1)
    assert "at least one address" in str(config_error(text))


def test_config_rejects_a_database_without_coordinates(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database" * 100)
    err = config_error(CONFIG.replace('geoip_db = ""', f'geoip_db = "{junk}"'))
    assert err.key == "dns.geo.geoip_db"


# --- distance ------------------------------------------------------------------------------------

def test_great_circle_distance() -> None:
    assert great_circle_km(51.5074, -0.1278, 51.5074, -0.1278) == 0.0
    # London - New York is about 5,570 km along the great circle.
    assert 5540 < great_circle_km(51.5074, -0.1278, 40.7128, -74.0060) < 5600
    # one degree of latitude on the mean sphere; the poles; antipodes (half the circumference)
    assert great_circle_km(0, 0, 1, 0) == pytest.approx(111.195, rel=1e-4)
    assert great_circle_km(90, 0, -90, 0) == pytest.approx(3.141592653589793 * EARTH_RADIUS_KM)
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(3.141592653589793 * EARTH_RADIUS_KM)
    # across the antimeridian is the short way round
    assert great_circle_km(0, 179.5, 0, -179.5) == pytest.approx(111.195, rel=1e-3)


# --- locations -----------------------------------------------------------------------------------

def test_rules_come_first_and_the_longest_prefix_wins(locator: Locator) -> None:
    loc = locator.locate(net("10.1.2.0/24"))
    assert (loc.source, loc.country, loc.lat, loc.prefix_len) == ("rule", "US", 40.7, 16)
    loc = locator.locate(net("10.200.0.1/32"))
    # the /8 rule decides, and /9 keeps the answer off 10.1.0.0/16 (its own rule)
    assert (loc.source, loc.country, loc.prefix_len) == ("rule", "AU", 9)
    loc = locator.locate(net("fd00:1::/64"))
    assert (loc.source, loc.lat, loc.prefix_len) == ("rule", 50.1, 8)


def test_a_wider_network_is_narrowed_past_a_more_specific_rule(locator: Locator) -> None:
    # 10.2.0.0 is decided by the /8 rule, but a resolver must not reuse that answer for
    # 10.1.0.0/16 (another rule): the scope is lengthened until it excludes the /16.
    loc = locator.locate(net("10.2.0.0/16"))
    assert loc.source == "rule" and loc.country == "AU"
    assert loc.prefix_len == 15
    assert not net(f"10.2.0.0/{loc.prefix_len}").overlaps(net("10.1.0.0/16"))
    assert net(f"10.2.0.0/{loc.prefix_len - 1}", strict=False).overlaps(net("10.1.0.0/16"))


def test_geoip_locations_from_the_shipped_geolite2_file(locator: Locator) -> None:
    # MaxMind's own test data places 81.2.69.0/24 in London; the shipped file agrees (a /23).
    loc = locator.locate(net("81.2.69.0/24"))
    assert loc.source == "geoip" and loc.country == "GB"
    assert loc.lat == pytest.approx(51.5, abs=0.2) and loc.lon == pytest.approx(-0.2, abs=0.3)
    assert loc.prefix_len == 23
    stockholm = locator.locate(net("89.160.20.112/32"))
    assert stockholm.country == "SE" and stockholm.lat == pytest.approx(59.33, abs=0.1)
    google6 = locator.locate(net("2001:4860:4860::8888/128"))
    assert google6.source == "geoip" and google6.country == "US" and google6.prefix_len <= 48


def test_private_reserved_and_unknown_addresses_have_no_location(locator: Locator) -> None:
    for client in ("192.168.1.7/32", "127.0.0.1/32", "203.0.113.0/24", "fe80::1/128"):
        loc = locator.locate(net(client))
        assert loc.source == "none" and not loc.known, client
        assert 0 < loc.prefix_len <= net(client).max_prefixlen


def test_the_lookup_memo_is_a_bounded_lru(cfg: SteeringConfig) -> None:
    loc = Locator(cfg.geo, memo_entries=2)
    try:
        a, b, c = net("81.2.69.0/24"), net("89.160.20.0/24"), net("10.1.0.0/16")
        loc.locate(a), loc.locate(b), loc.locate(a)
        assert loc.lookups == 2
        loc.locate(c)          # evicts b, the least recently used
        loc.locate(a)
        assert loc.lookups == 3
        loc.locate(b)
        assert loc.lookups == 4
        assert len(loc._memo) == 2
    finally:
        loc.close()


# --- the choice ----------------------------------------------------------------------------------

def test_nearest_pop_for_each_client(cfg: SteeringConfig, locator: Locator) -> None:
    s = steering(cfg, locator)
    assert s.steer("video", 4, net("81.2.69.0/24"), True).addresses == ("192.0.2.1", "192.0.2.2")
    assert s.steer("video", 4, net("89.160.20.0/24"), True).addresses == ("192.0.2.11",)  # Stockholm: fra
    assert s.steer("video", 4, net("10.1.0.9/32"), False).addresses == ("192.0.2.21",)    # rule: New York
    assert s.steer("video", 4, net("10.9.0.0/16"), True).addresses == ("192.0.2.31",)     # rule: Sydney
    # AAAA: only POPs with IPv6 addresses; Sydney's client gets the nearer of lon and fra
    assert s.steer("video", 6, net("10.9.0.0/16"), True).addresses == ("2001:db8::11",)
    assert s.steer("video", 4, net("81.2.69.0/24"), True).ttl == 30


def test_weight_divides_the_distance(locator: Locator) -> None:
    base = read()
    stockholm = net("89.160.20.0/24")  # ~1,190 km from Frankfurt, ~1,430 km from London
    assert steering(base, locator).steer("video", 4, stockholm, True).addresses == ("192.0.2.11",)
    pops = tuple(Pop(**{**_fields(p), "weight": 1.5}) if p.name == "lon" else p for p in base.pops)
    heavy = SteeringConfig(pops=pops, geo=base.geo, steered=base.steered)
    assert steering(heavy, locator).steer("video", 4, stockholm, True).addresses == ("192.0.2.1", "192.0.2.2")


def _fields(p: Pop) -> dict:
    return {k: getattr(p, k) for k in Pop.__dataclass_fields__}


def test_answers_count_takes_that_many_pops_in_order(cfg: SteeringConfig, locator: Locator) -> None:
    s = steering(cfg, locator)
    # "live" has answers = 2: the two nearest POPs, each with all its addresses of the family
    assert s.steer("live", 4, net("81.2.69.0/24"), True).addresses == ("192.0.2.1", "192.0.2.2", "192.0.2.11")
    assert s.steer("live", 4, net("10.1.0.0/16"), True).addresses == ("192.0.2.21", "192.0.2.1", "192.0.2.2")
    assert s.answers("video") == 1 and s.answers("not-steered") == 1


def test_a_down_pop_is_skipped_and_the_next_nearest_answers(cfg: SteeringConfig, locator: Locator) -> None:
    t = tracker(cfg)
    s = steering(cfg, locator, t)
    london = net("81.2.69.0/24")
    g0 = s.generation
    down(t, "lon")
    assert s.generation != g0
    assert s.steer("video", 4, london, True).addresses == ("192.0.2.11",)
    down(t, "fra")
    assert s.steer("video", 4, london, True).addresses == ("192.0.2.21",)
    assert s.steer("video", 6, london, True).addresses == ("2001:db8::1", "2001:db8::11")  # AAAA fails open


def test_every_pop_down_fails_open_with_all_of_them_and_logs_once(
        cfg: SteeringConfig, locator: Locator, caplog: pytest.LogCaptureFixture) -> None:
    t = tracker(cfg)
    s = steering(cfg, locator, t)
    down(t, "lon", "fra", "nyc", "syd")
    caplog.set_level(logging.INFO, logger="headwater.dns.steering")
    london = net("81.2.69.0/24")
    for _ in range(3):
        answer = s.steer("video", 4, london, True)
        # every POP, nearest first: never an empty answer
        assert answer.addresses == ("192.0.2.1", "192.0.2.2", "192.0.2.11", "192.0.2.21", "192.0.2.31")
    events = [r.event for r in caplog.records if hasattr(r, "event")]
    assert events == ["dns.steering.fail_open"]
    assert s.fail_open_answers == 3
    t.record("syd", True), t.record("syd", True)
    assert s.steer("video", 4, london, True).addresses == ("192.0.2.31",)
    events = [r.event for r in caplog.records if hasattr(r, "event")]
    assert events == ["dns.steering.fail_open", "dns.steering.fail_open_ended"]


def test_a_full_pop_is_passed_over_unless_every_up_pop_is_full(cfg: SteeringConfig, locator: Locator) -> None:
    t = tracker(cfg)
    s = steering(cfg, locator, t)
    london = net("81.2.69.0/24")
    g0 = s.generation
    t.record("lon", True, 0.5)            # under max_load 0.9: no change of view
    assert s.generation == g0
    assert s.steer("video", 4, london, True).addresses[0] == "192.0.2.1"
    t.record("lon", True, 0.9)            # at max_load: full
    assert s.generation != g0
    assert s.steer("video", 4, london, True).addresses == ("192.0.2.11",)
    t.record("fra", True, 5.0)            # fra has no max_load: never full
    assert s.steer("video", 4, london, True).addresses == ("192.0.2.11",)
    down(t, "fra", "nyc", "syd")          # lon is the only one up, and full: it still answers
    decision = s.decide(4, london, 1)
    assert decision.addresses == ("192.0.2.1", "192.0.2.2") and decision.all_full and not decision.fail_open


def test_ecs_scope(cfg: SteeringConfig, locator: Locator) -> None:
    s = steering(cfg, locator)
    assert s.steer("video", 4, net("81.2.69.0/24"), True).scope_prefix == 23   # the GeoLite2 network
    assert s.steer("video", 4, net("10.1.7.0/24"), True).scope_prefix == 16    # the rule's prefix
    assert s.steer("video", 4, net("10.2.0.0/16"), True).scope_prefix == 15    # past the /16 rule
    # source prefix 0 asks for an answer not tailored to any subnet (RFC 7871 7.1.2)
    untailored = s.steer("video", 4, net("0.0.0.0/0"), True)
    assert untailored == Steered(("192.0.2.1", "192.0.2.2"), 30, 0)
    # the scope never exceeds the address length
    assert s.steer("video", 4, net("10.1.0.1/32"), False).scope_prefix <= 32
    one = SteeringConfig(pops=cfg.pops[:1], geo=cfg.geo, steered=cfg.steered)
    # one POP: the answer cannot depend on the address
    assert steering(one, locator).steer("video", 4, net("81.2.69.0/24"), True).scope_prefix == 0


def test_unknown_location_answers_in_configuration_order(cfg: SteeringConfig, locator: Locator) -> None:
    s = steering(cfg, locator)
    answer = s.steer("live", 4, net("192.168.0.0/24"), True)
    assert answer.addresses == ("192.0.2.1", "192.0.2.2", "192.0.2.11")
    assert answer.scope_prefix == 16  # 192.168.0.0/16 is one empty network of the database


def test_same_config_and_health_give_the_same_answers_on_every_instance(cfg: SteeringConfig) -> None:
    clients = [net(c) for c in ("81.2.69.0/24", "89.160.20.0/24", "8.8.8.0/24", "1.1.1.0/24",
                                "175.16.199.0/24", "10.1.0.0/16", "192.168.3.0/24", "0.0.0.0/0")]
    answers = []
    for _ in range(2):
        loc = Locator(read().geo)  # a fresh instance: its own config read, database and memo
        t = tracker(cfg)
        down(t, "fra")
        t.record("lon", True, 0.95)
        s = Steering(read(), t, locator=loc)
        answers.append([s.steer(n, f, c, True) for n in ("video", "live") for f in (4, 6) for c in clients])
        loc.close()
    assert answers[0] == answers[1]
    assert len({a.addresses for a in answers[0]}) > 3  # the clients really were steered apart


def test_generation_moves_with_health_and_with_a_new_steering(cfg: SteeringConfig, locator: Locator) -> None:
    t = tracker(cfg)
    s1 = steering(cfg, locator, t)
    g = s1.generation
    t.record("nyc", False)                 # one failure of two: no change of view
    assert s1.generation == g
    t.record("nyc", False)
    assert s1.generation != g
    s2 = steering(cfg, locator, t)         # a reload builds a new Steering
    assert s2.generation != s1.generation


def test_bad_family_is_refused(cfg: SteeringConfig, locator: Locator) -> None:
    with pytest.raises(ValueError):
        steering(cfg, locator).steer("video", 5, net("81.2.69.0/24"), True)


# --- explain -------------------------------------------------------------------------------------

def test_explain_says_where_which_pop_and_why(cfg: SteeringConfig, locator: Locator) -> None:
    t = tracker(cfg)
    down(t, "lon")
    report = explain(cfg, "81.2.69.7", t.to_json(), locator=locator)
    json.dumps(report)  # JSON-able
    assert report["location"]["source"] == "geoip" and report["location"]["country"] == "GB"
    assert report["answer"]["A"]["addresses"] == ["192.0.2.11"]
    pops = {p["name"]: p for p in report["pops"]}
    assert pops["lon"]["decision"]["A"] == "down" and pops["lon"]["health"] == "down"
    assert pops["fra"]["decision"]["A"] == "chosen"
    assert pops["nyc"]["decision"]["AAAA"] == "no IPv6 address"
    assert pops["lon"]["distance_km"] < 50 < pops["fra"]["distance_km"] < 1000 < pops["syd"]["distance_km"]
    text = explain_command(cfg, "81.2.69.7", t.to_json())
    assert "geoip" in text and "GB" in text and "192.0.2.11" in text and "ECS scope /23" in text
    assert "down" in text.splitlines()[5]  # the lon row
    assert json.loads(explain_command(cfg, "10.1.2.3", None, as_json=True))["answer"]["A"]["addresses"] == ["192.0.2.21"]
    with pytest.raises(ValueError):
        explain(cfg, "not-an-address")


def test_decisions_are_counted_per_pop_and_source_even_when_remembered(cfg: SteeringConfig, locator: Locator) -> None:
    s = steering(cfg, locator)
    for _ in range(3):
        s.steer("video", 4, net("81.2.69.0/24"), True)
    s.steer("video", 4, net("10.1.0.0/16"), False)
    assert s.decisions["lon"] == 3 and s.decisions["nyc"] == 1 and s.decisions["fra"] == 0
    assert s.decisions_by_source == {"ecs": 3, "resolver": 1}


def test_explain_logs_no_fail_open(cfg: SteeringConfig, locator: Locator, caplog: pytest.LogCaptureFixture) -> None:
    t = tracker(cfg)
    down(t, "lon", "fra", "nyc", "syd")
    caplog.set_level(logging.INFO, logger="headwater.dns.steering")
    report = explain(cfg, "81.2.69.7", t.to_json(), locator=locator)
    assert report["answer"]["A"]["fail_open"] and len(report["answer"]["A"]["addresses"]) == 5
    assert not caplog.records
