"""The origin's catalogue and job queue: titles and their publish state, ranked typo-tolerant
search, and the durable queue the transcode workers lease jobs from, on SQLite (embedded) or
PostgreSQL (several origin hosts) behind one interface (:class:`~.store.SqlCatalogue`).

``open_catalogue(config)`` picks the backend from :class:`~.config.CatalogueConfig`.
"""

from __future__ import annotations

import random

from headwater.clock import SYSTEM_CLOCK, Clock

from .config import CatalogueConfig, read_catalogue
from .errors import (BackendUnavailable, BadQuery, CatalogueError, IllegalTransition, InvalidTitle,
                     JobNotFound, LeaseLost, TitleNotFound)
from .query import SearchHit, SearchLimits, SearchPage, SearchQuery, parse_search_params
from .records import Job, JobState, Lease, Person, Rendition, Title, TitleDraft, TitleState
from .store import SqlCatalogue

__all__ = [
    "open_catalogue", "CatalogueConfig", "read_catalogue", "SqlCatalogue",
    "CatalogueError", "BadQuery", "InvalidTitle", "TitleNotFound", "IllegalTransition", "LeaseLost",
    "JobNotFound", "BackendUnavailable",
    "SearchQuery", "SearchLimits", "SearchPage", "SearchHit", "parse_search_params",
    "Title", "TitleDraft", "TitleState", "Person", "Rendition", "Job", "JobState", "Lease",
]


def open_catalogue(config: CatalogueConfig, *, clock: Clock = SYSTEM_CLOCK,
                   rng: random.Random | None = None) -> SqlCatalogue:
    """Open (and migrate) the catalogue that ``config`` names."""
    if config.backend == "postgresql":
        from .postgres import PostgresCatalogue  # psycopg is imported only where it is used
        return PostgresCatalogue(config, clock=clock, rng=rng)
    from .sqlite import SqliteCatalogue
    return SqliteCatalogue(config, clock=clock, rng=rng)
