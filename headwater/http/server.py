"""``serve``: the HTTP server core every daemon runs, HTTP/1.1 and HTTP/2, plain or TLS, on anyio.

``serve(app, host=..., port=...)`` listens, accepts up to ``max_connections`` connections, and
runs one task per connection (plus one per HTTP/2 stream) under one task group: cancelling
``serve`` closes the listener and every connection (HTTP/2 peers get a GOAWAY first).

A connection picks its protocol once: ALPN on TLS, otherwise the client preface (``PRI *
HTTP/2.0`` means h2c with prior knowledge). The rest is split by concern:

- ``transport``: listening sockets, byte streams, TLS, and the read/send deadlines (watchdog);
- ``h1_shell`` / ``h2_shell``: the connection loops around the sans-IO ``h1`` / ``h2``;
- ``exchange``: running the app and the core's own error answers, shared by both shells;
- ``guards``: sans-IO budgets against abusive peers (HTTP/2 floods, slow request bodies and
  slow readers); ``send_floor``: the latter on a socket, in the bytes its peer acknowledged.

A daemon that accounts connections per client (the edge's connection caps and address rules)
passes ``on_connection(peer) -> bool``: called with the socket's peer address before a byte is
read; False closes the connection at once. ``on_disconnect(peer)`` is called once for every
connection ``on_connection`` accepted, when it ends, whatever ended it. ``on_flood(peer, kind)``
is called when an HTTP/2 connection is ended for spending its flood budget (``kind``: the kind
of frame that spent most of it, "rst_stream", "window_update"..., see ``h2``), for metrics.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any, Callable

import anyio
import anyio.abc
import sniffio
from anyio.streams.tls import TLSAttribute

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import HttpLimits
from headwater.http import h2
from headwater.http.exchange import Service, address, error_response
from headwater.http.h1_shell import H1Shell
from headwater.http.h2_shell import H2_DRAIN_MAX_BYTES, H2Shell
from headwater.http.protocol_stream import ProtocolStream, open_protocol_stream
from headwater.http.send_floor import SendFloor
from headwater.http.transport import (
    DISCONNECTS,
    RECV_BYTES,
    SocketStream,
    Watchdog,
    accept_loop,
    bind_socket,
    start_tls,
)
from headwater.http.types import App, TlsSession

__all__ = ["serve", "bind_socket", "SocketStream", "error_response", "H2_DRAIN_MAX_BYTES", "Peer"]

Peer = tuple[str, int] | None

log = logging.getLogger("headwater.http")


async def serve(app: App, *, host: str = "127.0.0.1", port: int = 0,
                limits: HttpLimits = HttpLimits(), ssl_context: ssl.SSLContext | None = None,
                reuse_port: bool = False, sock: socket.socket | None = None,
                clock: Clock = SYSTEM_CLOCK, loop_transport: bool = True,
                on_connection: Callable[[Peer], bool] | None = None,
                on_disconnect: Callable[[Peer], None] | None = None,
                on_flood: Callable[[Peer, str], None] | None = None,
                task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` until cancelled. ``task_status.started`` receives the bound port.

    ``sock``, if given, is an already listening socket (see ``bind_socket``); host, port and
    reuse_port are then ignored. ``clock`` gives the Date header and the HTTP/2 flood budget
    their time. ``loop_transport`` (on by default; asyncio only, trio always waits on the bare
    socket) carries the bytes on the loop's own transports (uvloop's, in C: ``ProtocolStream``),
    which ``bench http_core`` measures at about 1.5x the requests per second of ``SocketStream``.
    ``on_connection`` / ``on_disconnect`` / ``on_flood``: see the module docstring.
    """
    listener = sock if sock is not None else bind_socket(host, port, reuse_port=reuse_port)
    listener.setblocking(False)
    server = _Server(Service(app, limits, clock, on_flood), ssl_context, loop_transport=loop_transport,
                     on_connection=on_connection, on_disconnect=on_disconnect)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.watchdog.run)
            task_status.started(listener.getsockname()[1])
            await accept_loop(listener, limits.max_connections, tg, server.connection)
    finally:
        listener.close()


class _Server:
    """Picks each connection's protocol and hands it to its shell."""

    def __init__(self, service: Service, ssl_context: ssl.SSLContext | None, *, loop_transport: bool,
                 on_connection: Callable[[Peer], bool] | None = None,
                 on_disconnect: Callable[[Peer], None] | None = None) -> None:
        self.service = service
        self.on_connection = on_connection
        self.on_disconnect = on_disconnect
        self.limits = service.limits
        self.ssl_context = ssl_context
        self.watchdog = Watchdog(service.limits)
        # On asyncio the loop's own transports carry the bytes (uvloop's, in C); trio waits on
        # the bare socket. Both are the same byte stream to the shells.
        self.on_asyncio = loop_transport and sniffio.current_async_library() == "asyncio"

    async def connection(self, sock: socket.socket, addr: Any) -> None:
        if self.on_connection is None:
            await self._connection(sock, addr)
            return
        peer = address(addr)
        if not self.on_connection(peer):
            return  # refused before a byte is read; the acceptor closes the socket
        try:
            await self._connection(sock, addr)
        finally:
            if self.on_disconnect is not None:
                self.on_disconnect(peer)

    async def _connection(self, sock: socket.socket, addr: Any) -> None:
        if self.on_asyncio:
            transport: SocketStream | ProtocolStream = await open_protocol_stream(
                sock, self.limits.send_timeout_s)
        else:
            transport = SocketStream(sock)
        transport.send_floor = SendFloor.for_limits(sock, self.limits)
        watched = self.watchdog.watched
        watched.add(transport)
        try:
            client = address(addr)
            local = address(sock.getsockname())
            if self.ssl_context is not None:
                tls = await start_tls(transport, self.ssl_context, self.limits.header_timeout_s)
                if tls is None:
                    return  # handshake too slow
                session = _session(tls)
                if tls.extra(TLSAttribute.alpn_protocol, None) == "h2":
                    await H2Shell(self.service, tls, b"", "https", client, local, session).run()
                else:
                    await H1Shell(self.service, tls, transport, b"", "https", client, local, session).run()
                return
            data = b""
            with anyio.move_on_after(self.limits.header_timeout_s):
                data = await transport.receive(RECV_BYTES)
                while len(data) < len(h2.PREFACE) and h2.PREFACE.startswith(data):
                    data += await transport.receive(RECV_BYTES)
            if not data:
                return
            if data.startswith(h2.PREFACE):
                await H2Shell(self.service, transport, data, "http", client, local).run()
            else:
                await H1Shell(self.service, transport, transport, data, "http", client, local).run()
        except DISCONNECTS:
            pass
        except Exception:
            log.exception("connection from %s failed", addr)
        finally:
            watched.discard(transport)
            # Every path closes the stream, also those that end before a shell runs (no byte
            # before the header timeout, end of file or a reset first, a slow TLS handshake).
            # The acceptor's sock.close() cannot: a ProtocolStream's socket belongs to the loop
            # (see open_protocol_stream), and left open it would be closed twice, later.
            with anyio.CancelScope(shield=True):
                await transport.aclose()


def _session(tls: Any) -> TlsSession:
    """The protocol and cipher a handshake settled on, for the requests of its connection."""
    cipher = tls.extra(TLSAttribute.cipher, None)
    return TlsSession(protocol=tls.extra(TLSAttribute.tls_version, None) or "-",
                      cipher=cipher[0] if cipher else "-")
