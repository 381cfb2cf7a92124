"""What the gateway imports: :class:`MetadataClient`, records as :class:`Entry`.

``MetadataClient`` is the public surface: namespaces and keys, conditions, versions from a hybrid
logical clock. :class:`RaftReplication` routes each request to the leader of the Raft group that
holds the key's partition (see ``node.py``), so:

* every read is linearizable: it sees every write acknowledged before it started;
* conditional writes (``if_absent``, ``if_match``) are checked where the log is applied, so of
  many racing ``If-None-Match: *`` writes exactly one wins, and ``If-Match`` is a compare-and-swap;
* concurrent unconditional writes to a key land in one order, the same on every replica;
* a write that failed before a leader took it stored nothing (QuorumUnavailable); a write whose
  answer was lost may have committed (WriteOutcomeUnknown). Both are 503 to an S3 client.

Versions are ``(timestamp_ns, writer_id)`` from a hybrid logical clock; the log, not the
version, decides which write is last.
"""

from __future__ import annotations

import collections
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
from headwater.rpc import ClientPool, DeadlineExceeded, Unavailable, cluster_secret

from .errors import (ConditionFailed, InvalidKey, MetadataError, NotLeaderError, NotStoredError, QuorumUnavailable,
                     WriteOutcomeUnknown)
from .failover import MemberStanding, Route
from .merge import StreamMerge, PageWanted
from .partition import PartitionMap
from .store import Record, Version, check_key, check_ns, record_from_wire

__all__ = ["Entry", "MetadataClient", "RaftReplication", "HybridClock", "MAX_LIST_PAGE"]

log = logging.getLogger("headwater.objstore.metadata.client")

# The most names one group is asked for in one kv.list round (the node allows 10,000); above
# the 1,001 a gateway page asks for.
MAX_LIST_PAGE = 2000



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
        if not writer_id or len(writer_id.encode()) > 128:
            raise ValueError("writer_id must be a string of 1..128 bytes")
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


@dataclass(slots=True)
class _Cursor:
    """Where a scan stands in one partition: entries fetched but not yet yielded."""

    partition: int
    after: str
    buf: collections.deque[tuple[str, Record]]
    done: bool = False


class RaftReplication:
    """Sends each request to its group's leader, following ``not_leader`` hints.

    The outcome of a write is known unless the leader took it and no answer came back (the
    connection dropped after sending, or the deadline passed): then WriteOutcomeUnknown.
    Everything else that fails before a leader took the write (no leader reachable, a
    ``not_leader`` answer, a log entry replaced in an election) is retried until the deadline
    and then raised as QuorumUnavailable: nothing was stored.

    Failover (see ``failover.py``): each attempt gets a third of the deadline at most, so a
    leader that fell silent leaves time to find the one elected after it; a node that did not
    answer is held (not asked, hints naming it not followed) until its group's followers would
    have noticed it is gone, longer if it stays silent, and asked only after the others until it
    answers again.
    """

    def __init__(self, cluster: ClusterConfig, *, clock: HybridClock, timeout_s: float,
                 connect_timeout_s: float = 3.0, rng: random.Random | None = None):
        if not cluster.metadata:
            raise MetadataError("the cluster has no [[metadata]] nodes")
        self.ring = PartitionMap.from_cluster(cluster)
        self.clock = clock
        self.timeout_s = timeout_s
        election_s = cluster.objstore.raft_election_timeout_s
        # Long enough for a busy leader, short enough that a silent one leaves time, within the
        # deadline, to ask the others and reach the leader elected after it.
        self.attempt_s = min(timeout_s / 3, max(1.0, 3 * election_s))
        self._rng = rng or random.Random()
        self.nodes = ClientPool({m.id: (m.host, m.port) for m in cluster.metadata}, secret=cluster_secret(cluster),
                                connect_timeout=min(connect_timeout_s, 1.0), default_timeout=timeout_s)
        self._leaders: dict[int, str] = {}
        # Group -> its voters as a node last told us (a membership change moved it away from
        # where cluster.toml places it, or not there yet); absent: cluster.toml's placement.
        self._members: dict[int, tuple[str, ...]] = {}
        self.standing = MemberStanding(election_s=election_s)
        self.stats = {"reads": 0, "paired_reads": 0, "paired_misses": 0, "writes": 0, "scans": 0, "lists": 0,
                      "list_rounds": 0, "list_calls": 0, "redirects": 0, "retries": 0,
                      "quorum_failures": 0, "unknown_outcomes": 0, "silent_attempts": 0}

    async def open(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self.nodes)

    def members(self, group: int) -> tuple[str, ...]:
        """Whom to ask about ``group``: the voters a node told us of, else cluster.toml's placement."""
        return self._members.get(group) or self.ring.members_of(group)

    def _learn(self, group: int, details: dict[str, Any]) -> None:
        """A node told us the group's voters (and their addresses): ask those from now on."""
        members = details.get("members")
        if not isinstance(members, dict) or not members:
            return
        for node, addr in members.items():
            if isinstance(addr, (list, tuple)) and len(addr) == 2 and str(node) not in self.nodes:
                self.nodes.learn(str(node), addr)
        known = tuple(sorted(n for n in members if n in self.nodes))
        if known and known != self._members.get(group):
            self._members[group] = known

    # --- routing -------------------------------------------------------------------------------

    async def _leader_call(self, p: int, method: str, args: dict[str, Any], *, write: bool,
                           retry_unknown: bool = True) -> Any:
        """Call ``method`` on the leader of ``p``'s group until it answers or the deadline.

        Members are asked in the order of a :class:`Route`; after a round without a leader the
        call pauses for an election and starts another. A write whose attempt went unanswered is
        sent again with the same version (the group applies a version once) when
        ``retry_unknown``; otherwise, or when the deadline passes, it is WriteOutcomeUnknown.
        """
        gid = self.ring.group_of(p)
        members = self.members(gid)
        start = anyio.current_time()
        deadline = start + self.timeout_s
        route = Route(members, leader=self._leaders.get(gid), standing=self.standing, now=start, rng=self._rng)
        errors: dict[str, Exception] = {}
        unknown = False
        while True:
            now = anyio.current_time()
            remaining = deadline - now
            if remaining <= 0:
                break
            node = route.next()
            if node is None:  # a round without a leader: give the group time to elect one
                await anyio.sleep(min(remaining, 0.05 + self._rng.random() * 0.1))
                route.new_round(anyio.current_time())
                continue
            try:
                client = await self.nodes.get(node)
                result = (await client.call(method, args, timeout=min(remaining, self.attempt_s))).result
            except NotLeaderError as e:
                errors[node] = e
                self.standing.answered(node)
                self._forget_leader(gid, node)
                self.stats["redirects"] += 1
                self._learn(gid, e.details)
                if self.members(gid) != members:
                    members = self.members(gid)
                    route.set_members(members, anyio.current_time())
                hint = e.details.get("leader")
                route.redirect(hint if isinstance(hint, str) and hint in self.nodes and hint != node else None,
                               anyio.current_time())
                continue
            except NotStoredError as e:
                errors[node] = e  # an election replaced the entry: nothing stored, try again
                self.standing.answered(node)
                self.stats["retries"] += 1
                route.again(node)
                await anyio.sleep(0.05)
                continue
            except (Unavailable, DeadlineExceeded) as e:
                errors[node] = e
                self.standing.failed(node, asked_at=now)
                self._forget_leader(gid, node)
                self.stats["silent_attempts"] += 1
                if write and e.details.get("sent") is not False:
                    unknown = True
                    if not retry_unknown:
                        break
                    self.stats["retries"] += 1
                continue
            self.standing.answered(node)
            self._leaders[gid] = node
            return result
        if unknown:
            self.stats["unknown_outcomes"] += 1
            raise WriteOutcomeUnknown(f"{method} to group {gid}: no answer ({errors})")
        self.stats["quorum_failures"] += 1
        raise QuorumUnavailable(f"{method} to group {gid}", needed=len(members) // 2 + 1, answered=0, errors=errors)

    def _forget_leader(self, gid: int, node: str) -> None:
        """``node`` did not serve as ``gid``'s leader: unless another request learnt better since."""
        if self._leaders.get(gid) == node:
            del self._leaders[gid]

    # --- reads and writes ------------------------------------------------------------------------

    async def read(self, ns: str, key: str) -> Record | None:
        """The key's record, read linearizably from its group's leader."""
        self.stats["reads"] += 1
        p = self.ring.partition_of(ns, key)
        r = await self._leader_call(p, "kv.get", {"ns": ns, "p": p, "key": key}, write=False)
        return self._observed(record_from_wire(r["record"]))

    async def read_pair(self, first: tuple[str, str], second: tuple[str, str]) -> tuple[Record | None, Record | None]:
        """Two keys' records (``(ns, key)`` each), each read linearizably from its group's leader:
        in one ``kv.get`` (the second as ``also``) when both are in one group or one node is
        known to lead both groups, else one call each, ``first`` then ``second``. A node that
        no longer leads the second key's group answers without it, and it is read on its own."""
        (ns1, key1), (ns2, key2) = first, second
        p1, p2 = self.ring.partition_of(ns1, key1), self.ring.partition_of(ns2, key2)
        g1, g2 = self.ring.group_of(p1), self.ring.group_of(p2)
        leader = self._leaders.get(g1)
        if g1 != g2 and (leader is None or leader != self._leaders.get(g2)):
            return await self.read(ns1, key1), await self.read(ns2, key2)
        self.stats["reads"] += 1
        self.stats["paired_reads"] += 1
        r = await self._leader_call(p1, "kv.get", {"ns": ns1, "p": p1, "key": key1, "also": [ns2, p2, key2]},
                                    write=False)
        rec1 = self._observed(record_from_wire(r["record"]))
        also = r.get("also")
        if isinstance(also, list) and len(also) == 1:
            return rec1, self._observed(record_from_wire(also[0]))
        self.stats["paired_misses"] += 1
        return rec1, await self.read(ns2, key2)

    def _observed(self, rec: Record | None) -> Record | None:
        """``rec``, its version seen by the hybrid clock (so later writes order after it)."""
        if rec is not None:
            self.clock.observe(rec.version)
        return rec

    async def write(self, ns: str, key: str, value: dict[str, Any] | None, *, if_absent: bool = False,
                    if_match: tuple[str, Any] | None = None, describe: str = "") -> tuple[Record, Record | None]:
        """Store ``value`` (None deletes) once its group's log committed it; returns (the record
        written, the live record it replaced). The condition is checked where the entry is
        applied, in log order: ConditionFailed when it does not hold."""
        self.stats["writes"] += 1
        p = self.ring.partition_of(ns, key)
        version = self.clock.next()
        args: dict[str, Any] = {"ns": ns, "p": p, "key": key, "kind": "put" if value is not None else "delete",
                                "v": list(version), "value": value, "if_absent": if_absent,
                                "if_match": list(if_match) if if_match is not None else None}
        # A conditional delete cannot be told from its own retry once it applied (the key is
        # gone, so the condition fails): it is not sent twice. Puts and plain deletes are.
        r = await self._leader_call(p, "kv.write", args, write=True,
                                    retry_unknown=not (value is None and if_match is not None))
        previous = record_from_wire(r["previous"])
        if not r["applied"]:
            raise ConditionFailed(ns, key, _entry(ns, key, previous), describe)
        return Record(version=version, value=value), previous

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
        """One page for each cursor: one request per group, to its leader, all at once."""
        by_group: dict[int, list[_Cursor]] = collections.defaultdict(list)
        for c in cursors:
            by_group[self.ring.group_of(c.partition)].append(c)

        failures: list[Exception] = []

        async def one(group: list[_Cursor]) -> None:
            index = {c.partition: c for c in group}
            try:
                r = await self._leader_call(group[0].partition, "kv.scan", {
                    "ns": ns, "prefix": prefix, "limit": page_size,
                    "parts": [[c.partition, c.after] for c in group]}, write=False)
            except Exception as e:  # raised below, as itself rather than inside a group
                failures.append(e)
                return
            for p, items, more, last in r["pages"]:
                c = index[p]
                for k, w in items:
                    rec = record_from_wire(w)
                    assert rec is not None
                    self.clock.observe(rec.version)
                    if rec.value is not None:
                        c.buf.append((k, rec))
                if more and last is not None:
                    c.after = last
                else:
                    c.done = True

        async with anyio.create_task_group() as tg:
            for group in by_group.values():
                tg.start_soon(one, group)
        if failures:
            raise failures[0]

    async def list(self, ns: str, *, prefix: str, delimiter: str, start_after: str,
                   limit: int) -> list[tuple[str, Record | None]]:
        """Up to ``limit`` names of ``ns`` after ``start_after``, keys with ``delimiter`` after
        ``prefix`` rolled up into common prefixes (record None) by the nodes, merged across every
        group. A round asks every group that is not finished once (one ``kv.list`` naming its
        partitions, to its leader: linearizable), all groups at once; each node merges its
        group's partitions, so a page is usually one round (see :mod:`.merge`)."""
        self.stats["lists"] += 1
        groups: dict[int, list[int]] = collections.defaultdict(list)
        for p in range(self.ring.partitions):
            groups[self.ring.group_of(p)].append(p)
        if delimiter:
            # Names are small and one group's share of a page is most of it when prefixes hold
            # many keys (each prefix is in most groups): ask for the whole page.
            first = min(limit, MAX_LIST_PAGE)
        else:
            # Keys spread evenly: a group holds about 1/groups of the page; twice that, with slack.
            first = max(16, min(limit, 2 * limit // len(groups) + 16))
        merge = StreamMerge(groups, start_after=start_after, first_page=first,
                               max_page=max(first, min(MAX_LIST_PAGE, limit)))
        out: list[tuple[str, Record | None]] = []
        while len(out) < limit:
            wanted = merge.wanted()
            if wanted:
                await self._list_round(ns, prefix, delimiter, merge, wanted, groups)
                continue
            item = merge.pop()
            if item is None:
                break
            out.append(item)
        return out

    async def _list_round(self, ns: str, prefix: str, delimiter: str, merge: StreamMerge,
                          wanted: list[PageWanted], groups: dict[int, list[int]]) -> None:
        """One ``kv.list`` per group that owes a page, to its leader, all at once."""
        self.stats["list_rounds"] += 1
        failures: list[Exception] = []

        async def one(w: PageWanted) -> None:
            self.stats["list_calls"] += 1
            parts = groups[w.stream]
            try:
                r = await self._leader_call(parts[0], "kv.list", {
                    "ns": ns, "parts": parts, "prefix": prefix, "delimiter": delimiter,
                    "start_after": w.start_after, "start_open": w.start_open, "limit": w.limit}, write=False)
                names: list[tuple[str, Record | None]] = []
                for name, wire in r["names"]:
                    names.append((name, None if wire is None else self._observed(record_from_wire(wire))))
                merge.feed(w.stream, names, more=r["more"], last=r["last"], last_open=r["last_open"])
            except (ValueError, TypeError, KeyError) as e:  # a malformed answer
                failures.append(MetadataError(f"kv.list to group {w.stream}: {e}"))
            except Exception as e:  # raised below, as itself rather than inside a group
                failures.append(e)

        async with anyio.create_task_group() as tg:
            for w in wanted:
                tg.start_soon(one, w)
        if failures:
            raise failures[0]

    # --- health --------------------------------------------------------------------------------

    async def node_info(self, timeout_s: float = 2.0) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}

        async def one(node: str) -> None:
            try:
                out[node] = (await (await self.nodes.get(node)).call("node.info", {}, timeout=timeout_s)).result
            except Exception:
                out[node] = None

        async with anyio.create_task_group() as tg:
            for node in list(self.nodes.addresses):
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
        self.replication = RaftReplication(
            cluster, clock=self.clock, connect_timeout_s=connect_timeout_s,
            timeout_s=cluster.objstore.metadata_timeout_s if timeout_s is None else timeout_s)
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

    async def get_pair(self, first: tuple[str, str], second: tuple[str, str]) -> tuple[Entry | None, Entry | None]:
        """The live entries of two ``(ns, key)``, each as :meth:`get` reads it; one call to the
        metadata ring when one node leads both keys' groups (a GET's bucket and object)."""
        _check(*first)
        _check(*second)
        rec1, rec2 = await self.replication.read_pair(first, second)
        return _entry(*first, rec1), _entry(*second, rec2)

    async def put(self, ns: str, key: str, value: dict[str, Any], *, if_absent: bool = False,
                  if_match: tuple[str, Any] | None = None) -> Entry:
        """Store ``value``; acknowledged once a majority of replicas synced it.

        ``if_absent``: only if no live entry exists. ``if_match=(field, expected)``: only if a
        live entry exists and ``entry.value.get(field) == expected`` (a missing field is None;
        lists and dicts compare as msgpack gives them back, tuples as lists). Raises
        ConditionFailed (with ``.current``) or QuorumUnavailable.
        """
        entry, _previous = await self.replace(ns, key, value, if_absent=if_absent, if_match=if_match)
        return entry

    async def replace(self, ns: str, key: str, value: dict[str, Any], *, if_absent: bool = False,
                      if_match: tuple[str, Any] | None = None) -> tuple[Entry, Entry | None]:
        """``put``, also returning the live entry it replaced (None if there was none)."""
        _check(ns, key)
        if not isinstance(value, dict):
            raise TypeError(f"a metadata value is a dict, got {type(value).__name__}")
        describe = _describe(if_absent, if_match)
        rec, prev = await self.replication.write(ns, key, value, if_absent=if_absent, if_match=if_match,
                                                 describe=describe)
        return Entry(ns=ns, key=key, value=value, version=rec.version), _entry(ns, key, prev)

    async def delete(self, ns: str, key: str, *, if_match: tuple[str, Any] | None = None) -> Entry | None:
        """Delete ``key`` (a tombstone); returns the live entry it replaced, or None."""
        _check(ns, key)
        _rec, prev = await self.replication.write(ns, key, None, if_match=if_match,
                                                  describe=_describe(False, if_match))
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

    async def list(self, ns: str, *, prefix: str = "", delimiter: str = "", start_after: str = "",
                   limit: int = 1000) -> list[tuple[str, Entry | None]]:
        """Up to ``limit`` names of ``ns`` greater than ``start_after`` in order: live keys starting
        with ``prefix`` as (key, Entry), and, when ``delimiter`` is given, every key with the
        delimiter after the prefix rolled up into its common prefix (the key up to and including
        that delimiter) as (prefix, None), once. A ``start_after`` inside a common prefix skips
        that prefix. Read from every partition's group leader, like :meth:`scan`; a page costs a
        few rounds of one call per group, however many keys each common prefix holds."""
        check_ns(ns), check_key(prefix), check_key(delimiter), check_key(start_after)
        if limit < 1:
            return []
        names = await self.replication.list(ns, prefix=prefix, delimiter=delimiter, start_after=start_after,
                                            limit=limit)
        out: list[tuple[str, Entry | None]] = []
        for name, rec in names:
            if rec is None:
                out.append((name, None))
            elif rec.value is not None:
                out.append((name, Entry(ns=ns, key=name, value=rec.value, version=rec.version)))
        return out

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


def _describe(if_absent: bool, if_match: tuple[str, Any] | None) -> str:
    if if_absent and if_match is not None:
        raise ValueError("give if_absent or if_match, not both")
    if if_absent:
        return "if_absent"
    if if_match is not None:
        return f"if_match {if_match[0]}={if_match[1]!r}"
    return ""
