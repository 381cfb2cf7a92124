"""Cache-Control and its CDN-targeted variants, parsed (RFC 9111 5.2, RFC 9110 5.6.1, RFC 9213).

``parse_cache_control(value)`` reads one field value (several field lines are joined with ``, ``
first: ``joined(headers, name)``). The syntax is RFC 9110's list: elements separated by commas
with optional whitespace, empty elements ignored; each element is ``token [ "=" ( token /
quoted-string ) ]``, names compared case-insensitively. An element that is not in that shape is
skipped up to the next comma outside a quoted string, read the restrictive way when it names a
directive (``no-store=)`` is no-store, a garbled ``max-age`` makes the response stale).

What the RFC leaves to the cache, decided here (RFC 9111 4.2.1 and 1.2.2):

* A ``max-age`` or ``s-maxage`` whose argument is not a non-negative integer (``max-age=abc``,
  ``max-age=-1``, ``max-age=1.5``, no argument), or that appears twice with different values,
  makes the response **stale** (``invalid_freshness``), as 4.2.1 encourages. Repeats with one
  value are harmless. The quoted form (``max-age="60"``) is accepted, since recipients must parse
  both forms of a directive argument (5.2).
* A delta-seconds value past 2^31 is taken as 2^31 (1.2.2), so huge values never overflow.
* ``no-cache`` and ``private`` either stand alone (the whole response) or carry field names
  (``no-cache="Set-Cookie, X-Id"``, or the token form of one name); the names come out lower
  case. When both forms occur, the unqualified one wins (the most restrictive).
* ``public`` with ``private``: private wins. ``no-store`` wins over everything.
* ``stale-while-revalidate`` and ``stale-if-error`` (RFC 5861): an invalid argument drops the
  directive (no stale window), since serving stale is the permissive choice.

Targeted fields (RFC 9213): a CDN's target list here is ``CDN-Cache-Control``, then
``Surrogate-Control`` (the older Edge Architecture field Fastly and Varnish honour). The first one
present with a valid, non-empty value replaces ``Cache-Control`` **and** ``Expires`` for this
response; an invalid one is ignored as if absent. ``CDN-Cache-Control`` is a Structured Fields
Dictionary (RFC 8941), so it is checked against that grammar; ``Surrogate-Control`` uses the list
syntax above and its ``max-age=N+M`` form (freshness plus a stale allowance) gives ``N``.

Parsed values are memoised by field value in a bounded table (stored responses repeat a handful
of values, and the hit path parses the stored response's field on every request).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

__all__ = [
    "CacheControl",
    "EMPTY",
    "DELTA_SECONDS_MAX",
    "TARGET_LIST",
    "parse_cache_control",
    "parse_cdn_cache_control",
    "parse_surrogate_control",
    "joined",
    "response_cache_control",
]

DELTA_SECONDS_MAX = 2 ** 31
"""RFC 9111 1.2.2: a delta-seconds value past what the cache can represent is taken as 2^31."""

TARGET_LIST = ("cdn-cache-control", "surrogate-control")
"""The targeted fields this CDN obeys, in precedence order (RFC 9213 2.2)."""

_MEMO_MAX = 4096


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The directives of one Cache-Control (or targeted) field value.

    Integers are seconds (None: absent). ``no_cache`` / ``private`` are the unqualified forms;
    ``no_cache_fields`` / ``private_fields`` the field names of the qualified forms.
    ``invalid_freshness`` means a malformed or conflicting ``max-age`` / ``s-maxage``: treat the
    response as stale. ``targeted`` says the directives came from a targeted field (then
    ``Expires`` is ignored too).
    """

    max_age: int | None = None
    s_maxage: int | None = None
    no_store: bool = False
    no_cache: bool = False
    no_cache_fields: tuple[str, ...] = ()
    private: bool = False
    private_fields: tuple[str, ...] = ()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    no_transform: bool = False
    immutable: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    # request directives
    max_stale: int | None = None          # DELTA_SECONDS_MAX for a bare max-stale (any staleness)
    min_fresh: int | None = None
    only_if_cached: bool = False
    invalid_freshness: bool = False
    targeted: bool = False


EMPTY = CacheControl()

_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# One list element: name, optional "=" argument (quoted-string or token), then OWS and a comma or
# the end. Anything else is a malformed element, skipped to the next comma (outside quotes).
_ELEMENT = re.compile(
    rf"[ \t]*({_TCHAR}+)[ \t]*(?:=[ \t]*(?:\"((?:[^\"\\]|\\.)*)\"|({_TCHAR}*)))?[ \t]*(?:,|\Z)")
_SKIP = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)*(?:,|\Z)')
_NAME = re.compile(rf"[ \t]*({_TCHAR}+)")
_RESTRICTIVE = frozenset({"no-store", "no-cache", "private", "must-revalidate", "proxy-revalidate"})
_QUOTED_PAIR = re.compile(r"\\(.)")
_DIGITS = re.compile(r"[0-9]+")

_memo_cc: dict[str, CacheControl] = {}
_memo_surrogate: dict[str, CacheControl | None] = {}
_memo_cdn: dict[str, CacheControl | None] = {}


def _delta(arg: str | None) -> int | None:
    """delta-seconds (RFC 9111 1.2.2), or None when ``arg`` is not one."""
    if arg is None or not _DIGITS.fullmatch(arg):
        return None
    # Digits past 2^31 are all the same to us; cut long strings before int() parses them.
    if len(arg) > 10:
        return DELTA_SECONDS_MAX
    return min(int(arg), DELTA_SECONDS_MAX)


def _field_names(arg: str) -> tuple[str, ...]:
    return tuple(n for n in (t.strip().lower() for t in arg.split(",")) if n)


def _elements(value: str) -> Iterable[tuple[str, str | None]]:
    """``(lower-case name, argument or None)`` for each well-formed element of a list value."""
    pos, end = 0, len(value)
    while pos < end:
        m = _ELEMENT.match(value, pos)
        if m is not None and m.end() > pos:
            name, quoted, token = m.group(1), m.group(2), m.group(3)
            if quoted is not None:
                arg: str | None = _QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted
            else:
                arg = token            # None without "=", "" for "name="
            yield name.lower(), arg
            pos = m.end()
            continue
        # Empty element (",," or OWS) or a malformed one: skip past the next comma outside quotes.
        s = _SKIP.match(value, pos)
        nxt = s.end() if s is not None and s.end() > pos else pos + 1
        # A malformed element still says what the origin meant, read the restrictive way: a
        # freshness directive ("max-age=60 x", "max-age==1") makes the response stale, and
        # no-store / no-cache / private / *-revalidate count in their unqualified form.
        n = _NAME.match(value, pos, nxt)
        if n is not None:
            name = n.group(1).lower()
            if name in ("max-age", "s-maxage"):
                yield name, ""
            elif name in _RESTRICTIVE:
                yield name, None
        pos = nxt


def _build(pairs: Iterable[tuple[str, str | None]], *, surrogate: bool = False,
           targeted: bool = False) -> CacheControl:
    f: dict[str, object] = {}
    invalid = False
    seen_delta: dict[str, str | None] = {}
    no_cache_fields: list[str] = []
    private_fields: list[str] = []
    for name, arg in pairs:
        if name in ("max-age", "s-maxage"):
            if surrogate and arg and "+" in arg:
                arg = arg.split("+", 1)[0].strip()
            v = _delta(arg)
            # Repeats conflict by their digits, not by the clamped value: two different values
            # past 2^31 still disagree (leading zeros aside).
            said = None if v is None else (arg.lstrip("0") or "0")  # type: ignore[union-attr]
            if name in seen_delta and seen_delta[name] != said:
                invalid = True
            seen_delta[name] = said
            if v is None:
                invalid = True
            else:
                f[name.replace("-", "_")] = v
        elif name in ("stale-while-revalidate", "stale-if-error", "min-fresh"):
            v = _delta(arg)
            if v is not None:
                key = name.replace("-", "_")
                prev = f.get(key)
                # Repeats: keep the smaller window (the more restrictive reading).
                f[key] = v if prev is None else min(prev, v)  # type: ignore[type-var]
        elif name == "max-stale":
            v = DELTA_SECONDS_MAX if arg is None else _delta(arg)
            if v is not None:
                f["max_stale"] = v
        elif name == "no-cache":
            if arg is None:
                f["no_cache"] = True
            else:
                no_cache_fields.extend(_field_names(arg))
        elif name == "private":
            if arg is None:
                f["private"] = True
            else:
                private_fields.extend(_field_names(arg))
        elif name in _FLAGS:
            f[_FLAGS[name]] = True
        # Unknown extension directives are ignored (RFC 9111 5.2.3).
    if f.get("no_cache"):
        no_cache_fields = []
    if f.get("private"):
        private_fields = []
        f.pop("public", None)
    return CacheControl(no_cache_fields=tuple(dict.fromkeys(no_cache_fields)),
                        private_fields=tuple(dict.fromkeys(private_fields)),
                        invalid_freshness=invalid, targeted=targeted, **f)  # type: ignore[arg-type]


_FLAGS = {
    "no-store": "no_store", "public": "public", "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate", "must-understand": "must_understand",
    "no-transform": "no_transform", "immutable": "immutable", "only-if-cached": "only_if_cached",
}


def _remember(memo: dict, key: str, value):
    if len(memo) >= _MEMO_MAX:
        # Bounded: a hostile origin or client sending unique values only ever costs a re-parse.
        memo.clear()
    memo[key] = value
    return value


def parse_cache_control(value: str | None) -> CacheControl:
    """The directives of a ``Cache-Control`` field value (request or response); EMPTY for None."""
    if not value:
        return EMPTY
    cc = _memo_cc.get(value)
    if cc is None:
        cc = _remember(_memo_cc, value, _build(_elements(value)))
    return cc


def parse_surrogate_control(value: str | None) -> CacheControl | None:
    """The directives of a ``Surrogate-Control`` value, or None when it is empty or holds no
    element (then it does not replace Cache-Control)."""
    if not value:
        return None
    if value in _memo_surrogate:
        return _memo_surrogate[value]
    pairs = list(_elements(value))
    cc = _build(pairs, surrogate=True, targeted=True) if pairs else None
    return _remember(_memo_surrogate, value, cc)


# RFC 8941 Dictionary: key ( "=" bare-item )? parameters, members separated by "," with OWS.
_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_BARE = (r'(?:-?[0-9]{1,15}(?:\.[0-9]{1,3})?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*"'
            r"|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*|\?[01]|:[A-Za-z0-9+/=]*:)")
_SF_PARAMS = rf"(?:;[ ]*{_SF_KEY}(?:={_SF_BARE})?)*"
_SF_MEMBER = re.compile(rf"({_SF_KEY})(?:=({_SF_BARE}))?{_SF_PARAMS}")
_SF_SEP = re.compile(r"[ \t]*,[ \t]*")


def parse_cdn_cache_control(value: str | None) -> CacheControl | None:
    """The directives of a ``CDN-Cache-Control`` value (RFC 9213), or None when it is absent,
    empty or not a valid Structured Fields Dictionary (then Cache-Control applies)."""
    if value is None:
        return None
    if value in _memo_cdn:
        return _memo_cdn[value]
    return _remember(_memo_cdn, value, _parse_sf_dictionary(value))


def _parse_sf_dictionary(value: str) -> CacheControl | None:
    text = value.strip(" \t")
    if not text:
        return None
    pairs: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        m = _SF_MEMBER.match(text, pos)
        if m is None:
            return None
        name, item = m.group(1), m.group(2)
        if item is None or item == "?1":
            arg: str | None = None                 # boolean true: a bare directive
        elif item == "?0":
            pos = m.end()
            arg = ""                               # false: the directive is off; skip it
            name = ""
        elif item.startswith('"'):
            arg = _QUOTED_PAIR.sub(r"\1", item[1:-1])
        else:
            arg = item
        if name:
            pairs.append((name, arg))
        pos = m.end()
        if pos == len(text):
            break
        s = _SF_SEP.match(text, pos)
        if s is None or s.end() == len(text):
            return None                            # junk, or a trailing comma: invalid
        pos = s.end()
    return _build(pairs, targeted=True)


def joined(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """Every line of list field ``name`` combined into one value (RFC 9110 5.3), or None."""
    values = [v for k, v in headers if k == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def response_cache_control(headers: Iterable[tuple[str, str]]) -> CacheControl:
    """The directives this CDN obeys for a response: the first valid targeted field of
    ``TARGET_LIST`` (``targeted=True``: ignore Expires too), else ``Cache-Control``."""
    headers = tuple(headers) if not isinstance(headers, tuple) else headers
    cdn = parse_cdn_cache_control(joined(headers, "cdn-cache-control"))
    if cdn is not None:
        return cdn
    sur = parse_surrogate_control(joined(headers, "surrogate-control"))
    if sur is not None:
        return sur
    return parse_cache_control(joined(headers, "cache-control"))
