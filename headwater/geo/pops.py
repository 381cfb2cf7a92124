"""Where the cluster's edge POPs are, for the roles that steer viewers to them.

An ``[[edge]]`` table of ``tier = "pop"`` says where its POP is (``lat``, ``lon``, ``region``)
and how it is reached (``host``, ``admin_port`` serving ``/healthz``). The GeoDNS's
``[[dns.pops]]`` takes what an entry of the same name leaves out from here, so a POP's place is
written once. This is the kernel's reading of those few keys from the raw document, so that the
GeoDNS needs no import of the edge (a daemon package imports no other daemon); the edge's own
reader (:func:`headwater.edge.config.read_edge`) checks the same keys in full, with the same
messages, when its section is read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from headwater.config import Reader

__all__ = ["PopLocation", "read_pop_locations", "edge_tier", "EDGE_DEFAULT_HOST"]

#: The ``host`` of an ``[[edge]]`` table that gives none (the edge's own default).
EDGE_DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class PopLocation:
    """One ``[[edge]]`` POP as steering sees it; ``prefix`` is its table's key (``edge[0]``)."""

    name: str
    prefix: str
    host: str
    admin_port: int
    lat: float
    lon: float
    region: str = ""

    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address viewers reach it at: its ``host``, when that is one address (not a
        name, nor the wildcard 0.0.0.0 / ::, which say where it listens, not where to go)."""
        try:
            addr = ipaddress.ip_address(self.host)
        except ValueError:
            return None
        return None if addr.is_unspecified else addr

    def healthz_url(self) -> str | None:
        """``/healthz`` on its admin port (plain HTTP, as every daemon's admin port serves), or
        None when its host is no address to probe."""
        addr = self.address()
        if addr is None:
            return None
        host = f"[{addr}]" if addr.version == 6 else str(addr)
        return f"http://{host}:{self.admin_port}/healthz"


def read_pop_locations(r: Reader) -> dict[str, PopLocation]:
    """The ``[[edge]]`` POPs of the document ``r`` reads, by id (empty when it has none).

    A POP table whose keys read here are wrong is refused now, naming its key and line with the
    edge reader's message, rather than leaving the GeoDNS to report what it could not take.
    """
    raw = r.document.get("edge", [])
    out: dict[str, PopLocation] = {}
    if not isinstance(raw, list):
        return out  # the edge's reader says what is wrong with it
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("tier") != "pop" or not isinstance(item.get("id"), str):
            continue
        p = f"edge[{i}]"
        lat = r.get(item, "lat", p, float, None)
        lon = r.get(item, "lon", p, float, None)
        if lat is None or lon is None:
            raise r.error(f"{p}.lat" if lat is None else f"{p}.lon", "a POP needs its location (lat and lon)")
        if not -90 <= lat <= 90:
            raise r.error(f"{p}.lat", f"{lat} is outside -90..90")
        if not -180 <= lon <= 180:
            raise r.error(f"{p}.lon", f"{lon} is outside -180..180")
        out.setdefault(item["id"], PopLocation(
            name=item["id"], prefix=p, host=r.get(item, "host", p, str, EDGE_DEFAULT_HOST),
            admin_port=r.port(item, "admin_port", p), lat=lat, lon=lon, region=r.get(item, "region", p, str, "")))
    return out


def edge_tier(r: Reader, name: str) -> tuple[str, str] | None:
    """``(prefix, tier)`` of the ``[[edge]]`` table whose id is ``name`` (None if there is none):
    so that a steering entry naming a regional cache or a shield is told why it takes nothing."""
    raw = r.document.get("edge", [])
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(item, dict) and item.get("id") == name:
            return f"edge[{i}]", str(item.get("tier"))
    return None
