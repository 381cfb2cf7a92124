"""The zone's signing key: ECDSA P-256 (DNSSEC algorithm 13, RFC 6605), kept sealed on disk.

One key per zone, a **CSK** (combined signing key, DNSKEY flags 257: Zone Key + Secure Entry
Point) that signs every RRset, the DNSKEY RRset included, and whose DS goes to the parent. Why
not the classic KSK + ZSK split: the split exists so that the key signing every answer can be
rolled often without touching the parent, which matters when signatures are made offline and a
stolen ZSK can be replaced quietly. Here signing is online (the daemon holds the key either way,
so a separate KSK would sit in the same process and buy no isolation), one key halves the DNSKEY
RRset and the work per DNSKEY answer, and a rollover is one procedure (publish new key, sign
with both, swap the DS, retire) rather than two. A split can come later behind the same
:class:`ZoneKey` if an operator needs offline KSK signing.

The private key is stored with :mod:`headwater.sealed` (purpose ``b"dns-key"``) in
``<key_dir>/<zone>.+013.csk.sealed``, as a small JSON document (algorithm, flags, zone, the
private scalar, creation time), created on first start. Creation is exclusive, so the workers
of one GeoDNS starting together end up with one key: the first to publish wins and the others
load its file. Several GeoDNS hosts serving one zone behind anycast must share the key: copy the
file (it opens only with the cluster secret) before starting the others.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dnslib
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS
from dnslib import DNSLabel

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.sealed import Sealer, SealedError, load_or_create, read_sealed

from .canonical import canonical_labels, canonical_name
from .config import ALGORITHM_ECDSAP256SHA256

__all__ = [
    "FLAGS_CSK",
    "KEY_PURPOSE",
    "PROTOCOL",
    "ZoneKey",
    "generate_private_scalar",
    "key_path",
    "key_tag",
    "load_or_create_zone_key",
    "load_zone_key",
]

#: DNSKEY flags of a combined signing key: Zone Key (bit 7, 256) + Secure Entry Point (bit 15, 1).
FLAGS_CSK = 257
#: The DNSKEY protocol field is always 3 (RFC 4034 §2.1.2).
PROTOCOL = 3
#: The sealing purpose of DNSSEC private keys.
KEY_PURPOSE = b"dns-key"
_FORMAT = "headwater-dnssec-key-v1"


def key_tag(dnskey_rdata: bytes) -> int:
    """The key tag of a DNSKEY's rdata (RFC 4034 Appendix B; algorithm 1 is never used here)."""
    acc = 0
    for i, octet in enumerate(dnskey_rdata):
        acc += octet << 8 if i % 2 == 0 else octet
    acc += (acc >> 16) & 0xFFFF
    return acc & 0xFFFF


def generate_private_scalar(randfunc: Callable[[int], bytes] | None = None) -> int:
    """A fresh P-256 private key's scalar (``randfunc`` defaults to the OS CSPRNG)."""
    return int(ECC.generate(curve="P-256", randfunc=randfunc).d)


@dataclass(frozen=True, slots=True, eq=False)
class ZoneKey:
    """A zone's CSK: the private key, its DNSKEY rdata and key tag. Signs with 64-byte r||s."""

    zone: DNSLabel
    private: ECC.EccKey = field(repr=False)
    flags: int = FLAGS_CSK
    algorithm: int = ALGORITHM_ECDSAP256SHA256
    randfunc: Callable[[int], bytes] | None = field(default=None, repr=False)
    # The same key for OpenSSL (through cryptography), which signs about eight times faster than
    # pycryptodome's pure-Python ECDSA (~0.2 ms against ~1.4 ms here): a query for a random name
    # with DO costs one fresh signature, so the signing speed is the CPU an attacker buys with
    # one small packet.
    _openssl: ec.EllipticCurvePrivateKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_openssl", ec.derive_private_key(int(self.private.d), ec.SECP256R1()))

    @classmethod
    def from_scalar(cls, zone: DNSLabel | str, d: int, *, flags: int = FLAGS_CSK,
                    randfunc: Callable[[int], bytes] | None = None) -> ZoneKey:
        return cls(zone=DNSLabel(zone), private=ECC.construct(curve="P-256", d=d), flags=flags,
                   randfunc=randfunc)

    @property
    def public_key(self) -> bytes:
        """The DNSKEY public key field: the point's x || y, 32 octets each (RFC 6605 §4)."""
        raw = self.private.public_key().export_key(format="raw")  # 0x04 || x || y
        return raw[1:]

    @property
    def dnskey_rdata(self) -> bytes:
        return struct.pack("!HBB", self.flags, PROTOCOL, self.algorithm) + self.public_key

    @property
    def key_tag(self) -> int:
        return key_tag(self.dnskey_rdata)

    def dnskey(self) -> dnslib.DNSKEY:
        """The DNSKEY rdata as a dnslib object."""
        return dnslib.DNSKEY(self.flags, PROTOCOL, self.algorithm, self.public_key)

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 over ``data``: 64 octets, r || s (RFC 6605 §4), not DER.

        OpenSSL signs with its own randomness; an injected ``randfunc`` (tests) takes the slower
        pycryptodome path, which uses it."""
        if self.randfunc is not None:
            signer = DSS.new(self.private, "fips-186-3", encoding="binary", randfunc=self.randfunc)
            return signer.sign(SHA256.new(data))
        r, s = decode_dss_signature(self._openssl.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def to_json(self, created: float) -> bytes:
        """What is sealed on disk (``created``: seconds since the epoch, for the operator)."""
        return json.dumps({
            "format": _FORMAT,
            "zone": b".".join(canonical_labels(self.zone)).decode("ascii", "backslashreplace") + ".",
            "algorithm": self.algorithm,
            "flags": self.flags,
            "private_key": base64.b64encode(int(self.private.d).to_bytes(32, "big")).decode(),
            "created": int(created),
        }, sort_keys=True).encode()

    @classmethod
    def from_json(cls, zone: DNSLabel | str, data: bytes, source: str, *,
                  randfunc: Callable[[int], bytes] | None = None) -> ZoneKey:
        try:
            doc = json.loads(data)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            if doc["algorithm"] != ALGORITHM_ECDSAP256SHA256:
                raise ValueError(f"algorithm {doc['algorithm']}")
            d = int.from_bytes(base64.b64decode(doc["private_key"], validate=True), "big")
            key = cls.from_scalar(zone, d, flags=int(doc["flags"]), randfunc=randfunc)
        except (ValueError, KeyError, TypeError) as e:
            raise SealedError(f"{source} opened but does not hold a DNSSEC key this headwater reads ({e})") from None
        if canonical_name(doc["zone"]) != canonical_name(zone):
            raise SealedError(f"{source} holds the key of zone {doc['zone']}, not of {zone}")
        return key


def key_path(key_dir: Path, zone: DNSLabel | str) -> Path:
    """Where ``zone``'s key lives: ``<key_dir>/<zone>.+013.csk.sealed`` (the zone in lowercase,
    any octet outside letters, digits, ``-`` and ``_`` written as ``%XX``)."""
    labels = canonical_labels(DNSLabel(zone))
    text = ".".join(re.sub(rb"[^a-z0-9_-]", lambda m: b"%%%02X" % m.group()[0], part).decode()
                    for part in labels)
    return Path(key_dir) / f"{text or 'root'}.+{ALGORITHM_ECDSAP256SHA256:03d}.csk.sealed"


def load_or_create_zone_key(zone: DNSLabel | str, key_dir: Path, sealer: Sealer, *,
                            randfunc: Callable[[int], bytes] | None = None,
                            clock: Clock = SYSTEM_CLOCK) -> tuple[ZoneKey, bool]:
    """``zone``'s key from ``key_dir``, created (and sealed) if there is none yet. Returns the key
    and whether this call created it. Raises :class:`~headwater.sealed.SealedError` if the file
    exists but cannot be used (another cluster secret, damaged): a key is never silently replaced,
    because a new key would break the DS the parent holds."""
    path = key_path(key_dir, zone)

    def create() -> bytes:
        return ZoneKey.from_scalar(zone, generate_private_scalar(randfunc)).to_json(clock.time())

    data, created = load_or_create(path, sealer, KEY_PURPOSE, create)
    return ZoneKey.from_json(zone, data, str(path), randfunc=randfunc), created


def load_zone_key(zone: DNSLabel | str, key_dir: Path, sealer: Sealer) -> ZoneKey:
    """``zone``'s existing key; FileNotFoundError if it has none yet."""
    path = key_path(key_dir, zone)
    return ZoneKey.from_json(zone, read_sealed(path, sealer, KEY_PURPOSE), str(path))
