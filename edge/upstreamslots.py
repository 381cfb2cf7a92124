"""Upstream slots: how many fetches one edge worker may have open to its upstream at once.

Collapsing (:mod:`.collapse`) makes one upstream fetch of an object however many viewers want
it, but two kinds of request still cost an upstream fetch each, and nothing else bounds them:

- ``rest``: a viewer that fell more than ``collapse_window`` behind a shared fetch whose
  response no store keeps reads the rest from a ranged fetch of its own (the app's
  ``_rest_from_upstream``), for as long as it takes to read it: a crowd of slow or trickle-reading
  viewers is a crowd of upstream connections, the load collapsing exists to prevent;
- ``fetch``: every upstream request (a flight's fetch, a pass-through, a prefetch, and each rest
  fetch too). Before these slots only the HTTP client's pool per upstream bounded them (512
  connections, not configurable): a fetch past it waited out the connect timeout and failed as
  ``UpstreamTimeout``, a 504 counted as the upstream's failure (at a POP, one more strike
  towards marking a healthy regional down). The edge's daemon now sizes that pool to
  ``max_upstream_fetches``, so these slots bind first.

So each worker holds two :class:`SlotPool` s, as Varnish bounds a backend's connections
(``.max_connections``, with ``.wait_timeout`` / ``.wait_limit`` for the requests past it) and
nginx a server's (``max_conns``, ``proxy_cache_lock_timeout``): a fetch takes a slot or queues for
one, in order, at most ``max_waiting`` deep and at most ``wait_s`` long; past either it is
refused, never sent upstream. A prefetch takes a slot only while the pool has room to spare
(:attr:`SlotPool.spare`) and never queues. What a refusal becomes is the app's: before the response head a
503 with Retry-After (:class:`~.errors.UpstreamBusy`), after it the viewer's answer cut short.

The pool is sans-IO: it counts, queues :class:`Ticket` s and hands a released slot straight to
the first one waiting (calling its ``wake``); the caller does the waiting, on its own clock, and
gives up a ticket whose time is over (:meth:`SlotPool.give_up`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["SlotLimits", "Ticket", "SlotPool", "SlotStatistics", "KINDS", "pools_for"]

# The pools of a worker, by the kind of fetch that takes a slot in it.
KINDS = ("fetch", "rest")


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotLimits:
    """``[[edge]]``'s bounds on one worker's upstream fetches; the defaults are these (edge.config
    reads the keys)."""

    # Every upstream fetch at once (flights, passes, prefetches, rest fetches): 512, the HTTP
    # client's pool per upstream before these slots (so plain misses are bounded no lower than
    # they were; only what happens past the bound changed, see the module's docstring).
    max_upstream_fetches: int = 512
    # Of those, fetches of the rest of a response for a viewer behind its flight's window.
    max_rest_fetches: int = 16
    # How long a fetch waits for a slot, and how many may wait (per pool), before refusals.
    wait_s: float = 1.0
    max_waiting: int = 256


@dataclass(slots=True, eq=False)
class Ticket:
    """One fetch waiting for a slot. ``granted`` once a released slot was handed to it (the
    pool then calls ``wake``); ``deadline`` is on the caller's monotonic clock."""

    deadline: float
    granted: bool = False
    wake: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotStatistics:
    """A pool's counts: slots in use now and at most, fetches waiting now; since the start,
    slots taken, fetches that had to wait, and refusals (queue full, or the wait ran out)."""

    kind: str
    capacity: int
    in_use: int
    peak_in_use: int
    waiting: int
    taken: int
    waited: int
    refused_full: int
    refused_timeout: int


@dataclass(slots=True)
class SlotPool:
    """At most ``capacity`` slots in use; the fetches past it wait in order (``max_waiting`` at
    most, ``wait_s`` each)."""

    kind: str
    capacity: int
    wait_s: float
    max_waiting: int
    in_use: int = 0
    peak_in_use: int = 0
    taken: int = 0
    waited: int = 0
    refused_full: int = 0
    refused_timeout: int = 0
    _queue: deque[Ticket] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.capacity < 0 or self.max_waiting < 0 or self.wait_s < 0:
            raise ValueError("capacity, max_waiting and wait_s are never negative")

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def take_nowait(self) -> bool:
        """A slot now, if one is free and nobody queues for one (no barging past the queue)."""
        if self.in_use < self.capacity and not self._queue:
            self._took()
            return True
        return False

    @property
    def spare(self) -> bool:
        """Whether speculative work (a segment prefetch) may take a slot now: nobody queues and,
        after it, a quarter of the slots (rounded down) stay free for viewers. A prefetch never
        waits for a slot, nor takes one a viewer's fetch would have queued for: it is a guess
        about the future, and the viewers in front of the edge are the present."""
        return not self._queue and self.in_use + 1 <= self.capacity - self.capacity // 4

    def take_spare(self) -> bool:
        """A slot for speculative work, if :attr:`spare`; never queues."""
        if self.spare:
            self._took()
            return True
        return False

    def enqueue(self, now: float) -> Ticket | None:
        """Queue for the next released slot, until ``now + wait_s``; None: the queue is full
        (or no wait is allowed, or the pool has no slot at all), the fetch is refused now."""
        if len(self._queue) >= self.max_waiting or self.wait_s <= 0 or self.capacity == 0:
            self.refused_full += 1
            return None
        ticket = Ticket(deadline=now + self.wait_s)
        self._queue.append(ticket)
        self.waited += 1
        return ticket

    def release(self) -> None:
        """A fetch is over: its slot goes to the first ticket waiting, else back to the pool."""
        if self._queue:
            ticket = self._queue.popleft()
            ticket.granted = True
            self.taken += 1
            if ticket.wake is not None:
                ticket.wake()
            return
        if self.in_use <= 0:
            raise RuntimeError(f"{self.kind} slot released more often than taken")
        self.in_use -= 1

    def give_up(self, ticket: Ticket, *, timed_out: bool = True) -> None:
        """The ticket's fetch stops waiting (its time is over, or it was cancelled). A slot
        granted meanwhile is released again (to the next waiter); ``timed_out`` counts a
        refusal for one that never got one."""
        if ticket.granted:
            self.release()
            return
        try:
            self._queue.remove(ticket)
        except ValueError:
            return
        if timed_out:
            self.refused_timeout += 1

    def expire(self, now: float) -> list[Ticket]:
        """Give up every ticket whose deadline is at or before ``now`` (for a caller that
        polls rather than timing each wait); returns them."""
        gone = [t for t in self._queue if t.deadline <= now]
        for t in gone:
            self.give_up(t)
        return gone

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(kind=self.kind, capacity=self.capacity, in_use=self.in_use,
                              peak_in_use=self.peak_in_use, waiting=len(self._queue), taken=self.taken,
                              waited=self.waited, refused_full=self.refused_full,
                              refused_timeout=self.refused_timeout)

    def _took(self) -> None:
        self.in_use += 1
        self.taken += 1
        if self.in_use > self.peak_in_use:
            self.peak_in_use = self.in_use


def pools_for(limits: SlotLimits) -> dict[str, SlotPool]:
    """One worker's pools, by kind."""
    return {
        "fetch": SlotPool("fetch", limits.max_upstream_fetches, limits.wait_s, limits.max_waiting),
        "rest": SlotPool("rest", limits.max_rest_fetches, limits.wait_s, limits.max_waiting),
    }
