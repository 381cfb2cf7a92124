"""The catalogue's schema, as numbered migrations per dialect, applied when a catalogue opens.

``schema_version`` holds the highest migration applied; each migration runs in its own
transaction with the version bump, so a crash leaves the database at one version or the next.
Search documents (``title_search``) exist for published titles only, so a viewer's search never
touches a title that is not published; the vocabulary (``search_words``, ``search_deletions``)
is built from those documents alone.
"""

from __future__ import annotations

__all__ = ["SQLITE_MIGRATIONS", "POSTGRES_MIGRATIONS", "TITLE_STATES", "JOB_STATES"]

TITLE_STATES = "('uploaded','transcoding','packaged','published','failed','withdrawn')"
JOB_STATES = "('queued','leased','done','failed')"

SQLITE_MIGRATIONS: list[list[str]] = [
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
]

POSTGRES_MIGRATIONS: list[list[str]] = [
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
]
