"""cluster.toml, read once and validated into frozen dataclasses.

Every default lives in this module. A bad file raises :class:`ConfigError` naming the key and the
line it sits on, before anything starts.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ConfigError",
    "ClusterConfig",
    "ErasureScheme",
    "User",
    "GatewayConfig",
    "StorageNodeConfig",
    "MetadataNodeConfig",
    "ObjstoreConfig",
    "RepairConfig",
    "HttpLimits",
    "load",
    "loads",
    "parse_size",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
               "g": GiB, "gb": GiB, "gib": GiB, "t": TiB, "tb": TiB, "tib": TiB}


class ConfigError(Exception):
    """A cluster.toml that cannot be used; the message names the key and, when known, the line."""

    def __init__(self, key: str, message: str, *, path: str | None = None, line: int | None = None):
        self.key = key
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{key}: {message}")


def parse_size(value: Any, key: str = "size") -> int:
    """Parse a byte size given as an int or a string like "1MiB" / "64 KiB"."""
    if isinstance(value, bool):
        raise ConfigError(key, "expected a size such as 1048576 or \"1MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, "a size cannot be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ConfigError(key, f"expected a size such as 1048576 or \"1MiB\", got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ErasureScheme:
    """k data + m parity fragments per stripe of ``stripe_bytes`` user bytes."""

    k: int = 4
    m: int = 2
    stripe_bytes: int = 1 * MiB
    # Fragments of every stripe a PUT must store before it is acknowledged; None means the
    # default, :attr:`write_fragments`.
    write_quorum: int | None = None

    @property
    def width(self) -> int:
        return self.k + self.m

    @property
    def write_fragments(self) -> int:
        """Fragments a write must store before it is acknowledged.

        The default is Swift's rule, k+1 (k when m = 0): k alone would acknowledge a stripe with
        no redundancy at all, while k+1 survives one more loss until the reconstructor restores
        the rest, and still lets writes go on with up to m-1 nodes down. ``write_quorum`` trades
        that: k+m refuses writes whenever any node is down, k acknowledges unprotected stripes.
        """
        if self.write_quorum is not None:
            return self.write_quorum
        return self.k + min(self.m, 1)

    @property
    def fragment_bytes(self) -> int:
        """Bytes of one fragment of a full stripe (the stripe is padded to a multiple of k)."""
        return -(-self.stripe_bytes // self.k)

    def describe(self) -> str:
        return f"EC {self.k}+{self.m}, {self.stripe_bytes // KiB} KiB stripes"


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """An S3 user: SigV4 credentials and the buckets they own."""

    name: str
    access_key: str
    secret_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """Limits the HTTP server core enforces on every connection."""

    max_header_bytes: int = 64 * KiB
    max_body_bytes: int = 5 * GiB
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    body_timeout_s: float = 60.0
    max_concurrent_streams: int = 128
    max_connections: int = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The S3 gateway: ``workers`` processes share ``port`` with SO_REUSEPORT."""

    id: str = "s3"
    host: str = "127.0.0.1"
    port: int = 9000
    admin_port: int = 9001
    workers: int = 2
    tls_cert: str | None = None
    tls_key: str | None = None
    limits: HttpLimits = field(default_factory=HttpLimits)

    @property
    def role(self) -> str:
        return "gateway"


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageNodeConfig:
    """A storage node: one data directory, as if its own disk on its own host."""

    id: str
    host: str = "127.0.0.1"
    port: int
    admin_port: int
    data_dir: Path
    zone: str = "z1"
    rack: str = "r1"
    node_host: str = ""  # failure-domain host name; defaults to the node id

    @property
    def role(self) -> str:
        return "storage"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataNodeConfig:
    """A metadata node: object and bucket records on LMDB."""

    id: str
    host: str = "127.0.0.1"
    port: int
    admin_port: int
    data_dir: Path
    map_size_bytes: int = 1 * GiB
    # Being taken out: `headwater meta rebalance` moves its Raft groups to the other nodes, after
    # which it can be stopped and its entry removed.
    drain: bool = False

    @property
    def role(self) -> str:
        return "metadata"


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjstoreConfig:
    """Object-store policy shared by every daemon of the store."""

    region: str = "us-east-1"
    ec: ErasureScheme = field(default_factory=ErasureScheme)
    bucket_ec: Mapping[str, ErasureScheme] = field(default_factory=dict)
    inline_max_bytes: int = 64 * KiB
    max_object_bytes: int = 5 * TiB
    max_put_bytes: int = 5 * GiB
    min_part_bytes: int = 5 * MiB
    max_parts: int = 10_000
    clock_skew_s: int = 900
    partitions: int = 64
    # Partitions are spread over this many Raft groups (partition % groups), each on 3 metadata
    # nodes chosen by rendezvous hashing. Fixed when the ring is formed, like partitions; more
    # groups than nodes is what lets an added node take its share.
    metadata_groups: int = 8
    rpc_timeout_s: float = 30.0
    # Metadata replica sets are Raft groups: a follower that hears no leader for a random
    # 1..2 x this starts an election, so failover takes about that long.
    raft_election_timeout_s: float = 1.0
    # A metadata read or write gives up (503) after this long, leader failover included.
    metadata_timeout_s: float = 10.0
    # A Raft log is compacted once it holds this many applied entries (the records are the
    # snapshot); a follower further behind than a tenth of it is sent a snapshot instead.
    raft_log_entries: int = 20_000
    # Long enough for a slow client to finish a large download of the replaced version (Ceph
    # RGW waits 2 h); the queue is per gateway worker and in memory until issue 4's collector.
    retire_grace_s: float = 300.0
    # Each storage node re-reads and verifies its own fragments at this many bytes/s (0: never),
    # pausing scrub_interval_s between passes. 8 MiB/s reads a 4 TB disk in about 6 days.
    scrub_rate_bytes: int = 8 * MiB
    scrub_interval_s: float = 3600.0

    def scheme_for(self, bucket: str) -> ErasureScheme:
        return self.bucket_ec.get(bucket, self.ec)


@dataclass(frozen=True, slots=True, kw_only=True)
class RepairConfig:
    """The repair daemon: the reconstructor and the garbage collector, one per cluster.

    It serves only its admin endpoint (/healthz, /metrics), so ``port`` is ``admin_port``.
    """

    id: str = "repair"
    host: str = "127.0.0.1"
    admin_port: int = 9401
    # Repair traffic (fragment bytes read from survivors plus bytes written) per second.
    rebuild_rate_bytes: int = 64 * MiB
    interval_s: float = 60.0  # pause between two reconstructor passes
    # A storage node that has failed every health check for this long is "out": the
    # reconstructor rebuilds the fragments the layouts place on it onto other nodes. 0: never.
    node_down_out_s: float = 600.0
    gc: bool = True
    gc_interval_s: float = 60.0  # between two collector passes; orphans go after retire_grace_s
    # The rebalancer moves fragments toward where placement puts them now (a storage node added)
    # at this many bytes/s (read from the old node, written to the new, read back), one pass
    # every rebalance_interval_s; old copies go retire_grace_s after the record changes.
    rebalance: bool = True
    rebalance_rate_bytes: int = 16 * MiB
    rebalance_interval_s: float = 600.0

    @property
    def port(self) -> int:
        return self.admin_port

    @property
    def role(self) -> str:
        return "repair"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """The whole cluster as one cluster.toml describes it."""

    name: str = "headwater"
    runtime: str = "asyncio"
    log_level: str = "info"
    path: Path | None = None
    data_dir: Path = Path("var")
    # The cluster secret every node proves before its RPC calls are served (headwater.rpc.auth):
    # the variable ``secret_env`` names when it is set, else the file ``secret_file``. Neither
    # given: the file <data_dir>/cluster.secret.
    secret_file: Path | None = None
    secret_env: str | None = None
    objstore: ObjstoreConfig = field(default_factory=ObjstoreConfig)
    users: tuple[User, ...] = ()
    gateway: GatewayConfig | None = None
    storage: tuple[StorageNodeConfig, ...] = ()
    metadata: tuple[MetadataNodeConfig, ...] = ()
    repair: RepairConfig | None = None

    def daemons(self) -> list[GatewayConfig | StorageNodeConfig | MetadataNodeConfig | RepairConfig]:
        """Every daemon, in the order the supervisor starts them (metadata, storage, gateway, repair)."""
        out: list[GatewayConfig | StorageNodeConfig | MetadataNodeConfig | RepairConfig] = [
            *self.metadata, *self.storage]
        if self.gateway is not None:
            out.append(self.gateway)
        if self.repair is not None:
            out.append(self.repair)
        return out

    def daemon(self, node_id: str) -> GatewayConfig | StorageNodeConfig | MetadataNodeConfig | RepairConfig:
        for d in self.daemons():
            if d.id == node_id:
                return d
        raise ConfigError("node", f"no daemon with id {node_id!r} in {self.path or 'the config'}")

    def user_by_access_key(self, access_key: str) -> User | None:
        for u in self.users:
            if u.access_key == access_key:
                return u
        return None


# --- line lookup -------------------------------------------------------------------------------

def _key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (``storage[2].port``) to the 1-based line that sets them.

    tomllib reports no positions, so this scans table headers and ``key =`` lines; it covers the
    plain layout cluster.toml uses, which is all an error message needs.
    """
    lines: dict[str, int] = {}
    table = ""
    counts: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("[["):
            name = s[2:s.index("]]")].strip().replace('"', "")
            idx = counts.get(name, -1) + 1
            counts[name] = idx
            table = f"{name}[{idx}]"
            lines.setdefault(table, n)
            continue
        if s.startswith("["):
            table = s[1:s.index("]")].strip().replace('"', "")
            lines.setdefault(table, n)
            continue
        m = re.match(r'("?[A-Za-z0-9_.\-]+"?)\s*=', s)
        if m:
            key = m.group(1).replace('"', "")
            lines.setdefault(f"{table}.{key}" if table else key, n)
    return lines


class _Reader:
    """Pulls typed values out of the parsed TOML, raising ConfigError that names key and line."""

    def __init__(self, path: str | None, text: str):
        self.path = path
        self.lines = _key_lines(text)

    def error(self, key: str, message: str) -> ConfigError:
        line = self.lines.get(key)
        probe = key
        while line is None and "." in probe:
            probe = probe.rsplit(".", 1)[0]
            line = self.lines.get(probe)
        return ConfigError(key, message, path=self.path, line=line)

    def table(self, data: Mapping[str, Any], name: str, prefix: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(_join(prefix, name), "expected a table")
        return value

    def check_keys(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                raise self.error(_join(prefix, key), f"unknown key (known: {', '.join(sorted(allowed))})")

    def get(self, data: Mapping[str, Any], key: str, prefix: str, kind: type | tuple[type, ...],
            default: Any = ..., *, required: bool = False) -> Any:
        full = _join(prefix, key)
        if key not in data:
            if required or default is ...:
                raise self.error(full, "is required")
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise self.error(full, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(full, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def port(self, data: Mapping[str, Any], key: str, prefix: str, default: Any = ...) -> int:
        value = self.get(data, key, prefix, int, default)
        if not 1 <= value <= 65535:
            raise self.error(_join(prefix, key), f"port {value} is outside 1..65535")
        return value

    def size(self, data: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
        if key not in data:
            return default
        try:
            return parse_size(data[key], _join(prefix, key))
        except ConfigError as e:
            raise self.error(_join(prefix, key), str(e).split(": ", 1)[-1]) from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "an array", dict: "a table"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


# --- sections ----------------------------------------------------------------------------------

def _scheme(r: _Reader, data: Mapping[str, Any], prefix: str, base: ErasureScheme) -> ErasureScheme:
    r.check_keys(data, prefix, {"k", "m", "stripe_size", "write_quorum"})
    k = r.get(data, "k", prefix, int, base.k)
    m = r.get(data, "m", prefix, int, base.m)
    stripe = r.size(data, "stripe_size", prefix, base.stripe_bytes)
    if not 1 <= k <= 128:
        raise r.error(_join(prefix, "k"), f"k={k} must be between 1 and 128")
    if not 0 <= m <= 64 or k + m > 256:
        raise r.error(_join(prefix, "m"), f"m={m} must be between 0 and 64 with k+m <= 256")
    if stripe < k or stripe > 64 * MiB:
        raise r.error(_join(prefix, "stripe_size"), f"stripe_size={stripe} must be between k bytes and 64 MiB")
    # A bucket's scheme inherits the base write_quorum only when it keeps the base k and m: an
    # absolute count means nothing for another scheme.
    inherited = base.write_quorum if (k, m) == (base.k, base.m) else None
    quorum = r.get(data, "write_quorum", prefix, int, inherited)
    if quorum is not None and not k <= quorum <= k + m:
        raise r.error(_join(prefix, "write_quorum"),
                      f"write_quorum={quorum} must be between k={k} and k+m={k + m} fragments")
    return ErasureScheme(k=k, m=m, stripe_bytes=stripe, write_quorum=quorum)


def _objstore(r: _Reader, data: Mapping[str, Any]) -> ObjstoreConfig:
    p = "objstore"
    r.check_keys(data, p, {"region", "ec", "bucket_ec", "inline_max_size", "max_object_size",
                           "max_put_size", "min_part_size", "max_parts", "clock_skew_seconds",
                           "partitions", "metadata_groups", "rpc_timeout_seconds", "retire_grace_seconds",
                           "raft_election_timeout_seconds", "metadata_timeout_seconds", "raft_log_entries",
                           "scrub_rate", "scrub_interval_seconds"})
    d = ObjstoreConfig()
    ec = _scheme(r, r.table(data, "ec", p), f"{p}.ec", d.ec)
    bucket_ec = {name: _scheme(r, v if isinstance(v, dict) else {}, f"{p}.bucket_ec.{name}", ec)
                 for name, v in r.table(data, "bucket_ec", p).items()}
    partitions = r.get(data, "partitions", p, int, d.partitions)
    if not 1 <= partitions <= 65535:
        raise r.error(f"{p}.partitions", "must be between 1 and 65535 (partition 0xffff is reserved)")
    groups = r.get(data, "metadata_groups", p, int, min(d.metadata_groups, partitions))
    if not 1 <= groups <= partitions:
        raise r.error(f"{p}.metadata_groups", f"must be between 1 and partitions ({partitions})")
    return ObjstoreConfig(
        region=r.get(data, "region", p, str, d.region),
        ec=ec,
        bucket_ec=bucket_ec,
        inline_max_bytes=r.size(data, "inline_max_size", p, d.inline_max_bytes),
        max_object_bytes=r.size(data, "max_object_size", p, d.max_object_bytes),
        max_put_bytes=r.size(data, "max_put_size", p, d.max_put_bytes),
        min_part_bytes=r.size(data, "min_part_size", p, d.min_part_bytes),
        max_parts=r.get(data, "max_parts", p, int, d.max_parts),
        clock_skew_s=r.get(data, "clock_skew_seconds", p, int, d.clock_skew_s),
        partitions=partitions,
        metadata_groups=groups,
        rpc_timeout_s=r.get(data, "rpc_timeout_seconds", p, float, d.rpc_timeout_s),
        raft_election_timeout_s=_positive(r, data, "raft_election_timeout_seconds", p, d.raft_election_timeout_s),
        metadata_timeout_s=_positive(r, data, "metadata_timeout_seconds", p, d.metadata_timeout_s),
        raft_log_entries=int(_positive(r, data, "raft_log_entries", p, d.raft_log_entries)),
        retire_grace_s=_non_negative(r, data, "retire_grace_seconds", p, d.retire_grace_s),
        scrub_rate_bytes=r.size(data, "scrub_rate", p, d.scrub_rate_bytes),
        scrub_interval_s=_non_negative(r, data, "scrub_interval_seconds", p, d.scrub_interval_s),
    )


def _positive(r: _Reader, data: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    value = r.get(data, key, prefix, float, default)
    if value <= 0:
        raise r.error(_join(prefix, key), f"{value} must be positive")
    return value


def _non_negative(r: _Reader, data: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    value = r.get(data, key, prefix, float, default)
    if value < 0:
        raise r.error(_join(prefix, key), f"{value} is negative")
    return value


def _repair(r: _Reader, data: Mapping[str, Any]) -> RepairConfig:
    p = "repair"
    r.check_keys(data, p, {"id", "host", "admin_port", "rebuild_rate", "interval_seconds",
                           "node_down_out_seconds", "gc", "gc_interval_seconds", "rebalance",
                           "rebalance_rate", "rebalance_interval_seconds"})
    d = RepairConfig()
    rate = r.size(data, "rebuild_rate", p, d.rebuild_rate_bytes)
    if rate <= 0:
        raise r.error(f"{p}.rebuild_rate", "must be a positive size per second, such as \"64MiB\"")
    rebalance_rate = r.size(data, "rebalance_rate", p, d.rebalance_rate_bytes)
    if rebalance_rate <= 0:
        raise r.error(f"{p}.rebalance_rate", "must be a positive size per second, such as \"16MiB\"")
    node_id = r.get(data, "id", p, str, d.id)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}", node_id):
        raise r.error(f"{p}.id", f"{node_id!r} is not a valid id (letters, digits, . _ -)")
    return RepairConfig(
        id=node_id,
        host=r.get(data, "host", p, str, d.host),
        admin_port=r.port(data, "admin_port", p, d.admin_port),
        rebuild_rate_bytes=rate,
        interval_s=_non_negative(r, data, "interval_seconds", p, d.interval_s),
        node_down_out_s=_non_negative(r, data, "node_down_out_seconds", p, d.node_down_out_s),
        gc=r.get(data, "gc", p, bool, d.gc),
        gc_interval_s=_non_negative(r, data, "gc_interval_seconds", p, d.gc_interval_s),
        rebalance=r.get(data, "rebalance", p, bool, d.rebalance),
        rebalance_rate_bytes=rebalance_rate,
        rebalance_interval_s=_non_negative(r, data, "rebalance_interval_seconds", p, d.rebalance_interval_s),
    )


def _limits(r: _Reader, data: Mapping[str, Any], prefix: str) -> HttpLimits:
    d = HttpLimits()
    r.check_keys(data, prefix, {"max_header_size", "max_body_size", "header_timeout_seconds",
                                "idle_timeout_seconds", "body_timeout_seconds",
                                "max_concurrent_streams", "max_connections"})
    return HttpLimits(
        max_header_bytes=r.size(data, "max_header_size", prefix, d.max_header_bytes),
        max_body_bytes=r.size(data, "max_body_size", prefix, d.max_body_bytes),
        header_timeout_s=r.get(data, "header_timeout_seconds", prefix, float, d.header_timeout_s),
        idle_timeout_s=r.get(data, "idle_timeout_seconds", prefix, float, d.idle_timeout_s),
        body_timeout_s=r.get(data, "body_timeout_seconds", prefix, float, d.body_timeout_s),
        max_concurrent_streams=r.get(data, "max_concurrent_streams", prefix, int, d.max_concurrent_streams),
        max_connections=r.get(data, "max_connections", prefix, int, d.max_connections),
    )


def _gateway(r: _Reader, data: Mapping[str, Any]) -> GatewayConfig:
    p = "gateway"
    r.check_keys(data, p, {"id", "host", "port", "admin_port", "workers", "tls_cert", "tls_key", "limits"})
    d = GatewayConfig()
    workers = r.get(data, "workers", p, int, d.workers)
    if not 1 <= workers <= 256:
        raise r.error(f"{p}.workers", "must be between 1 and 256")
    return GatewayConfig(
        id=r.get(data, "id", p, str, d.id),
        host=r.get(data, "host", p, str, d.host),
        port=r.port(data, "port", p, d.port),
        admin_port=r.port(data, "admin_port", p, d.admin_port),
        workers=workers,
        tls_cert=r.get(data, "tls_cert", p, str, None),
        tls_key=r.get(data, "tls_key", p, str, None),
        limits=_limits(r, r.table(data, "limits", p), f"{p}.limits"),
    )


def _nodes(r: _Reader, items: Any, name: str, root: Path, base: Path) -> list[dict[str, Any]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise r.error(name, f"expected an array of tables ([[{name}]])")
    out = []
    for i, item in enumerate(items):
        p = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise r.error(p, "expected a table")
        node_id = r.get(item, "id", p, str, required=True)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}", node_id):
            raise r.error(f"{p}.id", f"{node_id!r} is not a valid id (letters, digits, . _ -)")
        raw_dir = r.get(item, "data_dir", p, str, "")
        data_dir = Path(raw_dir) if raw_dir else base / node_id
        if not data_dir.is_absolute():
            data_dir = root / data_dir
        out.append({"prefix": p, "item": item, "id": node_id, "data_dir": data_dir})
    return out


def loads(text: str, *, path: str | None = None, env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Parse cluster.toml text. Relative data directories resolve against the file's folder."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError("toml", str(e), path=path, line=int(m.group(1)) if m else None) from None
    r = _Reader(path, text)
    r.check_keys(data, "", {"cluster", "objstore", "users", "gateway", "storage", "metadata", "repair"})
    root = Path(path).resolve().parent if path else Path.cwd()

    cl = r.table(data, "cluster", "")
    r.check_keys(cl, "cluster", {"name", "runtime", "log_level", "data_dir", "secret_file", "secret_env"})
    runtime = r.get(cl, "runtime", "cluster", str, "asyncio")
    if runtime not in ("asyncio", "trio"):
        raise r.error("cluster.runtime", f"{runtime!r} is not one of asyncio, trio")
    log_level = r.get(cl, "log_level", "cluster", str, "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise r.error("cluster.log_level", f"{log_level!r} is not one of debug, info, warning, error")
    base = Path(r.get(cl, "data_dir", "cluster", str, "var"))
    if not base.is_absolute():
        base = root / base
    secret_env = r.get(cl, "secret_env", "cluster", str, None)
    if secret_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", secret_env):
        raise r.error("cluster.secret_env", f"{secret_env!r} is not an environment variable name")
    secret_file = r.get(cl, "secret_file", "cluster", str, None)
    if secret_file is not None:
        secret_file = Path(secret_file).expanduser()
        secret_file = secret_file if secret_file.is_absolute() else root / secret_file
    elif secret_env is None:
        secret_file = base / "cluster.secret"

    objstore = _objstore(r, r.table(data, "objstore", ""))

    users_raw = data.get("users", [])
    if not isinstance(users_raw, list):
        raise r.error("users", "expected an array of tables ([[users]])")
    users: list[User] = []
    for i, u in enumerate(users_raw):
        p = f"users[{i}]"
        r.check_keys(u, p, {"name", "access_key", "secret_key"})
        access = r.get(u, "access_key", p, str, required=True)
        secret = r.get(u, "secret_key", p, str, required=True)
        if len(access) < 3 or len(secret) < 8:
            raise r.error(f"{p}.secret_key" if len(access) >= 3 else f"{p}.access_key",
                          "access_key needs at least 3 characters and secret_key at least 8")
        if any(x.access_key == access for x in users):
            raise r.error(f"{p}.access_key", f"access key {access!r} is given to two users")
        users.append(User(name=r.get(u, "name", p, str, access), access_key=access, secret_key=secret))

    gateway = _gateway(r, r.table(data, "gateway", "")) if "gateway" in data else None
    repair = _repair(r, r.table(data, "repair", "")) if "repair" in data else None

    storage: list[StorageNodeConfig] = []
    for n in _nodes(r, data.get("storage"), "storage", root, base):
        p, item = n["prefix"], n["item"]
        r.check_keys(item, p, {"id", "host", "port", "admin_port", "data_dir", "zone", "rack", "node_host"})
        storage.append(StorageNodeConfig(
            id=n["id"], host=r.get(item, "host", p, str, "127.0.0.1"),
            port=r.port(item, "port", p), admin_port=r.port(item, "admin_port", p),
            data_dir=n["data_dir"], zone=r.get(item, "zone", p, str, "z1"),
            rack=r.get(item, "rack", p, str, "r1"),
            node_host=r.get(item, "node_host", p, str, n["id"]),
        ))
    metadata: list[MetadataNodeConfig] = []
    for n in _nodes(r, data.get("metadata"), "metadata", root, base):
        p, item = n["prefix"], n["item"]
        r.check_keys(item, p, {"id", "host", "port", "admin_port", "data_dir", "map_size", "drain"})
        metadata.append(MetadataNodeConfig(
            id=n["id"], host=r.get(item, "host", p, str, "127.0.0.1"),
            port=r.port(item, "port", p), admin_port=r.port(item, "admin_port", p),
            data_dir=n["data_dir"], map_size_bytes=r.size(item, "map_size", p, 1 * GiB),
            drain=r.get(item, "drain", p, bool, False),
        ))

    cfg = ClusterConfig(
        name=r.get(cl, "name", "cluster", str, "headwater"), runtime=runtime, log_level=log_level,
        path=Path(path).resolve() if path else None, data_dir=base, secret_file=secret_file,
        secret_env=secret_env, objstore=objstore,
        users=tuple(users), gateway=gateway, storage=tuple(storage), metadata=tuple(metadata),
        repair=repair,
    )
    _check_cluster(r, cfg, env or os.environ)
    return cfg


def _check_cluster(r: _Reader, cfg: ClusterConfig, env: Mapping[str, str]) -> None:
    seen_ids: dict[str, str] = {}
    seen_ports: dict[tuple[str, int], str] = {}
    keyed: list[tuple[str, Any]] = []
    if cfg.gateway:
        keyed.append(("gateway", cfg.gateway))
    keyed += [(f"storage[{i}]", s) for i, s in enumerate(cfg.storage)]
    keyed += [(f"metadata[{i}]", m) for i, m in enumerate(cfg.metadata)]
    if cfg.repair:
        keyed.append(("repair", cfg.repair))
    for prefix, d in keyed:
        if d.id in seen_ids:
            raise r.error(f"{prefix}.id", f"id {d.id!r} is also used by {seen_ids[d.id]}")
        seen_ids[d.id] = prefix
        # The repair daemon listens on its admin port only (its ``port`` is the same number).
        for attr in ("admin_port",) if isinstance(d, RepairConfig) else ("port", "admin_port"):
            addr = (d.host, getattr(d, attr))
            if addr in seen_ports:
                raise r.error(f"{prefix}.{attr}", f"{addr[0]}:{addr[1]} is also used by {seen_ports[addr]}")
            seen_ports[addr] = f"{prefix}.{attr}"
    if cfg.gateway is not None:
        if not cfg.users:
            raise r.error("users", "the S3 gateway needs at least one [[users]] entry")
        if not cfg.metadata:
            raise r.error("metadata", "the S3 gateway needs at least one [[metadata]] node")
        widest = max([cfg.objstore.ec, *cfg.objstore.bucket_ec.values()], key=lambda s: s.width)
        if len(cfg.storage) < widest.width:
            raise r.error("storage", f"{widest.describe()} needs {widest.width} storage nodes, "
                                     f"the file has {len(cfg.storage)}")
    if cfg.repair is not None and not (cfg.metadata and cfg.storage):
        raise r.error("repair", "the repair daemon needs [[metadata]] and [[storage]] nodes to repair")


def load(path: str | os.PathLike[str] | None = None) -> ClusterConfig:
    """Read cluster.toml from ``path`` (default: $HEADWATER_CONFIG, else ./cluster.toml)."""
    p = Path(path or os.environ.get("HEADWATER_CONFIG", "cluster.toml"))
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("file", f"cannot read {p}: {e.strerror}", path=str(p)) from None
    return loads(text, path=str(p))
