"""What a storage daemon asks of the kernel's page cache: write early, read without waiting.

**Writeback started early.** A storage node appends a fragment's blocks as they arrive and
fsyncs the file once, at the commit. Left alone, the kernel keeps those pages dirty until the
fsync (its own flusher wakes only after ``dirty_expire_centisecs``, 30 s, or past the dirty
ratios), so every byte of a large PUT reaches the disk in the commit, after the last block,
while the client waits. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` queues a range's dirty
pages for writing and returns without waiting for them: called after each append
(:func:`start_writeback`), the disk writes the fragment while the rest of it is still arriving,
and the commit's fsync waits only for the tail. It promises nothing on its own: the fsync is
still what makes every byte and the file's metadata durable.

**Reads that never wait for the disk.** A read RPC on a worker thread costs a hand-off each way
(a futex wake-up, a context switch) whatever it reads; for a page-cached range that is most of
its cost. :func:`open_cached` opens a path only if it resolves from the dentry cache
(``openat2`` with ``RESOLVE_CACHED``, Linux 5.12) and :func:`pread_cached` reads only what the
page cache holds (``preadv2`` with ``RWF_NOWAIT``, Linux 4.14): on the event loop they take
microseconds or refuse, and the caller falls back to the thread.

**Pages dropped once durable, and behind reads.** A page the kernel frees is reused first by
the next allocation; one left free for a few seconds on a VM with free page reporting
(virtio-balloon, as on this machine) is handed back to the host, and the next write into it
stalls while the host backs it again: 2.6-4.1 s of system time per GB written into such pages
here, against 0.24-0.28 for pages freed a moment before (a file written, unlinked, written
again). A storage node that keeps what it writes grows the page cache by 1.5x the user bytes
(EC 4+2), every page of it fresh, and at times most of its PUT CPU went there (copy into the
page cache 39-56 % of a node's samples, 5-12 s/GB). :func:`drop_cached`
(``POSIX_FADV_DONTNEED``) frees clean pages: a node drops a fragment's pages as its upload
goes on (what lies some MiB behind the last append, written back by then) and the rest once its
commit's fsync made them clean, and the pages a read of a large fragment brought in from the
disk once they are copied out (``[objstore] storage_page_cache``), so the page cache stops
growing and the next writes and reads take pages just freed. It is advice: a page the kernel
still holds (another CPU's LRU batch, a journal commit) stays for the moment. Swift's object server does the same (``drop_buffer_cache`` after
each PUT, and after reading any object above ``keep_cache_size``, 5 MiB). What it costs: a GET
right after its PUT reads from the disk (here from the host's cache, 1.3-1.6 GB/s) through the
node's worker thread instead of the page cache on the loop.

Linux only; elsewhere (or on older kernels) the functions do nothing or refuse, and callers
go the ordinary way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from pathlib import Path

from headwater.malloc import unfilled_bytearray

__all__ = ["start_writeback", "drop_cached", "open_cached", "pread_cached", "all_cached", "NotCached"]

# <fcntl.h>: start writing dirty pages in the range; do not wait for any.
_SYNC_FILE_RANGE_WRITE = 2
# <linux/openat2.h>: fail with EAGAIN rather than do a lookup the dentry cache cannot answer.
_RESOLVE_CACHED = 0x20
_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_AT_FDCWD = -100


class NotCached(Exception):
    """The call would have waited for the disk."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _libc():  # type: ignore[no-untyped-def]
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


_lib = _libc()
_sync_file_range = getattr(_lib, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int
_syscall = getattr(_lib, "syscall", None)
_openat2_works = _syscall is not None and hasattr(os, "RWF_NOWAIT")


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Queue bytes ``offset .. offset+nbytes-1`` of ``fd`` for writing to disk, without waiting;
    whether the kernel took the request. Refusal is no error: the fsync writes them anyway."""
    if _sync_file_range is None or nbytes <= 0:
        return False
    # ctypes drops the GIL for the call; it may block briefly if the device's queue is full.
    return _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) == 0


def drop_cached(fd: int, offset: int = 0, nbytes: int = 0) -> bool:
    """Free the clean page cache pages of bytes ``offset .. offset+nbytes-1`` of ``fd`` (0: to
    the end; after an fsync every page is clean); whether the kernel took the advice. Dirty
    pages are left alone: nothing is lost, at worst something stays cached."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


def open_cached(path: str | os.PathLike[str]) -> int | None:
    """A read-only descriptor of ``path`` if it resolves without touching the disk, else None
    (also when it does not exist or anything else fails: the caller's ordinary open says why)."""
    global _openat2_works
    if not _openat2_works:
        return None
    how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(_AT_FDCWD), os.fsencode(Path(path)),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return fd
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL):  # no openat2, or no RESOLVE_CACHED
        _openat2_works = False
    return None


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]


_SYS_CACHESTAT = 451  # Linux 6.5; the unified syscall table's number, as openat2's
_cachestat_works = _syscall is not None and sys.platform == "linux"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def all_cached(fd: int, offset: int, nbytes: int) -> bool:
    """Whether every page of bytes ``offset .. offset+nbytes-1`` of ``fd`` is in the page cache
    now (``cachestat``, Linux 6.5: one call, no copy); False where it cannot tell. For sending a
    range by ``sendfile`` from the event loop without reading it first: a page evicted between
    the two makes that send wait for the disk, as a page fault would."""
    global _cachestat_works
    if not _cachestat_works or nbytes <= 0:
        return False
    first, end = offset // _PAGE, -(-(offset + nbytes) // _PAGE)
    rng = _CachestatRange(first * _PAGE, (end - first) * _PAGE)
    out = _Cachestat()
    if _syscall(ctypes.c_long(_SYS_CACHESTAT), ctypes.c_int(fd), ctypes.byref(rng), ctypes.byref(out),
                ctypes.c_uint(0)) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # no cachestat (or a filter refuses it)
            _cachestat_works = False
        return False
    return out.nr_cache >= end - first


def pread_cached(fd: int, n: int, offset: int) -> bytearray:
    """Up to ``n`` bytes at ``offset``, as ``os.pread`` reads them, from the page cache alone;
    :class:`NotCached` if any of them are not there. A short read is taken for a partly cached
    range (``RWF_NOWAIT`` stops at the first page it lacks) unless the file ends there."""
    buf = unfilled_bytearray(n)  # filled up to ``got``, the rest cut off below
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        raise NotCached() from None
    if got < n:
        if offset + got < os.fstat(fd).st_size:
            raise NotCached()
        del buf[got:]
    return buf
