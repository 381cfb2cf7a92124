"""What the edge keeps beside each stored body: its metadata record, and the key it is stored under.

The metadata (opaque bytes to :mod:`.store`) is msgpack of ``[1, StoredResponse record, readable
cache key, slice size]``:

* the readable key is what a purge selects by (``cache.key_prefix``) and what a hit is checked
  against: the store may hold the entry under a digest of it (below), and a digest matched by
  another key must read as a miss, never as that other key's response;
* ``slice_size`` > 0 marks an object kept as slices (``cache.slices``): this entry's own body is
  empty and its record describes the whole 200 representation; slice ``i`` is its own entry under
  ``slice_key(key, i)``.

Store keys: LMDB refuses keys longer than 511 bytes, and a cache key holds whatever the behaviour
keys on (query strings, headers, cookies), so a long key is stored under ``#`` + its BLAKE2b
digest. (A readable key starts with the distribution's name, letters, digits, ``-`` and ``_``, so
it never starts with ``#``.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from .cache.model import StoredResponse

__all__ = ["MAX_STORE_KEY", "Entry", "store_key", "encode_meta", "decode_entry", "decode_meta", "readable_key"]

MAX_STORE_KEY = 511
_VERSION = 1
# Decoded metadata by its bytes: a hit reads the same entry's metadata over and over (the RAM
# tier hands back the very same bytes object, whose hash Python keeps), and msgpack plus the
# StoredResponse rebuild cost more than the rest of a RAM hit's lookup. Entries are frozen, so
# sharing one between requests is safe; the memo is bounded and simply cleared when full.
_MEMO_MAX = 4096
_decoded: dict[bytes, Entry | None] = {}


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored entry's metadata: the response, its readable key, and its slicing."""

    stored: StoredResponse
    key: bytes
    slice_size: int = 0


def store_key(key: bytes) -> bytes:
    """The key ``key`` is stored under: itself, or ``#`` + its digest when too long for LMDB."""
    if len(key) <= MAX_STORE_KEY:
        return key
    return b"#" + hashlib.blake2b(key, digest_size=24).hexdigest().encode()


def encode_meta(stored: StoredResponse, key: bytes, slice_size: int = 0) -> bytes:
    """The store's metadata bytes for ``stored`` kept under ``key``."""
    return msgpack.packb([_VERSION, stored.to_record(), key, slice_size], use_bin_type=True)


def decode_entry(meta: bytes) -> Entry | None:
    """The Entry in ``meta``, or None when it cannot be read (the caller treats it as a miss)."""
    try:
        return _decoded[meta]
    except (KeyError, TypeError):  # (TypeError: a memoryview or bytearray, not hashable)
        pass
    entry = _decode(meta)
    if type(meta) is bytes:
        if len(_decoded) >= _MEMO_MAX:
            _decoded.clear()
        _decoded[meta] = entry
    return entry


def _decode(meta: bytes) -> Entry | None:
    try:
        version, record, key, slice_size = msgpack.unpackb(meta, raw=False)
        if version != _VERSION or not isinstance(key, bytes) or not isinstance(slice_size, int):
            return None
        return Entry(StoredResponse.from_record(record), key, slice_size)
    except Exception:
        return None


def decode_meta(meta: bytes) -> StoredResponse | None:
    """The StoredResponse in ``meta`` (None when unreadable)."""
    entry = decode_entry(meta)
    return None if entry is None else entry.stored


def readable_key(stored_under: bytes, meta: bytes) -> bytes:
    """The readable cache key of an entry found under ``stored_under`` (for purges)."""
    entry = decode_entry(meta)
    return stored_under if entry is None else entry.key
