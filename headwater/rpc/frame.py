"""Sans-IO framing for Headwater's msgpack RPC.

One frame on the wire::

    u32 body_len | u32 header_len | header (msgpack, header_len bytes) | payload (raw bytes)

``body_len`` counts the header and the payload (not the 8-byte prefix), both big-endian. The
header is a small msgpack array naming the message; bulk bytes (erasure-coded fragments) travel
as the raw payload after it and are never packed into msgpack.

Messages (the header array, first element is the kind):

    [REQUEST,  id, method, args, timeout_s | None]   payload: request bytes
    [RESPONSE, id, result]                           payload: reply bytes
    [ERROR,    id, code, message, details]           payload: empty
    [CANCEL,   id]                                   payload: empty (the caller gave up)

``timeout_s`` is relative (seconds left when the request was sent), so peers need no clock sync.
This module knows no sockets: :class:`FrameDecoder` takes bytes in and hands frames out,
:func:`encode_frame` turns a message into the buffers to write.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import msgpack

from headwater import splice
from headwater.malloc import unfilled_bytearray
from headwater.splice import PipeBuffer

__all__ = [
    "DIRECT_PAYLOAD_BYTES",
    "FileRange",
    "REQUEST",
    "RESPONSE",
    "ERROR",
    "CANCEL",
    "PREFIX_BYTES",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "Frame",
    "FrameError",
    "FrameDecoder",
    "encode_frame",
    "FramePayload",
    "request_header",
    "response_header",
    "error_header",
    "cancel_header",
]

REQUEST = 0
RESPONSE = 1
ERROR = 2
CANCEL = 3

_PREFIX = struct.Struct("!II")
PREFIX_BYTES = _PREFIX.size

#: Largest frame body (header + payload) either side accepts: a whole 64 MiB stripe plus room.
DEFAULT_MAX_FRAME_BYTES = 65 * 1024 * 1024
#: Largest msgpack header. Bulk bytes go in the payload, but a metadata scan answers with a page
#: of records from every partition a node holds (64 partitions x 256 records of ~300 B is ~5 MiB),
#: so this bound is generous rather than tight.
DEFAULT_MAX_HEADER_BYTES = 32 * 1024 * 1024


class FrameError(Exception):
    """The byte stream is not valid framing (too large, bad header); the connection must close."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the msgpack header (a list) and the raw payload (a ``bytearray`` when
    it was received in place, see :meth:`FrameDecoder.payload_target`)."""

    header: list[Any]
    payload: bytes | bytearray | PipeBuffer


_packb = msgpack.Packer(use_bin_type=True).pack


def request_header(request_id: int, method: str, args: dict | None, timeout_s: float | None) -> bytes:
    return _packb([REQUEST, request_id, method, args if args is not None else {}, timeout_s])


def response_header(request_id: int, result: Any) -> bytes:
    return _packb([RESPONSE, request_id, result])


def error_header(request_id: int, code: str, message: str, details: dict) -> bytes:
    return _packb([ERROR, request_id, code, message, details])


def cancel_header(request_id: int) -> bytes:
    return _packb([CANCEL, request_id])


class FileRange:
    """``count`` bytes of an open file from ``offset``, as (part of) a frame's payload: the
    stream sends them with ``os.sendfile``, so they go from the page cache to the socket without
    entering the process (a storage node's page-cached fragment reads; on a Unix socket, Linux
    6.5 and later, the receiver copies straight out of the page cache, and neither side pays the
    copy into a fresh socket buffer).

    Owns ``fd``: closed once every byte went (:meth:`advance`), by :meth:`close`, or when the
    range is dropped unsent (a connection gone). Never joined with other buffers."""

    __slots__ = ("fd", "offset", "count")

    def __init__(self, fd: int, offset: int, count: int):
        self.fd = fd
        self.offset = offset
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"FileRange(fd={self.fd}, offset={self.offset}, count={self.count})"

    def advance(self, n: int) -> bool:
        """``n`` more bytes went out; True (and the file closed) once all of them did."""
        self.offset += n
        self.count -= n
        if self.count > 0:
            return False
        self.close()
        return True

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


FramePayload = Union[bytes, bytearray, memoryview, FileRange,
                     Sequence[Union[bytes, bytearray, memoryview, FileRange]]]


def encode_frame(header: bytes, payload: FramePayload = b"",
                 *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 join_below: int = 64 * 1024) -> list[bytes | memoryview]:
    """The buffers to write for one frame, in order.

    ``payload`` is one buffer, or a list or tuple of buffers sent back to back as one payload
    (a storage append's blocks, sent without joining them first); a :class:`FileRange` among
    them is sent from its file. Small frames come back as one
    joined buffer (one write, one segment). For a large payload the prefix+header buffer and
    the payload's buffers are returned separately so the payload is never copied; the caller
    writes them back to back under its send lock.
    """
    parts = list(payload) if isinstance(payload, (list, tuple)) else [payload]
    plen = sum(len(p) for p in parts)
    body = len(header) + plen
    if body > max_frame_bytes:
        raise FrameError(f"frame of {body} bytes exceeds the {max_frame_bytes}-byte limit")
    prefix = _PREFIX.pack(body, len(header))
    if plen == 0:
        return [prefix + header]
    if plen < join_below and not any(isinstance(p, FileRange) for p in parts):
        return [b"".join((prefix, header, *parts))]
    return [prefix + header, *(p if isinstance(p, (memoryview, FileRange)) else memoryview(p)
                               for p in parts if len(p))]


#: A payload with at least this many bytes still to come is received into its own buffer
#: (:meth:`FrameDecoder.payload_target`) rather than fed in chunks and joined.
DIRECT_PAYLOAD_BYTES = 64 * 1024
#: What a plain receive asks for beyond the frame in progress: the next frame's prefix and a
#: header, so that a large payload behind them is received in place, not copied out of a chunk.
LOOKAHEAD_BYTES = 8 * 1024


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` then ``next_frame()`` until it returns None.

    Received chunks are kept as a queue of views and each payload is assembled with exactly one
    copy (a slice of one chunk, or one join across chunks), so a 16 MiB payload arriving in
    256 KiB reads costs one memcpy, not a quadratic buffer shuffle.

    A reader that can receive into a buffer does better: once a frame's header is in and at
    least ``DIRECT_PAYLOAD_BYTES`` of its payload are still to come, ``payload_target()`` gives
    the unfilled part of a buffer of the payload's size (what was already fed is moved in
    first); the reader receives into it and calls ``filled(n)``. The payload is then the
    ``bytearray`` itself: the only copy is the kernel's. Such a reader never receives past the
    frame's end, since the target ends there.

    With ``into_pipe`` set, a large payload whose header it accepts (a storage node's fragment
    reply that a GET will send on unread) is received into a :class:`~headwater.splice.PipeBuffer`
    instead: ``payload_target()`` returns the buffer, the reader splices the socket into it
    (``PipeBuffer.fill_from``) and calls ``filled(n)``, and the frame's payload is the buffer.
    """

    __slots__ = ("_chunks", "_size", "_pending", "max_frame_bytes", "max_header_bytes",
                 "_direct", "_direct_filled", "_direct_header", "into_pipe")

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES):
        self._chunks: deque[memoryview] = deque()
        self._size = 0
        self._pending: tuple[int, int] | None = None
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = max_header_bytes
        self._direct: bytearray | PipeBuffer | None = None  # the payload being received in place
        self._direct_filled = 0
        self._direct_header: list[Any] | None = None
        self.into_pipe: Callable[[list[Any]], bool] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as frames."""
        return self._size + self._direct_filled

    def wanted(self) -> int:
        """Bytes still missing to complete the frame in progress (at least 1 if none started)."""
        if self._direct is not None:
            return len(self._direct) - self._direct_filled
        if self._pending is None:
            return max(1, PREFIX_BYTES - self._size)
        return max(1, self._pending[0] - self._size)

    def receive_size(self, most: int) -> int:
        """How many bytes a plain receive (when ``payload_target()`` is None) should ask for, at
        most ``most``: the rest of the prefix, header or small payload in progress, plus
        ``LOOKAHEAD_BYTES``. Asking for ``most`` every time took the first ``most`` bytes of
        each large payload into a chunk, to be copied into the payload's buffer: a quarter of
        every 1 MiB fragment frame at 256 KiB."""
        if self._pending is None:
            rest = PREFIX_BYTES - self._size
        else:
            body, hlen = self._pending
            rest = (hlen if self._size < hlen else body) - self._size
        return max(1, min(most, max(0, rest) + LOOKAHEAD_BYTES))

    def payload_target(self) -> memoryview | PipeBuffer | None:
        """Where to receive the rest of a large payload in place (a view of its buffer, or the
        pipe buffer to splice into), or None (``feed`` instead)."""
        direct = self._direct
        if direct is not None:
            if type(direct) is PipeBuffer:
                return direct
            return memoryview(direct)[self._direct_filled:]
        if self._pending is None and self._size >= PREFIX_BYTES:
            self._start_frame()
        if self._pending is None:
            return None
        body, hlen = self._pending
        if self._size < hlen or body - self._size < DIRECT_PAYLOAD_BYTES:
            return None
        header = self._decode_header(self._take(hlen))
        got = self._size  # every byte buffered belongs to this payload (fewer than body)
        if self.into_pipe is not None and splice.AVAILABLE and self.into_pipe(header):
            piped = PipeBuffer(body - hlen)
            if got:
                piped.write(self._take(got))
            self._direct, self._direct_filled, self._direct_header = piped, got, header
            return piped
        payload = unfilled_bytearray(body - hlen)  # not zeroed: next_frame hands it out only once filled
        if got:
            payload[:got] = self._take(got)
        self._direct, self._direct_filled, self._direct_header = payload, got, header
        return memoryview(payload)[got:]

    def filled(self, n: int) -> None:
        """``n`` more bytes were received into the last ``payload_target()``."""
        assert self._direct is not None and 0 <= n <= len(self._direct) - self._direct_filled
        self._direct_filled += n

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._chunks.append(data if isinstance(data, memoryview) else memoryview(data))
            self._size += len(data)

    def take_buffered(self) -> bytes:
        """Hand back every byte received but not decoded, and forget it (a frame in progress too).

        The RPC handshake decodes its frames with tight limits, then passes what follows them to
        the connection's own decoder."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._pending = None
        return data

    def _start_frame(self) -> None:
        body, hlen = _PREFIX.unpack(self._take(PREFIX_BYTES))
        if body > self.max_frame_bytes:
            raise FrameError(f"peer sent a {body}-byte frame; the limit is {self.max_frame_bytes}")
        if hlen > body or hlen > self.max_header_bytes or hlen == 0:
            raise FrameError(f"bad header length {hlen} in a {body}-byte frame")
        self._pending = (body, hlen)

    @staticmethod
    def _decode_header(raw_header: bytes) -> list[Any]:
        try:
            header = msgpack.unpackb(raw_header, raw=False, use_list=True)
        except Exception as e:  # msgpack raises several unrelated types
            raise FrameError(f"undecodable frame header: {e}") from None
        if not isinstance(header, list) or not header or not isinstance(header[0], int):
            raise FrameError("frame header is not a message array")
        return header

    def next_frame(self) -> Frame | None:
        if self._direct is not None:
            if self._direct_filled < len(self._direct):
                return None
            frame = Frame(self._direct_header, self._direct)  # type: ignore[arg-type]
            self._direct, self._direct_filled, self._direct_header = None, 0, None
            self._pending = None
            return frame
        if self._pending is None:
            if self._size < PREFIX_BYTES:
                return None
            self._start_frame()
            assert self._pending is not None
        body, hlen = self._pending
        if self._size < body:
            return None
        self._pending = None
        header = self._decode_header(self._take(hlen))
        return Frame(header, self._take(body - hlen))

    def _take(self, n: int) -> bytes:
        if n == 0:
            return b""
        self._size -= n
        first = self._chunks[0]
        flen = len(first)
        if flen >= n:
            if flen == n:
                self._chunks.popleft()
                obj = first.obj
                # A whole received chunk: hand the bytes object itself over, no copy.
                if isinstance(obj, bytes) and len(obj) == n:
                    return obj
                return first.tobytes()
            self._chunks[0] = first[n:]
            return first[:n].tobytes()
        parts = []
        need = n
        while need:
            c = self._chunks[0]
            if len(c) <= need:
                parts.append(c)
                need -= len(c)
                self._chunks.popleft()
            else:
                parts.append(c[:need])
                self._chunks[0] = c[need:]
                need = 0
        return b"".join(parts)
