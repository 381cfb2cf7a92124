"""Where clients are: the geo data the GeoDNS steers by and the edge's country rules match on.

``[dns.geo]`` and ``[cdn.geo]`` share one format, read here: ``geoip_db`` (a MaxMind-format
database; empty: the GeoLite2 City file the ``maxminddb-geolite2`` package ships) and
``[[...rules]]`` (``cidr``, ``lat``, ``lon``, optional ``country``) that win over the database.
:mod:`headwater.geo.locate` answers lookups.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from headwater.config import Reader

__all__ = ["IPNetwork", "GeoRule", "GeoConfig", "packaged_geoip_db", "read_geo", "read_geo_rules",
           "expect_table", "expect_array", "read_coordinate"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_COUNTRY = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GeoRule:
    """A configured location for a network: it overrides the geo database (private ranges, tests)."""

    network: IPNetwork
    lat: float
    lon: float
    country: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GeoConfig:
    """Where client locations come from: CIDR rules first, then a MaxMind-format database."""

    geoip_db: Path
    rules: tuple[GeoRule, ...] = ()


def packaged_geoip_db() -> Path:
    """The GeoLite2 City file the ``maxminddb-geolite2`` package ships (the default database)."""
    from _maxminddb_geolite2 import geolite2_database  # the package's own locator of its file

    return Path(geolite2_database())


def expect_table(r: Reader, value: Any, prefix: str) -> Mapping[str, Any]:
    """``value`` if it is a TOML table, else a ConfigError naming ``prefix``."""
    if not isinstance(value, dict):
        raise r.error(prefix, "expected a table")
    return value


def expect_array(r: Reader, raw: Any, prefix: str) -> list[Any]:
    """``raw`` if it is a TOML array (of tables), else a ConfigError naming ``prefix``."""
    if not isinstance(raw, list):
        raise r.error(prefix, f"expected an array of tables ([[{prefix}]])")
    return raw


def read_coordinate(r: Reader, data: Mapping[str, Any], key: str, prefix: str, limit: float) -> float:
    """A required latitude (``limit`` 90) or longitude (180) in degrees."""
    value = r.get(data, key, prefix, float, required=True)
    if not -limit <= value <= limit:
        raise r.error(f"{prefix}.{key}", f"{value} is outside -{limit:g}..{limit:g}")
    return value


def read_geo_rules(r: Reader, raw: Any, prefix: str) -> tuple[GeoRule, ...]:
    """``[[<prefix>]]``: CIDR rules that place a network (and name its country)."""
    rules: list[GeoRule] = []
    for i, item in enumerate(expect_array(r, raw, prefix)):
        p = f"{prefix}[{i}]"
        item = expect_table(r, item, p)
        r.check_keys(item, p, {"cidr", "lat", "lon", "country"})
        cidr = r.get(item, "cidr", p, str, required=True)
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise r.error(f"{p}.cidr", f"{cidr!r} is not a network (host bits must be zero): {e}") from None
        if any(x.network == network for x in rules):
            raise r.error(f"{p}.cidr", f"{cidr} has two rules")
        country = r.get(item, "country", p, str, "").upper()
        if country and not _COUNTRY.fullmatch(country):
            raise r.error(f"{p}.country", f"{country!r} is not a two-letter ISO 3166 country code")
        rules.append(GeoRule(network=network, lat=read_coordinate(r, item, "lat", p, 90.0),
                             lon=read_coordinate(r, item, "lon", p, 180.0), country=country))
    return tuple(rules)


def read_geo(r: Reader, data: Mapping[str, Any], prefix: str = "dns.geo", *,
             coordinates: bool = True) -> GeoConfig:
    """``[dns.geo]`` (or ``[cdn.geo]``): the geo database (checked to open now) and its rules.

    ``coordinates``: the database must place addresses on the map (a City database: the
    GeoDNS measures distances); without it a Country database will do (the edge's rules).
    """
    data = expect_table(r, data, prefix)
    r.check_keys(data, prefix, {"geoip_db", "rules"})
    raw = r.get(data, "geoip_db", prefix, str, "")
    if raw:
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else r.root / path
    else:
        try:
            path = packaged_geoip_db()
        except ImportError:
            raise r.error(f"{prefix}.geoip_db", "not set, and the maxminddb-geolite2 package that "
                                                "ships the default database is not installed") from None
    import maxminddb

    try:
        with maxminddb.open_database(str(path)) as db:
            kind = db.metadata().database_type
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        raise r.error(f"{prefix}.geoip_db", f"cannot open {path} as a MaxMind database: {e}") from None
    if coordinates and "City" not in kind and "Location" not in kind:
        # A Country or ASN database has no coordinates to measure distances from.
        raise r.error(f"{prefix}.geoip_db", f"{path} is a {kind} database; steering needs coordinates "
                                            "(a City database such as GeoLite2-City)")
    rules = read_geo_rules(r, data.get("rules", []), f"{prefix}.rules")
    return GeoConfig(geoip_db=path, rules=rules)
