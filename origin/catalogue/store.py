"""The catalogue and job queue over SQL: one implementation, two dialects (:mod:`.sqlite`,
:mod:`.postgres`).

:class:`SqlCatalogue` holds every query that both databases run alike (SQL written with ``?``
placeholders, translated for psycopg); a backend supplies transactions (:meth:`_tx`), the
migrations, the full-text match and rank, and how a lease row is locked. Every value reaches the
database as a bound parameter; the only SQL built at run time is the list of filter clauses and
of ``?`` placeholders, from fixed strings.

The API is synchronous: the origin daemon calls it from a worker thread
(``anyio.to_thread.run_sync``), the backends are thread-safe.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Iterable, Sequence

from headwater.clock import SYSTEM_CLOCK, Clock

from .config import CatalogueConfig
from .errors import BadQuery, InvalidTitle, JobNotFound, LeaseLost, TitleNotFound
from .query import (SearchHit, SearchPage, SearchQuery, TermGroup, check_query, plan_groups,
                    query_words)
from .records import (Job, JobState, Lease, Person, Rendition, Title, TitleDraft, TitleState,
                      check_transition, validate_draft)
from .text import deletions, max_edits, normalised_text

__all__ = ["SqlCatalogue", "Tx"]

MAX_KEY_CHARS = 200
MAX_ERROR_CHARS = 2000
MAX_PAYLOAD_BYTES = 16 * 1024


class Tx(ABC):
    """One transaction: ``rows``/``one`` read, ``run`` writes and returns the row count."""

    @abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    @abstractmethod
    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...


_TITLE_COLS = ("id, title, description, category, year, language, duration_s, state, progress, "
               "renditions, upload, owner, error, created, updated")
_JOB_COLS = ("id, kind, title_id, key, payload, state, attempts, max_attempts, run_at, lease_expires, "
             "leased_by, last_error, created, updated, lease_token")


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlCatalogue(ABC):
    """The catalogue (titles, search) and the job queue, on one database."""

    # How a row picked for a lease is locked against other workers (PostgreSQL: FOR UPDATE SKIP
    # LOCKED; SQLite: nothing, the writer transaction already excludes every other writer).
    lease_lock_clause = ""
    search_key = "rowid"
    # SELECTs over one bound JSON array: of strings, and of [a, b] pairs.
    # Both yield a column "value"; json_pair reads an [a, b] element.
    json_rows = "json_each(?)"
    json_pair_rows = "json_each(?)"
    json_pair = "json_extract(value, '$[0]'), json_extract(value, '$[1]')"
    json_pair_int = json_pair  # an [a, n] element, n as an integer

    def __init__(self, config: CatalogueConfig, *, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()

    def _json_item(self, i: int, sql_type: str | None = None) -> str:
        """Element ``i`` of a row of :attr:`json_pair_rows` (cast to ``sql_type`` where needed)."""
        return f"json_extract(value, '$[{i}]')"

    # --- backend hooks ---------------------------------------------------------------------

    @abstractmethod
    def _tx(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A transaction; ``write`` ones are serialised where the database needs it."""

    @abstractmethod
    def _match_rows(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                    limit: int, offset: int) -> list[tuple]:
        """Ranked matches: rows of ``_HIT_COLS`` plus a score, best first.

        Both backends multiply the text rank by ``1 + coverage``, where coverage is the share of
        the title's words the query has (at most 1): the text ranks normalise by the length of
        the whole document, so without it "Night Train to Lisbon", with a shorter description,
        outranks "Night Train" for the query "night train"."""

    @abstractmethod
    def _count_matches(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                       cap: int) -> list[tuple]:
        """(category, count) over the first ``cap`` matches (unordered: no ranking is needed)."""

    def _match(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any], limit: int,
               offset: int, cap: int | None) -> tuple[list[tuple], list[tuple] | None]:
        """The ranked page (:meth:`_match_rows`) and, with ``cap``, the (category, count) rows
        over the first ``cap`` matches (:meth:`_count_matches`); a backend may answer both from
        one walk of the index."""
        rows = self._match_rows(tx, groups, where, params, limit, offset)
        return rows, None if cap is None else self._count_matches(tx, groups, where, params, cap)

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""

    def __enter__(self) -> SqlCatalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- titles ----------------------------------------------------------------------------

    def create_title(self, draft: TitleDraft) -> Title:
        """Store a new title in state ``uploaded``."""
        validate_draft(draft)
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._ensure_labels(tx, draft)
            row = tx.one(
                "INSERT INTO titles (title, description, category, year, language, duration_s, state, "
                "progress, upload, owner, created, updated) VALUES (?, ?, ?, ?, ?, ?, 'uploaded', 0, ?, ?, ?, ?) "
                "RETURNING id",
                (draft.title, draft.description, draft.category, draft.year, draft.language,
                 draft.duration_s, draft.upload, draft.owner, now, now))
            assert row is not None
            title_id = int(row[0])
            self._set_people(tx, title_id, draft.people)
            return self._load_title(tx, title_id)

    def create_title_once(self, draft: TitleDraft) -> tuple[Title, bool]:
        """The title made from ``draft.owner``'s ``draft.upload``: stored now in state ``uploaded``
        (``True``), or the one stored by an earlier call (``False``, its metadata as it is).

        A unique index on (owner, upload) makes this hold across origin hosts: of two racing
        inserts one does nothing (``ON CONFLICT DO NOTHING``) and then reads the other's row."""
        if draft.upload is None or draft.owner is None:
            raise InvalidTitle("a title made from an upload needs its upload and owner")
        validate_draft(draft)
        now = self.clock.time()
        with self._tx(write=True) as tx:
            row = tx.one("SELECT id FROM titles WHERE owner = ? AND upload = ?", (draft.owner, draft.upload))
            if row is not None:
                return self._load_title(tx, int(row[0])), False
            self._ensure_labels(tx, draft)
            row = tx.one(
                "INSERT INTO titles (title, description, category, year, language, duration_s, state, "
                "progress, upload, owner, created, updated) VALUES (?, ?, ?, ?, ?, ?, 'uploaded', 0, ?, ?, ?, ?) "
                "ON CONFLICT (owner, upload) WHERE upload IS NOT NULL DO NOTHING RETURNING id",
                (draft.title, draft.description, draft.category, draft.year, draft.language,
                 draft.duration_s, draft.upload, draft.owner, now, now))
            if row is None:  # another host's insert committed between our read and our write
                row = tx.one("SELECT id FROM titles WHERE owner = ? AND upload = ?", (draft.owner, draft.upload))
                assert row is not None
                return self._load_title(tx, int(row[0])), False
            title_id = int(row[0])
            self._set_people(tx, title_id, draft.people)
            return self._load_title(tx, title_id), True

    def import_titles(self, drafts: Iterable[TitleDraft], *, state: TitleState = TitleState.UPLOADED) -> list[int]:
        """Create many titles in one transaction (an operator's import of an existing catalogue),
        each moved through the state machine to ``state`` as :meth:`set_state` would."""
        path = {TitleState.UPLOADED: (), TitleState.PUBLISHED: (TitleState.TRANSCODING, TitleState.PACKAGED,
                                                                TitleState.PUBLISHED)}
        if state not in path:
            raise InvalidTitle("an import makes titles uploaded or published")
        drafts = list(drafts)
        for d in drafts:
            validate_draft(d)
        now = self.clock.time()
        ids = []
        # The vocabulary is counted once for the whole import, not once per title: a common word
        # is one upsert (and its deletions one batch) however many of the titles have it.
        vocabulary: dict[str, int] = {}
        # The same path set_state walks, checked step by step, written once (as the insert).
        steps = (TitleState.UPLOADED, *path[state])
        for a, b in zip(steps, steps[1:]):
            check_transition(a, b)
        published = bool(path[state])
        # People are written once for the whole import too (two statements): per title they
        # were three round trips per person, which on PostgreSQL was most of an import's time.
        cast: list[tuple[int, int, str, str]] = []
        with self._tx(write=True) as tx:
            labelled: set[tuple[str | None, str | None]] = set()
            for draft in drafts:
                if (draft.category, draft.language) not in labelled:
                    self._ensure_labels(tx, draft)
                    labelled.add((draft.category, draft.language))
                row = tx.one(
                    "INSERT INTO titles (title, description, category, year, language, duration_s, state, "
                    "progress, upload, owner, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "RETURNING id",
                    (draft.title, draft.description, draft.category, draft.year, draft.language,
                     draft.duration_s, state.value, 1 if published else 0, draft.upload, draft.owner, now, now))
                assert row is not None
                ids.append(int(row[0]))
                cast.extend((ids[-1], pos, p.role, p.name) for pos, p in enumerate(draft.people))
                if published:
                    # A new title has no search entry yet: index it straight from the draft.
                    for w in self._index(tx, ids[-1], draft.title, (p.name for p in draft.people),
                                         draft.description, count=False):
                        vocabulary[w] = vocabulary.get(w, 0) + 1
            if cast:
                tx.run(f"INSERT INTO people (name) SELECT value FROM {self.json_rows} WHERE true "
                       "ON CONFLICT (name) DO NOTHING", (json.dumps(sorted({c[3] for c in cast})),))
                tx.run("INSERT INTO title_people (title_id, position, person_id, role) "
                       f"SELECT {self._json_item(0, 'bigint')}, {self._json_item(1, 'integer')}, p.id, "
                       f"{self._json_item(2)} FROM {self.json_pair_rows} "
                       f"JOIN people p ON p.name = {self._json_item(3)}", (json.dumps(cast),))
            self._add_words(tx, vocabulary)
        return ids

    def update_metadata(self, title_id: int, draft: TitleDraft) -> Title:
        """Replace a title's metadata (not its state); a published title's search entry follows."""
        validate_draft(draft)
        with self._tx(write=True) as tx:
            self._ensure_labels(tx, draft)
            n = tx.run("UPDATE titles SET title = ?, description = ?, category = ?, year = ?, language = ?, "
                       "duration_s = ?, updated = ? WHERE id = ?",
                       (draft.title, draft.description, draft.category, draft.year, draft.language,
                        draft.duration_s, self.clock.time(), title_id))
            if not n:
                raise TitleNotFound(f"no title {title_id}")
            self._set_people(tx, title_id, draft.people)
            self._reindex(tx, title_id)
            return self._load_title(tx, title_id)

    def get_title(self, title_id: int) -> Title:
        """The title, or :class:`TitleNotFound`."""
        with self._tx(write=False) as tx:
            return self._load_title(tx, title_id)

    def uses_upload(self, owner: str, upload: str) -> bool:
        """Whether a title was made from ``owner``'s ``upload`` (the unique (owner, upload)
        index answers it)."""
        with self._tx(write=False) as tx:
            return tx.one("SELECT 1 FROM titles WHERE owner = ? AND upload = ?", (owner, upload)) is not None

    def set_state(self, title_id: int, state: TitleState, *, progress: float | None = None,
                  error: str | None = None, renditions: Sequence[Rendition] | None = None) -> Title:
        """Move a title through the publish-state machine (:data:`~.records.TRANSITIONS`)."""
        with self._tx(write=True) as tx:
            self._move(tx, title_id, state, progress=progress, error=error, renditions=renditions)
            return self._load_title(tx, title_id)

    def list_titles(self, *, state: TitleState | None = None, owner: str | None = None,
                    after_id: int = 0, limit: int = 50) -> list[Title]:
        """Titles in id order after ``after_id`` (keyset paging for the creator and admin tools)."""
        if not 1 <= limit <= self.config.search.max_page_size:
            raise BadQuery(f"limit must be within 1..{self.config.search.max_page_size}")
        where, params = ["id > ?"], [after_id]
        if state is not None:
            where.append("state = ?")
            params.append(TitleState(state).value)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        with self._tx(write=False) as tx:
            ids = tx.rows(f"SELECT id FROM titles WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                          (*params, limit))
            return [self._load_title(tx, int(r[0])) for r in ids]

    def categories(self) -> list[tuple[str, str]]:
        """Every category as (slug, name)."""
        with self._tx(write=False) as tx:
            return [(r[0], r[1]) for r in tx.rows("SELECT slug, name FROM categories ORDER BY slug")]

    def languages(self) -> list[tuple[str, str]]:
        """Every language as (code, name)."""
        with self._tx(write=False) as tx:
            return [(r[0], r[1]) for r in tx.rows("SELECT code, name FROM languages ORDER BY code")]

    def name_label(self, kind: str, key: str, name: str) -> None:
        """Give a category or language its display name (``kind`` is ``category`` or ``language``)."""
        table, col = {"category": ("categories", "slug"), "language": ("languages", "code")}[kind]
        with self._tx(write=True) as tx:
            tx.run(f"INSERT INTO {table} ({col}, name) VALUES (?, ?) ON CONFLICT ({col}) DO UPDATE SET name = ?",
                   (key, name, name))

    def _ensure_labels(self, tx: Tx, draft: TitleDraft) -> None:
        if draft.category is not None:
            tx.run("INSERT INTO categories (slug, name) VALUES (?, ?) ON CONFLICT (slug) DO NOTHING",
                   (draft.category, draft.category))
        if draft.language is not None:
            tx.run("INSERT INTO languages (code, name) VALUES (?, ?) ON CONFLICT (code) DO NOTHING",
                   (draft.language, draft.language))

    def _set_people(self, tx: Tx, title_id: int, people: Iterable[Person]) -> None:
        tx.run("DELETE FROM title_people WHERE title_id = ?", (title_id,))
        for pos, p in enumerate(people):
            tx.run("INSERT INTO people (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (p.name,))
            tx.run("INSERT INTO title_people (title_id, position, person_id, role) "
                   "SELECT ?, ?, id, ? FROM people WHERE name = ?", (title_id, pos, p.role, p.name))

    def _load_title(self, tx: Tx, title_id: int) -> Title:
        row = tx.one(f"SELECT {_TITLE_COLS} FROM titles WHERE id = ?", (title_id,))
        if row is None:
            raise TitleNotFound(f"no title {title_id}")
        people = tuple(Person(name=n, role=r) for n, r in tx.rows(
            "SELECT p.name, tp.role FROM title_people tp JOIN people p ON p.id = tp.person_id "
            "WHERE tp.title_id = ? ORDER BY tp.position", (title_id,)))
        renditions = tuple(Rendition(**r) for r in json.loads(row[9]))
        return Title(id=int(row[0]), title=row[1], description=row[2], category=row[3], year=row[4],
                     language=row[5], duration_s=row[6], state=TitleState(row[7]), progress=float(row[8]),
                     renditions=renditions, upload=row[10], owner=row[11], error=row[12],
                     created=float(row[13]), updated=float(row[14]), people=people)

    def _move(self, tx: Tx, title_id: int, state: TitleState, *, progress: float | None,
              error: str | None, renditions: Sequence[Rendition] | None) -> None:
        row = tx.one("SELECT state FROM titles WHERE id = ?", (title_id,))
        if row is None:
            raise TitleNotFound(f"no title {title_id}")
        state = TitleState(state)
        check_transition(TitleState(row[0]), state)
        sets, params = ["state = ?", "updated = ?"], [state.value, self.clock.time()]
        if progress is not None:
            sets.append("progress = ?")
            params.append(min(1.0, max(0.0, float(progress))))
        elif state in (TitleState.PACKAGED, TitleState.PUBLISHED):
            sets.append("progress = 1")
        sets.append("error = ?")
        params.append(error[:MAX_ERROR_CHARS] if error else None)
        if renditions is not None:
            sets.append("renditions = ?")
            params.append(json.dumps([_rendition_dict(r) for r in renditions]))
        tx.run(f"UPDATE titles SET {', '.join(sets)} WHERE id = ?", (*params, title_id))
        self._reindex(tx, title_id)

    # --- the search index --------------------------------------------------------------------

    def _reindex(self, tx: Tx, title_id: int) -> None:
        """Make the title's search entry and vocabulary match it: present iff it is published."""
        key = self.search_key
        old = tx.one(f"SELECT title, people, description FROM title_search WHERE {key} = ?", (title_id,))
        if old is not None:
            tx.run(f"DELETE FROM title_search WHERE {key} = ?", (title_id,))
            self._count_words(tx, set(" ".join(old).split()), -1)
        row = tx.one("SELECT title, description, state FROM titles WHERE id = ?", (title_id,))
        if row is None or row[2] != TitleState.PUBLISHED.value:
            return
        people = [n for (n,) in tx.rows(
            "SELECT p.name FROM title_people tp JOIN people p ON p.id = tp.person_id "
            "WHERE tp.title_id = ? ORDER BY tp.position", (title_id,))]
        self._index(tx, title_id, row[0], people, row[1])

    def _index(self, tx: Tx, title_id: int, title: str, people: Iterable[str], description: str, *,
               count: bool = True) -> set[str]:
        """Add the title's search entry; its distinct words are returned and, with ``count``,
        added to the vocabulary (else the caller adds them: :meth:`import_titles`)."""
        doc = (normalised_text(title), normalised_text(" ".join(people)), normalised_text(description))
        tx.run(f"INSERT INTO title_search ({self.search_key}, title, people, description, title_words) "
               "VALUES (?, ?, ?, ?, ?)", (title_id, *doc, max(1, len(doc[0].split()))))
        found = set(" ".join(doc).split())
        if count:
            self._count_words(tx, found, +1)
        return found

    def _add_words(self, tx: Tx, counts: dict[str, int]) -> None:
        """Add ``counts`` (word → documents that gained it) to the vocabulary, in two statements."""
        if not counts:
            return
        tx.run(f"INSERT INTO search_words (word, docs) SELECT {self.json_pair_int} FROM {self.json_pair_rows} "
               "WHERE true ON CONFLICT (word) DO UPDATE SET docs = search_words.docs + excluded.docs",
               (json.dumps(sorted(counts.items())),))
        variants = json.dumps(sorted({(v, w) for w in counts for v in deletions(w)}))
        tx.run(f"INSERT INTO search_deletions (variant, word) SELECT {self.json_pair} FROM {self.json_pair_rows} "
               "WHERE true ON CONFLICT (variant, word) DO NOTHING", (variants,))

    def _count_words(self, tx: Tx, found: set[str], delta: int) -> None:
        # Set-based, one statement each whatever the number of words: the words travel as one
        # JSON array parameter (json_each / json_array_elements_text), never as SQL text.
        if not found:
            return
        listed = json.dumps(sorted(found))
        if delta > 0:
            # "WHERE true" (in _add_words): SQLite's parser needs it between INSERT … SELECT and
            # ON CONFLICT.
            self._add_words(tx, dict.fromkeys(found, 1))
        else:
            tx.run(f"UPDATE search_words SET docs = docs - 1 WHERE word IN (SELECT value FROM {self.json_rows})",
                   (listed,))
            tx.run("DELETE FROM search_deletions WHERE word IN (SELECT word FROM search_words WHERE docs <= 0 "
                   f"AND word IN (SELECT value FROM {self.json_rows}))", (listed,))
            tx.run("DELETE FROM search_words WHERE docs <= 0")

    def search(self, query: SearchQuery) -> SearchPage:
        """Published titles matching ``query``: ranked by relevance (by recency without words),
        filtered, one page. Misspelt words are read as their nearest known words."""
        limits = self.config.search
        check_query(query, limits)
        terms = query_words(query.q, limits)
        where = ["t.state = 'published'"]
        params: list[Any] = []
        for col, value in (("t.category", query.category), ("t.language", query.language)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        for col, op, value in (("t.year", ">=", query.year_min), ("t.year", "<=", query.year_max),
                               ("t.duration_s", ">=", query.duration_min_s),
                               ("t.duration_s", "<=", query.duration_max_s)):
            if value is not None:
                where.append(f"{col} {op} ?")
                params.append(value)
        corrections: dict[str, str] = {}
        groups: list[TermGroup] = []
        # The total and the facets count matches up to cap (one more tells it is not exact).
        cap = limits.max_offset + limits.max_page_size
        with self._tx(write=False) as tx:
            if terms:
                known = {r[0] for r in tx.rows(f"SELECT word FROM search_words WHERE word IN ({_marks(len(terms))})",
                                               terms)}
                candidates: dict[str, list[tuple[str, int]]] = {}
                for term in terms:
                    if term in known or not max_edits(term):
                        continue
                    variants = sorted(deletions(term))
                    candidates[term] = [(r[0], int(r[1])) for r in tx.rows(
                        "SELECT DISTINCT w.word, w.docs FROM search_deletions d JOIN search_words w ON w.word = d.word "
                        f"WHERE d.variant IN ({_marks(len(variants))}) ORDER BY w.docs DESC LIMIT 50", variants)]
                groups, corrections = plan_groups(terms, known, candidates, limits)
                rows, by_category = self._match(tx, groups, where, params, query.limit + 1, query.offset,
                                                cap + 1 if query.with_total else None)
            else:
                rows = tx.rows(f"SELECT {_HIT_COLS}, 0 FROM titles t WHERE {' AND '.join(where)} "
                               "ORDER BY t.updated DESC, t.id DESC LIMIT ? OFFSET ?",
                               (*params, query.limit + 1, query.offset))
                # One capped count grouped by category: a filter matching half the catalogue
                # costs at most cap rows, not the whole table.
                by_category = tx.rows(
                    f"SELECT category, count(*) FROM (SELECT t.category AS category FROM titles t "
                    f"WHERE {' AND '.join(where)} LIMIT ?) m GROUP BY category", (*params, cap + 1)) \
                    if query.with_total else None
        counted = _tally(by_category, cap) if by_category is not None else None
        hits = tuple(SearchHit(id=int(r[0]), title=r[1], category=r[2], year=r[3], language=r[4],
                               duration_s=r[5], score=float(r[6])) for r in rows[:query.limit])
        more = len(rows) > query.limit and query.offset + query.limit <= limits.max_offset
        total, exact, facets = counted if counted is not None else (None, True, {})
        return SearchPage(hits=hits, offset=query.offset, limit=query.limit,
                          next_offset=query.offset + query.limit if more else None, corrections=corrections,
                          total=total, total_exact=exact, facets=facets)

    # --- the job queue -----------------------------------------------------------------------

    def enqueue(self, kind: str, key: str, *, title_id: int | None = None, payload: dict | None = None,
                max_attempts: int | None = None, delay_s: float = 0.0) -> Job:
        """Queue a job once: a second call with the same idempotency ``key`` returns the first job."""
        if not (0 < len(kind) <= 64) or not (0 < len(key) <= MAX_KEY_CHARS):
            raise BadQuery("job kind must be 1..64 and key 1..200 characters")
        body = json.dumps(payload or {}, sort_keys=True)
        if len(body) > MAX_PAYLOAD_BYTES:
            raise BadQuery("job payload is too large")
        now = self.clock.time()
        attempts = max_attempts or self.config.job_max_attempts
        with self._tx(write=True) as tx:
            tx.run("INSERT INTO jobs (kind, title_id, key, payload, state, max_attempts, run_at, created, updated) "
                   "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                   (kind, title_id, key, body, attempts, now + delay_s, now, now))
            row = tx.one(f"SELECT {_JOB_COLS} FROM jobs WHERE key = ?", (key,))
            assert row is not None
            return _job(row)

    def get_job(self, job_id: int) -> Job:
        """The job, or :class:`JobNotFound`."""
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        return _job(row)

    def ready_jobs(self) -> dict[str, tuple[int, float]]:
        """Per job kind, the jobs waiting for a worker (queued and due) and the oldest one's due
        time (wall clock): what the origin exports as its queue depth and queue age. One indexed
        scan (``jobs_ready``)."""
        now = self.clock.time()
        with self._tx(write=False) as tx:
            rows = tx.rows("SELECT kind, count(*), min(run_at) FROM jobs WHERE state = 'queued' AND run_at <= ? "
                           "GROUP BY kind", (now,))
        return {str(kind): (int(n), float(oldest)) for kind, n, oldest in rows}

    def lease(self, worker: str, kinds: Sequence[str], lease_s: float | None = None) -> Lease | None:
        """Take the next runnable job of one of ``kinds`` for ``lease_s`` seconds, or ``None``.

        Runnable: queued and due, or leased by a worker whose lease has expired (it died).
        A job whose lease expired on its last allowed attempt is dead instead.
        """
        if not kinds:
            return None
        lease_s = lease_s or self.config.job_lease_s
        now = self.clock.time()
        kinds = list(kinds)
        with self._tx(write=True) as tx:
            tx.run("UPDATE jobs SET state = 'failed', updated = ?, leased_by = NULL, lease_expires = NULL, "
                   "last_error = 'the worker stopped answering (lease expired) on its last attempt' "
                   f"WHERE state = 'leased' AND lease_expires <= ? AND attempts >= max_attempts "
                   f"AND kind IN ({_marks(len(kinds))})", (now, now, *kinds))
            row = tx.one(
                f"SELECT id FROM jobs WHERE kind IN ({_marks(len(kinds))}) AND "
                "((state = 'queued' AND run_at <= ?) OR (state = 'leased' AND lease_expires <= ?)) "
                f"ORDER BY run_at, id LIMIT 1{self.lease_lock_clause}", (*kinds, now, now))
            if row is None:
                return None
            expires = now + lease_s
            got = tx.one(f"UPDATE jobs SET state = 'leased', attempts = attempts + 1, lease_token = lease_token + 1, "
                         f"leased_by = ?, lease_expires = ?, updated = ? WHERE id = ? RETURNING {_JOB_COLS}",
                         (worker[:200], expires, now, row[0]))
            assert got is not None
            return Lease(job=_job(got), token=int(got[14]), worker=worker, expires=expires)

    def heartbeat(self, lease: Lease, lease_s: float | None = None, *, progress: float | None = None) -> Lease:
        """Extend the lease (and report the title's progress, fenced by the same token)."""
        lease_s = lease_s or self.config.job_lease_s
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._fence(tx, lease, "lease_expires = ?, updated = ?", (now + lease_s, now))
            if progress is not None and lease.job.title_id is not None:
                tx.run("UPDATE titles SET progress = ?, updated = ? WHERE id = ?",
                       (min(1.0, max(0.0, float(progress))), now, lease.job.title_id))
        return Lease(job=lease.job, token=lease.token, worker=lease.worker, expires=now + lease_s)

    def complete(self, lease: Lease, *, title_state: TitleState | None = None,
                 renditions: Sequence[Rendition] | None = None) -> None:
        """Mark the job done; with ``title_state``, move its title in the same transaction, so the
        title's result is applied once, by the holder of the current lease only."""
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._fence(tx, lease, "state = 'done', lease_expires = NULL, last_error = NULL, updated = ?", (now,))
            if title_state is not None and lease.job.title_id is not None:
                self._move(tx, lease.job.title_id, title_state, progress=None, error=None, renditions=renditions)

    def move_title(self, lease: Lease, state: TitleState, *, progress: float | None = None,
                   error: str | None = None) -> Title:
        """Move the lease's title (as :meth:`set_state`), fenced by the lease in the same
        transaction: a worker whose lease was taken by another changes nothing (:class:`LeaseLost`)."""
        if lease.job.title_id is None:
            raise JobNotFound(f"job {lease.job.id} has no title")
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._fence(tx, lease, "updated = ?", (now,))
            self._move(tx, lease.job.title_id, state, progress=progress, error=error, renditions=None)
            return self._load_title(tx, lease.job.title_id)

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> Job:
        """Record a failed run: queued again after a backoff, or dead (``failed``) once the job has
        used its attempts or ``retry`` is false (the input is bad; running again cannot help)."""
        now = self.clock.time()
        error = error[:MAX_ERROR_CHARS]
        with self._tx(write=True) as tx:
            row = tx.one("SELECT attempts, max_attempts FROM jobs WHERE id = ? AND lease_token = ? AND state = 'leased'",
                         (lease.job.id, lease.token))
            if row is None:
                raise LeaseLost(f"job {lease.job.id}: {lease.worker} no longer holds its lease")
            attempts, max_attempts = int(row[0]), int(row[1])
            if retry and attempts < max_attempts:
                run_at = now + self.config.backoff.delay(attempts, self.rng)
                self._fence(tx, lease, "state = 'queued', run_at = ?, lease_expires = NULL, leased_by = NULL, "
                            "last_error = ?, updated = ?", (run_at, error, now))
            else:
                self._fence(tx, lease, "state = 'failed', lease_expires = NULL, last_error = ?, updated = ?",
                            (error, now))
            got = tx.one(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (lease.job.id,))
            assert got is not None
            return _job(got)

    def _fence(self, tx: Tx, lease: Lease, sets: str, params: Sequence[Any]) -> None:
        n = tx.run(f"UPDATE jobs SET {sets} WHERE id = ? AND lease_token = ? AND state = 'leased'",
                   (*params, lease.job.id, lease.token))
        if not n:
            raise LeaseLost(f"job {lease.job.id}: {lease.worker} no longer holds its lease")


_HIT_COLS = "t.id, t.title, t.category, t.year, t.language, t.duration_s"


def _tally(rows: list[tuple], cap: int) -> tuple[int, bool, dict[str, int]]:
    """(total, exact, category facets) from (category, count) rows over at most ``cap + 1``
    matches."""
    found = sum(int(n) for _, n in rows)
    facets = {c: int(n) for c, n in sorted(rows, key=lambda r: (-int(r[1]), r[0] or "")) if c is not None}
    return min(found, cap), found <= cap, facets


def _rendition_dict(r: Rendition) -> dict:
    return {"name": r.name, "codec": r.codec, "width": r.width, "height": r.height,
            "bitrate": r.bitrate, "path": r.path}


def _job(row: tuple) -> Job:
    return Job(id=int(row[0]), kind=row[1], title_id=row[2], key=row[3], payload=json.loads(row[4]),
               state=JobState(row[5]), attempts=int(row[6]), max_attempts=int(row[7]), run_at=float(row[8]),
               lease_expires=None if row[9] is None else float(row[9]), leased_by=row[10],
               last_error=row[11], created=float(row[12]), updated=float(row[13]))
