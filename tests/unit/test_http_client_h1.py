"""headwater.http.client_h1 driven with bytes only: the client side of HTTP/1.1, sans-IO."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.http import client_h1 as c
from headwater.http.errors import BadResponse, LocalProtocolError, ResponseHeadTooLarge


def events(conn: c.H1ClientConnection) -> list:
    out = []
    while (ev := conn.next_event()) is not c.NEED_DATA:
        out.append(ev)
    return out


def merged(evs: list) -> list:
    """Events with adjacent body pieces joined (how the bytes were split must not matter)."""
    out: list = []
    for ev in evs:
        if isinstance(ev, c.BodyData) and out and isinstance(out[-1], c.BodyData):
            out[-1] = c.BodyData(data=out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def exchange(response: bytes, *, method: str = "GET", limits: c.ClientLimits = c.ClientLimits(),
             eof: bool = False) -> tuple[c.H1ClientConnection, list]:
    conn = c.H1ClientConnection(limits)
    conn.send_request(method, "/x", [("host", "origin.test")])
    conn.receive_data(response)
    if eof:
        conn.receive_data(b"")
    return conn, events(conn)


def fed_byte_by_byte(response: bytes, *, method: str = "GET", eof: bool = False) -> list:
    conn = c.H1ClientConnection()
    conn.send_request(method, "/x", [("host", "origin.test")])
    evs = []
    for i in range(len(response)):
        conn.receive_data(response[i:i + 1])
        evs += events(conn)
    if eof:
        conn.receive_data(b"")
        evs += events(conn)
    return merged(evs)


SIMPLE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value;flag\r\nhello\r\n6;q=\"quoted\"\r\n world\r\n0;last\r\n"
           b"X-Checksum: abc\r\nX-Other: 1\r\n\r\n")
INTERIM = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


# --- the request ---------------------------------------------------------------------------------

def test_request_bytes_and_the_body_framed_here() -> None:
    conn = c.H1ClientConnection()
    assert conn.send_request("GET", "/a?b=1", [("Host", "o.test"), ("X-Y", "z")]) == \
        b"GET /a?b=1 HTTP/1.1\r\nHost: o.test\r\nX-Y: z\r\n\r\n"
    conn = c.H1ClientConnection()
    wire = conn.send_request("PUT", "/k", [("host", "o"), ("content-length", "99"), ("transfer-encoding", "chunked")],
                             body=b"abc")
    assert wire == b"PUT /k HTTP/1.1\r\nhost: o\r\ncontent-length: 3\r\n\r\nabc"


@pytest.mark.parametrize("method,target,headers", [
    ("GET", "/a", []),                                        # no Host
    ("GET", "/a", [("host", "a"), ("host", "b")]),            # two
    ("GET", "/a b", [("host", "a")]),                         # space in the target
    ("GET", "/a", [("host", "a"), ("x", "1\r\nInjected: 1")]),  # CRLF injection
    ("GET", "/a", [("host", "a"), ("bad name", "1")]),
    ("G T", "/a", [("host", "a")]),
])
def test_requests_that_would_corrupt_the_framing_are_refused(method, target, headers) -> None:
    with pytest.raises(LocalProtocolError):
        c.H1ClientConnection().send_request(method, target, headers)


def test_one_request_at_a_time() -> None:
    conn = c.H1ClientConnection()
    conn.send_request("GET", "/a", [("host", "a")])
    with pytest.raises(LocalProtocolError):
        conn.send_request("GET", "/b", [("host", "a")])


# --- responses, whole and split --------------------------------------------------------------------

def test_content_length_response_and_keep_alive() -> None:
    conn, evs = exchange(SIMPLE)
    head, body, end = evs
    assert head.status == 200 and head.reason == "OK" and head.http_version == "1.1"
    assert head.headers == [("content-type", "text/plain"), ("content-length", "5"), ("x-a", "b")]
    assert head.content_length == 5 and not head.chunked and head.keep_alive and head.has_body
    assert body.data == b"hello" and end.trailers == []
    conn.start_next_cycle()
    conn.send_request("GET", "/y", [("host", "origin.test")])
    conn.receive_data(SIMPLE)
    assert [type(e) for e in events(conn)] == [c.ResponseHead, c.BodyData, c.ResponseEnd]


@pytest.mark.parametrize("response,method,eof", [
    (SIMPLE, "GET", False),
    (CHUNKED, "GET", False),
    (INTERIM, "GET", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", "HEAD", False),
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nContent-Length: 7\r\n\r\n", "GET", False),
    (b"HTTP/1.0 200 OK\r\nContent-Type: a/b\r\n\r\nuntil the end", "GET", True),
])
def test_split_at_every_byte_gives_the_same_events(response, method, eof) -> None:
    _, whole = exchange(response, method=method, eof=eof)
    assert fed_byte_by_byte(response, method=method, eof=eof) == merged(whole)
    for cut in range(1, len(response)):  # and in two pieces, cut at every byte
        conn = c.H1ClientConnection()
        conn.send_request(method, "/x", [("host", "origin.test")])
        conn.receive_data(response[:cut])
        evs = events(conn)
        conn.receive_data(response[cut:])
        evs += events(conn)
        if eof:
            conn.receive_data(b"")
            evs += events(conn)
        assert merged(evs) == merged(whole), cut


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(CHUNKED)), max_size=12))
def test_chunked_split_anywhere(cuts) -> None:
    conn = c.H1ClientConnection()
    conn.send_request("GET", "/x", [("host", "h")])
    evs, last = [], 0
    for cut in sorted(set(cuts) | {len(CHUNKED)}):
        conn.receive_data(CHUNKED[last:cut])  # never b"": that is end of file
        evs += events(conn)
        last = cut
    head, body, end = merged(evs)
    assert head.chunked and body.data == b"hello world"
    assert end.trailers == [("x-checksum", "abc"), ("x-other", "1")]


def test_chunked_with_extensions_and_trailers() -> None:
    conn, evs = exchange(CHUNKED)
    head, *bodies, end = evs
    assert head.chunked and head.content_length is None and not head.until_close
    assert b"".join(b.data for b in bodies) == b"hello world"
    assert end.trailers == [("x-checksum", "abc"), ("x-other", "1")]
    conn.start_next_cycle()


@pytest.mark.parametrize("size_line", [b"zz", b"-1", b"ffffffffffffffffff", b"5 5", b""])
def test_bad_chunk_sizes(size_line) -> None:
    _, evs = exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n")
    assert isinstance(evs[-1], c.ResponseInvalid) and isinstance(evs[-1].error, BadResponse)
    assert not any(isinstance(e, c.ResponseEnd) for e in evs)


def test_chunk_data_longer_than_its_size() -> None:
    _, evs = exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n")
    assert isinstance(evs[-1], c.ResponseInvalid)


# --- bounds ------------------------------------------------------------------------------------------

def test_a_head_too_large_in_pieces_is_cut_before_it_ends() -> None:
    limits = c.ClientLimits(max_head_bytes=1024)
    conn = c.H1ClientConnection(limits)
    conn.send_request("GET", "/x", [("host", "h")])
    conn.receive_data(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for _ in range(20):
        conn.receive_data(b"a" * 100)
    (ev,) = events(conn)
    assert isinstance(ev, c.ResponseInvalid) and isinstance(ev.error, ResponseHeadTooLarge)
    conn.receive_data(b"\r\n\r\n")  # nothing more is parsed
    assert events(conn) == [] and not conn.keep_alive


def test_a_head_too_large_in_one_read_and_too_many_fields() -> None:
    limits = c.ClientLimits(max_head_bytes=1024, max_header_fields=10)
    _, evs = exchange(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n", limits=limits)
    assert [type(e) for e in evs] == [c.ResponseInvalid] and isinstance(evs[0].error, ResponseHeadTooLarge)
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(11))
    _, evs = exchange(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n", limits=limits)
    assert [type(e) for e in evs] == [c.ResponseInvalid] and isinstance(evs[0].error, ResponseHeadTooLarge)


def test_trailers_and_chunk_extensions_are_bounded() -> None:
    limits = c.ClientLimits(max_head_bytes=512, max_header_fields=4)
    trailers = b"".join(b"T-%d: 1\r\n" % i for i in range(5))
    _, evs = exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + trailers + b"\r\n",
                      limits=limits)
    assert isinstance(evs[-1], c.ResponseInvalid) and isinstance(evs[-1].error, ResponseHeadTooLarge)
    conn = c.H1ClientConnection(limits)
    conn.send_request("GET", "/x", [("host", "h")])
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=")
    for _ in range(20):  # an endless chunk extension
        conn.receive_data(b"e" * 100)
    evs = events(conn)
    assert isinstance(evs[-1], c.ResponseInvalid) and isinstance(evs[-1].error, ResponseHeadTooLarge)


# --- interim responses ---------------------------------------------------------------------------------

def test_1xx_responses_come_before_the_final_one() -> None:
    _, evs = exchange(INTERIM)
    assert [type(e) for e in evs] == [c.Informational, c.Informational, c.ResponseHead, c.BodyData, c.ResponseEnd]
    assert evs[0].status == 100 and evs[1].status == 103 and evs[1].headers == [("link", "</a.css>; rel=preload")]
    assert evs[2].status == 200


def test_too_many_1xx_and_an_unasked_101_are_refused() -> None:
    _, evs = exchange(b"HTTP/1.1 100 Continue\r\n\r\n" * 9, limits=c.ClientLimits(max_informational=8))
    assert isinstance(evs[-1], c.ResponseInvalid)
    _, evs = exchange(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n")
    assert [type(e) for e in evs] == [c.ResponseInvalid]


def test_closed_between_an_interim_and_the_final_response() -> None:
    _, evs = exchange(b"HTTP/1.1 100 Continue\r\n\r\n", eof=True)
    assert [type(e) for e in evs] == [c.Informational, c.ResponseInvalid]


# --- responses without a body ---------------------------------------------------------------------------

def test_head_response_has_no_body_whatever_its_length_and_the_next_one_parses() -> None:
    conn, evs = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", method="HEAD")
    head, end = evs
    assert not head.has_body and head.content_length is None and head.keep_alive
    assert ("content-length", "1000") in head.headers and isinstance(end, c.ResponseEnd)
    conn.start_next_cycle()
    conn.send_request("GET", "/x", [("host", "h")])
    conn.receive_data(SIMPLE)
    assert [type(e) for e in events(conn)] == [c.ResponseHead, c.BodyData, c.ResponseEnd]


def test_head_response_with_a_body_is_broken() -> None:
    conn, evs = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", method="HEAD")
    assert [type(e) for e in evs] == [c.ResponseHead, c.ResponseInvalid]
    assert not conn.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status) -> None:
    conn, evs = exchange(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status)
    head, end = evs
    assert head.status == status and not head.has_body and isinstance(end, c.ResponseEnd)
    conn.start_next_cycle()


# --- connection persistence and the end of the connection --------------------------------------------------

def test_connection_close_ends_the_connection_after_the_response() -> None:
    conn, evs = exchange(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert not evs[0].keep_alive and isinstance(evs[-1], c.ResponseEnd) and not conn.keep_alive
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_our_connection_close_and_http_1_0() -> None:
    conn = c.H1ClientConnection()
    conn.send_request("GET", "/", [("host", "h"), ("connection", "close")])
    conn.receive_data(SIMPLE)
    assert not events(conn)[0].keep_alive
    _, evs = exchange(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not evs[0].keep_alive
    _, evs = exchange(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    assert evs[0].keep_alive


def test_a_body_until_close_ends_at_end_of_file() -> None:
    conn, evs = exchange(b"HTTP/1.1 200 OK\r\n\r\nall of it", eof=True)
    head, body, end = evs
    assert head.until_close and not head.keep_alive and body.data == b"all of it"
    assert isinstance(end, c.ResponseEnd) and not conn.keep_alive


def test_closed_before_any_byte_is_a_clean_close_not_a_response() -> None:
    conn = c.H1ClientConnection()
    conn.send_request("GET", "/", [("host", "h")])
    conn.receive_data(b"")
    assert not conn.response_started and events(conn) == [c.ConnectionClosed()]


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",                           # short
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",           # no last chunk
    b"HTTP/1.1 200 OK\r\nContent-Le",                                                  # mid-head
])
def test_a_short_body_is_never_a_whole_one(response) -> None:
    conn, evs = exchange(response, eof=True)
    assert conn.response_started
    assert isinstance(evs[-1], c.ResponseInvalid) and not any(isinstance(e, c.ResponseEnd) for e in evs)


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nmore",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello, and more",
])
def test_a_long_body_is_never_a_whole_one(response) -> None:
    conn, evs = exchange(response)
    assert isinstance(evs[-1], c.ResponseInvalid) and not any(isinstance(e, c.ResponseEnd) for e in evs)
    assert not conn.keep_alive


def test_bytes_on_an_idle_connection_are_an_error() -> None:
    conn, _ = exchange(SIMPLE)
    conn.start_next_cycle()
    conn.receive_data(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert [type(e) for e in events(conn)] == [c.ResponseInvalid] and not conn.keep_alive


@pytest.mark.parametrize("fields", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: five\r\n",
    b"X Y: 1\r\n",
])
def test_framing_that_could_smuggle_or_mislead_is_refused(fields) -> None:
    _, evs = exchange(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nhello")
    assert [type(e) for e in evs] == [c.ResponseInvalid]


def test_garbage_instead_of_a_status_line() -> None:
    _, evs = exchange(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert [type(e) for e in evs] == [c.ResponseInvalid]
