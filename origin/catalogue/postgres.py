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
import logging
import random
import re
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import psycopg
from psycopg_pool import ConnectionPool

from headwater.clock import SYSTEM_CLOCK, Clock

from .breaker import Breaker
from .config import CatalogueConfig
from .errors import BackendUnavailable, SearchUnavailable
from .query import SearchPage, SearchQuery, TermGroup, tsquery_expression
from .records import TitleDraft, TitleState
from .schema import POSTGRES_MIGRATIONS
from .schemagate import SchemaGate
from .store import SqlCatalogue, Tx
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .localsearch import LocalSearchIndex

__all__ = ["PostgresCatalogue", "SCHEMA_RETRY_S"]

log = logging.getLogger("headwater.origin")

#: While the database has not answered since start, one caller per this many seconds tries it
#: (a refused connection costs ~1 ms; an unreachable host, one connect_timeout_seconds).
SCHEMA_RETRY_S = 1.0

# Any constant: the advisory lock that serialises migrations across origin hosts starting at once.
_MIGRATION_LOCK = 0x6877_6361  # "hwca"
# And the one that serialises appends to the search feed (localsearch.py): held to the commit, so
# the feed's seq values become visible in order and a reader of "seq > last" skips none.
_FEED_LOCK = 0x6877_6366  # "hwcf"
# The feed keeps its last FEED_KEEP_ROWS changes: every FEED_PRUNE_EVERY-th append deletes the
# rows before them. Pruned by sequence, not by anyone's clock: a host whose clock runs ahead
# would prune changes the others have not read. A local index further behind than
# localsearch.REBUILD_BEHIND (50,000) rebuilds rather than catch up, so it never needs rows
# that old; twice that leaves room for one that found itself just within it while it reads.
FEED_KEEP_ROWS = 100_000
FEED_PRUNE_EVERY = 1000
_PLACEHOLDER = re.compile(r"\?")
# The capped count tests documents in order, rather than ask the GIN index for every match, when
# it expects its cap of matches within this many documents (some 1 µs each: _count_matches).
SCAN_ROWS_MAX = 5000


def _pg(sql: str) -> str:
    # The shared SQL uses "?"; none of it has a literal "?" or "%".
    return _PLACEHOLDER.sub("%s", sql)


def _reconnect_failed(pool: ConnectionPool) -> None:
    # The pool gave up one connection after its reconnect_timeout; a later request grows it again.
    log.warning("catalogue: the database pool could not reconnect for %.0f s; retrying on demand",
                pool.reconnect_timeout, extra={"event": "catalogue.pool_reconnect_failed"})


def _connection_kwargs(config: CatalogueConfig) -> dict[str, Any]:
    """libpq's connection parameters beside the DSN. An unreachable server (a partition, a
    frozen host) would otherwise hold a statement for the kernel's TCP retries (~15 minutes):
    tcp_user_timeout drops a connection whose sent data stays unacknowledged that long, and
    keepalives find a silent peer while a statement waits for its answer."""
    timeout_s = max(1, int(config.connect_timeout_s))
    return {"connect_timeout": timeout_s, "tcp_user_timeout": timeout_s * 1000, "keepalives": 1,
            "keepalives_idle": timeout_s, "keepalives_interval": 1, "keepalives_count": 3}


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


#: Titles in one import past which the import ends with an ANALYZE of what it wrote.
ANALYZE_AFTER_IMPORT = 1000
# The tables an import writes (store.import_titles and the search entries of published titles).
_IMPORTED_TABLES = ("titles", "people", "title_people", "categories", "languages", "title_search",
                    "search_postings", "search_terms", "search_words", "search_stats", "search_feed")


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
        # Opened (without waiting) only once the database first answers (the schema gate): a
        # pool opened during an outage backs off (1, 2, 4 ... s, uncapped until its
        # reconnect_timeout), so it could take minutes to connect after the database is back.
        self._pool = ConnectionPool(
            config.dsn, min_size=1, max_size=config.pool_size, open=False, name="catalogue",
            timeout=config.connect_timeout_s,
            kwargs=_connection_kwargs(config),
            configure=self._configure, reconnect_failed=_reconnect_failed)
        self._gate = SchemaGate(self._open_database, retry_s=SCHEMA_RETRY_S, wait_s=config.search_wait_s,
                                clock=clock)
        try:
            # Most opens find the database up: migrated here, as before. If it is down, the
            # catalogue is made all the same; its statements answer BackendUnavailable until
            # the database first answers (schemagate.py).
            self._gate.check()
        except BackendUnavailable as e:
            log.warning("catalogue: the database cannot be reached at start (%s): catalogue calls answer "
                        "'unavailable' until it does", e, extra={"event": "catalogue.start_unreachable"})
        # Checks the search's statements (_statement with wait_s) twice per wait; on the real
        # clock, as the pool's wait is: it bounds a real socket's wait, not the catalogue's logic.
        self._watchdog = Watchdog(max(0.05, config.search_wait_s / 2))
        # One breaker for the database, whoever saw it fail: a search that failed spares the
        # publish lookups their wait for the pool, and a lookup that failed spares the searches.
        self._breaker = Breaker(config.search_retry_s, clock=clock)
        self._search_index = None
        if config.search_index is not None:
            from .localsearch import LocalSearchIndex
            self._search_index = LocalSearchIndex(self, config.search_index)

    @property
    def database_breaker(self) -> Breaker:
        """The database's breaker (store.py), shared by the local search index and the
        origin's publish lookups (delivery/published.py); its interval is search_retry_seconds."""
        return self._breaker

    @property
    def search_index(self) -> LocalSearchIndex | None:
        """The local search index (``search = "local"``), or None: searches run in PostgreSQL."""
        return self._search_index

    def import_titles(self, drafts: Iterable[TitleDraft], *, state: TitleState = TitleState.UPLOADED) -> list[int]:
        """As :meth:`SqlCatalogue.import_titles`; an import of :data:`ANALYZE_AFTER_IMPORT`
        titles or more then refreshes the planner's statistics of the tables it wrote. Until
        autovacuum gets there, the planner sees the tables as they were before the import:
        searches of common words right after a bulk import of 20,000 titles took 2.8-6 s (some
        past the statement timeout) instead of tens of milliseconds."""
        ids = super().import_titles(drafts, state=state)
        if len(ids) >= ANALYZE_AFTER_IMPORT:
            with self._tx(write=True) as tx:
                tx.run("ANALYZE " + ", ".join(_IMPORTED_TABLES))
        return ids

    def warm_search(self) -> None:
        """Open the local search index now (rebuilt in the background if it must be) rather
        than at the first search; a process that never searches (the transcoder) never opens it."""
        if self._search_index is not None:
            self._search_index.start()

    def search(self, query: SearchQuery) -> SearchPage:
        """As :meth:`SqlCatalogue.search`: from the local search index when there is one and it
        is up to date (localsearch.py), else in PostgreSQL. With the local index, while the
        database cannot be reached: from the index alone, marked stale (``stale_s``), or
        :class:`SearchUnavailable` at once when it cannot answer (not built, too old)."""
        index = self._search_index
        if index is None:
            return super().search(query)
        page = index.search(query)
        if page is not None:
            return page
        if not index.breaker.allow():
            raise SearchUnavailable("the catalogue database cannot be reached and this host's search "
                                    "index is not ready")
        try:
            page = super().search(query)
        except BackendUnavailable:
            index.breaker.failed()
            raise
        index.breaker.succeeded()
        return page

    def _search_changed(self, tx: Tx, title_ids: list[int]) -> None:
        # Writes are rare (a publish, a withdrawal, an edit): one writer at a time is cheap.
        tx.run("SELECT pg_advisory_xact_lock(?)", (_FEED_LOCK,))
        # at: when, by the database's clock (for whoever reads the feed; nothing relies on it).
        seqs = [int(r[0]) for r in tx.rows(
            "INSERT INTO search_feed (title_id, at) SELECT value::bigint, extract(epoch FROM now()) "
            "FROM json_array_elements_text(?::json) RETURNING seq", (json.dumps(title_ids),))]
        if any(seq % FEED_PRUNE_EVERY == 0 for seq in seqs):
            tx.run("WITH gone AS (DELETE FROM search_feed WHERE seq <= ? RETURNING seq) "
                   "UPDATE search_feed_epoch SET pruned_to = greatest(pruned_to, (SELECT coalesce(max(seq), 0) FROM gone))",
                   (max(seqs) - FEED_KEEP_ROWS,))

    def _configure(self, conn: psycopg.Connection) -> None:
        # statement_timeout bounds what one search can cost the database (set per connection,
        # so a DSN's own options, such as a search_path, are kept).
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(self.config.statement_timeout_ms),))
        conn.commit()

    @property
    def database_available(self) -> bool:
        """Whether the database has answered since this process started (the schema gate is
        open). An outage that begins later is seen by the statements that fail, not here."""
        return self._gate.is_open

    def _open_database(self) -> None:
        """The schema gate's opener: one connection (bounded by connect_timeout_seconds) runs the
        migrations; then the pool opens, without waiting, its first connection made at once."""
        try:
            conn = psycopg.connect(self.config.dsn, **_connection_kwargs(self.config))
        except psycopg.OperationalError as e:
            raise BackendUnavailable(f"catalogue database: {e}") from e
        try:
            with conn:
                self._configure(conn)
                with conn.transaction():
                    self._migrate(_PgTx(conn))
        except psycopg.OperationalError as e:
            raise BackendUnavailable(f"catalogue database: {e}") from e
        self._pool.open(wait=False)

    def _migrate(self, tx: Tx) -> None:
        """Apply the migrations this database lacks (another host starting at once waits on the
        advisory lock, then finds them applied)."""
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
    def _tx(self, *, write: bool, deadline_s: float | None = None) -> Iterator[Tx]:
        """A transaction on a pooled connection; with ``deadline_s``, its connection is cut by
        the :class:`Watchdog` if the transaction still runs that long after it began (the
        caller does no other slow work inside it)."""
        self._gate.check()
        try:
            with self._pool.connection() as conn:
                with self._watchdog.guard(conn.fileno(), deadline_s) if deadline_s is not None else nullcontext():
                    with conn.transaction():
                        yield _PgTx(conn)
        except psycopg.OperationalError as e:
            raise BackendUnavailable(f"catalogue database: {e}") from e

    def _index_tx(self) -> AbstractContextManager[Tx]:
        """A read-only transaction of the local search index's worker (its catch-up, rebuild
        and checks), bounded client-side: a frozen server (its processes stopped, its kernel
        still acknowledging) would otherwise hold the worker, and the shutdown joining it, for
        ever. The bound is statement_timeout_ms plus search_wait_s: by then the server would
        have cancelled any statement it is still running, so only a stuck one is cut."""
        return self._tx(write=False, deadline_s=self.config.statement_timeout_ms / 1000 + self.config.search_wait_s)

    def _statement(self, sql: str, params: Sequence[Any] = (), *, wait_s: float | None = None) -> list[tuple]:
        """The rows of one read-only statement run outside a transaction block (autocommit): one
        round trip, where :meth:`_tx` costs three (BEGIN, the statement, COMMIT). A search
        through the local index runs one such statement (localsearch.py). With ``wait_s``, the
        wait for a connection is bounded by it (else by connect_timeout_seconds), and so is the
        statement itself, client-side: past it, the :class:`Watchdog` cuts its connection."""
        self._gate.check()
        try:
            with self._pool.connection(timeout=wait_s) as conn:
                conn.autocommit = True
                try:
                    if wait_s is None:
                        return conn.execute(_pg(sql), tuple(params)).fetchall()
                    with self._watchdog.guard(conn.fileno(), wait_s):
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
        self._watchdog.close()
        self._pool.close()
