"""The socket shell around :class:`~.core.RaftCore`: timers, persistence, replication, proposals.

One :class:`RaftGroup` per consensus group a metadata node belongs to. Its tasks:

* the persister writes each :class:`~.core.Ready` on a worker thread (one LMDB transaction:
  log, hard state and the committed entries applied) and wakes what waited for it. Everything
  that piles up while one write runs goes into the next: group commit for free;
* one replicator per peer sends appends (or a snapshot) while this node leads, heartbeats when
  idle; replicators come and go with the group's membership. Idle, a replicator sleeps until the
  next heartbeat slot (the same instants in every group, so the node's transport can send one
  peer the heartbeats of all its groups in one call: ``metadata/heartbeats.py``) or a change;
* the ticker runs the core's timers (asleep until they have work, at most half an election
  timeout) and, for a candidate, sends vote requests.

Replies to a peer's vote or append go out only after the change they report is durable.
A proposal resolves when its entry is applied: with the state machine's result if the entry
is still the one proposed, with :class:`NotStored` if another leader's entry replaced it.

``change_membership`` walks the group, on its leader, to a target set of voters one server at
a time: a node is added as a learner, promoted once it has caught up, and only then is a node
removed, so the group never has fewer voters than either end.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import anyio
import anyio.abc
import anyio.to_thread

from ..errors import CorruptRecord
from ..store import Command, CommandResult
from .core import (AppendReply, AppendRequest, Config, ConfigChangeRefused, Entry, NotLeader, RaftCore, Ready, Role,
                   SnapshotNeeded, Timing, VoteReply, VoteRequest)
from .storage import RaftStorage, SaveItem, save_together

__all__ = ["RaftGroup", "Committer", "Transport", "NotStored", "OutcomeUnknown", "append_to_wire", "append_from_wire", "GroupSettings",
           "MembershipError"]

log = logging.getLogger("headwater.objstore.metadata.raft")

SNAPSHOT_CHUNK_BYTES = 1 << 20


class NotStored(Exception):
    """The proposed entry was replaced by another leader's: it never committed."""


class OutcomeUnknown(Exception):
    """The proposed entry's fate was not seen here (a snapshot passed it): it may have committed."""


@dataclass(slots=True)
class _Pending:
    item: SaveItem
    done: bool = False
    error: Exception | None = None


class Committer:
    """Writes the readies of a node's groups: whatever piles up while one transaction is being
    written goes into the next, whichever group it is from. LMDB takes one writer at a time
    anyway, and each transaction costs an fsync: groups busy at once share it."""

    def __init__(self) -> None:
        self._queue: list[_Pending] = []
        self._lock = anyio.Lock()
        self.stats = {"transactions": 0, "readies": 0}

    async def save(self, item: SaveItem) -> None:
        """Persist one group's ready (see ``RaftStorage.save``); raises what writing it raised."""
        mine = _Pending(item)
        self._queue.append(mine)
        try:
            async with self._lock:
                if not mine.done:
                    batch, self._queue = self._queue, []
                    # Shielded: once taken, the batch is written and every item told how it
                    # went, even if this caller is cancelled meanwhile (a group being stopped).
                    with anyio.CancelScope(shield=True):
                        try:
                            errors = await anyio.to_thread.run_sync(save_together, [p.item for p in batch])
                        except Exception as e:  # a bug: say so to everyone in the batch
                            errors = [e] * len(batch)
                    self.stats["transactions"] += 1
                    self.stats["readies"] += len(batch)
                    for p, err in zip(batch, errors):
                        p.done, p.error = True, err
        except BaseException:
            if not mine.done and mine in self._queue:
                self._queue.remove(mine)  # a stopped group's work must not be written later
            raise
        if mine.error is not None:
            raise mine.error


class MembershipError(Exception):
    """A membership change could not finish (a learner that does not catch up, a lost leadership)."""


class Transport(Protocol):
    async def __call__(self, peer: str, method: str, args: dict[str, Any], timeout: float) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSettings:
    timing: Timing = Timing()
    rpc_timeout_s: float = 2.0
    compact_after_entries: int = 20_000  # compact when this many applied entries are in the log
    keep_entries: int = 2_000            # ...keeping this many for followers a little behind


def append_to_wire(m: AppendRequest) -> list[Any]:
    return [m.term, m.leader, m.prev_index, m.prev_term, [[e.term, e.data] for e in m.entries], m.commit, m.round]


def append_from_wire(w: list[Any]) -> AppendRequest:
    term, leader, prev_index, prev_term, entries, commit, round_ = w
    return AppendRequest(term=int(term), leader=str(leader), prev_index=int(prev_index), prev_term=int(prev_term),
                         entries=tuple(Entry(int(t), bytes(d)) for t, d in entries), commit=int(commit),
                         round=int(round_))


@dataclass(slots=True)
class _Waiter:
    term: int
    done: anyio.Event
    result: CommandResult | None = None
    error: Exception | None = None


class RaftGroup:
    """One node's member of group ``group_id`` (see the module docstring)."""

    def __init__(self, *, group_id: str, node_id: str, initial: Config | tuple[str, ...], storage: RaftStorage,
                 transport: Transport, settings: GroupSettings = GroupSettings(),
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 preferred_leader: str | None = None, committer: Committer | None = None):
        """``initial``: the group's first membership (the ring's, before any change).
        ``preferred_leader``: the node that should lead when it can (placement's first choice,
        which spreads leaders, and so the write work, evenly over the nodes)."""
        self.preferred_leader = preferred_leader
        self._committer = committer or Committer()
        self._leading_since = 0.0
        self._next_handover = -1e18  # no hand-over before this (clock time)
        self.group_id = group_id
        self.node_id = node_id
        self.storage = storage
        self.settings = settings
        self.initial = initial if isinstance(initial, Config) else Config(voters=tuple(initial))
        self._send = transport
        self._clock = clock
        st = storage.load()
        self.core = RaftCore(node_id, st.config or self.initial, now=clock(), timing=settings.timing,
                             hard_state=st.hard_state, entries=st.entries, snapshot_index=st.snapshot_index,
                             snapshot_term=st.snapshot_term, applied=st.applied, rng=rng)
        self._replicators: dict[str, anyio.CancelScope] = {}
        self._scope: anyio.CancelScope | None = None
        self._changed = anyio.Event()
        # The persister's own wake-up, set only when there is something to write: the general
        # one above fires at every heartbeat reply a leader takes, and an idle group must not
        # wake its persister for each.
        self._to_persist = anyio.Event()
        self._durable_seq = -1
        # Index -> proposals waiting for it. Several: a deposed leader re-elected may propose at
        # an index its earlier proposal (still waiting, never applied) had.
        self._waiters: dict[int, list[_Waiter]] = {}
        self._io = anyio.Lock()  # storage writes: the persister and a snapshot install take turns
        self._installing: dict[str, Any] | None = None
        self._confirming = 0  # ReadIndex reads waiting for a heartbeat round's acknowledgements
        self.stats = {"proposals": 0, "applied": 0, "elections": 0, "snapshots_sent": 0, "snapshots_installed": 0,
                      "reads": 0, "lease_reads": 0, "compactions": 0, "leader_changes": 0,
                      "persist_errors": 0, "resyncs": 0, "config_changes": 0, "transfers_received": 0,
                      "handovers": 0}
        self._last_leader: str | None = None

    # --- plumbing -------------------------------------------------------------------------------

    def _notify(self) -> None:
        ev, self._changed = self._changed, anyio.Event()
        ev.set()
        if self.core.seq > self._durable_seq and not self._to_persist.is_set():
            self._to_persist.set()
        leader = self.core.leader
        if leader != self._last_leader:
            previous, self._last_leader = self._last_leader, leader
            self._leading_since = self._clock()
            if leader == self.node_id and self._tg is not None:
                # A follower's ticker may sleep a while yet: the new leader replicates to every
                # peer of its configuration from now on.
                self._sync_replicators(self._tg)
            self.stats["leader_changes"] += 1
            # raft.leader_elected: this node now leads; raft.leader_changed: another does;
            # raft.leader_lost: none is known (an election is on)
            event = ("raft.leader_lost" if leader is None else
                     "raft.leader_elected" if leader == self.node_id else "raft.leader_changed")
            log.info("raft group %s: leader is now %s (term %d)", self.group_id, leader, self.core.term,
                     extra={"event": event, "group": self.group_id, "term": self.core.term, "leader": leader,
                            "previous": previous})

    async def _wait_changed(self, timeout: float) -> None:
        ev = self._changed
        with anyio.move_on_after(timeout):
            await ev.wait()

    async def _durable(self, seq: int) -> None:
        self._notify()
        while self._durable_seq < seq:
            await self._wait_changed(1.0)

    @property
    def io_lock(self) -> anyio.Lock:
        """Held while storage is written: hold it to keep the applied index still."""
        return self._io

    @property
    def leader(self) -> str | None:
        return self.core.leader

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    # --- tasks ----------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as self._scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._persister)
                tg.start_soon(self._ticker, tg)
                self._sync_replicators(tg)
                task_status.started(self)

    def stop(self) -> None:
        """Stop the group's tasks (the node was removed from it)."""
        if self._scope is not None:
            self._scope.cancel()

    def _sync_replicators(self, tg: anyio.abc.TaskGroup) -> None:
        """One replicator per peer of the configuration in effect."""
        others = set(self.core.others)
        for peer in others - set(self._replicators):
            scope = anyio.CancelScope()
            self._replicators[peer] = scope
            tg.start_soon(self._replicate_in, scope, peer)
        for peer in set(self._replicators) - others:
            self._replicators.pop(peer).cancel()

    async def _replicate_in(self, scope: anyio.CancelScope, peer: str) -> None:
        with scope:
            await self._replicator(peer)

    async def _persister(self) -> None:
        while True:
            if self.core.seq <= self._durable_seq:
                # Woken by _notify when the core has changes; the timeout is a safety net only.
                self._to_persist = anyio.Event()
                if self.core.seq <= self._durable_seq:
                    with anyio.move_on_after(1.0):
                        await self._to_persist.wait()
                continue
            failed = False
            async with self._io:
                r = self.core.ready()
                if not r.empty:
                    snap = (self.core.snapshot_index, self.core.snapshot_term)
                    try:
                        await self._committer.save((self.storage, r, snap, self._on_applied))
                    except CorruptRecord as e:
                        self.core.unready(r)
                        await self._resync(f"a record failed its checksum while applying: {e}")
                        continue
                    except Exception as e:
                        # A full map or disk: keep the work and retry (outside the lock, so a
                        # snapshot install can go on); callers time out meanwhile.
                        log.error("raft group %s: cannot persist (%r); retrying", self.group_id, e,
                                  extra={"event": "raft.persist_failed", "group": self.group_id, "error": repr(e)})
                        self.core.unready(r)
                        self.stats["persist_errors"] += 1
                        failed = True
                if not failed:
                    self.core.persisted(r, self._clock())
                    self._durable_seq = r.seq
                    self.stats["applied"] += len(r.committed)
                    self._resolve_replaced(r)
            if failed:
                await anyio.sleep(1.0)
                continue
            await self._maybe_compact()
            self._notify()

    def _on_applied(self, index: int, entry: Entry, result: CommandResult | None) -> None:
        # Called on the worker thread after the commit; only reads and sets plain fields.
        for w in self._waiters.get(index, ()):
            if entry.term == w.term:
                w.result = result
            else:
                w.error = NotStored(f"entry {index} of term {w.term} was replaced")

    def _resolve_replaced(self, r: Ready) -> None:
        for index in [i for i in self._waiters if i <= self.core.applied]:
            for w in self._waiters.pop(index):
                if w.result is None and w.error is None:
                    # Passed by a snapshot: it may have committed, but its result is not known.
                    w.error = OutcomeUnknown(f"entry {index} was installed from a snapshot")
                w.done.set()

    async def _maybe_compact(self) -> None:
        c, s = self.core, self.settings
        if c.applied - c.snapshot_index < s.compact_after_entries:
            return
        async with self._io:
            # Decided under the lock: a snapshot install may have reset the log meanwhile.
            upto = c.applied - s.keep_entries
            term = c.term_at(upto)
            if self._installing is not None or upto <= c.snapshot_index or term is None:
                return
            await anyio.to_thread.run_sync(self.storage.compact, upto, term, c.applied)
            c.compact(upto)
        self.stats["compactions"] += 1

    async def _ticker(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        # Asleep until the core's timers have work, but never longer than half an election
        # timeout (a leader's membership changes start replicators here, as does a new
        # leadership in _notify): an idle node runs a follower's ticker twice a second, not
        # twenty times.
        longest = self.settings.timing.election_s / 2
        while True:
            was = self.core.role
            self.core.tick(self._clock())
            self._hand_to_preferred()
            self._sync_replicators(tg)
            self._campaign()
            if self.core.role is not was or self.core.seq > self._durable_seq:
                self._notify()
            await anyio.sleep(min(longest, max(0.005, self.core.tick_due_in(self._clock()))))

    def _hand_to_preferred(self) -> None:
        """A leader that is not the group's preferred leader hands over to it once both have
        been steady a while (leadership lands wherever an election timer fired first, which can
        leave one node leading most groups). Rare on purpose: after 10 s of steady leadership
        at the earliest, and at most once a minute; one whose TimeoutNow went unanswered is
        tried again a few election timeouts later (a minute's wait had a busy peer's one missed
        reply leave the group on the wrong node)."""
        c, now, election = self.core, self._clock(), self.settings.timing.election_s
        p = self.preferred_leader
        if (not self.is_leader or p is None or p == self.node_id or p not in c.config.voters
                or c.transferring_to is not None or now - self._leading_since < max(10.0, 10 * election)
                or now < self._next_handover or c.match_of(p) < c.commit):
            return
        self._next_handover = now + max(60.0, 20 * election)
        c.transfer_leadership(p, now)
        self.stats["handovers"] += 1
        self._notify()

    _sent_campaign = -1
    _tg: anyio.abc.TaskGroup | None = None

    def _campaign(self) -> None:
        """Send the current (pre-)vote round's requests once per round: a round starts on a
        timer in ``tick`` and, for the real election after a pre-vote majority, in a reply."""
        if self.core.campaign == self._sent_campaign or self._tg is None:
            return
        self._sent_campaign = self.core.campaign
        requests = self.core.vote_requests()
        if requests and not requests[0][1].pre:
            self.stats["elections"] += 1
        for peer, req in requests:
            self._tg.start_soon(self._request_vote, peer, req)

    async def _request_vote(self, peer: str, req: VoteRequest) -> None:
        if not req.pre:
            await self._durable(self.core.seq)  # our own vote first; a pre-vote changes nothing
        try:
            w = await self._send(peer, "raft.vote", {"g": self.group_id, "term": req.term, "candidate": req.candidate,
                                                     "last_index": req.last_index, "last_term": req.last_term,
                                                     "pre": req.pre, "transfer": req.transfer},
                                 self.settings.timing.election_s / 2)
        except Exception:
            return
        self.core.on_vote_reply(peer, VoteReply(term=int(w["term"]), granted=bool(w["granted"]),
                                                pre=bool(w.get("pre", False))), self._clock())
        self._campaign()
        self._notify()

    async def _replicator(self, peer: str) -> None:
        failures = 0
        while True:
            now = self._clock()
            msg = self.core.append_for(peer, now)
            if msg is None:
                # Until the next heartbeat is due, or a change (a proposal, a read, a reply, a new
                # role) may have made a message due sooner; a follower's waits on changes alone.
                due = self.core.send_due_in(peer, now)
                await self._wait_changed(self.settings.timing.election_s / 2 if due is None else max(0.002, due))
                continue
            if isinstance(msg, SnapshotNeeded):
                index, ok, term = 0, False, 0
                try:
                    index, ok, term = await self._send_snapshot(peer)
                except Exception as e:
                    log.warning("raft group %s: snapshot to %s failed: %r", self.group_id, peer, e,
                                extra={"event": "raft.snapshot_failed", "group": self.group_id, "peer": peer,
                                       "error": repr(e)})
                self.core.snapshot_sent(peer, index, ok, self._clock(), term=term)
                self._notify()
                if not ok:
                    await anyio.sleep(min(1.0, self.settings.timing.heartbeat_s * 4))
                continue
            try:
                w = await self._send(peer, "raft.append", {"g": self.group_id, "m": append_to_wire(msg)},
                                     self.settings.rpc_timeout_s)
                reply = AppendReply(term=int(w["term"]), success=bool(w["success"]), match=int(w["match"]),
                                    round=int(w["round"]))
            except Exception:
                self.core.append_failed(peer)
                failures += 1
                # A dead peer: retry at heartbeat pace, not in a tight loop.
                await anyio.sleep(min(self.settings.timing.heartbeat_s * min(failures, 4), 1.0))
                continue
            failures = 0
            c = self.core
            before = (c.term, c.role, c.commit, c.match_of(peer))
            c.on_append_reply(peer, msg, reply, self._clock())
            term = c.timeout_now_for(peer)
            if term is not None and self._tg is not None:
                self._tg.start_soon(self._timeout_now, peer, term)
            # An idle heartbeat's reply changes nothing another task waits on (unless a
            # ReadIndex read waits for its round): waking the group's other replicators and
            # waiters for each was most of an idle leader's work.
            if (msg.entries or self._confirming or term is not None
                    or before != (c.term, c.role, c.commit, c.match_of(peer))):
                self._notify()

    async def _send_snapshot(self, peer: str) -> tuple[int, bool, int]:
        """Stream this node's records as of its applied index; (index, installed, peer's term)."""
        txn, index, term, config = self.storage.snapshot_reader()
        my_term = self.core.term  # every chunk speaks for this leadership, and stops with it
        self.stats["snapshots_sent"] += 1
        log.info("raft group %s: sending %s a snapshot at index %d", self.group_id, peer, index,
                 extra={"event": "raft.snapshot_sending", "group": self.group_id, "peer": peer, "index": index})
        try:
            after: bytes | None = None
            first = True
            while True:
                if not self.is_leader or self.core.term != my_term:
                    return index, False, 0
                pairs, after = await anyio.to_thread.run_sync(
                    self.storage.snapshot_chunk, txn, after, SNAPSHOT_CHUNK_BYTES)
                w = await self._send(peer, "raft.snapshot", {
                    "g": self.group_id, "term": my_term, "leader": self.node_id, "index": index,
                    "snap_term": term, "first": first, "done": after is None, "pairs": pairs,
                    "config": config},
                    self.settings.rpc_timeout_s * 4)
                first = False
                if int(w["term"]) > my_term or not w["ok"]:
                    return index, False, int(w["term"])
                if after is None:
                    return index, True, int(w["term"])
        finally:
            txn.abort()

    async def _timeout_now(self, peer: str, term: int) -> None:
        log.info("raft group %s: handing the leadership of term %d to %s", self.group_id, term, peer,
                 extra={"event": "raft.handover", "group": self.group_id, "term": term, "peer": peer})
        try:
            await self._send(peer, "raft.timeout_now", {"g": self.group_id, "term": term, "leader": self.node_id},
                             self.settings.rpc_timeout_s)
        except Exception as e:
            election = self.settings.timing.election_s
            self._next_handover = min(self._next_handover, self._clock() + max(2.0, 4 * election))
            log.warning("raft group %s: could not hand the leadership to %s: %r", self.group_id, peer, e,
                        extra={"event": "raft.handover_failed", "group": self.group_id, "peer": peer,
                               "error": repr(e)})

    # --- peer requests --------------------------------------------------------------------------

    async def on_timeout_now(self, args: dict[str, Any]) -> dict[str, Any]:
        started = self.core.on_timeout_now(int(args["term"]), str(args["leader"]), self._clock())
        if started:
            self.stats["transfers_received"] += 1
            self._campaign()
            self._notify()
        return {"started": started}

    async def on_vote(self, args: dict[str, Any]) -> dict[str, Any]:
        req = VoteRequest(term=int(args["term"]), candidate=str(args["candidate"]),
                          last_index=int(args["last_index"]), last_term=int(args["last_term"]),
                          pre=bool(args.get("pre", False)), transfer=bool(args.get("transfer", False)))
        reply = self.core.on_vote(req, self._clock())
        await self._durable(self.core.seq)  # a vote is on disk before it is announced
        return {"term": reply.term, "granted": reply.granted, "pre": reply.pre}

    def append_at_once(self, args: dict[str, Any]) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """``raft.append`` without a task when it can be: the reply itself if the append changed
        nothing that must be durable before it goes out (an idle heartbeat: nearly all of them),
        else an awaitable of it (entries or a commit to write, a new term, an install under way).
        An idle heartbeat wakes none of the group's tasks either, unless it names a new leader."""
        if self._installing is not None:
            return self._append_while_installing(args)
        role = self.core.role
        reply = self.core.on_append(append_from_wire(args["m"]), self._clock())
        answer = {"term": reply.term, "success": reply.success, "match": reply.match, "round": reply.round}
        if self.core.seq > self._durable_seq:
            return self._answer_when_durable(self.core.seq, answer)
        if self.core.leader != self._last_leader or self.core.role is not role:
            self._notify()
        return answer

    async def _answer_when_durable(self, seq: int, answer: dict[str, Any]) -> dict[str, Any]:
        await self._durable(seq)
        return answer

    async def on_append(self, args: dict[str, Any]) -> dict[str, Any]:
        answer = self.append_at_once(args)
        return answer if isinstance(answer, dict) else await answer

    async def _append_while_installing(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._installing is not None:
            m = append_from_wire(args["m"])
            if m.term <= self._installing["term"]:
                # From the installing leader itself, or a stale one the core would refuse. Round
                # 0 confirms nothing: the core did not see it, so it is no lease promise either.
                return {"term": self.core.term, "success": False, "match": 0, "round": 0}
            await self._abandon_install()  # a later leader: the transfer's sender is deposed
        reply = self.core.on_append(append_from_wire(args["m"]), self._clock())
        await self._durable(self.core.seq)
        return {"term": reply.term, "success": reply.success, "match": reply.match, "round": reply.round}

    async def on_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        term, leader, index = int(args["term"]), str(args["leader"]), int(args["index"])
        if term < self.core.term:
            return {"term": self.core.term, "ok": False}
        probe = AppendRequest(term=term, leader=leader, prev_index=0, prev_term=0, entries=(), commit=0, round=0)
        self.core.on_append(probe, self._clock())  # adopt the term and the leader, reset the timer
        transfer = {"leader": leader, "term": term, "index": index}
        if args["first"] and self._installing is None and index <= self.core.commit:
            # Nothing new (a late or repeated transfer): installing would drop entries this
            # node acknowledged after ``index``.
            await self._durable(self.core.seq)
            return {"term": self.core.term, "ok": True}
        pairs = [(bytes(k), bytes(v)) for k, v in args["pairs"]]
        async with self._io:
            if args["first"]:
                if self._installing is not None:
                    log.info("raft group %s: restarting an unfinished snapshot install", self.group_id)
                self._installing = transfer
                await anyio.to_thread.run_sync(self.storage.install_begin)
                # The records and the log are wiped: the core must not believe it still holds
                # them, and with an empty log the persister has nothing but the term to write
                # while the chunks arrive.
                self.core.restore(0, 0, self._clock(), self.initial)
            elif self._installing != transfer:
                return {"term": self.core.term, "ok": False}
            await anyio.to_thread.run_sync(self.storage.install_chunk, pairs)
            if args["done"]:
                snap_term = int(args["snap_term"])
                raw = args.get("config")
                config = bytes(raw) if raw is not None else None
                await anyio.to_thread.run_sync(self.storage.install_end, index, snap_term, config)
                self.core.restore(index, snap_term, self._clock(),
                                  Config.decode(config) if config is not None else self.initial)
                self._installing = None
                self.stats["snapshots_installed"] += 1
                log.info("raft group %s: installed a snapshot at index %d from %s", self.group_id, index, leader,
                         extra={"event": "raft.snapshot_installed", "group": self.group_id, "index": index,
                                "leader": leader})
        await self._durable(self.core.seq)  # the adopted term is on disk before the answer
        return {"term": self.core.term, "ok": True}

    async def resync(self, reason: str) -> None:
        """Rebuild this replica from the group: its records cannot be trusted (a corrupt record
        met while applying, a corrupt overflow group). Wiped like a replaced disk, it catches up
        from the leader's log or a snapshot; a leader steps down first."""
        async with self._io:
            await self._resync(reason)

    async def _resync(self, reason: str) -> None:
        # The caller holds self._io.
        log.error("raft group %s on %s: %s; wiping this replica and catching up from the group",
                  self.group_id, self.node_id, reason,
                  extra={"event": "raft.replica_wiped", "group": self.group_id, "reason": reason})
        self.stats["resyncs"] += 1
        self.core.step_down(self._clock())
        await self._wipe()
        self._notify()

    async def _wipe(self) -> None:
        # The caller holds self._io.
        await anyio.to_thread.run_sync(self.storage.wipe)
        self.core.restore(0, 0, self._clock(), self.initial)

    async def _abandon_install(self) -> None:
        """Give up a half-installed snapshot: its records are a mix, so the group's records
        are wiped again and the node starts over as an empty replica."""
        async with self._io:
            if self._installing is None:
                return
            log.warning("raft group %s: abandoning the snapshot from %s", self.group_id, self._installing["leader"],
                        extra={"event": "raft.snapshot_abandoned", "group": self.group_id,
                               "leader": self._installing["leader"]})
            await self._wipe()
            self._installing = None

    # --- client requests ------------------------------------------------------------------------

    async def propose(self, cmd: Command) -> CommandResult:
        """Order ``cmd`` and wait until it is applied here. Raises NotLeader (nothing stored),
        NotStored (replaced: nothing stored). A caller's timeout leaves the outcome unknown."""
        index, term = self.core.propose(cmd.encode())
        self.stats["proposals"] += 1
        w = _Waiter(term=term, done=anyio.Event())
        self._waiters.setdefault(index, []).append(w)
        self._notify()
        try:
            await w.done.wait()
        finally:
            waiting = self._waiters.get(index)
            if waiting is not None and w in waiting:
                waiting.remove(w)
                if not waiting:
                    del self._waiters[index]
        if w.error is not None:
            raise w.error
        assert w.result is not None
        return w.result

    def read_now(self) -> bool:
        """Whether a linearizable read may be served this instant, without waiting: this node
        leads under a lease and has applied everything the lease covers (the case of nearly
        every read on a busy leader). True counts it as a read; False: use :meth:`read_barrier`."""
        try:
            index = self.core.lease_read(self._clock())
        except NotLeader:
            return False
        if index is None or self.core.applied < index:
            return False
        self.stats["reads"] += 1
        self.stats["lease_reads"] += 1
        return True

    async def read_barrier(self) -> None:
        """Return once this node may serve a linearizable read: it was still the leader after
        the read arrived (it holds a lease, or else a majority answered a heartbeat round that
        started after the read) and has applied everything committed before it. Raises NotLeader."""
        self.stats["reads"] += 1
        index = self.core.lease_read(self._clock())
        if index is not None:
            self.stats["lease_reads"] += 1
        else:
            round_, index = self.core.read_index()
            self._notify()
            self._confirming += 1
            try:
                while not self.core.read_ready(round_):
                    await self._wait_changed(self.settings.timing.heartbeat_s)
            finally:
                self._confirming -= 1
        while self.core.applied < index:
            if not self.is_leader:
                raise NotLeader(self.core.leader)
            await self._wait_changed(self.settings.timing.heartbeat_s)

    # --- membership ---------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.core.config

    async def change_membership(self, target: dict[str, Any], *, catch_up_s: float = 120.0) -> Config:
        """On the leader: walk the group's voters to ``target`` (node id -> [host, port]), one
        server at a time, and return the configuration reached. A new node joins as a learner
        and becomes a voter once its log has caught up with the commit index of when it was
        added; nodes leave only after every new one has joined. A leader that removes itself
        returns once that change is committed (another node leads from then on). Raises
        NotLeader, MembershipError; safe to call again after either."""
        if not target:
            raise MembershipError("a group needs at least one voter")
        while True:
            if not self.is_leader:
                raise NotLeader(self.core.leader)
            cfg = self.core.config
            want = set(target)
            addresses = {**cfg.addresses, **{k: tuple(v) for k, v in target.items()}}

            def make(voters: set[str], learners: set[str]) -> Config:
                return Config(voters=tuple(voters), learners=tuple(learners),
                              addresses={n: addresses[n] for n in voters | learners if n in addresses})

            voters, learners = set(cfg.voters), set(cfg.learners)
            add = sorted(want - voters)
            if add:
                node = add[0]
                if node not in learners:
                    await self._commit_config(make(voters, learners | {node}))
                    continue
                await self._wait_caught_up(node, catch_up_s)
                await self._commit_config(make(voters | {node}, learners - {node}))
                continue
            if learners:
                await self._commit_config(make(voters, set()))
                continue
            remove = sorted(voters - want, key=lambda n: (n == self.node_id, n))  # ourselves last
            if not remove:
                return cfg
            node = remove[0]
            if node == self.node_id and len(voters) > 1:
                # Removing ourselves would leave the group leaderless for an election timeout:
                # hand the leadership to the most caught-up remaining voter, which removes us.
                heir = max(sorted(voters - {node}), key=self.core.match_of)
                await self.transfer_leadership(heir)
                raise NotLeader(heir)
            await self._commit_config(make(voters - {node}, set()))

    async def _commit_config(self, cfg: Config) -> Config:
        deadline = anyio.current_time() + 10 * self.settings.timing.election_s
        while True:
            try:
                index, term = self.core.propose_config(cfg)
                break
            except ConfigChangeRefused:
                # The previous change, or this leader's first entry, is still on its way.
                if anyio.current_time() > deadline:
                    raise MembershipError(f"group {self.group_id}: the previous change does not commit") from None
                await self._wait_changed(self.settings.timing.heartbeat_s)
        log.info("raft group %s: membership -> voters %s learners %s (index %d)", self.group_id,
                 ",".join(cfg.voters), ",".join(cfg.learners) or "-", index,
                 extra={"event": "raft.membership_changed", "group": self.group_id, "voters": list(cfg.voters),
                        "learners": list(cfg.learners), "index": index})
        self.stats["config_changes"] += 1
        self._notify()
        deadline = anyio.current_time() + 10 * self.settings.timing.election_s
        while self.core.commit < index:
            # A leader removing itself steps down at the commit; before it, losing the lead is a failure.
            if self.core.term != term or (not self.is_leader and self.node_id in cfg.voters):
                raise NotLeader(self.core.leader)
            if anyio.current_time() > deadline:
                raise MembershipError(f"group {self.group_id}: the change to {cfg.voters} did not commit in time")
            await self._wait_changed(self.settings.timing.heartbeat_s)
        if self.core.term_at(index) not in (term, None):
            raise NotLeader(self.core.leader)
        return cfg

    async def transfer_leadership(self, peer: str) -> None:
        """Hand the leadership to voter ``peer`` and return once this node no longer leads.
        Raises MembershipError if ``peer`` did not take it within an election timeout or two."""
        self.core.transfer_leadership(peer, self._clock())
        self._notify()
        with anyio.move_on_after(3 * self.settings.timing.election_s):
            while self.is_leader:
                await self._wait_changed(self.settings.timing.heartbeat_s)
            return
        raise MembershipError(f"group {self.group_id}: {peer} did not take the leadership")

    async def _wait_caught_up(self, node: str, timeout_s: float) -> None:
        goal = self.core.commit
        with anyio.move_on_after(timeout_s):
            while self.core.match_of(node) < goal:
                if not self.is_leader:
                    raise NotLeader(self.core.leader)
                await self._wait_changed(self.settings.timing.heartbeat_s)
            return
        raise MembershipError(f"group {self.group_id}: learner {node} did not catch up within {timeout_s:.0f} s "
                              f"(it has {self.core.match_of(node)} of {goal})")

    async def retire(self, config: Config) -> None:
        """This node was removed from the group by ``config`` (committed): stop, and drop the
        replica, remembering ``config`` to send clients on."""
        self.stop()
        async with self._io:
            await anyio.to_thread.run_sync(self.storage.retire, config)

    def status(self) -> dict[str, Any]:
        return {"group": self.group_id, **self.core.status(), "stats": dict(self.stats)}

