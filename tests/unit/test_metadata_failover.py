"""Whom a metadata request asks next (``failover.py``), on times passed in by the test."""

from __future__ import annotations

import random

import pytest

from headwater.objstore.metadata.failover import MemberStanding, Route

MEMBERS = ("meta-1", "meta-2", "meta-3")


def standing() -> MemberStanding:
    return MemberStanding(election_s=1.0)


def asked_in_round(route: Route) -> list[str]:
    """Every member the route asks this round, none of them answering."""
    out = []
    while (node := route.next()) is not None:
        out.append(node)
    return out


def test_the_believed_leader_first_then_each_other_member_once():
    for seed in range(20):
        route = Route(MEMBERS, leader="meta-2", standing=standing(), now=0.0, rng=random.Random(seed))
        order = asked_in_round(route)
        assert order[0] == "meta-2" and sorted(order) == sorted(MEMBERS)


class _CountedShuffles(random.Random):
    shuffles = 0

    def shuffle(self, x):  # type: ignore[override]
        self.shuffles += 1
        super().shuffle(x)


def test_a_healthy_leader_is_asked_without_ordering_the_others():
    # Nearly every request finds its leader: ordering (shuffling) the others is work for the
    # rare request whose leader does not answer as one.
    rng = _CountedShuffles(0)
    route = Route(MEMBERS, leader="meta-2", standing=standing(), now=0.0, rng=rng)
    assert route.next() == "meta-2"
    route.new_round(1.0)
    assert route.next() == "meta-2" and rng.shuffles == 0
    # It answered not_leader naming meta-3: the hint next, then the last member once.
    route.redirect("meta-3", 1.1)
    assert route.next() == "meta-3"
    assert route.next() == "meta-1" and route.next() is None and rng.shuffles == 1


def test_a_member_that_went_silent_is_held_until_followers_stop_naming_it():
    s = standing()
    s.failed("meta-1", asked_at=10.0)  # asked at 10, no answer by 11
    # Followers name a leader they last heard from for up to 2 election timeouts (+ a margin).
    assert s.held("meta-1", 11.0) and s.held("meta-1", 12.4) and not s.held("meta-1", 12.5)
    route = Route(MEMBERS, leader="meta-1", standing=s, now=11.0, rng=random.Random(1))
    first = route.next()
    assert first != "meta-1"
    # A follower still names the silent leader: the hint is not followed while it is held.
    route.redirect("meta-1", 11.1)
    second = route.next()
    assert second not in ("meta-1", first)
    route.redirect("meta-1", 11.2)
    assert route.next() is None  # the round is over: the caller waits for an election
    route.new_round(11.3)
    assert sorted(asked_in_round(route)) == ["meta-2", "meta-3"]
    # Once the hold has passed, a hint naming it is believed: the follower heard from it lately.
    route.new_round(12.6)
    assert route.next() != "meta-1"
    route.redirect("meta-1", 12.6)
    assert route.next() == "meta-1"


def test_the_hold_does_not_grow_and_one_answer_clears_it():
    s = standing()
    for t in range(10):  # a leader that is only slow must still be asked again soon
        s.failed("meta-3", asked_at=float(t))
    assert s.held("meta-3", 11.4) and not s.held("meta-3", 11.5)
    assert s.failures("meta-3") == 10 and s.suspect("meta-3")
    assert s.statistics(11.0) == {"failures": 10, "recoveries": 0, "suspect": 1, "held": 1}
    s.answered("meta-3")
    assert s.failures("meta-3") == 0 and not s.suspect("meta-3") and not s.held("meta-3", 11.0)
    assert s.statistics(11.0) == {"failures": 10, "recoveries": 1, "suspect": 0, "held": 0}


def test_a_hint_naming_a_live_member_is_followed_at_once():
    route = Route(MEMBERS, leader=None, standing=standing(), now=0.0, rng=random.Random(3))
    first = route.next()
    other = next(m for m in MEMBERS if m != first)
    route.redirect(other, 0.0)
    assert route.next() == other and route.leader == other
    # ...but not twice in a round: two members naming each other end the round.
    route.redirect(first, 0.0)
    assert route.next() not in (first, other)


def test_a_suspect_is_asked_last_and_only_if_no_one_else_answers():
    s = standing()
    s.failed("meta-3", asked_at=0.0)
    for seed in range(20):  # past its hold; the others do not answer either
        route = Route(MEMBERS, leader="meta-3", standing=s, now=5.0, rng=random.Random(seed))
        assert asked_in_round(route)[-1] == "meta-3"
    route = Route(MEMBERS, leader="meta-3", standing=s, now=5.0, rng=random.Random(2))
    for _ in range(2):
        assert route.next() in ("meta-1", "meta-2")
        route.redirect(None, 5.0)  # up, and electing a leader
    assert route.next() is None  # not meta-3: an attempt on it would only be spent waiting
    # ...unless one of them names it leader.
    route.new_round(5.1)
    assert route.next() != "meta-3"
    route.redirect("meta-3", 5.1)
    assert route.next() == "meta-3"


def test_when_every_member_is_held_they_are_asked_anyway_earliest_first():
    s = standing()
    s.failed("meta-2", asked_at=0.0)
    s.failed("meta-3", asked_at=0.5)
    s.failed("meta-1", asked_at=0.2)
    route = Route(MEMBERS, leader="meta-3", standing=s, now=1.6, rng=random.Random(0))
    assert asked_in_round(route) == ["meta-2", "meta-1", "meta-3"]


def test_a_member_asked_to_retry_is_asked_again_and_new_members_start_a_round():
    route = Route(MEMBERS, leader="meta-1", standing=standing(), now=0.0, rng=random.Random(0))
    assert route.next() == "meta-1"
    route.again("meta-1")
    assert route.next() == "meta-1"
    route.set_members(("meta-1", "meta-4"), 0.1)
    assert asked_in_round(route) == ["meta-1", "meta-4"]


def test_bad_arguments():
    with pytest.raises(ValueError):
        MemberStanding(election_s=0)
    with pytest.raises(ValueError):
        Route((), leader=None, standing=standing(), now=0.0, rng=random.Random())
