"""When a failed job runs again: exponential backoff with jitter, sans-IO (the rng is injected).

Attempt ``n`` (1 = the first run) waits ``base * 2**(n-1)`` capped at ``cap``; "equal jitter"
then draws the delay uniformly from its upper half, so retries of many jobs that failed together
(the object store was down) spread out instead of returning in one wave, yet never come back
sooner than half the nominal delay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "OUTAGE_BACKOFF"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    base_s: float = 5.0
    cap_s: float = 3600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempt``-th run failed."""
        nominal = min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 1) - 1, 60))
        return nominal / 2 + rng.uniform(0.0, nominal / 2)


#: How a background loop (the transcoder's lease loop, the version collector, the purge loop)
#: waits after failed passes in a row, the database or the store away: 1, 2, 4 ... s (equal
#: jitter), at most 30 s, so it resumes within 30 s of the outage's end and many hosts' loops
#: do not return in one wave.
OUTAGE_BACKOFF = Backoff(base_s=1.0, cap_s=30.0)
