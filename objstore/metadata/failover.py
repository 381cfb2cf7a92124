"""Whom a metadata request asks next, when the leader it knew of may have fallen silent.

Sans-IO: the caller passes the time in (``now``, any monotonic clock) and does the asking.

:class:`MemberStanding` is shared by every request of one client, per metadata node. A node that
did not answer an attempt (down, frozen, cut off) is

* *held* while the other members of its groups may still name it leader without having heard
  from it since the attempt began: a follower names the leader it last heard from until its own
  election timer (``election_s``..``2 * election_s``) runs out. A held node is not asked, and a
  ``not_leader`` hint naming it is not followed, so a request is not spent waiting on it again.
  The hold is not made longer for a node that keeps failing: a leader that is only slow (a
  loaded machine) must still be asked again when the others name it;
* *suspect* until it answers again: asked after the others, and only when none of them answered
  this round or one names it leader. (When the others answer without naming a leader, the group
  is electing one, and an attempt on the suspect would only be spent waiting. A node that came
  back is asked again as soon as it leads, since the others name it.)

Any answer (a result, ``not_leader``, ``not_stored``) clears both.

:class:`Route` is one request's way through its group: the believed leader first, then the other
members, suspects last; a ``not_leader`` hint moves the node it names to the front. A round asks
each member at most once; a round that found no leader ends (``next`` gives None), and the
caller pauses for an election before starting the next round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

__all__ = ["MemberStanding", "Route"]

_NEVER = float("-inf")


@dataclass(slots=True)
class _Record:
    failures: int = 0  # in a row, since it last answered
    held_until: float = _NEVER


class MemberStanding:
    """How each metadata node did lately. ``election_s``: the groups' election timeout."""

    def __init__(self, *, election_s: float):
        if election_s <= 0:
            raise ValueError("election_s must be positive")
        # Followers stop naming a silent leader two election timeouts after they last heard from
        # it; half a timeout more for the heartbeats and votes in flight and a busy event loop.
        self.hold_s = 2.5 * election_s
        self._nodes: dict[str, _Record] = {}
        self.counters = {"failures": 0, "recoveries": 0}

    def failed(self, node: str, *, asked_at: float) -> None:
        """``node`` did not answer an attempt sent at ``asked_at`` (timed out, unreachable)."""
        r = self._nodes.setdefault(node, _Record())
        r.failures += 1
        r.held_until = max(r.held_until, asked_at + self.hold_s)
        self.counters["failures"] += 1

    def answered(self, node: str) -> None:
        """``node`` answered (whatever it said): it is up."""
        if self._nodes.pop(node, None) is not None:
            self.counters["recoveries"] += 1

    def held(self, node: str, now: float) -> bool:
        r = self._nodes.get(node)
        return r is not None and now < r.held_until

    def suspect(self, node: str) -> bool:
        return node in self._nodes

    def held_until(self, node: str) -> float:
        r = self._nodes.get(node)
        return _NEVER if r is None else r.held_until

    def failures(self, node: str) -> int:
        r = self._nodes.get(node)
        return 0 if r is None else r.failures

    def statistics(self, now: float) -> dict[str, int]:
        return {**self.counters, "suspect": len(self._nodes),
                "held": sum(1 for r in self._nodes.values() if now < r.held_until)}


class Route:
    """One request's members to ask, in order. ``leader``: whom the client believes leads."""

    def __init__(self, members: Sequence[str], *, leader: str | None, standing: MemberStanding,
                 now: float, rng: random.Random):
        if not members:
            raise ValueError("a group has members")
        self.members = tuple(members)
        self.leader = leader
        self._standing = standing
        self._rng = rng
        self._asked: set[str] = set()
        self._hinted: set[str] = set()
        self._heard = False  # a member answered this round
        self._queue: list[str] = []
        self._others_at: float | None = None  # the round's time, while the others wait unordered
        self.new_round(now)

    def new_round(self, now: float) -> None:
        """Start over: every member may be asked again (the held ones still not)."""
        self._asked.clear()
        self._hinted.clear()
        self._heard = False
        leader = self.leader
        if leader is not None and leader in self.members and not self._standing.suspect(leader):
            # Nearly every request: a leader that answers. It comes first in any order, so the
            # others are ordered (shuffled) only if it does not answer as leader.
            self._queue = [leader]
            self._others_at = now
        else:
            self._queue = self._order(now)
            self._others_at = None

    def _order(self, now: float) -> list[str]:
        s = self._standing
        live = [m for m in self.members if not s.held(m, now)]
        if not live:
            # Everyone is held (this client lost the network for a moment, or a group of one):
            # asking is the only way to find out, earliest-held first.
            return sorted(self.members, key=s.held_until)
        self._rng.shuffle(live)
        live.sort(key=lambda m: (s.suspect(m), m != self.leader))
        return live

    def next(self) -> str | None:
        """The member to ask now, or None: this round is over without a leader."""
        while True:
            while self._queue:
                node = self._queue.pop(0)
                if node in self._asked:
                    continue
                if self._heard and node not in self._hinted and self._standing.suspect(node):
                    return None  # the others are up and know of no leader yet: wait for the election
                self._asked.add(node)
                return node
            if self._others_at is None:
                return None
            # The leader asked first did not answer as one: the others, in the round's order.
            self._queue, self._others_at = self._order(self._others_at), None

    def redirect(self, hint: str | None, now: float) -> None:
        """A member answered ``not_leader`` naming ``hint`` (None: it knows of no leader). The
        hinted node is asked next unless it was asked this round or is held (then it may be a
        leader the member has not yet noticed is gone)."""
        self._heard = True
        if hint is None or self._standing.held(hint, now):
            return
        self.leader = hint
        if hint not in self._asked:
            self._hinted.add(hint)
            self._queue.insert(0, hint)

    def again(self, node: str) -> None:
        """Ask ``node`` again next (it answered, but its answer said to retry)."""
        self._heard = True
        self._asked.discard(node)
        self._hinted.add(node)
        self._queue.insert(0, node)

    def set_members(self, members: Sequence[str], now: float) -> None:
        """The group's voters changed (a member told us of a membership change): a new round."""
        self.members = tuple(members)
        self.new_round(now)
