"""Search requests, sans-IO: bounds, filters, and the plan a backend turns into its own query.

A query string becomes at most ``max_terms`` normalised words (:mod:`.text`). Each becomes a
:class:`TermGroup`: the word itself plus, when the vocabulary does not know it, its nearest
known words (one edit away, most frequent first); the last word also matches as a prefix
(search as you type). Every group must match (AND); a group matches if any alternative does.

The backends never put user text into SQL: the match expression is built here from normalised
words, which hold letters and digits only, and is passed as a bound parameter; filters are bound
parameters too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .errors import BadQuery
from .text import edit_distance, max_edits, words

__all__ = ["SearchLimits", "SearchQuery", "TermGroup", "SearchHit", "SearchPage",
           "parse_search_params", "check_query", "query_words", "plan_groups", "fts5_expression",
           "tsquery_expression"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchLimits:
    """Bounds on one search request (what one client can make the database do)."""

    max_query_chars: int = 200
    max_terms: int = 8
    max_page_size: int = 100
    default_page_size: int = 20
    max_offset: int = 1000
    corrections_per_term: int = 3
    # A search's total and facets are exact up to this many matches; past it the total is
    # "more than exact_total_max" (total_exact False) and the facets count that many matches
    # (as Elasticsearch's track_total_hits): the count stops there, and on a common word the
    # count was the larger part of a search's cost (bench/README.md, issue 14).
    exact_total_max: int = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchQuery:
    """One search: free text and filters (each ``None`` when absent), one page."""

    q: str = ""
    category: str | None = None
    language: str | None = None
    year_min: int | None = None
    year_max: int | None = None
    duration_min_s: float | None = None
    duration_max_s: float | None = None
    limit: int = 20
    offset: int = 0
    # Viewers see published titles only; the creator tools may ask for every state.
    published_only: bool = True
    # Also count the matches (up to a cap) and their categories: SearchPage.total and .facets.
    with_total: bool = False


@dataclass(frozen=True, slots=True)
class TermGroup:
    """One query word's alternatives; ``prefix`` makes the first (the word as typed) a prefix."""

    alternatives: tuple[str, ...]
    prefix: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchHit:
    id: int
    title: str
    category: str | None
    year: int | None
    language: str | None
    duration_s: float | None
    score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchPage:
    hits: tuple[SearchHit, ...]
    offset: int
    limit: int
    next_offset: int | None
    # query word → the known word it was read as ("trian" → "train"), for "did you mean".
    corrections: Mapping[str, str] = field(default_factory=dict)
    # With SearchQuery.with_total: the number of matches, counted up to
    # SearchLimits.exact_total_max (total_exact is False past it, the total is then that bound
    # and means "more than", and the facets count only that many matches).
    total: int | None = None
    total_exact: bool = True
    # category → matches in it (with_total only), most first.
    facets: Mapping[str, int] = field(default_factory=dict)
    # None: the page is current (it saw every change committed before the search). Else it was
    # answered by the local search index alone, the database being away, and may miss the
    # changes of the last stale_s seconds (since the index last matched the feed's head).
    stale_s: float | None = None


def _int(params: Mapping[str, str], key: str, lo: int, hi: int) -> int | None:
    raw = params.get(key)
    if raw is None or raw == "":
        return None
    # isascii: "²".isdigit() is true, and int() refuses it. One sign at most: "--5" is not a
    # number to int() (a ValueError, a 500, if it got that far).
    digits = raw.strip()
    if digits.startswith("-"):
        digits = digits[1:]
    if len(raw) > 12 or not raw.isascii() or not digits.isdigit():
        raise BadQuery(f"{key} must be an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadQuery(f"{key} must be within {lo}..{hi}")
    return value


def _range(params: Mapping[str, str], key: str, lo: int, hi: int) -> tuple[int | None, int | None]:
    """``key=2020..2026``, ``key=2020..``, ``key=..2026`` or ``key=2024``; or ``key_min``/``key_max``."""
    raw = params.get(key)
    if raw:
        if len(raw) > 32:
            raise BadQuery(f"{key} is too long")
        a, sep, b = raw.partition("..")
        lo_v = _int({key: a}, key, lo, hi)
        hi_v = _int({key: b}, key, lo, hi) if sep else lo_v
    else:
        lo_v, hi_v = _int(params, f"{key}_min", lo, hi), _int(params, f"{key}_max", lo, hi)
    if lo_v is not None and hi_v is not None and lo_v > hi_v:
        raise BadQuery(f"{key}: the lower bound is above the upper")
    return lo_v, hi_v


def _label(params: Mapping[str, str], key: str) -> str | None:
    raw = params.get(key)
    if raw is None or raw == "":
        return None
    if len(raw) > 64 or not raw.isprintable():
        raise BadQuery(f"{key} must be at most 64 printable characters")
    return raw


def parse_search_params(params: Mapping[str, str], limits: SearchLimits = SearchLimits(), *,
                        published_only: bool = True) -> SearchQuery:
    """A :class:`SearchQuery` from URL query parameters (``q``, ``category``, ``language``,
    ``year``, ``duration`` in seconds as ``a..b``, ``limit``, ``offset``), or :class:`BadQuery`."""
    q = params.get("q", "") or ""
    if len(q) > limits.max_query_chars:
        raise BadQuery(f"q is longer than {limits.max_query_chars} characters")
    year_min, year_max = _range(params, "year", 0, 9999)
    dur_min, dur_max = _range(params, "duration", 0, 7 * 24 * 3600)
    limit = _int(params, "limit", 1, limits.max_page_size)
    offset = _int(params, "offset", 0, limits.max_offset)
    return SearchQuery(q=q, category=_label(params, "category"), language=_label(params, "language"),
                       year_min=year_min, year_max=year_max,
                       duration_min_s=None if dur_min is None else float(dur_min),
                       duration_max_s=None if dur_max is None else float(dur_max),
                       limit=limit or limits.default_page_size, offset=offset or 0,
                       published_only=published_only)


def check_query(query: SearchQuery, limits: SearchLimits) -> None:
    """Raise :class:`BadQuery` for a query built in code that breaks the limits."""
    if len(query.q) > limits.max_query_chars:
        raise BadQuery(f"q is longer than {limits.max_query_chars} characters")
    if not 1 <= query.limit <= limits.max_page_size:
        raise BadQuery(f"limit must be within 1..{limits.max_page_size}")
    if not 0 <= query.offset <= limits.max_offset:
        raise BadQuery(f"offset must be within 0..{limits.max_offset}")
    for name in ("category", "language"):
        value = getattr(query, name)
        if value is not None and (len(value) > 64 or not value.isprintable()):
            raise BadQuery(f"{name} must be at most 64 printable characters")


def query_words(q: str, limits: SearchLimits) -> list[str]:
    """The distinct normalised words of ``q`` in order, at most ``limits.max_terms``."""
    out: list[str] = []
    for w in words(q[:limits.max_query_chars]):
        if w not in out:
            out.append(w)
    if len(out) > limits.max_terms:
        raise BadQuery(f"more than {limits.max_terms} words")
    return out


def plan_groups(terms: list[str], known: set[str], candidates: Mapping[str, Iterable[tuple[str, int]]],
                limits: SearchLimits) -> tuple[list[TermGroup], dict[str, str]]:
    """The groups to match, and the corrections made.

    ``known`` holds the terms the vocabulary has exactly; ``candidates`` maps each other term
    to vocabulary words near it with their document counts (a backend's lookup of
    :func:`~.text.deletions`).
    """
    groups: list[TermGroup] = []
    corrections: dict[str, str] = {}
    for i, term in enumerate(terms):
        last = i == len(terms) - 1
        alts = [term]
        if term not in known and max_edits(term):
            scored = []
            for word, docs in candidates.get(term, ()):
                d = edit_distance(term, word, limit=max_edits(term))
                if 0 < d <= max_edits(term):
                    scored.append((d, -docs, word))
            scored.sort()
            for _, _, word in scored[:limits.corrections_per_term]:
                alts.append(word)
            if scored:
                corrections[term] = scored[0][2]
        groups.append(TermGroup(tuple(alts), prefix=last))
    return groups, corrections


def _fts5_word(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def fts5_expression(groups: list[TermGroup]) -> str:
    """The FTS5 MATCH expression: ``("night") AND ("trian"* OR "train")``."""
    parts = []
    for g in groups:
        alts = [_fts5_word(w) + ("*" if g.prefix and j == 0 else "") for j, w in enumerate(g.alternatives)]
        parts.append("(" + " OR ".join(alts) + ")")
    return " AND ".join(parts)


def _ts_word(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def tsquery_expression(groups: list[TermGroup]) -> str:
    """The ``to_tsquery('simple', …)`` text: ``('night') & ('trian':* | 'train')``."""
    parts = []
    for g in groups:
        alts = [_ts_word(w) + (":*" if g.prefix and j == 0 else "") for j, w in enumerate(g.alternatives)]
        parts.append("(" + " | ".join(alts) + ")")
    return " & ".join(parts)
