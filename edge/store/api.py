"""The store interface the edge's request path uses: one shape for the RAM tier and the disk tier.

A store maps a cache key (``bytes``, from the cache rules' ``cache_key``) to an entry: opaque
metadata bytes (the caller's msgpack of its ``StoredResponse``; the store never parses them) and a
body. The store adds what it needs itself: the body size, the time it was stored and, on disk,
xxh3 checksums verified on every hit.

The request path, per tier::

    hit = store.get(key)                      # Hit | None; never a corrupt body
    if hit is None:
        claim = store.claim(key)              # the in-flight marker (disk: across processes)
        if claim is None:                     # someone is already fetching it
            hit = await store.wait_filling(key, timeout=...)   # its entry, or None: claim again
        else:
            writer = store.begin(key, meta, claim=claim)       # once the upstream headers are in
            writer.write(chunk) ... writer.commit()            # or writer.abort()
            # (claim.release() instead of begin when the fetch fails before any header)

Serving a hit: ``hit.data`` if it is not None (RAM; disk bodies up to one checksum block, already
verified), else ``hit.file_body(offset, length)`` for sendfile (verified first; None means it
failed and was dropped: treat as a miss) or ``hit.chunks(offset, length)``.

``Hit.complete`` is False for an entry another process is still writing (the disk tier's ``get``
and ``wait_filling`` return those): its ``chunks()`` follow the body as it grows and end when
the writer commits, raising ``EntryAborted`` if it aborts or dies. The last byte is held back
until the committed checksum is checked, so a failed fill never reaches a client whole. That is
how misses collapse across a POP's worker processes. Within one process, ``RamStore``'s
``wait_filling`` returns the committed entry once its writer is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from headwater.http.types import FileBody

__all__ = [
    "StoreFault",
    "EntryCorrupt",
    "EntryAborted",
    "AlreadyFilling",
    "EntryInfo",
    "StoreStats",
    "Hit",
    "Writer",
    "Claim",
    "Store",
    "KeyPredicate",
]


class StoreFault(Exception):
    """Root of the store's errors. The edge maps them to the wire (a response aborted mid-body)."""


class EntryCorrupt(StoreFault):
    """A body block failed its checksum while streaming. The entry is already dropped; the
    response must be aborted (its headers are out), never completed with bad bytes."""


class EntryAborted(StoreFault):
    """The entry a reader followed was aborted by its writer (or the writer died): the reader
    must abort its response as if the upstream had reset mid-body."""


class AlreadyFilling(StoreFault):
    """``begin`` without a claim found another live writer for the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryInfo:
    """What the store knows of one entry, without its body."""

    key: bytes
    meta: bytes
    size: int  # body bytes; for an entry still being written, those written so far
    stored_at: float  # wall-clock seconds when it was committed (begun, while writing)
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStats:
    """A store's figures. ``entries``/``bytes`` are the tier's (shared on disk); counters are this
    process's since it opened the store."""

    entries: int
    bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int
    corrupt_dropped: int
    commits: int
    aborts: int
    declined: int  # writes the tier refused (larger than its entry limit)
    followed: int  # gets answered with an entry still being written (collapsed misses)


KeyPredicate = Callable[[bytes, bytes], bool]
"""``pred(key, meta) -> bool``: selects entries for a purge."""


@runtime_checkable
class Hit(Protocol):
    """A stored (or growing) entry, ready to serve.

    Exactly one way of reading the body is used per hit:
    - ``data``: the whole body as bytes, already verified (RAM entries, small disk bodies);
    - ``file_body()``: the body as an open fd + offset + length for sendfile (disk, complete,
      verified as a whole before this returns; hands the fd over to the HTTP core);
    - ``chunks()``: the body in verified blocks, as it is read (large disk bodies: verifying
      block by block lets the first byte go out early), or as it grows (``complete`` False).
    ``close()`` releases what the hit holds (an fd) when the body is not read to its end.
    """

    @property
    def info(self) -> EntryInfo: ...

    @property
    def data(self) -> bytes | None: ...

    @property
    def complete(self) -> bool: ...

    def file_body(self, offset: int = 0, length: int | None = None) -> FileBody | None:
        """The body (or ``length`` bytes from ``offset``) for sendfile, verified first; None when
        the hit has no file (RAM), is still growing, or failed its checksum (then dropped: serve
        it as a miss). The fd is the caller's (the HTTP core's) from then on."""
        ...

    def chunks(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The body (or a range of it) in verified pieces; raises ``EntryCorrupt`` or
        ``EntryAborted`` mid-way, after which the response must be aborted."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Writer(Protocol):
    """An entry being written. Nothing of it is served as a hit until ``commit()``; readers that
    follow it (``Hit.complete`` False) see its bytes as they are written."""

    @property
    def key(self) -> bytes: ...

    @property
    def written(self) -> int: ...

    def write(self, chunk: bytes) -> None:
        """Append body bytes. Past the tier's entry limit the entry is dropped (followers see
        it aborted) and later writes are ignored: the fetch goes on for its own client, uncached."""
        ...

    def commit(self) -> bool:
        """Make the entry a hit; False when the store declined it (too large for the tier)."""
        ...

    def abort(self) -> None:
        """Drop the entry (upstream failed, truncated body, ...): nothing of it stays."""
        ...


@runtime_checkable
class Claim(Protocol):
    """The in-flight marker: "this process fetches ``key``". It has a lease that the writer
    renews as it writes, so a fetcher that was killed blocks the others only until it expires."""

    @property
    def key(self) -> bytes: ...

    def release(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    """A cache tier: ``RamStore`` (per process) or ``DiskStore`` (shared by a POP's workers)."""

    def get(self, key: bytes) -> Hit | None: ...

    def claim(self, key: bytes) -> Claim | None: ...

    async def wait_filling(self, key: bytes, timeout: float) -> Hit | None: ...

    def begin(self, key: bytes, meta: bytes, *, claim: Claim | None = None) -> Writer: ...

    def update_meta(self, key: bytes, meta: bytes) -> bool: ...

    def remove(self, key: bytes) -> bool: ...

    def keys_matching(self, pred: KeyPredicate) -> list[bytes]: ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...
