"""The PostgreSQL catalogue's schema gate: the migration runs once, when the database first
answers, and no statement needing the schema runs before it has.

Why: an origin host (re)started while its database is down must still come up and serve what
does not need the database (published titles from the object store, the local search index,
/healthz). So the catalogue is made without a connection; its first statement (a request's, a
background worker's) *opens the gate*: connects, migrates, and only then lets statements
through. Until the database first answers, the gate answers :class:`BackendUnavailable` at
once: a :class:`~.breaker.Breaker` lets one caller per ``retry_s`` try it (that caller waits at
most one connection attempt), the others do not wait at all, so a request is never held by a
database that is not there.

Exactly once, never concurrently with a statement: the opener holds the gate's lock while it
migrates; a caller that finds it held does not queue behind a migration that may wait on
another host's (the advisory lock in postgres.py) but answers "unavailable" after ``wait_s``.
Once open, the gate costs one attribute read per statement.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from headwater.clock import SYSTEM_CLOCK, Clock

from .breaker import Breaker
from .errors import BackendUnavailable

__all__ = ["SchemaGate"]

log = logging.getLogger("headwater.origin")


class SchemaGate:
    """Runs ``open_once`` (connect and migrate) at the first :meth:`check` the database answers;
    :meth:`check` raises :class:`BackendUnavailable` until it has.

    ``open_once`` raises :class:`BackendUnavailable` when the database cannot be reached (the
    gate stays shut, retried after ``retry_s``); any other exception (a migration that fails on
    a reachable database) also leaves it shut and is raised to the caller as it is."""

    def __init__(self, open_once: Callable[[], None], *, retry_s: float, wait_s: float,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._open_once = open_once
        self._wait_s = wait_s
        #: Whether to try the database now (it failed within retry_s: no).
        self.breaker = Breaker(retry_s, clock=clock)
        self._lock = threading.Lock()
        self._open = False
        #: Attempts that reached :meth:`open_once` (for tests and metrics), and failed ones.
        self.attempts = 0
        self.failures = 0

    @property
    def is_open(self) -> bool:
        """Whether the database has answered since start and the schema is migrated."""
        return self._open

    def check(self) -> None:
        """Return at once if the gate is open; else open it now if this caller may try (one per
        ``retry_s``), or raise :class:`BackendUnavailable` without waiting on the database."""
        if self._open:
            return
        if not self.breaker.allow():
            raise BackendUnavailable("the catalogue database has not answered since this host started")
        if not self._lock.acquire(timeout=self._wait_s):
            # Another caller is connecting or migrating: do not queue behind it.
            raise BackendUnavailable("the catalogue database is being migrated by this host")
        try:
            if self._open:
                return
            self.attempts += 1
            try:
                self._open_once()
            except BackendUnavailable:
                self.failures += 1
                if self.breaker.failed():
                    log.warning("catalogue: the database cannot be reached; the origin serves what does not "
                                "need it and tries again", extra={"event": "catalogue.database_unreachable"})
                raise
            self._open = True
            self.breaker.succeeded()
            log.info("catalogue: the database answers; schema migrated", extra={"event": "catalogue.database_open"})
        finally:
            self._lock.release()
