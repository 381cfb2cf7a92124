"""Key-encryption keys (KEKs) and the wrapping of content keys under them. Sans-IO but for the
file helpers at the end.

A KEK is 32 random bytes, kept as 64 hex characters in a file (mode 0600, owned by the user
running headwater; refused otherwise, as ssh refuses keys) or in an environment variable, never
in the repository and never in a log line. Two keys are derived from it with HKDF-SHA256:

- the *wrapping key* (AES-256-GCM) that encrypts each content key;
- the *KEK id*, 8 bytes stored in every record, which names the KEK a record was wrapped under
  (so records under an old and a new KEK are both readable during a rotation) and reveals
  nothing about the wrapping key.

A wrapped record is ``nonce (12) || AES-256-GCM(content key) || tag (16)``; the associated data
binds the record to its KID, its title and its KEK id, so a record moved to another KID or title
(or relabelled with another KEK id) fails authentication instead of handing out the wrong key.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from headwater.sealed import SealedError, publish_private, read_owner_only

from ..errors import KeyStoreError

__all__ = [
    "KEK_BYTES", "KEK_ID_BYTES", "Kek", "kek_from_bytes", "parse_kek_text", "read_kek_file", "kek_from_env",
    "create_kek_file", "wrap_key", "unwrap_key",
]

KEK_BYTES = 32
KEK_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
_AAD_LABEL = b"headwater drm content key v1\x00"
_MAX_KEK_FILE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Kek:
    """A loaded KEK: its id, its wrapping key (never shown by repr) and where it came from."""

    id: bytes
    wrap_key: bytes = field(repr=False)
    source: str = "memory"
    # OpenSSL's one-shot AES-GCM (cryptography): a few microseconds per key, where building a
    # pycryptodome GCM object per call cost more than the rest of a licence request.
    aead: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aead", AESGCM(self.wrap_key))


def kek_from_bytes(raw: bytes, source: str = "memory") -> Kek:
    """The KEK for 32 raw bytes."""
    if len(raw) != KEK_BYTES:
        raise KeyStoreError(f"the KEK from {source} is {len(raw)} bytes, not {KEK_BYTES}")
    wrap = HKDF(raw, 32, b"", SHA256, context=b"headwater drm kek wrap v1")
    kid = HKDF(raw, KEK_ID_BYTES, b"", SHA256, context=b"headwater drm kek id v1")
    return Kek(id=kid, wrap_key=wrap, source=source)  # type: ignore[arg-type]


def parse_kek_text(text: str, source: str) -> Kek:
    """A KEK written as 64 hex characters (surrounding whitespace ignored)."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != KEK_BYTES:
        raise KeyStoreError(f"the KEK in {source} must be {2 * KEK_BYTES} hex characters "
                            f"(make one with `headwater keys make-kek FILE`)")
    return kek_from_bytes(raw, source)


def read_kek_file(path: Path) -> Kek:
    """The KEK in ``path``; refuses a file others may read or write, or another user's."""
    path = Path(path)
    try:
        data = read_owner_only(path, _MAX_KEK_FILE_BYTES, f"the KEK file {path}")
    except SealedError as e:
        raise KeyStoreError(str(e)) from None
    return parse_kek_text(data.decode("ascii", "replace"), str(path))


def kek_from_env(name: str, env: Mapping[str, str] | None = None) -> Kek:
    """The KEK in the environment variable ``name`` (64 hex characters)."""
    env = os.environ if env is None else env
    value = env.get(name, "")
    if not value.strip():
        raise KeyStoreError(f"the environment variable {name} (the KEK) is not set")
    return parse_kek_text(value, f"${name}")


def create_kek_file(path: Path) -> bool:
    """Make a fresh KEK in ``path`` (0600, its folder 0700) unless a file is already there;
    True if this call made it. Racing callers end with one KEK (published with ``link``)."""
    path = Path(path)
    if path.exists():
        return False
    try:
        publish_private(path, (secrets.token_hex(KEK_BYTES) + "\n").encode(), exclusive=True)
    except FileExistsError:
        return False
    return True


def _aad(kek_id: bytes, kid: bytes, title: str) -> bytes:
    # KID and KEK id have fixed lengths, so the title (the rest) needs no length prefix.
    return _AAD_LABEL + kek_id + kid + title.encode("utf-8")


def wrap_key(kek: Kek, kid: bytes, title: str, key: bytes, *, nonce: bytes | None = None) -> bytes:
    """``key`` sealed under ``kek`` for (``kid``, ``title``)."""
    if len(kid) != 16 or len(key) != 16:
        raise ValueError("a KID and a content key are 16 bytes each")
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    return nonce + kek.aead.encrypt(nonce, key, _aad(kek.id, kid, title))


def unwrap_key(kek: Kek, kid: bytes, title: str, wrapped: bytes) -> bytes:
    """The content key in ``wrapped``; KeyStoreError if it does not authenticate for this KEK,
    KID and title."""
    if len(wrapped) != NONCE_BYTES + 16 + TAG_BYTES:
        raise KeyStoreError("a wrapped key record has the wrong length")
    try:
        return kek.aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _aad(kek.id, kid, title))
    except InvalidTag:
        raise KeyStoreError("a key record fails authentication (tampered, moved, or another KEK)") from None
