"""What every S3 operation handler works with: the store's clients and one request's facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import anyio

from headwater.config import ClusterConfig
from headwater.http.types import Request

from ..config import User
from ..datapath import StoragePool, delete_layouts
from ..metadata.client import MetadataClient
from ..records import Layout
from .bucketcache import BucketCache

__all__ = ["Store", "Call"]


@dataclass(slots=True, kw_only=True)
class Store:
    """The gateway's long-lived handles: config, metadata ring, storage pool, clock, bucket cache."""

    cluster: ClusterConfig
    meta: MetadataClient
    pool: StoragePool
    clock: Callable[[], float]
    # Fragments of replaced or deleted objects wait this long before removal, so that a GET that
    # read the old record just before the change can still stream it.
    retire_grace_s: float = 300.0
    # Bucket records GET and HEAD may reuse (off unless the daemon configures it).
    buckets: BucketCache = field(default_factory=lambda: BucketCache(ttl_s=0.0, clock_drift=0.0))
    _retired: list[tuple[float, Layout]] = field(default_factory=list)

    def retire(self, layouts: Iterable[Layout], *, now: bool = False) -> None:
        """Schedule fragments no record points to any more for deletion."""
        due = self.clock() + (0.0 if now else self.retire_grace_s)
        self._retired.extend((due, lay) for lay in layouts)

    async def collect_retired(self, *, everything: bool = False) -> int:
        """Delete the fragments whose grace period has passed (all of them when ``everything``,
        as at shutdown); returns how many layouts went."""
        now = float("inf") if everything else self.clock()
        due = [lay for t, lay in self._retired if t <= now]
        if not due:
            return 0
        self._retired = [(t, lay) for t, lay in self._retired if t > now]
        await delete_layouts(self.pool, due)
        return len(due)

    async def run_retirer(self, interval_s: float = 1.0) -> None:
        """Delete retired fragments as their grace ends; on shutdown, delete the rest at once
        (fragments left by a crash are the garbage collector's)."""
        try:
            while True:
                await anyio.sleep(interval_s)
                await self.collect_retired()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self.collect_retired(everything=True)


@dataclass(slots=True, kw_only=True)
class Call:
    """One authenticated S3 request, routed: who asks, for which bucket and key, with what."""

    request: Request
    request_id: str
    user: User
    bucket: str | None
    key: str | None
    query: dict[str, list[str]]
    auth: object  # sigv4.AuthResult: what the payload verifier needs
    response_headers: list[tuple[str, str]] = field(default_factory=list)

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.request.headers.get(name, default)
