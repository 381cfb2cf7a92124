"""The digest lane of ``LayoutWriter`` against real storage nodes on loopback: every hash sees
every byte, in order, on a worker thread, never the loop's (a slow hash included, which the
writer waits for rather than outrunning by more than the lane's backlog); a hash that fails
fails the write and leaves no fragment behind, committed or temporary.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import anyio
import pytest
from headwater.objstore.config import ErasureScheme
from headwater.objstore.datapath import DIGEST_BACKLOG_BATCHES, WRITE_BATCH_BYTES, LayoutWriter, StoragePool

from tests.functional.test_handoff_writes import start_nodes
from tests.functional.test_repair import read_back

pytestmark = pytest.mark.anyio

KiB = 1024
SCHEME = ErasureScheme(k=2, m=1, stripe_bytes=64 * KiB)


def pieces(body: bytes) -> list[bytes]:
    """``body`` cut at uneven offsets, so stripes straddle the writes."""
    out, i, step = [], 0, 1
    while i < len(body):
        out.append(body[i:i + step])
        i += step
        step = step * 3 % 200_003 + 1
    return out


class SlowHash:
    """A SHA-256 at ~6 MB/s (10 ms per 64 KiB stripe), far behind the writer, that counts what
    it has seen."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.seen = 0
        self.threads: set[int] = set()

    def update(self, data) -> None:
        self.threads.add(threading.get_ident())
        time.sleep(0.01)
        self.h.update(data)
        self.seen += len(data)


async def test_every_lane_sees_every_byte_in_order(tmp_path):
    body = os.urandom(4 * WRITE_BATCH_BYTES + 7 * SCHEME.stripe_bytes + 77)
    md5, sha, slow = hashlib.md5(), hashlib.sha256(), SlowHash()
    async with anyio.create_task_group() as tg:
        cluster, _nodes, _ = await start_nodes(tg, tmp_path, n=3)
        async with StoragePool(cluster, probe_interval_s=3600) as pool:
            async with LayoutWriter(pool, SCHEME, digests=(md5.update, sha.update, slow.update)) as w:
                written = lag = 0
                for p in pieces(body):
                    await w.write(p)
                    written += len(p)
                    # The slow lane holds back the writer: never more behind than the batch its
                    # thread hashes, its queue (the backlog), the batch cut since (whose put
                    # waits), the bytes not a whole stripe yet, and this write.
                    backlog = DIGEST_BACKLOG_BATCHES * WRITE_BATCH_BYTES
                    assert written - slow.seen <= backlog + 2 * WRITE_BATCH_BYTES + SCHEME.stripe_bytes + len(p)
                    lag = max(lag, written - slow.seen)
                # It did fall behind, past its backlog and the batch it was hashing.
                assert lag > DIGEST_BACKLOG_BATCHES * WRITE_BATCH_BYTES + WRITE_BATCH_BYTES
                lay = await w.finish()
            assert md5.digest() == hashlib.md5(body).digest()
            assert sha.digest() == hashlib.sha256(body).digest()
            assert slow.h.digest() == hashlib.sha256(body).digest() and slow.seen == len(body)
            assert slow.threads and threading.get_ident() not in slow.threads
            assert await read_back(pool, lay) == body
        tg.cancel_scope.cancel()


class Broken(Exception):
    pass


async def test_a_failing_hash_fails_the_write_and_leaves_nothing(tmp_path):
    body = os.urandom(WRITE_BATCH_BYTES + 3 * SCHEME.stripe_bytes)
    calls = 0

    def breaks(data) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Broken("hash failed")

    sha = hashlib.sha256()
    async with anyio.create_task_group() as tg:
        cluster, nodes, _ = await start_nodes(tg, tmp_path, n=3)
        async with StoragePool(cluster, probe_interval_s=3600) as pool:
            with pytest.raises(Broken):
                async with LayoutWriter(pool, SCHEME, digests=(sha.update, breaks)) as w:
                    for i in range(0, len(body), 100_000):
                        await w.write(body[i:i + 100_000])
                    await w.finish()
        assert calls >= 3
        for n in nodes:
            assert n.fragment_count == 0
            assert [f for f in n.frags_dir.rglob("*") if f.is_file()] == [] and list(n.tmp_dir.iterdir()) == []
        tg.cancel_scope.cancel()
