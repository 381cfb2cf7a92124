"""An accepted connection as an asyncio ``Protocol`` on the event loop's own transport (uvloop's
in C), seen by the shells as the same anyio byte stream as ``transport.SocketStream``.

Used for plain TCP when serve() runs on asyncio (the default; ``serve(loop_transport=False)``
keeps ``SocketStream``). Compared with waiting for readiness on a bare socket, the socket stays
registered with the loop for the whole connection (no epoll_ctl pair per read), the loop reads
into its buffer and writes from it in C, and a read that finds bytes already buffered does not
suspend. The shells, the sans-IO parsers and the limits are unchanged;
trio keeps ``SocketStream``.

Backpressure both ways: reading pauses once ``READ_BUFFER_BYTES`` wait unread (the shell reads
only when the parser wants bytes, so a peer that pipelines or uploads faster than the app reads
stops being read); ``send`` returns once the transport's buffer is under its high-water mark.

Deadlines are the ``Watchdog``'s, as for ``SocketStream``: ``read_deadline``,
``send_blocked_since`` and ``send_floor`` (min_send_rate) are what the watchdog reads;
``expire_read`` ends a pending read with end of file, ``abort`` resets the connection. Sending
counts as blocked from the moment the transport pauses the writer until it resumes (its buffer
is back under the low-water mark), whether or not a task waits meanwhile: an inline answer is
written without waiting, and a peer reading it a few bytes at a time must not hold it (and the
connection) any longer than one a send waits for.

``sendfile``: uvloop's transports have none, so the stream calls ``os.sendfile`` on the socket
itself, only ever while the transport's own buffer is empty (so bytes keep their order). When
the kernel's buffer is full, one chunk is read and handed to the transport instead, which then
tells us when it has drained: the only wait for writability a transport offers.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import struct
import time
from collections import deque
from typing import Any, Callable, Mapping

import anyio
import anyio.abc
import anyio.lowlevel

from headwater.config import KiB
from headwater.http.errors import LocalProtocolError
from headwater.http.send_floor import SendFloor
from headwater.http.transport import socket_attributes
from headwater.splice import PipeSpan

__all__ = ["ProtocolStream", "open_protocol_stream", "READ_BUFFER_BYTES", "INLINE_ANSWERED", "INLINE_FED"]

READ_BUFFER_BYTES = 64 * KiB
SENDFILE_FALLBACK_BYTES = 256 * KiB
WRITE_HIGH_BYTES = 64 * KiB
WRITE_LOW_BYTES = 16 * KiB
_IMMEDIATE_OPS_PER_CHECKPOINT = 16
_LINGER_ABORT = struct.pack("ii", 1, 0)
MSG_MORE = getattr(socket, "MSG_MORE", 0)
INLINE_ANSWERED = "answered"
INLINE_FED = "fed"


async def open_protocol_stream(sock: socket.socket, send_timeout_s: float) -> ProtocolStream:
    """Hand the accepted ``sock`` to the running asyncio loop; the stream over it.

    The loop owns the socket from here on, and the caller must ``aclose`` the stream on every
    path: that is what closes the descriptor (uvloop closes it and detaches ``sock``).
    ``sock.close()`` does not: uvloop holds an I/O reference on the socket object, so close only
    marks it closed. A stream never closed keeps its connection open (the peer waits for our end
    of file) and leaks its descriptor until the garbage collector frees the transport and the
    socket object together; then both close the same descriptor number, uvloop's
    ``__dealloc__`` and the socket's finalizer, at a moment of the collector's choosing (from
    a worker thread, too). When the number was reused in between, by an accepted connection
    or a file, the second close takes that one away from under its owner: a live connection
    cut, and libuv still watching a number the kernel hands out again, so the next
    ``connect_accepted_socket`` on it fails with EEXIST (or EBADF, when the close falls between
    the accept and the registration).
    """
    loop = asyncio.get_running_loop()
    stream = ProtocolStream(sock, send_timeout_s)
    await loop.connect_accepted_socket(lambda: stream, sock)
    return stream


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


def _forget(waiters: list[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    """A waiter that was cancelled (not woken) leaves the list."""
    if not waiter.done() or waiters:
        try:
            waiters.remove(waiter)
        except ValueError:
            pass


class ProtocolStream(asyncio.Protocol, anyio.abc.ByteStream):
    """One connection: the Protocol the loop calls, and the byte stream the shell awaits."""

    def __init__(self, sock: socket.socket, send_timeout_s: float) -> None:
        # The loop the connection lives on, kept: asyncio.get_running_loop() asks the kernel for
        # the process id each time (its fork check), and a read waits once per request.
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._send_timeout_s = send_timeout_s
        self._fd = sock.fileno()
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._closed = False
        self._reading_paused = False
        self._writing_paused = False
        # Lists, not one slot: over TLS two tasks can wait at once (the shell's reader, and a
        # send whose TLS record layer must read first, or a receive that must flush). With one
        # slot the second waiter replaced the first, which then never woke: a connection with
        # nothing queued either way, and an HTTP/2 client waiting for its responses forever.
        self._read_waiters: list[asyncio.Future[None]] = []
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._immediate = 0
        # receive_unless_inline's: whom to offer input, and that it took some into its parser
        self._inline: Callable[[bytes], object] | None = None
        self._fed = False
        # the Watchdog's stamps, as on SocketStream
        self.read_deadline = math.inf
        self.read_expired = False
        self.send_blocked_since = math.inf
        self.send_expired = False
        self.send_floor: SendFloor | None = None  # the server's min_send_rate, if it sets one
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    # --- asyncio.Protocol (called by the loop) ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH_BYTES, WRITE_LOW_BYTES)

    def data_received(self, data: bytes) -> None:
        inline = self._inline
        if inline is not None and not self._chunks and not self._writing_paused and not self.read_expired:
            # The reader waits in receive_unless_inline and offered to take input right here
            # (the HTTP/1.1 shell answering a lone request): no wake-up, no task switch.
            taken = inline(data)
            if taken is INLINE_ANSWERED:
                return
            if taken is INLINE_FED:
                self._fed = True
                self._wake_reader()
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= READ_BUFFER_BYTES and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]
        if self._read_waiters:
            _wake(self._read_waiters)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep our sending side open: the shell closes when it is done

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._error = exc
        self._eof = True
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.send_blocked_since = now = time.monotonic()
        floor = self.send_floor
        if floor is not None:
            floor.blocked(now)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.send_blocked_since = math.inf
        floor = self.send_floor
        if floor is not None and not floor.unblocked(time.monotonic()):
            # (resumed between the floor's deadline and the watchdog's next tick)
            self.abort()
        self._wake_writer()

    def _wake_reader(self) -> None:
        if self._read_waiters:
            _wake(self._read_waiters)

    def _wake_writer(self) -> None:
        if self._drain_waiters:
            _wake(self._drain_waiters)

    # --- the byte stream (awaited by the shell) ---------------------------------------------

    async def _fairness(self) -> None:
        self._immediate += 1
        if self._immediate >= _IMMEDIATE_OPS_PER_CHECKPOINT:
            self._immediate = 0
            await anyio.lowlevel.checkpoint()

    async def _wait_readable(self) -> None:
        self._immediate = 0
        while not self._chunks and not self._fed:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._eof or self.read_expired:
                if self._error is not None:
                    raise anyio.BrokenResourceError from self._error
                raise anyio.EndOfStream
            waiter = self._loop.create_future()
            self._read_waiters.append(waiter)
            try:
                await waiter
            finally:
                _forget(self._read_waiters, waiter)

    async def receive(self, max_bytes: int = READ_BUFFER_BYTES) -> bytes:
        chunks = self._chunks
        if not chunks:
            await self._wait_readable()
        else:
            self._immediate += 1
            if self._immediate >= _IMMEDIATE_OPS_PER_CHECKPOINT:
                self._immediate = 0
                await anyio.lowlevel.checkpoint()
        data = chunks.popleft()
        if len(data) > max_bytes:
            # The rest stays a view of the chunk: slicing bytes both ways copied a 256 KiB read
            # taken 64 KiB at a time 2.25 times over; this way each byte is copied once.
            view = data if isinstance(data, memoryview) else memoryview(data)
            chunks.appendleft(view[max_bytes:])
            data = view[:max_bytes]
        if isinstance(data, memoryview):
            data = data.tobytes()
        self._buffered -= len(data)
        if self._reading_paused and self._buffered < READ_BUFFER_BYTES and not self._lost:
            self._reading_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]
        return data

    async def receive_unless_inline(self, max_bytes: int,
                                    inline: Callable[[bytes], object]) -> bytes | None:
        """``receive``, with each piece of input that arrives meanwhile first offered to
        ``inline`` (called from the loop's read callback, so it must not block): it answers
        ``INLINE_ANSWERED`` (taken and dealt with: go on waiting), ``INLINE_FED`` (taken into the
        caller's parser, which now has something to say: None is returned) or anything else (not
        taken: the bytes are read as usual). Input arrives inline only while nothing is buffered
        and the writer is not paused, so a peer that stops reading is answered no further."""
        if not self._chunks:
            self._inline = inline
            try:
                await self._wait_readable()
            finally:
                self._inline = None
                fed, self._fed = self._fed, False  # (a plain receive never sees the flag)
            if fed:
                return None
        return await self.receive(max_bytes)

    def write_now(self, data: bytes) -> bool:
        """Hand ``data`` to the transport without waiting (an inline answer); False if the
        connection can no longer take it."""
        if self._closed or self._lost or self.send_expired:
            return False
        self._transport.write(data)  # type: ignore[union-attr]
        return True

    def _check_writable(self) -> asyncio.Transport:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._lost or self.send_expired:
            raise anyio.BrokenResourceError from self._error
        return self._transport  # type: ignore[return-value]

    async def _wait_drained(self) -> None:
        """Wait for resume_writing (the watchdog sees sending as blocked from pause_writing)."""
        self._immediate = 0
        while self._writing_paused:
            self._check_writable()
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                _forget(self._drain_waiters, waiter)
        self._check_writable()

    async def send(self, item: bytes) -> None:
        if self._closed or self._lost or self.send_expired:
            self._check_writable()
        self._transport.write(item)  # type: ignore[union-attr]
        await self._after_write()

    async def send_many(self, pieces: list[bytes | memoryview]) -> None:
        """Send ``pieces`` in order, as one gathering write where the loop's transport has one."""
        if self._closed or self._lost or self.send_expired:
            self._check_writable()
        self._transport.writelines(pieces)  # type: ignore[union-attr]
        await self._after_write()

    async def _after_write(self) -> None:
        """Wait while the transport's buffer is over its high-water mark; otherwise yield to the
        loop every few writes (a fast peer never makes a write wait)."""
        if self._writing_paused:
            await self._wait_drained()
        else:
            self._immediate += 1
            if self._immediate >= _IMMEDIATE_OPS_PER_CHECKPOINT:
                self._immediate = 0
                await anyio.lowlevel.checkpoint()

    async def _wait_empty(self) -> None:
        """Until the transport's buffer is empty (the low-water mark at 0 for the wait)."""
        transport = self._check_writable()
        if not transport.get_write_buffer_size():
            return
        transport.set_write_buffer_limits(0, 0)  # pauses the writer now: something is buffered
        try:
            await self._wait_drained()
        finally:
            if not self._lost:
                transport.set_write_buffer_limits(WRITE_HIGH_BYTES, WRITE_LOW_BYTES)

    async def sendfile(self, fd: int, offset: int, count: int, *, head: bytes = b"") -> None:
        """Send ``head``, then ``count`` bytes of the file ``fd`` from ``offset`` (os.sendfile
        when the kernel takes them; one chunk through the transport when it does not).

        ``head`` goes straight to the socket with MSG_MORE when the transport holds nothing, so
        it shares a segment with the file's first bytes (what nginx gets from tcp_nopush).
        """
        if head:
            await self._send_head(head)
        while count > 0:
            await self._wait_empty()
            transport = self._check_writable()
            try:
                n = os.sendfile(self._fd, fd, offset, min(count, 1 << 30))
            except (BlockingIOError, InterruptedError):
                chunk = os.pread(fd, min(count, SENDFILE_FALLBACK_BYTES), offset)
                if not chunk:
                    raise LocalProtocolError("file shorter than the response claimed (truncated?)") from None
                transport.write(chunk)
                n = len(chunk)
            except OSError as e:
                raise anyio.BrokenResourceError from e
            if n == 0:
                raise LocalProtocolError("file shorter than the response claimed (truncated?)")
            offset += n
            count -= n
        await self._fairness()

    async def _send_head(self, head: bytes) -> None:
        """``head`` straight to the socket with MSG_MORE once the transport holds nothing, so it
        shares a segment with the body bytes sent next (what nginx gets from tcp_nopush); what
        the kernel does not take goes through the transport."""
        await self._wait_empty()
        transport = self._check_writable()
        try:
            n = self._sock.send(head, MSG_MORE)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            raise anyio.BrokenResourceError from e
        if n < len(head):
            transport.write(head[n:])

    async def splice(self, span: PipeSpan, *, head: bytes = b"") -> None:
        """Send ``head``, then ``span`` with splice(2) from its pipe (see ``headwater.splice``),
        only ever while the transport's own buffer is empty (so bytes keep their order).

        When the kernel's buffer is full this waits for the socket to be writable through a
        duplicate of its descriptor (the loop refuses a reader or writer on a transport's own);
        the wait counts as a blocked send for the watchdog, as the transport's pauses do."""
        if head:
            await self._send_head(head)
        while span.remaining:
            await self._wait_empty()
            self._check_writable()
            try:
                span.splice_to(self._fd)
            except (BlockingIOError, InterruptedError):
                await self._wait_socket_writable()
            except OSError as e:
                raise anyio.BrokenResourceError from e
        await self._fairness()

    async def _wait_socket_writable(self) -> None:
        self._immediate = 0
        self.send_blocked_since = now = time.monotonic()
        floor = self.send_floor
        if floor is not None:
            floor.blocked(now)
        slow = False
        fd = os.dup(self._fd)
        try:
            await anyio.wait_writable(fd)
        finally:
            os.close(fd)
            self.send_blocked_since = math.inf
            if floor is not None:
                slow = not floor.unblocked(time.monotonic())
        if slow:
            self.abort()
        self._check_writable()

    def expire_read(self) -> None:
        """The read deadline passed: a pending (or the next) read ends with end of file."""
        self.read_deadline = math.inf
        self.read_expired = True
        self._chunks.clear()
        self._buffered = 0
        self._wake_reader()

    def abort(self) -> None:
        """The peer stopped taking our bytes: fail the pending send, reset the connection."""
        self.send_expired = True
        self.send_blocked_since = math.inf
        self.send_floor = None
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
        if self._transport is not None:
            self._transport.abort()
        self._wake_writer()

    async def send_eof(self) -> None:
        transport = self._transport
        if transport is not None and not self._lost and transport.can_write_eof():
            transport.write_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            transport = self._transport
            if transport is not None:
                if self.send_expired:
                    transport.abort()
                else:
                    transport.close()  # flushes what is buffered (at most the high-water mark)
                    if transport.get_write_buffer_size():
                        # ... to a peer that takes it within send_timeout_s, as a send would
                        asyncio.get_running_loop().call_later(self._send_timeout_s, transport.abort)
            self._wake_reader()
            self._wake_writer()
        await anyio.lowlevel.checkpoint()

    @property
    def has_input(self) -> bool:
        """Bytes or end of file wait unread (the loop reads ahead): for a client's pool, an
        idle connection with input is one the server closed or talked on out of turn."""
        return bool(self._chunks) or self._eof or self._lost

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return socket_attributes(self._sock)
