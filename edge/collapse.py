"""Request collapsing inside one worker: concurrent misses for one key share one upstream fetch.

The first miss for a key opens a :class:`Flight` and starts the fetch (in the worker's own task
group, so it outlives the request that started it); later misses for the same key join it.
Every joined request streams the body as it arrives, not once it is whole.

The fan-out costs no copy per waiter: the flight keeps the body's most recent
``window_bytes`` in one shared list of chunks, and each waiter only holds its offset. The fetch
never waits for a waiter. A waiter that falls behind the window (a slow client) leaves the shared
buffer and reads the rest from its offset through its ``fallback`` (the app's: the store's growing
entry, which edge-store streams as it is written, or a ranged fetch upstream when no store keeps
the response); a waiter with no fallback fails with :class:`~.errors.CollapsedFetchFailed` rather
than hold memory.

Across a POP's worker processes, collapsing is the store's: one process claims the key (the
in-flight marker), the others read its growing entry (:mod:`headwater.edge.store.api`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import anyio

from .errors import CollapsedFetchFailed, EdgeError, UpstreamError

__all__ = ["FlightHead", "Flight", "Collapser"]

Fallback = Callable[[int], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlightHead:
    """What every request sharing a flight answers with: status and headers, and whether the
    body is being stored (a waiter can then read it back from the store)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    stored: bool
    extra: Any = None


class Flight:
    """One upstream fetch in progress and the requests waiting on it."""

    def __init__(self, key: bytes, window_bytes: int) -> None:
        self.key = key
        self.window_bytes = window_bytes
        self.head: FlightHead | None = None
        self.error: BaseException | None = None
        self.done = False
        self.received = 0
        self.waiters = 0
        self._chunks: list[bytes] = []
        self._base = 0  # offset of _chunks[0] in the body
        self._buffered = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # --- the fetcher's side -----------------------------------------------------------------

    def publish_head(self, head: FlightHead) -> None:
        self.head = head
        self._notify()

    def feed(self, chunk: bytes) -> None:
        """A body chunk arrived: share it, and drop the oldest beyond the window."""
        if not chunk:
            return
        self._chunks.append(chunk)
        self.received += len(chunk)
        self._buffered += len(chunk)
        while self._buffered > self.window_bytes and len(self._chunks) > 1:
            old = self._chunks.pop(0)
            self._base += len(old)
            self._buffered -= len(old)
        self._notify()

    def finish(self, error: BaseException | None = None) -> None:
        """The fetch is over: complete (``error`` None) or failed."""
        self.error = error
        self.done = True
        self._notify()

    # --- the waiters' side ------------------------------------------------------------------

    async def wait_head(self) -> FlightHead:
        """The response head, once the upstream sent it; raises the fetch's failure."""
        while self.head is None:
            if self.done:
                error = self.error or UpstreamError("the upstream fetch ended without a response")
                if isinstance(error, EdgeError):
                    raise error
                raise UpstreamError(f"the upstream fetch failed: {error!r}")
            await self._changed.wait()
        return self.head

    async def wait_done(self) -> None:
        """Until the fetch is over (complete or failed), without reading its body."""
        while not self.done:
            await self._changed.wait()

    async def follow(self, fallback: Fallback | None = None, start: int = 0) -> AsyncIterator[bytes]:
        """The body from ``start`` as it arrives. Raises CollapsedFetchFailed if the fetch fails
        (the response must then be cut short), or if this waiter fell behind the window and
        there is no ``fallback`` to read the rest from."""
        pos = start
        while True:
            if pos < self._base:
                if fallback is None:
                    raise CollapsedFetchFailed("fell behind a shared fetch whose response is not stored")
                async for chunk in fallback(pos):
                    yield chunk
                return
            # Yield what is buffered past pos (the list may change while we are suspended).
            offset = self._base
            index = 0
            chunks = self._chunks
            while index < len(chunks) and offset + len(chunks[index]) <= pos:
                offset += len(chunks[index])
                index += 1
            if index < len(chunks):
                chunk = chunks[index]
                piece = chunk[pos - offset:] if pos > offset else chunk
                pos += len(piece)
                yield piece
                continue
            if self.done:
                if self.error is not None:
                    raise CollapsedFetchFailed(f"the shared upstream fetch failed: {self.error}")
                return
            await self._changed.wait()


class Collapser:
    """The flights of one worker, by cache key; counts fetches and collapsed requests."""

    def __init__(self, window_bytes: int) -> None:
        self.window_bytes = window_bytes
        self.flights: dict[bytes, Flight] = {}
        self.fetches = 0
        self.collapsed = 0

    def join(self, key: bytes) -> tuple[Flight, bool]:
        """The flight for ``key`` and True when the caller must run the fetch (it opened it)."""
        flight = self.flights.get(key)
        if flight is not None and not flight.done:
            flight.waiters += 1
            self.collapsed += 1
            return flight, False
        flight = self.flights[key] = Flight(key, self.window_bytes)
        flight.waiters = 1
        self.fetches += 1
        return flight, True

    def land(self, flight: Flight) -> None:
        """The flight's fetch is over: later misses start a new one (or hit the store)."""
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
