"""A client's own conditional GET or HEAD against a stored response (RFC 9110 13.1.2, 13.1.3,
13.2.2): whether to answer 304 Not Modified instead of the body. Sans-IO.

``If-None-Match`` decides when present (weak comparison: ``W/"x"`` matches ``"x"``; ``*`` matches
any stored response); ``If-Modified-Since`` is only looked at without it, and only against a
stored ``Last-Modified`` (an invalid date is ignored, as the RFC says). Only a stored 200 is
answered 304 (a 304 stands for "the 200 you have is still good").

(The cache's own revalidation upstream is edge-cache's: ``cache.conditional_headers``,
``cache.validates``, ``cache.merge_304``.)
"""

from __future__ import annotations

from .cache.freshness import parse_http_date
from .cache.model import HeaderView, StoredResponse

__all__ = ["not_modified"]


def _opaque(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def not_modified(headers: HeaderView, stored: StoredResponse) -> bool:
    """Whether a GET/HEAD with ``headers`` is answered 304 from ``stored``."""
    if stored.status != 200:
        return False
    inm = headers.get_all("if-none-match")
    if inm:
        etag = stored.get("etag")
        tags = [t for v in inm for t in v.split(",") if t.strip()]
        if any(t.strip() == "*" for t in tags):
            return True
        return etag is not None and _opaque(etag) in {_opaque(t) for t in tags}
    since = parse_http_date(headers.get("if-modified-since"))
    if since is None:  # (most requests: the stored Last-Modified is not read)
        return False
    modified = parse_http_date(stored.get("last-modified"))
    return modified is not None and modified <= since
