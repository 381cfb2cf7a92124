"""Upload records in the catalogue's database (``uploads``: SQLite on one host, PostgreSQL for
several origin hosts), so any origin host on that database can resume, complete, expire or
retire any upload.

One row per upload: its :class:`UploadState` as JSON, the columns the janitor and the
per-client bound query (owner, expires, completed), and a **lease**: the request that writes an
upload (a PATCH, a termination, a completion, a title being made from it) first takes it
(:meth:`UploadRecords.acquire`: holder and deadline set, ``fence`` bumped, in one conditional
UPDATE), and every write it then makes names that fence (:meth:`UploadRecords.put`): a request
whose lease another host took over (its deadline passed, its process stalled or died) can
write nothing more, so two hosts' PATCHes on one upload never interleave. The holder renews
the deadline as it works (every put, and during a long body); a host killed mid-PATCH leaves a
lease that lapses after ``lease_s``.

A database that does not answer is :class:`~headwater.origin.errors.StoreUnavailable` (503):
nothing the request was writing is acknowledged.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from headwater.clock import SYSTEM_CLOCK, Clock

from ..catalogue.errors import BackendUnavailable
from ..errors import Conflict, StoreUnavailable
from .orphans import RecordView
from .tus import UploadState

__all__ = ["UploadRecords", "LeaseLost", "DEFAULT_LEASE_S"]

#: How long a lease holds without renewal (a PATCH renews it every third of this).
DEFAULT_LEASE_S = 30.0
_IDS_PER_QUERY = 500  # SQLite's bound on parameters is 999 in old builds


class LeaseLost(Conflict):
    """The request's lease on the upload was taken over: it may write nothing more."""

    code = "upload_locked"

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"upload {upload_id}: another request took this upload over; resume from its offset")


class UploadRecords:
    """Every upload's :class:`UploadState`, by id, in the catalogue's database (``db``: an
    object with ``transaction(write=...)``, :class:`~headwater.origin.catalogue.SqlCatalogue`)."""

    def __init__(self, db: Any, *, clock: Clock = SYSTEM_CLOCK, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.db = db
        self.clock = clock
        self.lease_s = lease_s

    @contextmanager
    def _tx(self, write: bool) -> Iterator[Any]:
        try:
            with self.db.transaction(write=write) as tx:
                yield tx
        except BackendUnavailable as e:
            raise StoreUnavailable(f"the upload records' database did not answer: {e}") from None

    @staticmethod
    def _row(st: UploadState) -> tuple[str, float, float | None]:
        return json.dumps(st.to_record(), separators=(",", ":")), st.expires, st.completed

    def close(self) -> None:
        """Nothing to close: the database is the catalogue's."""

    def get(self, upload_id: str) -> UploadState | None:
        with self._tx(False) as tx:
            row = tx.one("SELECT record FROM uploads WHERE id = ?", (upload_id,))
        return None if row is None else UploadState.from_record(json.loads(row[0]))

    def insert(self, state: UploadState) -> None:
        """A new upload's first record (its id is fresh: no lease to hold)."""
        record, expires, completed = self._row(state)
        with self._tx(True) as tx:
            tx.run("INSERT INTO uploads (id, owner, record, expires, completed) VALUES (?, ?, ?, ?, ?)",
                   (state.id, state.owner, record, expires, completed))

    def put(self, state: UploadState, *, fence: int | None = None, release: bool = False) -> None:
        """Write ``state`` (an upsert without ``fence``; with it, only while that lease holds,
        which it extends, or gives back with ``release``: else :class:`LeaseLost`)."""
        record, expires, completed = self._row(state)
        with self._tx(True) as tx:
            if fence is None:
                if tx.run("UPDATE uploads SET record = ?, expires = ?, completed = ? WHERE id = ?",
                          (record, expires, completed, state.id)) == 0:
                    tx.run("INSERT INTO uploads (id, owner, record, expires, completed) VALUES (?, ?, ?, ?, ?)",
                           (state.id, state.owner, record, expires, completed))
                return
            lease = "holder = NULL, lease_until = 0" if release else "lease_until = ?"
            until = () if release else (self.clock.time() + self.lease_s,)
            if tx.run(f"UPDATE uploads SET record = ?, expires = ?, completed = ?, {lease} "
                      "WHERE id = ? AND fence = ? AND holder IS NOT NULL",
                      (record, expires, completed, *until, state.id, fence)) == 0:
                raise LeaseLost(state.id)

    def delete(self, upload_id: str, *, fence: int | None = None) -> None:
        with self._tx(True) as tx:
            if fence is None:
                tx.run("DELETE FROM uploads WHERE id = ?", (upload_id,))
            elif tx.run("DELETE FROM uploads WHERE id = ? AND fence = ? AND holder IS NOT NULL",
                        (upload_id, fence)) == 0:
                raise LeaseLost(upload_id)

    # --- the lease ---------------------------------------------------------------------------------

    def acquire(self, upload_id: str, holder: str) -> tuple[int, UploadState] | None:
        """Take the upload's lease: its new fence and the upload as it is now, or None while
        another holds it (or the upload is gone). One conditional UPDATE: of two hosts racing,
        the database lets one through (PostgreSQL re-checks the condition on the row the other
        just wrote)."""
        now = self.clock.time()
        with self._tx(True) as tx:
            if tx.run("UPDATE uploads SET holder = ?, lease_until = ?, fence = fence + 1 "
                      "WHERE id = ? AND (holder IS NULL OR lease_until <= ?)",
                      (holder, now + self.lease_s, upload_id, now)) == 0:
                return None
            row = tx.one("SELECT fence, record FROM uploads WHERE id = ? AND holder = ?", (upload_id, holder))
        return None if row is None else (int(row[0]), UploadState.from_record(json.loads(row[1])))

    def renew(self, upload_id: str, fence: int) -> None:
        """Push the lease's deadline on (a long PATCH body): :class:`LeaseLost` if it was taken."""
        with self._tx(True) as tx:
            if tx.run("UPDATE uploads SET lease_until = ? WHERE id = ? AND fence = ? AND holder IS NOT NULL",
                      (self.clock.time() + self.lease_s, upload_id, fence)) == 0:
                raise LeaseLost(upload_id)

    def release(self, upload_id: str, fence: int) -> None:
        """Give the lease back (a no-op if it was taken over, or the upload removed)."""
        with self._tx(True) as tx:
            tx.run("UPDATE uploads SET holder = NULL, lease_until = 0 WHERE id = ? AND fence = ?", (upload_id, fence))

    # --- what the janitor and the bounds read --------------------------------------------------------

    def _states(self, where: str, params: tuple = ()) -> list[UploadState]:
        with self._tx(False) as tx:
            rows = tx.rows(f"SELECT record FROM uploads WHERE {where} ORDER BY id", params)
        return [UploadState.from_record(json.loads(r[0])) for r in rows]

    def open_count(self, owner: str) -> int:
        """The owner's unfinished uploads (every host's)."""
        with self._tx(False) as tx:
            row = tx.one("SELECT count(*) FROM uploads WHERE owner = ? AND completed IS NULL", (owner,))
        return int(row[0]) if row else 0

    def expired(self, now: float) -> list[UploadState]:
        return self._states("completed IS NULL AND expires <= ?", (now,))

    def completed_before(self, cutoff: float) -> list[UploadState]:
        return self._states("completed IS NOT NULL AND completed <= ?", (cutoff,))

    def unfinished(self) -> list[UploadState]:
        return self._states("completed IS NULL")

    def __iter__(self) -> Iterator[UploadState]:
        return iter(self._states("1 = 1"))

    def views(self, upload_ids: Iterable[str]) -> dict[str, RecordView]:
        """What the orphan sweep needs of these uploads' records (those that exist), each row
        read whole in one statement (its lease and what it names together)."""
        ids = sorted(set(upload_ids))
        out: dict[str, RecordView] = {}
        with self._tx(False) as tx:
            for i in range(0, len(ids), _IDS_PER_QUERY):
                batch = ids[i:i + _IDS_PER_QUERY]
                marks = ", ".join("?" * len(batch))
                for uid, holder, record in tx.rows(f"SELECT id, holder, record FROM uploads WHERE id IN ({marks})",
                                                   tuple(batch)):
                    st = UploadState.from_record(json.loads(record))
                    out[uid] = RecordView(held=holder is not None, segments=frozenset(k for k, _ in st.segments),
                                          store_upload_id=st.store_upload_id, finished=st.finished)
        return out

    def count(self) -> int:
        with self._tx(False) as tx:
            row = tx.one("SELECT count(*) FROM uploads")
        return int(row[0]) if row else 0
