"""The CDN's own signing keys: ``[[cdn.keys]]`` entries with ``private_key_file = "auto"``.

``headwater up`` calls :func:`prepare` before any daemon starts (as it makes the cluster secret
and the local CA), so that on a fresh checkout the default cluster signs its playback URLs and its
POPs check them with no step of the operator's. ``headwater cdn keygen`` makes one on demand
(a new id, to rotate). Each key is an RSA-2048 private key in PKCS#8 PEM, the only copy of the
pair (the public half is derived from it when the configuration is read), in
``data_dir/cdn/<id>.pem``, mode 0600 from the moment it exists; ``data_dir`` is never committed.

RSA because CloudFront's signed URLs are RSA PKCS#1 v1.5 (what :mod:`.signedurl` verifies).
``cryptography`` (OpenSSL) generates it: 0.05 s of CPU here against pycryptodome's 0.2-1.5 s
(which :mod:`.signedurl` keeps for signing and verifying: it reads this PEM as it is).
"""

from __future__ import annotations

from pathlib import Path

from headwater.config import ClusterConfig
from headwater.sealed import publish_private

from .signedurl import auto_key_file

__all__ = ["KEY_BITS", "default_key_file", "make_key_file", "missing_auto_keys", "prepare"]

KEY_BITS = 2048


def make_key_file(path: Path, *, bits: int = KEY_BITS) -> bool:
    """Make an RSA private key at ``path`` unless a file is there; True if this call made it.

    The key is written to a private temporary name and linked into place, so a reader never sees
    a half-written key and two processes making the same key at once keep exactly one (the loser's
    is discarded). Missing directories are made 0700."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if path.exists():
        return False
    pem = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        publish_private(path, pem, exclusive=True)
    except FileExistsError:
        return False
    return True


def missing_auto_keys(cfg: ClusterConfig) -> list[Path]:
    """The files of ``auto`` keys that are not made yet."""
    cdn = getattr(cfg, "cdn", None)
    return [k.auto_file for k in (cdn.keys.keys if cdn is not None else ()) if k.missing and k.auto_file]


def prepare(cfg: ClusterConfig) -> list[str]:
    """``headwater up``'s first start: make every missing ``auto`` key; one line per key made."""
    made = []
    for file in missing_auto_keys(cfg):
        if make_key_file(file):
            made.append(f"created the CDN signing key {file} (owner-only; every host running a POP "
                        "or the origin needs the same file)")
    return made


def default_key_file(cfg: ClusterConfig, key_id: str) -> Path:
    """Where ``auto`` keeps ``key_id`` for this cluster."""
    return auto_key_file(cfg.data_dir, key_id)
