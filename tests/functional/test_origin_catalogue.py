"""The catalogue and job queue on both backends: SQLite in a temporary file and a real
PostgreSQL server (Debian's) started for the session.

Search relevance is asserted on a seeded catalogue of a few thousand titles (exact, prefix,
typo, people and filtered queries); the queue with two workers, one of which dies (its lease
expires on a fake clock) and the job is done exactly once; threads racing for jobs; idempotent
enqueue; SQL injection strings in the query and the filters.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from headwater.clock import FakeClock
from headwater.origin.catalogue import (BadQuery, CatalogueConfig, IllegalTransition, JobState, LeaseLost,
                                        SearchQuery, TitleDraft, TitleNotFound, TitleState, open_catalogue,
                                        parse_search_params)
from headwater.origin.catalogue.backoff import Backoff

from .catalogue_seed import HIDDEN, NAMED, generated
from .postgres_server import find_initdb, start_postgres

SEEDED = 2000
_schemas = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    server = start_postgres()
    yield server
    # The seeded catalogues on it first (a local index's worker would poll a stopped server).
    for name in ("postgresql", "local"):
        cat = _seeded_cache.pop(name, None)
        if cat is not None:
            cat.close()
    server.stop()


def _config(backend: str, postgres, tmp: Path, **kw) -> CatalogueConfig:
    """``backend``: sqlite, postgresql (searches in the database) or local (PostgreSQL with its
    local search index, localsearch.py)."""
    if backend == "sqlite":
        return CatalogueConfig(backend="sqlite", path=tmp / f"catalogue-{next(_schemas)}.sqlite3", **kw)
    schema = f"t{next(_schemas)}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    index = tmp / f"search-index-{schema}.sqlite3" if backend == "local" else None
    return CatalogueConfig(backend="postgresql", dsn=postgres.dsn(options=f"-csearch_path={schema}"),
                           search_index=index, **kw)


@pytest.fixture(params=["sqlite", "postgresql", "local"])
def backend(request):
    return request.param


@pytest.fixture
def fresh(backend, request, tmp_path):
    """An empty catalogue on a fake clock, with a seeded rng."""
    pg = request.getfixturevalue("postgres") if backend != "sqlite" else None
    clock = FakeClock()
    cat = open_catalogue(_config(backend, pg, tmp_path, backoff=Backoff(base_s=10, cap_s=100), job_max_attempts=3),
                         clock=clock, rng=random.Random(1))
    yield cat, clock
    cat.close()


_seeded_cache: dict[str, object] = {}


@pytest.fixture
def seeded(backend, request, tmp_path_factory):
    """The seeded catalogue, built once per backend per session."""
    if backend not in _seeded_cache:
        pg = request.getfixturevalue("postgres") if backend != "sqlite" else None
        cat = open_catalogue(_config(backend, pg, tmp_path_factory.mktemp("seeded")))
        drafts = generated(SEEDED)
        # The named titles in the middle, so neither insertion order nor id decides their rank.
        cat.import_titles(drafts[:SEEDED // 2], state=TitleState.PUBLISHED)
        cat.import_titles(NAMED, state=TitleState.PUBLISHED)
        cat.import_titles(drafts[SEEDED // 2:], state=TitleState.PUBLISHED)
        for d in HIDDEN:
            t = cat.create_title(d)
            cat.set_state(t.id, TitleState.TRANSCODING)
        if backend == "local":
            # The relevance tests go through the local index, built (and caught up) here.
            assert cat.search_index.wait_ready(120)
        request.session.config.add_cleanup(cat.close)
        _seeded_cache[backend] = cat
    return _seeded_cache[backend]


def titles(page) -> list[str]:
    return [h.title for h in page.hits]


# --- search relevance ---------------------------------------------------------------------------

def test_exact_query_ranks_the_exact_title_first(seeded):
    page = seeded.search(SearchQuery(q="Night Train"))
    assert titles(page)[:2] == ["Night Train", "Night Train to Lisbon"]
    assert "Night Train Secrets" not in titles(page)
    assert page.corrections == {}


def test_typo_finds_the_title(seeded):
    page = seeded.search(SearchQuery(q="night trian"))
    assert titles(page)[0] == "Night Train"
    assert page.corrections == {"trian": "train"}
    assert titles(seeded.search(SearchQuery(q="nigth train")))[0] == "Night Train"
    # A transposition and a dropped letter in generated words, on a long page.
    top = titles(seeded.search(SearchQuery(q="slient rivr", limit=50)))
    assert all("Silent River" in t for t in top[:3])


def test_prefix_search_as_you_type(seeded):
    assert titles(seeded.search(SearchQuery(q="night train to lis")))[0] == "Night Train to Lisbon"
    assert titles(seeded.search(SearchQuery(q="lisb"))) == ["Night Train to Lisbon"]


def test_diacritics_and_case_are_folded(seeded):
    assert titles(seeded.search(SearchQuery(q="ultimo TREN"))) == ["Último Tren"]
    assert titles(seeded.search(SearchQuery(q="Último")))[0] == "Último Tren"


def test_people_are_searched(seeded):
    assert titles(seeded.search(SearchQuery(q="ana ruiz"))) == ["Night Train"]
    assert titles(seeded.search(SearchQuery(q="bille augst"))) == ["Night Train to Lisbon"]


def test_filters(seeded):
    assert titles(seeded.search(SearchQuery(q="night", category="thriller"))) == ["The Night Watch"]
    recent = titles(seeded.search(SearchQuery(q="night train", year_min=2020, year_max=2026)))
    assert recent == ["Night Train"]
    assert titles(seeded.search(SearchQuery(q="train", language="fr"))) == ["Train of Thought"]
    short = titles(seeded.search(SearchQuery(q="night", duration_max_s=1200)))
    assert short == ["Short Night"]
    q = parse_search_params({"q": "night trian", "category": "drama", "year": "2020..2026"})
    assert titles(seeded.search(q)) == ["Night Train"]
    # Filters alone browse the catalogue.
    page = seeded.search(SearchQuery(category="documentary", year_min=2021, year_max=2021, limit=100))
    assert page.hits and all(h.category == "documentary" and h.year == 2021 for h in page.hits)


def test_a_category_and_language_set_is_read_from_its_own_index(seeded, backend):
    """SQLite: the titles of a category and a language (the set a filtered search walks) come
    from exactly their entries of titles_category_language (migration 6), not from every title
    of the language; the set is every published title passing both."""
    if backend != "sqlite":
        pytest.skip("SQLite's index (PostgreSQL plans its own)")
    where, params = ["t.state = 'published'", "t.category = ?", "t.language = ?"], ["drama", "en"]
    with seeded._tx(write=False) as tx:
        plan = " ".join(str(r) for r in tx.rows(
            f"EXPLAIN QUERY PLAN SELECT t.id FROM titles t WHERE {' AND '.join(where)} LIMIT ?", (*params, 10)))
        few = seeded._filtered_titles(tx, where, params)
        every = [r[0] for r in tx.rows("SELECT id FROM titles WHERE state = 'published' AND category = 'drama' "
                                        "AND language = 'en'")]
    assert "titles_category_language" in plan
    assert few and sorted(few) == sorted(every)


def test_paging_without_overlap_and_capped(seeded):
    seen: list[int] = []
    q = SearchQuery(q="silent", limit=25)
    offset = 0
    while offset is not None and offset < 200:
        page = seeded.search(SearchQuery(q=q.q, limit=q.limit, offset=offset))
        seen += [h.id for h in page.hits]
        offset = page.next_offset
    assert len(seen) == len(set(seen)) >= 100
    with pytest.raises(BadQuery):
        seeded.search(SearchQuery(q="silent", offset=seeded.config.search.max_offset + 1))
    with pytest.raises(BadQuery):
        seeded.search(SearchQuery(q="silent", limit=1000))
    with pytest.raises(BadQuery):
        seeded.search(SearchQuery(q="x" * 1000))
    with pytest.raises(BadQuery):
        seeded.search(SearchQuery(q=" ".join(f"w{i}" for i in range(50))))


RANKED = ["silent", "silent river", "slient rivr", "river silent", "silent ri", "river of the", "maria",
          "night", "tra", "golden harb"]


def test_the_threshold_walk_ranks_as_scoring_every_match(seeded, monkeypatch):
    """The walk (store._top_k) stops early; the pages it gives are the ones scoring every match
    gives (the walk made to run to the end of its lists, never intersecting), ids and scores,
    across pages and with filters."""
    from headwater.origin.catalogue import ranking, store

    def pages(q: str, **kw) -> list[tuple[int, float]]:
        return [(h.id, round(h.score, 9)) for o in (0, 30, 60)
                for h in seeded.search(SearchQuery(q=q, limit=30, offset=o, **kw)).hits]

    scored = []  # the titles scored by the database (looked up, or scored outright)
    real_scored, real_looked_up = store.SqlCatalogue._scored, store.SqlCatalogue._looked_up
    real_walk_scored = store.SqlCatalogue._walk_scored
    monkeypatch.setattr(store.SqlCatalogue, "_scored",
                        lambda self, tx, g, w, p, ids, *a, **kw: scored.append(ids) or real_scored(self, tx, g, w, p, ids, *a, **kw))
    monkeypatch.setattr(store.SqlCatalogue, "_looked_up",
                        lambda self, tx, lookup, n, ids, known=None, **kw: scored.append(ids) or real_looked_up(self, tx, lookup, n, ids, known, **kw))
    # (PostgreSQL's walk reads a batch and looks its titles up in one statement: its batches.)
    real_read_and_looked_up = store.SqlCatalogue._read_and_looked_up
    monkeypatch.setattr(store.SqlCatalogue, "_read_and_looked_up",
                        lambda self, *a: (lambda out: scored.append([r[0] for r in out[0]]) or out)(real_read_and_looked_up(self, *a)))
    monkeypatch.setattr(store.SqlCatalogue, "_walk_scored",
                        lambda self, tx, g, w, p, fresh, known: scored.append(fresh) or real_walk_scored(self, tx, g, w, p, fresh, known))
    early = {q: pages(q) for q in RANKED}
    early_drama = pages("silent", category="drama")
    early_titles = sum(len(ids) if isinstance(ids, (list, dict)) else 1 for ids in scored)
    monkeypatch.setattr(ranking.TopK, "kth", lambda self: None)
    monkeypatch.setattr(store, "MAX_WALK", 10 ** 9)
    monkeypatch.setattr(store, "INTERSECT_MAX", 0)
    scored.clear()
    for q in RANKED:
        assert pages(q) == early[q], q
    assert pages("silent", category="drama") == early_drama
    assert len(early["silent"]) == 90 and len(early_drama) > 6
    # The early stops scored fewer titles: the comparison was not vacuous.
    assert sum(len(ids) if isinstance(ids, (list, dict)) else 1 for ids in scored) > early_titles


def test_a_walk_on_an_impact_plateau_turns_to_the_other_word(fresh, monkeypatch):
    """Every "alpha" title has the same impact for it (a 2-word title field): a plateau. The
    best pages need the highest "beta" impacts (the shortest descriptions), held by the oldest
    titles, which an impact-ordered walk of the plateau (newest first) reaches last. The walk
    reads "beta"'s list when "alpha"'s stands still, and finds them within a cap that reading
    the plateau alone would hit first."""
    from headwater.origin.catalogue import store

    cat, _ = fresh
    filler = [f"f{i}" for i in range(40)]
    best = [TitleDraft(title=f"alpha a{n}", description=" ".join(["beta", *filler[:n]])) for n in range(10)]
    rest = [TitleDraft(title=f"alpha b{n}", description=" ".join(["beta", *filler[:20 + n % 20]])) for n in range(300)]
    other = [TitleDraft(title=f"gamma c{n}") for n in range(300)]
    ids = cat.import_titles([*best, *rest, *other], state=TitleState.PUBLISHED)
    monkeypatch.setattr(store, "INTERSECT_MAX", 0)  # walk, rather than score a small list outright
    monkeypatch.setattr(store, "MAX_WALK", 40)  # the cap: 40 + 2k postings
    page = cat.search(SearchQuery(q="alpha beta", limit=10))
    # Shorter descriptions hold "beta" with a higher impact.
    assert [h.id for h in page.hits] == ids[:10]
    assert page.hits[0].score > page.hits[-1].score


def test_totals_counted_from_a_small_set_are_the_full_text_index_counts(seeded, backend, monkeypatch):
    """A rare filter's titles or a rare word's titles count the matches (store._count) as the
    full-text index does (FTS5 / tsvector): same total, exactness and facets."""
    from headwater.origin.catalogue import store

    if backend == "local":
        pytest.skip("the local index counts with SQLite's code (its run covers it)")

    queries = [SearchQuery(q="silent", category="drama", with_total=True),
               SearchQuery(q="night", language="fr", with_total=True),
               SearchQuery(q="night trian", with_total=True), SearchQuery(q="silent riv", with_total=True),
               SearchQuery(q="golden harb", category="comedy", year_min=1990, with_total=True),
               SearchQuery(q="maria", with_total=True), SearchQuery(q="zzzz night", with_total=True)]
    full_text = []
    real = type(seeded)._count_matches
    monkeypatch.setattr(type(seeded), "_count_matches", lambda *a: full_text.append(1) or real(*a))
    counted = [(p.total, p.total_exact, p.facets) for p in map(seeded.search, queries)]
    assert len(full_text) < len(queries) - 3  # most were counted from a small set
    monkeypatch.setattr(store.SqlCatalogue, "_count", lambda self, tx, g, w, p, cap: real(self, tx, g, w, p, cap))
    assert [(p.total, p.total_exact, p.facets) for p in map(seeded.search, queries)] == counted
    assert counted[0][0] and counted[2][0]


def test_totals_are_exact_up_to_exact_total_max(backend, request, tmp_path):
    """Totals and facets are exact up to exact_total_max matches and "more than" it past it
    (total = the bound, total_exact false, facets over bound + 1 matches), on both backends;
    the pages (ids, order, scores) are those of a catalogue counting far further."""
    from headwater.origin.catalogue.query import SearchLimits

    pg = request.getfixturevalue("postgres") if backend != "sqlite" else None
    wide = open_catalogue(_config(backend, pg, tmp_path))
    try:
        wide.import_titles([TitleDraft(title=f"Harbour Lights {i}", category=("drama", "comedy", "news")[i % 3])
                            for i in range(30)] + [TitleDraft(title=f"Harbour Night {i}", category="drama")
                                                    for i in range(4)], state=TitleState.PUBLISHED)
        narrow = open_catalogue(replace(wide.config, search=SearchLimits(exact_total_max=10)))
        try:
            for q in ("harbour", "harbour li", "harbour night", "lights"):
                for cat in (None, "drama"):
                    query = SearchQuery(q=q, category=cat, with_total=True)
                    a, b = wide.search(query), narrow.search(query)
                    assert [(h.id, h.score) for h in b.hits] == [(h.id, h.score) for h in a.hits]
                    assert a.total_exact and a.total == sum(a.facets.values())
                    if a.total <= 10:
                        assert (b.total, b.total_exact, b.facets) == (a.total, True, a.facets)
                    else:
                        assert (b.total, b.total_exact, sum(b.facets.values())) == (10, False, 11)
                        assert all(b.facets[c] <= n for c, n in a.facets.items() if c in b.facets)
            assert narrow.search(SearchQuery(q="harbour", with_total=True)).total_exact is False
            assert narrow.search(SearchQuery(q="harbour night", with_total=True)).total == 4
        finally:
            narrow.close()
    finally:
        wide.close()


def test_postgres_dense_count_scans_in_order_as_the_gin_index_counts(seeded, backend, monkeypatch):
    """PostgreSQL: where matches are dense, the capped count tests title_search in key order
    (ts_match_vq, no index) instead of the GIN index; both count the same totals, exactness
    and (when exact) facets, and the dense scan is chosen for a common word."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's count")
    from headwater.origin.catalogue import postgres

    queries = [SearchQuery(q=q, category=c, with_total=True)
               for q in ("silent", "night", "the", "river of", "silent ri", "tra", "night trian", "golden harb")
               for c in (None, "drama")]
    chosen: list[bool] = []
    real = postgres.PostgresCatalogue._dense
    monkeypatch.setattr(postgres.PostgresCatalogue, "_dense", lambda *a: chosen.append(real(*a)) or chosen[-1])
    monkeypatch.setattr(postgres.PostgresCatalogue, "_count", postgres.PostgresCatalogue._count_matches)
    dense = [seeded.search(q) for q in queries]
    assert any(chosen) and not all(chosen)
    monkeypatch.setattr(postgres.PostgresCatalogue, "_dense", lambda *a: False)
    for q, a in zip(queries, dense):
        b = seeded.search(q)
        assert (a.total, a.total_exact) == (b.total, b.total_exact), q
        assert not a.total_exact or a.facets == b.facets, q


def test_postgres_filtered_count_from_a_groups_postings(seeded, backend, monkeypatch):
    """PostgreSQL: a filtered search whose filter leaves a few thousand titles counts the
    rarest group's postings of those titles (store._count, filtered_group_count_max) with the
    full-text index's totals, exactness and facets."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's count")
    from headwater.origin.catalogue import postgres, store

    # The ranking walks (rather than score the filter's titles outright and count those).
    monkeypatch.setattr(store, "INTERSECT_MAX", 5)
    queries = [SearchQuery(q=q, category=c, language=lang, with_total=True)
               for q in ("silent", "night", "river of", "silent ri", "golden harb")
               for c, lang in (("drama", None), (None, "en"), ("comedy", "fr"))]
    used: list[str] = []
    real_group_titles = postgres.PostgresCatalogue._group_titles
    monkeypatch.setattr(postgres.PostgresCatalogue, "_group_titles", lambda self, *a: used.append(a[-2]) or
                        real_group_titles(self, *a))
    counted = [(p.total, p.total_exact, p.facets) for p in map(seeded.search, queries)]
    assert any("+p.title_id IN" in cond for cond in used)
    monkeypatch.setattr(postgres.PostgresCatalogue, "_count", postgres.PostgresCatalogue._count_matches)
    for q, (total, exact, facets) in zip(queries, counted):
        b = seeded.search(q)
        assert (total, exact) == (b.total, b.total_exact), q
        assert not exact or facets == b.facets, q


@pytest.mark.parametrize("set_max", [5000, 40])
def test_postgres_filtered_count_probes_the_sets_titles_when_matches_are_dense(seeded, backend, monkeypatch, set_max):
    """PostgreSQL: the capped count of a filtered search whose matches are dense in the filter's
    titles probes those titles in turn and stops at cap + 1 matches (filtered_count_stops,
    store._probes_to_cap; with set_max 40, most filters leave more titles than a set holds and
    the first ones are probed, the full-text count taking over when they hold too few matches),
    with the totals, exactness and facets (where exact) of the count from the rarest group's
    postings and of the full-text index."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's count")
    from headwater.origin.catalogue import postgres, store

    monkeypatch.setattr(store, "INTERSECT_MAX", 5)
    monkeypatch.setattr(store, "FILTERED_SET_MAX", set_max)
    queries = [SearchQuery(q=q, category=c, language=lang, with_total=True)
               for q in ("silent", "night", "river of", "silent ri", "golden harb", "story", "story of", "emp")
               for c, lang in (("drama", None), (None, "en"), ("comedy", "fr"))]
    statements: list[str] = []
    real = postgres._PgTx.rows
    monkeypatch.setattr(postgres._PgTx, "rows", lambda self, sql, params=(): statements.append(sql) or real(
        self, sql, params))
    pages, probed = {}, {}
    for cap in (3, 200):
        monkeypatch.setattr(seeded, "config", replace(seeded.config, search=replace(seeded.config.search,
                                                                                     exact_total_max=cap)))
        for stops in (True, False):
            monkeypatch.setattr(seeded, "filtered_count_stops", stops)
            statements.clear()
            pages[cap, stops] = [(p.total, p.total_exact, p.facets) for p in map(seeded.search, queries)]
            probed[cap, stops] = sum(1 for sql in statements if "FROM (SELECT value AS id FROM (SELECT value::bigint"
                                     in sql and "CROSS JOIN LATERAL (SELECT t.category FROM titles t" in sql)
        monkeypatch.setattr(seeded, "_count", seeded._count_matches)
        pages[cap, None] = [(p.total, p.total_exact, p.facets) for p in map(seeded.search, queries)]
        monkeypatch.delattr(seeded, "_count")
        for q, a, b, c in zip(queries, pages[cap, True], pages[cap, False], pages[cap, None]):
            assert a[:2] == b[:2] == c[:2], (cap, q)
            assert not a[1] or a[2] == b[2] == c[2], (cap, q)
    assert probed[3, True] > probed[3, False]


def test_postgres_presence_checks_probe_a_few_titles(seeded, backend, monkeypatch):
    """PostgreSQL: a rare word's titles checked for a common group probe each title (the check
    ends with OFFSET 0, so the planner cannot read the group's whole lists into a hash), and
    the pages and totals are those of the planner's own choice."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's planner")
    from headwater.origin.catalogue import postgres

    queries = [SearchQuery(q=q, with_total=True) for q in ("maria nigh", "lisbon sile", "ruiz rive", "maria silent", "lisbn night")]
    statements: list[str] = []
    real = postgres._PgTx.rows
    monkeypatch.setattr(postgres._PgTx, "rows", lambda self, sql, params=(): statements.append(sql) or real(
        self, sql, params))
    probed = [seeded.search(q) for q in queries]
    assert any("EXISTS" in sql and "OFFSET 0)" in sql for sql in statements)
    monkeypatch.setattr(postgres.PostgresCatalogue, "probe_barrier", "")
    for q, a in zip(queries, probed):
        b = seeded.search(q)
        assert [(h.id, h.score) for h in a.hits] == [(h.id, h.score) for h in b.hits], q
        assert (a.total, a.total_exact, a.facets) == (b.total, b.total_exact, b.facets), q


def test_postgres_lookups_probe_each_title_once_and_the_count_probes_each_title(seeded, backend, monkeypatch):
    """PostgreSQL: a lookup probes each title's row of search_terms once whatever the words
    (store._term_probes), and the capped count from a small set probes each title's row by key
    (count_probes_titles); pages, totals and facets are those of the lookups in search_postings,
    one probe per title and word (UNION ALL in the per-title subquery, store._probes) or one
    with word IN (…), and of the join left to the planner."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's lookups")
    from headwater.origin.catalogue import postgres, store

    # Every lookup probes (the catalogue's lists are short enough to read whole otherwise).
    monkeypatch.setattr(store, "LOOKUP_SCAN_RATIO", 0)
    queries = [SearchQuery(q=q, with_total=True, **kw) for q in RANKED
               for kw in ({}, {"category": "drama"}, {"offset": 20})]
    statements: list[str] = []
    real = postgres._PgTx.rows
    monkeypatch.setattr(postgres._PgTx, "rows", lambda self, sql, params=(): statements.append(sql) or real(
        self, sql, params))
    termed = [seeded.search(q) for q in queries]
    assert any("FROM search_terms s WHERE s.title_id = ANY(ARRAY(" in sql for sql in statements)
    assert not any("FROM search_postings q WHERE q.title_id = f.id" in sql for sql in statements)
    assert any("CROSS JOIN LATERAL (SELECT t.category FROM titles t WHERE t.id = d.id" in sql for sql in statements)

    def same(pages: list) -> None:
        for q, a, b in zip(queries, termed, pages):
            assert [(h.id, h.score) for h in a.hits] == [(h.id, h.score) for h in b.hits], q
            assert (a.total, a.total_exact, a.facets) == (b.total, b.total_exact, b.facets), q

    monkeypatch.setattr(seeded, "search_terms", False)
    statements.clear()
    same([seeded.search(q) for q in queries])
    assert any("AND q.word = ? UNION ALL SELECT" in sql for sql in statements)

    def one_probe(n_words: int, titles: str) -> str:
        return (f"({titles}) f(id) CROSS JOIN LATERAL (SELECT q.title_id, q.word, q.impact FROM search_postings q "
                f"WHERE q.title_id = f.id AND q.word IN ({', '.join('?' * n_words)}) OFFSET 0) q")

    monkeypatch.setattr(store, "_probes", one_probe)
    monkeypatch.setattr(postgres.PostgresCatalogue, "count_probes_titles", False)
    same([seeded.search(q) for q in queries])


def test_postgres_search_terms_follow_the_postings(fresh, backend):
    """PostgreSQL: search_terms holds each indexed title's postings as one JSON object, exactly
    (every word and prefix entry, the same doubles), through publishing, a metadata change,
    withdrawal and a bulk import (store._index, _reindex)."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's search_terms")
    cat, _ = fresh
    cat.import_titles(generated(40), state=TitleState.PUBLISHED)
    t = cat.create_title(TitleDraft(title="Night Train", description="a slow night", category="drama"))
    for state in (TitleState.TRANSCODING, TitleState.PACKAGED, TitleState.PUBLISHED):
        cat.set_state(t.id, state)
    withdrawn = cat.list_titles(state=TitleState.PUBLISHED)[0].id
    cat.set_state(withdrawn, TitleState.WITHDRAWN)
    cat.update_metadata(t.id, TitleDraft(title="Night Bus Lines", description="late", category="drama"))

    def terms() -> dict[int, dict[str, float]]:
        with cat._tx(write=False) as tx:
            return {int(tid): json.loads(text) for tid, text in tx.rows("SELECT title_id, terms::text FROM search_terms")}

    def postings() -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        with cat._tx(write=False) as tx:
            for tid, w, v in tx.rows("SELECT title_id, word, impact FROM search_postings"):
                out.setdefault(int(tid), {})[w] = float(v)
        return out

    held = terms()
    assert held == postings()
    assert t.id in held and "bus" in held[t.id] and "train" not in held[t.id] and "*bu" in held[t.id]
    assert withdrawn not in held and len(held) == 40
    assert cat.search(SearchQuery(q="night bus")).hits[0].id == t.id


def test_a_groups_small_lists_are_read_as_one(fresh, monkeypatch):
    """A common word beside a prefix with many small completions: the completions' lists are read
    in one statement and walked as one list (store._top_k), and the pages, filtered or not, are
    the ones the walk gives reading each list on its own."""
    from headwater.origin.catalogue import store

    cat, _ = fresh
    rng = random.Random(7)
    letters = "abcdefghij"
    drafts = []
    for n in range(600):
        completions = ["rinn" + "".join(rng.choice(letters) for _ in range(2)) for _ in range(2)]  # of 100
        filler = [rng.choice(letters) * 3 for _ in range(n % 9)]
        # The prefix is rarer than "common" (its lists are read first); some titles hold a
        # second completion, in the description: the one in the title is the better.
        title = f"common {completions[0]}" if n % 4 == 1 else "common other"
        drafts.append(TitleDraft(title=title, description=" ".join([*completions[1:n % 8 // 4 + 1], *filler]),
                                 category=("drama", "comedy")[n % 3 % 2]))
    cat.import_titles(drafts, state=TitleState.PUBLISHED)
    monkeypatch.setattr(store, "INTERSECT_MAX", 0)  # walk, rather than score a small group outright
    monkeypatch.setattr(store, "PREFIX_OWN_LISTS", 200)  # each completion its own list
    merged = []
    real = store.SqlCatalogue._read_lists
    monkeypatch.setattr(store.SqlCatalogue, "_read_lists",
                        lambda self, tx, lists, *a: merged.append(len(lists)) or real(self, tx, lists, *a))
    queries = [SearchQuery(q="common rinn", limit=10), SearchQuery(q="common rinn", limit=10, offset=20),
               SearchQuery(q="common rinn", limit=10, category="drama")]
    pages = [[(h.id, round(h.score, 9)) for h in cat.search(q).hits] for q in queries]
    assert merged and min(merged) > 20 and all(len(p) == 10 for p in pages)
    monkeypatch.setattr(store, "SMALL_LIST", 0)
    merged.clear()
    assert [[(h.id, round(h.score, 9)) for h in cat.search(q).hits] for q in queries] == pages
    assert not merged


def test_a_typed_word_outranks_its_completions(fresh):
    # The completions share the prefix's IDF, which counts the typed word's titles too: were it
    # the completions' own (two titles here against one), "Tramway" would come first.
    cat, _ = fresh
    cat.import_titles([TitleDraft(title="Tramway"), TitleDraft(title="Tram"), TitleDraft(title="Tramways")],
                      state=TitleState.PUBLISHED)
    assert titles(cat.search(SearchQuery(q="tram"))) == ["Tram", "Tramways", "Tramway"]


def test_unpublished_titles_are_never_found(seeded):
    assert seeded.search(SearchQuery(q="secrets")).hits == ()
    assert seeded.search(SearchQuery(q="secre")).hits == ()  # not even by prefix or as a correction
    assert all(h.title != "Night Train Secrets" for h in seeded.search(SearchQuery(category="drama", limit=100)).hits)


INJECTIONS = [
    "'; DROP TABLE titles; --", "\" OR 1=1 --", "night\" OR \"", "') OR ('1'='1", "NEAR(night train)",
    "*", "title:night", "!:*&|", "night & ! train", "1; SELECT pg_sleep(5)", "\\x00\x00night",
    "night' || (SELECT string_agg(title, ',') FROM titles) || '", "%' OR '%'='", "train:* | !night",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_harmless(seeded, text):
    before = len(seeded.search(SearchQuery(category="drama", limit=100)).hits)
    page = seeded.search(SearchQuery(q=text))
    for h in page.hits:
        assert h.title != "Night Train Secrets"
    try:
        assert seeded.search(SearchQuery(q=text, category=text[:64], language=text[:64])).hits == ()
    except BadQuery:
        assert not text.isprintable()  # a NUL or control character in a filter is refused
    assert len(seeded.search(SearchQuery(category="drama", limit=100)).hits) == before
    assert titles(seeded.search(SearchQuery(q="night train")))[0] == "Night Train"


# --- titles --------------------------------------------------------------------------------------

def test_the_postings_migration_indexes_an_existing_catalogue(backend, request, tmp_path):
    """A catalogue indexed before the postings existed gets them from its migration (the
    backfill from title_search): the same search results as a catalogue indexed with them."""
    pg = request.getfixturevalue("postgres") if backend != "sqlite" else None
    config = _config(backend, pg, tmp_path)
    queries = [SearchQuery(q=q, with_total=True) for q in ("night", "night trian", "silent riv", "ana ruiz")]
    cat = open_catalogue(config)
    cat.import_titles(generated(300) + NAMED, state=TitleState.PUBLISHED)
    before = [cat.search(q) for q in queries]
    version = cat.schema_version
    postings = {"sqlite": 5, "postgresql": 4, "local": 4}[backend]  # the migration that made them
    with cat._tx(write=True) as tx:  # back to the schema before the postings
        tx.run("DROP TABLE IF EXISTS search_terms")  # PostgreSQL's copy of the postings (its 6)
        tx.run("DROP TABLE IF EXISTS search_feed")  # and its search feed (7)
        tx.run("DROP TABLE IF EXISTS search_feed_epoch")
        tx.run("DROP TABLE IF EXISTS uploads")  # and the upload records, cluster secrets (8; SQLite's 7)
        tx.run("DROP TABLE IF EXISTS cluster_secrets")
        tx.run("DROP TABLE IF EXISTS retired_versions")  # and the retired versions (9; SQLite's 8)
        tx.run("DROP TABLE search_postings")
        tx.run("DROP TABLE search_stats")
        tx.run("ALTER TABLE search_words DROP COLUMN max_impact")
        tx.run("DELETE FROM schema_version WHERE version >= ?", (postings,))
    cat.close()
    cat = open_catalogue(config)
    try:
        assert cat.schema_version == version
        assert [cat.search(q) for q in queries] == before
        assert before[0].hits and before[1].hits[0].title == "Night Train"
    finally:
        cat.close()


def test_title_lifecycle_and_search_follows_state(fresh):
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Night Train", category="drama", year=2026))
    assert t.state is TitleState.UPLOADED and cat.search(SearchQuery(q="night")).hits == ()
    with pytest.raises(IllegalTransition):
        cat.set_state(t.id, TitleState.PUBLISHED)
    cat.set_state(t.id, TitleState.TRANSCODING, progress=0.4)
    assert cat.get_title(t.id).progress == pytest.approx(0.4)
    cat.set_state(t.id, TitleState.PACKAGED)
    cat.set_state(t.id, TitleState.PUBLISHED)
    assert titles(cat.search(SearchQuery(q="night"))) == ["Night Train"]
    cat.update_metadata(t.id, TitleDraft(title="Day Bus", category="drama", year=2026))
    assert cat.search(SearchQuery(q="night")).hits == ()
    assert titles(cat.search(SearchQuery(q="day bus"))) == ["Day Bus"]
    cat.set_state(t.id, TitleState.WITHDRAWN)
    assert cat.search(SearchQuery(q="day")).hits == ()
    assert cat.search(SearchQuery(q="dya")).corrections == {}  # the vocabulary forgot its words


# --- the job queue ----------------------------------------------------------------------------

def test_enqueue_is_idempotent(fresh):
    cat, clock = fresh
    a = cat.enqueue("transcode", "upload-123", payload={"upload": "123"})
    b = cat.enqueue("transcode", "upload-123", payload={"upload": "other"})
    assert a == b and b.payload == {"upload": "123"}
    assert cat.lease("w1", ["transcode"], 30).job.id == a.id
    assert cat.lease("w2", ["transcode"], 30) is None


def test_ready_jobs_counts_due_queued_jobs_and_the_oldest(fresh):
    cat, clock = fresh
    assert cat.ready_jobs() == {}
    start = clock.time()
    cat.enqueue("transcode", "a")
    clock.advance(5)
    cat.enqueue("transcode", "b")
    cat.enqueue("transcode", "later", delay_s=60)  # not due yet: not waiting for a worker
    cat.enqueue("cdn-purge", "p")
    assert cat.ready_jobs() == {"transcode": (2, start), "cdn-purge": (1, start + 5)}
    cat.lease("w1", ["transcode"], 30)  # the oldest is taken: the next one is the oldest
    assert cat.ready_jobs()["transcode"] == (1, start + 5)
    clock.advance(60)
    assert cat.ready_jobs()["transcode"] == (2, start + 5)


def test_a_dead_workers_job_is_done_once_by_another(fresh):
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Night Train"))
    cat.set_state(t.id, TitleState.TRANSCODING)
    cat.enqueue("transcode", f"title-{t.id}", title_id=t.id)
    first = cat.lease("worker-a", ["transcode"], 30)
    assert first is not None
    cat.heartbeat(first, 30, progress=0.25)
    clock.advance(20)
    assert cat.lease("worker-b", ["transcode"], 30) is None  # still held
    clock.advance(31)  # worker-a died: no heartbeat for longer than its lease
    second = cat.lease("worker-b", ["transcode"], 30)
    assert second is not None and second.job.id == first.job.id and second.token != first.token
    assert second.job.attempts == 2
    # worker-a wakes up: everything it tries is refused (fenced by the lease token).
    for attempt in (lambda: cat.heartbeat(first, 30, progress=0.9),
                    lambda: cat.complete(first, title_state=TitleState.PACKAGED),
                    lambda: cat.fail(first, "late")):
        with pytest.raises(LeaseLost):
            attempt()
    assert cat.get_title(t.id).progress == pytest.approx(0.25)
    cat.complete(second, title_state=TitleState.PACKAGED)
    assert cat.get_job(first.job.id).state is JobState.DONE
    assert cat.get_title(t.id).state is TitleState.PACKAGED
    with pytest.raises(LeaseLost):
        cat.complete(second)
    assert cat.lease("worker-c", ["transcode"], 30) is None


def test_failures_back_off_then_die(fresh):
    cat, clock = fresh
    job = cat.enqueue("transcode", "k")
    lease = cat.lease("w", ["transcode"], 30)
    after = cat.fail(lease, "object store down")
    assert after.state is JobState.QUEUED and after.last_error == "object store down"
    delay = after.run_at - clock.time()
    assert 5 <= delay <= 10  # base 10 s, equal jitter
    assert cat.lease("w", ["transcode"], 30) is None
    clock.advance(delay)
    lease = cat.lease("w", ["transcode"], 30)
    after = cat.fail(lease, "again")
    assert 10 <= after.run_at - clock.time() <= 20  # doubled
    clock.advance(20)
    lease = cat.lease("w", ["transcode"], 30)
    assert lease.job.attempts == 3
    dead = cat.fail(lease, "third time")
    assert dead.state is JobState.FAILED and cat.get_job(job.id).state is JobState.FAILED
    clock.advance(1000)
    assert cat.lease("w", ["transcode"], 30) is None
    # A bad input is not retried at all.
    cat.enqueue("probe", "bad-input")
    lease = cat.lease("w", ["probe"], 30)
    assert cat.fail(lease, "not a video", retry=False).state is JobState.FAILED


def test_a_job_whose_workers_keep_dying_ends_failed(fresh):
    cat, clock = fresh
    job = cat.enqueue("transcode", "poison")
    for _ in range(3):
        assert cat.lease("w", ["transcode"], 10) is not None
        clock.advance(11)
    assert cat.lease("w", ["transcode"], 10) is None
    dead = cat.get_job(job.id)
    assert dead.state is JobState.FAILED and "lease expired" in dead.last_error


def test_a_transcode_that_dies_on_its_last_attempt_fails_its_title(fresh):
    """With ``fail_titles`` (the transcoder's lease) the dead job's title is failed, not left
    transcoding with nothing to move it; without it (another kind's worker) the title is kept."""
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Poison", upload="u1", owner="o"))
    other = cat.create_title(TitleDraft(title="Kept", upload="u2", owner="o"))
    cat.enqueue("transcode", "poison", title_id=t.id)
    cat.enqueue("probe", "kept", title_id=other.id)
    for _ in range(3):
        lease = cat.lease("w", ["transcode"], 10, fail_titles=True)
        cat.move_title(lease, TitleState.TRANSCODING, progress=0.1)
        clock.advance(11)
    assert cat.lease("w", ["transcode"], 10, fail_titles=True) is None
    dead = cat.get_title(t.id)
    assert dead.state is TitleState.FAILED and "lease expired" in dead.error
    for _ in range(3):
        lease = cat.lease("w", ["probe"], 10)
        cat.move_title(lease, TitleState.TRANSCODING)
        clock.advance(11)
    assert cat.lease("w", ["probe"], 10) is None
    assert cat.get_title(other.id).state is TitleState.TRANSCODING


def test_a_failed_run_moves_its_title_with_the_job_in_one_transaction(fresh):
    """``fail(move_title=True)``: retried → the title back to transcoding at 0 % with the attempt
    shown; dead → failed with the reason; withdrawn meanwhile → stays withdrawn, the job dies."""
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Flaky", upload="u1", owner="o"))
    cat.enqueue("transcode", "flaky", title_id=t.id, max_attempts=2)
    lease = cat.lease("w", ["transcode"], 30)
    cat.move_title(lease, TitleState.TRANSCODING, progress=0.6)
    job = cat.fail(lease, "object store down", move_title=True)
    title = cat.get_title(t.id)
    assert job.state is JobState.QUEUED
    assert (title.state, title.progress) == (TitleState.TRANSCODING, 0.0)
    assert title.error == "attempt 1 of 2 failed, retrying: object store down"
    clock.advance(60)
    lease = cat.lease("w", ["transcode"], 30)
    job = cat.fail(lease, "ffmpeg: exit 1", move_title=True)
    title = cat.get_title(t.id)
    assert job.state is JobState.FAILED
    assert (title.state, title.error) == (TitleState.FAILED, "ffmpeg: exit 1")
    # A fenced-out worker moves nothing.
    with pytest.raises(LeaseLost):
        cat.fail(lease, "late", move_title=True)
    assert cat.get_title(t.id).error == "ffmpeg: exit 1"
    gone = cat.create_title(TitleDraft(title="Gone", upload="u2", owner="o"))
    cat.enqueue("transcode", "gone", title_id=gone.id)
    lease = cat.lease("w", ["transcode"], 30)
    cat.move_title(lease, TitleState.TRANSCODING)
    cat.set_state(gone.id, TitleState.WITHDRAWN)
    assert cat.fail(lease, "bad input", retry=False, move_title=True).state is JobState.FAILED
    assert cat.get_title(gone.id).state is TitleState.WITHDRAWN


def test_a_failed_or_withdrawn_title_is_retried_once(fresh):
    cat, clock = fresh
    t = cat.create_title(TitleDraft(title="Second Try", upload="u1", owner="o"))
    cat.enqueue("transcode", f"transcode:{t.id}:u1", title_id=t.id)
    with pytest.raises(IllegalTransition, match="uploaded"):
        cat.retry_title(t.id, "transcode", payload={})
    lease = cat.lease("w", ["transcode"], 10)
    cat.move_title(lease, TitleState.FAILED, error="ffmpeg: exit 1")
    with pytest.raises(IllegalTransition, match="still queued or running"):  # its job is still leased
        cat.retry_title(t.id, "transcode", payload={})
    cat.fail(lease, "ffmpeg: exit 1", retry=False)
    clock.advance(1)
    title, job = cat.retry_title(t.id, "transcode", payload={"bucket": "uploads", "key": "uploads/u1"})
    assert (title.state, title.error, title.progress) == (TitleState.TRANSCODING, None, 0.0)
    assert job.key.startswith(f"transcode:{t.id}:u1:retry:") and job.state is JobState.QUEUED
    assert job.payload == {"bucket": "uploads", "key": "uploads/u1"} and job.title_id == t.id
    with pytest.raises(IllegalTransition, match="transcoding"):
        cat.retry_title(t.id, "transcode", payload={})
    with pytest.raises(TitleNotFound):
        cat.retry_title(10**9, "transcode", payload={})
    # Withdrawn after publishing: retried again as a new job (a new version).
    lease = cat.lease("w", ["transcode"], 10)
    assert lease.job.id == job.id
    cat.move_title(lease, TitleState.PACKAGED)
    cat.complete(lease, title_state=TitleState.PUBLISHED)
    cat.set_state(t.id, TitleState.WITHDRAWN)
    _, again = cat.retry_title(t.id, "transcode", payload={})
    assert again.id != job.id and again.key != job.key


def test_racing_retries_queue_one_job(fresh):
    """Eight threads, each with its own connection, retry one failed title: one wins (a
    compare-and-set on the title's state and updated time), the others get IllegalTransition."""
    cat, _ = fresh
    t = cat.create_title(TitleDraft(title="Contested", upload="u1", owner="o"))
    cat.set_state(t.id, TitleState.FAILED, error="x")
    barrier = threading.Barrier(8)
    won: list[int] = []
    refused: list[str] = []

    def retry() -> None:
        other = open_catalogue(cat.config)
        try:
            barrier.wait()
            try:
                won.append(other.retry_title(t.id, "transcode", payload={})[1].id)
            except IllegalTransition as e:
                refused.append(str(e))
        finally:
            other.close()

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(won) == 1 and len(refused) == 7, (won, refused)
    real = open_catalogue(cat.config)  # the threads' clock: their job is due on it
    try:
        assert real.lease("w", ["transcode"], 10).job.id == won[0] and real.lease("w", ["transcode"], 10) is None
    finally:
        real.close()


def test_kinds_select_jobs(fresh):
    cat, clock = fresh
    cat.enqueue("package", "p1")
    assert cat.lease("w", ["transcode"], 10) is None
    assert cat.lease("w", ["transcode", "package"], 10).job.kind == "package"


def test_racing_workers_each_job_exactly_once(fresh):
    """Four threads lease from one queue on the real clock: every job is completed once."""
    cat, _ = fresh
    real = open_catalogue(cat.config)  # the system clock: leases long enough not to expire
    try:
        for i in range(40):
            real.enqueue("transcode", f"job-{i}")
        done: list[int] = []
        lock = threading.Lock()

        def worker(name: str) -> None:
            while (lease := real.lease(name, ["transcode"], 60)) is not None:
                real.complete(lease)
                with lock:
                    done.append(lease.job.id)

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert sorted(done) == sorted(set(done)) and len(done) == 40
    finally:
        real.close()
