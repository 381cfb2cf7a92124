"""The PostgreSQL catalogue's local search index: each origin process searches its own SQLite copy
of the published titles' search documents, fed from the database's search feed.

Why: on PostgreSQL a long ranked walk (two common words) is 8-16 round trips and 1,000-2,000
index lookups on the server plus the client's handling of their rows (p99 ~30 ms on the bench's
100,000 titles); the same walk over a local SQLite file (the same code: :class:`SqliteCatalogue`,
``SqlCatalogue._top_k``) takes ~10 ms in all. PostgreSQL stays the source of truth; the file in
the origin's data dir is derived data, as a platform keeps Elasticsearch beside its database.

How it stays consistent (docs/origin-catalogue.md, "Search on PostgreSQL: the local index"):

- Every transaction that changes a title's search entry (publish, withdraw, metadata) appends
  the title to ``search_feed`` (migration 7) under an advisory lock held to its commit, so the
  feed's ``seq`` commits in order: a reader that has applied everything up to ``seq`` n never
  later meets a row below n (no gap to skip).
- A search runs on the file, then reads the feed's head and its hits' rows (``state =
  'published'``) in one statement, one snapshot taken after the search began. If the file was at
  that head, it held every change committed before the search, so the page stands (hits shown
  with PostgreSQL's rows). If it was behind by at most :data:`CATCH_UP_IN_SEARCH_MAX` rows, the
  search applies them (the titles' current rows, re-read) and runs again: a title published on
  any host is found by the next search here, a withdrawn one is never shown. Further behind
  (a fresh file, a host that was away), it answers from PostgreSQL's own search while the
  background worker catches up or rebuilds.
- A missing, corrupt, unfinished or foreign (another database's feed epoch) file is rebuilt from
  PostgreSQL in the background at start, as is one behind the feed's pruning (``pruned_to``);
  searches use PostgreSQL until it is ready.

When PostgreSQL cannot be reached (down, unreachable, its pool taken past ``search_wait_s``), a
search answers from the file alone, marked stale (:attr:`SearchPage.stale_s`: seconds since the
file last matched the feed's head), as long as that is within ``search_stale_max_s``; past it,
:class:`SearchUnavailable`. The file holds every field a hit shows (its ``titles`` rows: title,
category, year, language, duration), so the page is the one the database would have confirmed
at that time; a title whose withdrawal the file applied is not in it. The catalogue's
:class:`~.breaker.Breaker` makes a dead database cost one bounded wait per ``search_retry_s``,
not one per search; the worker's polls (and the origin's publish lookups) report to it too, so
searches are fresh again as soon as it reaches the database.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .config import CatalogueConfig
from .errors import BackendUnavailable, SearchUnavailable
from .query import SearchPage, SearchQuery
from .sqlite import SqliteCatalogue

if TYPE_CHECKING:
    from .postgres import PostgresCatalogue

__all__ = ["LocalSearchIndex", "CATCH_UP_IN_SEARCH_MAX", "REBUILD_BEHIND"]

log = logging.getLogger("headwater.origin")

# Bumped when what the file holds changes: a file of another format is rebuilt.
FORMAT = 1
# Feed rows a search applies itself before it answers (a few ms each); past it the background
# worker catches up and searches use PostgreSQL meanwhile.
CATCH_UP_IN_SEARCH_MAX = 500
# Feed rows behind past which the worker rebuilds the file rather than catch up title by title.
REBUILD_BEHIND = 50_000
# Titles read and written per transaction (rebuild and catch-up).
BATCH = 5000
# How often the worker looks at the feed between searches.
POLL_S = 1.0
# How often (at most) the worker writes into the file when it last held every change of the
# feed (``synced_at``, wall-clock seconds), so that an origin restarted while the database is
# down knows how stale the file is. Written late by up to this much: the age read back after a
# restart is never less than the truth.
PERSIST_SYNCED_S = 5.0

# A published title's row as the local index keeps it, its people as _reindex joins them.
_PUBLISHED = ("SELECT t.id, t.title, t.description, t.category, t.year, t.language, t.duration_s, t.created, "
              "t.updated, coalesce((SELECT string_agg(p.name, ' ' ORDER BY tp.position) FROM title_people tp "
              "JOIN people p ON p.id = tp.person_id WHERE tp.title_id = t.id), '') "
              "FROM titles t WHERE t.state = 'published' AND ")
_HEAD = "SELECT coalesce(max(seq), 0) FROM search_feed"


class LocalSearchIndex:
    """A SQLite search index of ``source``'s published titles at ``path``, kept up to date from
    its search feed; :meth:`search` answers a query from it, or ``None`` when it cannot (not
    built yet, far behind): the caller then searches PostgreSQL.

    Background work: :meth:`run_once` (tests) and the worker thread :meth:`start` runs."""

    def __init__(self, source: PostgresCatalogue, path: Path, *, poll_s: float | None = None) -> None:
        self._source = source
        self._path = path
        self._config = CatalogueConfig(backend="sqlite", path=path, search=source.config.search)
        self._poll_s = POLL_S if poll_s is None else poll_s
        self._clock = source.clock
        self._stale_max_s = source.config.search_stale_max_s
        self._wait_s = source.config.search_wait_s
        #: Whether searches use the database now (it failed within search_retry_s: no): the
        #: catalogue's, which its other callers (the publish lookups) report to as well.
        self.breaker = source.database_breaker
        # When (monotonic) the file last held every change the feed had: None, not known (not
        # since start, and the file kept no earlier time).
        self._synced_at: float | None = None
        # The _synced_at last written into the file (PERSIST_SYNCED_S).
        self._persisted_synced: float | None = None
        # Whether the file is known to be of this database (its feed epoch checked). A file
        # opened while the database could not be reached is not: it may answer alone, stale,
        # but is never confirmed by the database until the worker has checked its epoch.
        self._verified = False
        self._local: SqliteCatalogue | None = None
        self._position = 0
        self._ready = False
        self._broken = False
        # Writers of the file (catch-up, rebuild) one at a time.
        self._write = threading.Lock()
        # Searches using the file, so a rebuild closes it only once they are done.
        self._users = 0
        self._idle = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._built = threading.Event()
        # One user per file: an exclusive flock on <path>.lock (another process, or another
        # catalogue object of this one, on the same file searches PostgreSQL instead).
        self._lock_file: Any = None
        self._disabled = False
        #: Seconds the last rebuild took (None: none yet), and how many there were.
        self.last_build_s: float | None = None
        self.rebuilds = 0

    # --- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the file if it is whole and of this database (else it is rebuilt in the
        background), and start the worker. Idempotent; :meth:`search` calls it."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
            self._path.parent.mkdir(parents=True, exist_ok=True)
            lock_file = open(f"{self._path}.lock", "ab")
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.close()
                self._disabled = True
                log.warning("catalogue: the local search index %s is in use by another process: searching "
                            "in PostgreSQL", self._path, extra={"event": "catalogue.search_index_in_use"})
                return
            self._lock_file = lock_file
            self._open_existing()
            self._thread = threading.Thread(target=self.run_forever, name="catalogue-search-index", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the index answers searches (built and caught up at least once)."""
        self.start()
        deadline = time.monotonic() + timeout_s
        while not (self._ready and self._verified) and not self._disabled:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._wake.set()
            self._built.wait(min(left, 0.1))
        return self._ready and self._verified

    @property
    def position(self) -> int:
        """The feed's last sequence number applied to the file."""
        return self._position

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def verified(self) -> bool:
        """Whether the file is known to be of this database (see ``_verified``)."""
        return self._verified

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self._persist_synced(force=True)
        except (sqlite3.Error, BackendUnavailable) as e:
            log.warning("catalogue: could not record the local search index's age: %s", e,
                        extra={"event": "catalogue.search_index_age_unsaved"})
        with self._write:
            self._retire()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # --- searching -------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchPage | None:
        """The page ``query`` gets, from the local file once it holds every change committed
        before this call; ``None`` when it cannot answer now (search PostgreSQL instead).

        The file is searched first; then one statement reads the feed's head and the hits'
        rows (published ones only) in one snapshot, taken after this call began. If the file
        was at that head, it held every change committed before the call and the page stands
        (a hit PostgreSQL no longer shows as published is left out); if it was behind, the
        missing changes are applied and the file searched again, once. If PostgreSQL cannot
        be reached (or the breaker says not to try), the file's page is the answer, marked
        stale, or :class:`SearchUnavailable` past the staleness bound."""
        if not self._started:
            self.start()
        for attempt in range(2):
            if not self._ready:
                self._wake.set()
                return None
            # A lower bound of what the search reads: a catch-up moves the position after it commits.
            position = self._position
            began = self._clock.monotonic()
            page = self._local_search(query)
            if page is None:
                return None
            if not self.breaker.allow():
                return self._stale(page)
            try:
                head, rows = self._head_and_rows([h.id for h in page.hits])
            except BackendUnavailable as e:
                self._database_failed(e)
                return self._stale(page)
            self._database_answered()
            if not self._verified:
                # Opened while the database was away: the worker checks it is this database's
                # before the database confirms a page of it (PostgreSQL answers meanwhile).
                self._wake.set()
                return None
            if head <= position or attempt == 1:
                if head < position:  # the feed went backwards (a restored database): rebuild
                    self._wake.set()
                    return None
                if head == position:
                    self._synced(began)
                hits = tuple(replace(h, title=r[1], category=r[2], year=r[3], language=r[4], duration_s=r[5])
                             for h in page.hits if (r := rows.get(h.id)) is not None)
                return replace(page, hits=hits)
            try:
                if not self._caught_up(head):
                    return None
            except BackendUnavailable as e:  # the database went away while catching up
                self._database_failed(e)
                return self._stale(page)
        raise AssertionError("unreachable")

    def _stale(self, page: SearchPage) -> SearchPage:
        """``page`` (the file's own) marked stale, if the file is recent enough to answer alone."""
        age = self.staleness_s()
        if age is None or self._stale_max_s <= 0 or age > self._stale_max_s:
            raise SearchUnavailable(
                "the catalogue database cannot be reached and this host's search index is "
                + ("not known to be current" if age is None else f"{age:.0f} s old")
                + f" (it may answer alone up to {self._stale_max_s:g} s)")
        return replace(page, stale_s=age)

    def staleness_s(self) -> float | None:
        """Seconds since the file last held every change of the feed (None: not since start)."""
        synced = self._synced_at
        return None if synced is None else max(0.0, self._clock.monotonic() - synced)

    def _synced(self, at: float) -> None:
        # Several threads report: keep the latest (a float store is atomic under the GIL).
        if self._synced_at is None or at > self._synced_at:
            self._synced_at = at

    def _database_failed(self, e: Exception) -> None:
        if self.breaker.failed():  # once per outage, not once a search
            log.warning("catalogue: the database cannot be reached (%s): searches answer from the local "
                        "search index alone (%s)", e,
                        "not known to be current" if (age := self.staleness_s()) is None else f"{age:.0f} s old",
                        extra={"event": "catalogue.search_index_alone"})

    def _database_answered(self) -> None:
        if self.breaker.succeeded():
            log.info("catalogue: the database answers again: searches are current",
                     extra={"event": "catalogue.search_index_current"})

    def _caught_up(self, head: int) -> bool:
        behind = head - self._position
        if behind == 0:
            return True
        if behind < 0 or behind > CATCH_UP_IN_SEARCH_MAX:
            self._wake.set()
            return False
        began = self._clock.monotonic()
        self.catch_up(head)
        if self._ready and self._position == head:
            self._synced(began)
        return self._ready and self._position >= head

    def _local_search(self, query: SearchQuery) -> SearchPage | None:
        with self._idle:
            local = self._local
            if not self._ready or local is None:
                return None
            self._users += 1
        try:
            return local.search(query)
        except (sqlite3.DatabaseError, BackendUnavailable) as e:
            # The file is damaged (or gone): rebuild it; PostgreSQL answers meanwhile.
            log.warning("catalogue: the local search index failed (%s): rebuilding it", e,
                        extra={"event": "catalogue.search_index_failed"})
            self._broken = True
            self._ready = False
            self._wake.set()
            return None
        finally:
            with self._idle:
                self._users -= 1
                self._idle.notify_all()

    def _head_and_rows(self, ids: list[int]) -> tuple[int, dict[int, tuple]]:
        """The feed's head and the rows of those of ``ids`` that are published, in one statement
        (one snapshot, one round trip)."""
        found = self._source._statement(
            "SELECT h.head, t.id, t.title, t.category, t.year, t.language, t.duration_s "
            "FROM (SELECT coalesce(max(seq), 0) AS head FROM search_feed) h "
            "LEFT JOIN titles t ON t.id = ANY(?::bigint[]) AND t.state = 'published'", (ids,), wait_s=self._wait_s)
        return int(found[0][0]), {int(r[1]): r[1:] for r in found if r[1] is not None}

    # --- keeping up ------------------------------------------------------------------------

    def run_once(self) -> None:
        """Build the file if it is missing or broken, rebuild it if it is far behind (or ahead:
        the database was restored), else apply the feed up to its head. Whether the database
        answered is reported to the breaker."""
        try:
            self._run_once()
        except BackendUnavailable as e:
            self._database_failed(e)
            raise
        self._database_answered()
        self._persist_synced()

    def _run_once(self) -> None:
        if self._ready and not self._broken and not self._verified:
            self._verify()
        if not self._ready or self._broken:
            self.rebuild()
            return
        began = self._clock.monotonic()
        head = self._head()
        behind = head - self._position
        if behind < 0 or behind > REBUILD_BEHIND:
            self.rebuild()
        elif behind:
            self.catch_up(head)
            if self._ready and self._position == head:
                self._synced(began)
        else:
            self._synced(began)

    def run_forever(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.run_once()
                failing = False
            except Exception as e:  # the database away, a full disk: try again later
                if not failing:  # once per outage, not once a poll
                    log.warning("catalogue: the local search index could not catch up: %s", e,
                                extra={"event": "catalogue.search_index_behind"})
                failing = True
                self._stop.wait(self._poll_s)
            self._wake.wait(self._poll_s)
            self._wake.clear()

    def catch_up(self, head: int) -> None:
        """Apply the feed's rows after the file's position up to ``head``: each title named
        there is removed and, if PostgreSQL has it published now, written again from its row."""
        with self._write:
            local = self._local
            start = self._position
            if not self._ready or local is None or start >= head:
                return
            with self._source._index_tx() as tx:
                pruned_to = int(tx.one("SELECT pruned_to FROM search_feed_epoch")[0])
                ids = [int(r[0]) for r in tx.rows(
                    "SELECT DISTINCT title_id FROM search_feed WHERE seq > ? AND seq <= ? ORDER BY 1", (start, head))]
            if pruned_to > start:
                # Changes this file has not seen were pruned from the feed: it cannot catch up.
                # Searches use PostgreSQL until the worker has rebuilt it.
                self._broken = True
                self._wake.set()
                return
            for i in range(0, max(len(ids), 1), BATCH):
                chunk = ids[i:i + BATCH]
                rows = self._published(f"t.id = ANY(?::bigint[]) ORDER BY t.id", (chunk,)) if chunk else []
                last = i + BATCH >= len(ids)
                self._write_titles(local, rows, removed=chunk, position=head if last else None)
            self._position = head

    def rebuild(self) -> None:
        """Make the file again from PostgreSQL's published titles (searches use PostgreSQL
        meanwhile). The feed's head is read first: a change after it is applied by the next
        catch-up (applying a title twice is harmless: it is re-read)."""
        with self._write:
            with self._idle:
                self._ready = False
            self._retire()
            t0 = time.monotonic()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self._path}{suffix}").unlink(missing_ok=True)
            local = SqliteCatalogue(self._config)
            try:
                _ensure_meta(local)
                began = self._clock.monotonic()
                with self._source._index_tx() as tx:
                    head = int(tx.one(_HEAD)[0])
                    epoch = str(tx.one("SELECT epoch FROM search_feed_epoch")[0])
                # The postings' impact index is made after them (one sort, as the migration that
                # made it does) rather than kept through millions of random inserts; a build cut
                # short is never used (no "complete" mark), so its durability is not needed either.
                with local._tx(write=True) as ltx:
                    ltx.run("DROP INDEX search_postings_impact")
                local._writer.execute("PRAGMA synchronous = OFF")
                last = 0
                while not self._stop.is_set():
                    rows = self._published("t.id > ? ORDER BY t.id LIMIT ?", (last, BATCH))
                    if not rows:
                        break
                    self._write_titles(local, rows, removed=(), position=None)
                    last = int(rows[-1][0])
                if self._stop.is_set():
                    local.close()
                    return
                local._writer.execute("PRAGMA synchronous = FULL")
                with local._tx(write=True) as ltx:
                    ltx.run("CREATE INDEX search_postings_impact ON search_postings(word, impact, title_id)")
                with local._tx(write=True) as ltx:
                    synced_at = self._clock.time() - max(0.0, self._clock.monotonic() - began)
                    for name, value in (("format", FORMAT), ("epoch", epoch), ("position", head),
                                        ("synced_at", repr(synced_at)), ("complete", 1)):
                        ltx.run("INSERT INTO local_feed (name, value) VALUES (?, ?) "
                                "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, str(value)))
            except BaseException:
                local.close()
                raise
            self.last_build_s = time.monotonic() - t0
            self.rebuilds += 1
            log.info("catalogue: local search index built in %.1f s", self.last_build_s,
                     extra={"event": "catalogue.search_index_built"})
            with self._idle:
                self._local, self._position, self._broken, self._ready = local, head, False, True
                self._verified = True
            self._synced(began)
            self._persisted_synced = began
            self._built.set()

    # --- the file --------------------------------------------------------------------------

    def _verify(self) -> None:
        """Check that the file opened while the database was away is of this database (its feed
        epoch): if so it is used as any other, else it is rebuilt."""
        with self._source._index_tx() as tx:
            epoch = str(tx.one("SELECT epoch FROM search_feed_epoch")[0])
        local = self._local
        if local is None:
            return
        with local._tx(write=False) as ltx:
            row = ltx.one("SELECT value FROM local_feed WHERE name = 'epoch'")
        if row is None or row[0] != epoch:
            log.warning("catalogue: the local search index %s is of another database: rebuilding it", self._path,
                        extra={"event": "catalogue.search_index_foreign"})
            self._broken = True
            return
        self._verified = True
        self._built.set()

    def _persist_synced(self, *, force: bool = False) -> None:
        """Write into the file when it last held every change of the feed (wall-clock seconds),
        at most every PERSIST_SYNCED_S (``force``: now, at close)."""
        synced = self._synced_at
        if synced is None or not self._verified:
            return
        if not force and self._persisted_synced is not None and synced - self._persisted_synced < PERSIST_SYNCED_S:
            return
        wall = self._clock.time() - max(0.0, self._clock.monotonic() - synced)
        with self._write:
            local = self._local
            if local is None or not self._ready:
                return
            with local._tx(write=True) as tx:
                tx.run("INSERT INTO local_feed (name, value) VALUES ('synced_at', ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (repr(wall),))
        self._persisted_synced = synced

    def _open_existing(self) -> None:
        if not self._path.exists():
            return
        try:
            local = SqliteCatalogue(self._config)
        except (sqlite3.DatabaseError, BackendUnavailable) as e:
            log.warning("catalogue: the local search index %s is unreadable (%s): rebuilding it", self._path, e,
                        extra={"event": "catalogue.search_index_unreadable"})
            return
        try:
            _ensure_meta(local)
            with local._tx(write=False) as ltx:
                meta = dict(ltx.rows("SELECT name, value FROM local_feed"))
        except sqlite3.DatabaseError as e:
            log.warning("catalogue: the local search index %s is unreadable (%s): rebuilding it", self._path, e,
                        extra={"event": "catalogue.search_index_unreadable"})
            local.close()
            return
        if meta.get("format") != str(FORMAT) or meta.get("complete") != "1":
            local.close()
            return
        try:
            with self._source._index_tx() as tx:
                epoch: str | None = str(tx.one("SELECT epoch FROM search_feed_epoch")[0])
        except BackendUnavailable as e:
            # The database is away at start: the file may answer alone, stale since the time it
            # recorded (none recorded: it cannot, not knowing its age), until the worker can
            # check it is this database's (_verify).
            epoch = None
            synced = _float_or_none(meta.get("synced_at"))
            if synced is not None:
                self._synced_at = self._clock.monotonic() - max(0.0, self._clock.time() - synced)
            log.warning("catalogue: the database cannot be reached (%s): the local search index %s answers alone, "
                        "%s", e, self._path,
                        "of unknown age" if synced is None else f"{self.staleness_s():.0f} s old",
                        extra={"event": "catalogue.search_index_alone"})
            self.breaker.failed()
        if epoch is not None and meta.get("epoch") != epoch:
            local.close()
            return
        self._local, self._position, self._ready = local, int(meta["position"]), True
        if epoch is not None:
            self._verified = True
            self._built.set()

    def _retire(self) -> None:
        """Close the file once no search uses it (the caller holds the write lock)."""
        with self._idle:
            self._ready = False
            while self._users:
                self._idle.wait()
            local, self._local = self._local, None
        if local is not None:
            local.close()

    def _head(self) -> int:
        with self._source._index_tx() as tx:
            return int(tx.one(_HEAD)[0])

    def _published(self, where: str, params: Sequence[Any]) -> list[tuple]:
        with self._source._index_tx() as tx:
            return tx.rows(_PUBLISHED + where, params)

    def _write_titles(self, local: SqliteCatalogue, rows: list[tuple], *, removed: Sequence[int],
                      position: int | None) -> None:
        """In one transaction: remove the ``removed`` titles' entries, write ``rows`` (published
        titles, ``_PUBLISHED``'s columns) as ``import_titles`` indexes them (the vocabulary
        counted once for the batch), and move the position."""
        with local._tx(write=True) as tx:
            for title_id in removed:
                local._unindex(tx, title_id)
                tx.run("DELETE FROM titles WHERE id = ?", (title_id,))
            for table, col, values in (("categories", "slug", {r[3] for r in rows}),
                                       ("languages", "code", {r[5] for r in rows})):
                values.discard(None)
                if values:
                    tx.run(f"INSERT INTO {table} ({col}, name) SELECT value, value FROM json_each(?) WHERE true "
                           f"ON CONFLICT ({col}) DO NOTHING", (json.dumps(sorted(values)),))
            vocabulary: dict[str, int] = {}
            peaks: dict[str, float] = {}
            for r in rows:
                tx.run("INSERT INTO titles (id, title, description, category, year, language, duration_s, state, "
                       "progress, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'published', 1, ?, ?)", r[:9])
                found = local._index(tx, int(r[0]), r[1], (r[9],), r[2], count=False)
                for w, v in found.items():
                    vocabulary[w] = vocabulary.get(w, 0) + 1
                    if v > peaks.get(w, 0.0):
                        peaks[w] = v
            local._add_words(tx, vocabulary, peaks)
            if rows:
                local._count_documents(tx, len(rows))
            if position is not None:
                tx.run("UPDATE local_feed SET value = ? WHERE name = 'position'", (str(position),))


def _float_or_none(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _ensure_meta(local: SqliteCatalogue) -> None:
    with local._tx(write=True) as tx:
        tx.run("CREATE TABLE IF NOT EXISTS local_feed (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
