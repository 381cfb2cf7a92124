"""headwater.http.client over real sockets: the keep-alive pool against the core's server (which
closes idle connections) and against raw servers that misbehave on purpose; TLS with a CA file.
Every test runs on both anyio backends (asyncio on uvloop, and trio).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
import pytest

from headwater.clock import FakeClock
from headwater.config import HttpLimits, KiB
from headwater.http import Request, Response, serve, server_ssl_context
from headwater.http.client import ClientSettings, HttpClient, client_ssl_context
from headwater.http.errors import BadResponse, ConnectFailed, ResponseTimeout

from tests.cluster import free_ports

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

BIG = bytes(range(256)) * 1024  # 256 KiB


async def app(request: Request) -> Response:
    if request.path == "/big":
        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(BIG), 32 * KiB):
                yield BIG[i:i + 32 * KiB]
        return Response(200, [], pieces())  # chunked
    return Response(200, [("content-type", "text/plain")], b"hello " + request.path.encode())


def free_port() -> int:
    return free_ports(1)[0]


async def body_of(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.chunks()])


async def test_pool_reuses_connections_and_survives_a_server_closing_idle_ones() -> None:
    port = free_port()
    limits = HttpLimits(idle_timeout_s=0.3)  # the server drops a keep-alive connection idle this long
    client = HttpClient(ClientSettings(max_idle_per_origin=2))
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=port, limits=limits,
                                                 task_status=task_status))
        tg.start_soon(client.run)
        base = f"http://127.0.0.1:{port}"
        for i in range(5):
            r = await client.request("GET", f"{base}/a{i}", [("host", "t")])
            assert r.status == 200 and await body_of(r) == f"hello /a{i}".encode()
            await r.aclose()
        assert (client.statistics().connects, client.statistics().reuses) == (1, 4)
        r = await client.request("GET", f"{base}/big", [("host", "t")])
        assert r.chunked and await body_of(r) == BIG
        await r.aclose()

        await anyio.sleep(0.8)  # the server has closed the pooled connection meanwhile
        r = await client.request("GET", f"{base}/after", [("host", "t")])
        assert await body_of(r) == b"hello /after"
        await r.aclose()
        stats = client.statistics()
        assert stats.connects == 2 and stats.dropped_idle + stats.retries == 1

        # Bounded idle: 5 at once, then at most max_idle_per_origin kept.
        responses = []

        async def one(i: int) -> None:
            resp = await client.request("GET", f"{base}/p{i}", [("host", "t")])
            responses.append(await body_of(resp))
            await resp.aclose()

        async with anyio.create_task_group() as burst:
            for i in range(5):
                burst.start_soon(one, i)
        assert sorted(responses) == sorted(f"hello /p{i}".encode() for i in range(5))
        assert client.statistics().idle == 2 and client.statistics().active == 0
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_connections_idle_longer_than_the_idle_timeout_are_not_reused() -> None:
    port = free_port()
    clock = FakeClock()
    client = HttpClient(ClientSettings(idle_timeout_s=5.0), clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=port, task_status=task_status))
        url = f"http://127.0.0.1:{port}/x"
        for advance, connects in ((0, 1), (4.0, 1), (5.5, 2)):
            clock.advance(advance)
            r = await client.request("GET", url, [("host", "t")])
            assert await body_of(r) == b"hello /x"
            assert client.statistics().connects == connects
        assert client.statistics().dropped_idle == 1
        await client.aclose()
        tg.cancel_scope.cancel()


Handler = Callable[[anyio.abc.SocketStream, int], Awaitable[None]]


async def raw_server(tg: anyio.abc.TaskGroup, handler: Handler) -> int:
    """A listener handing each connection (and its number) to ``handler``."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    count = 0

    async def serve_one(stream: anyio.abc.SocketStream) -> None:
        nonlocal count
        count += 1
        async with stream:
            try:
                await handler(stream, count)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    tg.start_soon(listener.serve, serve_one)
    return listener.extra(anyio.abc.SocketAttribute.local_port)


async def read_request(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    return data


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_stale_connection_is_retried_once_on_a_fresh_one_for_idempotent_requests() -> None:
    # The first connection answers one request, then takes the next one and closes without a
    # byte (the race of a server closing an idle connection as the request arrives).
    async def handler(stream: anyio.abc.SocketStream, n: int) -> None:
        await read_request(stream)
        await stream.send(OK)
        if n in (1, 3):
            await read_request(stream)
            return
        while True:
            await read_request(stream)
            await stream.send(OK)

    async with anyio.create_task_group() as tg:
        port = await raw_server(tg, handler)
        client = HttpClient()
        url = f"http://127.0.0.1:{port}/"
        for _ in range(2):
            r = await client.request("GET", url, [("host", "t")])
            assert await body_of(r) == b"ok"
        assert (client.statistics().connects, client.statistics().retries) == (2, 1)

        # Not for a POST: it may have been acted on.
        client2 = HttpClient()
        r = await client2.request("GET", url, [("host", "t")])  # connection 3: answers one, then drops
        await body_of(r)
        with pytest.raises(ConnectFailed):
            await client2.request("POST", url, [("host", "t")], body=b"x")
        assert client2.statistics().retries == 0
        await client.aclose()
        await client2.aclose()
        tg.cancel_scope.cancel()


async def test_short_and_long_bodies_are_broken_and_never_reused() -> None:
    responses = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok and more",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"]

    async def handler(stream: anyio.abc.SocketStream, n: int) -> None:
        await read_request(stream)
        await stream.send(responses[n - 1] if n <= len(responses) else OK)

    async with anyio.create_task_group() as tg:
        port = await raw_server(tg, handler)
        client = HttpClient()
        for _ in responses:
            r = await client.request("GET", f"http://127.0.0.1:{port}/", [("host", "t")])
            with pytest.raises(BadResponse):
                await body_of(r)
            await r.aclose()
        assert client.statistics().connects == 3 and client.statistics().idle == 0
        await client.aclose()
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("watchdog", [True, False], ids=["watchdog", "cancel-scope"])
async def test_read_timeouts_before_the_head_and_mid_body(watchdog: bool) -> None:
    async def handler(stream: anyio.abc.SocketStream, n: int) -> None:
        await read_request(stream)
        if n == 2:
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        await anyio.sleep(30)

    async with anyio.create_task_group() as tg:
        port = await raw_server(tg, handler)
        client = HttpClient(ClientSettings(read_timeout_s=0.3))
        if watchdog:
            tg.start_soon(client.run)
        url = f"http://127.0.0.1:{port}/"
        started = time.monotonic()
        with pytest.raises(ResponseTimeout):
            await client.request("GET", url, [("host", "t")])
        assert 0.25 < time.monotonic() - started < 2
        r = await client.request("GET", url, [("host", "t")])
        assert await r.receive() == b"hel"
        with pytest.raises(ResponseTimeout):
            await r.receive()
        await r.aclose()
        with pytest.raises(ConnectFailed):  # nothing listens there
            await client.request("GET", f"http://127.0.0.1:{free_port()}/", [("host", "t")])
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_the_body_streams_as_it_arrives() -> None:
    gate = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream, n: int) -> None:
        await read_request(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        await gate.wait()
        await stream.send(b"-last")

    async with anyio.create_task_group() as tg:
        port = await raw_server(tg, handler)
        client = HttpClient()
        r = await client.request("GET", f"http://127.0.0.1:{port}/", [("host", "t")])
        assert await r.receive() == b"first"  # before the rest is even sent
        gate.set()
        assert await r.receive() == b"-last" and await r.receive() == b""
        await client.aclose()
        tg.cancel_scope.cancel()


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


async def test_https_with_a_configured_ca_file_and_refused_without_it(tls_files) -> None:
    cert, key = tls_files
    port = free_port()
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=port,
                                                 ssl_context=server_ssl_context(cert, key), task_status=task_status))
        client = HttpClient(ssl_context=client_ssl_context(cert))
        tg.start_soon(client.run)
        for host in ("localhost", "127.0.0.1"):
            for path in ("/x", "/big"):
                r = await client.request("GET", f"https://{host}:{port}{path}", [("host", host)])
                assert await body_of(r) == (BIG if path == "/big" else b"hello /x")
        assert client.statistics().connects == 2  # one per origin name, reused
        untrusting = HttpClient()  # the system's CAs only: the self-signed certificate is refused
        with pytest.raises(ConnectFailed):
            await untrusting.request("GET", f"https://localhost:{port}/x", [("host", "localhost")])
        await client.aclose()
        await untrusting.aclose()
        tg.cancel_scope.cancel()
