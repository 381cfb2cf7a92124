"""The fragment file format and its blocking file operations."""

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.objstore.storage import fragment as fr
from headwater.objstore.storage.fragment import (BadRequest, FragmentCorrupt, FragmentNotFound,
                                         FragmentWriter, StorageFull)
from headwater.rpc.errors import error_class


def write(tmp_path: Path, fid: str, blocks: list[bytes], bs: int, meta=None) -> Path:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    w = FragmentWriter(tmp_path / "tmp" / fid, fid, bs, meta)
    for i, b in enumerate(blocks):
        w.append(i, [b])
    dest = tmp_path / fr.fragment_relpath(fid)
    w.commit(dest, len(blocks))
    return dest


def test_round_trip(tmp_path):
    blocks = [os.urandom(1000) for _ in range(5)] + [os.urandom(321)]
    path = write(tmp_path, "obj-1.part0.f3", blocks, 1000, {"k": 4, "m": 2, "stripe": 4000})
    assert path.parent.parent.parent.name == "frags"
    assert not (tmp_path / "tmp" / "obj-1.part0.f3").exists()
    assert fr.read_blocks(path, "obj-1.part0.f3", 0, 6) == blocks
    assert fr.read_blocks(path, "obj-1.part0.f3", 2, 3) == blocks[2:5]
    assert fr.read_blocks(path, "obj-1.part0.f3", 5, 1) == blocks[5:]
    assert fr.read_blocks(path, "obj-1.part0.f3", 1, 0) == []
    info = fr.read_info(path, "obj-1.part0.f3")
    assert (info.nblocks, info.last_len, info.block_bytes, info.complete) == (6, 321, 1000, True)
    assert info.meta == {"k": 4, "m": 2, "stripe": 4000}
    assert info.size_bytes == path.stat().st_size
    with pytest.raises(BadRequest):
        fr.read_blocks(path, "obj-1.part0.f3", 5, 2)


def test_block_i_is_at_a_fixed_offset(tmp_path):
    blocks = [bytes([i]) * 64 for i in range(4)]
    path = write(tmp_path, "f", blocks, 64)
    header = fr.parse_header(path.read_bytes(), "f")
    raw = path.read_bytes()
    for i in range(4):
        off = fr.slot_offset(header, i) + fr.BLOCK_PREFIX
        assert raw[off:off + 64] == blocks[i]


def test_flipped_byte_fails_only_that_block(tmp_path):
    blocks = [os.urandom(500) for _ in range(4)]
    path = write(tmp_path, "f", blocks, 500)
    header = fr.parse_header(path.read_bytes(), "f")
    raw = bytearray(path.read_bytes())
    raw[fr.slot_offset(header, 2) + fr.BLOCK_PREFIX + 17] ^= 0x01
    path.write_bytes(raw)
    with pytest.raises(FragmentCorrupt) as ei:
        fr.read_blocks(path, "f", 0, 4)
    assert ei.value.details["block"] == 2
    with pytest.raises(FragmentCorrupt):
        fr.read_blocks(path, "f", 2, 1)
    assert fr.read_blocks(path, "f", 0, 2) == blocks[:2]
    assert fr.read_blocks(path, "f", 3, 1) == blocks[3:]


def test_flipped_length_or_checksum_field(tmp_path):
    blocks = [os.urandom(100) for _ in range(3)]
    path = write(tmp_path, "f", blocks, 100)
    header = fr.parse_header(path.read_bytes(), "f")
    for delta in (1, 6):  # a byte of the length, a byte of the checksum
        raw = bytearray(path.read_bytes())
        raw[fr.slot_offset(header, 1) + delta] ^= 0x40
        bad = tmp_path / f"bad{delta}"
        bad.write_bytes(raw)
        with pytest.raises(FragmentCorrupt):
            fr.read_blocks(bad, "f", 1, 1)
        assert fr.read_blocks(bad, "f", 2, 1) == blocks[2:]


def test_damaged_header(tmp_path):
    path = write(tmp_path, "f", [b"x" * 10], 10, {"a": 1})
    raw = bytearray(path.read_bytes())
    raw[30] ^= 0xFF
    path.write_bytes(raw)
    with pytest.raises(FragmentCorrupt, match="header"):
        fr.read_blocks(path, "f", 0, 1)


def test_wrong_fid_in_file(tmp_path):
    path = write(tmp_path, "f", [b"x" * 10], 10)
    with pytest.raises(FragmentCorrupt, match="holds fragment"):
        fr.read_blocks(path, "g", 0, 1)


def test_truncated_file(tmp_path):
    blocks = [os.urandom(256) for _ in range(4)]
    path = write(tmp_path, "f", blocks, 256)
    header = fr.parse_header(path.read_bytes(), "f")
    # Cut in the middle of block 2: blocks 0 and 1 still serve, 2 and 3 are corrupt.
    with open(path, "r+b") as f:
        f.truncate(fr.slot_offset(header, 2) + fr.BLOCK_PREFIX + 100)
    assert fr.read_blocks(path, "f", 0, 2) == blocks[:2]
    for i in (2, 3):
        with pytest.raises(FragmentCorrupt):
            fr.read_blocks(path, "f", i, 1)
    assert not fr.read_info(path, "f").complete
    # Cut exactly at a block boundary: the footer is gone, so the missing block is corrupt.
    with open(path, "r+b") as f:
        f.truncate(fr.slot_offset(header, 2))
    with pytest.raises(FragmentCorrupt):
        fr.read_blocks(path, "f", 2, 1)
    assert fr.read_blocks(path, "f", 1, 1) == blocks[1:2]
    # Cut inside the header.
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(FragmentCorrupt):
        fr.read_blocks(path, "f", 0, 1)


def test_missing_fragment(tmp_path):
    with pytest.raises(FragmentNotFound):
        fr.read_blocks(tmp_path / "nope", "nope", 0, 1)
    with pytest.raises(FragmentNotFound):
        fr.read_info(tmp_path / "nope", "nope")


def test_commit_needs_every_block(tmp_path):
    w = FragmentWriter(tmp_path / "t", "f", 10, None)
    w.append(0, [b"a" * 10])
    with pytest.raises(BadRequest, match="commit of 2 blocks"):
        w.commit(tmp_path / "d" / "f", 2)
    w.append(1, [b"b" * 10])
    w.commit(tmp_path / "d" / "f", 2)
    assert fr.read_blocks(tmp_path / "d" / "f", "f", 0, 2) == [b"a" * 10, b"b" * 10]


def test_append_rules(tmp_path):
    w = FragmentWriter(tmp_path / "t", "f", 10, None)
    with pytest.raises(BadRequest, match="expected block 0"):
        w.append(1, [b"x" * 10])
    with pytest.raises(BadRequest):
        w.append(0, [b"x" * 11])  # bigger than block_bytes
    with pytest.raises(BadRequest):
        w.append(0, [b"x" * 5, b"x" * 10])  # a short block that is not the last
    w.append(0, [b"x" * 10, b"y" * 3])
    with pytest.raises(BadRequest, match="must be the last"):
        w.append(2, [b"z" * 10])
    w.commit(tmp_path / "d", 2)
    assert fr.read_blocks(tmp_path / "d", "f", 0, 2) == [b"x" * 10, b"y" * 3]


def test_abort_removes_temp_file(tmp_path):
    w = FragmentWriter(tmp_path / "t", "f", 10, None)
    w.append(0, [b"x" * 10])
    w.abort()
    assert not (tmp_path / "t").exists()
    w.abort()  # idempotent


def test_empty_fragment(tmp_path):
    path = write(tmp_path, "f", [], 10)
    info = fr.read_info(path, "f")
    assert info.nblocks == 0 and info.complete
    assert fr.read_blocks(path, "f", 0, 0) == []


@pytest.mark.parametrize("fid", ["", ".", "..", "a/b", "a b", "x" * 201, "é", None, 5, "../etc"])
def test_bad_fids(fid):
    with pytest.raises(BadRequest):
        fr.check_fid(fid)


@given(st.from_regex(r"[A-Za-z0-9._-]{1,200}", fullmatch=True))
def test_good_fids(fid):
    if fid in (".", ".."):
        return
    assert fr.check_fid(fid) == fid
    rel = fr.fragment_relpath(fid)
    assert rel.startswith("frags/") and rel.endswith("/" + fid) and rel.count("/") == 3


@given(fid=st.from_regex(r"[A-Za-z0-9_-]{1,50}", fullmatch=True), bs=st.integers(1, 1 << 20),
       meta=st.dictionaries(st.text(max_size=10), st.integers(-2**63, 2**64 - 1) | st.text(max_size=20), max_size=5))
def test_header_round_trip(fid, bs, meta):
    raw = fr.encode_header(fid, bs, meta)
    h = fr.parse_header(raw, fid)
    assert (h.fid, h.block_bytes, h.meta, h.header_len) == (fid, bs, meta, len(raw))
    assert fr.parse_footer(h, fr.encode_footer(h, 7, min(3, bs))) == (7, min(3, bs))


def test_errors_are_registered():
    assert error_class("fragment_corrupt") is FragmentCorrupt
    assert error_class("fragment_not_found") is FragmentNotFound
    assert error_class("storage_full") is StorageFull


def test_enospc_becomes_storage_full(tmp_path, monkeypatch):
    w = FragmentWriter(tmp_path / "t", "f", 10, None)
    w.append(0, [b"a" * 10])

    def full(fd, bufs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fr.os, "writev", full)
    with pytest.raises(StorageFull):
        w.append(1, [b"b" * 10])
    monkeypatch.undo()
    # The upload is still consistent and can carry on.
    w.append(1, [b"b" * 10])
    w.commit(tmp_path / "d", 2)
    assert fr.read_blocks(tmp_path / "d", "f", 0, 2) == [b"a" * 10, b"b" * 10]


def test_meta_that_cannot_be_packed():
    with pytest.raises(BadRequest):
        fr.encode_header("f", 10, {"x": 2**70})
    with pytest.raises(BadRequest):
        fr.encode_header("f", 10, {"x": b"y" * (fr.MAX_META_BYTES + 1)})


def test_cached_read_is_read_blocks_or_nothing(tmp_path):
    """``read_blocks_cached`` gives what ``read_blocks`` gives when the file is in the page
    cache, and None (never an error, never unverified bytes) whenever it is not so simple."""
    from headwater.pagecache import NotCached, pread_cached

    blocks = [os.urandom(4096) for _ in range(9)] + [os.urandom(77)]
    path = write(tmp_path, "cached.0", blocks, 4096)
    assert fr.read_blocks_cached(path, "cached.0", 0, 10) == blocks
    assert fr.read_blocks_cached(path, "cached.0", 3, 4) == blocks[3:7]
    assert fr.read_blocks_cached(path, "cached.0", 9, 1) == blocks[9:]
    assert fr.read_blocks_cached(path, "cached.0", 9, 2) is None  # past the end: read_blocks says why
    assert fr.read_blocks_cached(tmp_path / "nothing", "nothing.0", 0, 1) is None

    raw = bytearray(path.read_bytes())
    header = fr.parse_header(bytes(raw), "cached.0")
    raw[fr.slot_offset(header, 2) + fr.BLOCK_PREFIX + 9] ^= 1
    path.write_bytes(raw)
    with pytest.raises(FragmentCorrupt):
        fr.read_blocks(path, "cached.0", 2, 1)
    assert fr.read_blocks_cached(path, "cached.0", 2, 1) is None
    assert fr.read_blocks_cached(path, "cached.0", 3, 1) == blocks[3:4]

    # Pages evicted (clean once synced): refused rather than waited for. Pages just read may
    # sit in another CPU's LRU batch, where DONTNEED cannot drop them yet: try a few times.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        for _ in range(100):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            try:
                pread_cached(fd, 4096, 0)
            except NotCached:
                break
            time.sleep(0.01)
        else:
            pytest.skip("this file system keeps the pages (tmpfs?)")
    finally:
        os.close(fd)
    assert fr.read_blocks_cached(path, "cached.0", 3, 1) is None
    assert fr.read_blocks(path, "cached.0", 3, 1) == blocks[3:4]
    assert fr.read_blocks_cached(path, "cached.0", 3, 1) == blocks[3:4]  # read once: cached again


def test_parity_fragments_are_known_by_index_and_k(tmp_path):
    (tmp_path / "tmp").mkdir()

    def parity(fid: str, meta) -> bool:
        w = FragmentWriter(tmp_path / "tmp" / fid, fid, 4096, meta)
        w.abort()
        return w.is_parity

    assert parity("0a1b.4", {"k": 4, "m": 2}) and parity("0a1b.5", {"k": 4, "m": 2})
    assert not parity("0a1b.3", {"k": 4, "m": 2}) and not parity("0a1b.0", {"k": 4, "m": 2})
    assert not parity("0a1b.4", {}) and not parity("0a1b.4", None)  # no k: kept, as before
    assert not parity("obj1.p0.f2", {"k": 1})  # not "<oid>.<index>"


def test_a_commit_without_keep_cached_drops_the_file_from_the_page_cache(tmp_path, monkeypatch):
    """``keep_cached=False``: once the fsync made every page clean, the whole file is dropped
    (the kernel's part, best effort, is :func:`test_drop_cached_frees_clean_pages`'s); by
    default nothing is. Either way every byte reads back."""
    calls = _record_drops(monkeypatch)
    blocks = [os.urandom(64 * 1024) for _ in range(16)]
    (tmp_path / "tmp").mkdir()
    for fid, keep in (("0a1b.0", True), ("0a1b.4", False)):
        w = FragmentWriter(tmp_path / "tmp" / fid, fid, 64 * 1024, {"k": 4, "m": 2})
        w.append(0, blocks)
        dest = tmp_path / fr.fragment_relpath(fid)
        w.commit(dest, len(blocks), keep_cached=keep)
        assert calls == ([] if keep else [(0, 0)])
        assert fr.read_blocks(dest, fid, 0, 16) == blocks


def _record_drops(monkeypatch) -> list[tuple[int, int]]:
    """The (offset, nbytes) of every drop_cached the fragment module makes from now on."""
    calls: list[tuple[int, int]] = []
    real = fr.drop_cached

    def record(fd: int, offset: int = 0, nbytes: int = 0) -> bool:
        calls.append((offset, nbytes))
        return real(fd, offset, nbytes)

    monkeypatch.setattr(fr, "drop_cached", record)
    return calls


def test_drop_cached_frees_clean_pages(tmp_path):
    """DONTNEED frees a synced file's pages; a page the kernel still holds (an LRU batch of
    another CPU, a journal commit in progress) stays for the moment: asked again, it goes."""
    if _file_system(tmp_path) == "tmpfs":
        pytest.skip("tmpfs pages are the files themselves: nothing to drop")
    from headwater.pagecache import drop_cached

    path = tmp_path / "f"
    path.write_bytes(os.urandom(1024 * 1024))
    pages = 256
    assert _cached_pages(path) == pages
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        for _ in range(50):
            assert drop_cached(fd)
            if _cached_pages(path) == 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the pages of a synced file stayed cached")
    finally:
        os.close(fd)


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it)."""
    best, kind = "", ""
    real = str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mnt, fstype = line.split()[:3]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, fstype
    return kind


def _cached_pages(path: Path, lo: int = 0, hi: int | None = None) -> int:
    """How many of the pages of bytes ``lo .. hi-1`` of ``path`` are in the page cache."""
    from headwater.pagecache import NotCached, pread_cached

    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        end = os.fstat(fd).st_size if hi is None else hi
        # Last page first: a refused read may start readahead of the pages after it.
        for off in reversed(range(lo, end, 4096)):
            try:
                pread_cached(fd, 1, off)
                n += 1
            except NotCached:
                pass
        return n
    finally:
        os.close(fd)


def test_read_blocks_drops_behind_what_it_read(tmp_path, monkeypatch):
    """``drop_behind_above``: the pages a read brought in are dropped once copied out, when
    the file is larger than that."""
    blocks = [os.urandom(64 * 1024) for _ in range(16)]
    path = write(tmp_path, "0a1b.2", blocks, 64 * 1024, {"k": 4, "m": 2})
    header = fr.parse_header(path.read_bytes()[:4096], "0a1b.2")
    calls = _record_drops(monkeypatch)
    size = path.stat().st_size
    assert fr.read_blocks(path, "0a1b.2", 4, 8) == blocks[4:12]
    assert fr.read_blocks(path, "0a1b.2", 4, 8, drop_behind_above=size) == blocks[4:12]
    assert calls == []
    assert fr.read_blocks(path, "0a1b.2", 4, 8, drop_behind_above=size - 1) == blocks[4:12]
    assert calls == [(fr.slot_offset(header, 4), fr.slot_offset(header, 12) - fr.slot_offset(header, 4))]


def test_drop_behind_drops_what_was_appended_long_enough_ago(tmp_path, monkeypatch):
    """``drop_behind``: what lies DROP_LAG_BYTES and more behind the last append is dropped
    while the upload goes on, in steps of DROP_STEP_BYTES, whole pages from the start; the
    rest at the commit. Every byte reads back."""
    calls = _record_drops(monkeypatch)
    (tmp_path / "tmp").mkdir()
    bs = 1024 * 1024
    w = FragmentWriter(tmp_path / "tmp" / "0a1b.4", "0a1b.4", bs, {"k": 4, "m": 2})
    w.drop_behind = True
    blocks = [os.urandom(bs) for _ in range(24)]
    for i, b in enumerate(blocks):
        w.append(i, [b])
    assert calls and calls[0][0] == 0
    for (off, n), (nxt, _) in zip(calls, calls[1:] + [(None, 0)]):
        assert n >= fr.DROP_STEP_BYTES and off % fr.PAGE_BYTES == 0 and n % fr.PAGE_BYTES == 0
        assert nxt is None or nxt == off + n  # contiguous, nothing dropped twice
    end = calls[-1][0] + calls[-1][1]
    assert w.size - fr.DROP_LAG_BYTES - bs - fr.DROP_STEP_BYTES <= end <= w.size - fr.DROP_LAG_BYTES
    dest = tmp_path / fr.fragment_relpath("0a1b.4")
    w.commit(dest, len(blocks), keep_cached=False)
    assert fr.read_blocks(dest, "0a1b.4", 0, 24) == blocks
