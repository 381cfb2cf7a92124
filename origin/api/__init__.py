"""The origin's JSON API over the catalogue: titles (``/api/titles``), search (``/api/search``)
and the lists a search form needs (``/api/categories``, ``/api/languages``).

Each module here owns its routes (:class:`~.wire.Route` lists); ``origin/app.py`` only routes to
them. Catalogue calls are blocking database calls: they run in worker threads through
:class:`~.runner.CatalogueRunner`, never on the event loop.
"""

from __future__ import annotations

from headwater.lazy import lazy_exports

# Names are imported on first use (headwater.lazy): reading this package's config
# does not load its servers.
_EXPORTS = {
    "CatalogueRunner": ".runner",
    "SearchApi": ".search",
    "TitlesApi": ".titles",
    "Route": ".wire",
}

__all__ = ["CatalogueRunner", "Route", "SearchApi", "TitlesApi"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
