"""DNS over TCP (RFC 1035 4.2.2, RFC 7766): two-byte length-prefixed messages, several queries
per connection, answered in order.

Each connection reads one message at a time, so what one client may hold is one message of at
most 65535 bytes plus its answer; further queries wait in the kernel's buffers (bounded pending
queries), and at most ``max_connections`` connections are served per worker at once (the rest
wait in the listen backlog). A connection is closed when it is idle for ``idle_timeout_s``
between queries, when a started message does not arrive whole within ``query_timeout_s``, when
an answer cannot be sent within ``query_timeout_s``, on a length of 0, and on a message that is
not DNS (the handler returns None: too short for a header, or a response). TCP answers are never
rate limited and never truncated below 65535 bytes.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import anyio
from anyio.abc import TaskStatus

from headwater.http.transport import DISCONNECTS, SocketStream, accept_loop, bind_socket

__all__ = ["TcpStats", "serve_tcp", "read_message"]

log = logging.getLogger("headwater.dns.tcp")

Handler = Callable[[bytes, str], "bytes | None"]


@dataclass(slots=True)
class TcpStats:
    """Counters: connections accepted, queries read, connections closed for each reason."""

    connections: int = 0
    queries: int = 0
    idle_closed: int = 0
    timed_out: int = 0
    bad_closed: int = 0


class _Closed(Exception):
    """The connection is over (peer gone, timed out, or sent what is not DNS)."""


async def _fill(stream: SocketStream, buf: bytearray, n: int, timeout: float, what: str) -> None:
    """Read until ``buf`` holds ``n`` bytes (never more: the next query stays in the kernel)."""
    with anyio.move_on_after(timeout) as scope:
        while len(buf) < n:
            buf += await stream.receive(n - len(buf))
    if scope.cancelled_caught:
        raise TimeoutError(what)


async def read_message(stream: SocketStream, *, idle_timeout_s: float, query_timeout_s: float) -> bytes:
    """One length-prefixed message; TimeoutError("idle") when no query starts within
    ``idle_timeout_s``, TimeoutError("slow") when a started one takes longer than
    ``query_timeout_s``, ValueError on a length of 0."""
    buf = bytearray()
    await _fill(stream, buf, 1, idle_timeout_s, "idle")
    await _fill(stream, buf, 2, query_timeout_s, "slow")
    length = int.from_bytes(buf, "big")
    if length == 0:
        raise ValueError("a message of length 0")
    buf.clear()
    await _fill(stream, buf, length, query_timeout_s, "slow")
    return bytes(buf)


async def _connection(handle: Handler, sock: socket.socket, addr: Any, *, idle_timeout_s: float,
                      query_timeout_s: float, stats: TcpStats) -> None:
    stats.connections += 1
    stream = SocketStream(sock)
    client_ip = addr[0]
    try:
        while True:
            try:
                message = await read_message(stream, idle_timeout_s=idle_timeout_s, query_timeout_s=query_timeout_s)
            except TimeoutError as e:
                if str(e) == "idle":
                    stats.idle_closed += 1
                else:
                    stats.timed_out += 1
                return
            except ValueError:
                stats.bad_closed += 1
                return
            stats.queries += 1
            answer = handle(message, client_ip)
            if answer is None:
                stats.bad_closed += 1
                return
            with anyio.move_on_after(query_timeout_s) as sending:
                await stream.send(len(answer).to_bytes(2, "big") + answer)
            if sending.cancelled_caught:
                stats.timed_out += 1
                return
    except DISCONNECTS:
        return


async def serve_tcp(handle: Handler, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None,
                    reuse_port: bool = False, max_connections: int = 256, idle_timeout_s: float = 10.0,
                    query_timeout_s: float = 5.0, stats: TcpStats | None = None,
                    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
    """Serve DNS over TCP with ``handle(message, client_ip) -> answer | None`` until cancelled.

    ``task_status.started(port)`` once listening; ``sock`` an already listening socket."""
    listener = sock if sock is not None else bind_socket(host, port, reuse_port=reuse_port)
    stats = stats if stats is not None else TcpStats()

    async def connection(conn: socket.socket, addr: Any) -> None:
        await _connection(handle, conn, addr, idle_timeout_s=idle_timeout_s,
                          query_timeout_s=query_timeout_s, stats=stats)

    try:
        async with anyio.create_task_group() as tg:
            task_status.started(listener.getsockname()[1])
            await accept_loop(listener, max_connections, tg, connection)
    finally:
        listener.close()
