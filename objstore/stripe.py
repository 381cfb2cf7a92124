"""Erasure-coding stripe maths over zfec (sans-IO).

An object is cut into stripes of ``scheme.stripe_bytes`` user bytes (the last one may be short).
Each stripe is padded with zeros to a multiple of ``k`` and split into ``k`` data blocks of
``ceil(len / k)`` bytes; zfec adds ``m`` parity blocks of the same size. Block ``i`` of every
stripe goes to fragment ``i`` (a storage node). zfec is systematic: blocks ``0..k-1`` are the data
itself, so a read that has them only joins them; any ``k`` of the ``k + m`` blocks rebuild the
stripe.

Data blocks returned by :func:`encode` are zero-copy views of the input when it is immutable
(``bytes``, or a read-only memoryview); parity blocks are fresh buffers (``bytearray`` from
ISA-L, ``bytes`` from zfec) that nobody else holds. Either is a bytes-like buffer that sockets,
files and hashes take as is.

Parity is computed by ISA-L with zfec's own coefficients where the library is installed
(:mod:`.parity`: the same bytes, ~15x faster), by zfec otherwise; decoding is always zfec's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Mapping, Union

import zfec

from . import parity as _parity
from .config import ErasureScheme
from .errors import StoreError

__all__ = [
    "Buffer",
    "StripeError",
    "NotEnoughBlocks",
    "block_bytes",
    "encode",
    "decode",
    "rebuild",
    "stripe_count",
    "stripe_length",
    "last_stripe_bytes",
    "stripe_offset",
    "stripe_span",
]

Buffer = Union[bytes, bytearray, memoryview]


class StripeError(StoreError, ValueError):
    """Inconsistent input to the stripe maths (wrong sizes, bad indexes)."""


class NotEnoughBlocks(StripeError):
    """Fewer than ``k`` distinct blocks of a stripe are available; it cannot be rebuilt."""

    def __init__(self, scheme: ErasureScheme, have: Iterable[int]):
        self.have = sorted(have)
        self.needed = scheme.k
        super().__init__(f"{scheme.describe()}: need {scheme.k} blocks of a stripe, "
                         f"have {len(self.have)} ({self.have})")


@lru_cache(maxsize=64)
def _encoder(k: int, m: int) -> zfec.Encoder:
    return zfec.Encoder(k, k + m)


def _parity_blocks(k: int, m: int, primary: tuple[Buffer, ...] | list[Buffer],
                   wanted: tuple[int, ...]) -> list[Buffer]:
    """Parity blocks ``wanted`` (indexes k..k+m-1) of the k data blocks ``primary``."""
    fast = _parity.encoder(k, m)
    if fast is None:
        return list(_encoder(k, m).encode(tuple(primary), wanted))
    every = fast.encode(primary)
    return [every[i - k] for i in wanted]


@lru_cache(maxsize=64)
def _decoder(k: int, m: int) -> zfec.Decoder:
    return zfec.Decoder(k, k + m)


def block_bytes(scheme: ErasureScheme, length: int) -> int:
    """Size of each of the k + m blocks of a stripe holding ``length`` user bytes."""
    if length < 0 or length > scheme.stripe_bytes:
        raise StripeError(f"stripe length {length} is outside 0..{scheme.stripe_bytes}")
    return -(-length // scheme.k)


# --- encode / decode ---------------------------------------------------------------------------

def _data_blocks(scheme: ErasureScheme, data: Buffer) -> tuple[Buffer, ...]:
    """Split one stripe into k equal data blocks, zero-padding only the tail."""
    k = scheme.k
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    length = len(mv)
    if length > scheme.stripe_bytes:
        raise StripeError(f"{length} bytes do not fit a {scheme.stripe_bytes}-byte stripe")
    bs = -(-length // k)
    if not mv.readonly:  # never hand out views the caller may overwrite
        mv = memoryview(mv.tobytes())
    out: list[Buffer] = []
    for i in range(k):
        start = i * bs
        end = start + bs
        if end <= length:
            out.append(mv[start:end])
        elif start < length:
            out.append(mv[start:length].tobytes() + bytes(end - length))
        else:
            out.append(bytes(bs))
    return tuple(out)


def encode(scheme: ErasureScheme, data: Buffer) -> list[Buffer]:
    """The k + m equal-size blocks of one stripe (``len(data) <= scheme.stripe_bytes``)."""
    primary = _data_blocks(scheme, data)
    if scheme.m == 0:
        return list(primary)
    if len(primary[0]) == 0:
        return [b""] * scheme.width
    parity = _parity_blocks(scheme.k, scheme.m, primary, tuple(range(scheme.k, scheme.width)))
    return [*primary, *parity]


def _check_blocks(scheme: ErasureScheme, blocks: Mapping[int, Buffer],
                  size: int | None) -> tuple[list[int], int]:
    """Indexes to use (data blocks first, k of them) and the common block size."""
    bad = [i for i in blocks if not (isinstance(i, int) and 0 <= i < scheme.width)]
    if bad:
        raise StripeError(f"block indexes {bad} are outside 0..{scheme.width - 1}")
    if len(blocks) < scheme.k:
        raise NotEnoughBlocks(scheme, blocks)
    use = sorted(blocks)[:scheme.k]
    if size is None:
        size = len(blocks[use[0]])
    wrong = {i: len(blocks[i]) for i in use if len(blocks[i]) != size}
    if wrong:
        raise StripeError(f"blocks must all be {size} bytes; got sizes {wrong}")
    return use, size


def _primary(scheme: ErasureScheme, blocks: Mapping[int, Buffer], size: int | None) -> list[Buffer]:
    """The k data blocks of a stripe, decoding only when some are missing."""
    use, size = _check_blocks(scheme, blocks, size)
    k = scheme.k
    if size == 0:
        return [b""] * k
    if use[-1] < k:  # the k lowest indexes are 0..k-1: every data block is here, no decoding
        return [blocks[i] for i in range(k)]
    return _decoder(k, scheme.m).decode(tuple(blocks[i] for i in use), tuple(use))


def decode(scheme: ErasureScheme, blocks: Mapping[int, Buffer], length: int) -> bytes:
    """The ``length`` user bytes of a stripe from any k of its blocks (index -> block)."""
    size = block_bytes(scheme, length)
    primary = _primary(scheme, blocks, size)
    parts: list[Buffer] = []
    left = length
    for b in primary:
        if left <= 0:
            break
        if len(b) <= left:
            parts.append(b)
            left -= len(b)
        else:
            parts.append(memoryview(b)[:left])
            left = 0
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    return b"".join(parts)


def rebuild(scheme: ErasureScheme, blocks: Mapping[int, Buffer], want: Iterable[int]) -> dict[int, bytes]:
    """Regenerate the blocks ``want`` of a stripe from any k of its blocks (for the reconstructor)."""
    want = sorted(set(want))
    bad = [i for i in want if not (isinstance(i, int) and 0 <= i < scheme.width)]
    if bad:
        raise StripeError(f"wanted block indexes {bad} are outside 0..{scheme.width - 1}")
    out: dict[int, bytes] = {}
    missing = []
    for i in want:
        if i in blocks:
            out[i] = bytes(blocks[i])
        else:
            missing.append(i)
    if not missing:
        return out
    primary = _primary(scheme, blocks, None)
    if len(primary[0]) == 0:
        return {**out, **{i: b"" for i in missing}}
    data_missing = [i for i in missing if i < scheme.k]
    for i in data_missing:
        out[i] = bytes(primary[i])
    parity_missing = tuple(i for i in missing if i >= scheme.k)
    if parity_missing:
        made = _parity_blocks(scheme.k, scheme.m, primary, parity_missing)
        for i, b in zip(parity_missing, made):
            out[i] = b if isinstance(b, bytes) else bytes(b)
    return out


# --- object layout -----------------------------------------------------------------------------

def stripe_count(scheme: ErasureScheme, size: int) -> int:
    """Number of stripes of an object of ``size`` bytes (0 for an empty object)."""
    if size < 0:
        raise StripeError(f"object size {size} is negative")
    return -(-size // scheme.stripe_bytes)


def last_stripe_bytes(scheme: ErasureScheme, size: int) -> int:
    """User bytes in the last stripe of an object of ``size`` bytes (0 for an empty object)."""
    if size <= 0:
        return 0
    return size - (stripe_count(scheme, size) - 1) * scheme.stripe_bytes


def stripe_length(scheme: ErasureScheme, size: int, index: int) -> int:
    """User bytes in stripe ``index`` of an object of ``size`` bytes."""
    n = stripe_count(scheme, size)
    if not 0 <= index < n:
        raise StripeError(f"stripe {index} is outside 0..{n - 1} for a {size}-byte object")
    return scheme.stripe_bytes if index < n - 1 else last_stripe_bytes(scheme, size)


def stripe_offset(scheme: ErasureScheme, index: int) -> int:
    """Offset in the object of the first byte of stripe ``index``."""
    return index * scheme.stripe_bytes


def stripe_span(scheme: ErasureScheme, start: int, end: int) -> tuple[int, int]:
    """(first, last) stripe indexes, inclusive, holding object bytes ``[start, end)``.

    ``end`` is exclusive, as in Python slices; an S3 range ``bytes=a-b`` is ``(a, b + 1)``.
    """
    if start < 0 or end <= start:
        raise StripeError(f"byte range [{start}, {end}) is empty or negative")
    return start // scheme.stripe_bytes, (end - 1) // scheme.stripe_bytes
