"""The upload service's background loop: each pass aborts unfinished uploads past their expiry
(tus expiration: the multipart upload aborted, segments and record removed), retires the
records of uploads completed more than ``upload_retention_seconds`` ago (the records table
stays bounded) with the objects of those no title was made from, and completes whole uploads
whose completion the store refused earlier; and, every quarter of ``upload_orphan_grace_seconds``
(at most once a pass), sweeps the objects no record will name again: orphan segments, stray
multipart uploads (:mod:`.orphans`). Every origin host runs one on the shared records:
each action takes the upload's lease, so two never act on one upload at once. On the kernel's
:class:`~headwater.background.BackgroundLoop` (``run_once`` for tests, ``run_forever`` in the
daemon)."""

from __future__ import annotations

from typing import Any

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock

from .service import UploadService

__all__ = ["UploadJanitor", "PassResult"]


#: (expired, retired, orphan segments deleted, stray multipart uploads aborted) of one pass.
PassResult = tuple[int, int, int, int]


class UploadJanitor(BackgroundLoop[PassResult]):
    """Expiry, retention and late completion every ``interval_s``; the orphan sweep every
    quarter of the grace period (the first pass sweeps)."""

    name = "origin.uploads"

    def __init__(self, uploads: UploadService, *, interval_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(interval_s=interval_s, clock=clock)
        self.uploads = uploads
        # An orphan waits out the grace period anyway: listing the store more often than a
        # quarter of it would find little more.
        self.sweep_interval_s = max(interval_s, uploads.orphan_grace_s / 4)
        self._next_sweep = float("-inf")

    async def one_pass(self) -> PassResult:
        expired = await self.uploads.expire_once()
        retired = await self.uploads.retire_once()
        await self.uploads.finish_pending()
        segments = strays = 0
        now = self.clock.time()
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval_s
            segments, strays = await self.uploads.collect_orphans_once()
        return expired, retired, segments, strays

    def summary(self, result: PassResult) -> dict[str, Any] | None:
        expired, retired, segments, strays = result
        return {"expired": expired, "retired": retired, "orphan_segments_deleted": segments,
                "stray_uploads_aborted": strays} if any(result) else None
