"""Which upstreams are up: ``fall`` failures in a row mark one down for ``down_s`` seconds, after
which one request decides (a success brings it back, a failure restarts the wait). Sans-IO, time
injected.

One rule for both kinds of upstream an edge daemon has: the next tier's daemons
(:class:`~.tiers.TierRouter`) and, at the top tier, a distribution's origins
(:class:`~.upstream.OriginFetcher`, a circuit breaker: a dead primary is skipped, not waited on
by every miss, and probed again once its down time is over).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

__all__ = ["Health"]


class Health:
    """The up/down state of a set of upstreams, by id.

    A failure is whatever the caller counts as one (the tiers: no answer; origins: no answer or
    a 5xx). Once ``down_s`` has passed, :meth:`is_up` says True again (the tiers ask that) and
    :meth:`take` lets one request through (the origins' breaker asks that); the failure count is
    kept, so the next failure marks it down again at once, and only a success resets it.
    """

    def __init__(self, ids: Iterable[str], *, fall: int = 3, down_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if fall < 1:
            raise ValueError("fall must be at least 1")
        self.ids = tuple(ids)
        self.fall = fall
        self.down_s = down_s
        self.clock = clock
        self._failures: dict[str, int] = {i: 0 for i in self.ids}
        self._down_until: dict[str, float] = {}

    def is_up(self, upstream_id: str) -> bool:
        until = self._down_until.get(upstream_id)
        return until is None or self.clock() >= until

    def take(self, upstream_id: str) -> bool:
        """Whether a request may go to ``upstream_id`` now: yes while it is up; while it is down,
        no until its down time is over, then yes for this one request, the probe, and no for the
        others until the probe's outcome (or, if none comes, another ``down_s``): a dead upstream
        costs one request a timeout per ``down_s``, not every request in flight."""
        until = self._down_until.get(upstream_id)
        if until is None:
            return True
        now = self.clock()
        if now < until:
            return False
        self._down_until[upstream_id] = now + self.down_s
        return True

    def succeeded(self, upstream_id: str) -> None:
        self._failures[upstream_id] = 0
        self._down_until.pop(upstream_id, None)

    def failed(self, upstream_id: str) -> bool:
        """Count a failure; True when it marks the upstream down (now or again)."""
        n = self._failures.get(upstream_id, 0) + 1
        self._failures[upstream_id] = n
        if n >= self.fall:
            self._down_until[upstream_id] = self.clock() + self.down_s
            return True
        return False

    def state(self) -> dict[str, str]:
        """Each upstream: "up" or "down" (for /healthz)."""
        return {i: "up" if self.is_up(i) else "down" for i in self.ids}
