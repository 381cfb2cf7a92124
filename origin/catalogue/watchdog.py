"""A client-side deadline for a database statement: past it, the statement's connection is cut.

Why: a server that stops answering while its kernel still acknowledges (a backend stuck on a
dying disk, a stopped process) holds a statement for ever: ``statement_timeout`` is the
server's own timer, and TCP timeouts and keepalives see a healthy peer. libpq's blocking call
cannot be interrupted from Python, but a ``shutdown(2)`` of its socket from another thread
ends the wait at once: libpq reads end-of-file, psycopg raises ``OperationalError``, and the
pool discards the broken connection. A search that must answer within a bounded time (the
local search index's statement, localsearch.py) runs its statement under :meth:`Watchdog.guard`.

One thread per catalogue checks the guarded statements every ``period_s`` (no wake-up per
statement: a guard costs a lock and a dict entry), so a statement is cut between its deadline
and ``period_s`` later.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["Watchdog"]

log = logging.getLogger("headwater.origin")


class Watchdog:
    """Cuts the connection of a guarded statement still running at its deadline."""

    def __init__(self, period_s: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._period_s = period_s
        self._monotonic = monotonic
        self._guarded: dict[int, tuple[float, int]] = {}  # token -> (deadline, socket fd)
        self._tokens = itertools.count()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        #: Statements cut so far.
        self.cut = 0

    @contextmanager
    def guard(self, fd: int, timeout_s: float) -> Iterator[None]:
        """Run the block's statement on the connection whose socket is ``fd``; if it is still
        running ``timeout_s`` from now, its socket is shut down (the connection is then broken:
        its pool discards it)."""
        token = next(self._tokens)
        with self._lock:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="catalogue-watchdog", daemon=True)
                self._thread.start()
            self._guarded[token] = (self._monotonic() + timeout_s, fd)
        try:
            yield
        finally:
            # Under the lock: once this returns the socket is never cut on this statement's
            # behalf (its connection may go back to the pool and serve another).
            with self._lock:
                self._guarded.pop(token, None)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        with self._lock:
            while not self._stop:
                self._lock.wait(self._period_s)
                now = self._monotonic()
                for token, (deadline, fd) in list(self._guarded.items()):
                    if deadline <= now:
                        del self._guarded[token]
                        self._cut(fd)

    def _cut(self, fd: int) -> None:
        try:
            # A socket object of a duplicate of the fd: shutdown acts on the connection both
            # share; closing the duplicate leaves libpq's own fd open for it to close.
            with socket.socket(fileno=os.dup(fd)) as s:
                s.shutdown(socket.SHUT_RDWR)
            self.cut += 1
            log.warning("catalogue: a database statement ran past its deadline: its connection was cut",
                        extra={"event": "catalogue.statement_cut"})
        except OSError:  # the connection closed meanwhile: nothing to cut
            pass
