"""The metadata node daemon: LMDB records replicated by Raft, served over msgpack RPC.

Partitions map to replica sets (``partition.py``); each distinct replica set is one Raft group,
and a node runs one :class:`~.raft.group.RaftGroup` for every group it belongs to. Clients talk
to a group's leader; any other member answers ``not_leader`` with the leader it knows.

Client methods (records travel as ``[ts, writer, value]``):

``kv.write`` {ns, p, key, kind, v, value, if_absent, if_match} -> {applied, previous}: ordered by
             the group's log and applied on a majority before the reply. ``applied`` false: the
             condition failed, ``previous`` is what it met.
``kv.get``   {ns, p, key} -> {record}: a linearizable read (ReadIndex).
``kv.scan``  {ns, parts: [[p, start_after], ...], prefix, limit} ->
             {pages: [[p, [[key, record], ...], more, last], ...]}: linearizable per group.
``node.info`` -> {id, partitions, entries, db_bytes, map_bytes, groups, stats}

Peer methods: ``raft.vote``, ``raft.append``, ``raft.snapshot`` (see ``raft/group.py``).
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from headwater.admin import export_stats, serve_admin
from headwater.config import ClusterConfig, MetadataNodeConfig
from headwater.metrics import Registry, add_process_metrics
from headwater.rpc import BadRequest, RpcClient, RpcServer, Unavailable

from .errors import CorruptGroup, CorruptRecord, InvalidKey, NotLeaderError, NotStoredError, RingChanged
from .partition import PartitionMap, group_id
from .raft.core import NotLeader, Timing
from .raft.group import GroupSettings, NotStored, OutcomeUnknown, RaftGroup
from .raft.storage import RaftStorage, check_ring
from .store import Command, OpKind, Record, Store, record_from_wire, record_to_wire

__all__ = ["MetadataNode", "run_metadata_node", "MAX_SCAN_LIMIT"]

log = logging.getLogger("headwater.objstore.metadata.node")

MAX_SCAN_LIMIT = 10_000
# Writer ids travel in every log entry and key the record of applied versions (LMDB keys are at
# most 511 bytes): an entry that cannot be applied must never enter the log.
MAX_WRITER_BYTES = 128


class MetadataNode:
    """One metadata node. ``stats`` counts reads, writes, scans and Raft events."""

    def __init__(self, cluster: ClusterConfig, node: MetadataNodeConfig, *, inline_key_bytes: int | None = None,
                 clock: Any = time.monotonic):
        self.cluster = cluster
        self.config = node
        self.ring = PartitionMap.from_cluster(cluster)
        self.partitions = cluster.objstore.partitions
        self.port: int | None = None
        self.store: Store | None = None
        self._inline_key_bytes = inline_key_bytes
        self._clock = clock
        self.stats: dict[str, int] = {
            "gets": 0, "writes": 0, "conditions_failed": 0, "scans": 0, "scanned_records": 0,
            "not_leader": 0, "corrupt_records": 0, "bad_requests": 0, "records_repaired": 0,
        }
        self._addresses = {m.id: (m.host, m.port) for m in cluster.metadata}
        self._clients: dict[str, RpcClient] = {}
        self.groups: dict[str, RaftGroup] = {}
        self._group_of: dict[int, str] = {}
        self.server = RpcServer(node.id)
        for name, fn in (("kv.write", self._write), ("kv.get", self._get), ("kv.scan", self._scan),
                         ("kv.peek", self._peek),
                         ("node.info", self._info), ("raft.vote", self._raft("on_vote")),
                         ("raft.append", self._raft("on_append")), ("raft.snapshot", self._raft("on_snapshot"))):
            self.server.add(name, fn)

    def statistics(self) -> dict[str, int]:
        """Counters for /metrics, Raft counters summed over the node's groups."""
        out = dict(self.stats)
        if self.store is not None:
            out["corrupt_records"] = self.store.corrupt_reads
        for g in self.groups.values():
            for k, v in g.stats.items():
                out[f"raft_{k}"] = out.get(f"raft_{k}", 0) + v
        out["raft_leading"] = sum(1 for g in self.groups.values() if g.is_leader)
        return out

    def _settings(self) -> GroupSettings:
        o = self.cluster.objstore
        election_s = o.raft_election_timeout_s
        return GroupSettings(timing=Timing(election_s=election_s, heartbeat_s=election_s / 10),
                             rpc_timeout_s=min(o.rpc_timeout_s, max(election_s, 1.0)),
                             compact_after_entries=o.raft_log_entries,
                             keep_entries=max(1, o.raft_log_entries // 10))

    async def _transport(self, peer: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        return (await self._clients[peer].call(method, args, timeout=timeout)).result

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, start the node's Raft groups, listen, ``task_status.started(self)``."""
        cfg = self.config
        self.store = await anyio.to_thread.run_sync(lambda: Store.open(
            cfg.data_dir, map_size_bytes=cfg.map_size_bytes, inline_key_bytes=self._inline_key_bytes))
        try:
            ring = {"partitions": self.ring.partitions, "nodes": sorted(self.ring.nodes),
                    "replicas": self.ring.replicas}
            recorded = check_ring(self.store, ring)
            if recorded is not None:
                raise RingChanged(
                    f"metadata node {cfg.id}: {cfg.data_dir} holds records of a ring with {recorded}, but "
                    f"cluster.toml now describes {ring}; changing the metadata nodes or partitions of a "
                    f"running store is not supported yet (a node with the same id and an empty data_dir "
                    f"may replace a lost one)")
            async with AsyncExitStack() as stack:
                for peer, (host, port) in self._addresses.items():
                    if peer != cfg.id:
                        self._clients[peer] = await stack.enter_async_context(
                            RpcClient(host, port, connect_timeout=1.0, default_timeout=2.0))
                members: dict[str, tuple[str, ...]] = {}
                parts: dict[str, list[int]] = {}
                for p in range(self.partitions):
                    rs = self.ring.replica_set(p)
                    gid = group_id(rs)
                    self._group_of[p] = gid
                    if cfg.id in rs:
                        members[gid] = rs
                        parts.setdefault(gid, []).append(p)
                settings = self._settings()
                for gid, rs in members.items():
                    self.groups[gid] = RaftGroup(group_id=gid, node_id=cfg.id, members=rs,
                                                 storage=RaftStorage(self.store, gid, parts[gid]),
                                                 transport=self._transport, settings=settings, clock=self._clock)
                async with anyio.create_task_group() as tg:
                    for g in self.groups.values():
                        await tg.start(g.run)
                    self.port = await tg.start(self.server.serve, cfg.host, cfg.port)
                    log.info("metadata node %s serving %s on %s:%d (%d raft groups)", cfg.id, cfg.data_dir,
                             cfg.host, self.port, len(self.groups))
                    task_status.started(self)
        finally:
            self.store.close()
            self.store = None

    # --- helpers -------------------------------------------------------------------------------

    def _bad(self, message: str) -> BadRequest:
        self.stats["bad_requests"] += 1
        return BadRequest(message)

    def _partition(self, value: Any) -> int:
        if not isinstance(value, int) or not 0 <= value < self.partitions:
            raise self._bad(f"partition {value!r} is outside 0..{self.partitions - 1}")
        return value

    def _group(self, p: int) -> RaftGroup:
        g = self.groups.get(self._group_of[p])
        if g is None:
            self.stats["not_leader"] += 1
            raise NotLeaderError(f"{self.config.id} holds no replica of partition {p}", leader=None)
        return g

    def _not_leader(self, e: NotLeader) -> NotLeaderError:
        self.stats["not_leader"] += 1
        return NotLeaderError(f"{self.config.id} is not the leader", leader=e.leader)

    async def _barrier(self, g: RaftGroup) -> None:
        try:
            await g.read_barrier()
        except NotLeader as e:
            raise self._not_leader(e) from None

    # --- handlers ------------------------------------------------------------------------------

    def _raft(self, method: str) -> Any:
        async def handler(args: dict, payload: bytes) -> dict[str, Any]:
            g = self.groups.get(args.get("g"))  # type: ignore[arg-type]
            if g is None:
                raise self._bad(f"{self.config.id} is not a member of raft group {args.get('g')!r}")
            return await getattr(g, method)(args)
        return handler

    async def _write(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        self.stats["writes"] += 1
        p = self._partition(args.get("p"))
        try:
            kind = OpKind(args.get("kind"))
            ts, writer = args["v"]
            if_match = args.get("if_match")
            cmd = Command(kind=kind, ns=args["ns"], partition=p, key=args["key"], version=(int(ts), str(writer)),
                          value=args.get("value"), if_absent=bool(args.get("if_absent", False)),
                          if_match=(str(if_match[0]), if_match[1]) if if_match else None)
            if not 0 <= cmd.version[0] < 1 << 63 or not 0 < len(cmd.version[1].encode()) <= MAX_WRITER_BYTES:
                raise ValueError(f"a version is (timestamp 0..2^63, writer id of 1..{MAX_WRITER_BYTES} bytes)")
            if kind is OpKind.PUT and not isinstance(cmd.value, dict):
                raise ValueError("kv.write takes a put with a dict value or a delete")
            self.store._encode(p, cmd.ns, cmd.key)  # validate before it enters the log
        except InvalidKey as e:
            raise self._bad(f"kv.write: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise self._bad(f"kv.write: malformed request: {e}") from None
        g = self._group(p)
        try:
            result = await g.propose(cmd)
        except NotLeader as e:
            raise self._not_leader(e) from None
        except NotStored as e:
            raise NotStoredError(str(e)) from None
        except OutcomeUnknown as e:
            raise Unavailable(str(e), sent=True) from None  # the client resends the same version
        if not result.applied:
            self.stats["conditions_failed"] += 1
        return {"applied": result.applied, "previous": record_to_wire(result.previous)}

    async def _get(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        self.stats["gets"] += 1
        p = self._partition(args.get("p"))
        g = self._group(p)
        await self._barrier(g)
        try:
            rec = self.store.get(args["ns"], p, args["key"])
        except CorruptGroup as e:
            # Many records at once: rebuild this replica from the group (it steps down; the
            # client retries on the next leader).
            await g.resync(str(e))
            raise Unavailable(f"{self.config.id} is rebuilding its replica: {e}", sent=True) from None
        except CorruptRecord:
            rec = await self._repair(g, args["ns"], p, args["key"])
        except (KeyError, InvalidKey) as e:
            raise self._bad(f"kv.get: {e}") from None
        return {"record": record_to_wire(rec), "corrupt": False}

    async def _peek(self, args: dict, payload: bytes) -> dict[str, Any]:
        """This replica's own copy of a record (no consensus), with the log index it reflects."""
        assert self.store is not None
        p = self._partition(args.get("p"))
        g = self._group(p)
        try:
            applied, rec = g.storage.read_applied(args["ns"], p, args["key"])
        except CorruptRecord:
            return {"corrupt": True, "applied": -1}
        except (KeyError, InvalidKey) as e:
            raise self._bad(f"kv.peek: {e}") from None
        return {"corrupt": False, "applied": applied, "record": record_to_wire(rec)}

    async def _repair(self, g: RaftGroup, ns: str, p: int, key: str) -> Record | None:
        """Our copy of ``key`` failed its checksum: take a peer's copy from the same point of the
        log (same applied index, so the same state) and store it here. Unavailable if no peer
        has a good copy at that point within a few seconds."""
        assert self.store is not None
        log.error("metadata record %s/%r is corrupt on %s; repairing it from a peer", ns, key, self.config.id)
        with anyio.move_on_after(5.0):
            while True:
                for peer in g.core.others:
                    try:
                        r = await self._transport(peer, "kv.peek", {"ns": ns, "p": p, "key": key}, 1.0)
                    except Exception:
                        continue
                    if r["corrupt"]:
                        continue
                    async with g.io_lock:  # nothing is applied while we compare and write
                        if r["applied"] != g.core.applied:
                            continue
                        rec = record_from_wire(r["record"])
                        await anyio.to_thread.run_sync(self.store.put_record, ns, p, key, rec)
                    self.stats["records_repaired"] += 1
                    return rec
                await anyio.sleep(0.05)
        raise Unavailable(f"record {ns}/{key!r} is corrupt on {self.config.id} and no peer had a copy",
                          sent=True)

    async def _scan(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        self.stats["scans"] += 1
        ns, parts = args.get("ns"), args.get("parts")
        prefix, limit = args.get("prefix", ""), args.get("limit", 1000)
        if not isinstance(parts, list) or not isinstance(limit, int) or not 1 <= limit <= MAX_SCAN_LIMIT:
            raise self._bad(f"kv.scan needs parts and a limit of 1..{MAX_SCAN_LIMIT}")
        wanted: list[tuple[int, str]] = []
        for item in parts:
            try:
                p, start_after = item
            except (TypeError, ValueError):
                raise self._bad(f"kv.scan: malformed part {item!r}") from None
            wanted.append((self._partition(p), start_after or ""))
        for g in {self._group(p) for p, _ in wanted}:  # one read barrier per group
            await self._barrier(g)
        pages = []
        for p, start_after in wanted:
            try:
                page = self.store.scan(ns, p, prefix=prefix, start_after=start_after, limit=limit)
            except (InvalidKey, ValueError) as e:
                raise self._bad(f"kv.scan: {e}") from None
            self.stats["scanned_records"] += len(page.items)
            pages.append([p, [[k, record_to_wire(r)] for k, r in page.items], page.more, page.last])
            await anyio.lowlevel.checkpoint()  # many partitions: let other calls run between them
        return {"pages": pages}

    async def _info(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        info = await anyio.to_thread.run_sync(self.store.info, self.partitions)
        return {"id": self.config.id, **info, "stats": self.statistics(),
                "groups": {gid: g.status() for gid, g in self.groups.items()}}


async def run_metadata_node(cluster: ClusterConfig, node: MetadataNodeConfig, *, admin: bool = True,
                            task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
    """Run metadata node ``node`` until cancelled; ``task_status.started(MetadataNode)`` once listening.

    Raises :class:`~.errors.DataDirError` (before listening) if ``node.data_dir`` cannot be
    created or written. /healthz and /metrics are served on ``node.admin_port`` unless ``admin``
    is false (in-process tests).
    """
    mn = MetadataNode(cluster, node)
    if not admin:
        await mn.serve(task_status=task_status)
        return
    registry = Registry()
    add_process_metrics(registry)
    export_stats(registry, "headwater_metadata", mn.statistics)

    async def health() -> dict[str, Any]:
        info = await mn._info({}, b"") if mn.store is not None else {}
        groups = info.get("groups", {})
        return {"status": "ok" if mn.store is not None else "starting", "role": "metadata", "id": node.id,
                "entries": info.get("entries"), "db_bytes": info.get("db_bytes"),
                "raft": {gid: {k: g[k] for k in ("role", "term", "leader", "commit", "applied")}
                         for gid, g in groups.items()}}

    async with anyio.create_task_group() as tg:
        started = await tg.start(mn.serve)
        await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                       registry=registry, task_status=task_status))
        task_status.started(started)
