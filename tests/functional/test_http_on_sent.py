"""``Response.on_sent``: the core tells the app when an answer's last byte was handed on (True)
or that it never will be (False: the client left, the stream was reset), once per response, on
every path: HTTP/1.1 and HTTP/2 (h2c), bytes, streamed and answered at once, both backends.
The edge's access line (time-taken) stands on it.
"""

from __future__ import annotations

import socket
import struct
from typing import AsyncIterator

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from headwater.http import Request, Response, serve

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CHUNK = b"x" * 65536
LONG_CHUNKS = 256  # 16 MiB: more than a loopback socket's send buffer grows to (4 MiB)


class HookedApp:
    """Every answer carries an on_sent hook that records (path, sent)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, bool]] = []
        self.reported = anyio.Event()

    def _hook(self, path: str):
        def on_sent(sent: bool) -> None:
            self.reports.append((path, sent))
            self.reported.set()
        return on_sent

    def answer_now(self, request: Request) -> Response | None:
        if request.path != "/now":
            return None
        return Response(200, [("content-type", "text/plain")], b"now", on_sent=self._hook("/now"))

    async def __call__(self, request: Request) -> Response:
        if request.path == "/now":  # (where the core does not ask answer_now first: trio)
            answer = self.answer_now(request)
            assert answer is not None
            return answer
        if request.path == "/long":
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(LONG_CHUNKS):
                    yield CHUNK
            return Response(200, [("content-length", str(len(CHUNK) * LONG_CHUNKS))], chunks(),
                            on_sent=self._hook("/long"))
        if request.path == "/stream":
            async def few() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield CHUNK
            return Response(200, [], few(), on_sent=self._hook("/stream"))
        return Response(200, [("content-type", "text/plain")], b"small", on_sent=self._hook(request.path))

    async def wait_for(self, n: int) -> list[tuple[str, bool]]:
        with anyio.fail_after(10):
            while len(self.reports) < n:
                self.reported = anyio.Event()
                await self.reported.wait()
        return self.reports


async def _serving(tg: anyio.abc.TaskGroup, app: HookedApp) -> int:
    return await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=0, task_status=task_status))


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2c"])
async def test_each_answer_read_whole_reports_sent_once(http2: bool) -> None:
    app = HookedApp()
    async with anyio.create_task_group() as tg:
        port = await _serving(tg, app)
        async with httpx.AsyncClient(http1=not http2, http2=http2, trust_env=False) as c:
            for path, size in (("/small", 5), ("/now", 3), ("/stream", 4 * len(CHUNK)),
                               ("/long", LONG_CHUNKS * len(CHUNK)), ("/now", 3)):
                r = await c.get(f"http://127.0.0.1:{port}{path}")
                assert r.status_code == 200 and len(r.content) == size
        reports = await app.wait_for(5)
        await anyio.sleep(0.1)  # (nothing more comes: once per response)
        assert sorted(reports) == sorted([("/small", True), ("/now", True), ("/stream", True),
                                          ("/long", True), ("/now", True)])
        tg.cancel_scope.cancel()


async def test_an_http1_client_that_leaves_mid_body_is_reported_not_sent() -> None:
    app = HookedApp()
    async with anyio.create_task_group() as tg:
        port = await _serving(tg, app)

        def leave() -> None:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /long HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(12).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            s.close()

        await anyio.to_thread.run_sync(leave)
        assert await app.wait_for(1) == [("/long", False)]
        tg.cancel_scope.cancel()


async def test_an_h2_stream_reset_mid_body_is_reported_not_sent_and_its_neighbour_sent() -> None:
    app = HookedApp()
    async with anyio.create_task_group() as tg:
        port = await _serving(tg, app)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            long_sid, small_sid = 1, 3
            for sid, path in ((long_sid, "/long"), (small_sid, "/small")):
                client.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                          (":authority", "t")], end_stream=True)
            await s.send(client.data_to_send())
            reset = small_done = False
            with anyio.fail_after(10):
                while not (reset and small_done):
                    for e in client.receive_data(await s.receive()):
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == long_sid and not reset:
                            client.reset_stream(long_sid)  # (its window is never opened: it stalls)
                            reset = True
                        if isinstance(e, h2.events.StreamEnded) and e.stream_id == small_sid:
                            small_done = True
                    await s.send(client.data_to_send())
            assert sorted(await app.wait_for(2)) == [("/long", False), ("/small", True)]
        tg.cancel_scope.cancel()
