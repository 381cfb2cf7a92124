"""glibc malloc kept from handing large freed blocks back to the kernel between requests.

A daemon moving bulk bytes allocates and frees the same few sizes over and over: the loop's
256 KiB reads, 1 MiB RPC payloads, stripes and parity blocks. By default glibc serves such
blocks from the heap but gives the heap's free top back to the kernel once it passes its trim
threshold (twice the largest block freed so far, a few MiB), and the next block of the same size
faults every page in again. Measured here during a 64 MiB PUT (bench/README.md, objstore): a
storage node took one minor page fault per 4 KiB page it received (~390,000 per GB) and spent
1-2 s/GB of system time on them. With a fixed mmap threshold (blocks below it come from the heap)
and a trim threshold far above what a request holds, freed blocks are reused as they are: the
same PUT took ~10,000 faults per GB on the storage nodes.

What this costs: a process keeps up to ``TRIM_THRESHOLD_BYTES`` of freed heap beyond what it
holds, instead of shrinking back after a burst. The storage node calls it (it holds a few MiB of
blocks at a time, so in effect it never trims). The S3 gateway does not: its peak RSS is a goal
of its own (bench objstore, < 300 MiB for two workers), the retained heap showed in it (+48 MiB
with a 128 MiB threshold), and its faults cost far less (~60,000 per GB of PUT, ~0.1-0.3 s/GB).
Blocks of ``MMAP_THRESHOLD_BYTES`` and more are still mapped and unmapped one by one.

Only glibc has ``mallopt``; elsewhere (musl, macOS) :func:`keep_freed_memory` does nothing.

:func:`unfilled_bytearray` is the other half of not paying for memory twice: a buffer that a
socket or a file read fills whole before anyone reads it need not be zeroed first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

__all__ = ["keep_freed_memory", "unfilled_bytearray", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES"]

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks smaller than this come from the heap (glibc's default is 128 KiB, raised on its own to
#: the largest block freed; setting one threshold turns that adjustment off, so both are set).
MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024
#: Free memory at the top of a heap that is kept rather than returned to the kernel.
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set the process's malloc thresholds as described above; whether glibc took them."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def _zeroed_bytearray(n: int) -> bytearray:
    return bytearray(n)


def _bytearray_allocator() -> Callable[[int], bytearray]:
    """A function giving a bytearray of n bytes that are not zeroed first, where CPython's
    ``PyByteArray_FromStringAndSize(NULL, n)`` is reachable (``bytearray(n)`` elsewhere)."""
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (AttributeError, ValueError):  # not CPython
        return _zeroed_bytearray
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]

    def uninitialised(n: int) -> bytearray:
        return make(None, n)

    return uninitialised


#: ``unfilled_bytearray(n)``: n bytes of whatever the heap held, for a caller that fills every
#: byte before any is read (or trims what it did not fill): an RPC payload received in place,
#: a page-cached read. Zeroing first is wasted there: a 1 MiB memset per fragment, 0.05-0.1 s
#: of CPU per GB.
unfilled_bytearray: Callable[[int], bytearray] = _bytearray_allocator()
