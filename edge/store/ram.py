"""The RAM tier: bodies as bytes in this worker process, bounded in bytes by an eviction policy.

Each POP worker has its own (nothing is shared between processes: the disk tier is the shared
one). An entry becomes a hit only once its writer commits; misses within one process collapse
through ``claim``/``wait_filling`` (the waiter gets the committed entry, or None if the fetch
failed). Bodies are not checksummed here: the bytes never leave this process's memory, and what
is admitted came from the upstream or from a disk hit that was verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import anyio

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.edge.store.api import AlreadyFilling, EntryInfo, KeyPredicate, StoreStats
from headwater.edge.store.policy import DEFAULT_POLICY, make_policy

__all__ = ["RamStore", "RamHit", "RamWriter", "RamClaim"]


@dataclass(slots=True)
class _Entry:
    meta: bytes
    body: bytes
    stored_at: float
    # The hit handed out for it, made on its first get: a RamHit holds no per-request state,
    # so every hit of the entry shares it (one EntryInfo and RamHit less per hit).
    hit: RamHit | None = None


class RamHit:
    """A committed RAM entry: ``data`` is the body. (Weakly referable: the edge's memo of warm
    hits must not keep an evicted body alive.)"""

    __slots__ = ("info", "data", "__weakref__")

    def __init__(self, info: EntryInfo, data: bytes) -> None:
        self.info = info
        self.data = data

    @property
    def complete(self) -> bool:
        return True

    def file_body(self, offset: int = 0, length: int | None = None) -> None:
        """RAM bodies have no file."""
        return None

    async def chunks(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The body (or a range of it) as one piece."""
        end = len(self.data) if length is None else min(len(self.data), offset + length)
        if offset < end:
            yield self.data[offset:end]

    def close(self) -> None:
        """Nothing to release."""


class RamClaim:
    """This process fetches ``key``; others in the process wait on it (``wait_filling``)."""

    __slots__ = ("key", "_store", "_done")

    def __init__(self, store: RamStore, key: bytes) -> None:
        self.key = key
        self._store = store
        self._done = anyio.Event()

    def release(self) -> None:
        """Let the waiters look again (they find the committed entry, or none)."""
        if self._store._claims.get(self.key) is self:
            del self._store._claims[self.key]
        self._done.set()


class RamWriter:
    """Collects a body; ``commit`` makes it a hit (if it fits the tier)."""

    __slots__ = ("key", "written", "_store", "_meta", "_parts", "_claim", "_state")

    def __init__(self, store: RamStore, key: bytes, meta: bytes, claim: RamClaim) -> None:
        self.key = key
        self.written = 0
        self._store = store
        self._meta = meta
        self._parts: list[bytes] = []
        self._claim = claim
        self._state = "open"  # open | declined | committed | aborted

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            return
        self.written += len(chunk)
        if self.written > self._store.max_entry_bytes:
            # Too large for this tier: stop buffering (bounded memory), decline at commit.
            self._parts.clear()
            self._state = "declined"
            return
        self._parts.append(bytes(chunk))

    def commit(self) -> bool:
        store = self._store
        if self._state == "declined":
            store._declined += 1
            self._state = "aborted"
            self._claim.release()
            return False
        if self._state != "open":
            return False
        self._state = "committed"
        body = b"".join(self._parts)
        self._parts = []
        stored = store._put(self.key, _Entry(self._meta, body, store._clock.time()))
        self._claim.release()
        return stored

    def abort(self) -> None:
        if self._state in ("open", "declined"):
            self._state = "aborted"
            self._parts = []
            self._store._aborts += 1
            self._claim.release()


# What an entry costs besides its body and metadata: the dict slot, the _Entry and its bytes
# objects' headers, the policy's node (measured with sys.getsizeof: ~300 bytes on CPython 3.11),
# and once hit its shared RamHit and EntryInfo (~140 bytes).
ENTRY_OVERHEAD_BYTES = 460


def _charged(key: bytes, entry: _Entry) -> int:
    """The bytes an entry is charged against the capacity: body, metadata, key and overhead.
    Charged for the body alone, empty or tiny bodies (404s, 204s) under distinct keys cost
    nothing, and a client requesting random paths grew the tier without bound."""
    return len(entry.body) + len(entry.meta) + len(key) + ENTRY_OVERHEAD_BYTES


class RamStore:
    """The RAM tier of one worker process (``Store``)."""

    def __init__(
        self,
        capacity_bytes: int,
        *,
        policy: str = DEFAULT_POLICY,
        max_entry_bytes: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        # S3-FIFO refuses objects as large as its small queue (10 %): stay below that.
        self.max_entry_bytes = capacity_bytes // 16 if max_entry_bytes is None else max_entry_bytes
        self._clock = clock
        self._entries: dict[bytes, _Entry] = {}
        self._policy = make_policy(policy, capacity_bytes, self._evicted)
        self._claims: dict[bytes, RamClaim] = {}
        self._hits = self._misses = self._evictions = 0
        self._commits = self._aborts = self._declined = 0

    def _evicted(self, key: bytes, size: int) -> None:
        self._entries.pop(key, None)
        self._evictions += 1

    def _put(self, key: bytes, entry: _Entry) -> bool:
        if len(entry.body) > self.max_entry_bytes or not self._policy.admit(key, _charged(key, entry)):
            self._entries.pop(key, None)  # the admit dropped any older version
            self._declined += 1
            return False
        self._entries[key] = entry
        self._commits += 1
        return True

    def holds(self, key: bytes, hit: RamHit) -> bool:
        """Whether ``hit`` is still what ``get(key)`` hands out (neither replaced nor evicted),
        without counting a lookup or touching the entry."""
        entry = self._entries.get(key)
        return entry is not None and entry.hit is hit

    def get(self, key: bytes) -> RamHit | None:
        """The committed entry for ``key``, or None."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        self._policy.touch(key)
        self._hits += 1
        hit = entry.hit
        if hit is None:
            info = EntryInfo(
                key=key, meta=entry.meta, size=len(entry.body), stored_at=entry.stored_at, complete=True
            )
            hit = entry.hit = RamHit(info, entry.body)
        return hit

    def claim(self, key: bytes) -> RamClaim | None:
        """Mark ``key`` as being fetched by the caller; None if another task of this process is."""
        if key in self._claims:
            return None
        c = RamClaim(self, key)
        self._claims[key] = c
        return c

    async def wait_filling(self, key: bytes, timeout: float) -> RamHit | None:
        """Wait (up to ``timeout`` s) for the fetch that holds ``key``'s claim; its entry or None."""
        c = self._claims.get(key)
        if c is not None:
            with anyio.move_on_after(timeout):
                await c._done.wait()
        entry = self._entries.get(key)
        return None if entry is None else self.get(key)

    def begin(self, key: bytes, meta: bytes, *, claim: RamClaim | None = None) -> RamWriter:
        """A writer for ``key``. Without ``claim`` one is taken (``AlreadyFilling`` if held)."""
        if claim is None:
            claim = self.claim(key)
            if claim is None:
                raise AlreadyFilling(f"another task of this process is filling {key!r}")
        return RamWriter(self, key, meta, claim)

    def update_meta(self, key: bytes, meta: bytes) -> bool:
        """Replace the metadata of a committed entry (after a 304); False if absent."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        entry.meta = meta
        entry.hit = None  # (its info holds the old metadata)
        return True

    def remove(self, key: bytes) -> bool:
        """Drop ``key``; True if it was stored."""
        if self._entries.pop(key, None) is None:
            return False
        self._policy.remove(key)
        return True

    def keys_matching(self, pred: KeyPredicate) -> list[bytes]:
        """Keys whose ``pred(key, meta)`` is true (for purges)."""
        return [k for k, e in list(self._entries.items()) if pred(k, e.meta)]

    def stats(self) -> StoreStats:
        """This process's RAM tier figures."""
        return StoreStats(
            entries=len(self._entries),
            bytes=self._policy.used,
            capacity_bytes=self.capacity_bytes,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            corrupt_dropped=0,
            commits=self._commits,
            aborts=self._aborts,
            declined=self._declined,
            followed=0,
        )

    def close(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._policy = make_policy(self._policy.name, self.capacity_bytes, self._evicted)
