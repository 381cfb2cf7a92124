"""Errors of the HTTP server core, one root (``HttpError``), each class carrying its wire mapping.

``http_status`` is what the core answers when the error escapes before the response head is
sent; ``h2_error_code`` is the RST_STREAM / GOAWAY code used on HTTP/2. The mapping to the wire
happens in one place, ``headwater.http.server``.
"""

from __future__ import annotations

__all__ = [
    "HttpError",
    "ClientDisconnected",
    "ProtocolError",
    "BadRequest",
    "HeadersTooLarge",
    "PayloadTooLarge",
    "RequestTimeout",
    "SendTimeout",
    "Flooding",
    "UnsupportedTransferCoding",
    "LocalProtocolError",
    "BodyCut",
    "BadResponse",
    "ResponseHeadTooLarge",
    "ConnectFailed",
    "ResponseTimeout",
]

# RFC 9113 section 7 error codes.
H2_NO_ERROR = 0x0
H2_PROTOCOL_ERROR = 0x1
H2_INTERNAL_ERROR = 0x2
H2_REFUSED_STREAM = 0x7
H2_CANCEL = 0x8
H2_ENHANCE_YOUR_CALM = 0xB


class HttpError(Exception):
    """Root of every error the HTTP core raises."""

    http_status: int = 500
    h2_error_code: int = H2_INTERNAL_ERROR


class ClientDisconnected(HttpError):
    """The peer went away (closed the connection or reset the stream) before the exchange ended.

    Raised by ``RequestBody.receive``. Nothing is written back: there is nobody to write to.
    """

    http_status = 499  # nginx's "client closed request"; never sent
    h2_error_code = H2_CANCEL


class ProtocolError(HttpError):
    """The peer broke HTTP: the request is answered with ``http_status`` and the connection closed."""

    http_status = 400
    h2_error_code = H2_PROTOCOL_ERROR


class BadRequest(ProtocolError):
    http_status = 400


class HeadersTooLarge(ProtocolError):
    http_status = 431


class PayloadTooLarge(ProtocolError):
    """The declared (or received) body exceeds ``HttpLimits.max_body_bytes``."""

    http_status = 413
    h2_error_code = H2_REFUSED_STREAM


class RequestTimeout(ProtocolError):
    """The peer was too slow sending the head (header_timeout_s) or the body (body_timeout_s, or
    below min_body_rate_bytes_per_s over a window)."""

    http_status = 408
    h2_error_code = H2_CANCEL


class SendTimeout(HttpError):
    """The peer took none of our bytes for send_timeout_s (socket or HTTP/2 window): dropped.

    Nothing more is written: the peer is not reading.
    """

    http_status = 499  # never sent
    h2_error_code = H2_CANCEL


class Flooding(ProtocolError):
    """The peer spent its budget of cheap-for-it, costly-for-us HTTP/2 frames (rapid reset,
    PING/SETTINGS/PRIORITY floods): GOAWAY(ENHANCE_YOUR_CALM) and close."""

    http_status = 429
    h2_error_code = H2_ENHANCE_YOUR_CALM


class UnsupportedTransferCoding(ProtocolError):
    http_status = 501


class LocalProtocolError(HttpError):
    """The app handed the core something it cannot send (bad header, wrong content-length)."""

    http_status = 500
    h2_error_code = H2_INTERNAL_ERROR


class BodyCut(HttpError):
    """The app cut its own streamed response body short on purpose, after the head was sent (a
    bound it enforces: the edge refused the upstream fetch the rest needed). The core ends the
    exchange as for any failure mid-body (the connection cut on HTTP/1.1, RST_STREAM on HTTP/2),
    but it is an expected outcome, logged in a line, not as a crash with its traceback."""

    http_status = 503  # never sent: the head is out
    h2_error_code = H2_INTERNAL_ERROR


# --- the client side (headwater.http.client_h1 and headwater.http.client) ----------------------

class BadResponse(HttpError):
    """The server's response broke HTTP: a garbage head, a bad chunk, a body shorter or longer
    than its framing, a connection lost mid-response. Never stored, never reused."""

    http_status = 502


class ResponseHeadTooLarge(BadResponse):
    """The response head (or its trailers) exceeded the client's size or field-count bound."""


class ConnectFailed(HttpError):
    """No connection (refused, unreachable, TLS handshake or certificate refused), or the
    connection was lost before any byte of the response arrived."""

    http_status = 502


class ResponseTimeout(HttpError):
    """Connecting, or a read of the response, took longer than its timeout."""

    http_status = 504
