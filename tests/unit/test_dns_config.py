"""[dns] in cluster.toml: defaults, errors naming key and line, and hot reload's validate-then-swap."""

from __future__ import annotations

import ipaddress
import os

import pytest
from headwater.config import ConfigError, load, loads
from headwater.dns.config import DnsConfig
from headwater.dns.reload import ZoneSource

MINIMAL = '[dns]\nzone = "z.example."\n'


def test_defaults_and_the_default_cluster_toml():
    cfg = loads(MINIMAL).dns
    assert (cfg.port, cfg.admin_port, cfg.workers, cfg.max_udp_size, cfg.role) == (5353, 9353, 2, 1232, "dns")
    assert cfg.steering is None and not cfg.steered
    shipped = load(os.path.join(os.path.dirname(__file__), "..", "..", "cluster.toml")).dns
    assert isinstance(shipped, DnsConfig) and shipped.zone == "cdn.headwater.test."
    assert [s.name for s in shipped.steered] == ["video"] and len(shipped.steering.pops) == 3


def test_dnssec_is_read_by_its_reader_with_keys_under_the_daemons_data_dir(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('[cluster]\ndata_dir = "state"\n' + MINIMAL + 'id = "dns-7"\n[dns.dnssec]\nenabled = true\n')
    cfg = load(path).dns
    assert cfg.dnssec.enabled and cfg.needs_cluster_secret and cfg.dnssec.algorithm == 13
    assert cfg.data_dir == tmp_path / "state" / "dns-7" and cfg.dnssec.key_dir == cfg.data_dir / "keys"
    path.write_text(MINIMAL + 'data_dir = "/srv/dns"\n[dns.dnssec]\nkey_dir = "k"\n')
    cfg = load(path).dns
    assert not cfg.dnssec.enabled and not cfg.needs_cluster_secret
    assert str(cfg.data_dir) == "/srv/dns"
    assert cfg.dnssec.key_dir == tmp_path / "k"
    assert not loads(MINIMAL).dns.dnssec.enabled


@pytest.mark.parametrize("extra,key,line", [
    ('workers = 0\n', "dns.workers", 3),
    ('max_udp_size = 100\n', "dns.max_udp_size", 3),
    ('colour = "red"\n', "dns.colour", 3),
    ('[[dns.records]]\nname = "a"\ntype = "HINFO"\nvalue = "x"\n', "dns.records[0].type", 5),
    ('[[dns.records]]\nname = "a"\ntype = "A"\nvalue = "not-an-address"\n', "dns.records[0]", 3),
    ('[[dns.records]]\nname = "a.other."\ntype = "A"\nvalue = "192.0.2.1"\n', "dns.records[0]", 3),
    ('[[dns.steered]]\nname = "video"\n', "dns.pops", None),
    ('[dns.dnssec]\nenabled = true\nalgorithm = 8\n', "dns.dnssec.algorithm", 5),
    ('[dns.dnssec]\nnsec3 = true\n', "dns.dnssec.nsec3", 4),
])
def test_errors_name_the_key_and_line(extra, key, line):
    with pytest.raises(ConfigError) as e:
        loads(MINIMAL + extra, path="cluster.toml")
    assert e.value.key == key
    if line is not None:
        assert e.value.line == line


def test_a_zone_file_is_checked_when_the_config_is_read(tmp_path):
    (tmp_path / "bad.zone").write_text("$ORIGIN f.example.\n@ 60 IN NS ns\n")
    path = tmp_path / "cluster.toml"
    path.write_text(MINIMAL + 'zone_files = ["bad.zone"]\n')
    with pytest.raises(ConfigError, match="no SOA"):
        load(path)


def write_zone(path, address):
    path.write_text(f"$ORIGIN f.example.\n@ 60 IN SOA ns h 1 2 3 4 5\n@ 60 IN NS ns\nwww 60 IN A {address}\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a visible change


def test_reload_swaps_good_files_and_keeps_serving_on_bad_ones(tmp_path):
    zone = tmp_path / "f.zone"
    write_zone(zone, "192.0.2.1")
    path = tmp_path / "cluster.toml"
    path.write_text(MINIMAL + 'zone_files = ["f.zone"]\n')
    source = ZoneSource(load(path), load(path).dns)
    assert not source.changed()
    first = source.zones
    write_zone(zone, "192.0.2.2")
    assert source.changed() and source.try_reload()
    assert source.generation == 1 and source.zones is not first
    (www,) = [z for z in source.zones.zones if str(z.origin) == "f.example."][0].rrsets[(b"www", b"f", b"example")][1]
    assert str(www.rdata) == "192.0.2.2"
    good = source.zones
    zone.write_text("$ORIGIN f.example.\nwww 60 IN A 192.0.2.3\n")  # no SOA
    assert source.changed() and not source.try_reload()
    assert source.zones is good and source.generation == 1 and not source.changed()
    path.write_text(MINIMAL + 'zone_files = ["f.zone"]\nworkers = 0\n')  # a bad config
    assert not source.try_reload() and source.zones is good


def test_reload_keeps_the_listening_addresses(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(MINIMAL)
    source = ZoneSource(load(path), load(path).dns)
    path.write_text(MINIMAL + 'port = 5454\nttl = 77\n')
    assert source.try_reload()
    assert source.cfg.port == 5353 and source.cfg.ttl == 77


def test_status_text_and_pop_lines():
    from headwater.dns.status import dns_text, status_report

    details = {"zones": ["cdn.example."], "generation": 3, "cache": {"hits": 3, "misses": 1}, "workers": 2,
               "steered": ["video"], "steering": True,
               "pops": {"pops": {"lon": {"state": "up", "up": True, "load": 0.5},
                                 "nyc": {"state": "down", "up": False, "last_error": "timeout"}}}}
    assert dns_text(details) == ("zones cdn.example., generation 3, cache 75% hits, POPs up 1/2 (down: nyc), "
                                 "workers 2")
    report = status_report(None, [{"role": "dns", "id": "dns-1", "healthy": True, "details": details}])
    assert report.lines[1].split() == ["lon", "up", "load", "0.50"] and "timeout" in report.lines[2]
    assert not report.warnings
    details["pops"]["pops"]["lon"] = {"state": "down", "up": False}
    assert status_report(None, [{"role": "dns", "healthy": True, "details": details}]).warnings


def test_a_replaced_geo_database_is_a_reload_that_opens_it_afresh(tmp_path):
    import shutil

    from headwater.dns.daemon import DnsServer
    from headwater.geo.config import packaged_geoip_db
    from headwater.metrics import Registry

    db = tmp_path / "City.mmdb"
    shutil.copyfile(packaged_geoip_db(), db)
    path = tmp_path / "cluster.toml"
    path.write_text(MINIMAL + 'reload_interval_seconds = 0\n[dns.geo]\ngeoip_db = "City.mmdb"\n'
                    '[[dns.steered]]\nname = "video"\n[[dns.pops]]\nname = "p"\nipv4 = ["192.0.2.1"]\n'
                    'lat = 1.0\nlon = 2.0\nhealthz = "http://127.0.0.1:1/healthz"\n')
    cluster = load(path)
    server = DnsServer(cluster, cluster.dns, registry=Registry())
    first = server.steering
    assert not server.source.changed()
    st = db.stat()
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # what geoipupdate's rename looks like
    assert server.source.changed() and server.reload()
    assert server.steering is not first and server.answerer.steering is server.steering
    assert server.steering.steer("video", 4, ipaddress.ip_network("81.2.69.0/24"), True).addresses == ("192.0.2.1",)
    again = server.steering
    path.write_text(path.read_text().replace(MINIMAL, MINIMAL + "ttl = 77\n"))  # no geo change
    assert server.reload() and server.steering is again


# --- [[dns.pops]] named as an [[edge]] POP -------------------------------------------------------

EDGE_POPS = '''
[[distributions]]
name = "video"
hostnames = ["video.z.example"]
origin = "http://127.0.0.1:8080"

[[edge]]
id = "pop-lon"
tier = "pop"
host = "127.0.0.7"
port = 18081
admin_port = 19081
lat = 51.5
lon = -0.12
region = "eu"

[[edge]]
id = "pop-v6"
tier = "pop"
host = "::1"
port = 18082
admin_port = 19082
lat = 1.35
lon = 103.82

[[edge]]
id = "regional-1"
tier = "regional"
port = 18091
admin_port = 19091
'''
STEERED = MINIMAL + '[[dns.steered]]\nname = "video"\n'


def test_a_pop_named_as_an_edge_pop_takes_what_it_omits_from_it():
    pops = loads(STEERED + '[[dns.pops]]\nname = "pop-lon"\nweight = 2.0\nmax_load = 0.8\n'
                 '[[dns.pops]]\nname = "pop-v6"\nregion = "ap"\n'
                 '[[dns.pops]]\nname = "elsewhere"\nipv4 = ["192.0.2.9"]\nlat = 10\nlon = 20\n'
                 'healthz = "https://192.0.2.9/healthz"\n' + EDGE_POPS).dns.steering.pops
    lon, v6, elsewhere = pops
    assert (lon.ipv4, lon.ipv6, lon.lat, lon.lon, lon.region, lon.healthz, lon.weight, lon.max_load) == (
        ("127.0.0.7",), (), 51.5, -0.12, "eu", "http://127.0.0.7:19081/healthz", 2.0, 0.8)
    # an IPv6 host gives the AAAA; the edge POP names no region, so the entry's own is kept
    assert (v6.ipv4, v6.ipv6, v6.region, v6.healthz) == ((), ("::1",), "ap", "http://[::1]:19082/healthz")
    assert (elsewhere.ipv4, elsewhere.lat, elsewhere.healthz) == (("192.0.2.9",), 10.0, "https://192.0.2.9/healthz")
    # what the entry gives of its own wins over what it would take: a public address, a probe URL
    own = loads(STEERED + '[[dns.pops]]\nname = "pop-lon"\nipv4 = ["198.51.100.1"]\nlat = 51.5\n'
                'healthz = "http://10.0.0.1:9/healthz"\n' + EDGE_POPS).dns.steering.pops[0]
    assert (own.ipv4, own.ipv6, own.lat, own.lon, own.healthz) == (
        ("198.51.100.1",), (), 51.5, -0.12, "http://10.0.0.1:9/healthz")


def test_the_shipped_pops_are_the_edge_pops_with_their_weights():
    shipped = load(os.path.join(os.path.dirname(__file__), "..", "..", "cluster.toml"))
    for pop in shipped.dns.steering.pops:
        edge = next(e for e in shipped.edge if e.id == pop.name)
        assert (pop.ipv4, pop.ipv6, pop.lat, pop.lon, pop.region, pop.healthz, pop.weight, pop.max_load) == (
            (edge.host,), (), edge.lat, edge.lon, edge.region, f"http://{edge.host}:{edge.admin_port}/healthz",
            1.0, 0.9)
    assert [p.name for p in shipped.dns.steering.pops] == ["pop-1", "pop-2", "pop-3"]


@pytest.mark.parametrize("entry,key,says", [
    ('lat = 51.6\n', "dns.pops[0].lat", "51.6 contradicts the [[edge]] POP 'pop-lon', whose lat is 51.5 (edge[0].lat"),
    ('lon = 0\n', "dns.pops[0].lon", "whose lon is -0.12"),
    ('region = "us"\n', "dns.pops[0].region", "'us' contradicts the [[edge]] POP 'pop-lon', whose region is 'eu'"),
])
def test_an_entry_contradicting_its_edge_pop_is_refused_naming_both_keys(entry, key, says):
    text = STEERED + '[[dns.pops]]\nname = "pop-lon"\n' + entry + EDGE_POPS
    with pytest.raises(ConfigError) as e:
        loads(text, path="cluster.toml")
    assert e.value.key == key and says in str(e.value), str(e.value)
    assert e.value.line == 7  # the contradicting line of [[dns.pops]]
    edge_line = text.splitlines().index(f"{key.rsplit('.', 1)[1]} = " + {"lat": "51.5", "lon": "-0.12",
                                                                         "region": '"eu"'}[key.rsplit('.', 1)[1]]) + 1
    assert f"on line {edge_line})" in str(e.value)


@pytest.mark.parametrize("entry,edge_change,key", [
    # a POP listening on every address names none to answer with, nor to probe
    ('', ('host = "127.0.0.7"', 'host = "0.0.0.0"'), "dns.pops[0].ipv4"),
    ('ipv4 = ["192.0.2.1"]\n', ('host = "127.0.0.7"', 'host = "0.0.0.0"'), "dns.pops[0].healthz"),
    # not an [[edge]] POP: the entry must be whole, as before
    ('', ('id = "pop-lon"', 'id = "pop-elsewhere"'), "dns.pops[0].ipv4"),
    # a broken [[edge]] POP is named by its own key, not blamed on the DNS entry
    ('', ('lat = 51.5', 'lat = 99.0'), "edge[0].lat"),
])
def test_what_an_edge_pop_cannot_give_is_asked_for(entry, edge_change, key):
    with pytest.raises(ConfigError) as e:
        loads(STEERED + '[[dns.pops]]\nname = "pop-lon"\n' + entry + EDGE_POPS.replace(*edge_change),
              path="cluster.toml")
    assert e.value.key == key, str(e.value)


def test_an_entry_naming_an_edge_of_another_tier_is_refused():
    with pytest.raises(ConfigError) as e:
        loads(STEERED + '[[dns.pops]]\nname = "regional-1"\n' + EDGE_POPS, path="cluster.toml")
    assert e.value.key == "dns.pops[0].name" and "'regional-1' is edge[2], a regional, not a POP" in str(e.value)
    assert e.value.line == 6
    whole = loads(STEERED + '[[dns.pops]]\nname = "regional-1"\nipv4 = ["192.0.2.7"]\nlat = 1\nlon = 2\n'
                  'healthz = "http://192.0.2.7/healthz"\n' + EDGE_POPS).dns.steering.pops[0]
    assert (whole.name, whole.ipv4, whole.lat) == ("regional-1", ("192.0.2.7",), 1.0)  # read as before
