"""The DRM package's one exception root, and the one table that maps failures to the wire.

Every error ``headwater.drm`` raises derives from :class:`DrmError` and carries the HTTP status
and the JSON error code a licence client is answered with (``http_status``, ``code``); the
packager's command prints the message and exits non-zero. :func:`wire_of` is the only place an
exception becomes a status and a code.
"""

from __future__ import annotations

__all__ = [
    "DrmError", "MalformedMedia", "UnsupportedMedia", "BadRequest", "Unauthorized",
    "Forbidden", "NotFound", "MethodNotAllowed", "PayloadTooLarge", "TooManyRequests", "KeyStoreError",
    "BadKey", "wire_of",
]


class DrmError(Exception):
    """Root of every error the DRM package raises."""

    http_status: int = 500
    code: str = "internal_error"


class MalformedMedia(DrmError):
    """An input that breaks ISO-BMFF or its codec: a truncated or oversized box, a sample table
    that points outside the file, a NAL unit longer than its sample."""

    http_status = 422
    code = "malformed_media"


class UnsupportedMedia(DrmError):
    """Well-formed input the packager does not handle (a codec other than H.264, HEVC or AAC; a
    track with no keyframe)."""

    http_status = 415
    code = "unsupported_media"


class BadRequest(DrmError):
    """A malformed licence request (not JSON, no ``kids``, a KID that is not 16 bytes)."""

    http_status = 400
    code = "bad_request"


class Unauthorized(DrmError):
    """No entitlement token, or one that fails verification (signature, expiry, replay)."""

    http_status = 401
    code = "unauthorized"


class Forbidden(DrmError):
    """A valid token that does not entitle its holder to a requested key."""

    http_status = 403
    code = "forbidden"


class NotFound(DrmError):
    """An unknown route, title or key."""

    http_status = 404
    code = "not_found"


class MethodNotAllowed(DrmError):
    """A method the route does not serve (the licence route takes POST and OPTIONS)."""

    http_status = 405
    code = "method_not_allowed"


class PayloadTooLarge(DrmError):
    """A request body over its bound (a licence request is a few hundred bytes)."""

    http_status = 413
    code = "payload_too_large"


class TooManyRequests(DrmError):
    """A user or a client address over its licence rate."""

    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeyStoreError(DrmError):
    """The key store cannot unwrap a key (wrong key-encryption key, a tampered record)."""

    http_status = 500
    code = "key_store_error"


class BadKey(DrmError):
    """A content key or KID handed to the packager that is not 16 bytes (AES-128)."""

    http_status = 400
    code = "bad_key"


def wire_of(exc: BaseException) -> tuple[int, str]:
    """The (HTTP status, JSON error code) a client is answered for ``exc``."""
    if isinstance(exc, DrmError):
        return exc.http_status, exc.code
    return 500, "internal_error"
