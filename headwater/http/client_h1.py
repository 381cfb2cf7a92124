"""HTTP/1.1 client connection, sans-IO: requests in, bytes out; bytes in, response events out.

``H1ClientConnection`` knows no sockets (the socket loop and the pool are in
:mod:`headwater.http.client`). The shell turns a request into bytes with ``send_request``, feeds
what the server sends with ``receive_data(bytes)`` (``b""`` at end of file) and pulls events with
``next_event()`` until it returns ``NEED_DATA``; after a complete exchange on a persistent
connection ``start_next_cycle()`` readies it for the next request. One request at a time: the
client does not pipeline, so any byte that arrives when no response is due is an error.

Parsing is done by llhttp (httptools' ``HttpResponseParser``), which checks the status line,
field syntax, Content-Length and chunk framing. On top of it this module:

- bounds the head (and the trailers) by bytes and by field count, and the framing bytes of a
  chunked body (chunk extensions, trailers) by the body they carry, so a hostile server cannot
  make the client buffer or parse without end;
- accepts only the ``chunked`` transfer coding (a body in any other coding would be taken for the
  representation itself) and never Content-Length beside Transfer-Encoding (request smuggling);
- hands out 1xx responses as :class:`Informational` (at most ``max_informational``) and rejects a
  101, which it never asks for;
- knows that the response to HEAD, and a 1xx, 204 or 304, has no body whatever its
  Content-Length says (llhttp cannot know the request's method);
- reports a body cut short (end of file before its length or its last chunk) and bytes beyond the
  end of a response that arrive with it as :class:`ResponseInvalid`: the consumer never takes a
  short or long body for a whole one. A body delimited by the close of the connection (neither
  Content-Length nor chunked) ends at end of file and is flagged ``ResponseHead.until_close``.

Both directions are small state machines (``_THEIR_NEXT`` and ``_OUR_NEXT``): an event or call
that the table does not allow raises ``LocalProtocolError``.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Iterable

import httptools

from headwater.config import KiB
from headwater.http.errors import BadResponse, LocalProtocolError, ResponseHeadTooLarge
from headwater.http.h1 import NEED_DATA, BodyData, ConnectionClosed, _Sentinel

__all__ = [
    "NEED_DATA",
    "ClientLimits",
    "Informational",
    "ResponseHead",
    "BodyData",
    "ResponseEnd",
    "ResponseInvalid",
    "ConnectionClosed",
    "H1ClientConnection",
    "IDEMPOTENT_METHODS",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""RFC 9110 9.2.2: a request of these methods may be retried when its connection failed first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """What one response may cost the client before it is refused as broken."""

    max_head_bytes: int = 64 * KiB
    """A response head (status line and fields), and separately its trailers."""
    max_header_fields: int = 128
    """Fields in a head, and separately in the trailers."""
    max_informational: int = 8
    """1xx responses before the final one."""
    framing_allowance_per_chunk: int = 256
    """Bytes of chunk-size lines, extensions and trailers allowed per chunk, beyond
    ``max_head_bytes`` for the whole body."""


# --- events ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Informational:
    """A 1xx interim response (100 Continue, 103 Early Hints); the final one follows."""

    status: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead:
    """A final response's status line and header fields (names lower-case, latin-1 decoded).

    ``content_length`` is the declared length of a body that is sent (None for chunked, for a
    body until close, and for responses without a body: HEAD, 204, 304). ``keep_alive`` says
    whether the connection may carry another request once this response is complete.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    http_version: str
    keep_alive: bool
    content_length: int | None
    chunked: bool
    until_close: bool
    has_body: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseEnd:
    """The response is complete (its length reached, its last chunk, or end of file for a body
    delimited by close). ``trailers`` are a chunked body's trailer fields."""

    trailers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseInvalid:
    """The server broke the protocol or cut the response short; the connection is not reused."""

    error: BadResponse


Event = Informational | ResponseHead | BodyData | ResponseEnd | ResponseInvalid | ConnectionClosed

_NO_TRAILERS: list[tuple[str, str]] = []
_CONNECTION_CLOSED = ConnectionClosed()


# --- state tables ------------------------------------------------------------------------------

# Their side (the response, as the consumer of events sees it).
IDLE, BODY, DONE, CLOSED, ERROR = "IDLE", "BODY", "DONE", "CLOSED", "ERROR"
# Our side (the request; its body, if any, goes out whole with its head).
SENT = "SENT"

_THEIR_NEXT: dict[tuple[str, type], str] = {
    (IDLE, Informational): IDLE,
    (IDLE, ResponseHead): BODY,
    (BODY, BodyData): BODY,
    (BODY, ResponseEnd): DONE,
    (IDLE, ConnectionClosed): CLOSED,
    (DONE, ConnectionClosed): CLOSED,
    (IDLE, ResponseInvalid): ERROR,
    (BODY, ResponseInvalid): ERROR,
    (DONE, ResponseInvalid): ERROR,
}

_OUR_NEXT: dict[tuple[str, str], str] = {
    (IDLE, "request"): SENT,
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_CHECKED_NAMES: set[str] = set()
_CHECKED_NAMES_MAX = 1024


def _check_field(name: str, value: str) -> None:
    """Refuse request fields that would corrupt the framing (CR/LF injection, bad names)."""
    if name not in _CHECKED_NAMES:
        if not _TOKEN.fullmatch(name):
            raise LocalProtocolError(f"invalid request header name {name!r}")
        if len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
            _CHECKED_NAMES.add(name)
    if _BAD_VALUE.search(value):
        raise LocalProtocolError(f"invalid request header field {name!r}: {value!r}")


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


class H1ClientConnection:
    """One HTTP/1.1 client connection. See the module docstring for the calling pattern."""

    def __init__(self, limits: ClientLimits = ClientLimits()) -> None:
        self.limits = limits
        self._parser = httptools.HttpResponseParser(self)
        self._events: deque[Event] = deque()
        self._broken = False  # parser failed or peer closed: no more input accepted
        # parser-side scratch for the response being parsed
        self._parsing_head = False
        self._in_body = False  # the final head is parsed, its body (or trailers) not yet ended
        self._reason: list[bytes] = []
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._informational = 0
        self._head: ResponseHead | None = None
        self._ended = False  # the final response's ResponseEnd is queued
        self._skip_body = False  # HEAD: the response ended with its head, whatever llhttp thinks
        self._fresh_parser = False  # llhttp still waits for a body we decided is not there
        self._body_bytes = 0
        self._chunks = 0
        self._framing_bytes = 0
        self._trailers = _NO_TRAILERS
        self._trailer_bytes = 0
        # consumer side
        self.their_state = IDLE
        self.our_state = IDLE
        self.method = ""
        self.response: ResponseHead | None = None
        self.keep_alive = True
        self.response_started = False
        """Some byte of the response to the current request has arrived (then it is not retried)."""

    # --- output ----------------------------------------------------------------------------

    def send_request(self, method: str, target: str, headers: Iterable[tuple[str, str]], *,
                     body: bytes = b"") -> bytes:
        """The request as bytes: its head, then ``body`` (framed with a Content-Length).

        ``headers`` must hold exactly one Host; a Content-Length or Transfer-Encoding in them is
        ignored (the body is framed here). ``connection: close`` among them makes this the
        connection's last exchange.
        """
        nxt = _OUR_NEXT.get((self.our_state, "request"))
        if nxt is None or self.their_state is not IDLE or not self.keep_alive:
            raise LocalProtocolError(f"send_request in state ours {self.our_state}, theirs {self.their_state}, "
                                     f"keep_alive {self.keep_alive}")
        if not _TOKEN.fullmatch(method):
            raise LocalProtocolError(f"invalid method {method!r}")
        if not target or _BAD_TARGET.search(target):
            raise LocalProtocolError(f"invalid request target {target!r}")
        out = [f"{method} {target} HTTP/1.1\r\n"]
        hosts = 0
        for name, value in headers:
            _check_field(name, value)
            lname = name.lower()
            if lname in _FRAMING:
                continue
            if lname == "host":
                hosts += 1
            elif lname == "connection" and "close" in _tokens(value):
                self.keep_alive = False
            out.append(f"{name}: {value}\r\n")
        if hosts != 1:
            raise LocalProtocolError("an HTTP/1.1 request needs exactly one Host header")
        if body or method in _METHODS_WITH_BODY:
            out.append(f"content-length: {len(body)}\r\n")
        out.append("\r\n")
        try:
            wire = "".join(out).encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError("request header fields must be latin-1") from None
        self.our_state = nxt
        self.method = method
        self._skip_body = method == "HEAD"
        self.response_started = False
        return wire + body if body else wire

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means it closed its sending side."""
        if self._broken:
            return
        if not data:
            self._eof()
            return
        if self.our_state is SENT:
            self.response_started = True
        in_body = self._in_body and not self._ended
        body_before = self._body_bytes
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause if isinstance(cause, BadResponse) else BadResponse(f"bad response: {cause}"))
        except httptools.HttpParserError as e:
            self._fail(BadResponse(f"malformed response: {e}"))
        if self._broken:
            return
        if self._parsing_head:
            # A head still incomplete after this read: bound what llhttp buffers for it.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._fail(ResponseHeadTooLarge("response head exceeds max_head_bytes"))
        elif in_body and self._head is not None and self._head.chunked:
            # Whole reads inside a chunked body: what is not body is framing (chunk lines,
            # extensions, trailers), bounded by the chunks it frames.
            self._framing_bytes += len(data) - (self._body_bytes - body_before)
            allowed = self.limits.max_head_bytes + self.limits.framing_allowance_per_chunk * (self._chunks + 1)
            if self._framing_bytes > allowed:
                self._fail(ResponseHeadTooLarge("chunk framing (extensions or trailers) exceeds its bound"))

    def _eof(self) -> None:
        self._broken = True
        if self._ended or (not self._parsing_head and not self._in_body):
            # Between responses (or after one): the server closed the connection.
            if not self._ended and self.response_started:
                self._fail(BadResponse("connection closed between interim and final responses"))
                return
            self.keep_alive = False
            self._events.append(_CONNECTION_CLOSED)
            return
        if self._parsing_head:
            self._fail(BadResponse("connection closed in the middle of the response head"))
            return
        head = self._head
        assert head is not None
        if head.until_close:
            self.keep_alive = False
            self._end()
            return
        if head.chunked:
            self._fail(BadResponse(f"connection closed in a chunked body after {self._body_bytes} bytes"))
        else:
            self._fail(BadResponse(f"connection closed after {self._body_bytes} of "
                                   f"{head.content_length} body bytes"))

    def _fail(self, error: BadResponse) -> None:
        self._broken = True
        self._parsing_head = False
        self.keep_alive = False
        if self._ended and self._events and type(self._events[-1]) is ResponseEnd:
            # Bytes beyond the end came with it (a body longer than its Content-Length, data
            # after the last chunk): the response is not taken as whole.
            self._events.pop()
            error = BadResponse(f"data after the end of the response ({error})")
        self._events.append(ResponseInvalid(error=error))

    def _end(self) -> None:
        self._ended = True
        self._in_body = False
        self._events.append(ResponseEnd(trailers=self._trailers or _NO_TRAILERS))

    # llhttp callbacks

    def on_message_begin(self) -> None:
        if self.our_state is not SENT or self._ended:
            raise BadResponse("data from the server with no response due")
        self._parsing_head = True
        self._reason = []
        self._fields = []
        self._head_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self._reason.append(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:  # a trailer field
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > self.limits.max_head_bytes:
                raise ResponseHeadTooLarge("trailers exceed max_head_bytes")
            if len(self._trailers) >= self.limits.max_header_fields:
                raise ResponseHeadTooLarge("too many trailer fields")
            if not self._trailers:
                self._trailers = []
            self._trailers.append((name.decode("latin-1").lower(), value.decode("latin-1").strip(" \t")))
            return
        if len(self._fields) >= self.limits.max_header_fields:
            raise ResponseHeadTooLarge(f"more than {self.limits.max_header_fields} header fields")
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._parsing_head = False
        parser = self._parser
        status = parser.get_status_code()
        reason = b"".join(self._reason)
        size = len(reason) + 15
        headers: list[tuple[str, str]] = []
        content_length: int | None = None
        chunked = False
        encoded = False
        close = keep_alive_token = False
        for raw_name, raw_value in self._fields:
            size += len(raw_name) + len(raw_value) + 4
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip(" \t")
            headers.append((name, value))
            if name == "content-length":
                if not value.isdigit():  # llhttp checked the digits and refused duplicates
                    raise BadResponse(f"Content-Length {value!r} is not a number")
                content_length = int(value)
            elif name == "transfer-encoding":
                codings = [c.strip().lower() for c in value.split(",")]
                if codings == ["chunked"] and not chunked:
                    chunked = True
                else:
                    encoded = True
            elif name == "connection":
                tokens = _tokens(value)
                close = close or "close" in tokens
                keep_alive_token = keep_alive_token or "keep-alive" in tokens
        if size > self.limits.max_head_bytes:
            raise ResponseHeadTooLarge("response head exceeds max_head_bytes")
        if status == 101:
            raise BadResponse("101 Switching Protocols to a request that asked for no upgrade")
        if status < 200:
            self._informational += 1
            if self._informational > self.limits.max_informational:
                raise BadResponse(f"more than {self.limits.max_informational} interim (1xx) responses")
            self._events.append(Informational(status=status, headers=headers))
            return
        has_body = not (self._skip_body or status == 204 or status == 304)
        if has_body and encoded:
            raise BadResponse("a transfer coding other than chunked alone")
        if has_body and chunked and content_length is not None:
            raise BadResponse("Content-Length beside Transfer-Encoding")
        version = parser.get_http_version()
        until_close = has_body and not chunked and content_length is None
        keep_alive = (self.keep_alive and not close and not until_close
                      and (version == "1.1" or (version == "1.0" and keep_alive_token)))
        if not keep_alive:
            self.keep_alive = False
        head = ResponseHead(status=status, reason=reason.decode("latin-1"), headers=headers, http_version=version,
                            keep_alive=keep_alive, content_length=content_length if has_body else None,
                            chunked=chunked and has_body, until_close=until_close, has_body=has_body)
        self._head = head
        self._events.append(head)
        self._in_body = True
        if self._skip_body:
            # llhttp would wait for the Content-Length it saw: the next response needs a fresh
            # parser, and any byte that reaches on_body is one the server should not have sent.
            self._fresh_parser = True
            self._end()

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            raise BadResponse("a body in the response to HEAD")
        self._body_bytes += len(body)
        self._events.append(BodyData(data=body))

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        if self._in_body:  # else an interim response, or HEAD's (ended with its head)
            self._end()

    # --- events ----------------------------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """The next event of the current response, or ``NEED_DATA``."""
        if not self._events:
            return NEED_DATA
        ev = self._events[0]
        state = self.their_state
        nxt = _THEIR_NEXT.get((state, type(ev)))
        if nxt is None:
            raise LocalProtocolError(f"event {type(ev).__name__} in state {state}")
        self._events.popleft()
        self.their_state = nxt
        if nxt is BODY and state is IDLE:
            self.response = ev  # type: ignore[assignment]
        elif nxt is ERROR or nxt is CLOSED:
            self.keep_alive = False
        return ev

    @property
    def has_buffered_events(self) -> bool:
        return bool(self._events)

    def start_next_cycle(self) -> None:
        """After a complete exchange on a persistent connection: ready for the next request."""
        if not (self.keep_alive and self.our_state is SENT and self.their_state is DONE):
            raise LocalProtocolError(
                f"cannot start a new request: ours {self.our_state}, theirs {self.their_state}, "
                f"keep_alive {self.keep_alive}")
        if self._fresh_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._fresh_parser = False
        self.their_state = IDLE
        self.our_state = IDLE
        self.response = None
        self.method = ""
        self._head = None
        self._ended = False
        self._in_body = False
        self._skip_body = False
        self._informational = 0
        self._body_bytes = 0
        self._chunks = 0
        self._framing_bytes = 0
        self._trailers = _NO_TRAILERS
        self._trailer_bytes = 0
        self.response_started = False
