"""Time, injected: daemons take a Clock so TTLs, backoff and health checks are tested without sleeps.

``SystemClock`` is the real thing. ``FakeClock`` only moves when told to (``advance``), or, with
``autojump=True``, jumps straight to the deadline of whoever sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import time as _time
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "SystemClock", "FakeClock", "SYSTEM_CLOCK"]


@runtime_checkable
class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps, SigV4 dates, expiry)."""

    def time_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` on this clock (a checkpoint even for 0)."""


class SystemClock:
    """The machine's clocks and the event loop's sleep."""

    __slots__ = ()

    def time(self) -> float:
        return _time.time()

    def time_ns(self) -> int:
        return _time.time_ns()

    def monotonic(self) -> float:
        return _time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock for tests. ``advance(s)`` moves both clocks and wakes sleepers whose time has come.

    With ``autojump=True`` a ``sleep`` moves the clock to its own deadline at once (then yields),
    so code that sleeps in a loop runs at full speed while seeing time pass.
    """

    def __init__(self, *, start: float = 1_700_000_000.0, monotonic_start: float = 1000.0,
                 autojump: bool = False) -> None:
        self._wall = start
        self._mono = monotonic_start
        self.autojump = autojump
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._wall

    def time_ns(self) -> int:
        return int(round(self._wall * 1_000_000_000))

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never back) and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("a FakeClock cannot go back in time")
        self._wall += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()

    def set_time(self, wall: float) -> None:
        """Set the wall clock (as NTP would); the monotonic clock does not move."""
        self._wall = wall

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock."""
        return len(self._sleepers)

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.autojump or seconds == 0:
            if seconds:
                self.advance(seconds)
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (self._mono + seconds, next(self._seq), event)
        heapq.heappush(self._sleepers, entry)
        try:
            await event.wait()
        finally:
            if not event.is_set():  # cancelled: forget this sleeper
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
