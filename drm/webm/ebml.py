"""EBML (RFC 8794), the binary format under Matroska and WebM: writing elements, and reading
them back within limits. Sans-IO.

An element is an ID (1-4 bytes, its length marker kept as part of the ID, as the Matroska
tables list them: ``0x1A45DFA3``), a size as a variable-length integer (the marker bit, then
the value; all value bits set means "unknown size") and its payload.

The reader is for input we did not make (an ffmpeg WebM, a segment read back in a test) as
much as for our own, so it is bounded: every size is checked against the bytes it sits in
before anything is sliced, nesting deeper than ``max_depth`` and more than ``max_elements``
elements are refused, and an unknown size is accepted only for the elements that may stream
(Segment, Cluster: they then run to the end of their parent). Every refusal is
:class:`~headwater.drm.errors.MalformedMedia`; nothing is read that is not in the buffer, so
hostile input costs at most one pass over it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from headwater.drm.errors import MalformedMedia

__all__ = ["UNKNOWN_SIZE", "encode_id", "encode_size", "element", "uint", "sint", "float64", "string",
           "master", "unknown_size_header", "read_vint", "read_id", "Element", "EbmlLimits", "iter_elements",
           "read_uint", "read_float", "children", "find"]

#: The 8-byte size with every value bit set: "unknown", the element runs to its parent's end.
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
_MAX_SIZE = (1 << 56) - 2  # the largest known size an 8-byte vint holds


# --- writing ----------------------------------------------------------------------------------

def encode_id(element_id: int) -> bytes:
    """An element ID's bytes (the ID already carries its length marker)."""
    if not 0x81 <= element_id <= 0x1FFFFFFE:
        raise ValueError(f"0x{element_id:X} is not an EBML element ID")
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def encode_size(n: int) -> bytes:
    """``n`` as the shortest vint that holds it (never the all-ones "unknown" value)."""
    if not 0 <= n <= _MAX_SIZE:
        raise ValueError(f"element size {n} out of range")
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | n).to_bytes(length, "big")
    raise AssertionError("unreachable")


def element(element_id: int, payload: bytes) -> bytes:
    """One element: ID, size, payload."""
    return encode_id(element_id) + encode_size(len(payload)) + payload


def uint(element_id: int, value: int) -> bytes:
    """An unsigned integer element, in the fewest bytes (at least one)."""
    if value < 0:
        raise ValueError(f"unsigned element 0x{element_id:X} given {value}")
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def sint(element_id: int, value: int) -> bytes:
    """A signed integer element, two's complement in the fewest bytes."""
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def float64(element_id: int, value: float) -> bytes:
    """A float element (8-byte IEEE 754)."""
    return element(element_id, struct.pack(">d", value))


def string(element_id: int, value: str) -> bytes:
    """A string element (UTF-8; ASCII strings are a subset)."""
    return element(element_id, value.encode())


def master(element_id: int, *children: bytes) -> bytes:
    """A master element holding ``children`` (already encoded)."""
    return element(element_id, b"".join(children))


def unknown_size_header(element_id: int) -> bytes:
    """The header of an element of unknown size (a live or DASH Segment): its children follow."""
    return encode_id(element_id) + UNKNOWN_SIZE


# --- reading ----------------------------------------------------------------------------------

def read_vint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int, bool]:
    """The vint at ``buf[pos:end]``: (value without its marker, length, all value bits set)."""
    if pos >= end:
        raise MalformedMedia(f"EBML: a number expected at {pos}, past the end of its parent ({end})")
    first = buf[pos]
    if first == 0:
        raise MalformedMedia(f"EBML: a number at {pos} longer than 8 bytes")
    length = 9 - first.bit_length()
    if pos + length > end:
        raise MalformedMedia(f"EBML: a {length}-byte number at {pos} runs past its parent's end ({end})")
    value = int.from_bytes(buf[pos:pos + length], "big") & ((1 << (7 * length)) - 1)
    return value, length, value == (1 << (7 * length)) - 1


def read_id(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """The element ID at ``pos``, marker kept, and its length (1-4 bytes)."""
    if pos >= end:
        raise MalformedMedia(f"EBML: an element ID expected at {pos}, past the end ({end})")
    length = 9 - buf[pos].bit_length() if buf[pos] else 9
    if length > 4:
        raise MalformedMedia(f"EBML: an element ID at {pos} longer than 4 bytes")
    if pos + length > end:
        raise MalformedMedia(f"EBML: an element ID at {pos} runs past its parent's end ({end})")
    return int.from_bytes(buf[pos:pos + length], "big"), length


@dataclass(frozen=True, slots=True)
class Element:
    """One element as found: its ID, where it starts, its header's length and its payload's
    (an unknown size resolved to its parent's end)."""

    id: int
    offset: int
    header_size: int
    size: int
    depth: int

    @property
    def start(self) -> int:
        """Offset of the payload's first byte."""
        return self.offset + self.header_size

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True, slots=True, kw_only=True)
class EbmlLimits:
    """What the reader accepts: nesting depth, elements in one walk, the IDs whose size may
    be unknown (they then run to their parent's end)."""

    max_depth: int = 8
    max_elements: int = 1_000_000
    unknown_size_ids: frozenset[int] = frozenset({0x18538067, 0x1F43B675})  # Segment, Cluster


def iter_elements(buf: bytes | memoryview, start: int = 0, end: int | None = None, *, depth: int = 0,
                  limits: EbmlLimits = EbmlLimits(), budget: list[int] | None = None) -> Iterator[Element]:
    """The elements one after another in ``buf[start:end]`` (one level: descend with
    :func:`children`). Each is checked to fit before it is yielded."""
    end = len(buf) if end is None else end
    if end > len(buf) or start < 0 or start > end:
        raise MalformedMedia(f"EBML: range {start}..{end} outside a buffer of {len(buf)} bytes")
    if depth > limits.max_depth:
        raise MalformedMedia(f"EBML: elements nested deeper than {limits.max_depth}")
    budget = budget if budget is not None else [limits.max_elements]
    pos = start
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise MalformedMedia(f"EBML: more than {limits.max_elements} elements")
        element_id, id_len = read_id(buf, pos, end)
        size, size_len, unknown = read_vint(buf, pos + id_len, end)
        header = id_len + size_len
        if unknown:
            if element_id not in limits.unknown_size_ids:
                raise MalformedMedia(f"EBML: element 0x{element_id:X} at {pos} has an unknown size")
            size = end - pos - header
        elif pos + header + size > end:
            raise MalformedMedia(f"EBML: element 0x{element_id:X} at {pos} claims {size} bytes, "
                                 f"{end - pos - header} are left in its parent")
        yield Element(element_id, pos, header, size, depth)
        pos += header + size


def children(buf: bytes | memoryview, parent: Element, *, limits: EbmlLimits = EbmlLimits(),
             budget: list[int] | None = None) -> Iterator[Element]:
    """The elements directly inside ``parent``."""
    return iter_elements(buf, parent.start, parent.end, depth=parent.depth + 1, limits=limits, budget=budget)


def find(buf: bytes | memoryview, parent: Element, element_id: int, *,
         limits: EbmlLimits = EbmlLimits()) -> Element | None:
    """The first child of ``parent`` with ``element_id``, or None."""
    return next((e for e in children(buf, parent, limits=limits) if e.id == element_id), None)


def read_uint(buf: bytes | memoryview, e: Element) -> int:
    """An unsigned integer element's value (at most 8 bytes)."""
    if e.size > 8:
        raise MalformedMedia(f"EBML: integer element 0x{e.id:X} of {e.size} bytes")
    return int.from_bytes(buf[e.start:e.end], "big")


def read_float(buf: bytes | memoryview, e: Element) -> float:
    """A float element's value (4 or 8 bytes, or 0 bytes for 0.0)."""
    if e.size == 0:
        return 0.0
    if e.size not in (4, 8):
        raise MalformedMedia(f"EBML: float element 0x{e.id:X} of {e.size} bytes")
    return struct.unpack(">f" if e.size == 4 else ">d", buf[e.start:e.end])[0]
