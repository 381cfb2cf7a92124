"""The one place the request path (:mod:`.app`) meets the HTTP caching rules.

The rules are edge-cache's (:mod:`headwater.edge.cache`). This module names the few decisions
the request path needs, so that the daemon depends on one small surface. edge-cache's rule
functions are merged but not yet wired in here: until they are, this implements a small RFC 9111 subset for a
shared cache (s-maxage > max-age > Expires > 10 % heuristic; no-store, private, no-cache,
must-revalidate, proxy-revalidate, Authorization; Vary; Age; stale-while-revalidate and
stale-if-error; one byte range; 304 merge), pure and time injected.
"""

from __future__ import annotations

import fnmatch
from email.utils import parsedate_to_datetime
from typing import Any

from .cache.model import StoredResponse, stored_response, vary_key_of
from .config import Distribution

__all__ = ["FRESH", "STALE_WHILE_REVALIDATE", "REVALIDATE", "UNSATISFIABLE", "behaviour_for", "key_for",
           "decide", "current_age", "freshness_lifetime", "vary_matches", "why_not_storable", "stored_from",
           "conditional_headers", "merge_304", "not_modified", "range_for", "stale_if_error_ok",
           "forward_headers", "declared_length", "parse_cache_control"]


class _Decision:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


FRESH = _Decision("FRESH")
STALE_WHILE_REVALIDATE = _Decision("STALE_WHILE_REVALIDATE")
REVALIDATE = _Decision("REVALIDATE")
UNSATISFIABLE = _Decision("UNSATISFIABLE")

# Statuses a cache may store with heuristic freshness (RFC 9110 15.1).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses this cache understands well enough to store at all.
STORABLE_STATUSES = HEURISTIC_STATUSES | {302, 307}
# Request fields never forwarded upstream: they would change the one response stored for all.
_UNFORWARDED = frozenset({"host", "range", "if-range", "if-none-match", "if-modified-since", "if-match",
                          "if-unmodified-since", "cookie", "authorization", "via", "connection"})


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directive -> argument (None without one); names lower case, quoted strings unquoted."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    for part in value.split(","):
        name, eq, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name and name not in out:
            out[name] = arg.strip().strip('"') if eq else None
    return out


def _seconds(cc: dict[str, str | None], name: str) -> int | None:
    arg = cc.get(name)
    if arg is None or not arg.isdigit():
        return None
    return int(arg)


def _date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _cc(stored: StoredResponse) -> dict[str, str | None]:
    return parse_cache_control(", ".join(stored.get_all("cache-control")))


def _behaviour_ttl(behaviour: Any, name: str) -> float | None:
    if isinstance(behaviour, dict) and isinstance(behaviour.get(name), (int, float)):
        return float(behaviour[name])
    return None


def behaviour_for(dist: Distribution, path: str) -> Any:
    """The first of the distribution's behaviours whose ``path_pattern`` matches (None: defaults)."""
    for b in dist.behaviours:
        pattern = b.get("path_pattern", "*") if isinstance(b, dict) else getattr(b, "path_pattern", "*")
        if fnmatch.fnmatchcase(path, pattern):
            return b
    return None


def key_for(dist: Distribution, request: Any, behaviour: Any) -> bytes:
    """Distribution, path and (when the behaviour keys on it) the query. Never the Host, nor any
    header the behaviour does not name: those cannot change what others are served."""
    key = f"{dist.name}\0{request.path}"
    if isinstance(behaviour, dict) and behaviour.get("query_string") and request.query:
        key += "?" + "&".join(sorted(request.query.split("&")))
    return key.encode("utf-8", "surrogateescape")


def freshness_lifetime(stored: StoredResponse, behaviour: Any = None) -> float:
    """RFC 9111 4.2.1 for a shared cache, clamped to the behaviour's min/max TTL."""
    cc = _cc(stored)
    lifetime: float | None = None
    for name in ("s-maxage", "max-age"):
        value = _seconds(cc, name)
        if value is not None:
            lifetime = float(value)
            break
    if lifetime is None and stored.get("expires") is not None:
        expires = _date(stored.get("expires"))
        date = _date(stored.get("date")) or stored.response_time
        lifetime = max(0.0, expires - date) if expires is not None else 0.0
    if lifetime is None:
        default = _behaviour_ttl(behaviour, "default_ttl")
        if default is not None:
            lifetime = default
        elif stored.status in HEURISTIC_STATUSES and stored.get("last-modified"):
            modified = _date(stored.get("last-modified"))
            date = _date(stored.get("date")) or stored.response_time
            lifetime = max(0.0, (date - modified) * 0.1) if modified is not None else 0.0
        else:
            lifetime = 0.0
    low, high = _behaviour_ttl(behaviour, "min_ttl"), _behaviour_ttl(behaviour, "max_ttl")
    if low is not None:
        lifetime = max(lifetime, low)
    if high is not None:
        lifetime = min(lifetime, high)
    return lifetime


def current_age(stored: StoredResponse, now: float) -> float:
    """RFC 9111 4.2.3: corrected initial age plus the time resident here."""
    age_value = 0
    raw = stored.get("age")
    if raw is not None and raw.strip().isdigit():
        age_value = int(raw.strip())
    date = _date(stored.get("date"))
    apparent = max(0.0, stored.response_time - date) if date is not None else 0.0
    corrected = age_value + (stored.response_time - stored.request_time)
    return max(apparent, corrected) + max(0.0, now - stored.response_time)


def vary_matches(request: Any, stored: StoredResponse) -> bool:
    """The request selects the stored response (``Vary: *`` never does)."""
    if not stored.vary_key:
        return True
    if any(name == "*" for name, _ in stored.vary_key):
        return False
    return vary_key_of(request, stored.headers) == stored.vary_key


def decide(request: Any, stored: StoredResponse, now: float, behaviour: Any = None) -> _Decision:
    """FRESH (serve), STALE_WHILE_REVALIDATE (serve, refresh in the background) or REVALIDATE."""
    cc = _cc(stored)
    if "no-cache" in cc and cc["no-cache"] is None:
        return REVALIDATE
    age = current_age(stored, now)
    lifetime = freshness_lifetime(stored, behaviour)
    if age < lifetime:
        return FRESH
    swr = _seconds(cc, "stale-while-revalidate")
    if swr is not None and age < lifetime + swr and not _must_revalidate(cc):
        return STALE_WHILE_REVALIDATE
    return REVALIDATE


def _must_revalidate(cc: dict[str, str | None]) -> bool:
    return "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc


def stale_if_error_ok(stored: StoredResponse, now: float, behaviour: Any = None) -> bool:
    """RFC 5861 4: the stored response may stand in for an upstream error."""
    cc = _cc(stored)
    sie = _seconds(cc, "stale-if-error")
    if sie is None or _must_revalidate(cc):
        return False
    staleness = current_age(stored, now) - freshness_lifetime(stored, behaviour)
    return staleness <= sie


def why_not_storable(request: Any, stored: StoredResponse, behaviour: Any = None) -> str | None:
    """None when the response may be stored, else the reason (a metrics label)."""
    cc = _cc(stored)
    if request.method not in ("GET", "HEAD"):
        return "method"
    if stored.status not in STORABLE_STATUSES:
        return "status"
    if "no-store" in cc:
        return "no_store"
    if "private" in cc and cc["private"] is None:
        return "private"
    if request.headers.get("authorization") is not None and not (
            "public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return "authorization"
    if any(name == "*" for name, _ in stored.vary_key):
        return "vary_star"
    explicit = any(n in cc for n in ("max-age", "s-maxage", "public")) or stored.get("expires") is not None
    if stored.status not in HEURISTIC_STATUSES and not explicit:
        return "status"
    if not explicit and freshness_lifetime(stored, behaviour) <= 0 and not (
            stored.get("etag") or stored.get("last-modified")):
        return "no_freshness"
    return None


def stored_from(request: Any, status: int, headers: Any, *, request_time: float, response_time: float,
                body_size: int) -> StoredResponse:
    """The StoredResponse for an upstream answer (edge-cache's model)."""
    return stored_response(request, status, headers, request_time=request_time, response_time=response_time,
                           body_size=body_size)


def conditional_headers(stored: StoredResponse) -> list[tuple[str, str]]:
    """The validators to revalidate ``stored`` with."""
    out = []
    if stored.get("etag"):
        out.append(("if-none-match", stored.get("etag") or ""))
    if stored.get("last-modified"):
        out.append(("if-modified-since", stored.get("last-modified") or ""))
    return out


_FRAMING = frozenset({"content-length", "transfer-encoding", "content-encoding", "content-range"})


def merge_304(stored: StoredResponse, headers: Any, request_time: float, response_time: float) -> StoredResponse:
    """RFC 9111 4.3.4: the 304's fields replace the stored ones of the same name (framing kept)."""
    new = [(k, v) for k, v in headers if k not in _FRAMING]
    names = {k for k, _ in new}
    merged = tuple([(k, v) for k, v in stored.headers if k not in names] + new)
    return StoredResponse(stored.status, merged, request_time, response_time, stored.body_size, stored.vary_key)


def _etags(value: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in value.split(",") if t.strip()]


def not_modified(request: Any, stored: StoredResponse) -> bool:
    """The client's own conditional matches the stored response (answer it 304)."""
    if stored.status != 200:
        return False
    inm = request.headers.get("if-none-match")
    etag = stored.get("etag")
    if inm is not None:
        return etag is not None and (inm.strip() == "*" or etag.removeprefix("W/") in _etags(inm))
    ims = _date(request.headers.get("if-modified-since"))
    modified = _date(stored.get("last-modified"))
    return ims is not None and modified is not None and modified <= ims


def range_for(request: Any, stored: StoredResponse, size: int) -> tuple[int, int] | _Decision | None:
    """The one byte range to answer (first, last), UNSATISFIABLE, or None (the whole body).

    Several ranges, or an ``If-Range`` that does not match a strong validator exactly, give
    the whole body (RFC 9110 14.2 allows ignoring Range)."""
    value = request.headers.get("range")
    if value is None:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None:
        etag = stored.get("etag")
        if not (etag and not etag.startswith("W/") and if_range == etag) and if_range != stored.get("last-modified"):
            return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return UNSATISFIABLE
            return (max(0, size - n), size - 1) if size else UNSATISFIABLE
        a = int(first)
        b = int(last) if last else size - 1
    except ValueError:
        return None
    if a >= size:
        return UNSATISFIABLE
    if a < 0 or b < a:
        return None
    return a, min(b, size - 1)


def forward_headers(request: Any, behaviour: Any = None) -> list[tuple[str, str]]:
    """Request fields sent upstream: those the behaviour forwards (and keys on), plus who asked."""
    out: list[tuple[str, str]] = []
    named = behaviour.get("headers", []) if isinstance(behaviour, dict) else []
    for name in named:
        name = name.lower()
        if name in _UNFORWARDED:
            continue
        for value in request.headers.get_all(name):
            out.append((name, value))
    client = getattr(request, "client", None)
    forwarded = request.headers.get("x-forwarded-for")
    if client:
        out.append(("x-forwarded-for", f"{forwarded}, {client[0]}" if forwarded else client[0]))
    return out


def declared_length(stored: StoredResponse) -> int | None:
    value = stored.get("content-length")
    return int(value) if value is not None and value.isdigit() else None
