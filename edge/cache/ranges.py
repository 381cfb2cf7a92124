"""Answering a ``Range`` request from a stored response: 200, 206 (one range or
multipart/byteranges) or 416 (RFC 9110 14 and 13.1.5).

``plan_range(method, request_headers, stored, boundary=...)`` says what to send, as a
``RangePlan``: the status, the fields to add (``Content-Range``, ``Content-Type``,
``Content-Length``) and the body as ``parts``, each either literal bytes (multipart framing) or
``(offset, length)`` of the stored body, for the daemon to stream (sendfile for a file region).
The syntax is the kernel's (``headwater.http.ranges``, also the object store's).

Choices:

* Range applies to GET of a stored 200 only (RFC 9110 14.2: GET is the one method with range
  handling; a stored 206 or another status is served as it is).
* ``If-Range`` (13.1.5) with an entity-tag matches only the stored response's **strong** ETag
  (a weak one never matches); with an HTTP-date, only a stored ``Last-Modified`` equal to it that
  is itself strong (``Date`` at least a second later, RFC 9110 8.8.2.2). No match: the Range is
  ignored and the whole response sent with 200.
* Several ranges are coalesced (overlapping or within ``COALESCE_GAP`` bytes merged). One range
  left: a plain 206. Several (at most ``MAX_PARTS``): 206 ``multipart/byteranges``, since a
  player or a download tool asking for two pieces of a 4 GiB file must not get all 4 GiB. More
  than ``MAX_PARTS``: the Range is ignored (200 with the whole body), which RFC 9110 14.2 allows
  and which cuts the many-small-ranges amplification attack (CVE-2011-3192) to one plain response.
* A valid header that selects nothing: 416 with ``Content-Range: bytes */size``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from headwater.http.ranges import (
    RangeNotSatisfiable,
    coalesce,
    content_range,
    parse_range_header,
    resolve,
    unsatisfied_content_range,
)

from .model import HeaderView, StoredResponse
from .freshness import parse_http_date

__all__ = ["RangePlan", "MAX_PARTS", "COALESCE_GAP", "plan_range", "whole_plan", "if_range_matches"]

MAX_PARTS = 16
"""More (coalesced) ranges than this in one request: answer 200 with the whole body."""
COALESCE_GAP = 80
"""Ranges this close are merged: a part's framing costs about this many bytes."""

BodyPart = bytes | tuple[int, int]
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass(frozen=True, slots=True)
class RangePlan:
    """What to send: ``status``; ``headers`` to set on top of the stored ones (replacing any of
    the same name: for 206 multipart this includes ``content-type``); the body ``parts`` in order
    (bytes, or ``(offset, length)`` of the stored body); ``length``: the body's total bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    parts: tuple[BodyPart, ...]
    length: int


_WHOLE_MEMO_MAX = 4096
_wholes: dict[tuple[int, int], RangePlan] = {}


def whole_plan(size: int, status: int = 200) -> RangePlan:
    """The plan of the whole ``size``-byte body of a stored ``status`` response (a 200, or a
    stored 404, 301 ...: answered as it was stored): what ``plan_range`` answers to a request
    without ``Range``. Memoised by size and status (a plan is immutable; a cache hit asks for the
    same few sizes over and over)."""
    plan = _wholes.get((size, status))
    if plan is None:
        plan = RangePlan(status, (("content-length", str(size)),), ((0, size),) if size else (), size)
        if len(_wholes) >= _WHOLE_MEMO_MAX:
            _wholes.clear()
        _wholes[(size, status)] = plan
    return plan


_whole = whole_plan


def if_range_matches(if_range: str, stored: StoredResponse) -> bool:
    """Whether ``If-Range: if_range`` validates ``stored`` (RFC 9110 13.1.5)."""
    v = if_range.strip()
    if v.startswith(('"', "W/")):
        etag = stored.get("etag")
        return etag is not None and not v.startswith("W/") and not etag.strip().startswith("W/") \
            and etag.strip() == v
    when = parse_http_date(v)
    lm = parse_http_date(stored.get("last-modified"))
    if when is None or lm is None or when != lm:
        return False
    date = parse_http_date(stored.get("date"))
    return date is not None and date >= lm + 1


def plan_range(method: str, request_headers: HeaderView, stored: StoredResponse, *,
               boundary: str) -> RangePlan:
    """The response to ``method`` with ``request_headers`` from ``stored`` (its body is
    ``stored.body_size`` bytes). ``boundary`` (random, from the caller: randomness is injected)
    separates multipart parts."""
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError("boundary must be 1..70 of RFC 2046's bchars, not ending in a space")
    size = stored.body_size
    raw = request_headers.get("range")
    if raw is None or method != "GET" or stored.status != 200:
        return _whole(size, stored.status)
    specs = parse_range_header(raw)
    if specs is None:
        return _whole(size)
    if_range = request_headers.get("if-range")
    if if_range is not None and not if_range_matches(if_range, stored):
        return _whole(size)
    try:
        ranges = resolve(specs, size, raw)
    except RangeNotSatisfiable:
        return RangePlan(416, (("content-range", unsatisfied_content_range(size)),
                               ("content-length", "0")), (), 0)
    if len(ranges) > 1:
        ranges = coalesce(ranges, gap=COALESCE_GAP)
    if len(ranges) == 1:
        start, end = ranges[0]
        n = end - start + 1
        return RangePlan(206, (("content-range", content_range(start, end, size)),
                               ("content-length", str(n))), ((start, n),), n)
    if len(ranges) > MAX_PARTS:
        return _whole(size)
    ctype = stored.get("content-type")
    parts: list[BodyPart] = []
    total = 0
    for i, (start, end) in enumerate(ranges):
        head = (("\r\n" if i else "") + f"--{boundary}\r\n"
                + (f"content-type: {ctype}\r\n" if ctype else "")
                + f"content-range: {content_range(start, end, size)}\r\n\r\n").encode("latin-1")
        parts.append(head)
        parts.append((start, end - start + 1))
        total += len(head) + end - start + 1
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    parts.append(tail)
    total += len(tail)
    return RangePlan(206, (("content-type", f"multipart/byteranges; boundary={boundary}"),
                           ("content-length", str(total))), tuple(parts), total)
