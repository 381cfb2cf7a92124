"""Hypothesis fuzz of the parser, the answerer and the cache: random bytes and mangled real
queries never raise, get no answer only when RFC-mandated (short or a response), always get a
well-formed answer with the query's ID otherwise, and a cached answer is byte for byte the
answer the full path gives."""

from __future__ import annotations

import struct

import dns.edns
import dns.message
import pytest
from headwater.config import loads
from headwater.dns.answer import Answerer
from headwater.dns.cache import AnswerCache
from headwater.dns.daemon import build_steering
from headwater.dns.reload import load_zones
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_dns_answer import CONFIG

_cfg = loads(CONFIG).dns
_steering, _ = build_steering(None, _cfg)
ANSWERER = Answerer(load_zones(_cfg), steering=_steering)

NAMES = ["web.cdn.example.", "WWW.cdn.example.", "video.cdn.example.", "x.wild.cdn.example.", "nope.cdn.example.",
         "b.deep.cdn.example.", "loop1.cdn.example.", "h.sub.cdn.example.", "example.org.", "."]
TYPES = ["A", "AAAA", "TXT", "MX", "SRV", "CAA", "NS", "SOA", "CNAME", "ANY", "DNSKEY", "AXFR"]


@st.composite
def real_queries(draw) -> bytes:
    kw = {}
    if draw(st.booleans()):
        kw["use_edns"] = draw(st.sampled_from([0, 0, 0, 1]))
        kw["payload"] = draw(st.integers(0, 65535))
        kw["want_dnssec"] = draw(st.booleans())
        if draw(st.booleans()):
            addr = draw(st.sampled_from(["10.1.2.0", "10.2.0.0", "81.2.69.0", "2001:db8::", "0.0.0.0"]))
            bits = 32 if ":" not in addr else 128
            kw["options"] = [dns.edns.ECSOption(addr, draw(st.integers(0, bits)))]
    q = dns.message.make_query(draw(st.sampled_from(NAMES)), draw(st.sampled_from(TYPES)), **kw)
    return q.to_wire()


@st.composite
def mangled(draw) -> bytes:
    data = bytearray(draw(real_queries()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "count"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[draw(st.integers(0, len(data))):]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "count" and len(data) >= 12:
            i = draw(st.sampled_from([4, 6, 8, 10]))
            data[i:i + 2] = struct.pack("!H", draw(st.integers(0, 3)))
    return bytes(data)


PACKETS = st.one_of(st.binary(max_size=600), real_queries(), mangled())


def check(data: bytes) -> None:
    for tcp in (False, True):
        result = ANSWERER.answer(data, "10.1.0.1", tcp=tcp)
        if result is None:
            assert len(data) < 12 or data[2] & 0x80
            continue
        wire = result.wire
        assert wire[:2] == data[:2] and wire[2] & 0x80  # our ID back, QR set
        assert result.rcode in (0, 1, 2, 3, 4, 5, 16)
        assert result.rcode != 2, "SERVFAIL means the answerer failed on this input"
        if not tcp:
            assert len(wire) <= max(512, 1232)
        dns.message.from_wire(wire)  # well-formed for dnspython too
    cache = AnswerCache()
    for _ in range(2):
        hit, found = cache.lookup(data, "10.1.0.1", ANSWERER.generation)
        fresh = ANSWERER.answer(data, "10.1.0.1")
        if hit is not None:
            assert hit == fresh.wire
        elif fresh is not None:
            cache.store(found, "10.1.0.1", fresh)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PACKETS)
def test_fuzz_parser_answerer_cache(data):
    check(data)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PACKETS)
def test_fuzz_parser_answerer_cache_long(data):
    check(data)
