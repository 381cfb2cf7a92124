"""RFC 9111's rules for a shared cache, with CloudFront's TTL clamps: store, age, reuse, validate.

Everything takes the time as an argument (``now``, ``request_time``, ``response_time``: seconds
since the epoch from the daemon's injected clock); nothing here reads a clock.

* ``storable(request, response, behaviour)``: RFC 9111 3 for a shared cache (method, final
  status, no-store, private, Authorization, explicit freshness or a heuristically cacheable
  status), plus CloudFront's rule that ``min_ttl > 0`` keeps even no-store/no-cache/private
  responses for ``min_ttl``, plus one conservative rule of nginx and Varnish: a response that sets
  a cookie is kept only if it says ``public`` or ``s-maxage``, and then without its Set-Cookie
  (``strip_for_storage``: one viewer's session cookie served to every viewer is the classic CDN
  leak). Only GET responses are stored; HEAD is answered from
  them. An upstream 206 is not stored here (``slices`` stores 206 slices).
* ``freshness_lifetime(response, behaviour)``: targeted fields first (``cachecontrol``), then
  ``s-maxage`` > ``max-age`` > ``Expires - Date`` (an invalid Expires means already expired);
  no explicit value: ``error_ttl`` for an error status, else ``default_ttl``, or with
  ``default_ttl=None`` RFC 9111 4.2.2's heuristic
  (10 % of ``Date - Last-Modified``, at most ``HEURISTIC_MAX``), for heuristically cacheable
  statuses only; then clamped into ``[min_ttl, max_ttl]``. Invalid or conflicting ``max-age`` /
  ``s-maxage`` make it 0 (stale).
* ``current_age(response, now)``: RFC 9111 4.2.3 exactly (apparent age from ``Date``, the
  upstream ``Age`` corrected by the response delay, plus resident time), so a POP serving what a
  regional tier already held for a while counts that time too.
* ``decide(request, stored, now, behaviour)``: PASS (method not cached), MISS, FRESH,
  STALE_WHILE_REVALIDATE (serve now, refresh in the background) or REVALIDATE (conditional
  request upstream first); ``Decision.stale_if_error`` says whether a failed revalidation (5xx,
  connection error, timeout) may be answered with the stale response. Stale is never served when
  ``must-revalidate``, ``proxy-revalidate``, ``no-cache`` or ``s-maxage`` (which implies
  proxy-revalidate for shared caches, RFC 9111 5.2.2.10) applies: an origin that wants
  stale-while-revalidate at the edge together with a separate browser lifetime says so with
  ``CDN-Cache-Control: max-age=N, stale-while-revalidate=M``.
* ``conditional_headers(stored)``, ``validates(stored, headers_304)``, ``merge_304(...)``:
  RFC 9111 4.3.1, 4.3.4 and 3.2.
* ``invalidation_paths(...)``: RFC 9111 4.4 (unsafe methods).
"""

from __future__ import annotations

import calendar
import enum
import re
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Iterable, NamedTuple

from .behaviour import Behaviour
from .cachecontrol import CacheControl, joined, parse_cache_control, response_cache_control
from .cachekey import normalise_path, vary_matches
from .model import HOP_BY_HOP, CacheRequest, Headers, StoredResponse, end_to_end

__all__ = [
    "HEURISTIC_STATUSES",
    "HEURISTIC_FRACTION",
    "HEURISTIC_MAX",
    "SAFE_METHODS",
    "must_revalidate",
    "Action",
    "Decision",
    "parse_http_date",
    "storable",
    "freshness_lifetime",
    "current_age",
    "decide",
    "stale_if_error_allowed",
    "conditional_headers",
    "validates",
    "merge_304",
    "strip_for_storage",
    "invalidation_paths",
    "served_headers",
]

HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
"""Heuristically cacheable status codes (RFC 9110 15.1)."""
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 86400.0
"""The heuristic lifetime's ceiling: a day, however old the Last-Modified."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_MEMO_MAX = 8192


class Action(enum.Enum):
    """What the daemon does with a request, given what the cache holds."""

    PASS = "pass"                    # not cacheable by method: forward, store nothing
    MISS = "miss"                    # nothing usable stored: fetch (and store if storable)
    FRESH = "fresh"                  # serve the stored response
    STALE_WHILE_REVALIDATE = "swr"   # serve the stored response, revalidate in the background
    REVALIDATE = "revalidate"        # send conditional_headers(stored) upstream first


class Decision(NamedTuple):
    """(A NamedTuple: built on every request, and a frozen dataclass costs ~1 µs per field.)
    ``action``; the stored response's ``age`` now (for the ``Age`` header; 0 without one) and
    its ``lifetime``; ``stale_if_error``: whether, if the upstream fails, the stored response may
    be served instead (RFC 5861)."""

    action: Action
    age: float = 0.0
    lifetime: float = 0.0
    stale_if_error: bool = False


_PASS = Decision(Action.PASS)
_MISS = Decision(Action.MISS)


# --- dates -------------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_IMF = re.compile(r"[A-Z][a-z]{2}, (\d{2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT")
_dates: dict[str, float | None] = {}


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 5.6.7: IMF-fixdate, or the obsolete RFC 850 and asctime forms) as
    seconds since the epoch, or None if it is not one."""
    if value is None:
        return None
    if value in _dates:
        return _dates[value]
    ts: float | None = None
    m = _IMF.fullmatch(value.strip())
    if m is not None and m.group(2) in _MONTHS:
        d, mon, y, hh, mm, ss = m.groups()
        try:
            ts = float(calendar.timegm((int(y), _MONTHS[mon], int(d), int(hh), int(mm), int(ss))))
        except (ValueError, OverflowError):
            ts = None
    else:
        t = parsedate_tz(value)
        if t is not None:
            try:
                ts = float(calendar.timegm(t[:6]) - (t[9] or 0))
            except (ValueError, OverflowError):
                ts = None
    if len(_dates) >= _MEMO_MAX:
        _dates.clear()
    _dates[value] = ts
    return ts


# --- what a stored response says, read once per distinct header tuple -------------------------

@dataclass(frozen=True, slots=True)
class _Facts:
    cc: CacheControl
    date: float | None
    age: int
    expires: float | None
    has_expires: bool
    last_modified: float | None
    etag: str | None
    last_modified_raw: str | None
    sets_cookie: bool
    has_age: bool


_facts_memo: dict[Headers, _Facts] = {}


def _facts(headers: Headers) -> _Facts:
    f = _facts_memo.get(headers)
    if f is not None:
        return f
    cc = response_cache_control(headers)
    date = expires_raw = lm_raw = etag = age_raw = None
    has_expires = sets_cookie = False
    for k, v in headers:
        if k == "date" and date is None:
            date = v
        elif k == "expires" and not has_expires:
            has_expires, expires_raw = True, v
        elif k == "last-modified" and lm_raw is None:
            lm_raw = v
        elif k == "etag" and etag is None:
            etag = v.strip()
        elif k == "age" and age_raw is None:
            age_raw = v
        elif k == "set-cookie":
            sets_cookie = True
    age = 0
    if age_raw is not None:
        s = age_raw.strip()
        if s.isdigit():
            age = min(int(s[:11]), 2 ** 31)
    f = _Facts(cc, parse_http_date(date), age, parse_http_date(expires_raw), has_expires,
               parse_http_date(lm_raw), etag, lm_raw, sets_cookie, age_raw is not None)
    if len(_facts_memo) >= _MEMO_MAX:
        _facts_memo.clear()
    _facts_memo[headers] = f
    return f


# --- storing ------------------------------------------------------------------------------------

def _forwards(behaviour: Behaviour, name: str) -> bool:
    return behaviour.key_headers.selects(name) or behaviour.forward_headers.selects(name)


def storable(request: CacheRequest, response: StoredResponse, behaviour: Behaviour) -> bool:
    """Whether a shared cache may store ``response`` to ``request`` (module docstring)."""
    if request.method != "GET" or "GET" not in behaviour.cached_methods:
        return False
    status = response.status
    if status < 200 or status in (206, 304):
        return False
    f = _facts(response.headers)
    cc = f.cc
    if any(n == "*" for n, _ in response.vary_key):
        return False                      # Vary: * never matches: storing it is waste
    if behaviour.honour_request_no_cache and parse_cache_control(
            joined(request.headers, "cache-control")).no_store:  # type: ignore[arg-type]
        return False
    forced = behaviour.min_ttl > 0        # CloudFront: the operator's minimum wins
    if (cc.no_store or cc.private) and not forced:
        return False
    explicit_shared = cc.public or cc.s_maxage is not None
    if request.headers.get("authorization") is not None and _forwards(behaviour, "authorization"):
        # RFC 9111 3.5 (only when the origin saw the credentials: unforwarded, they cannot have
        # shaped the response).
        if not (explicit_shared or cc.must_revalidate):
            return False
    if f.sets_cookie and not explicit_shared:
        return False
    explicit = (cc.max_age is not None or cc.s_maxage is not None or cc.invalid_freshness
                or (f.has_expires and not cc.targeted))
    return explicit or status in HEURISTIC_STATUSES or forced or cc.public


_NEVER_STORED = frozenset({"set-cookie", "set-cookie2"})


def strip_for_storage(response: StoredResponse) -> StoredResponse:
    """``response`` without the fields a shared cache must not store: those ``private="..."``
    names (RFC 9111 5.2.2.7), and ``Set-Cookie`` always: a response kept because it says
    ``public`` (or because ``min_ttl`` forces it) may share its body, never one viewer's cookie
    (as CloudFront drops Set-Cookie where it does not forward cookies). (Hop-by-hop fields are
    already gone: ``model.stored_response``.)"""
    f = _facts(response.headers)
    cc = f.cc
    if not cc.private_fields and not f.sets_cookie:
        return response
    drop = set(cc.private_fields) | _NEVER_STORED
    return StoredResponse(response.status, tuple(h for h in response.headers if h[0] not in drop),
                          response.request_time, response.response_time, response.body_size,
                          response.vary_key)


# --- freshness and age -------------------------------------------------------------------------

def _lifetime(f: _Facts, status: int, response_time: float, behaviour: Behaviour) -> float:
    cc = f.cc
    lo, hi = behaviour.min_ttl, behaviour.max_ttl
    if cc.no_store or cc.no_cache or cc.private:
        return lo                         # 0: revalidate every time (CloudFront: min_ttl if > 0)
    if cc.invalid_freshness:
        explicit: float | None = 0.0
    elif cc.s_maxage is not None:
        explicit = float(cc.s_maxage)
    elif cc.max_age is not None:
        explicit = float(cc.max_age)
    elif f.has_expires and not cc.targeted:
        if f.expires is None:
            explicit = 0.0                # an invalid Expires means "already expired" (5.3)
        else:
            date = f.date if f.date is not None else response_time
            explicit = max(0.0, f.expires - date)
    else:
        explicit = None
    if explicit is None:
        if status not in HEURISTIC_STATUSES:
            return lo
        if status >= 400:
            explicit = behaviour.error_ttl
            return lo if explicit < lo else hi if explicit > hi else explicit
        if behaviour.default_ttl is not None:
            return behaviour.default_ttl
        if f.last_modified is None:
            return lo
        date = f.date if f.date is not None else response_time
        explicit = min(HEURISTIC_MAX, max(0.0, (date - f.last_modified) * HEURISTIC_FRACTION))
    return lo if explicit < lo else hi if explicit > hi else explicit


def freshness_lifetime(response: StoredResponse, behaviour: Behaviour) -> float:
    """Seconds ``response`` stays fresh in this cache under ``behaviour``."""
    return _lifetime(_facts(response.headers), response.status, response.response_time, behaviour)


def _age(f: _Facts, response: StoredResponse, now: float) -> float:
    # Conditionals rather than max(): this runs on every hit, and builtin calls cost.
    rt = response.response_time
    date = f.date
    apparent = rt - date if date is not None and rt > date else 0.0
    delay = rt - response.request_time
    corrected = f.age + delay if delay > 0 else f.age
    initial = apparent if apparent > corrected else corrected
    resident = now - rt
    return initial + resident if resident > 0 else initial


def current_age(response: StoredResponse, now: float) -> float:
    """RFC 9111 4.2.3's current_age of ``response`` at ``now`` (seconds)."""
    return _age(_facts(response.headers), response, now)


def _may_serve_stale(cc: CacheControl) -> bool:
    return not (cc.must_revalidate or cc.proxy_revalidate or cc.no_cache or cc.s_maxage is not None)


# --- the decision ------------------------------------------------------------------------------

def decide(request: CacheRequest, stored: StoredResponse | None, now: float,
           behaviour: Behaviour) -> Decision:
    """What to do with ``request`` given ``stored`` (the entry under its key, or None)."""
    if request.method not in behaviour.cached_methods:
        return _PASS
    if stored is None or (stored.vary_key and not vary_matches(request, stored)):
        return _MISS
    f = _facts(stored.headers)
    cc = f.cc
    age = _age(f, stored, now)
    lifetime = _lifetime(f, stored.status, stored.response_time, behaviour)
    if age < lifetime:
        if not behaviour.honour_request_no_cache or cc.immutable or not _client_refuses(request, age):
            return Decision(Action.FRESH, age, lifetime)
        return Decision(Action.REVALIDATE, age, lifetime, True)   # still fresh if upstream fails
    staleness = age - lifetime
    if _may_serve_stale(cc):
        swr = cc.stale_while_revalidate
        if swr is not None and staleness <= swr and not (
                behaviour.honour_request_no_cache and _client_refuses(request, age)):
            return Decision(Action.STALE_WHILE_REVALIDATE, age, lifetime, _stale_if_error(cc, staleness))
    return Decision(Action.REVALIDATE, age, lifetime, _stale_if_error(cc, staleness))


def _client_refuses(request: CacheRequest, age: float) -> bool:
    """The request's own ``no-cache`` / ``Pragma: no-cache`` / ``max-age`` (only consulted with
    ``honour_request_no_cache``)."""
    raw = joined(request.headers, "cache-control")  # type: ignore[arg-type]
    if raw is None:
        return (request.headers.get("pragma") or "").strip().lower() == "no-cache"
    rc = parse_cache_control(raw)
    return rc.no_cache or (rc.max_age is not None and age > rc.max_age)


def _stale_if_error(cc: CacheControl, staleness: float) -> bool:
    sie = cc.stale_if_error
    return sie is not None and _may_serve_stale(cc) and staleness <= sie


def must_revalidate(stored: StoredResponse) -> bool:
    """Whether ``stored`` forbids a shared cache to serve it stale (``must-revalidate`` or
    ``proxy-revalidate``): RFC 9111 5.2.2.2 wants an error then, 504 by preference."""
    cc = _facts(stored.headers).cc
    return cc.must_revalidate or cc.proxy_revalidate


def stale_if_error_allowed(stored: StoredResponse, now: float, behaviour: Behaviour) -> bool:
    """Whether ``stored`` may answer a request whose upstream fetch just failed (RFC 5861 4):
    fresh, or stale within its ``stale-if-error`` window and not forbidden to be served stale."""
    f = _facts(stored.headers)
    age = _age(f, stored, now)
    lifetime = _lifetime(f, stored.status, stored.response_time, behaviour)
    if age < lifetime:
        return True
    return _stale_if_error(f.cc, age - lifetime)


def served_headers(stored: StoredResponse, age: float) -> list[tuple[str, str]]:
    """The stored fields to send with a reused response: ``Age`` set to ``age`` (whole seconds,
    RFC 9111 5.1), and without the fields a qualified ``no-cache="..."`` names (those may only
    be sent after a successful revalidation, RFC 9111 5.2.2.4)."""
    f = _facts(stored.headers)
    drop = f.cc.no_cache_fields
    if drop or f.has_age:
        out = [h for h in stored.headers if h[0] != "age" and h[0] not in drop]
    else:
        out = list(stored.headers)            # the common case: a plain copy
    out.append(("age", str(int(age))))
    return out


# --- validation ---------------------------------------------------------------------------------

def conditional_headers(stored: StoredResponse) -> Headers:
    """The precondition fields that revalidate ``stored`` (RFC 9111 4.3.1): ``If-None-Match``
    from its ETag, ``If-Modified-Since`` from its Last-Modified; () when it has neither (then the
    revalidation is a plain fetch)."""
    f = _facts(stored.headers)
    out = []
    if f.etag:
        out.append(("if-none-match", f.etag))
    if f.last_modified_raw is not None:
        out.append(("if-modified-since", f.last_modified_raw))
    return tuple(out)


def _strong(etag: str | None) -> str | None:
    return None if etag is None or etag.startswith("W/") else etag


def validates(stored: StoredResponse, headers_304: Iterable[tuple[str, str]]) -> bool:
    """Whether a 304 applies to ``stored`` (RFC 9111 4.3.4): if it carries an ETag, that ETag
    (weakly compared) must be the stored one's; if it carries only Last-Modified, it must equal
    the stored one's. A 304 without validators applies."""
    hs = tuple((k.lower(), v) for k, v in headers_304)
    f = _facts(stored.headers)
    etag = next((v.strip() for k, v in hs if k == "etag"), None)
    if etag is not None:
        if f.etag is None:
            return False
        return etag.removeprefix("W/") == f.etag.removeprefix("W/")
    lm = next((v for k, v in hs if k == "last-modified"), None)
    if lm is not None:
        return f.last_modified_raw is not None and parse_http_date(lm) == f.last_modified
    return True


# Fields a 304 never replaces in the stored response: the framing and representation-describing
# ones the stored body depends on (RFC 9111 3.2), and hop-by-hop ones.
_KEEP_ON_304 = frozenset({"content-length", "content-range", "content-encoding", "content-type"}) | HOP_BY_HOP


def merge_304(stored: StoredResponse, headers_304: Iterable[tuple[str, str]], *,
              request_time: float, response_time: float) -> StoredResponse:
    """``stored`` updated by a 304 (RFC 9111 3.2 / 4.3.4): each field the 304 carries replaces
    every stored line of that name (except framing and representation fields), and the age inputs
    restart from this exchange. Check ``validates`` first."""
    new = [(k, v) for k, v in end_to_end(headers_304) if k not in _KEEP_ON_304]
    replaced = {k for k, _ in new}
    kept = tuple(h for h in stored.headers if h[0] not in replaced)
    return StoredResponse(stored.status, kept + tuple(new), request_time, response_time,
                          stored.body_size, stored.vary_key)


# --- invalidation -------------------------------------------------------------------------------

_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)")


def invalidation_paths(method: str, status: int, path: str,
                       response_headers: Iterable[tuple[str, str]], *, scheme: str,
                       authority: str) -> list[str]:
    """The normalised paths whose stored responses an unsafe request invalidates (RFC 9111 4.4):
    the target URI, and ``Location`` / ``Content-Location`` when they name the same origin
    (``scheme``://``authority``, compared case-insensitively). Empty for safe methods and for
    error (or 1xx) statuses. Remove every key under ``cachekey.key_prefix(distribution, p)``."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [normalise_path(path)]
    for k, v in response_headers:
        k = k.lower()
        if k not in ("location", "content-location"):
            continue
        v = v.strip()
        m = _ABSOLUTE.match(v)
        if m is not None:
            if m.group(1).lower() != scheme.lower() or m.group(2).lower() != authority.lower():
                continue
            target = m.group(3) or "/"
        elif v.startswith("//"):
            continue                      # network-path reference: another authority, or ours
        elif v.startswith("/"):
            target = v.split("?", 1)[0].split("#", 1)[0]
        else:
            continue                      # relative paths: resolving them is not worth the risk
        p = normalise_path(target)
        if p not in out:
            out.append(p)
    return out
