"""The RPC server: the socket shell around :mod:`headwater.rpc.frame`.

Each connection has one reader loop; each request runs as its own task under a cancel scope that
carries the caller's deadline and that a CANCEL frame from the caller also cancels. Replies are
written under a per-connection send lock, header and payload back to back.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from .errors import BadRequest, DeadlineExceeded, NoSuchMethod, RemoteError, to_wire
from .frame import (CANCEL, DEFAULT_MAX_FRAME_BYTES, REQUEST, Frame, FrameDecoder, FrameError,
                    encode_frame, error_header, response_header)

__all__ = ["Reply", "Handler", "RpcServer"]

log = logging.getLogger("headwater.rpc")

RECEIVE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """What a call returns: a msgpack-able ``result`` and raw ``payload`` bytes."""

    result: Any = None
    payload: bytes = b""


Handler = Callable[[dict, bytes], Awaitable[Any]]

_NETWORK_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


def set_nodelay(stream: anyio.abc.ByteStream) -> None:
    sock = stream.extra(SocketAttribute.raw_socket, None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _Connection:
    __slots__ = ("stream", "send_lock", "scopes", "cancelled", "slots", "send_timeout", "closed")

    def __init__(self, stream: anyio.abc.ByteStream, max_in_flight: int, send_timeout: float):
        self.stream = stream
        self.send_lock = anyio.Lock()
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.cancelled: set[int] = set()
        self.slots = anyio.Semaphore(max_in_flight)
        self.send_timeout = send_timeout
        self.closed = False

    async def send(self, buffers: list) -> None:
        if self.closed:
            return
        async with self.send_lock:
            # Shielded: a frame is written whole or the connection is dropped, never half-written.
            with anyio.move_on_after(self.send_timeout, shield=True) as scope:
                try:
                    for buf in buffers:
                        await self.stream.send(buf)
                except _NETWORK_ERRORS:
                    self.closed = True
                    return
            if scope.cancelled_caught:
                log.warning("rpc: peer stopped reading for %.0fs; dropping the connection",
                            self.send_timeout)
                self.closed = True
                await anyio.aclose_forcefully(self.stream)


class RpcServer:
    """Serves registered methods to :class:`~headwater.rpc.client.RpcClient` callers."""

    def __init__(self, name: str, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_in_flight_per_connection: int = 512, send_timeout: float = 60.0):
        self.name = name
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight_per_connection = max_in_flight_per_connection
        self.send_timeout = send_timeout
        self.port: int | None = None
        self._handlers: dict[str, Handler] = {}
        self.counters = {"connections": 0, "connections_open": 0, "requests": 0, "errors": 0,
                         "deadlines": 0, "bytes_in": 0, "bytes_out": 0}

    def add(self, method: str, handler: Handler) -> None:
        if method in self._handlers:
            raise ValueError(f"method {method!r} is already registered on {self.name}")
        self._handlers[method] = handler

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    async def serve(self, host: str, port: int, *, reuse_port: bool = False,
                    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port and serve until cancelled; ``task_status.started(actual_port)``."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port,
                                                   reuse_port=reuse_port)
        async with listener:
            self.port = listener.extra(SocketAttribute.local_port)
            log.info("rpc %s listening on %s:%d", self.name, host, self.port)
            task_status.started(self.port)
            await listener.serve(self._serve_connection)

    async def _serve_connection(self, stream: anyio.abc.ByteStream) -> None:
        set_nodelay(stream)
        conn = _Connection(stream, self.max_in_flight_per_connection, self.send_timeout)
        decoder = FrameDecoder(max_frame_bytes=self.max_frame_bytes)
        self.counters["connections"] += 1
        self.counters["connections_open"] += 1
        try:
            async with stream, anyio.create_task_group() as tg:
                try:
                    while not conn.closed:
                        data = await stream.receive(RECEIVE_BYTES)
                        self.counters["bytes_in"] += len(data)
                        decoder.feed(data)
                        while (frame := decoder.next_frame()) is not None:
                            await self._dispatch(conn, tg, frame)
                except _NETWORK_ERRORS:
                    pass
                except FrameError as e:
                    log.warning("rpc %s: dropping a connection: %s", self.name, e)
                # The caller is gone: nobody is waiting for the handlers still running.
                conn.closed = True
                tg.cancel_scope.cancel()
        except Exception:  # never let one connection take the listener down
            log.exception("rpc %s: connection handler failed", self.name)
        finally:
            self.counters["connections_open"] -= 1

    async def _dispatch(self, conn: _Connection, tg: anyio.abc.TaskGroup, frame: Frame) -> None:
        h = frame.header
        kind = h[0]
        if kind == REQUEST:
            if len(h) < 5 or not isinstance(h[1], int):
                raise FrameError("malformed request header")
            await conn.slots.acquire()  # backpressure: stop reading while too many run
            scope = anyio.CancelScope()
            conn.scopes[h[1]] = scope
            tg.start_soon(self._run, conn, frame, scope)
        elif kind == CANCEL:
            if len(h) >= 2:
                scope = conn.scopes.get(h[1])
                if scope is not None:
                    conn.cancelled.add(h[1])
                    scope.cancel()
        # Unknown kinds are ignored so newer peers can add message kinds.

    async def _run(self, conn: _Connection, frame: Frame, scope: anyio.CancelScope) -> None:
        _, rid, method, args, timeout = frame.header[:5]
        self.counters["requests"] += 1
        try:
            try:
                if timeout is not None:
                    if not isinstance(timeout, (int, float)):
                        raise BadRequest("timeout must be a number")
                    scope.deadline = anyio.current_time() + max(0.0, timeout)
                with scope:
                    handler = self._handlers.get(method) if isinstance(method, str) else None
                    if handler is None:
                        raise NoSuchMethod(f"{self.name} has no method {method!r}")
                    if not isinstance(args, dict):
                        raise BadRequest("args must be a map")
                    out = await handler(args, frame.payload)
                if scope.cancelled_caught:
                    if rid in conn.cancelled:
                        return  # the caller gave up; it expects no reply
                    raise DeadlineExceeded(f"{method} exceeded its deadline on {self.name}")
                reply = out if isinstance(out, Reply) else Reply(result=out)
                try:
                    header = response_header(rid, reply.result)
                    buffers = encode_frame(header, reply.payload, max_frame_bytes=self.max_frame_bytes)
                except (TypeError, ValueError, OverflowError, FrameError) as e:
                    raise RemoteError(f"{method} returned a reply that cannot be sent: {e}") from None
            except Exception as e:
                self.counters["errors"] += 1
                if isinstance(e, DeadlineExceeded):
                    self.counters["deadlines"] += 1
                elif not hasattr(e, "code"):
                    log.exception("rpc %s: %s raised", self.name, method)
                code, message, details = to_wire(e)
                buffers = encode_frame(error_header(rid, code, message, details))
            self.counters["bytes_out"] += sum(len(b) for b in buffers)
            await conn.send(buffers)
        finally:
            conn.scopes.pop(rid, None)
            conn.cancelled.discard(rid)
            conn.slots.release()
