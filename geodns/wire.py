"""Reading a query off the wire, sans-IO: the header, the question, the OPT record.

:func:`read_header` needs only the first 12 bytes; a datagram shorter than that, or one that is
itself a response, raises :class:`~.errors.Unanswerable` (no answer: there is nobody to answer
correctly, and answering responses is how reflection loops start). :func:`parse_query` then
reads the rest itself (names by :func:`read_name`, which takes any octets in a label as DNS
does) and raises a :class:`~.errors.DnsError` carrying the RCODE: an opcode other than QUERY is
NOTIMP; a packet that does not parse (truncated, compression loops, pointers past the end or
forwards, unknown label types, names over 255 octets), QDCOUNT other than 1, trailing bytes,
more than one OPT or a bad EDNS option is FORMERR; an EDNS version other than 0 is BADVERS.
Records other than the OPT record are walked (their lengths must hold; their names are skipped,
never decoded) and ignored.

Errors raised after the question was read carry it as ``exc.question`` (a
:class:`Question`), so the answer can repeat it, and ``exc.had_opt`` when the query's OPT
record was found (the answer then carries one: BADVERS lives in it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dnslib

from .edns import DEFAULT_UDP, Edns, read_opt
from .errors import DnsError, FormatError, NotImplementedOpcode, Unanswerable

__all__ = ["Header", "Question", "Query", "read_header", "read_name", "parse_query", "OPCODE_QUERY"]

OPCODE_QUERY = 0
_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_MAX_NAME = 255
_MAX_JUMPS = 127


@dataclass(frozen=True, slots=True)
class Header:
    """The 12-byte header: ID, flags and the four section counts."""

    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


@dataclass(frozen=True, slots=True)
class Question:
    """The question as asked: ``name`` keeps the client's case (0x20 randomisation)."""

    name: dnslib.DNSLabel
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: the header, its one question and its EDNS (None without an OPT record)."""

    header: Header
    question: Question
    edns: Edns | None


def read_header(data: bytes) -> Header:
    """The header, or Unanswerable for fewer than 12 bytes or a response (QR=1)."""
    if len(data) < 12:
        raise Unanswerable(f"{len(data)} bytes is shorter than a DNS header")
    header = Header(*_HEADER.unpack_from(data))
    if header.flags & 0x8000:
        raise Unanswerable("a response, not a query")
    return header


def read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of the (possibly compressed) name at ``offset``, as raw octets, and the offset
    just past it in the packet.

    A label may hold any octets at all (RFC 2181 11: dnslib refuses labels that are not UTF-8,
    which made a query for such a name FORMERR instead of an answer). FormatError for a name
    past the end, a label type other than 0 or a pointer, a name over 255 octets, and a
    compression pointer that does not point strictly before the previous one's target and into
    the packet after the header (so no loop, no forward pointer: every jump goes further back,
    and the walk ends), and more than _MAX_JUMPS pointers (a name has at most 127 labels; a
    chain of pointers to pointers would cost a walk of the packet per name)."""
    labels: list[bytes] = []
    length = 0
    end: int | None = None
    limit = offset  # a pointer must land before this
    jumps = 0
    while True:
        if offset >= len(data):
            raise FormatError("a name runs past the end of the packet")
        b = data[offset]
        if b & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise FormatError("a compression pointer cut short")
            target = ((b & 0x3F) << 8) | data[offset + 1]
            if not 12 <= target < limit:
                raise FormatError(f"a compression pointer to {target} (must point back, past the header)")
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise FormatError(f"more than {_MAX_JUMPS} compression pointers in one name")
            if end is None:
                end = offset + 2
            offset = limit = target
            continue
        if b & 0xC0:
            raise FormatError(f"label type {b >> 6:#x} is not supported")
        length += 1 + b
        if length > _MAX_NAME:
            raise FormatError("a name longer than 255 bytes")
        if b == 0:
            return tuple(labels), (end if end is not None else offset + 1)
        if offset + 1 + b > len(data):
            raise FormatError("a label runs past the end of the packet")
        labels.append(bytes(data[offset + 1:offset + 1 + b]))
        offset += 1 + b


def _skip_name(data: bytes, offset: int) -> int:
    """The offset just past the name of a record at ``offset`` (after the question), without
    following its compression pointer: those records are only walked, and following every
    record's pointers lets one packet of chained pointers cost seconds (thousands of records
    times thousands of jumps). A pointer must still point back into the packet after the header."""
    length = 0
    while True:
        if offset >= len(data):
            raise FormatError("a name runs past the end of the packet")
        b = data[offset]
        if b & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise FormatError("a compression pointer cut short")
            if not 12 <= (((b & 0x3F) << 8) | data[offset + 1]) < offset:
                raise FormatError("a compression pointer that does not point back, past the header")
            return offset + 2
        if b & 0xC0:
            raise FormatError(f"label type {b >> 6:#x} is not supported")
        offset += 1 + b
        length += 1 + b
        if length > _MAX_NAME:
            raise FormatError("a name longer than 255 bytes")
        if b == 0:
            return offset


def _find_opt(data: bytes, header: Header) -> tuple[int, int, bytes] | None:
    """(CLASS, TTL, RDATA) of the query's OPT record, or None; FORMERR for more than one OPT,
    an OPT outside the additional section or not at the root, or bytes past the last record."""
    offset = read_name(data, 12)[1] + 4
    found: tuple[int, int, bytes] | None = None
    total = header.ancount + header.nscount + header.arcount
    for i in range(total):
        start = offset
        offset = _skip_name(data, offset)
        if offset + 10 > len(data):
            raise FormatError("a record header runs past the end of the packet")
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
        offset += 10
        if offset + rdlength > len(data):
            raise FormatError("record data runs past the end of the packet")
        if rtype == dnslib.QTYPE.OPT:
            if i < header.ancount + header.nscount:
                raise FormatError("an OPT record outside the additional section")
            if found is not None:
                raise FormatError("more than one OPT record")
            if data[start] != 0:
                raise FormatError("an OPT record whose owner is not the root")
            found = (rclass, ttl, data[offset:offset + rdlength])
        offset += rdlength
    if offset != len(data):
        raise FormatError(f"{len(data) - offset} bytes after the last record")
    return found


def parse_query(data: bytes, header: Header | None = None, *, max_udp: int = DEFAULT_UDP) -> Query:
    """Parse a whole query (see the module docstring for what each failure is answered)."""
    header = header or read_header(data)
    if header.opcode != OPCODE_QUERY:
        raise NotImplementedOpcode(f"opcode {header.opcode}")
    if header.qdcount != 1:
        raise FormatError(f"QDCOUNT is {header.qdcount}, not 1")
    # Read here, not by dnslib: dnslib refuses labels that are not UTF-8 (legal in DNS), and takes
    # names over 255 octets and 0x40 labels, which then cannot be repeated in the answer.
    labels, end = read_name(data, 12)
    if end + 4 > len(data):
        raise FormatError("the question is cut short")
    qtype, qclass = struct.unpack_from("!HH", data, end)
    question = Question(dnslib.DNSLabel(labels), qtype, qclass)
    opt = None
    try:
        opt = _find_opt(data, header)
        edns = None if opt is None else read_opt(*opt, max_udp=max_udp)
    except DnsError as e:
        # The answer repeats the question, and carries an OPT record if the query had one.
        e.question = question  # type: ignore[attr-defined]
        e.had_opt = opt is not None  # type: ignore[attr-defined]
        raise
    return Query(header=header, question=question, edns=edns)

