"""Parity blocks of a stripe by ISA-L's SIMD Galois-field multiply, byte for byte zfec's (sans-IO).

zfec encodes one byte at a time through 256-entry tables: ~0.55 GB/s of stripe on one core here,
the largest single cost of a large PUT in the gateway (bench/README.md, objstore). ISA-L's
``ec_encode_data`` does the same arithmetic with AVX2/AVX-512 shuffles at several GB/s. Both
work in GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d), and an erasure code's parity is
linear in the data, so ISA-L given zfec's own coefficients (read off zfec itself by encoding unit
vectors, :func:`zfec_coefficients`) writes exactly the parity zfec would: fragments stay
interchangeable with those written before, and every decode and rebuild stays zfec's.

ISA-L is loaded with ctypes from the system's ``libisal.so.2`` (Debian's ``libisal2``, in the
Makefile's system packages), and ``ec_encode_data`` runs without the GIL (ctypes releases it).
Where the library is missing, or ``HEADWATER_PARITY=zfec`` is set, :func:`encoder` returns None
and callers use zfec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from typing import Sequence, Union

import zfec

__all__ = ["IsalParity", "encoder", "zfec_coefficients", "isal_available"]

Buffer = Union[bytes, bytearray, memoryview]

_LIBRARY_NAMES = ("libisal.so.2", "libisal.so")


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer``: how any buffer (read-only ``bytes`` views too) lends its address."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE = 0
_PYBUF_WRITABLE = 1


def _load() -> ctypes.CDLL | None:
    if os.environ.get("HEADWATER_PARITY", "").lower() == "zfec":
        return None
    names = list(_LIBRARY_NAMES)
    found = ctypes.util.find_library("isal")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.ec_init_tables.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
        lib.ec_init_tables.restype = None
        lib.ec_encode_data.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                       ctypes.c_void_p, ctypes.c_void_p]
        lib.ec_encode_data.restype = None
        return lib
    return None


_lib = _load()


def isal_available() -> bool:
    """Whether parity is computed by ISA-L in this process."""
    return _lib is not None


def zfec_coefficients(k: int, m: int) -> bytes:
    """zfec's parity rows for k data blocks, m rows of k bytes: row p, column j is what data
    block j is multiplied by in parity block k+p (zfec encoding one-byte unit vectors)."""
    enc = zfec.Encoder(k, k + m)
    rows = bytearray(m * k)
    for j in range(k):
        unit = [b"\x01" if i == j else b"\x00" for i in range(k)]
        for p, block in enumerate(enc.encode(unit, tuple(range(k, k + m)))):
            rows[p * k + j] = block[0]
    return bytes(rows)


class IsalParity:
    """The m parity blocks of k equal data blocks, as zfec's ``Encoder(k, k+m)`` makes them."""

    def __init__(self, k: int, m: int):
        if _lib is None:
            raise RuntimeError("ISA-L (libisal.so.2) is not available")
        if not (1 <= k and 1 <= m and k + m <= 256):
            raise ValueError(f"no Reed-Solomon code with k={k}, m={m}")
        self.k = k
        self.m = m
        self._tables = ctypes.create_string_buffer(k * m * 32)
        _lib.ec_init_tables(k, m, zfec_coefficients(k, m), self._tables)

    def encode(self, blocks: Sequence[Buffer]) -> list[bytearray]:
        """Parity blocks k..k+m-1 of ``blocks`` (k buffers of one size), fresh each call."""
        k, m = self.k, self.m
        if len(blocks) != k:
            raise ValueError(f"{k} data blocks expected, got {len(blocks)}")
        size = len(blocks[0])
        out = [bytearray(size) for _ in range(m)]
        if size == 0:
            return out
        views = [_PyBuffer() for _ in range(k + m)]
        held: list[_PyBuffer] = []
        try:
            for view, b, flags in zip(views, [*blocks, *out], [_PYBUF_SIMPLE] * k + [_PYBUF_WRITABLE] * m):
                if _get_buffer(b, ctypes.byref(view), flags) != 0:
                    raise TypeError("a block does not expose a contiguous buffer")  # pragma: no cover
                held.append(view)
                if view.len != size:
                    raise ValueError(f"blocks must all be {size} bytes; one is {view.len}")
            sources = (ctypes.c_void_p * k)(*(v.buf for v in views[:k]))
            targets = (ctypes.c_void_p * m)(*(v.buf for v in views[k:]))
            _lib.ec_encode_data(size, k, m, self._tables, sources, targets)  # type: ignore[union-attr]
        finally:
            for view in held:
                _release_buffer(ctypes.byref(view))
        return out


@lru_cache(maxsize=64)
def encoder(k: int, m: int) -> IsalParity | None:
    """The ISA-L parity encoder for k+m, or None where ISA-L is not available (use zfec)."""
    if _lib is None:
        return None
    return IsalParity(k, m)
