"""The wire-level answer cache: keys, ID and 0x20 case patched on hits, per-client steered
answers, generations, and both bounds."""

from __future__ import annotations

import dns.edns
import dns.message
import pytest
from headwater.config import loads
from headwater.dns.answer import Answerer
from headwater.dns.cache import AnswerCache, query_key
from headwater.dns.daemon import build_steering
from headwater.dns.reload import load_zones

from .test_dns_answer import CONFIG


@pytest.fixture(scope="module")
def answerer():
    cfg = loads(CONFIG).dns
    steering, _ = build_steering(None, cfg)
    return Answerer(load_zones(cfg), steering=steering)


def serve(cache, answerer, wire, client="127.0.0.1"):
    """What the daemon's UDP path does: the cache, else the answerer then the cache."""
    hit, found = cache.lookup(wire, client, answerer.generation)
    if hit is not None:
        return hit, True
    answered = answerer.answer(wire, client)
    cache.store(found, client, answered)
    return answered.wire, False


def test_a_hit_is_the_fresh_answer_with_the_new_id_and_case(answerer):
    cache = AnswerCache()
    first = dns.message.make_query("web.cdn.example.", "A", use_edns=0)
    serve(cache, answerer, first.to_wire())
    again = dns.message.make_query("WeB.cDn.EXAMPLE.", "A", use_edns=0)
    wire, hit = serve(cache, answerer, again.to_wire())
    assert hit
    assert wire == answerer.answer(again.to_wire(), "127.0.0.1").wire  # byte for byte
    msg = dns.message.from_wire(wire)
    assert msg.id == again.id and msg.question[0].name.to_text() == "WeB.cDn.EXAMPLE."


def test_keys_tell_apart_what_changes_an_answer():
    def key(**kw):
        name = kw.pop("name", "web.cdn.example.")
        q = dns.message.make_query(name, kw.pop("qtype", "A"), **kw)
        q.id = 1
        return query_key(q.to_wire())[0]
    base = key()
    assert key(name="WEB.cdn.example.") == base
    assert len({base, key(qtype="AAAA"), key(use_edns=0), key(use_edns=0, want_dnssec=True),
                key(use_edns=0, payload=4096), key(use_edns=0, options=[dns.edns.ECSOption("10.1.0.0", 16)]),
                key(use_edns=0, options=[dns.edns.ECSOption("10.2.0.0", 16)])}) == 7
    rd = dns.message.make_query("web.cdn.example.", "A")
    rd.flags = 0
    assert query_key(rd.to_wire())[0] != base


@pytest.mark.parametrize("wire", [
    b"", b"\x00" * 12,
    bytes.fromhex("1234 0100 0002 0000 0000 0000") + b"\x00\x00\x01\x00\x01" * 2,  # QDCOUNT 2
    bytes.fromhex("1234 0100 0001 0000 0000 0000 c00c 0001 0001"),                # compressed
    bytes.fromhex("1234 8100 0001 0000 0000 0000 00 0001 0001"),                   # a response
    bytes.fromhex("1234 0100 0001 0000 0000 0000 00 0001 0001 00"),                # trailing byte
    bytes.fromhex("1234 0100 0001 0000 0000 0001 00 0001 0001 00 0029 1000 00010000 0000"),  # EDNS 1
])
def test_unusual_queries_have_no_key(wire):
    assert query_key(wire) is None


def test_steered_answers_without_ecs_are_cached_per_client(answerer):
    cache = AnswerCache()
    q = dns.message.make_query("video.cdn.example.", "A")
    lon, _ = serve(cache, answerer, q.to_wire(), client="10.1.0.1")
    nyc, hit = serve(cache, answerer, q.to_wire(), client="10.2.0.1")
    assert not hit and lon != nyc
    again, hit = serve(cache, answerer, q.to_wire(), client="10.1.0.1")
    assert hit and again == lon


def test_a_new_generation_empties_the_cache(answerer):
    cache = AnswerCache()
    wire = dns.message.make_query("web.cdn.example.", "A").to_wire()
    serve(cache, answerer, wire)
    assert serve(cache, answerer, wire)[1]
    assert cache.lookup(wire, "127.0.0.1", ("another", 1))[0] is None and len(cache) == 0


def test_errors_are_not_cached(answerer):
    cache = AnswerCache()
    wire = dns.message.make_query("example.org.", "A").to_wire()
    serve(cache, answerer, wire)
    assert not serve(cache, answerer, wire)[1] and len(cache) == 0


def test_bounded_by_entries_and_bytes_lru_first(answerer):
    cache = AnswerCache(max_entries=3)
    names = [f"n{i}.wild.cdn.example." for i in range(5)]
    wires = [dns.message.make_query(n, "A").to_wire() for n in names]
    for w in wires[:3]:
        serve(cache, answerer, w)
    serve(cache, answerer, wires[0])            # n0 used again: n1 is now the oldest
    serve(cache, answerer, wires[3])
    assert len(cache) == 3 and serve(cache, answerer, wires[0])[1] and not serve(cache, answerer, wires[1])[1]
    small = AnswerCache(max_bytes=300)
    for w in wires:
        serve(small, answerer, w)
    assert small.statistics()["bytes"] <= 300 and len(small) < 5
