"""The catalogue's sans-IO parts: normalised words, edit distance, symmetric deletion, the query
plan and its match expressions, request bounds, backoff, the title state machine, the config."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from headwater.config import ConfigError, Reader
from headwater.origin.catalogue import BadQuery, IllegalTransition, TitleState
from headwater.origin.catalogue.backoff import Backoff
from headwater.origin.catalogue.config import read_catalogue
from headwater.origin.catalogue.query import (SearchLimits, fts5_expression, parse_search_params, plan_groups,
                                              query_words, tsquery_expression)
from headwater.origin.catalogue.records import check_transition
from headwater.origin.catalogue.text import deletions, edit_distance, words


def test_words_fold_case_and_diacritics_and_split_on_punctuation():
    assert words("Último TREN: Café-Noir's") == ["ultimo", "tren", "cafe", "noir", "s"]
    assert words("'; DROP TABLE x; --") == ["drop", "table", "x"]
    assert words("a\x00b \"c\"*") == ["a", "b", "c"]
    assert len(words("x" * 500)[0]) == 40


@pytest.mark.parametrize("a,b,d", [("trian", "train", 1), ("nigth", "night", 1), ("rivr", "river", 1),
                                   ("kitten", "sitting", 3), ("same", "same", 0), ("ab", "ba", 1)])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b, limit=2) == min(d, 3)


@given(st.text(alphabet="abcdef", min_size=2, max_size=8), st.integers(0, 7), st.sampled_from("abcdef"))
def test_one_edit_apart_share_a_deletion(word, i, c):
    """Whatever single edit made the typo, the typo and the word share a deletion variant."""
    i %= len(word)
    for typo in (word[:i] + c + word[i + 1:], word[:i] + word[i + 1:], word[:i] + c + word[i:],
                 word[:i] + word[i + 1:i + 2] + word[i:i + 1] + word[i + 2:]):
        if typo and edit_distance(typo, word) <= 1:
            assert deletions(typo) & deletions(word)


def test_plan_corrects_unknown_words_and_keeps_the_last_as_prefix():
    limits = SearchLimits()
    groups, corr = plan_groups(["night", "trian"], {"night"}, {"trian": [("train", 10), ("trial", 50),
                                                                           ("triangle", 3)]}, limits)
    assert groups[0].alternatives == ("night",) and not groups[0].prefix
    assert groups[1].alternatives == ("trian", "trial", "train") and groups[1].prefix
    assert corr == {"trian": "trial"}  # equal distance: the more frequent word is the reading
    assert fts5_expression(groups) == '("night") AND ("trian"* OR "trial" OR "train")'
    assert tsquery_expression(groups) == "('night') & ('trian':* | 'trial' | 'train')"


def test_short_words_are_not_corrected():
    groups, corr = plan_groups(["ab"], set(), {"ab": [("abc", 1)]}, SearchLimits())
    assert groups[0].alternatives == ("ab",) and corr == {}


def test_query_bounds():
    limits = SearchLimits(max_terms=3, max_query_chars=50, max_page_size=10, max_offset=20)
    with pytest.raises(BadQuery):
        query_words("a b c d", limits)
    assert query_words("a a b", limits) == ["a", "b"]
    with pytest.raises(BadQuery):
        parse_search_params({"q": "x" * 51}, limits)
    with pytest.raises(BadQuery):
        parse_search_params({"limit": "11"}, limits)
    with pytest.raises(BadQuery):
        parse_search_params({"offset": "21"}, limits)
    with pytest.raises(BadQuery):
        parse_search_params({"year": "2026..2020"}, limits)
    with pytest.raises(BadQuery):
        parse_search_params({"year": "1; DROP"}, limits)
    with pytest.raises(BadQuery):
        parse_search_params({"category": "a\x00b"}, limits)
    q = parse_search_params({"q": "night", "year": "2020..", "duration": "..3600", "language": "en"}, limits)
    assert (q.year_min, q.year_max, q.duration_max_s, q.language) == (2020, None, 3600.0, "en")
    assert parse_search_params({"year": "2024"}, limits).year_max == 2024


def test_backoff_doubles_with_jitter_and_caps():
    b = Backoff(base_s=10, cap_s=100)
    rng = random.Random(3)
    for attempt, nominal in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (50, 100)):
        d = b.delay(attempt, rng)
        assert nominal / 2 <= d <= nominal
    assert len({round(b.delay(3, rng), 6) for _ in range(20)}) > 10  # jittered


def test_title_state_machine():
    check_transition(TitleState.UPLOADED, TitleState.TRANSCODING)
    check_transition(TitleState.PACKAGED, TitleState.PUBLISHED)
    for a, b in ((TitleState.UPLOADED, TitleState.PUBLISHED), (TitleState.PUBLISHED, TitleState.UPLOADED),
                 (TitleState.TRANSCODING, TitleState.PUBLISHED)):
        with pytest.raises(IllegalTransition):
            check_transition(a, b)


def test_config(tmp_path, monkeypatch):
    r = Reader("cluster.toml", "[origin.catalogue]\nbackend = \"mysql\"\n", root=tmp_path)
    cfg = read_catalogue(r, {}, "origin.catalogue", tmp_path / "origin")
    assert cfg.backend == "sqlite" and cfg.path == tmp_path / "origin" / "catalogue.sqlite3"
    with pytest.raises(ConfigError, match="backend"):
        read_catalogue(r, {"backend": "mysql"}, "origin.catalogue", tmp_path)
    with pytest.raises(ConfigError, match="dsn"):
        read_catalogue(r, {"backend": "postgresql"}, "origin.catalogue", tmp_path)
    with pytest.raises(ConfigError, match="password"):
        read_catalogue(r, {"backend": "postgresql", "dsn": "host=x password=y"}, "origin.catalogue", tmp_path)
    monkeypatch.setenv("HW_TEST_DSN", "host=db1 dbname=hw")
    cfg = read_catalogue(r, {"backend": "postgresql", "dsn_env": "HW_TEST_DSN", "max_page_size": 50},
                         "origin.catalogue", tmp_path)
    assert cfg.dsn == "host=db1 dbname=hw" and cfg.search.max_page_size == 50
    # PostgreSQL searches a local index in the origin's data dir unless told to search the database.
    assert cfg.search_index == tmp_path / "search-index.sqlite3"
    assert read_catalogue(r, {"backend": "postgresql", "dsn": "host=x", "search": "database"},
                          "origin.catalogue", tmp_path).search_index is None
    with pytest.raises(ConfigError, match="origin.catalogue.search"):
        read_catalogue(r, {"backend": "postgresql", "dsn": "host=x", "search": "elastic"}, "origin.catalogue", tmp_path)
    with pytest.raises(ConfigError, match="origin.catalogue.search"):
        read_catalogue(r, {"search": 3}, "origin.catalogue", tmp_path)
    assert read_catalogue(r, {"search": "database"}, "origin.catalogue", tmp_path).search_index is None  # SQLite
    with pytest.raises(ConfigError, match="unknown key"):
        read_catalogue(r, {"bogus": 1}, "origin.catalogue", tmp_path)
    assert cfg.mmap_mib == 1024  # (the default; SQLite's)
    assert read_catalogue(r, {"mmap_mib": 0}, "origin.catalogue", tmp_path).mmap_mib == 0
    with pytest.raises(ConfigError, match="mmap_mib"):
        read_catalogue(r, {"mmap_mib": -1}, "origin.catalogue", tmp_path)
    with pytest.raises(ConfigError, match="mmap_mib"):
        read_catalogue(r, {"backend": "postgresql", "dsn": "host=x", "mmap_mib": 8}, "origin.catalogue", tmp_path)
    assert cfg.search.exact_total_max == 200  # (the default)
    assert read_catalogue(r, {"exact_total_max": 1100}, "origin.catalogue", tmp_path).search.exact_total_max == 1100
    with pytest.raises(ConfigError, match="exact_total_max"):
        read_catalogue(r, {"exact_total_max": 0}, "origin.catalogue", tmp_path)
