"""Byte-rate limits for background work (scrubbing, rebuilding): a token bucket and its pacer.

:class:`TokenBucket` is sans-IO: ``take(n, now)`` spends ``n`` tokens and says how long to wait
before going on (the bucket may go into debt, so one large read is never refused, only paid for
afterwards). :class:`Pacer` sleeps that long on an injected :class:`~headwater.clock.Clock`, so
tests run at full speed on a ``FakeClock`` while still seeing the time a real run would take.
"""

from __future__ import annotations

from headwater.clock import SYSTEM_CLOCK, Clock

__all__ = ["TokenBucket", "Pacer"]


class TokenBucket:
    """``rate`` tokens (bytes) per second, at most ``burst`` saved up; ``rate <= 0`` is no limit."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        self.rate = float(rate)
        # A quarter of a second of traffic by default: smooth enough, and one rebuild batch or
        # scrub chunk at typical rates fits without a wait.
        self.burst = float(burst if burst is not None else max(self.rate / 4, 1.0))
        self._tokens = self.burst
        self._at: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def take(self, n: float, now: float) -> float:
        """Spend ``n`` tokens at time ``now``; return the seconds to wait before the next spend."""
        if self.unlimited:
            return 0.0
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Pacer:
    """Sleeps on ``clock`` as a :class:`TokenBucket` of ``rate`` bytes/s says; counts what it paced."""

    def __init__(self, rate: float, *, clock: Clock = SYSTEM_CLOCK, burst: float | None = None) -> None:
        self.bucket = TokenBucket(rate, burst=burst)
        self.clock = clock
        self.bytes = 0
        self.waited_s = 0.0

    async def pace(self, n: int) -> None:
        """Account ``n`` bytes just moved; sleep until the rate allows more (a checkpoint always)."""
        self.bytes += n
        delay = self.bucket.take(n, self.clock.monotonic())
        self.waited_s += delay
        await self.clock.sleep(delay)
