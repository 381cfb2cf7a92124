"""Authenticated denial by NSEC "white lies" (RFC 4470): NSEC records made up per query that
cover just the name asked about, sans-IO.

Why white lies, and not "black lies" / compact denial (RFC 9824)
----------------------------------------------------------------
Compact denial answers a name that does not exist with NOERROR and one NSEC *at* the name
(types RRSIG, NSEC, NXNAME): one signature per negative answer instead of two, but the RCODE
changes with the DO bit (NXDOMAIN to signed clients becomes NOERROR, unless they send the CO
flag), so NXDOMAIN and NODATA look alike to every DNSSEC-aware client, to RRL and to our
metrics; and validators older than RFC 9824 (2025) see a NODATA for a name that does not exist.
White lies keep the RCODE the unsigned answer has (NXDOMAIN stays NXDOMAIN), validate with every
validator since RFC 4035, and cost no more signing where it matters: the second NSEC of an
NXDOMAIN (the one denying the wildcard) is the same for every name under one parent, so its
signature is cached, and a flood of random names costs one fresh signature per query, as compact
denial does. They reveal nothing about the zone either (no zone walking): every range is made
around the name asked about. The issue asks for white lies too.

The records (qname ``Q`` in lowercase, ``P`` its parent):

- NODATA (``Q`` exists, or a wildcard answered for it, but not with the type asked):
  ``Q NSEC \\000.Q <types at Q> RRSIG NSEC`` -- the NSEC at the name itself, its next name the
  immediate successor of ``Q``, so it covers no other name.
- NXDOMAIN: ``pred(Q) NSEC next(Q) RRSIG NSEC`` covering ``Q`` and every name below it, and
  ``pred(*.P) NSEC next(*.P) RRSIG NSEC`` proving there is no wildcard at ``P``. A validator takes
  the closest encloser to be ``P`` (the longest ancestor ``Q`` shares with the owner and next
  names, RFC 4035 §5.4), so the wildcard denied is ``*.P``. When ``P`` itself does not exist the
  true closest encloser is higher, and a wildcard there would have matched ``Q`` (so the answer
  would not be NXDOMAIN): denying ``*.P`` is still true.

``next(X)`` is the smallest name after ``X`` and all its descendants (``X``'s first label with a
``\\000`` octet appended: ``a.example`` -> ``a\\000.example``). Not ``\\000.X``: a next name below
``Q`` would say that ``Q`` has descendants, which contradicts NXDOMAIN (validators such as
Unbound reject it as proving an empty non-terminal). ``pred(X)`` is RFC 4471's "modified
method" as RFC 4470 §3 uses it: the first label's last octet decremented, ``\\255`` appended
(``exactly`` -> ``exactlx\\255``). Strictly, such a range also covers names whose labels carry
``\\255`` octets (``exactlx\\255abc``); a zone never holds such names unless someone puts
them there on purpose, and the answerer never asks to deny a name that exists.

Octet arithmetic stays in canonical (lowercased) space: incrementing ``@`` (0x40) gives ``[``
(0x5b), never ``A``, which a validator would read as ``a``.

One name cannot be denied this way: a name whose first label is the single octet ``\\000``
(``\\000.example``), whose only predecessor is its parent, an existing name whose true type
bitmap the signer does not know. Rather than sign a false NSEC at an existing name (which an
RFC 8198 resolver could use to deny that name's real data), the NXDOMAIN for such a name carries
only the wildcard denial: a validator finds it bogus and answers SERVFAIL to whoever asked
for that name only.

Nor can a name whose first label is 63 ``\\255`` octets, the last of its siblings (no next name
ends its range): clients may ask for any octets, and such a name gets the same treatment.
"""

from __future__ import annotations

from typing import Iterable

import dnslib
from dnslib import DNSLabel

__all__ = [
    "NSEC",
    "RRSIG",
    "DNSKEY",
    "NsecRdata",
    "covering_nsec",
    "matching_nsec",
    "next_after_subtree",
    "predecessor",
    "successor",
    "type_bitmap",
]

RRSIG = 46
NSEC = 47
DNSKEY = 48

_MAX_NAME = 255
_MAX_LABEL = 63
_UPPER_FIRST, _UPPER_LAST = 0x41, 0x5A  # 'A'..'Z': absent in canonical (lowercased) space

Labels = tuple[bytes, ...]  # leftmost label first, lowercase, no root label


def type_bitmap(types: Iterable[int]) -> bytes:
    """The NSEC type bit maps field for ``types`` (RFC 4034 §4.1.2): per 256-type window in use,
    the window number, the bitmap length, and the bitmap with trailing zero octets dropped."""
    windows: dict[int, bytearray] = {}
    for t in types:
        if not 0 < t <= 0xFFFF:
            raise ValueError(f"type {t} is not 1..65535")
        bitmap = windows.setdefault(t >> 8, bytearray(32))
        bitmap[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    out = bytearray()
    for window in sorted(windows):
        bitmap = bytes(windows[window]).rstrip(b"\x00")
        out += bytes((window, len(bitmap))) + bitmap
    return bytes(out)


def _type_name(t: int) -> str:
    name = dnslib.QTYPE.get(t)
    return name if isinstance(name, str) and not name.startswith("TYPE") else f"TYPE{t}"


class NsecRdata(dnslib.RD):
    """NSEC rdata (RFC 4034 §4) built from type numbers. dnslib's own NSEC class takes type
    mnemonics and fails on any type it has no name for; its wire form is the same."""

    attrs = ("next_name", "types")

    def __init__(self, next_name: DNSLabel | str, types: Iterable[int]) -> None:
        self.next_name = next_name if isinstance(next_name, DNSLabel) else DNSLabel(next_name)
        self.types = frozenset(types)
        self._bitmap = type_bitmap(self.types)

    def pack(self, buffer: dnslib.DNSBuffer) -> None:
        buffer.encode_name_nocompress(self.next_name)  # never compressed (RFC 4034 §4.1.1)
        buffer.append(self._bitmap)

    def __repr__(self) -> str:
        return f"{self.next_name} {' '.join(_type_name(t) for t in sorted(self.types))}"


# --- canonical name arithmetic ---------------------------------------------------------------

def _wire_len(labels: Labels) -> int:
    return sum(len(x) + 1 for x in labels) + 1


def _inc(octet: int) -> int:
    octet += 1
    return _UPPER_LAST + 1 if _UPPER_FIRST <= octet <= _UPPER_LAST else octet


def _dec(octet: int) -> int:
    octet -= 1
    return _UPPER_FIRST - 1 if _UPPER_FIRST <= octet <= _UPPER_LAST else octet


def _lower(name: DNSLabel | str) -> Labels:
    label = name if isinstance(name, DNSLabel) else DNSLabel(name)
    return tuple(x.lower() for x in label.label)


def successor(labels: Labels) -> Labels:
    """The immediate successor of a name that exists: its first child in canonical order,
    ``\\000.name`` (or, when that would be too long, :func:`next_after_subtree`)."""
    if _wire_len(labels) + 2 <= _MAX_NAME:
        return (b"\x00",) + labels
    return next_after_subtree(labels)


def next_after_subtree(labels: Labels) -> Labels:
    """The smallest name after ``labels`` and all its descendants: the first label with a
    ``\\000`` octet appended, or, for a 63-octet label or a 255-octet name, the label's last
    octet that is not 0xff incremented and the octets after it dropped."""
    first, rest = labels[0], labels[1:]
    if len(first) < _MAX_LABEL and _wire_len(labels) < _MAX_NAME:
        return (first + b"\x00",) + rest
    stem = first.rstrip(b"\xff")
    if not stem:
        raise ValueError("a label of 63 0xff octets has no next sibling")
    return (stem[:-1] + bytes((_inc(stem[-1]),)),) + rest


def predecessor(labels: Labels) -> Labels | None:
    """A name just before ``labels`` among its siblings (RFC 4471's modified method): the first
    label's last octet decremented and ``\\255`` appended when it fits; a label ending in
    ``\\000`` loses that octet and gets a ``\\255`` child. None for the label ``\\000`` alone
    (its only predecessor is its parent)."""
    first, rest = labels[0], labels[1:]
    if first[-1] == 0:
        stem = first[:-1]
        if not stem:
            return None
        # Everything between "stem" and "stem\000" is below "stem": take a child sorting late.
        candidate = (b"\xff", stem) + rest
        return candidate if _wire_len(candidate) <= _MAX_NAME else (stem,) + rest
    stem = first[:-1] + bytes((_dec(first[-1]),))
    if len(stem) < _MAX_LABEL and _wire_len(labels) < _MAX_NAME:
        stem += b"\xff"
    return (stem,) + rest


def _name(labels: Labels) -> DNSLabel:
    return DNSLabel(labels)


def _nsec(owner: Labels, next_name: Labels, types: Iterable[int], ttl: int) -> dnslib.RR:
    return dnslib.RR(_name(owner), NSEC, dnslib.CLASS.IN, ttl, NsecRdata(_name(next_name), types))


def matching_nsec(qname: DNSLabel | str, types_present: Iterable[int], ttl: int) -> dnslib.RR:
    """NODATA: the NSEC at ``qname`` listing ``types_present`` (plus RRSIG and NSEC)."""
    labels = _lower(qname)
    return _nsec(labels, successor(labels), {*types_present, RRSIG, NSEC}, ttl)


def covering_nsec(name: DNSLabel | str, ttl: int) -> dnslib.RR | None:
    """NXDOMAIN: an NSEC whose range holds ``name`` and all its descendants and nothing else a
    zone would hold; None for a name whose first label is ``\\000`` alone (see the module doc)
    or 63 ``\\255`` octets (the last name among its siblings: no next sibling to end the range
    at), which a client may ask for as well as any other."""
    labels = _lower(name)
    owner = predecessor(labels)
    if owner is None:
        return None
    try:
        following = next_after_subtree(labels)
    except ValueError:
        return None
    return _nsec(owner, following, (RRSIG, NSEC), ttl)
