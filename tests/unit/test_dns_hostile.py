"""Attacks found against the running GeoDNS, replayed on the sans-IO parts: each input that once
got no answer (the handler raised), or could grow state without bound, now gets its RFC answer
and changes nothing."""

from __future__ import annotations

import struct

import dns.message
import dns.rcode
import dnslib
import pytest
from headwater.config import loads
from headwater.dns.answer import Answerer
from headwater.dns.daemon import OTHER_QTYPE, counted_qtype, qtype_label
from headwater.dns.errors import FormatError, rcode_of
from headwater.dns.reload import load_zones
from headwater.dns.wire import Header, Question, parse_query

CONFIG = """
[dns]
zone = "cdn.example."
[[dns.records]]
name = "www"
type = "A"
value = "192.0.2.1"
"""

ANSWERER = Answerer(load_zones(loads(CONFIG).dns))


def packet(name: bytes, qtype: int = 1, *, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, flags, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


# A question name dnslib reads but the RFC forbids (and dnslib then cannot pack): the answer
# used to repeat it, packing raised, and the datagram got no answer and a logged traceback.
BAD_NAMES = {
    "128 labels, 257 bytes": b"\x01a" * 128 + b"\x00",
    "a 64-byte label (type 0x40)": b"\x40" + b"a" * 64 + b"\x00",
    "a label of type 0x80": b"\x80" + b"\x00",
    "four 63-byte labels (257 bytes)": (b"\x3f" + b"b" * 63) * 4 + b"\x00",
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_question_name_over_the_rfc_limits_is_formerr_without_the_question(name):
    data = packet(name)
    with pytest.raises(FormatError) as e:
        parse_query(data)
    assert getattr(e.value, "question", None) is None
    for tcp in (False, True):
        answered = ANSWERER.answer(data, "192.0.2.9", tcp=tcp)
        assert answered is not None, "a malformed query gets FORMERR, not silence"
        msg = dns.message.from_wire(answered.wire)
        assert msg.id == 0xBEEF and msg.rcode() == dns.rcode.FORMERR and not msg.question


def test_the_longest_legal_name_is_answered_with_its_question():
    # 4 labels of 63 bytes with their length octets and the root: 257 > 255; 3 of 63 and one of
    # 61 make exactly 255 -- a legal name, outside our zone: REFUSED, question repeated.
    name = (b"\x3f" + b"c" * 63) * 3 + b"\x3d" + b"c" * 61 + b"\x00"
    assert len(name) == 255
    msg = dns.message.from_wire(ANSWERER.answer(packet(name), "192.0.2.9").wire)
    assert msg.rcode() == dns.rcode.REFUSED and len(msg.question) == 1


def test_an_error_whose_question_cannot_be_packed_is_sent_without_it():
    # Defence in depth: whatever error carries a question dnslib cannot pack, the client still
    # gets the RCODE rather than silence.
    header = Header(id=7, flags=0x0100, qdcount=1, ancount=0, nscount=0, arcount=0)
    bad = Question(dnslib.DNSLabel((b"x" * 70,)), 1, 1)
    answered = ANSWERER._error(header, FormatError("test"), False, bad, False)
    msg = dns.message.from_wire(answered.wire)
    assert msg.id == 7 and msg.rcode() == rcode_of(FormatError("x")) and not msg.question


def test_query_types_from_clients_map_to_a_bounded_label_set():
    labels = {qtype_label(counted_qtype(t)) for t in range(65536)}
    assert counted_qtype(1) == 1 and qtype_label(1) == "A"
    assert counted_qtype(0) == OTHER_QTYPE and counted_qtype(4321) == OTHER_QTYPE
    assert "other" in labels and len(labels) < 80
