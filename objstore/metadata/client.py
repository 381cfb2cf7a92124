"""What the gateway imports: :class:`MetadataClient`, records as :class:`Entry`.

``MetadataClient`` is the public surface: namespaces and keys, conditions, versions from a hybrid
logical clock. How a write reaches the replicas is :class:`QuorumReplication`'s business alone,
so the Raft issue replaces that class (same ``read`` / ``write`` / ``scan`` / ``health``) and
nothing above it.

Quorum rules (n = replicas of the partition, q = n // 2 + 1):

* A write is acknowledged once q replicas stored it durably (LMDB synced). If it cannot reach q,
  the replicas it did reach are reverted to what they held before (best effort), and the caller
  gets QuorumUnavailable: the outcome is unknown, as for any 503 (if the revert cannot reach a
  replica either, a later read repairs the write onto the others and it survives).
* A read asks all n, returns once q answered, and gives the highest version. Replicas that
  answered with an older version or nothing (also those answering after the caller returned)
  are repaired in the background with that version, at once if q answers held it, otherwise
  only if it is still there ``settle_s`` later (it may be a failed write being reverted).
* Conditional writes (``if_absent``, ``if_match``) read a quorum (re-reading briefly while the
  newest record is held by fewer than q, i.e. still in flight), check the condition here, then
  write with ``expect`` = the version read: a replica holding anything newer refuses. Of several
  coordinators racing on one key, at most one reaches q; the others revert what they wrote,
  back off, re-read and then fail the condition (or, if nobody won, try again; WriteConflict
  after a few rounds). The winner re-sends its write to replicas that refused it. This is not
  linearizable: a coordinator that dies between writing and reverting leaves a write whose
  outcome is unknown, and a read can return a write that is reverted a moment later. Issue 4
  replaces this class with one Raft group per replica set, which closes these windows.
* Versions are ``(timestamp_ns, writer_id)`` from a hybrid logical clock: never behind the newest
  version this client has seen, so a conditional write always outranks the record it checked.
  ``writer_id`` must be unique per process (e.g. ``s3-w1``, ``s3-w2``).
* Tombstones are kept forever in this issue (purging them safely needs every replica to agree).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import logging
import random
import time
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import anyio
import anyio.abc

from headwater.config import ClusterConfig
from headwater.rpc import RpcClient

from .errors import ConditionFailed, InvalidKey, MetadataError, QuorumUnavailable, WriteConflict
from .partition import PartitionMap, majority
from .store import (MIN_VERSION, Op, OpKind, Record, Status, Version, check_key, check_ns,
                    record_from_wire)

__all__ = ["Entry", "MetadataClient", "QuorumReplication", "HybridClock"]

log = logging.getLogger("headwater.objstore.metadata.client")

_STALE_RETRIES = 3
_REPAIR_BATCH = 500
_SETTLE_DELAYS_S = (0.0, 0.05, 0.25, 1.0)
_CONDITION_ATTEMPTS = 8
_STRAGGLER_GRACE_S = 0.02
_UNCONFIRMED_REREADS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A live record: ``value`` as the gateway stored it, ``version`` = (timestamp_ns, writer_id)."""

    ns: str
    key: str
    value: dict[str, Any]
    version: Version


def _entry(ns: str, key: str, rec: Record | None) -> Entry | None:
    if rec is None or rec.value is None:
        return None
    return Entry(ns=ns, key=key, value=rec.value, version=rec.version)


class HybridClock:
    """Versions that follow the wall clock but never go backwards or behind what was observed."""

    def __init__(self, writer_id: str, clock: Callable[[], int] = time.time_ns):
        if not writer_id:
            raise ValueError("writer_id must be a non-empty string")
        self.writer_id = writer_id
        self._clock = clock
        self._last = 0

    def next(self) -> Version:
        ts = max(int(self._clock()), self._last + 1)
        self._last = ts
        return (ts, self.writer_id)

    def wall(self) -> int:
        """The wall clock alone (ns), to judge how old a version is."""
        return int(self._clock())

    def observe(self, version: Version) -> None:
        if version[0] > self._last:
            self._last = version[0]


class _Gather:
    """Answers to one call sent to several nodes, collected as they arrive.

    ``sufficient`` is set once ``enough(self)`` holds or every node has answered; ``complete``
    once every node has answered (or failed). Errors are kept per node, never raised.
    """

    def __init__(self, nodes: list[str], enough: Callable[[_Gather], bool]):
        self.nodes = nodes
        self.results: dict[str, Any] = {}
        self.errors: dict[str, Exception] = {}
        self._enough = enough
        self.sufficient = anyio.Event()
        self.complete = anyio.Event()

    def add(self, node: str, result: Any = None, error: Exception | None = None) -> None:
        if error is None:
            self.results[node] = result
        else:
            self.errors[node] = error
        if len(self.results) + len(self.errors) == len(self.nodes):
            self.complete.set()
            self.sufficient.set()
        elif self._enough(self):
            self.sufficient.set()


@dataclass(slots=True)
class _Cursor:
    """Where a scan stands in one partition: live entries fetched but not yet yielded."""

    partition: int
    after: str
    buf: collections.deque[tuple[str, Record]]
    done: bool = False


class QuorumReplication:
    """Reads and writes a partition's replica set by majority quorum (see the module docstring)."""

    def __init__(self, cluster: ClusterConfig, *, clock: HybridClock, timeout_s: float,
                 connect_timeout_s: float = 3.0, settle_s: float = 0.5, rng: random.Random | None = None):
        if not cluster.metadata:
            raise MetadataError("the cluster has no [[metadata]] nodes")
        self.ring = PartitionMap.from_cluster(cluster)
        self.clock = clock
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.settle_s = settle_s
        self._rng = rng or random.Random()
        self._addresses = {m.id: (m.host, m.port) for m in cluster.metadata}
        self._clients: dict[str, RpcClient] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.stats = {"reads": 0, "writes": 0, "scans": 0, "repairs": 0, "reverts": 0,
                      "conflicts": 0, "quorum_failures": 0, "stale_retries": 0}

    async def open(self, stack: AsyncExitStack) -> None:
        for node, (host, port) in self._addresses.items():
            self._clients[node] = await stack.enter_async_context(
                RpcClient(host, port, connect_timeout=self.connect_timeout_s, default_timeout=self.timeout_s))
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(self._tg.cancel_scope.cancel)  # runs before the task group exits

    # --- plumbing ------------------------------------------------------------------------------

    async def _call(self, node: str, method: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        return (await self._clients[node].call(method, args, timeout=timeout or self.timeout_s)).result

    def _gather(self, calls: dict[str, tuple[str, dict[str, Any]]], enough: Callable[[_Gather], bool]) -> _Gather:
        """Send every call in the background; the caller waits on ``sufficient``."""
        assert self._tg is not None, "use MetadataClient as `async with MetadataClient(...)`"
        g = _Gather(list(calls), enough)

        async def one(node: str, method: str, args: dict[str, Any]) -> None:
            try:
                result = await self._call(node, method, args)
            except Exception as e:  # an unreachable or failing replica is an answer too
                g.add(node, error=e)
            else:
                g.add(node, result)

        for node, (method, args) in calls.items():
            self._tg.start_soon(one, node, method, args)
        return g

    async def _wait(self, g: _Gather) -> None:
        with anyio.move_on_after(self.timeout_s + self.connect_timeout_s + 1.0):
            await g.sufficient.wait()

    def _background(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._tg is not None

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception("metadata background task %s failed", getattr(fn, "__name__", fn))
        self._tg.start_soon(guarded)

    async def _apply_on(self, node: str, ops: list[Op]) -> None:
        for i in range(0, len(ops), _REPAIR_BATCH):
            await self._call(node, "kv.apply", {"ops": [op.to_wire() for op in ops[i:i + _REPAIR_BATCH]]})

    # --- reads ---------------------------------------------------------------------------------

    async def read(self, ns: str, key: str) -> Record | None:
        """The newest record (tombstones included) among a majority of the replicas."""
        return (await self._read(ns, key))[0]

    async def _read(self, ns: str, key: str) -> tuple[Record | None, bool]:
        """(newest record, whether a majority of the answers hold exactly it).

        An unconfirmed newest record is a write still in flight, one that failed and is being
        reverted, or one a down replica's absence hides; it is repaired only if it is still
        there after ``settle_s``, so a failed write is not spread by reads in the meantime.
        """
        self.stats["reads"] += 1
        p, nodes = self.ring.nodes_for(ns, key)
        q = majority(len(nodes))
        g = self._gather({n: ("kv.get", {"ns": ns, "p": p, "key": key}) for n in nodes},
                         lambda g: len(g.results) >= q or len(g.errors) > len(nodes) - q)
        await self._wait(g)
        answers = [record_from_wire(r["record"]) for r in list(g.results.values())]
        if len(answers) < q:
            self.stats["quorum_failures"] += 1
            raise QuorumUnavailable(f"read {ns}/{key!r}", needed=q, answered=len(answers), errors=g.errors)
        best = self._newest(answers)
        if best is None:
            return None, True
        confirmed = sum(1 for r in answers if r is not None and r.version == best.version) >= q
        self.clock.observe(best.version)
        self._background(self._repair_read, g, ns, p, key, best, confirmed)
        return best, confirmed

    @staticmethod
    def _newest(records: Any) -> Record | None:
        return max((r for r in records if r is not None), key=lambda r: r.version, default=None)

    async def _repair_read(self, g: _Gather, ns: str, p: int, key: str, best: Record, confirmed: bool) -> None:
        if not confirmed:
            await anyio.sleep(self.settle_s)
            nodes = self.ring.replica_set(p)
            g = self._gather({n: ("kv.get", {"ns": ns, "p": p, "key": key}) for n in nodes}, lambda g: False)
            with anyio.move_on_after(self.timeout_s + self.connect_timeout_s + 1.0):
                await g.complete.wait()
            current = [record_from_wire(r["record"]) for r in list(g.results.values())]
            if not any(r is not None and r.version == best.version for r in current):
                return  # it was reverted (or superseded and reverted): nothing to spread
        with anyio.move_on_after(self.timeout_s + self.connect_timeout_s + 1.0):
            await g.complete.wait()
        kind = OpKind.PUT if best.value is not None else OpKind.DELETE
        op = Op(ns=ns, partition=p, key=key, kind=kind, version=best.version, value=best.value)
        for node, r in list(g.results.items()):
            rec = record_from_wire(r["record"])
            if rec is None or rec.version < best.version:
                self.stats["repairs"] += 1
                try:
                    await self._apply_on(node, [op])
                except Exception as e:
                    log.info("read repair of %s/%r on %s failed: %r", ns, key, node, e)

    # --- writes --------------------------------------------------------------------------------

    async def write(self, ns: str, key: str, value: dict[str, Any] | None, *,
                    condition: Callable[[Record | None], bool] | None = None,
                    describe: str = "") -> tuple[Record, Record | None]:
        """Store ``value`` (None: a tombstone) under a new version once a majority holds it.

        Returns (the record written, the newest record it replaced or None). With ``condition``,
        checks it against a quorum read first and raises ConditionFailed when it does not hold.
        A conditional write that loses a race without anyone winning (each racer reached a
        minority) reverts, backs off and tries again; WriteConflict after ``_CONDITION_ATTEMPTS``.
        """
        self.stats["writes"] += 1
        p, nodes = self.ring.nodes_for(ns, key)
        q = majority(len(nodes))
        attempts = _CONDITION_ATTEMPTS if condition is not None else _STALE_RETRIES
        for attempt in range(attempts):
            expect: Version | None = None
            if condition is not None:
                cur, confirmed = await self._read(ns, key)
                for _ in range(_UNCONFIRMED_REREADS):
                    if confirmed:
                        break
                    await anyio.sleep(self._rng.uniform(0.005, 0.05))  # let an in-flight write settle
                    cur, confirmed = await self._read(ns, key)
                if not condition(cur):
                    self.stats["conflicts"] += 1
                    raise ConditionFailed(ns, key, _entry(ns, key, cur), describe)
                expect = cur.version if cur is not None else MIN_VERSION
            version = self.clock.next()
            op = Op(ns=ns, partition=p, key=key, kind=OpKind.PUT if value is not None else OpKind.DELETE,
                    version=version, value=value, expect=expect)

            def acked(g: _Gather) -> int:
                return sum(1 for r in g.results.values() if r["results"][0][0] in (Status.APPLIED, Status.SAME))

            g = self._gather({n: ("kv.apply", {"ops": [op.to_wire()]}) for n in nodes},
                             lambda g: acked(g) >= q or len(g.nodes) - (len(g.results) + len(g.errors) - acked(g)) < q)
            await self._wait(g)
            outcomes = {n: (Status(r["results"][0][0]), record_from_wire(r["results"][0][1]))
                        for n, r in list(g.results.items())}
            for _status, prev in outcomes.values():
                if prev is not None:
                    self.clock.observe(prev.version)
            acks = [prev for status, prev in outcomes.values() if status in (Status.APPLIED, Status.SAME)]
            if len(acks) >= q:
                previous = self._newest(r for r in acks if r is None or r.version != version)
                if len(acks) < len(nodes):
                    self._background(self._complete_write, g, op)
                return Record(version=version, value=value), previous

            # Undo what landed before answering, so a read right after this error cannot find
            # the failed write on one replica and repair it onto the others; late ones follow.
            reverted: set[str] = set()
            with anyio.move_on_after(self.timeout_s):
                await self._revert(g, op, reverted)
            if not g.complete.is_set():
                self._background(self._revert_late, g, op, reverted)
            refused = [prev for status, prev in outcomes.values() if status in (Status.CONFLICT, Status.STALE)]
            if refused and len(acks) + len(refused) >= q:
                # Someone else's write got there first. Unconditional: go after it with a newer
                # version. Conditional: back off, then re-read; the condition decides.
                self.stats["stale_retries"] += 1
                if condition is not None:
                    await anyio.sleep(self._rng.uniform(0.005, 0.03) * (attempt + 1))
                continue
            self.stats["quorum_failures"] += 1
            raise QuorumUnavailable(f"write {ns}/{key!r}", needed=q, answered=len(acks), errors=g.errors)
        self.stats["conflicts"] += 1
        raise WriteConflict(f"{ns}/{key!r}: {attempts} attempts met concurrent writes; try again")

    async def _complete_write(self, g: _Gather, op: Op) -> None:
        """After a write won a quorum: bring replicas that refused it (they held a racing loser's
        write, which its coordinator is reverting) up to date, so they need no read repair."""
        with anyio.move_on_after(self.timeout_s + self.connect_timeout_s + 1.0):
            await g.complete.wait()
        fix = dataclasses.replace(op, expect=None)
        for node, r in list(g.results.items()):
            if r["results"][0][0] not in (Status.CONFLICT, Status.STALE):
                continue
            for delay in _SETTLE_DELAYS_S:
                await anyio.sleep(delay)
                try:
                    reply = await self._call(node, "kv.apply", {"ops": [fix.to_wire()]})
                except Exception:
                    break
                status, current = reply["results"][0]
                if status != Status.STALE:
                    break
                cur = record_from_wire(current)
                if cur is not None and cur.value == op.value:
                    break  # a newer write of the same value: nothing to settle

    async def _revert(self, g: _Gather, op: Op, reverted: set[str]) -> None:
        """Undo ``op`` on every replica that has answered that it applied it (once per replica)."""
        async def one(node: str, prev: Record | None) -> None:
            self.stats["reverts"] += 1
            undo = Op(ns=op.ns, partition=op.partition, key=op.key, kind=OpKind.REVERT,
                      version=op.version, restore=prev)
            try:
                await self._apply_on(node, [undo])
            except Exception as e:
                log.warning("could not revert %s/%r on %s: %r", op.ns, op.key, node, e)

        async with anyio.create_task_group() as tg:
            for node, r in list(g.results.items()):
                status, prev = r["results"][0]
                if node not in reverted and status == Status.APPLIED:
                    reverted.add(node)
                    tg.start_soon(one, node, record_from_wire(prev))

    async def _revert_late(self, g: _Gather, op: Op, reverted: set[str]) -> None:
        with anyio.move_on_after(self.timeout_s + self.connect_timeout_s + 1.0):
            await g.complete.wait()
        await self._revert(g, op, reverted)

    # --- scans ---------------------------------------------------------------------------------

    async def scan(self, ns: str, *, prefix: str = "", start_after: str = "",
                   page_size: int = 256) -> AsyncIterator[tuple[str, Record]]:
        """Live records of ``ns`` in key order, merged across every partition."""
        self.stats["scans"] += 1
        cursors = [_Cursor(partition=p, after=start_after, buf=collections.deque())
                   for p in range(self.ring.partitions)]
        heap: list[tuple[str, int]] = []
        while True:
            # Every unfinished partition must hold its next entry before the smallest is yielded.
            need = [c for c in cursors if not c.buf and not c.done]
            if need:
                await self._fetch(ns, prefix, need, page_size)
                for c in need:
                    if c.buf:
                        heapq.heappush(heap, (c.buf[0][0], c.partition))
                continue
            if not heap:
                return
            _, p = heapq.heappop(heap)
            c = cursors[p]
            yield c.buf.popleft()
            if c.buf:
                heapq.heappush(heap, (c.buf[0][0], p))

    async def _fetch(self, ns: str, prefix: str, cursors: list[_Cursor], page_size: int) -> None:
        """One page for each cursor, one request per node, merged per partition by version."""
        by_node: dict[str, list[list[Any]]] = {}
        for c in cursors:
            for n in self.ring.replica_set(c.partition):
                by_node.setdefault(n, []).append([c.partition, c.after])
        quorum = {c.partition: self.ring.quorum(c.partition) for c in cursors}

        def tally(g: _Gather) -> tuple[dict[int, int], dict[int, int]]:
            ok: dict[int, int] = collections.Counter()
            bad: dict[int, int] = collections.Counter()
            for n in g.results:
                for p, _ in by_node[n]:
                    ok[p] += 1
            for n in g.errors:
                for p, _ in by_node[n]:
                    bad[p] += 1
            return ok, bad

        def enough(g: _Gather) -> bool:
            ok, bad = tally(g)
            return (all(ok[p] >= q for p, q in quorum.items())
                    or any(bad[p] > len(self.ring.replica_set(p)) - q for p, q in quorum.items()))

        args = {"ns": ns, "prefix": prefix, "limit": page_size, "tombstones": True}
        g = self._gather({n: ("kv.scan", {**args, "parts": parts}) for n, parts in by_node.items()}, enough)
        await self._wait(g)
        with anyio.move_on_after(_STRAGGLER_GRACE_S):  # more answers, more repairs confirmed
            await g.complete.wait()
        pages: dict[int, dict[str, tuple[list[Any], bool, str | None]]] = collections.defaultdict(dict)
        for n, r in list(g.results.items()):
            for p, items, more, last in r["pages"]:
                pages[p][n] = (items, more, last)
        repairs: dict[str, list[Op]] = collections.defaultdict(list)
        now = self.clock.wall()
        for c in cursors:
            answers = pages.get(c.partition, {})
            if len(answers) < quorum[c.partition]:
                raise QuorumUnavailable(f"scan {ns} partition {c.partition}", needed=quorum[c.partition],
                                        answered=len(answers), errors=g.errors)
            bounds = [last for _items, more, last in answers.values() if more and last is not None]
            bound = min(bounds) if bounds else None
            held: dict[str, dict[str, Record]] = {}
            best: dict[str, Record] = {}
            for n, (items, _more, _last) in answers.items():
                mine = held[n] = {}
                for k, w in items:
                    if bound is not None and k > bound:
                        break
                    rec = record_from_wire(w)
                    assert rec is not None
                    mine[k] = rec
                    if k not in best or rec.version > best[k].version:
                        best[k] = rec
            for k in sorted(best):
                rec = best[k]
                self.clock.observe(rec.version)
                if rec.value is not None:
                    c.buf.append((k, rec))
                holders = sum(1 for mine in held.values() if k in mine and mine[k].version == rec.version)
                if holders < quorum[c.partition] and now - rec.version[0] < self.settle_s * 1e9:
                    continue  # possibly a failed write being reverted: point reads repair it later
                for n, mine in held.items():
                    have = mine.get(k)
                    if have is None or have.version < rec.version:
                        repairs[n].append(Op(ns=ns, partition=c.partition, key=k, version=rec.version,
                                             kind=OpKind.PUT if rec.value is not None else OpKind.DELETE,
                                             value=rec.value))
            if bound is None:
                c.done = True
            else:
                c.after = bound
        for n, ops in repairs.items():
            self.stats["repairs"] += len(ops)
            self._background(self._apply_on, n, ops)

    # --- health --------------------------------------------------------------------------------

    async def node_info(self, timeout_s: float = 2.0) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}

        async def one(node: str) -> None:
            try:
                out[node] = await self._call(node, "node.info", {}, timeout=timeout_s)
            except Exception:
                out[node] = None

        async with anyio.create_task_group() as tg:
            for node in self._clients:
                tg.start_soon(one, node)
        return out

    async def health(self, timeout_s: float = 2.0) -> dict[str, bool]:
        return {n: info is not None for n, info in (await self.node_info(timeout_s)).items()}


class MetadataClient:
    """The metadata service as the gateway sees it.

    ``async with MetadataClient(cluster, writer_id="s3-w1") as meta: await meta.put(...)``.
    Keys are any UTF-8 string up to 4096 bytes; namespaces up to 255 bytes without NUL.
    """

    def __init__(self, cluster: ClusterConfig, *, writer_id: str, clock: Callable[[], int] = time.time_ns,
                 timeout_s: float | None = None, connect_timeout_s: float = 3.0):
        self.cluster = cluster
        self.writer_id = writer_id
        self.clock = HybridClock(writer_id, clock)
        self.replication = QuorumReplication(
            cluster, clock=self.clock, connect_timeout_s=connect_timeout_s,
            timeout_s=cluster.objstore.rpc_timeout_s if timeout_s is None else timeout_s)
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> MetadataClient:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.replication.open(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return await stack.__aexit__(*exc_info)

    def statistics(self) -> dict[str, int]:
        return dict(self.replication.stats)

    async def get(self, ns: str, key: str) -> Entry | None:
        """The live entry for ``key``, read from a majority of its replicas; None if absent."""
        _check(ns, key)
        return _entry(ns, key, await self.replication.read(ns, key))

    async def put(self, ns: str, key: str, value: dict[str, Any], *, if_absent: bool = False,
                  if_match: tuple[str, Any] | None = None) -> Entry:
        """Store ``value``; acknowledged once a majority of replicas synced it.

        ``if_absent``: only if no live entry exists. ``if_match=(field, expected)``: only if a
        live entry exists and ``entry.value[field] == expected``. Raises ConditionFailed (with
        ``.current``) or QuorumUnavailable.
        """
        entry, _previous = await self.replace(ns, key, value, if_absent=if_absent, if_match=if_match)
        return entry

    async def replace(self, ns: str, key: str, value: dict[str, Any], *, if_absent: bool = False,
                      if_match: tuple[str, Any] | None = None) -> tuple[Entry, Entry | None]:
        """``put``, also returning the live entry it replaced (None if there was none)."""
        _check(ns, key)
        if not isinstance(value, dict):
            raise TypeError(f"a metadata value is a dict, got {type(value).__name__}")
        condition, describe = _condition(if_absent, if_match)
        rec, prev = await self.replication.write(ns, key, value, condition=condition, describe=describe)
        return Entry(ns=ns, key=key, value=value, version=rec.version), _entry(ns, key, prev)

    async def delete(self, ns: str, key: str, *, if_match: tuple[str, Any] | None = None) -> Entry | None:
        """Delete ``key`` (a tombstone); returns the live entry it replaced, or None."""
        _check(ns, key)
        condition, describe = _condition(False, if_match)
        _rec, prev = await self.replication.write(ns, key, None, condition=condition, describe=describe)
        return _entry(ns, key, prev)

    async def scan(self, ns: str, *, prefix: str = "", start_after: str = "", limit: int = 1000) -> list[Entry]:
        """Up to ``limit`` live entries of ``ns`` in key order, keys starting with ``prefix`` and
        greater than ``start_after``; every partition is read from a majority of its replicas."""
        if limit < 1:
            return []
        page = max(16, min(1000, 2 * limit // self.replication.ring.partitions + 16, limit + 1))
        out: list[Entry] = []
        async with aclosing(self.scan_iter(ns, prefix=prefix, start_after=start_after, page_size=page)) as it:
            async for e in it:
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    async def scan_iter(self, ns: str, *, prefix: str = "", start_after: str = "",
                        page_size: int = 256) -> AsyncIterator[Entry]:
        """Every live entry of ``ns`` in key order, fetched ``page_size`` per partition at a time.

        An async generator: stop early inside ``async with contextlib.aclosing(...)``."""
        check_ns(ns), check_key(prefix), check_key(start_after)
        async with aclosing(self.replication.scan(ns, prefix=prefix, start_after=start_after,
                                                  page_size=page_size)) as it:
            async for key, rec in it:
                assert rec.value is not None
                yield Entry(ns=ns, key=key, value=rec.value, version=rec.version)

    async def health(self) -> dict[str, bool]:
        """Node id -> whether it answered ``node.info`` within two seconds."""
        return await self.replication.health()

    async def node_info(self) -> dict[str, dict[str, Any] | None]:
        """Node id -> its ``node.info`` (partitions, entries, db_bytes, stats), None if down."""
        return await self.replication.node_info()


def _check(ns: str, key: str) -> None:
    check_ns(ns)
    check_key(key)
    if key == "":
        raise InvalidKey("a key cannot be empty")


def _condition(if_absent: bool, if_match: tuple[str, Any] | None
               ) -> tuple[Callable[[Record | None], bool] | None, str]:
    if if_absent and if_match is not None:
        raise ValueError("give if_absent or if_match, not both")
    if if_absent:
        return (lambda cur: cur is None or cur.value is None), "if_absent"
    if if_match is not None:
        field, expected = if_match
        return ((lambda cur: cur is not None and cur.value is not None and cur.value.get(field) == expected),
                f"if_match {field}={expected!r}")
    return None, ""
