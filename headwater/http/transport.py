"""The byte-stream side of the HTTP core: listening sockets, accepted connections as anyio byte
streams (plain or TLS), and the deadlines on both directions of a connection.

Plain TCP uses non-blocking sockets directly (``SocketStream``), identical on asyncio and trio,
so a whole-file response on HTTP/1.1 can go out with ``os.sendfile``.

Deadlines cost no cancel scope per operation. A shell waiting to read sets
``SocketStream.read_deadline``; a send that blocks stamps ``send_blocked_since`` (and clears it
once the kernel takes bytes again). Every ``tick`` the ``Watchdog`` shuts the read side of
streams past their read deadline (the pending read sees end of file, the shell sees
``read_expired`` and answers 408 or closes) and aborts streams whose send made no progress for
``send_timeout_s``, or whose peer acknowledged fewer than ``min_send_rate_bytes_per_s`` over a
window of ``min_send_rate_window_s`` spent blocked (``send_floor.SendFloor``: a reader that
takes a few bytes now and then progresses inside every send timeout). Aborting sets linger 0,
so closing resets the connection and frees its kernel buffers; the pending send fails as a
broken connection. Deadlines fire up to one tick late.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import struct
import time
from typing import Any, Awaitable, Callable, Mapping, NoReturn

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from headwater.config import HttpLimits, KiB
from headwater.http.errors import ClientDisconnected, LocalProtocolError
from headwater.http.send_floor import SendFloor
from headwater.splice import PipeSpan

__all__ = ["RECV_BYTES", "DISCONNECTS", "bind_socket", "SocketStream", "Watchdog", "accept_loop",
           "start_tls"]

log = logging.getLogger("headwater.http")

RECV_BYTES = 64 * KiB
_IMMEDIATE_OPS_PER_CHECKPOINT = 16
_LINGER_ABORT = struct.pack("ii", 1, 0)
MSG_MORE = getattr(socket, "MSG_MORE", 0)
_IOV_MAX = 1024  # buffers one sendmsg takes (Linux's UIO_MAXIOV)

DISCONNECTS = (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError,
               ClientDisconnected, ConnectionError, ssl.SSLError)
"""What a vanished or cut-off peer looks like to the shells: nobody left to answer."""


def bind_socket(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket.

    With ``reuse_port`` several processes can each bind the same address (SO_REUSEPORT) and the
    kernel spreads new connections across them: the supervisor starts N workers that each call
    ``serve(..., reuse_port=True)`` (or pass a socket from this function as ``sock=``).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def accept_loop(listener: socket.socket, max_connections: int, tg: anyio.abc.TaskGroup,
                      handle: Callable[[socket.socket, Any], Awaitable[None]]) -> NoReturn:
    """Accept connections for ever, at most ``max_connections`` at once (the rest wait in the
    backlog), each handled by ``handle(sock, addr)`` in its own task of ``tg``; the socket is
    closed when ``handle`` returns."""
    slots = anyio.Semaphore(max_connections)
    while True:
        await slots.acquire()
        while True:
            try:
                conn, addr = listener.accept()
                break
            except (BlockingIOError, InterruptedError):
                await anyio.wait_readable(listener)
            except OSError as e:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed: %s", e)
                await anyio.sleep(0.1)
        tg.start_soon(_connection, handle, conn, addr, slots)


async def _connection(handle: Callable[[socket.socket, Any], Awaitable[None]], sock: socket.socket,
                      addr: Any, slots: anyio.Semaphore) -> None:
    # One connection's failure is that connection's: it is logged and closed, and the listener
    # and every other connection go on (an error escaping here would end the whole server).
    try:
        await handle(sock, addr)
    except Exception:
        log.warning("connection from %s failed", addr, exc_info=True,
                    extra={"event": "http.connection_failed", "peer": str(addr)})
    finally:
        slots.release()
        try:
            sock.close()
        except OSError as e:
            log.warning("closing the connection from %s failed: %s", addr, e,
                        extra={"event": "http.close_failed", "peer": str(addr), "error": str(e)})


async def start_tls(stream: anyio.abc.ByteStream, ssl_context: ssl.SSLContext,
                    timeout: float) -> TLSStream | None:
    """The server side of a TLS handshake; None if it did not finish within ``timeout``."""
    with anyio.move_on_after(timeout):
        return await TLSStream.wrap(stream, server_side=True, ssl_context=ssl_context,
                                    standard_compatible=False)
    return None


class SocketStream(anyio.abc.ByteStream):
    """An anyio byte stream straight over a non-blocking socket (both backends), with sendfile
    and the deadline stamps the ``Watchdog`` enforces."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._immediate = 0
        self.read_deadline = math.inf  # time.monotonic() past which a pending read is cut
        self.read_expired = False
        self.send_blocked_since = math.inf  # when a send started waiting for the socket
        self.send_expired = False
        self.send_floor: SendFloor | None = None  # the server's min_send_rate, if it sets one
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    @property
    def socket(self) -> socket.socket:
        return self._sock

    async def _fairness(self) -> None:
        # An operation that did not block is not a checkpoint; yield now and then anyway so one
        # fast peer cannot starve the others or delay a cancellation.
        self._immediate += 1
        if self._immediate >= _IMMEDIATE_OPS_PER_CHECKPOINT:
            self._immediate = 0
            await anyio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int = RECV_BYTES) -> bytes:
        sock = self._sock
        while True:
            try:
                data = sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                self._immediate = 0
                await anyio.wait_readable(sock)
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            if not data:
                raise anyio.EndOfStream
            await self._fairness()
            return data

    async def _wait_writable(self) -> None:
        # Every block restarts the send timeout's clock: the kernel took bytes since the last
        # one (progress). The floor's windows run on across blocks.
        self._immediate = 0
        self.send_blocked_since = now = time.monotonic()
        floor = self.send_floor
        if floor is not None:
            floor.blocked(now)
        slow = False
        try:
            await anyio.wait_writable(self._sock)
        finally:
            self.send_blocked_since = math.inf
            if floor is not None:
                slow = not floor.unblocked(time.monotonic())
        if slow:  # (woken between the floor's deadline and the watchdog's next tick)
            log.info("dropping a connection whose peer takes our bytes slower than min_send_rate")
            self.abort()
            raise anyio.BrokenResourceError("the peer takes our bytes slower than min_send_rate")

    async def _send_more(self, item: bytes) -> None:
        sock = self._sock
        view = memoryview(item)
        while view:
            try:
                n = sock.send(view, MSG_MORE)
            except (BlockingIOError, InterruptedError):
                await self._wait_writable()
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            view = view[n:]

    async def send(self, item: bytes) -> None:
        sock = self._sock
        view = memoryview(item)
        while view:
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._wait_writable()
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            view = view[n:]
        await self._fairness()

    async def send_many(self, pieces: list[bytes | memoryview]) -> None:
        """Send ``pieces`` in order with gathering writes (sendmsg), none of them joined."""
        sock = self._sock
        views = [memoryview(p) for p in pieces]
        first = 0
        while first < len(views):
            try:
                n = sock.sendmsg(views[first:first + _IOV_MAX])
            except (BlockingIOError, InterruptedError):
                await self._wait_writable()
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            while n:  # drop what the kernel took; a piece it took in part keeps its rest
                size = len(views[first])
                if n >= size:
                    n -= size
                    first += 1
                else:
                    views[first] = views[first][n:]
                    n = 0
            while first < len(views) and not views[first]:
                first += 1
        await self._fairness()

    async def sendfile(self, fd: int, offset: int, count: int, *, head: bytes = b"") -> None:
        """Send ``head``, then ``count`` bytes of the file ``fd`` from ``offset`` with
        os.sendfile; ``head`` is sent with MSG_MORE so it shares a segment with the file."""
        if head:
            await self._send_more(head)
        out = self._sock.fileno()
        while count > 0:
            try:
                n = os.sendfile(out, fd, offset, min(count, 1 << 30))
            except (BlockingIOError, InterruptedError):
                await self._wait_writable()
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            if n == 0:
                raise LocalProtocolError("file shorter than the response claimed (truncated?)")
            offset += n
            count -= n
            await anyio.lowlevel.checkpoint()

    async def splice(self, span: PipeSpan, *, head: bytes = b"") -> None:
        """Send ``head``, then ``span`` with splice(2) from its pipe (see ``headwater.splice``)."""
        if head:
            await self._send_more(head)
        out = self._sock.fileno()
        while span.remaining:
            try:
                span.splice_to(out)
            except (BlockingIOError, InterruptedError):
                await self._wait_writable()
            except OSError as e:
                raise anyio.BrokenResourceError from e
        await self._fairness()

    def expire_read(self) -> None:
        """The read deadline passed: shut the read side (a pending read sees end of file)."""
        self.read_deadline = math.inf
        self.read_expired = True
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def abort(self) -> None:
        """The peer stopped taking our bytes: fail the pending send, reset on close."""
        self.send_expired = True
        self.send_blocked_since = math.inf
        self.send_floor = None
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def aclose(self) -> None:
        self._sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return socket_attributes(self._sock)


def socket_attributes(sock: socket.socket) -> Mapping[Any, Callable[[], Any]]:
    """anyio's socket attributes of a stream over ``sock`` (both stream classes of the core)."""
    return {
        SocketAttribute.raw_socket: lambda: sock,
        SocketAttribute.family: lambda: sock.family,
        SocketAttribute.local_address: sock.getsockname,
        SocketAttribute.remote_address: sock.getpeername,
    }


class Watchdog:
    """Enforces the read deadlines, the send timeout and the send floor of every watched stream
    (``SocketStream`` or ``ProtocolStream``)."""

    def __init__(self, limits: HttpLimits) -> None:
        shortest = min(limits.header_timeout_s, limits.idle_timeout_s, limits.body_timeout_s,
                       limits.send_timeout_s)
        if limits.min_body_rate_bytes_per_s:
            shortest = min(shortest, limits.min_body_rate_window_s)
        if limits.min_send_rate_bytes_per_s:
            shortest = min(shortest, limits.min_send_rate_window_s)
        self.tick = min(1.0, max(0.02, shortest / 10))
        self.send_timeout_s = limits.send_timeout_s
        self.watched: set[SocketStream] = set()

    def check(self, now: float) -> None:
        """Cut the streams whose deadlines passed by ``now`` (time.monotonic)."""
        stalled_before = now - self.send_timeout_s
        for t in self.watched:
            if t.read_deadline < now:
                t.expire_read()
            if t.send_blocked_since < stalled_before:
                log.info("dropping a connection that took no bytes for %.0f s", self.send_timeout_s)
                t.abort()
                continue
            floor = t.send_floor
            if floor is not None and floor.deadline < now and not floor.due(now):
                log.info("dropping a connection whose peer takes our bytes slower than min_send_rate")
                t.abort()

    async def run(self) -> NoReturn:
        while True:
            await anyio.sleep(self.tick)
            self.check(time.monotonic())
