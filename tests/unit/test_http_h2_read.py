"""headwater.http.h2 reading a request's HEADERS itself: the same events, errors and h2 state as
when h2 reads every frame (the connection with ``_receive`` replaced by h2's ``receive_data``
is the reference), however the bytes are cut into reads."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from headwater.config import HttpLimits
from headwater.http import h2 as server_h2

_GET = [(":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "example")]


def _connection(*, h2_reads_all: bool, limits: HttpLimits = HttpLimits()) -> server_h2.H2Connection:
    conn = server_h2.H2Connection(limits)
    if h2_reads_all:
        conn._receive = conn._conn.receive_data  # type: ignore[method-assign]
    conn.initiate()
    conn.data_to_send()
    return conn


def _client_bytes() -> bytes:
    """A client's preface and a mix of frames: requests without a body (read by _receive),
    one with priority and one with a body (read by h2), WINDOW_UPDATE, PING, RST_STREAM, a
    content-length on HEAD and one on GET."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, _GET, end_stream=True)
    c.send_headers(3, _GET, end_stream=True, priority_weight=200)
    c.send_headers(5, [(":method", "PUT"), *_GET[1:], ("content-length", "5")])
    c.send_data(5, b"hel")
    c.increment_flow_control_window(1000)
    c.ping(b"12345678")
    c.send_headers(7, [*_GET, ("x-a", "b")], end_stream=True)
    c.send_data(5, b"lo", end_stream=True)
    c.reset_stream(7, error_code=8)
    c.send_headers(9, [(":method", "HEAD"), *_GET[1:], ("content-length", "10")], end_stream=True)
    c.send_headers(11, [*_GET, ("content-length", "0")], end_stream=True)
    return c.data_to_send()


def _state(conn: server_h2.H2Connection) -> tuple:
    """h2's state, once the streams not made in h2 (``_unopened``) are."""
    conn._open_all()
    c = conn._conn
    return (c.state_machine.state, c.highest_inbound_stream_id, c.open_inbound_streams,
            {sid: (s.state_machine.state, s.inbound_flow_control_window, s.outbound_flow_control_window,
                   s._expected_content_length) for sid, s in c.streams.items()},
            dict(c._closed_streams), c.inbound_flow_control_window, c.outbound_flow_control_window)


def _read(conn: server_h2.H2Connection, wire: bytes, step: int) -> list:
    events = conn.receive_data(wire[:len(server_h2.PREFACE)])  # (h2 reads the preface itself)
    wire = wire[len(server_h2.PREFACE):]
    for i in range(0, len(wire), step):
        events += conn.receive_data(wire[i:i + step])
    return events


def _comparable(events: list) -> list:
    """``events`` with each StreamInvalid's error as its type and message (a fresh exception
    per request compares by identity)."""
    return [(type(e), e.stream_id, type(e.error), str(e.error)) if type(e) is server_h2.StreamInvalid else e
            for e in events]


@pytest.mark.parametrize("step", [1, 7, 9, 100, 1 << 20])
def test_reads_as_h2_reads_whatever_the_cut(step: int) -> None:
    wire = _client_bytes()
    reference = _connection(h2_reads_all=True)
    expected = _read(reference, wire, 1 << 20)
    # (The HEAD's content-length of 10 on HEADERS that end the stream: refused, RFC 9113 8.1.1.)
    names = [type(e).__name__ for e in expected]
    assert (names.count("StreamRequest"), names.count("StreamInvalid")) == (5, 1)
    ours = _connection(h2_reads_all=False)
    assert _comparable(_read(ours, wire, step)) == _comparable(expected)
    # Streams 9 and 11 came after the last frame that concerned a stream: never made in h2
    # when all came in one read. Their answers (HEAD: HEADERS alone; GET: HEADERS and DATA)
    # close them; h2 ends in the same state as with its own streams.
    if step == 1 << 20:
        assert set(ours._unopened) == {9, 11}
    for conn in (ours, reference):
        assert conn.outbound_window(11) == 16384 and conn.request_complete(11)
        assert conn.send_response(9, 200, [], body_length=10, head_request=True)
        assert not conn.send_response(11, 200, [], body_length=2)
        assert conn.send_body(11, memoryview(b"ok"), end_stream=True) == 2
    assert not ours._unopened
    assert ours.data_to_send() == reference.data_to_send()  # SETTINGS and PING acks, the answers
    assert _state(ours) == _state(reference)
    for conn in (ours, reference):  # and they answer alike afterwards
        conn.send_response(1, 200, [], body_length=2)
        conn.send_body(1, memoryview(b"ok"), end_stream=True)
        conn.reset(3, 8)
    assert ours.data_to_send() == reference.data_to_send()
    assert _state(ours) == _state(reference)


def test_a_stream_not_made_in_h2_is_made_when_anything_else_concerns_it() -> None:
    c, preface = _client()
    wire = []
    for sid in (1, 3, 5, 7):
        c.send_headers(sid, _GET, end_stream=True)
        wire.append(c.data_to_send())
    results = []
    for h2_reads_all in (True, False):
        conn = _connection(h2_reads_all=h2_reads_all)
        conn.receive_data(preface)
        events = conn.receive_data(b"".join(wire))
        conn.send_informational(1)  # 100 first: made, then answered
        conn.send_response(1, 200, [], body_length=3)
        conn.send_body(1, memoryview(b"abc"), end_stream=True)
        conn.send_response(3, 200, [], body_length=20000)  # not all at once: made
        sent = conn.send_body(3, memoryview(b"x" * 20000), end_stream=True, limit=1000)
        conn.reset(5, 8)
        conn.send_response(7, 200, [], body_length=None)  # a body of unknown length
        conn.send_data(7, b"abc")
        conn.end_stream(7)
        results.append((events, sent, conn.data_to_send(), _state(conn)))
    assert results[0] == results[1]


def _client() -> tuple[h2.connection.H2Connection, bytes]:
    """A client and its preface (read alone first: h2 reads the preface itself)."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                             normalize_outbound_headers=False))
    c.initiate_connection()
    return c, c.data_to_send()


@pytest.mark.parametrize("case", ["stream id not above the last", "even stream id",
                                  "bad content-length", "status field", "undecodable block"])
def test_refuses_what_h2_refuses_with_the_same_goaway(case: str) -> None:
    limits = HttpLimits(max_concurrent_streams=2)
    c, preface = _client()
    c.send_headers(3, _GET, end_stream=True)
    wire = c.data_to_send()
    if case in ("stream id not above the last", "even stream id"):
        frame = bytearray(wire)  # stream 3's HEADERS again, as stream 1 or 4
        frame[5:9] = (1 if case == "stream id not above the last" else 4).to_bytes(4, "big")
        wire += frame
    elif case == "bad content-length":
        c.send_headers(5, [*_GET, ("content-length", "x")], end_stream=True)
        wire += c.data_to_send()
    elif case == "status field":
        block = hpack.Encoder().encode([(":status", "100"), *_GET])  # (h2's client refuses to)
        wire += len(block).to_bytes(3, "big") + b"\x01\x05" + (5).to_bytes(4, "big") + block
    elif case == "undecodable block":
        wire += b"\x00\x00\x01\x01\x05\x00\x00\x00\x05\x80"  # indexed field 0
    results = []
    for h2_reads_all in (True, False):
        conn = _connection(h2_reads_all=h2_reads_all, limits=limits)
        conn.receive_data(preface)
        conn.data_to_send()
        events = conn.receive_data(wire)
        # (the connection is over: h2 kept a stream it made before it refused the block)
        results.append(([type(e).__name__ for e in events], events[-1], conn.data_to_send(),
                        conn._conn.highest_inbound_stream_id, conn._conn.state_machine.state))
    assert results[0] == results[1]
    last = results[1][1]
    assert isinstance(last, server_h2.ConnectionEnded) and last.error_code != 0


def test_an_overlong_frame_is_refused_from_its_header() -> None:
    # h2 waited for the whole frame (up to 16 MiB buffered) before it said FRAME_SIZE_ERROR.
    conn = _connection(h2_reads_all=False)
    c, preface = _client()
    conn.receive_data(preface)
    conn.data_to_send()
    c.send_headers(1, _GET, end_stream=True)
    events = conn.receive_data(c.data_to_send() + b"\x00\x40\x01\x00\x00\x00\x00\x00\x03")
    assert [type(e) for e in events] == [server_h2.ConnectionEnded]
    assert events[-1].error_code == 0x6
    wire = conn.data_to_send()
    assert wire[-17 + 3] == 0x7 and int.from_bytes(wire[-4:], "big") == 0x6  # GOAWAY(FRAME_SIZE_ERROR)
    assert int.from_bytes(wire[-8:-4], "big") == 1
    assert conn.receive_data(b"\x00" * 100) == []


@pytest.mark.parametrize("header", [
    b"\x00\x00\x06\x04\x00\x00\x00\x00\x01",  # SETTINGS on stream 1
    b"\x00\x00\x08\x06\x00\x00\x00\x00\x03",  # PING on stream 3
    b"\x00\x00\x05\x00\x00\x00\x00\x00\x00",  # DATA on stream 0
    b"\x00\x40\x00\x07\x00\x00\x00\x00\x01",  # GOAWAY on stream 1, overlong too (h2 names the stream)
])
def test_a_frame_header_h2_refuses_is_refused_before_its_frame_is_whole(header: bytes) -> None:
    # h2 refuses it from its header; the frame's body need not come (nor be waited for).
    c, preface = _client()
    c.send_headers(1, _GET, end_stream=True)
    wire = c.data_to_send() + header
    results = []
    for h2_reads_all in (True, False):
        conn = _connection(h2_reads_all=h2_reads_all)
        conn.receive_data(preface)
        conn.data_to_send()
        results.append((conn.receive_data(wire[:5]), repr(conn.receive_data(wire[5:])),
                        conn.data_to_send(), conn.closed))
    assert results[0] == results[1]
    assert results[1][1].startswith("[ConnectionEnded(error_code=1,") and results[1][3]


def test_a_stream_past_the_limit_is_refused_and_the_connection_goes_on() -> None:
    # RFC 9113 5.1.2: RST_STREAM(REFUSED_STREAM), not the end of the connection (h2 ends it).
    # The refused block is decoded all the same: the fields it put in the HPACK table are
    # there for the next block, which refers to them.
    limits = HttpLimits(max_concurrent_streams=2)
    c, preface = _client()
    c.send_headers(3, [(":method", "PUT"), *_GET[1:]])
    c.send_headers(5, [(":method", "PUT"), *_GET[1:]])
    c.send_headers(7, [*_GET, ("x-new", "indexed by the refused block")], end_stream=True)  # refused
    c.send_data(3, b"abc", end_stream=True)  # stream 3's request ends; 5 stays open
    first = c.data_to_send()
    c.send_headers(9, [*_GET, ("x-new", "indexed by the refused block")], end_stream=True)
    second = c.data_to_send()
    assert len(second) < 20  # (all of it from the table)
    results = []
    for h2_reads_all in (True, False):
        conn = _connection(h2_reads_all=h2_reads_all, limits=limits)
        conn.receive_data(preface)
        conn.data_to_send()
        events = conn.receive_data(first)
        wire = conn.data_to_send()
        conn.send_response(3, 200, [], body_length=0)
        conn.stream_finished(3)
        conn.data_to_send()
        events += conn.receive_data(second)
        results.append((events, wire, conn.closed, conn.spent, conn._conn.highest_inbound_stream_id))
    assert results[0] == results[1]
    events, wire, closed, spent, highest = results[1]
    # RST_STREAM(REFUSED_STREAM) on stream 7 after the SETTINGS ack
    assert b"\x00\x00\x04\x03\x00\x00\x00\x00\x07\x00\x00\x00\x07" in wire
    requests = [e for e in events if isinstance(e, server_h2.StreamRequest)]
    assert [r.stream_id for r in requests] == [3, 5, 9]
    assert ("x-new", "indexed by the refused block") in requests[-1].headers
    assert not closed and highest == 9 and spent["refused_stream"] == 1
    assert not any(isinstance(e, server_h2.ConnectionEnded) for e in events)


def test_refusals_are_charged_to_the_flood_budget() -> None:
    limits = HttpLimits(max_concurrent_streams=1, h2_flood_burst=20, h2_flood_rate_per_s=0.0)
    c, preface = _client()
    c.send_headers(1, [(":method", "PUT"), *_GET[1:]])  # held open: every other stream is refused
    for sid in range(3, 3 + 2 * 40, 2):
        c.send_headers(sid, _GET, end_stream=True)
    conn = _connection(h2_reads_all=False, limits=limits)
    conn.receive_data(preface)
    events = conn.receive_data(c.data_to_send())
    assert isinstance(events[-1], server_h2.ConnectionEnded) and events[-1].error_code == 0xB
    assert events[-1].flood == "refused_stream"
