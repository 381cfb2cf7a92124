"""The kernel's UDP shell, beside the TCP one (:mod:`headwater.http.transport`).

:func:`serve_datagrams` binds a UDP socket (SO_REUSEPORT when asked, so ``workers`` processes
share one port and the kernel spreads datagrams across them) and runs a receive loop that calls
a synchronous ``handle(data, addr)`` per datagram and sends what it returns (None: nothing). The
handler is sans-IO and quick (a DNS answer); the loop never buffers: one datagram is read, handled
and answered before the next is read, so what waits is in the kernel's socket buffer, which is
bounded and drops on overflow as UDP does. An answer the kernel cannot take at once (send buffer
full) is dropped and counted, never queued. The loop yields to other tasks every
``batch`` datagrams, so a flood cannot starve the admin endpoint or the TCP listener.

Plain non-blocking sockets and ``anyio.wait_readable``: the same code on asyncio (uvloop) and trio.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

__all__ = ["DatagramStats", "bind_udp", "serve_datagrams", "MAX_DATAGRAM"]

log = logging.getLogger("headwater.datagram")

MAX_DATAGRAM = 65535
Handler = Callable[[bytes, Any], "bytes | None"]


@dataclass(slots=True)
class DatagramStats:
    """Counters of one receive loop: datagrams in, answers out, answers dropped (send buffer
    full or the peer unreachable), handler failures."""

    received: int = 0
    sent: int = 0
    send_dropped: int = 0
    handler_errors: int = 0


def bind_udp(host: str, port: int, *, reuse_port: bool = False, receive_buffer: int | None = None) -> socket.socket:
    """A bound, non-blocking UDP socket (``port`` 0: any free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_datagrams(handle: Handler, *, host: str = "127.0.0.1", port: int = 0,
                          sock: socket.socket | None = None, reuse_port: bool = False, batch: int = 64,
                          stats: DatagramStats | None = None,
                          task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
    """Answer datagrams with ``handle`` until cancelled.

    ``task_status.started(port)`` fires once the socket is bound (the port, for ``port=0``).
    ``sock`` is an already bound socket (see :func:`bind_udp`); it is closed on the way out.
    """
    sock = sock if sock is not None else bind_udp(host, port, reuse_port=reuse_port)
    stats = stats if stats is not None else DatagramStats()
    recvfrom, sendto = sock.recvfrom, sock.sendto
    try:
        task_status.started(sock.getsockname()[1])
        while True:
            for _ in range(batch):
                try:
                    data, addr = recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    # ICMP errors from an earlier send surface here on some systems (ECONNREFUSED):
                    # that peer is gone, the socket is fine.
                    log.debug("udp receive: %s", e)
                    continue
                stats.received += 1
                try:
                    answer = handle(data, addr)
                except Exception:  # noqa: BLE001 — one datagram's failure is that datagram's
                    stats.handler_errors += 1
                    log.warning("datagram handler failed", exc_info=True, extra={"event": "udp.handler_failed"})
                    continue
                if answer is None:
                    continue
                try:
                    sendto(answer, addr)
                    stats.sent += 1
                except OSError:
                    # Send buffer full (EAGAIN) or the peer unreachable: UDP drops, we never queue.
                    stats.send_dropped += 1
            else:
                # A full batch: let the other tasks run before the next one.
                await anyio.lowlevel.checkpoint()
                continue
            await anyio.wait_readable(sock)
    finally:
        sock.close()
