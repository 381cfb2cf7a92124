"""Handoff writes against real storage nodes on loopback: a node lost in the middle of a write
(after its first batch of stripes, or at the commit) is replaced in the same write by a handoff
node, which gets the blocks the lost node had taken rebuilt from the upload's other fragments;
the layout names the handoff node and marks the fragment's home; the object reads back exact
with the handoff node's fragment among the k read. The reconstructor's move home never undoes
an overwrite that raced it.

The metadata ring is the dict stand-in of ``test_repair`` (the ring has its own tests, and
``test_s3_handoff`` runs the whole cluster).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest
from headwater.objstore.config import ErasureScheme, StorageNodeConfig
from headwater.objstore.datapath import WRITE_BATCH_BYTES, LayoutWriter, StoragePool
from headwater.objstore.records import BUCKETS_NS, Layout, objects_ns
from headwater.objstore.repair.reconstructor import Reconstructor
from headwater.objstore.storage.daemon import StorageNode, run_storage_node

from headwater.clock import FakeClock
from headwater.config import ClusterConfig
from tests.cluster import TEST_SECRET_ENV
from tests.functional.test_repair import DictMeta, all_verify, read_back

pytestmark = pytest.mark.anyio

KiB = 1024
SCHEME = ErasureScheme(k=2, m=1, stripe_bytes=64 * KiB)


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def start_nodes(tg, tmp_path: Path, n: int = 5):
    """``n`` storage nodes, each stoppable on its own: (cluster, nodes, stop scopes by id)."""
    nodes: list[StorageNode] = []
    scopes: dict[str, anyio.CancelScope] = {}
    for i in range(n):
        cfg = StorageNodeConfig(id=f"s{i + 1}", port=1, admin_port=2, data_dir=tmp_path / f"s{i + 1}")
        scope = anyio.CancelScope()
        scopes[cfg.id] = scope

        async def run(task_status, cfg=cfg, scope=scope):
            with scope:
                await run_storage_node(ClusterConfig(secret_env=TEST_SECRET_ENV), cfg, port=0,
                                       task_status=task_status)

        nodes.append(await tg.start(run))
    storage = tuple(StorageNodeConfig(id=sn.id, port=sn.rpc_port, admin_port=2, data_dir=sn.data_dir)
                    for sn in nodes)
    return ClusterConfig(secret_env=TEST_SECRET_ENV, storage=storage), nodes, scopes


def record(meta: DictMeta, key: str, lay: Layout, bucket: str = "b") -> None:
    meta.data.setdefault(BUCKETS_NS, {})[bucket] = {"name": bucket}
    meta.data.setdefault(objects_ns(bucket), {})[key] = {"key": key, "size": lay.size, "layouts": [lay.to_value()]}


async def test_a_node_lost_after_the_first_batch_is_replaced_in_the_same_write(tmp_path):
    body = os.urandom(WRITE_BATCH_BYTES + 5 * SCHEME.stripe_bytes + 123)  # two batches
    async with anyio.create_task_group() as tg:
        cluster, nodes, scopes = await start_nodes(tg, tmp_path)
        by_id = {n.id: n for n in nodes}
        async with StoragePool(cluster, probe_interval_s=3600) as pool:
            async with LayoutWriter(pool, SCHEME) as w:
                assert w.nodes == w.homes  # every home up
                victim = w.homes[0]  # a data fragment: the rebuild decodes from parity
                await w.write(body[:WRITE_BATCH_BYTES])  # the first batch goes out
                await w.write(body[WRITE_BATCH_BYTES:WRITE_BATCH_BYTES + 1])
                scopes[victim].cancel()
                await anyio.sleep(0.05)
                await w.write(body[WRITE_BATCH_BYTES + 1:])
                lay = await w.finish()
            assert victim not in lay.nodes and None not in lay.nodes and len(set(lay.nodes)) == 3
            assert lay.away == {0: victim} and lay.homes[0] == victim
            assert pool.stats["handoff_writes"] == 1 and pool.stats["degraded_writes"] == 0
            assert victim in pool.down()
            handoff = by_id[lay.nodes[0]]
            all_verify(handoff, lay.fid(0), lay.stripes)  # every block, the rebuilt ones too
            # Read with the handoff node's fragment needed (fragment 0 is a data fragment).
            assert await read_back(pool, lay) == body
            by_id[lay.nodes[1]].path_of(lay.fid(1)).unlink()
            assert await read_back(pool, lay) == body
        tg.cancel_scope.cancel()


async def test_a_node_lost_at_the_commit_is_replaced_with_the_whole_fragment(tmp_path):
    body = os.urandom(7 * SCHEME.stripe_bytes + 9)
    async with anyio.create_task_group() as tg:
        cluster, nodes, scopes = await start_nodes(tg, tmp_path)
        by_id = {n.id: n for n in nodes}
        async with StoragePool(cluster, probe_interval_s=3600) as pool:
            async with LayoutWriter(pool, SCHEME) as w:
                victim = w.homes[2]  # the parity fragment
                await w.write(body)
                await w._flush()  # every stripe on the nodes, nothing committed
                await w._drain()
                scopes[victim].cancel()
                await anyio.sleep(0.05)
                lay = await w.finish()
            assert lay.away == {2: victim} and victim not in lay.nodes and None not in lay.nodes
            all_verify(by_id[lay.nodes[2]], lay.fid(2), lay.stripes)
            by_id[lay.nodes[1]].path_of(lay.fid(1)).unlink()  # read with the handoff copy needed
            assert await read_back(pool, lay) == body
        tg.cancel_scope.cancel()


async def test_a_known_down_home_is_handed_off_and_moved_home_unless_overwritten(tmp_path):
    async with anyio.create_task_group() as tg:
        cluster, nodes, _scopes = await start_nodes(tg, tmp_path)
        by_id = {n.id: n for n in nodes}
        meta = DictMeta()
        async with StoragePool(cluster, probe_interval_s=3600) as pool:
            bodies: dict[str, bytes] = {}
            handed: dict[str, Layout] = {}
            # s1 is down in this gateway's eyes: an object whose home it is gets a handoff node
            # (3 homes of 5 nodes: 3 in 5 objects; 40 tries all missing is 0.4**40).
            for n in range(40):
                pool.mark_down("s1")
                body = os.urandom(3 * SCHEME.stripe_bytes + 17)
                async with LayoutWriter(pool, SCHEME) as w:
                    await w.write(body)
                    lay = await w.finish()
                assert "s1" not in lay.nodes and None not in lay.nodes
                if lay.away:
                    assert list(lay.away.values()) == ["s1"]
                    key = ("kept", "raced")[len(handed)]
                    bodies[key], handed[key] = body, lay
                    record(meta, key, lay)
                    if len(handed) == 2:
                        break
            assert len(handed) == 2
            pool.mark_up("s1")
            clock = FakeClock(autojump=True)
            recon = Reconstructor(cluster, meta, pool, rate_bytes_s=1 << 30, clock=clock)
            # "raced" is overwritten between the reconstructor's read and its write.
            real_put = meta.put

            async def racing_put(ns, key, value, *, if_match=None, **kw):
                if key == "raced" and if_match is not None:
                    cur = dict(meta.data[ns][key])
                    cur["etag"] = "overwritten"
                    cur["layouts"] = [Layout(oid="new", size=1, k=2, m=1, stripe_bytes=SCHEME.stripe_bytes,
                                             nodes=("s2", "s3", "s4")).to_value()]
                    meta.data[ns][key] = cur
                return await real_put(ns, key, value, if_match=if_match, **kw)

            meta.put = racing_put  # type: ignore[method-assign]
            await recon.run_once()
            assert recon.stats()["fragments_moved_home"] == 1
            assert recon.stats()["homecomings_abandoned"] == 1
            for key, lay in handed.items():
                (i, home), = lay.away.items()
                now = meta.data["obj/b"][key]
                if key == "raced":
                    assert now["etag"] == "overwritten"  # never clobbered
                    assert not by_id[home].path_of(lay.fid(i)).exists()  # its home copy removed
                else:
                    new = Layout.from_value(now["layouts"][0])
                    assert new.nodes[i] == home and new.away == {} and "homes" not in now["layouts"][0]
                    all_verify(by_id[home], lay.fid(i), lay.stripes)
                    assert not by_id[lay.nodes[i]].path_of(lay.fid(i)).exists()  # handoff copy gone
                    by_id[new.nodes[(i + 1) % 3]].path_of(lay.fid((i + 1) % 3)).unlink()
                    assert await read_back(pool, new) == bodies[key]  # the home copy is read
        tg.cancel_scope.cancel()


async def test_a_write_cancelled_while_a_node_commits_leaves_nothing(tmp_path, monkeypatch):
    """The client goes away while the fragments are being committed: the commit a node is
    running goes on to its rename (it is shielded there), after the writer's clean-up has been
    sent. The delete of that fragment must come after the rename, not race it (it found
    nothing, and the fragment committed a moment later stayed until the garbage collector)."""
    committing, release = anyio.Event(), threading.Event()
    real = StorageNode._commit_writer

    def slow_commit(self, writer, dest, nblocks):
        if self.id == "s1":  # one node's disk is slow to fsync
            anyio.from_thread.run_sync(committing.set)
            release.wait(10)
        return real(self, writer, dest, nblocks)

    monkeypatch.setattr(StorageNode, "_commit_writer", slow_commit)
    body = os.urandom(3 * SCHEME.stripe_bytes + 5)
    async with anyio.create_task_group() as tg:
        cluster, nodes, _ = await start_nodes(tg, tmp_path, n=3)
        async with StoragePool(cluster, probe_interval_s=3600) as pool:
            async def client_goes_away(scope: anyio.CancelScope) -> None:
                await committing.wait()
                scope.cancel()
                await anyio.sleep(0.3)  # the clean-up reaches s1 while its commit is held
                release.set()

            with anyio.CancelScope() as scope:
                async with LayoutWriter(pool, SCHEME) as w:
                    tg.start_soon(client_goes_away, scope)
                    await w.write(body)
                    await w.finish()
            assert scope.cancelled_caught
        release.set()
        for n in nodes:
            assert [f for f in n.frags_dir.rglob("*") if f.is_file()] == [] and list(n.tmp_dir.iterdir()) == []
            assert n.fragment_count == 0
        tg.cancel_scope.cancel()


async def test_a_part_away_from_home_stays_until_its_upload_completes(tmp_path):
    """A part of a multipart upload in progress was handed off. CompleteMultipartUpload reads
    the part's record (its layout, naming the handoff node) and writes the object's record from
    it, with no condition on the part record. Had the reconstructor moved the fragment home in
    between (part record rewritten, handoff copy deleted at once), the object's record would
    name a deleted fragment. So parts' fragments come home only once they are an object's: the
    next pass after the Complete moves it, by a compare-and-swap on the object's record."""
    from headwater.objstore.records import parts_ns, upload_key, uploads_ns

    async with anyio.create_task_group() as tg:
        cluster, nodes, _scopes = await start_nodes(tg, tmp_path)
        by_id = {n.id: n for n in nodes}
        meta = DictMeta()
        async with StoragePool(cluster, probe_interval_s=3600) as pool:
            for _ in range(40):  # 3 homes of 5 nodes: 40 tries all missing s1 is 0.4**40
                pool.mark_down("s1")
                body = os.urandom(2 * SCHEME.stripe_bytes + 5)
                async with LayoutWriter(pool, SCHEME) as w:
                    await w.write(body)
                    lay = await w.finish()
                if lay.away:
                    break
            (i, home), = lay.away.items()
            handoff = lay.nodes[i]
            pool.mark_up("s1")
            meta.data.setdefault(BUCKETS_NS, {})["b"] = {"name": "b"}
            meta.data.setdefault(uploads_ns("b"), {})[upload_key("mp", "u1")] = {"key": "mp", "upload_id": "u1"}
            meta.data.setdefault(parts_ns("b", "u1"), {})["00001"] = {"n": 1, "layout": lay.to_value()}
            completes_with = dict(meta.data[parts_ns("b", "u1")]["00001"])  # Complete's read of the part

            recon = Reconstructor(cluster, meta, pool, rate_bytes_s=1 << 30, clock=FakeClock(autojump=True))
            await recon.run_once()
            # Complete lands: the object names the layout as Complete read it; the part goes.
            meta.data.setdefault(objects_ns("b"), {})["mp"] = {"key": "mp", "size": lay.size,
                                                               "layouts": [completes_with["layout"]]}
            del meta.data[uploads_ns("b")][upload_key("mp", "u1")], meta.data[parts_ns("b", "u1")]
            named = Layout.from_value(meta.data["obj/b"]["mp"]["layouts"][0])
            assert named.nodes[i] == handoff
            all_verify(by_id[handoff], lay.fid(i), lay.stripes)  # what the object names is there
            assert await read_back(pool, named) == body

            await recon.run_once()  # now the object's: moved home
            new = Layout.from_value(meta.data["obj/b"]["mp"]["layouts"][0])
            assert new.nodes[i] == home and new.away == {}
            all_verify(by_id[home], lay.fid(i), lay.stripes)
            assert not by_id[handoff].path_of(lay.fid(i)).exists()
            assert await read_back(pool, new) == body
        tg.cancel_scope.cancel()
