"""DNSSEC for the GeoDNS (headwater.dns.dnssec), checked by an independent implementation.

Every signature the signer makes is validated with dnspython's ``dns.dnssec.validate`` against our
DNSKEY, after a trip through the wire (dnslib packs, dnspython parses); tampering must make it
fail. dnspython has no NSEC proof checker, so the negative answers' NSEC ranges and type bitmaps
are checked here by hand, with dnspython's canonical name ordering.

Server-level validation with BIND's validator (``delv``) against the live daemon is in
``tests/functional/test_dns_dnssec.py`` (``delv_validate`` in ``tests/functional/dns_harness.py``).
"""

from __future__ import annotations

import random
import stat
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import dnslib
import pytest
from dnslib import RR, DNSLabel

from headwater.clock import FakeClock
from headwater.config import ConfigError, Reader
from headwater.dns.dnssec.canonical import canonical_name, canonical_rdata
from headwater.dns.dnssec.config import DnssecConfig, read_dnssec
from headwater.dns.dnssec.denial import DNSKEY, NSEC, RRSIG, next_after_subtree, predecessor, type_bitmap
from headwater.dns.dnssec.ds import ds_rdata, render_ds
from headwater.dns.dnssec.keys import (FLAGS_CSK, ZoneKey, generate_private_scalar, key_path,
                                       load_or_create_zone_key, load_zone_key)
from headwater.dns.dnssec.sign import WINDOW_S, ZoneSigner
from headwater.sealed import Sealer, SealedKeyMismatch



ZONE = "cdn.headwater.test."
QT = dnslib.QTYPE
IN = dnslib.CLASS.IN


@pytest.fixture(scope="module")
def key() -> ZoneKey:
    return ZoneKey.from_scalar(ZONE, generate_private_scalar())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_123.0)


@pytest.fixture
def signer(key: ZoneKey, clock: FakeClock) -> ZoneSigner:
    return ZoneSigner(ZONE, key, negative_ttl=60, dnskey_ttl=300, clock=clock)


def rrset(name: str, rtype: str, ttl: int, *rdatas: dnslib.RD) -> tuple[RR, ...]:
    return tuple(RR(name, getattr(QT, rtype), IN, ttl, rd) for rd in rdatas)


SOA = rrset(ZONE, "SOA", 300, dnslib.SOA("ns1.CDN.headwater.test.", "Hostmaster.cdn.headwater.test.",
                                         (2024010101, 3600, 600, 86400, 60)))


def through_wire(sections: dict[str, list[RR]]):
    """Pack with dnslib (a real message, with name compression) and parse with dnspython."""
    rec = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1, aa=1))
    rec.rr, rec.auth = list(sections.get("answer", [])), list(sections.get("authority", []))
    return dns.message.from_wire(bytes(rec.pack()))


def keyring(signer: ZoneSigner):
    msg = through_wire({"answer": list(signer.dnskey_rrset())})
    return {dns.name.from_text(ZONE): msg.answer[0]}


def validate(signer: ZoneSigner, records: tuple[RR, ...], now: float, *, sig: RR | None = None,
             section: str = "answer") -> None:
    """Validate ``records`` and their RRSIG (``signer.sign`` unless given) with dnspython."""
    sig = sig if sig is not None else signer.sign(records)
    msg = through_wire({section: [*records, sig]})
    part = msg.answer if section == "answer" else msg.authority
    data = next(r for r in part if r.rdtype != RRSIG)
    sigs = next(r for r in part if r.rdtype == RRSIG)
    dns.dnssec.validate(data, sigs, keyring(signer), now=now)


# --- signing, checked by dnspython ------------------------------------------------------------

CASES = {
    "A, several records": rrset("www.cdn.headwater.test.", "A", 300, dnslib.A("192.0.2.3"),
                                dnslib.A("192.0.2.1"), dnslib.A("192.0.2.200")),
    "AAAA": rrset("www.cdn.headwater.test.", "AAAA", 300, dnslib.AAAA("2001:db8::1")),
    "SOA (names lowercased)": SOA,
    "TXT": rrset("txt.cdn.headwater.test.", "TXT", 300, dnslib.TXT(["v=spf1 -all", "Second String"]),
                 dnslib.TXT("x" * 255)),
    "NS": rrset(ZONE, "NS", 3600, dnslib.NS("NS1.cdn.headwater.test."), dnslib.NS("ns2.example.net.")),
    "CNAME": rrset("Www2.cdn.headwater.test.", "CNAME", 300, dnslib.CNAME("Video.CDN.headwater.test.")),
    "MX": rrset(ZONE, "MX", 300, dnslib.MX("Mail.cdn.headwater.test.", 10), dnslib.MX("mx2.example.", 20)),
    "SRV": rrset("_http._tcp.cdn.headwater.test.", "SRV", 300,
                 dnslib.SRV(1, 10, 80, "Edge.cdn.headwater.test.")),
    "CAA": rrset(ZONE, "CAA", 300, dnslib.CAA(0, "issue", "letsencrypt.org")),
}


@pytest.mark.parametrize("name", CASES)
def test_every_record_type_validates(signer: ZoneSigner, clock: FakeClock, name: str):
    validate(signer, CASES[name], clock.time())


def test_a_steered_answer_validates_as_served_with_the_query_case(signer: ZoneSigner, clock: FakeClock):
    # What the answerer builds for a steered name: the POP addresses, the short TTL, renamed to
    # the query name in the query's own case (0x20).
    served = rrset("ViDeO.cDn.HeadWater.test.", "A", 30, dnslib.A("127.0.0.2"), dnslib.A("127.0.0.1"))
    sig = signer.sign(served)
    assert sig.rname == served[0].rname and sig.ttl == 30 and sig.rdata.orig_ttl == 30
    assert sig.rdata.labels == 4 and sig.rdata.key_tag == signer.key.key_tag
    validate(signer, served, clock.time(), sig=sig)
    # The same RRset in another order or case is the same signed data: one signature, cached.
    again = signer.sign(tuple(reversed(rrset("video.cdn.headwater.test.", "A", 30, dnslib.A("127.0.0.2"),
                                             dnslib.A("127.0.0.1")))))
    assert again.rdata.sig == sig.rdata.sig
    assert signer.statistics().signatures == 1 and signer.statistics().cache_hits == 1


def test_the_dnskey_rrset_is_self_signed(signer: ZoneSigner, clock: FakeClock):
    keys = signer.dnskey_rrset()
    assert len(keys) == 1 and keys[0].rdata.flags == FLAGS_CSK == 257 and keys[0].rdata.algorithm == 13
    assert keys[0].rdata.protocol == 3 and len(keys[0].rdata.key) == 64
    validate(signer, keys, clock.time())


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_signatures_are_64_octets_r_s_not_der(key: ZoneKey, clock: FakeClock):
    uncached = ZoneSigner(ZONE, key, negative_ttl=60, dnskey_ttl=300, clock=clock,
                          config=DnssecConfig(signature_cache_entries=0))
    sigs = {uncached.sign(SOA).rdata.sig for _ in range(5)}
    assert len(sigs) == 5 and uncached.statistics().signatures == 5  # no cache: signed each time
    for sig in sigs:
        assert len(sig) == 64  # DER would be 70-72 octets: 0x30 len 0x02 len r 0x02 len s
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        assert 0 < r < P256_ORDER and 0 < s < P256_ORDER


def test_wildcard_owner_counts_labels_without_the_star(signer: ZoneSigner, clock: FakeClock):
    literal = rrset("*.cdn.headwater.test.", "A", 300, dnslib.A("192.0.2.9"))
    assert signer.sign(literal).rdata.labels == 3
    validate(signer, literal, clock.time())


@pytest.mark.parametrize("tamper", ["address", "ttl", "extra record", "txt case"])
def test_tampered_data_fails_validation(signer: ZoneSigner, clock: FakeClock, tamper: str):
    records = CASES["A, several records"]
    sig = signer.sign(records)
    if tamper == "address":
        records = (records[0], RR(records[1].rname, QT.A, IN, 300, dnslib.A("203.0.113.66")), records[2])
    elif tamper == "ttl":
        # A TTL above the original one is allowed to be clamped, so tamper with the RRSIG's own
        # Original TTL field instead: the signed data changes.
        sig = RR(sig.rname, RRSIG, IN, sig.ttl, dnslib.RRSIG(
            sig.rdata.covered, 13, sig.rdata.labels, 301, sig.rdata.sig_exp, sig.rdata.sig_inc,
            sig.rdata.key_tag, sig.rdata.name, sig.rdata.sig))
    elif tamper == "extra record":
        records = records + (RR(records[0].rname, QT.A, IN, 300, dnslib.A("203.0.113.7")),)
    else:
        txt = CASES["TXT"]
        sig = signer.sign(txt)
        records = (RR(txt[0].rname, QT.TXT, IN, 300, dnslib.TXT(["v=SPF1 -all", "Second String"])), txt[1])
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate(signer, records, clock.time(), sig=sig)


def test_every_flipped_signature_bit_fails_validation(signer: ZoneSigner, clock: FakeClock):
    records = CASES["MX"]
    good = signer.sign(records)
    rng = random.Random(7)
    for i in rng.sample(range(64), 12) + [0, 31, 32, 63]:
        sig = bytearray(good.rdata.sig)
        sig[i] ^= 1 << rng.randrange(8)
        bad = RR(good.rname, RRSIG, IN, good.ttl, dnslib.RRSIG(
            good.rdata.covered, 13, good.rdata.labels, good.rdata.orig_ttl, good.rdata.sig_exp,
            good.rdata.sig_inc, good.rdata.key_tag, good.rdata.name, bytes(sig)))
        with pytest.raises(dns.dnssec.ValidationFailure):
            validate(signer, records, clock.time(), sig=bad)


def test_another_key_does_not_validate(signer: ZoneSigner, clock: FakeClock):
    other = ZoneSigner(ZONE, ZoneKey.from_scalar(ZONE, generate_private_scalar()), negative_ttl=60,
                       dnskey_ttl=300, clock=clock)
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate(signer, SOA, clock.time(), sig=other.sign(SOA))


def test_validity_window_inception_in_the_past_and_expiry(signer: ZoneSigner, clock: FakeClock):
    now = clock.time()
    sig = signer.sign(SOA).rdata
    assert now - 2 * 3600 < sig.sig_inc <= now - 3600
    assert sig.sig_exp - sig.sig_inc == 7 * 86400 + 3600
    validate(signer, SOA, now - 3600 + 1)  # a validator whose clock is an hour behind accepts it
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate(signer, SOA, sig.sig_exp + 1, sig=signer.sign(SOA))
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate(signer, SOA, sig.sig_inc - 1, sig=signer.sign(SOA))


def test_the_cache_rolls_with_the_window_and_stays_bounded(key: ZoneKey, clock: FakeClock):
    s = ZoneSigner(ZONE, key, negative_ttl=60, dnskey_ttl=300, clock=clock,
                   config=DnssecConfig(signature_cache_entries=8))
    first = s.sign(SOA)
    assert s.sign(SOA).rdata.sig == first.rdata.sig
    clock.advance(WINDOW_S)
    rolled = s.sign(SOA)
    assert rolled.rdata.sig_inc == first.rdata.sig_inc + WINDOW_S and rolled.rdata.sig != first.rdata.sig
    validate(s, SOA, clock.time(), sig=rolled)
    for i in range(50):
        s.sign(rrset(f"h{i}.cdn.headwater.test.", "A", 30, dnslib.A("192.0.2.1")))
        s.sign(s.deny(DNSLabel(f"random{i}.cdn.headwater.test."), nxdomain=True, types_present=frozenset())[:1])
    st = s.statistics()
    assert st.cache_entries == 8 and st.negative_cache_entries == 2
    assert st.signatures == 2 + 50 + 50


def test_sign_refuses_what_is_not_one_rrset_of_the_zone(signer: ZoneSigner):
    with pytest.raises(ValueError, match="not one RRset"):
        signer.sign(rrset("a.cdn.headwater.test.", "A", 30, dnslib.A("192.0.2.1"))
                    + rrset("b.cdn.headwater.test.", "A", 30, dnslib.A("192.0.2.1")))
    with pytest.raises(ValueError, match="not in zone"):
        signer.sign(rrset("example.org.", "A", 30, dnslib.A("192.0.2.1")))
    with pytest.raises(ValueError, match="empty"):
        signer.sign(())


def test_canonical_form_lowercases_only_the_types_that_need_it():
    soa = SOA[0]
    assert b"Hostmaster" not in canonical_rdata(soa) and b"hostmaster" in canonical_rdata(soa)
    txt = CASES["TXT"][0]
    assert b"Second String" in canonical_rdata(txt)
    # no compression even where the wire form would compress (SOA mname and rname share a suffix)
    assert canonical_rdata(soa).count(b"\x03cdn\x09headwater\x04test\x00") == 2
    assert canonical_name("WWW.Cdn.headwater.TEST.") == b"\x03www\x03cdn\x09headwater\x04test\x00"


# --- the key, the DS ---------------------------------------------------------------------------

def test_key_tag_and_ds_match_dnspython(signer: ZoneSigner):
    ring = keyring(signer)
    dnskey = ring[dns.name.from_text(ZONE)][0]
    assert dns.dnssec.key_id(dnskey) == signer.key.key_tag
    expected = dns.dnssec.make_ds(dns.name.from_text(ZONE), dnskey, "SHA256")
    ds = ds_rdata(signer.key)
    assert (ds.key_tag, ds.algorithm, ds.digest_type, ds.digest) == \
        (expected.key_tag, expected.algorithm, expected.digest_type, expected.digest)


def test_render_ds_prints_rrs_dnspython_reads(signer: ZoneSigner):
    text = render_ds(signer.key, ttl=3600)
    lines = [line.split("\t") for line in text.splitlines() if not line.startswith(";")]
    assert [line[:4] for line in lines] == [[ZONE, "3600", "IN", "DS"], [ZONE, "3600", "IN", "DNSKEY"]]
    ds = dns.rrset.from_text(ZONE, 3600, "IN", "DS", lines[0][4])
    dnskey = dns.rrset.from_text(ZONE, 3600, "IN", "DNSKEY", lines[1][4])
    assert ds[0] == dns.dnssec.make_ds(dns.name.from_text(ZONE), dnskey[0], "SHA256")
    assert dns.dnssec.key_id(dnskey[0]) == signer.key.key_tag
    assert f"key tag {signer.key.key_tag}" in text.splitlines()[0]


def test_keys_are_created_once_sealed_and_loaded(tmp_path: Path, clock: FakeClock):
    sealer = Sealer(b"k" * 32)
    key_dir = tmp_path / "keys"
    made, created = load_or_create_zone_key("CDN.headwater.test.", key_dir, sealer, clock=clock)
    loaded, created_again = load_or_create_zone_key(ZONE, key_dir, sealer, clock=clock)
    assert created and not created_again
    assert loaded.dnskey_rdata == made.dnskey_rdata and loaded.key_tag == made.key_tag
    path = key_path(key_dir, ZONE)
    assert path.name == "cdn.headwater.test.+013.csk.sealed" and [p.name for p in key_dir.iterdir()] == [path.name]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert int(made.private.d).to_bytes(32, "big") not in path.read_bytes()
    assert load_zone_key(ZONE, key_dir, sealer).dnskey_rdata == made.dnskey_rdata
    with pytest.raises(SealedKeyMismatch):
        load_or_create_zone_key(ZONE, key_dir, Sealer(b"x" * 32))  # never silently replaced
    with pytest.raises(FileNotFoundError):
        load_zone_key("other.test.", key_dir, sealer)


# --- denial of existence -----------------------------------------------------------------------

ZONE_NAMES = ["cdn.headwater.test.", "www.cdn.headwater.test.", "video.cdn.headwater.test.",
              "a.b.cdn.headwater.test.", "_http._tcp.cdn.headwater.test.", "z.cdn.headwater.test.",
              "x.www.cdn.headwater.test.", "0.cdn.headwater.test.", "-.cdn.headwater.test."]


def _name(n) -> "dns.name.Name":
    return n if isinstance(n, dns.name.Name) else dns.name.from_text(str(n))


def nsec_of(rr: RR):
    """The NSEC as dnspython reads it off the wire: owner, next name, types."""
    msg = through_wire({"authority": [rr]})
    r = msg.authority[0]
    types = {t for window, bitmap in r[0].windows for i, octet in enumerate(bitmap)
             for b in range(8) if octet & (0x80 >> b) for t in [window * 256 + i * 8 + b]}
    return r.name, r[0].next, types


def covers(owner, nxt, name) -> bool:
    """RFC 4035 §5.4: ``name`` is strictly between owner and next in canonical order."""
    return owner < name < nxt


def check_nxdomain_proof(signer: ZoneSigner, q: "dns.name.Name", now: float) -> None:
    """What a validator checks for NXDOMAIN (RFC 4035 §5.4): an NSEC covers the name, its next
    name does not make the name an empty non-terminal, and another NSEC covers the wildcard at the
    closest encloser the first one implies. All signed, all validating."""
    nsecs = signer.deny(DNSLabel(list(q.labels[:-1])), nxdomain=True, types_present=frozenset())
    assert all(rr.ttl == signer.negative_ttl for rr in nsecs)
    read = [nsec_of(rr) for rr in nsecs]
    for rr in nsecs:
        validate(signer, (rr,), now, section="authority")
    covering = [(o, n, t) for o, n, t in read if covers(o, n, q)]
    assert covering, f"no NSEC covers {q}: {read}"
    owner, nxt, types = covering[0]
    assert types == {RRSIG, NSEC}
    assert not nxt.is_subdomain(q), "a next name below the qname would make it an empty non-terminal"
    encloser = max((q.fullcompare(owner)[2], q.fullcompare(nxt)[2]))
    ce = dns.name.Name(q.labels[len(q.labels) - encloser:])
    assert ce == q.parent()
    wildcard = dns.name.Name((b"*",) + ce.labels)
    assert any(covers(o, n, wildcard) for o, n, _ in read), f"nothing denies {wildcard}"
    for existing in ZONE_NAMES:  # no white lie may deny a name the zone holds
        e = _name(existing)
        assert not any(covers(o, n, e) for o, n, _ in read), f"{e} is covered by a lie"
        assert all(o != e for o, _, _ in read)


@pytest.mark.parametrize("qname", ["nope.cdn.headwater.test.", "Nope.CDN.headwater.test.", "wwx.cdn.headwater.test.",
                                   "a.cdn.headwater.test.", "deep.down.cdn.headwater.test.",
                                   "y.www.cdn.headwater.test.", "*.nothing.cdn.headwater.test.",
                                   "[.cdn.headwater.test.", "@.cdn.headwater.test.", "0a.cdn.headwater.test.",
                                   "a\\000.cdn.headwater.test.", "\\255\\255.cdn.headwater.test.",
                                   ("q" * 63) + ".cdn.headwater.test."])
def test_nxdomain_white_lies_prove_the_name_and_the_wildcard_absent(signer: ZoneSigner, clock: FakeClock,
                                                                   qname: str):
    check_nxdomain_proof(signer, dns.name.from_text(qname), clock.time())


def test_nxdomain_proofs_for_random_names(signer: ZoneSigner, clock: FakeClock):
    rng = random.Random(11)
    alphabet = b"abcxyz019-_*@[`{\x00\x01\xfe\xff"
    for _ in range(60):
        label = bytes(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 5, 62, 63])))
        parent = rng.choice(["cdn.headwater.test.", "www.cdn.headwater.test.", "gone.cdn.headwater.test."])
        q = dns.name.Name((label,) + dns.name.from_text(parent).labels)
        if label == b"\x00" or any(_name(e).is_subdomain(q) for e in ZONE_NAMES):
            continue  # it exists (or is an empty non-terminal above a name that does)
        check_nxdomain_proof(signer, q, clock.time())


def test_a_name_whose_label_is_a_lone_zero_octet_gets_only_the_wildcard_denial(signer: ZoneSigner):
    nsecs = signer.deny(DNSLabel((b"\x00", b"cdn", b"headwater", b"test")), nxdomain=True,
                        types_present=frozenset())
    owners = [nsec_of(rr)[0] for rr in nsecs]
    assert owners == [dns.name.from_text(")\\255.cdn.headwater.test.")]


@pytest.mark.parametrize("qname,present", [("www.cdn.headwater.test.", {QT.A, QT.AAAA}),
                                           ("WWW.cdn.headwater.test.", {QT.CNAME}),
                                           ("b.cdn.headwater.test.", set()),  # empty non-terminal
                                           ("cdn.headwater.test.", {QT.SOA, QT.NS, QT.MX})])
def test_nodata_nsec_matches_the_name_and_lists_its_types(signer: ZoneSigner, clock: FakeClock,
                                                          qname: str, present: set[int]):
    nsecs = signer.deny(DNSLabel(qname), nxdomain=False, types_present=frozenset(present))
    assert len(nsecs) == 1
    validate(signer, nsecs, clock.time(), section="authority")
    owner, nxt, types = nsec_of(nsecs[0])
    assert owner == _name(qname)
    expected = present | {RRSIG, NSEC} | ({DNSKEY} if owner == _name(ZONE) else set())
    assert types == expected
    assert QT.TXT not in types  # so a TXT query is proven NODATA
    # The next name is the qname's immediate successor: the NSEC covers no other name.
    assert nxt == dns.name.Name((b"\x00",) + owner.labels)
    for existing in ZONE_NAMES:
        assert not covers(owner, nxt, _name(existing))


def test_type_bitmap_matches_rfc_4034_example():
    # RFC 4034 §4.3: A MX RRSIG NSEC TYPE1234
    assert type_bitmap({1, 15, 46, 47, 1234}) == bytes.fromhex(
        "0006400100000003" "041b" + "00" * 26 + "20")


def test_name_arithmetic_stays_in_canonical_space():
    assert predecessor((b"b", b"test")) == (b"a\xff", b"test")
    assert predecessor((b"[", b"test")) == (b"@\xff", b"test")  # not "Z", which sorts as "z"
    assert next_after_subtree((b"@" * 63, b"test")) == (b"@" * 62 + b"[", b"test")
    assert next_after_subtree((b"a\xff" + b"\xff" * 61, b"test")) == (b"b", b"test")
    assert predecessor((b"\x00", b"test")) is None


def test_deny_refuses_names_outside_the_zone_and_the_apex_as_nxdomain(signer: ZoneSigner):
    with pytest.raises(ValueError, match="not in zone"):
        signer.deny(DNSLabel("example.org."), nxdomain=True, types_present=frozenset())
    with pytest.raises(ValueError, match="apex"):
        signer.deny(DNSLabel(ZONE), nxdomain=True, types_present=frozenset())


# --- config ------------------------------------------------------------------------------------

def _reader(tmp_path: Path, text: str = "[dns.dnssec]\nalgorithm = 8\n") -> Reader:
    return Reader(str(tmp_path / "cluster.toml"), text, root=tmp_path, data_dir=tmp_path / "var")


def test_config_defaults_and_values(tmp_path: Path):
    r = _reader(tmp_path)
    d = read_dnssec(r, {}, node_data_dir=tmp_path / "var" / "dns-1")
    assert d == DnssecConfig(key_dir=tmp_path / "var" / "dns-1" / "keys")
    c = read_dnssec(r, {"enabled": True, "algorithm": 13, "key_dir": "secrets/dns", "signature_validity_days": 14,
                        "inception_offset_seconds": 600, "signature_cache_entries": 100},
                    node_data_dir=tmp_path)
    assert c.enabled and c.key_dir == tmp_path / "secrets" / "dns" and c.signature_validity_s == 14 * 86400
    assert c.inception_offset_s == 600 and c.signature_cache_entries == 100


@pytest.mark.parametrize("raw,key,line,message", [
    ({"algorithm": 8}, "dns.dnssec.algorithm", 2, "algorithm 8 is not supported.*13 \\(ECDSAP256SHA256\\)"),
    ({"signature_validity_days": 0}, "dns.dnssec.signature_validity_days", 1, "between 1 and 90"),
    ({"inception_offset_seconds": -5}, "dns.dnssec.inception_offset_seconds", 1, "between 0 and 86400"),
    ({"enabled": "yes"}, "dns.dnssec.enabled", 1, "true or false"),
    ({"nsec3": True}, "dns.dnssec.nsec3", 1, "unknown key"),
])
def test_config_errors_name_the_key_and_line(tmp_path: Path, raw: dict, key: str, line: int, message: str):
    with pytest.raises(ConfigError, match=message) as e:
        read_dnssec(_reader(tmp_path), raw, node_data_dir=tmp_path)
    assert e.value.key == key and e.value.line == line
