"""The answerer with real ZoneSigners, checked by dnspython's validator: each RRset signed by the
key of the zone holding it (a CNAME may lead from one of our zones into another, signed or not),
DNSKEY published at the apex with or without DO, AA but never AD, an insecure delegation proven
by an NSEC without DS and its NS left unsigned."""

from __future__ import annotations

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import pytest

from headwater.dns.answer import Answerer
from headwater.dns.dnssec.keys import ZoneKey, generate_private_scalar
from headwater.dns.dnssec.sign import ZoneSigner
from headwater.dns.masterfile import record_from_text
from headwater.dns.zone import ZoneSet, build_zone

CDN, FILES, PLAIN = "cdn.headwater.test.", "files.test.", "plain.test."


def zone(origin: str, *records: tuple[str, str, str]):
    rrs = [record_from_text("@", "SOA", "ns1 hostmaster 1 3600 600 86400 60", origin=origin, ttl=300, source="t"),
           record_from_text("@", "NS", "ns1", origin=origin, ttl=300, source="t")]
    rrs += [record_from_text(n, t, v, origin=origin, ttl=300, source="t") for n, t, v in records]
    return build_zone(origin, rrs, source=origin)


@pytest.fixture(scope="module")
def answerer():
    zones = ZoneSet([
        zone(CDN, ("static", "A", "192.0.2.10"), ("www", "CNAME", "www.files.test."),
             ("old", "CNAME", "www.plain.test."), ("sub", "NS", "ns.sub"), ("ns.sub", "A", "192.0.2.53")),
        zone(FILES, ("www", "A", "192.0.2.20")),
        zone(PLAIN, ("www", "A", "192.0.2.30")),
    ], generation=0)
    signers = {}
    for origin in (CDN, FILES):
        key = ZoneKey.from_scalar(origin, generate_private_scalar())
        signers[tuple(x.encode() for x in origin.rstrip(".").split("."))] = ZoneSigner(
            origin, key, negative_ttl=60, dnskey_ttl=300)
    return Answerer(zones, signers=signers)


def ask(answerer: Answerer, name: str, qtype: str, *, do: bool = True) -> dns.message.Message:
    q = dns.message.make_query(name, qtype, want_dnssec=do, use_edns=0)
    return dns.message.from_wire(answerer.answer(q.to_wire(), "192.0.2.99").wire)


def keyring(answerer: Answerer) -> dict:
    keys = {}
    for origin in (CDN, FILES):
        msg = ask(answerer, origin, "DNSKEY")
        keys[dns.name.from_text(origin)] = msg.answer[0]
    return keys


def signed_sets(msg: dns.message.Message, section: list, keys: dict) -> set[tuple[str, str]]:
    """(owner, type) of every RRset in ``section`` with an RRSIG that validates."""
    sigs = {(r.name, r.covers): r for r in section if r.rdtype == dns.rdatatype.RRSIG}
    out = set()
    for rrset in section:
        if rrset.rdtype != dns.rdatatype.RRSIG and (rrset.name, rrset.rdtype) in sigs:
            dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], keys)
            out.add((rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype)))
    return out


def test_a_cname_into_another_signed_zone_is_signed_by_each_zones_key(answerer):
    msg = ask(answerer, "www.cdn.headwater.test.", "A")
    assert msg.rcode() == 0 and msg.flags & dns.flags.AA and not msg.flags & dns.flags.AD
    assert signed_sets(msg, msg.answer, keyring(answerer)) == {("www.cdn.headwater.test.", "CNAME"),
                                                               ("www.files.test.", "A")}
    signers = {r.name.to_text(): r[0].signer.to_text() for r in msg.answer if r.rdtype == dns.rdatatype.RRSIG}
    assert signers == {"www.cdn.headwater.test.": CDN, "www.files.test.": FILES}


def test_a_cname_into_an_unsigned_zone_signs_only_our_signed_part(answerer):
    msg = ask(answerer, "old.cdn.headwater.test.", "A")
    assert msg.rcode() == 0 and [r.address for r in msg.answer[-1]] == ["192.0.2.30"]
    assert signed_sets(msg, msg.answer, keyring(answerer)) == {("old.cdn.headwater.test.", "CNAME")}
    assert not [r for r in msg.answer if r.rdtype == dns.rdatatype.RRSIG and r.name.to_text() == "www.plain.test."]


def test_dnskey_is_published_to_queries_without_do_too(answerer):
    plain = ask(answerer, CDN, "DNSKEY", do=False)
    assert [r.rdtype for r in plain.answer] == [dns.rdatatype.DNSKEY] and plain.answer[0][0].flags == 257
    assert ask(answerer, PLAIN, "DNSKEY").answer == []  # an unsigned zone has none


def test_an_insecure_delegation_is_proven_by_an_nsec_without_ds(answerer):
    msg = ask(answerer, "www.sub.cdn.headwater.test.", "A")
    assert not msg.flags & dns.flags.AA and not msg.answer
    ns = [r for r in msg.authority if r.rdtype == dns.rdatatype.NS]
    assert ns and ns[0].name.to_text() == "sub.cdn.headwater.test."
    assert signed_sets(msg, msg.authority, keyring(answerer)) == {("sub.cdn.headwater.test.", "NSEC")}
    [nsec] = [r for r in msg.authority if r.rdtype == dns.rdatatype.NSEC]
    types = {w * 256 + i * 8 + b for w, bitmap in nsec[0].windows for i, octet in enumerate(bitmap)
             for b in range(8) if octet & (0x80 >> b)}
    assert dns.rdatatype.NS in types and dns.rdatatype.DS not in types
    unsigned = ask(answerer, "www.sub.cdn.headwater.test.", "A", do=False)
    assert not [r for r in unsigned.authority if r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.RRSIG)]


def test_without_do_nothing_is_signed(answerer):
    msg = ask(answerer, "nope.files.test.", "A", do=False)
    assert msg.rcode() == 3 and [r.rdtype for r in msg.authority] == [dns.rdatatype.SOA]
    signed = ask(answerer, "nope.files.test.", "A")
    assert signed_sets(signed, signed.authority, keyring(answerer)) >= {("files.test.", "SOA")}
