"""Search and the lists a search form needs: public routes over published titles only.

``GET /api/search?q=&category=&language=&year=&duration=&page=&per_page=`` (``year`` and
``duration`` as ``a..b``, ``a..``, ``..b`` or one value; ``duration`` in seconds) answers::

    {"q": "night trian", "hits": [{"id", "title", "category", "year", "language", "duration_s",
     "score"}], "total": 2, "total_exact": true, "page": 1, "per_page": 20, "pages": 1,
     "next": null, "corrections": {"trian": "train"}, "facets": {"category": {"drama": 2}},
     "stale_seconds": null}

``total`` is exact up to ``exact_total_max`` matches (200; ``[origin.catalogue]``); past it
``total_exact`` is false, ``total`` is that bound ("more than 200"), ``pages`` counts only its
pages and the facets count ``exact_total_max`` + 1 matches; ``next`` pages on to ``max_offset``
whatever the total says.
``stale_seconds`` is null when the page saw every change committed before the search; while
the catalogue's database cannot be reached (PostgreSQL, ``search = "local"``) the page comes
from this host's search index alone, ``stale_seconds`` says how old it is (whole seconds since it
last matched the database, rounded up) and so does the ``X-Search-Stale`` header; past
``search_stale_max_seconds`` the answer is 503 ``search_unavailable`` with Retry-After.
``GET /api/categories`` and ``GET /api/languages`` answer ``{"categories": [{"slug", "name"}]}``
and ``{"languages": [{"code", "name"}]}``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from urllib.parse import urlencode

from headwater.http import Request, Response

from ..catalogue import SearchPage, parse_search_params
from ..catalogue.breaker import BreakerState
from ..errors import BadSearch, SearchUnavailable
from .runner import CatalogueRunner
from .wire import Route, json_response, query_params

__all__ = ["SearchApi", "search_json"]

_PARAMS = frozenset({"q", "category", "language", "year", "duration", "page", "per_page"})


class SearchApi:
    """The handlers of ``/api/search``, ``/api/categories`` and ``/api/languages``."""

    def __init__(self, *, catalogue: CatalogueRunner) -> None:
        self.catalogue = catalogue
        self.counts = {"search_stale_answers": 0, "search_unavailable": 0}

    def routes(self) -> list[Route]:
        """This module's routes, for the app's table."""
        return [Route.of("GET HEAD", r"/api/search", self.search),
                Route.of("GET HEAD", r"/api/categories", self.categories),
                Route.of("GET HEAD", r"/api/languages", self.languages)]

    async def search(self, request: Request, args: tuple[str, ...]) -> Response:
        params = query_params(request, _PARAMS)
        limits = self.catalogue.catalogue.config.search
        per_page = _page_number(params, "per_page", limits.default_page_size, limits.max_page_size)
        page = _page_number(params, "page", 1, limits.max_offset // per_page + 1)
        query = parse_search_params(
            {**{k: v for k, v in params.items() if k not in ("page", "per_page")},
             "limit": str(per_page), "offset": str((page - 1) * per_page)}, limits)
        query = replace(query, with_total=True)
        try:
            result = await self.catalogue.call(lambda cat: cat.search(query))
        except SearchUnavailable:
            self.counts["search_unavailable"] += 1
            raise
        doc = search_json(result, params, page=page, per_page=per_page)
        if doc["stale_seconds"] is None:
            return json_response(200, doc)
        self.counts["search_stale_answers"] += 1
        return json_response(200, doc, (("x-search-stale", str(doc["stale_seconds"])),))

    def statistics(self) -> dict[str, float]:
        """Searches answered stale and refused (the database away); the local index's age
        (seconds since it last matched the database; -1: not yet; 0 without one) and whether
        searches skip the database now (the breaker open or probing)."""
        index = getattr(self.catalogue.catalogue, "search_index", None)
        if index is None:  # SQLite, or search = "database": always current, never skipped
            return {**self.counts, "search_index_age_seconds": 0.0, "search_database_skipped": 0}
        age = index.staleness_s()
        return {**self.counts, "search_index_age_seconds": -1.0 if age is None else age,
                "search_database_skipped": int(index.breaker.state is not BreakerState.CLOSED)}

    async def categories(self, request: Request, args: tuple[str, ...]) -> Response:
        rows = await self.catalogue.call(lambda cat: cat.categories())
        return json_response(200, {"categories": [{"slug": s, "name": n} for s, n in rows]})

    async def languages(self, request: Request, args: tuple[str, ...]) -> Response:
        rows = await self.catalogue.call(lambda cat: cat.languages())
        return json_response(200, {"languages": [{"code": c, "name": n} for c, n in rows]})


def _page_number(params: dict[str, str], key: str, default: int, hi: int) -> int:
    raw = params.get(key, "")
    if raw == "":
        return default
    if len(raw) > 9 or not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= hi:
        raise BadSearch(f"{key} must be an integer within 1..{hi}")
    return int(raw)


def search_json(result: SearchPage, params: dict[str, str], *, page: int, per_page: int) -> dict:
    """The search answer (see the module docstring)."""
    total = result.total or 0
    nxt = None
    if result.next_offset is not None:
        nxt = "/api/search?" + urlencode({**params, "page": str(page + 1), "per_page": str(per_page)})
    return {
        "q": params.get("q", ""),
        "hits": [{"id": h.id, "title": h.title, "category": h.category, "year": h.year, "language": h.language,
                  "duration_s": h.duration_s, "score": round(h.score, 6)} for h in result.hits],
        "total": total, "total_exact": result.total_exact, "page": page, "per_page": per_page,
        "pages": -(-total // per_page), "next": nxt, "corrections": dict(result.corrections),
        "facets": {"category": dict(result.facets)},
        "stale_seconds": None if result.stale_s is None else math.ceil(result.stale_s),
    }
