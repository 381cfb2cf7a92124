"""Where a client is: configured CIDR rules first, then the MaxMind-format geo database.

:meth:`Locator.locate` takes the client's network (the EDNS Client Subnet source network, or the
resolver's address as a /32 or /128) and returns a :class:`Location` whose ``prefix_len`` is how
much of the address the location depended on: the rule's prefix, or the geo database's network
for the address (``get_with_prefix_len``), lengthened past any more specific rule that overlaps
that network without containing the address (else a resolver caching the answer for the wider
network would hand it to clients the rule places elsewhere). That length bounds the ECS scope.

Lookups are memoised per client network in a bounded LRU: a resolver population asks from a
limited set of networks, and one lookup walks ~30 tree nodes in the mmdb file.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import maxminddb

from .config import GeoConfig, GeoRule, IPNetwork

__all__ = ["Location", "Locator", "DEFAULT_MEMO_ENTRIES"]

DEFAULT_MEMO_ENTRIES = 32_768  # ~300 bytes each: ~10 MB per worker at most

Source = Literal["rule", "geoip", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where a client network is, and how much of its address that depended on.

    ``source`` is "rule" (a ``[[dns.geo.rules]]`` entry), "geoip" (the database) or "none"
    (private, reserved or unknown to the database: no coordinates). ``place`` says which rule or
    which city, for ``headwater dns explain``.
    """

    lat: float | None
    lon: float | None
    country: str
    prefix_len: int
    source: Source
    place: str = ""

    @property
    def known(self) -> bool:
        return self.lat is not None and self.lon is not None


class Locator:
    """Maps client networks to :class:`Location` (see the module docstring).

    ``db`` is an open maxminddb reader to use instead of opening ``geo.geoip_db`` (tests, or a
    reader shared by several steerings of one process).
    """

    def __init__(self, geo: GeoConfig, *, memo_entries: int = DEFAULT_MEMO_ENTRIES,
                 db: Any = None) -> None:
        self.geo = geo
        self._db = db if db is not None else maxminddb.open_database(str(geo.geoip_db))
        # Longest prefix first, so the first rule containing an address is the one that wins.
        self._rules: dict[int, tuple[GeoRule, ...]] = {
            v: tuple(sorted((x for x in geo.rules if x.network.version == v),
                            key=lambda x: (-x.network.prefixlen, int(x.network.network_address))))
            for v in (4, 6)
        }
        self._memo: OrderedDict[IPNetwork, Location] = OrderedDict()
        self._memo_entries = max(1, memo_entries)
        self.lookups = 0  # memo misses: actual rule + database walks

    def close(self) -> None:
        """Close the database file (the reader maps it)."""
        self._db.close()

    def locate(self, client: IPNetwork) -> Location:
        """The location of ``client`` (a network: its host bits are ignored)."""
        memo = self._memo
        hit = memo.get(client)
        if hit is not None:
            memo.move_to_end(client)
            return hit
        location = self._lookup(client)
        memo[client] = location
        if len(memo) > self._memo_entries:
            memo.popitem(last=False)
        return location

    def _lookup(self, client: IPNetwork) -> Location:
        self.lookups += 1
        addr = client.network_address
        rules = self._rules[client.version]
        for rule in rules:
            if addr in rule.network:
                location = Location(lat=rule.lat, lon=rule.lon, country=rule.country,
                                    prefix_len=rule.network.prefixlen, source="rule",
                                    place=f"rule {rule.network}")
                return _past_overlapping_rules(location, addr, rules)
        record, prefix_len = self._db.get_with_prefix_len(addr)
        location = _from_record(record, prefix_len, global_address=addr.is_global)
        return _past_overlapping_rules(location, addr, rules)


def _from_record(record: Any, prefix_len: int, *, global_address: bool) -> Location:
    # A private or reserved address has no place on the map, whatever a database says of it.
    coords = record.get("location") if global_address and isinstance(record, dict) else None
    if not isinstance(coords, dict) or "latitude" not in coords or "longitude" not in coords:
        return Location(lat=None, lon=None, country="", prefix_len=prefix_len, source="none")
    country = ""
    for key in ("country", "registered_country"):
        value = record.get(key)
        if isinstance(value, dict) and isinstance(value.get("iso_code"), str):
            country = value["iso_code"]
            break
    city = record.get("city", {}).get("names", {}).get("en", "") if isinstance(record.get("city"), dict) else ""
    return Location(lat=float(coords["latitude"]), lon=float(coords["longitude"]), country=country,
                    prefix_len=prefix_len, source="geoip", place=city)


def _past_overlapping_rules(location: Location, addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
                            rules: tuple[GeoRule, ...]) -> Location:
    """Lengthen ``location.prefix_len`` until its network around ``addr`` holds no rule that
    does not contain ``addr`` (such a rule decides differently for part of that network)."""
    bits = addr.max_prefixlen
    value = int(addr)
    prefix = location.prefix_len
    for rule in rules:
        net = rule.network
        if net.prefixlen <= prefix or value in _range(net):
            continue
        common = bits - (value ^ int(net.network_address)).bit_length()
        if common >= prefix:  # the rule sits inside addr's /prefix network
            prefix = max(prefix, common + 1)
    if prefix == location.prefix_len:
        return location
    return Location(lat=location.lat, lon=location.lon, country=location.country,
                    prefix_len=min(prefix, bits), source=location.source, place=location.place)


def _range(net: IPNetwork) -> range:
    start = int(net.network_address)
    return range(start, start + net.num_addresses)
