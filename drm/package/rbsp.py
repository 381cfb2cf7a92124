"""Bits of an H.264/H.265 RBSP, for the parameter-set and slice-header parsers. Sans-IO.

NAL units carry their payload with emulation prevention (a 0x03 after every 0x0000 that would
otherwise look like a start code); :func:`unescape` removes it and remembers where, so a
parser's position in the RBSP can be mapped back to bytes as stored. :class:`BitReader` reads
MSB-first fields (``u(n)``, exp-Golomb ``ue``/``se``) and raises :class:`RanOut` at the end of
its bytes; :func:`header_bytes` runs a parser on ever longer prefixes of a NAL unit so a short
slice header costs only its first bytes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from headwater.drm.errors import MalformedMedia

__all__ = ["RanOut", "BitReader", "IntBitReader", "unescape", "ceil_log2", "header_bytes"]


class RanOut(Exception):
    """The bit reader ran past the bytes it was given (retry with more, or the NAL ends)."""


class BitReader:
    """MSB-first bits of an RBSP; each read converts only the bytes it spans, so its cost does
    not grow with the buffer (a hostile NAL unit cannot make reads quadratic)."""

    __slots__ = ("data", "n", "pos")

    def __init__(self, rbsp: bytes) -> None:
        self.data = rbsp
        self.n = 8 * len(rbsp)
        self.pos = 0

    def u(self, k: int) -> int:
        if k == 0:
            return 0
        end = self.pos + k
        if end > self.n:
            raise RanOut
        last = (end + 7) >> 3
        word = int.from_bytes(self.data[self.pos >> 3:last], "big")
        self.pos = end
        return (word >> ((last << 3) - end)) & ((1 << k) - 1)

    def ue(self) -> int:
        # Leading zeros from the bit length of the next 33-40 bits, not bit by bit.
        first = self.pos >> 3
        window = self.data[first:first + 5]
        bits = 8 * len(window) - (self.pos - (first << 3))
        return self._golomb(int.from_bytes(window, "big") & ((1 << bits) - 1), bits)

    def _golomb(self, tail: int, bits: int) -> int:
        if not tail:
            if bits > 31:
                raise MalformedMedia("exp-Golomb code longer than 32 bits")
            raise RanOut
        zeros = bits - tail.bit_length()
        if zeros > 31:
            raise MalformedMedia("exp-Golomb code longer than 32 bits")
        self.pos += zeros
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


class IntBitReader(BitReader):
    """The same over a short RBSP (the first bytes of a slice) held as one integer: a read is
    one shift and mask, cheaper than converting bytes while the integer is small."""

    __slots__ = ("v",)

    def __init__(self, rbsp: bytes) -> None:
        super().__init__(rbsp)
        self.v = int.from_bytes(rbsp, "big")

    def u(self, k: int) -> int:
        end = self.pos + k
        if end > self.n:
            raise RanOut
        self.pos = end
        return (self.v >> (self.n - end)) & ((1 << k) - 1)

    def ue(self) -> int:
        bits = self.n - self.pos
        return self._golomb(self.v & ((1 << bits) - 1), bits)


#: Up to this many bytes a slice's RBSP prefix is read as one integer (:class:`IntBitReader`).
SHORT_RBSP = 512


def unescape(raw: bytes | memoryview) -> tuple[bytes, list[int]]:
    """The RBSP of ``raw`` (emulation-prevention 0x03 after 0x0000 removed) and, for each byte
    removed, the RBSP index of the byte that followed it."""
    raw = bytes(raw)
    out = bytearray()
    removed: list[int] = []
    at = 0
    while True:
        k = raw.find(b"\x00\x00\x03", at)
        if k < 0:
            out += raw[at:]
            return bytes(out), removed
        out += raw[at:k + 2]
        removed.append(len(out))
        at = k + 3


def ceil_log2(n: int) -> int:
    """Ceil(Log2(n)), the width of a field that indexes ``n`` things (0 for n ≤ 1)."""
    return (n - 1).bit_length() if n > 1 else 0


def header_bytes(payload: memoryview, parse: Callable[[BitReader], None], limit: int) -> int:
    """Run ``parse(bits)`` on ever longer unescaped prefixes of ``payload`` (most slice headers
    fit in the first 64 bytes) and return the stored bytes it consumed, rounded up to a whole
    byte (emulation-prevention bytes counted). A header over ``limit`` bytes is malformed."""
    size = min(64, limit)
    while True:
        rbsp, removed = unescape(payload[:size])
        bits = IntBitReader(rbsp) if len(rbsp) <= SHORT_RBSP else BitReader(rbsp)
        try:
            parse(bits)
        except RanOut:
            if size >= len(payload):
                raise MalformedMedia(f"slice header runs past its {len(payload)}-byte NAL unit") from None
            if size >= limit:
                raise MalformedMedia(f"slice header longer than {limit} bytes") from None
            size = min(size * 8, limit)
            continue
        used = -(-bits.pos // 8)                                  # RBSP bytes touched
        return used + bisect.bisect_right(removed, used - 1) if used else 0
