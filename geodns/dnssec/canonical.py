"""The DNSSEC canonical form (RFC 4034 §6, as corrected by RFC 6840 §5.1), sans-IO.

What a signature covers is the RRset in canonical form: owner name lowercased and never
compressed, the names inside the rdata of the older types lowercased too, no compression
anywhere, the RRs sorted by their canonical rdata, every RR with the original TTL. dnslib packs
rdata for the wire (with compression where RFC 1035 allows it); :class:`CanonicalBuffer` is a
dnslib buffer that never compresses and, when asked, lowercases, so every dnslib rdata class
packs its canonical form through its own ``pack``.
"""

from __future__ import annotations

import struct
from typing import Iterable

import dnslib
from dnslib import DNSBuffer, DNSLabel

__all__ = [
    "TYPES_WITH_LOWERCASED_NAMES",
    "CanonicalBuffer",
    "canonical_labels",
    "canonical_name",
    "canonical_rdata",
    "canonical_sort_key",
    "rrset_wire",
    "signature_labels",
]

# RFC 4034 §6.2 item 3, less HINFO (it holds no names) and NSEC (RFC 6840 §5.1: not lowercased).
TYPES_WITH_LOWERCASED_NAMES = frozenset({
    2,   # NS
    3,   # MD
    4,   # MF
    5,   # CNAME
    6,   # SOA
    7,   # MB
    8,   # MG
    9,   # MR
    12,  # PTR
    14,  # MINFO
    15,  # MX
    17,  # RP
    18,  # AFSDB
    21,  # RT
    24,  # SIG
    26,  # PX
    30,  # NXT
    33,  # SRV
    35,  # NAPTR
    36,  # KX
    38,  # A6
    39,  # DNAME
    46,  # RRSIG
})


def canonical_labels(name: DNSLabel | str) -> tuple[bytes, ...]:
    """``name``'s labels, ASCII-lowercased (DNS case folding is ASCII only, RFC 4343)."""
    label = name if isinstance(name, DNSLabel) else DNSLabel(name)
    return tuple(part.lower() for part in label.label)


def canonical_name(name: DNSLabel | str) -> bytes:
    """``name`` in canonical wire form: lowercased, uncompressed."""
    out = bytearray()
    for part in canonical_labels(name):
        if not 1 <= len(part) <= 63:
            raise ValueError(f"label {part!r} of {name} is not 1..63 octets")
        out.append(len(part))
        out += part
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"{name} is longer than 255 octets")
    return bytes(out)


class CanonicalBuffer(DNSBuffer):
    """A dnslib buffer that writes every name uncompressed, lowercased if ``lowercase``."""

    def __init__(self, *, lowercase: bool) -> None:
        super().__init__()
        self.lowercase = lowercase

    def _name(self, name: DNSLabel | str) -> None:
        label = name if isinstance(name, DNSLabel) else DNSLabel(name)
        parts = canonical_labels(label) if self.lowercase else label.label
        for part in parts:
            if not 1 <= len(part) <= 63:
                raise ValueError(f"label {part!r} of {label} is not 1..63 octets")
            self.pack("!B", len(part))
            self.append(part)
        self.append(b"\x00")

    def encode_name(self, name: DNSLabel | str) -> None:  # dnslib's hook, compression removed
        self._name(name)

    def encode_name_nocompress(self, name: DNSLabel | str) -> None:
        self._name(name)


def canonical_rdata(rr: dnslib.RR) -> bytes:
    """``rr``'s rdata in canonical form (RFC 4034 §6.2 items 2-3)."""
    buf = CanonicalBuffer(lowercase=rr.rtype in TYPES_WITH_LOWERCASED_NAMES)
    rr.rdata.pack(buf)
    return bytes(buf.data)


def signature_labels(name: DNSLabel | str) -> int:
    """The RRSIG Labels field for owner ``name``: its labels, not counting the root or a
    leading ``*`` (RFC 4034 §3.1.3)."""
    labels = canonical_labels(name)
    return len(labels) - 1 if labels and labels[0] == b"*" else len(labels)


def canonical_sort_key(name: DNSLabel | str) -> tuple[bytes, ...]:
    """A key that sorts names in DNSSEC canonical order (RFC 4034 §6.1): by their lowercased
    labels compared right to left, each label as an unsigned octet string, absent labels first."""
    return tuple(reversed(canonical_labels(name)))


def rrset_wire(owner: bytes, rtype: int, rclass: int, ttl: int, rdatas: Iterable[bytes]) -> bytes:
    """The RRs of one RRset in canonical form and order (RFC 4034 §6.3), duplicates dropped:
    what follows the RRSIG rdata in the data a signature covers (RFC 4034 §3.1.8.1)."""
    out = bytearray()
    head = owner + struct.pack("!HHI", rtype, rclass, ttl)
    for rdata in sorted(set(rdatas)):
        out += head
        out += struct.pack("!H", len(rdata))
        out += rdata
    return bytes(out)
