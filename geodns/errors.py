"""The GeoDNS's one exception root, and the one table that maps failures to DNS RCODEs.

Every error the DNS raises derives from :class:`DnsError`. Errors met while reading a query carry
the RCODE the client is answered with (``rcode``); :data:`RCODES` is the only place a code is
named, and :func:`rcode_of` the only place an exception becomes one (anything that is not a
DnsError is a server failure). :class:`Unanswerable` is the one failure with no answer at all:
fewer than 12 bytes (no ID to answer to) or a packet that is itself a response.

Errors of the configuration and the zones (:class:`ZoneError`) are DnsErrors too: they stop a
load or a reload, never a query.
"""

from __future__ import annotations

__all__ = [
    "RCODES", "DnsError", "Unanswerable", "FormatError", "ServerFailure", "NotImplementedOpcode",
    "Refused", "BadVersion", "ZoneError", "rcode_of", "rcode_name",
]

# RCODE name -> value (RFC 1035 4.1.1, RFC 6891 9: BADVERS is 16, carried as extended RCODE 1
# in the OPT record with 0 in the header's 4 bits).
RCODES: dict[str, int] = {
    "NOERROR": 0,
    "FORMERR": 1,
    "SERVFAIL": 2,
    "NXDOMAIN": 3,
    "NOTIMP": 4,
    "REFUSED": 5,
    "BADVERS": 16,
}
_NAMES = {v: k for k, v in RCODES.items()}


class DnsError(Exception):
    """Root of every error the GeoDNS raises; ``rcode_name`` is the RCODE a client gets for it."""

    rcode_name: str = "SERVFAIL"


class Unanswerable(DnsError):
    """A datagram that gets no answer: too short to hold a header, or a response (QR=1)."""

    rcode_name = "SERVFAIL"  # never sent


class FormatError(DnsError):
    """A malformed query (RFC 1035: the name server was unable to interpret it)."""

    rcode_name = "FORMERR"


class ServerFailure(DnsError):
    """We could not answer (a steering or signing failure)."""

    rcode_name = "SERVFAIL"


class NotImplementedOpcode(DnsError):
    """An opcode other than QUERY (NOTIFY, UPDATE, IQUERY, STATUS, unknown ones)."""

    rcode_name = "NOTIMP"


class Refused(DnsError):
    """A question we will not answer: outside our zones, another class, zone transfers."""

    rcode_name = "REFUSED"


class BadVersion(DnsError):
    """An EDNS version we do not implement (RFC 6891 6.1.3: answered BADVERS, version 0)."""

    rcode_name = "BADVERS"


class ZoneError(DnsError):
    """A zone (cluster.toml's records or a master file) that cannot be served; names where."""

    rcode_name = "SERVFAIL"


def rcode_of(exc: BaseException) -> int:
    """The RCODE an exception is answered with: a DnsError's own, anything else SERVFAIL."""
    if isinstance(exc, DnsError):
        return RCODES[exc.rcode_name]
    return RCODES["SERVFAIL"]


def rcode_name(rcode: int) -> str:
    """``NOERROR``, ``NXDOMAIN``, ... for metrics and logs; unknown codes as ``RCODE<n>``."""
    return _NAMES.get(rcode, f"RCODE{rcode}")
