"""The ``Range`` request header as S3 applies it (RFC 9110, single byte range only).

The parsing is the kernel's (``headwater.http.ranges``, shared with the edge); this module maps
it to S3's behaviour:

* ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``: one range, clamped to the object.
* A syntactically invalid header, another unit, or several ranges: ignored (whole object, 200);
  S3 does not serve multipart/byteranges.
* A valid range that selects nothing (first byte at or past the end, ``bytes=-0``, any range on an
  empty object): InvalidRange, 416, with ``ActualObjectSize``; the response then carries
  ``Content-Range: bytes */<size>``.
"""

from __future__ import annotations

from headwater.http import ranges as _ranges
from headwater.http.ranges import content_range, unsatisfied_content_range

from .errors import InvalidRange

__all__ = ["parse_range", "content_range", "unsatisfied_content_range"]


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` to serve with 206, or None to serve the whole object with 200.

    Raises InvalidRange when the range is well-formed but unsatisfiable for ``size``.
    """
    try:
        return _ranges.parse_range(value, size)
    except _ranges.RangeNotSatisfiable as e:
        raise _unsatisfiable(size, e.requested) from None


def _unsatisfiable(size: int, requested: str) -> InvalidRange:
    return InvalidRange(RangeRequested=requested.strip(), ActualObjectSize=size,
                        headers=[("content-range", unsatisfied_content_range(size))])
