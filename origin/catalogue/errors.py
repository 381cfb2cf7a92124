"""The catalogue's exceptions, each with the HTTP status and JSON code the origin answers with.

They derive from :class:`CatalogueError`; the origin daemon's error root can adopt it as a
subclass, or map ``http_status`` and ``code`` as they are.
"""

from __future__ import annotations

__all__ = ["CatalogueError", "BadQuery", "InvalidTitle", "TitleNotFound", "IllegalTransition",
           "LeaseLost", "JobNotFound", "BackendUnavailable", "SearchUnavailable"]


class CatalogueError(Exception):
    """Root of every error the catalogue raises."""

    http_status: int = 500
    code: str = "catalogue_error"


class BadQuery(CatalogueError):
    """A search request out of bounds: too long, too many words, a bad filter or page."""

    http_status = 400
    code = "bad_query"


class InvalidTitle(CatalogueError):
    """Title metadata that breaks a rule (empty title, year out of range, unknown language)."""

    http_status = 422
    code = "invalid_title"


class TitleNotFound(CatalogueError):
    """No title with this id."""

    http_status = 404
    code = "title_not_found"


class IllegalTransition(CatalogueError):
    """A publish-state change the state machine forbids (published → uploaded)."""

    http_status = 409
    code = "illegal_transition"


class JobNotFound(CatalogueError):
    """No job with this id."""

    http_status = 404
    code = "job_not_found"


class LeaseLost(CatalogueError):
    """The worker no longer holds the job's lease (it expired and another worker took it, or the
    job finished): its heartbeat, completion or failure is refused."""

    http_status = 409
    code = "lease_lost"


class BackendUnavailable(CatalogueError):
    """The database cannot be reached or refused the operation."""

    http_status = 503
    code = "catalogue_unavailable"


class SearchUnavailable(BackendUnavailable):
    """The database cannot be reached and the local search index is too old to answer alone
    (older than ``search_stale_max_seconds``), or is not built yet."""

    code = "search_unavailable"
