"""DNS over TCP (RFC 1035 4.2.2, RFC 7766): two-byte length-prefixed messages, several queries
per connection, answered in order.

Each connection reads one message at a time, so what one client may hold is one message of at
most 65535 bytes plus its answer; further queries wait in the kernel's buffers (bounded pending
queries). At most ``max_connections`` connections are open per worker at once. Every new
connection is accepted at once; when the table is full, the connection that has been useless
the longest (least recently accepted or answered) is closed to make room (RFC 7766 6.2.3: a busy
server closes idle connections). Leaving the newcomers in the listen backlog instead, as a
plain connection cap does, lets anyone holding ``max_connections`` idle or slowloris connections
(one byte now and then, each message just under ``query_timeout_s``) shut every other client
out of TCP, which is where truncated answers and RRL slips send real resolvers. A connection is
closed when it is idle for ``idle_timeout_s``
between queries, when a started message does not arrive whole within ``query_timeout_s``, when
an answer cannot be sent within ``query_timeout_s``, on a length of 0, and on a message that is
not DNS (the handler returns None: too short for a header, or a response). TCP answers are never
rate limited and never truncated below 65535 bytes.
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, NoReturn

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from headwater.http.transport import DISCONNECTS, SocketStream, bind_socket

__all__ = ["TcpStats", "ConnectionTable", "serve_tcp", "read_message"]

log = logging.getLogger("headwater.dns.tcp")

Handler = Callable[[bytes, str], "bytes | None"]


@dataclass(slots=True)
class TcpStats:
    """Counters: connections accepted, queries read, connections closed for each reason
    (``evicted``: closed to make room for a newer one when ``max_connections`` were open)."""

    connections: int = 0
    queries: int = 0
    idle_closed: int = 0
    timed_out: int = 0
    bad_closed: int = 0
    evicted: int = 0


class ConnectionTable:
    """The open connections of one listener, the least recently useful first, at most ``limit``.

    Each connection has a cancel scope; :meth:`open` registers a new one and, when ``limit`` are
    already open, cancels the one least recently opened or answered (:meth:`used` moves a
    connection to the back). O(1) per operation."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a connection table holds at least one connection")
        self.limit = limit
        self._open: OrderedDict[anyio.CancelScope, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> tuple[anyio.CancelScope, bool]:
        """A cancel scope for a new connection, and whether an older one was evicted for it."""
        evicted = False
        if len(self._open) >= self.limit:
            oldest, _ = self._open.popitem(last=False)
            oldest.cancel()
            evicted = True
        scope = anyio.CancelScope()
        self._open[scope] = None
        return scope, evicted

    def used(self, scope: anyio.CancelScope) -> None:
        """The connection answered a query: it is the most recently useful one."""
        if scope in self._open:
            self._open.move_to_end(scope)

    def close(self, scope: anyio.CancelScope) -> None:
        """The connection is over (evicted ones are gone already)."""
        self._open.pop(scope, None)


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
                      query_timeout_s: float, stats: TcpStats, answered: Callable[[], None]) -> None:
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
            answered()
    except DISCONNECTS:
        return


async def _accept_loop(listener: socket.socket, table: ConnectionTable, tg: TaskGroup,
                       serve: Callable[[socket.socket, Any, anyio.CancelScope], Awaitable[None]],
                       stats: TcpStats) -> NoReturn:
    """Accept connections for ever, each served in a task of ``tg`` under the cancel scope the
    table gives it (which may evict the least useful open one)."""
    while True:
        try:
            conn, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            await anyio.wait_readable(listener)
            continue
        except OSError as e:  # EMFILE and friends: back off, keep serving
            log.warning("dns tcp: accept failed: %s", e, extra={"event": "dns.tcp_accept_failed", "error": str(e)})
            await anyio.sleep(0.1)
            continue
        stats.connections += 1
        scope, evicted = table.open()
        if evicted:
            stats.evicted += 1
        tg.start_soon(serve, conn, addr, scope)
        # Let the new connection (and an evicted one, which closes its socket) run before the
        # next accept: a burst of connections cannot hold more than the table's sockets.
        await anyio.lowlevel.checkpoint()


async def serve_tcp(handle: Handler, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None,
                    reuse_port: bool = False, max_connections: int = 256, idle_timeout_s: float = 10.0,
                    query_timeout_s: float = 5.0, stats: TcpStats | None = None,
                    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
    """Serve DNS over TCP with ``handle(message, client_ip) -> answer | None`` until cancelled.

    ``task_status.started(port)`` once listening; ``sock`` an already listening socket."""
    listener = sock if sock is not None else bind_socket(host, port, reuse_port=reuse_port)
    stats = stats if stats is not None else TcpStats()
    table = ConnectionTable(max_connections)

    async def connection(conn: socket.socket, addr: Any, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await _connection(handle, conn, addr, idle_timeout_s=idle_timeout_s,
                                  query_timeout_s=query_timeout_s, stats=stats, answered=lambda: table.used(scope))
        except Exception:  # noqa: BLE001 — one connection's failure is that connection's
            log.warning("dns tcp: the connection from %s failed", addr, exc_info=True,
                        extra={"event": "dns.tcp_connection_failed", "peer": str(addr)})
        finally:
            table.close(scope)
            try:
                conn.close()
            except OSError:
                pass

    try:
        async with anyio.create_task_group() as tg:
            task_status.started(listener.getsockname()[1])
            await _accept_loop(listener, table, tg, connection, stats)
    finally:
        listener.close()
