"""The answerer, sans-IO: one query's bytes in, one answer's bytes out (or None: no answer).

:class:`Answerer` serves a :class:`~.zone.ZoneSet`. For a question in one of its zones it answers
authoritatively (AA): the RRset, CNAMEs chased inside our zones (at most ``MAX_CHAIN`` links),
wildcards synthesised as RFC 4592 says (the closest encloser's ``*`` child, only when the name
itself does not exist; an empty non-terminal is NODATA, never a wildcard match), NODATA and
NXDOMAIN with the zone's SOA in the authority section at the negative TTL (RFC 2308), a
referral below a zone cut. Outside its zones it answers REFUSED; failures to parse become the
RCODE :mod:`.errors` maps them to.

Steered names (``[[dns.steered]]``) get their A and AAAA records from a :class:`Steering`
(family 4 or 6, the ECS source network or else the resolver's address as a /32 or /128); the ECS
option is echoed with the scope prefix the steering reports, and with scope 0 on answers that
did not depend on the client. With the DO bit set, each RRset of a zone that has a
:class:`Signer` is followed by its RRSIG made with that zone's key (a CNAME may lead into another
of our zones, signed or not), denials carry the signer's NSEC records, and a delegation an NSEC
proving it has no DS (its NS RRset stays unsigned: it is the child's). A signed zone answers
DNSKEY at its apex, with DO or without; the AD bit is never set. A UDP answer larger than the client's payload size loses its additional section, then
whole RRsets from the end, and is marked TC=1 (the client retries over TCP).

The result says what the answer was (:class:`Answered`): its RCODE and kind (what response rate
limiting and the metrics count), whether it may be cached and whether it depended on the
resolver's own address (a steered answer without ECS), which is what the answer cache keys on.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Mapping, Protocol

import dnslib

from .edns import DEFAULT_UDP, MIN_UDP, opt_record
from .errors import RCODES, DnsError, Refused, Unanswerable, rcode_of
from .wire import Header, Query, Question, parse_query, read_header
from .zone import Key, RRset, Zone, ZoneSet, key_of

__all__ = ["Steered", "Steering", "Signer", "Answered", "Answerer", "MAX_CHAIN", "MAX_TCP_ANSWER"]

log = logging.getLogger("headwater.dns")

QT = dnslib.QTYPE
MAX_CHAIN = 8
MAX_TCP_ANSWER = 65535
_REFUSED_TYPES = frozenset({QT.AXFR, QT.IXFR, 253, 254})  # zone transfers, MAILB, MAILA


class Steered(Protocol):
    """What :meth:`Steering.steer` returns (``headwater.dns.steering.steer.Steered``)."""

    addresses: tuple[str, ...]
    ttl: int
    scope_prefix: int


class Steering(Protocol):
    """The steering interface (``headwater.dns.steering.steer.Steering``)."""

    generation: int

    def steer(self, name: str, family: int,
              client: ipaddress.IPv4Network | ipaddress.IPv6Network, from_ecs: bool) -> Steered: ...


class Signer(Protocol):
    """The online signer of one zone (``headwater.dns.dnssec.sign.ZoneSigner``)."""

    zone: dnslib.DNSLabel

    def dnskey_rrset(self) -> RRset: ...
    def sign(self, rrset: RRset) -> dnslib.RR: ...
    def deny(self, qname: dnslib.DNSLabel, *, nxdomain: bool, types_present: frozenset[int]) -> RRset: ...


@dataclass(frozen=True, slots=True)
class Answered:
    """One answer: ``wire`` to send, its RCODE and question type (for metrics), ``kind`` for rate
    limiting (answer, nxdomain, nodata, referral, error), ``cacheable`` (the same question from
    the same client subnet always gets these bytes until the zone or steering changes) and
    ``per_client`` (a steered answer chosen by the resolver's own address)."""

    wire: bytes
    rcode: int
    qtype: int
    kind: str
    cacheable: bool = False
    per_client: bool = False
    truncated: bool = False
    zone: str = ""  # the zone answering (RRL accounts NXDOMAINs per zone)


@dataclass(slots=True)
class _Sections:
    answer: list[dnslib.RR]
    authority: list[dnslib.RR]
    additional: list[dnslib.RR]
    rcode: int = 0
    aa: bool = True
    kind: str = "answer"
    scope: int = 0
    per_client: bool = False


def _renamed(rrset: RRset, owner: dnslib.DNSLabel) -> list[dnslib.RR]:
    """``rrset`` owned by ``owner`` (the query's spelling, or a wildcard's expansion)."""
    return [dnslib.RR(owner, rr.rtype, rr.rclass, rr.ttl, rr.rdata) for rr in rrset]


def _rrsets(records: list[dnslib.RR]) -> list[list[dnslib.RR]]:
    """``records`` cut into runs of one owner and type (the RRsets as they were added)."""
    out: list[list[dnslib.RR]] = []
    for rr in records:
        if out and out[-1][0].rtype == rr.rtype and out[-1][0].rname == rr.rname:
            out[-1].append(rr)
        else:
            out.append([rr])
    return out


class Answerer:
    """Answers queries for ``zones``; ``steering`` answers steered names, ``signers`` (zone
    origin key -> signer) sign when asked with DO. ``max_udp`` caps the UDP payload size."""

    def __init__(self, zones: ZoneSet, *, steering: Steering | None = None,
                 signers: Mapping[Key, Signer] | None = None, max_udp: int = DEFAULT_UDP) -> None:
        self.zones = zones
        self.steering = steering
        self.signers = dict(signers or {})
        self.max_udp = max_udp

    @property
    def generation(self) -> tuple[int, int]:
        """What a cached answer depends on besides the question: zones and steering state."""
        return (self.zones.generation, self.steering.generation if self.steering is not None else 0)

    # --- entry point --------------------------------------------------------------------------

    def answer(self, data: bytes, client_ip: str, *, tcp: bool = False) -> Answered | None:
        """The answer to one query from ``client_ip``; None when nothing must be sent."""
        try:
            header = read_header(data)
        except Unanswerable:
            return None
        query: Query | None = None
        try:
            query = parse_query(data, header, max_udp=self.max_udp)
            return self._answer_query(query, client_ip, tcp)
        except DnsError as e:
            if query is not None:  # REFUSED and the like: the question is repeated
                return self._error(header, e, tcp, query.question, query.edns is not None)
            return self._error(header, e, tcp)
        except Exception as e:  # noqa: BLE001 — a bug answers SERVFAIL, it never kills the server
            log.error("answering failed", exc_info=True, extra={"event": "dns.internal_error", "error": str(e)})
            return self._error(header, e, tcp, query.question if query else None,
                               query is not None and query.edns is not None)

    # --- building answers ---------------------------------------------------------------------

    def _flags(self, header: Header, *, rcode: int, aa: bool, tc: bool = False) -> int:
        return (0x8000 | (header.flags & 0x7800) | (0x0400 if aa else 0) | (0x0200 if tc else 0)
                | (header.flags & 0x0110) | (rcode & 0xF))

    def _error(self, header: Header, exc: BaseException, tcp: bool, question: Question | None = None,
               had_opt: bool | None = None) -> Answered:
        rcode = rcode_of(exc)
        question = question or getattr(exc, "question", None)
        had_opt = bool(getattr(exc, "had_opt", False)) if had_opt is None else had_opt
        record = dnslib.DNSRecord(dnslib.DNSHeader(id=header.id, bitmap=self._flags(header, rcode=rcode, aa=False)))
        if question is not None:
            record.add_question(dnslib.DNSQuestion(question.name, question.qtype, question.qclass))
        if had_opt:
            record.add_ar(opt_record(udp_size=self.max_udp, ext_rcode=rcode >> 4))
        try:
            wire = bytes(record.pack())
        except Exception:  # noqa: BLE001 — a question we cannot repeat: the answer goes without it
            record.questions = []
            wire = bytes(record.pack())
            question = None
        qtype = question.qtype if question is not None else 0
        kind = "nxdomain" if rcode == RCODES["NXDOMAIN"] else "error"
        return Answered(wire=wire, rcode=rcode, qtype=qtype, kind=kind)

    def _answer_query(self, query: Query, client_ip: str, tcp: bool) -> Answered:
        q = query.question
        if q.qclass != dnslib.CLASS.IN:
            raise Refused(f"class {q.qclass}")
        if q.qtype in _REFUSED_TYPES or q.qtype == QT.OPT:
            raise Refused(f"type {q.qtype}")
        key = key_of(q.name)
        zone = self.zones.find(key)
        if zone is None:
            raise Refused(f"{q.name} is in none of our zones")
        edns = query.edns
        do = edns is not None and edns.do
        ecs = edns.ecs if edns is not None else None
        if ecs is not None and ecs.source_prefix > 0:
            client, from_ecs = ecs.network, True
        else:
            addr = ipaddress.ip_address(client_ip.split("%", 1)[0])
            client, from_ecs = ipaddress.ip_network(addr), False
        s = self._resolve(q, key, zone, client, from_ecs, do)
        if do and self.signers:
            self._sign(s)
        header = query.header
        record = dnslib.DNSRecord(dnslib.DNSHeader(id=header.id,
                                                   bitmap=self._flags(header, rcode=s.rcode, aa=s.aa)))
        record.add_question(dnslib.DNSQuestion(q.name, q.qtype, q.qclass))
        record.rr, record.auth, record.ar = s.answer, s.authority, s.additional
        if edns is not None:
            options = [ecs.option(s.scope if from_ecs else 0)] if ecs is not None else []
            record.add_ar(opt_record(udp_size=self.max_udp, do=do, options=options))
        limit = MAX_TCP_ANSWER if tcp else (edns.udp_size if edns is not None else MIN_UDP)
        wire, truncated = self._fit(record, limit, header)
        return Answered(wire=wire, rcode=s.rcode, qtype=q.qtype, kind=s.kind, cacheable=True,
                        per_client=s.per_client, truncated=truncated, zone=zone.origin_text)

    def _resolve(self, q: Question, key: Key, zone: Zone, client: ipaddress.IPv4Network | ipaddress.IPv6Network,
                 from_ecs: bool, do: bool) -> _Sections:
        s = _Sections([], [], [])
        name = q.name
        first = zone
        for _hop in range(MAX_CHAIN):
            # the zone answering now signs its part (a CNAME may have led into another of ours)
            signer = self.signers.get(zone.origin_key) if do else None
            cut = zone.delegation(key)
            if cut is not None and not (cut == key and q.qtype == QT.DS):
                if zone is first and not s.answer:
                    s.aa = False
                    s.kind = "referral"
                ns = zone.at(cut)[QT.NS]
                s.authority += list(ns)
                for rr in ns:  # glue for name servers inside the zone
                    target = key_of(rr.rdata.label)
                    for t in (QT.A, QT.AAAA):
                        s.additional += list(zone.at(target).get(t, ()))
                if signer is not None:
                    # An insecure delegation: an NSEC at the cut listing NS and no DS proves the
                    # child unsigned (RFC 4035 3.1.4.1); the NS RRset itself is never signed.
                    s.authority += signer.deny(ns[0].rname, nxdomain=False, types_present=frozenset({QT.NS}))
                return s
            if zone.exists(key):
                owner_key: Key | None = key
            else:
                owner_key = zone.wildcard(zone.closest_encloser(key))
            if owner_key is None:
                s.rcode = RCODES["NXDOMAIN"]
                s.kind = "nxdomain"
                s.authority += zone.soa_rrset(zone.negative_ttl)
                if signer is not None:
                    s.authority += signer.deny(name, nxdomain=True, types_present=frozenset())
                return s
            node = zone.at(owner_key)
            cname = node.get(QT.CNAME)
            if cname is not None and q.qtype != QT.CNAME:
                s.answer += _renamed(cname, name)
                name = cname[0].rdata.label
                key = key_of(name)
                nxt = self.zones.find(key)
                if nxt is None:
                    return s  # outside our zones: the resolver follows it
                zone = nxt
                continue
            found = self._rrset(q.qtype, owner_key, zone, node, client, from_ecs, s)
            if found:
                s.answer += _renamed(found, name)
            else:
                s.kind = "nodata" if not s.answer else s.kind
                s.authority += zone.soa_rrset(zone.negative_ttl)
                if signer is not None:
                    present = frozenset(node) | (frozenset({QT.A, QT.AAAA}) if owner_key in zone.steered else frozenset())
                    s.authority += signer.deny(name, nxdomain=False, types_present=present)
            return s
        return s  # a chain longer than MAX_CHAIN: what we have, as other servers do

    def _rrset(self, qtype: int, owner_key: Key, zone: Zone, node: Mapping[int, RRset],
               client: ipaddress.IPv4Network | ipaddress.IPv6Network, from_ecs: bool,
               s: _Sections) -> RRset:
        steered = zone.steered.get(owner_key)
        if steered is not None and qtype in (QT.A, QT.AAAA):
            if self.steering is None:
                raise _NoSteering(f"{steered} is steered but no steering is configured")
            family = 4 if qtype == QT.A else 6
            result = self.steering.steer(steered, family, client, from_ecs)
            s.scope = max(s.scope, result.scope_prefix)
            s.per_client = s.per_client or not from_ecs
            rd = dnslib.A if family == 4 else dnslib.AAAA
            return tuple(dnslib.RR(zone.origin, qtype, dnslib.CLASS.IN, result.ttl, rd(a))
                         for a in result.addresses)
        if qtype == QT.DNSKEY and owner_key == zone.origin_key:
            # a signed zone publishes its DNSKEY to every query, DO bit or not
            signer = self.signers.get(zone.origin_key)
            if signer is not None:
                return tuple(signer.dnskey_rrset())
        if qtype == QT.ANY:
            # RFC 8482 lets us answer ANY with one RRset; the first one keeps the answer small.
            for rrset in node.values():
                return rrset
            return ()
        return node.get(qtype, ())

    def _sign(self, s: _Sections) -> None:
        """Each RRset of the answer and authority sections followed by its RRSIG, made by the
        signer of the zone holding it (none when that zone is unsigned). NS RRsets at a
        delegation are the child's, never signed by the parent (RFC 4035 2.2)."""
        for section in ("answer", "authority"):
            signed: list[dnslib.RR] = []
            for rrset in _rrsets(getattr(s, section)):
                signed += rrset
                owner = key_of(rrset[0].rname)
                zone = self.zones.find(owner)
                signer = self.signers.get(zone.origin_key) if zone is not None else None
                if signer is None or (rrset[0].rtype == QT.NS and owner != zone.origin_key):
                    continue
                signed.append(signer.sign(tuple(rrset)))
            setattr(s, section, signed)

    def _fit(self, record: dnslib.DNSRecord, limit: int, header: Header) -> tuple[bytes, bool]:
        """Pack ``record`` within ``limit`` bytes: without its additional data if need be (OPT
        kept), then without whole RRsets from the end, with TC=1."""
        wire = bytes(record.pack())
        if len(wire) <= limit:
            return wire, False
        opt = [rr for rr in record.ar if rr.rtype == QT.OPT]
        record.ar = opt
        wire = bytes(record.pack())
        if len(wire) <= limit:
            return wire, False
        record.header.tc = 1
        for section in ("auth", "rr"):
            sets = _rrsets(getattr(record, section))
            while sets:
                sets.pop()
                setattr(record, section, [rr for rrset in sets for rr in rrset])
                wire = bytes(record.pack())
                if len(wire) <= limit:
                    return wire, True
        return bytes(record.pack()), True


class _NoSteering(DnsError):
    rcode_name = "SERVFAIL"
