"""PipeBuffer and PipeSpan over real sockets: a payload spliced in from one socket and taken out
in order, as spans sent on with splice or read into memory, gaps and cut-offs skipped."""

from __future__ import annotations

import os
import socket

import pytest

from headwater import splice
from headwater.splice import PIPE_FILL_BYTES, PipeBuffer, PipeSpan

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice is Linux only")


def _filled(payload: bytes, *, early: int = 0, family: int = socket.AF_UNIX) -> PipeBuffer:
    """A PipeBuffer holding ``payload``: ``early`` bytes written in, the rest spliced from a socket."""
    a, b = _pair(family)
    try:
        b.setblocking(False)
        buf = PipeBuffer(len(payload))
        if early:
            buf.write(payload[:early])
        view = memoryview(payload)
        pos = early
        while not buf.complete:
            if pos < len(payload):
                try:
                    pos += a.send(view[pos:pos + 65536], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            try:
                assert buf.fill_from(b.fileno()) > 0
            except BlockingIOError:
                continue
        return buf
    finally:
        a.close()
        b.close()


def _pair(family: int) -> tuple[socket.socket, socket.socket]:
    if family == socket.AF_UNIX:
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        return a, b


def _drain_spliced(span: PipeSpan) -> bytes:
    a, b = _pair(socket.AF_INET)  # as the gateway's client socket
    try:
        a.setblocking(False)
        got = bytearray()
        while span.remaining:
            try:
                span.splice_to(a.fileno())
            except BlockingIOError:
                pass
            got += b.recv(1 << 20, socket.MSG_DONTWAIT) if _pending(b) else b""
        a.shutdown(socket.SHUT_WR)
        while chunk := b.recv(1 << 20):
            got += chunk
        return bytes(got)
    finally:
        a.close()
        b.close()


def _pending(s: socket.socket) -> bool:
    try:
        return bool(s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def test_blocks_with_gaps_are_taken_in_order_spliced_or_read():
    payload = os.urandom(3 * PIPE_FILL_BYTES + 12345)  # more than one pipe's share
    buf = _filled(payload, early=5000)
    stride, n = 260_000, 250_000  # 10 KB of gap after each block; pipes change inside blocks 1 and 2
    spans = [PipeSpan(buf, j * stride, n) for j in range(3)]
    assert _drain_spliced(spans[0]) == payload[:n]
    assert bytes(spans[1][10:-10]) == payload[stride + 10:stride + n - 10]  # a cut-off span
    assert _drain_spliced(spans[2]) == payload[2 * stride:2 * stride + n]
    assert buf.taken == 2 * stride + n
    with pytest.raises(ValueError):
        bytes(spans[0])  # taking backwards is refused
    buf.close()


def test_a_payload_over_tcp_fills_and_reads_whole():
    payload = os.urandom(PIPE_FILL_BYTES * 2 + 1)
    buf = _filled(payload, family=socket.AF_INET)
    assert bytes(PipeSpan(buf, 0, len(payload))) == payload
    buf.close()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["socket", "protocol"])
async def test_a_transport_splices_a_span_after_its_head_to_a_slow_reader(kind, anyio_backend_name):
    """Both HTTP transports: the head first, then the span's bytes, through a small send buffer
    that keeps filling (the wait for writability: on a loop transport's duplicate descriptor)."""
    import anyio

    if kind == "protocol" and anyio_backend_name != "asyncio":
        pytest.skip("the loop's transports are asyncio's")

    from headwater.http.protocol_stream import open_protocol_stream
    from headwater.http.transport import SocketStream

    payload = os.urandom(2 * PIPE_FILL_BYTES + 999)
    buf = _filled(payload)
    n = len(payload) - 2000
    a, b = _pair(socket.AF_INET)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    b.setblocking(False)
    stream = SocketStream(a) if kind == "socket" else await open_protocol_stream(a, 10.0)
    got = bytearray()

    async def slow_reader() -> None:
        while len(got) < 4 + n:
            await anyio.sleep(0.001)
            await anyio.wait_readable(b)
            got.extend(b.recv(8192))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_reader)
            await stream.splice(PipeSpan(buf, 1000, n), head=b"HEAD")
    finally:
        await stream.aclose()
        b.close()
    assert bytes(got) == b"HEAD" + payload[1000:1000 + n]
