"""Secrets sealed at rest: AES-256-GCM under a key derived from the cluster secret.

Every secret a daemon keeps on disk (the GeoDNS's DNSSEC signing key, the DRM's content keys)
is stored *sealed*: encrypted and authenticated with AES-256-GCM, under a key that HKDF-SHA256
derives from the cluster secret (``[cluster] secret_env`` / ``secret_file``, the secret the RPC
handshake proves) and a *purpose* label (``b"dns-key"``, ``b"drm-key"``), so a file sealed for
one purpose never opens as another, and a disk or backup on its own reveals nothing.

The format (version 1), every integer big-endian::

    magic      8   b"HWSEALED"
    version    1   1
    purpose    1+n length, then the label (1..64 bytes)
    salt      16   random per file: the AES key is HKDF(secret, salt, info=label+purpose)
    nonce     12   random per seal (GCM's IV)
    check     16   HMAC-SHA256(check key, everything above), truncated
    body       *   AES-256-GCM ciphertext
    tag       16   GCM tag; the associated data is the whole header (magic .. check)

The ``check`` field exists only to tell the two ways opening can fail apart: it is keyed by a
second HKDF output, so a mismatch means "sealed under another cluster secret (or the header is
damaged)", while a check that passes followed by a tag that fails means "the file was altered or
damaged". Either way nothing is returned: a wrong secret or a flipped byte is always a clear
:class:`SealedError`, never garbage. (The check says nothing useful to an attacker: the secret
is 32 random bytes, so it cannot be guessed offline.)

A fresh random salt per seal makes every file's key different, so the 96-bit random nonces can
never repeat under one key whatever the number of files.

Files are written atomically (a temporary file in the same folder, fsynced, then renamed or
linked into place, the folder fsynced), mode 0600 from the moment they exist.
:func:`load_or_create` publishes with ``link()``, which fails if the name exists, so two
processes starting together both end up using the one secret that won.

This module is part of the kernel: it imports no daemon package.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping


if TYPE_CHECKING:
    from headwater.config import ClusterConfig

__all__ = [
    "FORMAT_VERSION",
    "MAX_SEALED_BYTES",
    "SealedError",
    "SealedFormatError",
    "SealedKeyMismatch",
    "SealedTampered",
    "Sealer",
    "cluster_secret_bytes",
    "load_or_create",
    "publish_private",
    "read_sealed",
    "write_sealed",
]

MAGIC = b"HWSEALED"
FORMAT_VERSION = 1
SALT_BYTES = 16
NONCE_BYTES = 12
CHECK_BYTES = 16
TAG_BYTES = 16
MAX_PURPOSE_BYTES = 64
#: Largest sealed file read (keys are tiny; this bounds what a damaged or hostile file costs).
MAX_SEALED_BYTES = 16 * 1024 * 1024
#: Shortest cluster secret accepted (the same rule as the RPC handshake's).
MIN_SECRET_BYTES = 32

_INFO_KEY = b"headwater sealed v1 key:"
_INFO_CHECK = b"headwater sealed v1 check:"


class SealedError(Exception):
    """A sealed secret could not be opened or stored; the message names the file and the reason
    and never contains secret material."""


class SealedFormatError(SealedError):
    """Not a sealed file: wrong magic, unknown version, truncated, or sealed for another purpose."""


class SealedKeyMismatch(SealedError):
    """Sealed under another cluster secret (or its header was damaged)."""


class SealedTampered(SealedError):
    """The header matches this cluster secret but the body fails authentication: altered or damaged."""


@dataclass(frozen=True, slots=True)
class _Header:
    purpose: bytes
    salt: bytes
    nonce: bytes
    check: bytes
    raw: bytes  # the header as stored (the GCM associated data)


def _check_purpose(purpose: bytes) -> None:
    if not isinstance(purpose, bytes) or not 1 <= len(purpose) <= MAX_PURPOSE_BYTES:
        raise ValueError(f"a sealing purpose is 1..{MAX_PURPOSE_BYTES} bytes, got {purpose!r}")


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals and opens byte strings under keys derived from one cluster secret.

    ``randbytes`` is injected so tests can pin salts and nonces; it must be a CSPRNG in
    production (the default).
    """

    secret: bytes = field(repr=False)
    source: str = "memory"
    randbytes: Callable[[int], bytes] = field(default=secrets.token_bytes, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes):
            raise TypeError("the cluster secret is bytes")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the cluster secret from {self.source} is {len(self.secret)} bytes; "
                             f"at least {MIN_SECRET_BYTES} are required")

    @classmethod
    def from_config(cls, cfg: ClusterConfig, *, env: Mapping[str, str] | None = None) -> Sealer:
        """The sealer for the cluster secret ``cfg`` names (see :func:`cluster_secret_bytes`)."""
        secret, source = cluster_secret_bytes(cfg, env=env)
        return cls(secret, source)

    def _keys(self, purpose: bytes, salt: bytes) -> tuple[bytes, bytes]:
        # pycryptodome is imported here, not at the top: its first import costs a process a
        # tenth of a second of CPU (cffi), and most commands that import this module seal nothing.
        from Crypto.Hash import SHA256
        from Crypto.Protocol.KDF import HKDF

        enc = HKDF(self.secret, 32, salt, SHA256, context=_INFO_KEY + purpose)
        chk = HKDF(self.secret, 32, salt, SHA256, context=_INFO_CHECK + purpose)
        return enc, chk  # type: ignore[return-value]

    def seal(self, plaintext: bytes, purpose: bytes) -> bytes:
        """``plaintext`` sealed for ``purpose``: the bytes of a version-1 sealed file."""
        _check_purpose(purpose)
        salt = self.randbytes(SALT_BYTES)
        nonce = self.randbytes(NONCE_BYTES)
        if len(salt) != SALT_BYTES or len(nonce) != NONCE_BYTES:
            raise ValueError("randbytes returned the wrong number of bytes")
        enc_key, check_key = self._keys(purpose, salt)
        head = MAGIC + struct.pack("!BB", FORMAT_VERSION, len(purpose)) + purpose + salt + nonce
        head += hmac.new(check_key, head, hashlib.sha256).digest()[:CHECK_BYTES]
        from Crypto.Cipher import AES

        cipher = AES.new(enc_key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)
        cipher.update(head)
        body, tag = cipher.encrypt_and_digest(plaintext)
        return head + body + tag

    def open(self, blob: bytes, purpose: bytes, *, source: str = "sealed data") -> bytes:
        """The plaintext of ``blob``; raises a :class:`SealedError` subclass saying why not."""
        _check_purpose(purpose)
        h = _parse_header(blob, source)
        if h.purpose != purpose:
            raise SealedFormatError(f"{source} is sealed for {h.purpose.decode('ascii', 'replace')!r}, "
                                    f"not {purpose.decode('ascii', 'replace')!r}")
        enc_key, check_key = self._keys(purpose, h.salt)
        want = hmac.new(check_key, h.raw[:-CHECK_BYTES], hashlib.sha256).digest()[:CHECK_BYTES]
        if not hmac.compare_digest(want, h.check):
            raise SealedKeyMismatch(f"{source} was sealed under another cluster secret than the one from "
                                    f"{self.source} (or its header is damaged); it cannot be opened")
        body = blob[len(h.raw):-TAG_BYTES]
        tag = blob[-TAG_BYTES:]
        from Crypto.Cipher import AES

        cipher = AES.new(enc_key, AES.MODE_GCM, nonce=h.nonce, mac_len=TAG_BYTES)
        cipher.update(h.raw)
        try:
            return cipher.decrypt_and_verify(body, tag)
        except ValueError:
            raise SealedTampered(f"{source} fails authentication: it was altered or damaged "
                                 "(restore it from a backup, or remove it to start afresh)") from None


def _parse_header(blob: bytes, source: str) -> _Header:
    fixed = len(MAGIC) + 2
    if len(blob) < fixed or blob[:len(MAGIC)] != MAGIC:
        raise SealedFormatError(f"{source} is not a headwater sealed file (no {MAGIC.decode()} header)")
    version, plen = struct.unpack_from("!BB", blob, len(MAGIC))
    if version != FORMAT_VERSION:
        raise SealedFormatError(f"{source} is sealed in format version {version}; this headwater "
                                f"reads version {FORMAT_VERSION}")
    if not 1 <= plen <= MAX_PURPOSE_BYTES:
        raise SealedFormatError(f"{source} has a damaged header (purpose length {plen})")
    end = fixed + plen + SALT_BYTES + NONCE_BYTES + CHECK_BYTES
    if len(blob) < end + TAG_BYTES:
        raise SealedFormatError(f"{source} is truncated ({len(blob)} bytes, a sealed file has at least "
                                f"{end + TAG_BYTES})")
    p = fixed
    purpose = blob[p:p + plen]
    p += plen
    salt = blob[p:p + SALT_BYTES]
    p += SALT_BYTES
    nonce = blob[p:p + NONCE_BYTES]
    p += NONCE_BYTES
    check = blob[p:p + CHECK_BYTES]
    return _Header(purpose=purpose, salt=salt, nonce=nonce, check=check, raw=blob[:end])


# --- the cluster secret ------------------------------------------------------------------------

def cluster_secret_bytes(cfg: ClusterConfig, *, env: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """The raw cluster secret and where it came from, by the rules of
    :func:`headwater.rpc.auth.cluster_secret`: ``$secret_env`` when that is set and non-empty,
    else ``secret_file`` (default ``<data_dir>/cluster.secret``), which must be owner-only.

    (The RPC module keeps only an HMAC of the secret, keyed for its handshake; sealing derives
    its own keys from the secret itself, so the two uses never share a key.)
    Raises :class:`~headwater.config.ConfigError` naming the key when no usable secret is found.
    """
    from headwater.config import ConfigError
    from headwater.rpc.auth import read_secret_file

    env = os.environ if env is None else env
    where = str(cfg.path) if cfg.path else None
    name = cfg.secret_env
    if name is not None and env.get(name, "").strip():
        return env[name].strip().encode(), f"${name}"
    path = cfg.secret_file
    if path is None and name is None:
        path = cfg.data_dir / "cluster.secret"
    if path is None:
        raise ConfigError("cluster.secret_env", f"the environment variable {name} is not set, and no "
                          "secret_file is configured: sealed secrets cannot be opened", path=where)
    try:
        return read_secret_file(Path(path)), str(path)
    except OSError as e:
        raise ConfigError("cluster.secret_file", f"cannot read the cluster secret {path}: {e.strerror}",
                          path=where) from None
    except ValueError as e:
        raise ConfigError("cluster.secret_file", str(e), path=where) from None


# --- files -------------------------------------------------------------------------------------

def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(folder: Path, name: str, data: bytes) -> Path:
    """``data`` in a fresh 0600 file beside the target, fsynced; returns its path."""
    # The name only has to be unique among concurrent writers (O_EXCL catches the rest).
    tmp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def publish_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """``data`` into ``path`` atomically (readers see the old file or the new one, never a
    part), mode 0600; missing folders are created 0700.

    With ``exclusive=True`` the file is published only if ``path`` does not exist yet, and
    :class:`FileExistsError` is raised otherwise (another process won the race).
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = _write_temp(path.parent, path.name, data)
    try:
        if exclusive:
            os.link(tmp, path)  # fails with EEXIST if someone else published first
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_sealed(path: Path, plaintext: bytes, sealer: Sealer, purpose: bytes, *,
                 exclusive: bool = False) -> None:
    """Seal ``plaintext`` into ``path`` as :func:`publish_private` writes a file."""
    publish_private(path, sealer.seal(plaintext, purpose), exclusive=exclusive)


def read_owner_only(path: Path, max_bytes: int, what: str = "") -> bytes:
    """The bytes of ``path``, refusing, as ssh does for keys, a file its group or others may read
    or write, that another user owns, that is not a regular file, or that is larger than
    ``max_bytes``. ``what`` names the file in messages (default: its path). Raises
    FileNotFoundError if it does not exist and :class:`SealedError` for anything else wrong."""
    path = Path(path)
    name = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SealedError(f"cannot read {name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SealedError(f"{name} is not a regular file")
        if st.st_mode & 0o077:
            raise SealedError(f"permissions {stat.S_IMODE(st.st_mode):04o} for {name} are too open: it must "
                              f"be accessible by its owner only (chmod 600 {path})")
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise SealedError(f"{name} is owned by uid {st.st_uid}, not by the user running headwater "
                              f"(uid {os.geteuid()})")
        if st.st_size > max_bytes:
            raise SealedFormatError(f"{name} is {st.st_size} bytes, larger than it can be ({max_bytes})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SealedFormatError(f"{name} is larger than it can be ({max_bytes})")
    return data


def read_sealed(path: Path, sealer: Sealer, purpose: bytes) -> bytes:
    """The plaintext sealed in ``path`` (read with :func:`read_owner_only`). Raises
    FileNotFoundError if it does not exist and :class:`SealedError` for anything else wrong."""
    return sealer.open(read_owner_only(path, MAX_SEALED_BYTES), purpose, source=str(path))


def load_or_create(path: Path, sealer: Sealer, purpose: bytes,
                   create: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The secret sealed in ``path``, creating it with ``create()`` first if the file is missing.

    Returns ``(plaintext, created)``. Safe when several processes start at once: each that finds
    no file makes a candidate and tries to publish it exclusively; exactly one wins, and every
    other reads the winner's file, so all of them use one secret.
    """
    path = Path(path)
    try:
        return read_sealed(path, sealer, purpose), False
    except FileNotFoundError:
        pass
    candidate = create()
    try:
        write_sealed(path, candidate, sealer, purpose, exclusive=True)
    except FileExistsError:
        return read_sealed(path, sealer, purpose), False
    except OSError as e:
        if e.errno == errno.EEXIST:
            return read_sealed(path, sealer, purpose), False
        raise SealedError(f"cannot create {path}: {e.strerror}") from None
    return candidate, True
