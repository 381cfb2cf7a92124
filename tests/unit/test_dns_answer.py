"""The sans-IO answerer over zones from cluster.toml and master files, read back with dnspython:
record types, AA, NXDOMAIN/NODATA with the SOA, wildcards and empty non-terminals, CNAME chains,
referrals, REFUSED, EDNS and ECS echo, truncation, and steered names through the real steering."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dnslib
import pytest
from headwater.clock import FakeClock
from headwater.config import loads
from headwater.dns.answer import Answerer
from headwater.dns.daemon import build_steering
from headwater.dns.errors import ZoneError
from headwater.dns.masterfile import parse_records, read_master_file
from headwater.dns.reload import load_zones
from headwater.dns.zone import ZoneSet, build_zone

CONFIG = """
[dns]
zone = "cdn.example."
ttl = 300
negative_ttl = 45
ns = ["ns1", "ns2.elsewhere.example."]
[[dns.records]]
name = "ns1"
type = "A"
value = "192.0.2.53"
[[dns.records]]
name = "www"
type = "CNAME"
value = "video"
[[dns.records]]
name = "alias"
type = "CNAME"
value = "web"
[[dns.records]]
name = "web"
type = "A"
value = "192.0.2.80"
[[dns.records]]
name = "web"
type = "AAAA"
value = "2001:db8::80"
[[dns.records]]
name = "@"
type = "MX"
value = "10 mail"
[[dns.records]]
name = "@"
type = "TXT"
value = "\\"hello world\\""
[[dns.records]]
name = "@"
type = "CAA"
value = "0 issue \\"letsencrypt.org\\""
[[dns.records]]
name = "_sip._tcp"
type = "SRV"
value = "10 5 5060 web"
[[dns.records]]
name = "*.wild"
type = "A"
value = "192.0.2.99"
[[dns.records]]
name = "a.b.deep"
type = "TXT"
value = "deep"
[[dns.records]]
name = "loop1"
type = "CNAME"
value = "loop2"
[[dns.records]]
name = "loop2"
type = "CNAME"
value = "loop1"
[[dns.records]]
name = "out"
type = "CNAME"
value = "www.example.org."
[[dns.records]]
name = "sub"
type = "NS"
value = "ns.sub"
[[dns.records]]
name = "ns.sub"
type = "A"
value = "192.0.2.54"
[[dns.steered]]
name = "video"
answers = 1
[[dns.pops]]
name = "lon"
ipv4 = ["198.51.100.1"]
ipv6 = ["2001:db8:1::1"]
lat = 51.5
lon = -0.12
healthz = "http://127.0.0.1:1/healthz"
[[dns.pops]]
name = "nyc"
ipv4 = ["198.51.100.2"]
lat = 40.7
lon = -74.0
healthz = "http://127.0.0.1:2/healthz"
[[dns.geo.rules]]
cidr = "10.1.0.0/16"
lat = 51.0
lon = 0.0
[[dns.geo.rules]]
cidr = "10.2.0.0/16"
lat = 41.0
lon = -73.0
"""


@pytest.fixture(scope="module")
def cfg():
    return loads(CONFIG).dns


@pytest.fixture
def server(cfg):
    steering, tracker = build_steering(None, cfg)
    return Answerer(load_zones(cfg), steering=steering), tracker


def ask(answerer, name, qtype="A", *, client="127.0.0.1", tcp=False, **kw):
    q = dns.message.make_query(name, qtype, **kw)
    result = answerer.answer(q.to_wire(), client, tcp=tcp)
    return result, dns.message.from_wire(result.wire)


def rrs(msg, section="answer"):
    return [(str(rrset.name), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl, sorted(r.to_text() for r in rrset))
            for rrset in getattr(msg, section)]


@pytest.mark.parametrize("name,qtype,expected", [
    ("web.cdn.example.", "A", ["192.0.2.80"]),
    ("web.cdn.example.", "AAAA", ["2001:db8::80"]),
    ("cdn.example.", "MX", ["10 mail.cdn.example."]),
    ("cdn.example.", "TXT", ['"hello world"']),
    ("cdn.example.", "CAA", ['0 issue "letsencrypt.org"']),
    ("_sip._tcp.cdn.example.", "SRV", ["10 5 5060 web.cdn.example."]),
    ("cdn.example.", "NS", ["ns1.cdn.example.", "ns2.elsewhere.example."]),
    ("cdn.example.", "SOA", ["ns1.cdn.example. hostmaster.cdn.example. 1 3600 600 1209600 45"]),
    ("www.cdn.example.", "CNAME", ["video.cdn.example."]),
])
def test_every_record_type_is_answered_authoritatively(server, name, qtype, expected):
    result, msg = ask(server[0], name, qtype)
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert not msg.flags & dns.flags.RA and msg.flags & dns.flags.RD
    assert rrs(msg) == [(name, qtype, 300, expected)]
    assert result.kind == "answer" and result.cacheable


def test_the_question_keeps_the_clients_case(server):
    _, msg = ask(server[0], "WeB.CDN.Example.", "A")
    assert msg.question[0].name.to_text() == "WeB.CDN.Example."
    assert [r[0] for r in rrs(msg)] == ["WeB.CDN.Example."]


def test_nxdomain_and_nodata_carry_the_soa_at_the_negative_ttl(server):
    result, msg = ask(server[0], "nope.cdn.example.", "A")
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.flags & dns.flags.AA and result.kind == "nxdomain"
    assert rrs(msg, "authority")[0][:3] == ("cdn.example.", "SOA", 45)
    result, msg = ask(server[0], "web.cdn.example.", "MX")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer and result.kind == "nodata"
    assert rrs(msg, "authority")[0][:3] == ("cdn.example.", "SOA", 45)


def test_negative_ttl_is_the_lesser_of_soa_ttl_and_minimum():
    zone = build_zone("z.example.", parse_records("@ 30 IN SOA ns h 1 2 3 4 600\n@ 30 IN NS ns\n",
                                                  origin="z.example."))
    _, msg = ask(Answerer(ZoneSet([zone])), "x.z.example.")
    assert msg.authority[0].ttl == 30


def test_empty_non_terminals_are_nodata_and_wildcards_follow_rfc4592(server):
    a = server[0]
    # b.deep exists only as the parent of a.b.deep: NODATA, not NXDOMAIN.
    assert ask(a, "b.deep.cdn.example.", "A")[1].rcode() == dns.rcode.NOERROR
    assert ask(a, "x.b.deep.cdn.example.", "A")[1].rcode() == dns.rcode.NXDOMAIN
    _, msg = ask(a, "Anything.wild.cdn.example.", "A")
    assert rrs(msg) == [("Anything.wild.cdn.example.", "A", 300, ["192.0.2.99"])]
    _, msg = ask(a, "two.labels.wild.cdn.example.", "A")  # closest encloser wild: *.wild matches
    assert rrs(msg)[0][3] == ["192.0.2.99"]
    result, msg = ask(a, "x.wild.cdn.example.", "TXT")  # wildcard exists, not with that type
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer and result.kind == "nodata"
    # The wildcard does not cover its own parent.
    assert ask(a, "wild.cdn.example.", "A")[1].rcode() == dns.rcode.NOERROR
    assert not ask(a, "wild.cdn.example.", "A")[1].answer


def test_cname_chains_are_chased_in_zone_and_bounded(server):
    _, msg = ask(server[0], "alias.cdn.example.", "A")
    assert rrs(msg) == [("alias.cdn.example.", "CNAME", 300, ["web.cdn.example."]),
                        ("web.cdn.example.", "A", 300, ["192.0.2.80"])]
    result, msg = ask(server[0], "loop1.cdn.example.", "A")
    assert msg.rcode() == dns.rcode.NOERROR and 2 <= len(msg.answer) <= 8
    _, msg = ask(server[0], "out.cdn.example.", "A")
    assert rrs(msg) == [("out.cdn.example.", "CNAME", 300, ["www.example.org."])]


def test_a_delegation_is_a_referral_with_glue(server):
    result, msg = ask(server[0], "host.sub.cdn.example.", "A")
    assert result.kind == "referral" and not msg.flags & dns.flags.AA and not msg.answer
    assert rrs(msg, "authority") == [("sub.cdn.example.", "NS", 300, ["ns.sub.cdn.example."])]
    assert rrs(msg, "additional") == [("ns.sub.cdn.example.", "A", 300, ["192.0.2.54"])]


@pytest.mark.parametrize("name,qtype,rdclass", [
    ("www.example.org.", "A", "IN"),
    ("cdn.example.", "A", "CH"),
    ("cdn.example.", "AXFR", "IN"),
])
def test_outside_our_zones_classes_and_transfers_are_refused(server, name, qtype, rdclass):
    q = dns.message.make_query(name, qtype, rdclass=rdclass)
    result = server[0].answer(q.to_wire(), "127.0.0.1")
    msg = dns.message.from_wire(result.wire)
    assert msg.rcode() == dns.rcode.REFUSED and msg.id == q.id and not msg.flags & dns.flags.AA
    assert msg.question[0].name.to_text() == name and result.kind == "error"


def test_opt_only_when_asked_and_badvers(server):
    _, msg = ask(server[0], "web.cdn.example.")
    assert msg.edns == -1
    _, msg = ask(server[0], "web.cdn.example.", use_edns=0, payload=4096)
    assert msg.edns == 0 and msg.payload == 1232
    q = dns.message.make_query("web.cdn.example.", "A", use_edns=1)
    msg = dns.message.from_wire(server[0].answer(q.to_wire(), "127.0.0.1").wire)
    assert msg.rcode() == dns.rcode.BADVERS and msg.edns == 0 and not msg.answer


def test_formerr_and_notimp_keep_the_id(server):
    q = dns.message.make_query("web.cdn.example.", "A")
    wire = bytearray(q.to_wire())
    wire[5] = 2  # QDCOUNT 2
    result = server[0].answer(bytes(wire), "127.0.0.1")
    assert result.rcode == 1 and result.wire[:2] == wire[:2] and result.wire[3] & 0x0F == 1
    wire = bytearray(q.to_wire())
    wire[2] |= 4 << 3  # NOTIFY
    result = server[0].answer(bytes(wire), "127.0.0.1")
    assert result.rcode == 4 and result.wire[:2] == wire[:2] and (result.wire[2] >> 3) & 0xF == 4
    assert server[0].answer(b"\x00" * 11, "127.0.0.1") is None


def test_ecs_is_echoed_with_scope_zero_on_static_answers(server):
    opt = dns.edns.ECSOption("10.1.2.0", 24)
    _, msg = ask(server[0], "web.cdn.example.", use_edns=0, options=[opt])
    (echo,) = msg.options
    assert (echo.address, echo.srclen, echo.scopelen) == ("10.1.2.0", 24, 0)


def test_steered_names_go_through_steering_with_the_ecs_scope(server):
    a = server[0]
    for subnet, want in (("10.1.2.0", "198.51.100.1"), ("10.2.9.0", "198.51.100.2")):
        result, msg = ask(a, "video.cdn.example.", use_edns=0, options=[dns.edns.ECSOption(subnet, 24)])
        assert rrs(msg) == [("video.cdn.example.", "A", 30, [want])]
        (echo,) = msg.options
        assert echo.srclen == 24 and echo.scopelen == 16  # the rule's /16
        assert not result.per_client
    # Without ECS the resolver's own address decides, and the answer is per client.
    result, msg = ask(a, "video.cdn.example.", client="10.2.0.1")
    assert rrs(msg)[0][3] == ["198.51.100.2"] and result.per_client
    # AAAA asks family 6: only lon has IPv6.
    _, msg = ask(a, "video.cdn.example.", "AAAA", client="10.2.0.1")
    assert rrs(msg)[0][1:] == ("AAAA", 30, ["2001:db8:1::1"])
    # The CNAME to a steered name ends in the steered answer.
    _, msg = ask(a, "www.cdn.example.", client="10.1.0.1")
    assert [r[1] for r in rrs(msg)] == ["CNAME", "A"] and rrs(msg)[1][3] == ["198.51.100.1"]
    # Other types at a steered name: NODATA.
    assert ask(a, "video.cdn.example.", "TXT")[1].rcode() == dns.rcode.NOERROR


def test_a_pop_going_down_moves_answers_and_the_generation(cfg):
    steering, tracker = build_steering(None, cfg)
    clock = FakeClock()
    tracker.clock = clock
    a = Answerer(load_zones(cfg), steering=steering)
    for pop in ("lon", "nyc"):
        tracker.record(pop, True)
        tracker.record(pop, True)
    before = a.generation
    assert rrs(ask(a, "video.cdn.example.", client="10.1.0.1")[1])[0][3] == ["198.51.100.1"]
    tracker.record("lon", False)
    tracker.record("lon", False)
    assert a.generation != before
    assert rrs(ask(a, "video.cdn.example.", client="10.1.0.1")[1])[0][3] == ["198.51.100.2"]


def test_udp_answers_that_do_not_fit_are_truncated_to_whole_rrsets(tmp_path):
    many = "\n".join(f"big 300 IN TXT \"{'x' * 200} {i}\"" for i in range(10))
    text = f"$ORIGIN t.example.\n@ 300 IN SOA ns h 1 2 3 4 60\n@ 300 IN NS ns\n{many}\nsmall 300 IN A 192.0.2.1\n"
    path = tmp_path / "t.zone"
    path.write_text(text)
    a = Answerer(ZoneSet([read_master_file(path)]))
    result, msg = ask(a, "big.t.example.", "TXT")
    assert msg.flags & dns.flags.TC and not msg.answer and result.truncated and len(result.wire) <= 512
    result, msg = ask(a, "big.t.example.", "TXT", use_edns=0, payload=4096)
    assert msg.flags & dns.flags.TC and len(result.wire) <= 1232
    result, msg = ask(a, "big.t.example.", "TXT", tcp=True)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 10
    assert not ask(a, "small.t.example.")[1].flags & dns.flags.TC


@pytest.mark.parametrize("text,error", [
    ("@ 60 IN NS ns\n", "no SOA"),
    ("@ 60 IN SOA ns h 1 2 3 4 5\n", "no NS"),
    ("@ 60 IN SOA ns h 1 2 3 4 5\n@ 60 IN NS ns\nx.other. 60 IN A 192.0.2.1\n", "outside the zone"),
    ("@ 60 IN SOA ns h 1 2 3 4 5\n@ 60 IN NS ns\nc 60 IN CNAME a\nc 60 IN A 192.0.2.1\n", "beside other data"),
    ("@ 60 IN SOA ns h 1 2 3 4 5\n@ 60 IN NS ns\nc 60 IN BOGUS x\n", "cannot parse"),
])
def test_bad_master_files_are_refused_naming_the_file(tmp_path, text, error):
    path = tmp_path / "bad.zone"
    path.write_text("$ORIGIN z.example.\n" + text)
    with pytest.raises(ZoneError, match=error) as e:
        read_master_file(path, origin="z.example.")
    assert str(path) in str(e.value)


def test_the_zone_of_a_name_is_the_longest_origin():
    def zone(origin):
        return build_zone(origin, parse_records("@ 60 IN SOA ns h 1 2 3 4 5\n@ 60 IN NS ns\n", origin=origin))
    zs = ZoneSet([zone("example."), zone("sub.example.")])
    from headwater.dns.zone import key_of
    assert str(zs.find(key_of(dnslib.DNSLabel("a.SUB.example."))).origin) == "sub.example."
    assert str(zs.find(key_of(dnslib.DNSLabel("a.example."))).origin) == "example."
    assert zs.find(key_of(dnslib.DNSLabel("example.org."))) is None
    with pytest.raises(ZoneError):
        ZoneSet([zone("example."), zone("EXAMPLE.")])
