"""Compression of text responses (manifests, JSON, text/*) with gzip and Brotli, as CloudFront's
"compress objects automatically" does.

Under a cache behaviour with ``compress = true``, the encoding a client gets is chosen from its
``Accept-Encoding`` (``cache.accept_encoding_class``: q-values honoured, ``br`` preferred on a
tie, ``*`` and ``q=0`` respected) and is part of the cache key, so each encoding of an object is
stored once, as its own entry; the upstream request carries the chosen class (``br``, ``gzip``
or ``identity``), so every tier keys the same way. A request with ``Range`` is keyed and served
as identity: byte ranges of a compressed body would depend on the compressor.

Who compresses: the first tier that receives an identity body for a key that wants ``br`` or
``gzip`` (the shield, normally: it then stores the compressed variant, and the tiers below store
what it sends, so an object is compressed once per encoding for the whole CDN). Only when:

- the status is 200 and the response has no ``Content-Encoding`` of its own (never recompressed)
  and no ``Cache-Control: no-transform``;
- its media type is in ``content_types`` (``text/*`` matches every text type);
- its ``Content-Length`` is between ``min_bytes`` and ``max_bytes`` (CloudFront's 1,000 bytes to
  10 MB; a body of unknown length is compressed, and one that grows past ``max_bytes`` stops
  being stored: the store's own entry limit).

The compressed variant's ETag is made weak (``"x"`` -> ``W/"x"``): it names another byte
sequence, so a strong validator would be a lie to ``If-Range``; weak comparison still lets
``If-None-Match`` revalidate it against the origin's strong tag, and :func:`keep_weak_etag`
keeps it weak when a 304 from the origin carries the strong one. Every response under the
behaviour carries ``Vary: Accept-Encoding`` (added when served, not stored: the key already
tells the variants apart, and a stored Vary would split them again by the raw header).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator

import brotli

from headwater.config import MiB

from .cache.cachekey import accept_encoding_class

__all__ = ["CompressionConfig", "Encoder", "Compressor", "wanted_encoding", "compressible", "compressed_headers",
           "keep_weak_etag", "with_vary", "without_vary_on_encoding", "read_compression_config", "DEFAULT_CONTENT_TYPES"]

DEFAULT_CONTENT_TYPES = ("application/dash+xml", "application/vnd.apple.mpegurl", "application/x-mpegurl",
                         "application/json", "application/xml", "application/javascript", "image/svg+xml",
                         "text/*")
GZIP_LEVEL = 6
# Brotli's quality 5: most of quality 11's ratio on text at a few times gzip-6's speed; the
# compression runs once per object and encoding, on the miss path.
BROTLI_QUALITY = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionConfig:
    """``[cdn.compression]``: which responses a ``compress = true`` behaviour compresses."""

    content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    min_bytes: int = 1000
    max_bytes: int = 10 * MiB


def wanted_encoding(headers: Any) -> str:
    """The encoding (``br``, ``gzip`` or ``""`` for identity) a request is keyed and served with."""
    if headers.get("range") is not None:
        return ""
    return accept_encoding_class(headers.get("accept-encoding"))


def _field(headers: Any, name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def compressible(status: int, headers: Any, config: CompressionConfig) -> bool:
    """Whether a response (status, lower-case header pairs) may be compressed by the edge."""
    if status != 200:
        return False
    encoding = _field(headers, "content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return False
    cc = ", ".join(v for k, v in headers if k == "cache-control").lower()
    if "no-transform" in cc:
        return False
    ctype = (_field(headers, "content-type") or "").split(";", 1)[0].strip().lower()
    if not ctype or not any(ctype == t or (t.endswith("/*") and ctype.startswith(t[:-1]))
                            for t in config.content_types):
        return False
    length = _field(headers, "content-length")
    if length is not None and length.strip().isdigit():
        return config.min_bytes <= int(length) <= config.max_bytes
    return True


def compressed_headers(headers: Any, encoding: str) -> list[tuple[str, str]]:
    """The header fields of the compressed variant: no Content-Length (the edge counts it),
    ``Content-Encoding``, a weak ETag."""
    out = []
    for k, v in headers:
        if k in ("content-length", "content-encoding", "content-md5", "accept-ranges"):
            continue
        if k == "etag" and not v.strip().startswith("W/"):
            v = "W/" + v.strip()
        out.append((k, v))
    out.append(("content-encoding", encoding))
    return out


def keep_weak_etag(stale_headers: Any, headers_304: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A 304 revalidating a compressed variant (weak ETag ``W/"x"``) with the origin's strong
    ``"x"``: the stored variant keeps its weak one."""
    stale = _field(stale_headers, "etag")
    if stale is None or not stale.startswith("W/"):
        return headers_304
    return [(k, stale) if k == "etag" and v.strip() == stale[2:] else (k, v) for k, v in headers_304]


def without_vary_on_encoding(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """An upstream response's fields with ``Accept-Encoding`` taken out of its Vary, before
    it is stored under a compressing behaviour: the key already holds the encoding class, and a
    stored Vary on the raw field split one variant into one per way of writing the header."""
    if not any(k == "vary" for k, _ in headers):
        return headers
    out = []
    for k, v in headers:
        if k == "vary":
            rest = [t.strip() for t in v.split(",") if t.strip() and t.strip().lower() != "accept-encoding"]
            if not rest:
                continue
            v = ", ".join(rest)
        out.append((k, v))
    return out


def with_vary(headers: list[tuple[str, str]]) -> None:
    """Add ``Vary: Accept-Encoding`` to a response's fields unless a Vary already names it."""
    for k, v in headers:
        if k == "vary" and any(t.strip().lower() in ("accept-encoding", "*") for t in v.split(",")):
            return
    headers.append(("vary", "Accept-Encoding"))


class Encoder:
    """A streaming compressor for one body: ``compress(chunk)`` then ``finish()`` (sans-IO)."""

    def __init__(self, encoding: str) -> None:
        if encoding == "gzip":
            self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            self._br = None
        elif encoding == "br":
            self._z = None
            self._br = brotli.Compressor(quality=BROTLI_QUALITY)
        else:
            raise ValueError(f"no encoder for {encoding!r}")
        self.encoding = encoding

    def compress(self, chunk: bytes) -> bytes:
        return self._z.compress(chunk) if self._z is not None else self._br.process(chunk)

    def finish(self) -> bytes:
        return self._z.flush() if self._z is not None else self._br.finish()


class CompressedResponse:
    """An upstream response seen through an :class:`Encoder`: what the edge stores and serves
    for a key that wants ``br`` or ``gzip`` when the upstream sent identity."""

    def __init__(self, inner: Any, encoding: str) -> None:
        self._inner = inner
        self._encoder = Encoder(encoding)
        self.headers = compressed_headers(inner.headers, encoding)
        self.content_length = None

    def __getattr__(self, name: str) -> Any:  # status, source, origin_seq, aclose ...
        return getattr(self._inner, name)

    def header(self, name: str) -> str | None:
        return _field(self.headers, name)

    async def chunks(self) -> AsyncIterator[bytes]:
        encoder = self._encoder
        async for chunk in self._inner.chunks():
            out = encoder.compress(chunk)
            if out:
                yield out
        tail = encoder.finish()
        if tail:
            yield tail


class Compressor:
    """The edge's side: wraps an upstream response whose key wants an encoding it lacks."""

    def __init__(self, config: CompressionConfig) -> None:
        self.config = config

    def wrap(self, response: Any, request_headers: Any) -> Any:
        """``response`` as the key of a request with ``request_headers`` wants it stored."""
        encoding = wanted_encoding(request_headers)
        if not encoding or not compressible(response.status, response.headers, self.config):
            return response
        return CompressedResponse(response, encoding)


def read_compression_config(r: Any, value: Any, p: str) -> CompressionConfig:
    """``[cdn.compression]``: ``content_types`` (``type/subtype`` or ``type/*``), ``min_size``,
    ``max_size``."""
    if value is None:
        return CompressionConfig()
    if not isinstance(value, dict):
        raise r.error(p, "expected a table")
    r.check_keys(value, p, {"content_types", "min_size", "max_size"})
    types = r.get(value, "content_types", p, list, list(DEFAULT_CONTENT_TYPES))
    if not all(isinstance(t, str) and t.count("/") == 1 and t.strip() == t and t.split("/")[0] != "*"
               for t in types):
        raise r.error(f"{p}.content_types", 'expected media types such as "application/json" or "text/*"')
    low = r.size(value, "min_size", p, 1000)
    high = r.size(value, "max_size", p, 10 * MiB)
    if low > high:
        raise r.error(f"{p}.min_size", "is above max_size")
    return CompressionConfig(content_types=tuple(t.lower() for t in types), min_bytes=low, max_bytes=high)

