"""The search benchmark's pieces on a small catalogue (SQLite only, a few seconds): the bulk
import builds the same vocabulary and people as titles published one by one, and the benchmark
runs end to end and reports every query kind."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from headwater.bench import search as bench
from headwater.origin.catalogue import CatalogueConfig, SearchQuery, TitleState, open_catalogue


def _vocabulary(cat) -> tuple[list[tuple], list[tuple], list[tuple]]:
    with cat._tx(write=False) as tx:
        return (tx.rows("SELECT word, docs FROM search_words ORDER BY word"),
                tx.rows("SELECT variant, word FROM search_deletions ORDER BY variant, word"),
                tx.rows("SELECT tp.title_id, tp.position, p.name, tp.role FROM title_people tp "
                        "JOIN people p ON p.id = tp.person_id ORDER BY tp.title_id, tp.position"))


def test_bulk_import_matches_titles_published_one_by_one(tmp_path):
    drafts = bench.generate_catalogue(60, seed=3).drafts
    bulk = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "bulk.sqlite3"))
    single = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "single.sqlite3"))
    with bulk, single:
        bulk.import_titles(drafts[:30], state=TitleState.PUBLISHED)
        bulk.import_titles(drafts[30:], state=TitleState.PUBLISHED)
        for d in drafts:
            t = single.create_title(d)
            for s in (TitleState.TRANSCODING, TitleState.PACKAGED, TitleState.PUBLISHED):
                single.set_state(t.id, s)
        words, variants, people = _vocabulary(bulk)
        assert (words, variants, people) == _vocabulary(single)
        assert max(n for _, n in words) > 1  # words shared by several titles were counted once each
        assert bulk.get_title(5).people == single.get_title(5).people
        assert bulk.get_title(5).state is TitleState.PUBLISHED and bulk.get_title(5).progress == 1
        q = SearchQuery(q=drafts[7].title, with_total=True)
        assert bulk.search(q) == single.search(q)


def test_bench_runs_every_query_kind(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--titles", "400", "--backend", "sqlite", "--queries", "35", "--work-dir",
                       str(tmp_path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())["backends"]["sqlite"]
    assert set(result["stats"]) == {*bench.KINDS, "all"} and result["stats"]["all"]["n"] == 35
    assert all(s["p99_ms"] >= s["p50_ms"] > 0 for s in result["stats"].values())
    assert len(result["ceilings"]) == 2
    assert "as_you_type" in capsys.readouterr().out


def test_bench_keeps_its_postgresql_folder_and_reuses_it(tmp_path):
    """--pg-dir: the throwaway server's folder is kept; the next run starts on it again and
    reuses the seeded catalogue (seeded once), with --pg-shared-buffers and --pg-prewarm."""
    from headwater.bench.postgres_server import find_initdb

    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    # Outside pytest's folders, which the server's own user (as root: postgres) cannot enter.
    parent = Path(tempfile.mkdtemp(prefix="hw-bench-pg-"))
    parent.chmod(0o755)
    folder = parent / "pg"
    runs = []
    try:
        # The first run searches the local index (built, timed, its pages checked against the
        # database's search), the second the database.
        for n, extra in enumerate((["--check-pages", "--database-away"], ["--search", "database"])):
            out = tmp_path / f"r{n}.json"
            assert bench.main(["--titles", "200", "--backend", "postgresql", "--queries", "14", "--pg-dir",
                               str(folder), "--pg-shared-buffers", "32MB", "--pg-prewarm", "--json", str(out),
                               "--work-dir", str(tmp_path), *extra]) == 0
            runs.append(json.loads(out.read_text())["backends"]["postgresql"])
            assert (folder / "data" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    assert runs[0]["seed_s"] is not None and runs[1]["seed_s"] is None
    assert runs[1]["stats"]["all"]["n"] == 14
    assert runs[0]["search"] == "local" and runs[0]["index_build_s"] > 0
    same = runs[0]["same_pages"]
    assert same["ids"] == same["hits"] == same["totals"] == 14 and same["facets_of_exact"] == same["exact_totals"]
    assert "local index alone (no feed head, no hit check)" in runs[0]["ceilings"]
    assert runs[0]["away"]["all"]["n"] == 14 and runs[1]["away"] is None  # then restarted on its folder
    assert runs[1]["search"] == "database" and runs[1]["index_build_s"] is None
