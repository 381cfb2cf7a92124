"""Merging sorted listing streams into one sorted stream, sans-IO.

Keys hash to partitions, so a listing reads every partition and merges their sorted pages, as
MinIO merges its erasure sets. A metadata node merges the partitions of one Raft group itself
(``kv.list``), so the client merges one stream per group. :class:`StreamMerge` knows no sockets:
the caller asks :meth:`~StreamMerge.wanted` which streams need a page (from where, how many
names), fetches them however it likes (one request per group, all at once), hands each page to
:meth:`~StreamMerge.feed`, and takes names with :meth:`~StreamMerge.pop` while nothing is wanted.

Pages may hold common prefixes rolled up on the node; one prefix usually has keys in many
groups, so equal names from different streams come out once.

Rounds: as soon as one unfinished stream runs dry, every unfinished stream is asked for its next
page, twice as large as its last (up to ``max_page``). After r rounds each unfinished stream has
sent ``first_page * (2**r - 1)`` names, and once that reaches the N names a page needs, N of them
are known to be in order: a page of N names costs at most about log2(N / first_page) + 1 rounds
however the names fall (one when ``first_page`` is N), where asking only the stream that ran dry
could cost a round per stream (89 rounds for a page of 500 prefixes over 64 partitions).
"""

from __future__ import annotations

import collections
import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["StreamMerge", "PageWanted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PageWanted:
    """Stream ``stream`` needs its next page: names after ``start_after``, ``limit`` at most."""

    stream: int
    start_after: str
    start_open: bool
    limit: int


@dataclass(slots=True)
class _Cursor:
    stream: int
    after: str
    open: bool
    page: int
    high: str  # the last name it sent (a resumed page may go on from a common prefix below ``after``)
    buf: collections.deque[tuple[str, Any]] = field(default_factory=collections.deque)
    done: bool = False


class StreamMerge:
    """A k-way merge of sorted streams fed a page at a time, equal names once, in name order."""

    def __init__(self, streams: Iterable[int], *, start_after: str = "", first_page: int = 16,
                 max_page: int = 1000):
        if first_page < 1 or max_page < first_page:
            raise ValueError("need 1 <= first_page <= max_page")
        self._cursors = {i: _Cursor(stream=i, after=start_after, open=False, page=first_page, high=start_after)
                         for i in streams}
        self._max_page = max_page
        self._heap: list[tuple[str, int]] = []
        self._fetched: set[int] = set()
        # Unfinished streams with nothing buffered: kept as a count, so that checking before
        # each pop costs nothing however many streams there are.
        self._starved = len(self._cursors)
        self.pages = 0  # pages fed so far

    def wanted(self) -> list[PageWanted]:
        """Streams to ask before another name can be popped: none while every unfinished stream
        holds a name, else every unfinished stream (see the module's note on rounds)."""
        if not self._starved:
            return []
        return [PageWanted(stream=c.stream, start_after=c.after, start_open=c.open, limit=c.page)
                for c in self._cursors.values() if not c.done]

    def feed(self, stream: int, items: list[tuple[str, Any]], *, more: bool, last: str | None,
             last_open: bool = False) -> None:
        """The page a stream answered: ``items`` sorted, ``more`` if it has more after ``last``
        (``last_open``: ``last`` lies in a common prefix not yet sent, see ``RolledPage``)."""
        c = self._cursors[stream]
        if c.done:
            raise ValueError(f"stream {stream} has no more pages")
        previous = c.high
        for name, _ in items:
            if name <= previous:
                raise ValueError(f"stream {stream} answered {name!r} out of order")
            previous = name
        advances = more and last is not None
        # A page resumed inside a common prefix (``c.open``) may end on that prefix itself, which
        # sorts below the key it resumed after: it has advanced past the whole prefix.
        closed_prefix = c.open and bool(items) and last is not None and c.after.startswith(last)
        if advances and not closed_prefix and (last < c.after or (last == c.after and not items)):  # type: ignore[operator]
            raise ValueError(f"stream {stream} did not advance past {c.after!r}")
        self.pages += 1
        if stream in self._fetched:
            c.page = min(self._max_page, 2 * c.page)
        self._fetched.add(stream)
        had = bool(c.buf)
        c.buf.extend(items)
        c.high = previous
        if advances:
            c.after, c.open = last, last_open  # type: ignore[assignment]
        else:
            c.done = True
        if c.buf and not had:
            heapq.heappush(self._heap, (c.buf[0][0], stream))
        if not had and (c.buf or c.done):
            self._starved -= 1

    def pop(self) -> tuple[str, Any] | None:
        """The next (name, value) in order, or None when every stream is exhausted.

        Only while :meth:`wanted` is empty: otherwise a stream not yet heard from could hold a
        smaller name. Every unfinished stream then holds its next name in the heap, so the same
        name from other streams sits at the top beside it and is dropped with it.
        """
        if self._starved:
            raise RuntimeError("pop() while pages are wanted")
        if not self._heap:
            return None
        name, p = heapq.heappop(self._heap)
        value = self._advance(p)
        while self._heap and self._heap[0][0] == name:
            self._advance(heapq.heappop(self._heap)[1])  # the same common prefix from another stream
        return name, value

    def _advance(self, p: int) -> Any:
        c = self._cursors[p]
        _, value = c.buf.popleft()
        if c.buf:
            heapq.heappush(self._heap, (c.buf[0][0], p))
        elif not c.done:
            self._starved += 1
        return value
