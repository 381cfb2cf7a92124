"""The ``Range`` request header as S3 applies it (RFC 9110, single byte range only).

* ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``: one range, clamped to the object.
* A syntactically invalid header, another unit, or several ranges: ignored (whole object, 200);
  S3 does not serve multipart/byteranges.
* A valid range that selects nothing (first byte at or past the end, ``bytes=-0``, any range on an
  empty object): InvalidRange, 416, with ``ActualObjectSize``; the response then carries
  ``Content-Range: bytes */<size>``.
"""

from __future__ import annotations

import re

from .errors import InvalidRange

__all__ = ["parse_range", "content_range", "unsatisfied_content_range"]

_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*", re.IGNORECASE)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` to serve with 206, or None to serve the whole object with 200.

    Raises InvalidRange when the range is well-formed but unsatisfiable for ``size``.
    """
    if value is None:
        return None
    m = _RANGE.fullmatch(value)
    if not m:
        return None                       # malformed, other unit, or several ranges
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:                          # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size, value)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None                        # invalid per RFC 9110: ignored
    if start >= size:
        raise _unsatisfiable(size, value)
    if end is None or end >= size:
        end = size - 1
    return start, end


def _unsatisfiable(size: int, requested: str) -> InvalidRange:
    return InvalidRange(RangeRequested=requested.strip(), ActualObjectSize=size,
                        headers=[("content-range", unsatisfied_content_range(size))])


def content_range(start: int, end: int, size: int) -> str:
    """``bytes start-end/size`` for a 206 response."""
    return f"bytes {start}-{end}/{size}"


def unsatisfied_content_range(size: int) -> str:
    return f"bytes */{size}"
