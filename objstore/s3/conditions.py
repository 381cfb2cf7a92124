"""Conditional requests as S3 evaluates them, as pure functions over the current object record.

GET/HEAD (RFC 9110 section 13.2.2 order, which gives S3's documented precedence):

1. ``If-Match`` present: no match -> 412. Otherwise ``If-Unmodified-Since`` is evaluated:
   modified after it -> 412. (``If-Match`` true + ``If-Unmodified-Since`` false -> 200.)
2. ``If-None-Match`` present: a match -> 304. Otherwise ``If-Modified-Since``: not modified
   since -> 304. (``If-None-Match`` false + ``If-Modified-Since`` true -> 304.)

CopyObject / UploadPartCopy apply the same order to ``x-amz-copy-source-if-*`` against the
source, with every failure a 412. Conditional writes: ``If-None-Match: *`` fails with 412 when
the key exists; ``If-Match: <etag>`` fails with 404 when it does not and 412 on a mismatch.

Dates compare at one-second resolution (HTTP dates carry no fraction); unparseable dates are
ignored, as HTTP requires.
"""

from __future__ import annotations

from headwater.http.types import Headers

from .errors import NoSuchKey, NotImplemented, NotModified, PreconditionFailed
from .xmlio import http_date, parse_http_date

__all__ = ["etag_matches", "check_get_preconditions", "check_copy_source_preconditions",
           "check_put_preconditions"]


def _tags(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _bare(tag: str, *, weak: bool) -> str:
    t = tag.strip()
    if weak and t.startswith("W/"):
        t = t[2:]
    if len(t) >= 2 and t[0] == '"' and t[-1] == '"':
        t = t[1:-1]
    return t


def etag_matches(header_value: str, etag: str, *, weak: bool = False) -> bool:
    """Does an If-Match / If-None-Match list match ``etag`` (quoted or not)? ``*`` matches any."""
    current = _bare(etag, weak=True)
    for tag in _tags(header_value):
        if tag == "*":
            return True
        if not weak and tag.startswith("W/"):
            continue            # a weak tag never matches strongly
        if _bare(tag, weak=weak) == current:
            return True
    return False


def _unmodified_since(value: str | None, last_modified: float) -> bool | None:
    if value is None:
        return None
    t = parse_http_date(value)
    if t is None:
        return None
    return int(last_modified) <= int(t)


def _evaluate(*, if_match: str | None, if_none_match: str | None, if_modified_since: str | None,
              if_unmodified_since: str | None, etag: str, last_modified: float) -> str | None:
    """'412', '304' or None."""
    if if_match is not None:
        if not etag_matches(if_match, etag):
            return "412"
    elif _unmodified_since(if_unmodified_since, last_modified) is False:
        return "412"
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, weak=True):
            return "304"
    elif _unmodified_since(if_modified_since, last_modified) is True:
        return "304"
    return None


def _validators(etag: str, last_modified: float) -> list[tuple[str, str]]:
    q = etag if etag.startswith('"') else f'"{etag}"'
    return [("etag", q), ("last-modified", http_date(last_modified))]


def check_get_preconditions(headers: Headers, *, etag: str, last_modified: float) -> None:
    """GET/HEAD: raise PreconditionFailed (412) or NotModified (304, carrying ETag and
    Last-Modified headers); return if the request proceeds."""
    r = _evaluate(if_match=headers.get("if-match"), if_none_match=headers.get("if-none-match"),
                  if_modified_since=headers.get("if-modified-since"),
                  if_unmodified_since=headers.get("if-unmodified-since"),
                  etag=etag, last_modified=last_modified)
    if r == "412":
        raise PreconditionFailed(Condition="If-Match" if headers.get("if-match") is not None
                                 else "If-Unmodified-Since")
    if r == "304":
        raise NotModified(headers=_validators(etag, last_modified))


def check_copy_source_preconditions(headers: Headers, *, etag: str, last_modified: float) -> None:
    """CopyObject / UploadPartCopy: every failed x-amz-copy-source-if-* is PreconditionFailed."""
    p = "x-amz-copy-source-"
    r = _evaluate(if_match=headers.get(p + "if-match"),
                  if_none_match=headers.get(p + "if-none-match"),
                  if_modified_since=headers.get(p + "if-modified-since"),
                  if_unmodified_since=headers.get(p + "if-unmodified-since"),
                  etag=etag, last_modified=last_modified)
    if r is not None:
        raise PreconditionFailed(Condition="x-amz-copy-source-If-*")


def check_put_preconditions(headers: Headers, *, current_etag: str | None) -> None:
    """Conditional PutObject / CompleteMultipartUpload / CopyObject destination.

    ``current_etag`` is the ETag of the key's current object, None if there is none.
    """
    inm = headers.get("if-none-match")
    if inm is not None:
        if inm.strip() != "*":
            raise NotImplemented("If-None-Match on writes only supports '*'", Header="If-None-Match")
        if current_etag is not None:
            raise PreconditionFailed(Condition="If-None-Match")
    im = headers.get("if-match")
    if im is not None:
        if current_etag is None:
            raise NoSuchKey()
        if not etag_matches(im, current_etag):
            raise PreconditionFailed(Condition="If-Match")
