"""The embedded backend: SQLite (the standard library's sqlite3) in WAL mode, FTS5 for search.

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
from collections import Counter
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
# Matches ranked per search (see _match): the newest this many and the newest this many title
# matches; pages past the first RANK_CANDIDATES rank the newest max_offset + max_page_size + 1.
RANK_CANDIDATES = 500
# A category/language filter leaving at most this many titles is applied before the join
# (see _match).
FILTERED_SET_MAX = 5000


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
        return self._match(tx, groups, where, params, limit, offset, None)[0]

    def _match(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any], limit: int,
               offset: int, cap: int | None) -> tuple[list[tuple], list[tuple] | None]:
        # Ranking every match (bm25 x coverage, then a sort) cost one scored row per match: a
        # word in 87,000 of 100,000 titles took 0.2-1 s (FTS5's own ORDER BY rank: 0.4 s at
        # p99). So the ranking is in two phases, and the walks that find the candidates score
        # nothing (they read the index in rowid order, newest first):
        # 1. the newest n matches that pass the filters, with their category: also the capped
        #    count and the facets, so the count costs no second MATCH walk;
        # 2. when (1) did not hold every match, the newest RANK_CANDIDATES titles that hold the
        #    query's words in their title (FTS5's {title} column filter), which the coverage
        #    factor and the title weight favour;
        # 3. the exact score (the same expression as ever) on those candidates only, in one
        #    FTS5 cursor over the rowid range they span, "+rowid IN" filtering the rest. One
        #    cursor matters: FTS5 computes bm25's IDFs (a walk of each phrase's whole doclist)
        #    per cursor, so a rowid lookup per candidate took seconds on a common word.
        # With fewer matches than n, (1) holds them all and the ranking is exact. n has two
        # sizes only, so the pages of one query rank one candidate set and neither repeat nor
        # skip a title: RANK_CANDIDATES for the first pages, and for every page past them the
        # deepest page's reach (the deeper set holds the first one).
        # "INDEXED BY titles_search_filters": the join to titles reads a narrow covering index
        # (id and the filter columns), not the table's rows with their descriptions: half the
        # cost of a walk whose filters reject most matches.
        # A category or language filter that leaves few titles (found from their indexes,
        # titles_browse_*) is applied first, as a set the walks probe before they join: a common
        # word with a rare category and language otherwise joined each of its 87,000 matches.
        # When the set is no larger than RANK_CANDIDATES, its matches are all scored (exact).
        expr = fts5_expression(groups)
        filters = " AND ".join(where)
        prefilter, pre_params = "", []
        if any(w.startswith(("t.category", "t.language")) for w in where):
            few = [int(r[0]) for r in tx.rows(f"SELECT t.id FROM titles t WHERE {filters} LIMIT ?",
                                              (*params, FILTERED_SET_MAX + 1))]
            if len(few) <= RANK_CANDIDATES:
                return self._rank_within(tx, groups, expr, few, where, params, limit, offset, cap)
            if len(few) <= FILTERED_SET_MAX:
                prefilter, pre_params = "AND +title_search.rowid IN (SELECT value FROM json_each(?)) ", \
                    [json.dumps(few)]
        deepest = self.config.search.max_offset + self.config.search.max_page_size + 1
        n = RANK_CANDIDATES if offset + limit <= RANK_CANDIDATES else max(deepest, offset + limit)
        walk = ("SELECT title_search.rowid, t.category FROM title_search "
                "CROSS JOIN titles t INDEXED BY titles_search_filters ON t.id = title_search.rowid "
                f"WHERE title_search MATCH ? {prefilter}AND {filters} ORDER BY title_search.rowid DESC LIMIT ?")
        walked = tx.rows(walk, (expr, *pre_params, *params, max(n, cap or 0)))
        by_category = None
        if cap is not None:
            by_category = list(Counter(c for _, c in walked[:cap]).items())
        candidates = {int(r[0]) for r in walked[:n]}
        if not candidates:
            return [], by_category
        if len(walked) >= n:
            candidates.update(int(r[0]) for r in tx.rows(walk, ("{title} : (" + expr + ")", *pre_params,
                                                                *params, RANK_CANDIDATES)))
        rows = tx.rows(
            f"SELECT {_HIT_COLS}, -bm25(title_search, 10.0, 4.0, 1.0, 0.0) "
            "* (1.0 + min(1.0, ? * 1.0 / title_search.title_words)) AS score "
            "FROM title_search CROSS JOIN titles t ON t.id = title_search.rowid "
            "WHERE title_search MATCH ? AND title_search.rowid >= ? "
            f"AND +title_search.rowid IN (SELECT value FROM json_each(?)) AND {filters} "
            "ORDER BY score DESC, t.id LIMIT ? OFFSET ?",
            (len(groups), expr, min(candidates), json.dumps(sorted(candidates)), *params, limit, offset))
        return rows, by_category

    def _rank_within(self, tx: Tx, groups: list[TermGroup], expr: str, ids: list[int], where: list[str],
                     params: list[Any], limit: int, offset: int,
                     cap: int | None) -> tuple[list[tuple], list[tuple] | None]:
        """Every match among ``ids`` scored in one walk, ranked here (exact), and counted."""
        if not ids:
            return [], [] if cap is not None else None
        scored = tx.rows(
            f"SELECT {_HIT_COLS}, -bm25(title_search, 10.0, 4.0, 1.0, 0.0) "
            "* (1.0 + min(1.0, ? * 1.0 / title_search.title_words)) AS score "
            "FROM title_search CROSS JOIN titles t ON t.id = title_search.rowid "
            "WHERE title_search MATCH ? AND title_search.rowid >= ? "
            f"AND +title_search.rowid IN (SELECT value FROM json_each(?)) AND {' AND '.join(where)} "
            "ORDER BY title_search.rowid DESC",
            (len(groups), expr, min(ids), json.dumps(ids), *params))
        by_category = None if cap is None else list(Counter(r[2] for r in scored[:cap]).items())
        scored.sort(key=lambda r: (-r[6], r[0]))
        return scored[offset:offset + limit], by_category

    def _count_matches(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                       cap: int) -> list[tuple]:
        # CROSS JOIN: SQLite joins left to right, so the index's matches drive the join. With a
        # plain JOIN the planner may walk every published title and run the MATCH once per
        # title (its cost estimate for a filtered FTS5 scan is blind): 1.8 s at 5,000 titles.
        return tx.rows(
            "SELECT category, count(*) FROM (SELECT t.category AS category "
            "FROM title_search CROSS JOIN titles t INDEXED BY titles_search_filters ON t.id = title_search.rowid "
            f"WHERE title_search MATCH ? AND {' AND '.join(where)} LIMIT ?) m GROUP BY category",
            (fts5_expression(groups), *params, cap))

    def close(self) -> None:
        with self._write_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
