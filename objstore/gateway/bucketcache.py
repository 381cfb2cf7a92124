"""Bucket records a gateway worker read lately, reused by GET and HEAD without a metadata call.

A GET or HEAD must judge its bucket (NoSuchBucket, AccessDenied) before its key, and reading the
bucket's record costs a metadata call whenever its group's leader is not the object's (5 GETs in
8 with 8 groups on 3 nodes). Reusing a record read earlier would be a stale read, were it not
for how a bucket record can change: only CreateBucket writes one (if absent) and only
DeleteBucket removes one, and DeleteBucket first *marks* the record (``BucketRecord.deleting``),
then waits ``bucket_cache_seconds`` before it removes it (``buckets.delete_bucket``). So:

* a record is kept only if it was read unmarked, and only for
  ``bucket_cache_seconds x (1 - raft_clock_drift)`` from when its read was *sent*;
* a read that saw it unmarked was served before the mark committed, so it was sent before too;
* the removal commits at least ``bucket_cache_seconds`` (on the deleting gateway's clock) after
  the mark did, which is later than any such entry expires, given the bound on clock *rate*
  that the metadata ring's lease reads already assume (``docs/metadata.md``).

Hence while an entry is kept, its bucket exists with that owner: judging a request by it is as
linearizable as reading the record again. Nothing else about a bucket is taken from here
(HeadBucket, ListBuckets, PUTs and deletes read the record as before). Absence is never kept:
a bucket can be created at any moment. ``bucket_cache_seconds = 0``, or ``raft_clock_drift = 1``
(no bound on clock rates), turns the cache off, and DeleteBucket then does not wait.

Sans-IO: the clock is injected; the caller reads the records and offers them here.
"""

from __future__ import annotations

import time
from typing import Callable

from ..records import BucketRecord

__all__ = ["BucketCache", "MAX_ENTRIES"]

# Buckets one worker keeps at most; a user with more buckets in use than this only pays the
# metadata call on the ones that fell out. Each entry is a few hundred bytes.
MAX_ENTRIES = 4096
_NEVER = float("inf")


class BucketCache:
    """Bucket name -> record, each until its own expiry (see the module's docstring)."""

    __slots__ = ("keep_s", "wait_s", "max_entries", "_now", "_entries", "hits", "misses", "refreshes")

    def __init__(self, *, ttl_s: float, clock_drift: float, monotonic: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_ENTRIES):
        if ttl_s < 0 or not 0 <= clock_drift <= 1:
            raise ValueError("ttl_s must be >= 0 and clock_drift in 0..1")
        #: How long an entry is kept, from when its read was sent.
        self.keep_s = ttl_s * (1 - clock_drift)
        #: How long DeleteBucket waits between marking a record and removing it (0: no cache).
        self.wait_s = ttl_s if self.keep_s > 0 else 0.0
        self.max_entries = max_entries
        self._now = monotonic
        # name -> [expires, record, refresh_at]; refresh_at is inf once one caller was sent to
        # read the record again.
        self._entries: dict[str, list] = {}
        self.hits = 0
        self.misses = 0
        self.refreshes = 0

    @property
    def enabled(self) -> bool:
        return self.keep_s > 0

    def now(self) -> float:
        """The cache's clock: take it before sending the read whose answer is offered."""
        return self._now()

    def get(self, name: str) -> BucketRecord | None:
        """The record of bucket ``name`` if one is kept and not expired, else None (read it, and
        offer what was read). In an entry's last quarter one caller gets None, once, so that the
        record is read again before it expires rather than by every request in flight then."""
        found = self._entries.get(name)
        if found is not None:
            now = self._now()
            if now < found[0]:
                if now < found[2]:
                    self.hits += 1
                    return found[1]
                found[2] = _NEVER
                self.refreshes += 1
                return None
            del self._entries[name]
        self.misses += 1
        return None

    def offer(self, name: str, rec: BucketRecord | None, sent_at: float) -> None:
        """A linearizable read of bucket ``name``'s record, sent at ``sent_at`` (``now()``),
        answered ``rec``: kept if it is a live, unmarked record and the cache is on."""
        if rec is None or rec.deleting is not None or self.keep_s <= 0:
            self._entries.pop(name, None)
            return
        expires = sent_at + self.keep_s
        if expires <= self._now():
            return
        entries = self._entries
        if name not in entries and len(entries) >= self.max_entries:
            self._evict()
        entries[name] = [expires, rec, expires - self.keep_s / 4]

    def _evict(self) -> None:
        """Make room: drop the expired entries, else the oldest quarter (by insertion)."""
        now = self._now()
        entries = self._entries
        expired = [n for n, e in entries.items() if e[0] <= now]
        for n in expired:
            del entries[n]
        if len(entries) >= self.max_entries:
            for n in list(entries)[: max(1, self.max_entries // 4)]:
                del entries[n]

    def statistics(self) -> dict[str, int]:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses,
                "refreshes": self.refreshes}
