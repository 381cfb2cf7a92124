"""A circuit breaker in front of the database, sans-IO (time is read from an injected clock).

Why: when PostgreSQL is down or unreachable, every statement waits (a connection attempt, the
pool's wait for a free connection) before it fails. A search that can answer from the local
index (localsearch.py) should pay that wait at most once per interval, not once per request:
after a failure the breaker is *open* and callers skip the database at once; when the interval
has passed, one caller at a time is let through to *probe* it; a success closes the breaker.

The transitions are one table, ``(state, event) -> state``; :class:`Breaker` only adds the
clock and a lock (searches run in several worker threads).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from headwater.clock import SYSTEM_CLOCK, Clock

__all__ = ["Breaker", "BreakerState", "BreakerStatistics"]


class BreakerState(enum.Enum):
    CLOSED = "closed"      # the database answers: use it
    OPEN = "open"          # it failed within the interval: do not wait on it
    PROBING = "probing"    # the interval passed: one caller tries it, the others do not wait


class _Event(enum.Enum):
    ASK = "ask"            # a caller asks whether to use the database (the interval has not passed)
    ASK_DUE = "ask_due"    # the same, once the interval since the failure (or the probe) has passed
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# (state, event) -> (the caller may use the database, the next state). A success or failure
# reported from any state (the background worker reports too, unasked) moves it.
_TABLE: dict[tuple[BreakerState, _Event], tuple[bool, BreakerState]] = {
    (BreakerState.CLOSED, _Event.ASK): (True, BreakerState.CLOSED),
    (BreakerState.CLOSED, _Event.ASK_DUE): (True, BreakerState.CLOSED),
    (BreakerState.OPEN, _Event.ASK): (False, BreakerState.OPEN),
    (BreakerState.OPEN, _Event.ASK_DUE): (True, BreakerState.PROBING),
    (BreakerState.PROBING, _Event.ASK): (False, BreakerState.PROBING),
    # A probe that never reported (its thread died): let another caller probe.
    (BreakerState.PROBING, _Event.ASK_DUE): (True, BreakerState.PROBING),
    **{(s, _Event.SUCCEEDED): (True, BreakerState.CLOSED) for s in BreakerState},
    **{(s, _Event.FAILED): (False, BreakerState.OPEN) for s in BreakerState},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStatistics:
    """The breaker's state and how often it opened and turned callers away."""

    state: BreakerState
    opened: int
    skipped: int


class Breaker:
    """Whether to use the database now: :meth:`allow` before, :meth:`succeeded` or
    :meth:`failed` after. ``retry_s`` is the interval after a failure (or the start of a probe)
    during which callers are told not to use it."""

    def __init__(self, retry_s: float, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if not retry_s > 0:
            raise ValueError("retry_s must be positive")
        self._retry_s = retry_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        # When the state last became OPEN or PROBING (monotonic seconds).
        self._since = 0.0
        self._opened = 0
        self._skipped = 0
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """Whether this caller should use the database (it must then report the outcome)."""
        with self._lock:
            now = self._clock.monotonic()
            due = now - self._since >= self._retry_s
            use, state = _TABLE[(self._state, _Event.ASK_DUE if due else _Event.ASK)]
            if state is BreakerState.PROBING and use:
                self._since = now
            if not use:
                self._skipped += 1
            self._state = state
            return use

    def succeeded(self) -> bool:
        """The database answered; whether that closed the breaker (it was open or probing)."""
        with self._lock:
            was = self._state
            self._state = _TABLE[(was, _Event.SUCCEEDED)][1]
            return was is not BreakerState.CLOSED

    def failed(self) -> bool:
        """The database could not be reached (or not within the bounded wait); whether that
        opened the breaker (it was closed: an outage begins)."""
        with self._lock:
            was = self._state
            self._state = _TABLE[(was, _Event.FAILED)][1]
            self._since = self._clock.monotonic()
            if was is BreakerState.CLOSED:
                self._opened += 1
            return was is BreakerState.CLOSED

    def statistics(self) -> BreakerStatistics:
        with self._lock:
            return BreakerStatistics(state=self._state, opened=self._opened, skipped=self._skipped)
