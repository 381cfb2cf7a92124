"""Reading queries: header, question, OPT, ECS — every malformed shape gets its RCODE."""

from __future__ import annotations

import struct

import dnslib
import pytest
from headwater.dns.edns import ClientSubnet, clamp_udp, read_ecs, read_opt
from headwater.dns.errors import (
    RCODES,
    BadVersion,
    FormatError,
    NotImplementedOpcode,
    Unanswerable,
    rcode_of,
)
from headwater.dns.wire import parse_query, read_header


def query(name="www.example.com", qtype="A", *, edns: bool = False, udp=1232, do=False, version=0,
          options=()) -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = 0x1234
    if edns:
        q.add_ar(dnslib.EDNS0(udp_len=udp, flags="do" if do else "", version=version, opts=list(options)))
    return q.pack()


def ecs(family=1, source=24, scope=0, address=b"\x51\x02\x45") -> dnslib.EDNSOption:
    return dnslib.EDNSOption(8, struct.pack("!HBB", family, source, scope) + address)


def test_a_plain_query_keeps_its_case_and_has_no_edns():
    q = parse_query(query("WwW.ExAmple.COM", "AAAA"))
    assert str(q.question.name) == "WwW.ExAmple.COM." and q.question.qtype == dnslib.QTYPE.AAAA
    assert q.header.id == 0x1234 and q.edns is None


def test_short_packets_and_responses_get_no_answer():
    for data in (b"", b"\x00" * 11):
        with pytest.raises(Unanswerable):
            read_header(data)
    response = bytearray(query())
    response[2] |= 0x80
    with pytest.raises(Unanswerable):
        read_header(bytes(response))


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_other_opcodes_are_notimp(opcode):
    data = bytearray(query())
    data[2] = (data[2] & 0x87) | (opcode << 3)
    with pytest.raises(NotImplementedOpcode) as e:
        parse_query(bytes(data))
    assert rcode_of(e.value) == RCODES["NOTIMP"]


def test_qdcount_other_than_one_is_formerr():
    data = query()
    for qd in (0, 2):
        with pytest.raises(FormatError):
            parse_query(data[:4] + struct.pack("!H", qd) + data[6:])


@pytest.mark.parametrize("mangle", [
    lambda d: d[:15],                                        # truncated question
    lambda d: d[:12] + b"\xc0\x0c" + d[-4:],                 # pointer to itself: a loop
    lambda d: d[:12] + b"\xc0\xff" + d[-4:],                 # pointer past the end
    lambda d: d[:12] + b"\x40abc" + d[-4:],                  # unknown label type
    lambda d: d + b"\x00",                                   # trailing garbage
    lambda d: d[:11] + b"\x01" + d[12:],                     # ARCOUNT 1, no record
])
def test_malformed_packets_are_formerr(mangle):
    with pytest.raises(FormatError):
        parse_query(mangle(query()))


def test_two_opt_records_are_formerr():
    q = dnslib.DNSRecord.question("a.example.com")
    q.add_ar(dnslib.EDNS0(udp_len=1232))
    q.add_ar(dnslib.EDNS0(udp_len=1232))
    with pytest.raises(FormatError):
        parse_query(q.pack())


def test_edns_payload_size_is_clamped():
    assert parse_query(query(edns=True, udp=100)).edns.udp_size == 512
    assert parse_query(query(edns=True, udp=4096)).edns.udp_size == 1232
    assert parse_query(query(edns=True, udp=4096), max_udp=4096).edns.udp_size == 4096
    assert parse_query(query(edns=True, udp=65535), max_udp=8192).edns.udp_size == 4096
    assert clamp_udp(900) == 900
    assert parse_query(query(edns=True, do=True)).edns.do


def test_unknown_edns_version_is_badvers_with_the_question():
    with pytest.raises(BadVersion) as e:
        parse_query(query(edns=True, version=1))
    assert rcode_of(e.value) == 16 and e.value.had_opt and str(e.value.question.name) == "www.example.com."


def test_ecs_is_read_and_masked_network_given():
    q = parse_query(query(edns=True, options=[ecs()]))
    assert q.edns.ecs == ClientSubnet(family=1, source_prefix=24, address=b"\x51\x02\x45")
    assert str(q.edns.ecs.network) == "81.2.69.0/24"
    v6 = read_ecs(struct.pack("!HBB", 2, 56, 0) + bytes.fromhex("20010db8000001"))
    assert str(v6.network) == "2001:db8:0:100::/56"
    assert read_ecs(struct.pack("!HBB", 1, 0, 0)).source_prefix == 0
    echoed = q.edns.ecs.option(20)
    assert echoed.data == struct.pack("!HBB", 1, 24, 20) + b"\x51\x02\x45"


@pytest.mark.parametrize("data", [
    b"\x00\x01\x18",                                     # shorter than 4 bytes
    struct.pack("!HBB", 3, 8, 0) + b"\x01",              # unknown family
    struct.pack("!HBB", 1, 33, 0) + b"\x01" * 5,         # source longer than IPv4
    struct.pack("!HBB", 2, 129, 0) + b"\x01" * 17,       # source longer than IPv6
    struct.pack("!HBB", 1, 24, 0) + b"\x51\x02",         # too few address bytes
    struct.pack("!HBB", 1, 24, 0) + b"\x51\x02\x45\x00",  # too many address bytes
    struct.pack("!HBB", 1, 20, 0) + b"\x51\x02\x4f",     # bits set past /20
    struct.pack("!HBB", 1, 24, 8) + b"\x51\x02\x45",     # a scope in a query
])
def test_bad_ecs_options_are_formerr(data):
    with pytest.raises(FormatError):
        read_ecs(data)
    with pytest.raises(FormatError) as e:
        parse_query(query(edns=True, options=[dnslib.EDNSOption(8, data)]))
    assert e.value.had_opt


def test_option_lengths_must_add_up():
    with pytest.raises(FormatError):
        read_opt(1232, 0, b"\x00\x08\x00\x07\x00\x01\x18")  # says 7 bytes, has 3
    with pytest.raises(FormatError):
        read_opt(1232, 0, b"\x00\x0a\x00")                   # half an option header
    with pytest.raises(FormatError):
        read_opt(1232, 0, (ecs().data and b"\x00\x08\x00\x07" + ecs().data) * 2)  # two ECS
    assert read_opt(1232, 0, b"\x00\x0a\x00\x08" + b"c" * 8).ecs is None  # a cookie is walked over
