"""The backend for several origin hosts: PostgreSQL through psycopg 3 and its connection pool.

Search ranks with the same scoring as SQLite (``search_postings``, :mod:`.ranking`, the walk in
:mod:`.store`); PostgreSQL's full-text search (a weighted ``tsvector`` in ``title_search`` with a
GIN index, ``to_tsquery('simple', …)`` built from normalised words) counts the capped total and
the facets. Typos use the same symmetric-deletion vocabulary as SQLite (:mod:`.text` says why
not pg_trgm). The job queue leases with ``SELECT … FOR UPDATE SKIP LOCKED``: workers on many
hosts each take a different job without waiting on one another.
"""

from __future__ import annotations

import json
import random
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import psycopg
from psycopg_pool import ConnectionPool

from headwater.clock import SYSTEM_CLOCK, Clock

from .config import CatalogueConfig
from .errors import BackendUnavailable
from .query import SearchPage, SearchQuery, TermGroup, tsquery_expression
from .schema import POSTGRES_MIGRATIONS
from .store import SqlCatalogue, Tx

if TYPE_CHECKING:
    from .localsearch import LocalSearchIndex

__all__ = ["PostgresCatalogue"]

# Any constant: the advisory lock that serialises migrations across origin hosts starting at once.
_MIGRATION_LOCK = 0x6877_6361  # "hwca"
# And the one that serialises appends to the search feed (localsearch.py): held to the commit, so
# the feed's seq values become visible in order and a reader of "seq > last" skips none.
_FEED_LOCK = 0x6877_6366  # "hwcf"
# The feed keeps a week of changes: every FEED_PRUNE_EVERY-th append deletes older rows (a local
# index further behind than that is rebuilt, as one 50,000 changes behind is).
FEED_KEEP_S = 7 * 24 * 3600.0
FEED_PRUNE_EVERY = 1000
_PLACEHOLDER = re.compile(r"\?")
# The capped count tests documents in order, rather than ask the GIN index for every match, when
# it expects its cap of matches within this many documents (some 1 µs each: _count_matches).
SCAN_ROWS_MAX = 5000


def _pg(sql: str) -> str:
    # The shared SQL uses "?"; none of it has a literal "?" or "%".
    return _PLACEHOLDER.sub("%s", sql)


class _PgTx(Tx):
    __slots__ = ("conn", "memo")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.memo = {}

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self.conn.execute(_pg(sql), tuple(params))
        return cur.fetchall() if cur.description is not None else []

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(_pg(sql), tuple(params)).rowcount


class PostgresCatalogue(SqlCatalogue):
    """The catalogue in a PostgreSQL database."""

    lease_lock_clause = " FOR UPDATE SKIP LOCKED"
    search_key = "title_id"
    json_rows = "json_array_elements_text(?::json)"
    json_pair_rows = "json_array_elements(?::json)"
    json_pair = "value->>0, value->>1"
    json_pair_int = "value->>0, (value->>1)::integer"
    json_ints = "SELECT value::bigint FROM json_array_elements_text(?::json)"
    postings_join = "JOIN titles t"
    titles_filters = "titles t"
    walk_joins_in_order = False
    greatest = "greatest"
    postings_by_title = ""
    score_by_lookup = True
    count_from_matches = True
    probe_barrier = " OFFSET 0"
    filtered_group_count_max = 50_000
    count_probes_titles = True
    search_terms = True
    filtered_count_stops = True

    def _json_item(self, i: int, sql_type: str | None = None) -> str:
        return f"(value->>{i})::{sql_type}" if sql_type else f"value->>{i}"

    def __init__(self, config: CatalogueConfig, *, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None) -> None:
        super().__init__(config, clock=clock, rng=rng)
        if not config.dsn:
            raise ValueError("the PostgreSQL catalogue needs a dsn")
        self._pool = ConnectionPool(
            config.dsn, min_size=1, max_size=config.pool_size, open=False, name="catalogue",
            timeout=config.connect_timeout_s,
            kwargs={"connect_timeout": max(1, int(config.connect_timeout_s))},
            configure=self._configure)
        try:
            self._pool.open(wait=True, timeout=config.connect_timeout_s)
        except psycopg.Error as e:
            self._pool.close()
            raise BackendUnavailable(f"catalogue database: {e}") from e
        except Exception as e:  # psycopg_pool.PoolTimeout
            self._pool.close()
            raise BackendUnavailable(f"catalogue database: {e}") from e
        self._migrate()
        self._search_index = None
        if config.search_index is not None:
            from .localsearch import LocalSearchIndex
            self._search_index = LocalSearchIndex(self, config.search_index)

    @property
    def search_index(self) -> LocalSearchIndex | None:
        """The local search index (``search = "local"``), or None: searches run in PostgreSQL."""
        return self._search_index

    def warm_search(self) -> None:
        """Open the local search index now (rebuilt in the background if it must be) rather
        than at the first search; a process that never searches (the transcoder) never opens it."""
        if self._search_index is not None:
            self._search_index.start()

    def search(self, query: SearchQuery) -> SearchPage:
        """As :meth:`SqlCatalogue.search`: from the local search index when there is one and it
        is up to date (localsearch.py), else in PostgreSQL."""
        if self._search_index is not None:
            page = self._search_index.search(query)
            if page is not None:
                return page
        return super().search(query)

    def _search_changed(self, tx: Tx, title_ids: list[int]) -> None:
        # Writes are rare (a publish, a withdrawal, an edit): one writer at a time is cheap.
        tx.run("SELECT pg_advisory_xact_lock(?)", (_FEED_LOCK,))
        now = self.clock.time()
        seqs = tx.rows("INSERT INTO search_feed (title_id, at) SELECT value::bigint, ? "
                       "FROM json_array_elements_text(?::json) RETURNING seq", (now, json.dumps(title_ids)))
        if any(int(r[0]) % FEED_PRUNE_EVERY == 0 for r in seqs):
            tx.run("WITH gone AS (DELETE FROM search_feed WHERE at < ? RETURNING seq) "
                   "UPDATE search_feed_epoch SET pruned_to = greatest(pruned_to, (SELECT coalesce(max(seq), 0) FROM gone))",
                   (now - FEED_KEEP_S,))

    def _configure(self, conn: psycopg.Connection) -> None:
        # statement_timeout bounds what one search can cost the database (set per connection,
        # so a DSN's own options, such as a search_path, are kept).
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(self.config.statement_timeout_ms),))
        conn.commit()

    def _migrate(self) -> None:
        with self._tx(write=True) as tx:
            tx.run("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            tx.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = tx.one("SELECT max(version) FROM schema_version")
            current = int(row[0]) if row and row[0] is not None else 0
            for n, statements in enumerate(POSTGRES_MIGRATIONS, start=1):
                if n <= current:
                    continue
                for step in statements:
                    if callable(step):
                        step(tx)
                    else:
                        tx.run(step)
                tx.run("INSERT INTO schema_version (version) VALUES (?)", (n,))

    @property
    def schema_version(self) -> int:
        """The highest migration applied."""
        with self._tx(write=False) as tx:
            row = tx.one("SELECT max(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn:
                with conn.transaction():
                    yield _PgTx(conn)
        except psycopg.OperationalError as e:
            raise BackendUnavailable(f"catalogue database: {e}") from e

    def _statement(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one read-only statement run outside a transaction block (autocommit): one
        round trip, where :meth:`_tx` costs three (BEGIN, the statement, COMMIT). A search
        through the local index runs one such statement (localsearch.py)."""
        try:
            with self._pool.connection() as conn:
                conn.autocommit = True
                try:
                    return conn.execute(_pg(sql), tuple(params)).fetchall()
                finally:
                    if not conn.closed:
                        conn.autocommit = False
        except psycopg.OperationalError as e:
            raise BackendUnavailable(f"catalogue database: {e}") from e

    def _count_matches(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                       cap: int) -> list[tuple]:
        # Where matches are dense (the documents read in key order hold cap matches within
        # SCAN_ROWS_MAX), the count reads title_search in order and tests each document
        # (ts_match_vq, the function behind @@, which no index serves): it stops at cap. The
        # GIN index would first build the bitmap of every match of every word and completion
        # (a word in most titles: 20 ms for 201 matches; a short prefix's completions: 35 ms),
        # and the planner, which cannot see the bound tsquery, chose either plan at random.
        # Where matches are sparse the GIN index finds them (a scan would test most documents).
        test = "ts_match_vq(s.doc, q.q)" if self._dense(tx, groups, where, params, cap) else "s.doc @@ q.q"
        return tx.rows(
            "SELECT category, count(*) FROM (SELECT t.category AS category "
            "FROM to_tsquery('simple', ?) AS q(q), title_search s JOIN titles t ON t.id = s.title_id "
            f"WHERE {test} AND {' AND '.join(where)} LIMIT ?) m GROUP BY category",
            (tsquery_expression(groups), *params, cap))

    def _dense(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any], cap: int) -> bool:
        """Whether ``cap`` matches are expected within the first :data:`SCAN_ROWS_MAX` documents:
        the share of documents holding every group, from the groups' document counts (the
        ranking's plan, as if independent) and the share passing a category/language filter
        (its titles when at most FILTERED_SET_MAX, else at least that many); never with a
        year or duration filter, whose share is not known."""
        plan = tx.memo.get("plan")
        documents = tx.memo.get("documents") or 0
        if plan is None or plan[0] != groups or documents <= 0:
            return False
        share = 1.0
        for size in plan[3]:
            share *= min(1.0, size / documents)
        filters = [w for w in where if w != "t.state = 'published'"]
        if any(not w.startswith(("t.category", "t.language")) for w in filters):
            return False
        if filters:
            share *= min(1.0, len(self._filtered_titles(tx, where, params)) / documents)
        return share > 0 and cap / share <= SCAN_ROWS_MAX

    def close(self) -> None:
        if self._search_index is not None:
            self._search_index.close()
        self._pool.close()
