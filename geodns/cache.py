"""The wire-level answer cache: a query's bytes in, a finished answer's bytes out, sans-IO.

Parsing a query and packing an answer with dnslib costs tens of microseconds; a server that
answers the same questions again and again (what an authoritative server mostly does) can skip
both. :func:`query_key` reads just enough of a query to key it: the RD and CD bits, the question
name ASCII-lowercased, and every byte after the name as sent (type, class and the whole OPT
record: payload size, DO bit, version, and the options with the ECS client subnet). Two queries
with one key get the same answer apart from the ID and the case of the question name, which
:meth:`AnswerCache.lookup` patches in (the answer's owner names point at the question by name
compression, so they follow its case too, as 0x20 randomisation expects). Queries of any other
shape (a compressed question, more than one record, not a plain QUERY) have no key and always
take the full path.

A steered answer chosen by the resolver's own address (no ECS) is stored per client address:
the plain key then holds a marker and the answer sits under the key plus the address. The
whole cache is dropped when the generation (zones, steering and health state) changes.

Bounded both ways: at most ``max_entries`` answers and ``max_bytes`` of answer bytes (keys
included), least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

from .answer import Answered

__all__ = ["query_key", "Cached", "AnswerCache"]


def query_key(data: bytes) -> tuple[bytes, int] | None:
    """(key, offset just past the question name) of a cacheable query, or None."""
    n = len(data)
    # 12-byte header + at least the root name and type/class; QR=0 and opcode QUERY; QDCOUNT 1,
    # ANCOUNT and NSCOUNT 0, ARCOUNT 0 or 1 (the OPT record).
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[10] or data[11] > 1:
        return None
    i = 12
    while True:
        length = data[i]
        if length == 0:
            break
        if length > 63:
            return None  # a pointer or an unknown label type: the parser decides
        i += length + 1
        if i >= n or i > 267:
            return None
    end = i + 1
    rest = end + 4
    if data[11]:
        # One record after the question: it must be an OPT record (root owner, type 41) of
        # EDNS version 0 whose RDATA ends the packet, else the full path judges it.
        if n < rest + 11 or data[rest] != 0 or data[rest + 1] != 0 or data[rest + 2] != 41 or data[rest + 6]:
            return None
        if rest + 11 + ((data[rest + 9] << 8) | data[rest + 10]) != n:
            return None
    elif n != rest:
        return None
    return bytes((data[2] & 0x01, data[3] & 0x10)) + data[12:end].lower() + data[end:], end


@dataclass(frozen=True, slots=True)
class Cached:
    """A stored answer and what the metrics and rate limiter need to know of it."""

    wire: bytes
    rcode: int
    qtype: int
    kind: str
    zone: str = ""


_PER_CLIENT = Cached(wire=b"", rcode=-1, qtype=-1, kind="per-client")


class AnswerCache:
    """An LRU of finished answers, bounded in entries and bytes."""

    def __init__(self, *, max_entries: int = 100_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, Cached] = OrderedDict()
        self._bytes = 0
        self._generation: Any = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def lookup(self, data: bytes, client_ip: str, generation: Hashable) -> tuple[bytes | None, Any]:
        """``(answer, cached)`` on a hit; ``(None, key)`` on a miss (key None: not cacheable),
        to hand to :meth:`store` with the answer."""
        if generation != self._generation:
            self.clear()
            self._generation = generation
        found = query_key(data)
        if found is None:
            self.misses += 1
            return None, None
        key, end = found
        entries = self._entries
        entry = entries.get(key)
        if entry is _PER_CLIENT:
            key = key + b"@" + client_ip.encode()
            entry = entries.get(key)
        if entry is None:
            self.misses += 1
            return None, found
        entries.move_to_end(key)
        self.hits += 1
        wire = entry.wire
        return data[:2] + wire[2:12] + data[12:end] + wire[end:], entry

    def store(self, found: tuple[bytes, int] | None, client_ip: str, answered: Answered) -> None:
        """Remember ``answered`` under the key :meth:`lookup` gave (if it may be cached)."""
        if found is None or not answered.cacheable:
            return
        key = found[0]
        if answered.per_client:
            self._put(key, _PER_CLIENT)
            key = key + b"@" + client_ip.encode()
        self._put(key, Cached(wire=answered.wire, rcode=answered.rcode, qtype=answered.qtype, kind=answered.kind,
                              zone=answered.zone))

    def _put(self, key: bytes, entry: Cached) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(key) + len(old.wire)
        self._entries[key] = entry
        self._bytes += len(key) + len(entry.wire)
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            k, e = self._entries.popitem(last=False)
            self._bytes -= len(k) + len(e.wire)

    def statistics(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}
