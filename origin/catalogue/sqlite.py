"""The embedded backend: SQLite (the standard library's sqlite3) in WAL mode; FTS5 counts search matches.

One writer: every write transaction takes the process's writer lock and ``BEGIN IMMEDIATE``
(SQLite's write lock, so writers in other processes on this host wait on ``busy_timeout``
rather than fail half-way); readers use their own connections and never block the writer (WAL).
The job queue's lease is therefore one serialised transaction: select the next job, take it.
"""

from __future__ import annotations

import json
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
from .store import FILTERED_SET_MAX, SqlCatalogue, Tx

__all__ = ["SqliteCatalogue"]

BUSY_TIMEOUT_MS = 5000
MAX_READERS = 8


class _SqliteTx(Tx):
    __slots__ = ("conn", "memo")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.memo = {}

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount


class SqliteCatalogue(SqlCatalogue):
    """The catalogue in one SQLite file."""

    search_key = "rowid"
    # FTS5 counts a long prefix beside another word (a merge of its completions' doclists, then
    # the intersection) in a half to a third of the time the probes of the prefix's titles take
    # (the 12 such queries of the bench's mix, 1,250-3,300 postings, with or without the memory
    # map: `ormo torver` 10.0 -> 3.8 ms CPU, `lotor rind` 9.3 -> 5.0, whole query).
    long_prefix_count_max = 0

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
        # Reads through a memory map of the file (the OS page cache, shared by every connection):
        # a search probes thousands of random pages of a 380 MB file at 100,000 titles, and each
        # one missing from SQLite's 2 MB page cache was a read(2) and a copy; mapped, the CPU
        # per query fell ~15 % on the bench's mix (p99 18 -> 15 ms; bench/README.md).
        conn.execute(f"PRAGMA mmap_size = {self.config.mmap_mib * 1024 * 1024}")
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
                    for step in statements:
                        if callable(step):
                            step(_SqliteTx(w))
                        else:
                            w.execute(step)
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

    def _count_matches(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                       cap: int) -> list[tuple]:
        # CROSS JOIN: SQLite joins left to right, so the index's matches drive the join. With a
        # plain JOIN the planner may walk every published title and run the MATCH once per
        # title (its cost estimate for a filtered FTS5 scan is blind): 1.8 s at 5,000 titles.
        # "INDEXED BY titles_search_filters": the join reads a narrow covering index (id and the
        # filter columns), not the table's rows with their descriptions.
        # A category or language filter that leaves few titles (found from their indexes,
        # titles_browse_*) is applied first, as a set the walk probes before it joins. (Far
        # fewer titles than the word's doclist are counted from those titles instead:
        # SqlCatalogue._count.)
        filters = " AND ".join(where)
        prefilter, pre_params = "", []
        if any(w.startswith(("t.category", "t.language")) for w in where):
            few = self._filtered_titles(tx, where, params)
            if not few:
                return []
            if len(few) <= FILTERED_SET_MAX:
                prefilter, pre_params = "AND +title_search.rowid IN (SELECT value FROM json_each(?)) ", \
                    [json.dumps(few)]
        return tx.rows(
            "SELECT category, count(*) FROM (SELECT t.category AS category "
            "FROM title_search CROSS JOIN titles t INDEXED BY titles_search_filters ON t.id = title_search.rowid "
            f"WHERE title_search MATCH ? {prefilter}AND {filters} LIMIT ?) m GROUP BY category",
            (fts5_expression(groups), *pre_params, *params, cap))

    def close(self) -> None:
        with self._write_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
