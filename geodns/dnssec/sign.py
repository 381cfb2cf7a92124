"""Online signing of one zone's answers, sans-IO: RRSIGs over exactly the RRsets served, the
DNSKEY RRset, and NSEC white lies for negative answers.

dns-core's answerer calls a :class:`ZoneSigner` for queries with the DO bit in a signed zone:
``sign(rrset)`` after every RRset of the answer and authority sections (steered A/AAAA included,
signed as served, per client), ``dnskey_rrset()`` for DNSKEY at the apex, ``deny(...)`` for the
NSEC records of a negative answer (which it then signs like any other RRset).

Answers synthesised from a wildcard are signed as ordinary RRsets at the query name (the RRSIG's
Labels field counts every label of that name). A validator then sees a plain answer, not a
wildcard expansion, and needs no proof that the name does not exist: online signing makes the
wildcard invisible, as it does for every online signer.

Signature validity and the cache
--------------------------------
Signing time is quantised to :data:`WINDOW_S` (an hour): every RRset signed in one window gets
the same inception (window start minus ``inception_offset_s``, so one to two hours in the past
by default, for validators with slow clocks) and expiration (window start plus
``signature_validity_s``). The signature cache is keyed by a digest of the exact data signed
(RRSIG fields, window included, and the RRset in canonical form), so an entry is reused only for
the same RRset in the same window, and a new window re-signs. Every process of a GeoDNS (and
every GeoDNS sharing the key) computes the same window, so their signatures are
interchangeable. Positive RRsets and the NSEC records of negative answers live in separate LRU
caches: a flood of queries for random names (each needing a fresh NSEC signature) can only
churn the smaller negative cache, never push out the signatures of real answers.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import dnslib
from dnslib import RR, DNSLabel

from headwater.clock import SYSTEM_CLOCK, Clock

from .canonical import canonical_name, canonical_rdata, rrset_wire, signature_labels
from .config import DnssecConfig
from .denial import DNSKEY, NSEC, RRSIG, covering_nsec, matching_nsec
from .keys import ZoneKey

__all__ = ["WINDOW_S", "SignerStatistics", "ZoneSigner"]

#: Signatures made in one such window share inception and expiration (and cache entries).
WINDOW_S = 3600
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class SignerStatistics:
    """Counters for ``/metrics``: signatures made, cache hits, entries held."""

    signatures: int
    cache_hits: int
    cache_entries: int
    negative_cache_entries: int


class _Lru:
    """A bounded LRU map of digest -> signature."""

    __slots__ = ("limit", "_data")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        if self.limit <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.limit:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class ZoneSigner:
    """Signs the answers of one zone with its CSK.

    ``negative_ttl`` is the TTL of the NSEC records of negative answers (RFC 9077: the lesser of
    the SOA's TTL and MINIMUM, the same as the SOA the answer carries); ``dnskey_ttl`` the TTL of
    the DNSKEY RRset. ``config`` gives the signature validity, inception offset and cache size.
    """

    def __init__(self, zone: DNSLabel | str, key: ZoneKey, *, negative_ttl: int, dnskey_ttl: int,
                 config: DnssecConfig | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.zone = zone if isinstance(zone, DNSLabel) else DNSLabel(zone)
        if canonical_name(self.zone) != canonical_name(key.zone):
            raise ValueError(f"the key is {key.zone}'s, not {self.zone}'s")
        self.key = key
        self.negative_ttl = negative_ttl
        self.dnskey_ttl = dnskey_ttl
        self.config = config or DnssecConfig()
        self.clock = clock
        self._signer_name = canonical_name(self.zone)
        self._zone_labels = tuple(x.lower() for x in self.zone.label)
        self._key_tag = key.key_tag
        self._dnskey = (RR(self.zone, DNSKEY, dnslib.CLASS.IN, dnskey_ttl, key.dnskey()),)
        entries = self.config.signature_cache_entries
        self._positive = _Lru(entries)
        self._negative = _Lru(max(entries // 4, 0))
        self._signatures = 0
        self._hits = 0

    # --- what dns-core calls ---------------------------------------------------------------

    def dnskey_rrset(self) -> tuple[RR, ...]:
        """The zone's DNSKEY RRset (answer it at the apex; sign it like any RRset)."""
        return self._dnskey

    def sign(self, rrset: Sequence[RR]) -> RR:
        """The RRSIG covering exactly ``rrset`` (one owner, one type, class IN) as served. Its owner
        is the RRset's owner as given (the query's case); its TTL and Original TTL are the RRset's
        TTL (the least one, should they differ)."""
        if not rrset:
            raise ValueError("cannot sign an empty RRset")
        first = rrset[0]
        owner = canonical_name(first.rname)
        for rr in rrset[1:]:
            if rr.rtype != first.rtype or rr.rclass != first.rclass or canonical_name(rr.rname) != owner:
                raise ValueError(f"not one RRset: {first.rname} {first.rtype} and {rr.rname} {rr.rtype}")
        if not self._in_zone(first.rname):
            raise ValueError(f"{first.rname} is not in zone {self.zone}")
        ttl = min(rr.ttl for rr in rrset)
        labels = signature_labels(first.rname)
        inception, expiration = self._window()
        fields = struct.pack("!HBBIIIH", first.rtype, self.key.algorithm, labels, ttl,
                             expiration & _U32, inception & _U32, self._key_tag) + self._signer_name
        data = fields + rrset_wire(owner, first.rtype, first.rclass, ttl,
                                   (canonical_rdata(rr) for rr in rrset))
        digest = hashlib.sha256(data).digest()
        cache = self._negative if first.rtype == NSEC else self._positive
        signature = cache.get(digest)
        if signature is None:
            signature = self.key.sign(data)
            self._signatures += 1
            cache.put(digest, signature)
        else:
            self._hits += 1
        rdata = dnslib.RRSIG(first.rtype, self.key.algorithm, labels, ttl, expiration & _U32,
                             inception & _U32, self._key_tag, self.zone, signature)
        return RR(first.rname, RRSIG, first.rclass, ttl, rdata)

    def deny(self, qname: DNSLabel | str, *, nxdomain: bool, types_present: frozenset[int]) -> tuple[RR, ...]:
        """The NSEC records (unsigned) proving a negative answer for ``qname``, by white lies (see
        :mod:`headwater.dns.dnssec.denial`). The RCODE stays what the unsigned answer has:
        NXDOMAIN with ``nxdomain=True`` (two NSECs: ``qname`` covered, no wildcard at its parent),
        NOERROR/NODATA otherwise (one NSEC at ``qname`` listing ``types_present``). The answerer
        adds the apex SOA and signs the SOA and every NSEC as separate RRsets."""
        if not self._in_zone(qname):
            raise ValueError(f"{qname} is not in zone {self.zone}")
        labels = tuple(x.lower() for x in DNSLabel(qname).label)
        ttl = self.negative_ttl
        if not nxdomain:
            present = set(types_present)
            if labels == self._zone_labels:
                present.add(DNSKEY)  # the signer publishes it there
            try:
                return (matching_nsec(qname, present, ttl),)
            except ValueError:
                # A 255-octet name whose first label is 63 \255 octets (a wildcard's expansion,
                # as a client may ask) has no successor: no proof, bogus for that name alone.
                return ()
        if labels == self._zone_labels:
            raise ValueError("the zone apex always exists: it cannot be NXDOMAIN")
        out = []
        covering = covering_nsec(qname, ttl)
        if covering is not None:
            out.append(covering)
        wildcard = covering_nsec(DNSLabel((b"*",) + labels[1:]), ttl)
        if wildcard is not None and (covering is None or wildcard.rname != covering.rname):
            out.append(wildcard)
        return tuple(out)

    def statistics(self) -> SignerStatistics:
        return SignerStatistics(signatures=self._signatures, cache_hits=self._hits,
                                cache_entries=len(self._positive), negative_cache_entries=len(self._negative))

    # --- internals -------------------------------------------------------------------------

    def _window(self) -> tuple[int, int]:
        start = int(self.clock.time()) // WINDOW_S * WINDOW_S
        return start - self.config.inception_offset_s, start + self.config.signature_validity_s

    def _in_zone(self, name: DNSLabel | str) -> bool:
        labels = tuple(x.lower() for x in DNSLabel(name).label)
        n = len(self._zone_labels)
        return len(labels) >= n and labels[len(labels) - n:] == self._zone_labels
