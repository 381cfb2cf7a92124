"""The object store's part of cluster.toml: ``[objstore]``, ``[[users]]`` and its four daemons.

Read through the kernel's :class:`~headwater.config.Reader` (errors name the key and line);
registered with the kernel in :mod:`headwater.objstore.roles`. Every object-store default lives
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from headwater.config import (
    ClusterConfig,
    GiB,
    HttpLimits,
    KiB,
    MiB,
    Reader,
    TiB,
    read_http_limits,
)

__all__ = [
    "ErasureScheme", "User", "ObjstoreConfig", "GatewayConfig", "StorageNodeConfig",
    "MetadataNodeConfig", "RepairConfig", "user_by_access_key",
    "read_objstore", "read_users", "read_gateway", "read_storage", "read_metadata", "read_repair",
    "check_objstore", "STORAGE_PAGE_CACHE",
]

#: Storage node hosts that are this machine for certain: a client connects to such a node through
#: its Unix socket (``ObjstoreConfig.storage_unix_sockets``). Not 127.0.0.2 and the like: the
#: probe tests give simulated hosts such addresses and cut them off with packet filters.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

def rpc_socket_path(data_dir: Path, port: int) -> Path:
    """A storage node's Unix socket: in its data_dir, named for the TCP port it serves beside it,
    so a client reaches the node its configuration names (data_dir and port) or none: a node
    moved to another port, or a configuration naming a port nobody serves, finds no socket."""
    return data_dir / f"rpc-{port}.sock"


#: ``[objstore] storage_page_cache``: which fragment pages a storage node leaves in the page cache.
STORAGE_PAGE_CACHE = ("none", "data", "all")


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
    # Stripes a worker's GETs may hold read ahead of their clients, together; a GET that finds it
    # spent (clients that stopped reading) waits read_buffer_wait_s for its share, then gets 503.
    read_buffer_bytes: int = 256 * MiB
    read_buffer_wait_s: float = 10.0
    # A worker reuses a bucket's record for GET and HEAD this long (less the clock drift) after
    # reading it; DeleteBucket waits as long between marking the record and removing it, so the
    # reuse is never a stale read (gateway/bucketcache.py). 0: off, and no wait.
    bucket_cache_s: float = 1.0
    # A GET's fragment replies spliced from the storage nodes' sockets to the client's through
    # pipes, never copied through the worker (headwater/splice.py). Off by default: on loopback
    # (the bench's s5cmd on the same two cores) the client's receive of spliced pages cost it
    # more than the worker saved (bench/README.md, objget5).
    splice_reads: bool = False

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

    @property
    def rpc_socket(self) -> Path:
        """The Unix socket the node serves its RPC on besides host:port (``storage_unix_sockets``)."""
        return rpc_socket_path(self.data_dir, self.port)

    def local_rpc_socket(self) -> str | None:
        """``rpc_socket`` where this node's host is this machine's loopback (the only host a
        client can know shares the node's filesystem), else None."""
        return str(self.rpc_socket) if self.host in LOOPBACK_HOSTS else None


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
    # A group's leader serves reads without a heartbeat round while a majority's promise not to
    # vote holds: election timeout x (1 - this) after what they acknowledged was sent. This bounds
    # how much slower a leader's clock may run than a follower's (rate, not agreement); 1: off.
    raft_clock_drift: float = 0.1
    # A metadata read or write gives up (503) after this long, leader failover included.
    metadata_timeout_s: float = 10.0
    # A Raft log is compacted once it holds this many applied entries (the records are the
    # snapshot); a follower further behind than a tenth of it is sent a snapshot instead.
    raft_log_entries: int = 20_000
    # Long enough for a slow client to finish a large download of the replaced version (Ceph
    # RGW waits 2 h); the repair daemon's collector waits as long for fragments no record names.
    retire_grace_s: float = 300.0
    # Each storage node re-reads and verifies its own fragments at this many bytes/s (0: never),
    # pausing scrub_interval_s between passes. 8 MiB/s reads a 4 TB disk in about 6 days.
    scrub_rate_bytes: int = 8 * MiB
    scrub_interval_s: float = 3600.0
    # A fragment the scrubber found corrupt is kept in the node's quarantine/ this long (for
    # inspection; it is already rebuilt elsewhere from the other fragments), then removed by the
    # node's background loop. 0: kept until removed by hand.
    quarantine_retention_s: float = 7 * 86400.0
    # What a storage node leaves in the page cache (STORAGE_PAGE_CACHE): "none" drops a fragment's
    # pages once its commit is fsynced and the pages of what it reads from disk once read (of
    # fragments over storage.daemon.READ_CACHED_MAX_BYTES), as
    # Swift's object server does (see headwater/pagecache.py for why); "data" keeps data
    # fragments cached (a GET right after a PUT reads memory), dropping parity only; "all" keeps
    # every page, for the kernel to evict.
    storage_page_cache: str = "none"
    # Storage nodes also listen on a Unix socket in their data_dir (rpc-PORT.sock), and daemons on the
    # same host (a node configured at 127.0.0.1, ::1 or localhost) connect through it rather than
    # loopback TCP: the same frames and handshake for less kernel CPU per byte (bench/README.md).
    storage_unix_sockets: bool = True

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
    # Its state across restarts (the storage nodes' down-timers); None keeps none (tests).
    data_dir: Path | None = None
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

    # It listens on its admin port only.
    port_keys: ClassVar[tuple[str, ...]] = ("admin_port",)

    @property
    def port(self) -> int:
        return self.admin_port

    @property
    def role(self) -> str:
        return "repair"


def user_by_access_key(cfg: ClusterConfig, access_key: str) -> User | None:
    """The ``[[users]]`` entry holding ``access_key``, or None."""
    for u in cfg.users:
        if u.access_key == access_key:
            return u
    return None


# --- readers -----------------------------------------------------------------------------------

def _scheme(r: Reader, data: Mapping[str, Any], prefix: str, base: ErasureScheme) -> ErasureScheme:
    r.check_keys(data, prefix, {"k", "m", "stripe_size", "write_quorum"})
    k = r.get(data, "k", prefix, int, base.k)
    m = r.get(data, "m", prefix, int, base.m)
    stripe = r.size(data, "stripe_size", prefix, base.stripe_bytes)
    if not 1 <= k <= 128:
        raise r.error(f"{prefix}.k", f"k={k} must be between 1 and 128")
    if not 0 <= m <= 64 or k + m > 256:
        raise r.error(f"{prefix}.m", f"m={m} must be between 0 and 64 with k+m <= 256")
    if stripe < k or stripe > 64 * MiB:
        raise r.error(f"{prefix}.stripe_size", f"stripe_size={stripe} must be between k bytes and 64 MiB")
    # A bucket's scheme inherits the base write_quorum only when it keeps the base k and m: an
    # absolute count means nothing for another scheme.
    inherited = base.write_quorum if (k, m) == (base.k, base.m) else None
    quorum = r.get(data, "write_quorum", prefix, int, inherited)
    if quorum is not None and not k <= quorum <= k + m:
        raise r.error(f"{prefix}.write_quorum",
                      f"write_quorum={quorum} must be between k={k} and k+m={k + m} fragments")
    return ErasureScheme(k=k, m=m, stripe_bytes=stripe, write_quorum=quorum)


def read_objstore(r: Reader, raw: Any) -> ObjstoreConfig:
    """``[objstore]``, with ``[objstore.ec]`` and ``[objstore.bucket_ec.NAME]``."""
    p = "objstore"
    data = _table(r, raw, p)
    r.check_keys(data, p, {"region", "ec", "bucket_ec", "inline_max_size", "max_object_size",
                           "max_put_size", "min_part_size", "max_parts", "clock_skew_seconds",
                           "partitions", "metadata_groups", "rpc_timeout_seconds", "retire_grace_seconds",
                           "raft_election_timeout_seconds", "raft_clock_drift", "metadata_timeout_seconds",
                           "raft_log_entries",
                           "scrub_rate", "scrub_interval_seconds", "quarantine_retention_seconds",
                           "storage_page_cache", "storage_unix_sockets"})
    d = ObjstoreConfig()
    ec = _scheme(r, r.table(data, "ec", p), f"{p}.ec", d.ec)
    bucket_ec = {name: _scheme(r, v if isinstance(v, dict) else {}, f"{p}.bucket_ec.{name}", ec)
                 for name, v in r.table(data, "bucket_ec", p).items()}
    partitions = r.get(data, "partitions", p, int, d.partitions)
    if not 1 <= partitions <= 65535:
        raise r.error(f"{p}.partitions", "must be between 1 and 65535 (partition 0xffff is reserved)")
    drift = r.non_negative(data, "raft_clock_drift", p, d.raft_clock_drift)
    if drift > 1:
        raise r.error(f"{p}.raft_clock_drift", f"{drift} is more than 1 (1 turns lease reads off)")
    groups = r.get(data, "metadata_groups", p, int, min(d.metadata_groups, partitions))
    if not 1 <= groups <= partitions:
        raise r.error(f"{p}.metadata_groups", f"must be between 1 and partitions ({partitions})")
    page_cache = r.get(data, "storage_page_cache", p, str, d.storage_page_cache)
    if page_cache not in STORAGE_PAGE_CACHE:
        raise r.error(f"{p}.storage_page_cache", f"{page_cache!r} is not one of {', '.join(STORAGE_PAGE_CACHE)}")
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
        raft_election_timeout_s=r.positive(data, "raft_election_timeout_seconds", p, d.raft_election_timeout_s),
        raft_clock_drift=drift,
        metadata_timeout_s=r.positive(data, "metadata_timeout_seconds", p, d.metadata_timeout_s),
        raft_log_entries=int(r.positive(data, "raft_log_entries", p, d.raft_log_entries)),
        retire_grace_s=r.non_negative(data, "retire_grace_seconds", p, d.retire_grace_s),
        scrub_rate_bytes=r.size(data, "scrub_rate", p, d.scrub_rate_bytes),
        scrub_interval_s=r.non_negative(data, "scrub_interval_seconds", p, d.scrub_interval_s),
        quarantine_retention_s=r.non_negative(data, "quarantine_retention_seconds", p, d.quarantine_retention_s),
        storage_page_cache=page_cache,
        storage_unix_sockets=r.get(data, "storage_unix_sockets", p, bool, d.storage_unix_sockets),
    )


def _table(r: Reader, raw: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise r.error(prefix, "expected a table")
    return raw


def read_users(r: Reader, raw: Any) -> tuple[User, ...]:
    """``[[users]]``: S3 credentials, one access key per user."""
    if not isinstance(raw, list):
        raise r.error("users", "expected an array of tables ([[users]])")
    users: list[User] = []
    for i, u in enumerate(raw):
        p = f"users[{i}]"
        u = _table(r, u, p)
        r.check_keys(u, p, {"name", "access_key", "secret_key"})
        access = r.get(u, "access_key", p, str, required=True)
        secret = r.get(u, "secret_key", p, str, required=True)
        if len(access) < 3 or len(secret) < 8:
            raise r.error(f"{p}.secret_key" if len(access) >= 3 else f"{p}.access_key",
                          "access_key needs at least 3 characters and secret_key at least 8")
        if any(x.access_key == access for x in users):
            raise r.error(f"{p}.access_key", f"access key {access!r} is given to two users")
        users.append(User(name=r.get(u, "name", p, str, access), access_key=access, secret_key=secret))
    return tuple(users)


def read_gateway(r: Reader, data: Mapping[str, Any], p: str) -> GatewayConfig:
    """``[gateway]``: the S3 gateway and its HTTP limits."""
    r.check_keys(data, p, {"id", "host", "port", "admin_port", "workers", "tls_cert", "tls_key", "limits",
                           "read_buffer", "read_buffer_wait_seconds", "bucket_cache_seconds", "splice_reads"})
    d = GatewayConfig()
    workers = r.get(data, "workers", p, int, d.workers)
    if not 1 <= workers <= 256:
        raise r.error(f"{p}.workers", "must be between 1 and 256")
    tls_cert, tls_key = r.tls_files(data, p)
    return GatewayConfig(
        id=r.node_id(data, p, d.id),
        host=r.get(data, "host", p, str, d.host),
        port=r.port(data, "port", p, d.port),
        admin_port=r.port(data, "admin_port", p, d.admin_port),
        workers=workers,
        tls_cert=tls_cert,
        tls_key=tls_key,
        limits=read_http_limits(r, r.table(data, "limits", p), f"{p}.limits"),
        read_buffer_bytes=_at_least(r, data, "read_buffer", p, d.read_buffer_bytes, 4 * MiB),
        read_buffer_wait_s=r.positive(data, "read_buffer_wait_seconds", p, d.read_buffer_wait_s),
        bucket_cache_s=_bucket_cache_seconds(r, data, p, d.bucket_cache_s),
        splice_reads=r.get(data, "splice_reads", p, bool, d.splice_reads),
    )


def _bucket_cache_seconds(r: Reader, data: Mapping[str, Any], p: str, default: float) -> float:
    value = r.non_negative(data, "bucket_cache_seconds", p, default)
    # Every DeleteBucket waits this long: a minute would be a broken DeleteBucket, not a cache.
    if value > 10:
        raise r.error(f"{p}.bucket_cache_seconds", f"{value} is more than 10 (DeleteBucket waits this long)")
    return value


def _at_least(r: Reader, data: Mapping[str, Any], key: str, p: str, default: int, least: int) -> int:
    value = r.size(data, key, p, default)
    if value < least:
        raise r.error(f"{p}.{key}", f"must be at least {least // MiB} MiB")
    return value


def read_storage(r: Reader, item: Mapping[str, Any], p: str) -> StorageNodeConfig:
    """One ``[[storage]]`` node and its failure domains (zone, rack, host)."""
    r.check_keys(item, p, {"id", "host", "port", "admin_port", "data_dir", "zone", "rack", "node_host"})
    node_id = r.node_id(item, p)
    return StorageNodeConfig(
        id=node_id, host=r.get(item, "host", p, str, "127.0.0.1"),
        port=r.port(item, "port", p), admin_port=r.port(item, "admin_port", p),
        data_dir=r.node_data_dir(item, p, node_id), zone=r.get(item, "zone", p, str, "z1"),
        rack=r.get(item, "rack", p, str, "r1"),
        node_host=r.get(item, "node_host", p, str, node_id),
    )


def read_metadata(r: Reader, item: Mapping[str, Any], p: str) -> MetadataNodeConfig:
    """One ``[[metadata]]`` node."""
    r.check_keys(item, p, {"id", "host", "port", "admin_port", "data_dir", "map_size", "drain"})
    node_id = r.node_id(item, p)
    return MetadataNodeConfig(
        id=node_id, host=r.get(item, "host", p, str, "127.0.0.1"),
        port=r.port(item, "port", p), admin_port=r.port(item, "admin_port", p),
        data_dir=r.node_data_dir(item, p, node_id), map_size_bytes=r.size(item, "map_size", p, 1 * GiB),
        drain=r.get(item, "drain", p, bool, False),
    )


def read_repair(r: Reader, data: Mapping[str, Any], p: str) -> RepairConfig:
    """``[repair]``: the reconstructor, the collector and the rebalancer, and their rates."""
    r.check_keys(data, p, {"id", "host", "admin_port", "data_dir", "rebuild_rate", "interval_seconds",
                           "node_down_out_seconds", "gc", "gc_interval_seconds", "rebalance",
                           "rebalance_rate", "rebalance_interval_seconds"})
    d = RepairConfig()
    rate = r.size(data, "rebuild_rate", p, d.rebuild_rate_bytes)
    if rate <= 0:
        raise r.error(f"{p}.rebuild_rate", "must be a positive size per second, such as \"64MiB\"")
    rebalance_rate = r.size(data, "rebalance_rate", p, d.rebalance_rate_bytes)
    if rebalance_rate <= 0:
        raise r.error(f"{p}.rebalance_rate", "must be a positive size per second, such as \"16MiB\"")
    node_id = r.node_id(data, p, d.id)
    return RepairConfig(
        id=node_id,
        host=r.get(data, "host", p, str, d.host),
        admin_port=r.port(data, "admin_port", p, d.admin_port),
        data_dir=r.node_data_dir(data, p, node_id),
        rebuild_rate_bytes=rate,
        interval_s=r.non_negative(data, "interval_seconds", p, d.interval_s),
        node_down_out_s=r.non_negative(data, "node_down_out_seconds", p, d.node_down_out_s),
        gc=r.get(data, "gc", p, bool, d.gc),
        gc_interval_s=r.non_negative(data, "gc_interval_seconds", p, d.gc_interval_s),
        rebalance=r.get(data, "rebalance", p, bool, d.rebalance),
        rebalance_rate_bytes=rebalance_rate,
        rebalance_interval_s=r.non_negative(data, "rebalance_interval_seconds", p, d.rebalance_interval_s),
    )


def check_objstore(r: Reader, cfg: ClusterConfig, env: Mapping[str, str]) -> None:
    """What the object store's daemons need of each other."""
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


