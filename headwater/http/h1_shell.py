"""The HTTP/1.1 connection loop around ``h1.H1Connection``: reads, app calls, writes, in order.

One task per connection. The request body is pulled from the socket only as the app reads it
(``H1Body``); the response is written with backpressure (a streamed body is pulled from the
app only as the socket takes it; whole files go out with sendfile on plain TCP).

Time limits: reads carry a deadline the transport's watchdog enforces (header_timeout_s for a
head, idle_timeout_s between requests, body_timeout_s per body read, and the RateFloor's
deadline for min_body_rate_bytes_per_s); a send that makes no progress for send_timeout_s, or
whose peer acknowledges fewer than min_send_rate_bytes_per_s over a window of blocked sending
(``send_floor``), is cut by the watchdog as well, whichever path the response takes (bytes, a
stream, sendfile, an inline answer; plain or TLS).
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from typing import Any

import anyio
import anyio.abc

from headwater.http import h1
from headwater.http.errors import (
    BodyCut,
    ClientDisconnected,
    LocalProtocolError,
    ProtocolError,
    RequestTimeout,
)
from headwater.http.exchange import (
    NO_BODY,
    BodyReading,
    NoBody,
    OpenFile,
    Service,
    aclose_iterable,
    discard_body,
    error_response,
    override_for_broken_body,
    report_sent,
    split_target,
)
from headwater.http.guards import RateFloor
from headwater.http.protocol_stream import INLINE_ANSWERED, INLINE_FED, ProtocolStream
from headwater.http.transport import DISCONNECTS, RECV_BYTES, SocketStream
from headwater.http.types import FileBody, Headers, Request, Response, TlsSession, new_request
from headwater.splice import PipeSpan

# A request body is read in pieces this large: every piece costs the parser, the body event and
# the app's loop a round of Python (an S3 PUT's body read 64 KiB at a time spent more there than
# in receiving it), and the loop's transport hands over up to 256 KiB per read anyway.
BODY_RECV_BYTES = 256 * 1024

__all__ = ["H1Shell", "LINGER_S", "LINGER_BYTES"]

log = logging.getLogger("headwater.http")

LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024
_READ_FAILURES = (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError, ssl.SSLError)


class H1Body(BodyReading):
    """RequestBody for HTTP/1.1: pulls events (and socket reads) only when the app asks."""

    __slots__ = ("_h", "_head", "_leftover", "done", "disconnected", "failed", "scope")

    def __init__(self, shell: H1Shell, head: h1.RequestHead, scope: anyio.CancelScope) -> None:
        self._h = shell
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
                if not await h.read(h.limits.body_timeout_s, h.floor, BODY_RECV_BYTES):
                    self.failed = RequestTimeout(
                        "request body stalled past body_timeout_s or below min_body_rate")
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


def _plain(response: Response) -> tuple[list[tuple[str, str]], bytes]:
    assert isinstance(response.body, bytes)
    return response.headers, response.body


class AbortConnection(Exception):
    """Drop the connection without another byte (response half-sent)."""


class H1Shell:
    """One HTTP/1.1 connection: ``run`` answers its requests until it closes."""

    def __init__(self, service: Service, stream: anyio.abc.ByteStream, transport: SocketStream,
                 initial: bytes, scheme: str, client: tuple[str, int] | None,
                 local: tuple[str, int] | None, tls: TlsSession | None = None) -> None:
        self.service = service
        self.tls = tls
        self.limits = limits = service.limits
        self.stream = stream
        self.transport = transport
        self.scheme = scheme
        self.client = client
        self.local = local
        self.conn = h1.H1Connection(limits, clock=service.clock)
        self.floor = (RateFloor(limits.min_body_rate_bytes_per_s, limits.min_body_rate_window_s)
                      if limits.min_body_rate_bytes_per_s else None)
        self.can_sendfile = stream is transport
        # Answer lone requests inline (_inline) when the app can answer at once and the bytes
        # come straight from the loop's transport (plain TCP on asyncio).
        self.inline = (service.answers_now and stream is transport
                       and isinstance(transport, ProtocolStream))
        self.closed_inline = False
        self.declined: tuple[h1.RequestHead, Request] | None = None
        self.answered = False  # the last response went out whole (_answer; for its on_sent)
        if initial:
            self.conn.receive_data(initial)

    async def read(self, timeout: float, floor: RateFloor | None = None, max_bytes: int = RECV_BYTES) -> bool:
        """One socket read (at most ``max_bytes``) into the parser; False if nothing came within
        ``timeout`` (or the body ``floor`` was broken)."""
        transport = self.transport
        if transport.read_expired:
            return False
        now = time.monotonic()
        deadline = now + timeout
        if floor is not None:
            deadline = min(deadline, floor.begin_wait(now))
        transport.read_deadline = deadline
        try:
            data = await self.stream.receive(max_bytes)
        except _READ_FAILURES:
            data = b""
        finally:
            transport.read_deadline = math.inf
        if transport.read_expired:
            return False
        if floor is not None and not floor.end_wait(len(data), time.monotonic()):
            return False
        self.conn.receive_data(data)
        return True

    async def run(self) -> None:
        conn = self.conn
        first = True
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
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(1):
                    try:
                        await self.stream.aclose()
                    except Exception:
                        pass

    async def _wait_for_head(self, first: bool) -> h1.Event | None:
        # The read of ``read`` inlined: this wait happens once per request.
        conn = self.conn
        transport = self.transport
        header_phase = first or conn.head_in_progress
        deadline = time.monotonic() + (
            self.limits.header_timeout_s if header_phase else self.limits.idle_timeout_s)
        while True:
            if transport.read_expired:
                break
            transport.read_deadline = deadline
            try:
                if self.inline and not header_phase:
                    data = await transport.receive_unless_inline(  # type: ignore[union-attr]
                        RECV_BYTES, self._inline)
                else:
                    data = await self.stream.receive(RECV_BYTES)
            except _READ_FAILURES:
                data = b""
            finally:
                transport.read_deadline = math.inf
            if transport.read_expired:
                break
            if data is None:  # _inline took bytes into the parser and left the rest to us
                if self.closed_inline:
                    return None  # it answered a request whose response closes the connection
                deadline = time.monotonic() + self.limits.idle_timeout_s  # (the peer just spoke)
            else:
                conn.receive_data(data)
            ev = conn.next_event()
            if ev is not h1.NEED_DATA:
                return ev
            if not header_phase and conn.head_in_progress:
                header_phase = True
                deadline = time.monotonic() + self.limits.header_timeout_s
            if deadline <= time.monotonic():
                break
        if conn.head_in_progress:  # slowloris: cut off, with a 408 for honest slow peers
            conn._fail(RequestTimeout("request head not received within header_timeout_s"))
            err = conn.next_event()
            if isinstance(err, h1.RequestInvalid):
                await self._send_simple(error_response(408))
        return None

    def _inline(self, data: bytes) -> object:
        """Offered each read while the connection waits between requests (from the loop's read
        callback, ``ProtocolStream.receive_unless_inline``): a lone request without a body that
        the app answers at once (``Service.answer_now``) is parsed, answered and written here,
        the same bytes ``run`` would write for it, without waking the connection's task.
        Anything else is left to ``run`` (INLINE_FED: the bytes are in the parser)."""
        conn = self.conn
        try:
            conn.receive_data(data)
            head = conn.lone_request()
            if head is None:
                return INLINE_FED
            request = self._request(head, NO_BODY)
            answer = self.service.answer_now(request)
            if answer is None:
                self.declined = (head, request)  # (_exchange's request for it: built once)
                return INLINE_FED
            conn.take_lone_request(head)
            response, close = answer
            whole = True
            try:
                out = conn.send_whole(response.status, response.headers, response.body,  # type: ignore[arg-type]
                                      close=close, prepared=response.prepared)
            except LocalProtocolError:
                log.exception("unsendable response to %s %s", head.method, head.target)
                out = conn.send_whole(500, *_plain(error_response(500)), close=close)
                whole = False  # (the core's 500 went out, not the app's answer)
            sent = self.transport.write_now(out)  # type: ignore[union-attr]
            if response.on_sent is not None:
                report_sent(response.on_sent, sent and whole)
        except Exception:  # (nothing may escape into the loop's callback)
            log.exception("answering inline failed")
            sent = False
        if not sent or not conn.keep_alive:
            self.closed_inline = True
            return INLINE_FED  # _wait_for_head ends the connection
        conn.start_next_cycle()
        self.transport.read_deadline = time.monotonic() + self.limits.idle_timeout_s
        return INLINE_ANSWERED

    def _request(self, head: h1.RequestHead, body: H1Body | NoBody) -> Request:
        path, query = split_target(head.target)
        fields = head.headers
        host = ""
        for name, value in fields:
            if name == "host":
                host = value
                break
        return new_request(head.method, head.target, path, query, Headers.from_lower(fields), body,
                           head.http_version, self.scheme, self.client, self.local, host, self.tls)

    async def _send_simple(self, response: Response) -> None:
        assert isinstance(response.body, bytes)
        with anyio.move_on_after(self.limits.send_timeout_s):
            try:
                data = self.conn.send_response(response.status, response.headers,
                                               body_length=len(response.body), close=True)
                data += self.conn.send_data(response.body) + self.conn.send_end()
                await self.stream.send(data)
            except (*DISCONNECTS, LocalProtocolError):
                pass

    async def _exchange(self, head: h1.RequestHead) -> bool:
        """Answer one request; True if the connection may carry the next one."""
        conn = self.conn
        body: H1Body | NoBody
        if not head.has_body and conn.end_without_body():
            # Nothing to read, so nothing can find the client gone mid-body: no scope to cancel.
            scope: anyio.CancelScope | None = None
            body = NO_BODY
        else:
            scope = anyio.CancelScope()
            body = H1Body(self, head, scope)
            if self.floor is not None:
                self.floor.reset()
        declined, self.declined = self.declined, None
        if declined is not None and declined[0] is head and body is NO_BODY:
            request = declined[1]
        else:
            request = self._request(head, body)
        if scope is None:
            response, close = await self.service.run_app(request)
        else:
            response, close = await self.service.call(request, scope)
        if response is None:
            return False
        hook = response.on_sent
        if hook is None:
            return await self._answer(head, body, response, close)
        self.answered = False
        try:
            return await self._answer(head, body, response, close)
        finally:
            # (False too when the request body broke and the core's own answer went out)
            report_sent(hook, self.answered and body.failed is None)

    async def _answer(self, head: h1.RequestHead, body: H1Body | NoBody, response: Response,
                      close: bool) -> bool:
        """Send the app's answer to ``head``; True if the connection may carry the next request.
        ``answered`` tells whether the response went out whole (for its ``on_sent``)."""
        conn = self.conn
        if body.disconnected:
            await discard_body(response.body)
            return False
        if body.failed is not None:
            close = True
            response = await override_for_broken_body(response, body.failed)
        out = response.body
        if type(out) is bytes and len(out) < RECV_BYTES:
            # The common small answer, framed and sent in one piece without _write's dispatch.
            whole = True
            try:
                out = conn.send_whole(response.status, response.headers, out, close=close,
                                      prepared=response.prepared)
            except LocalProtocolError:
                log.exception("unsendable response to %s %s", head.method, head.target)
                out = conn.send_whole(500, *_plain(error_response(500)), close=close)
                whole = False  # (the core's 500 went out, not the app's answer)
            try:
                await self.stream.send(out)
            except DISCONNECTS:
                return False
            self.answered = whole
        elif not await self._write(response, head, close):
            return False
        else:
            self.answered = True
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
        except DISCONNECTS:
            return False
        except AbortConnection:
            return False
        return True

    async def _write_file(self, response: Response, body: FileBody, head: h1.RequestHead,
                          close: bool) -> None:
        conn = self.conn
        try:
            f = OpenFile(body)
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
                    # the head goes with the file's first bytes (MSG_MORE), as nginx's tcp_nopush
                    await self.transport.sendfile(f.fd, f.offset, f.length, head=out)
                    conn.note_body_sent(f.length)
                else:
                    async for chunk in f.chunks():
                        await self.stream.send(out + conn.send_data(chunk))
                        out = b""
                    if out:
                        await self.stream.send(out)
                end = conn.send_end()
                if end:
                    await self.stream.send(end)
            except LocalProtocolError:
                log.exception("file body failed for %s %s", head.method, head.target)
                raise AbortConnection from None
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
            await aclose_iterable(body)
            await self._write(error_response(500), head, close)
            return
        if conn.our_state is not h1.SEND_BODY:
            await aclose_iterable(body)
            await self.stream.send(out)
            return
        try:
            splice = self.can_sendfile and conn.sends_length_framed
            async for chunk in body:
                if not chunk:
                    continue
                if type(chunk) is PipeSpan:
                    if splice:
                        # the pipe's pages go to the socket, never through this process
                        conn.note_body_sent(len(chunk))
                        await self.transport.splice(chunk, head=out)
                        out = b""
                        continue
                    chunk = bytes(chunk)
                await self.stream.send(out + conn.send_data(chunk) if out else conn.send_data(chunk))
                out = b""
            await self.stream.send(out + conn.send_end())
        except DISCONNECTS:
            raise
        except BodyCut as e:
            log.info("response to %s %s cut short: %s", head.method, head.target, e)
            raise AbortConnection from None
        except ProtocolError as e:
            # The request body broke mid-stream (an echoing app): the client's fault, no traceback.
            log.info("request body of %s %s failed while streaming the response: %s",
                     head.method, head.target, e)
            raise AbortConnection from None
        except Exception:
            # Headers may be out already: the only honest signal left is to cut the connection.
            log.exception("streaming the response to %s %s failed", head.method, head.target)
            raise AbortConnection from None
        finally:
            await aclose_iterable(body)

    async def _drain(self) -> bool:
        """Read and discard the rest of a small unread request body."""
        conn = self.conn
        while True:
            ev = conn.next_event()
            if ev is h1.NEED_DATA:
                if not await self.read(self.limits.body_timeout_s, self.floor):
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
