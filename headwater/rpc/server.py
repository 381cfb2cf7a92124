"""The RPC server: the socket shell around :mod:`headwater.rpc.frame` and :mod:`headwater.rpc.auth`.

A connection is served nothing until the client has passed the cluster-secret handshake
(:class:`~headwater.rpc.auth.ServerHandshake`): until then frames are limited to 4 KiB, reads to
4 KiB, and the whole handshake to ``handshake_timeout_s``. After it, an idle connection may stay
open as long as it likes, but a frame once begun must arrive whole within ``frame_timeout_s``
(:class:`FrameWatch`), and what one connection buffers is bounded by ``max_frame_bytes``.

Each connection has one reader loop; each request runs as its own task under a cancel scope that
carries the caller's deadline and that a CANCEL frame from the caller also cancels. A method may
also register an *at-once* handler: a plain function the reader calls first, which answers when
it can without waiting (a metadata read under a leader's lease) and returns :data:`LATER`
otherwise; only then does the request get a task (a task, its cancel scope and its in-flight
slot were most of what a small read cost the server); the at-once replies to the frames of one
receive go out together, in one ``sendmsg``. Replies are written under a per-connection send
lock, header and payload in one ``sendmsg``. Connections are
:class:`~headwater.rpc.stream.RpcStream` s over the accepted sockets: a large request payload is
received in place (:meth:`FrameDecoder.payload_target`), so the handler gets the only copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from .auth import HANDSHAKE_TIMEOUT_S, ClusterSecret, HandshakeError, HandshakeRefused, ServerHandshake
from .errors import BadRequest, DeadlineExceeded, NoSuchMethod, RemoteError, to_wire
from .frame import (CANCEL, DEFAULT_MAX_FRAME_BYTES, REQUEST, Frame, FrameDecoder, FrameError,
                    encode_frame, error_header, response_header)
from .stream import RpcStream, accept, listen, listen_unix, receive_into_decoder

__all__ = ["Reply", "Handler", "AtOnceHandler", "LATER", "RpcServer", "FrameWatch", "DEFAULT_FRAME_TIMEOUT_S"]

log = logging.getLogger("headwater.rpc")

#: A peer that has begun a frame must finish it within this long (a 65 MiB frame at 10 MB/s
#: takes 7 s); an idle connection has no such bound.
DEFAULT_FRAME_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What a call returns: a msgpack-able ``result`` and raw ``payload`` bytes."""

    result: Any = None
    payload: bytes = b""


Handler = Callable[[dict, bytes], Awaitable[Any]]
#: ``(args, payload) -> result``, or :data:`LATER`: see :meth:`RpcServer.add`.
AtOnceHandler = Callable[[dict, bytes], Any]


class _Later:
    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


#: What an at-once handler returns when it cannot answer without waiting.
LATER: Any = _Later()

#: At-once replies held for one sendmsg are sent once they reach this size (a receive's worth of
#: small requests may each ask for a record with an inline object).
ANSWERED_FLUSH_BYTES = 256 * 1024

_NETWORK_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class FrameWatch:
    """Drops a connection whose peer began a frame and has not finished it within ``timeout_s``,
    so a trickling or stalled peer cannot pin a partial frame's buffer forever.

    The reader tells it when bytes of an unfinished frame are buffered (``partial``) and when
    frames completed (``completed``); ``run`` polls four times per timeout and cancels ``scope``
    (the reader's) when the bound is passed. The hot path pays an attribute store per receive,
    not a cancel scope per receive (which measured ~20 us each on asyncio).
    """

    __slots__ = ("timeout_s", "scope", "started", "tripped")

    def __init__(self, timeout_s: float, scope: anyio.CancelScope):
        self.timeout_s = timeout_s
        self.scope = scope
        self.started: float | None = None
        self.tripped = False

    def partial(self, buffered: int) -> None:
        """Bytes arrived and no frame completed: the clock starts now unless already running."""
        if self.started is None and buffered:
            self.started = anyio.current_time()

    def completed(self, buffered: int) -> None:
        """Frames were handed out; with bytes of the next one already here its clock restarts."""
        self.started = anyio.current_time() if buffered else None

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.timeout_s / 4)
            started = self.started
            if started is not None and anyio.current_time() - started > self.timeout_s:
                self.tripped = True
                self.scope.cancel()
                return


class LogThrottle:
    """At most one log line per key every ``interval_s``, counting the ones held back, so a peer
    retrying a failing handshake in a loop cannot flood the log."""

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[object, tuple[float, int]] = {}

    def allow(self, key: object) -> int | None:
        """None to stay quiet; else how many lines were held back since the last one."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0


def _peer_name(stream: anyio.abc.ByteStream) -> str:
    try:
        addr = stream.extra(SocketAttribute.remote_address)
    except Exception:  # noqa: BLE001 - a name for a log line only
        return "?"
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr) or "(a process on this host, over the Unix socket)"


class _Connection:
    __slots__ = ("stream", "send_lock", "scopes", "cancelled", "slots", "send_timeout", "closed", "answered",
                 "answered_bytes")

    def __init__(self, stream: RpcStream, max_in_flight: int, send_timeout: float):
        self.stream = stream
        # fast_acquire on both: neither yields to the loop when it is free, so a frame's
        # dispatch and a reply's send cost no extra loop pass each (the reader still yields
        # between receives, and a handler task runs only once the reader waits).
        self.send_lock = anyio.Lock(fast_acquire=True)
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.cancelled: set[int] = set()
        self.slots = anyio.Semaphore(max_in_flight, fast_acquire=True)
        self.send_timeout = send_timeout
        self.closed = False
        # Replies of at-once handlers to the frames of one receive, sent together (one sendmsg)
        # before the reader waits again.
        self.answered: list = []
        self.answered_bytes = 0

    async def flush_answered(self) -> None:
        if self.answered:
            buffers, self.answered, self.answered_bytes = self.answered, [], 0
            await self.send(buffers)

    async def send(self, buffers: list) -> None:
        if self.closed:
            return
        async with self.send_lock:
            try:
                # Nearly every reply goes out at once: no scope is needed for what does not wait.
                rest = self.stream.send_nowait(buffers)
            except _NETWORK_ERRORS:
                self.closed = True
                return
            if not rest:
                return
            # Shielded: a frame is written whole or the connection is dropped, never half-written.
            with anyio.move_on_after(self.send_timeout, shield=True) as scope:
                try:
                    await self.stream.send_buffers(rest)
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

    def __init__(self, name: str, *, secret: ClusterSecret, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_in_flight_per_connection: int = 512, send_timeout: float = 60.0,
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
                 frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S):
        if not isinstance(secret, ClusterSecret):
            raise TypeError("RpcServer needs the cluster secret (headwater.rpc.auth.cluster_secret(cfg))")
        self.name = name
        self.secret = secret
        self.handshake_timeout_s = handshake_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight_per_connection = max_in_flight_per_connection
        self.send_timeout = send_timeout
        self.port: int | None = None
        self._handlers: dict[str, Handler] = {}
        self._at_once: dict[str, AtOnceHandler] = {}
        self.counters = {"connections": 0, "connections_open": 0, "requests": 0, "errors": 0,
                         "deadlines": 0, "bytes_in": 0, "bytes_out": 0, "auth_ok": 0, "auth_refused": 0,
                         "handshake_timeouts": 0, "frame_timeouts": 0}
        self._log_throttle = LogThrottle()

    def add(self, method: str, handler: Handler, *, at_once: AtOnceHandler | None = None) -> None:
        """Serve ``method`` with ``handler``. ``at_once``, if given, is tried first, in the
        connection's reader, without a task: it must not block, and it returns :data:`LATER`
        for anything it does not answer itself (including every malformed request, so that
        ``handler`` alone refuses those); what it returns or raises otherwise is the reply."""
        if method in self._handlers:
            raise ValueError(f"method {method!r} is already registered on {self.name}")
        self._handlers[method] = handler
        if at_once is not None:
            self._at_once[method] = at_once

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    async def serve(self, host: str, port: int, *, reuse_port: bool = False,
                    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port and serve until cancelled; ``task_status.started(actual_port)``."""
        listener = listen(host, port, reuse_port=reuse_port)
        try:
            self.port = listener.getsockname()[1]
            log.info("rpc %s listening on %s:%d", self.name, host, self.port)
            task_status.started(self.port)
            await self._accept_forever(listener)
        finally:
            listener.close()

    async def serve_unix(self, path: str | os.PathLike[str], *,
                         task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Also listen on the Unix socket ``path`` (see :func:`~headwater.rpc.stream.listen_unix`)
        and serve until cancelled, then remove it; ``task_status.started(path)``. The same calls
        and handshake as over TCP, for clients on this host: a Unix socket moves a byte for less
        CPU than loopback TCP (no TCP/IP stack, no acknowledgements: 0.19 s per GB sent and
        received against 0.27-0.48 on this project's bench machine)."""
        path = os.fspath(path)
        listener = listen_unix(path)
        try:
            log.info("rpc %s listening on %s", self.name, path)
            task_status.started(path)
            await self._accept_forever(listener)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _accept_forever(self, listener: socket.socket) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                tg.start_soon(self._serve_connection, await accept(listener))

    async def _serve_connection(self, stream: RpcStream) -> None:
        self.counters["connections"] += 1
        self.counters["connections_open"] += 1
        try:
            async with stream:
                early = await self._authenticate(stream)
                if early is not None:
                    await self._serve_calls(stream, early)
        except Exception:  # never let one connection take the listener down
            log.exception("rpc %s: connection handler failed", self.name)
        finally:
            self.counters["connections_open"] -= 1

    async def _authenticate(self, stream: anyio.abc.ByteStream) -> bytes | None:
        """Run the server side of the handshake; the bytes that followed it, or None (refused)."""
        hs = ServerHandshake(self.secret)
        failure: HandshakeError | None = None
        with anyio.move_on_after(self.handshake_timeout_s) as scope:
            try:
                while not hs.established and failure is None:
                    data = await stream.receive(hs.wanted())
                    self.counters["bytes_in"] += len(data)
                    try:
                        hs.receive_data(data)
                    except HandshakeError as e:
                        failure = e
                    out = hs.data_to_send()
                    if out:
                        await stream.send(out)
            except _NETWORK_ERRORS:
                if failure is None:
                    self.counters["auth_refused"] += 1
                    self._auth_log(stream, "closed the connection during authentication")
                    return None
        if scope.cancelled_caught:
            self.counters["handshake_timeouts"] += 1
            self._auth_log(stream, f"did not authenticate within {self.handshake_timeout_s:g}s")
            return None
        if failure is not None:
            self.counters["auth_refused"] += 1
            if isinstance(failure, HandshakeRefused):
                self._auth_log(stream, f"refused this node: {failure.reason}")
            else:
                self._auth_log(stream, f"refused: {failure.reason}")
            return None
        self.counters["auth_ok"] += 1
        return hs.unused_data()

    def _auth_log(self, stream: anyio.abc.ByteStream, what: str) -> None:
        peer = _peer_name(stream)
        held = self._log_throttle.allow((peer.rsplit(":", 1)[0], what))
        if held is not None:
            more = f" ({held} more like it held back)" if held else ""
            log.warning("rpc %s: peer %s %s%s", self.name, peer, what, more)

    async def _serve_calls(self, stream: RpcStream, early: bytes) -> None:
        conn = _Connection(stream, self.max_in_flight_per_connection, self.send_timeout)
        decoder = FrameDecoder(max_frame_bytes=self.max_frame_bytes)
        decoder.feed(early)
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as reading:
                watch = FrameWatch(self.frame_timeout_s, reading)
                tg.start_soon(watch.run)
                try:
                    while not conn.closed:
                        frame = decoder.next_frame()
                        if frame is None:
                            watch.partial(decoder.buffered)
                        else:
                            watch.started = None  # time spent dispatching is not the peer's
                            while frame is not None:
                                await self._dispatch(conn, tg, frame)
                                frame = decoder.next_frame()
                            await conn.flush_answered()
                            watch.completed(decoder.buffered)
                        self.counters["bytes_in"] += await receive_into_decoder(stream, decoder)
                except _NETWORK_ERRORS:
                    pass
                except FrameError as e:
                    log.warning("rpc %s: dropping a connection from %s: %s", self.name, _peer_name(stream), e)
            if watch.tripped:
                self.counters["frame_timeouts"] += 1
                log.warning("rpc %s: dropping a connection from %s: a frame begun %.0fs ago is still "
                            "incomplete (%d bytes buffered)", self.name, _peer_name(stream),
                            self.frame_timeout_s, decoder.buffered)
            # The caller is gone: nobody is waiting for the handlers still running.
            conn.closed = True
            tg.cancel_scope.cancel()

    async def _dispatch(self, conn: _Connection, tg: anyio.abc.TaskGroup, frame: Frame) -> None:
        h = frame.header
        kind = h[0]
        if kind == REQUEST:
            if len(h) < 5 or not isinstance(h[1], int):
                raise FrameError("malformed request header")
            at_once = self._at_once.get(h[2]) if isinstance(h[2], str) else None
            if at_once is not None and self._run_at_once(conn, frame, at_once):
                if conn.answered_bytes >= ANSWERED_FLUSH_BYTES:
                    await conn.flush_answered()
                return
            await conn.flush_answered()  # before a wait for a slot
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

    def _run_at_once(self, conn: _Connection, frame: Frame, at_once: AtOnceHandler) -> bool:
        """Answer a request from its at-once handler (the reply joins ``conn.answered``); False
        when that said LATER (or the request is one the task path must refuse)."""
        _, rid, method, args, timeout = frame.header[:5]
        if not isinstance(args, dict) or not (timeout is None or isinstance(timeout, (int, float))):
            return False
        try:
            out = at_once(args, frame.payload)
            if out is LATER:
                return False
            reply = out if isinstance(out, Reply) else Reply(result=out)
            try:
                buffers = encode_frame(response_header(rid, reply.result), reply.payload,
                                       max_frame_bytes=self.max_frame_bytes)
            except (TypeError, ValueError, OverflowError, FrameError) as e:
                raise RemoteError(f"{method} returned a reply that cannot be sent: {e}") from None
        except Exception as e:
            self.counters["errors"] += 1
            if not hasattr(e, "code"):
                log.exception("rpc %s: %s raised", self.name, method)
            code, message, details = to_wire(e)
            buffers = encode_frame(error_header(rid, code, message, details))
        self.counters["requests"] += 1
        size = sum(len(b) for b in buffers)
        self.counters["bytes_out"] += size
        conn.answered.extend(buffers)
        conn.answered_bytes += size
        return True

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
