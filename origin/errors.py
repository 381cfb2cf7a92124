"""The origin's one exception root, and the one table that maps failures to the wire.

Every error ``headwater.origin`` raises derives from :class:`OriginError` and carries the HTTP
status and the JSON error code a client is answered with; the app answers
``{"error": code, "message": ...}``. :func:`wire_of` is the only place an exception becomes a
status and a code; :func:`from_catalogue` is the only place a catalogue error
(:mod:`~headwater.origin.catalogue.errors`) becomes one of them. tus fixes some statuses (409 offset mismatch, 412 version, 460 checksum
mismatch, 413 too large, 415 content type): they are here too, so one table says everything.
"""

from __future__ import annotations

__all__ = [
    "OriginError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed", "Conflict",
    "Gone", "PreconditionFailed", "PayloadTooLarge", "UnsupportedMediaType", "ChecksumMismatch",
    "TooManyRequests", "RateLimited", "OriginNotAllowed", "StoreUnavailable", "InvalidClient", "InvalidGrant",
    "InvalidScope", "UnsupportedGrantType", "TranscodeError", "InvalidMedia", "TranscodeFailed", "InvalidJson",
    "InvalidTitleRequest", "UploadNotFinished", "TitleNotFound", "TitleConflict", "BadSearch",
    "CatalogueUnavailable", "SearchUnavailable", "Withdrawn", "NotPublished", "PlaybackUnavailable", "from_catalogue", "wire_of",
]

from .catalogue import errors as catalogue_errors


class OriginError(Exception):
    """Root of every error the origin raises."""

    http_status: int = 500
    code: str = "internal_error"


class BadRequest(OriginError):
    """A malformed request: a header that is not what tus or OAuth2 says it is."""

    http_status = 400
    code = "bad_request"


class Unauthorized(OriginError):
    """No bearer token, or one that fails verification (signature, issuer, audience, expiry)."""

    http_status = 401
    code = "invalid_token"


class Forbidden(OriginError):
    """A valid token without the route's scope. (Another client's upload is NotFound: a 403
    would tell which upload ids exist.)"""

    http_status = 403
    code = "insufficient_scope"


class NotFound(OriginError):
    """An unknown route or upload, or another client's upload."""

    http_status = 404
    code = "not_found"


class MethodNotAllowed(OriginError):
    """A method the route does not serve."""

    http_status = 405
    code = "method_not_allowed"

    def __init__(self, message: str = "", *, allow: str = "") -> None:
        super().__init__(message)
        self.allow = allow  # the Allow header's methods ("" = the app's default for the path)


class Conflict(OriginError):
    """tus: ``Upload-Offset`` differs from the upload's offset, or the upload is busy with
    another PATCH."""

    http_status = 409
    code = "offset_mismatch"


class Gone(OriginError):
    """An upload past its expiry."""

    http_status = 410
    code = "upload_expired"


class PreconditionFailed(OriginError):
    """tus: a ``Tus-Resumable`` version the server does not speak."""

    http_status = 412
    code = "unsupported_version"


class PayloadTooLarge(OriginError):
    """An upload over ``max_upload_size``, or a PATCH past the upload's length."""

    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaType(OriginError):
    """A PATCH whose Content-Type is not ``application/offset+octet-stream``."""

    http_status = 415
    code = "unsupported_media_type"


class ChecksumMismatch(OriginError):
    """tus checksum extension: the PATCH body does not match ``Upload-Checksum``."""

    http_status = 460
    code = "checksum_mismatch"


class TooManyRequests(OriginError):
    """A client over its number of uploads in progress. ``retry_after_s`` is the Retry-After
    the answer carries."""

    http_status = 429
    code = "too_many_uploads"

    def __init__(self, message: str, *, retry_after_s: int = 60) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(TooManyRequests):
    """A client address or a client over its request rate (:mod:`.ratelimit`)."""

    code = "too_many_requests"


class OriginNotAllowed(Forbidden):
    """A CORS preflight from an origin not in ``allowed_origins``."""

    code = "origin_not_allowed"


class StoreUnavailable(OriginError):
    """The object store refused or did not answer; nothing was acknowledged."""

    http_status = 503
    code = "store_unavailable"


class SpoolFull(OriginError):
    """The process's budget of unverified spool bytes (``[origin] max_unverified_spool``) is
    taken by other checksummed PATCHes: nothing of this one was read; retry after
    ``retry_after_s`` (503 with Retry-After, which tus clients treat as retryable)."""

    http_status = 503
    code = "spool_busy"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InsufficientStorage(OriginError):
    """The origin's own disk cannot take this request: the spool's filesystem is below
    ``min_spool_free``, or full (507)."""

    http_status = 507
    code = "insufficient_storage"


# OAuth2 token endpoint errors (RFC 6749 §5.2): the code is the "error" value the RFC names.

class InvalidClient(OriginError):
    """Unknown client or wrong secret (RFC 6749 §5.2: 401 with WWW-Authenticate)."""

    http_status = 401
    code = "invalid_client"


class InvalidGrant(OriginError):
    """A malformed token request."""

    http_status = 400
    code = "invalid_request"


class InvalidScope(OriginError):
    """A scope the client may not have."""

    http_status = 400
    code = "invalid_scope"


class UnsupportedGrantType(OriginError):
    """A grant other than client_credentials."""

    http_status = 400
    code = "unsupported_grant_type"


class BadAuthorizationCode(OriginError):
    """An authorization code that is unknown, used already, expired, for another redirect URI,
    or whose PKCE verifier does not match (RFC 6749 §5.2 ``invalid_grant``)."""

    http_status = 400
    code = "invalid_grant"


class BadAuthorizeRequest(OriginError):
    """A sign-in (``/oauth/authorize``) request that cannot be answered by a redirect: an unknown
    client, a redirect URI off this site, no PKCE challenge. Shown on the page, never redirected
    (RFC 6749 §4.1.2.1)."""

    http_status = 400
    code = "invalid_request"


class LoginFailed(OriginError):
    """An unknown user or a wrong password (one answer for both)."""

    http_status = 401
    code = "access_denied"


class TranscodeError(OriginError):
    """A transcode job that could not finish. ``retry``: whether running it again may help
    (the job is queued again after a backoff) or not (the title fails at once)."""

    http_status = 500
    code = "transcode_failed"
    retry: bool = True


class InvalidMedia(TranscodeError):
    """The upload is not a video ffprobe can read (corrupt, truncated, audio only, not media),
    or is larger than the transcoder takes: running again cannot help."""

    http_status = 422
    code = "invalid_media"
    retry = False


class TranscodeFailed(TranscodeError):
    """ffmpeg or the packager failed on input that probed as sound, or ran past its time: the
    message carries the tail of ffmpeg's stderr. Retried."""


# The catalogue's API (/api/titles, /api/search, ...).

class InvalidJson(OriginError):
    """A request body that is not one JSON object of the route's fields and types."""

    http_status = 400
    code = "invalid_json"


class InvalidTitleRequest(OriginError):
    """Title metadata that breaks a rule of the catalogue (empty title, year out of range)."""

    http_status = 422
    code = "invalid_title"


class UploadNotFinished(OriginError):
    """A title asked for from an upload whose bytes are not all in the store yet."""

    http_status = 409
    code = "upload_not_finished"


class TitleNotFound(OriginError):
    """No title with this id that the caller may see (an unpublished one of another owner is
    not found, not forbidden: its existence is not told)."""

    http_status = 404
    code = "title_not_found"


class TitleConflict(OriginError):
    """A state change the title's state machine forbids, or a job's lease lost."""

    http_status = 409
    code = "illegal_transition"


class BadSearch(OriginError):
    """A search or listing request out of bounds: a bad filter, page or query."""

    http_status = 400
    code = "bad_query"


class CatalogueUnavailable(OriginError):
    """The catalogue's database cannot be reached (down, or not answered since this host
    started), or is too busy: retry after ``retry_after_s`` (503 with Retry-After)."""

    http_status = 503
    code = "catalogue_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SearchUnavailable(CatalogueUnavailable):
    """A search while the catalogue's database is away and this host's local search index is
    older than its bound (or not built): retry later."""

    code = "search_unavailable"


_FROM_CATALOGUE: dict[type[catalogue_errors.CatalogueError], type[OriginError]] = {
    catalogue_errors.BadQuery: BadSearch,
    catalogue_errors.InvalidTitle: InvalidTitleRequest,
    catalogue_errors.TitleNotFound: TitleNotFound,
    catalogue_errors.IllegalTransition: TitleConflict,
    catalogue_errors.LeaseLost: TitleConflict,
    catalogue_errors.JobNotFound: NotFound,
    catalogue_errors.BackendUnavailable: CatalogueUnavailable,
    catalogue_errors.SearchUnavailable: SearchUnavailable,
}


def from_catalogue(exc: catalogue_errors.CatalogueError) -> OriginError:
    """The origin error a catalogue error is answered as (its message kept)."""
    for cls in type(exc).__mro__:
        if cls in _FROM_CATALOGUE:
            return _FROM_CATALOGUE[cls](str(exc))
    return OriginError(str(exc))

class Withdrawn(OriginError):
    """A title its publisher withdrew: its objects and its playback are gone (410)."""

    http_status = 410
    code = "withdrawn"


class NotPublished(NotFound):
    """A title that does not exist, is not published yet, or an object outside its published
    version: 404, as for any unknown object (nothing tells a client which)."""

    code = "not_found"


class PlaybackUnavailable(OriginError):
    """Playback cannot be granted by this origin's configuration (no CDN signing key, no licence
    token key here)."""

    http_status = 503
    code = "playback_unavailable"


def wire_of(exc: BaseException) -> tuple[int, str]:
    """The (HTTP status, JSON error code) a client is answered for ``exc``."""
    if isinstance(exc, OriginError):
        return exc.http_status, exc.code
    return 500, "internal_error"
