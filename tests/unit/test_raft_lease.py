"""Leader leases in the sans-IO Raft core (thesis section 6.4.1): reads served without a round.

A leader may answer a read at its commit index without a heartbeat round while a majority's
promise not to vote holds: ``election_s * (1 - clock_drift)`` after the first send of the round
they acknowledged. Each test drives cores by hand on a fake clock and checks one rule: the lease
is served inside it and not after it lapses, after a step-down, after a TimeoutNow went out,
before the term's first commit or while a membership change is pending; and the adversary's
fastest legal path to a second leader (a partition, a follower that restarts, a transfer) never
commits a write while the old leader would still serve a lease read.

The race tests use no drift allowance and election timers that fire at their earliest, with
messages that take ``DELAY_S`` each way: a lease counted from when the acknowledgment arrived,
rather than from when the acknowledged message was sent, would fail them.
"""

from __future__ import annotations

import random

import pytest

from headwater.objstore.metadata.raft.core import (AppendRequest, Config, HardState, NotLeader, RaftCore, Role,
                                                   Timing, VoteRequest)
from tests.unit.test_raft_core import exchange, flush
from tests.unit.test_raft_membership import sync, win

ABC = ("a", "b", "c")
SHARP = Timing(election_s=1.0, heartbeat_s=0.1, clock_drift=0.0)
DRIFT = Timing(election_s=1.0, heartbeat_s=0.1, clock_drift=0.1)
# Times in these tests are binary fractions, so that "an election timeout later" is exact.
T0 = 4.0
DELAY_S = 0.125


class Earliest(random.Random):
    """Election timers fire after exactly ``election_s``: the fastest an adversary may be."""

    def random(self) -> float:
        return 0.0


def group(timing: Timing, voters: tuple[str, ...] = ABC) -> dict[str, RaftCore]:
    cfg = Config(voters=voters)
    return {n: RaftCore(n, cfg, now=0.0, timing=timing, rng=Earliest()) for n in voters}


def leading(timing: Timing = DRIFT, voters: tuple[str, ...] = ABC) -> tuple[dict[str, RaftCore], RaftCore]:
    """A group led by ``a``, its log replicated and its no-op committed, that last heard from
    ``a`` in a round sent at ``T0``."""
    nodes = group(timing, voters)
    a = nodes["a"]
    win(a, nodes, 2 * timing.election_s)
    sync(a, nodes, 2 * timing.election_s)
    assert a.commit == a.last_index >= 1
    for p in a.others:
        slow_exchange(a, nodes[p], T0)
    return nodes, a


def slow_exchange(leader: RaftCore, follower: RaftCore, sent: float) -> None:
    """An append sent at ``sent`` that arrives ``DELAY_S`` later, answered after as long again."""
    m = leader.append_for(follower.id, sent)
    assert isinstance(m, AppendRequest)
    reply = follower.on_append(m, sent + DELAY_S)
    flush(follower, sent + DELAY_S)
    leader.on_append_reply(follower.id, m, reply, sent + 2 * DELAY_S)


def pre_vote(cand: RaftCore, voter: RaftCore, now: float) -> bool:
    """Would ``voter`` vote for ``cand`` in the next term at ``now``?"""
    req = VoteRequest(term=cand.term + 1, candidate=cand.id, last_index=cand.last_index, last_term=cand.last_term,
                      pre=True)
    return voter.on_vote(req, now).granted


def elect_and_write(cand: RaftCore, voter: RaftCore, now: float) -> int:
    """``cand`` (its timer due) wins at ``now`` with ``voter``, no message lost or delayed, and
    commits a write; returns the write's index."""
    win(cand, {voter.id: voter}, now)
    index, _ = cand.propose(b"the write")
    flush(cand, now)
    for _ in range(2):
        m = cand.append_for(voter.id, now)
        if isinstance(m, AppendRequest):
            reply = voter.on_append(m, now)
            flush(voter, now)
            cand.on_append_reply(voter.id, m, reply, now)
        flush(cand, now)
    assert cand.commit >= index
    return index


# --- served inside the lease, and only there ------------------------------------------------------

def test_a_read_inside_the_lease_is_served_at_the_commit_index_without_a_round() -> None:
    nodes, a = leading()
    now = T0 + 0.5
    for p in a.others:
        exchange(a, nodes[p], now)
    assert a.lease_read(now) == a.commit
    # Nothing has to go out for it (a ReadIndex read makes a round due at once).
    assert all(a.append_for(p, now) is None for p in a.others)
    a.read_index()
    assert all(isinstance(a.append_for(p, now), AppendRequest) for p in a.others)


def test_the_lease_runs_from_the_send_of_the_acknowledged_round_less_the_drift() -> None:
    nodes, a = leading()
    assert a.lease_until() == pytest.approx(T0 + 0.9)
    assert a.lease_read(T0 + 0.875) == a.commit
    # The followers fall silent: the lease lapses before check-quorum would depose the leader.
    a.tick(T0 + 0.9375)
    assert a.role is Role.LEADER and a.lease_read(T0 + 0.9375) is None
    # The read then waits for a round, as before.
    round_, index = a.read_index()
    assert not a.read_ready(round_) and index == a.commit


def test_a_majority_renews_the_lease_and_a_minority_does_not() -> None:
    nodes, a = leading(voters=("a", "b", "c", "d", "e"))
    later = T0 + 0.5
    slow_exchange(a, nodes["b"], later)
    assert a.lease_until() == pytest.approx(T0 + 0.9)  # c, d and e count from the round at T0
    slow_exchange(a, nodes["c"], later)
    assert a.lease_until() == pytest.approx(later + 0.9)  # a, b and c: a majority of five
    assert a.lease_read(later + 0.875) == a.commit


def test_no_lease_read_after_stepping_down_nor_from_an_earlier_leadership() -> None:
    nodes, a = leading()
    assert a.lease_read(T0) is not None
    # A leader of a later term reaches a: it follows, and reads are refused.
    now = T0 + 1.0
    a.on_append(AppendRequest(term=a.term + 1, leader="b", prev_index=0, prev_term=0, entries=(), commit=0,
                              round=0), now)
    assert a.role is Role.FOLLOWER
    with pytest.raises(NotLeader):
        a.lease_read(now)
    # Elected again: what the followers acknowledged in its earlier term gives no lease.
    now += 2.0
    win(a, {"b": nodes["b"], "c": nodes["c"]}, now)
    assert a.lease_until() < now and a.lease_read(now) is None
    a.step_down(now)
    with pytest.raises(NotLeader):
        a.lease_read(now)


def test_no_lease_read_before_the_terms_first_entry_commits() -> None:
    nodes, a = leading()
    b, c = nodes["b"], nodes["c"]
    # b and c stop hearing a; c wins the next term with b's vote, and its no-op reaches no one.
    now = T0 + 2.0
    win(c, {"b": b}, now)
    assert c.commit < c.last_index
    # b answers c's next append but refuses it (a log that does not match where it builds on):
    # it takes c as its leader, a promise, yet c's no-op is not committed.
    m = c.append_for("b", now)
    assert isinstance(m, AppendRequest)
    bad = AppendRequest(term=m.term, leader="c", prev_index=m.prev_index + 5, prev_term=m.term, entries=(),
                        commit=m.commit, round=m.round)
    reply = b.on_append(bad, now)
    assert not reply.success and reply.term == c.term
    c.on_append_reply("b", m, reply, now)
    assert c.lease_until() > now and c.commit < c.last_index
    assert c.lease_read(now) is None
    now = sync(c, {"b": b}, now, rounds=3)
    assert c.commit == c.last_index and c.lease_read(now) == c.commit


# --- the races ------------------------------------------------------------------------------------

def test_a_partitioned_old_leader_serves_no_lease_read_once_a_new_leader_committed() -> None:
    nodes, a = leading(SHARP)
    b, c = nodes["b"], nodes["c"]
    # a is cut off after its round at T0 (received at T0 + DELAY_S). It still serves from its lease.
    assert a.lease_until() == T0 + 1.0
    assert a.lease_read(T0 + 0.5) == a.commit
    # c votes for b only once its own promise ran out; b's timer fires at the earliest; b wins
    # and commits a write the old leader's state lacks.
    t = T0 + DELAY_S + SHARP.election_s
    assert not pre_vote(b, c, t - 1 / 64)
    index = elect_and_write(b, c, t)
    assert a.role is Role.LEADER and a.commit < index
    assert a.lease_read(t) is None


def test_a_follower_that_restarts_neither_votes_nor_stands_for_an_election_timeout() -> None:
    """Its promise to the leader was in memory only: it keeps it by counting its start as having
    heard a leader. Without that, c (cut off from a) would win with the restarted b's vote while
    a still serves from the lease b's acknowledgment gave it."""
    nodes, a = leading(SHARP)
    b, c = nodes["b"], nodes["c"]
    # c is cut off from a from T0 on; b alone keeps a's lease going.
    sent = T0 + 0.75
    slow_exchange(a, b, sent)
    assert a.lease_until() == sent + 1.0
    # b restarts from its disk right after its acknowledgment.
    restart = sent + 2 * DELAY_S
    flush(b, restart)
    b = RaftCore("b", Config(voters=ABC), now=restart, timing=SHARP, rng=Earliest(),
                 hard_state=HardState(term=b.term, vote=b.vote),
                 entries=[b.entry(i) for i in range(1, b.last_index + 1)], applied=b.applied)
    # c's timer has run out; it asks b, which refuses until an election timeout after its start.
    t = restart + 0.5
    assert t < a.lease_until() and c.role is Role.FOLLOWER
    c.tick(t)
    assert c.role is Role.PRE_CANDIDATE
    assert not pre_vote(c, b, t)
    b.tick(t)
    assert b.role is Role.FOLLOWER  # nor does it stand itself
    t = restart + SHARP.election_s
    assert t >= a.lease_until()
    index = elect_and_write(c, b, t)
    assert a.commit < index and a.lease_read(t) is None


def test_a_leader_serves_no_lease_read_once_it_sent_a_timeout_now() -> None:
    """The transfer flag makes voters grant the new candidate their vote although they heard
    from the leader a moment ago: from the TimeoutNow on, the lease promises nothing."""
    nodes, a = leading(SHARP)
    b, c = nodes["b"], nodes["c"]
    now = T0 + 2 * DELAY_S
    a.transfer_leadership("b", now)
    assert a.lease_read(now) == a.commit  # asking is not yet handing over
    term = a.timeout_now_for("b")
    assert term == a.term
    assert a.lease_read(now) is None
    # b stands at once and c, which heard from a a moment ago, votes for it; b commits a write
    # while a (whose messages no longer arrive) still leads, inside what was its lease.
    assert b.on_timeout_now(term, "a", now)
    flush(b, now)
    for p, req in b.vote_requests():
        if p == "c":
            reply = c.on_vote(req, now)
            flush(c, now)
            b.on_vote_reply("c", reply, now)
    assert b.role is Role.LEADER
    flush(b, now)
    index, _ = b.propose(b"x")
    now = sync(b, {"c": c}, now, rounds=2)
    assert b.commit >= index and a.role is Role.LEADER and a.lease_until() > now
    assert a.lease_read(now) is None


def test_a_transfer_that_goes_nowhere_leaves_the_rest_of_the_term_without_lease_reads() -> None:
    nodes, a = leading(SHARP)
    now = T0 + 2 * DELAY_S
    a.transfer_leadership("b", now)
    assert a.timeout_now_for("b") is not None
    # b never answers the TimeoutNow, nor anything after; the transfer is given up.
    for k in range(1, 12):
        slow_exchange(a, nodes["c"], now + k * 0.125)
    now += 12 * 0.125
    a.tick(now)
    assert a.role is Role.LEADER and a.transferring_to is None
    assert a.lease_until() > now and a.lease_read(now) is None


def test_no_lease_read_while_a_membership_change_is_uncommitted() -> None:
    nodes, a = leading()
    nodes["d"] = RaftCore("d", Config(voters=ABC), now=0.0, timing=DRIFT, rng=Earliest())
    now = T0 + 2 * DELAY_S
    assert a.lease_read(now) == a.commit
    a.propose_config(Config(voters=ABC + ("d",)))
    flush(a, now)
    assert a.lease_read(now) is None  # two configurations a candidate could count on
    now = sync(a, nodes, now, rounds=3)
    assert a.config_index <= a.commit and a.lease_read(now) == a.commit
    # Of four voters it takes three: a and the two whose acknowledgments are the newest.
    sent = T0 + 1.0
    for p in ("b", "c", "d"):
        slow_exchange(a, nodes[p], sent)
    later = sent + 0.5
    slow_exchange(a, nodes["d"], later)
    assert a.lease_until() == pytest.approx(sent + 0.9)
    slow_exchange(a, nodes["b"], later)
    assert a.lease_until() == pytest.approx(later + 0.9)


def test_clock_drift_of_one_turns_lease_reads_off_and_out_of_range_is_refused() -> None:
    nodes, a = leading(Timing(election_s=1.0, heartbeat_s=0.1, clock_drift=1.0))
    assert a.lease_read(T0 + 2 * DELAY_S) is None
    with pytest.raises(ValueError):
        Timing(clock_drift=1.5)
    with pytest.raises(ValueError):
        Timing(clock_drift=-0.1)


def test_the_drift_is_read_from_cluster_toml_and_checked() -> None:
    from headwater.config import ConfigError, loads
    from tests.unit.test_metadata_partition import _toml
    assert loads(_toml()).objstore.raft_clock_drift == 0.1
    assert loads(_toml("raft_clock_drift = 0.02")).objstore.raft_clock_drift == 0.02
    for bad in ("raft_clock_drift = 1.5", "raft_clock_drift = -0.1"):
        with pytest.raises(ConfigError, match="raft_clock_drift"):
            loads(_toml(bad), path="c.toml")


def test_the_leader_remembers_the_send_times_of_an_election_timeout_of_rounds_only() -> None:
    # Every ReadIndex read that finds its round sent starts another: with leases off, thousands.
    nodes, a = leading(Timing(election_s=1.0, heartbeat_s=0.1, clock_drift=1.0))
    now = T0 + 1.0
    for k in range(2000):
        now += 1 / 256
        a.read_index()
        for p in a.others:
            exchange(a, nodes[p], now)
    assert 200 <= len(a._round_sent_at) <= 260  # one round per 1/256 s, for one second


def test_heartbeats_fall_due_at_the_same_slot_boundaries_in_every_group() -> None:
    """So that a node's shell can send each peer the heartbeats of all its groups in one call."""
    one, a = leading()
    two, x = leading()
    exchange(a, one["b"], T0 + 0.5)          # a's last message to b went out just after a slot began
    exchange(x, two["b"], T0 + 0.5875)       # x's just before the next one
    for core in (a, x):
        assert core.append_for("b", T0 + 0.59) is None
        assert core.send_due_in("b", T0 + 0.59) == pytest.approx(0.01, abs=2e-4)
        before = core._round
        m = core.append_for("b", T0 + 0.6 + 1e-4)  # due for both, in a new round that renews the lease
        assert isinstance(m, AppendRequest) and not m.entries and m.round == before + 1
    assert one["b"].leader == "a" and a.send_due_in("b", T0 + 0.61) == pytest.approx(0.09, abs=2e-4)
    assert one["b"].send_due_in("a", T0) is None  # a follower sends nothing on its own
