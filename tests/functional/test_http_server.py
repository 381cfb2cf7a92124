"""The HTTP server core over real sockets, with real clients (curl, httpx, raw sockets).

Every test runs on both anyio backends (asyncio on uvloop, and trio).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import AsyncIterator

import anyio
import httpx
import pytest

from headwater.config import HttpLimits, KiB, MiB
from headwater.http import ClientDisconnected, FileBody, Request, Response, serve, server_ssl_context

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CURL = shutil.which("curl")


class Probe:
    """What the app saw, for tests that check the server side."""

    def __init__(self) -> None:
        self.disconnected = anyio.Event()
        self.cancelled = False
        self.received = 0
        self.calls = 0


def make_app(probe: Probe, file_path: Path | None = None):
    async def app(req: Request) -> Response:
        probe.calls += 1
        path = req.path
        if path == "/hello":
            return Response(200, [("content-type", "text/plain")], b"hello " + req.method.encode())
        if path == "/info":
            info = {"method": req.method, "path": req.path, "query": req.query, "host": req.host,
                    "version": req.http_version, "scheme": req.scheme,
                    "headers": [list(kv) for kv in req.headers]}
            return Response(200, [("content-type", "application/json")], json.dumps(info).encode())
        if path == "/echo":
            async def echo() -> AsyncIterator[bytes]:
                async for chunk in req.body:
                    yield chunk
            return Response(200, [], echo())
        if path == "/hash":
            h = hashlib.sha256()
            n = 0
            while chunk := await req.body.receive(256 * KiB):
                h.update(chunk)
                n += len(chunk)
            probe.received = n
            return Response(200, [], f"{n} {h.hexdigest()}".encode())
        if path == "/ignore":
            return Response(403, [], b"no thanks")
        if path == "/stream":
            n = int(req.query.split("=")[1]) if req.query else 10

            async def gen() -> AsyncIterator[bytes]:
                for i in range(n):
                    yield b"%d\n" % i
            return Response(200, [("content-type", "text/plain")], gen())
        if path == "/big":
            size = int(req.query.split("=")[1])

            async def big() -> AsyncIterator[bytes]:
                block = b"b" * (64 * KiB)
                left = size
                while left:
                    yield block[:left]
                    left -= min(left, len(block))
            return Response(200, [("content-length", str(size))], big())
        if path == "/file":
            assert file_path is not None
            if req.query == "range":
                return Response(206, [], FileBody(file_path, offset=10, length=100))
            return Response(200, [("content-type", "application/octet-stream")], FileBody(file_path))
        if path == "/boom":
            raise RuntimeError("app bug")
        if path == "/boom-stream":
            async def broken() -> AsyncIterator[bytes]:
                yield b"partial"
                raise RuntimeError("stream bug")
            return Response(200, [], broken())
        if path == "/upload-watch":
            try:
                while chunk := await req.body.receive():
                    probe.received += len(chunk)
            except ClientDisconnected:
                probe.disconnected.set()
                try:
                    await anyio.sleep(5)  # the core cancels the app: this must not complete
                except BaseException:
                    probe.cancelled = True
                    raise
                raise
            return Response(200, [], b"done")
        if path == "/nocontent":
            return Response(204, [("content-length", "0")], b"")
        return Response(404, [], b"not found")

    return app


@contextlib.asynccontextmanager
async def running(app, **kwargs) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=0,
                                                        task_status=task_status, **kwargs))
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def raw_exchange(port: int, data: bytes, *, until_close: bool = True, timeout: float = 5,
                       expect_bytes: int | None = None) -> bytes:
    """Send ``data`` and read until the server closes (or ``expect_bytes`` arrived)."""
    out = b""
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(data)
            while True:
                try:
                    out += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                if expect_bytes is not None and len(out) >= expect_bytes and not until_close:
                    break
    return out


def split_responses(raw: bytes, no_body: tuple[int, ...] = ()) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse a sequence of HTTP/1.1 responses (content-length or chunked, or to the end);
    ``no_body`` lists the indexes of responses to HEAD requests."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status == 100:
            out.append((status, headers, b""))
            raw = rest
            continue
        if len(out) in no_body:
            body = b""
            raw = rest
        elif "content-length" in headers:
            n = int(headers["content-length"])
            body, raw = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body += rest[:size]
                rest = rest[size + 2:]
                if size == 0:
                    break
            raw = rest
        else:
            body, raw = rest, b""
        out.append((status, headers, body))
    return out


# --- HTTP/1.1 with real clients --------------------------------------------------------------

async def test_httpx_http1_basics(tmp_path: Path) -> None:
    blob = os.urandom(300 * KiB)
    (tmp_path / "f.bin").write_bytes(blob)
    async with running(make_app(Probe(), tmp_path / "f.bin")) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.get("/hello")
            assert r.status_code == 200 and r.text == "hello GET"
            assert r.http_version == "HTTP/1.1"
            assert "date" in r.headers and r.headers["server"] == "headwater"
            r = await c.head("/hello")
            assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "10"
            r = await c.get("/info?a=1&b=%2F", headers={"x-thing": "v"})
            info = r.json()
            assert info["path"] == "/info" and info["query"] == "a=1&b=%2F"
            assert ["x-thing", "v"] in info["headers"] and info["host"] == f"127.0.0.1:{port}"
            r = await c.post("/echo", content=b"x" * 100_000)
            assert r.content == b"x" * 100_000 and r.headers["transfer-encoding"] == "chunked"

            async def chunks():
                for _ in range(10):
                    yield b"y" * 10_000
            r = await c.put("/hash", content=chunks())  # chunked request body
            assert r.text == f"100000 {hashlib.sha256(b'y' * 100_000).hexdigest()}"
            r = await c.get("/stream?n=1000")
            assert r.text == "".join(f"{i}\n" for i in range(1000))
            r = await c.get("/file")
            assert r.content == blob and r.headers["content-length"] == str(len(blob))
            r = await c.get("/file?range")
            assert r.status_code == 206 and r.content == blob[10:110]
            r = await c.get("/boom")
            assert r.status_code == 500
            r = await c.get("/nocontent")
            assert r.status_code == 204 and r.content == b""
            r = await c.get("/big?n=3000000")
            assert len(r.content) == 3_000_000


@pytest.mark.skipif(CURL is None, reason="curl not installed")
async def test_curl_http1_keepalive_and_upload(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 17)
    (tmp_path / "up.bin").write_bytes(data)
    async with running(make_app(Probe(), tmp_path / "up.bin")) as port:
        base = f"http://127.0.0.1:{port}"
        r = await anyio.run_process([CURL, "-sS", "--http1.1", "-w", "|%{num_connects}",
                                     f"{base}/hello", f"{base}/hello", f"{base}/file"])
        out = r.stdout
        assert out.startswith(b"hello GET|1hello GET|0")
        # curl sends Expect: 100-continue for large uploads
        r = await anyio.run_process([CURL, "-sS", "--http1.1", "-T", str(tmp_path / "up.bin"),
                                     f"{base}/hash", "-w", "|%{http_code}"])
        assert r.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}|200"
        r = await anyio.run_process([CURL, "-sS", "--http1.1", "-H", "Transfer-Encoding: chunked",
                                     "--data-binary", f"@{tmp_path / 'up.bin'}", f"{base}/hash"])
        assert r.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
        # refused without reading a large body: answered, connection closed, no hang
        r = await anyio.run_process([CURL, "-sS", "--http1.1", "-T", str(tmp_path / "up.bin"),
                                     f"{base}/ignore", "-w", "|%{http_code}"])
        assert r.stdout == b"no thanks|403"


# --- HTTP/1.1 over raw sockets -----------------------------------------------------------------

async def test_pipelining_answers_in_order() -> None:
    async with running(make_app(Probe())) as port:
        reqs = (b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /hash HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n"
                b"PUT /hash HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
                b"GET /stream?n=3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        responses = split_responses(await raw_exchange(port, reqs), no_body=(2,))
        assert [r[0] for r in responses] == [200, 200, 200, 200, 200]
        assert responses[0][2] == b"hello GET"
        assert responses[1][2] == b"5 " + hashlib.sha256(b"hello").hexdigest().encode()
        assert responses[2][2] == b"" and responses[2][1]["content-length"] == "10"
        assert responses[3][2] == b"3 " + hashlib.sha256(b"abc").hexdigest().encode()
        assert responses[4][2] == b"0\n1\n2\n" and responses[4][1]["connection"] == "close"


async def test_pipelining_byte_by_byte() -> None:
    async with running(make_app(Probe())) as port:
        reqs = b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n" * 3
        out = b""
        with anyio.fail_after(5):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                for i in range(len(reqs)):
                    await s.send(reqs[i:i + 1])
                while out.count(b"hello GET") < 3:
                    out += await s.receive()
        assert [r[2] for r in split_responses(out)] == [b"hello GET"] * 3


async def test_http10_and_missing_host() -> None:
    async with running(make_app(Probe())) as port:
        [(status, headers, body)] = split_responses(
            await raw_exchange(port, b"GET /hello HTTP/1.0\r\n\r\n"))
        assert status == 200 and body == b"hello GET" and headers.get("connection") == "close"
        # 1.0 keep-alive, then a streamed response is delimited by close
        raw = await raw_exchange(port, b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                       b"GET /stream?n=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert raw.count(b"HTTP/1.1 200") == 2 and raw.endswith(b"\r\n\r\n0\n1\n")
        [(status, headers, _)] = split_responses(await raw_exchange(port, b"GET / HTTP/1.1\r\n\r\n"))
        assert status == 400 and headers["connection"] == "close"


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    b"POST /hash HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
])
async def test_malformed_requests_get_400_and_close(garbage: bytes) -> None:
    async with running(make_app(Probe())) as port:
        raw = await raw_exchange(port, garbage)
        assert raw.startswith(b"HTTP/1.1 400 ") and b"connection: close" in raw


async def test_limits_headers_body_connections() -> None:
    limits = HttpLimits(max_header_bytes=2 * KiB, max_body_bytes=1 * MiB, max_connections=2)
    probe = Probe()
    async with running(make_app(probe), limits=limits) as port:
        big = b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 4000 + b"\r\n\r\n"
        assert (await raw_exchange(port, big)).startswith(b"HTTP/1.1 431 ")
        endless = b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 100_000
        assert (await raw_exchange(port, endless)).startswith(b"HTTP/1.1 431 ")
        too_big = b"PUT /hash HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n"
        assert (await raw_exchange(port, too_big)).startswith(b"HTTP/1.1 413 ")
        assert probe.calls == 0
        chunked = (b"PUT /hash HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + (b"10000\r\n" + b"z" * 0x10000 + b"\r\n") * 20)
        assert (await raw_exchange(port, chunked)).startswith(b"HTTP/1.1 413 ")
        # max_connections: a third connection waits in the backlog until one closes
        with anyio.fail_after(5):
            a = await anyio.connect_tcp("127.0.0.1", port)
            b = await anyio.connect_tcp("127.0.0.1", port)
            c = await anyio.connect_tcp("127.0.0.1", port)
            await c.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
            with anyio.move_on_after(0.3) as waited:
                await c.receive()
            assert waited.cancelled_caught
            await a.aclose()
            assert (await c.receive()).startswith(b"HTTP/1.1 200")
            await b.aclose()
            await c.aclose()


async def test_slowloris_and_idle_timeouts() -> None:
    limits = HttpLimits(header_timeout_s=0.5, idle_timeout_s=0.6)
    async with running(make_app(Probe()), limits=limits) as port:
        with anyio.fail_after(5):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                start = anyio.current_time()
                got = b""
                try:
                    for _ in range(50):  # dribble one byte every 50 ms: never a full head
                        await s.send(b"X-a: b\r\n"[:1] if _ else b"GET / HTTP/1.1\r\n")
                        await anyio.sleep(0.05)
                        with anyio.move_on_after(0):
                            got += await s.receive()
                except (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
                    pass
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        got += await s.receive()
                assert anyio.current_time() - start < 2.0
                assert got.startswith(b"HTTP/1.1 408 ")
            # idle keep-alive connection is closed after idle_timeout_s
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
                assert (await s.receive()).startswith(b"HTTP/1.1 200")
                start = anyio.current_time()
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await s.receive()
                assert 0.4 < anyio.current_time() - start < 2.0


async def test_expect_100_continue() -> None:
    async with running(make_app(Probe())) as port:
        with anyio.fail_after(5):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(b"PUT /hash HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                             b"Expect: 100-continue\r\n\r\n")
                assert await s.receive() == b"HTTP/1.1 100 Continue\r\n\r\n"
                await s.send(b"hello")
                out = b""
                while not out.endswith(hashlib.sha256(b"hello").hexdigest().encode()):
                    out += await s.receive()
                assert out.startswith(b"HTTP/1.1 200")
                # refused without reading: no 100, final answer, and the connection closes
                await s.send(b"PUT /ignore HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n"
                             b"Expect: 100-continue\r\n\r\n")
                out = b""
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        out += await s.receive()
                assert out.startswith(b"HTTP/1.1 403") and b"connection: close" in out
        # small body sent anyway without Expect and not read: drained, connection kept
        raw = await raw_exchange(port, b"POST /ignore HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
                                       + b"q" * 1000 + b"GET /hello HTTP/1.1\r\nHost: a\r\n"
                                       b"Connection: close\r\n\r\n")
        assert [r[0] for r in split_responses(raw)] == [403, 200]


async def test_client_disconnect_mid_upload_cancels_app() -> None:
    probe = Probe()
    async with running(make_app(probe)) as port:
        with anyio.fail_after(5):
            s = await anyio.connect_tcp("127.0.0.1", port)
            await s.send(b"PUT /upload-watch HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
            await s.send(b"u" * 50_000)
            while probe.received < 50_000:
                await anyio.sleep(0.01)
            await s.aclose()
            await probe.disconnected.wait()
            while not probe.cancelled:
                await anyio.sleep(0.01)


async def test_app_errors() -> None:
    async with running(make_app(Probe())) as port:
        raw = await raw_exchange(port, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n"
                                       b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert [r[0] for r in split_responses(raw)] == [500, 200]
        # a body that fails mid-stream: the connection is cut, no terminating chunk
        raw = await raw_exchange(port, b"GET /boom-stream HTTP/1.1\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200") and b"partial" in raw and not raw.endswith(b"0\r\n\r\n")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_file_body_to_a_slow_reader_keeps_order_and_keep_alive(tmp_path: Path) -> None:
    # The kernel's send buffer fills while sendfile runs: the rest must follow in order (on
    # asyncio through the loop's transport, on trio by waiting for the socket), and the next
    # request on the connection must still be answered.
    blob = os.urandom(2 * MiB)
    (tmp_path / "f.bin").write_bytes(blob)
    request = b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n"
    async with running(make_app(Probe(), tmp_path / "f.bin")) as port:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        sock.setblocking(False)
        try:
            with anyio.fail_after(30):
                try:
                    sock.connect(("127.0.0.1", port))
                except BlockingIOError:
                    await anyio.wait_writable(sock)
                sock.send(request + request)
                raw = b""
                want = 2 * len(blob) + 200  # two heads of over 100 bytes each
                while len(raw) < want:
                    await anyio.wait_readable(sock)
                    try:
                        piece = sock.recv(8 * KiB)
                    except BlockingIOError:
                        continue
                    assert piece, f"the server closed the connection after {len(raw)} bytes"
                    raw += piece
                    if len(raw) < 512 * KiB:
                        await anyio.sleep(0.001)  # slow at first: the send buffer fills
        finally:
            sock.close()
        responses = split_responses(raw)
        assert [r[0] for r in responses] == [200, 200]
        assert responses[0][2] == blob and responses[1][2] == blob


async def test_streaming_upload_64mib_keeps_rss_flat() -> None:
    probe = Probe()
    size = 64 * MiB
    block = os.urandom(MiB)
    expected = hashlib.sha256()
    for _ in range(64):
        expected.update(block)
    async with running(make_app(probe)) as port:
        base = _rss_bytes()
        peak = base
        with anyio.fail_after(30):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(b"PUT /hash HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(64):
                    await s.send(block)
                    peak = max(peak, _rss_bytes())
                out = b""
                while not out.endswith(expected.hexdigest().encode()):
                    out += await s.receive()
        assert out.startswith(b"HTTP/1.1 200")
        assert probe.received == size
        assert peak - base < 24 * MiB, f"RSS grew by {(peak - base) / MiB:.1f} MiB"


async def test_reuse_port_two_listeners() -> None:
    from headwater.http import bind_socket
    a = bind_socket("127.0.0.1", 0, reuse_port=True)
    port = a.getsockname()[1]
    b = bind_socket("127.0.0.1", port, reuse_port=True)
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve(make_app(Probe()), sock=a, task_status=task_status))
        await tg.start(lambda task_status: serve(make_app(Probe()), sock=b, task_status=task_status))
        async with httpx.AsyncClient() as c:
            for _ in range(4):
                r = await c.get(f"http://127.0.0.1:{port}/hello", headers={"connection": "close"})
                assert r.text == "hello GET"
        tg.cancel_scope.cancel()


async def test_cancelling_serve_closes_connections() -> None:
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve(make_app(Probe()), task_status=task_status))
        s = await anyio.connect_tcp("127.0.0.1", port)
        await s.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await s.receive()).startswith(b"HTTP/1.1 200")
        tg.cancel_scope.cancel()
    with anyio.fail_after(2):
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await s.receive()
    await s.aclose()
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", port)


# --- HTTP/2 ------------------------------------------------------------------------------------

async def test_httpx_http2_prior_knowledge(tmp_path: Path) -> None:
    blob = os.urandom(200 * KiB)
    (tmp_path / "f.bin").write_bytes(blob)
    async with running(make_app(Probe(), tmp_path / "f.bin")) as port:
        async with httpx.AsyncClient(http1=False, http2=True, base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.get("/hello")
            assert r.http_version == "HTTP/2" and r.text == "hello GET"
            r = await c.get("/info?q=1")
            assert r.json()["version"] == "2" and r.json()["query"] == "q=1"
            data = os.urandom(3 * MiB)  # beyond every initial window: flow control both ways
            r = await c.put("/hash", content=data)
            assert r.text == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
            r = await c.post("/echo", content=data)
            assert r.content == data
            r = await c.get("/file")
            assert r.content == blob
            r = await c.get("/big?n=5000000")
            assert len(r.content) == 5_000_000
            r = await c.get("/boom")
            assert r.status_code == 500
            r = await c.head("/hello")
            assert r.status_code == 200 and r.content == b""

            async def one(i: int, results: list) -> None:
                r = await c.get(f"/stream?n={i}")
                results.append(r.text == "".join(f"{k}\n" for k in range(i)))
            results: list[bool] = []
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(one, i, results)
            assert results == [True] * 40


@pytest.mark.skipif(CURL is None, reason="curl not installed")
async def test_curl_http2_prior_knowledge(tmp_path: Path) -> None:
    data = os.urandom(MiB)
    (tmp_path / "up.bin").write_bytes(data)
    async with running(make_app(Probe())) as port:
        base = f"http://127.0.0.1:{port}"
        # one URL per run: curl 7.88 cannot reuse a prior-knowledge connection (curl#10634)
        r = await anyio.run_process([CURL, "-sS", "--http2-prior-knowledge", "-w", "|%{http_version}",
                                     "-T", str(tmp_path / "up.bin"), f"{base}/hash"])
        assert r.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}|2"
        r = await anyio.run_process([CURL, "-sS", "--http2-prior-knowledge", "-w", "|%{http_version}",
                                     f"{base}/stream?n=5000"])
        assert r.stdout.decode() == "".join(f"{i}\n" for i in range(5000)) + "|2"



async def test_http2_limits_and_reset() -> None:
    import h2.config
    import h2.connection
    import h2.events
    probe = Probe()
    limits = HttpLimits(max_concurrent_streams=7, max_body_bytes=100 * KiB)
    async with running(make_app(probe), limits=limits) as port:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                await s.send(conn.data_to_send())
                events: list = []

                async def pump_until(pred) -> None:
                    while not pred():
                        data = await s.receive()
                        events.extend(conn.receive_data(data))
                        out = conn.data_to_send()
                        if out:
                            await s.send(out)
                await pump_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
                settings = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)][0]
                assert settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7

                def headers(method: str, path: str, extra=()):
                    return [(":method", method), (":path", path), (":scheme", "http"),
                            (":authority", "a"), *extra]
                # declared body over the limit: 413 without calling the app
                conn.send_headers(1, headers("PUT", "/hash", [("content-length", "200000")]))
                await s.send(conn.data_to_send())
                await pump_until(lambda: any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == 1
                                             for e in events))
                resp = [e for e in events if isinstance(e, h2.events.ResponseReceived)][0]
                assert dict(resp.headers)[b":status"] == b"413"
                # reset mid-upload: the app's receive raises ClientDisconnected and it is cancelled
                conn.send_headers(3, headers("PUT", "/upload-watch"))
                conn.send_data(3, b"x" * 1000)
                await s.send(conn.data_to_send())
                while probe.received < 1000:
                    await anyio.sleep(0.01)
                conn.reset_stream(3)
                await s.send(conn.data_to_send())
                await probe.disconnected.wait()
                while not probe.cancelled:
                    await anyio.sleep(0.01)
                # the connection still works
                conn.send_headers(5, headers("GET", "/hello"), end_stream=True)
                await s.send(conn.data_to_send())
                await pump_until(lambda: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 5
                                             for e in events))
                body = b"".join(e.data for e in events
                                if isinstance(e, h2.events.DataReceived) and e.stream_id == 5)
                assert body == b"hello GET"
                # an upload of unknown length the app does not read: full answer, then
                # RST_STREAM(NO_ERROR) stops it (a declared rest under H2_DRAIN_MAX_BYTES is let in)
                conn.send_headers(7, headers("PUT", "/ignore"))
                conn.send_data(7, b"i" * 1000)
                await s.send(conn.data_to_send())
                await pump_until(lambda: any(isinstance(e, h2.events.StreamReset) and e.stream_id == 7
                                             for e in events))
                mine = [e for e in events if getattr(e, "stream_id", None) == 7]
                assert [type(e).__name__ for e in mine] == [
                    "ResponseReceived", "DataReceived", "StreamEnded", "StreamReset"]
                assert mine[-1].error_code == 0 and mine[1].data == b"no thanks"


async def test_http2_large_bodies_to_a_late_reader_arrive_whole_and_in_order() -> None:
    # DATA frames go out as [header, view of the body] pieces in gathering writes (sendmsg on
    # trio, the loop transport's writelines on asyncio): a client that reads only once the
    # socket buffers are full sees partial writes, and must still get every byte of both
    # streams, in frames no larger than its SETTINGS_MAX_FRAME_SIZE.
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    bodies = {"/a": os.urandom(3 * MiB), "/b": bytearray(os.urandom(MiB + 12345))}

    async def app(req: Request) -> Response:
        return Response(200, [], bodies[req.path])
    async with running(app) as port:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
                conn.increment_flow_control_window(2**31 - 1 - 65535)
                for sid, path in ((1, "/a"), (3, "/b")):
                    conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                            (":authority", "a")], end_stream=True)
                await s.send(conn.data_to_send())
                await anyio.sleep(0.3)  # the server fills the socket buffers meanwhile
                got = {1: bytearray(), 3: bytearray()}
                ended: set[int] = set()
                while ended != {1, 3}:
                    for e in conn.receive_data(await s.receive()):
                        if isinstance(e, h2.events.DataReceived):
                            assert len(e.data) <= 16384
                            got[e.stream_id] += e.data
                            conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                        elif isinstance(e, h2.events.StreamEnded):
                            ended.add(e.stream_id)
                    out = conn.data_to_send()
                    if out:
                        await s.send(out)
                assert got[1] == bodies["/a"] and got[3] == bodies["/b"]


async def test_http2_goaway_on_shutdown() -> None:
    import h2.config
    import h2.connection
    import h2.events
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve(make_app(Probe()), task_status=task_status))
        s = await anyio.connect_tcp("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        await s.send(conn.data_to_send())
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    events = []
    with anyio.fail_after(3):
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                events += conn.receive_data(await s.receive())
    await s.aclose()
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)


# --- TLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.mark.skipif(CURL is None, reason="curl not installed")
async def test_tls_alpn_h2_and_http11(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls_files
    blob = os.urandom(100 * KiB)
    (tmp_path / "f.bin").write_bytes(blob)
    ctx = server_ssl_context(cert, key)
    async with running(make_app(Probe(), tmp_path / "f.bin"), ssl_context=ctx) as port:
        base = f"https://127.0.0.1:{port}"
        r = await anyio.run_process([CURL, "-sS", "--cacert", str(cert), "--http2", "-w", "|%{http_version}",
                                     f"{base}/hello", f"{base}/info"])
        first, second = r.stdout.decode().split("|2", 1)
        assert first == "hello GET" and json.loads(second[:-2])["scheme"] == "https"
        r = await anyio.run_process([CURL, "-sS", "--cacert", str(cert), "--http1.1", "-w", "|%{http_version}",
                                     f"{base}/hello"])
        assert r.stdout == b"hello GET|1.1"
        client_ctx = ssl.create_default_context(cafile=str(cert))
        for http2 in (False, True):
            async with httpx.AsyncClient(verify=client_ctx, http2=http2) as c:
                r = await c.get(f"{base}/file")
                assert r.content == blob
                assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                r = await c.put(f"{base}/hash", content=blob)
                assert r.text == f"{len(blob)} {hashlib.sha256(blob).hexdigest()}"


async def test_http2_tls_many_large_streams_through_small_windows(tls_files: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """Many concurrent large responses over one TLS connection whose client gives 16 KiB
    stream windows and the default 64 KiB connection window: the connection window binds, is
    handed from stream to stream, and every stream finishes intact, also when some are reset
    while they wait for it (a reset stream passes on a window it was woken for)."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    cert, key = tls_files
    blob = os.urandom(256 * KiB)
    (tmp_path / "f.bin").write_bytes(blob)
    n_streams, reset_every = 48, 8
    # A stream left waiting for a window it is never handed is reset after send_timeout_s.
    limits = HttpLimits(send_timeout_s=5)
    async with running(make_app(Probe(), tmp_path / "f.bin"), ssl_context=server_ssl_context(cert, key),
                       limits=limits) as port:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        client_ctx.set_alpn_protocols(["h2"])
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", port, ssl_context=client_ctx,
                                               tls_standard_compatible=False) as s:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.local_settings = h2.settings.Settings(client=True, initial_values={
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16 * KiB})
                conn.initiate_connection()
                sids = []
                for _ in range(n_streams):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, [(":method", "GET"), (":path", "/file"), (":scheme", "https"),
                                            (":authority", "localhost")], end_stream=True)
                    sids.append(sid)
                await s.send(conn.data_to_send())
                bodies: dict[int, list[bytes]] = {sid: [] for sid in sids}
                resets = set(sids[::reset_every])
                ended: set[int] = set()
                while len(ended) < n_streams:
                    for ev in conn.receive_data(await s.receive()):
                        if isinstance(ev, h2.events.DataReceived):
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                            if ev.stream_id in ended:
                                continue
                            bodies[ev.stream_id].append(ev.data)
                            if ev.stream_id in resets and sum(map(len, bodies[ev.stream_id])) >= 64 * KiB:
                                conn.reset_stream(ev.stream_id)
                                ended.add(ev.stream_id)
                        elif isinstance(ev, h2.events.StreamEnded):
                            ended.add(ev.stream_id)
                        elif isinstance(ev, h2.events.StreamReset):
                            assert ev.stream_id in resets, f"the server reset stream {ev.stream_id}"
                            ended.add(ev.stream_id)
                    out = conn.data_to_send()
                    if out:
                        await s.send(out)
    for sid in sids:
        if sid not in resets:
            assert b"".join(bodies[sid]) == blob, f"stream {sid}"
