"""The steering part of ``[dns]``: ``[[dns.pops]]``, ``[dns.geo]``, ``[[dns.geo.rules]]``, ``[[dns.steered]]``.

Read through the kernel's :class:`~headwater.config.Reader`, so a bad value names its key and
line before anything starts. ``geodns/config.py`` calls :func:`read_steering` with the raw
``[dns]`` table (or the three readers one by one); every steering default lives here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from headwater.config import Reader
from headwater.geo.config import (GeoConfig, GeoRule, IPNetwork, expect_array, expect_table, packaged_geoip_db,
                                  read_coordinate, read_geo)
from headwater.geo.pops import PopLocation, edge_tier, read_pop_locations

__all__ = [
    "Pop", "SteeredName", "SteeringConfig",
    "read_pops", "read_steered", "read_steering",
]

# One DNS label (RFC 1035 letters, digits and hyphens; underscores for service names).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")
# A POP name is an id (it appears in metrics labels, logs and `headwater dns explain`).
_POP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
MAX_ANSWERS = 16  # POPs in one steered answer: more would only bloat the UDP response


@dataclass(frozen=True, slots=True, kw_only=True)
class Pop:
    """One edge POP the GeoDNS may answer with.

    ``weight`` scales its reach: the steering ranks POPs by distance / weight, so a POP of
    weight 2 wins over one of weight 1 up to twice as far away. ``max_load`` (0..1) caps it: a
    POP whose last ``/healthz`` reported ``load`` at or above it is passed over while another
    candidate has room.
    """

    name: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    lat: float
    lon: float
    region: str = ""
    healthz: str
    weight: float = 1.0
    max_load: float | None = None

    def addresses(self, family: int) -> tuple[str, ...]:
        """This POP's A (family 4) or AAAA (family 6) addresses."""
        return self.ipv4 if family == 4 else self.ipv6


@dataclass(frozen=True, slots=True, kw_only=True)
class SteeredName:
    """A name (relative to the zone, lowercase) whose A and AAAA answers the steering chooses."""

    name: str
    answers: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SteeringConfig:
    """Everything :class:`~headwater.dns.steering.steer.Steering` is built from."""

    pops: tuple[Pop, ...]
    geo: GeoConfig
    steered: tuple[SteeredName, ...] = ()
    steered_ttl: int = 30

    def pop(self, name: str) -> Pop:
        for p in self.pops:
            if p.name == name:
                return p
        raise KeyError(name)


def _addresses(r: Reader, data: Mapping[str, Any], key: str, prefix: str, version: int) -> tuple[str, ...]:
    raw = r.get(data, key, prefix, list, [])
    out: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise r.error(f"{prefix}.{key}", f"item {i} is not a string")
        try:
            addr = ipaddress.ip_address(item)
        except ValueError:
            raise r.error(f"{prefix}.{key}", f"{item!r} is not an IP address") from None
        if addr.version != version:
            raise r.error(f"{prefix}.{key}", f"{item!r} is not an IPv{version} address")
        text = str(addr)  # canonical form, so equal configs give byte-equal answers
        if text in out:
            raise r.error(f"{prefix}.{key}", f"{item!r} is listed twice")
        out.append(text)
    return tuple(out)


def _healthz_url(r: Reader, data: Mapping[str, Any], prefix: str) -> str:
    url = r.get(data, "healthz", prefix, str, required=True)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as e:
        raise r.error(f"{prefix}.healthz", f"{url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.error(f"{prefix}.healthz", f"{url!r} is not an http:// or https:// URL with a host")
    if port == 0:
        raise r.error(f"{prefix}.healthz", f"{url!r} names port 0")
    return url


def read_pops(r: Reader, raw: Any, prefix: str = "dns.pops",
              locations: Mapping[str, PopLocation] | None = None) -> tuple[Pop, ...]:
    """``[[dns.pops]]``: the POPs, each with its addresses, coordinates, health URL and weight.

    An entry named as an ``[[edge]]`` POP (``locations``, :func:`~headwater.geo.pops.read_pop_locations`
    by default) takes what it leaves out from that POP: ``ipv4`` or ``ipv6`` from its host,
    ``lat``, ``lon``, ``region``, and ``healthz`` on its admin port. A ``lat``, ``lon`` or
    ``region`` that differs from the POP's is refused, naming both keys: a POP is in one place.
    """
    if locations is None:
        locations = read_pop_locations(r)
    pops: list[Pop] = []
    for i, item in enumerate(expect_array(r, raw, prefix)):
        p = f"{prefix}[{i}]"
        item = expect_table(r, item, p)
        r.check_keys(item, p, {"name", "ipv4", "ipv6", "lat", "lon", "region", "healthz", "weight",
                               "max_load"})
        name = r.get(item, "name", p, str, required=True)
        if not _POP_NAME.fullmatch(name):
            raise r.error(f"{p}.name", f"{name!r} is not a valid POP name (letters, digits, . _ -)")
        if any(x.name == name for x in pops):
            raise r.error(f"{p}.name", f"POP {name!r} is defined twice")
        edge = locations.get(name)
        if edge is not None:
            item = _with_edge_location(r, item, p, edge)
        elif "ipv4" not in item and "ipv6" not in item and (other := edge_tier(r, name)) is not None:
            # (a whole entry that happens to share a regional's or a shield's id is read as before)
            raise r.error(f"{p}.name", f"{name!r} is {other[0]}, a {other[1]}, not a POP: only an [[edge]] of "
                                       f"tier \"pop\" lends its address and place; give ipv4/ipv6, lat, lon and "
                                       f"healthz, or name a POP")
        ipv4 = _addresses(r, item, "ipv4", p, 4)
        ipv6 = _addresses(r, item, "ipv6", p, 6)
        if not ipv4 and not ipv6:
            raise r.error(f"{p}.ipv4", "a POP needs at least one address (ipv4 or ipv6)")
        max_load = r.get(item, "max_load", p, float, None)
        if max_load is not None and not 0.0 < max_load <= 1.0:
            raise r.error(f"{p}.max_load", f"{max_load} is outside 0..1 (a fraction of capacity, above 0)")
        pops.append(Pop(
            name=name, ipv4=ipv4, ipv6=ipv6,
            lat=read_coordinate(r, item, "lat", p, 90.0), lon=read_coordinate(r, item, "lon", p, 180.0),
            region=r.get(item, "region", p, str, ""), healthz=_healthz_url(r, item, p),
            weight=r.positive(item, "weight", p, 1.0), max_load=max_load,
        ))
    if not pops:
        raise r.error(prefix, "the GeoDNS needs at least one POP")
    return tuple(pops)


def _with_edge_location(r: Reader, item: Mapping[str, Any], p: str, edge: PopLocation) -> dict[str, Any]:
    """``item`` with what it omits taken from its ``[[edge]]`` POP; a contradiction is refused."""
    out = dict(item)
    for key in ("lat", "lon", "region"):
        ours = getattr(edge, key)
        if key not in item:
            out[key] = ours
            continue
        given = r.get(item, key, p, str if key == "region" else float)
        if key == "region" and not ours:
            continue  # the POP's table names no region: this entry's is the only one
        if given != ours:
            line = r.lines.get(f"{edge.prefix}.{key}")
            where = f"{edge.prefix}.{key}" + (f" on line {line}" if line else "")
            raise r.error(f"{p}.{key}", f"{given!r} contradicts the [[edge]] POP {edge.name!r}, whose {key} is "
                                        f"{ours!r} ({where}): drop it here, the POP's table says where it is")
    if "ipv4" not in item and "ipv6" not in item:
        addr = edge.address()
        if addr is None:
            raise r.error(f"{p}.ipv4", f"the [[edge]] POP {edge.name!r} listens on {edge.host!r}, no address to "
                                       f"answer with: give ipv4 or ipv6")
        out["ipv4" if addr.version == 4 else "ipv6"] = [str(addr)]
    if "healthz" not in item:
        url = edge.healthz_url()
        if url is None:
            raise r.error(f"{p}.healthz", f"the [[edge]] POP {edge.name!r} listens on {edge.host!r}, no address to "
                                          f"probe: give healthz")
        out["healthz"] = url
    return out


def read_steered(r: Reader, raw: Any, prefix: str = "dns.steered",
                 *, max_answers: int = MAX_ANSWERS) -> tuple[SteeredName, ...]:
    """``[[dns.steered]]``: the names answered by steering, and how many POPs each answer holds."""
    out: list[SteeredName] = []
    for i, item in enumerate(expect_array(r, raw, prefix)):
        p = f"{prefix}[{i}]"
        item = expect_table(r, item, p)
        r.check_keys(item, p, {"name", "answers"})
        name = r.get(item, "name", p, str, required=True).lower().rstrip(".")
        labels = name.split(".")
        if name != "@" and not all(_LABEL.fullmatch(label) for label in labels):
            raise r.error(f"{p}.name", f"{name!r} is not a name relative to the zone (such as \"video\")")
        if any(x.name == name for x in out):
            raise r.error(f"{p}.name", f"{name!r} is steered twice")
        answers = r.get(item, "answers", p, int, 1)
        if not 1 <= answers <= max_answers:
            raise r.error(f"{p}.answers", f"{answers} is outside 1..{max_answers}")
        out.append(SteeredName(name=name, answers=answers))
    return tuple(out)


def read_steering(r: Reader, dns: Mapping[str, Any], prefix: str = "dns") -> SteeringConfig:
    """The steering keys of the raw ``[dns]`` table: ``pops``, ``geo``, ``steered``, ``steered_ttl``.

    It leaves the other keys of ``[dns]`` to dns-core's reader (which checks the table's keys).
    """
    ttl = r.get(dns, "steered_ttl", prefix, int, 30)
    if not 0 <= ttl <= 86400:
        raise r.error(f"{prefix}.steered_ttl", f"{ttl} is outside 0..86400 seconds")
    return SteeringConfig(
        pops=read_pops(r, dns.get("pops", []), f"{prefix}.pops"),
        geo=read_geo(r, dns.get("geo", {}), f"{prefix}.geo"),
        steered=read_steered(r, dns.get("steered", []), f"{prefix}.steered"),
        steered_ttl=ttl,
    )
