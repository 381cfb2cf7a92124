"""The upload service's background loop: each pass aborts unfinished uploads past their expiry
(tus expiration: the multipart upload aborted, segments and record removed), retires the
records of uploads completed more than ``upload_retention_seconds`` ago (the records table
stays bounded) with the objects of those no title was made from, and completes whole uploads
whose completion the store refused earlier. Every origin host runs one on the shared records:
each action takes the upload's lease, so two never act on one upload at once. On the kernel's
:class:`~headwater.background.BackgroundLoop` (``run_once`` for tests, ``run_forever`` in the
daemon)."""

from __future__ import annotations

from typing import Any

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock

from .service import UploadService

__all__ = ["UploadJanitor"]


class UploadJanitor(BackgroundLoop[tuple[int, int]]):
    """Expiry, retention and late completion, every ``interval_s``."""

    name = "origin.uploads"

    def __init__(self, uploads: UploadService, *, interval_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(interval_s=interval_s, clock=clock)
        self.uploads = uploads

    async def one_pass(self) -> tuple[int, int]:
        expired = await self.uploads.expire_once()
        retired = await self.uploads.retire_once()
        await self.uploads.finish_pending()
        return expired, retired

    def summary(self, result: tuple[int, int]) -> dict[str, Any] | None:
        expired, retired = result
        return {"expired": expired, "retired": retired} if expired or retired else None
