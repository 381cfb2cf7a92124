"""The origin's JSON API over the catalogue: titles (``/api/titles``), search (``/api/search``)
and the lists a search form needs (``/api/categories``, ``/api/languages``).

Each module here owns its routes (:class:`~.wire.Route` lists); ``origin/app.py`` only routes to
them. Catalogue calls are blocking database calls: they run in worker threads through
:class:`~.runner.CatalogueRunner`, never on the event loop.
"""

from __future__ import annotations

from .runner import CatalogueRunner
from .search import SearchApi
from .titles import TitlesApi
from .wire import Route

__all__ = ["CatalogueRunner", "Route", "SearchApi", "TitlesApi"]
