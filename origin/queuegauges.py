"""The job queue's depth and age on the origin's /metrics: what the transcode-queue alert reads.

The queue lives in the catalogue, shared by every origin host and read by the transcoders, so
the origin reports it whether or not any transcoder runs (a queue no worker drains is exactly
what the alert is for). Reading it is a database query, never made on a scrape: a background
pass every ``interval_s`` runs :meth:`~headwater.origin.catalogue.store.SqlCatalogue.ready_jobs`
in a worker thread and keeps the answer; a scrape turns it into

- ``hw_origin_jobs_ready{kind}``: jobs queued and due, waiting for a worker;
- ``hw_origin_jobs_oldest_ready_seconds{kind}``: how long the oldest of them has been due (0
  when none), aged on the clock at scrape time, so it keeps growing between passes.

Every kind in ``kinds``, and every kind once seen, is always reported (0 when its queue is
empty), so a rule on it never sees an absent series for an empty queue.
"""

from __future__ import annotations

from typing import Callable, Iterable

import anyio

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.metrics import Registry

__all__ = ["JobQueueGauges"]


class JobQueueGauges(BackgroundLoop[int]):
    """Reads the queue every ``interval_s`` (``run_forever``; ``run_once`` for tests) and fills
    the two gauges (see the module docstring) at each scrape."""

    name = "origin.queue_gauges"

    def __init__(self, ready_jobs: Callable[[], dict[str, tuple[int, float]]], registry: Registry, *,
                 kinds: Iterable[str] = (), interval_s: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(interval_s=interval_s, clock=clock)
        self._ready_jobs = ready_jobs
        self.kinds = tuple(kinds)
        self.snapshot: dict[str, tuple[int, float]] = {}
        self.ready = registry.gauge("hw_origin_jobs_ready", "Jobs queued and due, waiting for a worker, by kind.",
                                    labels=("kind",))
        self.oldest = registry.gauge("hw_origin_jobs_oldest_ready_seconds",
                                     "Seconds the oldest job waiting for a worker has been due, by kind (0: none).",
                                     labels=("kind",))
        registry.add_collector(self.collect)
        self.collect()

    async def one_pass(self) -> int:
        self.snapshot = await anyio.to_thread.run_sync(self._ready_jobs)
        # A kind once seen stays reported (0 when drained), so its gauges never stick at the last value.
        self.kinds = tuple(dict.fromkeys((*self.kinds, *self.snapshot)))
        return sum(n for n, _ in self.snapshot.values())

    def summary(self, result: int) -> None:
        return None  # a pass every few seconds: no log line each

    def collect(self) -> None:
        now = self.clock.time()
        for kind in self.kinds:
            n, oldest = self.snapshot.get(kind, (0, now))
            self.ready.labels(kind).set(n)
            self.oldest.labels(kind).set(max(0.0, now - oldest) if n else 0.0)
