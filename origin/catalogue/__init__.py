"""The origin's catalogue and job queue: titles and their publish state, ranked typo-tolerant
search, and the durable queue the transcode workers lease jobs from, on SQLite (embedded) or
PostgreSQL (several origin hosts) behind one interface (:class:`~.store.SqlCatalogue`).

``open_catalogue(config)`` picks the backend from :class:`~.config.CatalogueConfig`.
"""

from __future__ import annotations

import random

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.lazy import lazy_exports

# Names are imported on first use (headwater.lazy): reading this package's config
# does not load its servers.
_EXPORTS = {
    "CatalogueConfig": ".config",
    "read_catalogue": ".config",
    "BackendUnavailable": ".errors",
    "SearchUnavailable": ".errors",
    "BadQuery": ".errors",
    "CatalogueError": ".errors",
    "IllegalTransition": ".errors",
    "InvalidTitle": ".errors",
    "JobNotFound": ".errors",
    "LeaseLost": ".errors",
    "TitleNotFound": ".errors",
    "SearchHit": ".query",
    "SearchLimits": ".query",
    "SearchPage": ".query",
    "SearchQuery": ".query",
    "parse_search_params": ".query",
    "Job": ".records",
    "JobState": ".records",
    "Lease": ".records",
    "Person": ".records",
    "Rendition": ".records",
    "Title": ".records",
    "TitleDraft": ".records",
    "TitleState": ".records",
    "SqlCatalogue": ".store",
    "RetiredVersion": ".versions",
}

__all__ = [
    "open_catalogue", "CatalogueConfig", "read_catalogue", "SqlCatalogue",
    "CatalogueError", "BadQuery", "InvalidTitle", "TitleNotFound", "IllegalTransition", "LeaseLost",
    "JobNotFound", "BackendUnavailable", "SearchUnavailable",
    "SearchQuery", "SearchLimits", "SearchPage", "SearchHit", "parse_search_params",
    "Title", "TitleDraft", "TitleState", "Person", "Rendition", "Job", "JobState", "Lease",
    "RetiredVersion",
]


def open_catalogue(config: CatalogueConfig, *, clock: Clock = SYSTEM_CLOCK,
                   rng: random.Random | None = None) -> SqlCatalogue:
    """Open (and migrate) the catalogue that ``config`` names."""
    if config.backend == "postgresql":
        from .postgres import PostgresCatalogue  # psycopg is imported only where it is used
        return PostgresCatalogue(config, clock=clock, rng=rng)
    from .sqlite import SqliteCatalogue
    return SqliteCatalogue(config, clock=clock, rng=rng)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
