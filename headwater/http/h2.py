"""HTTP/2 server connection, sans-IO: a thin adapter over the ``h2`` state machine.

It turns h2's frames-level events into the request-level events the shell needs (one
``StreamRequest`` per stream, its ``StreamData``, ``StreamEnd``, ``StreamReset``), applies the
HttpLimits (SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE, body size), and
turns app responses into HEADERS/DATA frames. Flow control is explicit: the shell asks
``outbound_window(stream_id)`` before sending DATA and calls ``acknowledge(stream_id, n)`` once
the app has consumed received bytes, which is what re-opens the peer's window (backpressure).

A request without a body (HEADERS with END_STREAM) is read here rather than by h2, through
h2's own steps, and its stream made in h2 only when something needs it there: a cache hit's
stream, answered with HEADERS and one DATA frame, never is (``_receive``, ``_unopened``).

Frames that cost the peer little and us more draw on a ``FloodBudget`` on the injected clock;
once it is spent the connection ends with GOAWAY(ENHANCE_YOUR_CALM) (``Flooding``, its ``kind``
the kind of frame that spent most). Charged are the frames that neither open nor end a stream
nor move useful data: RST_STREAM (of a stream we took on, or of one already closed), PING,
SETTINGS, PRIORITY, PRIORITY_UPDATE and unknown frame types, empty DATA, refused streams,
unsolicited SETTINGS and PING acknowledgements, DATA, HEADERS and WINDOW_UPDATE of streams no
longer open (beyond the few a stream closed recently may still have in flight), and
WINDOW_UPDATEs of a window beyond one per 4 KiB of DATA we sent on it (a big download's, which
re-open what it drew, are never charged). h2 hands us no event for several of them, so its own
handlers of those frame types are wrapped (``_wrap_h2``). A HEADERS opening a stream past
SETTINGS_MAX_CONCURRENT_STREAMS is refused (RST_STREAM REFUSED_STREAM) and charged so.

What the peer begins it must finish in time (``read_deadline``, ``expire``): a frame, a header
block or the client preface begun and not read whole by its deadline ends the connection with
GOAWAY, however it trickles in; a header block held for CONTINUATION frames may not grow past
twice ``max_header_bytes``.
"""

from __future__ import annotations

import collections
import re
import struct
from dataclasses import dataclass
from typing import Iterable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
from hyperframe.frame import FRAMES, AltSvcFrame, DataFrame, Frame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import HttpLimits, KiB, MiB
from headwater.http.errors import (
    H2_ENHANCE_YOUR_CALM,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    H2_REFUSED_STREAM,
    BadRequest,
    Flooding,
    LocalProtocolError,
    PayloadTooLarge,
    ProtocolError,
)
from headwater.http.guards import FloodBudget
from headwater.http.h1 import HOP_BY_HOP, SERVER_NAME, check_field, http_date
from headwater.http.h2_fields import (
    TABLE_SIZE_ZERO,
    FieldMemo,
    RememberingDecoder,
    encode_field,
    encode_status,
    header_frames,
)

__all__ = [
    "PREFACE",
    "H2Connection",
    "StreamRequest",
    "StreamData",
    "StreamEnd",
    "StreamReset",
    "StreamInvalid",
    "WindowOpened",
    "ConnectionEnded",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SERVER = SERVER_NAME.encode()
#: A DATA frame's 9-byte header (RFC 9113 4.1): length << 8 | type 0, flags, stream id.
_DATA_HEADER = struct.Struct(">LBL")
_END_STREAM = 0x1
_END_HEADERS = 0x4
#: A frame's 9-byte header (RFC 9113 4.1): length (24 bits, as 16 + 8), type, flags, stream id.
_FRAME_HEADER = struct.Struct(">HBBBL")
#: HEADERS flags END_STREAM, END_HEADERS, PADDED, PRIORITY; a request read by _receive has the
#: first two only.
_HEADERS_FLAGS = 0x1 | 0x4 | 0x8 | 0x20
_REQUEST_FLAGS = 0x1 | 0x4
_JOIN_BELOW_BYTES = 16 * KiB
STREAM_WINDOW_BYTES = 256 * KiB
CONNECTION_WINDOW_BYTES = 1 * MiB
#: DATA and WINDOW_UPDATE frames a stream closed recently may still bring uncharged: what a
#: client had in flight when the stream ended (our reset of an upload answered early, its
#: last WINDOW_UPDATE racing our END_STREAM): a stream window's worth of 16 KiB frames.
LATE_FRAMES = STREAM_WINDOW_BYTES // (16 * KiB)
#: A WINDOW_UPDATE is free for each this many bytes of DATA we sent since the last (a client
#: acknowledging every 4 KiB it reads never pays), up to _WINDOW_CREDITS_MAX banked.
_WINDOW_CREDIT_BYTES = 4 * KiB
_WINDOW_CREDITS_MAX = 256
_PRIORITY_UPDATE = 0x10  # RFC 9218 7.1
_WE_ENDED = (h2.stream.StreamClosedBy.SEND_RST_STREAM, h2.stream.StreamClosedBy.SEND_END_STREAM)
_H2_PROTOCOL = h2.exceptions.ProtocolError


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRequest:
    stream_id: int
    method: str
    target: str
    authority: str
    scheme: str
    headers: list[tuple[str, str]]
    content_length: int | None
    expects_continue: bool
    end_stream: bool


_new_object = object.__new__
_SET_REQUEST = tuple(getattr(StreamRequest, name).__set__ for name in (
    "stream_id", "method", "target", "authority", "scheme", "headers", "content_length",
    "expects_continue", "end_stream"))


def _stream_request(stream_id: int, method: str, target: str, authority: str, scheme: str,
                    headers: list[tuple[str, str]], content_length: int | None,
                    expects_continue: bool, end_stream: bool) -> StreamRequest:
    """``StreamRequest(stream_id=..., ...)`` at about a third of the cost (once per request):
    the fields set through their slots, without the frozen keyword-only ``__init__``'s
    argument handling and ``object.__setattr__`` per field. The result is the same object."""
    r = _new_object(StreamRequest)
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = _SET_REQUEST
    s0(r, stream_id)
    s1(r, method)
    s2(r, target)
    s3(r, authority)
    s4(r, scheme)
    s5(r, headers)
    s6(r, content_length)
    s7(r, expects_continue)
    s8(r, end_stream)
    return r


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamData:
    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnd:
    stream_id: int


_SET_END_ID = StreamEnd.stream_id.__set__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset:
    """The peer reset the stream (RST_STREAM): its request is abandoned."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamInvalid:
    """The stream broke a limit or the protocol; the shell answers ``error.http_status``."""

    stream_id: int
    error: ProtocolError


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowOpened:
    """Send windows grew: WINDOW_UPDATE of a stream, of the connection (stream 0), or a
    SETTINGS frame (``settings``: every stream's window may have changed)."""

    stream_id: int
    settings: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionEnded:
    """GOAWAY received, or the peer broke the protocol (our GOAWAY is then queued)."""

    error_code: int
    reason: str = ""
    #: The kind of frame that spent the flood budget ("rst_stream", "window_update"...) when
    #: the connection ends for flooding (ENHANCE_YOUR_CALM); "" otherwise.
    flood: str = ""


Event = StreamRequest | StreamData | StreamEnd | StreamReset | StreamInvalid | WindowOpened | ConnectionEnded


def _valid_path(method: str, path: str) -> bool:
    """RFC 9113 8.3.1: ``:path`` starts with ``/`` (``*`` only for OPTIONS), and carries no
    space or control character (RFC 3986). A proxy appends the path to ``http://host:port``: a
    path like ``@evil:80/x`` would name another host (SSRF), one with a space could not be sent."""
    if path[:1] != "/":
        return path == "*" and method == "OPTIONS"
    return _PATH_OK.fullmatch(path) is not None


_PATH_OK = re.compile(r"[^\x00-\x20\x7f]*")

# h2's checks of a received field block (RFC 9113 8.2, 8.3), for a request and for trailers.
_REQUEST_BLOCK = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False)
_TRAILER_BLOCK = _REQUEST_BLOCK._replace(is_trailer=True)

# A request's fields as h2 hands them over -> what _request makes of them once they passed
# h2's checks: (method, target, authority, scheme, fields, content-length, expects 100-continue)
# or the StreamInvalid error. A client sends the same fields for request after request, and h2
# checks them in a chain of generators: both are done once per distinct list. Bounded like h1's
# memo of request fields: at most _REQUESTS_MAX lists of at most _REQUESTS_MAX_BYTES, cleared
# when full. A list's size is HPACK's (RFC 7541 4.1: 32 bytes a field besides its name and
# value): a field indexed from the peer's dynamic table costs it one byte on the wire and us a
# few hundred in the memo, and counted by characters alone, lists of ~2000 one-letter fields
# pinned 100-200 MiB in a full memo (a POP grew by ~110 MiB for 1200 such requests).
_Parsed = tuple[str, str, str, str, tuple[tuple[str, str], ...], "int | None", bool] | ProtocolError
_REQUESTS: dict[tuple[tuple[bytes, bytes], ...], _Parsed] = {}
_REQUESTS_MAX = 512
_REQUESTS_MAX_BYTES = 4 * KiB

# Response fields encoded once (h2_fields.FieldMemo), shared by every connection: a field's
# bytes do not depend on the connection (nothing goes in a dynamic table).
_FIELDS = FieldMemo()
_SERVER_FIELD = encode_field(b"server", _SERVER)
_date_field: tuple[int, bytes] = (-1, b"")


def _date(now: float) -> bytes:
    """The encoded Date field, made once a second."""
    global _date_field
    t = int(now)
    if _date_field[0] != t:
        _date_field = (t, encode_field(b"date", http_date(t).encode()))
    return _date_field[1]


def _parse_request(fields: tuple[tuple[bytes, bytes], ...]) -> _Parsed:
    """What a request's fields (checked by h2's rules) say, for ``StreamRequest``; the error
    for a request that cannot be served (a fresh one each time: it is raised in the app)."""
    method = target = authority = scheme = ""
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    expects_continue = False
    has_host = False
    cookies: list[str] = []
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        if name == "cookie":
            cookies.append(value)  # (RFC 9113 8.2.3: a client may split it; joined below)
            continue
        if name[0] == ":":
            if name == ":method":
                method = value
            elif name == ":path":
                target = value
            elif name == ":authority":
                authority = value
            elif name == ":scheme":
                scheme = value
            continue
        headers.append((name, value))
        if name == "content-length":
            if not value.isdigit():
                return BadRequest("invalid content-length")
            content_length = int(value)
        elif name == "host":
            has_host = True
            authority = authority or value
        elif name == "expect" and value.lower() == "100-continue":
            expects_continue = True
    if not _valid_path(method, target):
        return BadRequest("invalid :path")
    if cookies:
        headers.append(("cookie", "; ".join(cookies)))  # (last, where h2 put it)
    if not has_host and authority:
        headers.append(("host", authority))
    return method, target, authority, scheme, tuple(headers), content_length, expects_continue


def _checked_request(fields: tuple[tuple[bytes, bytes], ...]) -> _Parsed:
    """``fields`` checked by h2's rules for a request block (h2's ProtocolError: a connection
    error) and parsed (``_parse_request``), remembered in ``_REQUESTS``."""
    parsed = _REQUESTS.get(fields)
    if parsed is None:
        # Split cookie fields joined before the checks, as h2 did: a crumb may end with a
        # blank ("a=1 ", "b=2" made "a=1 ; b=2") that the checks refuse in a field alone.
        for _ in h2.utilities.validate_headers(
                h2.utilities.normalize_inbound_headers(fields, _REQUEST_BLOCK), _REQUEST_BLOCK):
            pass
        parsed = _parse_request(fields)
        if type(parsed) is tuple and sum(32 + len(n) + len(v) for n, v in fields) <= _REQUESTS_MAX_BYTES:
            if len(_REQUESTS) >= _REQUESTS_MAX:
                _REQUESTS.clear()
            _REQUESTS[fields] = parsed
    return parsed


def _checked_field(name: str, value: str) -> tuple[bytes, int, int]:
    """A response field checked (LocalProtocolError), lower-cased, stripped and encoded, for
    ``FieldMemo``."""
    lname = name.lower()
    if lname in HOP_BY_HOP:
        return b"", FieldMemo.HOP_BY_HOP, 0
    check_field(name, value)
    kind, length = FieldMemo.PLAIN, 0
    if lname == "content-length":
        if not value.isdigit():
            raise LocalProtocolError(f"bad content-length {value!r} in the response")
        kind, length = FieldMemo.CONTENT_LENGTH, int(value)
    elif lname == "date":
        kind = FieldMemo.DATE
    elif lname == "server":
        kind = FieldMemo.SERVER
    try:
        # RFC 9113 8.2.1: no leading or trailing whitespace in a field value.
        raw = value.strip(" \t").encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("a response header value is not latin-1") from None
    return encode_field(lname.encode(), raw), kind, length


#: Whole response blocks (status and fields, as the app gave them) already checked and
#: encoded (_encoded_fields): a cache hit sends the same fields as the hit before it (Age moves
#: once a second), and one lookup costs less than the per-field memo's, field by field.
#: Bounded like FieldMemo: at most _BLOCK_MEMO_MAX blocks of _BLOCK_MEMO_MAX_BYTES.
_BLOCKS: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[bytes, tuple[int, ...], bool, bool]] = {}
_BLOCK_MEMO_MAX = 1024
_BLOCK_MEMO_MAX_BYTES = 2 * KiB
#: The same blocks by the ``Response.prepared`` they came with (its id -> (it, the status, the
#: block)): ``prepared`` stands for the same fields every time (the edge's warm hit makes one
#: per entry and second of Age), so a hit's block is found without the fields' tuple made and
#: hashed. The entry holds ``prepared``, so its id is not reused while remembered.
_BY_PREPARED: dict[int, tuple[object, int, tuple[bytes, tuple[int, ...], bool, bool]]] = {}


def _encoded_fields(status: int, fields: tuple[tuple[str, str], ...]) -> tuple[bytes, tuple[int, ...], bool, bool]:
    """``status`` and ``fields`` checked (LocalProtocolError) and encoded, hop-by-hop fields
    left out (and content-length under 204): (the block's bytes, the content-lengths declared,
    whether a Date and a Server are among them)."""
    block: list[bytes] = [encode_status(status)]
    lengths: list[int] = []
    has_date = has_server = False
    known = _FIELDS.entries
    for name, value in fields:
        entry = known.get((name, value))
        if entry is None:
            entry = _checked_field(name, value)
            _FIELDS.remember(name, value, entry)
        field, kind, length = entry
        if kind:
            if kind == FieldMemo.HOP_BY_HOP:
                continue
            if kind == FieldMemo.CONTENT_LENGTH:
                lengths.append(length)
                if status == 204:
                    continue
            elif kind == FieldMemo.DATE:
                has_date = True
            else:
                has_server = True
        block.append(field)
    return b"".join(block), tuple(lengths), has_date, has_server


_LENGTHS: dict[int, bytes] = {}


def _content_length(n: int) -> bytes:
    """The encoded content-length field of ``n`` (remembered for small bodies' lengths)."""
    field = _LENGTHS.get(n)
    if field is None:
        field = encode_field(b"content-length", str(n).encode())
        if n < 65536 and len(_LENGTHS) < 4096:
            _LENGTHS[n] = field
    return field


_RECV_HEADERS = h2.connection.ConnectionInputs.RECV_HEADERS
_SEND_HEADERS = h2.connection.ConnectionInputs.SEND_HEADERS
_SEND_DATA = h2.connection.ConnectionInputs.SEND_DATA
_SERVER_OPEN = h2.connection.ConnectionState.SERVER_OPEN
# h2's connection state machine leaves an open server connection as it is on these inputs (no
# event, no check): a hit's three inputs skip it then. Read from h2's own table, so an h2 that
# did something there would be asked as ever.
_STAYS_OPEN = frozenset(i for i in (_RECV_HEADERS, _SEND_HEADERS, _SEND_DATA)
                        if h2.connection.H2ConnectionStateMachine._transitions.get((_SERVER_OPEN, i))
                        == (None, _SERVER_OPEN))
_STAYS_OPEN_IDS = frozenset(map(id, _STAYS_OPEN))


_ORDERED_SET = collections.OrderedDict.__setitem__
_ORDERED_POP = collections.OrderedDict.popitem
_SENT_END_STREAM = h2.stream.StreamClosedBy.SEND_END_STREAM


def _connection_input(conn: h2.connection.H2Connection, event: h2.connection.ConnectionInputs) -> None:
    """``conn.state_machine.process_input(event)``, without the call where it changes nothing."""
    machine = conn.state_machine
    # (By id: an Enum member hashes in Python, a call per input.)
    if machine.state is not _SERVER_OPEN or id(event) not in _STAYS_OPEN_IDS:
        machine.process_input(event)


# Frame types hyperframe refuses in a header without a stream id, and with one (h2 says so as
# soon as it reads the header: "Received frame with invalid header").
_STREAM_REQUIRED = frozenset(t for t, f in FRAMES.items() if f.stream_association == "has-stream")
_STREAM_FORBIDDEN = frozenset(t for t, f in FRAMES.items() if f.stream_association == "no-stream")


class _ContentLength:
    """What ``H2Stream._initialize_content_length`` reads and sets, for a stream not made."""

    __slots__ = ("request_method", "_expected_content_length")

    def __init__(self) -> None:
        self.request_method = None  # (a server's streams never have one)
        self._expected_content_length: int | None = None


class _KnownRequest:
    """h2's RequestReceived and StreamEnded of a request whose header block the connection read
    before (``_request_headers``), with what ``_request`` made of its fields then."""

    __slots__ = ("stream_id", "parsed")

    def __init__(self, stream_id: int, parsed: tuple) -> None:
        self.stream_id = stream_id
        self.parsed = parsed


class _NoEncoder:
    """Stands in for h2's HPACK encoder, which must not be used: our blocks (h2_fields) keep the
    peer's dynamic table empty, and a block from h2's encoder would index into it. h2 still
    records the peer's SETTINGS_HEADER_TABLE_SIZE here (our table stays at 0, below any)."""

    header_table_size = 0

    def encode(self, headers: object, huffman: bool = True) -> bytes:
        raise LocalProtocolError("HTTP/2 header blocks are encoded by headwater.http.h2_fields")


class H2Connection:
    """One HTTP/2 server connection."""

    def __init__(self, limits: HttpLimits = HttpLimits(), *, clock: Clock = SYSTEM_CLOCK,
                 stream_window: int = STREAM_WINDOW_BYTES,
                 connection_window: int = CONNECTION_WINDOW_BYTES) -> None:
        self.limits = limits
        self.clock = clock
        self.budget = FloodBudget(limits.h2_flood_rate_per_s, limits.h2_flood_burst, clock=clock)
        # Outbound fields are checked, lower-cased, stripped and latin-1 encoded by
        # send_response itself (as h1 frames them): h2's own pass over them cost more than the
        # rest of a small response (and encoded str values as UTF-8, not as they came in).
        # Received blocks are checked by _request (h2's own checks, once per distinct list of
        # fields; split cookie fields joined as h2 joins them) and _events (trailers), not by h2
        # on every block.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False,
                                           validate_inbound_headers=False,
                                           normalize_inbound_headers=False)
        self._conn = h2.connection.H2Connection(config=config)
        # Our own HPACK both ways (h2_fields): blocks remembered in, static-table literals out.
        # The limit is ours, as advertised: h2 set its decoder's (64 KiB) before the SETTINGS
        # below replaced its own, and a SETTINGS ack changes nothing that is not changed.
        decoder = RememberingDecoder(limits.max_header_bytes)
        self._conn.decoder = decoder
        self._conn.encoder = _NoEncoder()  # type: ignore[assignment]
        self._table_zeroed = False  # our first block has set the peer's table size to 0
        self._conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self._connection_window = connection_window
        # The peer's SETTINGS_INITIAL_WINDOW_SIZE, read from h2 again whenever its SETTINGS
        # change (RemoteSettingsChanged): h2's property lookup (an Enum hashed in Python) was
        # read twice for every small response.
        self._peer_window: int = self._conn.remote_settings.initial_window_size
        self._body_bytes: dict[int, int] = {}
        # What is queued for the wire, in order: h2's own bytes, and the DATA frames of
        # send_body as [frame header, view of the body] pairs (the body is not copied).
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self.closed = False
        self._last_read = 0  # the highest stream id read so far (for a GOAWAY mid-read)
        # Flood accounting: frames charged in this read, and per kind over the connection.
        self._costly = 0
        self.spent: dict[str, int] = {}
        self._settings_acks_due = 1  # our SETTINGS not yet acknowledged (initiate's one)
        # A window's scope (0: the connection's, or a stream's) -> [the send window after its
        # last WINDOW_UPDATE, the updates it may still have for free]
        self._window_after: dict[int, list[int]] = {}
        self._late: dict[int, int] = {}  # recently closed stream -> late frames still free
        self._wrap_h2()
        self._tail = b""  # the start of a frame not yet read whole (_receive)
        # Streams opened by a request's HEADERS (END_STREAM) read by _request_headers and not
        # made in h2 (yet): id -> [the content-length h2 keeps, response HEADERS sent].
        self._unopened: dict[int, list] = {}
        # Read deadlines (read_deadline): since when the frame not yet read whole has been
        # coming (the client preface's from the start), and the header block h2 holds while
        # CONTINUATION frames are due (its first frame, and since when).
        self._frame_since: float | None = clock.monotonic()
        self._block_first: object = None
        self._block_since = 0.0

    def initiate(self) -> None:
        """Queue the server preface (SETTINGS, and the connection window increase)."""
        self._conn.initiate_connection()
        extra = self._connection_window - 65535
        if extra > 0:
            self._conn.increment_flow_control_window(extra)

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self.closed:
            return []
        if not data:
            self.closed = True
            return [ConnectionEnded(error_code=H2_NO_ERROR, reason="peer closed the connection")]
        self._last_read = self._conn.highest_inbound_stream_id
        partial = len(self._tail) + len(self._conn.incoming_buffer._data)
        try:
            raw = self._receive(data)
        except h2.exceptions.ProtocolError as e:
            self.closed = True  # h2 has queued GOAWAY with the matching code
            return [ConnectionEnded(error_code=int(getattr(e, "error_code", H2_PROTOCOL_ERROR)),
                                    reason=str(e))]
        if self._tail or self._frame_since is not None or self._block_first is not None \
                or self._conn.incoming_buffer._headers_buffer:
            self._note_partial(partial + len(data))
        try:
            out, costly = self._events(raw)
        except h2.exceptions.ProtocolError as e:
            # A malformed field block (RFC 9113 8.2, 8.3): a connection error, as h2 makes it
            # when it checks blocks itself (none of the batch's events are answered). h2 read
            # the streams after it in the same data too: the GOAWAY names the last stream read
            # up to the malformed block, as when h2 stopped there, not streams never acted on.
            self.close(int(getattr(e, "error_code", H2_PROTOCOL_ERROR)), last_stream_id=self._last_read)
            return [ConnectionEnded(error_code=int(getattr(e, "error_code", H2_PROTOCOL_ERROR)),
                                    reason=str(e))]
        costly += self._costly
        if costly:
            self._costly = 0
            if not self.budget.spend(costly):
                kind = max(self.spent, key=self.spent.__getitem__)
                error = Flooding(f"HTTP/2 flood: too many frames doing no work (most: {kind})")
                self._conn.data_to_send()  # the flood's answers (PING/SETTINGS acks) are not sent
                self.close(error.h2_error_code)
                out.append(ConnectionEnded(error_code=error.h2_error_code, reason=str(error), flood=kind))
        if self._block_first is not None and not self.closed and self._block_too_big():
            # h2 buffers up to 64 CONTINUATION frames (1 MiB of 16 KiB frames) before it
            # refuses a block: refused here as the decoder refuses the list it would make.
            self.close(H2_ENHANCE_YOUR_CALM)
            out.append(ConnectionEnded(error_code=H2_ENHANCE_YOUR_CALM,
                                       reason="a header block larger than max_header_bytes"))
        return out

    def _note_partial(self, unread: int) -> None:
        """After a read that left ``unread`` bytes unread if it completed nothing: start the
        clock of a frame begun in it, and of a header block begun in it."""
        buffer = self._conn.incoming_buffer
        if not buffer._preamble_len:  # (the preface's clock runs from the start)
            left = len(self._tail) + len(buffer._data)
            if not left:
                self._frame_since = None
            elif left != unread or self._frame_since is None:
                # A frame was read whole (or the preface): what is left is a new frame's start.
                self._frame_since = self.clock.monotonic()
        block = buffer._headers_buffer
        if not block:
            self._block_first = None
        elif block[0] is not self._block_first:
            self._block_first = block[0]
            self._block_since = self.clock.monotonic()

    def _block_too_big(self) -> bool:
        """The header block h2 holds, not yet whole, is over twice ``max_header_bytes``: it could
        not decode to a list within it (HPACK counts a field at 32 bytes more than its name and
        value, more than any literal's encoding adds; twice, for Huffman codes longer than their
        text)."""
        return sum(len(f.data) for f in self._conn.incoming_buffer._headers_buffer) > 2 * self.limits.max_header_bytes

    def read_deadline(self) -> float | None:
        """When what the peer began must be read whole (on the injected clock's monotonic
        time), or None when nothing is pending: the client preface, a frame's header and any
        frame but DATA, and a header block (HEADERS and its CONTINUATION frames) within
        ``header_timeout_s`` of their first byte; a DATA frame within ``body_timeout_s``.

        A frame or a block trickled a byte at a time is bounded so, as an HTTP/1.1 head is: the
        peer's progress does not move the deadline. Past it, ``expire`` ends the connection.
        """
        deadline = None
        since = self._frame_since
        if since is not None:
            tail = self._tail or self._conn.incoming_buffer._data
            limits = self.limits
            timeout = limits.body_timeout_s if len(tail) > 3 and tail[3] == 0 else limits.header_timeout_s
            deadline = since + timeout
        if self._block_first is not None:
            block_deadline = self._block_since + self.limits.header_timeout_s
            if deadline is None or block_deadline < deadline:
                deadline = block_deadline
        return deadline

    def expire(self) -> list[Event]:
        """End the connection (GOAWAY) if ``read_deadline`` has passed; its ConnectionEnded."""
        deadline = self.read_deadline()
        if self.closed or deadline is None or self.clock.monotonic() < deadline:
            return []
        if self._block_first is not None and self._block_since + self.limits.header_timeout_s <= deadline:
            what = "a header block"
        elif self._conn.incoming_buffer._preamble_len:
            what = "the client preface"
        else:
            what = "a frame"
        reason = f"{what} not read whole in time"
        self.close(H2_NO_ERROR, debug=reason.encode())
        return [ConnectionEnded(error_code=H2_NO_ERROR, reason=reason)]

    def _charge(self, kind: str) -> None:
        """One frame of ``kind`` that did no work, charged at the end of the read."""
        self._costly += 1
        self.spent[kind] = self.spent.get(kind, 0) + 1

    def _receive(self, data: bytes) -> list[h2.events.Event]:
        """h2's events for ``data``, as ``h2.H2Connection.receive_data`` makes them, with a
        request's HEADERS read here rather than by h2 where h2 would do nothing else with it.

        A request without a body (HEADERS with END_HEADERS and END_STREAM, neither PADDED nor
        PRIORITY) opening a new stream is most of what a client of cache hits sends, and h2's
        generic path for it (hyperframe's frame objects, their eager repr for a trace log,
        the dispatch, the stream's header pipeline) was about a third of a 1 KiB hit's CPU.
        Here such a frame goes through the very steps h2's ``_receive_headers_frame`` takes
        for it, in the same order (the stream limit, HPACK, the connection's state machine,
        the stream id, the content-length), so both raise the same errors and h2's state
        (highest stream id, windows, GOAWAY; the stream itself once made, ``_open``) is what
        h2 would have made it. Every other frame goes to h2 as it came, in order: the frames
        between two such HEADERS in one run, after the streams not made in h2 are made,
        unless they are only PING and the connection's WINDOW_UPDATE. Only whole frames are
        handed to h2 (the tail of a frame not yet complete waits in ``_tail``, at most one
        frame of SETTINGS_MAX_FRAME_SIZE), so h2's buffer holds nothing when a HEADERS is read
        here; a frame longer than that limit is refused (FRAME_SIZE_ERROR) as soon as its
        header is read, and so is a header h2 refuses from the header alone (a stream id where
        none may be, or none where one must be), by h2 as it would.
        """
        conn = self._conn
        buffer = conn.incoming_buffer
        if buffer._preamble_len:  # (h2 checks the client preface)
            return conn.receive_data(data)
        if buffer._data:  # what h2 held from before the preface was done: read on from it
            data = bytes(buffer._data) + data
            buffer._data = bytearray()
        if self._tail:
            data = self._tail + data
            self._tail = b""
        events: list[h2.events.Event] = []
        end = len(data)
        start = i = 0  # the frames from ``start`` to ``i`` are h2's
        concerns_streams = False  # one of them may concern a stream not opened in h2
        max_frame = conn.max_inbound_frame_size
        unpack = _FRAME_HEADER.unpack_from
        while end - i >= 9:
            high, low, kind, flags, sid = unpack(data, i)
            length = high << 8 | low
            after = i + 9 + length
            if (after > end or length > max_frame) and (
                    kind in _STREAM_FORBIDDEN if sid & 0x7FFFFFFF else kind in _STREAM_REQUIRED):
                # h2 refuses such a header (a stream id where none may be, or none where one
                # must be) as soon as it is read, before its frame is whole: h2 says so here.
                self._open_all()
                events.extend(conn.receive_data(data[start:]))  # (raises ProtocolError)
                return events
            if length > max_frame:
                # Refused as h2 refuses it, but from its header: h2 waited for the whole frame
                # (up to 16 MiB) before it did.
                if start < i:
                    self._open_all()
                    conn.receive_data(data[start:i])
                conn._terminate_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
                raise h2.exceptions.FrameTooLargeError(
                    f"Received overlong frame: length {length}, max {max_frame}")
            if after > end:
                break
            sid &= 0x7FFFFFFF
            if kind == 1 and flags & _HEADERS_FLAGS == _REQUEST_FLAGS and sid & 1:
                if start < i:
                    if concerns_streams:
                        self._open_all()
                        concerns_streams = False
                    events.extend(conn.receive_data(data[start:i]))
                    start = i
                fast = self._request_headers(sid, data[i + 9:after])
                if fast is not None:
                    events.extend(fast)
                    start = after
                    i = after
                    continue
            # PING and the connection's WINDOW_UPDATE concern no stream; anything else may
            # (a SETTINGS frame changes every stream's window).
            if sid or (kind != 6 and kind != 8):
                concerns_streams = True
            i = after
        if start < i:
            if concerns_streams:
                self._open_all()
            events.extend(conn.receive_data(data[start:i]))
        if i < end:
            self._tail = data[i:]
        return events

    def _request_headers(self, sid: int, block: bytes) -> list[h2.events.Event] | None:
        """h2's events for a HEADERS frame with END_STREAM and END_HEADERS on stream ``sid``,
        made as h2 makes them (``_receive_headers_frame``, ``H2Stream.receive_headers``); None
        when the frame is not one that opens a new stream (h2 reads it).

        The stream is not made in h2: it is ``_unopened`` (half closed by the peer, as h2's
        would be) until something needs it there (``_open``). A response of HEADERS and one
        DATA frame within the windows, all a cache hit needs, closes it without it ever being
        made (``send_whole``, or ``_send_block`` and ``send_body``): h2's stream objects and
        state machines were the biggest part left of a hit's CPU.

        A block read before, while the decoder still remembers it, is given as one
        ``_KnownRequest`` (h2's two events, with what ``_request`` made of its fields then)."""
        conn = self._conn
        if sid <= conn.highest_inbound_stream_id or conn.incoming_buffer._headers_buffer:
            return None  # h2's errors (or trailers, or a CONTINUATION expected) are h2's
        # The stream limit: h2's open_inbound_streams walks every stream it holds (none, for a
        # client of cache hits: their streams are never made), and our local setting is never
        # below the limit we gave it, so it is read only when the count could pass it.
        count = len(self._unopened) + 1
        if conn.streams:
            count += conn.open_inbound_streams
        if count > self.limits.max_concurrent_streams and count > conn.local_settings.max_concurrent_streams:
            return None
        decoder = conn.decoder
        try:
            known = decoder.remembered(block)
            if known is not None and known[2] is not None:
                # A block read before, that reads as the same fields: every check of them
                # passed then and would again; only the connection's state moves.
                _connection_input(conn, _RECV_HEADERS)
                conn.highest_inbound_stream_id = sid
                expected_length, parsed = known[2]
                self._unopened[sid] = [expected_length, False]
                return [_KnownRequest(sid, parsed)]
            fields = h2.connection._decode_headers(decoder, block)
            _connection_input(conn, _RECV_HEADERS)
            conn.highest_inbound_stream_id = sid  # (_begin_new_stream: the id is new and odd)
            if h2.utilities.is_informational_response(fields):
                raise h2.exceptions.ProtocolError("Cannot set END_STREAM on informational responses")
            length = _ContentLength()
            h2.stream.H2Stream._initialize_content_length(length, fields)  # type: ignore[arg-type]
        except h2.exceptions.ProtocolError as e:
            conn._terminate_connection(e.error_code)  # (GOAWAY, as h2's receive_data queues it)
            raise
        self._unopened[sid] = [length._expected_content_length, False]
        known = decoder.remembered(block)
        if known is not None and known[1] <= _REQUESTS_MAX_BYTES:
            # Remembered with the block only once every check passed: a block the checks refuse
            # is refused by _events (the connection error named there), every time it comes.
            try:
                parsed = _checked_request(tuple(fields))
            except h2.exceptions.ProtocolError:
                parsed = None
            if type(parsed) is tuple:
                known[2] = (length._expected_content_length, parsed)
        ended = h2.events.StreamEnded(stream_id=sid)
        request = h2.events.RequestReceived(stream_id=sid, headers=list(fields), stream_ended=ended)
        return [request, ended]

    def _open(self, stream_id: int) -> None:
        """Make the ``_unopened`` stream in h2, in the state h2 would have it in now."""
        expected_length, headers_sent = self._unopened.pop(stream_id)
        conn = self._conn
        stream = h2.stream.H2Stream(stream_id, config=conn.config,
                                    inbound_window_size=conn.local_settings.initial_window_size,
                                    outbound_window_size=conn.remote_settings.initial_window_size)
        stream.max_outbound_frame_size = conn.max_outbound_frame_size
        conn.streams[stream_id] = stream
        machine = stream.state_machine
        machine.process_input(h2.stream.StreamInputs.RECV_HEADERS)
        machine.process_input(h2.stream.StreamInputs.RECV_END_STREAM)
        stream._expected_content_length = expected_length
        if headers_sent:
            machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)

    def _open_all(self) -> None:
        for stream_id in list(self._unopened):
            self._open(stream_id)

    def _close_unopened(self, stream_id: int) -> None:
        """Our END_STREAM closed the ``_unopened`` stream: h2 remembers it as closed so."""
        del self._unopened[stream_id]
        # What h2's SizeLimitDict.__setitem__ does, without its Python call and size loop on
        # every closed stream: the limit is checked only once it could be passed.
        closed = self._conn._closed_streams
        _ORDERED_SET(closed, stream_id, _SENT_END_STREAM)
        limit = closed._size_limit  # type: ignore[attr-defined]
        if limit is not None:
            # (Once full, every insert drops the oldest: OrderedDict's own popitem, not h2's
            # Python loop around it.)
            while len(closed) > limit:
                _ORDERED_POP(closed, False)

    def _events(self, raw: list[h2.events.Event]) -> tuple[list[Event], int]:
        """h2's events as ours, and how many of them are charged to the flood budget."""
        out: list[Event] = []
        costly = 0  # frames charged to the flood budget (by _charge)
        charge = self._charge
        on_headers = None  # the PriorityUpdated h2 also reports for the last HEADERS
        for ev in raw:
            t = type(ev)
            if t is _KnownRequest:
                sid = ev.stream_id
                self._last_read = sid
                on_headers = None  # (no PRIORITY on such a HEADERS)
                req = self._stream_request(sid, ev.parsed, True)
                if type(req) is StreamInvalid:
                    charge("refused_stream")
                out.append(req)
                end = _new_object(StreamEnd)
                _SET_END_ID(end, sid)
                out.append(end)
            elif t is h2.events.DataReceived:
                sid = ev.stream_id
                if not ev.data and ev.stream_ended is None:
                    charge("empty_data")  # empty DATA (CVE-2019-9518)
                n = self._body_bytes.get(sid, 0) + len(ev.data)
                self._body_bytes[sid] = n
                if n > self.limits.max_body_bytes:
                    self.acknowledge(sid, ev.flow_controlled_length)
                    self._reset_quietly(sid, H2_PROTOCOL_ERROR)
                    out.append(StreamInvalid(stream_id=sid, error=PayloadTooLarge(
                        "body exceeds max_body_bytes")))
                    continue
                out.append(StreamData(stream_id=sid, data=ev.data,
                                      flow_controlled_length=ev.flow_controlled_length))
            elif t is h2.events.RequestReceived:
                self._last_read = ev.stream_id
                on_headers = ev.priority_updated
                req = self._request(ev)
                if type(req) is StreamInvalid:
                    charge("refused_stream")
                out.append(req)
            elif t is h2.events.StreamEnded:  # also follows a HEADERS or DATA with END_STREAM
                end = _new_object(StreamEnd)
                _SET_END_ID(end, ev.stream_id)  # (StreamEnd(stream_id=...) without its __init__)
                out.append(end)
            elif t is h2.events.StreamReset:
                if ev.remote_reset:
                    charge("rst_stream")  # rapid reset (CVE-2023-44487)
                self._forget(ev.stream_id)
                out.append(StreamReset(stream_id=ev.stream_id, error_code=int(ev.error_code)))
            elif t is h2.events.WindowUpdated:
                out.append(WindowOpened(stream_id=ev.stream_id))
            elif t is h2.events.RemoteSettingsChanged:
                charge("settings")  # SETTINGS flood (CVE-2019-9515)
                self._peer_window = self._conn.remote_settings.initial_window_size
                out.append(WindowOpened(stream_id=0, settings=True))
            elif t is h2.events.PingReceived:
                charge("ping")  # PING flood (CVE-2019-9512)
            elif t is h2.events.PriorityUpdated:
                if ev is not on_headers:
                    charge("priority")  # a PRIORITY frame of its own (CVE-2019-9513), not on HEADERS
            elif t is h2.events.ConnectionTerminated:
                self.closed = True
                out.append(ConnectionEnded(error_code=int(ev.error_code),
                                           reason=(ev.additional_data or b"").decode("latin-1")))
            elif t is h2.events.TrailersReceived:
                # Checked as h2 would (no pseudo-header fields...), then dropped: no app reads
                # trailers.
                for _ in h2.utilities.validate_headers(
                        h2.utilities.normalize_inbound_headers(ev.headers, _TRAILER_BLOCK), _TRAILER_BLOCK):
                    pass
            elif t is h2.events.SettingsAcknowledged:
                if self._settings_acks_due:
                    self._settings_acks_due -= 1
                else:
                    charge("settings")  # acknowledges nothing we sent
            elif t is h2.events.PingAckReceived:
                charge("ping")  # we send no PING: acknowledges nothing
            elif t is h2.events.UnknownFrameReceived:
                # RFC 9113 5.5: ignored, but not for free; PRIORITY_UPDATE (RFC 9218) is one too.
                charge("priority" if ev.frame.type == _PRIORITY_UPDATE else "unknown_frame")
        return out, costly

    # --- frames h2 takes without an event -----------------------------------------------------

    def _wrap_h2(self) -> None:
        """Put our accounting around h2's handlers of the frames it may take without telling us
        (its per-connection dispatch table: nothing else of h2 changes)."""
        table = self._conn._frame_dispatch_table
        self._h2_rst_stream = table[RstStreamFrame]
        self._h2_window_update = table[WindowUpdateFrame]
        self._h2_data = table[DataFrame]
        self._h2_headers = table[HeadersFrame]
        self._h2_alt_svc = table[AltSvcFrame]
        table[RstStreamFrame] = self._receive_rst_stream
        table[WindowUpdateFrame] = self._receive_window_update
        table[DataFrame] = self._receive_data
        table[HeadersFrame] = self._receive_headers
        table[AltSvcFrame] = self._receive_alt_svc

    def _receive_rst_stream(self, frame: RstStreamFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        sid = frame.stream_id
        conn = self._conn
        if sid not in conn.streams and sid > (conn.highest_inbound_stream_id if sid % 2
                                              else conn.highest_outbound_stream_id):
            # RFC 9113 6.4: a connection error (h2 ignores it, and would do so without limit).
            raise _H2_PROTOCOL(f"RST_STREAM of idle stream {sid}")
        frames, events = self._h2_rst_stream(frame)
        if not events:
            self._charge("rst_stream")  # of a stream already closed: nothing to cancel
        return frames, events

    def _receive_window_update(self, frame: WindowUpdateFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        sid = frame.stream_id
        conn = self._conn
        if sid:
            stream = conn.streams.get(sid)
            before = stream.outbound_flow_control_window if stream is not None else 0
        else:
            before = conn.outbound_flow_control_window
        frames, events = self._h2_window_update(frame)
        if not events:
            self._late_frame(sid, "window_update")  # of a stream no longer open
            return frames, events
        # Free while it re-opens what DATA we sent drew on the window: a credit per
        # _WINDOW_CREDIT_BYTES drawn since the scope's last update (a client may acknowledge
        # each frame it reads, in one update or several), banked up to _WINDOW_CREDITS_MAX;
        # plus one to begin with (a client's first update often enlarges the window). An
        # update past those made the window bigger to no end.
        scope = self._window_after.get(sid)
        if scope is None:
            initial = conn.remote_settings.initial_window_size if sid else 65535
            scope = self._window_after[sid] = [initial, 1]
        drawn = scope[0] - before
        credit = scope[1]
        if drawn > 0:
            credit = min(_WINDOW_CREDITS_MAX, credit + -(-drawn // _WINDOW_CREDIT_BYTES))
        if credit >= 1:
            credit -= 1
        else:
            self._charge("window_update")
        scope[0] = before + frame.window_increment
        scope[1] = credit
        return frames, events

    def _receive_data(self, frame: DataFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        frames, events = self._h2_data(frame)
        if not events:  # the stream is closed: h2 answered RST_STREAM and refunded the window
            self._late_frame(frame.stream_id, "closed_stream")
        return frames, events

    def _receive_headers(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        conn = self._conn
        sid = frame.stream_id
        if (sid % 2 and sid > conn.highest_inbound_stream_id
                and conn.open_inbound_streams + len(self._unopened) + 1
                > conn.local_settings.max_concurrent_streams):
            return self._refuse_stream(frame)
        try:
            return self._h2_headers(frame)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError) as e:
            # On a stream reset, h2 answers RST_STREAM and goes on (on one ended, the
            # connection ends): charged like DATA there.
            if self._conn._stream_is_closed_by_reset(e.stream_id):
                self._charge("closed_stream")
            raise

    def _refuse_stream(self, frame: HeadersFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        """A HEADERS opening a stream past SETTINGS_MAX_CONCURRENT_STREAMS: RST_STREAM
        (REFUSED_STREAM) and the connection goes on (RFC 9113 5.1.2; h2 ends the connection).

        The block is decoded all the same (the peer's HPACK table changed with it, RFC 9113
        4.3), the stream id is used up, and the stream is closed as one we reset (frames the
        client had in flight for it are late frames). A refusal is charged to the flood
        budget: a client that keeps opening streams past the limit ends with ENHANCE_YOUR_CALM.
        """
        conn = self._conn
        sid = frame.stream_id
        _connection_input(conn, _RECV_HEADERS)
        h2.connection._decode_headers(conn.decoder, frame.data)
        conn.highest_inbound_stream_id = sid
        conn._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
        self._charge("refused_stream")
        refusal = RstStreamFrame(sid)
        refusal.error_code = H2_REFUSED_STREAM
        return [refusal], []

    def _receive_alt_svc(self, frame: AltSvcFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        self._charge("unknown_frame")  # ALTSVC is the server's to send (RFC 7838): ignored
        return self._h2_alt_svc(frame)

    def _late_frame(self, sid: int, kind: str) -> None:
        """A DATA or WINDOW_UPDATE frame of stream ``sid`` no longer open: free while it is one
        of the streams opened last that we ended (RST_STREAM or END_STREAM: the client's frames
        may have been in flight) and has some of its LATE_FRAMES left; charged otherwise (a
        stream never opened, skipped over, or ended by the client, knows nothing in flight)."""
        conn = self._conn
        floor = conn.highest_inbound_stream_id - 4 * self.limits.max_concurrent_streams
        late = self._late
        if sid % 2 == 0 or sid <= floor or conn._stream_closed_by(sid) not in _WE_ENDED:
            self._charge(kind)
            return
        left = late.get(sid, LATE_FRAMES)
        if left <= 0:
            self._charge(kind)
            return
        late[sid] = left - 1
        if len(late) > 4 * self.limits.max_concurrent_streams:
            for old in [s for s in late if s <= floor]:
                del late[old]


    def _request(self, ev: h2.events.RequestReceived) -> StreamRequest | StreamInvalid:
        """The request of ``ev``, or why it is refused; h2's ProtocolError for a malformed block
        (a connection error)."""
        return self._stream_request(ev.stream_id, _checked_request(tuple(ev.headers)),
                                    ev.stream_ended is not None)

    def _stream_request(self, sid: int, parsed: _Parsed, end_stream: bool) -> StreamRequest | StreamInvalid:
        """The request of stream ``sid`` from its fields' ``_checked_request``, or why it is refused."""
        if type(parsed) is not tuple:
            return StreamInvalid(stream_id=sid, error=parsed)  # type: ignore[arg-type]
        method, target, authority, scheme, headers, content_length, expects_continue = parsed
        if end_stream and content_length:
            # RFC 9113 8.1.1: content-length must match the DATA, and HEADERS with END_STREAM
            # carry none (h2 checks the DATA's sum only when DATA comes): the app would see a
            # request declaring bytes it never gets.
            return StreamInvalid(stream_id=sid, error=BadRequest(
                "content-length on a request whose HEADERS end the stream"))
        if content_length is not None and content_length > self.limits.max_body_bytes:
            return StreamInvalid(stream_id=sid, error=PayloadTooLarge(
                f"declared body of {content_length} bytes exceeds the limit"))
        return _stream_request(sid, method, target, authority, scheme, list(headers), content_length,
                               expects_continue, end_stream)

    # --- output ----------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the wire, as one string."""
        return b"".join(self.take_output())

    def take_output(self) -> list[bytes | memoryview]:
        """Everything queued for the wire, in order, as pieces for one gathering write."""
        out = self._out
        tail = self._conn.data_to_send()
        if tail:
            out.append(tail)
        small = self._out_bytes < _JOIN_BELOW_BYTES and len(out) > 1
        self._out = []
        self._out_bytes = 0
        # Small responses leave as one string, as before send_body: copying a few KiB costs
        # less than a gathering write of many tiny pieces.
        return [b"".join(out)] if small else out

    def pending_bytes(self) -> int:
        """Bytes queued for the wire and not yet taken by ``take_output``.

        h2 keeps its own in one buffer with no public size: read it here, the one module that
        knows h2, so the shell can bound what streams queue ahead of a slow socket.
        """
        return self._out_bytes + len(self._conn._data_to_send)

    def send_informational(self, stream_id: int, status: int = 100) -> None:
        self._send_block(stream_id, [encode_status(status)], end_stream=False, informational=True)

    def send_response(self, stream_id: int, status: int, headers: Iterable[tuple[str, str]], *,
                      body_length: int | None, head_request: bool = False) -> bool:
        """Queue the response HEADERS; True when that already ended the stream (no body)."""
        block, end = self._response_block(status, headers, body_length, head_request)
        self._send_block(stream_id, block, end_stream=end)
        return end

    def send_whole(self, stream_id: int, status: int, headers: Iterable[tuple[str, str]], body: bytes, *,
                   head_request: bool = False, prepared: object = None) -> bool:
        """``send_response`` and then all of ``body`` as one DATA frame ending the stream, if the
        body fits the stream's and the connection's send windows and one frame now; False, with
        nothing queued or checked, if not. Raises what ``send_response`` raises. ``prepared``:
        the response's ``Response.prepared`` (the same object means the same fields).

        A stream opened by a request without a body and not yet answered (a cache hit's) takes
        one pass: the block made, the connection's state machine given the inputs both calls
        give it, its window charged, the stream remembered as closed by our END_STREAM, and the
        HEADERS and DATA frames queued, with no second look-up of the stream, window or queue.
        """
        n = len(body)
        conn = self._conn
        unopened = self._unopened.get(stream_id)
        if unopened is None or unopened[1]:
            if n > self.outbound_window(stream_id) or n > conn.outbound_flow_control_window:
                return False
            if not self.send_response(stream_id, status, headers, body_length=n, head_request=head_request):
                # (All of it: it fits the windows and one frame, which may be over 64 KiB.)
                self.send_body(stream_id, memoryview(body), end_stream=True, limit=n)
            return True
        max_frame = conn.max_outbound_frame_size
        if n > conn.outbound_flow_control_window or n > self._peer_window or n > max_frame:
            return False
        block, end = self._response_block(status, headers, n, head_request, prepared)
        _connection_input(conn, _SEND_HEADERS)
        if not end:
            _connection_input(conn, _SEND_DATA)
            conn.outbound_flow_control_window -= n
        self._close_unopened(stream_id)
        if not self._table_zeroed:
            self._table_zeroed = True
            block.insert(0, TABLE_SIZE_ZERO)
        out = self._out
        if conn._data_to_send:  # h2's frames queued before these go first
            queued = conn.data_to_send()
            out.append(queued)
            self._out_bytes += len(queued)
        encoded = b"".join(block)
        m = len(encoded)
        if m <= max_frame:
            out.append(_FRAME_HEADER.pack(m >> 8, m & 0xFF, 1, _END_HEADERS | _END_STREAM if end else _END_HEADERS,
                                          stream_id))
            out.append(encoded)
            m += 9
        else:
            frames = header_frames(stream_id, encoded, end_stream=end, max_frame=max_frame)
            out.extend(frames)
            m = sum(len(f) for f in frames)
        if end:
            self._out_bytes += m
            return True
        out.append(_DATA_HEADER.pack(n << 8, _END_STREAM, stream_id))
        out.append(body)
        self._out_bytes += m + 9 + n
        return True

    def _response_block(self, status: int, headers: Iterable[tuple[str, str]], body_length: int | None,
                        head_request: bool, prepared: object = None) -> tuple[list[bytes], bool]:
        """A final response's header block, as pieces, and whether it ends the stream (no body).
        ``prepared``: the response's ``Response.prepared``, the same fields every time it comes."""
        if not 200 <= status <= 999:
            raise LocalProtocolError(f"cannot send status {status} as a final response")
        no_body = head_request or status in (204, 304)
        known = None
        if prepared is not None:
            by_prepared = _BY_PREPARED.get(id(prepared))
            if by_prepared is not None and by_prepared[0] is prepared and by_prepared[1] == status:
                known = by_prepared[2]
        if known is None:
            fields = headers if type(headers) is tuple else tuple(headers)
            key = (status, fields)
            try:
                known = _BLOCKS.get(key)
                hashable = True
            except TypeError:  # (fields given as lists, say: checked and encoded, not remembered)
                known, hashable = None, False
            if known is None:
                known = _encoded_fields(status, fields)
                if hashable and len(known[0]) <= _BLOCK_MEMO_MAX_BYTES:
                    if len(_BLOCKS) >= _BLOCK_MEMO_MAX:
                        _BLOCKS.clear()
                    _BLOCKS[key] = known
            if prepared is not None and hashable and len(known[0]) <= _BLOCK_MEMO_MAX_BYTES:
                if len(_BY_PREPARED) >= _BLOCK_MEMO_MAX:
                    _BY_PREPARED.clear()
                _BY_PREPARED[id(prepared)] = (prepared, status, known)
        encoded, lengths, has_date, has_server = known
        if lengths and not no_body and body_length is not None and status != 204:
            for declared in lengths:
                if body_length != declared:
                    raise LocalProtocolError(
                        f"content-length {declared} but the body has {body_length} bytes")
        block: list[bytes] = [encoded]
        if not lengths and body_length is not None and status not in (204, 304) and (
                body_length or not head_request):
            block.append(_content_length(body_length))
        if not has_date:
            block.append(_date(self.clock.time()))
        if not has_server:
            block.append(_SERVER_FIELD)
        return block, no_body or body_length == 0

    def _send_block(self, stream_id: int, block: list[bytes], *, end_stream: bool,
                    informational: bool = False) -> None:
        """Queue a response header block (h2_fields' encoding) as HEADERS (+ CONTINUATION).

        What h2's ``send_headers`` does for a response on a stream the peer opened: the same
        inputs to its connection and stream state machines (which raise as they would there),
        with the block encoded and framed here instead of by h2's encoder.
        """
        conn = self._conn
        unopened = self._unopened.get(stream_id)
        if unopened is not None and (informational or unopened[1]):
            self._open(stream_id)
            unopened = None
        _connection_input(conn, _SEND_HEADERS)
        if unopened is not None:  # (the response's HEADERS on a half-closed stream: no error)
            unopened[1] = True
            if end_stream:
                self._close_unopened(stream_id)
        else:
            stream = conn._get_stream_by_id(stream_id)
            if informational:
                if end_stream:
                    raise LocalProtocolError("an informational response cannot end the stream")
                stream.state_machine.process_input(h2.stream.StreamInputs.SEND_INFORMATIONAL_HEADERS)
            else:
                stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
            if end_stream:
                stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
        if not self._table_zeroed:
            self._table_zeroed = True
            block.insert(0, TABLE_SIZE_ZERO)
        out = self._out
        queued = conn.data_to_send()  # h2's frames queued before these go first
        if queued:
            out.append(queued)
            self._out_bytes += len(queued)
        for frame in header_frames(stream_id, b"".join(block), end_stream=end_stream,
                                   max_frame=conn.max_outbound_frame_size):
            out.append(frame)
            self._out_bytes += len(frame)

    def outbound_window(self, stream_id: int) -> int:
        """Bytes of DATA that may be sent on the stream now (0 when a window is exhausted)."""
        if stream_id in self._unopened:  # (nothing sent on it yet: the peer's initial window)
            conn = self._conn
            return min(conn.outbound_flow_control_window, self._peer_window, conn.max_outbound_frame_size)
        try:
            window = self._conn.local_flow_control_window(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return 0
        return min(window, self._conn.max_outbound_frame_size)

    def connection_window(self) -> int:
        """Bytes of DATA the connection's send window admits now, over all streams."""
        return self._conn.outbound_flow_control_window

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        if stream_id in self._unopened:
            self._open(stream_id)
        self._conn.send_data(stream_id, data, end_stream=end_stream)

    def send_body(self, stream_id: int, data: memoryview, *, end_stream: bool = False,
                  limit: int = 64 * KiB) -> int:
        """Queue DATA frames for up to ``limit`` bytes of ``data``, as far as the stream's and
        the connection's send windows admit; the bytes queued (0: a window is shut). END_STREAM
        goes on the last frame if all of ``data`` went. A stream closed or unknown raises what
        h2's ``send_data`` raises (StreamClosedError, NoSuchStreamError).

        The same as h2's ``send_data`` frame by frame, in one pass: h2's state machines take
        the same inputs and both its windows are charged every byte (so they never go below
        0), but the frames are queued as [header, slice of ``data``] (the peer's
        SETTINGS_MAX_FRAME_SIZE each) rather than serialised into h2's buffer: a 2 MiB body
        is no longer copied three times on its way to the socket. ``data`` must not change
        until ``take_output`` has handed it to the socket.
        """
        conn = self._conn
        unopened = self._unopened.get(stream_id)
        if unopened is not None:
            n = len(data)
            if (end_stream and unopened[1] and 0 < n <= limit and n <= conn.outbound_flow_control_window
                    and n <= self._peer_window):
                # All of the body in one go after the HEADERS: what h2's stream would go
                # through ends with it closed by our END_STREAM.
                _connection_input(conn, _SEND_DATA)
                conn.outbound_flow_control_window -= n
                self._close_unopened(stream_id)
                self._queue_data(stream_id, data, n, True)
                return n
            self._open(stream_id)
        stream = conn._get_stream_by_id(stream_id)  # h2's errors for a stream gone, as send_data
        n = min(len(data), limit, conn.outbound_flow_control_window,
                stream.outbound_flow_control_window)
        if n <= 0:
            return 0
        last = end_stream and n == len(data)
        _connection_input(conn, _SEND_DATA)
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_DATA)
        if last:
            stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= n
        conn.outbound_flow_control_window -= n
        self._queue_data(stream_id, data, n, last)
        return n

    def _queue_data(self, stream_id: int, data: memoryview, n: int, last: bool) -> None:
        """Queue the first ``n`` bytes of ``data`` as DATA frames (END_STREAM on the last if
        ``last``), after what h2 has queued."""
        conn = self._conn
        out = self._out
        queued = conn.data_to_send()  # h2's frames queued before these go first
        if queued:
            out.append(queued)
            self._out_bytes += len(queued)
        frame = conn.max_outbound_frame_size
        pack = _DATA_HEADER.pack
        for start in range(0, n, frame):
            size = min(frame, n - start)
            flags = _END_STREAM if last and start + size == n else 0
            out.append(pack(size << 8, flags, stream_id))
            out.append(data[start:start + size])
        self._out_bytes += n + 9 * len(range(0, n, frame))

    def end_stream(self, stream_id: int) -> None:
        if stream_id in self._unopened:
            self._open(stream_id)
        self._conn.end_stream(stream_id)

    def acknowledge(self, stream_id: int, nbytes: int) -> None:
        """The app consumed ``nbytes`` flow-controlled bytes: let the peer send more."""
        if nbytes:
            if stream_id in self._unopened:
                self._open(stream_id)
            try:
                self._conn.acknowledge_received_data(nbytes, stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError,
                    h2.exceptions.ProtocolError):
                pass

    def reset(self, stream_id: int, error_code: int) -> None:
        self._reset_quietly(stream_id, error_code)

    def stream_finished(self, stream_id: int) -> None:
        """The exchange is over: forget per-stream accounting."""
        self._forget(stream_id)

    def request_complete(self, stream_id: int) -> bool:
        """The peer has ended its side of the stream (or the stream is gone)."""
        if stream_id in self._unopened:
            return True  # (opened by a HEADERS with END_STREAM)
        stream = self._conn.streams.get(stream_id)
        return stream is None or stream.closed or stream.state_machine.state.name in (
            "HALF_CLOSED_REMOTE", "CLOSED")

    def close(self, error_code: int = H2_NO_ERROR, last_stream_id: int | None = None,
              debug: bytes | None = None) -> None:
        """GOAWAY (with ``debug`` as its additional debug data): no new streams; streams
        already open may finish."""
        if not self.closed:
            self._open_all()  # (h2 has every stream the GOAWAY leaves to finish)
            try:
                self._conn.close_connection(error_code=error_code, last_stream_id=last_stream_id,
                                            additional_data=debug)
            except h2.exceptions.ProtocolError:
                pass
            self.closed = True

    def _reset_quietly(self, stream_id: int, error_code: int) -> None:
        if stream_id in self._unopened:
            self._open(stream_id)
        try:
            self._conn.reset_stream(stream_id, error_code=error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError,
                h2.exceptions.ProtocolError):
            pass
        self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self._body_bytes.pop(stream_id, None)
        if self._window_after:
            self._window_after.pop(stream_id, None)
