"""Bytes parked in kernel pipes, moved from one socket to another by splice(2) without entering
the process.

The S3 gateway's large GET receives every fragment block from a storage node's socket and sends
it on to the client's: with ``recv_into`` and ``send`` the gateway copies each byte twice (out of
one socket's buffers, into the other's), ~27 % of its CPU. Spliced, a storage node's reply
payload goes from the node's socket into a pipe (the pipe takes references to the socket
buffer's pages: a storage node that sent its page-cached fragment with ``sendfile`` over a Unix
socket hands over the page-cache pages themselves), and from the pipe into the client's socket
(TCP takes the pages by reference too): the only copy left is the client's own receive.

:class:`PipeBuffer` is one payload: filled in order from a socket by the RPC reader
(:meth:`PipeBuffer.fill_from`), drained in order by whoever sends it on. A pipe holds a bounded
number of page references (its capacity in pages, ``PIPE_CAPACITY_BYTES`` / 4 KiB slots), and a
slot may hold less than a page (a socket buffer's fragments need not be page aligned), so each
pipe takes at most ``PIPE_FILL_BYTES`` (a quarter of its capacity) and a payload uses as many
pipes as it needs; should a pipe still fill up first, the rest goes to a fresh one.

:class:`PipeSpan` is a byte range of a buffer's payload, as a chunk of a response body: its
bytes must be taken in order (a span never before an earlier span of the same buffer), which a
GET's stripes are. ``splice_to`` sends it to a socket; ``bytes(span)`` reads it into memory
where the bytes cannot be spliced (TLS, HTTP/2, chunked framing, a degraded read's decode).

Linux only (``os.splice``, Python 3.10+); :data:`AVAILABLE` says whether it can be used.
"""

from __future__ import annotations

import fcntl
import os
import termios
from collections import deque

__all__ = ["AVAILABLE", "PIPE_CAPACITY_BYTES", "PIPE_FILL_BYTES", "PipeBuffer", "PipeSpan"]

AVAILABLE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")
_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 0)
_MOVE = getattr(os, "SPLICE_F_MOVE", 0)
_MORE = getattr(os, "SPLICE_F_MORE", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: What each pipe is sized to (``fs.pipe-max-size``'s default, so any user may ask for it).
PIPE_CAPACITY_BYTES = 1 << 20
#: What one pipe is given at most: a quarter of its page slots, so that socket fragments
#: smaller than a page (a TCP segment's worth, ~1 KiB at worst in practice) still fit.
PIPE_FILL_BYTES = 256 << 10
_SKIP_BYTES = 64 << 10


class _Pipe:
    __slots__ = ("r", "w", "held", "written")

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, _F_SETPIPE_SZ, PIPE_CAPACITY_BYTES)
        except OSError:
            pass  # a smaller pipe (pipe-user-pages-soft reached): fill_from still moves on when full
        self.held = 0  # bytes in the pipe, not yet taken out
        self.written = 0

    def seal(self) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def close(self) -> None:
        self.seal()
        if self.r >= 0:
            os.close(self.r)
            self.r = -1


class PipeBuffer:
    """``size`` bytes of one payload, held in pipes: filled from a socket, then taken in order.

    Owns its pipes: :meth:`close` (or the garbage collector) closes them, with whatever they
    still hold."""

    __slots__ = ("size", "filled", "taken", "_pipes", "__weakref__")

    def __init__(self, size: int):
        self.size = size
        self.filled = 0
        self.taken = 0
        self._pipes: deque[_Pipe] = deque()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"PipeBuffer(size={self.size}, filled={self.filled}, taken={self.taken})"

    # --- filling (the RPC reader) ---------------------------------------------------------------

    def _tail(self) -> _Pipe:
        pipes = self._pipes
        if pipes and pipes[-1].w >= 0 and pipes[-1].written < PIPE_FILL_BYTES:
            return pipes[-1]
        if pipes:
            pipes[-1].seal()
        pipe = _Pipe()
        pipes.append(pipe)
        return pipe

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Put bytes already received (a few KiB the reader took with the frame's header) in."""
        view = memoryview(data)
        while view:
            pipe = self._tail()
            want = min(len(view), PIPE_FILL_BYTES - pipe.written)
            n = os.write(pipe.w, view[:want])  # never blocks: far below the pipe's capacity
            pipe.written += n
            pipe.held += n
            self.filled += n
            view = view[n:]
        self._done_filling()

    def fill_from(self, fd: int) -> int:
        """Splice what socket ``fd`` has of the rest of the payload into the pipes; how many
        bytes came (at least 1). BlockingIOError when the socket has nothing now; 0 means end of
        file."""
        pipe = self._tail()
        want = min(self.size - self.filled, PIPE_FILL_BYTES - pipe.written)
        try:
            n = os.splice(fd, pipe.w, want, flags=_NONBLOCK | _MOVE)
        except BlockingIOError:
            # Nothing to read, or (rarely) this pipe's page slots are all taken before its
            # byte quota: then the rest goes to a fresh pipe.
            if pipe.written == 0 or not _readable_bytes(fd):
                raise
            pipe.seal()
            pipe = self._tail()
            n = os.splice(fd, pipe.w, min(self.size - self.filled, PIPE_FILL_BYTES), flags=_NONBLOCK | _MOVE)
        pipe.written += n
        pipe.held += n
        self.filled += n
        self._done_filling()
        return n

    def _done_filling(self) -> None:
        if self.filled >= self.size and self._pipes:
            self._pipes[-1].seal()

    @property
    def complete(self) -> bool:
        return self.filled >= self.size

    # --- taking (the sender) --------------------------------------------------------------------

    def _head(self) -> _Pipe:
        pipes = self._pipes
        while pipes and pipes[0].held == 0 and (pipes[0].w < 0 or len(pipes) > 1):
            pipes.popleft().close()
        if not pipes or pipes[0].held == 0:
            raise ValueError(f"{self!r}: nothing left to take")
        return pipes[0]

    def splice_to(self, fd: int, most: int) -> int:
        """Splice up to ``most`` of the next bytes into socket ``fd`` without waiting; how many
        went. BlockingIOError when the socket takes nothing now."""
        pipe = self._head()
        # More of the run in the next pipe: held back as send(2) would hold the rest of one
        # buffer (MSG_MORE), so that the client is not woken per pipe.
        flags = _NONBLOCK | _MOVE | _MORE if most > pipe.held else _NONBLOCK | _MOVE
        n = os.splice(pipe.r, fd, min(most, pipe.held), flags=flags)
        pipe.held -= n
        self.taken += n
        return n

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes (all of them must be in), into memory."""
        parts = []
        while n > 0:
            pipe = self._head()
            data = os.read(pipe.r, min(n, pipe.held))
            if not data:
                raise EOFError(f"{self!r}: pipe ended early")
            pipe.held -= len(data)
            self.taken += len(data)
            n -= len(data)
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip_to(self, offset: int) -> None:
        """Drop the bytes before ``offset`` of the payload (gaps between blocks, a range's
        cut-off); taking backwards is an error."""
        if offset < self.taken:
            raise ValueError(f"{self!r}: bytes at {offset} were already taken")
        while self.taken < offset:
            self.read(min(offset - self.taken, _SKIP_BYTES))

    def close(self) -> None:
        pipes = self._pipes
        while pipes:
            pipes.popleft().close()

    def __del__(self) -> None:
        self.close()


def _readable_bytes(fd: int) -> int:
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
    except OSError:
        return 0


class PipeSpan:
    """Bytes ``offset .. offset+length-1`` of a :class:`PipeBuffer`'s payload, as one chunk of
    a body. Taken once, and after every span of the same buffer that lies before it."""

    __slots__ = ("buffer", "offset", "length", "sent")

    def __init__(self, buffer: PipeBuffer, offset: int, length: int):
        self.buffer = buffer
        self.offset = offset
        self.length = length
        self.sent = 0

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"PipeSpan({self.offset}+{self.length} of {self.buffer!r})"

    def __getitem__(self, key: slice) -> PipeSpan:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a PipeSpan is sliced by a plain slice only")
        a, b, _ = key.indices(self.length)
        return PipeSpan(self.buffer, self.offset + a, max(0, b - a))

    @property
    def remaining(self) -> int:
        return self.length - self.sent

    def splice_to(self, fd: int) -> int:
        """Send as much of the rest as socket ``fd`` takes now; BlockingIOError if none."""
        buffer = self.buffer
        buffer.skip_to(self.offset + self.sent)
        n = buffer.splice_to(fd, self.length - self.sent)
        self.sent += n
        return n

    def __bytes__(self) -> bytes:
        buffer = self.buffer
        buffer.skip_to(self.offset + self.sent)
        data = buffer.read(self.length - self.sent)
        self.sent = self.length
        return data

