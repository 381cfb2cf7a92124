"""A storage node over real loopback sockets, driven through StorageClient."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import threading
import time
from pathlib import Path

import anyio
import pytest
from headwater.objstore import stripe
from headwater.objstore.config import ErasureScheme, ObjstoreConfig, StorageNodeConfig
from headwater.objstore.storage import fragment as fr
from headwater.objstore.storage.client import (
    FragmentCorrupt,
    FragmentNotFound,
    StorageClient,
    StorageFull,
)
from headwater.objstore.storage.daemon import (
    StorageNode,
    StorageNodeError,
    run_storage_node,
)

from headwater.config import ClusterConfig
from headwater.rpc import BadRequest, cluster_secret
from tests.cluster import TEST_SECRET_ENV

pytestmark = pytest.mark.anyio


def node_config(tmp_path: Path, node_id: str = "s1") -> StorageNodeConfig:
    return StorageNodeConfig(id=node_id, port=1, admin_port=2, data_dir=tmp_path / node_id)


class Running:
    def __init__(self, tg, node: StorageNode):
        self.tg, self.node = tg, node

    def client(self, **kw) -> StorageClient:
        secret = cluster_secret(ClusterConfig(secret_env=TEST_SECRET_ENV))
        return StorageClient(self.node.id, "127.0.0.1", self.node.rpc_port, secret=secret, **kw)


async def start(tg, tmp_path: Path, node_id: str = "s1", *, page_cache: str = "none") -> Running:
    cluster = ClusterConfig(secret_env=TEST_SECRET_ENV, objstore=ObjstoreConfig(storage_page_cache=page_cache))
    node = await tg.start(lambda task_status: run_storage_node(
        cluster, node_config(tmp_path, node_id), port=0, task_status=task_status))
    return Running(tg, node)


def _warm(path: Path) -> None:
    """Bring a file's pages (and its name) into the kernel's caches, as a read just before a
    GET leaves them: on a loaded machine the kernel may have dropped them since they were
    written, and a range not cached whole is (rightly) read the slow way."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


async def test_round_trip_and_info(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path, page_cache="all")
        blocks = [os.urandom(4096) for _ in range(7)] + [os.urandom(1000)]
        async with sn.client() as c:
            for i, b in enumerate(blocks):
                await c.append("obj1.p0.f2", i, b, block_bytes=4096, meta={"k": 4, "m": 2, "i": 2})
            assert await c.commit("obj1.p0.f2", len(blocks)) > 0
            path = tmp_path / "s1" / fr.fragment_relpath("obj1.p0.f2")
            _warm(path)
            assert await c.read("obj1.p0.f2", 0, 8) == blocks
            _warm(path)
            assert await c.read("obj1.p0.f2", 7) == blocks[7:]
            _warm(path)
            assert await c.read("obj1.p0.f2", 2, 3) == blocks[2:5]
            st = await c.stat("obj1.p0.f2")
            assert st["nblocks"] == 8 and st["block_bytes"] == 4096 and st["complete"]
            assert st["meta"] == {"k": 4, "m": 2, "i": 2}
            info = await c.info()
            assert info["id"] == "s1" and info["fragments"] == 1
            assert info["used_bytes"] == st["size_bytes"]
            assert 0 < info["free_bytes"] <= info["total_bytes"]
            # Files sit where the layout says, and no temp file is left.
            assert (tmp_path / "s1" / fr.fragment_relpath("obj1.p0.f2")).is_file()
            assert os.listdir(tmp_path / "s1" / "tmp") == []
            # A retried commit (the first answer lost) succeeds again.
            assert await c.commit("obj1.p0.f2", len(blocks)) == st["size_bytes"]
            assert await c.delete("obj1.p0.f2") is True
            assert await c.delete("obj1.p0.f2") is False
            with pytest.raises(FragmentNotFound):
                await c.read("obj1.p0.f2", 0, 1)
            assert (await c.info())["fragments"] == 0
        s = sn.node.stats()
        assert s["bytes_written"] >= sum(map(len, blocks)) and s["not_found_reads"] == 1
        assert s["cached_reads"] == 3  # in the page cache: every read came from it, on the loop
        tg.cancel_scope.cancel()


async def test_a_page_cached_read_is_sent_from_the_file_once_verified(anyio_backend, tmp_path):
    """A read the page cache holds is answered in the reader with its payload as a FileRange of
    the fragment file (sendfile: the bytes never pass through a buffer of the node's), the same
    bytes as before at every offset; a small one goes out from memory. A block flipped in the
    page cache is still caught: the read is not answered from the file but fails as corrupt."""
    from headwater.rpc import FileRange
    blocks = [os.urandom(64 * 1024) for _ in range(6)] + [os.urandom(5000)]
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path, page_cache="all")
        async with sn.client() as c:
            await c.append_many("0c0d.1", 0, blocks, block_bytes=64 * 1024, meta={"k": 4, "m": 2})
            await c.commit("0c0d.1", len(blocks))
            path = tmp_path / "s1" / fr.fragment_relpath("0c0d.1")
            for first, count in ((0, 4), (3, 4), (5, 2), (0, 7), (2, 1)):
                _warm(path)  # no await between it and the check: nothing else runs meanwhile
                reply = sn.node._read_at_once({"fid": "0c0d.1", "first": first, "count": count}, b"")
                assert isinstance(reply.payload, FileRange), (first, count)
                reply.payload.close()
                assert await c.read("0c0d.1", first, count) == blocks[first:first + count]
            small = sn.node._read_at_once({"fid": "0c0d.1", "first": 6, "count": 1}, b"")
            assert not isinstance(small.payload, FileRange)  # 5000 bytes: from memory
            sent = sn.node.stats()["cached_reads"]
            with open(path, "r+b") as f:  # a flipped byte, in the page cache the next read uses
                f.seek(fr.parse_header(f.read(4096)).header_len + 2 * (fr.BLOCK_PREFIX + 64 * 1024) + 77)
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ 1]))
            with pytest.raises(FragmentCorrupt):
                await c.read("0c0d.1", 0, 4)
            assert sn.node.stats()["corrupt_reads"] == 1
            assert sn.node.stats()["cached_reads"] == sent  # the corrupt read was not answered at once
        tg.cancel_scope.cancel()


async def test_a_prefixed_read_is_sent_unread_and_verified_by_the_reader(anyio_backend, tmp_path):
    """A GET's read (``start_read``, not into pipes) of a page-cached range comes from the file
    with each block's prefix, and the reader verifies every block: the same bytes at every
    offset, with nothing read or hashed on the node. A byte flipped in the page cache is caught
    by the reader (FragmentCorrupt, marked as found there), which tells the node (``suspect``):
    a corrupt read counted there, and its scrubber handed the fragment. A range the page cache
    does not hold whole is answered as before, verified on the node.

    The kernel may drop pages between the warm-up and the read on a loaded machine (CI ran
    with two workers and saw 3 of 4 reads go out unread), so a read that should go out unread
    is tried up to three times, each after a warm-up; it must go out unread in one of them."""
    blocks = [os.urandom(64 * 1024) for _ in range(6)] + [os.urandom(5000)]
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path, page_cache="all")
        suspects = []
        sn.node.scrubber = type("Scrubber", (), {"suspect": lambda self, fid: suspects.append(fid),
                                                 "stats": lambda self: {}})()
        path = tmp_path / "s1" / fr.fragment_relpath("0e0f.1")
        async with sn.client() as c:
            await c.append_many("0e0f.1", 0, blocks, block_bytes=64 * 1024, meta={"k": 4, "m": 2})
            await c.commit("0e0f.1", len(blocks))
            for first, count in ((0, 4), (3, 4), (5, 2), (0, 7)):
                for _try in range(3):
                    _warm(path)
                    before = sn.node.stats()["prefixed_reads"]
                    assert await (await c.start_read("0e0f.1", first, count)).blocks() == blocks[first:first + count]
                    if sn.node.stats()["prefixed_reads"] == before + 1:
                        break
                else:
                    pytest.fail(f"blocks {first}+{count} never went out unread")
            # the 5000-byte range goes from memory, never unread
            _warm(path)
            before = sn.node.stats()["prefixed_reads"]
            assert await (await c.start_read("0e0f.1", 6, 1)).blocks() == blocks[6:7]
            assert sn.node.stats()["prefixed_reads"] == before
            with open(path, "r+b") as f:  # a flipped byte, in the page cache the next read uses
                f.seek(fr.parse_header(f.read(4096)).header_len + 2 * (fr.BLOCK_PREFIX + 64 * 1024) + 77)
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ 1]))
            assert await (await c.start_read("0e0f.1", 0, 2)).blocks() == blocks[:2]  # before it: fine
            for _try in range(3):
                _warm(path)
                node_found = sn.node.stats()["corrupt_reads"]
                with pytest.raises(FragmentCorrupt) as caught:
                    await (await c.start_read("0e0f.1", 1, 3)).blocks()
                if caught.value.details.get("found_by") == "reader":
                    break
                # read the slow way after all (pages dropped): the node caught it itself
                assert sn.node.stats()["corrupt_reads"] == node_found + 1
            else:
                pytest.fail("the corrupt range never went out unread")
            assert caught.value.details["block"] == 2
            # the node sent it unread: it knows nothing yet
            assert sn.node.stats()["corrupt_reads"] == node_found
            await c.suspect("0e0f.1", 2)
            assert sn.node.stats()["corrupt_reads"] == node_found + 1 and suspects == ["0e0f.1"]
            # Not in the page cache: read and verified on the node (its own FragmentCorrupt).
            with open(path, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            before = sn.node.stats()["prefixed_reads"]
            with pytest.raises(FragmentCorrupt) as caught:
                await (await c.start_read("0e0f.1", 0, 4)).blocks()
            assert "found_by" not in caught.value.details
            assert sn.node.stats()["prefixed_reads"] == before
            assert sn.node.stats()["corrupt_reads"] == node_found + 2
            with pytest.raises(BadRequest):
                await c.suspect("../etc", 0)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("page_cache, from_cache", [("none", set()), ("data", {"0a1b.0"}),
                                                    ("all", {"0a1b.0", "0a1b.4"})])
async def test_what_stays_in_the_page_cache(anyio_backend, tmp_path, page_cache, from_cache):
    """``storage_page_cache``: "none" drops every fragment's pages once its commit is fsynced,
    "data" only a parity fragment's (index >= k: read only around a lost data fragment), "all"
    none. Whatever the policy, every fragment reads back the same; what was kept comes from the
    page cache (on the loop). (What was dropped mostly comes from the disk, but the kernel may
    hold a page back for a moment: see test_fragment.)"""
    blocks = [os.urandom(4096) for _ in range(32)]
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path, page_cache=page_cache)
        async with sn.client() as c:
            for fid in ("0a1b.0", "0a1b.4"):
                await c.append_many(fid, 0, blocks, block_bytes=4096, meta={"k": 4, "m": 2, "stripe": 16384})
                await c.commit(fid, len(blocks))
            assert sn.node.stats()["commits_uncached"] == 2 - len(from_cache)
            cached = set()
            for fid in ("0a1b.0", "0a1b.4"):
                for _try in range(3 if fid in from_cache else 1):
                    if fid in from_cache and _try:
                        # the kernel dropped kept pages (a loaded machine): bring them back
                        _warm(tmp_path / "s1" / fr.fragment_relpath(fid))
                    before = sn.node.stats()["cached_reads"]
                    assert await c.read(fid, 0, 4) == blocks[:4]
                    if sn.node.stats()["cached_reads"] > before:
                        cached.add(fid)
                        break
            assert from_cache <= cached
        tg.cancel_scope.cancel()



async def test_erasure_coded_object_across_nodes(anyio_backend, tmp_path):
    """Six nodes, a 4+2 object: lose two nodes, read it back from the other four."""
    scheme = ErasureScheme(k=4, m=2, stripe_bytes=64 * 1024)
    data = os.urandom(5 * scheme.stripe_bytes + 12345)
    n = stripe.stripe_count(scheme, len(data))
    async with anyio.create_task_group() as tg:
        nodes = [await start(tg, tmp_path, f"s{i}") for i in range(6)]
        async with contextlib.AsyncExitStack() as stack:  # clients own task groups: exit LIFO
            clients = [await stack.enter_async_context(r.client()) for r in nodes]
            for s in range(n):
                off = stripe.stripe_offset(scheme, s)
                blocks = stripe.encode(scheme, data[off:off + stripe.stripe_length(scheme, len(data), s)])
                async with anyio.create_task_group() as put:
                    for i, c in enumerate(clients):
                        put.start_soon(lambda c=c, i=i: c.append(f"o.f{i}", s, blocks[i],
                                                                 block_bytes=scheme.fragment_bytes))
            async with anyio.create_task_group() as put:
                for i, c in enumerate(clients):
                    put.start_soon(c.commit, f"o.f{i}", n)
            survivors = [1, 3, 4, 5]
            frags = {i: await clients[i].read(f"o.f{i}", 0, n) for i in survivors}
            out = b"".join(stripe.decode(scheme, {i: frags[i][s] for i in survivors},
                                         stripe.stripe_length(scheme, len(data), s)) for s in range(n))
            assert out == data
        tg.cancel_scope.cancel()


async def test_corrupt_block_on_disk(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        blocks = [os.urandom(1024) for _ in range(4)]
        async with sn.client() as c:
            for i, b in enumerate(blocks):
                await c.append("f", i, b, block_bytes=1024)
            await c.commit("f", 4)
            path = sn.node.path_of("f")
            raw = bytearray(path.read_bytes())
            header = fr.parse_header(bytes(raw), "f")
            raw[fr.slot_offset(header, 1) + fr.BLOCK_PREFIX + 500] ^= 0x80
            path.write_bytes(raw)
            with pytest.raises(FragmentCorrupt) as ei:
                await c.read("f", 1, 1)
            assert ei.value.details["block"] == 1 and ei.value.details["node"] == "s1"
            with pytest.raises(FragmentCorrupt):
                await c.read("f", 0, 4)
            assert await c.read("f", 2, 2) == blocks[2:]
            assert await c.read("f", 0, 1) == blocks[:1]
            # Truncate: blocks before the cut still serve.
            with open(path, "r+b") as f:
                f.truncate(fr.slot_offset(header, 3) + 5)
            with pytest.raises(FragmentCorrupt):
                await c.read("f", 3, 1)
            assert await c.read("f", 2, 1) == blocks[2:3]
        assert sn.node.stats()["corrupt_reads"] == 3
        tg.cancel_scope.cancel()


async def test_commit_abort_and_bad_requests(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        async with sn.client() as c:
            await c.append("g", 0, b"a" * 100, block_bytes=100)
            await c.append("g", 1, b"b" * 100, block_bytes=100)
            with pytest.raises(BadRequest) as ei:
                await c.commit("g", 3)
            assert ei.value.details["have"] == 2
            with pytest.raises(FragmentNotFound):
                await c.read("g", 0, 1)  # nothing visible before commit
            with pytest.raises(BadRequest, match="expected block 2"):
                await c.append("g", 5, b"x" * 100, block_bytes=100)
            assert await c.abort("g") is True
            assert not (tmp_path / "s1" / "tmp" / "g").exists()
            assert await c.abort("g") is False
            with pytest.raises(BadRequest, match="no upload"):
                await c.commit("g", 2)
            with pytest.raises(BadRequest, match="no upload"):
                await c.append("g", 1, b"x" * 100, block_bytes=100)
            # Re-sending block 0 starts an upload over.
            await c.append("h", 0, b"1" * 10, block_bytes=10)
            await c.append("h", 0, b"2" * 10, block_bytes=10)
            await c.commit("h", 1)
            assert await c.read("h") == [b"2" * 10]
            with pytest.raises(BadRequest):
                await c.read("h", 0, 2)
            for bad in ("", "..", "a/b", "x" * 201, "a\0b"):
                with pytest.raises(BadRequest):
                    await c.rpc.call("frag.read", {"fid": bad, "first": 0, "count": 1})
            with pytest.raises(BadRequest):
                await c.rpc.call("frag.append", {"fid": "z", "index": 0, "block_bytes": 10,
                                                 "lengths": [5, 6]}, b"x" * 10)
            with pytest.raises(BadRequest):
                await c.append("z", 0, b"x" * 11, block_bytes=10)
        tg.cancel_scope.cancel()


async def test_an_abort_while_block_0_creates_the_file_leaves_nothing(anyio_backend, tmp_path, monkeypatch):
    """An abort that lands while a block-0 append's worker thread is still creating the temp file
    (the gateway aborts at once after a failed hash, without waiting for the append it gave up
    on) reaches that upload all the same: the append fails, no temp file, no open upload."""
    from headwater.objstore.storage import daemon

    creating, release = anyio.Event(), threading.Event()

    class SlowDisk(fr.FragmentWriter):
        """A FragmentWriter whose creation takes until the test says (a disk under load)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            anyio.from_thread.run_sync(creating.set)
            release.wait(10)

    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        monkeypatch.setattr(daemon, "FragmentWriter", SlowDisk)
        async with sn.client() as c:
            outcome: list[BaseException | None] = []
            aborted: list[tuple[bool, list]] = []

            async def append() -> None:
                try:
                    await c.append("p", 0, b"a" * 10, block_bytes=10)
                    outcome.append(None)
                except BadRequest as e:
                    outcome.append(e)

            async def abort() -> None:
                answer = await c.abort("p")
                aborted.append((answer, list((tmp_path / "s1" / "tmp").iterdir())))

            async with anyio.create_task_group() as calls:
                calls.start_soon(append)
                await creating.wait()
                assert (tmp_path / "s1" / "tmp" / "p").exists()
                calls.start_soon(abort)
                await anyio.sleep(0.2)  # the abort is on the node, waiting for the file
                release.set()
            assert aborted == [(True, [])]  # answered once the file was gone
            assert list((tmp_path / "s1" / "tmp").iterdir()) == []
            assert sn.node.stats()["uploads_open"] == 0
            assert "aborted while it started" in str(outcome[0])
            with pytest.raises(BadRequest, match="no upload"):
                await c.append("p", 1, b"b" * 10, block_bytes=10)
        release.set()
        tg.cancel_scope.cancel()


async def test_concurrent_writers(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        expected = {}
        async with sn.client() as c:
            async def writer(w):
                fid = f"w{w}"
                blocks = [os.urandom(8192) for _ in range(10)] + [os.urandom(w + 1)]
                for i, b in enumerate(blocks):
                    await c.append(fid, i, b, block_bytes=8192)
                    await anyio.sleep(0)
                await c.commit(fid, len(blocks))
                expected[fid] = blocks

            async with anyio.create_task_group() as ws:
                for w in range(20):
                    ws.start_soon(writer, w)
            for fid, blocks in expected.items():
                assert await c.read(fid, 0, len(blocks)) == blocks
            assert (await c.info())["fragments"] == 20
        tg.cancel_scope.cancel()


async def test_big_blocks_append_many(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        bs = 4 * 1024 * 1024
        blocks = [os.urandom(bs) for _ in range(4)]
        async with sn.client() as c:
            await c.append_many("big", 0, blocks[:3], block_bytes=bs, meta={"x": 1})
            await c.append("big", 3, blocks[3], block_bytes=bs)
            await c.commit("big", 4)
            assert await c.read("big", 0, 4) == blocks
        tg.cancel_scope.cancel()


async def test_storage_full_keeps_node_up(anyio_backend, tmp_path, monkeypatch):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        async with sn.client() as c:
            await c.append("f", 0, b"a" * 10, block_bytes=10)
            real = fr.os.writev

            def full(fd, bufs):
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(fr.os, "writev", full)
            with pytest.raises(StorageFull):
                await c.append("f", 1, b"b" * 10, block_bytes=10)
            monkeypatch.setattr(fr.os, "writev", real)
            await c.append("f", 1, b"b" * 10, block_bytes=10)
            await c.commit("f", 2)
            assert await c.read("f", 0, 2) == [b"a" * 10, b"b" * 10]
        assert sn.node.stats()["storage_full"] == 1
        tg.cancel_scope.cancel()


async def test_gc_of_stale_temp_files(anyio_backend, tmp_path):
    now = [time.time()]  # a wall clock (temp files of a previous run are judged by mtime)
    node = StorageNode("s1", tmp_path / "s1", tmp_max_age_s=600, clock=lambda: now[0])
    await anyio.to_thread.run_sync(node.prepare)
    await node.append("stale", 0, [memoryview(b"x" * 10)], block_bytes=10)
    await node.append("fresh", 0, [memoryview(b"y" * 10)], block_bytes=10)
    # A temp file left by a previous run of the node (no upload in memory), old on disk.
    orphan = tmp_path / "s1" / "tmp" / "orphan"
    orphan.write_bytes(b"junk")
    os.utime(orphan, (now[0] - 7200, now[0] - 7200))
    now[0] += 300
    await node.append("fresh", 1, [memoryview(b"y" * 10)], block_bytes=10)
    now[0] += 400  # stale untouched for 700 s, fresh for 400 s
    removed = node.collect_garbage()
    assert sorted(removed) == ["orphan", "stale"]
    assert sorted(os.listdir(tmp_path / "s1" / "tmp")) == ["fresh"]
    with pytest.raises(BadRequest, match="no upload"):
        await node.append("stale", 1, [memoryview(b"x" * 10)], block_bytes=10)
    await node.commit("fresh", 2)
    assert await node.read("fresh", 0, 2) == [b"y" * 10, b"y" * 10]
    assert node.collect_garbage(now[0] + 10**6) == []
    assert node.stats()["tmp_collected"] == 2


async def test_unwritable_data_dir_fails_clearly(anyio_backend, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        cfg = StorageNodeConfig(id="s9", port=1, admin_port=2, data_dir=ro / "s9")
        with pytest.raises(StorageNodeError, match="not usable"):
            await run_storage_node(ClusterConfig(secret_env=TEST_SECRET_ENV), cfg, port=0)
    finally:
        ro.chmod(stat.S_IRWXU)


async def test_data_dir_is_a_file(anyio_backend, tmp_path):
    (tmp_path / "s9").write_bytes(b"")
    cfg = StorageNodeConfig(id="s9", port=1, admin_port=2, data_dir=tmp_path / "s9")
    with pytest.raises(StorageNodeError, match="not usable"):
        await run_storage_node(ClusterConfig(secret_env=TEST_SECRET_ENV), cfg, port=0)


async def test_restart_keeps_fragments(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        async with sn.client() as c:
            await c.append("keep", 0, b"k" * 50, block_bytes=50)
            await c.commit("keep", 1)
        tg.cancel_scope.cancel()
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        async with sn.client() as c:
            assert await c.read("keep") == [b"k" * 50]
            assert (await c.info())["fragments"] == 1
        tg.cancel_scope.cancel()


async def test_the_node_serves_its_unix_socket_and_a_local_client_writes_through_it(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start(tg, tmp_path)
        cfg = dataclasses.replace(node_config(tmp_path), port=sn.node.rpc_port)  # the port it serves
        assert cfg.rpc_socket.is_socket() and cfg.local_rpc_socket() == str(cfg.rpc_socket)
        assert cfg.rpc_socket.name == f"rpc-{sn.node.rpc_port}.sock"
        secret = cluster_secret(ClusterConfig(secret_env=TEST_SECRET_ENV))
        blocks = [os.urandom(256 * 1024) for _ in range(4)]
        async with StorageClient("s1", "127.0.0.1", sn.node.rpc_port, secret=secret,
                                 unix_path=cfg.local_rpc_socket()) as c:
            await c.append_many("obj9.p0.f0", 0, blocks, block_bytes=256 * 1024, meta={"k": 4})
            await c.commit("obj9.p0.f0", 4)
            assert await c.read("obj9.p0.f0", 0, 4) == blocks
            assert c.rpc.counters["unix_connects"] == 1
        tg.cancel_scope.cancel()
    assert not cfg.rpc_socket.exists()


async def test_a_node_told_not_to_serves_tcp_alone(anyio_backend, tmp_path):
    cluster = ClusterConfig(secret_env=TEST_SECRET_ENV, objstore=ObjstoreConfig(storage_unix_sockets=False))
    async with anyio.create_task_group() as tg:
        node = await tg.start(lambda task_status: run_storage_node(
            cluster, node_config(tmp_path), port=0, task_status=task_status))
        assert not list((tmp_path / "s1").glob("*.sock"))
        async with Running(tg, node).client() as c:
            await c.append("obj9.p0.f0", 0, b"abc", block_bytes=4)
        tg.cancel_scope.cancel()
