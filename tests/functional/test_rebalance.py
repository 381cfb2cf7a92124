"""The rebalancer against real storage nodes over loopback, the metadata a dict, time a FakeClock."""

from __future__ import annotations

import os

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
        clock = FakeClock()
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
        clock = FakeClock()
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
