"""The metadata node daemon: LMDB records replicated by Raft, served over msgpack RPC.

Partitions belong to Raft groups (``partition.py``), and a node runs one
:class:`~.raft.group.RaftGroup` for every group it is a member of. Clients talk to a group's
leader; any other node answers ``not_leader`` with the leader and the members it knows.

The ring (partitions, groups, and the founders, whose rendezvous placement is every group's
first membership) is formed once: a node with an empty data_dir takes it from any peer that has
one, and forms it from cluster.toml only when every listed peer answered that it has none. So a
node added later, or a replaced disk, joins the ring that exists. It then holds no group until a
leader adds it (``headwater meta rebalance``): the first message from that leader creates the
replica, which catches up from the log or a snapshot.

Client methods (records travel as ``[ts, writer, value]``):

``kv.write`` {ns, p, key, kind, v, value, if_absent, if_match} -> {applied, previous}: ordered by
             the group's log and applied on a majority before the reply. ``applied`` false: the
             condition failed, ``previous`` is what it met.
``kv.get``   {ns, p, key, also?: [ns, p, key]} -> {record, also?}: a linearizable read (a lease
             read, else ReadIndex). With ``also``, a second key is read in the same call when
             this node leads that key's group too (``also``: ``[record]``), else ``also`` is
             None and the caller asks that group's leader: a GET reads its bucket and its object
             in one call when one node leads both. Answered in the connection's reader, with no
             task, while the leader's lease holds (``_get_at_once``).
``kv.scan``  {ns, parts: [[p, start_after], ...], prefix, limit} ->
             {pages: [[p, [[key, record], ...], more, last], ...]}: linearizable per group.
``kv.list``  {ns, parts: [p, ...], prefix, delimiter, start_after, start_open, limit} ->
             {names: [[name, record or None], ...], more, last, last_open}: the partitions' live
             keys merged in order, those with the delimiter after the prefix rolled up into
             common prefixes (record None, each once) on the node, each prefix skipped with a
             cursor seek per partition; at most ``limit`` names and MAX_LIST_EXAMINED records
             read per call, then resume after ``last`` with ``last_open``; linearizable per group.
``node.info`` -> {id, partitions, entries, db_bytes, map_bytes, groups, stats}

Operator methods: ``ring.get`` -> {ring}; ``meta.config`` {g} -> {config, leader, role};
``meta.reconfigure`` {g, voters: {id: [host, port]}, catch_up_s} -> {config} (on the leader:
walk the group to those voters, one server at a time); ``meta.retire`` {g, config} (this node
was removed by that committed configuration: drop the replica); ``meta.prefer`` {leaders: {g: id}}
-> {groups} (each group's preferred leader from now on: the placement's first choice in the
cluster.toml ``headwater meta rebalance`` runs with, which never names a draining node).

Peer methods: ``raft.vote``, ``raft.append``, ``raft.snapshot``, ``raft.timeout_now`` (see ``raft/group.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from headwater.admin import export_stats, serve_admin
from headwater.config import ClusterConfig
from headwater.metrics import Registry, add_process_metrics
from headwater.rpc import LATER, BadRequest, ClientPool, RpcServer, Unavailable, cluster_secret

from ..config import MetadataNodeConfig
from .errors import (
    CorruptGroup,
    CorruptRecord,
    DataDirError,
    InvalidKey,
    NotLeaderError,
    NotStoredError,
    RingChanged,
)
from .heartbeats import HeartbeatBatcher, is_heartbeat, serve_heartbeats
from .partition import DEFAULT_REPLICAS, PartitionMap, group_name, rendezvous
from .raft.core import Config, NotLeader, Timing
from .raft.group import (
    Committer,
    GroupSettings,
    MembershipError,
    NotStored,
    OutcomeUnknown,
    RaftGroup,
)
from .raft.storage import RaftStorage, read_ring, write_ring
from .store import Command, OpKind, Record, RecordStore, record_from_wire, record_to_wire

__all__ = ["MetadataNode", "run_metadata_node", "MAX_SCAN_LIMIT", "MAX_LIST_EXAMINED"]

log = logging.getLogger("headwater.objstore.metadata.node")

MAX_SCAN_LIMIT = 10_000
# Records one kv.list reads, returned or not (keys of prefixes already listed, dead records,
# overflow groups): a listing over a hostile key layout pays in round trips, not in one long call.
MAX_LIST_EXAMINED = 10_000
# Writer ids travel in every log entry and key the record of applied versions (LMDB keys are at
# most 511 bytes): an entry that cannot be applied must never enter the log.
MAX_WRITER_BYTES = 128
RING_FORMAT = 2


class MetadataNode:
    """One metadata node. ``stats`` counts reads, writes, scans and Raft events."""

    def __init__(self, cluster: ClusterConfig, node: MetadataNodeConfig, *, inline_key_bytes: int | None = None,
                 clock: Any = time.monotonic):
        self.cluster = cluster
        self.config = node
        self.ring = PartitionMap.from_cluster(cluster)
        self.partitions = cluster.objstore.partitions
        self.port: int | None = None
        self.store: RecordStore | None = None
        self._inline_key_bytes = inline_key_bytes
        self._clock = clock
        self.stats: dict[str, int] = {
            "gets": 0, "writes": 0, "conditions_failed": 0, "scans": 0, "scanned_records": 0,
            "lists": 0, "listed_names": 0, "list_examined": 0,
            "not_leader": 0, "corrupt_records": 0, "bad_requests": 0, "records_repaired": 0,
            "heartbeats_at_once": 0,  # batched heartbeats answered without a task (nothing to write)
        }
        self._addresses = {m.id: (m.host, m.port) for m in cluster.metadata}
        secret = cluster_secret(cluster)
        self.peers = ClientPool({k: v for k, v in self._addresses.items() if k != node.id}, secret=secret)
        self.groups: dict[str, RaftGroup] = {}
        self.committer = Committer()  # one write transaction for every group busy at once
        self.retired: dict[str, Config] = {}  # groups this node was removed from, and where they went
        self.ring_record: dict[str, Any] | None = None
        self.ready = False  # the ring is known and the groups are running
        self._tg: anyio.abc.TaskGroup | None = None
        self._creating: dict[str, anyio.Lock] = {}
        # Preferred leaders the rebalance announced (``meta.prefer``), by group: they replace
        # the start-up ring's first choice, which knows neither added nor draining nodes.
        self._preferred: dict[str, str] = {}
        self.heartbeats = HeartbeatBatcher(self._call)
        self.server = RpcServer(node.id, secret=secret)
        self._on_append = self._raft("on_append")
        for name, fn in (("kv.write", self._write), ("kv.get", self._get), ("kv.scan", self._scan), ("kv.list", self._list),
                         ("kv.peek", self._peek), ("node.info", self._info), ("ring.get", self._ring_get),
                         ("meta.config", self._meta_config), ("meta.reconfigure", self._meta_reconfigure),
                         ("meta.retire", self._meta_retire), ("meta.prefer", self._meta_prefer),
                         ("raft.vote", self._raft("on_vote")),
                         ("raft.append", self._on_append), ("raft.heartbeats", self._raft_heartbeats),
                         ("raft.snapshot", self._raft("on_snapshot")),
                         ("raft.timeout_now", self._raft("on_timeout_now"))):
            self.server.add(name, fn, at_once=self._get_at_once if name == "kv.get" else None)

    def statistics(self) -> dict[str, int]:
        """Counters for /metrics, Raft counters summed over the node's groups."""
        out = dict(self.stats)
        if self.store is not None:
            out["corrupt_records"] = self.store.corrupt_reads
        for g in self.groups.values():
            for k, v in g.stats.items():
                out[f"raft_{k}"] = out.get(f"raft_{k}", 0) + v
        out["raft_leading"] = sum(1 for g in self.groups.values() if g.is_leader)
        out.update({f"raft_{k}": v for k, v in self.heartbeats.stats.items()})
        out["raft_write_transactions"] = self.committer.stats["transactions"]
        return out

    def _settings(self) -> GroupSettings:
        o = self.cluster.objstore
        election_s = o.raft_election_timeout_s
        return GroupSettings(timing=Timing(election_s=election_s, heartbeat_s=election_s / 10,
                                           clock_drift=o.raft_clock_drift),
                             rpc_timeout_s=min(o.rpc_timeout_s, max(election_s, 1.0)),
                             compact_after_entries=o.raft_log_entries,
                             keep_entries=max(1, o.raft_log_entries // 10))

    async def _transport(self, peer: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        """The groups' transport: heartbeats go through the batcher, one call per peer for all groups."""
        if is_heartbeat(method, args):
            return await self.heartbeats.call(peer, args, timeout)
        return await self._call(peer, method, args, timeout)

    async def _call(self, peer: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        if peer not in self.peers:
            # A node added after we started: its address travels in the group's membership.
            for g in self.groups.values():
                if peer in g.config.addresses:
                    self.peers.learn(peer, g.config.addresses[peer])
        return (await (await self.peers.get(peer)).call(method, args, timeout=timeout)).result

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, listen, ``task_status.started(self)``, then join (or form) the ring
        and start the node's Raft groups. Until then kv.* calls answer not_leader."""
        cfg = self.config
        self.store = await anyio.to_thread.run_sync(lambda: RecordStore.open(
            cfg.data_dir, map_size_bytes=cfg.map_size_bytes, inline_key_bytes=self._inline_key_bytes))
        try:
            await self._serve(task_status)
        except BaseExceptionGroup as eg:
            # A refusal to start (a changed ring) is the operator's to read, not a task group's.
            refusals = eg.subgroup(lambda e: isinstance(e, DataDirError))
            if refusals is not None and refusals.exceptions and len(eg.exceptions) == 1:
                leaf: BaseException = refusals
                while isinstance(leaf, BaseExceptionGroup):
                    leaf = leaf.exceptions[0]
                raise leaf from None
            raise
        finally:
            self.store.close()
            self.store = None
            self._tg = None

    async def _serve(self, task_status: anyio.abc.TaskStatus[Any]) -> None:
        cfg = self.config
        assert self.store is not None
        async with self.peers, anyio.create_task_group() as tg:
            self._tg = tg
            self.port = await tg.start(self.server.serve, cfg.host, cfg.port)
            await tg.start(self.heartbeats.run)
            task_status.started(self)
            self.ring_record = await self._join_ring()
            for g in range(self.ring.groups):
                name = group_name(g)
                storage = RaftStorage(self.store, name, self.ring.partitions_in(g))
                st = await anyio.to_thread.run_sync(storage.load)
                if st.retired is not None:
                    self.retired[name] = st.retired
                    continue
                has_state = (st.hard_state.term > 0 or st.entries or st.snapshot_index > 0
                             or st.config is not None)
                if has_state or cfg.id in self._initial(g).voters:
                    await self._start_group(g, storage)
            self.ready = True
            log.info("metadata node %s serving %s on %s:%d (member of %d of %d raft groups)", cfg.id,
                     cfg.data_dir, cfg.host, self.port, len(self.groups), self.ring.groups,
                     extra={"event": "metadata.serving", "data_dir": str(cfg.data_dir),
                            "address": f"{cfg.host}:{self.port}", "groups": len(self.groups),
                            "ring_groups": self.ring.groups})

    def _initial(self, g: int) -> Config:
        """Group ``g``'s first membership: where the ring's founders placed it."""
        assert self.ring_record is not None
        founders = tuple(self.ring_record["founders"])
        return Config(voters=rendezvous(g, founders, int(self.ring_record["replicas"])),
                      addresses={n: self._addresses[n] for n in founders if n in self._addresses})

    async def _start_group(self, g: int, storage: RaftStorage | None = None) -> RaftGroup:
        assert self.store is not None and self._tg is not None
        name = group_name(g)
        storage = storage or RaftStorage(self.store, name, self.ring.partitions_in(g))
        placed = self.ring.members_of(g)
        group = RaftGroup(group_id=name, node_id=self.config.id, initial=self._initial(g), storage=storage,
                          transport=self._transport, settings=self._settings(), clock=self._clock,
                          preferred_leader=self._preferred.get(name, placed[0] if placed else None),
                          committer=self.committer)
        self.groups[name] = group
        await self._tg.start(group.run)
        return group

    async def _join_ring(self) -> dict[str, Any]:
        """The ring this node belongs to: its own record, a peer's, or (when every peer listed in
        cluster.toml answers that it has none) a new one from cluster.toml."""
        assert self.store is not None
        cfg, o = self.config, self.cluster.objstore
        record = await anyio.to_thread.run_sync(read_ring, self.store)
        waited = 0
        while record is None:
            peers = [m for m in self._addresses if m != cfg.id]
            answers: dict[str, Any] = {}

            async def ask(peer: str) -> None:
                try:
                    answers[peer] = (await self._transport(peer, "ring.get", {}, 1.0))["ring"]
                except Exception:
                    pass

            async with anyio.create_task_group() as tg:
                for peer in peers:
                    tg.start_soon(ask, peer)
            found = [r for r in answers.values() if r is not None]
            if found:
                record = found[0]
                log.info("metadata node %s joins the existing ring (founders %s)", cfg.id,
                         ",".join(record["founders"]),
                         extra={"event": "ring.joined", "founders": list(record["founders"])})
            elif len(answers) == len(peers):
                record = {"format": RING_FORMAT, "partitions": o.partitions, "groups": o.metadata_groups,
                          "replicas": DEFAULT_REPLICAS,
                          "founders": sorted(m.id for m in self.cluster.metadata if not m.drain)}
                log.info("metadata node %s forms a new ring: %s", cfg.id, record,
                         extra={"event": "ring.formed", "ring": record})
            else:
                if waited % 20 == 0:
                    log.warning("metadata node %s: waiting for %s to answer before forming the ring", cfg.id,
                                ",".join(sorted(set(peers) - set(answers))),
                                extra={"event": "ring.waiting", "peers": sorted(set(peers) - set(answers))})
                waited += 1
                await anyio.sleep(0.5)
                continue
            await anyio.to_thread.run_sync(write_ring, self.store, record)
        if record.get("format") != RING_FORMAT:
            raise RingChanged(f"metadata node {cfg.id}: {cfg.data_dir} was written by an earlier Headwater "
                              f"(groups named by their members); move its records with an export, or start "
                              f"from an empty data_dir")
        want = {"partitions": o.partitions, "groups": o.metadata_groups}
        have = {"partitions": record["partitions"], "groups": record["groups"]}
        if want != have:
            raise RingChanged(f"metadata node {cfg.id}: the ring was formed with {have}, but cluster.toml "
                              f"says {want}; partitions and metadata_groups are fixed once a ring is formed "
                              f"(metadata nodes can be added and removed: headwater meta rebalance)")
        return record

    # --- helpers -------------------------------------------------------------------------------

    def _bad(self, message: str) -> BadRequest:
        self.stats["bad_requests"] += 1
        return BadRequest(message)

    def _partition(self, value: Any) -> int:
        if not isinstance(value, int) or not 0 <= value < self.partitions:
            raise self._bad(f"partition {value!r} is outside 0..{self.partitions - 1}")
        return value

    def _group(self, p: int) -> RaftGroup:
        name = group_name(self.ring.group_of(p))
        g = self.groups.get(name)
        if g is None:
            self.stats["not_leader"] += 1
            if not self.ready:
                raise NotLeaderError(f"{self.config.id} is starting", leader=None)
            moved = self.retired.get(name)
            raise NotLeaderError(f"{self.config.id} holds no replica of partition {p} (group {name})", leader=None,
                                 members=_wire_members(moved) if moved is not None else None)
        return g

    def _not_leader(self, g: RaftGroup, e: NotLeader) -> NotLeaderError:
        self.stats["not_leader"] += 1
        return NotLeaderError(f"{self.config.id} is not the leader of {g.group_id}", leader=e.leader,
                              members=_wire_members(g.config))

    async def _barrier(self, g: RaftGroup) -> None:
        try:
            await g.read_barrier()
        except NotLeader as e:
            raise self._not_leader(g, e) from None

    def _group_index(self, value: Any) -> int:
        if not isinstance(value, str) or not value.startswith("g") or not value[1:].isdigit() \
                or int(value[1:]) >= self.ring.groups:
            raise self._bad(f"{value!r} is not a raft group of this ring (g0..g{self.ring.groups - 1})")
        return int(value[1:])

    # --- handlers ------------------------------------------------------------------------------

    def _raft(self, method: str) -> Any:
        async def handler(args: dict, payload: bytes) -> dict[str, Any]:
            if not self.ready:
                raise Unavailable(f"{self.config.id} is starting", sent=False)
            name = args.get("g")
            g = self.groups.get(name)  # type: ignore[arg-type]
            if g is None:
                index = self._group_index(name)
                if method in ("on_vote", "on_timeout_now"):
                    # No replica here: no vote to give (it is not a voter of any configuration
                    # it knows). A replica is created only by a leader's message.
                    return {"term": 0, "granted": False, "pre": bool(args.get("pre", False)), "started": False}
                g = await self._adopt(index)
            return await getattr(g, method)(args)
        return handler

    async def _raft_heartbeats(self, args: dict, payload: bytes) -> dict[str, Any]:
        """``raft.heartbeats``: several groups' heartbeats from one leader node (``heartbeats.py``)."""
        if not self.ready:
            raise Unavailable(f"{self.config.id} is starting", sent=False)
        try:
            return await serve_heartbeats(args, self._on_append, self._append_at_once)
        except ValueError as e:
            raise self._bad(str(e)) from None

    def _append_at_once(self, args: dict) -> Any:
        """One heartbeat of a ``raft.heartbeats`` call without a task when its group is here
        (``RaftGroup.append_at_once``); else the ordinary handler (which adopts or refuses)."""
        name = args.get("g")
        g = self.groups.get(name) if isinstance(name, str) else None
        if g is None:
            return self._on_append(args, b"")
        answer = g.append_at_once(args)
        if isinstance(answer, dict):
            self.stats["heartbeats_at_once"] += 1
        return answer

    async def _adopt(self, index: int) -> RaftGroup:
        """A leader sent us group ``index``'s log: we were added to it. Start an empty replica
        (a learner as far as we know, until the log says otherwise)."""
        name = group_name(index)
        lock = self._creating.setdefault(name, anyio.Lock())
        async with lock:
            g = self.groups.get(name)
            if g is not None:
                return g
            assert self.store is not None
            storage = RaftStorage(self.store, name, self.ring.partitions_in(index))
            if name in self.retired:
                await anyio.to_thread.run_sync(storage.unretire)
                del self.retired[name]
            log.info("metadata node %s: a leader of %s reached us; starting a replica", self.config.id, name,
                     extra={"event": "raft.replica_started", "group": name})
            return await self._start_group(index, storage)

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
            raise self._not_leader(g, e) from None
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
        also = self._also(args.get("also"))
        g = self._group(p)
        await self._barrier(g)
        out: dict[str, Any] = {"record": record_to_wire(await self._read(g, args, p)), "corrupt": False}
        if also is not None:
            out["also"] = await self._read_also(also)
        return out

    def _also(self, value: Any) -> dict[str, Any] | None:
        """kv.get's ``also`` as read arguments ({ns, p, key}), None if absent; BadRequest if malformed."""
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 3:
            raise self._bad(f"kv.get: also must be [ns, p, key], not {value!r}")
        ns, p, key = value
        return {"ns": ns, "p": self._partition(p), "key": key}

    async def _read(self, g: RaftGroup, args: dict[str, Any], p: int) -> Record | None:
        """The record of ``args``' ns and key in partition ``p``, once ``g``'s read barrier passed."""
        assert self.store is not None
        try:
            return self.store.get(args["ns"], p, args["key"])
        except CorruptGroup as e:
            # Many records at once: rebuild this replica from the group (it steps down; the
            # client retries on the next leader).
            await g.resync(str(e))
            raise Unavailable(f"{self.config.id} is rebuilding its replica: {e}", sent=True) from None
        except CorruptRecord:
            return await self._repair(g, args["ns"], p, args["key"])
        except (KeyError, InvalidKey) as e:
            raise self._bad(f"kv.get: {e}") from None

    async def _read_also(self, also: dict[str, Any]) -> list[Any] | None:
        """``[record]`` of kv.get's second key when this node leads its group, else None."""
        p = also["p"]
        g = self.groups.get(group_name(self.ring.group_of(p)))
        if g is None or not g.is_leader:
            return None
        try:
            await g.read_barrier()
        except NotLeader:
            return None
        return [record_to_wire(await self._read(g, also, p))]

    def _get_at_once(self, args: dict, payload: bytes) -> Any:
        """kv.get answered in the reader, without a task, when it needs no wait: the group's
        leader holds its lease and has applied what it covers, and the records read cleanly.
        Anything else (no lease, a malformed request, a corrupt record) is LATER: ``_get``
        serves it, and refuses what it must."""
        store = self.store
        p, ns, key, also = args.get("p"), args.get("ns"), args.get("key"), args.get("also")
        if store is None or type(p) is not int or not 0 <= p < self.partitions \
                or type(ns) is not str or type(key) is not str:
            return LATER
        g2 = None
        if also is not None:
            if type(also) is not list or len(also) != 3 or type(also[0]) is not str \
                    or type(also[1]) is not int or not 0 <= also[1] < self.partitions or type(also[2]) is not str:
                return LATER
            g2 = self.groups.get(group_name(self.ring.group_of(also[1])))
            if g2 is not None and not g2.is_leader:
                g2 = None  # not ours to read: the caller asks its leader
        g = self.groups.get(group_name(self.ring.group_of(p)))
        if g is None or not g.read_now() or (g2 is not None and g2 is not g and not g2.read_now()):
            return LATER
        try:
            out: dict[str, Any] = {"record": record_to_wire(store.get(ns, p, key)), "corrupt": False}
            if also is not None:
                out["also"] = None if g2 is None else [record_to_wire(store.get(also[0], also[1], also[2]))]
        except (CorruptGroup, CorruptRecord, InvalidKey):
            return LATER
        self.stats["gets"] += 1
        return out

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
        log.error("metadata record %s/%r is corrupt on %s; repairing it from a peer", ns, key, self.config.id,
                  extra={"event": "record.corrupt", "ns": ns, "key": key})
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

    async def _list(self, args: dict, payload: bytes) -> dict[str, Any]:
        """``kv.list``: the partitions' rolled-up names merged into one page, after one read
        barrier per group."""
        assert self.store is not None
        self.stats["lists"] += 1
        ns, parts, limit = args.get("ns"), args.get("parts"), args.get("limit", 1000)
        prefix, delimiter = args.get("prefix", ""), args.get("delimiter", "")
        start_after, start_open = args.get("start_after", ""), args.get("start_open", False)
        if not isinstance(parts, list) or not parts or len(parts) > self.partitions \
                or not isinstance(limit, int) or not 1 <= limit <= MAX_SCAN_LIMIT or not isinstance(start_open, bool):
            raise self._bad(f"kv.list needs 1..{self.partitions} parts, a limit of 1..{MAX_SCAN_LIMIT} "
                            "and a boolean start_open")
        wanted = sorted({self._partition(p) for p in parts})
        for g in {self._group(p) for p in wanted}:  # one read barrier per group
            await self._barrier(g)
        try:
            page = self.store.rolled_scan(ns, wanted, prefix=prefix, delimiter=delimiter, start_after=start_after,
                                          start_open=start_open, limit=limit, max_examined=MAX_LIST_EXAMINED)
        except (InvalidKey, ValueError) as e:
            raise self._bad(f"kv.list: {e}") from None
        self.stats["listed_names"] += len(page.items)
        self.stats["list_examined"] += page.examined
        return {"names": [[name, None if r is None else record_to_wire(r)] for name, r in page.items],
                "more": page.more, "last": page.last, "last_open": page.last_open}

    async def _info(self, args: dict, payload: bytes) -> dict[str, Any]:
        assert self.store is not None
        info = await anyio.to_thread.run_sync(self.store.info, self.partitions)
        return {"id": self.config.id, **info, "stats": self.statistics(),
                "groups": {gid: g.status() for gid, g in self.groups.items()},
                "retired": {gid: c.to_wire() for gid, c in self.retired.items()}}

    # --- membership ----------------------------------------------------------------------------

    async def _ring_get(self, args: dict, payload: bytes) -> dict[str, Any]:
        return {"ring": self.ring_record}

    async def _meta_config(self, args: dict, payload: bytes) -> dict[str, Any]:
        """This node's view of a group: its membership, leader and role (None if it holds none)."""
        name = args.get("g")
        self._group_index(name)
        g = self.groups.get(name)  # type: ignore[arg-type]
        if g is None:
            moved = self.retired.get(name)  # type: ignore[arg-type]
            return {"config": moved.to_wire() if moved else None, "leader": None, "role": "retired" if moved else None}
        return {"config": g.config.to_wire(), "leader": g.leader, "role": str(g.core.role), "term": g.core.term,
                "applied": g.core.applied, "commit": g.core.commit}

    async def _meta_reconfigure(self, args: dict, payload: bytes) -> dict[str, Any]:
        """On the group's leader: change its voters to ``voters``, one server at a time."""
        name = args.get("g")
        self._group_index(name)
        voters = args.get("voters")
        if not isinstance(voters, dict) or not voters or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2 for k, v in voters.items()):
            raise self._bad("meta.reconfigure needs voters: {node id: [host, port]}")
        g = self.groups.get(name)  # type: ignore[arg-type]
        if g is None:
            raise NotLeaderError(f"{self.config.id} holds no replica of {name}", leader=None)
        try:
            cfg = await g.change_membership(voters, catch_up_s=float(args.get("catch_up_s", 120.0)))
        except NotLeader as e:
            raise self._not_leader(g, e) from None
        except MembershipError as e:
            raise Unavailable(str(e), sent=True) from None
        return {"config": cfg.to_wire()}

    async def _meta_prefer(self, args: dict, payload: bytes) -> dict[str, Any]:
        """Take ``leaders`` ({group: node id}) as the groups' preferred leaders from now on.

        A node reads its ring once, at start-up, so without this its groups' leaders would go on
        handing the leadership to a node the operator has since marked ``drain`` (an extra
        hand-over, and an election, for each group the drain then has to move off it again).
        Only the optional hand-over to the preferred leader follows it; elections do not.
        Kept in memory: a node restarted later reads the same placement from its cluster.toml."""
        leaders = args.get("leaders")
        if not isinstance(leaders, dict) or not all(isinstance(v, str) for v in leaders.values()):
            raise self._bad("meta.prefer needs leaders: {group: node id}")
        for name in leaders:
            self._group_index(name)
        self._preferred.update(leaders)
        for name, node in leaders.items():
            g = self.groups.get(name)
            if g is not None:
                g.preferred_leader = node
        log.info("metadata node %s: preferred leaders now %s", self.config.id,
                 ",".join(f"{k}={v}" for k, v in sorted(leaders.items())),
                 extra={"event": "meta.preferred_leaders", "leaders": dict(leaders)})
        return {"groups": len(leaders)}

    async def _meta_retire(self, args: dict, payload: bytes) -> dict[str, Any]:
        """Drop this node's replica of a group whose committed ``config`` no longer names it."""
        name = args.get("g")
        self._group_index(name)
        try:
            cfg = Config.from_wire(args["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise self._bad(f"meta.retire: malformed config: {e}") from None
        if self.config.id in cfg.nodes:
            raise self._bad(f"meta.retire: {self.config.id} is still a member of {name} in {cfg.voters}")
        g = self.groups.get(name)  # type: ignore[arg-type]
        if g is not None:
            if g.is_leader:
                raise self._bad(f"meta.retire: {self.config.id} still leads {name}")
            await g.retire(cfg)
            del self.groups[name]
            self.retired[name] = cfg
            log.info("metadata node %s: left %s (now on %s)", self.config.id, name, ",".join(cfg.voters),
                     extra={"event": "raft.replica_retired", "group": name, "voters": list(cfg.voters)})
        return {"retired": True}


def _wire_members(cfg: Config) -> dict[str, list[Any]]:
    """A membership as clients are told it: voter id -> [host, port] (learners do not serve)."""
    return {n: list(cfg.addresses[n]) for n in cfg.voters if n in cfg.addresses}


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
        info = await mn._info({}, b"") if mn.ready else {}
        groups = info.get("groups", {})
        return {"status": "ok" if mn.ready else "starting", "role": "metadata", "id": node.id,
                "entries": info.get("entries"), "db_bytes": info.get("db_bytes"),
                "raft": {gid: {k: g[k] for k in ("role", "term", "leader", "commit", "applied", "voters")}
                         for gid, g in groups.items()}}

    async with anyio.create_task_group() as tg:
        started = await tg.start(mn.serve)
        await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                       registry=registry, task_status=task_status))
        task_status.started(started)
