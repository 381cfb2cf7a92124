"""The metadata node daemon: one LMDB store served over msgpack RPC.

Methods (arguments and results are msgpack maps; records travel as ``[ts, writer, value]``,
``value`` None for a tombstone):

``kv.get``   {ns, p, key} -> {record, corrupt}
``kv.apply`` {ops: [op, ...]} -> {results: [[status, previous-record], ...]}; the ops commit in
             one transaction, synced to disk before the reply. Concurrent calls share a commit
             (group commit): one fsync for every call that arrived while the last one ran.
``kv.scan``  {ns, parts: [[p, start_after], ...], prefix, limit, tombstones} ->
             {pages: [[p, [[key, record], ...], more, last], ...]}
``node.info`` -> {id, partitions, entries, db_bytes, map_bytes, stats}

The node knows nothing of quorums: it applies what it is sent, last writer wins, and reports.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from headwater.admin import export_stats, serve_admin
from headwater.metrics import Registry, add_process_metrics
from headwater.config import ClusterConfig, MetadataNodeConfig
from headwater.rpc import BadRequest, RpcServer

from .errors import CorruptRecord, InvalidKey
from .store import ApplyResult, Op, Store, record_to_wire

__all__ = ["MetadataNode", "run_metadata_node", "MAX_SCAN_LIMIT"]

log = logging.getLogger("headwater.objstore.metadata.node")

MAX_SCAN_LIMIT = 10_000
MAX_OPS_PER_CALL = 1_000


class _GroupCommit:
    """Queues apply calls and commits everything queued in one transaction on a worker thread."""

    def __init__(self, store: Store, stats: dict[str, int]):
        self._store = store
        self._stats = stats
        self._queue: list[tuple[list[Op], dict[str, Any]]] = []
        self._wake = anyio.Event()

    async def submit(self, ops: list[Op]) -> list[ApplyResult]:
        slot: dict[str, Any] = {"done": anyio.Event()}
        self._queue.append((ops, slot))
        self._wake.set()
        await slot["done"].wait()
        if "error" in slot:
            raise slot["error"]
        return slot["results"]

    async def run_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.run_once()

    async def run_once(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        flat = [op for ops, _ in batch for op in ops]
        try:
            # Not abandoned on cancellation: a commit that started finishes before the node stops.
            results = await anyio.to_thread.run_sync(self._store.apply_batch, flat)
        except Exception as e:
            if len(batch) > 1:  # one bad call must not fail its neighbours: retry them one by one
                for ops, slot in batch:
                    try:
                        slot["results"] = await anyio.to_thread.run_sync(self._store.apply_batch, ops)
                    except Exception as e1:
                        slot["error"] = e1
                    slot["done"].set()
                return
            batch[0][1]["error"] = e
            batch[0][1]["done"].set()
            return
        self._stats["commits"] += 1
        i = 0
        for ops, slot in batch:
            slot["results"] = results[i:i + len(ops)]
            i += len(ops)
            slot["done"].set()


class MetadataNode:
    """One metadata node. ``stats`` counts gets, puts, deletes, scans, stale writes and more."""

    def __init__(self, cluster: ClusterConfig, node: MetadataNodeConfig, *, inline_key_bytes: int | None = None):
        self.cluster = cluster
        self.config = node
        self.partitions = cluster.objstore.partitions
        self.port: int | None = None
        self.store: Store | None = None
        self._inline_key_bytes = inline_key_bytes
        self.stats: dict[str, int] = {
            "gets": 0, "puts": 0, "deletes": 0, "reverts": 0, "scans": 0, "scanned_records": 0,
            "stale_writes": 0, "conflicts": 0, "commits": 0, "corrupt_records": 0, "bad_requests": 0,
        }
        self.server = RpcServer(node.id)
        self.server.add("kv.get", self._get)
        self.server.add("kv.apply", self._apply)
        self.server.add("kv.scan", self._scan)
        self.server.add("node.info", self._info)
        self._commit: _GroupCommit | None = None

    def statistics(self) -> dict[str, int]:
        """Counters for /metrics (monotonic, except ``corrupt_records`` which mirrors the store)."""
        if self.store is not None:
            self.stats["corrupt_records"] = self.store.corrupt_reads
        return dict(self.stats)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, listen, ``task_status.started(self)``, serve until cancelled."""
        cfg = self.config
        self.store = await anyio.to_thread.run_sync(lambda: Store.open(
            cfg.data_dir, map_size_bytes=cfg.map_size_bytes, inline_key_bytes=self._inline_key_bytes))
        self._commit = _GroupCommit(self.store, self.stats)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._commit.run_forever)
                self.port = await tg.start(self.server.serve, cfg.host, cfg.port)
                log.info("metadata node %s serving %s on %s:%d", cfg.id, cfg.data_dir, cfg.host, self.port)
                task_status.started(self)
        finally:
            self.store.close()
            self.store = None

    # --- handlers ------------------------------------------------------------------------------

    def _bad(self, message: str) -> BadRequest:
        self.stats["bad_requests"] += 1
        return BadRequest(message)

    def _partition(self, value: Any) -> int:
        if not isinstance(value, int) or not 0 <= value < self.partitions:
            raise self._bad(f"partition {value!r} is outside 0..{self.partitions - 1}")
        return value

    async def _get(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        self.stats["gets"] += 1
        p = self._partition(args.get("p"))
        try:
            rec = self.store.get(args["ns"], p, args["key"])
        except CorruptRecord:
            return {"record": None, "corrupt": True}
        except (KeyError, InvalidKey) as e:
            raise self._bad(f"kv.get: {e}") from None
        return {"record": record_to_wire(rec), "corrupt": False}

    async def _apply(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self._commit is not None
        raw = args.get("ops")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_OPS_PER_CALL:
            raise self._bad(f"kv.apply needs 1..{MAX_OPS_PER_CALL} ops")
        try:
            ops = [Op.from_wire(w) for w in raw]
        except ValueError as e:
            raise self._bad(str(e)) from None
        for op in ops:
            self._partition(op.partition)
        try:
            results = await self._commit.submit(ops)
        except InvalidKey as e:
            raise self._bad(str(e)) from None
        for op, r in zip(ops, results):
            self.stats[{"put": "puts", "delete": "deletes", "revert": "reverts"}[op.kind]] += 1
            if r.status == "stale":
                self.stats["stale_writes"] += 1
            elif r.status == "conflict":
                self.stats["conflicts"] += 1
        return {"results": [[str(r.status), record_to_wire(r.previous)] for r in results]}

    async def _scan(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        self.stats["scans"] += 1
        ns, parts = args.get("ns"), args.get("parts")
        prefix, limit = args.get("prefix", ""), args.get("limit", 1000)
        tombstones = bool(args.get("tombstones", False))
        if not isinstance(parts, list) or not isinstance(limit, int) or not 1 <= limit <= MAX_SCAN_LIMIT:
            raise self._bad(f"kv.scan needs parts and a limit of 1..{MAX_SCAN_LIMIT}")
        pages = []
        for item in parts:
            try:
                p, start_after = item
            except (TypeError, ValueError):
                raise self._bad(f"kv.scan: malformed part {item!r}") from None
            p = self._partition(p)
            try:
                page = self.store.scan(ns, p, prefix=prefix, start_after=start_after or "", limit=limit,
                                       include_tombstones=tombstones)
            except (InvalidKey, ValueError) as e:
                raise self._bad(f"kv.scan: {e}") from None
            self.stats["scanned_records"] += len(page.items)
            pages.append([p, [[k, record_to_wire(r)] for k, r in page.items], page.more, page.last])
            await anyio.lowlevel.checkpoint()  # many partitions: let other calls run between them
        return {"pages": pages}

    async def _info(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        info = await anyio.to_thread.run_sync(self.store.info, self.partitions)
        return {"id": self.config.id, **info, "stats": self.statistics()}


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
        return {"status": "ok" if mn.store is not None else "starting", "role": "metadata", "id": node.id,
                "entries": info.get("entries"), "db_bytes": info.get("db_bytes")}

    async with anyio.create_task_group() as tg:
        started = await tg.start(mn.serve)
        await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                       registry=registry, task_status=task_status))
        task_status.started(started)
