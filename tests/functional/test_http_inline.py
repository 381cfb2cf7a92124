"""HTTP/1.1 answers given inline: an app with ``answer_now`` (the edge's warm hits) has a lone
request without a body answered from the loop's read callback (asyncio's loop transport), and
every byte on the wire is what the connection's task would have written for it; anything else
still goes through the task. On trio there is no inline path: the same exchanges, the task's.

Every test runs on both anyio backends.
"""

from __future__ import annotations

import anyio
import pytest
import sniffio

from headwater.http import Request, Response, serve

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

BODY = b"n" * 1500


class NowApp:
    """Answers /now and /close at once (``answer_now``) and the rest when awaited; counts both."""

    def __init__(self) -> None:
        self.now = 0  # answers given by answer_now
        self.awaited = 0  # answers given by __call__

    def answer_now(self, request: Request) -> Response | None:
        if request.path == "/boom":
            raise ValueError("boom")
        if request.path == "/close":
            self.now += 1
            return Response(200, [("connection", "close")], b"bye")
        if request.path != "/now":
            return None
        self.now += 1
        return Response(200, [("content-type", "text/plain"), ("x-seen", request.headers.get("x-n", "-"))],
                        BODY)  # (no body bytes for a HEAD: the core leaves them out)

    async def __call__(self, request: Request) -> Response:
        self.awaited += 1
        self.last = (request.method, request.target, request.headers.get("x-n"))
        if request.path == "/boom":
            raise ValueError("boom")
        if request.path == "/close":
            return Response(200, [("connection", "close")], b"bye")
        if request.path == "/now":
            body = BODY
            if request.method == "POST":
                body = await request.body.read_all(1 << 20)
            return Response(200, [("content-type", "text/plain"), ("x-seen", request.headers.get("x-n", "-"))],
                            body)
        return Response(404, [], b"no")


def _inline() -> bool:
    return sniffio.current_async_library() == "asyncio"


async def _serve(app: NowApp, task_status: anyio.abc.TaskStatus[int]) -> None:
    await serve(app, host="127.0.0.1", port=0, task_status=task_status)


class Wire:
    """One raw keep-alive connection: send bytes, read whole responses."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.s = stream
        self.buf = b""

    async def response(self, head_only: bool = False) -> tuple[bytes, bytes]:
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in self.buf:
                self.buf += await self.s.receive()
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length" and not head_only:
                    length = int(value)
            while len(rest) < length:
                rest += await self.s.receive()
            self.buf = rest[length:]
            return head, rest[:length]

    async def closed(self) -> bool:
        with anyio.fail_after(5):
            try:
                return not self.buf and not await self.s.receive()
            except anyio.EndOfStream:
                return True


def _without_date(head: bytes) -> bytes:
    return b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"date:"))


async def test_inline_answers_are_the_tasks_bytes() -> None:
    app = NowApp()
    async with anyio.create_task_group() as tg:
        port = await tg.start(_serve, app)
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            w = Wire(s)
            # The first request arrives before the shell waits: the task answers it.
            await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\nX-N: 0\r\n\r\n")
            first = await w.response()
            assert (app.awaited, app.now) == (1, 0)
            for n in range(1, 4):
                await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\nX-N: %d\r\n\r\n" % n)
                head, body = await w.response()
                assert body == BODY and _without_date(head) == _without_date(first[0]).replace(
                    b"x-seen: 0", b"x-seen: %d" % n)
            assert (app.awaited, app.now) == ((1, 3) if _inline() else (4, 0))
            # HEAD: the fields, no body.
            await s.send(b"HEAD /now HTTP/1.1\r\nHost: a\r\n\r\n")
            head, _ = await w.response(head_only=True)
            assert b"content-length: 1500" in head
            await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await w.response())[1] == BODY  # (nothing was left behind by the HEAD)
            # A head in two pieces, a request with a body, two pipelined at once: the task's.
            now = app.now
            await s.send(b"GET /now HTTP/1.1\r\nHo")
            await anyio.sleep(0.05)
            await s.send(b"st: a\r\n\r\n")
            assert (await w.response())[1] == BODY
            await s.send(b"POST /now HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            assert (await w.response())[1] == b"abc"
            await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\nX-N: 7\r\n\r\n"
                         b"GET /now HTTP/1.1\r\nHost: a\r\nX-N: 8\r\n\r\n")
            assert [b"x-seen: 7" in (await w.response())[0], b"x-seen: 8" in (await w.response())[0]] == [True, True]
            assert app.now == now  # none of them answered inline
            # answer_now declines: __call__ answers, once.
            awaited = app.awaited
            for n in (1, 2):  # (__call__ sees each request as sent: the offered one, reused)
                await s.send(b"GET /other?%d HTTP/1.1\r\nHost: a\r\nX-N: %d\r\n\r\n" % (n, n))
                assert (await w.response())[0].startswith(b"HTTP/1.1 404 ")
                assert app.last == ("GET", f"/other?{n}", str(n))
            assert app.awaited == awaited + 2
            # answer_now fails: a 500, as when __call__ fails, and the connection goes on.
            await s.send(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await w.response())[0].startswith(b"HTTP/1.1 500 ")
            await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await w.response())[1] == BODY
            # A response that closes the connection: sent whole, then the connection ends.
            await s.send(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
            head, body = await w.response()
            assert b"connection: close" in head and body == b"bye"
            assert await w.closed()
        tg.cancel_scope.cancel()


async def test_a_request_that_closes_is_left_to_the_task() -> None:
    """Connection: close and HTTP/1.0 requests are not lone keep-alive requests: the task answers
    them and closes."""
    app = NowApp()
    async with anyio.create_task_group() as tg:
        port = await tg.start(_serve, app)
        for last in (b"GET /now HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                     b"GET /now HTTP/1.0\r\n\r\n"):
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                w = Wire(s)
                await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\n\r\n")
                await w.response()
                await s.send(last)
                head, body = await w.response()
                assert body == BODY and b"connection: close" in head
                assert await w.closed()
        assert app.now == 0
        tg.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_is_answered_no_further() -> None:
    """Inline answers stop while the transport's buffer is over its high-water mark: a peer that
    sends requests without reading the answers is then read no faster than the task writes."""
    app = NowApp()
    async with anyio.create_task_group() as tg:
        port = await tg.start(_serve, app)
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            w = Wire(s)
            await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\n\r\n")
            await w.response()
            request = b"GET /now HTTP/1.1\r\nHost: a\r\n\r\n"
            with anyio.move_on_after(2):
                for _ in range(20_000):  # 30 MB of answers, never read
                    await s.send(request)
            # Wait until the count holds still for 0.5 s (a loaded machine may still be working
            # through what it had read when the sends stopped), then check it stays so.
            answered = -1
            with anyio.fail_after(10):
                while answered != app.now + app.awaited:
                    answered = app.now + app.awaited
                    await anyio.sleep(0.5)
            await anyio.sleep(0.5)
            # The server stopped taking requests it could not answer (and stays stopped).
            assert app.now + app.awaited == answered < 20_000
            # ... and the answers it gave arrive whole, in order, once read.
            for _ in range(answered - 1):
                assert (await w.response())[1] == BODY
        tg.cancel_scope.cancel()


async def test_inline_answers_restart_the_idle_timeout() -> None:
    """Each answer restarts idle_timeout_s (as the task's next wait would): a client asking more
    often than that keeps its connection however long it stays, and loses it once it stops."""
    from headwater.config import HttpLimits

    app = NowApp()
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=0, task_status=task_status,
                                                        limits=HttpLimits(idle_timeout_s=0.6)))
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            w = Wire(s)
            for _ in range(6):  # 1.8 s in all, 0.3 s apart
                await s.send(b"GET /now HTTP/1.1\r\nHost: a\r\n\r\n")
                assert (await w.response())[1] == BODY
                await anyio.sleep(0.3)
            with anyio.fail_after(3):
                assert await w.closed()
        assert app.now == (5 if _inline() else 0)
        tg.cancel_scope.cancel()
