"""Slice maths: large objects cached as fixed-size slices fetched with upstream Range requests.

An object is cut into slices of ``slice_size`` bytes (the last one shorter): slice ``i`` holds
bytes ``[i * slice_size, min((i + 1) * slice_size, total))``. Each slice is its own cache entry
(``slice_key(key, i)``), fetched upstream with ``Range: bytes=a-b`` (``slice_request_headers``),
so a seek into a 4 GiB file fetches only the slices it touches (as nginx's slice module does).

The total size is unknown until the first slice arrives: the upstream's
``Content-Range: bytes a-b/TOTAL`` tells it (``read_slice_response``). An origin that ignores
Range answers 200 with the whole body: that is handled too (``SliceResponse.whole``), the daemon
then cuts the body it streams into slices at ``slice_bounds`` offsets. Slices may only be
combined when they come from one representation: ``same_representation`` compares strong ETags
(else Last-Modified), and later slice fetches carry ``If-Range`` with the first slice's
validator, so a changed object answers 200 (the new whole) rather than a mismatched piece.

The object's metadata (what ``freshness.storable`` / ``decide`` judge, and what a client's
``ranges.plan_range`` answers from) is the first slice's header fields turned into those of the
whole 200 representation: ``whole_headers`` (no Content-Range, Content-Length the total).

``pieces(start, end, slice_size)`` maps a client's byte range onto the slices: for each touched
slice, its index, the offset inside it and the length to send, in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from headwater.http.ranges import content_range

__all__ = [
    "MIN_SLICE",
    "MAX_SLICE",
    "SliceError",
    "SliceResponse",
    "Piece",
    "check_slice_size",
    "slice_count",
    "slices_touched",
    "slice_bounds",
    "slice_key",
    "slice_request_headers",
    "pieces",
    "parse_content_range",
    "read_slice_response",
    "same_representation",
    "whole_headers",
]

MIN_SLICE = 64 * 1024
MAX_SLICE = 64 * 1024 * 1024


class SliceError(Exception):
    """An upstream answer that cannot be a slice of this object (wrong range, no length, or a
    different representation): store nothing, fail the request or refetch."""


def check_slice_size(slice_size: int) -> int:
    """``slice_size`` if it is a power of two within [MIN_SLICE, MAX_SLICE], else ValueError."""
    if not MIN_SLICE <= slice_size <= MAX_SLICE or slice_size & (slice_size - 1):
        raise ValueError(f"slice size {slice_size} must be a power of two in [{MIN_SLICE}, {MAX_SLICE}]")
    return slice_size


def slice_count(total: int, slice_size: int) -> int:
    """How many slices a ``total``-byte object has (0 for an empty one)."""
    return -(-total // slice_size)


def slices_touched(start: int, end: int, slice_size: int) -> range:
    """Indexes of the slices that bytes ``start..end`` (inclusive) touch."""
    if start < 0 or end < start:
        raise ValueError(f"bad byte range {start}-{end}")
    return range(start // slice_size, end // slice_size + 1)


def slice_bounds(index: int, slice_size: int, total: int | None = None) -> tuple[int, int]:
    """Inclusive ``(first, last)`` byte of slice ``index``; clamped to ``total`` when known."""
    if index < 0:
        raise ValueError("slice index must not be negative")
    first = index * slice_size
    last = first + slice_size - 1
    if total is not None:
        if first >= total:
            raise ValueError(f"slice {index} starts past the end of a {total}-byte object")
        last = min(last, total - 1)
    return first, last


def slice_key(key: bytes, index: int) -> bytes:
    """The cache key of slice ``index`` of the object keyed ``key``."""
    return key + b"\x02slice:" + str(index).encode()


def slice_request_headers(index: int, slice_size: int, *,
                          validator: str | None = None) -> tuple[tuple[str, str], ...]:
    """``Range`` for slice ``index``, and ``If-Range`` with ``validator`` (the first slice's
    strong ETag or Last-Modified) once the object's representation is known."""
    first, last = slice_bounds(index, slice_size)
    out = [("range", f"bytes={first}-{last}")]
    if validator is not None and not validator.startswith("W/"):
        out.append(("if-range", validator))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Piece:
    """Send ``length`` bytes of slice ``index`` from ``offset`` inside it."""

    index: int
    offset: int
    length: int


def pieces(start: int, end: int, slice_size: int) -> list[Piece]:
    """The slice pieces that make up bytes ``start..end`` (inclusive), in order."""
    out = []
    for i in slices_touched(start, end, slice_size):
        s_first = i * slice_size
        a = max(start, s_first)
        b = min(end, s_first + slice_size - 1)
        out.append(Piece(i, a - s_first, b - a + 1))
    return out


_CONTENT_RANGE = re.compile(r"[ \t]*bytes[ \t]+(?:(\d{1,19})-(\d{1,19})|\*)/(\d{1,19}|\*)[ \t]*",
                            re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None] | None:
    """``(first, last, total)`` of a ``Content-Range`` (RFC 9110 14.4); ``first``/``last`` None
    for ``bytes */total``, ``total`` None for ``/*``. None if malformed or inconsistent."""
    if value is None:
        return None
    m = _CONTENT_RANGE.fullmatch(value)
    if m is None:
        return None
    a, b, t = m.groups()
    total = None if t == "*" else int(t)
    if a is None:
        return (None, None, total) if total is not None else None
    first, last = int(a), int(b)
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


@dataclass(frozen=True, slots=True)
class SliceResponse:
    """An upstream answer to a slice fetch, checked: the object's ``total`` size; ``first`` and
    ``last`` byte the body holds; ``whole``: the origin ignored Range and sent all of it (200)."""

    total: int
    first: int
    last: int
    whole: bool

    @property
    def length(self) -> int:
        return self.last - self.first + 1 if self.total else 0


def _field(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def read_slice_response(status: int, headers: Iterable[tuple[str, str]], index: int,
                        slice_size: int) -> SliceResponse:
    """Check an upstream answer to ``slice_request_headers(index, ...)``. A 206 must carry exactly
    slice ``index``'s bytes (clamped to the total it states); a 200 is the whole object (its
    Content-Length is the total). Anything else raises SliceError (416: the object is shorter
    than the slice's start; the caller learns the total from ``parse_content_range``)."""
    hs = tuple(headers)
    if status == 200:
        cl = _field(hs, "content-length")
        if cl is None or not cl.strip().isdigit():
            raise SliceError("a 200 to a slice fetch without a Content-Length")
        total = int(cl.strip())
        return SliceResponse(total, 0, total - 1, True)
    if status != 206:
        raise SliceError(f"status {status} to a slice fetch")
    cr = parse_content_range(_field(hs, "content-range"))
    if cr is None or cr[0] is None or cr[2] is None:
        raise SliceError("a 206 without a usable Content-Range (a complete length is needed)")
    first, last, total = cr
    assert first is not None and last is not None
    want_first, want_last = index * slice_size, min(index * slice_size + slice_size - 1, total - 1)
    if first != want_first or last != want_last:
        raise SliceError(f"upstream sent {content_range(first, last, total)} for slice {index} "
                         f"(bytes {want_first}-{want_last})")
    cl = _field(hs, "content-length")
    if cl is not None and cl.strip() != str(last - first + 1):
        raise SliceError("Content-Length disagrees with Content-Range")
    return SliceResponse(total, first, last, False)


def same_representation(a: Iterable[tuple[str, str]], b: Iterable[tuple[str, str]]) -> bool:
    """Whether two responses' bodies are byte ranges of one representation: equal strong ETags,
    or, without ETags, equal Last-Modified. Weak ETags or no validator at all: False."""
    a, b = tuple(a), tuple(b)
    ea, eb = _field(a, "etag"), _field(b, "etag")
    if ea is not None or eb is not None:
        return ea is not None and eb is not None and not ea.strip().startswith("W/") \
            and ea.strip() == eb.strip()
    la, lb = _field(a, "last-modified"), _field(b, "last-modified")
    return la is not None and la == lb


def whole_headers(headers: Iterable[tuple[str, str]], total: int) -> tuple[tuple[str, str], ...]:
    """A slice response's fields as the whole representation's: ``Content-Range`` dropped,
    ``Content-Length`` set to ``total`` (names lower-cased)."""
    out = tuple((k.lower(), v) for k, v in headers if k.lower() not in ("content-range", "content-length"))
    return out + (("content-length", str(total)),)
