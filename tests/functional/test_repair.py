"""Scrubber, reconstructor and collector against real storage nodes over loopback sockets.

The metadata ring is replaced by a dict with the same ``scan_iter`` / ``get`` / ``put(if_match)``
surface (the ring itself is tested on its own, and the probe tests run all of it together);
time is a FakeClock, so rate limits and grace periods cost no sleeping.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from headwater.objstore.config import ErasureScheme, StorageNodeConfig
from headwater.objstore.datapath import LayoutWriter, StoragePool, read_layout
from headwater.objstore.metadata.client import Entry
from headwater.objstore.metadata.errors import ConditionFailed
from headwater.objstore.records import BUCKETS_NS, Layout, objects_ns
from headwater.objstore.repair.gc import GarbageCollector
from headwater.objstore.repair.reconstructor import Reconstructor
from headwater.objstore.storage import fragment as fr
from headwater.objstore.storage.daemon import StorageNode, run_storage_node
from headwater.objstore.storage.scrubber import Scrubber

from headwater.clock import FakeClock
from headwater.config import ClusterConfig
from tests.cluster import TEST_SECRET_ENV

pytestmark = pytest.mark.anyio

KiB = 1024
SCHEME = ErasureScheme(k=4, m=2, stripe_bytes=64 * KiB)


class DictMeta:
    """The slice of MetadataClient the repair daemon uses, over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, dict]] = {}
        self.puts = 0

    async def scan_iter(self, ns: str, *, page_size: int = 256, **_: Any):
        for key in sorted(self.data.get(ns, {})):
            yield Entry(ns=ns, key=key, value=self.data[ns][key], version=(0, "t"))

    async def get(self, ns: str, key: str) -> Entry | None:
        v = self.data.get(ns, {}).get(key)
        return None if v is None else Entry(ns=ns, key=key, value=v, version=(0, "t"))

    async def put(self, ns: str, key: str, value: dict, *, if_match: tuple[str, Any] | None = None, **_: Any):
        cur = self.data.get(ns, {}).get(key)
        if if_match is not None and (cur is None or cur.get(if_match[0]) != if_match[1]):
            raise ConditionFailed(ns, key, None, "if_match")
        self.data.setdefault(ns, {})[key] = value
        self.puts += 1


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def start_nodes(tg, tmp_path: Path, n: int = 6) -> tuple[ClusterConfig, list[StorageNode]]:
    nodes = []
    for i in range(n):
        cfg = StorageNodeConfig(id=f"s{i + 1}", port=1, admin_port=2, data_dir=tmp_path / f"s{i + 1}")
        nodes.append(await tg.start(lambda task_status, cfg=cfg: run_storage_node(
            ClusterConfig(secret_env=TEST_SECRET_ENV), cfg, port=0, task_status=task_status)))
    storage = tuple(StorageNodeConfig(id=sn.id, port=sn.rpc_port, admin_port=2, data_dir=sn.data_dir)
                    for sn in nodes)
    return ClusterConfig(secret_env=TEST_SECRET_ENV, storage=storage), nodes


async def put_object(pool: StoragePool, meta: DictMeta, key: str, data: bytes, *, bucket: str = "b") -> Layout:
    async with LayoutWriter(pool, SCHEME) as w:
        await w.write(data)
        layout = await w.finish()
    meta.data.setdefault(BUCKETS_NS, {})[bucket] = {"name": bucket}
    meta.data.setdefault(objects_ns(bucket), {})[key] = {"key": key, "size": len(data),
                                                         "layouts": [layout.to_value()]}
    return layout


async def read_back(pool: StoragePool, layout: Layout) -> bytes:
    return b"".join([bytes(p) async for p in read_layout(pool, layout, 0, layout.size)])


def frag_path(node: StorageNode, fid: str) -> Path:
    return node.path_of(fid)


def all_verify(node: StorageNode, fid: str, nblocks: int) -> None:
    assert len(fr.read_blocks(frag_path(node, fid), fid, 0, nblocks)) == nblocks


async def test_scrubber_quarantines_flipped_and_truncated_fragments(tmp_path):
    sn = StorageNode("s1", tmp_path / "s1")
    sn.prepare()
    for name in ("good.0", "flip.0", "cut.0", "head.0"):
        w = fr.FragmentWriter(sn.tmp_dir / name, name, 4096, {"k": 4})
        w.append(0, [os.urandom(4096) for _ in range(20)])
        w.commit(sn.path_of(name), 20)
    sn.prepare()  # recount
    p = sn.path_of("flip.0")
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    os.truncate(sn.path_of("cut.0"), os.path.getsize(sn.path_of("cut.0")) - 100)
    raw = bytearray(sn.path_of("head.0").read_bytes())
    raw[12] ^= 0x01
    sn.path_of("head.0").write_bytes(bytes(raw))

    clock = FakeClock(autojump=True)
    scrub = Scrubber(sn, rate_bytes_s=64 * KiB, interval_s=60, clock=clock, chunk_blocks=4)
    sn.scrubber = scrub
    t0 = clock.monotonic()
    assert await scrub.run_once() == 3
    # paced: good.0 whole and half of flip.0 (~120 KiB) at 64 KiB/s, less the burst: ~1.5 s
    assert clock.monotonic() - t0 >= 1.0
    assert sorted(os.listdir(sn.quarantine_dir)) == ["cut.0", "flip.0", "head.0"]
    assert sn.path_of("good.0").exists() and not sn.path_of("flip.0").exists()
    st = sn.stats()
    assert st["scrub_corrupt"] == 3 and st["quarantined"] == 3 and st["fragments"] == 1
    assert st["scrub_passes"] == 1 and st["scrub_last_pass_end"] == clock.time()
    assert await scrub.run_once() == 0


async def test_quarantine_never_moves_a_file_committed_over_the_corrupt_one(tmp_path):
    sn = StorageNode("s1", tmp_path / "s1")
    sn.prepare()
    w = fr.FragmentWriter(sn.tmp_dir / "x.0", "x.0", 64, {})
    w.append(0, [b"a" * 64])
    w.commit(sn.path_of("x.0"), 1)
    st = os.stat(sn.path_of("x.0"))
    old_inode = (st.st_dev, st.st_ino)
    w = fr.FragmentWriter(sn.tmp_dir / "x.0", "x.0", 64, {})  # a rebuild replaces it
    w.append(0, [b"b" * 64])
    w.commit(sn.path_of("x.0"), 1)
    assert sn.quarantine("x.0", old_inode) is False
    assert sn.path_of("x.0").exists()
    sn._mark_committing("x.0", +1)
    assert sn.quarantine("x.0") is False  # a commit of the same fid is under way
    sn._mark_committing("x.0", -1)
    assert sn.quarantine("x.0") is True


async def test_a_delete_naming_the_listed_mtime_spares_a_file_committed_over_it(tmp_path):
    """The collector deletes the file it listed, not one committed under the same fid since (a
    fragment moved back onto a node that still had its old, unnamed copy)."""
    sn = StorageNode("s1", tmp_path / "s1")
    sn.prepare()

    def write(fill: bytes) -> float:
        w = fr.FragmentWriter(sn.tmp_dir / "x.0", "x.0", 64, {})
        w.append(0, [fill * 64])
        w.commit(sn.path_of("x.0"), 1)
        return os.stat(sn.path_of("x.0")).st_mtime

    listed = write(b"a")
    os.utime(sn.path_of("x.0"), (listed - 600, listed - 600))  # an old copy
    listed -= 600
    fresh = write(b"b")                                         # committed over it
    sn.prepare()  # recount
    assert fresh != listed
    assert await sn.delete("x.0", if_mtime=listed) is False
    assert sn.path_of("x.0").read_bytes() and sn.stats()["fragments"] == 1
    sn._mark_committing("x.0", +1)
    assert await sn.delete("x.0", if_mtime=fresh) is False      # a commit of it under way
    sn._mark_committing("x.0", -1)
    assert await sn.delete("x.0", if_mtime=fresh) is True
    assert not sn.path_of("x.0").exists() and sn.stats()["fragments"] == 0
    assert await sn.delete("x.0") is False


async def test_reconstructor_rebuilds_lost_corrupt_and_unplaced_fragments(tmp_path):
    async with anyio.create_task_group() as tg:
        cluster, nodes = await start_nodes(tg, tmp_path)
        by_id = {n.id: n for n in nodes}
        meta = DictMeta()
        async with StoragePool(cluster) as pool:
            data = {f"k{i}": os.urandom(5 * SCHEME.stripe_bytes + 1000 * i + 1) for i in range(3)}
            lays = {k: await put_object(pool, meta, k, v) for k, v in data.items()}
            # k0: one fragment deleted, one quarantined; k1: written with a node "down" (unplaced)
            l0 = lays["k0"]
            by_id[l0.nodes[0]].path_of(l0.fid(0)).unlink()
            by_id[l0.nodes[5]].quarantine(l0.fid(5))
            l1 = lays["k1"]
            gone = l1.nodes[3]
            by_id[gone].path_of(l1.fid(3)).unlink()
            nodes1 = list(l1.nodes)
            nodes1[3] = None
            meta.data["obj/b"]["k1"]["layouts"] = [Layout(**{**_fields(l1), "nodes": tuple(nodes1)}).to_value()]

            clock = FakeClock(autojump=True)
            recon = Reconstructor(cluster, meta, pool, rate_bytes_s=1024 * KiB, clock=clock)
            figures = await recon.run_once()
            assert figures["layouts"] == 3 and figures["degraded_objects"] == 0
            st = recon.stats()
            assert st["fragments_rebuilt"] == 3 and st["fragments_relocated"] == 1 and st["records_rewritten"] == 1
            assert st["bytes_rebuilt"] > 0 and clock.monotonic() > 1000.0  # paced on the fake clock
            for i in (0, 5):
                all_verify(by_id[l0.nodes[i]], l0.fid(i), l0.stripes)
            new1 = Layout.from_value(meta.data["obj/b"]["k1"]["layouts"][0])
            assert None not in new1.nodes and len(set(new1.nodes)) == 6
            all_verify(by_id[new1.nodes[3]], new1.fid(3), new1.stripes)
            # a second pass finds nothing to do
            assert (await recon.run_once())["degraded_layouts"] == 0
            assert recon.stats()["fragments_rebuilt"] == 3
            # every object reads back from the rebuilt fragments alone (the others lost)
            for k, lay in [("k0", l0), ("k1", new1)]:
                lost = [i for i in range(6) if i not in ((0, 5) if k == "k0" else (3,))][:2 if k == "k0" else 1]
                for i in lost:
                    by_id[lay.nodes[i]].path_of(lay.fid(i)).unlink()
                assert await read_back(pool, lay) == data[k]
        tg.cancel_scope.cancel()


async def test_a_rewrite_read_before_a_tagging_change_keeps_the_tags_on_a_record_without_rev(tmp_path):
    """A record from before ``rev`` (as ``put_object`` here writes them) loses a fragment; the
    reconstructor reads it, and a PutObjectTagging (the gateway's own compare-and-swap,
    ``tagging._as_read``) lands just before the reconstructor's rewrite. The rewrite must fail,
    read again and land on the tagged record: the acknowledged tags stay, the layout is fixed."""
    from headwater.objstore.gateway.tagging import retagged
    from headwater.objstore.records import ObjectRecord

    class TaggedMeanwhile(DictMeta):
        tagged = False

        async def put(self, ns, key, value, *, if_match=None, **kw):
            if ns == "obj/b" and not self.tagged:
                self.tagged = True  # the gateway's PutObjectTagging, as it writes
                tagged, condition = retagged(self.data[ns][key], {"a": "1"})
                await DictMeta.put(self, ns, key, tagged, if_match=condition)
            await DictMeta.put(self, ns, key, value, if_match=if_match, **kw)

    async with anyio.create_task_group() as tg:
        cluster, nodes = await start_nodes(tg, tmp_path)
        by_id = {n.id: n for n in nodes}
        meta = TaggedMeanwhile()
        async with StoragePool(cluster) as pool:
            data = os.urandom(3 * SCHEME.stripe_bytes + 5)
            lay = await put_object(pool, meta, "k", data)
            gone = lay.nodes[2]
            by_id[gone].path_of(lay.fid(2)).unlink()
            nodes2 = list(lay.nodes)
            nodes2[2] = None
            degraded = Layout(**{**_fields(lay), "nodes": tuple(nodes2)})
            meta.data["obj/b"]["k"] = ObjectRecord(key="k", size=len(data), etag='"e"', last_modified=1.0,
                                                   owner="o", layouts=(degraded,)).to_value()

            assert "rev" not in meta.data["obj/b"]["k"]
            recon = Reconstructor(cluster, meta, pool, rate_bytes_s=1024 * KiB, clock=FakeClock(autojump=True))
            await recon.run_once()
            assert meta.tagged and recon.stats()["records_rewritten"] == 1
            rec = meta.data["obj/b"]["k"]
            assert rec.get("tags") == {"a": "1"}  # the tagging change was not undone
            new = Layout.from_value(rec["layouts"][0])
            assert None not in new.nodes and rec["rev"] and "retag" not in rec["layouts"][0]
            all_verify(by_id[new.nodes[2]], new.fid(2), new.stripes)
            assert await read_back(pool, new) == data
        tg.cancel_scope.cancel()


def _fields(lay: Layout) -> dict:
    return {"oid": lay.oid, "size": lay.size, "k": lay.k, "m": lay.m, "stripe_bytes": lay.stripe_bytes,
            "nodes": lay.nodes}


async def test_collector_removes_orphans_after_grace_and_keeps_what_records_name(tmp_path):
    async with anyio.create_task_group() as tg:
        cluster, nodes = await start_nodes(tg, tmp_path)
        meta = DictMeta()
        async with StoragePool(cluster) as pool:
            kept = await put_object(pool, meta, "kept", os.urandom(3 * SCHEME.stripe_bytes))
            orphan = await put_object(pool, meta, "orphan", os.urandom(2 * SCHEME.stripe_bytes))
            del meta.data["obj/b"]["orphan"]  # as if the gateway died before retiring it
            (nodes[0].tmp_dir / "stale.0").write_bytes(b"torn write")
            os.utime(nodes[0].tmp_dir / "stale.0", (0, 0))
            by_id = {n.id: n for n in nodes}
            newest = max(os.path.getmtime(by_id[n].path_of(orphan.fid(i))) for i, n in enumerate(orphan.nodes))
            clock = FakeClock(start=newest + 1, autojump=True)
            gc = GarbageCollector(meta, pool, grace_s=30, clock=clock)
            assert await gc.run_once() == 0          # first sighting: candidates only
            assert gc.stats()["candidates"] == 6
            assert gc.stats()["tmp_removed"] == 1
            clock.advance(29)
            assert await gc.run_once() == 0          # not yet grace_s
            clock.advance(1)
            assert await gc.run_once() == 6
            for i, node in enumerate(orphan.nodes):
                assert not by_id[node].path_of(orphan.fid(i)).exists()
            for i, node in enumerate(kept.nodes):
                assert by_id[node].path_of(kept.fid(i)).exists()
            assert gc.stats()["candidates"] == 0
        tg.cancel_scope.cancel()


async def test_an_out_nodes_fragments_are_rebuilt_elsewhere_and_its_copies_collected_when_back(tmp_path):
    """A node down for node_down_out_seconds is out: its fragments are rebuilt onto the spare
    node and the records point there; once it answers again it is no longer out, and the
    collector removes its now unnamed copies after the grace period."""
    async with anyio.create_task_group() as tg:
        cluster, nodes = await start_nodes(tg, tmp_path, n=7)
        by_id = {n.id: n for n in nodes}
        meta = DictMeta()
        async with StoragePool(cluster) as pool:
            data = {f"k{i}": os.urandom(3 * SCHEME.stripe_bytes + 1000 * i + 1) for i in range(6)}
            lays = {k: await put_object(pool, meta, k, v) for k, v in data.items()}
        victim = lays["k0"].nodes[2]
        on_victim = {k for k, lay in lays.items() if victim in lay.nodes}
        # the victim stops answering: its address is now a port bound but never listened on
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        cut = cluster.replace(storage=tuple(dataclasses.replace(s, port=dead.getsockname()[1])
                                                         if s.id == victim else s for s in cluster.storage))
        clock = FakeClock(autojump=True)
        try:
            async with StoragePool(cut) as down_pool:
                recon = Reconstructor(cut, meta, down_pool, rate_bytes_s=1024 * KiB, clock=clock, out_after_s=600)
                figures = await recon.run_once()     # down, not out: waited for
                assert recon.node_liveness() == {"down": {victim: 0.0}, "out": []}
                assert figures["degraded_objects"] == len(on_victim) and recon.stats()["fragments_rebuilt"] == 0
                clock.advance(599)
                await recon.run_once()
                assert recon.node_liveness()["out"] == [] and recon.stats()["fragments_rebuilt"] == 0
                clock.advance(1)
                figures = await recon.run_once()     # 600 s of failed checks: out
                st = recon.stats()
                live = recon.node_liveness()  # (rebuilds are paced on the fake clock: it moved on)
                assert live["out"] == [victim] and list(live["down"]) == [victim] and live["down"][victim] >= 600
                assert st["nodes_out"] == 1 and st["nodes_down"] == 1 and st["nodes_marked_out"] == 1
                assert figures["degraded_objects"] == 0
                assert st["out_fragments_rebuilt"] == len(on_victim) == st["fragments_relocated"]
                moved = {k: Layout.from_value(meta.data["obj/b"][k]["layouts"][0]) for k in data}
                for k, new in moved.items():
                    assert victim not in new.nodes and len(set(new.nodes)) == 6
                    if k in on_victim:
                        i = lays[k].nodes.index(victim)
                        all_verify(by_id[new.nodes[i]], new.fid(i), new.stripes)
                    assert await read_back(down_pool, new) == data[k]
                assert (await recon.run_once())["degraded_objects"] == 0 and recon.stats()["fragments_rebuilt"] == len(on_victim)
        finally:
            dead.close()
        # the victim answers again: no longer down nor out; its copies are garbage now
        async with StoragePool(cluster) as pool:
            recon.pool = pool
            assert (await recon.run_once())["degraded_objects"] == 0
            assert recon.node_liveness() == {"down": {}, "out": []} and recon.stats()["nodes_out"] == 0
            stale = [lays[k].fid(lays[k].nodes.index(victim)) for k in on_victim]
            assert all(by_id[victim].path_of(f).exists() for f in stale)
            gc_clock = FakeClock(start=time.time() + 100, autojump=True)
            gc = GarbageCollector(meta, pool, grace_s=30, clock=gc_clock)
            assert await gc.run_once() == 0 and gc.stats()["candidates"] == len(stale)
            gc_clock.advance(30)
            assert await gc.run_once() == len(stale)
            assert not any(by_id[victim].path_of(f).exists() for f in stale)
            # the rebuilt objects survive losing two more fragments each, from the survivors alone
            for k, new in moved.items():
                for i in (0, 1):
                    by_id[new.nodes[i]].path_of(new.fid(i)).unlink()
                assert await read_back(pool, new) == data[k]
        tg.cancel_scope.cancel()


async def test_a_down_node_is_left_out_until_it_answers_a_probe(tmp_path):
    """A node that failed stays out of placements and reads past DOWN_HOLD_S for as long as it
    does not answer (every new PUT would otherwise lose a fragment to it again), and comes back
    at the first probe it answers."""
    from headwater.objstore.datapath import DOWN_HOLD_S

    clock = FakeClock()
    async with anyio.create_task_group() as tg:
        cluster, nodes = await start_nodes(tg, tmp_path, n=6)
        victim = cluster.storage[2]
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        cut = cluster.replace(storage=tuple(dataclasses.replace(s, port=dead.getsockname()[1]) if s.id == victim.id
                                          else s for s in cluster.storage))
        try:
            async with StoragePool(cut, clock=clock.monotonic, probe_interval_s=3600) as pool:
                pool.mark_down(victim.id)
                await pool.probe_once()            # the hold is not over: not even asked
                assert pool.down() == {victim.id}
                clock.advance(DOWN_HOLD_S)
                await pool.probe_once()            # asked, no answer: held again
                assert pool.down() == {victim.id}
                assert all(victim.id not in pool.place_degraded(f"oid-{i}", SCHEME) for i in range(20))
                clock.advance(DOWN_HOLD_S)
            dead.close()
            async with StoragePool(cluster, clock=clock.monotonic, probe_interval_s=3600) as pool:
                pool.mark_down(victim.id)
                clock.advance(DOWN_HOLD_S)
                await pool.probe_once()            # it answers: back in placements
                assert pool.down() == set()
        finally:
            dead.close()
        tg.cancel_scope.cancel()


async def test_a_restarted_repair_daemon_declares_a_node_out_at_the_original_deadline(tmp_path):
    """The down-timer survives a restart: the second process (a new Reconstructor on the same
    data_dir, its monotonic clock elsewhere, 30 s of wall clock later) resumes the count and
    declares the node out 600 s after its first failed check, not 600 s after the restart; a
    process without the file would still be waiting. Once the node answers, the file forgets it."""
    from headwater.objstore.repair.liveness_file import FILE_NAME, LivenessFile

    async with anyio.create_task_group() as tg:
        cluster, nodes = await start_nodes(tg, tmp_path, n=7)
        meta = DictMeta()
        async with StoragePool(cluster) as pool:
            bodies = [os.urandom(SCHEME.stripe_bytes + 100 * i + 1) for i in range(3)]
            lays = [await put_object(pool, meta, f"k{i}", body) for i, body in enumerate(bodies)]
        victim = lays[0].nodes[1]
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        cut = cluster.replace(storage=tuple(dataclasses.replace(s, port=dead.getsockname()[1])
                                            if s.id == victim else s for s in cluster.storage))
        state = tmp_path / "repair" / FILE_NAME
        wall0 = time.time()
        try:
            async with StoragePool(cut) as down_pool:
                first_clock = FakeClock(start=wall0, monotonic_start=5000.0, autojump=True)
                first = Reconstructor(cut, meta, down_pool, rate_bytes_s=1024 * KiB, clock=first_clock,
                                      out_after_s=600, liveness_file=LivenessFile(state))
                await first.run_once()                            # the first failed check: wall0
                first_clock.advance(400)
                await first.run_once()
                assert first.node_liveness() == {"down": {victim: 400.0}, "out": []}
                del first                                         # the daemon stops (or crashes)

                def restarted(keep_state: bool) -> tuple[Reconstructor, FakeClock]:
                    clock = FakeClock(start=wall0 + 430, monotonic_start=10.0, autojump=True)
                    return Reconstructor(cut, meta, down_pool, rate_bytes_s=1024 * KiB, clock=clock, out_after_s=600,
                                         liveness_file=LivenessFile(state) if keep_state else None), clock

                amnesiac, amnesiac_clock = restarted(keep_state=False)  # what a restart did before
                second, clock = restarted(keep_state=True)
                await second.run_once()
                assert second.node_liveness() == {"down": {victim: 430.0}, "out": []}
                assert second.stats()["down_timers_resumed"] == 1
                clock.advance(169)
                await second.run_once()
                assert second.node_liveness()["out"] == [] and second.stats()["fragments_rebuilt"] == 0
                clock.advance(1)                                  # wall0 + 600: the original deadline
                amnesiac_clock.advance(170)
                await amnesiac.run_once()
                assert amnesiac.node_liveness()["out"] == []      # 170 s into its own count
                await second.run_once()
                st = second.stats()
                assert second.node_liveness()["out"] == [victim] and st["nodes_marked_out"] == 1
                assert st["out_fragments_rebuilt"] == sum(victim in lay.nodes for lay in lays) > 0
                for i, lay in enumerate(lays):
                    new = Layout.from_value(meta.data["obj/b"][f"k{i}"]["layouts"][0])
                    assert victim not in new.nodes
                    assert await read_back(down_pool, new) == bodies[i]
        finally:
            dead.close()
        kept = json.loads(state.read_bytes())["down"]
        assert list(kept) == [victim] and kept[victim]["since"] == pytest.approx(wall0, abs=0.01)
        async with StoragePool(cluster) as pool:             # it answers again: the file forgets it
            second.pool = pool
            await second.run_once()
            assert json.loads(state.read_bytes())["down"] == {}
            third = Reconstructor(cluster, meta, pool, rate_bytes_s=1024 * KiB, clock=FakeClock(autojump=True),
                                  out_after_s=600, liveness_file=LivenessFile(state))
            await third.run_once()
            assert third.node_liveness() == {"down": {}, "out": []} and third.stats()["down_timers_resumed"] == 0
        tg.cancel_scope.cancel()


async def test_quarantined_fragments_are_pruned_after_the_retention_on_the_nodes_loop(tmp_path):
    """The storage node's background loop, on a FakeClock, removes a quarantined fragment
    quarantine_retention_s after it was quarantined (not after it was written), one
    quarantined later stays until its own time comes, and the counters say so."""
    week = 7 * 86400.0
    clock = FakeClock(start=time.time())
    sn = StorageNode("s1", tmp_path / "s1", clock=clock.time, quarantine_retention_s=week)
    sn.prepare()
    for name in ("a.0", "b.0", "good.0"):
        w = fr.FragmentWriter(sn.tmp_dir / name, name, 4096, {"k": 4})
        w.append(0, [os.urandom(4096) for _ in range(4)])
        w.commit(sn.path_of(name), 4)
        os.utime(sn.path_of(name), (clock.time() - 30 * 86400,) * 2)  # written a month ago
    sn.prepare()
    assert sn.quarantine("a.0")                    # day 0
    assert sn.stats()["quarantine_files"] == 1

    async def until(cond) -> None:
        with anyio.fail_after(5):
            while not cond():
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: sn.run_gc_forever(3600, clock=clock))
        await until(lambda: clock.sleepers == 1)
        clock.advance(3 * 86400)                                # day 3: b.0 goes bad too
        await until(lambda: clock.sleepers == 1)
        assert sn.quarantine("b.0")
        clock.advance(4 * 86400 - 3600)                         # day 7 less an hour: both kept
        await until(lambda: clock.sleepers == 1)
        assert sorted(os.listdir(sn.quarantine_dir)) == ["a.0", "b.0"]
        clock.advance(3600)                                     # day 7: a.0's week is over
        await until(lambda: sn.counters["quarantine_pruned"] == 1)
        assert os.listdir(sn.quarantine_dir) == ["b.0"]
        st = sn.stats()
        assert st["quarantine_files"] == 1 and st["quarantine_pruned_bytes"] > 0
        assert st["quarantined"] == 2 and st["fragments"] == 1 and sn.path_of("good.0").exists()
        clock.advance(3 * 86400)                                # day 10: b.0's turn
        await until(lambda: sn.counters["quarantine_pruned"] == 2)
        assert os.listdir(sn.quarantine_dir) == [] and sn.stats()["quarantine_files"] == 0
        tg.cancel_scope.cancel()
    # retention 0: kept for ever
    keep = StorageNode("s1", tmp_path / "s1", clock=lambda: clock.time() + 10 ** 9, quarantine_retention_s=0)
    keep.prepare()
    assert keep.quarantine("good.0") and keep.prune_quarantine() == [] and keep.stats()["quarantine_files"] == 1
