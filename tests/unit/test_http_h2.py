"""headwater.http.h2 driven with bytes only, against the h2 library as the client."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from headwater.clock import FakeClock
from headwater.config import HttpLimits, KiB
from headwater.http import h2 as server_h2
from headwater.http.errors import LocalProtocolError


class Pair:
    """A client (h2 library) and our server connection, wired back to back; ``wire`` holds what
    the server sent."""

    def __init__(self, limits: HttpLimits = HttpLimits(), *,
                 client_config: h2.config.H2Configuration | None = None, clock: FakeClock | None = None) -> None:
        self.client = h2.connection.H2Connection(client_config or h2.config.H2Configuration(client_side=True))
        self.server = server_h2.H2Connection(limits, clock=clock or FakeClock(start=1_000_000_000.0))
        self.server.initiate()
        self.client.initiate_connection()
        self.server_events: list = []
        self.client_events: list = []
        self.wire: list[bytes] = []
        self.exchange()

    def exchange(self) -> None:
        for _ in range(10):
            c = self.client.data_to_send()
            if c:
                self.server_events += self.server.receive_data(c)
            s = self.server.data_to_send()
            if s:
                self.wire.append(s)
                self.client_events += self.client.receive_data(s)
            if not c and not s:
                return

    def request(self, sid: int, method: str, path: str, extra=(), end: bool = True) -> None:
        self.client.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                                       (":authority", "example"), *extra], end_stream=end)
        self.exchange()

    def take(self, kind: type) -> list:
        out = [e for e in self.server_events if isinstance(e, kind)]
        self.server_events = [e for e in self.server_events if not isinstance(e, kind)]
        return out


def test_settings_advertise_limits() -> None:
    p = Pair(HttpLimits(max_concurrent_streams=9, max_header_bytes=8 * KiB))
    changed = [e for e in p.client_events if isinstance(e, h2.events.RemoteSettingsChanged)][0]
    values = {k: v.new_value for k, v in changed.changed_settings.items()}
    assert values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 9
    assert values[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 8 * KiB
    assert values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == server_h2.STREAM_WINDOW_BYTES


def test_request_response_round_trip() -> None:
    p = Pair()
    p.request(1, "GET", "/a?b=c", [("x-thing", "1")])
    [req] = p.take(server_h2.StreamRequest)
    assert (req.method, req.target, req.authority, req.end_stream) == ("GET", "/a?b=c", "example", True)
    assert ("x-thing", "1") in req.headers and ("host", "example") in req.headers
    assert p.take(server_h2.StreamEnd) == [server_h2.StreamEnd(stream_id=1)]
    ended = p.server.send_response(1, 200, [("Content-Type", "text/plain"), ("Connection", "x")],
                                   body_length=5)
    assert not ended
    p.server.send_data(1, b"hello", end_stream=True)
    p.exchange()
    [resp] = [e for e in p.client_events if isinstance(e, h2.events.ResponseReceived)]
    headers = dict(resp.headers)
    assert headers[b":status"] == b"200" and headers[b"content-length"] == b"5"
    assert b"connection" not in headers and b"date" in headers and headers[b"server"] == b"headwater"
    data = b"".join(e.data for e in p.client_events if isinstance(e, h2.events.DataReceived))
    assert data == b"hello"


def test_head_and_204_end_the_stream_with_headers() -> None:
    p = Pair()
    p.request(1, "HEAD", "/")
    assert p.server.send_response(1, 200, [("content-length", "10")], body_length=0, head_request=True)
    p.request(3, "GET", "/")
    assert p.server.send_response(3, 204, [], body_length=0)
    p.exchange()
    assert len([e for e in p.client_events if isinstance(e, h2.events.StreamEnded)]) == 2


def test_request_body_flow_control_opens_as_acknowledged() -> None:
    p = Pair()
    p.request(1, "PUT", "/", end=False)
    window = p.client.local_flow_control_window(1)
    assert window == server_h2.STREAM_WINDOW_BYTES  # SETTINGS and connection WINDOW_UPDATE applied
    for _ in range(window // 16384):
        p.client.send_data(1, b"x" * 16384)
    p.exchange()
    assert p.client.local_flow_control_window(1) == 0
    got = p.take(server_h2.StreamData)
    assert sum(len(e.data) for e in got) == window
    before = p.client.local_flow_control_window(1)
    for e in got:
        p.server.acknowledge(1, e.flow_controlled_length)
    p.exchange()
    assert p.client.local_flow_control_window(1) > before


def test_response_respects_the_peer_window() -> None:
    p = Pair()
    p.request(1, "GET", "/")
    p.server.send_response(1, 200, [], body_length=None)
    sent = 0
    while (n := p.server.outbound_window(1)) > 0:
        p.server.send_data(1, b"y" * n)
        sent += n
    assert sent == 65535  # the client's default window
    p.exchange()
    received = [e for e in p.client_events if isinstance(e, h2.events.DataReceived)]
    for e in received:
        p.client.acknowledge_received_data(e.flow_controlled_length, 1)
    p.exchange()
    assert p.take(server_h2.WindowOpened)
    assert p.server.outbound_window(1) > 0


def test_declared_body_over_the_limit_is_invalid() -> None:
    p = Pair(HttpLimits(max_body_bytes=100))
    p.request(1, "PUT", "/", [("content-length", "101")], end=False)
    [bad] = p.take(server_h2.StreamInvalid)
    assert bad.error.http_status == 413
    p.request(3, "PUT", "/", end=False)
    p.client.send_data(3, b"z" * 150)
    p.exchange()
    [bad] = p.take(server_h2.StreamInvalid)
    assert bad.stream_id == 3 and bad.error.http_status == 413


def _data_frames(p: Pair) -> list[h2.events.DataReceived]:
    return [e for e in p.client_events if isinstance(e, h2.events.DataReceived)]


def test_send_body_frames_views_within_both_windows() -> None:
    # Two streams share the connection's 65,535-byte window (the client's default): send_body
    # charges h2's windows every byte, frames at the peer's max frame size, and the client (the
    # h2 library) parses what it queued, in order with the HEADERS h2 queued before it.
    p = Pair()
    p.request(1, "GET", "/a")
    p.request(3, "GET", "/b")
    body = bytes(range(256)) * 1024  # 256 KiB
    p.server.send_response(1, 200, [], body_length=len(body))
    p.server.send_response(3, 200, [], body_length=len(body))
    view = memoryview(body)
    assert p.server.send_body(1, view, end_stream=True, limit=40000) == 40000
    assert p.server.send_body(3, view, end_stream=True) == 65535 - 40000  # the connection's rest
    assert p.server.send_body(1, view[40000:], end_stream=True) == 0
    assert p.server.connection_window() == 0 and p.server.outbound_window(1) == 0
    p.exchange()
    frames = _data_frames(p)
    assert {e.stream_id for e in frames} == {1, 3}
    assert all(len(e.data) <= 16384 for e in frames)
    assert b"".join(e.data for e in frames if e.stream_id == 1) == body[:40000]
    assert b"".join(e.data for e in frames if e.stream_id == 3) == body[:65535 - 40000]
    assert not any(e.stream_ended for e in frames)
    assert len([e for e in p.client_events if isinstance(e, h2.events.ResponseReceived)]) == 2


def test_send_body_ends_the_stream_once_all_is_sent_and_windows_reopen() -> None:
    p = Pair()
    p.request(1, "GET", "/")
    body = b"z" * (200 * KiB)
    p.server.send_response(1, 200, [], body_length=len(body))
    view, got = memoryview(body), b""
    while view:
        n = p.server.send_body(1, view, end_stream=True)
        if n == 0:  # the window is shut: the client reads and acknowledges
            assert p.server.outbound_window(1) == 0
            p.exchange()
            for e in _data_frames(p):
                got += e.data
                p.client.acknowledge_received_data(e.flow_controlled_length, 1)
            p.client_events.clear()
            p.exchange()
            continue
        assert p.server.pending_bytes() >= n
        view = view[n:]
    p.exchange()
    frames = _data_frames(p)
    got += b"".join(e.data for e in frames)
    assert got == body
    assert frames[-1].stream_ended is not None
    assert [e for e in p.client_events if isinstance(e, h2.events.StreamEnded)]
    # the stream is closed: nothing more can be queued on it, as h2's send_data refuses it
    with pytest.raises(h2.exceptions.StreamClosedError):
        p.server.send_body(1, memoryview(b"more"))


def test_reset_and_goaway() -> None:
    p = Pair()
    p.request(1, "PUT", "/", end=False)
    p.client.reset_stream(1, error_code=8)
    p.exchange()
    assert p.take(server_h2.StreamReset) == [server_h2.StreamReset(stream_id=1, error_code=8)]
    p.server.close()
    p.exchange()
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in p.client_events)


def test_protocol_violation_ends_the_connection_with_goaway() -> None:
    server = server_h2.H2Connection()
    server.initiate()
    server.data_to_send()
    evs = server.receive_data(server_h2.PREFACE + b"\x00\x00\x01\x09\x00\x00\x00\x00\x01x")  # CONTINUATION out of place
    assert isinstance(evs[-1], server_h2.ConnectionEnded) and evs[-1].error_code != 0
    assert server.data_to_send()  # GOAWAY queued
    assert server.receive_data(b"more") == []


# --- floods (CVE-2023-44487 rapid reset, CVE-2019-9512/9515 PING and SETTINGS floods) ----------

def _goaway_code(p: Pair) -> int | None:
    for e in p.client_events:
        if isinstance(e, h2.events.ConnectionTerminated):
            return int(e.error_code)
    return None


def _flood_pair(clock: FakeClock, *, burst: int = 50, rate: float = 10.0) -> Pair:
    limits = HttpLimits(h2_flood_burst=burst, h2_flood_rate_per_s=rate, max_concurrent_streams=1000)
    return Pair(limits, clock=clock)


def test_rapid_reset_spends_the_budget_and_ends_with_enhance_your_calm() -> None:
    clock = FakeClock()
    p = _flood_pair(clock)
    sid = 1
    while not p.server.closed and sid < 2000:
        p.request(sid, "GET", "/", end=True)
        p.client.reset_stream(sid, error_code=8)
        p.exchange()
        sid += 2
    assert p.server.closed and sid < 120  # 50 resets (less the SETTINGS frame), not 1000
    assert _goaway_code(p) == 0xB
    ended = p.take(server_h2.ConnectionEnded)
    assert ended[-1].error_code == 0xB


def test_resets_at_a_human_pace_never_trip_the_budget() -> None:
    clock = FakeClock()
    p = _flood_pair(clock)
    for i in range(200):
        sid = 1 + 2 * i
        p.request(sid, "GET", "/", end=True)
        p.client.reset_stream(sid, error_code=8)
        p.exchange()
        clock.advance(0.2)  # 5 resets a second against a refill of 10
    assert not p.server.closed and _goaway_code(p) is None


def test_ping_and_settings_floods_end_with_enhance_your_calm() -> None:
    for flood in ("ping", "settings"):
        clock = FakeClock()
        p = _flood_pair(clock)
        for i in range(200):
            if flood == "ping":
                p.client.ping(b"%08d" % i)
            else:
                p.client.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1000 + i})
        p.exchange()  # all in one read: the budget trips within it
        assert p.server.closed and _goaway_code(p) == 0xB, flood
        acks = [e for e in p.client_events if isinstance(e, (h2.events.PingAckReceived,
                                                              h2.events.SettingsAcknowledged))]
        assert len(acks) <= 1  # the answers to the flood's read are dropped with the connection


def test_priority_on_headers_is_free_but_priority_frames_are_not() -> None:
    clock = FakeClock()
    p = _flood_pair(clock, burst=20, rate=0.0)
    for i in range(30):  # HEADERS carrying priority, as browsers send them
        p.client.send_headers(1 + 2 * i, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                          (":authority", "a")], end_stream=True, priority_weight=200)
        p.exchange()
    assert not p.server.closed
    for i in range(30):
        if p.server.closed:
            break
        p.client.prioritize(1 + 2 * i, weight=10)
        p.exchange()
    assert p.server.closed and i == 20 and _goaway_code(p) == 0xB


def test_empty_data_frames_are_charged() -> None:
    clock = FakeClock()
    p = _flood_pair(clock, burst=20, rate=0.0)
    p.request(1, "PUT", "/", end=False)
    for _ in range(30):
        p.client.send_data(1, b"")
    p.exchange()
    assert p.server.closed and _goaway_code(p) == 0xB


def test_date_comes_from_the_injected_clock() -> None:
    clock = FakeClock(start=1_000_000_000.0)
    p = _flood_pair(clock)
    p.request(1, "GET", "/")
    p.server.send_response(1, 204, [], body_length=0)
    p.exchange()
    [resp] = [e for e in p.client_events if isinstance(e, h2.events.ResponseReceived)]
    assert dict(resp.headers)[b"date"] == b"Sun, 09 Sep 2001 01:46:40 GMT"


def test_a_path_not_starting_with_a_slash_is_invalid() -> None:
    # A proxy appends :path to http://host:port: "@evil:80/x" named another host (SSRF).
    p = Pair(client_config=h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    for sid, method, path in ((1, "GET", "@127.0.0.1:9/x"), (3, "GET", "x"), (5, "GET", "*"), (7, "GET", "/a b"),
                              (9, "GET", "/a\x7f")):
        p.request(sid, method, path)
        [bad] = p.take(server_h2.StreamInvalid)
        assert bad.stream_id == sid and bad.error.http_status == 400, path
    p.request(11, "OPTIONS", "*")
    p.request(13, "GET", "/a?b=%20")
    assert [r.target for r in p.take(server_h2.StreamRequest)] == ["*", "/a?b=%20"]


def test_response_fields_go_out_as_latin1_stripped_and_checked() -> None:
    p = Pair()
    p.request(1, "GET", "/")
    p.server.send_response(1, 200, [("X-Name", " caf\u00e9 "), ("x-t", "a\tb")], body_length=0)
    p.exchange()
    [resp] = [e for e in p.client_events if isinstance(e, h2.events.ResponseReceived)]
    headers = dict(resp.headers)
    # The bytes the str came from (latin-1, as h1 sends them), no surrounding whitespace
    # (RFC 9113 8.2.1), inner whitespace kept.
    assert headers[b"x-name"] == b"caf\xe9" and headers[b"x-t"] == b"a\tb"
    p.request(3, "GET", "/")
    for bad in ([("x-a", "\u20ac")], [("x-a", "b\r\nx-c: d")], [(":status", "200")], [("bad name", "1")]):
        try:
            p.server.send_response(3, 200, bad, body_length=0)
        except LocalProtocolError:
            continue
        raise AssertionError(f"{bad} was sent")



# --- hostile field blocks, hand-made (the h2 library would not send them) ----------------------

def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 255, n & 255, kind, flags)) + sid.to_bytes(4, "big") + payload


def _literal(fields) -> bytes:
    """Fields as HPACK literals without indexing, new names, no Huffman (lengths < 127)."""
    return b"".join(b"\x00" + bytes((len(n),)) + n + bytes((len(v),)) + v for n, v in fields)


_GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x")]


def _headers(sid: int, block: bytes, *, end_stream: bool = True, end_headers: bool = True) -> bytes:
    return _frame(0x1, (0x1 if end_stream else 0) | (0x4 if end_headers else 0), sid, block)


def _server(limits: HttpLimits = HttpLimits()) -> server_h2.H2Connection:
    server = server_h2.H2Connection(limits)
    server.initiate()
    server.data_to_send()
    assert server.receive_data(server_h2.PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x4, 0x1, 0, b"")) == [
        server_h2.WindowOpened(stream_id=0, settings=True)]
    server.data_to_send()
    return server


def _goaway(wire: bytes) -> tuple[int, int]:
    """(last stream id, error code) of the GOAWAY ending ``wire``."""
    assert wire[-17 + 3] == 0x7, wire
    return int.from_bytes(wire[-8:-4], "big"), int.from_bytes(wire[-4:], "big")


_PROTOCOL, _COMPRESSION, _CALM = 1, 9, 11
_G = _literal(_GOOD)
# Each refused as before our own checks and HPACK (commit 7207706, h2 checking every block): a
# connection error; an HPACK decoding error is a COMPRESSION_ERROR (RFC 9113 4.3; h2 alone
# said PROTOCOL_ERROR), the rest PROTOCOL_ERROR.
_UNDECODABLE = ("index 0", "dynamic index, empty table", "huge index", "overlong integer",
                "table size above the limit", "table size update mid-block", "huffman padding not ones",
                "huffman EOS", "string past the block")
_HOSTILE = {
    "index 0": _headers(1, _G + b"\x80"),
    "dynamic index, empty table": _headers(1, _G + b"\xbe"),
    "huge index": _headers(1, _G + b"\xff\xff\xff\xff\xff\x0f"),
    "overlong integer": _headers(1, _G + b"\xff" + b"\x80" * 40 + b"\x01"),
    "table size above the limit": _headers(1, b"\x3f\xe2\x1f" + _G),
    "table size update mid-block": _headers(1, _G + b"\x20"),
    "huffman padding not ones": _headers(1, _G + b"\x00\x81\x00\x01a"),
    "huffman EOS": _headers(1, _G + b"\x00\x84\xff\xff\xff\xff\x01a"),
    "string past the block": _headers(1, _G + b"\x00\x7f\x05ab"),
    "no :path": _headers(1, _literal(_GOOD[:2] + _GOOD[3:])),
    "two :method": _headers(1, _literal(_GOOD + [(b":method", b"GET")])),
    "upper-case name": _headers(1, _literal(_GOOD + [(b"X-A", b"1")])),
    "pseudo after regular": _headers(1, _literal([(b"x-a", b"1")] + _GOOD)),
    ":status in a request": _headers(1, _literal(_GOOD + [(b":status", b"200")])),
    "empty name": _headers(1, _literal(_GOOD + [(b"", b"1")])),
    "transfer-encoding": _headers(1, _literal(_GOOD + [(b"transfer-encoding", b"chunked")])),
    "te: gzip": _headers(1, _literal(_GOOD + [(b"te", b"gzip")])),
    "NUL in a value": _headers(1, _literal(_GOOD + [(b"x-a", b"a\x00b")])),
    "trailers with :path": _headers(1, _G, end_stream=False) + _headers(1, _literal([(b":path", b"/")])),
    "trailers without END_STREAM": _headers(1, _G, end_stream=False)
    + _headers(1, _literal([(b"x-a", b"1")]), end_stream=False),
    "CONTINUATION alone": _frame(0x9, 0x4, 1, _G),
    "CONTINUATION flood": _headers(1, _G, end_headers=False) + _frame(0x9, 0, 1, b"") * 100,
}


@pytest.mark.parametrize("case", _HOSTILE)
def test_hostile_field_blocks_end_the_connection_and_change_nothing(case: str) -> None:
    wire = _HOSTILE[case]
    code = _COMPRESSION if case in _UNDECODABLE else _PROTOCOL
    server = _server()
    server_h2._REQUESTS.clear()
    good = _headers(1, _G)  # remembered by the decoder and the memo of checked requests
    assert [type(e) for e in server.receive_data(good)] == [server_h2.StreamRequest, server_h2.StreamEnd]
    memo = dict(server_h2._REQUESTS)
    wire = wire.replace(b"\x00\x00\x00\x01", b"\x00\x00\x00\x03")  # (stream 3: 1 is done)
    events = server.receive_data(wire)
    assert not any(isinstance(e, server_h2.StreamRequest) for e in events)
    assert isinstance(events[-1], server_h2.ConnectionEnded) and events[-1].error_code == code
    assert _goaway(server.data_to_send())[1] == code
    assert server_h2._REQUESTS == memo  # (process-wide: the connection's own state dies with it)
    assert server.receive_data(good) == []


def test_a_malformed_block_names_the_last_stream_read_before_it_in_goaway() -> None:
    # h2 reads all of a read's frames before we check the blocks: the streams after the
    # malformed one were never acted on and must not be named as if they might have been.
    server = _server()
    bad = _literal(_GOOD + [(b"connection", b"close")])
    events = server.receive_data(_headers(1, _G) + _headers(3, bad) + _headers(5, _G))
    assert [type(e) for e in events] == [server_h2.ConnectionEnded]
    assert _goaway(server.data_to_send()) == (3, _PROTOCOL)


def test_the_configured_header_list_limit_is_enforced_remembered_or_not() -> None:
    # max_header_bytes is advertised as SETTINGS_MAX_HEADER_LIST_SIZE; the decoder kept h2's
    # own 64 KiB and let ~60 KiB lists past a configured 1 KiB.
    block = _literal(_GOOD + [(b"x-a", b"v" * 100)] * 4)  # ~600 bytes by HPACK's count
    big = _literal(_GOOD + [(b"x-a", b"v" * 100)] * 30)  # ~4 KiB
    server = _server(HttpLimits(max_header_bytes=1 * KiB))
    for sid in (1, 3):
        assert isinstance(server.receive_data(_headers(sid, block))[0], server_h2.StreamRequest)
    events = server.receive_data(_headers(5, big))
    assert isinstance(events[-1], server_h2.ConnectionEnded) and events[-1].error_code == _CALM
    # A block remembered under the limit meets it again when the limit changes.
    server = _server(HttpLimits(max_header_bytes=1 * KiB))
    assert isinstance(server.receive_data(_headers(1, block))[0], server_h2.StreamRequest)
    server._conn.decoder.max_header_list_size = 300
    events = server.receive_data(_headers(3, block))
    assert isinstance(events[-1], server_h2.ConnectionEnded) and events[-1].error_code == _CALM


def test_the_memo_of_checked_requests_counts_fields_as_hpack_does() -> None:
    # One-letter fields indexed from the dynamic table cost the peer a byte each and us a few
    # hundred in the process-wide memo: a list is remembered only within 4 KiB by HPACK's count.
    server = _server()
    server_h2._REQUESTS.clear()
    add = b"\x40\x01a\x00"  # a: "" into the dynamic table (index 62)
    server.receive_data(_headers(1, _G + add + b"\xbe" * 200))
    server.receive_data(_headers(3, _G + b"\xbe" * 20))
    assert [len(fields) for fields in server_h2._REQUESTS] == [4 + 20]


def test_a_block_replayed_after_the_table_changed_reads_as_the_table_now_says() -> None:
    def add(value: bytes) -> bytes:  # "a: value", into the dynamic table
        return b"\x40\x01a" + bytes((len(value),)) + value

    server = _server()
    replay = _G + b"\xbe"  # "the newest entry of the dynamic table"
    wire = _headers(1, _G + add(b"1")) + _headers(3, replay) + _headers(5, replay)
    seen = [e.headers[0] for e in server.receive_data(wire) if isinstance(e, server_h2.StreamRequest)]
    assert seen == [("a", "1")] * 3
    wire = _headers(7, _G + add(b"2")) + _headers(9, replay)
    seen = [e.headers[0] for e in server.receive_data(wire) if isinstance(e, server_h2.StreamRequest)]
    assert seen == [("a", "2")] * 2
    events = server.receive_data(_headers(11, b"\x20" + _G) + _headers(13, replay))  # table emptied
    assert [type(e) for e in events] == [server_h2.ConnectionEnded] and events[0].error_code == _COMPRESSION


# --- frames that do no work (issue 10): each one charged, whether h2 tells us of it or not ----

_PUT = _literal([(b":method", b"PUT"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x")])


def _wu(sid: int, n: int = 1) -> bytes:
    return _frame(0x8, 0, sid, n.to_bytes(4, "big"))


def _rst(sid: int) -> bytes:
    return _frame(0x3, 0, sid, (8).to_bytes(4, "big"))


def _answered(server: server_h2.H2Connection) -> None:
    """Stream 1: a GET answered and finished (closed both ways)."""
    server.receive_data(_headers(1, _G))
    server.send_response(1, 200, [], body_length=0)
    server.stream_finished(1)


def _upload(server: server_h2.H2Connection) -> None:
    server.receive_data(_headers(1, _PUT, end_stream=False))


def _reset(server: server_h2.H2Connection) -> None:
    server.receive_data(_headers(1, _PUT, end_stream=False) + _rst(1))


_NO_WORK = {  # (what comes first, the frame repeated, the kind it is charged as)
    "RST_STREAM of a closed stream": (_answered, _rst(1), "rst_stream"),
    "WINDOW_UPDATE of the connection": (None, _wu(0), "window_update"),
    "WINDOW_UPDATE of an open stream": (_upload, _wu(1), "window_update"),
    "WINDOW_UPDATE of a closed stream": (_answered, _wu(1), "window_update"),
    "DATA of a closed stream": (_answered, _frame(0x0, 0, 1, b"x"), "closed_stream"),
    "empty DATA of a reset stream": (_reset, _frame(0x0, 0, 1, b""), "closed_stream"),
    "HEADERS of a reset stream": (_reset, _headers(1, _G), "closed_stream"),
    "PRIORITY_UPDATE": (_answered, _frame(0x10, 0, 0, (1).to_bytes(4, "big") + b"u=3"), "priority"),
    "unknown frame type": (None, _frame(0xFA, 0, 0, b"12345678"), "unknown_frame"),
    "ALTSVC": (None, _frame(0xA, 0, 0, b"\x00\x00"), "unknown_frame"),
    "SETTINGS ack of nothing": (None, _frame(0x4, 0x1, 0, b""), "settings"),
    "PING ack of nothing": (None, _frame(0x6, 0x1, 0, b"12345678"), "ping"),
}


@pytest.mark.parametrize("case", _NO_WORK)
def test_frames_that_do_no_work_spend_the_budget(case: str) -> None:
    first, one, kind = _NO_WORK[case]
    server = _server(HttpLimits(h2_flood_burst=20, h2_flood_rate_per_s=0.0))
    if first is not None:
        first(server)
    server.data_to_send()
    # Past the budget even after what is free: a stream's late frames, a scope's first update.
    events = server.receive_data(one * (20 + server_h2.LATE_FRAMES + 4))
    ended = [e for e in events if isinstance(e, server_h2.ConnectionEnded)]
    assert ended and ended[0].error_code == _CALM and ended[0].flood == kind, events[-3:]
    assert _goaway(server.data_to_send())[1] == _CALM
    assert server.spent[kind] > 20


def test_rst_stream_of_an_idle_stream_is_a_protocol_error() -> None:
    # RFC 9113 6.4; h2 ignored it, as often as it came.
    server = _server()
    _answered(server)
    server.data_to_send()
    events = server.receive_data(_rst(1001))
    assert [(type(e), e.error_code) for e in events] == [(server_h2.ConnectionEnded, _PROTOCOL)]
    assert _goaway(server.data_to_send())[1] == _PROTOCOL


def test_the_window_updates_of_a_big_download_are_free() -> None:
    # The client's 64 KiB windows, re-opened as it reads: ~250 WINDOW_UPDATEs for 4 MiB, each
    # after DATA we sent; a budget of 5 would not cover ten of them.
    p = _flood_pair(FakeClock(), burst=5, rate=0.0)
    p.request(1, "GET", "/")
    p.server.send_response(1, 200, [], body_length=None)
    body = memoryview(b"d" * (4 * 1024 * KiB))
    sent = 0
    while sent < len(body):
        n = p.server.send_body(1, body[sent:], end_stream=True)
        sent += n
        p.exchange()
        for e in [e for e in p.client_events if isinstance(e, h2.events.DataReceived)]:
            p.client.acknowledge_received_data(e.flow_controlled_length, 1)
        p.client_events = [e for e in p.client_events if not isinstance(e, h2.events.DataReceived)]
        p.exchange()
    assert sent == len(body) and not p.server.closed and _goaway_code(p) is None
    assert p.server.spent == {"settings": 1}  # (the client's own SETTINGS)
    assert len(p.take(server_h2.WindowOpened)) > 100


def test_a_streams_frames_in_flight_when_we_reset_it_are_free() -> None:
    # An upload answered early: the client's DATA already sent (a stream window's worth, 16
    # frames of 16 KiB) arrive after our RST_STREAM, as may a WINDOW_UPDATE racing our
    # END_STREAM of a download.
    p = _flood_pair(FakeClock(), burst=5, rate=0.0)
    p.request(1, "PUT", "/", end=False)
    for _ in range(server_h2.LATE_FRAMES - 1):
        p.client.send_data(1, b"u" * 16 * KiB)
    p.server.reset(1, 0)  # sent before the client's DATA is read
    p.exchange()
    p.request(3, "GET", "/")
    p.server.send_response(3, 200, [], body_length=5)
    p.server.send_data(3, b"hello", end_stream=True)
    p.server.stream_finished(3)
    p.server.receive_data(_wu(3, 5))
    assert not p.server.closed and p.server.spent == {"settings": 1}  # (the client's own SETTINGS)


def test_frames_of_streams_skipped_over_or_ended_by_the_client_are_never_free() -> None:
    # Streams 3..199 were never opened (201 skipped over them), stream 1 the client reset: no
    # frame of theirs can have been in flight as we ended them.
    server = _server(HttpLimits(h2_flood_burst=20, h2_flood_rate_per_s=0.0))
    server.receive_data(_headers(1, _PUT, end_stream=False) + _rst(1) + _headers(201, _G))
    server.data_to_send()
    assert server.spent == {"settings": 1, "rst_stream": 1}  # (the preface's SETTINGS)
    events = server.receive_data(b"".join(_frame(0x0, 0, sid, b"x") for sid in range(1, 43, 2)))
    assert server.spent == {"settings": 1, "rst_stream": 1, "closed_stream": 21}
    assert [e.flood for e in events if isinstance(e, server_h2.ConnectionEnded)] == ["closed_stream"]


# --- read deadlines ----------------------------------------------------------------------------

_LIMITS = HttpLimits(header_timeout_s=10.0, body_timeout_s=60.0)


def _goaway_debug(wire: bytes) -> tuple[int, int, bytes]:
    """(last stream id, error code, debug data) of the only GOAWAY in ``wire``."""
    frames = []
    while wire:
        n = int.from_bytes(wire[:3], "big")
        frames.append((wire[3], wire[9:9 + n]))
        wire = wire[9 + n:]
    [payload] = [p for kind, p in frames if kind == 0x7]
    return int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:8], "big"), payload[8:]


def _timed_server(clock: FakeClock, *, preface: bool = True) -> server_h2.H2Connection:
    server = server_h2.H2Connection(_LIMITS, clock=clock)
    server.initiate()
    server.data_to_send()
    if preface:
        server.receive_data(server_h2.PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x4, 0x1, 0, b""))
        server.data_to_send()
    return server


def _trickle(server: server_h2.H2Connection, clock: FakeClock, wire: bytes, every_s: float) -> float:
    """Feed ``wire`` a byte at a time, one every ``every_s``, until the connection expires;
    the time it took."""
    start = clock.monotonic()
    for i in range(len(wire)):
        ended = server.expire()
        if ended:
            assert [type(e) for e in ended] == [server_h2.ConnectionEnded] and server.closed
            assert _goaway_debug(server.data_to_send())[1:] == (0, ended[0].reason.encode())
            return clock.monotonic() - start
        assert server.receive_data(wire[i:i + 1]) == [] or i == 0
        clock.advance(every_s)
    raise AssertionError("read whole without expiring")


def test_a_preface_trickled_expires_at_the_header_timeout() -> None:
    # (over TLS the preface comes after the handshake: nothing bounded it but the idle timeout,
    # which every byte moved on)
    clock = FakeClock()
    server = _timed_server(clock, preface=False)
    assert server.read_deadline() == clock.monotonic() + 10
    assert _trickle(server, clock, server_h2.PREFACE, 0.5) == 10


def test_a_frame_trickled_expires_at_the_header_timeout_whatever_its_progress() -> None:
    clock = FakeClock()
    server = _timed_server(clock)
    assert server.read_deadline() is None
    assert _trickle(server, clock, _frame(0x6, 0, 0, b"12345678") * 2, 1.0) == 10  # a PING


def test_a_data_frame_trickled_expires_at_the_body_timeout() -> None:
    clock = FakeClock()
    server = _timed_server(clock)
    server.receive_data(_headers(1, _PUT, end_stream=False))
    assert server.read_deadline() is None
    assert _trickle(server, clock, _frame(0x0, 0, 1, b"x" * 200), 1.0) == 60


def test_a_header_block_whose_continuation_never_ends_expires_at_the_header_timeout() -> None:
    # Every CONTINUATION frame comes whole and in time: the block does not.
    clock = FakeClock()
    server = _timed_server(clock)
    server.receive_data(_headers(1, _G[:10], end_headers=False))
    for second in range(1, 30):
        clock.advance(1.0)
        ended = server.expire()
        if ended:
            break
        assert server.receive_data(_frame(0x9, 0, 1, b"")) == []
    assert second == 10 and ended[0].reason == "a header block not read whole in time"
    assert _goaway_debug(server.data_to_send()) == (0, 0, b"a header block not read whole in time")


def test_frames_read_whole_in_time_never_expire() -> None:
    # A big upload in reads that each end within a frame: each frame has its own deadline.
    clock = FakeClock()
    server = _timed_server(clock)
    server.receive_data(_headers(1, _PUT, end_stream=False))
    wire = _frame(0x0, 0, 1, b"u" * 1000) * 100
    for i in range(0, len(wire), 700):
        events = server.receive_data(wire[i:i + 700])
        for e in events:
            if isinstance(e, server_h2.StreamData):
                server.acknowledge(1, e.flow_controlled_length)
        clock.advance(5.0)
        assert not server.expire() and not server.closed
    assert server.read_deadline() is None  # (the last read ended on a frame's end)


def test_a_header_block_growing_past_the_limit_ends_the_connection_before_it_is_whole() -> None:
    # h2 buffered up to 64 CONTINUATION frames of up to 16 KiB (1 MiB) before it refused it.
    server = _server(HttpLimits(max_header_bytes=8 * KiB))
    assert server.receive_data(_headers(1, _G + b"\x00\x03x-a\x7f\x81\x3f" + b"v" * 4000, end_headers=False)) == []
    assert server.receive_data(_frame(0x9, 0, 1, b"v" * 12000)) == []  # 16 KiB: twice the limit
    events = server.receive_data(_frame(0x9, 0, 1, b"v" * 1000))
    assert [(type(e), e.error_code) for e in events] == [(server_h2.ConnectionEnded, _CALM)]
    assert _goaway(server.data_to_send())[1] == _CALM and server.closed


def test_a_remembered_response_block_is_still_checked_against_each_response() -> None:
    """send_response remembers a whole block by status and fields; what depends on the call (the
    body's length against every content-length given, HEAD, 204) is checked on every call."""
    p = Pair()
    fields = [("Content-Type", "text/plain"), ("content-length", "5"), ("x-a", " 1 ")]
    answers = []
    for sid in (1, 3):
        p.request(sid, "GET", "/")
        assert not p.server.send_response(sid, 200, list(fields), body_length=5)
        p.server.send_data(sid, b"hello", end_stream=True)
        p.exchange()
        answers.append([dict(e.headers) for e in p.client_events
                        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid][0])
    assert answers[0] == answers[1]
    assert answers[1][b"content-type"] == b"text/plain" and answers[1][b"x-a"] == b"1"
    p.request(5, "GET", "/")
    with pytest.raises(LocalProtocolError):
        p.server.send_response(5, 200, fields, body_length=6)  # the same block, another body
    # Two content-lengths that disagree: refused whichever the body matches, the second time
    # from the remembered block.
    twice = [("content-length", "5"), ("content-length", "7")]
    for length in (5, 7):
        with pytest.raises(LocalProtocolError):
            p.server.send_response(5, 200, twice, body_length=length)
    # A 204 drops content-length, remembered or not.
    for sid in (7, 9):
        p.request(sid, "GET", "/")
        assert p.server.send_response(sid, 204, [("content-length", "5")], body_length=0)
    p.exchange()
    for e in p.client_events:
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id in (7, 9):
            assert b"content-length" not in dict(e.headers)


# --- a whole small response in one call (send_whole: the inline answers' path) ---------------

def _state(server: server_h2.H2Connection) -> tuple:
    conn = server._conn
    return (dict(conn._closed_streams), sorted(conn.streams), sorted(server._unopened),
            conn.outbound_flow_control_window, conn.state_machine.state, conn.highest_inbound_stream_id)


@pytest.mark.parametrize("status,body,head", [
    (200, b"x" * 1024, False), (200, b"", False), (200, b"x" * 10, True), (204, b"", False),
    (404, b"gone", False), (200, b"x" * 16384, False)])
def test_send_whole_queues_what_send_response_and_send_body_queue(status: int, body: bytes, head: bool) -> None:
    fields = [("content-type", "text/plain"), ("x-cache", "Hit from pop"), ("age", "3"),
              ("date", "Thu, 03 Dec 2026 22:00:00 GMT")]  # (not the clock's: the two runs compare)
    if status != 204:
        fields.append(("content-length", str(len(body))))
    wires, states = [], []
    for whole in (False, True):
        server = _server()
        server.receive_data(_headers(1, _G) + _headers(3, _G))  # (two streams, neither made in h2)
        for sid in (1, 3):
            if whole:
                assert server.send_whole(sid, status, fields, body, head_request=head,
                                         prepared=("fields", status) if sid == 3 else None)
            elif not server.send_response(sid, status, fields, body_length=len(body), head_request=head):
                server.send_body(sid, memoryview(body), end_stream=True)
        wires.append(server.data_to_send())
        states.append(_state(server))
    assert wires[0] == wires[1] and states[0] == states[1]
    assert not states[1][1] and not states[1][2]  # every stream closed, none made in h2


def test_send_whole_sends_nothing_when_the_body_does_not_fit_at_once() -> None:
    # A body over the peer's stream window (65,535 by default) or its frame size is not sent
    # here: nothing is queued or checked, and the stream can still be answered the long way.
    server = _server()
    server.receive_data(_headers(1, _G))
    before = _state(server)
    body = b"x" * 70000
    assert not server.send_whole(1, 200, [("content-length", "1")], body)  # (not even checked)
    assert server.data_to_send() == b"" and _state(server) == before
    assert not server.send_response(1, 200, [], body_length=len(body))
    assert server.send_body(1, memoryview(body), end_stream=True) == 65535  # (the window's worth)


def test_send_whole_on_a_stream_already_made_in_h2_takes_the_long_way() -> None:
    p = Pair()
    p.request(1, "GET", "/", [("expect", "100-continue")])
    p.server.send_informational(1, 100)  # (makes the stream in h2)
    assert 1 in p.server._conn.streams
    assert p.server.send_whole(1, 200, [("x-a", "1")], b"hello")
    p.exchange()
    [resp] = [e for e in p.client_events if isinstance(e, h2.events.ResponseReceived)
              and e.headers[0] == (b":status", b"200")]
    assert dict(resp.headers)[b"x-a"] == b"1"
    assert b"".join(e.data for e in _data_frames(p)) == b"hello"
    assert [e for e in p.client_events if isinstance(e, h2.events.StreamEnded)]


def test_a_block_remembered_by_its_prepared_fields_keeps_status_and_lengths_apart() -> None:
    """send_whole finds a block again by ``prepared`` (the same object: the same fields); the
    status and the body's length are still the call's own."""
    prepared = object()
    server = _server()
    server.receive_data(_headers(1, _G) + _headers(3, _G) + _headers(5, _G))
    fields = [("content-length", "5"), ("x-a", "1")]
    assert server.send_whole(1, 200, fields, b"hello", prepared=prepared)
    assert server.send_whole(3, 404, fields, b"hello", prepared=prepared)
    with pytest.raises(LocalProtocolError):
        server.send_whole(5, 200, fields, b"hello!", prepared=prepared)  # (content-length 5)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
                        end_stream=True)
    client.send_headers(3, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
                        end_stream=True)
    events = client.receive_data(server.data_to_send())
    statuses = [dict(e.headers)[b":status"] for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert statuses == [b"200", b"404"]


def test_send_whole_sends_all_of_a_body_over_64_kib_when_the_peer_takes_it() -> None:
    # A peer with large windows and frames (SETTINGS_MAX_FRAME_SIZE up to 16 MiB) may take a
    # warm hit over 64 KiB in one frame: all of it goes, whether the stream was made in h2 or not
    # (send_body queues 64 KiB a call by default: the rest was never sent).
    config = h2.config.H2Configuration(client_side=True)
    for made in (False, True):
        p = Pair(client_config=config)
        p.client.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
                                  h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        p.client.increment_flow_control_window(1 << 20)
        p.exchange()
        p.request(1, "GET", "/", [("expect", "100-continue")] if made else [])
        if made:
            p.server.send_informational(1, 100)
        body = bytes(range(256)) * 400  # 100 KiB
        assert p.server.send_whole(1, 200, [], body)
        p.exchange()
        assert b"".join(e.data for e in _data_frames(p)) == body
        assert [e for e in p.client_events if isinstance(e, h2.events.StreamEnded)]
