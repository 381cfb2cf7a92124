"""Classic HLS ``METHOD=AES-128``: every file of a track (its init segment and each media
segment) encrypted whole with AES-128-CBC and PKCS#7 padding (RFC 8216 §5.2), as a sink
wrapper.

:class:`Aes128SegmentSink` sits between the segmenter and the real sink: each ``put`` is one
file, encrypted as it passes under a fresh random IV (so the run stays streaming: one segment
in memory at a time), and the IV is remembered by file name for the playlists, which must say
it explicitly: the init segment's because RFC 8216 §4.3.2.4 requires an IV on the key that
applies to an encrypted ``EXT-X-MAP``, and every segment's because a random IV is not the
media sequence number a player would otherwise use. Random rather than sequence-number IVs:
the video and audio tracks share one key and one numbering, so sequence numbers would repeat
an IV under the same key.

The key is fetched by the player from the licence server's key delivery (``GET
/keys/<KID hex>``, a bearer token entitled to the title); :func:`key_uri` derives that URL
from the licence URL, so a server behind a path prefix keeps it.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad

from .sink import SegmentSink

__all__ = ["Aes128SegmentSink", "key_uri", "padded_size"]


def key_uri(licence_url: str, kid: bytes) -> str:
    """The key-delivery URL for ``kid`` beside ``licence_url``: ``https://h/licence`` ->
    ``https://h/keys/<kid hex>`` (``https://h/drm/licence`` -> ``https://h/drm/keys/…``)."""
    if len(kid) != 16:
        raise ValueError("a KID is 16 bytes")
    parts = urllib.parse.urlsplit(licence_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the licence URL must be an absolute http(s) URL, not {licence_url!r}")
    return urllib.parse.urljoin(urllib.parse.urlunsplit(parts._replace(query="", fragment="")),
                                f"keys/{kid.hex()}")


def padded_size(size: int) -> int:
    """A file's size after PKCS#7 padding to the AES block (1 to 16 bytes more)."""
    return size + 16 - size % 16


class Aes128SegmentSink:
    """A :class:`~headwater.drm.package.sink.SegmentSink` that encrypts every file put through
    it with AES-128-CBC + PKCS#7 under ``key`` and a fresh IV from ``random_bytes``, then puts it
    into ``inner``. ``ivs`` maps each file name to its IV. ``commit``/``abort`` are the inner
    sink's (manifests go to the inner sink directly: they are not encrypted)."""

    def __init__(self, inner: SegmentSink, key: bytes, *,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if len(key) != 16:
            raise ValueError("an AES-128 key is 16 bytes")
        self.inner = inner
        self._key = key
        self._random = random_bytes
        self.ivs: dict[str, bytes] = {}

    def put(self, name: str, data: bytes) -> None:
        iv = self._random(16)
        if len(iv) != 16:
            raise ValueError("random_bytes(16) must return 16 bytes")
        self.ivs[name] = iv
        self.inner.put(name, AES.new(self._key, AES.MODE_CBC, iv=iv).encrypt(pad(bytes(data), 16)))

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()
