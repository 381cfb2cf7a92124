"""The rebalancer against real storage nodes over loopback, the metadata a dict, time a FakeClock."""

from __future__ import annotations

import os
import time

import anyio
import pytest
from headwater.objstore.datapath import StoragePool
from headwater.objstore.placement import place
from headwater.objstore.records import Layout
from headwater.objstore.repair.rebalancer import Rebalancer
from headwater.objstore.repair.reconstructor import Reconstructor

from headwater.clock import FakeClock
from headwater.config import ClusterConfig
from tests.cluster import TEST_SECRET_ENV

from .test_repair import SCHEME, DictMeta, put_object, read_back, start_nodes

pytestmark = pytest.mark.anyio

GRACE_S = 30.0


@pytest.fixture
def anyio_backend():
    return "asyncio"


def rebalancer(cluster: ClusterConfig, meta: DictMeta, pool: StoragePool, clock: FakeClock) -> Rebalancer:
    recon = Reconstructor(cluster, meta, pool, rate_bytes_s=0, clock=clock)
    return Rebalancer(cluster, meta, pool, recon=recon, rate_bytes_s=64 * 1024 * 1024, grace_s=GRACE_S,
                      clock=clock)


def layout_of(meta: DictMeta, key: str) -> Layout:
    return Layout.from_value(meta.data["obj/b"][key]["layouts"][0])


async def test_new_node_is_filled_old_copies_go_after_grace_and_a_second_pass_moves_nothing(tmp_path):
    async with anyio.create_task_group() as tg:
        seven, nodes = await start_nodes(tg, tmp_path, n=7)
        six = ClusterConfig(secret_env=TEST_SECRET_ENV, storage=seven.storage[:6])
        by_id = {n.id: n for n in nodes}
        meta = DictMeta()
        async with StoragePool(six) as pool6:
            data = {f"k{i}": os.urandom(2 * SCHEME.stripe_bytes + 100 * i + 1) for i in range(14)}
            before = {k: await put_object(pool6, meta, k, v) for k, v in data.items()}
        clock = FakeClock(start=time.time())  # the old copies' mtimes are real wall-clock times
        async with StoragePool(seven) as pool:
            rb = rebalancer(seven, meta, pool, clock)
            figures = await rb.run_once()
            st = rb.stats()
            assert figures["fragments_moved"] == st["fragments_moved"] > 0 and st["failures"] == 0
            moved = 0
            for k, old in before.items():
                new = layout_of(meta, k)
                changed = [i for i in range(6) if new.nodes[i] != old.nodes[i]]
                assert len(changed) <= 1
                for i in changed:
                    moved += 1
                    assert new.nodes[i] == "s7" and set(new.nodes) == set(place(new.oid, 6, pool.sites))
                    assert by_id["s7"].path_of(new.fid(i)).exists()
                    # the old copy outlives the record change by the grace (a GET may be on it)
                    assert by_id[old.nodes[i]].path_of(old.fid(i)).exists()
                assert await read_back(pool, new) == data[k]
            assert moved == st["fragments_moved"]
            assert st["old_copies_waiting"] == moved
            clock.advance(GRACE_S + 1)
            assert await rb.collect_old_copies() == moved
            for k, old in before.items():
                new = layout_of(meta, k)
                for i in range(6):
                    if new.nodes[i] != old.nodes[i]:
                        assert not by_id[old.nodes[i]].path_of(old.fid(i)).exists()
                assert await read_back(pool, new) == data[k]
            assert (await rb.run_once())["fragments_moved"] == 0
        tg.cancel_scope.cancel()


class DeletingMeta(DictMeta):
    """Deletes the object just before the rebalancer's conditional write lands: the delete wins."""

    async def put(self, ns, key, value, *, if_match=None, **kw):
        if if_match is not None:
            self.data[ns].pop(key, None)
        return await super().put(ns, key, value, if_match=if_match, **kw)


async def test_a_delete_racing_a_move_wins_and_the_copy_is_removed(tmp_path):
    async with anyio.create_task_group() as tg:
        seven, nodes = await start_nodes(tg, tmp_path, n=7)
        six = ClusterConfig(secret_env=TEST_SECRET_ENV, storage=seven.storage[:6])
        meta = DeletingMeta()
        async with StoragePool(six) as pool6:
            lays = [await put_object(pool6, meta, f"k{i}", os.urandom(SCHEME.stripe_bytes + 1)) for i in range(8)]
        clock = FakeClock(start=time.time())  # the old copies' mtimes are real wall-clock times
        async with StoragePool(seven) as pool:
            rb = rebalancer(seven, meta, pool, clock)
            await rb.run_once()
            st = rb.stats()
            assert st["fragments_moved"] == 0 and st["moves_lost_race"] > 0 and st["failures"] == 0
            assert not [p for p in (nodes[6].data_dir / "frags").rglob("*") if p.is_file()]
            for lay in lays:  # the source fragments are the deleter's to retire, untouched here
                for i, n in enumerate(lay.nodes):
                    assert {x.id: x for x in nodes}[n].path_of(lay.fid(i)).exists()
        tg.cancel_scope.cancel()


async def test_old_copies_go_only_on_the_collectors_condition(tmp_path):
    """After the grace, an old copy the record names again stays, one whose file was written
    again since (younger than the grace) stays until its file is old enough, and the rest go,
    each delete naming the file's mtime."""
    async with anyio.create_task_group() as tg:
        seven, nodes = await start_nodes(tg, tmp_path, n=7)
        six = ClusterConfig(secret_env=TEST_SECRET_ENV, storage=seven.storage[:6])
        by_id = {n.id: n for n in nodes}
        meta = DictMeta()
        async with StoragePool(six) as pool6:
            data = {f"k{i}": os.urandom(SCHEME.stripe_bytes + 100 * i + 1) for i in range(14)}
            before = {k: await put_object(pool6, meta, k, v) for k, v in data.items()}
        clock = FakeClock(start=time.time())
        async with StoragePool(seven) as pool:
            rb = rebalancer(seven, meta, pool, clock)
            await rb.run_once()
            moved = [(k, i) for k, old in before.items() for i in range(6)
                     if layout_of(meta, k).nodes[i] != old.nodes[i]]
            assert len(moved) >= 3, "too few moves to prove anything"
            (k_named, i_named), (k_young, i_young) = moved[0], moved[1]
            # the record names the old copy again (say a move back); the copy is no longer garbage
            rec = meta.data["obj/b"][k_named]
            rec["layouts"] = [before[k_named].to_value()]
            clock.advance(GRACE_S / 2)
            # the young one: the same fragment written to the old node again, half a grace later
            old_young = before[k_young]
            young = by_id[old_young.nodes[i_young]].path_of(old_young.fid(i_young))
            os.utime(young, (clock.time(), clock.time()))
            clock.advance(GRACE_S / 2)
            assert await rb.collect_old_copies() == len(moved) - 2
            assert by_id[before[k_named].nodes[i_named]].path_of(before[k_named].fid(i_named)).exists()
            assert young.exists()
            assert rb.stats()["old_copies_waiting"] == 1            # the young one, looked at again
            clock.advance(GRACE_S / 2 - 1)
            assert await rb.collect_old_copies() == 0 and young.exists()
            clock.advance(1)
            assert await rb.collect_old_copies() == 1 and not young.exists()
            assert rb.stats()["old_copies_waiting"] == 0 and rb.stats()["failures"] == 0
            for k, old in before.items():
                if k == k_named:
                    continue
                for i in range(6):
                    if (k, i) in moved:
                        assert not by_id[old.nodes[i]].path_of(old.fid(i)).exists()
            for k, v in data.items():
                assert await read_back(pool, layout_of(meta, k)) == v
        tg.cancel_scope.cancel()


async def test_a_move_keeps_the_layouts_handoff_marks(tmp_path):
    """Fragment 2 of every object is marked away from its home s8 (as a handoff write leaves
    it): the rebalancer fills s7 but neither moves fragment 2 nor puts anything on s8, and the
    records it rewrites still carry the marks (for the reconstructor to move it home)."""
    async with anyio.create_task_group() as tg:
        eight, nodes = await start_nodes(tg, tmp_path, n=8)
        six = ClusterConfig(secret_env=TEST_SECRET_ENV, storage=eight.storage[:6])
        meta = DictMeta()
        async with StoragePool(six) as pool6:
            data = {f"k{i}": os.urandom(SCHEME.stripe_bytes + 100 * i + 1) for i in range(16)}
            before = {}
            for k, v in data.items():
                lay = await put_object(pool6, meta, k, v)
                lay = Layout(oid=lay.oid, size=lay.size, k=lay.k, m=lay.m, stripe_bytes=lay.stripe_bytes,
                             nodes=lay.nodes, homes=(None, None, "s8", None, None, None))
                meta.data["obj/b"][k]["layouts"] = [lay.to_value()]
                before[k] = lay
        async with StoragePool(eight) as pool:
            rb = rebalancer(eight, meta, pool, FakeClock(start=time.time()))
            await rb.run_once()
            assert rb.stats()["fragments_moved"] > 0
            rewritten = 0
            for k, old in before.items():
                new = layout_of(meta, k)
                assert new.homes == old.homes and new.away == {2: "s8"}
                assert new.nodes[2] == old.nodes[2] and "s8" not in new.nodes
                rewritten += new.nodes != old.nodes
                assert await read_back(pool, new) == data[k]
            assert rewritten > 0
        tg.cancel_scope.cancel()
