"""The DS record the parent zone publishes for our key, and what ``headwater dns ds`` prints.

A DS (RFC 4034 §5) commits the parent to our DNSKEY: key tag, algorithm, digest type and
``digest = SHA-256(canonical owner name || DNSKEY rdata)`` (digest type 2, RFC 4509). The
operator hands the DS line to the registrar or the parent zone's operator; the DNSKEY line is
printed beside it so they can check what it commits to.
"""

from __future__ import annotations

import base64
import hashlib

import dnslib
from dnslib import DNSLabel

from .canonical import canonical_name
from .config import SUPPORTED_ALGORITHMS
from .keys import PROTOCOL, ZoneKey

__all__ = ["DIGEST_SHA256", "ds_digest", "ds_rdata", "render_ds"]

#: DS digest type 2: SHA-256 (RFC 4509), the one every validator must support.
DIGEST_SHA256 = 2


def ds_digest(zone: DNSLabel | str, dnskey_rdata: bytes) -> bytes:
    """The SHA-256 DS digest of a DNSKEY's rdata at owner ``zone``."""
    return hashlib.sha256(canonical_name(zone) + dnskey_rdata).digest()


def ds_rdata(key: ZoneKey) -> dnslib.DS:
    """The DS rdata for ``key`` (digest type 2)."""
    return dnslib.DS(key.key_tag, key.algorithm, DIGEST_SHA256, ds_digest(key.zone, key.dnskey_rdata))


def _owner(zone: DNSLabel) -> str:
    text = str(zone)
    return text if text.endswith(".") else text + "."


def render_ds(key: ZoneKey, *, ttl: int = 3600) -> str:
    """What ``headwater dns ds`` prints for one zone: a comment naming the key, the DS RR and
    the DNSKEY RR in presentation format (RFC 4034 §5.3 and §2.2), one per line."""
    owner = _owner(key.zone)
    ds = ds_rdata(key)
    algorithm = SUPPORTED_ALGORITHMS.get(key.algorithm, str(key.algorithm))
    return "\n".join([
        f"; {owner} key tag {key.key_tag}, algorithm {key.algorithm} ({algorithm}), flags {key.flags}"
        " (CSK); give the DS line to the parent zone",
        f"{owner}\t{ttl}\tIN\tDS\t{ds.key_tag} {ds.algorithm} {ds.digest_type} {ds.digest.hex().upper()}",
        f"{owner}\t{ttl}\tIN\tDNSKEY\t{key.flags} {PROTOCOL} {key.algorithm} "
        f"{base64.b64encode(key.public_key).decode()}",
    ]) + "\n"
