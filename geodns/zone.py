"""Zones in memory, sans-IO: RRsets by owner and type, the names that exist, the steered names.

A :class:`Zone` is built once (from cluster.toml's ``[dns]`` table or a master file) by
:func:`build_zone`, which checks what a served zone needs: every record inside the zone, one SOA
at the apex and NS records there, no data beside a CNAME, no static address records on a steered
name. Names are matched case-insensitively through :data:`Key`, the owner's labels lowercased
(ASCII only, as RFC 4343 says); the records keep the case they were written in.

``names`` holds every name that exists, the empty non-terminals (RFC 4592 2.2.2: names with no
records but with descendants that have some) included, so the answerer can tell NODATA from
NXDOMAIN and find a wildcard's closest encloser. A :class:`ZoneSet` finds the zone of a name (the
longest origin it ends in) and carries the ``generation`` the answer cache is keyed by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import dnslib

from .errors import ZoneError

__all__ = ["Key", "key_of", "RRset", "Zone", "ZoneSet", "build_zone", "STATIC_TYPES"]

Key = tuple[bytes, ...]
RRset = tuple[dnslib.RR, ...]

QT = dnslib.QTYPE
# The record types a zone may hold (DNSSEC's own come from the signer, online).
STATIC_TYPES = frozenset({QT.SOA, QT.NS, QT.A, QT.AAAA, QT.CNAME, QT.TXT, QT.MX, QT.SRV, QT.CAA, QT.PTR})
_WILD = b"*"


def key_of(name: dnslib.DNSLabel) -> Key:
    """A name's lookup key: its labels, ASCII-lowercased."""
    return tuple(label.lower() for label in name.label)


@dataclass(frozen=True, slots=True, kw_only=True)
class Zone:
    """One zone: its apex, SOA, RRsets and existing names; ``steered`` maps each steered
    owner's key to its name relative to the apex, lowercase (``"video"``)."""

    origin: dnslib.DNSLabel
    origin_key: Key
    soa: dnslib.RR
    rrsets: Mapping[Key, Mapping[int, RRset]]
    names: frozenset[Key]
    steered: Mapping[Key, str] = field(default_factory=dict)
    source: str = ""

    @property
    def origin_text(self) -> str:
        """The apex as lowercase text with the final dot (``cdn.headwater.test.``)."""
        return ".".join(k.decode("ascii", "replace") for k in self.origin_key) + "."

    @property
    def negative_ttl(self) -> int:
        """The TTL of the SOA in a negative answer: min(SOA TTL, SOA MINIMUM) (RFC 2308 3)."""
        return min(self.soa.ttl, self.soa.rdata.times[-1])

    def soa_rrset(self, ttl: int | None = None) -> RRset:
        """The SOA, with ``ttl`` (a negative answer's) when given."""
        if ttl is None:
            return (self.soa,)
        return (dnslib.RR(self.soa.rname, QT.SOA, self.soa.rclass, ttl, self.soa.rdata),)

    def contains(self, key: Key) -> bool:
        """Whether ``key`` is at or below the apex."""
        n = len(self.origin_key)
        return len(key) >= n and (n == 0 or key[-n:] == self.origin_key)

    def exists(self, key: Key) -> bool:
        return key in self.names

    def at(self, key: Key) -> Mapping[int, RRset]:
        """The RRsets owned by ``key`` (empty for an empty non-terminal or a missing name)."""
        return self.rrsets.get(key, {})

    def delegation(self, key: Key) -> Key | None:
        """The highest zone cut (NS below the apex) at or above ``key``, if any."""
        n = len(self.origin_key)
        for depth in range(n + 1, len(key) + 1):
            cut = key[-depth:]
            if QT.NS in self.rrsets.get(cut, {}):
                return cut
        return None

    def closest_encloser(self, key: Key) -> Key:
        """The longest existing ancestor of ``key`` (RFC 4592 3.3.1); the apex at worst."""
        for depth in range(len(key) - 1, len(self.origin_key) - 1, -1):
            candidate = key[len(key) - depth:]
            if candidate in self.names:
                return candidate
        return self.origin_key

    def wildcard(self, encloser: Key) -> Key | None:
        """The source of synthesis ``*.<encloser>`` if it exists."""
        wild = (_WILD,) + encloser
        return wild if wild in self.rrsets or wild in self.steered else None


def _check(cond: bool, source: str, message: str) -> None:
    if not cond:
        raise ZoneError(f"{source}: {message}")


def build_zone(origin: dnslib.DNSLabel | str, records: Iterable[dnslib.RR], *,
               steered: Iterable[str] = (), source: str = "") -> Zone:
    """Validate ``records`` as the zone ``origin`` and index them; ZoneError names what is wrong."""
    origin = origin if isinstance(origin, dnslib.DNSLabel) else dnslib.DNSLabel(origin)
    okey = key_of(origin)
    source = source or str(origin)
    n = len(okey)
    sets: dict[Key, dict[int, list[dnslib.RR]]] = {}
    for rr in records:
        key = key_of(rr.rname)
        _check(len(key) >= n and (n == 0 or key[-n:] == okey), source,
               f"{rr.rname} {QT.get(rr.rtype)} is outside the zone {origin}")
        _check(rr.rclass == dnslib.CLASS.IN, source, f"{rr.rname}: class {dnslib.CLASS.get(rr.rclass)} (only IN)")
        _check(rr.rtype in STATIC_TYPES, source,
               f"{rr.rname}: type {QT.get(rr.rtype)} is not served (SOA NS A AAAA CNAME TXT MX SRV CAA PTR)")
        _check(0 <= rr.ttl <= 0x7FFFFFFF, source, f"{rr.rname}: TTL {rr.ttl} out of range")
        rrset = sets.setdefault(key, {}).setdefault(rr.rtype, [])
        if not any(rr.rdata == other.rdata for other in rrset):
            rrset.append(rr)
    apex = sets.get(okey, {})
    _check(QT.SOA in apex, source, f"no SOA record at the apex {origin}")
    _check(len(apex[QT.SOA]) == 1, source, "more than one SOA record")
    _check(QT.NS in apex, source, f"no NS records at the apex {origin}")
    for key, by_type in sets.items():
        name = ".".join(k.decode(errors="replace") for k in key) + "."
        _check(key == okey or QT.SOA not in by_type, source, f"{name}: an SOA below the apex")
        if QT.CNAME in by_type:
            _check(len(by_type[QT.CNAME]) == 1, source, f"{name}: more than one CNAME")
            _check(len(by_type) == 1, source, f"{name}: a CNAME beside other data")
            _check(key != okey, source, "a CNAME at the apex")
    steered_map: dict[Key, str] = {}
    for rel in steered:
        rel = rel.strip().rstrip(".").lower()
        label = origin if rel in ("", "@") else origin.add(rel)
        key = key_of(label)
        clash = set(sets.get(key, {})) & {QT.A, QT.AAAA, QT.CNAME}
        _check(not clash, source, f"steered name {rel!r} also has static "
                                  f"{', '.join(sorted(QT.get(t) for t in clash))} records")
        steered_map[key] = "@" if key == okey else ".".join(k.decode() for k in key[:len(key) - n])
    names = {okey}
    for key in (*sets, *steered_map):
        for depth in range(n, len(key) + 1):
            names.add(key[len(key) - depth:])
    # Every record of an RRset shares one TTL (RFC 2181 5.2): the lowest one given.
    frozen: dict[Key, dict[int, RRset]] = {}
    for key, by_type in sets.items():
        out: dict[int, RRset] = {}
        for rtype, rrs in by_type.items():
            ttl = min(r.ttl for r in rrs)
            out[rtype] = tuple(r if r.ttl == ttl else dnslib.RR(r.rname, r.rtype, r.rclass, ttl, r.rdata)
                               for r in rrs)
        frozen[key] = out
    return Zone(origin=origin, origin_key=okey, soa=frozen[okey][QT.SOA][0], rrsets=frozen,
                names=frozenset(names), steered=steered_map, source=source)


class ZoneSet:
    """The zones one server answers for, with the generation the answer cache is keyed by."""

    def __init__(self, zones: Iterable[Zone], generation: int = 0) -> None:
        self.zones = tuple(zones)
        self.generation = generation
        by_origin: dict[Key, Zone] = {}
        for z in self.zones:
            if z.origin_key in by_origin:
                raise ZoneError(f"{z.source}: zone {z.origin} is also loaded from {by_origin[z.origin_key].source}")
            by_origin[z.origin_key] = z
        self._by_origin = by_origin
        self._depths = sorted({len(k) for k in by_origin}, reverse=True)

    def find(self, key: Key) -> Zone | None:
        """The zone ``key`` belongs to (the longest origin it ends in), or None."""
        for depth in self._depths:
            if depth <= len(key):
                zone = self._by_origin.get(key[len(key) - depth:] if depth else ())
                if zone is not None:
                    return zone
        return None
