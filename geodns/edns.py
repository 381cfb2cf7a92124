"""EDNS(0) (RFC 6891) and the Client Subnet option (RFC 7871), sans-IO.

:func:`read_opt` turns a query's OPT record (its class, TTL and raw RDATA) into an :class:`Edns`
or raises: a malformed option list or a bad ECS option is FORMERR, a version other than 0 is
BADVERS. :func:`opt_record` builds the OPT record an answer carries (only when the query had
one). The UDP payload size a client advertises is clamped to ``512..max_udp``; ``max_udp`` is
the server's own cap (1232 by default, the DNS flag day 2020 figure that avoids IP
fragmentation; never above 4096).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import dnslib

from .errors import BadVersion, FormatError

__all__ = ["ECS_OPTION", "MIN_UDP", "MAX_UDP", "DEFAULT_UDP", "ClientSubnet", "Edns", "read_opt",
           "opt_record", "clamp_udp"]

ECS_OPTION = 8
MIN_UDP = 512
MAX_UDP = 4096
DEFAULT_UDP = 1232
_FAMILY_BITS = {1: 32, 2: 128}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSubnet:
    """A query's ECS option: FAMILY (1 IPv4, 2 IPv6), SOURCE PREFIX-LENGTH and the address bytes
    exactly as sent (``ceil(source_prefix / 8)`` of them, zero past the prefix)."""

    family: int
    source_prefix: int
    address: bytes

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The source network, the address padded to its family's length."""
        width = 4 if self.family == 1 else 16
        raw = self.address + bytes(width - len(self.address))
        ip = ipaddress.IPv4Address(raw) if self.family == 1 else ipaddress.IPv6Address(raw)
        return ipaddress.ip_network((ip, self.source_prefix))

    def option(self, scope_prefix: int) -> dnslib.EDNSOption:
        """The option echoed in an answer: same family, source prefix and address, with the
        SCOPE PREFIX-LENGTH the answer depended on (RFC 7871 7.2.1)."""
        return dnslib.EDNSOption(ECS_OPTION, struct.pack("!HBB", self.family, self.source_prefix,
                                                         scope_prefix) + self.address)


@dataclass(frozen=True, slots=True, kw_only=True)
class Edns:
    """What a query's OPT record says: the client's UDP payload size (clamped), the DO bit and
    its client subnet (or None)."""

    udp_size: int
    do: bool
    ecs: ClientSubnet | None = None


def clamp_udp(advertised: int, max_udp: int = DEFAULT_UDP) -> int:
    """The largest UDP answer we send a client that advertised ``advertised`` bytes."""
    return max(MIN_UDP, min(advertised, max_udp, MAX_UDP))


def read_ecs(data: bytes) -> ClientSubnet:
    """One ECS option's data, with every check of RFC 7871 6: a known family, a source prefix
    within the family, exactly ``ceil(source / 8)`` address bytes, no bits set past the prefix,
    and a zero scope prefix (it is the server's to set)."""
    if len(data) < 4:
        raise FormatError(f"ECS option of {len(data)} bytes (at least 4)")
    family, source, scope = struct.unpack_from("!HBB", data)
    bits = _FAMILY_BITS.get(family)
    if bits is None:
        raise FormatError(f"ECS family {family} is neither 1 (IPv4) nor 2 (IPv6)")
    if source > bits:
        raise FormatError(f"ECS source prefix {source} is longer than the family's {bits} bits")
    if scope != 0:
        raise FormatError(f"ECS scope prefix {scope} in a query (it must be 0)")
    address = data[4:]
    if len(address) != (source + 7) // 8:
        raise FormatError(f"ECS address of {len(address)} bytes for a /{source} (needs {(source + 7) // 8})")
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise FormatError(f"ECS address has bits set past its /{source} prefix")
    return ClientSubnet(family=family, source_prefix=source, address=bytes(address))


def read_opt(rclass: int, ttl: int, rdata: bytes, *, max_udp: int = DEFAULT_UDP) -> Edns:
    """A query's OPT record (CLASS = payload size, TTL = extended RCODE, version and flags).

    Options other than ECS are walked (their lengths must add up) and ignored."""
    version = (ttl >> 16) & 0xFF
    do = bool(ttl & 0x8000)
    ecs: ClientSubnet | None = None
    offset = 0
    while offset < len(rdata):
        if offset + 4 > len(rdata):
            raise FormatError("EDNS option header cut short")
        code, length = struct.unpack_from("!HH", rdata, offset)
        offset += 4
        if offset + length > len(rdata):
            raise FormatError(f"EDNS option {code} of {length} bytes runs past the OPT record")
        if code == ECS_OPTION:
            if ecs is not None:
                raise FormatError("more than one ECS option")
            ecs = read_ecs(rdata[offset:offset + length])
        offset += length
    if version != 0:
        # Checked after the options so that a malformed OPT is FORMERR whatever its version.
        raise BadVersion(f"EDNS version {version}")
    return Edns(udp_size=clamp_udp(rclass, max_udp), do=do, ecs=ecs)


def opt_record(*, udp_size: int, do: bool = False, ext_rcode: int = 0,
               options: list[dnslib.EDNSOption] | None = None) -> dnslib.RR:
    """The OPT record of an answer: our payload size, version 0, the DO bit echoed when we sign,
    the upper 8 bits of an extended RCODE, and the echoed options."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return dnslib.RR(rname=dnslib.DNSLabel("."), rtype=dnslib.QTYPE.OPT, rclass=udp_size, ttl=ttl,
                     rdata=list(options or []))
