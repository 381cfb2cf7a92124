"""Background loops: one pass of work at a time, ``interval_s`` apart, on an injected clock.

The scrubber, the reconstructor, the garbage collector and the rebalancer (and the health
checkers, purgers and key rotation to come) share one skeleton, Swift's daemons' in our terms:

- a *pass* (:meth:`BackgroundLoop.one_pass`, the subclass's) does the work once;
- :meth:`~BackgroundLoop.run_once` runs one pass and keeps the books (what tests call): pass
  counters, the last pass's start, end and duration, ``running`` and ``progress`` (0..1, the
  pass sets it as it goes);
- :meth:`~BackgroundLoop.run_forever` runs passes ``interval_s`` apart (from the end of one to
  the start of the next) on the injected :class:`~headwater.clock.Clock`, until cancelled. A pass
  that raises is logged (``<name>.pass_failed``), counted and retried after a backoff (``backoff_s``,
  doubling with each failure in a row, at most ``max(interval_s, backoff_s)``): never the end of
  the daemon. While ``enabled`` is false no pass runs;
- between passes, :meth:`~BackgroundLoop.idle` runs every ``tick_s`` (when set): small work
  that must not wait for the next pass (the scrubber's suspect fragments, the rebalancer's old
  copies). A failing ``idle`` is logged and counted like any failure;
- :meth:`~BackgroundLoop.record_failure` counts a failure by reason (``classify``: the
  daemon's one place errors get their metric label) and logs ``<name>.failed``; a pass calls it
  for a step that fails without failing the pass.

Lines are logged through stdlib ``logging`` with stable event names (``<name>.pass_done`` with
the fields :meth:`~BackgroundLoop.summary` returns, ``<name>.pass_failed``, ``<name>.failed``),
which ``headwater.log`` writes as the daemon's JSON lines. The byte-rate throttle a pass may use
is :mod:`headwater.throttle`.

    class Collector(BackgroundLoop):
        name = "gc"

        async def one_pass(self) -> int:
            ...
            return deleted

        def summary(self, deleted: int) -> dict | None:
            return {"deleted": deleted} if deleted else None  # None: no pass_done line
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Generic, TypeVar

from .clock import SYSTEM_CLOCK, Clock

__all__ = ["BackgroundLoop", "DEFAULT_BACKOFF_S"]

# The first retry of a failed pass; each failure in a row doubles it, up to the interval.
DEFAULT_BACKOFF_S = 1.0

T = TypeVar("T")


def _type_name(exc: BaseException) -> str:
    return type(exc).__name__


class BackgroundLoop(Generic[T]):
    """The skeleton (see the module docstring). Subclasses set ``name`` and implement
    :meth:`one_pass`; optionally :meth:`idle` (with ``tick_s``) and :meth:`summary`."""

    name = "background"  # event prefix: <name>.pass_done, <name>.pass_failed, <name>.failed
    idle_what = "work between passes"  # what <name>.failed says when idle() raises
    logger = logging.getLogger("headwater.background")

    def __init__(self, *, interval_s: float, clock: Clock = SYSTEM_CLOCK, tick_s: float | None = None,
                 backoff_s: float = DEFAULT_BACKOFF_S,
                 classify: Callable[[BaseException], str] = _type_name) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.tick_s = tick_s
        self.backoff_s = backoff_s
        self.classify = classify
        self.enabled = True
        # the books
        self.passes = 0               # passes completed
        self.failed_passes = 0        # passes that raised
        self.failures_in_row = 0      # failed passes since the last good one (run_forever)
        self.failure_count = 0        # every failure recorded: failed passes and failed steps
        self.failures: dict[str, int] = {}  # the same by reason
        self.running = False
        self.progress = 0.0           # of the pass running now (the pass updates it)
        self.pass_started: float | None = None     # wall clock, while a pass runs
        self.last_pass_start: float | None = None  # wall clock, of the last completed pass
        self.last_pass_end: float | None = None    # wall clock
        self.last_pass_seconds: float | None = None

    # --- what subclasses write ---------------------------------------------------------------

    async def one_pass(self) -> T:
        """One pass of the work; what it returns, :meth:`run_once` returns."""
        raise NotImplementedError

    async def idle(self) -> None:
        """Work between passes, every ``tick_s`` (when ``tick_s`` is set)."""

    def summary(self, result: T) -> dict[str, Any] | None:
        """Fields of the ``<name>.pass_done`` line for a pass's result; None logs no line."""
        return {}

    # --- running -----------------------------------------------------------------------------

    async def run_once(self) -> T:
        """One pass, with the books kept; raises what the pass raised."""
        started_wall = self.clock.time()
        started = self.clock.monotonic()
        self.pass_started = started_wall
        self.running = True
        self.progress = 0.0
        try:
            result = await self.one_pass()
        finally:
            self.running = False
            self.pass_started = None
        self.passes += 1
        self.progress = 1.0
        self.last_pass_start = started_wall
        self.last_pass_end = self.clock.time()
        self.last_pass_seconds = self.clock.monotonic() - started
        fields = self.summary(result)
        if fields is not None:
            text = ", ".join(f"{k} {v}" for k, v in fields.items())
            self.logger.info("%s: pass done%s", self.name, f": {text}" if text else "",
                             extra={"event": f"{self.name}.pass_done", **fields,
                                    "seconds": round(self.last_pass_seconds, 3)})
        return result

    async def run_forever(self) -> None:
        """Passes ``interval_s`` apart until cancelled; a failed pass is retried after a backoff."""
        while True:
            if not self.enabled:
                await self.wait(self.tick_s or max(self.interval_s, self.backoff_s))
                continue
            try:
                await self.run_once()
            except Exception as e:  # noqa: BLE001 - the daemon outlives any one pass
                self.failures_in_row += 1
                wait = self.backoff(self.failures_in_row)
                self._pass_failed(e, wait)
            else:
                self.failures_in_row = 0
                wait = self.interval_s
            await self.wait(wait)

    def backoff(self, in_row: int) -> float:
        """Seconds before retrying after ``in_row`` failed passes in a row."""
        cap = max(self.interval_s, self.backoff_s)
        return min(cap, self.backoff_s * 2 ** min(in_row - 1, 30))

    async def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` on the clock (always a checkpoint), running :meth:`idle` every
        ``tick_s`` meanwhile."""
        if not self.tick_s or self.tick_s <= 0:
            await self.clock.sleep(seconds)
            return
        deadline = self.clock.monotonic() + seconds
        while True:
            await self.clock.sleep(min(max(deadline - self.clock.monotonic(), 0.0), self.tick_s))
            try:
                await self.idle()
            except Exception as e:  # noqa: BLE001 - idle work fails like a step, never fatally
                self.record_failure(e, self.idle_what)
            if self.clock.monotonic() >= deadline:
                return

    # --- failures ------------------------------------------------------------------------------

    def _count(self, exc: BaseException) -> str:
        reason = self.classify(exc)
        self.failure_count += 1
        self.failures[reason] = self.failures.get(reason, 0) + 1
        return reason

    def _pass_failed(self, exc: BaseException, retry_in_s: float) -> None:
        self.failed_passes += 1
        reason = self._count(exc)
        self.logger.warning("%s: pass failed (%s): %s; retrying in %.0fs", self.name, reason, exc, retry_in_s,
                            exc_info=exc,
                            extra={"event": f"{self.name}.pass_failed", "reason": reason,
                                   "retry_in_s": retry_in_s, "failures_in_row": self.failures_in_row})

    def record_failure(self, exc: BaseException, what: str) -> str:
        """Count and log a failed step (``what``: "rebuild of <oid>"); returns its reason."""
        reason = self._count(exc)
        self.logger.warning("%s: %s failed (%s): %s", self.name, what, reason, exc,
                            extra={"event": f"{self.name}.failed", "what": what, "reason": reason,
                                   "error": f"{type(exc).__name__}: {exc}"})
        return reason

    def loop_stats(self) -> dict[str, float]:
        """The books as numbers (for ``/metrics``; None is 0)."""
        return {"passes": self.passes, "failed_passes": self.failed_passes, "failures": self.failure_count,
                "pass_running": int(self.running), "pass_progress": self.progress if self.running else 0.0,
                "last_pass_start": self.last_pass_start or 0.0, "last_pass_end": self.last_pass_end or 0.0,
                "last_pass_seconds": self.last_pass_seconds or 0.0}
