"""A byte budget shared by the requests of one process: what they may hold in memory at once.

A slow or stalled client must not make a daemon buffer without bound on its behalf: the S3
gateway's read-ahead for a GET the client stopped reading, an edge's cache fill for a viewer on a
bad link. Each holder takes bytes before it buffers them and gives them back once they are sent;
when the budget is spent, new takers wait (a bounded time, then the caller answers "busy")
rather than the process growing until the kernel kills it. MinIO bounds its request buffers the
same way.
"""

from __future__ import annotations

import math

import anyio

__all__ = ["ByteBudget", "BudgetExhausted"]


class BudgetExhausted(Exception):
    """The budget stayed spent for the whole wait."""


class ByteBudget:
    """``total`` bytes, taken and given back by the tasks of one process (one event loop).

    A take larger than the whole budget takes the whole budget, so one large request still runs
    alone rather than never. Waiters are served in arrival order (no small request starves a
    large one).
    """

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a byte budget needs a positive total")
        self.total = total
        self.free = total
        self._queue: list[tuple[int, anyio.Event]] = []
        self.waits = 0      # takes that had to wait
        self.refusals = 0   # takes that waited their whole timeout

    def _grant(self) -> None:
        while self._queue and self._queue[0][0] <= self.free:
            n, event = self._queue.pop(0)
            self.free -= n
            event.set()

    async def take(self, n: int, *, timeout: float = math.inf) -> int:
        """Take ``n`` bytes (at most ``total``), waiting up to ``timeout`` seconds; returns what
        was taken, for :meth:`give`. Raises :class:`BudgetExhausted` when the wait runs out."""
        n = min(max(n, 0), self.total)
        if not self._queue and n <= self.free:
            self.free -= n
            return n
        self.waits += 1
        entry = (n, anyio.Event())
        self._queue.append(entry)
        try:
            with anyio.fail_after(timeout):
                await entry[1].wait()
        except TimeoutError:
            self._abandon(entry)
            self.refusals += 1
            raise BudgetExhausted(f"{n} bytes not free within {timeout:g}s "
                                  f"({self.free} of {self.total} free)") from None
        except BaseException:
            self._abandon(entry)
            raise
        return n

    def _abandon(self, entry: tuple[int, anyio.Event]) -> None:
        """A waiter leaves (timed out or cancelled): out of the queue, or, if it was granted just
        as it left, its bytes back."""
        if entry in self._queue:
            self._queue.remove(entry)
            self._grant()  # a large waiter leaving may unblock smaller ones behind it
        elif entry[1].is_set():
            self.give(entry[0])

    def try_take(self, n: int) -> int | None:
        """Take ``n`` bytes only if they are free now and nobody waits; None otherwise."""
        n = min(max(n, 0), self.total)
        if self._queue or n > self.free:
            return None
        self.free -= n
        return n

    def give(self, n: int) -> None:
        """Give back bytes a :meth:`take` returned."""
        self.free = min(self.total, self.free + n)
        self._grant()

    def statistics(self) -> dict[str, int]:
        return {"total": self.total, "free": self.free, "waiting": len(self._queue),
                "waits": self.waits, "refusals": self.refusals}
