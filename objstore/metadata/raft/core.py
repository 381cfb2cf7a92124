"""Raft, sans-IO: one consensus group's state machine, driven by calls and a clock value.

The core knows no sockets, threads or disks. The shell (``group.py``) feeds it messages and
the time, and takes from it what to persist, what to send and what to apply:

* ``tick(now)`` runs timers: a pre-vote round when a node hears from no leader, heartbeats, and
  a leader's step-down when it no longer hears from a majority (check-quorum).
* ``on_vote`` / ``on_append`` handle a peer's request and return the reply; the shell may send
  the reply only once ``ready()``'s changes up to ``seq`` are durable (a vote must not be
  forgotten, nor an acknowledged entry). A pre-vote changes nothing, so its reply is due at once.
* ``vote_requests()`` / ``append_for(peer)`` give a (pre-)candidate's and a leader's outgoing
  requests; ``on_vote_reply`` / ``on_append_reply`` take their answers.
* Elections run in two steps (thesis section 9.6, Pre-Vote). When the election timer fires, the
  node becomes a ``PRE_CANDIDATE``: its term stays, and ``vote_requests()`` asks the others
  whether they would vote for it in ``term + 1`` (``pre=True``). Once a majority would,
  ``on_vote_reply`` starts the real election (``CANDIDATE``, term + 1, a vote for itself to
  persist) and ``vote_requests()`` gives the real requests (``pre=False``), to send once
  ``seq`` as of then is durable. ``campaign`` increases with each round of either kind (also
  when a round restarts in the same term): the shell sends ``vote_requests()`` once per value,
  checking after ``tick`` and after ``on_vote_reply``. Each reply goes back to
  ``on_vote_reply`` as it came, ``pre`` flag included.
* ``propose(data)`` appends a command on the leader; ``lease_read(now)`` gives the index at
  which a linearizable read may be served at once while the leader holds a lease, and
  ``read_index()`` starts one that waits for a heartbeat round (Raft thesis section 6.4).
* ``ready()`` returns the hard state, log changes and newly committed entries as one unit of
  work; ``persisted(ready)`` reports it durable and applied.

Safety follows the Raft paper (Ongaro and Ousterhout, 2014) figure 2. Three additions from the
thesis (sections 4.2.3 and 9.6) keep a node that was cut off from disrupting a healthy group when
it comes back: it stands for election only once a majority answered a pre-vote, so it does not
come back with a raised term; a node that heard from a leader within the minimum election
timeout, or leads itself, refuses (pre-)votes for a later term; and a leader that loses contact
with a majority steps down. The log can be compacted behind a snapshot, and a peer behind the
compacted log gets a snapshot.

Leader leases (thesis section 6.4.1). The rule above that makes a node refuse (pre-)votes for
``election_s`` after it heard from a leader is a promise: a follower that acknowledged a message
the leader sent at ``s`` helps no other node win before ``s + election_s``, measured on its own
clock from the moment it got the message, which is later than ``s``. A node does not stand for
election either until ``election_s`` after it last heard from a leader. So once a majority
(the leader among them) acknowledged messages sent at ``s`` or later, no other leader can be
elected before ``s + election_s`` of the followers' time. The leader records when each heartbeat
round was first sent, and serves reads at its commit index without a round until
``s + election_s * (1 - clock_drift)`` on its own clock. That assumes only a bounded difference
in clock *rate*: the leader's clock runs at least ``1 - clock_drift`` times as fast as any
follower's (NTP slews monotonic clocks by at most 500 ppm; the default drift allows 10 %), never
that clocks agree. Every node must use the same ``election_s``. The holes in that promise are
closed where they open:

* A leadership transfer asks voters to ignore it (the ``transfer`` flag): a leader stops serving
  lease reads for the rest of its term once it has sent a TimeoutNow, whether or not the transfer
  succeeds.
* A node that restarts has forgotten when it last heard a leader: it counts its start as having
  heard one, so it neither votes nor stands for ``election_s`` after it starts (and likewise
  after its replica is restored from a snapshot or wiped).
* While a membership change is uncommitted there are two configurations whose majorities a
  candidate might gather; the leader serves no lease read until the change commits, and counts
  only the voters of the configuration in effect.
* A leader serves no lease read before it has committed an entry of its own term (until then
  its commit index may lag the previous leader's).

Membership changes one server at a time (thesis section 4.1). A configuration is a log entry
(``Config``, data starting with ``CONFIG_MARK``) and takes effect as soon as it is in a node's log,
committed or not; a truncated one reverts to the one before. ``learners`` receive the log but
neither vote nor count towards a majority, so a new node catches up before it can slow commits.
A leader proposes a change (``propose_config``) only when the previous one is committed and it has
committed an entry of its own term (the fix to the single-server algorithm from the raft-dev list,
2015), and at most one voter is added or removed per change, so any majority of the old
configuration overlaps any majority of the new. A leader that commits a configuration without
itself steps down; a node that is not a voter never stands for election.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "Role", "Entry", "Timing", "HardState", "VoteRequest", "VoteReply", "AppendRequest", "AppendReply",
    "SnapshotNeeded", "Ready", "NotLeader", "RaftCore", "Config", "CONFIG_MARK", "ConfigChangeRefused",
]

# msgpack never starts an encoding with 0xc1, so no command can be mistaken for a configuration.
CONFIG_MARK = b"\xc1"


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"  # asking whether a majority would vote for it; term unchanged
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``data`` empty is the no-op a new leader commits to learn the commit index."""

    term: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Config:
    """A group's membership: ``voters`` elect and make majorities, ``learners`` only follow.
    ``addresses`` (node id -> [host, port]) travel with it so that every member, and every
    client told about it, can reach a node added after it started."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    addresses: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "voters", tuple(sorted(self.voters)))
        object.__setattr__(self, "learners", tuple(sorted(set(self.learners) - set(self.voters))))

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.voters + self.learners

    def encode(self) -> bytes:
        return CONFIG_MARK + msgpack.packb({"voters": list(self.voters), "learners": list(self.learners),
                                            "addresses": {k: list(v) for k, v in self.addresses.items()}})

    @classmethod
    def decode(cls, data: bytes) -> Config:
        d = msgpack.unpackb(data[len(CONFIG_MARK):], raw=False)
        return cls(voters=tuple(d["voters"]), learners=tuple(d.get("learners", ())),
                   addresses={k: tuple(v) for k, v in d.get("addresses", {}).items()})

    def to_wire(self) -> dict[str, Any]:
        return {"voters": list(self.voters), "learners": list(self.learners),
                "addresses": {k: list(v) for k, v in self.addresses.items()}}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Config:
        return cls(voters=tuple(d["voters"]), learners=tuple(d.get("learners", ())),
                   addresses={k: tuple(v) for k, v in d.get("addresses", {}).items()})


def is_config(data: bytes) -> bool:
    return data[:1] == CONFIG_MARK


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """Timers in seconds. Elections start after a random ``election_s``..``2 * election_s``."""

    election_s: float = 1.0
    heartbeat_s: float = 0.1
    max_batch_entries: int = 512
    max_batch_bytes: int = 4 << 20
    # The leader's clock runs at least (1 - clock_drift) times as fast as any follower's: its
    # lease is election_s * (1 - clock_drift) from the send of what a majority acknowledged.
    # 1 turns lease reads off (every read waits for a heartbeat round).
    clock_drift: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.election_s:
            raise ValueError("heartbeat must be positive and shorter than the election timeout")
        if not 0 <= self.clock_drift <= 1:
            raise ValueError("clock drift must be between 0 and 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class HardState:
    """What must survive a restart besides the log: the term and whom this node voted for in it."""

    term: int = 0
    vote: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest:
    """A vote request; with ``pre`` a pre-vote: "would you vote for me in ``term``?" (the
    candidate's own term + 1), which changes nothing on either side."""

    term: int
    candidate: str
    last_index: int
    last_term: int
    pre: bool = False
    # Sent by the node a leader handed its leadership to (thesis 3.10): voters grant it although
    # they heard from that leader a moment ago, which would otherwise protect the leader.
    transfer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteReply:
    """The answer to a ``VoteRequest``, ``pre`` copied from it. A granted pre-vote carries the
    term asked about (so the pre-candidate can tell it from an answer to an older round);
    any other reply carries the voter's term."""

    term: int
    granted: bool
    pre: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest:
    term: int
    leader: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    round: int  # the leader's heartbeat round, echoed back: confirms leadership for reads


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendReply:
    term: int
    success: bool
    match: int  # success: the last index known to match; failure: a hint where to retry from
    round: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotNeeded:
    """The peer is behind the compacted log: send it the state as of ``index``."""

    peer: str
    index: int
    term: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """One unit of work for the shell, in this order: write ``hard_state`` (if set), delete log
    entries from ``truncate_from`` on (if set), write ``entries``, apply ``committed`` to the
    state machine and record ``applied``; all durably. ``seq`` orders readies."""

    seq: int
    hard_state: HardState | None
    truncate_from: int | None
    entries: tuple[tuple[int, Entry], ...]
    committed: tuple[tuple[int, Entry], ...]
    applied: int

    @property
    def empty(self) -> bool:
        return (self.hard_state is None and self.truncate_from is None and not self.entries
                and not self.committed)


class ConfigChangeRefused(Exception):
    """A membership change that cannot be proposed now (one is pending, or it changes more than
    one voter)."""


class NotLeader(Exception):
    """This node cannot order the request; ``leader`` is who it believes leads (or None)."""

    def __init__(self, leader: str | None):
        self.leader = leader
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")


@dataclass(slots=True)
class _Progress:
    """What a leader knows of one follower."""

    next: int
    match: int = 0
    round: int = 0           # highest heartbeat round the follower acknowledged
    lease_from: float = -1e18  # the first send of the latest round it acknowledged in this term
    heard_at: float = 0.0    # when it last answered
    sent_at: float = -1e18   # when it was last sent anything
    inflight: bool = False
    snapshotting: bool = False
    refused: int = 1 << 62   # prev_index it refused since its last success: its log differs there and beyond


@dataclass(slots=True)
class _Reads:
    """Pending ReadIndex requests: round needed -> commit index to wait for."""

    waiting: dict[int, int] = field(default_factory=dict)


class RaftCore:
    """One node's view of one Raft group. See the module docstring for the calling protocol."""

    def __init__(self, node_id: str, peers: tuple[str, ...] | Config, *, now: float, timing: Timing | None = None,
                 hard_state: HardState | None = None, entries: list[Entry] | None = None,
                 snapshot_index: int = 0, snapshot_term: int = 0, applied: int | None = None,
                 rng: random.Random | None = None):
        """``peers``: the configuration as of the snapshot (a Config, or the voters); later
        configuration entries in ``entries`` override it. A node need not be in it: a node added
        to a group starts with no say and learns its place from the leader's log."""
        if not isinstance(peers, Config):
            if node_id not in peers:
                raise ValueError(f"{node_id} is not one of the group's members {peers}")
            peers = Config(voters=tuple(peers))
        self.id = node_id
        self.timing = timing or Timing()
        self._rng = rng or random.Random()
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        # A node with nothing on disk may be a replaced one whose disk (and the votes it cast) is
        # gone. Until a leader has brought it into the group it votes only for candidates with
        # an empty log: in a new group those are everyone, so first elections can fail and be
        # retried; in an established group none can win, so a vote it forgot is never repeated
        # for a candidate that could.
        self._fresh = hs.term == 0 and not entries and snapshot_index == 0
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        # The log: entries[i] has index snapshot_index + 1 + i.
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self._entries: list[Entry] = list(entries or [])
        self._snapshot_config = peers
        self.config = peers
        self.config_index = snapshot_index  # where self.config comes from (snapshot_index: the snapshot)
        self._now = now
        self._recompute_config()
        self.applied = snapshot_index if applied is None else applied
        self.commit = self.applied
        self.durable = self.last_index  # what storage holds (it gave us these entries)
        # Pending changes for the next ready().
        self._seq = 0
        self._hard_dirty = False
        self._truncate_from: int | None = None
        self._unstable_from: int | None = None
        self._applying_to = self.applied
        # Timers and leader state. A node that starts has forgotten when it last heard a leader,
        # and may have promised one not to vote for a while (its lease): it counts its start as
        # having heard one, so it neither votes nor stands for an election timeout.
        self._heard_leader_at = now
        self._election_at = now + self._election_timeout()
        self._votes: set[str] = set()  # (pre-)votes won in the current round
        self._campaign = 0
        self._progress: dict[str, _Progress] = {}
        self._round = 0
        self._round_sent = True
        self._round_sent_at: dict[int, float] = {}  # this leadership's recent rounds -> first send
        self._first_round = 0  # rounds up to this one belong to an earlier leadership
        self._lease_revoked = False  # this leader sent a TimeoutNow in its term: no lease reads
        self._reads = _Reads()
        self._term_start = 0  # index of the leader's first entry in its term
        self._transfer_to: str | None = None  # the voter this leader hands its leadership to
        self._transfer_until = 0.0
        self._transfer_election = False  # this node's current election was handed to it

    # --- log view -------------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if it is compacted away or not there."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if self.snapshot_index < index <= self.last_index:
            return self._entries[index - self.snapshot_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.snapshot_index - 1]

    @property
    def members(self) -> tuple[str, ...]:
        """The voters."""
        return self.config.voters

    @property
    def others(self) -> tuple[str, ...]:
        """Everyone the leader replicates to: voters and learners but this node."""
        return tuple(p for p in self.config.nodes if p != self.id)

    @property
    def is_voter(self) -> bool:
        return self.id in self.config.voters

    def _quorum(self) -> int:
        return len(self.config.voters) // 2 + 1

    # --- membership -----------------------------------------------------------------------------

    def _recompute_config(self) -> None:
        """The configuration in effect: the last one in the log, else the snapshot's."""
        for k in range(len(self._entries) - 1, -1, -1):
            if is_config(self._entries[k].data):
                self._set_config(Config.decode(self._entries[k].data), self.snapshot_index + 1 + k)
                return
        self._set_config(self._snapshot_config, self.snapshot_index)

    def _set_config(self, cfg: Config, index: int) -> None:
        self.config, self.config_index = cfg, index
        if self.role is Role.LEADER:
            for p in self.others:
                if p not in self._progress:
                    self._progress[p] = _Progress(next=self.last_index + 1, heard_at=self._now)
            for p in [p for p in self._progress if p not in self.config.nodes]:
                del self._progress[p]

    def config_at(self, index: int) -> Config:
        """The configuration in effect at ``index`` (at least the snapshot index)."""
        for i in range(min(index, self.last_index), self.snapshot_index, -1):
            data = self.entry(i).data
            if is_config(data):
                return Config.decode(data)
        return self._snapshot_config

    def propose_config(self, cfg: Config) -> tuple[int, int]:
        """Append a membership change; returns (index, term). It takes effect at once, here and
        on each follower as it appends it. Raises NotLeader, ConfigChangeRefused."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.config_index > self.commit or self.commit < self._term_start:
            raise ConfigChangeRefused("the previous change (or this leader's first entry) is not committed yet")
        changed = set(cfg.voters) ^ set(self.config.voters)
        if len(changed) > 1:
            raise ConfigChangeRefused(f"one voter at a time: {sorted(changed)} would change")
        if not cfg.voters:
            raise ConfigChangeRefused("a group needs a voter")
        self._append([Entry(self.term, cfg.encode())])
        return self.last_index, self.term

    def transfer_leadership(self, peer: str, now: float) -> None:
        """Hand leadership to voter ``peer`` (thesis 3.10): once its log matches ours,
        ``timeout_now_for(peer)`` says so and the shell tells it to stand for election at once;
        it wins before anyone's election timer would have run out. Given up after an election
        timeout. Raises NotLeader, ConfigChangeRefused (not a voter)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if peer == self.id or peer not in self.config.voters:
            raise ConfigChangeRefused(f"{peer} is not another voter of the group")
        self._transfer_to = peer
        self._transfer_until = now + self.timing.election_s

    @property
    def transferring_to(self) -> str | None:
        return self._transfer_to if self.role is Role.LEADER else None

    def timeout_now_for(self, peer: str) -> int | None:
        """The term to send ``peer`` a TimeoutNow in, when this leader is handing it the
        leadership and its log has caught up (None otherwise); sent once per transfer."""
        if self.role is not Role.LEADER or self._transfer_to != peer:
            return None
        pr = self._progress.get(peer)
        if pr is None or pr.match < self.last_index:
            return None
        self._transfer_until = self._now + self.timing.election_s  # it has that long to win
        self._transfer_to = None
        # The voters will grant ``peer`` its votes although they heard from us: their promise
        # no longer holds, and we cannot tell when (if ever) the transfer succeeds.
        self._lease_revoked = True
        return self.term

    def on_timeout_now(self, term: int, leader: str, now: float) -> bool:
        """The leader of ``term`` hands us its leadership: stand for election now, without a
        pre-vote (the leader has stepped aside), asking voters to ignore its recent heartbeats.
        Returns whether an election started."""
        self._now = now
        if term != self.term or not self.is_voter or self.role is Role.LEADER or leader != self.leader:
            return False
        self._start_election(now)
        self._transfer_election = self.role is Role.CANDIDATE
        return True

    def match_of(self, peer: str) -> int:
        """The leader's knowledge of how far ``peer``'s log matches its own (0 if unknown)."""
        pr = self._progress.get(peer)
        return pr.match if pr is not None else 0

    def _election_timeout(self) -> float:
        return self.timing.election_s * (1.0 + self._rng.random())

    # --- changes to persist ---------------------------------------------------------------------

    def _changed(self) -> None:
        self._seq += 1

    @property
    def seq(self) -> int:
        """Increases with every change; a reply may go out once ``persisted`` covered it."""
        return self._seq

    def _set_term(self, term: int, vote: str | None) -> None:
        self.term, self.vote = term, vote
        self._hard_dirty = True
        self._changed()

    def _append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = self.last_index + 1
        self._entries.extend(entries)
        for k in range(len(entries) - 1, -1, -1):
            if is_config(entries[k].data):
                self._set_config(Config.decode(entries[k].data), first + k)
                break
        if self._unstable_from is None or first < self._unstable_from:
            self._unstable_from = first
        self._changed()

    def _truncate(self, index: int) -> None:
        """Drop entries from ``index`` on (a conflicting suffix from an old leader)."""
        assert index > self.commit, "a committed entry is never truncated"
        del self._entries[index - self.snapshot_index - 1:]
        if self.config_index >= index:
            self._recompute_config()
        self._truncate_from = index if self._truncate_from is None else min(self._truncate_from, index)
        if self._unstable_from is not None and self._unstable_from >= index:
            self._unstable_from = None
        self.durable = min(self.durable, index - 1)
        self._changed()

    def ready(self) -> Ready:
        """Everything to persist and apply now; hand it back to ``persisted`` once done."""
        entries: tuple[tuple[int, Entry], ...] = ()
        if self._unstable_from is not None:
            entries = tuple((i, self.entry(i)) for i in range(self._unstable_from, self.last_index + 1))
        # Only what is durable here may be applied (a follower's commit can run ahead of its log).
        upto = min(self.commit, max(self.durable, self.last_index if entries else self.durable))
        committed = tuple((i, self.entry(i)) for i in range(self._applying_to + 1, upto + 1))
        r = Ready(seq=self._seq, hard_state=HardState(term=self.term, vote=self.vote) if self._hard_dirty else None,
                  truncate_from=self._truncate_from, entries=entries, committed=committed,
                  applied=committed[-1][0] if committed else self.applied)
        self._hard_dirty = False
        self._truncate_from = None
        self._unstable_from = None
        self._applying_to = r.applied
        return r

    def unready(self, r: Ready) -> None:
        """Writing ``r`` failed (a full disk): hand its work out again with the next ready."""
        if r.hard_state is not None:
            self._hard_dirty = True
        if r.truncate_from is not None:
            self._truncate_from = r.truncate_from if self._truncate_from is None else min(self._truncate_from,
                                                                                           r.truncate_from)
        if r.entries:
            first = r.entries[0][0]
            if first <= self.last_index:
                self._unstable_from = first if self._unstable_from is None else min(self._unstable_from, first)
        if r.committed:
            self._applying_to = min(self._applying_to, r.committed[0][0] - 1)
        self._changed()

    def persisted(self, r: Ready, now: float) -> None:
        """``r`` is durable and its committed entries applied."""
        self._now = now
        if r.entries:
            last_i, last_e = r.entries[-1]
            # Still the same entry (the log matching property makes the prefix the same too)?
            if self.term_at(last_i) == last_e.term:
                self.durable = max(self.durable, last_i)
        self.applied = max(self.applied, r.applied)
        if self.role is Role.LEADER:
            self._advance_commit()

    def has_ready(self) -> bool:
        return (self._hard_dirty or self._truncate_from is not None or self._unstable_from is not None
                or self._applying_to < min(self.commit, self.durable))

    # --- roles ----------------------------------------------------------------------------------

    def _become_follower(self, term: int, leader: str | None, now: float) -> None:
        if term > self.term:
            self._set_term(term, None)
        self._transfer_to = None
        self._transfer_election = False
        self.role = Role.FOLLOWER
        self.leader = leader
        self._progress = {}
        self._reads = _Reads()
        self._election_at = now + self._election_timeout()

    def _start_pre_vote(self, now: float) -> None:
        """Ask whether a majority would vote for us in the next term; nothing to persist."""
        self._transfer_election = False
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {self.id}
        self._campaign += 1
        self._election_at = now + self._election_timeout()
        if self._won():  # a group of one
            self._start_election(now)

    def _start_election(self, now: float) -> None:
        self.role = Role.CANDIDATE
        self.leader = None
        self._set_term(self.term + 1, self.id)
        self._votes = {self.id}
        self._campaign += 1
        self._election_at = now + self._election_timeout()
        if self._won():  # a group of one
            self._become_leader(now)

    def _won(self) -> bool:
        """The round's (pre-)votes make a majority of the voters in effect now. Counted afresh:
        the configuration can change under a campaign (a snapshot installed meanwhile), and then
        a vote taken from a peer that is no longer a voter, or this node's own once it is not one,
        counts for nothing."""
        return len(self._votes.intersection(self.config.voters)) >= self._quorum()

    def _become_leader(self, now: float) -> None:
        self._now = now
        self.role = Role.LEADER
        self.leader = self.id
        self._fresh = False
        self._progress = {p: _Progress(next=self.last_index + 1, heard_at=now) for p in self.others}
        self._append([Entry(self.term, b"")])  # commit one entry of our own term (paper 5.4.2)
        self._term_start = self.last_index
        # Rounds keep counting across terms, so that a read begun in an earlier leadership is
        # never confirmed by this one's heartbeats (writes may have committed in between).
        self._first_round = self._round
        self._round_sent = True
        self._round_sent_at = {}
        self._lease_revoked = False
        self._advance_commit()

    # --- timers ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run timers. When ``campaign`` moved, there are ``vote_requests()`` to send."""
        self._now = now
        if self.role is Role.LEADER:
            if self._transfer_to is not None and now >= self._transfer_until:
                self._transfer_to = None  # the transfer went nowhere: go on leading
            # Check quorum: a leader cut off from the majority stops accepting work.
            voters = self.config.voters
            heard = int(self.is_voter) + sum(1 for p, pr in self._progress.items()
                                             if p in voters and now - pr.heard_at < self.timing.election_s)
            if heard < self._quorum():
                self._become_follower(self.term, None, now)
            return
        if now >= self._election_at:
            if not self.is_voter:
                # A learner, a node removed from the group, or one that has not learnt its place yet.
                self.role = Role.FOLLOWER
                self._election_at = now + self._election_timeout()
                return
            # A follower, or a (pre-)candidate whose round went nowhere: (re)start with a pre-vote.
            self._start_pre_vote(now)

    @property
    def campaign(self) -> int:
        """Increases with every pre-vote or vote round this node starts; ``vote_requests()``
        are to be sent once per value."""
        return self._campaign

    def vote_requests(self) -> list[tuple[str, VoteRequest]]:
        """The current round's requests to the peers that have not granted them yet: pre-votes
        for ``term + 1`` from a pre-candidate, votes for ``term`` from a candidate."""
        if self.role is Role.PRE_CANDIDATE:
            req = VoteRequest(term=self.term + 1, candidate=self.id, last_index=self.last_index,
                              last_term=self.last_term, pre=True)
        elif self.role is Role.CANDIDATE:
            req = VoteRequest(term=self.term, candidate=self.id, last_index=self.last_index, last_term=self.last_term,
                              transfer=self._transfer_election)
        else:
            return []
        return [(p, req) for p in self.config.voters if p != self.id and p not in self._votes]

    # --- elections ------------------------------------------------------------------------------

    def on_vote(self, req: VoteRequest, now: float) -> VoteReply:
        self._now = now
        # A node that hears from a live leader, or leads, ignores candidates: a peer that was cut
        # off and comes back with a high term must not depose a working leader (thesis 4.2.3).
        in_lease = self.role is Role.LEADER or now - self._heard_leader_at < self.timing.election_s
        if req.transfer and not req.pre:
            in_lease = False  # the leader itself asked the candidate to stand
        if req.pre:
            return self._on_pre_vote(req, in_lease)
        if req.term > self.term and in_lease:
            return VoteReply(term=self.term, granted=False)
        if self._fresh and req.last_index > 0:
            return VoteReply(term=self.term, granted=False)
        if req.term > self.term:
            self._become_follower(req.term, None, now)
        up_to_date = (req.last_term, req.last_index) >= (self.last_term, self.last_index)
        granted = (req.term == self.term and self.vote in (None, req.candidate) and up_to_date)
        if granted:
            if self.vote != req.candidate:
                self._set_term(self.term, req.candidate)
            self._election_at = now + self._election_timeout()
        return VoteReply(term=self.term, granted=granted)

    def _on_pre_vote(self, req: VoteRequest, in_lease: bool) -> VoteReply:
        """Would we vote for ``req.candidate`` in ``req.term``? Answered without adopting the term,
        casting a vote or resetting the election timer: a pre-vote changes nothing here."""
        up_to_date = (req.last_term, req.last_index) >= (self.last_term, self.last_index)
        granted = (req.term > self.term and not in_lease and up_to_date
                   and not (self._fresh and req.last_index > 0))
        return VoteReply(term=req.term if granted else self.term, granted=granted, pre=True)

    def on_vote_reply(self, peer: str, reply: VoteReply, now: float) -> None:
        self._now = now
        if reply.term > self.term and not (reply.pre and reply.granted):
            # A later term (a refused pre-vote carries the voter's own term): follow in it.
            self._become_follower(reply.term, None, now)
            return
        if reply.pre:
            # Only a grant for the term this round asks about counts; older rounds' are stale.
            if (self.role is Role.PRE_CANDIDATE and reply.granted and reply.term == self.term + 1
                    and peer in self.config.voters):
                self._votes.add(peer)
                if self._won():
                    self._start_election(now)
            return
        if (self.role is not Role.CANDIDATE or reply.term != self.term or not reply.granted
                or peer not in self.config.voters):
            return
        self._votes.add(peer)
        if self._won():
            self._become_leader(now)

    # --- replication: follower side -------------------------------------------------------------

    def on_append(self, req: AppendRequest, now: float) -> AppendReply:
        self._now = now
        if req.term < self.term:
            return AppendReply(term=self.term, success=False, match=0, round=req.round)
        if req.term > self.term or self.role is not Role.FOLLOWER:
            self._become_follower(req.term, req.leader, now)
        self.leader = req.leader
        self._heard_leader_at = now
        self._election_at = now + self._election_timeout()
        self._fresh = False
        if self.vote is None:
            # Count the leader as this term's vote: no other candidate can win a term that has
            # a leader, and a late vote request of this term must not get a second vote here.
            self._set_term(self.term, req.leader)
        if req.prev_index > self.last_index:
            return AppendReply(term=self.term, success=False, match=self.last_index, round=req.round)
        if req.prev_index < self.snapshot_index:
            # Already compacted here, hence committed: skip what we hold.
            skip = self.snapshot_index - req.prev_index
            if skip >= len(req.entries):
                return AppendReply(term=self.term, success=True, match=self.snapshot_index, round=req.round)
            req = AppendRequest(term=req.term, leader=req.leader, prev_index=self.snapshot_index,
                                prev_term=req.entries[skip - 1].term if skip else self.snapshot_term,
                                entries=req.entries[skip:], commit=req.commit, round=req.round)
        if self.term_at(req.prev_index) != req.prev_term:
            # Conflict: hint the start of our entries of that term, so the leader skips back fast.
            t = self.term_at(req.prev_index)
            i = req.prev_index
            while i - 1 > max(self.commit, self.snapshot_index) and self.term_at(i - 1) == t:
                i -= 1
            return AppendReply(term=self.term, success=False, match=max(i - 1, self.commit), round=req.round)
        index = req.prev_index
        new: list[Entry] = []
        for k, e in enumerate(req.entries):
            index = req.prev_index + 1 + k
            have = self.term_at(index)
            if have is None:
                new = list(req.entries[k:])
                break
            if have != e.term:
                self._truncate(index)
                new = list(req.entries[k:])
                break
        self._append(new)
        last_new = req.prev_index + len(req.entries)
        if req.commit > self.commit:
            self.commit = min(req.commit, last_new)
            self._changed()
        return AppendReply(term=self.term, success=True, match=last_new, round=req.round)

    # --- replication: leader side ---------------------------------------------------------------

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns (index, term). Raises NotLeader."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        self._append([Entry(self.term, data)])
        return self.last_index, self.term

    def append_for(self, peer: str, now: float) -> AppendRequest | SnapshotNeeded | None:
        """The next request for ``peer``, or None when nothing is due. One request in flight per
        peer; the caller reports its outcome to ``on_append_reply`` or ``append_failed``."""
        if self.role is not Role.LEADER:
            return None
        pr = self._progress.get(peer)
        # A peer the configuration just dropped: the shell's sender for it may run once more
        # before it notices the change.
        if pr is None or pr.inflight or pr.snapshotting:
            return None
        self._renew_round(now)
        has_entries = pr.next <= self.last_index
        round_due = pr.round < self._round
        heartbeat_due = self._slot(now) > self._slot(pr.sent_at)
        if not (has_entries or round_due or heartbeat_due):
            return None
        prev = pr.next - 1
        prev_term = self.term_at(prev)
        if prev_term is None and pr.refused > self.snapshot_index:
            # Installing a snapshot replaces the peer's whole log, and a hint may have skipped back
            # over entries that match ours (and that it acknowledged, perhaps to an earlier leader):
            # first ask whether it agrees at the snapshot point.
            pr.next, prev, prev_term = self.snapshot_index + 1, self.snapshot_index, self.snapshot_term
        if prev_term is None:
            pr.snapshotting = True
            return SnapshotNeeded(peer=peer, index=self.snapshot_index, term=self.snapshot_term)
        batch: list[Entry] = []
        size = 0
        i = pr.next
        while i <= self.last_index and len(batch) < self.timing.max_batch_entries:
            e = self.entry(i)
            if batch and size + len(e.data) > self.timing.max_batch_bytes:
                break
            batch.append(e)
            size += len(e.data)
            i += 1
        pr.inflight = True
        pr.sent_at = now
        if not self._round_sent:
            self._round_first_sent(now)
        return AppendRequest(term=self.term, leader=self.id, prev_index=prev, prev_term=prev_term,
                             entries=tuple(batch), commit=min(self.commit, prev + len(batch)), round=self._round)

    def send_due_in(self, peer: str, now: float) -> float | None:
        """When ``append_for(peer)`` had nothing: seconds until a heartbeat to ``peer`` falls due
        by the clock alone. None when only a change can make a message due (this node does not
        lead); a proposal, a read or a reply is such a change, which the shell hears of anyway."""
        if self.role is not Role.LEADER or peer not in self._progress:
            return None
        # Heartbeats (and the rounds that renew the lease) fall due at the start of each slot of
        # the clock, the same instants for every group of a node: the shell can send all that
        # go to one peer together (a hair after the boundary, so that they are due by then).
        return max(0.0, (self._slot(now) + 1) * self.timing.heartbeat_s - now) + 1e-4

    def tick_due_in(self, now: float) -> float:
        """Seconds until ``tick`` has work: a follower's or candidate's election timer; a leader
        checks its quorum every heartbeat interval."""
        if self.role is Role.LEADER:
            return self.timing.heartbeat_s
        return max(0.0, self._election_at - now)

    def _slot(self, t: float) -> int:
        """The heartbeat slot ``t`` falls in: heartbeats are due once per slot."""
        return math.floor(t / self.timing.heartbeat_s)

    def _renew_round(self, now: float) -> None:
        """Start a new heartbeat round once the current one went out in an earlier slot (at most
        a heartbeat interval ago): acknowledgments of messages sent later renew the lease."""
        if self._round_sent and self._slot(now) > self._slot(self._round_sent_at.get(self._round, -1e18)):
            self._round += 1
            self._round_sent = False

    def _round_first_sent(self, now: float) -> None:
        self._round_sent = True
        sent = self._round_sent_at
        sent[self._round] = now
        # A round first sent an election timeout ago can give no lease: forget it (the map
        # holds rounds in the order they went out, oldest first).
        horizon = now - self.timing.election_s
        while True:
            oldest = next(iter(sent))
            if sent[oldest] >= horizon:
                break
            del sent[oldest]

    def append_failed(self, peer: str) -> None:
        """The request to ``peer`` got no answer (timeout, connection refused)."""
        pr = self._progress.get(peer)
        if pr is not None:
            pr.inflight = False

    def on_append_reply(self, peer: str, req: AppendRequest, reply: AppendReply, now: float) -> None:
        self._now = now
        if reply.term > self.term:
            self._become_follower(reply.term, None, now)
            return
        pr = self._progress.get(peer)
        if self.role is not Role.LEADER or reply.term != self.term or pr is None:
            return
        pr.inflight = False
        pr.heard_at = now
        pr.round = max(pr.round, reply.round)
        # It answered in our term, so it took the message as from its leader and reset its
        # vote-refusing clock on getting it: it promises from the round's first send (rounds of
        # an earlier leadership, and forgotten ones, are not in the map).
        sent = self._round_sent_at.get(reply.round)
        if sent is not None and sent > pr.lease_from:
            pr.lease_from = sent
        if reply.success:
            pr.refused = 1 << 62
            pr.match = max(pr.match, reply.match)
            pr.next = max(pr.next, reply.match + 1)
            self._advance_commit()
        elif req.prev_index == pr.next - 1:
            # (Otherwise a late refusal of an older request: we have moved on since.)
            pr.refused = req.prev_index
            pr.next = max(1, min(req.prev_index, reply.match + 1))

    def snapshot_sent(self, peer: str, index: int, ok: bool, now: float, *, term: int = 0) -> None:
        """The snapshot for ``peer`` (as of ``index``) was installed, or not; ``term`` is the
        peer's term from its answer. A peer behind the compacted log hears only snapshots, so
        this is where a leader learns that the peer has moved to a later term and steps down."""
        if term > self.term:
            self._become_follower(term, None, now)
            return
        pr = self._progress.get(peer)
        if pr is None:
            return
        pr.snapshotting = False
        if ok:
            pr.match = max(pr.match, index)
            pr.next = max(pr.next, index + 1)
            pr.heard_at = now

    def _advance_commit(self) -> None:
        voters = self.config.voters
        matches = [self.durable] if self.is_voter else []
        matches += [pr.match for p, pr in self._progress.items() if p in voters]
        matches.sort(reverse=True)
        if len(matches) < self._quorum():
            return
        n = matches[self._quorum() - 1]
        # Only an entry of the current term is committed by counting (paper 5.4.2).
        if n > self.commit and self.term_at(n) == self.term:
            self.commit = n
            self._changed()
        if not self.is_voter and self.commit >= self.config_index:
            # Our own removal is committed: the group goes on without us (thesis 4.2.2).
            self._become_follower(self.term, None, self._now)

    # --- linearizable reads ---------------------------------------------------------------------

    def read_index(self) -> tuple[int, int]:
        """Start a read: (round, index). The read may be served once ``read_ready(round)`` and
        the state machine has applied ``index``. Raises NotLeader."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._round_sent:
            self._round += 1
            self._round_sent = False
        index = max(self.commit, self._term_start)
        self._reads.waiting[self._round] = max(self._reads.waiting.get(self._round, 0), index)
        return self._round, index

    def lease_until(self) -> float:
        """Until when (this node's clock) no other node can be elected, from what a majority of
        the voters in effect acknowledged; -inf if they have not. See the module docstring."""
        if self.role is not Role.LEADER:
            return float("-inf")
        voters = self.config.voters
        starts = [pr.lease_from for p, pr in self._progress.items() if p in voters]
        if self.is_voter:
            starts.append(float("inf"))  # a leader votes for no one while it leads
        need = self._quorum()
        if len(starts) < need:
            return float("-inf")
        starts.sort(reverse=True)
        return starts[need - 1] + self.timing.election_s * (1.0 - self.timing.clock_drift)

    def lease_read(self, now: float) -> int | None:
        """The index a linearizable read may be served at now without a heartbeat round (once
        the state machine has applied it), or None when this leader holds no lease: then use
        ``read_index``. Raises NotLeader."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if (self._lease_revoked or self.commit < self._term_start or self.config_index > self.commit
                or now >= self.lease_until()):
            return None
        return self.commit

    def read_ready(self, round_: int) -> bool:
        """A majority (this leader included) acknowledged heartbeat ``round_`` or a later one.
        Raises NotLeader if this node no longer leads or the read began under an earlier term."""
        if self.role is not Role.LEADER or round_ <= self._first_round:
            raise NotLeader(self.leader)
        voters = self.config.voters
        acked = int(self.is_voter) + sum(1 for p, pr in self._progress.items() if p in voters and pr.round >= round_)
        return acked >= self._quorum()

    # --- snapshots ------------------------------------------------------------------------------

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (applied, and kept in the state machine's snapshot)."""
        if index <= self.snapshot_index:
            return
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} is applied")
        term = self.term_at(index)
        assert term is not None
        self._snapshot_config = self.config_at(index)
        del self._entries[:index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term

    def restore(self, index: int, term: int, now: float, config: Config | None = None) -> None:
        """A snapshot as of (``index``, ``term``) with membership ``config`` (default: the one in
        effect) was installed, or the replica wiped (0, 0 and the group's first configuration):
        the log restarts after it."""
        config = config or self.config
        self._entries = []
        self.snapshot_index, self.snapshot_term = index, term
        self._snapshot_config = config
        self._set_config(config, index)
        self.commit = self.applied = self._applying_to = self.durable = index
        self._unstable_from = None
        self._truncate_from = None
        # As at a start: whatever this replica promised a leader is counted from now on.
        self._heard_leader_at = now

    def step_down(self, now: float) -> None:
        """Stop leading (this node cannot serve: its state is being rebuilt)."""
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, None, now)

    def status(self) -> dict[str, object]:
        return {"role": str(self.role), "term": self.term, "leader": self.leader, "commit": self.commit,
                "voters": list(self.config.voters), "learners": list(self.config.learners),
                "applied": self.applied, "last_index": self.last_index, "snapshot_index": self.snapshot_index,
                "match": {p: pr.match for p, pr in self._progress.items()}}
