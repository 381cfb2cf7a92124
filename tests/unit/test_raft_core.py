"""The sans-IO Raft core: its rules one at a time, then a seeded simulation of whole groups.

The scenario tests drive :class:`RaftCore` by hand, one call at a time, and check one rule of
the Raft paper (figure 2), of the thesis additions (Pre-Vote, leader stickiness, check-quorum,
ReadIndex) or of the calling protocol (``ready`` / ``persisted`` / ``unready``).

The simulation runs 3- and 5-node groups on a fake clock over a network that delays, drops,
duplicates, reorders and partitions messages. Nodes crash and lose everything not yet
persisted, and restart from their "disk" (a dict built only from the readies they persisted).
After every step it checks Election Safety, Log Matching, Leader Completeness, State Machine
Safety, that acknowledged commands stay applied, that ReadIndex reads see every write
applied before they started, and that answering a pre-vote changes nothing. After healing the
network it checks that a leader emerges and a new command commits. A calm variant cuts off or
freezes one follower and checks that its return costs the group no election.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from headwater.objstore.metadata.raft.core import (AppendReply, AppendRequest, Entry, HardState, NotLeader, RaftCore,
                                                   Ready, Role, SnapshotNeeded, Timing, VoteReply, VoteRequest)

TIMING = Timing(election_s=1.0, heartbeat_s=0.1)
ABC = ("a", "b", "c")


def mk(node: str = "a", peers: tuple[str, ...] = ABC, *, now: float = 0.0, seed: int = 1, **kw: Any) -> RaftCore:
    return RaftCore(node, peers, now=now, timing=TIMING, rng=random.Random(seed), **kw)


def log(*terms: int) -> list[Entry]:
    """A log whose entry i (1-based) has term ``terms[i - 1]`` and data naming its place."""
    return [Entry(t, f"{i}@{t}".encode()) for i, t in enumerate(terms, 1)]


def flush(core: RaftCore, now: float = 0.0) -> Ready:
    """Persist and apply everything pending, as a shell would."""
    r = core.ready()
    core.persisted(r, now)
    return r


def stand(core: RaftCore, now: float) -> None:
    """Make ``core`` a candidate: its election timer fires at ``now`` (a pre-candidate, same term),
    and every other member would vote for it."""
    term = core.term
    core.tick(now)
    assert core.role is Role.PRE_CANDIDATE and core.term == term
    for p in core.others:
        core.on_vote_reply(p, VoteReply(term=term + 1, granted=True, pre=True), now)
    assert core.role is Role.CANDIDATE and core.term == term + 1


def elect(core: RaftCore, now: float) -> float:
    """Make ``core`` the leader: time out, win the pre-votes, persist the vote, win the others'
    votes. Returns the time it won (two election timeouts after ``now``)."""
    t = now + 2 * TIMING.election_s
    stand(core, t)
    flush(core, t)
    for p in core.others:
        core.on_vote_reply(p, VoteReply(term=core.term, granted=True), t)
    assert core.role is Role.LEADER
    flush(core, t)  # the no-op is durable here
    return t


def heartbeat(term: int, leader: str = "b", *, prev: int = 0, prev_term: int = 0, entries: tuple[Entry, ...] = (),
              commit: int = 0, round_: int = 0) -> AppendRequest:
    return AppendRequest(term=term, leader=leader, prev_index=prev, prev_term=prev_term, entries=entries,
                         commit=commit, round=round_)


def exchange(leader: RaftCore, follower: RaftCore, now: float) -> AppendRequest | SnapshotNeeded | None:
    """One append round trip from ``leader`` to ``follower``, follower persisting before it replies."""
    m = leader.append_for(follower.id, now)
    if isinstance(m, AppendRequest):
        reply = follower.on_append(m, now)
        flush(follower, now)
        leader.on_append_reply(follower.id, m, reply, now)
    return m


def entries_of(core: RaftCore) -> list[tuple[int, int]]:
    return [(i, core.term_at(i)) for i in range(core.snapshot_index + 1, core.last_index + 1)]


# --- elections ------------------------------------------------------------------------------------

@pytest.mark.parametrize("why, my_term, my_log, req, granted", [
    ("lower term", 3, log(1, 2), VoteRequest(term=2, candidate="b", last_index=9, last_term=9), False),
    ("same term, free vote, equal log", 3, log(1, 2), VoteRequest(term=3, candidate="b", last_index=2, last_term=2),
     True),
    ("higher term, longer log", 3, log(1, 2), VoteRequest(term=4, candidate="b", last_index=3, last_term=2), True),
    ("last term older", 3, log(1, 2), VoteRequest(term=4, candidate="b", last_index=9, last_term=1), False),
    ("same last term, shorter", 3, log(1, 2, 2), VoteRequest(term=4, candidate="b", last_index=2, last_term=2),
     False),
    ("newer last term beats length", 3, log(1, 1, 1, 1), VoteRequest(term=4, candidate="b", last_index=1,
                                                                       last_term=2), True),
    ("empty log, empty candidate", 0, [], VoteRequest(term=1, candidate="b", last_index=0, last_term=0), True),
])
def test_vote_granting(why: str, my_term: int, my_log: list[Entry], req: VoteRequest, granted: bool) -> None:
    a = mk(hard_state=HardState(term=my_term), entries=my_log)
    reply = a.on_vote(req, now=5.0)
    assert reply.granted is granted, why
    assert reply.term == a.term == max(my_term, req.term), why  # a higher term is adopted even when refused


def test_one_vote_per_term_and_a_repeated_request_is_granted_again() -> None:
    a = mk(hard_state=HardState(term=1), entries=log(1))
    req_b = VoteRequest(term=2, candidate="b", last_index=1, last_term=1)
    req_c = VoteRequest(term=2, candidate="c", last_index=1, last_term=1)
    assert a.on_vote(req_b, 5.0).granted
    assert not a.on_vote(req_c, 5.0).granted
    assert a.on_vote(req_b, 5.0).granted  # a retried request (the first reply was lost) gets the same answer
    assert a.on_vote(VoteRequest(term=3, candidate="c", last_index=1, last_term=1), 5.0).granted  # a new term


def test_a_follower_counts_its_leader_as_its_vote() -> None:
    a = mk(hard_state=HardState(term=1), entries=log(1))
    a.on_append(heartbeat(2, "b", prev=1, prev_term=1), 5.0)
    assert a.ready().hard_state == HardState(term=2, vote="b")
    assert not a.on_vote(VoteRequest(term=2, candidate="c", last_index=9, last_term=2), 9.0).granted


def ask(core: RaftCore, peers: list[RaftCore], now: float) -> None:
    """Send ``core``'s current vote requests to ``peers`` and hand it their answers."""
    by_id = {p.id: p for p in peers}
    for p, req in core.vote_requests():
        if p in by_id:
            core.on_vote_reply(p, by_id[p].on_vote(req, now), now)


def test_a_new_group_whose_first_election_fails_still_elects_a_leader() -> None:
    a, b, c = mk("a", seed=1), mk("b", seed=2), mk("c", seed=3)
    # a and b time out at once; c would vote for either, so both stand in term 1 and each votes
    # for itself; c hears neither vote request (lost messages).
    a.tick(5.0)
    b.tick(5.0)
    ask(a, [c], 5.0)
    ask(b, [c], 5.0)
    flush(a, 5.0)
    flush(b, 5.0)
    assert (a.role, b.role, a.term, b.term) == (Role.CANDIDATE, Role.CANDIDATE, 1, 1)
    # a's timer fires again: a new pre-vote round, in term 1 still; b and c are reachable and
    # a's log is as good as theirs, so it stands in term 2 and wins.
    a.tick(10.0)
    assert (a.role, a.term) == (Role.PRE_CANDIDATE, 1)
    ask(a, [b, c], 10.0)
    assert (a.role, a.term) == (Role.CANDIDATE, 2)
    flush(a, 10.0)
    ask(a, [b, c], 10.0)
    assert a.role is Role.LEADER


def test_a_vote_is_in_the_ready_before_its_reply_may_go_out() -> None:
    a = mk()
    before = a.seq
    assert a.on_vote(VoteRequest(term=1, candidate="b", last_index=0, last_term=0), 5.0).granted
    assert a.seq > before  # the shell waits for persisted() to cover this seq before replying
    r = a.ready()
    assert r.seq >= a.seq and r.hard_state == HardState(term=1, vote="b")
    # A restart from what was persisted does not vote again in that term.
    a2 = mk(hard_state=r.hard_state)
    assert not a2.on_vote(VoteRequest(term=1, candidate="c", last_index=0, last_term=0), 5.0).granted


def test_granting_a_vote_resets_the_election_timer() -> None:
    a = mk()
    a.on_vote(VoteRequest(term=1, candidate="b", last_index=0, last_term=0), 10.0)
    a.tick(10.0 + 0.99 * TIMING.election_s)
    assert a.role is Role.FOLLOWER


def test_candidate_wins_with_a_majority_and_its_own_vote_is_persisted() -> None:
    a = mk("a", ("a", "b", "c", "d", "e"))
    stand(a, 2 * TIMING.election_s)
    assert a.role is Role.CANDIDATE and a.term == 1 and a.vote == "a"
    assert a.ready().hard_state == HardState(term=1, vote="a")
    reqs = a.vote_requests()
    assert sorted(p for p, _ in reqs) == ["b", "c", "d", "e"]
    assert reqs[0][1] == VoteRequest(term=1, candidate="a", last_index=0, last_term=0)
    a.on_vote_reply("b", VoteReply(term=1, granted=True), 2.0)
    a.on_vote_reply("b", VoteReply(term=1, granted=True), 2.0)  # a duplicate counts once
    a.on_vote_reply("c", VoteReply(term=1, granted=False), 2.0)
    assert a.role is Role.CANDIDATE
    a.on_vote_reply("d", VoteReply(term=0, granted=True), 2.0)  # an answer to an older candidacy
    assert a.role is Role.CANDIDATE
    a.on_vote_reply("e", VoteReply(term=1, granted=True), 2.0)
    assert a.role is Role.LEADER and a.entry(1) == Entry(1, b"")  # the term's no-op


def test_a_higher_term_in_a_vote_reply_ends_the_candidacy() -> None:
    a = mk()
    stand(a, 5.0)
    a.on_vote_reply("b", VoteReply(term=7, granted=False), 5.0)
    assert (a.role, a.term, a.vote) == (Role.FOLLOWER, 7, None)


def test_a_single_node_group_elects_itself_and_commits_once_durable() -> None:
    a = mk("a", ("a",))
    a.tick(5.0)
    assert a.role is Role.LEADER and a.commit == 0  # the no-op is not durable yet
    flush(a, 5.0)
    assert a.commit == 1
    index, term = a.propose(b"x")
    r1 = flush(a, 5.0)
    r2 = flush(a, 5.0)
    assert [(i, e.data) for i, e in r1.committed + r2.committed] == [(1, b""), (2, b"x")]


# --- pre-vote ------------------------------------------------------------------------------------

def drive(nodes: list[RaftCore], now: float, seconds: float, step: float = 0.05) -> float:
    """Run ``nodes`` for ``seconds`` over a perfect network between them: timers, every new
    (pre-)vote round asked of the others, a leader's appends; returns the time."""
    sent = {n.id: n.campaign for n in nodes}
    end = now + seconds
    while now < end:
        now += step
        for n in nodes:
            n.tick(now)
            while n.campaign != sent[n.id]:  # a round, and the election a pre-vote majority starts
                sent[n.id] = n.campaign
                flush(n, now)
                ask(n, [p for p in nodes if p is not n], now)
            if n.role is Role.LEADER:
                for p in nodes:
                    if p is not n:
                        exchange(n, p, now)
            flush(n, now)
    return now


def leading_group() -> tuple[RaftCore, RaftCore, RaftCore, float]:
    """a leads b and c in term 1, the no-op committed everywhere; returns them and the time."""
    a, b, c = mk("a", seed=1), mk("b", seed=2), mk("c", seed=3)
    t = elect(a, 0.0)
    for t in (t, t + TIMING.heartbeat_s):  # the second round tells them the commit
        for f in (b, c):
            exchange(a, f, t)
        flush(a, t)
    assert (a.commit, b.commit, c.commit, b.term, c.term) == (1, 1, 1, 1, 1)
    return a, b, c, t


def test_a_returning_cut_off_follower_neither_raises_the_term_nor_deposes_the_leader() -> None:
    a, b, c, t = leading_group()
    c_seq = c.seq
    # c is cut off for five election timeouts: its pre-vote rounds reach nobody, a and b go on.
    now = t
    for _ in range(50):
        now += 0.1
        exchange(a, b, now)
        if a.append_for("c", now) is not None:
            a.append_failed("c")
        a.tick(now)
        c.tick(now)
    assert c.role is Role.PRE_CANDIDATE and c.campaign >= 2  # it retried, round after round
    assert (c.term, c.vote, c.seq) == (1, "a", c_seq) and not c.has_ready()  # with nothing to persist
    # c is back: its pre-votes reach a leader that leads and a follower that hears it.
    for p, req in c.vote_requests():
        assert req.pre and req.term == 2
        reply = {"a": a, "b": b}[p].on_vote(req, now)
        assert reply == VoteReply(term=1, granted=False, pre=True)
        c.on_vote_reply(p, reply, now)
    assert (c.role, c.term) == (Role.PRE_CANDIDATE, 1)
    # The leader's next append brings it back under the leader, in the same term.
    assert isinstance(exchange(a, c, now + TIMING.heartbeat_s), AppendRequest)
    assert (c.role, c.term, c.leader) == (Role.FOLLOWER, 1, "a")
    assert (a.role, a.term, b.term) == (Role.LEADER, 1, 1)
    assert a._progress["c"].match == a.last_index


@pytest.mark.parametrize("why, my_log, heard_leader, req, reply", [
    ("would vote", log(1, 3), False, VoteRequest(term=5, candidate="b", last_index=2, last_term=3, pre=True),
     VoteReply(term=5, granted=True, pre=True)),
    ("would vote in the next term", log(1, 3), False,
     VoteRequest(term=4, candidate="b", last_index=2, last_term=3, pre=True),
     VoteReply(term=4, granted=True, pre=True)),
    ("not for its own term", log(1, 3), False, VoteRequest(term=3, candidate="b", last_index=2, last_term=3, pre=True),
     VoteReply(term=3, granted=False, pre=True)),
    ("older term", log(1, 3), False, VoteRequest(term=2, candidate="b", last_index=9, last_term=2, pre=True),
     VoteReply(term=3, granted=False, pre=True)),
    ("log behind", log(1, 3), False, VoteRequest(term=5, candidate="b", last_index=1, last_term=3, pre=True),
     VoteReply(term=3, granted=False, pre=True)),
    ("hears a leader", log(1, 3), True, VoteRequest(term=5, candidate="b", last_index=9, last_term=3, pre=True),
     VoteReply(term=3, granted=False, pre=True)),
])
def test_a_pre_vote_is_answered_without_changing_anything(why: str, my_log: list[Entry], heard_leader: bool,
                                                          req: VoteRequest, reply: VoteReply) -> None:
    a = mk(hard_state=HardState(term=3), entries=my_log)
    now = 1.5  # past the election timeout a start counts as hearing a leader for
    if heard_leader:
        a.on_append(heartbeat(3, "c", prev=2, prev_term=3), now)
    flush(a, now)
    before = (a.term, a.vote, a.role, a.leader, a.seq, a._election_at)
    assert a.on_vote(req, now) == reply, why
    assert (a.term, a.vote, a.role, a.leader, a.seq, a._election_at) == before, why
    assert not a.has_ready() and a.ready().empty, why
    # Its vote is still free: a real request of its term from another candidate gets it.
    if not heard_leader:
        assert a.on_vote(VoteRequest(term=3, candidate="c", last_index=2, last_term=3), now).granted, why


def test_a_pre_candidate_without_a_majority_never_raises_its_term() -> None:
    five = ("a", "b", "c", "d", "e")
    a = mk("a", five, hard_state=HardState(term=4, vote="c"), entries=log(1, 4))
    flush(a)
    seq = a.seq
    now = 0.0
    for _ in range(10):
        now += 2 * TIMING.election_s
        campaign = a.campaign
        a.tick(now)
        assert (a.role, a.campaign) == (Role.PRE_CANDIDATE, campaign + 1)
        reqs = dict(a.vote_requests())
        assert sorted(reqs) == ["b", "c", "d", "e"]
        assert reqs["b"] == VoteRequest(term=5, candidate="a", last_index=2, last_term=4, pre=True)
        a.on_vote_reply("b", VoteReply(term=5, granted=True, pre=True), now)    # would vote
        a.on_vote_reply("b", VoteReply(term=5, granted=True, pre=True), now)    # a duplicate counts once
        a.on_vote_reply("c", VoteReply(term=4, granted=False, pre=True), now)   # hears a leader
        a.on_vote_reply("d", VoteReply(term=4, granted=True, pre=True), now)    # from an older round: stale
        # e never answers: two of five.
        assert (a.role, a.term, a.vote, a.seq) == (Role.PRE_CANDIDATE, 4, "c", seq)
    assert a.ready().empty


def test_a_pre_vote_majority_starts_the_real_election() -> None:
    a = mk("a", ("a", "b", "c", "d", "e"), hard_state=HardState(term=4), entries=log(1, 4))
    flush(a)
    a.tick(5.0)
    campaign = a.campaign
    a.on_vote_reply("b", VoteReply(term=5, granted=True, pre=True), 5.0)
    assert (a.role, a.term) == (Role.PRE_CANDIDATE, 4)
    a.on_vote_reply("c", VoteReply(term=5, granted=True, pre=True), 5.0)
    assert (a.role, a.term, a.vote, a.campaign) == (Role.CANDIDATE, 5, "a", campaign + 1)
    assert a.ready().hard_state == HardState(term=5, vote="a")  # persisted before the requests go out
    reqs = dict(a.vote_requests())
    assert sorted(reqs) == ["b", "c", "d", "e"]  # every peer: a pre-vote is no vote
    assert reqs["b"] == VoteRequest(term=5, candidate="a", last_index=2, last_term=4)
    a.on_vote_reply("d", VoteReply(term=5, granted=True, pre=True), 5.0)  # a late pre-vote: not a vote
    a.on_vote_reply("b", VoteReply(term=5, granted=True), 5.0)
    assert a.role is Role.CANDIDATE
    a.on_vote_reply("c", VoteReply(term=5, granted=True), 5.0)
    assert a.role is Role.LEADER


def test_a_refused_pre_vote_from_a_later_term_makes_the_pre_candidate_follow_it() -> None:
    a = mk("a", ("a", "b", "c", "d", "e"), hard_state=HardState(term=4, vote="a"), entries=log(1, 4))
    a.tick(5.0)
    a.on_vote_reply("b", VoteReply(term=5, granted=True, pre=True), 5.0)  # a grant carries the term asked about
    assert (a.role, a.term) == (Role.PRE_CANDIDATE, 4)
    a.on_vote_reply("c", VoteReply(term=7, granted=False, pre=True), 5.0)  # a refusal, the voter's term
    assert (a.role, a.term, a.vote) == (Role.FOLLOWER, 7, None)
    assert a.ready().hard_state == HardState(term=7, vote=None)


def test_a_candidate_whose_election_times_out_asks_for_pre_votes_again_in_its_term() -> None:
    a = mk()
    stand(a, 5.0)
    flush(a, 5.0)
    a.tick(5.0 + 2 * TIMING.election_s)
    assert (a.role, a.term, a.vote) == (Role.PRE_CANDIDATE, 1, "a")
    assert {req for _, req in a.vote_requests()} == {
        VoteRequest(term=2, candidate="a", last_index=0, last_term=0, pre=True)}
    assert a.ready().empty


@pytest.mark.parametrize("term", [4, 6])
def test_a_pre_candidate_follows_a_leader_of_its_term_or_later(term: int) -> None:
    a = mk(hard_state=HardState(term=4, vote="c"), entries=log(1, 4))
    a.tick(5.0)
    assert a.on_append(heartbeat(3, "c", prev=2, prev_term=4), 5.0).success is False
    assert a.role is Role.PRE_CANDIDATE  # an old leader: nothing changes
    assert a.on_append(heartbeat(term, "b", prev=2, prev_term=4), 5.0).success
    assert (a.role, a.term, a.leader) == (Role.FOLLOWER, term, "b")
    assert a.vote_requests() == []
    a.on_vote_reply("c", VoteReply(term=term + 1, granted=True, pre=True), 5.0)  # late: ignored
    assert (a.role, a.term) == (Role.FOLLOWER, term)


def test_a_leader_refuses_pre_votes_and_later_terms_while_it_leads() -> None:
    a, b, c, t = leading_group()
    req = VoteRequest(term=2, candidate="c", last_index=9, last_term=1)
    assert a.on_vote(VoteRequest(term=2, candidate="c", last_index=9, last_term=1, pre=True), t) == VoteReply(
        term=1, granted=False, pre=True)
    assert a.on_vote(req, t) == VoteReply(term=1, granted=False)
    assert (a.role, a.term) == (Role.LEADER, 1)
    # Once check-quorum has made it a follower, and no leader is heard for an election timeout, it would.
    later = t + TIMING.election_s + 0.01
    a.tick(later)
    assert a.role is Role.FOLLOWER
    assert a.on_vote(VoteRequest(term=2, candidate="c", last_index=9, last_term=1, pre=True), later).granted


def test_an_election_still_happens_when_the_leader_is_gone() -> None:
    a, b, c, t = leading_group()
    now = drive([a, b, c], t, 1.0)
    assert (a.role, a.term) == (Role.LEADER, 1)
    # a is gone (its process died); b and c elect one of them after one timeout or two.
    now = drive([b, c], now, 3 * TIMING.election_s)
    leaders = [n for n in (b, c) if n.role is Role.LEADER]
    assert len(leaders) == 1 and leaders[0].term >= 2
    assert b.term == c.term and {b.leader, c.leader} == {leaders[0].id}


def test_a_new_group_elects_a_leader() -> None:
    for seed in range(5):
        nodes = [mk(i, ABC, seed=seed * 3 + k) for k, i in enumerate(ABC)]
        drive(nodes, 0.0, 4 * TIMING.election_s)
        leaders = [n for n in nodes if n.role is Role.LEADER]
        assert len(leaders) == 1, seed
        assert all(n.term == leaders[0].term and n.leader == leaders[0].id for n in nodes), seed
        assert all(n.commit == 1 for n in nodes), seed


def test_a_single_node_group_goes_straight_from_pre_vote_to_leader() -> None:
    a = mk("a", ("a",), hard_state=HardState(term=3), entries=log(1, 3))
    a.tick(5.0)
    assert (a.role, a.term, a.vote) == (Role.LEADER, 4, "a") and a.vote_requests() == []


# --- leader stickiness and check-quorum ----------------------------------------------------------

def test_a_node_that_heard_a_leader_ignores_a_higher_term_candidate() -> None:
    a = mk()
    a.on_append(heartbeat(2), now=10.0)
    req = VoteRequest(term=3, candidate="c", last_index=5, last_term=2)
    reply = a.on_vote(req, now=10.0 + 0.9 * TIMING.election_s)
    assert reply == VoteReply(term=2, granted=False) and a.term == 2 and a.leader == "b"
    # Once the leader has been silent for an election timeout, the candidate is heard.
    assert a.on_vote(req, now=10.0 + 1.1 * TIMING.election_s).granted and a.term == 3


def test_leader_steps_down_when_it_no_longer_hears_a_majority() -> None:
    a = mk("a", ("a", "b", "c", "d", "e"))
    t0 = elect(a, 0.0)
    a.tick(t0 + 0.5)
    assert a.role is Role.LEADER
    # Only b answers: with a, two of five is not a majority.
    m = a.append_for("b", t0 + 0.6)
    assert isinstance(m, AppendRequest)
    a.on_append_reply("b", m, AppendReply(term=a.term, success=True, match=0, round=m.round), t0 + 0.6)
    a.tick(t0 + TIMING.election_s + 0.01)
    assert a.role is Role.FOLLOWER and a.term == 1 and a.leader is None
    with pytest.raises(NotLeader):
        a.propose(b"x")


def test_leader_keeps_leading_while_a_majority_answers() -> None:
    a = mk()
    elect(a, 0.0)
    now = 2.0
    for _ in range(50):
        now += 0.1
        m = a.append_for("b", now)
        if isinstance(m, AppendRequest):
            a.on_append_reply("b", m, AppendReply(term=a.term, success=True, match=m.prev_index + len(m.entries),
                                                  round=m.round), now)
        a.tick(now)
    assert a.role is Role.LEADER


def test_candidate_steps_down_on_an_append_from_the_leader_of_its_term() -> None:
    a = mk()
    stand(a, 5.0)
    assert a.role is Role.CANDIDATE and a.term == 1
    reply = a.on_append(heartbeat(1, "b"), 5.1)
    assert reply.success and (a.role, a.term, a.leader, a.vote) == (Role.FOLLOWER, 1, "b", "a")


def test_an_append_from_an_old_term_is_refused_and_resets_nothing() -> None:
    a = mk(hard_state=HardState(term=5))
    reply = a.on_append(heartbeat(4), 0.5)
    assert reply == AppendReply(term=5, success=False, match=0, round=0)
    assert a.leader is None
    a.tick(2 * TIMING.election_s + 0.01)
    assert a.role is Role.PRE_CANDIDATE  # the stale leader did not hold back our election


# --- replication, follower side ------------------------------------------------------------------

def test_conflicting_suffix_is_truncated_and_replaced() -> None:
    f = mk(hard_state=HardState(term=2), entries=log(1, 1, 2, 2))
    reply = f.on_append(heartbeat(3, prev=2, prev_term=1, entries=(Entry(3, b"new"),), commit=2), 1.0)
    assert reply == AppendReply(term=3, success=True, match=3, round=0)
    r = f.ready()
    assert r.truncate_from == 3 and r.entries == ((3, Entry(3, b"new")),)
    assert [i for i, _ in r.committed] == [1, 2]  # only what the leader vouched for (commit 2)
    assert entries_of(f) == [(1, 1), (2, 1), (3, 3)]


def test_a_stale_append_whose_entries_match_does_not_truncate() -> None:
    f = mk(hard_state=HardState(term=2), entries=log(1, 2, 2, 2))
    reply = f.on_append(heartbeat(2, prev=1, prev_term=1, entries=(Entry(2, b"2@2"),)), 1.0)
    assert reply.success and reply.match == 2
    assert f.last_index == 4 and f.ready().truncate_from is None


def test_commit_never_passes_what_the_leader_vouched_for() -> None:
    f = mk(hard_state=HardState(term=2), entries=log(1, 1, 1))
    # Entries 2 and 3 are not yet known to match the leader's: a heartbeat at prev 1 commits only 1.
    f.on_append(heartbeat(2, prev=1, prev_term=1, commit=1), 1.0)
    assert f.commit == 1
    f.on_append(heartbeat(2, prev=3, prev_term=1, commit=3), 1.0)
    assert f.commit == 3


def test_a_conflict_below_the_commit_index_is_never_truncated() -> None:
    f = mk(hard_state=HardState(term=2), entries=log(1, 1, 1, 1))
    f.on_append(heartbeat(2, prev=4, prev_term=1, commit=3), 1.0)
    flush(f)
    # A (broken) leader claiming a different entry 4 gets a hint, never an erasure of 1..3.
    reply = f.on_append(heartbeat(3, prev=4, prev_term=3), 1.0)
    assert not reply.success and reply.match >= 3 and f.last_index == 4
    with pytest.raises(AssertionError):
        f.on_append(heartbeat(3, prev=2, prev_term=1, entries=(Entry(3, b"x"),)), 1.0)


@pytest.mark.parametrize("why, follower_log, prev, prev_term, hint", [
    ("log too short", log(1, 1), 5, 3, 2),
    ("skip the conflicting term", log(1, 1, 2, 2, 2), 5, 3, 2),
    ("conflict in the first term", log(2, 2, 2), 3, 3, 0),
])
def test_conflict_hint(why: str, follower_log: list[Entry], prev: int, prev_term: int, hint: int) -> None:
    f = mk(hard_state=HardState(term=3), entries=follower_log)
    reply = f.on_append(heartbeat(3, prev=prev, prev_term=prev_term), 1.0)
    assert not reply.success and reply.match == hint, why


def test_the_conflict_hint_makes_the_leader_skip_back_in_few_round_trips() -> None:
    # The leader has 1..3 of term 1 and 4..10 of term 3; the follower 1..3 of term 1 and 4..8 of term 2.
    lead = mk("a", hard_state=HardState(term=3, vote="a"), entries=log(1, 1, 1, *[3] * 7))
    elect(lead, 0.0)  # term 4; its no-op is entry 11
    f = mk("b", hard_state=HardState(term=2), entries=log(1, 1, 1, 2, 2, 2, 2, 2))
    trips = 0
    while lead._progress["b"].match < lead.last_index:
        trips += 1
        assert trips < 5
        m = exchange(lead, f, 3.0)
        assert isinstance(m, AppendRequest)
    assert trips == 3  # prev 11 (too long), prev 8 (term 2 conflict: back to 3), prev 3 (match)
    assert entries_of(f) == entries_of(lead)


def test_an_append_behind_the_followers_snapshot_skips_what_is_compacted() -> None:
    f = mk(hard_state=HardState(term=2), entries=log(1, 1, 2), snapshot_index=0)
    f.on_append(heartbeat(2, prev=3, prev_term=2, commit=3), 1.0)
    flush(f)
    f.compact(2)
    # All of it compacted: success at the snapshot.
    assert f.on_append(heartbeat(2, prev=0, prev_term=0, entries=tuple(log(1))), 1.0).match == 2
    # Overlapping it: the tail beyond is appended.
    reply = f.on_append(heartbeat(2, prev=1, prev_term=1, entries=tuple(log(1, 1, 2, 2)[1:]), commit=4), 1.0)
    assert reply.success and reply.match == 4 and entries_of(f) == [(3, 2), (4, 2)] and f.commit == 4


# --- replication, leader side --------------------------------------------------------------------

def test_commit_counts_only_entries_of_the_current_term_figure_8() -> None:
    # Figure 8 of the Raft paper, (c): S1 leads term 4 with entry 2 of term 2, which it replicates to
    # S2 and S3. A majority holds it, yet it may not be committed by counting: S5 (entry 2 of term 3)
    # could still be elected and overwrite it. Only once an entry of term 4 is on a majority are both
    # committed.
    five = ("s1", "s2", "s3", "s4", "s5")
    s1 = mk("s1", five, hard_state=HardState(term=3), entries=log(1, 2))
    elect(s1, 0.0)
    assert s1.term == 4 and s1.entry(3) == Entry(4, b"")
    s3 = mk("s3", five, hard_state=HardState(term=3), entries=log(1))
    for peer in ("s2", "s3"):
        m = AppendRequest(term=4, leader="s1", prev_index=1, prev_term=1, entries=(s1.entry(2),), commit=0, round=0)
        s1._progress[peer].inflight = True
        s1.on_append_reply(peer, m, AppendReply(term=4, success=True, match=2, round=0), 3.0)
    assert s1.commit == 0
    # The figure's (d): S5 may be elected by S2, S3, S4 (its last term 3 beats their term 2) and
    # overwrite entry 2 on them.
    s3.on_append(heartbeat(4, "s1", prev=1, prev_term=1, entries=(s1.entry(2),)), 3.0)
    assert s3.on_vote(VoteRequest(term=5, candidate="s5", last_index=2, last_term=3), 10.0).granted
    # The figure's (e): term 4's own entry reaches the majority; now 2 and 3 commit together.
    for peer in ("s2", "s3"):
        m = AppendRequest(term=4, leader="s1", prev_index=2, prev_term=2, entries=(s1.entry(3),), commit=0, round=0)
        s1.on_append_reply(peer, m, AppendReply(term=4, success=True, match=3, round=0), 3.0)
    assert s1.commit == 3


def test_the_leader_counts_itself_only_once_its_own_entries_are_durable() -> None:
    a = mk()
    elect(a, 0.0)
    a.propose(b"x")  # entry 2, not yet persisted on the leader
    m = a.append_for("b", 3.0)
    assert isinstance(m, AppendRequest) and len(m.entries) == 2
    a.on_append_reply("b", m, AppendReply(term=1, success=True, match=2, round=m.round), 3.0)
    assert a.commit == 1  # b has 2, but a has not persisted it: one of three
    flush(a, 3.0)
    assert a.commit == 2


def test_one_request_in_flight_per_peer_and_append_failed_frees_it() -> None:
    a = mk()
    elect(a, 0.0)
    assert isinstance(a.append_for("b", 3.0), AppendRequest)
    a.propose(b"x")
    assert a.append_for("b", 3.0) is None
    a.append_failed("b")
    m = a.append_for("b", 3.0)
    assert isinstance(m, AppendRequest) and m.entries[-1].data == b"x"


def test_heartbeats_go_out_on_the_heartbeat_period() -> None:
    a = mk()
    elect(a, 0.0)
    m = a.append_for("b", 3.0)
    a.on_append_reply("b", m, AppendReply(term=1, success=True, match=1, round=m.round), 3.0)
    assert a.append_for("b", 3.0 + TIMING.heartbeat_s / 2) is None
    hb = a.append_for("b", 3.0 + TIMING.heartbeat_s)
    assert isinstance(hb, AppendRequest) and hb.entries == () and hb.prev_index == 1


def test_a_stale_success_never_moves_match_back() -> None:
    a = mk()
    elect(a, 0.0)
    for data in (b"x", b"y"):
        a.propose(data)
    flush(a, 3.0)
    m = a.append_for("b", 3.0)
    a.on_append_reply("b", m, AppendReply(term=1, success=True, match=3, round=m.round), 3.0)
    a.on_append_reply("b", m, AppendReply(term=1, success=True, match=1, round=m.round), 3.0)
    assert a._progress["b"].match == 3 and a._progress["b"].next == 4


def test_a_higher_term_in_an_append_reply_deposes_the_leader() -> None:
    a = mk()
    elect(a, 0.0)
    m = a.append_for("b", 3.0)
    a.on_append_reply("b", m, AppendReply(term=9, success=False, match=0, round=0), 3.0)
    assert (a.role, a.term) == (Role.FOLLOWER, 9)
    assert a.append_for("b", 3.0) is None


# --- linearizable reads --------------------------------------------------------------------------

def test_read_waits_for_the_terms_no_op_and_a_round_started_after_it() -> None:
    a = mk()
    elect(a, 0.0)
    old = a.append_for("b", 3.0)  # sent before the read: its answer proves nothing about the read
    round_, index = a.read_index()
    assert index == 1  # the term's no-op, though nothing is committed yet
    assert a.commit == 0 and not a.read_ready(round_)
    a.on_append_reply("b", old, AppendReply(term=1, success=True, match=1, round=old.round), 3.0)
    assert a.commit == 1 and not a.read_ready(round_)
    m = a.append_for("b", 3.0)  # due at once: the read's round is not yet acknowledged
    assert isinstance(m, AppendRequest) and m.round == round_
    a.on_append_reply("b", m, AppendReply(term=1, success=True, match=1, round=m.round), 3.0)
    assert a.read_ready(round_)


def test_reads_started_before_a_round_goes_out_share_it() -> None:
    a = mk()
    elect(a, 0.0)
    r1, _ = a.read_index()
    r2, _ = a.read_index()
    assert r1 == r2
    m = a.append_for("b", 3.0)
    r3, _ = a.read_index()
    assert r3 == r1 + 1
    a.on_append_reply("b", m, AppendReply(term=1, success=False, match=0, round=m.round), 3.0)
    assert a.read_ready(r1) and not a.read_ready(r3)  # a refusal still confirms the leadership


def test_reads_need_the_leader() -> None:
    a = mk()
    with pytest.raises(NotLeader):
        a.read_index()
    elect(a, 0.0)
    round_, _ = a.read_index()
    a.on_append_reply("b", heartbeat(1), AppendReply(term=2, success=False, match=0, round=round_), 3.0)
    with pytest.raises(NotLeader):
        a.read_ready(round_)


def test_read_from_an_earlier_term_is_never_ready() -> None:
    # Regression: rounds restarted at 0 in every term, so a read begun in an old term was
    # "confirmed" by a heartbeat round of a later leadership, though in between another
    # leader may have committed writes the read's index does not cover.
    a = mk()
    elect(a, 0.0)
    round_, _ = a.read_index()
    a.on_append_reply("b", heartbeat(1), AppendReply(term=2, success=False, match=0, round=0), 3.0)
    assert a.role is Role.FOLLOWER
    elect(a, 10.0)  # term 3
    for p in a.others:
        m = a.append_for(p, 13.0)
        a.on_append_reply(p, m, AppendReply(term=a.term, success=True, match=m.prev_index + len(m.entries),
                                            round=m.round), 13.0)
    r3, _ = a.read_index()
    m = a.append_for("b", 13.0)
    a.on_append_reply("b", m, AppendReply(term=a.term, success=True, match=0, round=m.round), 13.0)
    assert a.read_ready(r3)
    with pytest.raises(NotLeader):
        a.read_ready(round_)


# --- persistence protocol ------------------------------------------------------------------------

def test_unready_hands_the_failed_work_out_again() -> None:
    f = mk(hard_state=HardState(term=1), entries=log(1))
    f.on_append(heartbeat(2, prev=1, prev_term=1, entries=tuple(log(1, 2, 2)[1:]), commit=3), 1.0)
    r = f.ready()
    assert r.hard_state and r.entries and r.committed
    assert f.ready().empty
    f.unready(r)
    r2 = f.ready()
    assert (r2.hard_state, r2.truncate_from, r2.entries, r2.committed, r2.applied) == (
        r.hard_state, r.truncate_from, r.entries, r.committed, r.applied)
    assert r2.seq > r.seq
    f.persisted(r2, 1.0)
    assert f.applied == 3 and not f.has_ready()


def test_unready_after_a_truncation_keeps_the_newer_log() -> None:
    f = mk(hard_state=HardState(term=1), entries=log(1))
    f.on_append(heartbeat(1, prev=1, prev_term=1, entries=tuple(log(1, 1, 1)[1:])), 1.0)
    r = f.ready()
    f.on_append(heartbeat(2, prev=1, prev_term=1, entries=(Entry(2, b"z"),)), 1.0)  # replaces 2 and 3
    f.unready(r)
    r2 = f.ready()
    assert r2.truncate_from == 2 and r2.entries == ((2, Entry(2, b"z")),)


def test_persisted_ignores_entries_replaced_meanwhile() -> None:
    f = mk(hard_state=HardState(term=1), entries=log(1))
    f.on_append(heartbeat(1, prev=1, prev_term=1, entries=tuple(log(1, 1)[1:])), 1.0)
    r = f.ready()
    f.on_append(heartbeat(2, prev=1, prev_term=1, entries=(Entry(2, b"z"),), commit=2), 1.0)
    f.persisted(r, 1.0)
    assert f.durable == 1  # entry 2 of term 1 went to disk, but the log now holds term 2's
    r2 = f.ready()
    assert r2.truncate_from == 2 and [i for i, _ in r2.committed] == [1, 2]
    assert r2.committed[-1][1] == Entry(2, b"z")


def test_a_follower_applies_only_what_it_has_written() -> None:
    f = mk()
    f.on_append(heartbeat(1, prev=0, prev_term=0, entries=tuple(log(1, 1)), commit=2), 1.0)
    r = f.ready()
    # Written in the same ready as they are applied: allowed, the ready's order puts the log first.
    assert [i for i, _ in r.entries] == [1, 2] and [i for i, _ in r.committed] == [1, 2]


# --- compaction and snapshots --------------------------------------------------------------------

def test_compaction_needs_applied_entries() -> None:
    a = mk()
    elect(a, 0.0)
    with pytest.raises(ValueError):
        a.compact(1)  # committed? not even that
    flush(a)
    a.compact(0)
    assert a.snapshot_index == 0


def test_a_follower_behind_the_compacted_log_gets_a_snapshot() -> None:
    a = mk()
    elect(a, 0.0)
    b = mk("b")
    for i in range(5):
        a.propose(f"x{i}".encode())
    flush(a, 3.0)
    while a.commit < 6:
        exchange(a, b, 3.0)
        flush(a, 3.0)
    flush(a, 3.0)
    assert a.applied == 6
    a.compact(4)
    assert (a.snapshot_index, a.snapshot_term, a.last_index) == (4, 1, 6)
    # c has nothing: the leader probes, c answers with its last index 0, and the leader needs a snapshot.
    c = mk("c", hard_state=HardState(term=1))
    msgs = [exchange(a, c, 3.1) for _ in range(3)]
    snap = next(m for m in msgs if isinstance(m, SnapshotNeeded))
    assert snap == SnapshotNeeded(peer="c", index=4, term=1)
    assert a.append_for("c", 9.0) is None  # nothing else while the snapshot is on its way
    a.snapshot_sent("c", 4, False, 9.0)
    assert a.append_for("c", 9.0) == SnapshotNeeded(peer="c", index=4, term=1)  # failed: again
    c.restore(4, 1, 9.0)
    a.snapshot_sent("c", 4, True, 9.0)
    assert a._progress["c"].match == 4
    m = exchange(a, c, 9.0)
    assert isinstance(m, AppendRequest) and m.prev_index == 4
    assert entries_of(c) == entries_of(a) and c.commit == 6


def test_a_snapshot_refused_for_a_later_term_deposes_the_leader() -> None:
    # Regression: a peer behind the compacted log hears only snapshots. When it had moved to a
    # later term (cut off, it stood for election) it refused them, but snapshot_sent could not
    # tell the leader why: the leader kept leading its old term, sent snapshot after snapshot,
    # and the peer stayed out until its own vote requests disrupted the group.
    a = mk()
    elect(a, 0.0)
    a._progress["c"].next = 1
    a.snapshot_index = a.snapshot_term = 1  # as if compacted past the no-op
    a._entries = []
    assert isinstance(a.append_for("c", 3.0), AppendRequest)  # the probe at the snapshot point
    a.on_append_reply("c", AppendRequest(term=1, leader="a", prev_index=1, prev_term=1, entries=(), commit=0,
                                         round=0), AppendReply(term=1, success=False, match=0, round=0), 3.0)
    assert a.append_for("c", 3.0) == SnapshotNeeded(peer="c", index=1, term=1)
    a.snapshot_sent("c", 1, False, 3.5, term=4)
    assert (a.role, a.term) == (Role.FOLLOWER, 4)


def test_a_peer_refusing_after_an_overstated_snapshot_still_catches_up() -> None:
    # group.py's replicators share one _snapshot_index, so snapshot_sent may report a later index
    # than the peer installed. Its refusals must still move the leader back, not be taken for
    # stale ones forever.
    a = mk()
    elect(a, 0.0)
    b = mk("b")
    for i in range(5):
        a.propose(f"x{i}".encode())
    flush(a, 3.0)
    while a.commit < 6:
        exchange(a, b, 3.0)
        flush(a, 3.0)
    flush(a, 3.0)
    a.compact(4)
    c = mk("c", hard_state=HardState(term=1))
    snap = next(m for m in (exchange(a, c, 3.1) for _ in range(3)) if isinstance(m, SnapshotNeeded))
    c.restore(snap.index, snap.term, 3.2)
    a.snapshot_sent("c", 6, True, 3.2)  # overstated: c has 4
    for _ in range(4):
        exchange(a, c, 3.3)
    assert entries_of(c) == entries_of(a) and a._progress["c"].match == 6


def test_restore_restarts_the_log_after_the_snapshot() -> None:
    f = mk(hard_state=HardState(term=1), entries=log(1, 1))
    f.restore(10, 3, now=5.0)
    assert (f.last_index, f.last_term, f.commit, f.applied, f.term_at(10), f.term_at(9)) == (10, 3, 10, 10, 3, None)
    assert not f.ready().committed
    reply = f.on_append(heartbeat(3, prev=10, prev_term=3, entries=(Entry(3, b"y"),), commit=11), 5.1)
    assert reply.success and reply.match == 11
    r = f.ready()
    assert [i for i, _ in r.entries] == [11] and [i for i, _ in r.committed] == [11]
    # Installing a snapshot counts as hearing from the leader: no election right after it.
    assert not f.on_vote(VoteRequest(term=9, candidate="c", last_index=99, last_term=9), 5.5).granted


def test_a_follower_matching_at_the_snapshot_is_not_sent_a_snapshot() -> None:
    # Regression: the follower's hint skipped back over its whole run of one term, past entries
    # that matched the leader's, to below the leader's snapshot; the leader then sent a snapshot,
    # and installing it wipes the follower's log, including entry 3, which the follower had
    # acknowledged and which was committed with its help. The leader now probes its snapshot
    # point first and only sends a snapshot to a follower that lacks it or disagrees there.
    lead = mk("a", hard_state=HardState(term=2, vote="a"), entries=log(1, 1, 1, 2))
    lead.on_append(heartbeat(2, "c", prev=4, prev_term=2, commit=2), 0.0)  # it knew 1..2 committed
    flush(lead)
    lead.compact(2)
    elect(lead, 0.0)  # term 3
    f = mk("b", hard_state=HardState(term=1), entries=log(1, 1, 1, 1, 1, 1))  # knows nothing committed
    msgs = [exchange(lead, f, 3.0) for _ in range(4)]
    assert not any(isinstance(m, SnapshotNeeded) for m in msgs)
    assert entries_of(f)[:3] == [(1, 1), (2, 1), (3, 1)] and f.term_at(4) == 2


def test_a_stale_refusal_does_not_send_a_caught_up_follower_a_snapshot() -> None:
    # Regression: a refusal that arrived late (an answer to a probe from before the follower
    # caught up) moved next back below match, and below the snapshot: the follower was sent a
    # snapshot that erased entries it had acknowledged.
    a = mk()
    elect(a, 0.0)
    b = mk("b")
    first = a.append_for("b", 3.0)
    refused = AppendReply(term=1, success=False, match=0, round=first.round)
    a.append_failed("b")
    for i in range(4):
        a.propose(f"x{i}".encode())
    flush(a, 3.0)
    while a._progress["b"].match < a.last_index:
        exchange(a, b, 3.0)
    flush(a, 3.0)
    flush(a, 3.0)
    a.compact(3)
    a.on_append_reply("b", first, refused, 3.5)  # the stale refusal
    assert a._progress["b"].next == a.last_index + 1
    assert not isinstance(a.append_for("b", 4.0), SnapshotNeeded)


# --- the simulation ------------------------------------------------------------------------------

@dataclass(slots=True)
class Disk:
    """What a node has persisted: only what its ``persisted`` readies (and snapshots) wrote."""

    hard: HardState = field(default_factory=HardState)
    log: dict[int, Entry] = field(default_factory=dict)
    snap_index: int = 0
    snap_term: int = 0
    sm: list[Entry] = field(default_factory=list)  # the state machine: entries 1..applied, in order


@dataclass(slots=True)
class Node:
    """A live node: the core plus the shell's state, all of it lost in a crash."""

    core: RaftCore
    life: int                           # incarnation: answers to an earlier life are not its
    durable_seq: int = 0
    writing: tuple[Ready, float] | None = None
    outbox: list[tuple[int, tuple[Any, ...]]] = field(default_factory=list)  # (seq needed, message)
    campaign: int = 0                   # the core's last campaign whose vote requests went out
    rpc: dict[str, tuple[int, str, float]] = field(default_factory=dict)     # peer -> (id, kind, deadline)
    led_term: int = -1
    checked_seq: int = -1


class Violation(AssertionError):
    """A Raft safety property does not hold."""


class Sim:
    """A Raft group on a fake clock, a hostile network and crashing disks (see the module docstring)."""

    STEP_S = 0.025
    RPC_TIMEOUT_S = 0.5

    def __init__(self, seed: int, size: int):
        self.rng = random.Random(seed)
        self.ids = tuple("abcde"[:size])
        self.now = 0.0
        self.disks = {i: Disk() for i in self.ids}
        self.nodes: dict[str, Node | None] = {}
        self.down_until: dict[str, float] = {}
        self.lives = itertools.count()
        self.rpc_ids = itertools.count()
        for i in self.ids:
            self._boot(i)
        self.net: list[tuple[float, int, tuple[Any, ...]]] = []
        self.msg_ids = itertools.count()
        self.cut: set[tuple[str, str]] = set()
        self.heal_at = 0.0
        self.drop, self.dup, self.crashy, self.clients = 0.05, 0.03, True, True
        # What the checks remember.
        self.hist: dict[int, Entry] = {}              # the one history every state machine is a prefix of
        self.hist_at: dict[int, float] = {}           # when each index was first applied anywhere
        self.leaders: dict[int, str] = {}             # term -> its leader
        self.seen: dict[tuple[int, int], tuple[bytes, int | None]] = {}  # (index, term) -> (data, term before)
        self.proposed: dict[tuple[str, int, int], tuple[int, bytes]] = {}  # (node, life, index) -> (term, cmd)
        self.acked: dict[bytes, int] = {}             # command -> index, once its leader applied it
        self.reads: list[tuple[str, int, int | None, int, int]] = []  # (node, life, round, index, committed)
        self.hist_cmds: set[bytes] = set()            # the commands in it, each at most once
        self.counts = {"pre_votes": 0, "elections": 0, "crashes": 0, "snapshots": 0, "reads": 0, "persist_fail": 0,
                       "lease_reads": 0}
        self.leases = True  # leaders try a lease read first, as the shell does
        self.cmds = itertools.count()

    # --- nodes ----------------------------------------------------------------------------------

    def _boot(self, i: str) -> None:
        """Start node ``i`` from its disk alone."""
        d = self.disks[i]
        keys = sorted(d.log)
        if keys and keys != list(range(d.snap_index + 1, d.snap_index + 1 + len(keys))):
            raise Violation(f"{i}: the log on disk is not contiguous after {d.snap_index}: {keys}")
        core = RaftCore(i, self.ids, now=self.now, timing=TIMING, hard_state=d.hard, entries=[d.log[k] for k in keys],
                        snapshot_index=d.snap_index, snapshot_term=d.snap_term, applied=len(d.sm),
                        rng=random.Random(self.rng.random()))
        self.nodes[i] = Node(core=core, life=next(self.lives), durable_seq=core.seq)

    def crash(self, i: str) -> None:
        self.nodes[i] = None  # the write in progress, the outbox and the core's memory are gone
        self.down_until[i] = self.now + self.rng.uniform(0.2, 3.0)
        self.counts["crashes"] += 1

    # --- network --------------------------------------------------------------------------------

    def send(self, src: str, dst: str, msg: tuple[Any, ...]) -> None:
        if (src, dst) in self.cut or self.rng.random() < self.drop:
            return
        for _ in range(2 if self.rng.random() < self.dup else 1):
            delay = self.rng.uniform(0.001, 0.03) if self.rng.random() < 0.9 else self.rng.uniform(0.03, 0.4)
            heapq.heappush(self.net, (self.now + delay, next(self.msg_ids), (src, dst, msg)))

    def deliver(self, src: str, dst: str, msg: tuple[Any, ...]) -> None:
        n = self.nodes[dst]
        if n is None:
            return
        c, now, kind = n.core, self.now, msg[0]
        if kind == "vote":
            req = msg[1]
            before = (c.seq, c.term, c.vote, c.role, c.leader)
            vote = c.on_vote(req, now)
            if req.pre and (c.seq, c.term, c.vote, c.role, c.leader) != before:
                raise Violation(f"{c.id}: a pre-vote changed its state {before} to "
                                f"{(c.seq, c.term, c.vote, c.role, c.leader)}")
            if vote.pre != req.pre:
                raise Violation(f"{c.id}: answered {req} with {vote}")
            n.outbox.append((c.seq, (src, ("voted", vote))))  # c.seq read after the call: it covers the vote
        elif kind == "voted":
            c.on_vote_reply(src, msg[1], now)  # the reply as it came, pre flag and all
        elif kind == "append":
            _, req, rpc = msg
            reply = c.on_append(req, now)
            n.outbox.append((c.seq, (src, ("appended", req, reply, rpc))))
        elif kind == "appended":
            _, req, reply, rpc = msg
            cur = n.rpc.get(src)
            if cur is not None and cur[0] == rpc:
                del n.rpc[src]
            # Late and duplicated answers are delivered too: the core must shrug them off.
            c.on_append_reply(src, req, reply, now)
        elif kind == "snapshot":
            self._install(n, src, *msg[1:])
        elif kind == "snapshotted":
            _, term, ok, index, rpc = msg
            cur = n.rpc.get(src)
            if cur is not None and cur[0] == rpc:  # an RPC: only the caller waiting for it sees it
                del n.rpc[src]
                c.snapshot_sent(src, index, ok, now, term=term)

    def _install(self, n: Node, src: str, term: int, index: int, snap_term: int, sm: list[Entry], rpc: int) -> None:
        """Install a snapshot as a careful shell would: durably adopt the leader's term first,
        skip a snapshot that is not ahead of the commit index, replace log and state at once."""
        c = n.core
        c_id, d = c.id, self.disks[c.id]
        if term < c.term:
            self.send(c_id, src, ("snapshotted", c.term, False, index, rpc))
            return
        c.on_append(AppendRequest(term=term, leader=src, prev_index=0, prev_term=0, entries=(), commit=0, round=0),
                    self.now)
        # Persist everything pending first (the adopted term above included), then install.
        if n.writing is not None:
            self._finish_write(n, fail=False)
        self._finish_write(n, r=c.ready(), fail=False)
        if index > c.commit:  # an older or duplicated snapshot would erase acknowledged entries
            for k, e in enumerate(sm, 1):
                self._check_applied(c_id, k, e)
            d.log.clear()
            d.snap_index, d.snap_term, d.sm = index, snap_term, list(sm)
            c.restore(index, snap_term, self.now)
            self.counts["snapshots"] += 1
        self.send(c_id, src, ("snapshotted", c.term, True, index, rpc))

    # --- persistence ----------------------------------------------------------------------------

    def _finish_write(self, n: Node, *, r: Ready | None = None, fail: bool | None = None) -> None:
        """Write ``r`` (default: the write in progress) to the node's disk in the order Ready
        prescribes, or fail it (a full disk) and hand it back with ``unready``."""
        if r is None:
            assert n.writing is not None
            r = n.writing[0]
        n.writing = None
        c, d = n.core, self.disks[n.core.id]
        if fail if fail is not None else self.rng.random() < 0.03:
            c.unready(r)  # a full disk: nothing of it was written
            self.counts["persist_fail"] += 1
            return
        if r.hard_state is not None:
            d.hard = r.hard_state
        if r.truncate_from is not None:
            for k in [k for k in d.log if k >= r.truncate_from]:
                del d.log[k]
        for k, e in r.entries:
            if k <= d.snap_index:
                raise Violation(f"{c.id}: ready writes entry {k} behind the snapshot at {d.snap_index}")
            d.log[k] = e
        for k, e in r.committed:
            if k != len(d.sm) + 1:
                raise Violation(f"{c.id}: applies {k} after {len(d.sm)}")
            if d.log.get(k, e) != e and k > d.snap_index:
                raise Violation(f"{c.id}: applies {k} {e} but its log holds {d.log.get(k)}")
            d.sm.append(e)
            self._check_applied(c.id, k, e)
            p = self.proposed.pop((c.id, n.life, k), None)
            if p is not None and p[0] == e.term:
                if e.data != p[1]:
                    raise Violation(f"{c.id}: index {k} of term {e.term} is not the command proposed there")
                self.acked[e.data] = k
        c.persisted(r, self.now)
        n.durable_seq = r.seq
        if c.applied != len(d.sm):
            raise Violation(f"{c.id}: core says applied {c.applied}, state machine has {len(d.sm)}")
        # Compact now and then, keeping a few entries for followers a little behind.
        if c.applied - d.snap_index >= 6 and self.rng.random() < 0.3:
            upto = c.applied - self.rng.randint(0, 3)
            if upto > d.snap_index:
                term = c.term_at(upto)
                assert term is not None
                for k in [k for k in d.log if k <= upto]:
                    del d.log[k]
                d.snap_index, d.snap_term = upto, term
                c.compact(upto)

    def _check_applied(self, node: str, k: int, e: Entry) -> None:
        h = self.hist.get(k)
        if h is None:
            if k != len(self.hist) + 1:
                raise Violation(f"{node} applied {k} before anyone applied {len(self.hist) + 1}")
            if e.data and e.data in self.hist_cmds:
                raise Violation(f"{node} applied command {e.data!r} a second time, at {k}")
            self.hist[k], self.hist_at[k] = e, self.now
            self.hist_cmds.add(e.data)
        elif h != e:
            raise Violation(f"state machine safety: {node} applied {e} at {k}, another node {h}")

    # --- one step -------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance the clock one step: deliver, run every node, stir, serve reads, check."""
        self.now += self.STEP_S
        while self.net and self.net[0][0] <= self.now:
            _, _, (src, dst, msg) = heapq.heappop(self.net)
            self.deliver(src, dst, msg)
        for i in self.ids:
            n = self.nodes[i]
            if n is None:
                if self.now >= self.down_until[i]:
                    self._boot(i)
                continue
            self._run_node(n)
        self._chaos()
        self._serve_reads()
        self.check()

    def _run_node(self, n: Node) -> None:
        """One node's turn: timers, vote requests, RPC timeouts, appends, persistence, replies."""
        c, now = n.core, self.now
        c.tick(now)
        # A new round, from tick (a pre-vote) or from a pre-vote majority delivered this step
        # (the real election): send its requests once.
        if c.campaign != n.campaign:
            n.campaign = c.campaign
            reqs = c.vote_requests()
            if c.role is Role.PRE_CANDIDATE:
                self.counts["pre_votes"] += 1
            elif c.role is not Role.LEADER:  # (a group of one goes straight through)
                self.counts["elections"] += 1
            for p, req in reqs:
                if req.pre and (req.term != c.term + 1 or c.role is not Role.PRE_CANDIDATE):
                    raise Violation(f"{c.id}: a pre-vote request {req} as {c.role} of term {c.term}")
                # A pre-vote needs nothing durable; a vote goes after our own vote is durable.
                n.outbox.append((0 if req.pre else c.seq, (p, ("vote", req))))
        for p, (rpc, kind, deadline) in list(n.rpc.items()):
            if now >= deadline:
                del n.rpc[p]
                if kind == "append":
                    c.append_failed(p)
                else:
                    c.snapshot_sent(p, 0, False, now)
        if c.role is Role.LEADER:
            for p in c.others:
                m = c.append_for(p, now)
                if m is None:
                    continue
                rpc = next(self.rpc_ids)
                if isinstance(m, SnapshotNeeded):
                    # The state as of what this node has applied (the shell sends its records).
                    sm = list(self.disks[c.id].sm)
                    assert len(sm) >= m.index
                    n.rpc[p] = (rpc, "snapshot", now + 4 * self.RPC_TIMEOUT_S)
                    self.send(c.id, p, ("snapshot", c.term, len(sm), sm[-1].term if sm else 0, sm, rpc))
                else:
                    n.rpc[p] = (rpc, "append", now + self.RPC_TIMEOUT_S)
                    self.send(c.id, p, ("append", m, rpc))
        if n.writing is not None and now >= n.writing[1]:
            self._finish_write(n)
        if n.writing is None and c.seq > n.durable_seq:
            n.writing = (c.ready(), now + self.rng.uniform(0.0, 0.03 if self.rng.random() < 0.8 else 0.3))
        if n.outbox:
            keep = []
            for seq, (dst, msg) in n.outbox:
                if seq <= n.durable_seq:
                    self.send(c.id, dst, msg)
                else:
                    keep.append((seq, (dst, msg)))
            n.outbox = keep

    def _chaos(self) -> None:
        rng = self.rng
        if self.crashy and rng.random() < 0.004 * len(self.ids):
            # Leaders crash more often than their share: their unpersisted entries and the
            # commits only they knew of are what the safety rules are about.
            leaders = [i for i, n in self.nodes.items() if n is not None and n.core.role is Role.LEADER]
            i = rng.choice(leaders if leaders and rng.random() < 0.5 else self.ids)
            if self.nodes[i] is not None:
                self.crash(i)
        if self.cut and self.now >= self.heal_at:
            self.cut = set()
        elif not self.cut and self.crashy and rng.random() < 0.01:
            shuffled = list(self.ids)
            rng.shuffle(shuffled)
            side = set(shuffled[:rng.randint(1, len(self.ids) // 2)])
            one_way = rng.random() < 0.3
            self.cut = {(x, y) for x in self.ids for y in self.ids
                        if (x in side) != (y in side) and (not one_way or x in side)}
            self.heal_at = self.now + rng.uniform(0.3, 3.0)
        if self.clients and rng.random() < 0.3:
            self.propose_somewhere()
        if rng.random() < 0.15:
            leaders = [n for n in self.nodes.values() if n is not None and n.core.role is Role.LEADER]
            if leaders:
                n = rng.choice(leaders)
                # Every entry committed anywhere before the read began: applied somewhere, or
                # below some node's commit index (a new leader may not have applied it yet).
                need = max([len(self.hist)] + [m.core.commit for m in self.nodes.values() if m is not None])
                index = n.core.lease_read(self.now) if self.leases else None
                if index is not None:
                    self.counts["lease_reads"] += 1
                    self.reads.append((n.core.id, n.life, None, index, need))
                else:
                    round_, index = n.core.read_index()
                    self.reads.append((n.core.id, n.life, round_, index, need))

    def propose_somewhere(self) -> bytes | None:
        live = [n for n in self.nodes.values() if n is not None]
        n = self.rng.choice(live) if live else None
        if n is None or n.core.role is not Role.LEADER:
            return None
        cmd = f"cmd{next(self.cmds)}".encode()
        index, term = n.core.propose(cmd)
        self.proposed[(n.core.id, n.life, index)] = (term, cmd)
        return cmd

    def _serve_reads(self) -> None:
        waiting = []
        for read in self.reads:
            i, life, round_, index, need = read
            n = self.nodes[i]
            if n is None or n.life != life:
                continue
            if self.rng.random() < 0.5:  # the shell looks now and then, not at every change
                waiting.append(read)
                continue
            try:
                ready = round_ is None or n.core.read_ready(round_)  # None: a lease read
            except NotLeader:
                continue
            if not (ready and n.core.applied >= index):
                waiting.append(read)
                continue
            # Served from this state machine: it must hold every entry committed anywhere before
            # the read began.
            if len(self.disks[i].sm) < need:
                raise Violation(f"stale read on {i}: applied {len(self.disks[i].sm)}, but {need} was committed "
                                f"somewhere before the read began")
            self.counts["reads"] += 1
        self.reads = waiting

    # --- the safety checks ----------------------------------------------------------------------

    def check(self) -> None:
        for n in self.nodes.values():
            if n is None:
                continue
            c = n.core
            if c.role is Role.LEADER and n.led_term != c.term:
                n.led_term = c.term
                self._check_new_leader(c)
            if n.checked_seq == c.seq:
                continue
            n.checked_seq = c.seq
            # Log Matching, by induction: every (index, term) has one entry, and one term before it.
            prev = c.snapshot_term
            for k in range(c.snapshot_index + 1, c.last_index + 1):
                e = c.entry(k)
                got = self.seen.setdefault((k, e.term), (e.data, prev))
                if got != (e.data, prev):
                    raise Violation(f"log matching: {c.id} has {e} at {k} after term {prev}; elsewhere {got}")
                if e.term < prev:
                    raise Violation(f"{c.id}: terms go down at {k}")
                prev = e.term
            if c.commit > c.last_index:
                raise Violation(f"{c.id}: commit {c.commit} beyond its log {c.last_index}")
        for cmd, k in self.acked.items():
            if self.hist.get(k) is None or self.hist[k].data != cmd:
                raise Violation(f"acknowledged {cmd!r} at {k} is gone")

    def _check_new_leader(self, c: RaftCore) -> None:
        # Election Safety.
        if self.leaders.setdefault(c.term, c.id) != c.id:
            raise Violation(f"two leaders in term {c.term}: {self.leaders[c.term]} and {c.id}")
        # Leader Completeness: everything applied anywhere before this election is in its log.
        sm = self.disks[c.id].sm
        for k, e in self.hist.items():
            if k <= c.snapshot_index:
                if k <= len(sm) and sm[k - 1] != e:
                    raise Violation(f"leader {c.id} of term {c.term} has {sm[k - 1]} applied at {k}, not {e}")
            elif c.term_at(k) != e.term or c.entry(k) != e:
                raise Violation(f"leader completeness: leader {c.id} of term {c.term} lacks {e} at {k}")

    # --- phases ---------------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step()

    def heal(self) -> None:
        self.cut, self.drop, self.dup, self.crashy = set(), 0.0, 0.0, False
        for i in self.ids:
            if self.nodes[i] is None:
                self.down_until[i] = self.now

    def converge(self, within_s: float) -> RaftCore:
        """Run quietly until one leader leads and every node applied all it committed; return
        the leader. Fails on timeout."""
        end = self.now + within_s
        while self.now < end:
            self.step()
            live = [n for n in self.nodes.values() if n is not None]
            leaders = [n.core for n in live if n.core.role is Role.LEADER]
            if (len(live) == len(self.ids) and len(leaders) == 1 and leaders[0].commit >= leaders[0].last_index
                    and all(len(self.disks[n.core.id].sm) == leaders[0].commit for n in live)):
                return leaders[0]
        raise AssertionError(f"no convergence within {within_s}s: "
                             f"{[n.core.status() if n else None for n in self.nodes.values()]}")

    def settle(self, within_s: float) -> bytes:
        """Run until a proposal commits on a healed network; return it. Fails on timeout."""
        end = self.now + within_s
        cmd: bytes | None = None
        while self.now < end:
            if cmd is None or cmd not in self.acked and not any(p[1] == cmd for p in self.proposed.values()):
                cmd = self.propose_somewhere()
            self.step()
            if cmd is not None and cmd in self.acked:
                return cmd
        raise AssertionError(f"no commit within {within_s}s of healing: "
                             f"{[n.core.status() if n else None for n in self.nodes.values()]}")


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", range(30))
def test_simulation_keeps_raft_safe_and_live(seed: int, size: int) -> None:
    sim = Sim(seed * 7919 + size, size)
    sim.run(12.0)
    sim.heal()
    sim.settle(within_s=20.0)
    # Everyone converges on one history once the network and the clients are quiet.
    sim.clients = False
    sim.converge(within_s=20.0)
    assert sim.acked and sim.counts["elections"] > 0 and sim.counts["pre_votes"] >= sim.counts["elections"]


def test_a_node_on_an_empty_disk_refuses_candidates_with_a_log_until_it_hears_a_leader() -> None:
    """A replaced disk forgot its votes: it must not help a candidate of an established group
    win a term it may already have voted in, but it takes part in a new group's elections."""
    fresh = mk("c", seed=5)
    assert not fresh.on_vote(VoteRequest(term=7, candidate="a", last_index=3, last_term=6), 50.0).granted
    assert fresh.on_vote(VoteRequest(term=7, candidate="b", last_index=0, last_term=0), 50.0).granted
    other = mk("c", seed=6)
    other.on_append(heartbeat(8, "a", prev=0, prev_term=0), 60.0)  # a leader brought it in
    assert other.on_vote(VoteRequest(term=9, candidate="b", last_index=3, last_term=8), 60.0 + 100).granted


@pytest.mark.parametrize("how", ["cut off", "deaf", "frozen"])
@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_simulation_a_returning_follower_does_not_disrupt_the_group(seed: int, size: int, how: str) -> None:
    """A follower cut off both ways, or only from hearing the group (its own requests get
    through), or frozen (SIGSTOP: it runs nothing and misses everything) for several election
    timeouts comes back under the same leader in the same term."""
    sim = Sim(seed * 104729 + size, size)
    sim.heal()
    sim.clients = False
    lead = sim.converge(within_s=10.0)
    leader, term, elections = lead.id, lead.term, sim.counts["elections"]
    victim = next(i for i in sim.ids if i != leader)
    sim.clients = True
    away_s = 5 * TIMING.election_s
    if how == "frozen":
        frozen = sim.nodes[victim]
        sim.nodes[victim], sim.down_until[victim] = None, float("inf")
        sim.run(away_s)
        sim.nodes[victim] = frozen
    else:
        sim.cut = {(x, victim) for x in sim.ids if x != victim}
        if how == "cut off":
            sim.cut |= {(victim, x) for x in sim.ids if x != victim}
        sim.heal_at = sim.now + away_s
        sim.run(away_s)
        victim_core = sim.nodes[victim]
        assert victim_core is not None and victim_core.core.role is Role.PRE_CANDIDATE
    assert sim.counts["elections"] == elections
    sim.run(3 * TIMING.election_s)
    sim.clients = False
    assert sim.converge(within_s=5.0).id == leader
    assert sim.counts["elections"] == elections and max(sim.leaders) == term
    assert {n.core.term for n in sim.nodes.values() if n is not None} == {term}
