"""The on-disk fragment format, its checksums, and the blocking file operations on it.

A fragment file holds, for one object part and one fragment index, block ``i`` of every stripe
``i`` in order. Layout (all integers big-endian)::

    header   MAGIC(8) | version u16 | flags u16 | header_len u32 | block_bytes u32
             | fid_len u16 | meta_len u32 | fid (utf-8) | meta (msgpack map) | xxh64(preceding) u64
    block i  length u32 | xxh3_64(data, seed=i) u64 | data (length bytes)
    footer   b"HWFE" | nblocks u32 | last_len u32 | xxh64(footer fields, seed=header checksum) u64

Block ``i`` starts at ``header_len + i * (BLOCK_PREFIX + block_bytes)``: every block but the last
has exactly ``block_bytes`` bytes, so any block is found without scanning. The checksum is seeded
with the block's index, so a block read from the wrong slot fails verification too. The footer,
written at commit, records the block count; a file cut short loses it (and the blocks past the
cut fail to read as corrupt, while the blocks before it still verify and serve).

Nothing here is async: the storage node runs these functions in worker threads.
"""

from __future__ import annotations

import errno
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack
import xxhash

from headwater.pagecache import NotCached, all_cached, drop_cached, open_cached, pread_cached, start_writeback
from headwater.rpc.errors import BadRequest, RpcError, register_error

from ..errors import StoreError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "BLOCK_PREFIX",
    "FOOTER_BYTES",
    "MAX_META_BYTES",
    "FragmentError",
    "FragmentCorrupt",
    "FragmentNotFound",
    "StorageFull",
    "FragmentHeader",
    "FragmentInfo",
    "check_fid",
    "fragment_relpath",
    "encode_header",
    "parse_header",
    "read_blocks_cached",
    "read_blocks_cached_open",
    "cached_range_open",
    "verify_prefixed",
    "block_prefix",
    "verify_block",
    "encode_footer",
    "parse_footer",
    "slot_offset",
    "file_size",
    "FragmentWriter",
    "read_blocks",
    "read_info",
    "FragmentScanner",
    "fsync_dir",
]

MAGIC = b"\x89HWFRAG\n"
FORMAT_VERSION = 1
MAX_META_BYTES = 64 * 1024
MAX_BLOCK_BYTES = 64 * 1024 * 1024

_HEAD = struct.Struct("!8sHHIIHI")
_BLOCK = struct.Struct("!IQ")
_FOOT = struct.Struct("!4sIIQ")
_FOOT_MAGIC = b"HWFE"
BLOCK_PREFIX = _BLOCK.size
FOOTER_BYTES = _FOOT.size

_FID = re.compile(r"[A-Za-z0-9._-]{1,200}")


# --- errors ------------------------------------------------------------------------------------

class FragmentError(RpcError, StoreError):
    """Root of the storage node's errors; an RPC error too, so it crosses between daemons typed."""

    code = "fragment_error"


@register_error
class FragmentCorrupt(FragmentError):
    """Stored bytes fail their checksum (or the file is cut short / its header is damaged)."""

    code = "fragment_corrupt"


@register_error
class FragmentNotFound(FragmentError):
    code = "fragment_not_found"


@register_error
class StorageFull(FragmentError):
    """The node's disk (or quota) is full; the node stays up and keeps serving reads."""

    code = "storage_full"
    retryable = True


register_error(FragmentError)

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _raise_os(e: OSError, fid: str, what: str) -> None:
    if e.errno in _FULL_ERRNOS:
        raise StorageFull(f"no space left to {what} {fid}: {e.strerror}", fid=fid) from None
    raise e


def check_fid(fid: Any) -> str:
    """The fid if it is an opaque name matching ``[A-Za-z0-9._-]{1,200}``; BadRequest otherwise."""
    if not isinstance(fid, str) or not _FID.fullmatch(fid) or fid in (".", ".."):
        raise BadRequest(f"invalid fragment id {fid!r}: expected [A-Za-z0-9._-]{{1,200}}",
                         fid=str(fid)[:200])
    return fid


def fragment_relpath(fid: str) -> str:
    """``frags/ab/cd/<fid>``: a two-level fan-out from a hash of the fid."""
    h = xxhash.xxh64_hexdigest(fid.encode())
    return f"frags/{h[:2]}/{h[2:4]}/{fid}"


# --- sans-IO encode / parse --------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class FragmentHeader:
    fid: str
    block_bytes: int
    meta: dict = field(default_factory=dict)
    header_len: int = 0
    checksum: int = 0
    version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class FragmentInfo:
    """What :func:`read_info` learns about a committed fragment file."""

    fid: str
    block_bytes: int
    meta: dict
    nblocks: int
    last_len: int
    size_bytes: int
    complete: bool  # footer present and consistent with the file size


def encode_header(fid: str, block_bytes: int, meta: dict | None = None) -> bytes:
    raw_fid = check_fid(fid).encode()
    if not 0 < block_bytes <= MAX_BLOCK_BYTES:
        raise BadRequest(f"block_bytes {block_bytes} is outside 1..{MAX_BLOCK_BYTES}")
    try:
        raw_meta = msgpack.packb(meta or {}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadRequest(f"fragment meta cannot be packed: {e}") from None
    if len(raw_meta) > MAX_META_BYTES:
        raise BadRequest(f"fragment meta is {len(raw_meta)} bytes; the limit is {MAX_META_BYTES}")
    header_len = _HEAD.size + len(raw_fid) + len(raw_meta) + 8
    body = _HEAD.pack(MAGIC, FORMAT_VERSION, 0, header_len, block_bytes, len(raw_fid),
                      len(raw_meta)) + raw_fid + raw_meta
    return body + xxhash.xxh64_intdigest(body).to_bytes(8, "big")


def header_fixed_bytes() -> int:
    return _HEAD.size


def parse_header(buf: bytes | memoryview, fid: str | None = None) -> FragmentHeader:
    """Parse and verify a header (``buf`` holds at least its first ``header_len`` bytes).

    Raises FragmentCorrupt on a bad magic, version, checksum, or a fid other than ``fid``.
    """
    if len(buf) < _HEAD.size:
        raise FragmentCorrupt("fragment header is cut short", fid=fid or "")
    magic, version, _flags, header_len, block_bytes, fid_len, meta_len = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise FragmentCorrupt("not a fragment file (bad magic)", fid=fid or "")
    if version != FORMAT_VERSION:
        raise FragmentCorrupt(f"unknown fragment format version {version}", fid=fid or "")
    if header_len != _HEAD.size + fid_len + meta_len + 8 or len(buf) < header_len:
        raise FragmentCorrupt("fragment header lengths are inconsistent", fid=fid or "")
    body = memoryview(buf)[:header_len - 8]
    checksum = int.from_bytes(buf[header_len - 8:header_len], "big")
    if xxhash.xxh64_intdigest(body) != checksum:
        raise FragmentCorrupt("fragment header checksum mismatch", fid=fid or "")
    stored_fid = bytes(body[_HEAD.size:_HEAD.size + fid_len]).decode()
    if fid is not None and stored_fid != fid:
        raise FragmentCorrupt(f"file holds fragment {stored_fid!r}, not {fid!r}", fid=fid)
    meta = msgpack.unpackb(body[_HEAD.size + fid_len:], raw=False) if meta_len else {}
    return FragmentHeader(fid=stored_fid, block_bytes=block_bytes, meta=meta,
                          header_len=header_len, checksum=checksum, version=version)


def block_checksum(index: int, data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data, seed=index)


def block_prefix(index: int, data: bytes | memoryview) -> bytes:
    return _BLOCK.pack(len(data), block_checksum(index, data))


def verify_block(fid: str, index: int, prefix: bytes | memoryview, data: bytes | memoryview) -> None:
    length, checksum = _BLOCK.unpack_from(prefix)
    if length != len(data):
        raise FragmentCorrupt(f"block {index} of {fid}: stored length {length}, expected {len(data)}",
                              fid=fid, block=index)
    if block_checksum(index, data) != checksum:
        raise FragmentCorrupt(f"block {index} of {fid}: checksum mismatch", fid=fid, block=index)


def encode_footer(header: FragmentHeader, nblocks: int, last_len: int) -> bytes:
    fields = _FOOT_MAGIC + struct.pack("!II", nblocks, last_len)
    return fields + xxhash.xxh64_intdigest(fields, seed=header.checksum).to_bytes(8, "big")


def parse_footer(header: FragmentHeader, buf: bytes | memoryview) -> tuple[int, int] | None:
    """(nblocks, last_len), or None if ``buf`` is not this file's valid footer."""
    if len(buf) != FOOTER_BYTES:
        return None
    magic, nblocks, last_len, checksum = _FOOT.unpack(buf)
    if magic != _FOOT_MAGIC or last_len > header.block_bytes:
        return None
    if xxhash.xxh64_intdigest(bytes(buf[:12]), seed=header.checksum) != checksum:
        return None
    return nblocks, last_len


def slot_offset(header: FragmentHeader, index: int) -> int:
    return header.header_len + index * (BLOCK_PREFIX + header.block_bytes)


def file_size(header: FragmentHeader, nblocks: int, last_len: int) -> int:
    """Size of a committed file with ``nblocks`` blocks, the last ``last_len`` bytes long."""
    if nblocks == 0:
        return header.header_len + FOOTER_BYTES
    return slot_offset(header, nblocks - 1) + BLOCK_PREFIX + last_len + FOOTER_BYTES


# --- blocking file operations ------------------------------------------------------------------

def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """Create ``path`` and any missing parents, fsyncing each parent that gained an entry."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


# FragmentWriter.drop_behind: how far behind the last append its pages are dropped (writeback,
# started at each append, is done with them by then; a page still dirty is left alone), and in
# steps of how much (one fadvise per few appends).
DROP_LAG_BYTES = 8 * 1024 * 1024
DROP_STEP_BYTES = 4 * 1024 * 1024
PAGE_BYTES = 4096


class FragmentWriter:
    """Appends the blocks of one fragment to a temporary file, then commits it into place.

    Not thread-safe: the node serialises the operations on one writer.
    """

    def __init__(self, tmp_path: Path, fid: str, block_bytes: int, meta: dict | None = None):
        self.fid = check_fid(fid)
        raw = encode_header(fid, block_bytes, meta)
        self.header = parse_header(raw, fid)
        self.tmp_path = tmp_path
        self.count = 0
        self.last_len = 0
        self.fd: int | None = None
        # Drop the pages of what was appended DROP_LAG_BYTES and more ago (written back by then,
        # so clean) as the upload goes on, not all at the commit: a large fragment reuses its
        # own pages instead of holding new ones to the end (see headwater/pagecache.py).
        self.drop_behind = False
        self._dropped = 0
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.fd = fd
        try:
            self._write_all([raw])
        except BaseException:
            self.abort()
            raise
        self.size = len(raw)

    def _write_all(self, buffers: Sequence[bytes | memoryview]) -> None:
        assert self.fd is not None
        try:
            want = sum(len(b) for b in buffers)
            done = os.writev(self.fd, buffers)
            while done < want:  # a short write: finish the rest
                flat = memoryview(b"".join(buffers))[done:]
                done += os.write(self.fd, flat)
        except OSError as e:
            _raise_os(e, self.fid, "write")

    def append(self, index: int, blocks: Sequence[bytes | memoryview]) -> int:
        """Append blocks ``index, index+1, ...``; returns the bytes written. Only the very last
        block of the fragment may be shorter than ``block_bytes``."""
        if self.fd is None:
            raise BadRequest(f"upload of {self.fid} is closed")
        if index != self.count:
            raise BadRequest(f"{self.fid}: expected block {self.count}, got {index}",
                             fid=self.fid, expected=self.count, got=index)
        bs = self.header.block_bytes
        if self.count and self.last_len != bs:
            raise BadRequest(f"{self.fid}: block {self.count - 1} was short, so it must be the last")
        buffers: list[bytes | memoryview] = []
        for j, b in enumerate(blocks):
            n = len(b)
            if n > bs or n == 0 or (n < bs and j != len(blocks) - 1):
                raise BadRequest(f"{self.fid}: block {index + j} is {n} bytes; blocks are {bs} "
                                 f"bytes, only the last may be shorter (and not empty)",
                                 fid=self.fid, block=index + j)
            buffers.append(block_prefix(index + j, b))
            buffers.append(b)
        before = self.size
        try:
            self._write_all(buffers)
        except BaseException:
            # Leave the temp file exactly at its last whole block so the upload can go on.
            try:
                os.ftruncate(self.fd, before)
                os.lseek(self.fd, before, os.SEEK_SET)
            except OSError:
                pass
            raise
        written = sum(len(b) for b in buffers)
        # The disk writes these while the next blocks arrive, not all in the commit's fsync.
        start_writeback(self.fd, before, written)
        if self.drop_behind:
            upto = (before - DROP_LAG_BYTES) // PAGE_BYTES * PAGE_BYTES
            if upto - self._dropped >= DROP_STEP_BYTES:
                drop_cached(self.fd, self._dropped, upto - self._dropped)
                self._dropped = upto
        self.size += written
        self.count += len(blocks)
        if blocks:
            self.last_len = len(blocks[-1])
        return written

    @property
    def is_parity(self) -> bool:
        """Whether this is a parity fragment of its layout (index k or above, by the ``k`` its
        writer put in the meta): read back only when a data fragment of its stripes is lost."""
        k = self.header.meta.get("k")
        index = self.fid.rpartition(".")[2]
        return isinstance(k, int) and index.isdigit() and int(index) >= k

    def commit(self, dest: Path, nblocks: int, *, keep_cached: bool = True) -> int:
        """Write the footer, fsync, rename to ``dest`` and fsync its directory. Returns the size.
        Without ``keep_cached`` the file's pages leave the page cache once the fsync has made
        them clean (see :func:`headwater.pagecache.drop_cached`)."""
        if self.fd is None:
            raise BadRequest(f"upload of {self.fid} is closed")
        if nblocks != self.count:
            raise BadRequest(f"{self.fid}: commit of {nblocks} blocks, but {self.count} were written",
                             fid=self.fid, have=self.count, want=nblocks)
        self._write_all([encode_footer(self.header, self.count, self.last_len if self.count else 0)])
        try:
            os.fsync(self.fd)
            if not keep_cached:
                drop_cached(self.fd)
            os.close(self.fd)
            self.fd = None
            makedirs_durable(dest.parent)
            os.replace(self.tmp_path, dest)
            fsync_dir(dest.parent)
        except OSError as e:
            _raise_os(e, self.fid, "commit")
        return self.size + FOOTER_BYTES

    def abort(self) -> None:
        """Close and remove the temp file (idempotent)."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open(path: Path, fid: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FragmentNotFound(f"no fragment {fid}", fid=fid) from None


_Pread = Callable[[int, int, int], bytes | bytearray]


def _read_header(fd: int, fid: str, pread: _Pread = os.pread) -> FragmentHeader:
    head = pread(fd, 4096, 0)
    if len(head) >= _HEAD.size:
        header_len = _HEAD.unpack_from(head)[3]
        if len(head) < header_len <= _HEAD.size + 200 + MAX_META_BYTES + 8:
            head = pread(fd, header_len, 0)
    return parse_header(head, fid)


def _layout(fd: int, header: FragmentHeader, pread: _Pread = os.pread) -> tuple[int, int, bool, int]:
    """(nblocks, last_len, complete, size) from the footer, or estimated from the size."""
    size = os.fstat(fd).st_size
    if size >= header.header_len + FOOTER_BYTES:
        found = parse_footer(header, pread(fd, FOOTER_BYTES, size - FOOTER_BYTES))
        if found is not None and file_size(header, *found) == size:
            return found[0], found[1], True, size
    # No valid footer: the file was cut short (or its tail damaged). Count the slots present.
    slot = BLOCK_PREFIX + header.block_bytes
    body = max(0, size - header.header_len)
    return -(-body // slot), 0, False, size


def read_info(path: Path, fid: str) -> FragmentInfo:
    fd = _open(path, fid)
    try:
        header = _read_header(fd, fid)
        nblocks, last_len, complete, size = _layout(fd, header)
    finally:
        os.close(fd)
    return FragmentInfo(fid=fid, block_bytes=header.block_bytes, meta=header.meta, nblocks=nblocks,
                        last_len=last_len, size_bytes=size, complete=complete)


def read_blocks(path: Path, fid: str, first: int, count: int, *,
                drop_behind_above: int | None = None) -> list[memoryview]:
    """Blocks ``first .. first+count-1`` of a committed fragment, each verified. With
    ``drop_behind_above``, the pages read leave the page cache once copied out if the file is
    larger than that (the next reads reuse them: see :mod:`headwater.pagecache`).

    The blocks are views into one buffer filled by a single ``pread`` (block ``j`` starts at
    ``j * (BLOCK_PREFIX + block_bytes)`` in ``view.obj``), so serving them costs no copy.
    FragmentNotFound if there is no file; BadRequest for blocks past the end; FragmentCorrupt if
    the header or any returned block fails its checksum, or the file is cut short before them.
    """
    if first < 0 or count < 0:
        raise BadRequest(f"bad block range first={first} count={count}")
    fd = _open(path, fid)
    try:
        header = _read_header(fd, fid)
        layout = _layout(fd, header)
        blocks = _read_verified(fd, header, layout, fid, first, count)
        if drop_behind_above is not None and layout[3] > drop_behind_above:
            drop_cached(fd, slot_offset(header, first), count * (BLOCK_PREFIX + header.block_bytes))
        return blocks
    finally:
        os.close(fd)


def read_blocks_cached(path: Path, fid: str, first: int, count: int) -> list[memoryview] | None:
    """What :func:`read_blocks` returns, or None when that would wait for the disk.

    Made for the event loop: the file is opened only if its path resolves from the kernel's
    caches (``openat2`` with ``RESOLVE_CACHED``), and every read is a ``preadv2`` with
    ``RWF_NOWAIT``, which fails rather than wait for a page not in the page cache. None also
    where either is missing (not Linux, a kernel before 5.12) and on any error at all: the
    caller then calls :func:`read_blocks` on a worker thread, which waits, and raises the errors
    as they are. Every block is verified as :func:`read_blocks` does it.
    """
    got = read_blocks_cached_open(path, fid, first, count)
    if got is None:
        return None
    os.close(got[1])
    return got[0]


def read_blocks_cached_open(path: Path, fid: str, first: int,
                            count: int) -> tuple[list[memoryview], int, int] | None:
    """What :func:`read_blocks_cached` returns, with the file left open: ``(blocks, fd,
    offset)``, ``offset`` where block ``first``'s prefix starts in the file (the blocks lie
    back to back from there, ``BLOCK_PREFIX + block_bytes`` apart). For a reply that sends the
    verified range from the file itself; the caller closes ``fd``."""
    fd = open_cached(path)
    if fd is None:
        return None
    try:
        header = _read_header(fd, fid, pread_cached)
        layout = _layout(fd, header, pread_cached)
        blocks = _read_verified(fd, header, layout, fid, first, count, pread_cached)
    except Exception:  # noqa: BLE001 - NotCached, or what read_blocks on the thread raises properly
        os.close(fd)
        return None
    return blocks, fd, slot_offset(header, first)


def cached_range_open(path: Path, fid: str, first: int,
                      count: int) -> tuple[int, int, int, list[int]] | None:
    """Where blocks ``first .. first+count-1`` of a committed fragment lie in its file, left
    open, when the page cache holds every byte of them: ``(fd, offset, size, lengths)``, the
    blocks back to back from ``offset`` (block ``first``'s prefix), ``BLOCK_PREFIX +
    block_bytes`` apart, each prefix included, ``size`` bytes in all. Nothing is read or
    verified but the header and footer: for a reader that verifies each block against its
    prefix itself (:func:`verify_prefixed`). None for anything else (not cached, not committed,
    out of range, damaged): the caller reads it as :func:`read_blocks` does. The caller closes
    ``fd``."""
    fd = open_cached(path)
    if fd is None:
        return None
    try:
        header = _read_header(fd, fid, pread_cached)
        nblocks, last_len, complete, _size = _layout(fd, header, pread_cached)
        if not complete or count <= 0 or first < 0 or first + count > nblocks:
            raise NotCached
        start = slot_offset(header, first)
        lengths = [header.block_bytes] * count
        if first + count == nblocks:
            lengths[-1] = last_len
        size = (count - 1) * (BLOCK_PREFIX + header.block_bytes) + BLOCK_PREFIX + lengths[-1]
        if not all_cached(fd, start, size):
            raise NotCached
    except Exception:  # noqa: BLE001 - NotCached, or what read_blocks on the thread raises properly
        os.close(fd)
        return None
    return fd, start, size, lengths


def verify_prefixed(fid: str, first: int, lengths: Sequence[int],
                    payload: bytes | bytearray | memoryview) -> list[memoryview]:
    """The blocks of a payload sent as :func:`cached_range_open` describes it (each block with
    its prefix), each verified against its prefix as :func:`read_blocks` verifies it (length,
    then xxh3 seeded with the block's index): views of the data, without the prefixes.
    FragmentCorrupt for the first that fails, or a payload of the wrong size."""
    if (not isinstance(lengths, list) or not lengths
            or not all(type(n) is int and n >= 0 for n in lengths)):
        raise FragmentCorrupt(f"{fid}: blocks {first}.. came with lengths {str(lengths)[:80]}",
                              fid=fid, block=first)
    mv = memoryview(payload)
    stride = BLOCK_PREFIX + lengths[0]
    want = (len(lengths) - 1) * stride + BLOCK_PREFIX + lengths[-1]
    if len(mv) != want:
        raise FragmentCorrupt(f"{fid}: blocks {first}.. came as {len(mv)} bytes, expected {want}",
                              fid=fid, block=first)
    out = []
    for j, n in enumerate(lengths):
        pos = j * stride
        data = mv[pos + BLOCK_PREFIX:pos + BLOCK_PREFIX + n]
        verify_block(fid, first + j, mv[pos:pos + BLOCK_PREFIX], data)
        out.append(data)
    return out


def _read_verified(fd: int, header: FragmentHeader, layout: tuple[int, int, bool, int], fid: str,
                   first: int, count: int, pread: _Pread = os.pread) -> list[memoryview]:
    nblocks, last_len, complete, _size = layout
    if complete and first + count > nblocks:
        raise BadRequest(f"{fid} has {nblocks} blocks; asked for {first}..{first + count - 1}",
                         fid=fid, nblocks=nblocks)
    if count == 0:
        return []
    start = slot_offset(header, first)
    if complete:
        end = slot_offset(header, first + count - 1) + BLOCK_PREFIX + (
            last_len if first + count == nblocks else header.block_bytes)
    else:
        end = slot_offset(header, first + count)
    raw = pread(fd, end - start, start)
    stride = BLOCK_PREFIX + header.block_bytes
    mv = memoryview(raw)
    out = []
    for j in range(count):
        index = first + j
        pos = j * stride
        if len(raw) < pos + BLOCK_PREFIX:
            raise FragmentCorrupt(f"block {index} of {fid} is cut short (truncated file)",
                                  fid=fid, block=index)
        if complete:
            n = last_len if index == nblocks - 1 else header.block_bytes
        else:  # no footer: trust the stored length only as far as the bytes go
            n = min(_BLOCK.unpack_from(raw, pos)[0], header.block_bytes)
        data = mv[pos + BLOCK_PREFIX:pos + BLOCK_PREFIX + n]
        if len(data) < n:
            raise FragmentCorrupt(f"block {index} of {fid} is cut short (truncated file)",
                                  fid=fid, block=index)
        verify_block(fid, index, mv[pos:pos + BLOCK_PREFIX], data)
        out.append(data)
    return out


class FragmentScanner:
    """Verifies every block of one committed fragment file, a few blocks per call (the scrubber).

    Holds one descriptor for the whole scan, so a file renamed over mid-scan (a rebuild
    committing) is never mixed with its replacement; ``inode`` names what was scanned, for a
    quarantine that must not move the replacement. Blocking: call it from a worker thread.
    The constructor raises FragmentNotFound if the file is gone; :meth:`start` raises
    FragmentCorrupt for a bad header or a missing footer (a committed file always has one), and
    :meth:`verify_next` for a block that fails its checksum.
    """

    def __init__(self, path: Path, fid: str):
        self.fid = fid
        self.fd: int | None = _open(path, fid)
        try:
            st = os.fstat(self.fd)
        except BaseException:
            self.close()
            raise
        self.inode = (st.st_dev, st.st_ino)
        self.size_bytes = st.st_size
        self.nblocks = 0
        self.next_block = 0
        self.header: FragmentHeader | None = None
        self._layout: tuple[int, int, bool, int] = (0, 0, False, 0)

    def start(self) -> None:
        """Read and verify the header and footer."""
        assert self.fd is not None, "scanner is closed"
        self.header = _read_header(self.fd, self.fid)
        self._layout = _layout(self.fd, self.header)
        self.nblocks, _last, complete, self.size_bytes = self._layout
        if not complete:
            raise FragmentCorrupt(f"{self.fid} has no valid footer (cut short or damaged tail)",
                                  fid=self.fid)

    @property
    def done(self) -> bool:
        return self.next_block >= self.nblocks

    def verify_next(self, count: int) -> int:
        """Verify up to ``count`` more blocks; returns the file bytes they span (0 when done)."""
        assert self.fd is not None and self.header is not None, "start() the scanner first"
        n = min(count, self.nblocks - self.next_block)
        if n <= 0:
            return 0
        blocks = _read_verified(self.fd, self.header, self._layout, self.fid, self.next_block, n)
        self.next_block += n
        return sum(len(b) for b in blocks) + n * BLOCK_PREFIX

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FragmentScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
