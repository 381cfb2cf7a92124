"""Hostile peers replayed over real sockets: each attack the HTTP core bounds, and the bound.

Readers that stop reading (HTTP/1.1) or never open their HTTP/2 window, readers that take a
response a few bytes at a time below the minimum send rate (every HTTP/1.1 send path, and
HTTP/2 over TLS with its windows open), request bodies trickled below the minimum rate, HTTP/2 rapid reset and PING/SETTINGS floods, HTTP/2 frame
headers refused before their frame is whole, requests waiting for the app counted against
SETTINGS_MAX_CONCURRENT_STREAMS (and held to a window shut meanwhile), malformed chunked
bodies, connections that end (or stay silent) before their first request; plus FileBody with
an open descriptor and the Date header from the injected clock.
Every test runs on both anyio backends.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import socket
import ssl
import struct
from pathlib import Path
from typing import AsyncIterator, Callable

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import httpx
import pytest
import sniffio
from anyio.streams.tls import TLSAttribute, TLSStream

from headwater.clock import FakeClock
from headwater.config import HttpLimits, KiB, MiB
from headwater.http import FileBody, Request, Response
from headwater.http.errors import BodyCut
from headwater.http.h2 import PREFACE
from tests.functional.h2_frames import frames_of
from tests.functional.test_http_inline import NowApp
from headwater.http.tls import server_ssl_context
from tests.functional.test_http_server import (Probe, make_app, raw_exchange, running, split_responses,  # noqa: F401
                                             tls_files)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Live:
    """Counts response body iterators still open (what a stalled response holds)."""

    def __init__(self) -> None:
        self.open = 0
        self.started = 0


def hostile_app(live: Live, fallback):
    async def app(req: Request) -> Response:
        if req.path == "/endless":
            async def endless() -> AsyncIterator[bytes]:
                live.open += 1
                live.started += 1
                try:
                    block = b"e" * (64 * KiB)
                    while True:
                        yield block
                finally:
                    live.open -= 1
            return Response(200, [], endless())
        if req.path == "/swallow":  # like the S3 gateway: any unknown exception becomes a 500
            try:
                await req.body.read_all(MiB)
            except Exception:
                return Response(500, [], b"internal error")
            return Response(200, [], b"read")
        return await fallback(req)
    return app


class H2Client:
    """The h2 library as a client over a raw anyio socket."""

    def __init__(self, stream: anyio.abc.SocketStream, *, initial_window: int | None = None) -> None:
        self.s = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if initial_window is not None:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
        self.events: list = []
        self.closed = False
        self.raw = bytearray()  # hand-made frames (the h2 library would not send them), sent next
        self.received = bytearray()  # every byte read, for frames h2 takes without an event

    async def start(self) -> None:
        self.conn.initiate_connection()
        await self.send()

    async def send(self) -> None:
        data = self.conn.data_to_send()
        if self.raw:
            data, self.raw = data + self.raw, bytearray()
        if data:
            await self.s.send(data)

    async def pump(self) -> None:
        """One read: feed the events, answer what h2 answers (SETTINGS acks)."""
        try:
            data = await self.s.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            self.closed = True
            return
        self.received += data
        self.events += self.conn.receive_data(data)
        try:
            await self.send()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.closed = True

    async def pump_until(self, pred) -> None:
        while not pred() and not self.closed:
            await self.pump()

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)), None)

    @staticmethod
    def headers(method: str, path: str, extra=()) -> list[tuple[str, str]]:
        return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "a"), *extra]


# --- send timeout ------------------------------------------------------------------------------

@pytest.mark.parametrize("alpn", [None, "http/1.1", "h2"])  # None: plain HTTP/1.1
async def test_client_that_stops_reading_is_dropped(tls_files: tuple[Path, Path], alpn: str | None) -> None:
    """A reader that stops is not written past its buffers, and is cut by the send timeout;
    over TLS the response's records wait for the socket as plain bytes do."""
    live = Live()
    limits = HttpLimits(send_timeout_s=0.5)
    cert, key = tls_files
    server_ctx = server_ssl_context(cert, key) if alpn else None
    async with running(hostile_app(live, make_app(Probe())), limits=limits, ssl_context=server_ctx) as port:
        with anyio.fail_after(20):
            raw = await anyio.connect_tcp("127.0.0.1", port)
            raw.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stream: anyio.abc.ByteStream = raw
            try:
                if alpn:
                    client_ctx = ssl.create_default_context(cafile=str(cert))
                    client_ctx.set_alpn_protocols([alpn])
                    stream = await TLSStream.wrap(raw, hostname="localhost", ssl_context=client_ctx,
                                                  standard_compatible=False)
                    assert stream.extra(TLSAttribute.alpn_protocol) == alpn
                if alpn == "h2":
                    c = H2Client(stream, initial_window=2**31 - 1)  # only the socket can stop it
                    await c.start()
                    c.conn.increment_flow_control_window(2**30)
                    c.conn.send_headers(1, c.headers("GET", "/endless"), end_stream=True)
                    await c.send()
                else:
                    await stream.send(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
                while not live.started:
                    await anyio.sleep(0.01)
                # never read: the server's send blocks, makes no progress, and is cut
                while live.open:
                    await anyio.sleep(0.05)
                with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError)):
                    while True:  # what the kernel had buffered, then the reset (or end)
                        await stream.receive()
            finally:
                await raw.aclose()
        assert live.open == 0 and live.started == 1


async def tls_hello(port: int, cert: Path) -> float:
    """Seconds a fresh TLS connection takes to get /hello (HTTP/1.1 over ALPN)."""
    start = anyio.current_time()
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.set_alpn_protocols(["http/1.1"])
    async with await anyio.connect_tcp("127.0.0.1", port, ssl_context=ctx, tls_hostname="localhost",
                                       tls_standard_compatible=False) as s:
        await s.send(b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        out = b""
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                out += await s.receive()
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"hello GET")
    return anyio.current_time() - start


@pytest.mark.parametrize("reader", ["stopped", "trickling"])
async def test_http2_tls_reader_that_stops_or_trickles_is_closed_while_others_are_served(
        tls_files: tuple[Path, Path], reader: str) -> None:
    # test_client_that_stops_reading_is_dropped[h2] shows the stream freed and the connection
    # ended; here, over TLS with the HTTP/2 windows wide open (only the socket can stop the
    # server), what it did not: the connection closed within its bound whether the reader
    # stopped (send_timeout_s) or takes a few bytes every 50 ms (min_send_rate, the socket's
    # floor), and other clients answered at once all the while.
    live = Live()
    if reader == "stopped":
        limits = HttpLimits(send_timeout_s=0.5)
    else:
        limits = HttpLimits(send_timeout_s=30.0, min_send_rate_bytes_per_s=64 * KiB,
                            min_send_rate_window_s=0.5)
    cert, key = tls_files
    ended: list[float] = []
    async with running(hostile_app(live, make_app(Probe())), limits=limits,
                       ssl_context=server_ssl_context(cert, key), on_connection=lambda peer: True,
                       on_disconnect=lambda peer: ended.append(anyio.current_time())) as port:
        with anyio.fail_after(30):
            raw = await anyio.connect_tcp("127.0.0.1", port)
            raw.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                client_ctx = ssl.create_default_context(cafile=str(cert))
                client_ctx.set_alpn_protocols(["h2"])
                stream = await TLSStream.wrap(raw, hostname="localhost", ssl_context=client_ctx,
                                              standard_compatible=False)
                c = H2Client(stream, initial_window=2**31 - 1)
                await c.start()
                c.conn.increment_flow_control_window(2**30)
                c.conn.send_headers(1, c.headers("GET", "/endless"), end_stream=True)
                await c.send()
                while not live.started:
                    await anyio.sleep(0.01)
                start = anyio.current_time()

                async def read_slowly() -> None:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.EndOfStream):
                        while not ended:
                            if reader == "trickling":  # raw TLS records, 64 bytes each 50 ms
                                await raw.receive(64)
                            await anyio.sleep(0.05)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_slowly)
                    waits = []
                    while not ended and anyio.current_time() - start < 10:
                        waits.append(await tls_hello(port, cert))
                        await anyio.sleep(0.1)
                assert ended, "the stalled connection was still open after 10 s"
                assert ended[0] - start < 3.0, f"held for {ended[0] - start:.1f} s"
                assert waits and max(waits) < 1.0, waits  # (a busy machine: a second is plenty)
                while live.open:  # the endless response was closed, its buffers freed
                    await anyio.sleep(0.01)
            finally:
                await raw.aclose()
        assert live.started == 1
        assert await tls_hello(port, cert) < 1.0


async def test_http2_window_never_opened_resets_the_streams_and_frees_them() -> None:
    live = Live()
    limits = HttpLimits(send_timeout_s=0.5)
    async with running(hostile_app(live, make_app(Probe())), limits=limits) as port:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                c = H2Client(s, initial_window=0)  # no DATA may ever be sent to us
                await c.start()
                sids = list(range(1, 81, 2))  # the 40 streams of the hostile probe
                for sid in sids:
                    c.conn.send_headers(sid, c.headers("GET", "/endless"), end_stream=True)
                await c.send()

                def all_reset() -> bool:
                    return {e.stream_id for e in c.events if isinstance(e, h2.events.StreamReset)} >= set(sids)
                await c.pump_until(all_reset)
                resets = [e for e in c.events if isinstance(e, h2.events.StreamReset)]
                assert {e.error_code for e in resets} == {h2.errors.ErrorCodes.CANCEL}
                assert live.started == 40
                while live.open:  # every stalled response body closed: its buffers are free
                    await anyio.sleep(0.01)
                # the connection itself still serves (a HEAD needs no window)
                c.conn.send_headers(101, c.headers("HEAD", "/hello"), end_stream=True)
                await c.send()
                await c.pump_until(lambda: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 101
                                               for e in c.events))
                assert c.goaway() is None


@pytest.mark.parametrize("scope", ["stream", "connection"])
async def test_http2_window_opened_a_few_bytes_at_a_time_resets_the_stream(scope: str) -> None:
    # A slow reader whose WINDOW_UPDATEs each come in time for send_timeout_s, 10 bytes a time:
    # the response made progress, so it was held for as long as the client liked (an endless
    # one, forever). Below min_send_rate over a window of waiting for windows, it is reset.
    live = Live()
    limits = HttpLimits(send_timeout_s=0.5, min_send_rate_bytes_per_s=1 * KiB, min_send_rate_window_s=1.0)
    async with running(hostile_app(live, make_app(Probe())), limits=limits) as port:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                c = H2Client(s, initial_window=0 if scope == "stream" else 2**31 - 1)
                await c.start()
                c.conn.send_headers(1, c.headers("GET", "/endless"), end_stream=True)
                await c.send()
                start = anyio.current_time()
                received = 0
                # (the connection's window starts at 65,535: what it admits goes first)
                while not any(isinstance(e, h2.events.StreamReset) for e in c.events):
                    assert anyio.current_time() - start < 15, f"still sending after {received} bytes"
                    with anyio.move_on_after(0.1):  # (10 bytes each 0.1 s: 100 B/s)
                        while not c.closed:
                            await c.pump()
                    received = sum(len(e.data) for e in c.events if isinstance(e, h2.events.DataReceived))
                    if not any(isinstance(e, h2.events.StreamReset) for e in c.events):
                        c.conn.increment_flow_control_window(10, stream_id=1 if scope == "stream" else None)
                        await c.send()
                [reset] = [e for e in c.events if isinstance(e, h2.events.StreamReset)]
                assert reset.error_code == h2.errors.ErrorCodes.CANCEL and received < 100 * KiB
                assert anyio.current_time() - start < 8  # (two 1 s windows of waiting, on a busy machine)
                while live.open:
                    await anyio.sleep(0.01)
                assert c.goaway() is None


# --- minimum send rate (HTTP/1.1) ----------------------------------------------------------------

SLOW_LIMITS = HttpLimits(send_timeout_s=30.0, min_send_rate_bytes_per_s=64 * KiB, min_send_rate_window_s=0.5)


class BigApp:
    """A body of ``?size`` bytes by each HTTP/1.1 send path: bytes, a streamed body, a file
    (sendfile on plain TCP) and an inline answer (``answer_now``, taken on asyncio)."""

    def __init__(self, file_path: Path) -> None:
        self.file_path = file_path
        self.inline = 0  # answers given by answer_now
        self.open = 0  # streamed bodies not yet closed

    def answer_now(self, req: Request) -> Response | None:
        if req.path == "/tiny":
            return Response(200, [], b"ok")
        if req.path == "/inline":
            self.inline += 1
            return Response(200, [], b"i" * int(req.query))
        return None

    async def __call__(self, req: Request) -> Response:
        if req.path == "/tiny":
            return Response(200, [], b"ok")
        size = int(req.query)
        if req.path in ("/inline", "/bytes"):
            return Response(200, [], b"i" * size)
        if req.path == "/file":
            return Response(200, [], FileBody(self.file_path, offset=0, length=size))

        async def blocks() -> AsyncIterator[bytes]:
            block = b"s" * (64 * KiB)
            left = size
            self.open += 1
            try:
                while left:
                    yield block[:left]
                    left -= min(left, len(block))
            finally:
                self.open -= 1
        return Response(200, [("content-length", str(size))], blocks())


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.bin"
    path.write_bytes(os.urandom(4 * MiB))
    return path


async def slow_client(port: int, target: str, *, tls: tuple[Path, Path] | None, rcvbuf: int
                      ) -> tuple[anyio.abc.SocketStream, anyio.abc.ByteStream]:
    """A connection with a small receive buffer that has asked for ``target`` (after /tiny, so
    that on asyncio the second request is answered inline); the raw socket and the stream."""
    raw = await anyio.connect_tcp("127.0.0.1", port)
    raw.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    stream: anyio.abc.ByteStream = raw
    if tls is not None:
        client_ctx = ssl.create_default_context(cafile=str(tls[0]))
        client_ctx.set_alpn_protocols(["http/1.1"])
        stream = await TLSStream.wrap(raw, hostname="localhost", ssl_context=client_ctx,
                                      standard_compatible=False)
    await stream.send(b"GET /tiny HTTP/1.1\r\nHost: a\r\n\r\n")
    got = b""
    while not got.endswith(b"\r\n\r\nok"):
        got += await stream.receive()
    await stream.send(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    return raw, stream


SEND_PATHS = ["bytes", "stream", "file", "inline", "tls-file"]


@pytest.mark.parametrize("path", SEND_PATHS)
async def test_http1_reader_below_min_send_rate_is_cut(big_file: Path, tls_files: tuple[Path, Path],
                                                       path: str) -> None:
    # A reader with a tiny receive buffer taking a few bytes every 50 ms: each of the server's
    # sends makes a little progress well inside send_timeout_s (30 s here), so the response (and
    # what it pins: an edge's cache object, a collapsed fetch) was held as long as the client
    # liked. Below min_send_rate over a window of blocked sending it is cut.
    app = BigApp(big_file)
    tls = tls_files if path.startswith("tls") else None
    ctx = server_ssl_context(*tls_files) if tls else None
    ended: list[float] = []  # when the server let go of the connection
    async with running(app, limits=SLOW_LIMITS, ssl_context=ctx, on_connection=lambda peer: True,
                       on_disconnect=lambda peer: ended.append(anyio.current_time())) as port:
        with anyio.fail_after(30):
            raw, _ = await slow_client(port, f"/{path.removeprefix('tls-')}?{4 * MiB}", tls=tls, rcvbuf=4096)
            start = anyio.current_time()
            received = 0
            try:
                with anyio.move_on_after(8):
                    while not ended:
                        # the raw bytes, TLS records or not: 64 bytes every 50 ms, about 1.3 KB/s
                        received += len(await raw.receive(64))
                        await anyio.sleep(0.05)
                assert ended, f"still held after 8 s ({received} bytes read)"
                assert ended[0] - start < 3.0, f"held for {ended[0] - start:.1f} s"  # (0.5 s window; busy machine)
                # What the kernel had buffered for us, then the reset: the rest was never sent.
                with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
                    while True:
                        received += len(await raw.receive())
            finally:
                await raw.aclose()
            assert received < 1 * MiB
            assert app.open == 0  # a streamed body was closed, not left pinned
            if path == "inline" and _on_asyncio():
                assert app.inline == 1
            if tls is None:  # the server still serves
                out = await raw_exchange(port, b"GET /tiny HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert out.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("path", SEND_PATHS)
async def test_http1_slow_reader_above_min_send_rate_gets_everything(
        big_file: Path, tls_files: tuple[Path, Path], path: str) -> None:
    # 16 KiB every 50 ms (about 320 KiB/s, five times the floor) through a 16 KiB receive buffer:
    # the server's sends block all along, and the whole body arrives.
    app = BigApp(big_file)
    size = 512 * KiB
    tls = tls_files if path.startswith("tls") else None
    ctx = server_ssl_context(*tls_files) if tls else None
    async with running(app, limits=SLOW_LIMITS, ssl_context=ctx) as port:
        with anyio.fail_after(20):
            raw, stream = await slow_client(port, f"/{path.removeprefix('tls-')}?{size}", tls=tls,
                                            rcvbuf=16 * KiB)
            try:
                got = b""
                while b"\r\n\r\n" not in got:
                    got += await stream.receive(16 * KiB)
                head, body = got.split(b"\r\n\r\n", 1)
                assert head.startswith(b"HTTP/1.1 200") and f"content-length: {size}".encode() in head.lower()
                received = len(body)
                while received < size:
                    received += len(await stream.receive(min(16 * KiB, size - received)))
                    await anyio.sleep(0.05)
                assert received == size
                # ... and the connection carries the next request
                await stream.send(b"GET /tiny HTTP/1.1\r\nHost: a\r\n\r\n")
                got = b""
                while not got.endswith(b"\r\n\r\nok"):
                    got += await stream.receive()
            finally:
                await raw.aclose()
            if path == "inline" and _on_asyncio():
                assert app.inline == 1


def _on_asyncio() -> bool:
    return sniffio.current_async_library() == "asyncio"


# --- minimum body rate -------------------------------------------------------------------------

async def test_http1_trickled_body_gets_408() -> None:
    limits = HttpLimits(min_body_rate_bytes_per_s=1 * KiB, min_body_rate_window_s=0.5)
    async with running(make_app(Probe()), limits=limits) as port:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(b"PUT /hash HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
                start = anyio.current_time()
                out = b""
                try:
                    for _ in range(100):  # 1 byte every 0.1 s: 10 B/s, far below 1 KiB/s
                        await s.send(b"t")
                        await anyio.sleep(0.1)
                        with anyio.move_on_after(0):
                            out += await s.receive()
                        if out:
                            break
                except (anyio.BrokenResourceError, anyio.EndOfStream):
                    pass
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:
                        out += await s.receive()
                assert anyio.current_time() - start < 3.0
        [(status, headers, _)] = split_responses(out)
        assert status == 408 and headers["connection"] == "close"
        # an honest upload under the same limits
        raw = await raw_exchange(port, b"PUT /hash HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n"
                                       b"Connection: close\r\n\r\n" + b"h" * 200_000)
        assert raw.startswith(b"HTTP/1.1 200") and b"200000 " in raw


async def test_http2_trickled_body_gets_408() -> None:
    limits = HttpLimits(min_body_rate_bytes_per_s=1 * KiB, min_body_rate_window_s=0.5)
    async with running(make_app(Probe()), limits=limits) as port:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                c = H2Client(s)
                await c.start()
                c.conn.send_headers(1, c.headers("PUT", "/hash"))
                await c.send()
                start = anyio.current_time()

                def answered() -> bool:
                    return any(isinstance(e, h2.events.ResponseReceived) for e in c.events)
                while not answered() and not c.closed:
                    c.conn.send_data(1, b"t")
                    await c.send()
                    with anyio.move_on_after(0.1):
                        await c.pump()
                [resp] = [e for e in c.events if isinstance(e, h2.events.ResponseReceived)]
                assert dict(resp.headers)[b":status"] == b"408"
                assert anyio.current_time() - start < 3.0


# --- HTTP/2 floods -----------------------------------------------------------------------------

async def flood(c: H2Client, write: Callable[[int], int], most: int) -> int:
    """Frames queued by ``write(sent)`` (it returns how many), a write at a time, until the
    server's GOAWAY or ``most`` were sent; then the GOAWAY is awaited. How many were sent."""
    sent = 0
    try:
        while c.goaway() is None and sent < most:
            sent += write(sent)
            await c.send()
            with anyio.move_on_after(0.01):
                await c.pump()
    except (anyio.BrokenResourceError, h2.exceptions.ProtocolError):
        pass
    await c.pump_until(lambda: c.goaway() is not None)
    return sent


async def rapid_reset(port: int, path: str) -> tuple[h2.events.ConnectionTerminated | None, int]:
    """HEADERS + RST_STREAM pairs, as in CVE-2023-44487, 100 a write, until the server ends the
    connection (or 20,000 were sent): its GOAWAY and how many streams were opened and reset."""

    def pairs(sent: int) -> int:
        for i in range(100):
            sid = 2 * (sent + i) + 1
            c.conn.send_headers(sid, c.headers("GET", path), end_stream=True)
            c.conn.reset_stream(sid, error_code=8)
        return 100

    with anyio.fail_after(20):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            c = H2Client(s)
            await c.start()
            await c.pump_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in c.events))
            sent = await flood(c, pairs, 20_000)
    return c.goaway(), sent


async def test_http2_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    probe = Probe()
    async with running(make_app(probe)) as port:
        goaway, sent = await rapid_reset(port, "/hello")
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert sent < 5000 and probe.calls < 5000  # cut off within the budget (400 + 100/s)


async def test_http2_rapid_reset_of_streams_answered_at_once_gets_goaway_enhance_your_calm() -> None:
    # The edge's warm hits are answered where their HEADERS are read (answer_now): a reset read
    # with them still spends the budget, and the app is not asked for what was reset.
    app = NowApp()
    async with running(app) as port:
        goaway, sent = await rapid_reset(port, "/now")
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert sent < 5000 and app.now + app.awaited < 100


_NOW_BLOCK = b"".join(b"\x00" + bytes((len(n),)) + n + bytes((len(v),)) + v for n, v in [
    (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/now"), (b":authority", b"a")])


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


@pytest.mark.parametrize(("bad", "last", "code"), [(_NOW_BLOCK + b"\x00\x02te\x04gzip", 5, 1),
                                                   (_NOW_BLOCK + b"\x80", 3, 9),
                                                   (_NOW_BLOCK + b"\x00\x81\x00\x01a", 3, 9)],
                         ids=["te: gzip", "index 0", "huffman"])
async def test_http2_malformed_block_after_answers_at_once_gets_goaway_protocol_error(bad: bytes, last: int,
                                                                                     code: int) -> None:
    # Our own field checks (once per distinct list) and HPACK decoder refuse as h2 did before
    # (7207706): the requests before are answered, then GOAWAY naming the malformed stream (or,
    # when its block could not be decoded, the one before), and close: PROTOCOL_ERROR for a
    # field h2 refuses, COMPRESSION_ERROR for a block HPACK cannot decode (RFC 9113 4.3).
    async with running(NowApp()) as port:
        hello = PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x4, 0x1, 0, b"")
        with anyio.fail_after(5):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(hello + _frame(0x1, 0x5, 1, _NOW_BLOCK) + _frame(0x1, 0x5, 3, _NOW_BLOCK))
                await anyio.sleep(0.1)
                await s.send(_frame(0x1, 0x5, 5, bad))
                out = b""
                while True:
                    try:
                        out += await s.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
    frames, pos = [], 0
    while pos < len(out):
        n = int.from_bytes(out[pos:pos + 3], "big")
        frames.append((out[pos + 3], int.from_bytes(out[pos + 5:pos + 9], "big"), out[pos + 9:pos + 9 + n]))
        pos += 9 + n
    assert [sid for kind, sid, _ in frames if kind == 0x1] == [1, 3]
    goaway = last.to_bytes(4, "big") + code.to_bytes(4, "big")
    assert [payload for kind, _, payload in frames if kind == 0x7] == [goaway]


class _EchoApp:
    """Answers every request with its Host and target, at once (``answer_now``) or awaited;
    records the bodies it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def answer_now(self, request: Request) -> Response | None:
        if request.method != "GET":
            return None
        return Response(200, [], f"{request.headers.get('host')} {request.target}".encode())

    async def __call__(self, request: Request) -> Response:
        self.bodies.append(await request.body.read_all(1 << 20))
        return Response(200, [], f"{request.headers.get('host')} {request.target}".encode())


async def _h2_exchange(port: int, reads: list[bytes]) -> bytes:
    """``reads`` sent one write each (a pause between them), after the preface; all the server
    sent until it closed or went quiet."""
    out = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x4, 0x1, 0, b""))
        for data in reads:
            await s.send(data)
            await anyio.sleep(0.05)
        with anyio.move_on_after(1):
            while True:
                try:
                    out += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    return out


def _lit(index: int, value: bytes) -> bytes:
    """HPACK: a literal field with incremental indexing (RFC 7541 6.2.1), its name a static index."""
    return bytes((0x40 | index, len(value))) + value


# GET http; :path and :authority added to the peer's dynamic table (62 :authority, 63 :path).
_ADDS_A = b"\x82\x86" + _lit(4, b"/a") + _lit(1, b"a")
_ADDS_B = b"\x82\x86" + _lit(4, b"/b") + _lit(1, b"b")
# GET http and dynamic entries 62 and 63: the block changes nothing, so the decoder remembers it.
_INDEXED = b"\x82\x86\xbe\xbf"
# A table size update to 0 and back to 4096 (the table emptied), and :authority z added alone.
_EMPTIES = b"\x20\x3f\xe1\x1f\x82\x86\x84" + _lit(1, b"z")


async def test_http2_a_remembered_request_block_reads_the_dynamic_table_as_it_is_now() -> None:
    # A block read before is answered from what its first reading made (h2tls4) only while the
    # dynamic table it indexes is unchanged: after another block adds entries, the same bytes
    # name another :authority and :path, and after the table is emptied they name entries that
    # are gone (COMPRESSION_ERROR), however many times they were read before.
    async with running(_EchoApp()) as port:
        with anyio.fail_after(10):
            out = await _h2_exchange(port, [
                _frame(0x1, 0x5, 1, _ADDS_A) + _frame(0x1, 0x5, 3, _INDEXED) + _frame(0x1, 0x5, 5, _INDEXED),
                _frame(0x1, 0x5, 7, _INDEXED),
                _frame(0x1, 0x5, 9, _ADDS_B) + _frame(0x1, 0x5, 11, _INDEXED),
                _frame(0x1, 0x5, 13, _INDEXED),
                _frame(0x1, 0x5, 15, _EMPTIES),
                _frame(0x1, 0x5, 17, _INDEXED)])
    frames = frames_of(out)
    bodies = {sid: payload for kind, sid, payload in frames if kind == 0x0}
    assert bodies == {1: b"a /a", 3: b"a /a", 5: b"a /a", 7: b"a /a", 9: b"b /b", 11: b"b /b", 13: b"b /b",
                      15: b"z /"}
    goaway = (15).to_bytes(4, "big") + (9).to_bytes(4, "big")  # COMPRESSION_ERROR
    assert [payload for kind, _, payload in frames if kind == 0x7] == [goaway]


def _request_block(method: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    """HPACK: literal fields without indexing (the decoder remembers such a block)."""
    return b"".join(b"\x00" + bytes((len(n),)) + n + bytes((len(v),)) + v for n, v in [
        (b":method", method), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"a"), *extra])


async def test_http2_headers_ending_the_stream_with_a_content_length_is_refused() -> None:
    # RFC 9113 8.1.1: a request whose content-length is not the length of its DATA is malformed;
    # HEADERS with END_STREAM carry none, so "content-length: 3" there is refused (400), the
    # app never sees a request that says 3 bytes and has none. The same block read again (the
    # remembered block's path) is refused again; "content-length: 0" is a request like any other.
    app = _EchoApp()
    bad = _request_block(b"PUT", (b"content-length", b"3"))
    zero = _request_block(b"PUT", (b"content-length", b"0"))
    async with running(app) as port:
        with anyio.fail_after(10):
            out = await _h2_exchange(port, [
                _frame(0x1, 0x5, 1, bad) + _frame(0x1, 0x5, 3, bad), _frame(0x1, 0x5, 5, bad),
                _frame(0x1, 0x5, 7, zero)])
    dec = hpack.Decoder()
    statuses = {sid: dict(dec.decode(payload))[":status"] for kind, sid, payload in frames_of(out) if kind == 0x1}
    assert statuses == {1: "400", 3: "400", 5: "400", 7: "200"}
    assert app.bodies == [b""]  # stream 7's
    assert not [payload for kind, _, payload in frames_of(out) if kind == 0x7]  # no GOAWAY: stream errors


async def test_http2_answers_at_once_keep_to_a_window_shrunk_in_the_same_read() -> None:
    # A SETTINGS_INITIAL_WINDOW_SIZE of 0 read between two requests' HEADERS, all in one read:
    # the answers (given once the whole read is dispatched, send_whole) send HEADERS alone, for
    # the stream opened before the SETTINGS too; their bodies follow the streams' WINDOW_UPDATEs.
    window_0 = _frame(0x4, 0, 0, (4).to_bytes(2, "big") + (0).to_bytes(4, "big"))
    async with running(_EchoApp()) as port:
        with anyio.fail_after(10):
            out = await _h2_exchange(port, [
                _frame(0x1, 0x5, 1, _NOW_BLOCK) + window_0 + _frame(0x1, 0x5, 3, _NOW_BLOCK), b""])
            assert [(kind, sid) for kind, sid, _ in frames_of(out) if kind in (0x0, 0x1)] == [(0x1, 1), (0x1, 3)]
            out = await _h2_exchange(port, [
                _frame(0x1, 0x5, 1, _NOW_BLOCK) + window_0 + _frame(0x1, 0x5, 3, _NOW_BLOCK),
                _frame(0x8, 0, 3, (100).to_bytes(4, "big")) + _frame(0x8, 0, 1, (100).to_bytes(4, "big"))])
    data = [(sid, payload) for kind, sid, payload in frames_of(out) if kind == 0x0]
    assert sorted(data) == [(1, b"a /now"), (3, b"a /now")]


@pytest.mark.parametrize("flood_kind", ["ping", "settings"])
async def test_http2_control_frame_flood_gets_goaway_enhance_your_calm(flood_kind: str) -> None:
    async with running(make_app(Probe())) as port:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                c = H2Client(s)
                await c.start()

                def control(sent: int) -> int:
                    for i in range(1000):
                        if flood_kind == "ping":
                            c.conn.ping(b"%08d" % (i % 10**8))
                        else:
                            c.conn.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 4096 + i})
                    return 1000

                sent = await flood(c, control, 200_000)
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        answered = [e for e in c.events if isinstance(e, (h2.events.PingAckReceived,
                                                          h2.events.SettingsAcknowledged))]
        assert len(answered) < 2000 and sent < 200_000


def _frame_of(kind: int, sid: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return _frame(kind, flags, sid, payload)


_WU1 = (1).to_bytes(4, "big")
# Frames that do no work (issue 10), each charged to the flood budget: (what opens stream 1
# first: "get" a GET answered, "upload" a PUT whose body the app waits for, "reset" that PUT
# reset by the client; the frame repeated).
_NO_WORK = {
    "RST_STREAM of a closed stream": ("get", _frame_of(0x3, 1, (8).to_bytes(4, "big"))),
    "WINDOW_UPDATE of the connection": ("", _frame_of(0x8, 0, _WU1)),
    "WINDOW_UPDATE of an open stream": ("upload", _frame_of(0x8, 1, _WU1)),
    "WINDOW_UPDATE of a closed stream": ("get", _frame_of(0x8, 1, _WU1)),
    "DATA of a reset stream": ("reset", _frame_of(0x0, 1, b"x")),
    "HEADERS of a reset stream": ("reset", _frame_of(0x1, 1, _NOW_BLOCK, flags=0x5)),
    "PRIORITY_UPDATE": ("get", _frame_of(0x10, 0, (1).to_bytes(4, "big") + b"u=3")),
    "unknown frame type": ("", _frame_of(0xFA, 0, b"12345678")),
    "SETTINGS ack of nothing": ("", _frame_of(0x4, 0, flags=0x1)),
    "PING ack of nothing": ("", _frame_of(0x6, 0, b"12345678", flags=0x1)),
}


@pytest.mark.parametrize("case", _NO_WORK)
async def test_http2_frames_that_do_no_work_get_goaway_enhance_your_calm(case: str) -> None:
    # h2 took these without telling us (or we did not charge them): a client could make the
    # server work per frame without end, the connection open (bench h2_floods: 5-14 CPU
    # seconds per million frames).
    first, one = _NO_WORK[case]
    floods: list[str] = []
    async with running(hostile_app(Live(), make_app(Probe())),
                       on_flood=lambda peer, kind: floods.append(kind)) as port:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                c = H2Client(s)
                await c.start()
                if first == "get":
                    c.conn.send_headers(1, c.headers("GET", "/hello"), end_stream=True)
                    await c.send()
                    await c.pump_until(lambda: any(isinstance(e, h2.events.StreamEnded) for e in c.events))
                elif first:
                    c.conn.send_headers(1, c.headers("PUT", "/swallow"), end_stream=False)
                    if first == "reset":
                        c.conn.reset_stream(1, error_code=8)
                    await c.send()

                def frames(sent: int) -> int:
                    c.raw += one * 1000
                    return 1000

                sent = await flood(c, frames, 200_000)
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert sent < 200_000 and len(floods) == 1


async def test_http2_rst_stream_of_an_idle_stream_gets_goaway_protocol_error() -> None:
    # RFC 9113 6.4 (h2 ignored it, as often as it came).
    async with running(make_app(Probe())) as port:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                c = H2Client(s)
                await c.start()
                c.conn.send_headers(1, c.headers("GET", "/hello"), end_stream=True)
                c.raw += _frame_of(0x3, 1001, (8).to_bytes(4, "big"))
                await c.send()
                await c.pump_until(lambda: c.goaway() is not None)
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


# --- the request reader's own frames (headwater.http.h2._receive) ---------------------------


@pytest.mark.parametrize(("header", "code"), [
    (b"\xff\xff\xff\x00\x00\x00\x00\x00\x01", 0x6),  # DATA of 16 MiB: FRAME_SIZE_ERROR
    (b"\x00\x06\x00\x04\x00\x00\x00\x00\x01", 0x1),  # SETTINGS on stream 1: PROTOCOL_ERROR
    (b"\x00\x01\x00\x06\x00\x00\x00\x00\x03", 0x1),  # PING on stream 3
], ids=["overlong", "settings on a stream", "ping on a stream"])
async def test_http2_frame_header_refused_from_the_header_then_trickle(header: bytes, code: int) -> None:
    # The frame's body is trickled and never completes: the header alone ends the connection
    # (GOAWAY, close) at once, as h2 refuses it, with nothing of the frame buffered meanwhile.
    async with running(NowApp()) as port:
        with anyio.fail_after(5):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x1, 0x5, 1, _NOW_BLOCK))
                await anyio.sleep(0.05)
                await s.send(header)
                out = b""
                with anyio.move_on_after(4):
                    while True:
                        with anyio.move_on_after(0.05):
                            try:
                                out += await s.receive()
                            except (anyio.EndOfStream, anyio.BrokenResourceError):
                                break
                        try:
                            await s.send(b"\x00")
                        except (anyio.BrokenResourceError, OSError):
                            pass
    goaways = [payload for kind, _, payload in frames_of(out) if kind == 0x7]
    assert goaways == [(1).to_bytes(4, "big") + code.to_bytes(4, "big")]


def _waiting_app(gate: list[anyio.Event], fallback):
    async def app(req: Request) -> Response:
        if req.path == "/wait":
            await gate[-1].wait()
            return Response(200, [], b"waited")
        return await fallback(req)
    return app


async def test_http2_streams_waiting_for_the_app_count_against_max_concurrent_streams() -> None:
    # Requests read by _receive wait for the app without a stream made in h2: they still count
    # toward SETTINGS_MAX_CONCURRENT_STREAMS (one past it is refused, RST_STREAM(REFUSED_STREAM),
    # and the connection goes on: RFC 9113 5.1.2), and a
    # SETTINGS that shuts the initial window while they wait holds back their DATA until the
    # client opens each stream's window (the h2 client checks every DATA against its windows).
    gate = [anyio.Event()]
    async with running(_waiting_app(gate, make_app(Probe())),
                       limits=HttpLimits(max_concurrent_streams=2)) as port:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                c = H2Client(s)
                await c.start()
                await c.pump_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in c.events))
                for sid in (1, 3):
                    c.conn.send_headers(sid, c.headers("GET", "/wait"), end_stream=True)
                await c.send()
                await anyio.sleep(0.1)
                c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
                await c.send()
                await c.pump_until(lambda: any(isinstance(e, h2.events.SettingsAcknowledged) for e in c.events))
                gate[-1].set()
                await c.pump_until(lambda: sum(isinstance(e, h2.events.ResponseReceived) for e in c.events) == 2)
                await anyio.sleep(0.1)
                assert not any(isinstance(e, h2.events.DataReceived) for e in c.events)
                for sid in (1, 3):
                    c.conn.increment_flow_control_window(100, stream_id=sid)
                await c.send()
                await c.pump_until(lambda: sum(isinstance(e, h2.events.StreamEnded) for e in c.events) == 2)
                assert b"".join(e.data for e in c.events if isinstance(e, h2.events.DataReceived)) == b"waited" * 2
                # two waiting again: a third is one too many
                gate.append(anyio.Event())
                for sid in (5, 7):
                    c.conn.send_headers(sid, c.headers("GET", "/wait"), end_stream=True)
                await c.send()
                await anyio.sleep(0.1)
                c.raw += _frame(0x1, 0x5, 9, _NOW_BLOCK)  # (the h2 client would not send it)
                await c.send()
                refused = _frame(0x3, 0, 9, (h2.errors.ErrorCodes.REFUSED_STREAM).to_bytes(4, "big"))
                await c.pump_until(lambda: refused in c.received)
                gate[-1].set()
                for sid in (5, 7):
                    c.conn.increment_flow_control_window(100, stream_id=sid)
                await c.send()
                await c.pump_until(lambda: sum(isinstance(e, h2.events.StreamEnded) for e in c.events) == 4)
                c.conn.highest_outbound_stream_id = 9  # (h2 did not see the refused stream go)
                c.conn.send_headers(11, c.headers("GET", "/hello"), end_stream=True)
                c.conn.increment_flow_control_window(100, stream_id=11)
                await c.send()
                await c.pump_until(lambda: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 11
                                               for e in c.events))
    assert c.goaway() is None


H2LOAD = shutil.which("h2load")


@pytest.mark.skipif(H2LOAD is None, reason="h2load (nghttp2-client) not installed")
async def test_http2_big_downloads_with_small_windows_never_spend_the_flood_budget() -> None:
    # h2load with 16 KiB stream and 64 KiB connection windows: ~3,000 WINDOW_UPDATEs for 48
    # MiB over one connection, each re-opening what DATA drew; and httpx (h2's 64 KiB windows).
    floods: list[str] = []
    async with running(make_app(Probe()), on_flood=lambda peer, kind: floods.append(kind)) as port:
        url = f"http://127.0.0.1:{port}/big?n={4 * MiB}"
        with anyio.fail_after(40):
            done = await anyio.run_process([H2LOAD, "-n", "12", "-c", "1", "-m", "4", "-w", "14", "-W", "16", url])
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                for _ in range(3):
                    r = await client.get(url)
                    assert r.status_code == 200 and len(r.content) == 4 * MiB
    out = done.stdout.decode()
    assert "12 succeeded, 0 failed, 0 errored" in out, out
    assert floods == []


# --- malformed chunked bodies ----------------------------------------------------------------

@pytest.mark.parametrize("chunks", [b"zz\r\n", b"5\r\nhelloXX", b"5\nhello\n"])
async def test_malformed_chunked_body_is_400_even_when_the_app_answers_500(chunks: bytes) -> None:
    async with running(hostile_app(Live(), make_app(Probe()))) as port:
        raw = await raw_exchange(port, b"POST /swallow HTTP/1.1\r\nHost: a\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
        [(status, headers, body)] = split_responses(raw)
        assert status == 400 and headers["connection"] == "close" and body.startswith(b"400 ")


async def test_malformed_chunked_body_while_echoing_logs_no_traceback(caplog) -> None:
    async with running(make_app(Probe())) as port:
        with caplog.at_level(logging.INFO, logger="headwater.http"):
            raw = await raw_exchange(port, b"POST /echo HTTP/1.1\r\nHost: a\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and not raw.endswith(b"0\r\n\r\n")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def _cut_on_purpose(req: Request) -> Response:
    """A streamed answer the app cuts short itself after its first chunk (the edge does so
    when an upstream slot the rest needed is refused)."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first chunk"
        raise BodyCut("no rest slot upstream")
    return Response(200, [("content-type", "application/octet-stream")], chunks())


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/2"])
async def test_a_body_the_app_cuts_on_purpose_is_cut_and_logged_in_a_line(version: str, caplog) -> None:
    async with running(_cut_on_purpose) as port:
        with caplog.at_level(logging.INFO, logger="headwater.http"):
            if version == "HTTP/1.1":
                raw = await raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                # the head and the chunk sent, then the connection cut: no last chunk, never "complete"
                assert raw.startswith(b"HTTP/1.1 200") and b"first chunk" in raw
                assert not raw.endswith(b"0\r\n\r\n")
            else:
                async with httpx.AsyncClient(http1=False, http2=True) as client:
                    with pytest.raises(httpx.RemoteProtocolError):  # RST_STREAM(INTERNAL_ERROR)
                        await client.get(f"http://127.0.0.1:{port}/x")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert [r for r in caplog.records if "cut short: no rest slot upstream" in r.getMessage()]


# --- FileBody with a descriptor, Date from the clock ------------------------------------------

async def test_file_body_fd_survives_unlink_and_is_closed(tmp_path: Path) -> None:
    blob = os.urandom(300 * KiB)
    handed: list[tuple[int, int]] = []  # (fd, inode)

    async def app(req: Request) -> Response:
        path = tmp_path / f"evicted-{len(handed)}"
        path.write_bytes(blob)
        fd = os.open(path, os.O_RDONLY)
        handed.append((fd, os.fstat(fd).st_ino))
        path.unlink()  # the cache evicts the path; the descriptor still reads the bytes
        return Response(200, [], FileBody(str(path), fd=fd, offset=5, length=len(blob) - 5))

    def closed(fd: int, ino: int) -> bool:
        try:
            return os.fstat(fd).st_ino != ino
        except OSError:
            return True

    async with running(app) as port:
        for http2 in (False, True):
            async with httpx.AsyncClient(http1=not http2, http2=http2) as c:
                r = await c.get(f"http://127.0.0.1:{port}/f")
                assert r.content == blob[5:]
            with anyio.fail_after(5):
                while not closed(*handed[-1]):
                    await anyio.sleep(0.01)
        head = await raw_exchange(port, b"HEAD /f HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % (len(blob) - 5) in head
        with anyio.fail_after(5):
            while not closed(*handed[-1]):
                await anyio.sleep(0.01)


async def test_date_header_comes_from_the_injected_clock() -> None:
    clock = FakeClock(start=1_000_000_000.0)
    async with running(make_app(Probe()), clock=clock) as port:
        for http2 in (False, True):
            async with httpx.AsyncClient(http1=not http2, http2=http2) as c:
                r = await c.get(f"http://127.0.0.1:{port}/hello")
                assert r.headers["date"] == "Sun, 09 Sep 2001 01:46:40 GMT"


async def test_one_connection_that_fails_ends_only_itself():
    """A connection whose handling raises (a probe saw uvloop refuse an accepted socket with
    EBADF, and the close after it fail again) is logged and closed; the listener and the other
    connections go on. Before, the error reached the server's task group and ended the daemon."""
    from headwater.http.transport import accept_loop, bind_socket

    handled: list[bytes] = []

    async def handle(sock: socket.socket, addr) -> None:
        data = await anyio.to_thread.run_sync(sock.recv, 100)
        if data == b"boom":
            sock.close()  # the descriptor goes away under the acceptor: its own close fails too
            raise OSError(9, "Bad file descriptor")
        handled.append(data)
        sock.sendall(b"ok")

    listener = bind_socket("127.0.0.1", 0, reuse_port=False)
    port = listener.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(accept_loop, listener, 10, tg, handle)
        for payload in (b"boom", b"after", b"boom", b"again"):
            with anyio.fail_after(5):
                async with await anyio.connect_tcp("127.0.0.1", port) as c:
                    await c.send(payload)
                    try:
                        reply = await c.receive(10)
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        reply = b""
            assert reply == (b"" if payload == b"boom" else b"ok")
        tg.cancel_scope.cancel()
    listener.close()
    assert handled == [b"after", b"again"]


# --- connections that end before their first request --------------------------------------------

def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def server_end_of_file(s: anyio.abc.SocketStream) -> bool:
    """Whether the server closed its side (the client reads end of file, or a reset)."""
    try:
        await s.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return True
    return False


async def test_a_connection_silent_or_closed_before_its_first_byte_is_closed_by_the_server() -> None:
    """A client that half-closes before sending anything, and one that stays silent past the
    header timeout, see the server close the connection. Before, on the loop transport (asyncio)
    such a connection was never closed: its transport stayed open with the peer waiting, and its
    descriptor was later closed twice by the garbage collector (the cause of EEXIST/EBADF from
    ``connect_accepted_socket`` under load)."""
    limits = HttpLimits(header_timeout_s=0.3)
    async with running(make_app(Probe()), limits=limits) as port:
        with anyio.fail_after(3):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send_eof()
                assert await server_end_of_file(s)
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                start = anyio.current_time()
                assert await server_end_of_file(s)
                assert anyio.current_time() - start >= 0.25


async def test_port_probes_leave_no_descriptor_behind() -> None:
    """Connections closed or reset before their first byte (port probes, health checkers, scans)
    hold no descriptor once they are gone, without the garbage collector's help: what is left
    for it to close, it closes twice (uvloop's transport and the socket object both close the
    number, which another connection or file may have been given in between)."""
    async with running(make_app(Probe())) as port:
        assert (await raw_exchange(port, b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                ).startswith(b"HTTP/1.1 200")
        gc.collect()
        gc.disable()
        try:
            before = open_descriptors()
            for i in range(40):
                s = socket.create_connection(("127.0.0.1", port))
                if i % 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            # answered once the server accepted (in order) every probe before it
            assert (await raw_exchange(port, b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    ).startswith(b"HTTP/1.1 200")
            with anyio.fail_after(3):
                while open_descriptors() > before:
                    await anyio.sleep(0.02)
        finally:
            gc.enable()


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio")])
async def test_the_loop_transport_serves_bodies_both_ways_and_keep_alive(anyio_backend, tmp_path):
    """``serve(loop_transport=True)`` (uvloop's transports under the same shells, what bench
    http_core measures): requests on one keep-alive connection, a body echoed back, HTTP/2."""
    async with running(make_app(Probe()), loop_transport=True) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            for _ in range(20):
                r = await client.get("/hello")
                assert r.status_code == 200 and r.content == b"hello GET"
            body = os.urandom(3 * MiB)
            r = await client.post("/echo", content=body)
            assert r.status_code == 200 and r.content == body
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=False, http2=True,
                                     trust_env=False) as client:
            r = await client.get("/hello")
            assert r.status_code == 200 and r.http_version == "HTTP/2"


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio")])
async def test_the_loop_transport_wakes_every_task_waiting_on_it(anyio_backend):
    """Two tasks waiting to read one ProtocolStream at once (over TLS, the HTTP/2 reader and
    a send whose record layer must read) both wake when bytes come, and so do two waiting for
    the drain: with one waiter slot the first was replaced and never woke (the HTTP/2-over-TLS
    stall: a quiet connection, its client waiting for responses forever)."""
    from headwater.http.protocol_stream import WRITE_HIGH_BYTES, open_protocol_stream
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small buffers both ways, so
    peer.connect(listener.getsockname())  # that a send waits for the drain below
    accepted, _ = listener.accept()
    listener.close()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    accepted.setblocking(False)
    stream = await open_protocol_stream(accepted, send_timeout_s=10)
    try:
        got: list[bytes] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                async def read() -> None:
                    got.append(await stream.receive())
                tg.start_soon(read)
                tg.start_soon(read)
                await anyio.sleep(0.05)  # both are waiting now
                peer.sendall(b"a")
                await anyio.sleep(0.05)
                peer.sendall(b"b")
        assert sorted(got) == [b"a", b"b"]
        # the drain: the peer reads nothing until both senders wait behind the high-water mark
        sent = 0
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async def send() -> None:
                    nonlocal sent
                    await stream.send(b"x" * (16 * WRITE_HIGH_BYTES))
                    sent += 1
                tg.start_soon(send)
                tg.start_soon(send)
                await anyio.sleep(0.1)
                assert sent == 0
                total = 0
                while total < 32 * WRITE_HIGH_BYTES:
                    data = await anyio.to_thread.run_sync(peer.recv, 1 << 20)
                    assert data
                    total += len(data)
        assert sent == 2
    finally:
        await stream.aclose()
        peer.close()


# --- HTTP/2 read deadlines ---------------------------------------------------------------------

_PING = _frame(0x6, 0, 0, b"12345678")
# (what the client sends first, then a byte at a time, or whole every 0.2 s: the case's name)
_TRICKLES = {
    "the preface a byte at a time": (b"", PREFACE + _frame(0x4, 0, 0, b""), 1),
    "a frame a byte at a time": (PREFACE + _frame(0x4, 0, 0, b""), _PING * 4, 1),
    "a header block never ended": (PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x1, 0x1, 1, _NOW_BLOCK[:8]),
                                   _frame(0x9, 0, 1, b"") * 40, 9),
    "PINGs and no stream": (PREFACE + _frame(0x4, 0, 0, b""), _PING * 40, len(_PING)),
}


async def _trickled(port: int, tls: Path | None, first: bytes, then: bytes, step: int) -> tuple[float, bytes]:
    """Send ``first``, then ``then`` ``step`` bytes every 0.2 s: (seconds until the server
    closed, what it sent)."""
    raw = await anyio.connect_tcp("127.0.0.1", port)
    stream: anyio.abc.ByteStream = raw
    if tls is not None:
        ctx = ssl.create_default_context(cafile=str(tls))
        ctx.set_alpn_protocols(["h2"])
        stream = await TLSStream.wrap(raw, hostname="localhost", ssl_context=ctx, standard_compatible=False)
    started = anyio.current_time()
    out = bytearray()
    async with stream:
        async def read() -> None:
            try:
                while True:
                    out.extend(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError):
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            try:
                if first:
                    await stream.send(first)
                for i in range(0, len(then), step):
                    await anyio.sleep(0.2)
                    await stream.send(then[i:i + step])
                await anyio.sleep(30)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError,
                    OSError):
                # (the server cut us: over TLS a send may meet its close_notify as end of stream;
                # the reader sees the end)
                await anyio.sleep(30)
    return anyio.current_time() - started, bytes(out)


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2"])
@pytest.mark.parametrize("case", _TRICKLES)
async def test_http2_what_trickles_in_is_cut_at_its_deadline(tls_files: tuple[Path, Path], case: str,
                                                             tls: bool) -> None:
    # Every byte (or PING) came before the idle timeout ran out, and moved it on: a frame, a
    # header block or the preface (over TLS: after the handshake) trickled in held the
    # connection for as long as the client liked. Now each has a deadline from its first byte
    # (header_timeout_s), and idle is counted from the last stream, not the last frame.
    first, then, step = _TRICKLES[case]
    if not tls and not first:
        first = then[:5]  # (h2c: the server reads the preface in its HTTP/1.1 sniffing)
    cert, key = tls_files
    limits = HttpLimits(header_timeout_s=1.0, idle_timeout_s=1.0, body_timeout_s=1.0)
    async with running(make_app(Probe()), limits=limits,
                       ssl_context=server_ssl_context(cert, key) if tls else None) as port:
        with anyio.fail_after(30):
            taken, out = await _trickled(port, cert if tls else None, first, then, step)
    # (Deadlines of 1 s; the slack is for a loaded machine. Held to the end, the shortest case,
    # the preface, would be open 6.6 s of trickling plus the idle second.)
    assert taken < 5.0, f"{case}: open for {taken:.1f} s"
    if case == "the preface a byte at a time" and not tls:
        return  # (cut by the HTTP/1.1 sniffing's header timeout: nothing sent)
    goaways = [payload for kind, _, payload in frames_of(out) if kind == 0x7]
    assert len(goaways) == 1 and goaways[0][4:8] == b"\x00\x00\x00\x00", out
