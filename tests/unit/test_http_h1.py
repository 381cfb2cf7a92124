"""headwater.http.h1 driven with bytes only."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.clock import FakeClock
from headwater.config import HttpLimits
from headwater.http import h1
from headwater.http.errors import (
    BadRequest,
    HeadersTooLarge,
    LocalProtocolError,
    PayloadTooLarge,
    UnsupportedTransferCoding,
)


def events(conn: h1.H1Connection) -> list:
    out = []
    while (ev := conn.next_event()) is not h1.NEED_DATA:
        out.append(ev)
    return out


def body_of(evs: list) -> bytes:
    return b"".join(e.data for e in evs if isinstance(e, h1.BodyData))


def test_simple_get_and_response_framing() -> None:
    c = h1.H1Connection()
    c.receive_data(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y:  z \r\n\r\n")
    head, end = events(c)
    assert head.method == "GET" and head.target == "/a?b=1" and head.http_version == "1.1"
    assert head.headers == [("host", "x"), ("x-y", "z")] and head.keep_alive
    assert isinstance(end, h1.RequestEnd)
    out = c.send_response(200, [("Content-Type", "text/plain")], body_length=2)
    assert out.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ndate: ")
    assert b"\r\nserver: headwater\r\ncontent-length: 2\r\n\r\n" in out
    assert c.send_data(b"hi") == b"hi" and c.send_end() == b""
    c.start_next_cycle()
    assert c.their_state == h1.IDLE and c.our_state == h1.IDLE


def test_pipelined_requests_wait_for_the_next_cycle() -> None:
    c = h1.H1Connection()
    c.receive_data(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHo")
    first = events(c)
    assert [type(e) for e in first] == [h1.RequestHead, h1.RequestEnd]
    assert c.next_event() is h1.NEED_DATA  # /2 waits for our answer to /1
    c.send_response(204, [], body_length=0)
    with pytest.raises(LocalProtocolError):
        c.send_data(b"x")  # 204 has no body
    c.start_next_cycle()
    second = events(c)
    assert second[0].target == "/2"
    c.send_response(200, [], body_length=0)
    c.send_end()
    c.start_next_cycle()
    assert c.next_event() is h1.NEED_DATA and c.head_in_progress
    c.receive_data(b"st: x\r\n\r\n")
    assert events(c)[0].target == "/3"


def test_chunked_request_and_response() -> None:
    c = h1.H1Connection()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n")
    evs = events(c)
    assert evs[0].chunked and evs[0].content_length is None
    assert body_of(evs) == b"hello world" and isinstance(evs[-1], h1.RequestEnd)
    head = c.send_response(200, [], body_length=None)
    assert b"transfer-encoding: chunked\r\n" in head
    assert c.send_data(b"abc") == b"3\r\nabc\r\n"
    assert c.send_data(b"") == b""
    assert c.send_end() == b"0\r\n\r\n"


def test_expect_continue_and_drain_policy() -> None:
    c = h1.H1Connection()
    c.receive_data(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
    head = c.next_event()
    assert head.expects_continue
    assert c.send_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert c.send_continue() == b""  # once
    c.send_response(200, [], body_length=0)
    assert c.keep_alive and c.drain_before_next  # small rest: drain and keep the connection

    c = h1.H1Connection()
    c.receive_data(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
    c.next_event()
    out = c.send_response(417, [], body_length=0)
    assert not c.keep_alive and b"connection: close" in out  # no 100 sent: never wait for it

    c = h1.H1Connection()
    c.receive_data(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    c.next_event()
    out = c.send_response(403, [], body_length=0)
    assert not c.keep_alive and b"connection: close" in out  # too much to drain



def test_expect_continue_without_content_gets_a_100_before_the_final_status() -> None:
    # botocore parses the next response on a kept-alive connection with the status of an early
    # answer to an Expect: 100-continue request, so an empty PUT must not be answered early.
    for framing in (b"Content-Length: 0\r\n", b""):
        c = h1.H1Connection()
        c.receive_data(b"PUT /k HTTP/1.1\r\nHost: x\r\n" + framing + b"Expect: 100-continue\r\n\r\n")
        head = c.next_event()
        assert head.expects_continue
        assert c.end_without_body()
        out = c.send_whole(200, [("etag", '"e"')], b"")
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), out
        assert out.count(b"100 Continue") == 1 and c.keep_alive
        c.start_next_cycle()
        c.receive_data(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        c.next_event()
        assert b"100 Continue" not in c.send_whole(200, [], b"x")  # only where it was asked for

    c = h1.H1Connection()  # with content, the 100 is the shell's to send when it reads the body
    c.receive_data(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    c.next_event()
    assert not c.send_response(400, [], body_length=0).startswith(b"HTTP/1.1 100")

def test_http10() -> None:
    c = h1.H1Connection()
    c.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    head = c.next_event()
    assert head.http_version == "1.0" and not head.keep_alive
    out = c.send_response(200, [], body_length=None)
    assert b"transfer-encoding" not in out and b"connection: close" in out
    assert c.send_data(b"raw") == b"raw"
    c = h1.H1Connection()
    c.receive_data(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.next_event().keep_alive
    assert b"connection: keep-alive\r\n" in c.send_response(200, [], body_length=1)


def test_head_and_304_keep_headers_but_send_no_body() -> None:
    c = h1.H1Connection()
    c.receive_data(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    events(c)
    out = c.send_response(200, [("content-length", "1234")], body_length=0)
    assert b"content-length: 1234" in out and c.our_state == h1.DONE
    c.start_next_cycle()


@pytest.mark.parametrize("raw, error", [
    (b"GET / HTTP/1.1\r\n\r\n", BadRequest),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadRequest),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BadRequest),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferCoding),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n", PayloadTooLarge),
    (b"\x00\x01garbage\r\n\r\n", BadRequest),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 5000 + b"\r\n\r\n", HeadersTooLarge),
    # asterisk-form is for OPTIONS only: a proxy appending "*" to http://host:port names a port
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", BadRequest),
])
def test_invalid_requests(raw: bytes, error: type) -> None:
    c = h1.H1Connection(HttpLimits(max_header_bytes=4096, max_body_bytes=10**9))
    c.receive_data(raw)
    evs = events(c)
    assert isinstance(evs[-1], h1.RequestInvalid) and type(evs[-1].error) is error
    assert not c.keep_alive
    out = c.send_response(evs[-1].error.http_status, [], body_length=0)
    assert out.startswith(b"HTTP/1.1 %d " % evs[-1].error.http_status) and b"connection: close" in out
    c.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # ignored after an error
    assert c.next_event() is h1.NEED_DATA


def test_header_limit_on_a_head_that_never_ends() -> None:
    c = h1.H1Connection(HttpLimits(max_header_bytes=1000))
    c.receive_data(b"GET / HTTP/1.1\r\nX: ")
    for _ in range(20):
        c.receive_data(b"v" * 100)
    evs = events(c)
    assert isinstance(evs[-1], h1.RequestInvalid) and evs[-1].error.http_status == 431


def test_chunked_body_limit() -> None:
    c = h1.H1Connection(HttpLimits(max_body_bytes=10))
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n")
    evs = events(c)
    assert isinstance(evs[-1], h1.RequestInvalid) and evs[-1].error.http_status == 413


def test_eof_mid_body_and_upgrade_offer() -> None:
    c = h1.H1Connection()
    c.receive_data(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    c.receive_data(b"")
    evs = events(c)
    assert isinstance(evs[-1], h1.ConnectionClosed) and body_of(evs) == b"abc"
    # curl's "Upgrade: h2c" offer is declined: the request is served over HTTP/1.1
    c = h1.H1Connection()
    c.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
                   b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [type(e) for e in events(c)] == [h1.RequestHead, h1.RequestEnd]
    c.send_response(200, [], body_length=0)
    c.start_next_cycle()
    assert events(c)[0].target == "/next"


def test_response_header_injection_is_refused() -> None:
    c = h1.H1Connection()
    c.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    events(c)
    with pytest.raises(LocalProtocolError):
        c.send_response(200, [("x-a", "b\r\nSet-Cookie: evil")], body_length=0)
    with pytest.raises(LocalProtocolError):
        c.send_response(200, [("content-length", "5")], body_length=3)
    out = c.send_response(200, [("content-length", "5")], body_length=None)
    assert out.startswith(b"HTTP/1.1 200 ") and b"content-length: 5\r\n" in out.lower()
    c.send_data(b"12345")
    with pytest.raises(LocalProtocolError):
        c.send_data(b"6")


# --- property tests ------------------------------------------------------------------------------

def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.binary(min_size=0, max_size=300), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6))
def test_chunked_decoding_any_split(parts: list[bytes], cuts: list[int]) -> None:
    raw = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(parts)
           + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    c = h1.H1Connection()
    points = sorted({min(x, len(raw)) for x in cuts} | {0, len(raw)})
    for a, b in zip(points, points[1:]):
        c.receive_data(raw[a:b])
    evs = events(c)
    assert body_of(evs) == b"".join(parts) and isinstance(evs[-1], h1.RequestEnd)
    c.send_response(200, [], body_length=0)
    c.start_next_cycle()
    assert events(c)[0].target == "/after"


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.binary(min_size=1, max_size=200), max_size=8))
def test_chunked_encoding_round_trips(parts: list[bytes]) -> None:
    server = h1.H1Connection()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    events(server)
    server.send_response(200, [], body_length=None)
    wire = b"".join(server.send_data(p) for p in parts) + server.send_end()
    # decode it again with the request parser (same chunked grammar)
    c = h1.H1Connection()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
    assert body_of(events(c)) == b"".join(parts)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=40)


@settings(max_examples=150, deadline=None)
@given(fields=st.lists(st.tuples(_token, _value), max_size=10))
def test_header_parsing_round_trips(fields: list[tuple[str, str]]) -> None:
    fields = [(n, v) for n, v in fields if n not in ("host", "content-length", "transfer-encoding",
                                                      "connection", "expect", "upgrade")]
    raw = ("GET / HTTP/1.1\r\nHost: h\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
           + "\r\n").encode("latin-1")
    c = h1.H1Connection()
    c.receive_data(raw)
    head = c.next_event()
    assert head.headers == [("host", "h"), *[(n.lower(), v) for n, v in fields]]


@pytest.mark.parametrize("chunks", [
    b"zz\r\n",                      # not hex
    b"5\r\nhelloXX",                # no CRLF after the data
    b"5\nhello\n0\n\n",             # bare LF after the size
    b"5\r\nhello\r\n-1\r\n",        # negative size
    b"fffffffffffffffffffff\r\n",   # overflow
    b"5 \r\nhello\r\n0\r\n\r\n",    # space before CRLF
    b"5;a=\"\r\nhello\r\n",         # unterminated quoted extension
])
def test_malformed_chunked_body_is_a_400(chunks: bytes) -> None:
    c = h1.H1Connection()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    evs = events(c)
    assert isinstance(evs[0], h1.RequestHead)
    assert isinstance(evs[-1], h1.RequestInvalid) and evs[-1].error.http_status == 400
    assert not c.keep_alive
    head = c.send_response(400, [], body_length=0)
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close\r\n" in head


def test_date_comes_from_the_injected_clock() -> None:
    c = h1.H1Connection(clock=FakeClock(start=1_000_000_000.0))
    c.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    events(c)
    assert b"\r\ndate: Sun, 09 Sep 2001 01:46:40 GMT\r\n" in c.send_response(204, [], body_length=0)


def test_a_request_without_a_body_ends_with_its_head_and_send_whole_frames_it() -> None:
    conn = h1.H1Connection()
    conn.receive_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 2\r\n\r\nhi")
    head = conn.next_event()
    assert head == h1.RequestHead(method="GET", target="/a", headers=[("host", "x")],
                                  http_version="1.1", keep_alive=True, content_length=None,
                                  chunked=False, expects_continue=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        head.method = "PUT"  # type: ignore[misc]
    assert conn.end_without_body() and conn.their_state is h1.DONE
    out = conn.send_whole(200, [("content-type", "text/plain")], b"hello")
    assert out.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n")
    assert out.endswith(b"content-length: 5\r\n\r\nhello") and conn.our_state is h1.DONE
    conn.start_next_cycle()
    assert type(conn.next_event()) is h1.RequestHead
    assert not conn.end_without_body()  # a body follows: the shell reads it as events
    assert body_of(events(conn)) == b"hi"


def test_non_latin1_response_field_is_a_local_protocol_error() -> None:
    conn = h1.H1Connection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send_response(200, [("x-name", "\u20ac")], body_length=0)


@pytest.mark.parametrize("method, target, ok", [
    ("GET", "/a", True), ("GET", "http://h/a", True), ("OPTIONS", "*", True), ("GET", "*", False),
    ("GET", "@evil:80/x", False), ("GET", "x", False), ("GET", "", False), ("CONNECT", "h:443", True),
])
def test_valid_target(method: str, target: str, ok: bool) -> None:
    assert h1.valid_target(method, target) is ok


_FIELD_SETS = [
    [("server", "origin/1"), ("date", "Thu, 03 Dec 2026 06:40:57 GMT"), ("etag", '"a"'), ("age", "7"),
     ("via", "1.1 pop-1 (headwater)"), ("content-length", "5")],
    [("content-type", "text/plain"), ("Connection", "close"), ("x-cache", "Hit from pop-1")],
    [("date", "Thu, 03 Dec 2026 06:40:57 GMT"), ("content-length", "5")],
    [],
]


@pytest.mark.parametrize("fields", _FIELD_SETS)
@pytest.mark.parametrize("method, status", [("GET", 200), ("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_prepared_fields_frame_as_the_fields_themselves(fields, method: str, status: int) -> None:
    """Response.prepared is only a shortcut: the same bytes and the same connection state."""
    outs = []
    for split in (None, 2):
        conn = h1.H1Connection(clock=FakeClock(start=1_000_000_000.0))
        conn.receive_data(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        events(conn)
        prepared = None
        if split is not None:  # in two parts around a field the caller writes out, as the edge's Age
            head, middle, tail = fields[:split], fields[split:split + 1], fields[split + 1:]
            lines = "".join(f"{k}: {v}\r\n" for k, v in middle)
            prepared = h1.prepare_fields(head).joined(lines, h1.prepare_fields(tail))
        body = b"" if status in (204, 304) else b"hello"
        try:
            out = conn.send_whole(status, fields, body, prepared=prepared)
        except LocalProtocolError as e:
            out = repr(e).encode()
        outs.append((out, conn.keep_alive, conn.our_state))
    assert outs[0] == outs[1]


def test_prepare_fields_refuses_what_send_response_refuses() -> None:
    for bad in ([("x-a", "b\r\nset-cookie: s=1")], [("bad name", "v")], [("x-name", "\u20ac")],
                [("content-length", "5"), ("content-length", "6")], [("content-length", "x")]):
        with pytest.raises(LocalProtocolError):
            h1.prepare_fields(bad)
    p = h1.prepare_fields([("Content-Length", "5"), ("connection", "close"), ("server", "s")])
    assert p == h1.PreparedFields("Content-Length: 5\r\nserver: s\r\n", 5, False, True, True)
    with pytest.raises(ValueError):
        p.joined("", p)  # content-length twice


def test_new_request_is_the_request_the_keyword_constructor_makes() -> None:
    from headwater.http.exchange import NO_BODY
    from headwater.http.types import Headers, Request, TlsSession, new_request
    h = Headers.from_lower([("host", "x")])
    args = dict(method="GET", target="/a?b", path="/a", query="b", headers=h, body=NO_BODY, http_version="1.1",
                scheme="http", client=("127.0.0.1", 1), server=("127.0.0.1", 2), host="x",
                tls=TlsSession(protocol="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256"))
    made = new_request(*args.values())
    assert made == Request(**args) and type(made) is Request
    assert [f for f in Request.__dataclass_fields__] == list(args)  # (new_request's order is the fields')
    plain = new_request(*list(args.values())[:-1])  # the shells of plain TCP pass no session
    assert plain.tls is None and plain == Request(**{**args, "tls": None})


_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",  # its body unread
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
]


@pytest.mark.parametrize("raw", _REQUESTS)
@pytest.mark.parametrize("fields", _FIELD_SETS)
@pytest.mark.parametrize("status, body", [(200, b"hello"), (404, b"hello"), (200, b"much longer"), (200, b"")])
def test_send_whole_with_prepared_fields_is_the_three_calls(raw: bytes, fields, status: int, body: bytes) -> None:
    """send_whole's shortcut for prepared fields: the bytes, the error and the connection state
    that send_response + send_data + send_end give for the same request and fields."""
    outs = []
    for whole in (True, False):
        conn = h1.H1Connection(clock=FakeClock(start=1_000_000_000.0))
        conn.receive_data(raw)
        for ev in events(conn):
            if isinstance(ev, h1.RequestEnd):
                break
        try:
            if whole:
                out = conn.send_whole(status, fields, body, prepared=h1.prepare_fields(fields))
            else:
                out = conn.send_response(status, fields, body_length=len(body))
                if conn.our_state is h1.SEND_BODY:
                    out += conn.send_data(body) + conn.send_end()
        except LocalProtocolError as e:
            out = repr(e).encode()
        outs.append((out, conn.keep_alive, conn.our_state, conn.drain_before_next,
                     conn.our_state is h1.DONE and conn.keep_alive and conn.their_state is h1.DONE))
    assert outs[0] == outs[1]


def test_lone_request_is_a_whole_bodiless_request_and_nothing_more() -> None:
    """What the shell may answer inline: one whole request without a body on a persistent
    connection, nothing after it; lone_request takes nothing (next_event still hands it out)."""
    lone = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    conn = h1.H1Connection()
    conn.receive_data(lone)
    head = conn.lone_request()
    assert head is not None and head.target == "/a" and conn.lone_request() is head
    assert conn.next_event() is head and conn.end_without_body() and conn.lone_request() is None
    taken = h1.H1Connection()
    taken.receive_data(lone)
    taken.take_lone_request(taken.lone_request())  # the same as those two calls
    assert [(c.their_state, c.request, c.has_buffered_events, c.keep_alive) for c in (conn, taken)] == [
        (h1.DONE, head, False, True), (h1.DONE, head, False, True)]
    conn.send_whole(200, [], b"x")
    conn.start_next_cycle()
    conn.receive_data(b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.lone_request().method == "HEAD"
    for raw in (lone + lone,  # pipelined
                b"GET /a HTTP/1.1\r\nHo",  # not whole
                lone + b"GET /b HTTP/1.1\r\n",  # something after it
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz",  # a body
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
                b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # not persistent
                b"GET /a HTTP/1.0\r\n\r\n",
                b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
                b"GET /a HTTP/1.1\r\n\r\n",  # invalid
                b"GARBAGE\r\n\r\n"):
        conn = h1.H1Connection()
        conn.receive_data(raw)
        assert conn.lone_request() is None, raw


def test_header_blocks_are_read_alike_from_the_memo_and_errors_never_memoised() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-A:  b \t\r\nCONTENT-length: 0\r\n\r\n"
    heads = []
    for _ in range(3):  # the first reads the fields, the others find them in the memo
        conn = h1.H1Connection()
        conn.receive_data(raw)
        heads.append(conn.next_event())
    assert heads[0] == heads[1] == heads[2]
    assert heads[0].headers == [("host", "x"), ("x-a", "b"), ("content-length", "0")]
    assert heads[0].headers is not heads[1].headers  # (each request its own list: apps may change it)
    for _ in range(2):
        conn = h1.H1Connection()
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n")
        assert isinstance(conn.next_event(), h1.RequestInvalid)
    # The size limit counts the memoised fields too.
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 500 + b"\r\n\r\n"
    for limit, ok in ((2000, True), (300, False), (2000, True)):
        conn = h1.H1Connection(HttpLimits(max_header_bytes=limit))
        conn.receive_data(big)
        assert isinstance(conn.next_event(), h1.RequestHead) is ok
