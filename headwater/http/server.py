"""The socket shell around the sans-IO HTTP/1.1 and HTTP/2 connections, on anyio.

``serve(app, host=..., port=...)`` listens, accepts up to ``max_connections`` connections, and
runs one task per connection (plus one per HTTP/2 stream) under one task group: cancelling
``serve`` closes the listener and every connection (HTTP/2 peers get a GOAWAY first).

A connection picks its protocol once: ALPN on TLS, otherwise the client preface (``PRI *
HTTP/2.0`` means h2c with prior knowledge). Everything else is the protocol objects' business;
this module only moves bytes, enforces time limits, runs the app and maps errors to the wire.

Plain TCP uses non-blocking sockets directly (``SocketStream``), identical on asyncio and trio,
so a whole-file response on HTTP/1.1 can go out with ``os.sendfile``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import time
from collections import deque
from typing import Any, AsyncIterator, Callable, Mapping

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from headwater.config import HttpLimits, KiB
from headwater.http import h1, h2
from headwater.http.errors import (
    H2_INTERNAL_ERROR,
    H2_NO_ERROR,
    ClientDisconnected,
    HttpError,
    LocalProtocolError,
    ProtocolError,
    RequestTimeout,
)
from headwater.http.types import App, BodyTooLarge, FileBody, Headers, Request, Response

__all__ = ["serve", "bind_socket", "SocketStream", "error_response"]

log = logging.getLogger("headwater.http")

RECV_BYTES = 64 * KiB
FILE_CHUNK_BYTES = 256 * KiB
LINGER_S = 2.0
LINGER_BYTES = 1024 * KiB
_SHUTDOWN_GRACE_S = 1.0
_IMMEDIATE_OPS_PER_CHECKPOINT = 16

_DISCONNECTS = (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError,
                ClientDisconnected, ConnectionError, ssl.SSLError)


# --- listening -----------------------------------------------------------------------------------

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


async def serve(app: App, *, host: str = "127.0.0.1", port: int = 0,
                limits: HttpLimits = HttpLimits(), ssl_context: ssl.SSLContext | None = None,
                reuse_port: bool = False, sock: socket.socket | None = None,
                task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` until cancelled. ``task_status.started`` receives the bound port.

    ``sock``, if given, is an already listening socket (see ``bind_socket``); host, port and
    reuse_port are then ignored.
    """
    listener = sock if sock is not None else bind_socket(host, port, reuse_port=reuse_port)
    listener.setblocking(False)
    server = _Server(app, limits, ssl_context)
    slots = anyio.Semaphore(limits.max_connections)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.watchdog.run)
            task_status.started(listener.getsockname()[1])
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
                tg.start_soon(server.connection, conn, addr, slots)
    finally:
        listener.close()


# --- transport -----------------------------------------------------------------------------------

#: An HTTP/2 request body the app did not read is let in (and discarded) up to this size rather
#: than stopped with RST_STREAM(NO_ERROR): some clients (httpx/h2, curl) fail the whole request
#: when the reset races their last DATA frames, though RFC 9113 allows it. Flow control keeps
#: the cost to this many bytes.
H2_DRAIN_MAX_BYTES = 1024 * 1024


class SocketStream(anyio.abc.ByteStream):
    """An anyio byte stream straight over a non-blocking socket (both backends), with sendfile."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._immediate = 0
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

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

    async def send(self, item: bytes) -> None:
        sock = self._sock
        view = memoryview(item)
        while view:
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                self._immediate = 0
                await anyio.wait_writable(sock)
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            view = view[n:]
        await self._fairness()

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file ``fd`` from ``offset`` with os.sendfile."""
        out = self._sock.fileno()
        while count > 0:
            try:
                n = os.sendfile(out, fd, offset, min(count, 1 << 30))
            except (BlockingIOError, InterruptedError):
                await anyio.wait_writable(self._sock)
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            if n == 0:
                raise LocalProtocolError("file shorter than the response claimed (truncated?)")
            offset += n
            count -= n
            await anyio.lowlevel.checkpoint()

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
        sock = self._sock
        return {
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: sock.getsockname,
            SocketAttribute.remote_address: sock.getpeername,
        }


# --- shared --------------------------------------------------------------------------------------

def error_response(status: int, detail: str = "") -> Response:
    """The plain-text answer the core gives on its own (400, 408, 413, 431, 500, ...)."""
    text = f"{status} {h1.reason_phrase(status)}\n"
    if detail:
        text += detail + "\n"
    return Response(status=status, headers=[("content-type", "text/plain; charset=utf-8")],
                    body=text.encode())


def _split_target(target: str) -> tuple[str, str]:
    if target[:1] != "/" and "://" in target:  # absolute-form
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    return path, query


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class _File:
    """An open FileBody: the region to send, validated against the file's size."""

    def __init__(self, body: FileBody) -> None:
        self.fd = os.open(os.fspath(body.path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(self.fd).st_size
            self.offset = body.offset
            self.length = size - body.offset if body.length is None else body.length
            if self.offset < 0 or self.length < 0 or self.offset + self.length > size:
                raise LocalProtocolError(f"FileBody region {body.offset}+{body.length} is outside "
                                         f"{os.fspath(body.path)} ({size} bytes)")
        except BaseException:
            os.close(self.fd)
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        offset, left = self.offset, self.length
        while left > 0:
            data = await anyio.to_thread.run_sync(os.pread, self.fd, min(left, FILE_CHUNK_BYTES), offset)
            if not data:
                raise LocalProtocolError("file shorter than the response claimed (truncated?)")
            offset += len(data)
            left -= len(data)
            yield data

    def close(self) -> None:
        os.close(self.fd)


async def _aclose_iterable(body: Any) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            try:
                await aclose()
            except Exception:
                log.exception("closing the response body iterator failed")


class _Watchdog:
    """Coarse read timeouts without a cancel scope per read (they cost more than the request).

    A connection waiting on the socket sets ``deadline`` (time.monotonic); every ``tick`` the
    watchdog shuts the read side of connections past it. The pending read then sees end of
    file, the handler sees ``expired`` and answers 408 or closes, as the phase requires; the
    write side stays open for that answer. Timeouts fire up to one tick late.
    """

    def __init__(self, limits: HttpLimits) -> None:
        shortest = min(limits.header_timeout_s, limits.idle_timeout_s, limits.body_timeout_s)
        self.tick = min(1.0, max(0.02, shortest / 10))
        self.watched: set[_H1Handler] = set()

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.tick)
            now = time.monotonic()
            for h in self.watched:
                if h.deadline < now:
                    h.deadline = math.inf
                    h.expired = True
                    try:
                        h.sock.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass


class _Server:
    def __init__(self, app: App, limits: HttpLimits, ssl_context: ssl.SSLContext | None) -> None:
        self.app = app
        self.limits = limits
        self.ssl_context = ssl_context
        self.watchdog = _Watchdog(limits)

    async def connection(self, sock: socket.socket, addr: Any, slots: anyio.Semaphore) -> None:
        stream: anyio.abc.ByteStream = SocketStream(sock)
        try:
            client = _address(addr)
            local = _address(sock.getsockname())
            if self.ssl_context is not None:
                with anyio.move_on_after(self.limits.header_timeout_s):
                    stream = await TLSStream.wrap(stream, server_side=True,
                                                  ssl_context=self.ssl_context,
                                                  standard_compatible=False)
                if not isinstance(stream, TLSStream):
                    return  # handshake too slow
                if stream.extra(TLSAttribute.alpn_protocol, None) == "h2":
                    await _H2Handler(self, stream, b"", "https", client, local).run()
                else:
                    await _H1Handler(self, stream, sock, b"", "https", client, local).run()
                return
            data = b""
            with anyio.move_on_after(self.limits.header_timeout_s):
                data = await stream.receive(RECV_BYTES)
                while len(data) < len(h2.PREFACE) and h2.PREFACE.startswith(data):
                    data += await stream.receive(RECV_BYTES)
            if not data:
                return
            if data.startswith(h2.PREFACE):
                await _H2Handler(self, stream, data, "http", client, local).run()
            else:
                await _H1Handler(self, stream, sock, data, "http", client, local).run()
        except _DISCONNECTS:
            pass
        except Exception:
            log.exception("connection from %s failed", addr)
        finally:
            slots.release()
            sock.close()

    async def call_app(self, request: Request, scope: anyio.CancelScope) -> tuple[Response | None, bool]:
        """Run the app; (response, close). None when the client is gone (nothing to write)."""
        close = False
        response: Response | None = None
        with scope:
            try:
                response = await self.app(request)
                if not isinstance(response, Response):
                    raise TypeError(f"the app returned {type(response).__name__}, not a Response")
            except ClientDisconnected:
                return None, True
            except HttpError as e:
                if not isinstance(e, ProtocolError):
                    log.exception("app failed on %s %s", request.method, request.target)
                response = error_response(e.http_status)
                close = isinstance(e, ProtocolError)
            except Exception:
                log.exception("app failed on %s %s", request.method, request.target)
                response = error_response(500)
        if scope.cancelled_caught:
            return None, True
        return response, close


# --- HTTP/1.1 ------------------------------------------------------------------------------------

class _BodyReading:
    """What both protocols' request bodies build on ``receive`` and ``content_length``."""

    content_length: int | None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise NotImplementedError

    async def read_all(self, limit: int) -> bytes:
        declared = self.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge(f"body of {declared} bytes exceeds {limit}")
        parts: list[bytes] = []
        total = 0
        while chunk := await self.receive(RECV_BYTES):
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(f"body exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.receive(RECV_BYTES):
            yield chunk


class _H1Body(_BodyReading):
    """RequestBody for HTTP/1.1: pulls events (and socket reads) only when the app asks."""

    __slots__ = ("_h", "_head", "_leftover", "done", "disconnected", "failed", "scope")

    def __init__(self, handler: _H1Handler, head: h1.RequestHead, scope: anyio.CancelScope) -> None:
        self._h = handler
        self._head = head
        self._leftover = b""
        self.done = False
        self.disconnected = False
        self.failed: ProtocolError | None = None
        self.scope = scope

    @property
    def expects_continue(self) -> bool:
        return self._head.expects_continue

    @property
    def content_length(self) -> int | None:
        return None if self._head.chunked else (self._head.content_length or 0)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
            return data
        if self.done:
            return b""
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")
        if self.failed is not None:
            raise self.failed
        h = self._h
        conn = h.conn
        if self._head.expects_continue and not conn.continue_sent:
            cont = conn.send_continue()
            if cont:
                await h.stream.send(cont)
        while True:
            ev = conn.next_event()
            if ev is h1.NEED_DATA:
                if not await h.read(h.limits.body_timeout_s):
                    self.failed = RequestTimeout("request body stalled past body_timeout_s")
                    raise self.failed
                continue
            kind = type(ev)
            if kind is h1.BodyData:
                data = ev.data  # type: ignore[union-attr]
                if len(data) > max_bytes:
                    data, self._leftover = data[:max_bytes], data[max_bytes:]
                return data
            if kind is h1.RequestEnd:
                self.done = True
                return b""
            if kind is h1.RequestInvalid:
                self.failed = ev.error  # type: ignore[union-attr]
                raise self.failed
            # ConnectionClosed: unwind the app; nothing will be written
            self.disconnected = True
            self.scope.cancel()
            raise ClientDisconnected("the client closed the connection mid-body")

class _H1Handler:
    def __init__(self, server: _Server, stream: anyio.abc.ByteStream, sock: socket.socket,
                 initial: bytes, scheme: str, client: tuple[str, int] | None,
                 local: tuple[str, int] | None) -> None:
        self.sock = sock
        self.deadline = math.inf  # read deadline, enforced by the server's watchdog
        self.expired = False
        self.app = server.app
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.scheme = scheme
        self.client = client
        self.local = local
        self.conn = h1.H1Connection(server.limits)
        self.can_sendfile = isinstance(stream, SocketStream)
        if initial:
            self.conn.receive_data(initial)

    async def read(self, timeout: float) -> bool:
        """One socket read into the parser; False if nothing came within ``timeout``."""
        if self.expired:
            return False
        self.deadline = time.monotonic() + timeout
        try:
            data = await self.stream.receive(RECV_BYTES)
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError, ssl.SSLError):
            data = b""
        finally:
            self.deadline = math.inf
        if self.expired:
            return False
        self.conn.receive_data(data)
        return True

    async def run(self) -> None:
        conn = self.conn
        first = True
        watched = self.server.watchdog.watched
        watched.add(self)
        try:
            while True:
                ev = conn.next_event()
                if ev is h1.NEED_DATA:
                    ev = await self._wait_for_head(first)
                    if ev is None:
                        return
                first = False
                kind = type(ev)
                if kind is h1.RequestHead:
                    if not await self._exchange(ev):  # type: ignore[arg-type]
                        return
                    conn.start_next_cycle()
                elif kind is h1.RequestInvalid:
                    await self._send_simple(error_response(ev.error.http_status, str(ev.error)))  # type: ignore[union-attr]
                    await self._linger()
                    return
                else:  # ConnectionClosed
                    return
        finally:
            watched.discard(self)
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(1):
                    try:
                        await self.stream.aclose()
                    except Exception:
                        pass

    async def _wait_for_head(self, first: bool) -> h1.Event | None:
        conn = self.conn
        header_phase = first or conn.head_in_progress
        deadline = time.monotonic() + (
            self.limits.header_timeout_s if header_phase else self.limits.idle_timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self.read(remaining):
                if conn.head_in_progress:  # slowloris: cut off, with a 408 for honest slow peers
                    conn._fail(RequestTimeout("request head not received within header_timeout_s"))
                    err = conn.next_event()
                    if isinstance(err, h1.RequestInvalid):
                        await self._send_simple(error_response(408))
                return None
            ev = conn.next_event()
            if ev is not h1.NEED_DATA:
                return ev
            if not header_phase and conn.head_in_progress:
                header_phase = True
                deadline = time.monotonic() + self.limits.header_timeout_s

    async def _send_simple(self, response: Response) -> None:
        assert isinstance(response.body, bytes)
        with anyio.move_on_after(self.limits.body_timeout_s):
            try:
                data = self.conn.send_response(response.status, response.headers,
                                               body_length=len(response.body), close=True)
                data += self.conn.send_data(response.body) + self.conn.send_end()
                await self.stream.send(data)
            except (*_DISCONNECTS, LocalProtocolError):
                pass

    async def _exchange(self, head: h1.RequestHead) -> bool:
        """Answer one request; True if the connection may carry the next one."""
        conn = self.conn
        scope = anyio.CancelScope()
        body = _H1Body(self, head, scope)
        path, query = _split_target(head.target)
        headers = Headers(head.headers)
        request = Request(method=head.method, target=head.target, path=path, query=query,
                          headers=headers, body=body, http_version=head.http_version,
                          scheme=self.scheme, client=self.client, server=self.local,
                          host=headers.get("host") or "")
        response, close = await self.server.call_app(request, scope)
        if response is None or body.disconnected:
            return False
        if body.failed is not None:
            close = True
        if not await self._write(response, head, close):
            return False
        if conn.their_state is h1.BODY:
            if conn.keep_alive and conn.drain_before_next:
                if not await self._drain():
                    return False
            else:
                await self._linger()
                return False
        return conn.keep_alive

    async def _write(self, response: Response, head: h1.RequestHead, close: bool) -> bool:
        """Send the response; False if the connection must be dropped (peer gone, broken body)."""
        conn = self.conn
        body = response.body
        try:
            if isinstance(body, (bytes, bytearray, memoryview)):
                try:
                    out = conn.send_response(response.status, response.headers,
                                             body_length=len(body), close=close)
                except LocalProtocolError:
                    log.exception("unsendable response to %s %s", head.method, head.target)
                    return await self._write(error_response(500), head, close)
                if conn.our_state is h1.SEND_BODY:
                    data = conn.send_data(bytes(body))
                    if len(data) < RECV_BYTES:
                        out += data
                    else:  # do not copy a large body just to prepend the head
                        await self.stream.send(out)
                        out = data
                    out += conn.send_end()
                await self.stream.send(out)
            elif isinstance(body, FileBody):
                await self._write_file(response, body, head, close)
            else:
                await self._write_stream(response, body, head, close)
        except _DISCONNECTS:
            return False
        except _AbortConnection:
            return False
        return True

    async def _write_file(self, response: Response, body: FileBody, head: h1.RequestHead,
                          close: bool) -> None:
        conn = self.conn
        try:
            f = _File(body)
        except (OSError, LocalProtocolError):
            log.exception("cannot send %s for %s %s", body.path, head.method, head.target)
            await self._write(error_response(500), head, close)
            return
        try:
            try:
                out = conn.send_response(response.status, response.headers, body_length=f.length,
                                         close=close)
            except LocalProtocolError:
                log.exception("unsendable response to %s %s", head.method, head.target)
                await self._write(error_response(500), head, close)
                return
            if conn.our_state is not h1.SEND_BODY:
                await self.stream.send(out)
                return
            try:
                if self.can_sendfile and conn.sends_length_framed:
                    await self.stream.send(out)
                    await self.stream.sendfile(f.fd, f.offset, f.length)  # type: ignore[attr-defined]
                    conn.note_body_sent(f.length)
                else:
                    async for chunk in f.chunks():
                        await self.stream.send(out + conn.send_data(chunk))
                        out = b""
                    if out:
                        await self.stream.send(out)
                await self.stream.send(conn.send_end())
            except LocalProtocolError:
                log.exception("file body failed for %s %s", head.method, head.target)
                raise _AbortConnection from None
        finally:
            f.close()

    async def _write_stream(self, response: Response, body: Any, head: h1.RequestHead,
                            close: bool) -> None:
        conn = self.conn
        try:
            out = conn.send_response(response.status, response.headers, body_length=None,
                                     close=close)
        except LocalProtocolError:
            log.exception("unsendable response to %s %s", head.method, head.target)
            await _aclose_iterable(body)
            await self._write(error_response(500), head, close)
            return
        if conn.our_state is not h1.SEND_BODY:
            await _aclose_iterable(body)
            await self.stream.send(out)
            return
        try:
            async for chunk in body:
                if not chunk:
                    continue
                await self.stream.send(out + conn.send_data(chunk) if out else conn.send_data(chunk))
                out = b""
            await self.stream.send(out + conn.send_end())
        except _DISCONNECTS:
            raise
        except Exception:
            # Headers may be out already: the only honest signal left is to cut the connection.
            log.exception("streaming the response to %s %s failed", head.method, head.target)
            raise _AbortConnection from None
        finally:
            await _aclose_iterable(body)

    async def _drain(self) -> bool:
        """Read and discard the rest of a small unread request body."""
        conn = self.conn
        while True:
            ev = conn.next_event()
            if ev is h1.NEED_DATA:
                if not await self.read(self.limits.body_timeout_s):
                    return False
                continue
            if type(ev) is h1.RequestEnd:
                return True
            if type(ev) is not h1.BodyData:
                return False

    async def _linger(self) -> None:
        """Close politely: stop writing, then swallow what the peer is still sending for a while,
        so that closing with unread data does not reset the connection under our response."""
        try:
            await self.stream.send_eof()
        except Exception:
            return
        received = 0
        with anyio.move_on_after(LINGER_S):
            try:
                while received < LINGER_BYTES:
                    received += len(await self.stream.receive(RECV_BYTES))
            except Exception:
                pass


class _AbortConnection(Exception):
    """Drop the connection without another byte (response half-sent)."""


# --- HTTP/2 --------------------------------------------------------------------------------------

class _H2Stream(_BodyReading):
    """One HTTP/2 request in flight; also its RequestBody."""

    __slots__ = ("sid", "_h", "_chunks", "ended", "reset", "failed", "_wakeup", "in_receive",
                 "scope", "_expects_continue", "_content_length", "continue_sent", "received")

    def __init__(self, handler: _H2Handler, req: h2.StreamRequest) -> None:
        self.sid = req.stream_id
        self._h = handler
        self._chunks: deque[list[Any]] = deque()  # [data, unacknowledged flow-controlled bytes]
        self.ended = req.end_stream
        self.reset = False
        self.failed: ProtocolError | None = None
        self._wakeup: anyio.Event | None = None
        self.in_receive = False
        self.scope = anyio.CancelScope()
        self._expects_continue = req.expects_continue
        self._content_length = req.content_length
        self.continue_sent = False
        self.received = 0

    # fed by the connection's reader task

    def feed(self, data: bytes, flow: int) -> None:
        self.received += len(data)
        self._chunks.append([data, flow])
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def fail(self, error: ProtocolError) -> None:
        self.failed = error
        self._wake()

    def abort(self) -> None:
        """The peer reset the stream or left: wake a receiver with ClientDisconnected, or cancel."""
        self.reset = True
        if self.in_receive:
            self._wake()
        else:
            self.scope.cancel()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def discard(self) -> int:
        """Drop unread data; the flow-controlled bytes to hand back to the connection window."""
        n = sum(c[1] for c in self._chunks)
        self._chunks.clear()
        return n

    # RequestBody

    @property
    def expects_continue(self) -> bool:
        return self._expects_continue

    @property
    def content_length(self) -> int | None:
        return self._content_length

    async def receive(self, max_bytes: int = 65536) -> bytes:
        h = self._h
        while True:
            if self.reset:
                self.scope.cancel()
                raise ClientDisconnected("the client reset the stream")
            if self._chunks:
                chunk = self._chunks[0]
                data: bytes = chunk[0]
                if len(data) > max_bytes:
                    out = data[:max_bytes]
                    chunk[0] = data[max_bytes:]
                    ack = len(out)
                    chunk[1] -= ack
                else:
                    out = data
                    ack = chunk[1]
                    self._chunks.popleft()
                h.conn.acknowledge(self.sid, ack)
                await h.flush()
                return out
            if self.failed is not None:
                raise self.failed
            if self.ended:
                return b""
            if self._expects_continue and not self.continue_sent:
                self.continue_sent = True
                h.conn.send_informational(self.sid, 100)
                await h.flush()
            self._wakeup = wakeup = anyio.Event()
            self.in_receive = True
            try:
                with anyio.move_on_after(h.limits.body_timeout_s) as timeout:
                    await wakeup.wait()
            finally:
                self.in_receive = False
            if timeout.cancelled_caught:
                self.failed = RequestTimeout("request body stalled past body_timeout_s")

class _H2Handler:
    def __init__(self, server: _Server, stream: anyio.abc.ByteStream, initial: bytes, scheme: str,
                 client: tuple[str, int] | None, local: tuple[str, int] | None) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.scheme = scheme
        self.client = client
        self.local = local
        self.conn = h2.H2Connection(server.limits)
        self.conn.initiate()
        self.initial = initial
        self.streams: dict[int, _H2Stream] = {}
        self._write_lock = anyio.Lock()
        self._window = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    async def flush(self) -> None:
        async with self._write_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send(data)

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await self._read_loop()
                finally:
                    for st in list(self.streams.values()):
                        st.abort()
        finally:
            # GOAWAY (also when serve() is being cancelled), then close.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(_SHUTDOWN_GRACE_S):
                    try:
                        self.conn.close()
                        data = self.conn.data_to_send()
                        if data:
                            await self.stream.send(data)
                    except Exception:
                        pass
                    try:
                        await self.stream.aclose()
                    except Exception:
                        pass

    async def _read_loop(self) -> None:
        if self.initial:
            self._dispatch(self.conn.receive_data(self.initial))
        await self.flush()
        while not self.conn.closed:
            data = None
            with anyio.move_on_after(self.limits.idle_timeout_s):
                try:
                    data = await self.stream.receive(RECV_BYTES)
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError, ssl.SSLError):
                    data = b""
            if data is None:
                if not self.streams:
                    return  # idle: GOAWAY and close
                continue
            self._dispatch(self.conn.receive_data(data))
            await self.flush()

    def _dispatch(self, events: list[h2.Event]) -> None:
        for ev in events:
            kind = type(ev)
            if kind is h2.StreamData:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.feed(ev.data, ev.flow_controlled_length)  # type: ignore[union-attr]
                else:
                    self.conn.acknowledge(ev.stream_id, ev.flow_controlled_length)  # type: ignore[union-attr]
            elif kind is h2.StreamRequest:
                st = _H2Stream(self, ev)  # type: ignore[arg-type]
                self.streams[st.sid] = st
                assert self._tg is not None
                self._tg.start_soon(self._run_stream, st, ev)
            elif kind is h2.StreamEnd:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.end()
            elif kind is h2.StreamReset:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.abort()
            elif kind is h2.WindowOpened:
                self._window.set()
                self._window = anyio.Event()
            elif kind is h2.StreamInvalid:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.fail(ev.error)  # type: ignore[union-attr]
                else:
                    self._refuse(ev.stream_id, ev.error)  # type: ignore[union-attr]
            elif kind is h2.ConnectionEnded:
                for st in list(self.streams.values()):
                    st.abort()

    def _refuse(self, sid: int, error: ProtocolError) -> None:
        resp = error_response(error.http_status)
        body = resp.body
        assert isinstance(body, bytes)
        try:
            self.conn.send_response(sid, resp.status, resp.headers, body_length=len(body))
            self.conn.send_data(sid, body, end_stream=True)
            if not self.conn.request_complete(sid):
                self.conn.reset(sid, H2_NO_ERROR)
        except Exception:
            self.conn.reset(sid, error.h2_error_code)
        self.conn.stream_finished(sid)

    async def _run_stream(self, st: _H2Stream, req: h2.StreamRequest) -> None:
        conn = self.conn
        path, query = _split_target(req.target)
        request = Request(method=req.method, target=req.target, path=path, query=query,
                          headers=Headers(req.headers), body=st, http_version="2",
                          scheme=req.scheme or self.scheme, client=self.client, server=self.local,
                          host=req.authority)
        try:
            response, _ = await self.server.call_app(request, st.scope)
            if response is not None and not st.reset:
                st.scope = anyio.CancelScope()  # a reset now cancels the sending
                with st.scope:
                    await self._write(st, req, response)
        except _DISCONNECTS:
            pass
        except Exception:
            log.exception("HTTP/2 stream %d failed", st.sid)
            conn.reset(st.sid, H2_INTERNAL_ERROR)
        finally:
            self.streams.pop(st.sid, None)
            if not st.reset:
                if not conn.request_complete(st.sid):
                    # Answered before the whole body came: a short rest is let in (and
                    # acknowledged as it arrives, the stream is no longer in self.streams);
                    # otherwise stop the upload with RST_STREAM(NO_ERROR), RFC 9113 8.1.
                    declared = st.content_length
                    if declared is None or declared - st.received >= H2_DRAIN_MAX_BYTES:
                        conn.reset(st.sid, H2_NO_ERROR)
                conn.acknowledge(st.sid, st.discard())
            conn.stream_finished(st.sid)
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(_SHUTDOWN_GRACE_S):
                    try:
                        await self.flush()
                    except Exception:
                        pass

    async def _write(self, st: _H2Stream, req: h2.StreamRequest, response: Response) -> None:
        conn = self.conn
        body = response.body
        head_request = req.method == "HEAD"
        if isinstance(body, (bytes, bytearray, memoryview)):
            try:
                ended = conn.send_response(st.sid, response.status, response.headers,
                                           body_length=len(body), head_request=head_request)
            except LocalProtocolError:
                log.exception("unsendable response on stream %d", st.sid)
                return await self._write(st, req, error_response(500))
            if not ended:
                await self._send_data(st, bytes(body), end=True)
            else:
                await self.flush()
        elif isinstance(body, FileBody):
            try:
                f = _File(body)
            except (OSError, LocalProtocolError):
                log.exception("cannot send %s on stream %d", body.path, st.sid)
                return await self._write(st, req, error_response(500))
            try:
                ended = conn.send_response(st.sid, response.status, response.headers,
                                           body_length=f.length, head_request=head_request)
                if not ended:
                    async for chunk in f.chunks():
                        await self._send_data(st, chunk)
                    await self._send_data(st, b"", end=True)
                else:
                    await self.flush()
            finally:
                f.close()
        else:
            try:
                ended = conn.send_response(st.sid, response.status, response.headers,
                                           body_length=None, head_request=head_request)
                if not ended:
                    async for chunk in body:
                        if chunk:
                            await self._send_data(st, chunk)
                    await self._send_data(st, b"", end=True)
                else:
                    await self.flush()
            finally:
                await _aclose_iterable(body)

    async def _send_data(self, st: _H2Stream, data: bytes, *, end: bool = False) -> None:
        """DATA frames within the stream's and the connection's send windows."""
        conn = self.conn
        view = memoryview(data)
        while True:
            if st.reset:
                raise ClientDisconnected("the client reset the stream")
            if not view:
                if end:
                    conn.end_stream(st.sid)
                    await self.flush()
                return
            n = conn.outbound_window(st.sid)
            if n <= 0:
                window = self._window
                await self.flush()
                await window.wait()
                continue
            piece = view[:n]
            view = view[n:]
            conn.send_data(st.sid, bytes(piece), end_stream=end and not view)
            await self.flush()
            if end and not view:
                return
