"""ISO-BMFF box framing (ISO/IEC 14496-12 §4.2): headers, bounded field reads, and writers. Sans-IO.

Everything here works on bytes already in memory (a ``moov``, a ``moof``, one sample), never
on files: the packager's shell reads a file's top-level boxes with :func:`scan_top_level`
(headers only, so a 2-hour ``mdat`` is never read whole) and hands the small boxes' bytes to
the parsers.

Hostile input is the rule, not the exception. A header whose size is smaller than the header
itself, or runs past its parent, or a field read past the end of its box, raises
:class:`~headwater.drm.errors.MalformedMedia` naming the box type and offset; nothing reads
outside the bounds it was given, and nothing allocates by a size the input claims (sizes are
checked against the bytes actually there before any slice is taken).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from headwater.drm.errors import MalformedMedia

__all__ = [
    "BoxHeader", "parse_header", "iter_boxes", "find_box", "find_path", "ByteReader",
    "box", "full_box", "scan_top_level", "MAX_HEADER",
]

#: The longest header: 32-bit size, type, 64-bit largesize, 16-byte usertype (``uuid`` boxes).
MAX_HEADER = 4 + 4 + 8 + 16


@dataclass(frozen=True, slots=True)
class BoxHeader:
    """One box's header: its four-character ``type``, where it starts (``offset``), how long
    its header is, and its total ``size`` (header included; a size-0 box "to the end" is
    resolved to the end it was parsed within). ``usertype`` is set for ``uuid`` boxes."""

    type: bytes
    offset: int
    header_size: int
    size: int
    usertype: bytes | None = None

    @property
    def payload_start(self) -> int:
        """Offset of the first byte after the header."""
        return self.offset + self.header_size

    @property
    def end(self) -> int:
        """Offset one past the box's last byte."""
        return self.offset + self.size

    @property
    def payload_size(self) -> int:
        """Bytes after the header."""
        return self.size - self.header_size

    def payload(self, buf: bytes | memoryview) -> memoryview:
        """The box's payload as a view of ``buf`` (the buffer it was parsed from)."""
        return memoryview(buf)[self.payload_start:self.end]

    @property
    def name(self) -> str:
        """The type as text, for messages (non-ASCII bytes escaped)."""
        return self.type.decode("latin-1").encode("unicode_escape").decode("ascii")


def parse_header(buf: bytes | memoryview, offset: int, end: int | None = None) -> BoxHeader:
    """Parse the box header at ``offset``; the box must end at or before ``end`` (default: the
    end of ``buf``). Raises :class:`MalformedMedia` on any header that does not fit."""
    limit = len(buf) if end is None else end
    if limit > len(buf):
        raise MalformedMedia(f"box bounds {limit} past the {len(buf)} bytes there")
    return _checked(bytes(buf[offset:min(limit, offset + MAX_HEADER)]), offset, limit)


def iter_boxes(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> Iterator[BoxHeader]:
    """The boxes laid end to end in ``buf[start:end]`` (the children of a container, given its
    payload bounds). Every box must fit exactly; trailing bytes too short for a header are an
    error, as a truncated file is."""
    limit = len(buf) if end is None else end
    at = start
    while at < limit:
        h = parse_header(buf, at, limit)
        yield h
        at = h.end


def find_box(buf: bytes | memoryview, btype: bytes, start: int = 0,
             end: int | None = None) -> BoxHeader | None:
    """The first child of type ``btype`` in ``buf[start:end]``, or None."""
    for h in iter_boxes(buf, start, end):
        if h.type == btype:
            return h
    return None


def find_path(buf: bytes | memoryview, path: list[bytes], start: int = 0,
              end: int | None = None) -> BoxHeader | None:
    """Descend plain containers by type: ``find_path(moov, [b"trak", b"mdia", b"mdhd"])`` is
    the first match at each level. Only for containers whose payload is nothing but boxes
    (not ``stsd`` or ``meta``, which have fields before their children)."""
    h: BoxHeader | None = None
    lo, hi = start, end
    for btype in path:
        h = find_box(buf, btype, lo, hi)
        if h is None:
            return None
        lo, hi = h.payload_start, h.end
    return h


class ByteReader:
    """Big-endian field reads within ``[start, end)`` of a buffer; reading past ``end`` raises
    :class:`MalformedMedia` naming ``what`` (the box being read)."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: bytes | memoryview, start: int = 0, end: int | None = None,
                 what: str = "box") -> None:
        self.buf = buf
        self.pos = start
        self.end = len(buf) if end is None else min(end, len(buf))
        self.what = what

    @classmethod
    def of(cls, buf: bytes | memoryview, h: BoxHeader) -> ByteReader:
        """A reader over ``h``'s payload."""
        return cls(buf, h.payload_start, h.end, h.name)

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int) -> int:
        if n < 0 or self.pos + n > self.end:
            raise MalformedMedia(f"{self.what}: field of {n} bytes at offset {self.pos} runs past "
                                 f"the box end at {self.end}")
        at = self.pos
        self.pos += n
        return at

    def u8(self) -> int:
        return self.buf[self._need(1)]

    def u16(self) -> int:
        return struct.unpack_from(">H", self.buf, self._need(2))[0]

    def u24(self) -> int:
        at = self._need(3)
        return int.from_bytes(self.buf[at:at + 3], "big")

    def u32(self) -> int:
        return struct.unpack_from(">I", self.buf, self._need(4))[0]

    def i32(self) -> int:
        return struct.unpack_from(">i", self.buf, self._need(4))[0]

    def u64(self) -> int:
        return struct.unpack_from(">Q", self.buf, self._need(8))[0]

    def bytes(self, n: int) -> bytes:
        at = self._need(n)
        return bytes(self.buf[at:at + n])

    def skip(self, n: int) -> None:
        self._need(n)

    def full_header(self) -> tuple[int, int]:
        """A FullBox's (version, flags)."""
        v = self.u8()
        return v, self.u24()

    def count(self, n: int, entry_size: int) -> int:
        """Check that ``n`` entries of ``entry_size`` bytes fit before reading them, so a
        claimed count of 2**32 costs nothing; returns ``n``."""
        if n * entry_size > self.remaining:
            raise MalformedMedia(f"{self.what}: {n} entries of {entry_size} bytes claimed, "
                                 f"{self.remaining} bytes there")
        return n


def box(btype: bytes, *payload: bytes | bytearray | memoryview) -> bytes:
    """A box of type ``btype`` around ``payload`` (a 64-bit size only when it needs one)."""
    if len(btype) != 4:
        raise ValueError(f"box type must be 4 bytes: {btype!r}")
    body = b"".join(payload)
    size = 8 + len(body)
    if size <= 0xFFFFFFFF:
        return struct.pack(">I4s", size, btype) + body
    return struct.pack(">I4sQ", 1, btype, size + 8) + body


def full_box(btype: bytes, version: int, flags: int, *payload: bytes | bytearray | memoryview) -> bytes:
    """A FullBox: ``box`` with the version byte and 24-bit flags first."""
    return box(btype, struct.pack(">I", (version << 24) | (flags & 0xFFFFFF)), *payload)


def scan_top_level(f: BinaryIO, file_size: int) -> Iterator[BoxHeader]:
    """The top-level boxes of a file, reading only their headers (an ``mdat`` of gigabytes is
    skipped, not read). Offsets are file offsets; a box running past ``file_size`` raises."""
    at = 0
    while at < file_size:
        f.seek(at)
        head = f.read(min(MAX_HEADER, file_size - at))
        # Parse against a virtual end: the header bytes read, but the size checked against
        # the file, not against what was read.
        h = _checked(head, at, file_size)
        yield h
        at = h.end


def _checked(head: bytes, at: int, limit: int) -> BoxHeader:
    """The header in ``head`` (the first bytes of a box at ``at``), its size checked against
    ``limit``, where its parent (or the file) ends."""
    btype, header, size, usertype = parse_header_prefix(head, at)
    if size == 0:
        size = limit - at
    if size < header:
        raise MalformedMedia(f"box {btype!r} at offset {at} claims {size} bytes, "
                             f"less than its own {header}-byte header")
    if at + size > limit:
        raise MalformedMedia(f"box {btype!r} at offset {at} claims {size} bytes, "
                             f"only {limit - at} there")
    return BoxHeader(btype, at, header, size, usertype)


def parse_header_prefix(head: bytes, at: int = 0) -> tuple[bytes, int, int, bytes | None]:
    """(type, header size, declared size — 0 for "to the end", usertype) from the first bytes
    of a box, without checking the size against anything."""
    if len(head) < 8:
        raise MalformedMedia(f"truncated box header at offset {at}")
    size, btype = struct.unpack_from(">I4s", head, 0)
    btype = bytes(btype)
    header = 8
    if size == 1:
        if len(head) < 16:
            raise MalformedMedia(f"truncated 64-bit size of {btype!r} at offset {at}")
        (size,) = struct.unpack_from(">Q", head, 8)
        header = 16
    usertype = None
    if btype == b"uuid":
        if len(head) < header + 16:
            raise MalformedMedia(f"truncated uuid box at offset {at}")
        usertype = bytes(head[header:header + 16])
        header += 16
    return btype, header, size, usertype
