"""The edge's one exception root, and the one table that maps failures to HTTP statuses.

Every error the edge raises derives from :class:`EdgeError` and carries the status a client is
answered with (``http_status``). :func:`status_of` is the only place an exception becomes a
status: the edge's own errors by their class attribute, the HTTP core's by their own
``http_status``, anything else 500.

- :class:`UpstreamError` and its kinds: the next tier or the origin failed (connection refused,
  timeout, a broken response: wrong length, truncated body, garbage headers) -> 502/504; a
  stale stored response that must be revalidated and could not be -> 504;
- :class:`UpstreamBusy`: this worker has as many fetches open upstream as it may
  (:mod:`.upstreamslots`) and the wait for a slot ran out -> 503 with ``Retry-After``
  (:func:`headers_of`); the fetch was never sent;
- :class:`NoDistribution`: no distribution answers for the request's Host -> 404 (never
  forwarded anywhere);
- :class:`LoopDetected`: the request already passed through this daemon (its own id in Via) -> 508;
- :class:`MethodNotAllowed`: only GET and HEAD are served -> 405.
"""

from __future__ import annotations

from headwater.http.errors import HttpError

__all__ = [
    "EdgeError", "UpstreamError", "UpstreamUnavailable", "UpstreamTimeout", "UpstreamBroken",
    "RevalidationFailed", "UpstreamBusy",
    "NoDistribution", "LoopDetected", "MethodNotAllowed", "BadTarget", "CollapsedFetchFailed", "status_of",
    "headers_of",
]


class EdgeError(Exception):
    """Root of every error the edge raises; ``http_status`` is what a client is answered."""

    http_status: int = 500


class UpstreamError(EdgeError):
    """The next tier or the origin did not give a usable response."""

    http_status = 502


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset before the response head, or no upstream left to try."""

    http_status = 502


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (or stopped sending its body) within the timeout."""

    http_status = 504


class UpstreamBroken(UpstreamError):
    """A response that breaks HTTP: garbage head, body shorter or longer than its length."""

    http_status = 502


class RevalidationFailed(UpstreamError):
    """A stored response that must be revalidated (``must-revalidate``, ``proxy-revalidate``)
    could not be: the cache may not serve it stale, and RFC 9111 5.2.2.2 prefers 504."""

    http_status = 504


class CollapsedFetchFailed(UpstreamError):
    """The shared fetch a collapsed request was waiting on failed after it started streaming,
    or the waiter fell too far behind a response that is not stored to be read back."""

    http_status = 502


class UpstreamBusy(UpstreamError):
    """No upstream slot within the wait (:mod:`.upstreamslots`): the fetch was not sent. An
    UpstreamError, so a stale copy may answer instead (``stale-if-error``); else 503 with
    Retry-After (RFC 9110 15.6.4: overload, temporary). ``kind`` names the pool (``fetch`` or
    ``rest``); ``detail`` is CloudFront's detailed result type of a viewer's answer it cut short
    (a rest fetch refused: the viewer read too slowly to keep up with the shared fetch)."""

    http_status = 503

    def __init__(self, message: str, *, kind: str = "fetch", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = max(1, retry_after_s)

    @property
    def detail(self) -> str:
        return "SlowReaderOriginError" if self.kind == "rest" else "OriginConnectError"


class NoDistribution(EdgeError):
    """No ``[[distributions]]`` entry answers for this Host."""

    http_status = 404


class LoopDetected(EdgeError):
    """The request's Via already names this daemon: a tier loop in the configuration."""

    http_status = 508


class MethodNotAllowed(EdgeError):
    """The edge serves GET and HEAD only (a CDN in front of video)."""

    http_status = 405


class BadTarget(EdgeError):
    """A request path that is not ``/...`` (``*``, or anything the HTTP core let by): it would
    be appended to the upstream's ``http://host:port`` and could name another host."""

    http_status = 400


class PassBodyTooLarge(EdgeError):
    """A passed-through request's body is larger than the edge buffers for its upstream."""

    http_status = 413


def headers_of(error: BaseException) -> list[tuple[str, str]]:
    """The fields an error answer carries besides its status (``Retry-After`` of a refusal)."""
    retry = getattr(error, "retry_after_s", None)
    if isinstance(error, EdgeError) and retry is not None:
        return [("retry-after", str(int(retry)))]
    return []


def status_of(error: BaseException) -> int:
    """The HTTP status a client is answered with for ``error`` (the one mapping)."""
    if isinstance(error, (EdgeError, HttpError)):
        return error.http_status
    return 500
