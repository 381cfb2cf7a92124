"""Catalogue calls off the event loop: each runs in a worker thread, a bounded number at once,
with a bounded queue in front (past it the caller gets 503 at once rather than waiting behind a
slow database: a stalled catalogue never stalls uploads or the loop)."""

from __future__ import annotations

from typing import Callable, TypeVar

import anyio

from ..catalogue import CatalogueError, SqlCatalogue
from ..errors import CatalogueUnavailable, from_catalogue

__all__ = ["CatalogueRunner"]

T = TypeVar("T")


class CatalogueRunner:
    """Runs ``fn(catalogue)`` in a worker thread; catalogue errors come out as origin errors."""

    def __init__(self, catalogue: SqlCatalogue, *, threads: int, max_waiting: int | None = None) -> None:
        self.catalogue = catalogue
        self.limiter = anyio.CapacityLimiter(threads)
        self.max_waiting = max_waiting if max_waiting is not None else 16 * threads
        self.counts = {"catalogue_calls": 0, "catalogue_errors": 0, "catalogue_busy": 0}

    async def call(self, fn: Callable[[SqlCatalogue], T]) -> T:
        """``fn(catalogue)`` in a worker thread (503 when too many calls already wait)."""
        if self.limiter.statistics().tasks_waiting >= self.max_waiting:
            self.counts["catalogue_busy"] += 1
            raise CatalogueUnavailable("the catalogue is busy: retry shortly")
        self.counts["catalogue_calls"] += 1
        try:
            return await anyio.to_thread.run_sync(fn, self.catalogue, limiter=self.limiter)
        except CatalogueError as e:
            self.counts["catalogue_errors"] += 1
            raise from_catalogue(e) from e

    def statistics(self) -> dict[str, int]:
        """Calls made, failed, refused as busy; threads in use and callers waiting."""
        st = self.limiter.statistics()
        return {**self.counts, "catalogue_threads_busy": st.borrowed_tokens,
                "catalogue_waiting": st.tasks_waiting}
