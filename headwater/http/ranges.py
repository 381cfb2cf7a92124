"""The ``Range`` request header (RFC 9110 14.1-14.4), sans-IO, for every daemon that serves bytes.

Two steps, because a cache may have to read the header before it knows the representation's
size (a miss on a sliced object):

* ``parse_range_header(value)``: syntax only. ``bytes=a-b``, ``bytes=a-``, ``bytes=-n`` and lists
  of them (``bytes=0-99, 200-299``) become a tuple of ``(first, last)`` specs (``first`` None for
  a suffix of ``last`` bytes, ``last`` None for "to the end"). None when the header must be
  ignored: absent, another unit, malformed, a spec with ``last < first`` (RFC 9110 14.1.1 calls
  the whole set invalid), or more than ``max_specs`` specs (a bound against CVE-2011-3192-style
  floods). The unit is matched case-insensitively and whitespace around ``=``, ``-`` and ``,``
  is tolerated.
* ``resolve(specs, size)``: the byte ranges to send, as inclusive ``(start, end)`` pairs clamped
  to ``size``, in request order; specs that select nothing are dropped; if none is left,
  ``RangeNotSatisfiable`` (416 with ``Content-Range: bytes */size``).

``parse_range(value, size)`` is the single-range form (several ranges: None, serve the whole
representation), what S3 does. ``coalesce`` merges overlapping or nearby ranges (RFC 9110 14.3
lets a server do so), for whoever answers several ranges at once.
"""

from __future__ import annotations

import re

__all__ = [
    "RangeNotSatisfiable",
    "RangeSpec",
    "MAX_SPECS",
    "parse_range_header",
    "resolve",
    "parse_range",
    "coalesce",
    "content_range",
    "unsatisfied_content_range",
]

RangeSpec = tuple[int | None, int | None]
"""``(first, last)``: ``(a, b)``, ``(a, None)`` for ``a-``, ``(None, n)`` for the suffix ``-n``."""

MAX_SPECS = 100
"""More range specs than this in one header and the header is ignored."""

_UNIT = re.compile(r"[ \t]*bytes[ \t]*=", re.IGNORECASE)
# Applied to a spec already stripped of OWS: adjacent optional runs of whitespace around an
# optional digit run would backtrack quadratically on a long run of spaces.
_SPEC = re.compile(r"(\d*)[ \t]*-[ \t]*(\d*)")
_DIGITS_MAX = 19                          # past 10^19 bytes nothing is satisfiable anyway


class RangeNotSatisfiable(Exception):
    """No range of a syntactically valid header selects a byte of a ``size``-byte
    representation: answer 416 with ``unsatisfied_content_range(size)``."""

    def __init__(self, size: int, requested: str = "") -> None:
        super().__init__(f"range {requested!r} not satisfiable for {size} bytes")
        self.size = size
        self.requested = requested


def _int(digits: str) -> int:
    # Very long digit strings are clamped rather than parsed (int() on them is quadratic).
    return int(digits) if len(digits) <= _DIGITS_MAX else 10 ** _DIGITS_MAX


def parse_range_header(value: str | None, *, max_specs: int = MAX_SPECS) -> tuple[RangeSpec, ...] | None:
    """The specs of a ``Range`` value, or None when it is to be ignored (module docstring)."""
    if not value:
        return None
    m = _UNIT.match(value)
    if m is None:
        return None
    specs: list[RangeSpec] = []
    for part in value[m.end():].split(","):
        part = part.strip(" \t")
        if not part:
            continue                      # empty list elements are allowed (RFC 9110 5.6.1)
        s = _SPEC.fullmatch(part)
        if s is None:
            return None
        first, last = s.group(1), s.group(2)
        if not first and not last:
            return None
        if not first:
            specs.append((None, _int(last)))
        else:
            a = _int(first)
            b = _int(last) if last else None
            if b is not None and b < a:
                return None
            specs.append((a, b))
        if len(specs) > max_specs:
            return None
    return tuple(specs) if specs else None


def resolve(specs: tuple[RangeSpec, ...], size: int, requested: str = "") -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` ranges of a ``size``-byte representation that ``specs``
    select, in order; raises RangeNotSatisfiable when none does."""
    out: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:                 # suffix: the last ``last`` bytes
            assert last is not None
            if last == 0 or size == 0:
                continue
            out.append((max(0, size - last), size - 1))
        elif first < size:
            end = size - 1 if last is None or last >= size else last
            out.append((first, end))
    if not out:
        raise RangeNotSatisfiable(size, requested)
    return out


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The one ``(start, end)`` range to serve with 206, or None to serve everything with 200
    (no header, an ignorable one, or several ranges). Raises RangeNotSatisfiable."""
    specs = parse_range_header(value, max_specs=1)
    if specs is None or len(specs) != 1:
        return None
    return resolve(specs, size, (value or "").strip())[0]


def coalesce(ranges: list[tuple[int, int]], *, gap: int = 0) -> list[tuple[int, int]]:
    """``ranges`` sorted, with overlapping ones and ones at most ``gap`` bytes apart merged."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1 + gap:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def content_range(start: int, end: int, size: int) -> str:
    """``bytes start-end/size`` for a 206 response."""
    return f"bytes {start}-{end}/{size}"


def unsatisfied_content_range(size: int) -> str:
    """``bytes */size`` for a 416 response."""
    return f"bytes */{size}"
