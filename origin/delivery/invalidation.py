"""Invalidating the CDN when what a title publishes changes: the catalogue-side hook.

Every response about title T carries ``Surrogate-Key: title-T`` (:mod:`.serve`), so one purge by
that tag removes from every POP and tier all the CDN holds of it: manifests, segments, and the
short-lived 404/410 answers. It is due whenever a title's publication changes:

* it is **published** (a first publish too: 404s for it may be cached; a re-publish: the old
  version's manifests must go, so players move to the new version),
* it is **withdrawn** (nothing of it may be served any more),
* it leaves ``published`` any other way (re-transcoding).

Where the pipeline and the API must call :func:`request_cdn_purge` (the lead wires it): right
after the catalogue update that made the change commits — after ``complete(lease,
title_state=PUBLISHED, renditions=...)`` in the transcode/publish worker, after
``set_state(T, WITHDRAWN)`` in the API's withdraw route, and after any ``set_state`` that takes a
published title elsewhere. It is cheap and idempotent: it queues a ``cdn-purge`` job in the
catalogue (the durable queue; the idempotency key names the title's ``updated`` time, so one
change queues one purge however often it is called), and :class:`PurgeWorker` in the origin
daemon sends it to the edge, retrying with the queue's backoff while the edge is unreachable.
(A crash between the catalogue update and the enqueue loses that purge: the gap is one
statement; folding the enqueue into the catalogue's publishing transaction closes it.)

The worker also drops the title from this process's :class:`~.published.PublishedVersions`, so
the origin itself stops serving a withdrawn title at once rather than within the cache's TTL.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Awaitable, Callable

import anyio

from headwater.clock import SYSTEM_CLOCK, Clock

from ..catalogue import SqlCatalogue, Title, TitleState
from ..catalogue.backoff import OUTAGE_BACKOFF
from .published import PublishedVersions
from .serve import surrogate_key

__all__ = ["PURGE_JOB", "needs_purge", "request_cdn_purge", "PurgeWorker"]

log = logging.getLogger("headwater.origin")

PURGE_JOB = "cdn-purge"


def needs_purge(before: TitleState | None, after: TitleState) -> bool:
    """True when a title going from ``before`` to ``after`` changes what the CDN may serve."""
    return after in (TitleState.PUBLISHED, TitleState.WITHDRAWN) or before is TitleState.PUBLISHED


def request_cdn_purge(catalogue: SqlCatalogue, title: Title) -> None:
    """Queue the purge of ``title``'s surrogate key (blocking: call it where the catalogue
    update ran, or through ``anyio.to_thread``). ``title`` is the catalogue's answer to that update."""
    catalogue.enqueue(PURGE_JOB, f"{PURGE_JOB}:{title.id}:{title.state.value}:{title.updated!r}", title_id=title.id,
                      payload={"tag": surrogate_key(title.id)})


class PurgeWorker:
    """Leases ``cdn-purge`` jobs and sends each to the edge (``purge(tags, now=)`` of
    :class:`headwater.edge.client.EdgePurger`); ``run_once`` for tests, ``run_forever`` for the daemon."""

    def __init__(self, catalogue: SqlCatalogue, purge: Callable[..., Awaitable[int]] | None, *,
                 versions: PublishedVersions | None = None, worker: str = "origin", interval_s: float = 1.0,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.catalogue = catalogue
        self._purge = purge
        self.versions = versions
        self.worker = worker
        self.interval_s = interval_s
        self.clock = clock
        self.counts = {"purges_sent": 0, "purges_failed": 0}

    async def run_once(self) -> int:
        """Send every due purge; how many were sent."""
        sent = 0
        while True:
            lease = await anyio.to_thread.run_sync(self.catalogue.lease, self.worker, [PURGE_JOB], 60.0)
            if lease is None:
                return sent
            job: Any = lease.job
            if self.versions is not None and job.title_id is not None:
                self.versions.forget(job.title_id)
            if self._purge is None:  # no edge in this cluster: nothing caches the title
                await anyio.to_thread.run_sync(lambda: self.catalogue.complete(lease))
                continue
            try:
                seq = await self._purge(tags=[str(job.payload.get("tag"))], now=self.clock.time())
            except Exception as e:  # noqa: BLE001 - the edge's failure is retried, never the daemon's
                self.counts["purges_failed"] += 1
                log.warning("origin: CDN purge of %s failed: %s", job.payload.get("tag"), e,
                            extra={"event": "origin.purge_failed"})
                await anyio.to_thread.run_sync(self.catalogue.fail, lease, str(e))
                continue
            await anyio.to_thread.run_sync(lambda: self.catalogue.complete(lease))
            self.counts["purges_sent"] += 1
            sent += 1
            log.info("origin: purged %s from the CDN (purge %d)", job.payload.get("tag"), seq,
                     extra={"event": "origin.purged"})

    async def run_forever(self) -> None:
        """:meth:`run_once` every ``interval_s``."""
        failures = 0
        rng = random.Random()
        while True:
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - a catalogue outage must not end the loop
                failures += 1
                if failures == 1:  # once per outage, not once a second
                    log.exception("origin: the purge loop failed", extra={"event": "origin.purge_loop_error"})
                await anyio.sleep(max(self.interval_s, OUTAGE_BACKOFF.delay(failures, rng)))
                continue
            failures = 0
            await anyio.sleep(self.interval_s)
