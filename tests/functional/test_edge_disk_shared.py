"""The disk tier shared by real processes on one cache_dir, as a POP's workers share it.

Each test starts worker processes (multiprocessing, forkserver with the store preloaded, so a
process starts in milliseconds) that open their own DiskStore on the same directory.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import anyio
import pytest

from headwater.edge.store.api import EntryAborted
from headwater.edge.store.disk import DiskSettings, DiskStore, charged

KiB = 1024
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["headwater.edge.store.disk"])
WAIT = 20.0  # seconds: only reached when something is broken


@pytest.fixture
def anyio_backend():
    """The store's waits are plain clock sleeps: one backend is enough here (both: unit tests)."""
    return "asyncio"


def body(n: int, seed: int) -> bytes:
    return (bytes(range(seed % 251, 256)) + bytes(range(256)) * (n // 256 + 2))[:n]


def settings(cache_dir: str, capacity: int, **kw) -> DiskSettings:
    kw.setdefault("block_bytes", 16 * KiB)
    kw.setdefault("max_entry_bytes", 64 * KiB)
    return DiskSettings(cache_dir=Path(cache_dir), capacity_bytes=capacity, **kw)


# -- what the worker processes do ---------------------------------------------------------------


def write_keys(cache_dir: str, capacity: int, prefix: str, n: int, q) -> None:
    """Write n entries (sizes vary), running the background loop as a daemon would."""
    store = DiskStore(settings(cache_dir, capacity))
    try:
        for i in range(n):
            data = body(1000 + 997 * i % (40 * KiB), i)
            w = store.begin(f"{prefix}{i}".encode(), prefix.encode())
            for j in range(0, len(data), 8 * KiB):
                w.write(data[j : j + 8 * KiB])
            assert w.commit()
            if i % 8 == 0:
                store.run_once()
            assert store.stats().bytes <= capacity
        store.run_once()
        q.put((prefix, "ok", store.is_evictor))
    except BaseException as e:  # reported to the test, which fails with it
        q.put((prefix, repr(e), False))
    finally:
        store.close()


def slow_writer(cache_dir: str, key: bytes, pieces: int, reader_has_bytes, q) -> None:
    """Begin an entry, write one piece, wait until a reader has streamed it, write the rest."""
    store = DiskStore(settings(cache_dir, 4096 * KiB, max_entry_bytes=1024 * KiB))
    try:
        w = store.begin(key, b"meta")
        w.write(body(10 * KiB, 0))
        q.put("begun")
        if not reader_has_bytes.wait(WAIT):
            q.put("the reader never got the first bytes")
            return
        for i in range(1, pieces):
            time.sleep(0.005)
            w.write(body(10 * KiB, i))
        w.commit()
        q.put("committed")
    finally:
        store.close()


def hanging_writer(cache_dir: str, key: bytes, q) -> None:
    """Begin an entry, write half of it and hang (the test kills this process)."""
    store = DiskStore(settings(cache_dir, 4096 * KiB, max_entry_bytes=1024 * KiB))
    store.run_once()  # the first worker becomes the evictor
    w = store.begin(key, b"meta")
    w.write(body(30 * KiB, 1))
    q.put(("half", store.is_evictor))
    time.sleep(WAIT)


def read_key(cache_dir: str, key: bytes, q) -> None:
    """Report what a get of key gives in a fresh process: bytes, or None for a miss."""
    store = DiskStore(settings(cache_dir, 4096 * KiB))
    try:
        hit = store.get(key)
        q.put(None if hit is None else hit.data)
    finally:
        store.close()


def collapse_worker(cache_dir: str, keys: int, barrier, q) -> None:
    """For each key, as a POP worker does on a miss: claim and fetch it, or follow the fetcher."""
    store = DiskStore(settings(cache_dir, 4096 * KiB, max_entry_bytes=1024 * KiB))
    fetched, read = [], {}

    async def main() -> None:
        for k in range(keys):
            key = b"obj%d" % k
            barrier.wait(WAIT)  # every worker misses on the same key at the same moment
            while True:
                hit = store.get(key)
                if hit is None:
                    claim = store.claim(key)
                    if claim is not None:
                        fetched.append(k)  # "the origin fetch"
                        w = store.begin(key, b"meta", claim=claim)
                        for i in range(4):
                            w.write(body(5 * KiB, k + i))
                            await anyio.sleep(0.002)
                        w.commit()
                        break
                    hit = await store.wait_filling(key, timeout=WAIT)
                    if hit is None:
                        continue
                if hit.data is not None:
                    read[k] = hit.data
                else:
                    read[k] = b"".join([c async for c in hit.chunks()])
                break

    try:
        anyio.run(main)
        q.put((fetched, read))
    finally:
        store.close()


def run(target, *args, timeout: float = WAIT) -> list:
    """Run target in a worker process; what it put on its queue."""
    q = CTX.Queue()
    p = CTX.Process(target=target, args=(*args, q))
    p.start()
    p.join(timeout)
    assert p.exitcode == 0, f"{target.__name__} exited with {p.exitcode}"
    out = []
    while not q.empty():
        out.append(q.get())
    return out


def whole(hit) -> bytes:
    """A complete hit's body, read the way sendfile would get it (verified first)."""
    if hit.data is not None:
        return hit.data
    fb = hit.file_body()
    try:
        return os.pread(fb.fd, fb.length, fb.offset)
    finally:
        os.close(fb.fd)


def files_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in (cache_dir / "bodies").rglob("*") if p.is_file())


def charged_bytes(store: DiskStore) -> int:
    """What the store charges its entries (body, key, a file's overhead): its stats' bytes."""
    return sum(charged(k, store.get(k).info.size) for k in store.keys_matching(lambda k, m: True))


# -- the tests ----------------------------------------------------------------------------------


def test_concurrent_writers_of_different_keys_and_the_size_bound(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    capacity = 300 * KiB  # far less than the ~1.2 MiB the three write: eviction under load
    q = CTX.Queue()
    procs = [
        CTX.Process(target=write_keys, args=(cache, capacity, p, 40, q)) for p in ("a", "b", "c")
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=WAIT) for _ in procs]
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    assert sorted(r[:2] for r in results) == [("a", "ok"), ("b", "ok"), ("c", "ok")]
    store = DiskStore(settings(cache, capacity))
    try:
        st = store.stats()
        # What is asserted is the bound and that whatever survived is whole. How much survives
        # a write-only scan from three processes is up to S3-FIFO's probation queue: usually a
        # few entries, but runs that end with none have been seen (now and then since the
        # entries' overhead is charged); that is for the next look at cross-process eviction.
        assert st.bytes <= capacity
        assert files_bytes(Path(cache)) == sum(store.get(k).info.size for k in store.keys_matching(lambda k, m: True))
        assert charged_bytes(store) == st.bytes  # no file outlives its entry
        held = 0
        for prefix in "abc":
            for i in range(40):
                hit = store.get(f"{prefix}{i}".encode())
                if hit is not None:  # whatever survived is whole and verified
                    held += 1
                    assert whole(hit) == body(1000 + 997 * i % (40 * KiB), i)
                    assert hit.info.meta == prefix.encode()
        assert held == st.entries
    finally:
        store.close()


def test_concurrent_misses_in_three_processes_cause_one_fetch_each(tmp_path: Path) -> None:
    cache, keys = str(tmp_path / "cache"), 15
    barrier, q = CTX.Barrier(3), CTX.Queue()
    procs = [CTX.Process(target=collapse_worker, args=(cache, keys, barrier, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=WAIT) for _ in procs]
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    fetches = sorted(k for fetched, _ in results for k in fetched)
    assert fetches == list(range(keys))  # exactly one fetch per key, whoever made it
    for _, read in results:  # every other worker read the fetcher's body, whole
        for k, data in read.items():
            assert data == b"".join(body(5 * KiB, k + i) for i in range(4))
    assert sum(len(read) for _, read in results) == 2 * keys


@pytest.mark.anyio
async def test_a_reader_streams_an_entry_another_process_is_writing(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    reader_has_bytes = CTX.Event()
    q = CTX.Queue()
    writer = CTX.Process(target=slow_writer, args=(cache, b"seg", 12, reader_has_bytes, q))
    writer.start()
    assert q.get(timeout=WAIT) == "begun"
    store = DiskStore(settings(cache, 4096 * KiB))
    try:
        assert store.claim(b"seg") is None  # the writer holds the in-flight marker
        hit = await store.wait_filling(b"seg", timeout=WAIT)
        assert hit is not None and not hit.complete and hit.info.meta == b"meta"
        got = []
        async for piece in hit.chunks():
            got.append(piece)
            reader_has_bytes.set()  # the writer goes on only once we streamed its first bytes
        assert b"".join(got) == b"".join(body(10 * KiB, i) for i in range(12))
        assert q.get(timeout=WAIT) == "committed"
        writer.join(WAIT)
        done = store.get(b"seg")
        assert done.complete and await _read(done) == b"".join(got)
    finally:
        store.close()


async def _read(hit) -> bytes:
    return hit.data if hit.data is not None else b"".join([c async for c in hit.chunks()])


@pytest.mark.anyio
async def test_a_writer_killed_mid_write_leaves_nothing_servable(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    q = CTX.Queue()
    writer = CTX.Process(target=hanging_writer, args=(cache, b"seg", q))
    writer.start()
    assert q.get(timeout=WAIT) == ("half", True)
    store = DiskStore(settings(cache, 4096 * KiB))
    try:
        store.run_once()
        assert not store.is_evictor  # one evictor per cache_dir
        follower = store.get(b"seg")
        assert follower is not None and not follower.complete
        got = []

        async def follow() -> None:
            with pytest.raises(EntryAborted):
                async for piece in follower.chunks():
                    got.append(piece)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.05)
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(WAIT)
        assert len(b"".join(got)) < 30 * KiB  # never the whole of what was written, as if whole
        assert store.get(b"seg") is None  # a dead fetcher's entry is no hit
        claim = store.claim(b"seg")  # nor does it block the next fetch (its pid is gone)
        assert claim is not None
        claim.release()
        store.run_once()
        assert store.is_evictor  # the dead evictor's flock went with it: taken over
        store.recover()
        assert files_bytes(Path(cache)) == 0  # its .part file is gone
    finally:
        store.close()
    assert run(read_key, cache, b"seg") == [None]


def test_restart_keeps_entries_and_a_flipped_byte_is_dropped(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    assert run(write_keys, cache, 4096 * KiB, "r", 6) == [("r", "ok", True)]
    # A new process after the writer exited (a restarted worker) finds every entry.
    assert run(read_key, cache, b"r3") == [body(1000 + 997 * 3, 3)]
    files = sorted((p for p in (Path(cache) / "bodies").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    victim = files[-1]  # the largest body: r5
    with open(victim, "r+b") as f:
        f.seek(1234)
        b = f.read(1)
        f.seek(1234)
        f.write(bytes([b[0] ^ 0x80]))
    assert run(read_key, cache, b"r5") == [None]  # detected in another process, dropped
    assert not victim.exists()
    assert run(read_key, cache, b"r4") == [body(1000 + 997 * 4, 4)]
