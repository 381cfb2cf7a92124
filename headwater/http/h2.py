"""HTTP/2 server connection, sans-IO: a thin adapter over the ``h2`` state machine.

It turns h2's frames-level events into the request-level events the shell needs (one
``StreamRequest`` per stream, its ``StreamData``, ``StreamEnd``, ``StreamReset``), applies the
HttpLimits (SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE, body size), and
turns app responses into HEADERS/DATA frames. Flow control is explicit: the shell asks
``outbound_window(stream_id)`` before sending DATA and calls ``acknowledge(stream_id, n)`` once
the app has consumed received bytes, which is what re-opens the peer's window (backpressure).

Frames that cost the peer little and us more (RST_STREAM of a stream we took on, PING,
SETTINGS, PRIORITY, empty DATA, refused streams) draw on a ``FloodBudget`` on the injected clock;
once it is spent the connection ends with GOAWAY(ENHANCE_YOUR_CALM) (``Flooding``).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Iterable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.stream

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import HttpLimits, KiB, MiB
from headwater.http.errors import (
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    BadRequest,
    Flooding,
    LocalProtocolError,
    PayloadTooLarge,
    ProtocolError,
)
from headwater.http.guards import FloodBudget
from headwater.http.h1 import HOP_BY_HOP, SERVER_NAME, check_field, http_date

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
_JOIN_BELOW_BYTES = 16 * KiB
STREAM_WINDOW_BYTES = 256 * KiB
CONNECTION_WINDOW_BYTES = 1 * MiB


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


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamData:
    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnd:
    stream_id: int


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


Event = StreamRequest | StreamData | StreamEnd | StreamReset | StreamInvalid | WindowOpened | ConnectionEnded


def _valid_path(method: str, path: str) -> bool:
    """RFC 9113 8.3.1: ``:path`` starts with ``/`` (``*`` only for OPTIONS), and carries no
    space or control character (RFC 3986). A proxy appends the path to ``http://host:port``: a
    path like ``@evil:80/x`` would name another host (SSRF), one with a space could not be sent."""
    if path[:1] != "/":
        return path == "*" and method == "OPTIONS"
    return _PATH_OK.fullmatch(path) is not None


_PATH_OK = re.compile(r"[^\x00-\x20\x7f]*")


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
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self._conn = h2.connection.H2Connection(config=config)
        self._conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self._connection_window = connection_window
        self._body_bytes: dict[int, int] = {}
        # What is queued for the wire, in order: h2's own bytes, and the DATA frames of
        # send_body as [frame header, view of the body] pairs (the body is not copied).
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self.closed = False

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
        try:
            raw = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.closed = True  # h2 has queued GOAWAY with the matching code
            return [ConnectionEnded(error_code=int(getattr(e, "error_code", H2_PROTOCOL_ERROR)),
                                    reason=str(e))]
        out: list[Event] = []
        costly = 0  # frames charged to the flood budget
        on_headers = None  # the PriorityUpdated h2 also reports for the last HEADERS
        for ev in raw:
            t = type(ev)
            if t is h2.events.DataReceived:
                sid = ev.stream_id
                if not ev.data and ev.stream_ended is None:
                    costly += 1  # empty DATA (CVE-2019-9518)
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
                on_headers = ev.priority_updated
                req = self._request(ev)
                if type(req) is StreamInvalid:
                    costly += 1
                out.append(req)
            elif t is h2.events.StreamEnded:  # also follows a HEADERS or DATA with END_STREAM
                out.append(StreamEnd(stream_id=ev.stream_id))
            elif t is h2.events.StreamReset:
                if ev.remote_reset:
                    costly += 1  # rapid reset (CVE-2023-44487)
                self._forget(ev.stream_id)
                out.append(StreamReset(stream_id=ev.stream_id, error_code=int(ev.error_code)))
            elif t is h2.events.WindowUpdated:
                out.append(WindowOpened(stream_id=ev.stream_id))
            elif t is h2.events.RemoteSettingsChanged:
                costly += 1  # SETTINGS flood (CVE-2019-9515)
                out.append(WindowOpened(stream_id=0, settings=True))
            elif t is h2.events.PingReceived:
                costly += 1  # PING flood (CVE-2019-9512)
            elif t is h2.events.PriorityUpdated:
                if ev is not on_headers:
                    costly += 1  # a PRIORITY frame of its own (CVE-2019-9513), not on HEADERS
            elif t is h2.events.ConnectionTerminated:
                self.closed = True
                out.append(ConnectionEnded(error_code=int(ev.error_code),
                                           reason=(ev.additional_data or b"").decode("latin-1")))
            # SettingsAcknowledged, PingAckReceived, TrailersReceived: h2 already queued
            # whatever answer they need.
        if costly and not self.budget.spend(costly):
            error = Flooding("too many RST_STREAM/PING/SETTINGS/PRIORITY/empty DATA frames")
            self._conn.data_to_send()  # the flood's answers (PING/SETTINGS acks) are not sent
            self.close(error.h2_error_code)
            out.append(ConnectionEnded(error_code=error.h2_error_code, reason=str(error)))
        return out

    def _request(self, ev: h2.events.RequestReceived) -> StreamRequest | StreamInvalid:
        sid = ev.stream_id
        method = target = authority = scheme = ""
        headers: list[tuple[str, str]] = []
        content_length: int | None = None
        expects_continue = False
        has_host = False
        for raw_name, raw_value in ev.headers:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
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
                    return StreamInvalid(stream_id=sid, error=BadRequest("invalid content-length"))
                content_length = int(value)
            elif name == "host":
                has_host = True
                authority = authority or value
            elif name == "expect" and value.lower() == "100-continue":
                expects_continue = True
        if not _valid_path(method, target):
            return StreamInvalid(stream_id=sid, error=BadRequest("invalid :path"))
        if not has_host and authority:
            headers.append(("host", authority))
        if content_length is not None and content_length > self.limits.max_body_bytes:
            return StreamInvalid(stream_id=sid, error=PayloadTooLarge(
                f"declared body of {content_length} bytes exceeds the limit"))
        return StreamRequest(stream_id=sid, method=method, target=target, authority=authority,
                             scheme=scheme, headers=headers, content_length=content_length,
                             expects_continue=expects_continue,
                             end_stream=ev.stream_ended is not None)

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
        self._conn.send_headers(stream_id, [(b":status", str(status).encode())])

    def send_response(self, stream_id: int, status: int, headers: Iterable[tuple[str, str]], *,
                      body_length: int | None, head_request: bool = False) -> bool:
        """Queue the response HEADERS; True when that already ended the stream (no body)."""
        if not 200 <= status <= 999:
            raise LocalProtocolError(f"cannot send status {status} as a final response")
        no_body = head_request or status in (204, 304)
        out: list[tuple[bytes, bytes]] = [(b":status", str(status).encode())]
        declared = None
        has_date = has_server = False
        try:
            for name, value in headers:
                lname = name.lower()
                if lname in HOP_BY_HOP:
                    continue
                check_field(name, value)
                if lname == "content-length":
                    if not value.isdigit():
                        raise LocalProtocolError(f"bad content-length {value!r} in the response")
                    declared = int(value)
                    if status == 204:
                        continue
                    if not no_body and body_length is not None and body_length != declared:
                        raise LocalProtocolError(
                            f"content-length {declared} but the body has {body_length} bytes")
                elif lname == "date":
                    has_date = True
                elif lname == "server":
                    has_server = True
                # RFC 9113 8.2.1: no leading or trailing whitespace in a field value.
                out.append((lname.encode(), value.strip(" \t").encode("latin-1")))
        except UnicodeEncodeError:
            raise LocalProtocolError("a response header value is not latin-1") from None
        if declared is None and body_length is not None and status not in (204, 304) and (
                body_length or not head_request):
            out.append((b"content-length", str(body_length).encode()))
        if not has_date:
            out.append((b"date", http_date(self.clock.time()).encode()))
        if not has_server:
            out.append((b"server", _SERVER))
        end = no_body or body_length == 0
        self._conn.send_headers(stream_id, out, end_stream=end)
        return end

    def outbound_window(self, stream_id: int) -> int:
        """Bytes of DATA that may be sent on the stream now (0 when a window is exhausted)."""
        try:
            window = self._conn.local_flow_control_window(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return 0
        return min(window, self._conn.max_outbound_frame_size)

    def connection_window(self) -> int:
        """Bytes of DATA the connection's send window admits now, over all streams."""
        return self._conn.outbound_flow_control_window

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
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
        stream = conn._get_stream_by_id(stream_id)  # h2's errors for a stream gone, as send_data
        n = min(len(data), limit, conn.outbound_flow_control_window,
                stream.outbound_flow_control_window)
        if n <= 0:
            return 0
        last = end_stream and n == len(data)
        conn.state_machine.process_input(h2.connection.ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_DATA)
        if last:
            stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= n
        conn.outbound_flow_control_window -= n
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
        return n

    def end_stream(self, stream_id: int) -> None:
        self._conn.end_stream(stream_id)

    def acknowledge(self, stream_id: int, nbytes: int) -> None:
        """The app consumed ``nbytes`` flow-controlled bytes: let the peer send more."""
        if nbytes:
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
        stream = self._conn.streams.get(stream_id)
        return stream is None or stream.closed or stream.state_machine.state.name in (
            "HALF_CLOSED_REMOTE", "CLOSED")

    def close(self, error_code: int = H2_NO_ERROR) -> None:
        """GOAWAY: no new streams; streams already open may finish."""
        if not self.closed:
            try:
                self._conn.close_connection(error_code=error_code)
            except h2.exceptions.ProtocolError:
                pass
            self.closed = True

    def _reset_quietly(self, stream_id: int, error_code: int) -> None:
        try:
            self._conn.reset_stream(stream_id, error_code=error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError,
                h2.exceptions.ProtocolError):
            pass
        self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self._body_bytes.pop(stream_id, None)
