"""The catalogue's schema, as numbered migrations per dialect, applied when a catalogue opens.

``schema_version`` holds the highest migration applied; each migration runs in its own
transaction with the version bump, so a crash leaves the database at one version or the next.
Search documents (``title_search``) exist for published titles only, so a viewer's search never
touches a title that is not published; the vocabulary (``search_words``, ``search_deletions``)
is built from those documents alone.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Union

from .ranking import impacts, prefix_impacts

__all__ = ["SQLITE_MIGRATIONS", "POSTGRES_MIGRATIONS", "TITLE_STATES", "JOB_STATES", "Migration"]

# A migration step: SQL, or a function given the migration's transaction (an object with
# ``rows(sql, params)`` and ``run(sql, params)``, store.Tx).
Migration = Union[str, Callable[[Any], None]]

TITLE_STATES = "('uploaded','transcoding','packaged','published','failed','withdrawn')"
JOB_STATES = "('queued','leased','done','failed')"


def _backfill_postings(key: str, insert: str) -> Callable[[Any], None]:
    """The step that builds ``search_postings`` from the search documents already stored (the
    impacts are computed in Python, :func:`.ranking.impacts`; ``insert`` takes them as one JSON
    array of [title, word, impact] per 2,000 titles) and the document count. The impact index
    is made after it (one sort, not millions of random inserts)."""

    def step(tx: Any) -> None:
        last = 0
        documents = 0
        while True:
            batch = tx.rows(f"SELECT {key}, title, people, description FROM title_search WHERE {key} > ? "
                            f"ORDER BY {key} LIMIT 2000", (last,))
            if not batch:
                break
            rows = []
            for r in batch:
                found = impacts(r[1], r[2], r[3])
                rows += [(int(r[0]), w, v) for w, v in sorted({**found, **prefix_impacts(found)}.items())]
            tx.run(insert, (json.dumps(rows),))
            last = int(batch[-1][0])
            documents += len(batch)
        tx.run("INSERT INTO search_stats (name, value) VALUES ('documents', ?)", (documents,))

    return step


# Each word's highest impact: the bound a query uses for words it looks up without walking them.
_PEAKS = ("UPDATE search_words SET max_impact = coalesce((SELECT max(impact) FROM search_postings p "
          "WHERE p.word = search_words.word), 0)")

SQLITE_MIGRATIONS: list[list[Migration]] = [
    [
        "CREATE TABLE categories (slug TEXT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE languages (code TEXT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        f"""CREATE TABLE titles (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
            category TEXT REFERENCES categories(slug), year INTEGER,
            language TEXT REFERENCES languages(code), duration_s REAL,
            state TEXT NOT NULL CHECK (state IN {TITLE_STATES}),
            progress REAL NOT NULL DEFAULT 0, renditions TEXT NOT NULL DEFAULT '[]',
            upload TEXT, owner TEXT, error TEXT, created REAL NOT NULL, updated REAL NOT NULL)""",
        "CREATE INDEX titles_state ON titles(state, id)",
        # Browsing without words: published titles, newest first, filters applied on the way.
        "CREATE INDEX titles_browse ON titles(state, updated, id)",
        "CREATE INDEX titles_owner ON titles(owner, id)",
        """CREATE TABLE title_people (
            title_id INTEGER NOT NULL REFERENCES titles(id) ON DELETE CASCADE,
            position INTEGER NOT NULL, person_id INTEGER NOT NULL REFERENCES people(id),
            role TEXT NOT NULL, PRIMARY KEY (title_id, position))""",
        # Prefix indexes for 2- and 3-letter prefixes: "tr*" is answered from them, not a scan.
        "CREATE VIRTUAL TABLE title_search USING fts5(title, people, description, title_words UNINDEXED, "
        "tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')",
        "CREATE TABLE search_words (word TEXT PRIMARY KEY, docs INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE search_deletions (variant TEXT NOT NULL, word TEXT NOT NULL, "
        "PRIMARY KEY (variant, word)) WITHOUT ROWID",
        f"""CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            title_id INTEGER REFERENCES titles(id) ON DELETE SET NULL,
            key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL DEFAULT '{{}}',
            state TEXT NOT NULL CHECK (state IN {JOB_STATES}),
            attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
            run_at REAL NOT NULL, lease_token INTEGER NOT NULL DEFAULT 0, leased_by TEXT,
            lease_expires REAL, last_error TEXT, created REAL NOT NULL, updated REAL NOT NULL)""",
        "CREATE INDEX jobs_ready ON jobs(state, run_at)",
    ],
    # 2: one title per (owner, upload): a creator re-posting an upload (a retried request) gets
    # the title made the first time, even when two such requests race on two origin hosts.
    ["CREATE UNIQUE INDEX titles_owner_upload ON titles(owner, upload) WHERE upload IS NOT NULL"],
    # 3: browsing by category or language (no words): the newest published titles of one
    # category come in index order, and the capped count reads only that category's entries,
    # instead of walking every published title (0.9 s at 100,000 titles). The other filter
    # columns ride in the index so the year/duration filters are checked without a table read.
    ["CREATE INDEX titles_browse_category ON titles(state, category, updated, id, year, language, duration_s)",
     "CREATE INDEX titles_browse_language ON titles(state, language, updated, id, year, category, duration_s)"],
    # 4: the search's join from a match to its title's filter columns (sqlite.py, INDEXED BY):
    # a narrow covering index instead of the table's rows, which hold the descriptions.
    ["CREATE INDEX titles_search_filters ON titles(id, state, category, language, year, duration_s)"],
    # 5: our own ranking (ranking.py): each (title, word) with its impact, walked per word from
    # the highest impact down; the vocabulary's highest impact per word (a bound for words a
    # query only looks up); the number of search documents (for the IDFs).
    ["CREATE TABLE search_postings (title_id INTEGER NOT NULL, word TEXT NOT NULL, impact REAL NOT NULL, "
     "PRIMARY KEY (title_id, word)) WITHOUT ROWID",
     "ALTER TABLE search_words ADD COLUMN max_impact REAL NOT NULL DEFAULT 0",
     "CREATE TABLE search_stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
     _backfill_postings("rowid", "INSERT INTO search_postings (title_id, word, impact) SELECT json_extract(value, '$[0]'), "
                        "json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?)"),
     "CREATE INDEX search_postings_impact ON search_postings(word, impact, title_id)",
     _PEAKS],
    # 6: the titles passing a category and a language filter (store._filtered_titles, the set a
    # filtered search walks or scores): exactly their entries, where titles_browse_language read
    # every title of the language to keep the category's (comedy + en at 100,000 titles: 6.7 ->
    # 2.3 ms). IF NOT EXISTS: a test replays migration 5 onwards.
    ["CREATE INDEX IF NOT EXISTS titles_category_language ON titles(state, category, language, id)"],
    # Upload records (origin/upload/records.py), shared by every origin host on this database:
    # the record as JSON, the columns the janitor and the per-client bound query, and the lease
    # (holder, until, fence) one PATCH takes so two hosts' PATCHes never interleave. Cluster
    # secrets (origin/auth/shared.py): the sealed signing key, client secrets and user
    # passwords made once for the cluster (the first host's INSERT wins).
    ["CREATE TABLE uploads (id TEXT PRIMARY KEY, owner TEXT NOT NULL, record TEXT NOT NULL, "
     "expires DOUBLE PRECISION NOT NULL, completed DOUBLE PRECISION, holder TEXT, "
     "lease_until DOUBLE PRECISION NOT NULL DEFAULT 0, fence BIGINT NOT NULL DEFAULT 0)",
     "CREATE INDEX uploads_open ON uploads(owner) WHERE completed IS NULL",
     "CREATE INDEX uploads_expires ON uploads(expires) WHERE completed IS NULL",
     "CREATE INDEX uploads_completed ON uploads(completed) WHERE completed IS NOT NULL",
     "CREATE TABLE cluster_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"],
    # Version prefixes to delete (origin/transcode/versions.py): a title's superseded version,
    # recorded by the publish that replaced it, and a dead or failed attempt's prefix, recorded
    # by the lease that took its job over or the failure; since when (the retention counts from
    # it) and the sweep's claim (claimed_by until claimed_until), so two sweeps never work one
    # prefix at once. A row is removed once its prefix lists empty.
    ["CREATE TABLE retired_versions (prefix TEXT PRIMARY KEY, title_id INTEGER NOT NULL, job_id INTEGER, "
     "attempt INTEGER, reason TEXT NOT NULL, since REAL NOT NULL, claimed_by TEXT, "
     "claimed_until REAL NOT NULL DEFAULT 0)",
     "CREATE INDEX retired_versions_due ON retired_versions(since)"],
]

POSTGRES_MIGRATIONS: list[list[Migration]] = [
    [
        "CREATE TABLE categories (slug TEXT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE languages (code TEXT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE people (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        f"""CREATE TABLE titles (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            title TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
            category TEXT REFERENCES categories(slug), year INTEGER,
            language TEXT REFERENCES languages(code), duration_s DOUBLE PRECISION,
            state TEXT NOT NULL CHECK (state IN {TITLE_STATES}),
            progress DOUBLE PRECISION NOT NULL DEFAULT 0, renditions TEXT NOT NULL DEFAULT '[]',
            upload TEXT, owner TEXT, error TEXT,
            created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX titles_state ON titles(state, id)",
        # Browsing without words: published titles, newest first, filters applied on the way.
        "CREATE INDEX titles_browse ON titles(state, updated, id)",
        "CREATE INDEX titles_owner ON titles(owner, id)",
        """CREATE TABLE title_people (
            title_id BIGINT NOT NULL REFERENCES titles(id) ON DELETE CASCADE,
            position INTEGER NOT NULL, person_id BIGINT NOT NULL REFERENCES people(id),
            role TEXT NOT NULL, PRIMARY KEY (title_id, position))""",
        # The words are normalised in Python (origin/catalogue/text.py) before they get here, so
        # the 'simple' configuration (no stemming, no stop words) indexes them as they are:
        # titles are names in many languages, which an English stemmer would mangle.
        """CREATE TABLE title_search (
            title_id BIGINT PRIMARY KEY REFERENCES titles(id) ON DELETE CASCADE,
            title TEXT NOT NULL, people TEXT NOT NULL, description TEXT NOT NULL,
            title_words INTEGER NOT NULL,
            doc TSVECTOR GENERATED ALWAYS AS (
                setweight(to_tsvector('simple', title), 'A') ||
                setweight(to_tsvector('simple', people), 'B') ||
                setweight(to_tsvector('simple', description), 'C')) STORED)""",
        "CREATE INDEX title_search_doc ON title_search USING GIN (doc)",
        "CREATE TABLE search_words (word TEXT PRIMARY KEY, docs INTEGER NOT NULL)",
        "CREATE TABLE search_deletions (variant TEXT NOT NULL, word TEXT NOT NULL, PRIMARY KEY (variant, word))",
        f"""CREATE TABLE jobs (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind TEXT NOT NULL,
            title_id BIGINT REFERENCES titles(id) ON DELETE SET NULL,
            key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL DEFAULT '{{}}',
            state TEXT NOT NULL CHECK (state IN {JOB_STATES}),
            attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
            run_at DOUBLE PRECISION NOT NULL, lease_token BIGINT NOT NULL DEFAULT 0, leased_by TEXT,
            lease_expires DOUBLE PRECISION, last_error TEXT,
            created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX jobs_ready ON jobs(state, run_at)",
    ],
    # 2: one title per (owner, upload): a creator re-posting an upload (a retried request) gets
    # the title made the first time, even when two such requests race on two origin hosts.
    ["CREATE UNIQUE INDEX titles_owner_upload ON titles(owner, upload) WHERE upload IS NOT NULL"],
    # 3: browsing by category or language (no words): the newest published titles of one
    # category come in index order, and the capped count reads only that category's entries,
    # instead of walking every published title (0.9 s at 100,000 titles). The other filter
    # columns ride in the index so the year/duration filters are checked without a table read.
    ["CREATE INDEX titles_browse_category ON titles(state, category, updated, id, year, language, duration_s)",
     "CREATE INDEX titles_browse_language ON titles(state, language, updated, id, year, category, duration_s)"],
    # 4: as SQLite's 5 (ranking.py). COLLATE "C": a prefix is a byte range of words whatever
    # the database's locale.
    ["CREATE TABLE search_postings (title_id BIGINT NOT NULL REFERENCES titles(id) ON DELETE CASCADE, "
     "word TEXT COLLATE \"C\" NOT NULL, impact DOUBLE PRECISION NOT NULL, PRIMARY KEY (title_id, word))",
     "ALTER TABLE search_words ADD COLUMN max_impact DOUBLE PRECISION NOT NULL DEFAULT 0",
     "CREATE TABLE search_stats (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
     "ALTER TABLE search_words ALTER COLUMN word TYPE TEXT COLLATE \"C\"",
     _backfill_postings("title_id", "INSERT INTO search_postings (title_id, word, impact) SELECT (value->>0)::bigint, "
                        "value->>1, (value->>2)::double precision FROM json_array_elements(?::json)"),
     "CREATE INDEX search_postings_impact ON search_postings(word, impact, title_id)",
     _PEAKS,
     # The planner's statistics for the millions of rows just written (autovacuum would come
     # later, after the first searches).
     "ANALYZE search_postings"],
    # 5: a search's lookups of given titles (store._looked_up, _scored: one probe per title and
    # word) read the impact from the primary key's index alone (INCLUDE), as SQLite's WITHOUT
    # ROWID table does, instead of one more random page of the table per probe: the walk's
    # lookups of a few thousand titles were mostly page reads.
    ["ALTER TABLE search_postings DROP CONSTRAINT search_postings_pkey",
     "ALTER TABLE search_postings ADD PRIMARY KEY (title_id, word) INCLUDE (impact)"],
    # 6 (PostgreSQL only): each title's postings again as one row, a JSON object of word →
    # impact (store._term_probes): a walk's lookup of a title is one probe of this primary key
    # whatever the words, where search_postings took one per title and word (1,000 titles
    # looked up in two lists: 5.8 -> 3.9 ms of server CPU). SQLite has no such table: its
    # lookups are per-title subqueries of its WITHOUT ROWID postings, which keep a title's
    # words on one leaf page already. Rows up to a page stay inline and uncompressed
    # (toast_tuple_target): a probe reads the one heap page. (float8 to jsonb and back is exact:
    # the shortest decimal that reads back as the same double.)
    ["CREATE TABLE search_terms (title_id BIGINT PRIMARY KEY REFERENCES titles(id) ON DELETE CASCADE, "
     "terms JSONB NOT NULL) WITH (toast_tuple_target = 8160)",
     "INSERT INTO search_terms (title_id, terms) SELECT title_id, jsonb_object_agg(word, impact) "
     "FROM search_postings GROUP BY title_id",
     "ANALYZE search_terms"],
    # 7 (PostgreSQL only): the search feed, a row per change of a title's search entry (publish,
    # withdrawal, metadata), written in the changing transaction under an advisory lock so seq
    # commits in order (localsearch.py: each origin's local search index reads it past its
    # position); the epoch names this database's feed, so a local index made from another
    # database is rebuilt rather than caught up; pruned_to, the highest seq pruned (a file
    # whose position is below it cannot catch up: it is rebuilt).
    ["CREATE TABLE search_feed (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
     "title_id BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL)",
     "CREATE TABLE search_feed_epoch (epoch TEXT NOT NULL, pruned_to BIGINT NOT NULL DEFAULT 0)",
     "INSERT INTO search_feed_epoch (epoch) VALUES (md5(random()::text || clock_timestamp()::text))"],
    # Upload records (origin/upload/records.py), shared by every origin host on this database:
    # the record as JSON, the columns the janitor and the per-client bound query, and the lease
    # (holder, until, fence) one PATCH takes so two hosts' PATCHes never interleave. Cluster
    # secrets (origin/auth/shared.py): the sealed signing key, client secrets and user
    # passwords made once for the cluster (the first host's INSERT wins).
    ["CREATE TABLE uploads (id TEXT PRIMARY KEY, owner TEXT NOT NULL, record TEXT NOT NULL, "
     "expires DOUBLE PRECISION NOT NULL, completed DOUBLE PRECISION, holder TEXT, "
     "lease_until DOUBLE PRECISION NOT NULL DEFAULT 0, fence BIGINT NOT NULL DEFAULT 0)",
     "CREATE INDEX uploads_open ON uploads(owner) WHERE completed IS NULL",
     "CREATE INDEX uploads_expires ON uploads(expires) WHERE completed IS NULL",
     "CREATE INDEX uploads_completed ON uploads(completed) WHERE completed IS NOT NULL",
     "CREATE TABLE cluster_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"],
    # Version prefixes to delete: as SQLite's 8.
    ["CREATE TABLE retired_versions (prefix TEXT PRIMARY KEY, title_id BIGINT NOT NULL, job_id BIGINT, "
     "attempt INTEGER, reason TEXT NOT NULL, since DOUBLE PRECISION NOT NULL, claimed_by TEXT, "
     "claimed_until DOUBLE PRECISION NOT NULL DEFAULT 0)",
     "CREATE INDEX retired_versions_due ON retired_versions(since)"],
]
