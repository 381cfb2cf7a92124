"""The GeoDNS's part of cluster.toml: ``[dns]`` with its records, steered names and POPs.

Read once through the kernel's :class:`~headwater.config.Reader` (errors name the key and its
line) into the frozen :class:`DnsConfig`; every DNS default lives here. The reader builds the
zones it names (the ``zone`` of this table and each master file of ``zone_files``) so that a
record outside its zone, a missing SOA or a CNAME beside other data stops ``headwater up`` with
the key at fault, not the daemon later.

The steering keys (``[[dns.steered]]``, ``[[dns.pops]]``, ``[dns.geo]``, ``steered_ttl``) are
read by :func:`headwater.dns.steering.config.read_steering`, ``[dns.health]`` by
:func:`headwater.dns.health.config.read_health`, ``[dns.rrl]`` by
:func:`headwater.dns.rrl.read_rrl` and ``[dns.dnssec]`` by
:func:`headwater.dns.dnssec.config.read_dnssec` (its keys default to ``<data_dir>/keys``, the
daemon's own ``data_dir`` being ``[cluster] data_dir/<id>`` unless ``[dns] data_dir`` says).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import dnslib

from headwater.config import MiB, Reader

from .dnssec.config import DnssecConfig, read_dnssec
from .edns import MAX_UDP, MIN_UDP
from .health.config import HealthConfig, read_health
from .steering.config import SteeredName, SteeringConfig, read_steering
from .errors import ZoneError
from .masterfile import read_master_file, record_from_text
from .rrl import RrlConfig, read_rrl
from .zone import STATIC_TYPES, Zone, build_zone

__all__ = ["StaticRecord", "DnsConfig", "read_dns", "config_zone", "zone_files"]

_TYPES = {dnslib.QTYPE.get(t) for t in STATIC_TYPES}


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticRecord:
    """One ``[[dns.records]]`` entry: ``name`` relative to the zone (``@`` the apex) or absolute."""

    name: str
    type: str
    value: str
    ttl: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsConfig:
    """The ``dns`` daemon: ``workers`` processes share ``port`` (UDP and TCP) with SO_REUSEPORT."""

    id: str = "dns-1"
    host: str = "127.0.0.1"
    port: int = 5353
    admin_port: int = 9353
    workers: int = 2
    # Where the daemon keeps its state (the DNSSEC keys): [cluster] data_dir/<id> by default.
    data_dir: Path = Path("var/dns-1")
    zone: str | None = "cdn.headwater.test."
    zone_files: tuple[Path, ...] = ()
    ttl: int = 300
    steered_ttl: int = 30
    negative_ttl: int = 60
    # The config zone's apex: its name servers (relative to the zone or absolute) and SOA.
    ns: tuple[str, ...] = ("ns1",)
    soa_mname: str = "ns1"
    soa_rname: str = "hostmaster"
    serial: int = 1
    records: tuple[StaticRecord, ...] = ()
    steered: tuple[SteeredName, ...] = ()
    # The largest UDP answer we send, whatever a client advertises (DNS flag day 2020: 1232).
    max_udp_size: int = 1232
    # DNS over TCP, per worker: connections at once, the idle time before one is closed, and
    # the time one query may take to arrive once its first byte has.
    tcp_max_connections: int = 256
    tcp_idle_timeout_s: float = 10.0
    tcp_query_timeout_s: float = 5.0
    # The wire-level answer cache, per worker.
    cache_entries: int = 100_000
    cache_bytes: int = 64 * MiB
    # Zone files and cluster.toml are checked for changes this often (0: only on SIGHUP).
    reload_interval_s: float = 2.0
    # Steering (POPs, geo, steered names) and the POPs' health checks.
    steering: SteeringConfig | None = None
    health: HealthConfig = field(default_factory=HealthConfig)
    # Online DNSSEC signing of every zone served (off by default: the parent must get the DS).
    dnssec: DnssecConfig = field(default_factory=DnssecConfig)
    # Response rate limiting of UDP answers (on by default, as against reflection it must be).
    rrl: RrlConfig = field(default_factory=RrlConfig)

    @property
    def role(self) -> str:
        return "dns"

    @property
    def needs_cluster_secret(self) -> bool:
        """Whether this daemon opens sealed secrets (the DNSSEC keys), so ``headwater up`` must
        make the cluster secret even when no RPC role needs it."""
        return self.dnssec.enabled


_KEYS = {"id", "host", "port", "admin_port", "workers", "data_dir", "zone", "zone_files", "ttl", "steered_ttl",
         "negative_ttl", "ns", "soa_mname", "soa_rname", "serial", "records", "steered", "max_udp_size",
         "tcp_max_connections", "tcp_idle_timeout_seconds", "tcp_query_timeout_seconds", "cache_entries",
         "cache_size", "reload_interval_seconds", "pops", "geo", "health", "dnssec", "rrl"}


def _ttl(r: Reader, data: Mapping[str, Any], key: str, p: str, default: int | None) -> int | None:
    value = r.get(data, key, p, int, default)
    if value is not None and not 0 <= value <= 0x7FFFFFFF:
        raise r.error(f"{p}.{key}", f"TTL {value} is outside 0..2147483647")
    return value


def _tables(r: Reader, data: Mapping[str, Any], key: str, p: str) -> list[tuple[str, dict[str, Any]]]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise r.error(f"{p}.{key}", f"expected an array of tables ([[{p}.{key}]])")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise r.error(f"{p}.{key}[{i}]", "expected a table")
        out.append((f"{p}.{key}[{i}]", item))
    return out


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def read_dns(r: Reader, data: Mapping[str, Any], p: str) -> DnsConfig:
    """``[dns]``: the daemon, its zone from this table, its master files and steered names."""
    r.check_keys(data, p, _KEYS)
    d = DnsConfig()
    workers = r.get(data, "workers", p, int, d.workers)
    if not 1 <= workers <= 256:
        raise r.error(f"{p}.workers", "must be between 1 and 256")
    zone = r.get(data, "zone", p, str, d.zone) or None
    if zone is not None:
        zone = _fqdn(zone.strip())
    files = r.get(data, "zone_files", p, list, [])
    paths: list[Path] = []
    for i, f in enumerate(files):
        if not isinstance(f, str):
            raise r.error(f"{p}.zone_files", f"entry {i} is not a file name")
        path = Path(f).expanduser()
        paths.append(path if path.is_absolute() else r.root / path)
    records = []
    for rp, item in _tables(r, data, "records", p):
        r.check_keys(item, rp, {"name", "type", "value", "ttl"})
        rtype = r.get(item, "type", rp, str, required=True).upper()
        if rtype not in _TYPES:
            raise r.error(f"{rp}.type", f"{rtype!r} is not one of {', '.join(sorted(_TYPES))}")
        records.append(StaticRecord(name=r.get(item, "name", rp, str, "@"), type=rtype,
                                    value=r.get(item, "value", rp, str, required=True),
                                    ttl=_ttl(r, item, "ttl", rp, None)))
    # A DNS with only static zones needs no POPs: steering is read when it is used.
    steering = read_steering(r, data, p) if ("steered" in data or "pops" in data) else None
    max_udp = r.get(data, "max_udp_size", p, int, d.max_udp_size)
    if not MIN_UDP <= max_udp <= MAX_UDP:
        raise r.error(f"{p}.max_udp_size", f"must be between {MIN_UDP} and {MAX_UDP}")
    ns = r.get(data, "ns", p, list, list(d.ns))
    if not ns or not all(isinstance(n, str) and n for n in ns):
        raise r.error(f"{p}.ns", "must be a non-empty array of name server names")
    tcp_conns = r.get(data, "tcp_max_connections", p, int, d.tcp_max_connections)
    if not 1 <= tcp_conns <= 100_000:
        raise r.error(f"{p}.tcp_max_connections", "must be between 1 and 100000")
    cache_entries = r.get(data, "cache_entries", p, int, d.cache_entries)
    if cache_entries < 0:
        raise r.error(f"{p}.cache_entries", "cannot be negative (0 turns the cache off)")
    node_id = r.node_id(data, p, d.id)
    data_dir = r.node_data_dir(data, p, node_id)
    cfg = DnsConfig(
        id=node_id,
        data_dir=data_dir,
        host=r.get(data, "host", p, str, d.host),
        port=r.port(data, "port", p, d.port),
        admin_port=r.port(data, "admin_port", p, d.admin_port),
        workers=workers,
        zone=zone,
        zone_files=tuple(paths),
        ttl=_ttl(r, data, "ttl", p, d.ttl),
        steered_ttl=steering.steered_ttl if steering is not None else d.steered_ttl,
        negative_ttl=_ttl(r, data, "negative_ttl", p, d.negative_ttl),
        ns=tuple(ns),
        soa_mname=r.get(data, "soa_mname", p, str, d.soa_mname),
        soa_rname=r.get(data, "soa_rname", p, str, d.soa_rname),
        serial=r.get(data, "serial", p, int, d.serial),
        records=tuple(records),
        steered=steering.steered if steering is not None else (),
        max_udp_size=max_udp,
        tcp_max_connections=tcp_conns,
        tcp_idle_timeout_s=r.positive(data, "tcp_idle_timeout_seconds", p, d.tcp_idle_timeout_s),
        tcp_query_timeout_s=r.positive(data, "tcp_query_timeout_seconds", p, d.tcp_query_timeout_s),
        cache_entries=cache_entries,
        cache_bytes=r.size(data, "cache_size", p, d.cache_bytes),
        reload_interval_s=r.non_negative(data, "reload_interval_seconds", p, d.reload_interval_s),
        steering=steering,
        health=read_health(r, r.table(data, "health", p), f"{p}.health"),
        dnssec=read_dnssec(r, r.table(data, "dnssec", p), f"{p}.dnssec", node_data_dir=data_dir),
        rrl=read_rrl(r, r.table(data, "rrl", p), f"{p}.rrl"),
    )
    if cfg.zone is None and not cfg.zone_files:
        raise r.error(f"{p}.zone", "the DNS serves no zone: give zone or zone_files")
    if cfg.steered and cfg.zone is None:
        raise r.error(f"{p}.steered", "steered names belong to the zone of [dns] zone")
    # Build every zone now: a bad record stops the cluster before anything starts.
    try:
        config_zone(cfg)
    except ZoneError as e:
        raise r.error(_record_key(cfg, str(e), p), str(e)) from None
    for i, path in enumerate(cfg.zone_files):
        try:
            read_master_file(path)
        except ZoneError as e:
            raise r.error(f"{p}.zone_files", str(e)) from None
    return cfg


def _record_key(cfg: DnsConfig, message: str, p: str) -> str:
    """The ``[[dns.records]]`` entry a zone error names, else the table."""
    prefix = message.split(": ", 1)[0]
    if prefix.startswith(f"{p}.records["):
        return prefix
    return f"{p}.records" if cfg.records else f"{p}.zone"


def config_zone(cfg: DnsConfig) -> Zone | None:
    """The zone ``[dns]`` describes: its SOA and NS (from ``soa_*``, ``serial``, ``ns``), the
    static records and the steered names. ZoneError names the record at fault."""
    if cfg.zone is None:
        return None
    origin = cfg.zone
    records: list[dnslib.RR] = []
    soa_given = any(rec.type == "SOA" and rec.name in ("@", "", origin) for rec in cfg.records)
    ns_given = any(rec.type == "NS" and rec.name in ("@", "", origin) for rec in cfg.records)
    if not soa_given:
        # SOA: mname rname serial refresh retry expire minimum (the negative TTL).
        records.append(record_from_text("@", "SOA", f"{cfg.soa_mname} {cfg.soa_rname} {cfg.serial} 3600 600 "
                                                    f"1209600 {cfg.negative_ttl}",
                                        origin=origin, ttl=cfg.ttl, source="dns.soa"))
    if not ns_given:
        records += [record_from_text("@", "NS", ns, origin=origin, ttl=cfg.ttl, source="dns.ns") for ns in cfg.ns]
    for i, rec in enumerate(cfg.records):
        rr = record_from_text(rec.name, rec.type, rec.value, origin=origin,
                              ttl=cfg.ttl if rec.ttl is None else rec.ttl, source=f"dns.records[{i}]")
        if not rr.rname.matchSuffix(origin):
            raise ZoneError(f"dns.records[{i}]: {rr.rname} is outside the zone {origin}")
        records.append(rr)
    return build_zone(origin, records, steered=[s.name for s in cfg.steered], source="cluster.toml [dns]")


def zone_files(cfg: DnsConfig) -> list[Zone]:
    """Every master file's zone (ZoneError names the file and what is wrong)."""
    return [read_master_file(path) for path in cfg.zone_files]
