"""The embedded backend: SQLite (the standard library's sqlite3) in WAL mode, FTS5 for search.

One writer: every write transaction takes the process's writer lock and ``BEGIN IMMEDIATE``
(SQLite's write lock, so writers in other processes on this host wait on ``busy_timeout``
rather than fail half-way); readers use their own connections and never block the writer (WAL).
The job queue's lease is therefore one serialised transaction: select the next job, take it.
"""

from __future__ import annotations

import queue
import random
import sqlite3
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from headwater.clock import SYSTEM_CLOCK, Clock

from .config import CatalogueConfig
from .errors import BackendUnavailable
from .query import TermGroup, fts5_expression
from .schema import SQLITE_MIGRATIONS
from .store import _HIT_COLS, SqlCatalogue, Tx

__all__ = ["SqliteCatalogue"]

BUSY_TIMEOUT_MS = 5000
MAX_READERS = 8
# Matches scored per search at most twice this (see _match_rows); deep pages score more.
RANK_CANDIDATES = 500


class _SqliteTx(Tx):
    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount


class SqliteCatalogue(SqlCatalogue):
    """The catalogue in one SQLite file."""

    search_key = "rowid"

    def __init__(self, config: CatalogueConfig, *, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None) -> None:
        super().__init__(config, clock=clock, rng=rng)
        if config.path is None:
            raise ValueError("the SQLite catalogue needs a path")
        config.path.parent.mkdir(parents=True, exist_ok=True)
        self._path = str(config.path)
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = [self._writer]
        self._reader_slots = threading.BoundedSemaphore(MAX_READERS)
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE / COMMIT), never implicit.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL with synchronous=FULL: a commit is on disk before it returns (a job acknowledged
        # as enqueued survives a power cut).
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _migrate(self) -> None:
        with self._write_lock:
            w = self._writer
            w.execute("BEGIN IMMEDIATE")
            try:
                w.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = w.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
                w.execute("COMMIT")
            except BaseException:
                w.execute("ROLLBACK")
                raise
            for n, statements in enumerate(SQLITE_MIGRATIONS, start=1):
                if n <= current:
                    continue
                w.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have applied it between our read and this lock.
                    if (w.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0) >= n:
                        w.execute("COMMIT")
                        continue
                    for sql in statements:
                        w.execute(sql)
                    w.execute("INSERT INTO schema_version (version) VALUES (?)", (n,))
                    w.execute("COMMIT")
                except BaseException:
                    w.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        """The highest migration applied."""
        with self._tx(write=False) as tx:
            row = tx.one("SELECT max(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Tx]:
        try:
            if write:
                with self._write_lock:
                    conn = self._writer
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield _SqliteTx(conn)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                return
            with self._reader_slots:
                try:
                    conn = self._readers.get_nowait()
                except queue.Empty:
                    conn = self._connect()
                    with self._write_lock:
                        self._all.append(conn)
                # A read transaction: one consistent snapshot for the whole search.
                conn.execute("BEGIN")
                try:
                    yield _SqliteTx(conn)
                finally:
                    conn.execute("COMMIT")
                    self._readers.put(conn)
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e) or "unable to open" in str(e) or "disk" in str(e):
                raise BackendUnavailable(f"catalogue database: {e}") from e
            raise

    def _match_rows(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                    limit: int, offset: int) -> list[tuple]:
        # bm25 is smaller (more negative) for better matches; column weights: title 10, people 4,
        # description 1 (title_words is not indexed). CROSS JOIN keeps the FTS5 index driving
        # the join (see _count_matches).
        #
        # Two phases, so a common word costs a bounded number of scored rows, not one per match
        # (a word in 87,000 of 100,000 titles took 0.2-1 s to score and sort, FTS5's own
        # ORDER BY rank 0.4 s at p99). Candidates: the newest RANK_CANDIDATES matches, and the
        # newest RANK_CANDIDATES titles that hold the words in their title (the walks read the
        # index in rowid order and score nothing). Then the exact score (the same expression,
        # the same cursor: bm25's IDFs are the whole table's) on the candidates only. With fewer
        # matches than RANK_CANDIDATES the first walk holds them all and the ranking is exact.
        # One cursor matters: FTS5 recomputes the IDFs per cursor, so a rowid lookup per
        # candidate (rowid IN …) walked a common word's whole doclist per candidate (5 s).
        # The candidates bound the scoring walk from below (a rowid range FTS5 seeks to), and
        # "+rowid IN" is a filter, not a lookup, for that reason.
        expr = fts5_expression(groups)
        n = max(RANK_CANDIDATES, offset + limit)
        filters = " AND ".join(where)
        walk = ("SELECT title_search.rowid AS id FROM title_search CROSS JOIN titles t ON t.id = title_search.rowid "
                f"WHERE title_search MATCH ? AND {filters} ORDER BY title_search.rowid DESC LIMIT ?")
        return tx.rows(
            f"WITH candidates(id) AS (SELECT id FROM ({walk}) UNION SELECT id FROM ({walk})) "
            f"SELECT {_HIT_COLS}, -bm25(title_search, 10.0, 4.0, 1.0, 0.0) "
            "* (1.0 + min(1.0, ? * 1.0 / title_search.title_words)) AS score "
            "FROM title_search CROSS JOIN titles t ON t.id = title_search.rowid "
            "WHERE title_search MATCH ? AND title_search.rowid >= (SELECT min(id) FROM candidates) "
            f"AND +title_search.rowid IN (SELECT id FROM candidates) AND {filters} "
            "ORDER BY score DESC, t.id LIMIT ? OFFSET ?",
            (expr, *params, n, "{title} : (" + expr + ")", *params, n,
             len(groups), expr, *params, limit, offset))

    def _count_matches(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                       cap: int) -> list[tuple]:
        # CROSS JOIN: SQLite joins left to right, so the index's matches drive the join. With a
        # plain JOIN the planner may walk every published title and run the MATCH once per
        # title (its cost estimate for a filtered FTS5 scan is blind): 1.8 s at 5,000 titles.
        return tx.rows(
            "SELECT category, count(*) FROM (SELECT t.category AS category "
            "FROM title_search CROSS JOIN titles t ON t.id = title_search.rowid "
            f"WHERE title_search MATCH ? AND {' AND '.join(where)} LIMIT ?) m GROUP BY category",
            (fts5_expression(groups), *params, cap))

    def close(self) -> None:
        with self._write_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
