"""Cache keys, and the upstream request that matches them (no cache poisoning by construction).

``cache_key(request, behaviour, distribution=...)`` is built only from what the behaviour keys on:

    distribution NUL path NUL query NUL headers NUL cookies NUL encoding

* ``distribution``: the distribution's name from config, never the request's ``Host`` (Host
  variants, ``X-Forwarded-Host``, ``X-Original-URL`` and the like never enter a key unless a
  behaviour allow-lists them, and then they are keyed, which is safe).
* path: the raw path with percent-escapes normalised (RFC 3986 6.2.2: escapes of unreserved
  characters decoded, other escapes' hex upper-cased). Dot segments are kept: an S3 origin
  treats ``/a/./b`` as its own object key, so folding them would serve one object for another.
* query: the parameters the behaviour keys on, each normalised like the path, stably sorted by
  name (repeats of one name keep their order: origins read them as a list). ``+`` is left
  alone: whether it means a space is the origin's business.
* headers: for each allow-listed name, sorted, ``name:value`` (repeated lines joined with ``, ``).
* cookies: the keyed cookies from ``Cookie``, sorted by name, ``name=value`` joined by ``; ``.
* encoding: with ``compress`` on, ``br``, ``gzip`` or empty, from ``Accept-Encoding`` (the
  representation the edge stores and serves for that client, as CloudFront normalises it);
  empty for a request with ``Range`` (served from the identity variant).

``Range``, conditionals (``If-*``), ``Cache-Control`` and every unkeyed header, cookie and
parameter are not read. ``upstream_target`` and ``forwarded_headers`` build the request sent
upstream from the same normalised pieces (the keyed ones plus what ``forward_*`` adds), so what
is fetched is what is keyed. GET and HEAD share a key (HEAD is answered from the GET's entry).

Keys are readable bytes (latin-1), so a purge can select them by path (``key_path``); a store
with a key-size bound (LMDB: 511 bytes) hashes them itself.

Vary (RFC 9111 4.1) gives a secondary key: ``variant_key(key, stored.vary_key)`` names the
variant a request selects, ``vary_matches(request, stored)`` checks one stored response.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .behaviour import Behaviour, FieldPolicy
from .model import HOP_BY_HOP, CacheRequest, Headers, StoredResponse, vary_key_of

__all__ = [
    "cache_key",
    "key_prefix",
    "key_path",
    "normalise_path",
    "normalise_query",
    "upstream_target",
    "forwarded_headers",
    "accept_encoding_class",
    "parse_cookies",
    "variant_key",
    "variant_key_for",
    "vary_matches",
]

_SEP = "\x00"
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# Never forwarded from the client: hop-by-hop fields, what the edge sets itself (Host for the
# origin, conditionals and Range of its own fetch), and what only identifies the client's path to
# us. Keyed or forward-listed names among these are still dropped.
_NEVER_FORWARDED = HOP_BY_HOP | {
    "host", "content-length", "range", "if-range", "if-match", "if-none-match",
    "if-modified-since", "if-unmodified-since", "cookie", "cache-control", "pragma", "expect",
}


def _pct_fix(m: re.Match[str]) -> str:
    ch = chr(int(m.group(1), 16))
    return ch if ch in _UNRESERVED else "%" + m.group(1).upper()


def normalise_path(path: str) -> str:
    """``path`` with unreserved escapes decoded and the others' hex upper-cased."""
    return _PCT.sub(_pct_fix, path) if "%" in path else path


def _params(query: str) -> list[tuple[str, str]]:
    """``(normalised name, normalised "name=value" or "name")`` for each non-empty parameter."""
    out = []
    for part in query.split("&"):
        if not part:
            continue
        part = normalise_path(part)
        name = part.split("=", 1)[0]
        out.append((name, part))
    return out


def _selected(params: list[tuple[str, str]], policy: FieldPolicy) -> list[tuple[str, str]]:
    if policy.mode == "none":
        return []
    if policy.mode == "all":
        return params
    # Policy names are decoded text; compare against the fully decoded parameter name.
    return [p for p in params if policy.selects(unquote(p[0]))]


def normalise_query(query: str, policy: FieldPolicy) -> str:
    """The parameters ``policy`` selects, normalised and stably sorted by name, joined by ``&``."""
    if not query or policy.mode == "none":
        return ""
    chosen = _selected(_params(query), policy)
    chosen.sort(key=lambda p: p[0])
    return "&".join(p[1] for p in chosen)


def parse_cookies(values: list[str]) -> list[tuple[str, str]]:
    """``(name, value)`` pairs from ``Cookie`` field values (RFC 6265 5.4), malformed pairs
    skipped."""
    out = []
    for v in values:
        for part in v.split(";"):
            name, eq, value = part.strip().partition("=")
            if eq and name:
                out.append((name.strip(), value.strip()))
    return out


_ACCEPT_ENCODING_MAX = 1024  # (a longer field is read up to here: the client's, so bounded)


def _qvalue(text: str) -> float | None:
    """An RFC 9110 12.4.2 qvalue (``0`` .. ``1`` with up to three decimals), or None."""
    text = text.strip()
    if not text or len(text) > 5 or text[0] not in "01" or (len(text) > 1 and text[1] != "."):
        return None
    if not all(c.isdigit() for c in text[2:]) or not text[:1].isdigit():
        return None
    q = float(text)
    return q if q <= 1 else None


def accept_encoding_class(value: str | None) -> str:
    """The coding the edge serves a client sending ``Accept-Encoding: value``: ``br``, ``gzip``
    or ``""`` (identity), by the client's q-values (RFC 9110 12.5.3): the acceptable coding
    with the highest q, ``br`` on a tie; a coding not named takes ``*``'s q (0 without ``*``);
    ``q=0`` refuses (a malformed q too). ``x-gzip`` counts as gzip. When the client refuses
    both (or even identity: ``identity;q=0`` alone), identity is served: RFC 9110 lets the
    server disregard the field rather than answer 406, and a segment is never compressed."""
    if not value:
        return ""
    q: dict[str, float] = {}
    for item in value[:_ACCEPT_ENCODING_MAX].split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        weight: float | None = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                weight = _qvalue(v)
        if coding == "x-gzip":
            coding = "gzip"
        q[coding] = max(q.get(coding, 0.0), weight or 0.0)
    star = q.get("*", 0.0)
    br, gzip = q.get("br", star), q.get("gzip", star)
    if br > 0 and br >= gzip:
        return "br"
    if gzip > 0:
        return "gzip"
    return ""


def _latin1(s: str) -> bytes:
    return s.encode("latin-1", "backslashreplace")


def cache_key(request: CacheRequest, behaviour: Behaviour, *, distribution: str = "") -> bytes:
    """The cache key for ``request`` under ``behaviour`` (see the module docstring)."""
    headers = request.headers
    query = normalise_query(request.query, behaviour.key_query) if request.query else ""
    hpol = behaviour.key_headers
    hpart = ""
    if hpol.mode == "allow" and hpol.names:
        hpart = "\n".join(f"{n}:{', '.join(headers.get_all(n))}" for n in sorted(hpol.names))
    cpart = ""
    cpol = behaviour.key_cookies
    if cpol.mode != "none":
        cookies = [c for c in parse_cookies(headers.get_all("cookie")) if cpol.selects(c[0])]
        cookies.sort(key=lambda c: c[0])
        cpart = "; ".join(f"{n}={v}" for n, v in cookies)
    # (A Range request is keyed and served as identity: ranges of a compressed body are no one's.)
    enc = accept_encoding_class(headers.get("accept-encoding")) \
        if behaviour.compress and headers.get("range") is None else ""
    return _latin1(_SEP.join((distribution, normalise_path(request.path), query, hpart, cpart, enc)))


def key_prefix(distribution: str, path: str) -> bytes:
    """The prefix every key of ``path`` (any query, header, cookie or encoding) starts with:
    what an invalidation of that URI removes."""
    return _latin1(distribution + _SEP + normalise_path(path) + _SEP)


def key_path(key: bytes) -> tuple[str, str]:
    """``(distribution, normalised path)`` of a key made by ``cache_key``."""
    parts = key.decode("latin-1").split(_SEP, 2)
    return parts[0], parts[1]


def upstream_target(request: CacheRequest, behaviour: Behaviour) -> str:
    """The request-target to send upstream: the normalised path and the keyed plus forwarded
    query parameters, in the key's order."""
    path = normalise_path(request.path)
    if not request.query:
        return path
    kq, fq = behaviour.key_query, behaviour.forward_query
    params = _params(request.query)
    chosen = [p for p in params if _either(kq, fq, unquote(p[0]))]
    if not chosen:
        return path
    chosen.sort(key=lambda p: p[0])
    return path + "?" + "&".join(p[1] for p in chosen)


def _either(a: FieldPolicy, b: FieldPolicy, name: str) -> bool:
    return a.selects(name) or b.selects(name)


def forwarded_headers(request: CacheRequest, behaviour: Behaviour) -> list[tuple[str, str]]:
    """The client's header fields to send upstream: the keyed and forward-listed ones (never
    hop-by-hop, Host, Range, conditionals or Cache-Control), plus a ``Cookie`` holding the keyed
    and forward-listed cookies. With ``compress`` on, ``Accept-Encoding`` is the normalised class
    (what the key says), so the origin cannot answer a coding the key did not choose."""
    kh, fh = behaviour.key_headers, behaviour.forward_headers
    out: list[tuple[str, str]] = []
    if kh.selects_any or fh.selects_any:
        for name, value in request.headers:  # type: ignore[attr-defined]
            if name in _NEVER_FORWARDED or (behaviour.compress and name == "accept-encoding"):
                continue
            if kh.selects(name) or fh.selects(name):
                out.append((name, value))
    if behaviour.compress:
        enc = accept_encoding_class(request.headers.get("accept-encoding")) \
            if request.headers.get("range") is None else ""
        out.append(("accept-encoding", enc or "identity"))
    kc, fc = behaviour.key_cookies, behaviour.forward_cookies
    if kc.selects_any or fc.selects_any:
        cookies = [c for c in parse_cookies(request.headers.get_all("cookie"))
                   if kc.selects(c[0]) or fc.selects(c[0])]
        if cookies:
            out.append(("cookie", "; ".join(f"{n}={v}" for n, v in cookies)))
    return out


def variant_key(key: bytes, vary_key: Headers) -> bytes:
    """The secondary key of a Vary variant: ``key`` plus the request values Vary selects by
    (``StoredResponse.vary_key``, or ``model.vary_key_of(request, ...)`` for a lookup)."""
    if not vary_key:
        return key
    return key + b"\x01" + _latin1("\n".join(f"{n}:{_norm_vary(n, v)}" for n, v in vary_key))


def variant_key_for(key: bytes, request: CacheRequest, stored: StoredResponse) -> bytes:
    """Where the variant ``request`` selects is kept, when ``stored`` (the entry under ``key``)
    varies and does not match it: look there, and store the new variant there. (The entry under
    ``key`` itself holds the first variant stored; every other one lives under its variant key.)"""
    return variant_key(key, vary_key_of(request, stored.headers))


def _norm_vary(name: str, value: str) -> str:
    """A request value as Vary compares it: list members trimmed; for Accept-Encoding also
    lower-cased and sorted (its members' order and case carry no meaning, RFC 9110 12.5.3)."""
    if "," not in value and name != "accept-encoding":
        return value.strip()
    members = [m.strip() for m in value.split(",") if m.strip()]
    if name == "accept-encoding":
        members = sorted(m.lower().replace(" ", "") for m in members)
    return ",".join(members)


def vary_matches(request: CacheRequest, stored: StoredResponse) -> bool:
    """Whether ``request`` selects ``stored`` by its Vary (RFC 9111 4.1); ``Vary: *`` never
    matches."""
    for name, value in stored.vary_key:
        if name == "*":
            return False
        now = ", ".join(request.headers.get_all(name))
        if now != value and _norm_vary(name, now) != _norm_vary(name, value):
            return False
    return True
