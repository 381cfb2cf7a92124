"""Incremental object checksums as S3 reports them.

``x-amz-checksum-<algo>`` values are base64 of the big-endian digest; the ETag of a single-part
object is the hex MD5; a multipart ETag is ``md5(concat(binary part md5s))-N`` and a multipart
composite checksum is ``<algo>(concat(binary part checksums))`` in base64 followed by ``-N``.

CRC32C uses the ``crc32c`` package (hardware-accelerated) when installed, else a table-driven
fallback. CRC64NVME is pure Python (only used when a client asks for it explicitly).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from typing import Iterable, Protocol

from .errors import BadDigest, InvalidArgument, InvalidDigest, InvalidRequest

__all__ = [
    "ALGORITHMS", "Checksum", "new_checksum", "Crc32", "Crc32c", "Crc64Nvme", "HashChecksum",
    "b64", "checksum_b64", "md5_hex", "content_md5_b64", "parse_content_md5",
    "multipart_etag", "composite_checksum", "quote_etag", "unquote_etag",
    "ChecksumSet", "HAVE_FAST_CRC32C",
]

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


class Checksum(Protocol):
    name: str

    def update(self, data: bytes) -> None: ...
    def digest(self) -> bytes: ...
    def b64(self) -> str: ...


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class Crc32:
    __slots__ = ("_v",)
    name = "crc32"

    def __init__(self) -> None:
        self._v = 0

    def update(self, data: bytes) -> None:
        self._v = zlib.crc32(data, self._v)

    def digest(self) -> bytes:
        return (self._v & 0xFFFFFFFF).to_bytes(4, "big")

    def b64(self) -> str:
        return b64(self.digest())


def _reflected_table(poly: int, width: int) -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c & ((1 << width) - 1))
    return table


_CRC32C_TABLE = _reflected_table(0x82F63B78, 32)


def _crc32c_py(data: bytes, value: int = 0) -> int:
    crc = value ^ 0xFFFFFFFF
    t = _CRC32C_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:
    from crc32c import crc32c as _crc32c_fast  # type: ignore[import-not-found]
    HAVE_FAST_CRC32C = True
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_fast = None
    HAVE_FAST_CRC32C = False


class Crc32c:
    __slots__ = ("_v",)
    name = "crc32c"

    def __init__(self) -> None:
        self._v = 0

    def update(self, data: bytes) -> None:
        if _crc32c_fast is not None:
            self._v = _crc32c_fast(data, self._v)
        else:
            self._v = _crc32c_py(data, self._v)

    def digest(self) -> bytes:
        return (self._v & 0xFFFFFFFF).to_bytes(4, "big")

    def b64(self) -> str:
        return b64(self.digest())


_CRC64NVME_TABLE = _reflected_table(0x9A6C9329AC4BC9B5, 64)


class Crc64Nvme:
    __slots__ = ("_v",)
    name = "crc64nvme"

    def __init__(self) -> None:
        self._v = 0

    def update(self, data: bytes) -> None:
        crc = self._v ^ 0xFFFFFFFFFFFFFFFF
        t = _CRC64NVME_TABLE
        for b in data:
            crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
        self._v = crc ^ 0xFFFFFFFFFFFFFFFF

    def digest(self) -> bytes:
        return self._v.to_bytes(8, "big")

    def b64(self) -> str:
        return b64(self.digest())


class HashChecksum:
    """sha1 / sha256 / md5 through hashlib."""

    __slots__ = ("name", "_h")

    def __init__(self, name: str) -> None:
        self.name = name
        self._h = hashlib.new(name)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def b64(self) -> str:
        return b64(self._h.digest())


def new_checksum(algorithm: str) -> Checksum:
    """A fresh incremental checksum; ``algorithm`` is case-insensitive (``CRC32``, ``sha256``, ...)."""
    a = algorithm.lower()
    if a == "crc32":
        return Crc32()
    if a == "crc32c":
        return Crc32c()
    if a == "crc64nvme":
        return Crc64Nvme()
    if a in ("sha1", "sha256", "md5"):
        return HashChecksum(a)
    raise InvalidRequest(f"Checksum algorithm {algorithm!r} is not supported",
                         ArgumentName="x-amz-checksum-algorithm")


def checksum_b64(algorithm: str, data: bytes) -> str:
    c = new_checksum(algorithm)
    c.update(data)
    return c.b64()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def content_md5_b64(data: bytes) -> str:
    return b64(hashlib.md5(data).digest())


def parse_content_md5(value: str) -> bytes:
    """Decode a ``Content-MD5`` header to its 16 raw bytes, else InvalidDigest."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDigest(**{"Content-MD5": value}) from None
    if len(raw) != 16:
        raise InvalidDigest(**{"Content-MD5": value})
    return raw


def quote_etag(hex_or_etag: str) -> str:
    return hex_or_etag if hex_or_etag.startswith('"') else f'"{hex_or_etag}"'


def unquote_etag(etag: str) -> str:
    e = etag.strip()
    if e.startswith("W/"):
        e = e[2:]
    if len(e) >= 2 and e[0] == '"' and e[-1] == '"':
        e = e[1:-1]
    return e


def multipart_etag(part_md5s: Iterable[bytes | str]) -> str:
    """``md5(concat(binary part md5s))-N`` (unquoted). Parts may be raw 16 bytes or hex."""
    h = hashlib.md5()
    n = 0
    for p in part_md5s:
        h.update(bytes.fromhex(unquote_etag(p)) if isinstance(p, str) else p)
        n += 1
    return f"{h.hexdigest()}-{n}"


def composite_checksum(algorithm: str, part_checksums: Iterable[bytes | str]) -> str:
    """``b64(<algo>(concat(binary part checksums)))-N``; parts as raw bytes or base64 strings."""
    c = new_checksum(algorithm)
    n = 0
    for p in part_checksums:
        c.update(base64.b64decode(p) if isinstance(p, str) else p)
        n += 1
    return f"{c.b64()}-{n}"


class ChecksumSet:
    """The checksums one upload computes at once: always MD5 (for the ETag) plus any requested.

    ``update()`` every body piece; ``verify_md5(content_md5)`` and ``verify(expected)`` raise
    BadDigest (S3's code for both Content-MD5 and x-amz-checksum-* mismatches).
    """

    __slots__ = ("md5", "extra")

    def __init__(self, algorithms: Iterable[str] = ()) -> None:
        self.md5 = HashChecksum("md5")
        self.extra: dict[str, Checksum] = {}
        for a in algorithms:
            a = a.lower()
            if a != "md5" and a not in self.extra:
                self.extra[a] = new_checksum(a)

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        for c in self.extra.values():
            c.update(data)

    @property
    def etag(self) -> str:
        """Unquoted hex MD5."""
        return self.md5.hexdigest()

    def values(self) -> dict[str, str]:
        """``{"crc32": "<base64>", ...}`` for every extra algorithm."""
        return {a: c.b64() for a, c in self.extra.items()}

    def verify_md5(self, content_md5: str | None) -> None:
        if content_md5 is None:
            return
        if parse_content_md5(content_md5) != self.md5.digest():
            raise BadDigest(ExpectedDigest=content_md5, CalculatedDigest=self.md5.b64())

    def verify(self, expected: dict[str, str]) -> None:
        """Check ``{"crc32": "<base64>"}`` values (from headers or an aws-chunked trailer)."""
        for algo, value in expected.items():
            c = self.extra.get(algo.lower())
            if c is None:
                raise InvalidRequest(f"The {algo.upper()} checksum was not computed for this request")
            try:
                want = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"Value for x-amz-checksum-{algo.lower()} header is invalid.") from None
            if want != c.digest():
                raise BadDigest(f"The {algo.upper()} you specified did not match the calculated checksum.")
