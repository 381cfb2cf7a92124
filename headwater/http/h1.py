"""HTTP/1.1 server connection, sans-IO: bytes in, events out; responses in, bytes out.

``H1Connection`` knows no sockets. The shell feeds it with ``receive_data(bytes)`` (``b""`` at
end of file) and pulls events with ``next_event()`` until it returns ``NEED_DATA``; it turns a
response into bytes with ``send_response`` / ``send_data`` / ``send_end``. Parsing is done by
llhttp (through httptools), which parses several pipelined requests from one read; their events
wait in a queue and are handed out one request at a time, so the shell answers them in order and
only reads the socket again when the queue is empty (that is the backpressure).

Both directions are small state machines (``_THEIR_NEXT`` and ``_OUR_NEXT``): an event or call
that the table does not allow raises ``LocalProtocolError``.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Iterable

import httptools

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import HttpLimits, KiB
from headwater.http.errors import (
    BadRequest,
    HeadersTooLarge,
    LocalProtocolError,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedTransferCoding,
)
from headwater.http.types import PreparedFields

__all__ = [
    "NEED_DATA",
    "RequestHead",
    "BodyData",
    "RequestEnd",
    "RequestInvalid",
    "ConnectionClosed",
    "H1Connection",
    "DRAIN_MAX_BYTES",
    "SERVER_NAME",
    "http_date",
    "reason_phrase",
    "check_field",
    "valid_target",
    "HOP_BY_HOP",
    "prepare_fields",
]

SERVER_NAME = "headwater"
DRAIN_MAX_BYTES = 64 * KiB
"""An unread request body shorter than this is read and discarded to keep the connection."""


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")


# --- events ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHead:
    """A request line and its header fields (names lower-case, latin-1 decoded)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    http_version: str
    keep_alive: bool
    content_length: int | None
    chunked: bool
    expects_continue: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


_new_object = object.__new__
_HEAD_SETTERS = tuple(RequestHead.__dict__[name].__set__ for name in (
    "method", "target", "headers", "http_version", "keep_alive", "content_length", "chunked",
    "expects_continue"))


def _request_head(method: str, target: str, headers: list[tuple[str, str]], http_version: str,
                  keep_alive: bool, content_length: int | None, chunked: bool,
                  expects_continue: bool) -> RequestHead:
    """``RequestHead(...)`` at less than half the cost, for the parser (once per request): the
    slots are filled through their descriptors instead of the frozen ``__init__``'s
    ``object.__setattr__``. The result is the same frozen object."""
    head = _new_object(RequestHead)
    s_method, s_target, s_headers, s_version, s_keep_alive, s_length, s_chunked, s_expects = _HEAD_SETTERS
    s_method(head, method)
    s_target(head, target)
    s_headers(head, headers)
    s_version(head, http_version)
    s_keep_alive(head, keep_alive)
    s_length(head, content_length)
    s_chunked(head, chunked)
    s_expects(head, expects_continue)
    return head


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyData:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestEnd:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInvalid:
    """The peer broke the protocol; ``error.http_status`` is the answer, then the connection closes."""

    error: ProtocolError


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The peer closed its side."""


_UNPARSED = RequestHead(method="GET", target="", headers=[], http_version="1.1", keep_alive=False,
                        content_length=None, chunked=False, expects_continue=False)
_REQUEST_END = RequestEnd()
_CONNECTION_CLOSED = ConnectionClosed()

Event = RequestHead | BodyData | RequestEnd | RequestInvalid | ConnectionClosed


# --- wire helpers ------------------------------------------------------------------------------

_date_cache: tuple[int, str] = (0, "")


def http_date(now: float | None = None) -> str:
    """The IMF-fixdate for the Date header, computed at most once a second."""
    global _date_cache
    t = int(time.time() if now is None else now)
    if _date_cache[0] != t:
        _date_cache = (t, formatdate(t, usegmt=True))
    return _date_cache[1]


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_STATUS_LINES: dict[int, str] = {}


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"
        _STATUS_LINES[status] = line
    return line


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                         "proxy-connection", "trailer"})

_CHECKED_NAMES: dict[str, str] = {}  # response header name -> lower case, once it passed _TOKEN
_CHECKED_NAMES_MAX = 1024


def _checked_name(name: str) -> str:
    """``name`` in lower case; LocalProtocolError unless it is a token (memoised: apps answer
    with the same few names)."""
    lname = _CHECKED_NAMES.get(name)
    if lname is None:
        if not _TOKEN.fullmatch(name):
            raise LocalProtocolError(f"invalid response header name {name!r}")
        lname = name.lower()
        if len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
            _CHECKED_NAMES[name] = lname
    return lname


def check_field(name: str, value: str) -> None:
    """Refuse header fields that would corrupt the framing (CR/LF injection, bad names)."""
    _checked_name(name)
    if "\r" in value or "\n" in value or "\x00" in value:
        raise LocalProtocolError(f"invalid response header field {name!r}: {value!r}")


_date_lines: tuple[int, str] = (0, "")


def _date_and_server(now: float) -> str:
    """The Date and Server lines of a response head, rebuilt at most once a second."""
    global _date_lines
    t = int(now)
    if _date_lines[0] != t:
        _date_lines = (t, f"date: {http_date(t)}\r\nserver: {SERVER_NAME}\r\n")
    return _date_lines[1]


def _field_lines(headers: Iterable[tuple[str, str]], out: list[str],
                 drop_length: bool) -> tuple[int | None, bool, bool, bool]:
    """Append response ``headers`` to ``out`` as lines, checked (LocalProtocolError), hop-by-hop
    fields left out (and content-length, with ``drop_length``); (the declared content-length,
    whether a date and a server field were among them, whether a connection field said close)."""
    declared: int | None = None
    has_date = has_server = close = False
    for name, value in headers:
        lname = _checked_name(name)
        if lname in _SPECIAL_RESPONSE_FIELDS:
            if lname in HOP_BY_HOP:
                if lname == "connection" and "close" in value.lower():
                    close = True
                continue
            if lname == "content-length":
                if declared is not None or not value.isdigit():
                    raise LocalProtocolError(f"bad content-length {value!r} in the response")
                declared = int(value)
                if drop_length:
                    continue
            elif lname == "date":
                has_date = True
            elif lname == "server":
                has_server = True
        if "\r" in value or "\n" in value or "\x00" in value:
            raise LocalProtocolError(f"invalid response header field {name!r}: {value!r}")
        out.append(f"{name}: {value}\r\n")
    return declared, has_date, has_server, close


def prepare_fields(headers: Iterable[tuple[str, str]]) -> PreparedFields:
    """``headers`` checked and written out once for ``Response.prepared``; LocalProtocolError
    for what ``send_response`` would refuse (a bad name or value, a bad content-length, a value
    that is not latin-1)."""
    out: list[str] = []
    declared, has_date, has_server, close = _field_lines(headers, out, False)
    lines = "".join(out)
    try:
        lines.encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("response header fields must be latin-1") from None
    return PreparedFields(lines, declared, has_date, has_server, close)


_FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "expect"})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}

# A request's header block as llhttp hands it over -> what _read_fields makes of it. A client
# sends the same fields on every request of a connection (and many clients the same ones), so
# the decoding, lower-casing and framing checks are done once per distinct block. Bounded: at
# most _FIELDS_MEMO_MAX blocks of at most _FIELDS_MEMO_MAX_BYTES, cleared when full.
_Fields = tuple[tuple[tuple[str, str], ...], int, int, "int | None", bool, bool]
_FIELDS_MEMO: dict[tuple[tuple[bytes, bytes], ...], _Fields] = {}
_FIELDS_MEMO_MAX = 512
_FIELDS_MEMO_MAX_BYTES = 4 * KiB


def _read_fields(raw_fields: tuple[tuple[bytes, bytes], ...]) -> _Fields:
    """The request's header fields as (name lower case, value without surrounding blanks) str
    pairs, their size on the wire, and what they say about the framing: (pairs, size, Host
    fields, content-length, chunked, expects 100-continue). BadRequest or
    UnsupportedTransferCoding for framing fields that cannot be served."""
    size = 0
    headers: list[tuple[str, str]] = []
    host_count = 0
    content_length: int | None = None
    chunked = False
    expects_continue = False
    for raw_name, raw_value in raw_fields:
        size += len(raw_name) + len(raw_value) + 4
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1").strip(" \t")
        headers.append((name, value))
        if name not in _FRAMING_FIELDS:
            continue
        if name == "host":
            host_count += 1
        elif name == "content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise BadRequest("invalid Content-Length")
            content_length = int(value)
        elif name == "transfer-encoding":
            codings = [c.strip().lower() for c in value.split(",")]
            if codings[-1] != "chunked" or "chunked" in codings[:-1]:
                raise UnsupportedTransferCoding(f"transfer coding {value!r} is not supported")
            if len(codings) > 1:
                raise UnsupportedTransferCoding("only the chunked transfer coding is supported")
            chunked = True
        elif name == "expect":
            if value.lower() == "100-continue":
                expects_continue = True
    if chunked:
        content_length = None
    return tuple(headers), size, host_count, content_length, chunked, expects_continue


def valid_target(method: str, target: str) -> bool:
    """Whether ``target`` is a request-target ``method`` may carry (RFC 9112 3.2): origin-form
    (``/...``), absolute-form (``scheme://...``), ``*`` for OPTIONS only, authority-form for
    CONNECT only. Anything else is refused: a proxy builds its upstream URL by appending the
    path to ``http://host:port``, and a path like ``@evil:80/x`` or ``x`` would name another
    host or port (SSRF)."""
    if target[:1] == "/":
        return True
    if "://" in target:
        return True
    return (target == "*" and method == "OPTIONS") or method == "CONNECT"


# --- state tables ------------------------------------------------------------------------------

# Their side (as the consumer of events sees it).
IDLE, BODY, DONE, CLOSED, ERROR = "IDLE", "BODY", "DONE", "CLOSED", "ERROR"
# Our side.
SEND_BODY = "SEND_BODY"

_THEIR_NEXT: dict[tuple[str, type], str] = {
    (IDLE, RequestHead): BODY,
    (BODY, BodyData): BODY,
    (BODY, RequestEnd): DONE,
    (IDLE, ConnectionClosed): CLOSED,
    (BODY, ConnectionClosed): CLOSED,
    (DONE, ConnectionClosed): CLOSED,
    (IDLE, RequestInvalid): ERROR,
    (BODY, RequestInvalid): ERROR,
    (DONE, RequestInvalid): ERROR,
}

_OUR_NEXT: dict[tuple[str, str], str] = {
    (IDLE, "response"): SEND_BODY,
    (IDLE, "response_no_body"): DONE,
    (SEND_BODY, "data"): SEND_BODY,
    (SEND_BODY, "end"): DONE,
}

_SPECIAL_RESPONSE_FIELDS = HOP_BY_HOP | {"content-length", "date", "server"}

# Framing of our response body.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2, 3


class H1Connection:
    """One HTTP/1.1 server connection. See the module docstring for the calling pattern."""

    def __init__(self, limits: HttpLimits = HttpLimits(), *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.limits = limits
        self.clock = clock
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event] = deque()
        self._broken = False  # parser failed or peer closed: no more input accepted
        # parser-side scratch for the message being parsed
        self._parsing_head = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._parsed_body_bytes = 0
        self._parsed_chunked = False
        self._parsed_message_done = True
        self._began_in_feed = False
        # consumer side
        self.their_state = IDLE
        self.our_state = IDLE
        self.request: RequestHead | None = None
        self.body_consumed = 0
        self.continue_sent = False
        # response framing
        self._framing = _NONE
        self._remaining = 0
        self._head_request = False
        self.keep_alive = True
        self.drain_before_next = False

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its sending side."""
        if self._broken:
            return
        if not data:
            self._broken = True
            self._events.append(_CONNECTION_CLOSED)
            return
        self._began_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._after_upgrade(data, int(e.args[0]) if e.args else len(data))
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause if isinstance(cause, ProtocolError) else BadRequest(str(cause)))
        except httptools.HttpParserError as e:
            self._fail(BadRequest(str(e) or "malformed request"))
        if self._parsing_head and not self._broken:
            # A head still incomplete after this read: bound what llhttp buffers for it.
            if not self._began_in_feed:
                self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._fail(HeadersTooLarge("request head exceeds max_header_bytes"))

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        # llhttp stops at "Connection: upgrade" (e.g. curl's h2c upgrade offer). We do not
        # upgrade: the request is answered over HTTP/1.1, as RFC 9110 section 7.8 allows, and
        # parsing goes on with a fresh parser for whatever follows the message.
        if not self._parsed_message_done:
            self._fail(BadRequest("CONNECT and upgrades with a body are not supported"))
            return
        self._parser = httptools.HttpRequestParser(self)
        rest = data[offset:]
        if rest:
            self.receive_data(rest)

    def _fail(self, error: ProtocolError) -> None:
        self._broken = True
        self._parsing_head = False
        self._events.append(RequestInvalid(error=error))

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._began_in_feed = True
        self._parsing_head = True
        self._parsed_message_done = False
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._parsed_body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._parsing_head = False
        url = self._url
        target = url[0] if len(url) == 1 else b"".join(url)
        raw_method = parser.get_method()
        raw_fields = tuple(self._headers)
        fields = _FIELDS_MEMO.get(raw_fields)
        if fields is None:
            fields = _read_fields(raw_fields)  # (raises on bad fields: never memoised)
            if fields[1] <= _FIELDS_MEMO_MAX_BYTES:
                if len(_FIELDS_MEMO) >= _FIELDS_MEMO_MAX:
                    _FIELDS_MEMO.clear()
                _FIELDS_MEMO[raw_fields] = fields
        pairs, size, host_count, content_length, chunked, expects_continue = fields
        if size + len(raw_method) + len(target) + 12 > self.limits.max_header_bytes:
            raise HeadersTooLarge("request head exceeds max_header_bytes")
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        if target[:1] != b"/" and not valid_target(method, target.decode("latin-1")):
            raise BadRequest("invalid request-target")
        version = parser.get_http_version()
        if version == "1.1" and host_count != 1:
            raise BadRequest("HTTP/1.1 requests need exactly one Host header")
        if host_count > 1:
            raise BadRequest("more than one Host header")
        if content_length is not None and content_length > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"declared body of {content_length} bytes exceeds the limit")
        self._parsed_chunked = chunked
        self._events.append(_request_head(
            method, target.decode("latin-1"), list(pairs), version, parser.should_keep_alive(),
            content_length, chunked, expects_continue and version != "1.0"))

    def on_body(self, body: bytes) -> None:
        self._parsed_body_bytes += len(body)
        if self._parsed_chunked and self._parsed_body_bytes > self.limits.max_body_bytes:
            raise PayloadTooLarge("chunked body exceeds max_body_bytes")
        self._events.append(BodyData(data=body))

    def on_message_complete(self) -> None:
        self._parsed_message_done = True
        self._events.append(_REQUEST_END)

    # --- events ----------------------------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """The next event of the current request, or ``NEED_DATA``.

        Events of a pipelined request wait until ``start_next_cycle`` has been called.
        """
        if not self._events:
            return NEED_DATA
        ev = self._events[0]
        state = self.their_state
        if state is DONE and isinstance(ev, RequestHead):
            return NEED_DATA  # the next pipelined request waits for start_next_cycle
        nxt = _THEIR_NEXT.get((state, type(ev)))
        if nxt is None:
            raise LocalProtocolError(f"event {type(ev).__name__} in state {state}")
        self._events.popleft()
        self.their_state = nxt
        if nxt is BODY and state is IDLE:
            self.request = ev  # type: ignore[assignment]
            self.body_consumed = 0
            self.continue_sent = False
            self.drain_before_next = False
            if not ev.keep_alive:  # type: ignore[union-attr]
                self.keep_alive = False
        elif type(ev) is BodyData:
            self.body_consumed += len(ev.data)  # type: ignore[union-attr]
        elif nxt is ERROR or nxt is CLOSED:
            self.keep_alive = False
        return ev

    def end_without_body(self) -> bool:
        """Take the end of the current request if it came with its head (no body); False if
        anything else is next (the shell then reads the body as events, as usual)."""
        events = self._events
        if events and type(events[0]) is RequestEnd and self.their_state is BODY:
            events.popleft()
            self.their_state = _THEIR_NEXT[(BODY, RequestEnd)]
            return True
        return False

    def lone_request(self) -> RequestHead | None:
        """The head of the next request if it is all there is to read, whole and without a body,
        on a persistent connection between exchanges (what the shell may answer inline); None
        otherwise. Takes nothing: ``next_event`` and ``end_without_body`` then take it."""
        events = self._events
        if (len(events) != 2 or events[1] is not _REQUEST_END or self.their_state is not IDLE
                or self.our_state is not IDLE or self._parsing_head or not self.keep_alive):
            return None
        head = events[0]
        if type(head) is not RequestHead or not head.keep_alive or head.has_body or head.expects_continue:
            return None
        return head

    def take_lone_request(self, head: RequestHead) -> None:
        """Take the request ``lone_request`` returned, head and end: what ``next_event`` and
        ``end_without_body`` do with it, in one step."""
        if self._events[0] is not head:
            raise LocalProtocolError("take_lone_request without lone_request")
        self._events.clear()
        self.their_state = _THEIR_NEXT[(_THEIR_NEXT[(IDLE, RequestHead)], RequestEnd)]
        self.request = head
        self.body_consumed = 0
        self.continue_sent = False
        self.drain_before_next = False

    @property
    def head_in_progress(self) -> bool:
        """Bytes of a request head have arrived but not the whole head (for the header timeout)."""
        return self._parsing_head

    @property
    def has_buffered_events(self) -> bool:
        return bool(self._events)

    def _request_end_buffered(self) -> bool:
        for ev in self._events:
            if type(ev) is RequestEnd:
                return True
            if type(ev) is not BodyData:
                return False
        return False

    # --- output ----------------------------------------------------------------------------

    def send_continue(self) -> bytes:
        """``100 Continue`` for a request that expects it, once, before any response."""
        req = self.request
        if (req is None or not req.expects_continue or self.continue_sent
                or self.our_state is not IDLE or self.their_state is not BODY):
            return b""
        self.continue_sent = True
        return b"HTTP/1.1 100 Continue\r\n\r\n"

    def send_response(self, status: int, headers: Iterable[tuple[str, str]], *,
                      body_length: int | None, close: bool = False,
                      prepared: PreparedFields | None = None) -> bytes:
        """The response head. ``body_length`` is the exact body size, or None for a stream.
        ``prepared``: ``headers`` as ``prepare_fields`` wrote them out (``Response.prepared``).

        Decides the framing (content-length, chunked, or until close for HTTP/1.0 streams),
        whether the connection stays open, and whether an unread request body is drained.
        """
        req = self.request
        if self.our_state is not IDLE or (req is None and self.their_state is not ERROR):
            raise LocalProtocolError(f"send_response in state {self.our_state}")
        if not 200 <= status <= 999:
            raise LocalProtocolError(f"cannot send status {status} as a final response")
        if req is None:  # answering a request that could not be parsed
            req = _UNPARSED
            close = True
        head_request = req.method == "HEAD"
        no_body = head_request or status == 204 or status == 304
        out = [_status_line(status)]
        if (req.expects_continue and not self.continue_sent and not req.chunked
                and not req.content_length):
            # RFC 9110 §10.1.1 lets a server skip the 100 when the framing says there is no
            # content, but botocore (every AWS SDK for Python, the AWS CLI) then keeps the early
            # final status on the connection object and parses the *next* response on that
            # connection with it: the real status line is read as a header, the framing is
            # lost and the client hangs until its read timeout. A 100 first costs 25 bytes.
            self.continue_sent = True
            out.insert(0, "HTTP/1.1 100 Continue\r\n\r\n")
        if prepared is not None and status != 204:
            # Checked and written out by prepare_fields already (a 204 drops its content-length
            # line: formatted below as usual).
            out.append(prepared.lines)
            declared, has_date, has_server = prepared.content_length, prepared.has_date, prepared.has_server
            close = close or prepared.close
        else:
            declared, has_date, has_server, closes = _field_lines(headers, out, status == 204)
            close = close or closes
        if not has_date and not has_server:
            out.append(_date_and_server(self.clock.time()))
        elif not has_date:
            out.append(f"date: {http_date(self.clock.time())}\r\n")
        elif not has_server:
            out.append(f"server: {SERVER_NAME}\r\n")

        # framing
        if no_body:
            framing = _NONE
            if declared is None and body_length and head_request:
                out.append(f"content-length: {body_length}\r\n")
        elif declared is not None:
            if body_length is not None and body_length != declared:
                raise LocalProtocolError(
                    f"content-length {declared} but the body has {body_length} bytes")
            framing = _LENGTH
            self._remaining = declared
        elif body_length is not None:
            framing = _LENGTH
            self._remaining = body_length
            out.append(f"content-length: {body_length}\r\n")
        elif req.http_version == "1.1":
            framing = _CHUNKED
            out.append("transfer-encoding: chunked\r\n")
        else:
            framing = _UNTIL_CLOSE
            close = True

        # connection persistence
        if close or not self.keep_alive:
            self.keep_alive = False
        elif self.their_state is BODY and not self._request_end_buffered():
            remaining = (None if req.content_length is None
                         else req.content_length - self.body_consumed)
            if req.expects_continue and not self.continue_sent:
                self.keep_alive = False  # the client may be holding the body back: never wait
            elif remaining is not None and remaining < DRAIN_MAX_BYTES:
                self.drain_before_next = True
            else:
                self.keep_alive = False
        elif self.their_state is BODY:
            self.drain_before_next = True
        if not self.keep_alive:
            out.append("connection: close\r\n")
        elif req.http_version == "1.0":
            out.append("connection: keep-alive\r\n")
        out.append("\r\n")

        if framing is _LENGTH and not self._remaining:
            framing = _NONE
        self._framing = framing
        self._head_request = head_request
        self.our_state = _OUR_NEXT[(IDLE, "response_no_body" if framing is _NONE else "response")]
        try:
            return "".join(out).encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError("response header fields must be latin-1") from None

    def send_whole(self, status: int, headers: Iterable[tuple[str, str]], body: bytes, *,
                   close: bool = False, prepared: PreparedFields | None = None) -> bytes:
        """A whole response with a body in memory: ``send_response`` + ``send_data`` +
        ``send_end`` in one call."""
        req = self.request
        if (prepared is not None and not close and self.keep_alive and self.their_state is DONE
                and self.our_state is IDLE and req is not None and req.http_version == "1.1"
                and not req.expects_continue and req.method != "HEAD" and 200 <= status <= 999
                and status != 204 and status != 304 and not prepared.close):
            # The common answer (a cache hit) on a persistent HTTP/1.1 connection whose request
            # is read: what the general path below makes of it, without its branches.
            declared = prepared.content_length
            length = len(body)
            if declared is None:
                tail = f"content-length: {length}\r\n\r\n"
            elif declared == length:
                tail = "\r\n"
            else:
                raise LocalProtocolError(f"content-length {declared} but the body has {length} bytes")
            if prepared.has_date:
                if not prepared.has_server:
                    tail = f"server: {SERVER_NAME}\r\n{tail}"
            elif prepared.has_server:
                tail = f"date: {http_date(self.clock.time())}\r\n{tail}"
            else:
                tail = _date_and_server(self.clock.time()) + tail
            self.our_state = DONE
            self._framing = _NONE
            self._remaining = 0
            self._head_request = False
            try:
                return (_status_line(status) + prepared.lines + tail).encode("latin-1") + body
            except UnicodeEncodeError:
                raise LocalProtocolError("response header fields must be latin-1") from None
        out = self.send_response(status, headers, body_length=len(body), close=close, prepared=prepared)
        if self.our_state is SEND_BODY:
            out += self.send_data(body) + self.send_end()
        return out

    def note_body_sent(self, nbytes: int) -> None:
        """Account for body bytes the shell wrote itself (sendfile), unframed."""
        if self.our_state is not SEND_BODY or not self.sends_length_framed:
            raise LocalProtocolError("body bytes can be written directly only with a content-length")
        if self._framing is _LENGTH:
            if nbytes > self._remaining:
                raise LocalProtocolError("response body longer than its content-length")
            self._remaining -= nbytes

    def send_data(self, data: bytes) -> bytes:
        """Frame one piece of the response body."""
        if not data:
            return b""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"send_data in state {self.our_state}")
        framing = self._framing
        if framing is _LENGTH:
            if len(data) > self._remaining:
                raise LocalProtocolError("response body longer than its content-length")
            self._remaining -= len(data)
            return data
        if framing is _CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def send_end(self) -> bytes:
        """End the response body; the connection is then ready for ``start_next_cycle``."""
        if self.our_state is DONE:
            return b""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"send_end in state {self.our_state}")
        if self._framing is _LENGTH and self._remaining:
            raise LocalProtocolError(f"response body {self._remaining} bytes short of its content-length")
        self.our_state = DONE
        if self._framing is _UNTIL_CLOSE:
            self.keep_alive = False
        return b"0\r\n\r\n" if self._framing is _CHUNKED else b""

    @property
    def sends_length_framed(self) -> bool:
        """The body goes out unframed with a content-length (so sendfile may write it)."""
        return self._framing is _LENGTH or self._framing is _UNTIL_CLOSE

    def start_next_cycle(self) -> None:
        """After a complete exchange on a persistent connection: ready for the next request."""
        if not (self.keep_alive and self.our_state is DONE and self.their_state is DONE):
            raise LocalProtocolError(
                f"cannot start a new request: ours {self.our_state}, theirs {self.their_state}, "
                f"keep_alive {self.keep_alive}")
        self.their_state = IDLE
        self.our_state = IDLE
        self.request = None
        self._framing = _NONE
        self.drain_before_next = False
