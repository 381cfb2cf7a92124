"""headwater.edge.store: the RAM tier and the disk tier (one process; several: functional)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from headwater.clock import FakeClock
from headwater.edge.store.api import AlreadyFilling, EntryAborted, EntryCorrupt, Hit, Store, Writer
from headwater.edge.store.disk import DiskSettings, DiskStore, charged
from headwater.edge.store.ram import RamStore

KiB = 1024


def body(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def put(store, key: bytes, data: bytes, meta: bytes = b"m") -> bool:
    w = store.begin(key, meta)
    for i in range(0, len(data), 7000):
        w.write(data[i : i + 7000])
    return w.commit()


async def read_all(hit) -> bytes:
    if hit.data is not None:
        return hit.data
    return b"".join([c async for c in hit.chunks()])


def body_files(d: Path) -> list[Path]:
    return [p for p in (d / "bodies").rglob("*") if p.is_file()]


# -- RAM ------------------------------------------------------------------------------------------


def test_ram_store_is_a_store_and_keeps_committed_entries_only() -> None:
    ram = RamStore(64 * KiB)
    assert isinstance(ram, Store)
    w = ram.begin(b"k", b"meta")
    assert isinstance(w, Writer)
    w.write(b"hello ")
    assert ram.get(b"k") is None  # not before commit
    w.write(b"world")
    assert w.commit()
    hit = ram.get(b"k")
    assert isinstance(hit, Hit)
    assert hit.data == b"hello world" and hit.info.meta == b"meta" and hit.complete
    assert hit.file_body() is None
    assert ram.update_meta(b"k", b"m2") and ram.get(b"k").info.meta == b"m2"
    assert ram.keys_matching(lambda k, m: m == b"m2") == [b"k"]
    assert ram.remove(b"k") and ram.get(b"k") is None and not ram.remove(b"k")
    w = ram.begin(b"a", b"")
    w.write(b"x")
    w.abort()
    assert ram.get(b"a") is None
    st = ram.stats()
    assert (st.commits, st.aborts, st.entries, st.bytes) == (1, 1, 0, 0)


def test_ram_store_stays_within_its_bytes_and_declines_large_entries() -> None:
    ram = RamStore(100 * KiB, max_entry_bytes=5 * KiB)
    for i in range(100):
        assert put(ram, b"k%d" % i, body(4 * KiB, i))
        assert ram.stats().bytes <= 100 * KiB
    st = ram.stats()
    assert st.evictions > 0 and st.entries == len([i for i in range(100) if ram.get(b"k%d" % i)])
    assert not put(ram, b"big", body(6 * KiB))
    assert ram.get(b"big") is None and ram.stats().declined == 1


def test_ram_store_charges_keys_and_metadata_so_empty_bodies_cannot_grow_it_without_bound() -> None:
    # Charged for bodies alone, 10,000 empty 404s under random 2 KiB paths were all kept
    # (~25 MiB of keys and metadata in a 64 KiB tier).
    ram = RamStore(64 * KiB)
    for i in range(10_000):
        put(ram, b"/random/%d/" % i + b"p" * 2048, b"", meta=b"m" * 400)
    st = ram.stats()
    assert st.entries <= 64 * KiB // 2048 and st.bytes <= 64 * KiB


@pytest.mark.anyio
async def test_ram_claim_collapses_and_waiters_get_the_committed_entry() -> None:
    ram = RamStore(64 * KiB)
    claim = ram.claim(b"k")
    assert claim is not None and ram.claim(b"k") is None
    with pytest.raises(AlreadyFilling):
        ram.begin(b"k", b"")
    got = []

    async def waiter() -> None:
        got.append(await ram.wait_filling(b"k", timeout=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        w = ram.begin(b"k", b"meta", claim=claim)
        w.write(b"body")
        w.commit()
    assert got[0].data == b"body"
    assert ram.claim(b"k") is not None  # released by the commit


# -- disk: one process ----------------------------------------------------------------------------


def settings(tmp_path: Path, **kw) -> DiskSettings:
    kw.setdefault("capacity_bytes", 1024 * KiB)
    kw.setdefault("block_bytes", 16 * KiB)
    kw.setdefault("max_entry_bytes", 256 * KiB)
    return DiskSettings(cache_dir=tmp_path / "cache", **kw)


@pytest.fixture
def disk(tmp_path: Path):
    store = DiskStore(settings(tmp_path))
    yield store
    store.close()


def test_small_disk_hit_is_verified_and_returned_as_bytes(disk: DiskStore) -> None:
    assert isinstance(disk, Store)
    assert disk.get(b"k") is None
    data = body(10 * KiB)
    assert put(disk, b"k", data, b"meta")
    hit = disk.get(b"k")
    assert hit.complete and hit.data == data and hit.info.meta == b"meta"
    assert hit.info.size == len(data)
    st = disk.stats()
    assert (st.hits, st.misses, st.entries, st.bytes, st.commits) == (1, 1, 1, charged(b"k", len(data)), 1)


@pytest.mark.anyio
async def test_large_disk_hit_streams_verified_blocks_ranges_and_file_bodies(disk: DiskStore) -> None:
    data = body(100 * KiB + 123)  # 7 blocks of 16 KiB, the last partial
    put(disk, b"big", data)
    hit = disk.get(b"big")
    assert hit.data is None and hit.complete
    assert await read_all(hit) == data
    hit = disk.get(b"big")
    assert b"".join([c async for c in hit.chunks(20_000, 30_000)]) == data[20_000:50_000]
    fb = disk.get(b"big").file_body(offset=40_000, length=10)
    try:
        assert (fb.offset, fb.length) == (40_000, 10)
        assert os.pread(fb.fd, fb.length, fb.offset) == data[40_000:40_010]
    finally:
        os.close(fb.fd)


def flip_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.mark.anyio
async def test_corrupt_bodies_are_dropped_and_never_served(disk: DiskStore) -> None:
    small, large = body(3 * KiB), body(80 * KiB, 5)
    put(disk, b"small", small)
    put(disk, b"large", large)
    files = {p.stat().st_size: p for p in body_files(disk.settings.cache_dir)}
    flip_byte(files[len(small)], 100)
    assert disk.get(b"small") is None  # verified before anything is returned
    assert disk.stats().corrupt_dropped == 1 and disk.stats().entries == 1
    assert not files[len(small)].exists()

    flip_byte(files[len(large)], 50 * KiB)  # block 3
    hit = disk.get(b"large")
    got = []
    with pytest.raises(EntryCorrupt):
        async for c in hit.chunks():
            got.append(c)
    assert b"".join(got) == large[: 48 * KiB]  # the good blocks before it, never the bad one
    assert disk.get(b"large") is None and not files[len(large)].exists()
    put(disk, b"large", large)  # refetched and stored again
    assert disk.get(b"large").file_body() is not None


def test_corrupt_large_body_is_caught_before_sendfile(disk: DiskStore) -> None:
    put(disk, b"k", body(64 * KiB))
    (f,) = body_files(disk.settings.cache_dir)
    flip_byte(f, 64 * KiB - 1)
    assert disk.get(b"k").file_body() is None
    assert disk.get(b"k") is None


def test_truncated_or_missing_body_is_a_miss(disk: DiskStore) -> None:
    put(disk, b"a", body(5 * KiB))
    put(disk, b"b", body(6 * KiB))
    fa, fb = sorted(body_files(disk.settings.cache_dir), key=lambda p: p.stat().st_size)
    os.truncate(fa, 100)
    fb.unlink()
    assert disk.get(b"a") is None and disk.get(b"b") is None
    assert disk.stats().entries == 0 and disk.stats().bytes == 0


def test_abort_and_declined_writes_leave_nothing(tmp_path: Path) -> None:
    store = DiskStore(settings(tmp_path, max_entry_bytes=20 * KiB))
    try:
        w = store.begin(b"k", b"")
        w.write(body(1000))
        w.abort()
        assert store.get(b"k") is None
        assert not put(store, b"big", body(21 * KiB))  # over the entry limit
        assert store.get(b"big") is None
        assert body_files(store.settings.cache_dir) == []
        assert store.claim(b"k") is not None and store.claim(b"big") is not None
        st = store.stats()
        assert (st.aborts, st.declined, st.entries) == (1, 1, 0)
    finally:
        store.close()


def test_claim_is_exclusive_until_released_or_its_lease_runs_out(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000.0)
    store = DiskStore(settings(tmp_path, lease_s=10.0), clock=clock)
    try:
        c = store.claim(b"k")
        assert c is not None and store.claim(b"k") is None
        with pytest.raises(AlreadyFilling):
            store.begin(b"k", b"")
        c.release()
        c2 = store.claim(b"k")
        assert c2 is not None
        clock.advance(11.0)  # its holder stopped renewing: the marker is dead
        c3 = store.claim(b"k")
        assert c3 is not None
        w = store.begin(b"k", b"meta", claim=c2)  # the old holder lost it: writes nothing
        w.write(b"stale")
        assert not w.commit()
        w = store.begin(b"k", b"meta", claim=c3)
        w.write(b"fresh")
        assert w.commit() and store.get(b"k").data == b"fresh"
    finally:
        store.close()


def test_remove_during_a_fill_keeps_the_fill_from_committing(disk: DiskStore) -> None:
    put(disk, b"k", b"old")
    w = disk.begin(b"k", b"")
    w.write(b"new")
    assert disk.remove(b"k")  # a purge
    assert not w.commit()
    assert disk.get(b"k") is None
    assert disk.update_meta(b"k", b"x") is False


def test_update_meta_and_keys_matching(disk: DiskStore) -> None:
    put(disk, b"/a/1", b"1", b"tag-a")
    put(disk, b"/b/1", b"2", b"tag-b")
    assert disk.update_meta(b"/a/1", b"tag-b")
    assert disk.get(b"/a/1").info.meta == b"tag-b"
    assert sorted(disk.keys_matching(lambda k, m: m == b"tag-b")) == [b"/a/1", b"/b/1"]
    assert disk.keys_matching(lambda k, m: k.startswith(b"/b/")) == [b"/b/1"]


@pytest.mark.anyio
async def test_a_reader_follows_a_growing_entry_until_commit(disk: DiskStore) -> None:
    data = body(70 * KiB, 3)
    w = disk.begin(b"k", b"meta")
    w.write(data[:10_000])
    hit = disk.get(b"k")
    assert isinstance(hit, Hit)
    assert hit is not None and not hit.complete and hit.info.meta == b"meta"
    ranged = disk.get(b"k")
    got = []
    got_range = []

    async def reader() -> None:
        got.append(b"".join([c async for c in hit.chunks()]))

    async def range_reader() -> None:
        got_range.append(b"".join([c async for c in ranged.chunks(30_000, 5_000)]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(range_reader)
        for i in range(10_000, len(data), 9_000):
            await anyio.sleep(0.005)
            w.write(data[i : i + 9_000])
        w.commit()
    assert got == [data]
    assert got_range == [data[30_000:35_000]]
    assert disk.stats().followed == 2


@pytest.mark.anyio
async def test_a_follower_sees_an_abort_and_never_gets_the_whole_body(disk: DiskStore) -> None:
    w = disk.begin(b"k", b"meta")
    w.write(body(20 * KiB))
    hit = disk.get(b"k")
    got = []

    async def reader() -> None:
        with pytest.raises(EntryAborted):
            async for c in hit.chunks():
                got.append(c)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.02)
        w.abort()
    assert len(b"".join(got)) < 20 * KiB  # the last piece is held back until the end is known


@pytest.mark.anyio
async def test_wait_filling_returns_the_growing_entry_or_none_when_the_fetch_fails(
    disk: DiskStore,
) -> None:
    claim = disk.claim(b"k")
    assert disk.get(b"k") is None  # claimed, nothing begun: a miss...
    assert disk.claim(b"k") is None  # ...whose fetcher exists
    results = []

    async def waiter(key: bytes) -> None:
        results.append(await disk.wait_filling(key, timeout=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, b"k")
        await anyio.sleep(0.01)
        w = disk.begin(b"k", b"meta", claim=claim)
        w.write(b"abc")
    assert not results[0].complete and results[0].info.meta == b"meta"
    w.commit()
    results[0].close()
    c = disk.claim(b"z")
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, b"z")
        await anyio.sleep(0.01)
        c.release()  # the upstream failed before any header
    assert results[1] is None
    assert await disk.wait_filling(b"none", timeout=0.01) is None


def test_restart_keeps_entries_and_cleans_orphans_dead_fills_and_lost_files(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000.0)
    s = settings(tmp_path)
    store = DiskStore(s, clock=clock)
    put(store, b"keep", body(5000), b"m1")
    put(store, b"lost", body(6000))
    w = store.begin(b"filling", b"")
    w.write(b"partial")  # never committed: the process "dies"
    store.close()
    (s.cache_dir / "bodies" / "ab").mkdir(exist_ok=True)
    (s.cache_dir / "bodies" / "ab" / "abababababababab").write_bytes(b"orphan")
    lost = [p for p in body_files(s.cache_dir) if p.stat().st_size == 6000]
    lost[0].unlink()
    clock.advance(s.lease_s + 1)  # the dead fill's lease has run out

    store = DiskStore(s, clock=clock, recover=False)
    try:
        assert store.recover() == {"dead_fills": 1, "bad_entries": 1, "orphans": 1}
        assert store.get(b"keep").data == body(5000)
        assert store.get(b"keep").info.meta == b"m1"
        assert store.get(b"lost") is None and store.get(b"filling") is None
        assert [p.stat().st_size for p in body_files(s.cache_dir)] == [5000]
        assert store.stats().bytes == charged(b"keep", 5000) and store.stats().entries == 1
    finally:
        store.close()


def test_size_bound_holds_and_the_evictor_keeps_hot_entries(tmp_path: Path) -> None:
    s = settings(tmp_path, capacity_bytes=200 * KiB, max_entry_bytes=10 * KiB, policy="s3fifo")
    store = DiskStore(s)
    try:
        hot = [b"hot%d" % i for i in range(8)]
        for k in hot:
            put(store, k, body(4 * KiB))
        assert store.run_once() == 0 and store.is_evictor
        for i in range(300):
            put(store, b"cold%d" % i, body(4 * KiB, i))
            if i % 10 == 0:
                for k in hot:  # the hot set is requested often
                    store.get(k)
                store.run_once()  # the daemon's background loop
            st = store.stats()
            assert st.bytes <= s.capacity_bytes
            if i % 50 == 0:  # (each entry is charged its key and a file's overhead besides its body)
                files = body_files(s.cache_dir)
                overhead = st.bytes - sum(p.stat().st_size for p in files)
                assert len(files) * charged(b"", 0) <= overhead <= len(files) * charged(b"cold000", 0)
        store.run_once()
        assert store.stats().bytes <= s.capacity_bytes * (1 - s.headroom)
        assert sum(store.get(k) is not None for k in hot) == len(hot)
        assert store.stats().evictions > 0
    finally:
        store.close()


def test_empty_bodies_under_random_keys_cannot_fill_the_disk_without_bound(tmp_path: Path) -> None:
    # Charged for bodies alone, 3,000 empty 404s under random paths were all kept in a 64 KiB
    # tier (3,000 files and index records, "bytes 0").
    s = settings(tmp_path, capacity_bytes=64 * KiB)
    store = DiskStore(s)
    try:
        for i in range(300):
            put(store, b"/random/%d/" % i + b"p" * 400, b"", b"m" * 400)
        assert store.stats().entries <= 64 * KiB // charged(b"", 0)
        assert len(body_files(s.cache_dir)) == store.stats().entries
    finally:
        store.close()


def test_without_an_evictor_the_hard_bound_evicts_oldest_first(tmp_path: Path) -> None:
    s = settings(tmp_path, capacity_bytes=10 * charged(b"k10", 4 * KiB), max_entry_bytes=10 * KiB)
    store = DiskStore(s)  # run_once never called: nobody runs the policy
    try:
        for i in range(20):
            put(store, b"k%d" % i, body(4 * KiB))
            assert store.stats().bytes <= s.capacity_bytes
        assert [i for i in range(20) if store.get(b"k%d" % i) is not None] == list(range(10, 20))
    finally:
        store.close()


def test_a_writer_renews_its_lease_as_it_writes(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000.0)
    store = DiskStore(settings(tmp_path, lease_s=9.0), clock=clock)
    try:
        w = store.begin(b"k", b"")
        for _ in range(5):  # 20 s of a slow upstream, a write every 4 s
            clock.advance(4.0)
            w.write(b"x" * 100)
            assert store.claim(b"k") is None  # still alive: nobody takes it over
        clock.advance(10.0)  # then silence past the lease: dead
        assert store.claim(b"k") is not None
        assert not w.commit()
    finally:
        store.close()


def test_a_refill_leaves_the_old_entry_served_until_it_commits(disk: DiskStore) -> None:
    put(disk, b"k", b"old")
    w = disk.begin(b"k", b"new-meta")
    w.write(b"new")
    assert disk.get(b"k").data == b"old"  # stale-while-revalidate keeps serving the old one
    assert w.commit()
    assert disk.get(b"k").data == b"new" and disk.stats().bytes == charged(b"k", 3)
    assert len(body_files(disk.settings.cache_dir)) == 1  # the old body file is gone


def test_a_full_journal_makes_the_evictor_rebuild_from_the_index(tmp_path: Path) -> None:
    s = settings(
        tmp_path, capacity_bytes=100 * KiB, max_entry_bytes=5 * KiB, journal_max=5,
        hit_flush_count=10_000, hit_flush_interval_s=10_000,
    )
    store = DiskStore(s)
    try:
        for i in range(40):  # no evictor yet: the journal fills at 5 records, then overflows
            put(store, b"k%d" % i, body(4 * KiB))
        store.run_once()  # the new evictor rebuilds from the index and evicts to its target
        assert store.is_evictor
        assert store.stats().bytes <= s.capacity_bytes * (1 - s.headroom)
        for _ in range(3):
            for i in range(40):
                store.get(b"k%d" % i)
        store.flush_hits()  # more hits than the journal holds: records dropped, overflow noted
        with store._env.begin() as txn:
            assert store._int(txn, store._state, b"overflow") == 1
        store.run_once()
        with store._env.begin() as txn:
            assert store._int(txn, store._state, b"overflow") == 0
            assert txn.stat(store._journal)["entries"] == 0
        assert sorted(store._evictor.policy.keys()) == sorted(store.keys_matching(lambda k, m: True))
        assert store.stats().entries >= 10
    finally:
        store.close()


@pytest.mark.anyio
async def test_the_daemons_disk_upkeep_runs_the_policy(tmp_path: Path) -> None:
    # The edge daemon's DiskUpkeep loop is what makes a worker the evictor: before it existed no
    # worker ever ran DiskStore.run_once, and every disk tier evicted oldest-first at its hard
    # bound (test_without_an_evictor_the_hard_bound_evicts_oldest_first) whatever its policy.
    from headwater.edge.daemon import DiskUpkeep

    s = settings(tmp_path, capacity_bytes=200 * KiB, max_entry_bytes=10 * KiB, policy="s3fifo")
    store = DiskStore(s)
    upkeep = DiskUpkeep(store, clock=FakeClock())
    try:
        hot = [b"hot%d" % i for i in range(8)]
        for k in hot:
            put(store, k, body(4 * KiB))
        await upkeep.run_once()
        assert store.is_evictor
        for i in range(300):
            put(store, b"cold%d" % i, body(4 * KiB, i))
            if i % 10 == 0:
                for k in hot:
                    store.get(k)
                await upkeep.run_once()
        await upkeep.run_once()
        assert sum(store.get(k) is not None for k in hot) == len(hot)
        assert store.stats().bytes <= s.capacity_bytes * (1 - s.headroom)
    finally:
        store.close()


def test_a_ram_hit_is_weakly_referable_and_goes_with_its_entry():
    """The edge's warm-hit memo holds a RamHit weakly: an evicted or removed entry's body must
    not stay alive through it."""
    import weakref

    store = RamStore(1 << 20)
    w = store.begin(b"k", b"meta")
    w.write(b"x" * 100)
    assert w.commit()
    hit = store.get(b"k")
    ref = weakref.ref(hit)
    assert store.get(b"k") is hit and ref() is hit  # one RamHit per entry, shared by its hits
    del hit
    assert ref() is not None  # the entry keeps it
    assert store.remove(b"k")
    assert ref() is None
