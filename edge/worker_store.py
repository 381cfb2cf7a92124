"""A worker's in-memory store with the store interface (:mod:`headwater.edge.store.api`).

The daemon uses edge-store's RAM and disk tiers when they are there (:func:`.daemon.open_stores`);
this is what it runs on until then, and what ``headwater edge serve`` falls back to: entries in
this process's memory, bounded in bytes by edge-store's eviction policy (S3-FIFO by default),
readers following an entry while it is written (the ``Hit.complete`` False case), nothing served
as a hit before ``commit``. It is not shared between worker processes and does not survive a
restart (the disk tier's job): a POP with several workers then fetches once per worker.
"""

from __future__ import annotations

import time
from typing import AsyncIterator, Callable

import anyio

from .store.api import EntryAborted, EntryInfo, EntryTooLarge, KeyPredicate, StoreStats
from .store.policy import make_policy

__all__ = ["WorkerStore"]


class _Entry:
    __slots__ = ("key", "meta", "chunks", "size", "stored_at", "complete", "aborted", "changed")

    def __init__(self, key: bytes, meta: bytes, now: float) -> None:
        self.key = key
        self.meta = meta
        self.chunks: list[bytes] = []
        self.size = 0
        self.stored_at = now
        self.complete = False
        self.aborted = False
        self.changed = anyio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class _Hit:
    __slots__ = ("_entry", "info", "data")

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry
        self.info = EntryInfo(key=entry.key, meta=entry.meta, size=entry.size, stored_at=entry.stored_at,
                              complete=entry.complete)
        self.data = b"".join(entry.chunks) if entry.complete else None

    @property
    def complete(self) -> bool:
        return self._entry.complete

    def file_body(self) -> None:
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        entry, index = self._entry, 0
        while True:
            while index < len(entry.chunks):
                yield entry.chunks[index]
                index += 1
            if entry.aborted:
                raise EntryAborted(f"entry {entry.key!r} was aborted by its writer")
            if entry.complete:
                return
            await entry.changed.wait()

    def close(self) -> None:
        pass


class _Writer:
    __slots__ = ("_store", "_entry")

    def __init__(self, store: WorkerStore, entry: _Entry) -> None:
        self._store = store
        self._entry = entry

    @property
    def key(self) -> bytes:
        return self._entry.key

    @property
    def written(self) -> int:
        return self._entry.size

    def write(self, chunk: bytes) -> None:
        entry = self._entry
        if entry.aborted:
            raise EntryAborted("write after abort")
        if entry.size + len(chunk) > self._store.max_entry_bytes:
            self.abort()
            raise EntryTooLarge(f"entry larger than {self._store.max_entry_bytes} bytes")
        entry.chunks.append(chunk)
        entry.size += len(chunk)
        entry.notify()

    def commit(self) -> bool:
        return self._store._commit(self._entry)

    def abort(self) -> None:
        self._store._abort(self._entry)


class WorkerStore:
    """Entries in this process's memory, at most ``capacity_bytes`` of bodies."""

    shared = False

    def __init__(self, capacity_bytes: int, *, policy: str = "s3fifo", max_entry_bytes: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.capacity_bytes = capacity_bytes
        self.max_entry_bytes = max_entry_bytes if max_entry_bytes is not None else max(1, capacity_bytes // 4)
        self.clock = clock
        self._entries: dict[bytes, _Entry] = {}
        self._filling: dict[bytes, _Entry] = {}
        self._policy = make_policy(policy, capacity_bytes, on_evict=self._evicted)
        self._counts = {"hits": 0, "misses": 0, "evictions": 0, "commits": 0, "aborts": 0}

    def _evicted(self, key: bytes, size: int) -> None:
        if self._entries.pop(key, None) is not None:
            self._counts["evictions"] += 1

    def get(self, key: bytes) -> _Hit | None:
        entry = self._entries.get(key)
        if entry is None:
            self._counts["misses"] += 1
            return None
        self._counts["hits"] += 1
        self._policy.touch(key)
        return _Hit(entry)

    def claim(self, key: bytes) -> object:
        return key  # one process: the daemon's flights already collapse its requests

    async def wait_filling(self, key: bytes, timeout: float) -> _Hit | None:
        entry = self._filling.get(key)
        return _Hit(entry) if entry is not None else None

    def begin(self, key: bytes, meta: bytes, *, claim: object = None) -> _Writer:
        entry = _Entry(key, meta, self.clock())
        self._filling[key] = entry
        return _Writer(self, entry)

    def _commit(self, entry: _Entry) -> bool:
        if entry.aborted:
            return False
        if self._filling.get(entry.key) is entry:
            del self._filling[entry.key]
        entry.complete = True
        entry.notify()
        if not self._policy.admit(entry.key, entry.size + len(entry.meta)):
            return False
        self._entries[entry.key] = entry
        self._counts["commits"] += 1
        return True

    def _abort(self, entry: _Entry) -> None:
        if entry.aborted:
            return
        entry.aborted = True
        entry.notify()
        if self._filling.get(entry.key) is entry:
            del self._filling[entry.key]
        self._counts["aborts"] += 1

    def update_meta(self, key: bytes, meta: bytes) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        entry.meta = meta
        return True

    def remove(self, key: bytes) -> bool:
        self._policy.remove(key)
        return self._entries.pop(key, None) is not None

    def keys_matching(self, pred: KeyPredicate) -> list[bytes]:
        return [k for k, e in self._entries.items() if pred(k, e.meta)]

    def stats(self) -> StoreStats:
        return StoreStats(entries=len(self._entries), bytes=sum(e.size for e in self._entries.values()),
                          capacity_bytes=self.capacity_bytes, hits=self._counts["hits"],
                          misses=self._counts["misses"], evictions=self._counts["evictions"],
                          corrupt_dropped=0, commits=self._counts["commits"], aborts=self._counts["aborts"])

    def close(self) -> None:
        self._entries.clear()
