"""The HTTP core's connection hooks (``serve(on_connection=..., on_disconnect=...)``) over real
sockets, on both anyio backends: a refused peer is closed before a byte is read and never reaches
the app; every accepted connection is reported closed exactly once."""

from __future__ import annotations

import socket

import anyio
import pytest

from headwater.http import Request, Response, serve

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def _exchange(port: int, source: str) -> bytes:
    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=5) as s:
            try:
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                out = b""
                while chunk := s.recv(4096):
                    out += chunk
                return out
            except ConnectionResetError:
                return b""
    return await anyio.to_thread.run_sync(run)


async def test_on_connection_refuses_before_the_app_and_on_disconnect_pairs_each_accept():
    seen: list[str] = []
    closed: list[str] = []
    calls = 0

    async def app(request: Request) -> Response:
        nonlocal calls
        calls += 1
        return Response(200, [], b"hi " + request.client[0].encode())

    def on_connection(peer):
        seen.append(peer[0])
        return peer[0] != "127.0.0.66"

    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve(app, port=0, on_connection=on_connection,
                                                        on_disconnect=lambda peer: closed.append(peer[0]),
                                                        task_status=task_status))
        ok = await _exchange(port, "127.0.0.65")
        refused = await _exchange(port, "127.0.0.66")
        with anyio.fail_after(5):
            while len(closed) < 1:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"hi 127.0.0.65")
    assert refused == b""
    assert seen == ["127.0.0.65", "127.0.0.66"] and closed == ["127.0.0.65"] and calls == 1
