"""Membership changes in the sans-IO Raft core, one server at a time (Raft thesis section 4.1).

The scenario tests drive :class:`RaftCore` by hand and check one rule each: learners follow
without a say (no commit, check-quorum, ReadIndex or election counts them), a promotion or a
removal moves the majority at once, a leader that removes itself steps down only once the change
commits under the new majority, a pending change blocks the next, a truncated configuration
reverts, and compaction, restore and restarts keep the configuration in effect.

The simulation reuses ``test_raft_core``'s hostile network, crashing disks and safety checks,
and lets leaders add learners from a pool of spare nodes, promote caught-up learners, demote
and remove voters (the leader included) while the chaos goes on. On top of the base checks it
verifies after every step that no non-voter stands for election, that every leader was a voter
when elected, that each node's configuration is the last one in its log, and that consecutive
configurations in any log differ by at most one voter.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgpack
import pytest

from headwater.objstore.metadata.raft.core import (CONFIG_MARK, AppendRequest, Config, ConfigChangeRefused, Entry,
                                                   HardState, NotLeader, RaftCore, Ready, Role, SnapshotNeeded,
                                                   VoteReply, VoteRequest)
from tests.unit.test_raft_core import TIMING, Disk, Node, Sim, Violation, exchange, flush

ABC = ("a", "b", "c")


# --- helpers -------------------------------------------------------------------------------------

def core(node: str, cfg: Config, *, seed: int = 1, **kw: Any) -> RaftCore:
    return RaftCore(node, cfg, now=0.0, timing=TIMING, rng=random.Random(seed), **kw)


def group(voters: tuple[str, ...], *, learners: tuple[str, ...] = (), new: tuple[str, ...] = ()) -> dict[str, RaftCore]:
    """Nodes of a group whose first configuration is (``voters``, ``learners``), plus ``new``
    nodes that start with that configuration although it does not name them (as a node added to
    a running group does)."""
    cfg = Config(voters=voters, learners=learners)
    return {n: core(n, cfg, seed=k) for k, n in enumerate(voters + learners + new, 1)}


def win(cand: RaftCore, nodes: dict[str, RaftCore], now: float) -> None:
    """Run a real election of ``cand`` at ``now`` (its timer must be due): pre-votes and votes go
    to whom it asks among ``nodes``, each voter persisting its vote before answering."""
    cand.tick(now)
    assert cand.role is Role.PRE_CANDIDATE
    for p, req in cand.vote_requests():
        if p in nodes:
            cand.on_vote_reply(p, nodes[p].on_vote(req, now), now)
    assert cand.role is Role.CANDIDATE, cand.status()
    flush(cand, now)
    for p, req in cand.vote_requests():
        if p in nodes:
            reply = nodes[p].on_vote(req, now)
            flush(nodes[p], now)
            cand.on_vote_reply(p, reply, now)
    assert cand.role is Role.LEADER, cand.status()
    flush(cand, now)


def sync(leader: RaftCore, nodes: dict[str, RaftCore], now: float, *, only: tuple[str, ...] | None = None,
         rounds: int = 12) -> float:
    """Replicate from ``leader`` to the reachable peers (``only``, default all in ``nodes``) for a
    few heartbeat rounds, so that they hold its log and learn its commit index. Returns the time."""
    for _ in range(rounds):
        now += TIMING.heartbeat_s
        flush(leader, now)
        for p in leader.others:
            if p in nodes and (only is None or p in only):
                m = exchange(leader, nodes[p], now)
                assert not isinstance(m, SnapshotNeeded)
        flush(leader, now)
    return now


def commit_cmd(leader: RaftCore, nodes: dict[str, RaftCore], now: float, *,
               only: tuple[str, ...] | None = None) -> tuple[int, float]:
    """Propose a command and replicate it; returns (its index, the time)."""
    index, _ = leader.propose(b"cmd%d" % leader.last_index)
    return index, sync(leader, nodes, now, only=only)


def started(voters: tuple[str, ...] = ABC, *, learners: tuple[str, ...] = (),
            new: tuple[str, ...] = ()) -> tuple[dict[str, RaftCore], RaftCore, float]:
    """A group with ``voters[0]`` elected and everyone caught up on its no-op."""
    nodes = group(voters, learners=learners, new=new)
    leader = nodes[voters[0]]
    now = 3 * TIMING.election_s
    win(leader, nodes, now)
    now = sync(leader, nodes, now)
    assert leader.commit == leader.last_index == 1
    return nodes, leader, now


def change(leader: RaftCore, nodes: dict[str, RaftCore], cfg: Config, now: float) -> tuple[int, float]:
    """Propose ``cfg`` and replicate it to everyone reachable until it commits."""
    index, _ = leader.propose_config(cfg)
    now = sync(leader, nodes, now)
    assert leader.commit >= index
    return index, now


def past_lease(now: float) -> float:
    """A time at which every follower's election timer has fired (and its leader lease ended)."""
    return now + 2.5 * TIMING.election_s


# --- Config ---------------------------------------------------------------------------------------

def test_config_round_trips_and_is_never_taken_for_a_command() -> None:
    cfg = Config(voters=("c", "a", "b"), learners=("d", "a"), addresses={"d": ("10.0.0.4", 7000)})
    assert cfg.voters == ("a", "b", "c") and cfg.learners == ("d",)  # sorted; a voter is no learner
    data = cfg.encode()
    assert data.startswith(CONFIG_MARK)
    back = Config.decode(data)
    assert back == cfg and back.addresses == {"d": ("10.0.0.4", 7000)}
    assert Config.from_wire(cfg.to_wire()) == cfg
    for cmd in (None, 0, -1, 1 << 40, "x", b"x", [1], {"k": 1}, 1.5, True):
        assert not msgpack.packb(cmd).startswith(CONFIG_MARK)


def test_a_node_given_bare_peers_must_be_one_of_them() -> None:
    with pytest.raises(ValueError):
        RaftCore("d", ABC, now=0.0, timing=TIMING)
    assert RaftCore("d", Config(voters=ABC), now=0.0, timing=TIMING).is_voter is False


# --- learners -------------------------------------------------------------------------------------

def test_a_learner_catches_up_but_neither_commits_nor_campaigns() -> None:
    nodes, a, now = started(new=("d",))
    d = nodes["d"]
    assert not d.is_voter and d.config == Config(voters=ABC)
    index, now = change(a, nodes, Config(voters=ABC, learners=("d",)), now)
    assert a.others == ("b", "c", "d") and a.match_of("d") == a.last_index
    assert d.config == a.config and d.config_index == index and d.last_index == a.last_index
    assert d.commit == a.commit and d.leader == "a"
    assert a.status()["learners"] == ["d"] and a.status()["voters"] == list(ABC)
    # With b and c unreachable, d's acknowledgement makes no majority.
    i, now = commit_cmd(a, nodes, now, only=("d",))
    assert d.last_index == i and a.match_of("d") == i and a.commit < i
    i, now = commit_cmd(a, nodes, now, only=("b",))
    assert a.commit == i
    # ReadIndex: d's answer to the round does not confirm leadership.
    round_, _ = a.read_index()
    exchange(a, d, now)
    assert not a.read_ready(round_)
    exchange(a, nodes["b"], now)
    assert a.read_ready(round_)
    # A learner never stands for election, however long it hears nothing.
    campaign = d.campaign
    for k in range(1, 6):
        d.tick(now + 10.0 * k)
        assert d.role is Role.FOLLOWER and d.vote_requests() == [] and d.campaign == campaign
    # Check-quorum: hearing only from a learner, the leader steps down.
    t = now + 0.6 * TIMING.election_s
    exchange(a, d, t)
    a.tick(t)
    assert a.role is Role.LEADER
    t = now + 1.2 * TIMING.election_s
    exchange(a, d, t)
    a.tick(t)
    assert a.role is Role.FOLLOWER


def test_candidates_ask_only_voters_and_count_only_their_votes() -> None:
    nodes, a, now = started(new=("d",))
    _, now = change(a, nodes, Config(voters=ABC, learners=("d",)), now)
    b = nodes["b"]
    t = past_lease(now)
    b.tick(t)
    assert b.role is Role.PRE_CANDIDATE
    assert sorted(p for p, _ in b.vote_requests()) == ["a", "c"]
    # The learner's grant (it would vote: pre-votes check logs, not membership) does not count.
    b.on_vote_reply("d", VoteReply(term=b.term + 1, granted=True, pre=True), t)
    assert b.role is Role.PRE_CANDIDATE
    b.on_vote_reply("c", VoteReply(term=b.term + 1, granted=True, pre=True), t)
    assert b.role is Role.CANDIDATE
    b.on_vote_reply("d", VoteReply(term=b.term, granted=True), t)
    assert b.role is Role.CANDIDATE
    b.on_vote_reply("a", VoteReply(term=b.term, granted=True), t)
    assert b.role is Role.LEADER


def test_learners_do_not_count_for_check_quorum_but_voters_do() -> None:
    nodes, a, now = started(("a", "b", "c", "d", "e"))
    # Demote d and e (one at a time): a, b, c remain voters, quorum two.
    _, now = change(a, nodes, Config(voters=("a", "b", "c", "e"), learners=("d",)), now)
    _, now = change(a, nodes, Config(voters=ABC, learners=("d", "e")), now)
    assert a._quorum() == 2
    t = now + 1.5 * TIMING.election_s
    for p in ("b", "d", "e"):
        exchange(a, nodes[p], t)
    a.tick(t)
    assert a.role is Role.LEADER  # a and b: a majority of the voters


# --- promotion and removal ------------------------------------------------------------------------

def test_promoting_a_learner_makes_a_majority_three_of_four() -> None:
    nodes, a, now = started(new=("d",))
    _, now = change(a, nodes, Config(voters=ABC, learners=("d",)), now)
    d = nodes["d"]
    index, _ = a.propose_config(Config(voters=("a", "b", "c", "d")))
    # In effect on the leader at once: the entry that adds d needs three of the four.
    assert a.members == ("a", "b", "c", "d") and a._quorum() == 3
    now = sync(a, nodes, now, only=("b",))
    assert a.commit < index
    now = sync(a, nodes, now, only=("d",))
    assert a.commit == index and d.is_voter
    # From now on two acknowledgements besides the leader's are needed, and d's is one.
    i, now = commit_cmd(a, nodes, now, only=("c",))
    assert a.commit < i
    now = sync(a, nodes, now, only=("d",))
    assert a.commit == i
    # A voter now, d stands for election once it stops hearing from a leader.
    d.tick(past_lease(now))
    assert d.role is Role.PRE_CANDIDATE and sorted(p for p, _ in d.vote_requests()) == ["a", "b", "c"]


def test_a_voter_can_be_added_directly_and_counts_at_once() -> None:
    nodes, a, now = started(new=("d",))
    index, _ = a.propose_config(Config(voters=("a", "b", "c", "d")))
    now = sync(a, nodes, now, only=("b",))
    assert a.commit < index  # a and b are not three of four
    now = sync(a, nodes, now, only=("c",))
    assert a.commit == index and nodes["d"].last_index < index


def test_removing_a_follower_leaves_a_majority_of_the_rest() -> None:
    nodes, a, now = started(("a", "b", "c", "d"))
    d = nodes["d"]
    index, _ = a.propose_config(Config(voters=ABC))
    assert a.others == ("b", "c") and a.match_of("d") == 0
    assert a.append_for("b", now) is not None  # d is no longer replicated to
    a.append_failed("b")
    now = sync(a, nodes, now, only=("b",))
    assert a.commit == index  # a and b are two of three
    i, now = commit_cmd(a, nodes, now, only=("c",))
    assert a.commit == i
    # d never got the entry: it still believes in the old configuration (a real shell stops it).
    assert d.is_voter and d.last_index < index


def test_a_removed_follower_that_learns_of_its_removal_never_campaigns() -> None:
    nodes, a, now = started(("a", "b", "c", "d"))
    d = nodes["d"]
    index, _ = a.propose_config(Config(voters=ABC))
    # d gets the entry before a forgets it (the request went out before the change).
    m = AppendRequest(term=a.term, leader="a", prev_index=index - 1, prev_term=a.term_at(index - 1) or 0,
                      entries=(a.entry(index),), commit=a.commit, round=0)
    d.on_append(m, now)
    assert not d.is_voter and d.config == Config(voters=ABC)
    campaign = d.campaign
    for k in range(1, 5):
        d.tick(now + 10.0 * k)
    assert d.role is Role.FOLLOWER and d.campaign == campaign


def test_a_leader_that_removes_itself_leads_until_the_change_commits_then_steps_down() -> None:
    nodes, a, now = started(("a", "b", "c", "d"))
    b, c, d = nodes["b"], nodes["c"], nodes["d"]
    index, term = a.propose_config(Config(voters=("b", "c", "d")))
    assert a.role is Role.LEADER and not a.is_voter and a.others == ("b", "c", "d")
    # Still leading: it takes commands, and replicates them with the change.
    cmd_index, _ = a.propose(b"after")
    now = sync(a, nodes, now, only=("b",), rounds=3)
    # a's own copy does not count: b alone is not two of b, c, d.
    assert a.role is Role.LEADER and a.commit < index
    a.tick(now)
    assert a.role is Role.LEADER  # check-quorum: b, c and d were all heard within the timeout
    # c's acknowledgement commits it (and the command after it): a steps down at once.
    exchange(a, c, now)
    assert a.commit == cmd_index and a.role is Role.FOLLOWER and a.leader is None and a.term == term
    assert a.append_for("b", now) is None
    with pytest.raises(NotLeader):
        a.propose(b"more")
    with pytest.raises(NotLeader):
        a.read_index()
    # It never campaigns again.
    campaign = a.campaign
    for k in range(1, 5):
        a.tick(now + 10.0 * k)
        assert a.role is Role.FOLLOWER and a.vote_requests() == []
    assert a.campaign == campaign
    # One of the rest is elected by the new majority, without a.
    t = past_lease(now)
    win(b, {"c": c, "d": d}, t)
    assert b.term == term + 1 and b.others == ("c", "d")
    t = sync(b, nodes, t)
    assert c.commit == d.commit == b.commit == b.last_index and d.last_index >= cmd_index
    assert a.last_index == cmd_index  # nothing reaches a any more


def test_a_leader_that_demotes_itself_to_learner_follows_its_successor() -> None:
    nodes, a, now = started(("a", "b", "c", "d"))
    _, now = change(a, nodes, Config(voters=("b", "c", "d"), learners=("a",)), now)
    assert a.role is Role.FOLLOWER and not a.is_voter
    b = nodes["b"]
    t = past_lease(now)
    win(b, nodes, t)
    assert sorted(b.others) == ["a", "c", "d"]
    i, t = commit_cmd(b, nodes, t)
    assert a.last_index == i and a.commit == i and a.leader == "b"
    a.tick(t + 100.0)
    assert a.role is Role.FOLLOWER


def test_a_removed_leader_does_not_step_down_before_the_change_commits() -> None:
    """Stepping down on appending the change would leave a group of two voters, one of them
    cut off, with no leader at all, though the old configuration could still commit."""
    nodes, a, now = started(("a", "b", "c"))
    index, _ = a.propose_config(Config(voters=("b", "c")))
    now = sync(a, nodes, now, only=("b",))
    assert a.role is Role.LEADER and a.commit < index  # b alone is not two of b and c
    now = sync(a, nodes, now, only=("c",))
    assert a.role is Role.FOLLOWER and a.commit >= index


def test_a_dropped_peer_gets_nothing_more_and_its_late_answers_are_ignored() -> None:
    """The shell runs one sender per peer and stops a dropped peer's only when it next looks at
    the configuration; until then that sender may ask for the peer's next request once more."""
    nodes, a, now = started(("a", "b", "c", "d"))
    d = nodes["d"]
    m = a.append_for("d", now + 1.0)  # in flight as the change is made
    assert isinstance(m, AppendRequest)
    a.propose_config(Config(voters=ABC))
    assert a.append_for("d", now + 1.0) is None and a.match_of("d") == 0
    a.append_failed("d")
    a.on_append_reply("d", m, d.on_append(m, now + 1.0), now + 1.0)
    a.snapshot_sent("d", 1, True, now + 1.0)
    assert a.role is Role.LEADER and "d" not in a.status()["match"]  # type: ignore[operator]


def test_a_campaign_counts_only_the_voters_in_effect_when_a_snapshot_changes_them() -> None:
    """A pre-candidate that installs a snapshot whose configuration leaves it out must not count
    its own vote: with b's grant alone (one of b, c and d) it would become a candidate, then
    leader of a term in which c and d can elect c, and write an entry of that term c never wrote."""
    x = core("x", Config(voters=("b", "c", "x")))
    x.tick(5.0)
    assert x.role is Role.PRE_CANDIDATE
    x.restore(10, 2, 5.0, Config(voters=("b", "c", "d")))
    x.on_vote_reply("b", VoteReply(term=x.term + 1, granted=True, pre=True), 5.0)
    assert x.role is not Role.CANDIDATE and x.term == 0
    x.tick(10.0)
    assert x.role is Role.FOLLOWER and x.campaign == 1  # a non-voter: no new round either
    # A voter whose configuration drops a peer that granted its pre-vote no longer counts it.
    y = core("y", Config(voters=("p", "q", "r", "s", "y")))
    y.tick(5.0)
    y.on_vote_reply("p", VoteReply(term=y.term + 1, granted=True, pre=True), 5.0)
    y.restore(10, 2, 5.0, Config(voters=("q", "r", "s", "y", "z")))
    y.on_vote_reply("q", VoteReply(term=y.term + 1, granted=True, pre=True), 5.0)
    assert y.role is Role.PRE_CANDIDATE  # y and q: two of five (p's grant would have made three)
    y.on_vote_reply("r", VoteReply(term=y.term + 1, granted=True, pre=True), 5.0)
    assert y.role is Role.CANDIDATE


# --- refusals --------------------------------------------------------------------------------------

def test_a_change_waits_for_the_previous_one_and_for_the_leaders_own_entry() -> None:
    nodes, a, now = started(new=("d", "e"))
    with pytest.raises(NotLeader):
        nodes["b"].propose_config(Config(voters=ABC, learners=("d",)))
    index, _ = a.propose_config(Config(voters=ABC, learners=("d",)))
    with pytest.raises(ConfigChangeRefused):
        a.propose_config(Config(voters=ABC, learners=("d", "e")))
    now = sync(a, nodes, now)
    assert a.commit >= index
    a.propose_config(Config(voters=ABC, learners=("d", "e")))  # accepted now
    now = sync(a, nodes, now)
    # A new leader must first commit an entry of its own term (its no-op): until then a change of
    # its own could overlap one an earlier leader left half-replicated.
    b = nodes["b"]
    t = past_lease(now)
    win(b, nodes, t)
    assert b.commit < b.last_index
    with pytest.raises(ConfigChangeRefused):
        b.propose_config(Config(voters=ABC, learners=("d",)))
    sync(b, nodes, t)
    b.propose_config(Config(voters=ABC, learners=("d",)))


def test_the_raft_dev_scenario_cannot_lose_a_committed_change() -> None:
    """The flaw in single-server changes found on the raft-dev list (2015), and why a new leader
    must commit an entry of its own term before it changes the membership.

    a leads {a, b, c, d} and adds e; only e gets that change. b is elected by b, c and d. Had b
    removed a at once, with only c acknowledging (two of b, c, d), the removal would commit, and
    a, with its own change (voters a to e), could still win a, d and e (three of five): d's log
    would end in term 1 like a's, but shorter. With the rule, b's no-op must first reach a
    majority of {a, b, c, d}, so d holds an entry of term 2 and refuses a."""
    nodes, a, now = started(("a", "b", "c", "d"), new=("e",))
    b, c, d, e = nodes["b"], nodes["c"], nodes["d"], nodes["e"]
    a.propose_config(Config(voters=("a", "b", "c", "d", "e")))
    now = sync(a, nodes, now, only=("e",), rounds=3)
    assert e.is_voter and a.commit == 1  # a and e are not three of five
    # a is cut off; b wins b, c and d (it never asks e: e is no voter in its configuration).
    t = past_lease(now)
    win(b, {"c": c, "d": d}, t)
    with pytest.raises(ConfigChangeRefused):
        b.propose_config(Config(voters=("b", "c", "d")))
    t = sync(b, nodes, t, only=("c",), rounds=3)
    assert b.commit < b.last_index  # b and c are not three of four
    with pytest.raises(ConfigChangeRefused):
        b.propose_config(Config(voters=("b", "c", "d")))
    t = sync(b, nodes, t, only=("c", "d"), rounds=3)
    removal, _ = b.propose_config(Config(voters=("b", "c", "d")))
    t = sync(b, nodes, t, only=("c",), rounds=3)
    assert b.commit >= removal
    # a comes back with its configuration of five and asks everyone, past their leases: d and
    # the others refuse, and e alone is not enough.
    t = past_lease(t)
    a.tick(t)
    assert a.role is Role.FOLLOWER  # check-quorum: it heard from no one for long
    t = past_lease(t)
    a.tick(t)
    assert a.role is Role.PRE_CANDIDATE and a.is_voter
    granted = set()
    for p, req in a.vote_requests():
        reply = nodes[p].on_vote(req, t)
        granted |= {p} if reply.granted else set()
        a.on_vote_reply(p, reply, t)
    assert granted == {"e"} and a.role is not Role.CANDIDATE  # (a refusal's term 2 made it a follower)
    assert not d.on_vote(VoteRequest(term=a.term + 1, candidate="a", last_index=a.last_index,
                                     last_term=a.last_term), t).granted


@pytest.mark.parametrize("voters", [
    ("a", "b", "c", "d", "e"),  # two added
    ("a", "b", "d"),            # one removed and one added
    ("d",),                     # all replaced
])
def test_more_than_one_voter_changing_is_refused(voters: tuple[str, ...]) -> None:
    nodes, a, _ = started(new=("d", "e"))
    last = a.last_index
    with pytest.raises(ConfigChangeRefused):
        a.propose_config(Config(voters=voters))
    assert a.last_index == last and a.config == Config(voters=ABC) and a.others == ("b", "c")


def test_learners_may_change_freely_but_a_group_keeps_a_voter() -> None:
    nodes = group(("a",), new=("b", "c"))
    a = nodes["a"]
    a.tick(3 * TIMING.election_s)  # a group of one elects itself
    assert a.role is Role.LEADER
    flush(a, 3.0)
    assert a.commit == 1
    with pytest.raises(ConfigChangeRefused):
        a.propose_config(Config(voters=()))
    index, _ = a.propose_config(Config(voters=("a",), learners=("b", "c")))  # two learners at once
    flush(a, 3.0)
    assert a.commit == index  # a single voter commits alone


# --- truncation, compaction, restore, restart -------------------------------------------------------

FIVE = ("a", "b", "c", "d", "e")


def test_a_truncated_configuration_reverts_to_the_one_before() -> None:
    nodes, a, now = started(FIVE)
    b, c = nodes["b"], nodes["c"]
    old = a.config
    index, _ = a.propose_config(Config(voters=("a", "c", "d", "e")))  # remove b
    # b gets the change (a request that went out as it was made), but its answer is lost, and
    # a is cut off from everyone after that.
    m = AppendRequest(term=a.term, leader="a", prev_index=index - 1, prev_term=a.term_at(index - 1) or 0,
                      entries=(a.entry(index),), commit=a.commit, round=0)
    b.on_append(m, now)
    flush(b, now)
    assert not b.is_voter and b.config_index == index
    # c, d and e elect c; c's no-op replaces the change in b's log.
    t = past_lease(now)
    win(c, {p: nodes[p] for p in ("d", "e")}, t)
    exchange(c, b, t)
    assert b.config == old and b.config_index == 0 and b.is_voter
    assert b.entry(index) == Entry(c.term, b"")
    # b may stand for election again.
    b.tick(past_lease(t))
    assert b.role is Role.PRE_CANDIDATE


def test_truncation_reverts_to_an_earlier_configuration_in_the_log() -> None:
    nodes, a, now = started(FIVE, new=("f",))
    first, now = change(a, nodes, Config(voters=FIVE, learners=("f",)), now)
    b, c = nodes["b"], nodes["c"]
    a.propose_config(Config(voters=FIVE))  # drop the learner again: half-replicated
    m = a.append_for("b", now)
    assert isinstance(m, AppendRequest)
    b.on_append(m, now)
    assert b.config == Config(voters=FIVE)
    t = past_lease(now)
    win(c, {p: nodes[p] for p in ("d", "e")}, t)
    exchange(c, b, t)
    assert b.config == Config(voters=FIVE, learners=("f",)) and b.config_index == first


def test_compaction_past_a_configuration_keeps_it() -> None:
    nodes, a, now = started(new=("d",))
    b = nodes["b"]
    cfg = Config(voters=ABC, learners=("d",), addresses={"d": ("h", 1)})
    index, now = change(a, nodes, cfg, now)
    _, now = commit_cmd(a, nodes, now)
    for n in (a, b):
        flush(n, now)
        n.compact(n.applied)
        assert n.snapshot_index > index
        assert n.config == cfg and n.config_index == index
        assert n.config_at(n.snapshot_index) == cfg and n.config_at(n.last_index) == cfg
    # A restart from what the shell keeps (the snapshot's configuration and the log after it).
    b2 = core("b", b.config_at(b.snapshot_index), hard_state=HardState(term=b.term, vote=b.vote),
              entries=[b.entry(i) for i in range(b.snapshot_index + 1, b.last_index + 1)],
              snapshot_index=b.snapshot_index, snapshot_term=b.snapshot_term)
    assert b2.config == cfg and b2.config.addresses == {"d": ("h", 1)}
    # A later change still reads as the one in effect, and the snapshot's remains before it.
    new = Config(voters=("a", "b", "c", "d"))
    later, now = change(a, nodes, new, now)
    assert a.config_at(later) == new and a.config_at(later - 1) == cfg and a.config_at(a.snapshot_index) == cfg


def test_a_truncated_configuration_after_a_compaction_reverts_to_the_snapshots() -> None:
    nodes, a, now = started(FIVE, new=("f",))
    b, c = nodes["b"], nodes["c"]
    base = Config(voters=FIVE, learners=("f",))
    _, now = change(a, nodes, base, now)
    _, now = commit_cmd(a, nodes, now)
    flush(b, now)
    b.compact(b.applied)
    a.propose_config(Config(voters=FIVE))
    m = a.append_for("b", now)
    assert isinstance(m, AppendRequest)
    b.on_append(m, now)
    assert b.config == Config(voters=FIVE)
    t = past_lease(now)
    win(c, {p: nodes[p] for p in ("d", "e")}, t)
    exchange(c, b, t)
    assert b.config == base and b.config_index == b.snapshot_index


def test_restore_installs_the_snapshots_configuration() -> None:
    nodes, a, now = started(new=("d",))
    d = nodes["d"]
    # d has a stale, uncommitted change of its own in its log (say, from an old leader).
    d.on_append(AppendRequest(term=a.term, leader="a", prev_index=0, prev_term=0,
                              entries=(a.entry(1), Entry(a.term, Config(voters=("a", "b", "c", "d")).encode())),
                              commit=1, round=0), now)
    assert d.is_voter
    cfg = Config(voters=ABC, learners=("d",))
    d.restore(40, 3, now, cfg)
    assert d.config == cfg and d.config_index == 40 and not d.is_voter
    assert d.config_at(40) == cfg and d.last_index == 40 and d.commit == 40
    # Without a configuration the one in effect stays.
    d.restore(50, 3, now)
    assert d.config == cfg and d.config_index == 50
    # It takes appends after the snapshot and picks up a later change from them.
    d.on_append(AppendRequest(term=3, leader="a", prev_index=50, prev_term=3,
                              entries=(Entry(3, Config(voters=("a", "b", "c", "d")).encode()),),
                              commit=50, round=0), now)
    assert d.is_voter and d.config_index == 51 and d.config_at(50) == cfg


# --- a new node -----------------------------------------------------------------------------------

def test_a_new_node_learns_its_place_from_the_leaders_log_and_campaigns_only_as_a_voter() -> None:
    nodes, a, now = started(new=("d",))
    d = nodes["d"]
    # Not named anywhere yet: it waits, however long.
    for k in range(1, 4):
        d.tick(now + 10.0 * k)
    assert d.role is Role.FOLLOWER and d.campaign == 0
    now += 40
    # The leader brings it in as a learner; it gets the whole log, the change included.
    now = sync(a, nodes, now, only=("b", "c"))
    index, now = change(a, nodes, Config(voters=ABC, learners=("d",)), now)
    assert d.config_index == index and d.last_index == a.last_index and not d.is_voter
    d.tick(past_lease(now) + 10.0)
    assert d.role is Role.FOLLOWER
    # A restart keeps its place: the log names it.
    d2 = core("d", Config(voters=ABC), hard_state=HardState(term=d.term, vote=d.vote),
              entries=[d.entry(i) for i in range(1, d.last_index + 1)])
    assert d2.config == d.config
    # Promoted, it stands for election when its leader goes quiet.
    _, now = change(a, nodes, Config(voters=("a", "b", "c", "d")), now)
    assert d.is_voter
    d.tick(past_lease(now))
    assert d.role is Role.PRE_CANDIDATE


def test_a_new_node_behind_the_compacted_log_gets_a_snapshot() -> None:
    nodes, a, now = started(new=("d",))
    for _ in range(3):
        _, now = commit_cmd(a, nodes, now, only=("b", "c"))
    flush(a, now)
    a.compact(a.applied)
    cfg = Config(voters=ABC, learners=("d",))
    index, _ = a.propose_config(cfg)
    now = sync(a, nodes, now, only=("b",))
    # d refuses (empty log), is asked at the snapshot point, refuses again: it needs a snapshot.
    need = None
    for _ in range(4):
        now += TIMING.heartbeat_s
        need = exchange(a, nodes["d"], now)
        if isinstance(need, SnapshotNeeded):
            break
    assert isinstance(need, SnapshotNeeded) and need.index == a.snapshot_index
    d = nodes["d"]
    d.restore(need.index, need.term, now, a.config_at(need.index))
    assert not d.is_voter and d.config == Config(voters=ABC)  # the snapshot predates the change
    a.snapshot_sent("d", need.index, True, now)
    now = sync(a, nodes, now)
    assert d.config == cfg and d.config_index == index and d.commit == a.commit


# --- the simulation --------------------------------------------------------------------------------

POOL = "abcdefgh"


class MembershipSim(Sim):
    """``test_raft_core``'s simulation with membership changes: every node of a pool of ``pool``
    runs (spare and removed ones too, as a stricter test than a shell that stops them), the group
    starts with ``voters`` of them, and leaders change the configuration one server at a time.
    Snapshots carry their configuration, and a node restarts from its snapshot's configuration
    and its log, as a shell does."""

    CHANGE_P = 0.1  # per step with a leader: several a second, most refused while one is pending

    def __init__(self, seed: int, voters: int = 3, pool: int = 6):
        self.initial = Config(voters=tuple(POOL[:voters]))
        self.snap_configs: dict[str, Config] = {}
        base = min(pool, 5)  # Sim names up to five nodes; the rest are booted here
        super().__init__(seed, base)
        for i in POOL[base:pool]:
            self.disks[i] = Disk()
            self._boot(i)
        self.ids = tuple(POOL[:pool])
        self.max_voters = 5
        self.changes: Counter[str] = Counter()
        self.changing = True

    # --- nodes, snapshots, persistence -------------------------------------------------------------

    def _boot(self, i: str) -> None:
        d = self.disks[i]
        keys = sorted(d.log)
        if keys and keys != list(range(d.snap_index + 1, d.snap_index + 1 + len(keys))):
            raise Violation(f"{i}: the log on disk is not contiguous after {d.snap_index}: {keys}")
        c = RaftCore(i, self.snap_configs.get(i, self.initial), now=self.now, timing=TIMING, hard_state=d.hard,
                     entries=[d.log[k] for k in keys], snapshot_index=d.snap_index, snapshot_term=d.snap_term,
                     applied=len(d.sm), rng=random.Random(self.rng.random()))
        self.nodes[i] = Node(core=c, life=next(self.lives), durable_seq=c.seq)

    def send(self, src: str, dst: str, msg: tuple[Any, ...]) -> None:
        if msg[0] == "snapshot" and len(msg) == 6:
            # The state goes with the configuration as of it (the shell sends both).
            n = self.nodes[src]
            assert n is not None
            msg = msg + (n.core.config_at(msg[2]),)
        super().send(src, dst, msg)

    def _install(self, n: Node, src: str, term: int, index: int, snap_term: int, sm: list[Entry], rpc: int,
                 config: Config | None = None) -> None:
        """As the base class, but the snapshot's configuration is installed and kept on disk."""
        assert config is not None
        c = n.core
        c_id, d = c.id, self.disks[c.id]
        if term < c.term:
            self.send(c_id, src, ("snapshotted", c.term, False, index, rpc))
            return
        c.on_append(AppendRequest(term=term, leader=src, prev_index=0, prev_term=0, entries=(), commit=0, round=0),
                    self.now)
        if n.writing is not None:
            self._finish_write(n, fail=False)
        self._finish_write(n, r=c.ready(), fail=False)
        if index > c.commit:
            for k, e in enumerate(sm, 1):
                self._check_applied(c_id, k, e)
            d.log.clear()
            d.snap_index, d.snap_term, d.sm = index, snap_term, list(sm)
            self.snap_configs[c_id] = config
            c.restore(index, snap_term, self.now, config)
            self.counts["snapshots"] += 1
        self.send(c_id, src, ("snapshotted", c.term, True, index, rpc))

    def _finish_write(self, n: Node, *, r: Ready | None = None, fail: bool | None = None) -> None:
        d = self.disks[n.core.id]
        before = d.snap_index
        super()._finish_write(n, r=r, fail=fail)
        if d.snap_index != before:  # compacted: keep the snapshot's configuration with it
            self.snap_configs[n.core.id] = n.core.config_at(d.snap_index)

    def _run_node(self, n: Node) -> None:
        campaign = n.core.campaign
        super()._run_node(n)
        if n.core.campaign != campaign and not n.core.is_voter:
            raise Violation(f"{n.core.id} campaigned without being a voter: {n.core.status()}")

    # --- membership changes ------------------------------------------------------------------------

    def _chaos(self) -> None:
        super()._chaos()
        if self.changing and self.rng.random() < self.CHANGE_P:
            self.change_membership()

    def heal(self) -> None:
        """Also stop changing the membership: ``settle`` waits for one command to be applied by
        the leader that proposed it, which a leader that removes itself in the meantime never
        does (it hears nothing after it steps down)."""
        super().heal()
        self.changing = False

    def change_membership(self) -> None:
        """Have a leader propose one single-server change, chosen among those that make sense."""
        rng = self.rng
        leaders = [n.core for n in self.nodes.values() if n is not None and n.core.role is Role.LEADER]
        if not leaders:
            return
        c = rng.choice(leaders)
        voters, learners = set(c.config.voters), set(c.config.learners)
        outside = [i for i in self.ids if i not in voters | learners]
        caught_up = [i for i in sorted(learners) if c.match_of(i) >= c.commit]
        # Kinds first, then whom: weighted so that the group keeps growing and shrinking.
        kinds: dict[str, list[tuple[set[str], set[str]]]] = {
            "add learner": [(voters, learners | {i}) for i in outside],
            "promote": [(voters | {i}, learners - {i}) for i in caught_up] if len(voters) < self.max_voters else [],
            "remove": [(voters - {i}, learners) for i in sorted(voters) if i != c.id] if len(voters) > 3 else [],
            "remove leader": [(voters - {c.id}, learners)] if len(voters) > 3 else [],
            "demote": [(voters - {i}, learners | {i}) for i in sorted(voters)] if len(voters) > 3 else [],
            "drop learner": [(voters, learners - {i}) for i in sorted(learners)],
        }
        weights = {"add learner": 3, "promote": 4, "remove": 2, "remove leader": 2, "demote": 1, "drop learner": 1}
        possible = [k for k, opts in kinds.items() if opts]
        if not possible:
            return
        kind = rng.choices(possible, [weights[k] for k in possible])[0]
        v, lr = rng.choice(kinds[kind])
        # The addresses make each change's entry unique, as the history check wants of commands
        # (the same membership can come back: a learner added, dropped and added again).
        serial = sum(self.changes.values())
        addresses = {i: (f"host-{i}", serial) for i in v | lr}
        try:
            c.propose_config(Config(voters=tuple(v), learners=tuple(lr), addresses=addresses))
        except ConfigChangeRefused:
            self.changes["refused"] += 1
            return
        self.changes["proposed " + kind] += 1

    # --- checks ------------------------------------------------------------------------------------

    def check(self) -> None:
        super().check()
        for n in self.nodes.values():
            if n is None:
                continue
            c = n.core
            if c.role in (Role.PRE_CANDIDATE, Role.CANDIDATE) and not c.is_voter:
                raise Violation(f"{c.id} is a {c.role} but no voter: {c.status()}")
            if c.role is Role.LEADER and not c.is_voter and c.commit >= c.config_index:
                raise Violation(f"{c.id} still leads after its removal committed: {c.status()}")
            # The configuration in effect is the last one in the log (or the snapshot's).
            if c.config != c.config_at(c.last_index):
                raise Violation(f"{c.id}: config {c.config} but its log says {c.config_at(c.last_index)}")
            # Consecutive configurations differ by one voter at most (so their majorities overlap).
            prev = c.config_at(c.snapshot_index)
            for k in range(c.snapshot_index + 1, c.last_index + 1):
                data = c.entry(k).data
                if data[:1] == CONFIG_MARK:
                    cfg = Config.decode(data)
                    if len(set(cfg.voters) ^ set(prev.voters)) > 1 or not cfg.voters:
                        raise Violation(f"{c.id}: at {k} {prev.voters} -> {cfg.voters}")
                    prev = cfg

    def _check_new_leader(self, c: RaftCore) -> None:
        super()._check_new_leader(c)
        start = c._term_start - 1  # the log as of its election, before its no-op
        if start >= c.snapshot_index and c.id not in c.config_at(start).voters:
            raise Violation(f"{c.id} was elected in term {c.term} without being a voter: {c.config_at(start)}")

    # --- outcomes ----------------------------------------------------------------------------------

    def committed_changes(self) -> Counter[str]:
        """The kinds of change in the one history, as it stands."""
        out: Counter[str] = Counter()
        prev = self.initial
        for k in sorted(self.hist):
            e = self.hist[k]
            if e.data[:1] != CONFIG_MARK:
                continue
            cfg = Config.decode(e.data)
            added, removed = set(cfg.voters) - set(prev.voters), set(prev.voters) - set(cfg.voters)
            if added:
                out["promote" if added <= set(prev.learners) else "add voter"] += 1
            elif removed:
                out["demote" if removed <= set(cfg.learners) else "remove"] += 1
                if self.leaders.get(e.term) in removed:
                    out["leader left"] += 1
            else:
                out["learners"] += 1
            prev = cfg
        return out

    def settle(self, within_s: float) -> bytes:
        """As the base class, but a command whose proposer no longer leads is given up at once:
        a leader whose removal committed (proposed before the network healed) steps down and
        hears nothing more, so it would never apply, nor acknowledge, what it proposed after."""
        end = self.now + within_s
        cmd: bytes | None = None
        while self.now < end:
            if cmd is None or cmd not in self.acked and not self._still_leading(cmd):
                cmd = self.propose_somewhere()
            self.step()
            if cmd is not None and cmd in self.acked:
                return cmd
        raise AssertionError(f"no commit within {within_s}s of healing: "
                             f"{[n.core.status() if n else None for n in self.nodes.values()]}")

    def _still_leading(self, cmd: bytes) -> bool:
        for (i, life, _), (term, c) in self.proposed.items():
            n = self.nodes[i]
            if c == cmd and n is not None and n.life == life and n.core.role is Role.LEADER and n.core.term == term:
                return True
        return False

    def converge(self, within_s: float) -> RaftCore:
        """Run until one leader leads and every member of its configuration is up and has applied
        all it committed (spare and removed nodes are not waited for); return the leader."""
        end = self.now + within_s
        while self.now < end:
            self.step()
            live = [n for n in self.nodes.values() if n is not None]
            leaders = [n.core for n in live if n.core.role is Role.LEADER]
            if len(leaders) != 1:
                continue
            lead = leaders[0]
            members = [self.nodes[i] for i in lead.config.nodes]
            if (lead.commit >= lead.last_index and all(m is not None for m in members)
                    and all(len(self.disks[i].sm) == lead.commit for i in lead.config.nodes)):
                return lead
        raise AssertionError(f"no convergence within {within_s}s: "
                             f"{[n.core.status() if n else None for n in self.nodes.values()]}")


def run_membership_sim(seed: int, *, seconds: float, voters: int = 3, pool: int = 6) -> MembershipSim:
    sim = MembershipSim(seed, voters, pool)
    sim.run(seconds)
    sim.heal()
    sim.settle(within_s=20.0)
    # Once quiet, the members converge on one history, which the last changes are part of.
    sim.clients = False
    lead = sim.converge(within_s=20.0)
    assert lead.is_voter and len(lead.config.voters) >= 3
    return sim


SIM_SECONDS = 30.0


@pytest.mark.parametrize("voters, pool", [(3, 6), (5, 8)])
@pytest.mark.parametrize("seed", range(20))
def test_simulation_with_membership_changes_keeps_raft_safe_and_live(seed: int, voters: int, pool: int) -> None:
    # (Whether changes committed is the next test's business: a seed may crash nodes too often.)
    sim = run_membership_sim(seed * 7919 + voters * 10 + pool, seconds=SIM_SECONDS, voters=voters, pool=pool)
    assert sim.acked


def test_simulation_exercises_every_kind_of_change() -> None:
    """Guards the simulation itself: within the seeds above, each kind of change commits at least
    once, the leader's own removal included."""
    total: Counter[str] = Counter()
    kinds = ("learners", "promote", "remove", "demote", "leader left")
    for seed in range(20):
        total += run_membership_sim(seed * 7919 + 36, seconds=SIM_SECONDS).committed_changes()
        if all(total[k] for k in kinds):
            return
    pytest.fail(f"some kinds of change never committed: {total}")


@pytest.mark.slow
@pytest.mark.parametrize("voters, pool", [(3, 5), (3, 6), (5, 8), (4, 7)])
@pytest.mark.parametrize("seed", range(100))
def test_simulation_with_membership_changes_soak(seed: int, voters: int, pool: int) -> None:
    run_membership_sim(seed * 104729 + voters * 10 + pool, seconds=40.0, voters=voters, pool=pool)


# --- leadership transfer (thesis 3.10) -----------------------------------------------------------

def test_a_leader_hands_its_leadership_to_a_caught_up_voter_which_wins_at_once():
    nodes = group(ABC)
    a = nodes["a"]
    win(a, nodes, 2 * TIMING.election_s)
    now = sync(a, nodes, 2 * TIMING.election_s)
    a.propose(b"x")
    a.transfer_leadership("b", now)
    assert a.timeout_now_for("b") is None  # b lacks the entry just proposed
    assert a.timeout_now_for("c") is None  # not the chosen one
    now = sync(a, nodes, now, rounds=2)
    term = a.timeout_now_for("b")
    assert term == a.term and a.timeout_now_for("b") is None  # once per transfer
    b, c = nodes["b"], nodes["c"]
    assert b.on_timeout_now(term, "a", now) and b.role is Role.CANDIDATE
    flush(b, now)
    (_, req), *_ = b.vote_requests()
    assert req.transfer and not req.pre
    # c heard from a a moment ago: without the transfer flag it would refuse (leader stickiness)
    plain = VoteRequest(term=req.term, candidate="b", last_index=req.last_index, last_term=req.last_term)
    assert not c.on_vote(plain, now).granted
    reply = c.on_vote(req, now)
    flush(c, now)
    assert reply.granted
    b.on_vote_reply("c", reply, now)
    assert b.role is Role.LEADER
    # the old leader learns of the new term from b's first append and follows
    flush(b, now)
    exchange(b, a, now + TIMING.heartbeat_s)
    assert a.role is Role.FOLLOWER and a.leader == "b"


def test_a_transfer_that_goes_nowhere_is_given_up_and_stale_timeout_nows_are_ignored():
    nodes = group(ABC)
    a = nodes["a"]
    win(a, nodes, 2 * TIMING.election_s)
    now = sync(a, nodes, 2 * TIMING.election_s)
    a.transfer_leadership("c", now)
    a.tick(now)
    assert a.transferring_to == "c"
    now = sync(a, nodes, now, only=("b",), rounds=11)  # c is cut off: it never catches up
    a.tick(now)
    assert a.role is Role.LEADER and a.transferring_to is None
    with pytest.raises(ConfigChangeRefused):
        a.transfer_leadership("a", now)
    with pytest.raises(ConfigChangeRefused):
        a.transfer_leadership("z", now)
    b = nodes["b"]
    assert not b.on_timeout_now(a.term - 1, "a", now)  # an old term's
    assert not b.on_timeout_now(a.term, "c", now)  # not from the leader b follows
    with pytest.raises(NotLeader):
        b.transfer_leadership("c", now)
