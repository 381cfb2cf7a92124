"""The metadata service over real sockets: three (or five) nodes in-process, real LMDB, real RPC."""

from __future__ import annotations

import dataclasses
import os
import random
from contextlib import AsyncExitStack, aclosing, asynccontextmanager

import anyio
import pytest
from headwater.objstore.config import MetadataNodeConfig, ObjstoreConfig
from headwater.objstore.metadata import (
    ConditionFailed,
    DataDirError,
    Entry,
    MetadataClient,
    QuorumUnavailable,
    WriteOutcomeUnknown,
    run_metadata_node,
)
from headwater.objstore.metadata.errors import CorruptRecord, RingChanged
from headwater.objstore.metadata.partition import PartitionMap, group_name
from headwater.rpc import BadRequest, ClusterSecret, RpcClient
from tests.cluster import TEST_SECRET_ENV

from headwater.config import ClusterConfig

from ..cluster import free_ports

pytestmark = pytest.mark.anyio


class MetaCluster:
    """n metadata nodes on ephemeral ports; stop and restart them by index."""

    def __init__(self, tmp_path, tg, n: int, partitions: int, metadata_timeout_s: float = 6.0, groups: int = 3):
        self.tg = tg
        # Raft peers find each other by the configured ports, so they are fixed up front.
        ports = free_ports(n)
        nodes = tuple(MetadataNodeConfig(id=f"meta-{i}", port=ports[i], admin_port=1, data_dir=tmp_path / f"meta-{i}",
                                         map_size_bytes=64 << 20) for i in range(n))
        # Three Raft groups (the shipped default is eight): every node of these in-process
        # clusters shares the test's one event loop, and each group heartbeats ten times a second.
        self.cfg = ClusterConfig(objstore=ObjstoreConfig(partitions=partitions, metadata_groups=groups,
                                                         rpc_timeout_s=3.0,
                                                         metadata_timeout_s=metadata_timeout_s,
                                                         raft_election_timeout_s=0.5), metadata=nodes,
                                 secret_env=TEST_SECRET_ENV)
        self.running: dict[int, tuple] = {}

    async def start(self, i: int):
        scope = anyio.CancelScope()
        stopped = anyio.Event()

        async def run(*, task_status):
            try:
                with scope:
                    await run_metadata_node(self.cfg, self.cfg.metadata[i], admin=False, task_status=task_status)
            finally:
                stopped.set()

        node = await self.tg.start(run)
        self.running[i] = (node, scope, stopped)
        return node

    async def stop(self, i: int) -> None:
        _node, scope, stopped = self.running.pop(i)
        scope.cancel()
        await stopped.wait()

    def node(self, i: int):
        return self.running[i][0]

    async def elected(self, timeout: float = 30.0) -> None:
        """Until every Raft group has a leader among the running nodes (or ``timeout``: the test
        then meets the election still going, as it would without this wait). A first write that
        lands before any election ends fails with QuorumUnavailable, which a loaded machine
        (a full suite on two workers) makes likely; the tests are about what comes after."""
        with anyio.move_on_after(timeout):
            while True:
                nodes = [node for node, _, _ in self.running.values()]
                gids = {gid for node in nodes for gid in node.groups}
                if gids and all(any(gid in node.groups and node.groups[gid].is_leader for node in nodes)
                                for gid in gids):
                    return
                await anyio.sleep(0.05)

    def client(self, writer_id: str = "t1", **kw) -> MetadataClient:
        return MetadataClient(self.cfg, writer_id=writer_id, connect_timeout_s=1.0, **kw)


@asynccontextmanager
async def meta_cluster(tmp_path, n: int = 3, partitions: int = 16, metadata_timeout_s: float = 6.0,
                       groups: int = 3):
    async with anyio.create_task_group() as tg:
        mc = MetaCluster(tmp_path, tg, n, partitions, metadata_timeout_s, groups)
        for i in range(n):
            await mc.start(i)
        await mc.elected()
        try:
            yield mc
        finally:
            tg.cancel_scope.cancel()


async def settle(check=None, timeout: float = 5.0) -> None:
    """Let background repairs and reverts finish: until ``check()`` holds, or a short while."""
    if check is None:
        await anyio.sleep(0.2)
        return
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


async def test_put_get_scan_delete_round_trip(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        assert await meta.get("buckets", "photos") is None
        e = await meta.put("buckets", "photos", {"owner": "alice", "created": 1})
        assert isinstance(e, Entry) and e.version[1] == "t1"
        got = await meta.get("buckets", "photos")
        assert got == e
        for k in ("b/2", "a", "b/1", "c"):
            await meta.put("obj/photos", k, {"etag": k, "size": len(k)})
        assert [x.key for x in await meta.scan("obj/photos")] == ["a", "b/1", "b/2", "c"]
        assert [x.key for x in await meta.scan("obj/photos", prefix="b/")] == ["b/1", "b/2"]
        assert [x.key for x in await meta.scan("obj/photos", start_after="b/1", limit=1)] == ["b/2"]
        mpu = "video.mp4\0upload-1"
        await meta.put("mpu/photos", mpu, {"initiated": 1})
        assert (await meta.get("mpu/photos", mpu)).value == {"initiated": 1}
        prev = await meta.delete("obj/photos", "a")
        assert prev.value == {"etag": "a", "size": 1}
        assert await meta.get("obj/photos", "a") is None
        assert await meta.delete("obj/photos", "a") is None
        assert [x.key for x in await meta.scan("obj/photos")] == ["b/1", "b/2", "c"]
        assert all((await meta.health()).values())
        info = await meta.node_info()
        assert all(v["entries"] > 0 for v in info.values())
        stats = [mc.node(i).statistics() for i in range(3)]
        assert sum(st["writes"] for st in stats) >= 6 and sum(st["gets"] for st in stats) > 0
        # A leader that holds its lease answers reads without a heartbeat round.
        assert 0 < sum(st["raft_lease_reads"] for st in stats) <= sum(st["raft_reads"] for st in stats)
        # 3 nodes, 16 partitions in 3 groups, each with one leader (waited for: a stall on a
        # loaded machine can hold an election, and a group has none, or two, for a moment)
        await settle(lambda: sum(mc.node(i).statistics()["raft_leading"] for i in range(3))
                     == mc.cfg.objstore.metadata_groups == 3, timeout=10)
        # Every replica applies every write: a follower learns the last commit with the leader's
        # next append or heartbeat, so it may trail the answer by one (stop 22's CI read it then).
        await settle(lambda: all(mc.node(i).statistics()["raft_applied"] >= 7 for i in range(3)), timeout=10)


async def test_heartbeats_of_all_groups_to_a_peer_go_in_one_call(tmp_path):
    # Six groups on three nodes: some node leads two or more, and its heartbeats to each peer
    # share calls (heartbeats.py).
    async with meta_cluster(tmp_path, groups=6) as mc, mc.client() as meta:
        await meta.put("obj/hb", "k", {"n": 1})
        await anyio.sleep(0.5)
        await settle(lambda: sum(mc.node(i).statistics()["raft_leading"] for i in range(3)) == 6, timeout=10)
        stats = [mc.node(i).statistics() for i in range(3)]
        batched = sum(st["raft_heartbeats_batched"] for st in stats)
        calls = sum(st["raft_heartbeat_calls"] for st in stats)
        assert calls > 10 and batched > calls


async def test_an_idle_ring_writes_nothing_and_answers_heartbeats_without_tasks(tmp_path):
    """At rest, a follower's heartbeat changes nothing to be written: the nodes commit no LMDB
    transaction, and the batched heartbeats are answered in the call's own task
    (``RaftGroup.append_at_once``), not a task per group; the ring still serves."""
    async with meta_cluster(tmp_path, groups=6) as mc, mc.client() as meta:
        await meta.put("obj/idle", "k", {"n": 1})
        await anyio.sleep(0.5)  # the write's commit reaches the followers

        def counts() -> tuple[int, int, int]:
            stats = [mc.node(i).statistics() for i in range(3)]
            return tuple(sum(st[k] for st in stats)  # type: ignore[return-value]
                         for k in ("raft_write_transactions", "heartbeats_at_once", "raft_leader_changes"))

        windows = []
        for _ in range(5):
            before = counts()
            await anyio.sleep(1.0)
            after = counts()
            windows.append((after[0] - before[0], after[1] - before[1], after[2] - before[2]))
            if after[2] == before[2]:
                break  # a window without an election (a loaded machine may hold one, or a handover)
        writes, at_once, elections = windows[-1]
        assert elections == 0, windows
        assert writes == 0, windows  # a second of heartbeats (about 10 a group) wrote nothing
        assert at_once >= 20, windows
        assert (await meta.get("obj/idle", "k")).value == {"n": 1}


async def test_a_malformed_heartbeat_batch_from_a_member_changes_nothing(tmp_path):
    """The hostile replay for ``raft.heartbeats``: a caller that holds the cluster secret (the
    handshake keeps everyone else out: test_rpc_auth.py) sends batches that are not batches,
    too many items, and items naming no group, another ring's group, malformed appends and a
    stale term. The call or the item is refused; no node gains a group, a term or a leader."""
    from headwater.objstore.metadata.heartbeats import MAX_BATCH
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        await meta.put("obj/hb", "before", {"n": 1})
        groups = [set(mc.node(i).groups) for i in range(3)]
        secret = ClusterSecret.from_secret(mc.cfg.name, os.environ[TEST_SECRET_ENV].encode())
        stale = [0, "meta-9", 0, 0, [], 0, 1]
        items = [{}, {"g": 7}, {"g": "g3"}, {"g": "../g0"}, {"g": "g0"}, {"g": "g0", "m": "x"},
                 {"g": "g0", "m": [1, 2]}, {"g": "g1", "m": ["x", "meta-0", 0, 0, [], 0, 0]},
                 {"g": "g2", "m": [1, "meta-0", 0, 0, [["y", b"z"]], 0, 0]}, {"g": "g0", "m": stale}]
        async with RpcClient("127.0.0.1", mc.cfg.metadata[0].port, secret=secret) as rc:
            for args in ({}, {"b": "x"}, {"b": [1, 2]}, {"b": [{}] * (MAX_BATCH + 1)}):
                with pytest.raises(BadRequest):
                    await rc.call("raft.heartbeats", args, timeout=10)
            replies = (await rc.call("raft.heartbeats", {"b": items}, timeout=10)).result["r"]
        assert len(replies) == len(items)
        assert all("error" in r for r in replies[:-1]), replies
        assert replies[-1]["success"] is False and replies[-1]["term"] >= 1  # a stale leader is refused
        # (terms are not compared: a loaded machine may hold a real election meanwhile)
        assert [set(mc.node(i).groups) for i in range(3)] == groups
        assert all(g.leader in (None, "meta-0", "meta-1", "meta-2") for i in range(3) for g in mc.node(i).groups.values())
        await meta.put("obj/hb", "after", {"n": 2})
        assert (await meta.get("obj/hb", "before")).value == {"n": 1}


async def test_a_get_reads_a_second_key_in_the_same_call_when_the_node_leads_both_groups(tmp_path):
    """``kv.get`` with ``also`` (a GET's bucket and object): the leader of both keys' groups
    answers both; a leader of only the first answers ``also`` None; a malformed ``also`` or key
    is refused. ``MetadataClient.get_pair`` makes one call when it knows one node leads both,
    else one per key, and returns what two ``get`` calls would."""
    async with meta_cluster(tmp_path, groups=6) as mc, mc.client() as meta:
        ring = PartitionMap.from_cluster(mc.cfg)
        keys = [f"k{i}" for i in range(40)]
        await meta.put("buckets", "b", {"owner": "alice"})
        for k in keys[:20]:
            await meta.put("obj/b", k, {"etag": k})

        def leader_of(ns: str, key: str) -> int:
            gid = group_name(ring.group_of(ring.partition_of(ns, key)))
            return next(i for i in range(3) if gid in mc.node(i).groups and mc.node(i).groups[gid].is_leader)

        def gid_of(ns: str, key: str) -> str:
            return group_name(ring.group_of(ring.partition_of(ns, key)))

        await mc.elected()
        b_leader = leader_of("buckets", "b")
        # Elections can leave one node leading every group (or the bucket's leader leading
        # none of the keys' groups): hand one group over so the test has keys of both kinds.
        if all(leader_of("obj/b", k) == b_leader for k in keys):
            gid = next(gid_of("obj/b", k) for k in keys if gid_of("obj/b", k) != gid_of("buckets", "b"))
            await mc.node(b_leader).groups[gid].transfer_leadership(f"meta-{(b_leader + 1) % 3}")
        elif all(leader_of("obj/b", k) != b_leader for k in keys):
            gid = gid_of("obj/b", keys[0])
            await mc.node(leader_of("obj/b", keys[0])).groups[gid].transfer_leadership(f"meta-{b_leader}")
        await mc.elected()
        same = [k for k in keys if leader_of("obj/b", k) == b_leader]
        other = [k for k in keys if leader_of("obj/b", k) != b_leader]
        assert same and other, "six groups on three nodes: the bucket's leader leads some, not all"
        secret = ClusterSecret.from_secret(mc.cfg.name, os.environ[TEST_SECRET_ENV].encode())
        pb = ring.partition_of("buckets", "b")
        async with RpcClient("127.0.0.1", mc.cfg.metadata[b_leader].port, secret=secret) as rc:
            for k in same[:3] + other[:3]:
                r = (await rc.call("kv.get", {"ns": "buckets", "p": pb, "key": "b",
                                              "also": ["obj/b", ring.partition_of("obj/b", k), k]})).result
                assert r["record"][2] == {"owner": "alice"}
                if k in other:
                    assert r["also"] is None
                elif k in keys[:20]:
                    assert r["also"][0][2] == {"etag": k}
                else:
                    assert r["also"] == [None]
            bad_before = mc.node(b_leader).statistics()["bad_requests"]
            for args in ({"ns": "buckets", "p": pb, "key": "b", "also": ["obj/b", 1]},
                         {"ns": "buckets", "p": pb, "key": "b", "also": "obj/b"},
                         {"ns": "buckets", "p": pb, "key": "b", "also": ["obj/b", 10_000, "k0"]},
                         {"ns": "buckets", "p": pb, "key": "b",
                          "also": ["obj/b", ring.partition_of("obj/b", same[0]), 7]},
                         {"ns": "buckets", "p": pb, "key": 7},
                         {"ns": "buckets", "p": "x", "key": "b"}):
                with pytest.raises(BadRequest):
                    await rc.call("kv.get", args, timeout=10)
            assert mc.node(b_leader).statistics()["bad_requests"] == bad_before + 6
        for k in keys:
            want = (await meta.get("buckets", "b"), await meta.get("obj/b", k))
            assert await meta.get_pair(("buckets", "b"), ("obj/b", k)) == want
        stats = meta.statistics()
        # Once the leaders are known, every key the bucket's leader also leads takes one call.
        assert stats["paired_reads"] >= len(same) and stats["paired_misses"] == 0
        assert stats["paired_reads"] < len(keys)
        gets = sum(mc.node(i).statistics()["gets"] for i in range(3))
        await meta.get_pair(("buckets", "b"), ("obj/b", same[0]))
        assert sum(mc.node(i).statistics()["gets"] for i in range(3)) == gets + 1


async def test_versions_move_forward_even_if_the_clock_does_not(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client(clock=lambda: 1000) as meta:
        a = await meta.put("obj/b", "k", {"n": 1})
        b = await meta.put("obj/b", "k", {"n": 2})
        assert b.version > a.version
        assert (await meta.get("obj/b", "k")).value == {"n": 2}
        # a writer whose clock is far behind still overwrites after it has seen the newer version
        async with mc.client("late", clock=lambda: 5) as late:
            await late.get("obj/b", "k")
            await late.put("obj/b", "k", {"n": 3})
            assert (await meta.get("obj/b", "k")).value == {"n": 3}
            # ...and even without reading first: the log, not the clock, orders writes
            await late.put("obj/b", "k2", {"n": 1})
            async with mc.client("later", clock=lambda: 1) as later:
                await later.put("obj/b", "k2", {"n": 2})
            assert (await meta.get("obj/b", "k2")).value == {"n": 2}


async def test_one_node_down_reads_and_writes_work(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        await meta.put("obj/b", "before", {"n": 1})
        await mc.stop(1)
        assert (await meta.get("obj/b", "before")).value == {"n": 1}
        await meta.put("obj/b", "during", {"n": 2})
        await meta.put("obj/b", "before", {"n": 3}, if_match=("n", 1))
        assert [e.key for e in await meta.scan("obj/b")] == ["before", "during"]
        health = await meta.health()
        assert health == {"meta-0": True, "meta-1": False, "meta-2": True}


@pytest.mark.heavy
async def test_two_down_put_fails_and_nothing_acknowledged_is_lost(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        acked = {f"k{i}": {"n": i} for i in range(20)}
        for k, v in acked.items():
            await meta.put("obj/b", k, v)
        await mc.stop(0)
        await meta.put("obj/b", "k0", {"n": "new"})  # still a majority
        acked["k0"] = {"n": "new"}
        await mc.stop(2)
        # The survivor may have taken the write into its log before it lost its majority: then
        # the outcome is unknown (it may commit later); either way the client gets a 503.
        async with mc.client("quick", timeout_s=1.5) as quick:
            with pytest.raises((QuorumUnavailable, WriteOutcomeUnknown)) as err:
                await quick.put("obj/b", "k1", {"n": "maybe"})
            assert err.value.s3_code == "ServiceUnavailable" and err.value.http_status == 503
            with pytest.raises(QuorumUnavailable):
                await quick.get("obj/b", "k1")
            with pytest.raises(QuorumUnavailable):
                await quick.scan("obj/b")
        await mc.start(0)
        await mc.start(2)
        await mc.elected()  # every group has a leader again before the reads that check it
        assert (await meta.get("obj/b", "k1")).value in ({"n": 1}, {"n": "maybe"})
        acked["k1"] = (await meta.get("obj/b", "k1")).value
        for k, v in acked.items():
            assert (await meta.get("obj/b", k)).value == v, k
        assert {e.key: e.value for e in await meta.scan("obj/b")} == acked


@pytest.mark.heavy
async def test_a_restarted_node_catches_up_from_the_log(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        ring = PartitionMap.from_cluster(mc.cfg)
        await meta.put("obj/b", "gone", {"n": 0})
        await mc.stop(2)
        keys = [f"k{i}" for i in range(10)]
        for k in keys:
            await meta.put("obj/b", k, {"n": k})
        await meta.delete("obj/b", "gone")
        await mc.start(2)
        store = mc.node(2).store

        def caught_up() -> bool:
            recs = [store.get("obj/b", ring.partition_of("obj/b", k), k) for k in [*keys, "gone"]]
            return [r.value if r else None for r in recs] == [{"n": k} for k in keys] + [None]
        await settle(caught_up)
        # ... and heard from every group's leader: a group that took no write while it was away
        # may have elected its first leader without it, and until a leader reaches it, its empty
        # log makes it refuse votes (a replaced disk must not vote twice)
        await settle(lambda: all(g.leader is not None for g in mc.node(2).groups.values()))
        # now either other node may fail and node 2 still serves everything with one partner
        await mc.stop(0)
        assert {e.key for e in await meta.scan("obj/b")} == set(keys)


@pytest.mark.parametrize("clients", [1, 4])
async def test_conditional_put_race_has_one_winner(tmp_path, clients):
    # The three nodes share this process's loop with 20 racing writers: on a loaded machine
    # (stop 20's CI) heartbeats came late, the group spent over 6 s between leaders and writes
    # gave up. The race's outcome, not its latency, is under test, so the clients wait longer.
    async with meta_cluster(tmp_path, metadata_timeout_s=30.0) as mc:
        metas = [mc.client(f"w{i}") for i in range(clients)]
        async with AsyncExitStack() as stack:
            for m in metas:
                await stack.enter_async_context(m)
            for round_ in range(5):
                key = f"bucket-{round_}"
                winners, losers = [], []

                async def attempt(i: int) -> None:
                    try:
                        e = await metas[i % clients].put("buckets", key, {"owner": f"u{i}"}, if_absent=True)
                        winners.append(e)
                    except ConditionFailed as cf:
                        losers.append(cf)

                async with anyio.create_task_group() as tg:
                    for i in range(20):
                        tg.start_soon(attempt, i)
                assert len(winners) == 1, (winners, losers)
                assert len(losers) == 19
                assert all(cf.http_status == 412 for cf in losers)
                final = await metas[0].get("buckets", key)
                assert final.value == winners[0].value
                p = PartitionMap.from_cluster(mc.cfg).partition_of("buckets", key)

                def converged() -> bool:  # every replica holds the winner
                    recs = [mc.node(i).store.get("buckets", p, key) for i in range(3)]
                    return all(r is not None and r.value == winners[0].value for r in recs)
                await settle(converged)


async def test_if_match_and_conditional_delete(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        with pytest.raises(ConditionFailed) as err:
            await meta.put("obj/b", "k", {"etag": "2"}, if_match=("etag", "1"))
        assert err.value.current is None
        await meta.put("obj/b", "k", {"etag": "1"})
        with pytest.raises(ConditionFailed) as err:
            await meta.put("obj/b", "k", {"etag": "x"}, if_absent=True)
        assert err.value.current.value == {"etag": "1"}
        await meta.put("obj/b", "k", {"etag": "2"}, if_match=("etag", "1"))
        with pytest.raises(ConditionFailed):
            await meta.put("obj/b", "k", {"etag": "3"}, if_match=("etag", "1"))
        with pytest.raises(ConditionFailed):
            await meta.delete("obj/b", "k", if_match=("etag", "1"))
        assert (await meta.delete("obj/b", "k", if_match=("etag", "2"))).value == {"etag": "2"}
        await meta.put("obj/b", "k", {"etag": "4"}, if_absent=True)  # absent again after a delete

        # racing If-Match writers: exactly one moves etag 4 on
        results: list = []

        async def swap(i: int) -> None:
            try:
                results.append(await meta.put("obj/b", "k", {"etag": f"5-{i}"}, if_match=("etag", "4")))
            except ConditionFailed:
                pass

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(swap, i)
        assert len(results) == 1
        assert (await meta.get("obj/b", "k")).value == results[0].value


@pytest.mark.heavy
async def test_listing_merges_partitions_with_a_hot_prefix(tmp_path):
    async with meta_cluster(tmp_path, partitions=64) as mc, mc.client() as meta:
        keys = [f"videos/title-{i % 7}/seg-{i:05}.m4s" for i in range(600)] + ["a", "videos/", "zz", "é"]
        rnd = random.Random(3)
        rnd.shuffle(keys)
        ring = PartitionMap.from_cluster(mc.cfg)
        assert len({ring.partition_of("obj/v", k) for k in keys}) == 64  # the hot prefix spreads

        # Many writers at once, but not 600: every node and the client share this one process,
        # so 600 writes in flight only measure how long the last one queues (a load test, which
        # belongs in bench/), and on a slow machine that outlasts the client's per-attempt deadline.
        writers = anyio.CapacityLimiter(64)

        async def put(k: str) -> None:
            async with writers:
                await meta.put("obj/v", k, {"k": k})

        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(put, k)
        for k in rnd.sample(keys, 50):
            await meta.delete("obj/v", k)
            keys.remove(k)
        want = sorted(keys)
        got = await meta.scan("obj/v", limit=10_000)
        assert [e.key for e in got] == want
        # pages of any size, with a prefix, resume where the last one ended
        for limit in (1, 7, 100):
            seen, after = [], ""
            while page := await meta.scan("obj/v", prefix="videos/title-3/", start_after=after, limit=limit):
                seen += [e.key for e in page]
                after = page[-1].key
            assert seen == [k for k in want if k.startswith("videos/title-3/")]
        async with aclosing(meta.scan_iter("obj/v", page_size=3)) as it:
            assert [e.key async for e in it] == want


@pytest.mark.heavy
async def test_five_nodes_partial_replica_sets(tmp_path):
    async with meta_cluster(tmp_path, n=5, partitions=32) as mc, mc.client() as meta:
        ring = PartitionMap.from_cluster(mc.cfg)
        keys = [f"k{i:03}" for i in range(200)]
        for k in keys:
            await meta.put("obj/b", k, {"k": k})
        for i in range(5):  # each node holds only its partitions
            parts = set(ring.partitions_of(f"meta-{i}"))
            held = {ring.partition_of("obj/b", k) for k in keys
                    if mc.node(i).store.get("obj/b", ring.partition_of("obj/b", k), k) is not None}
            assert held <= parts
        assert [e.key for e in await meta.scan("obj/b", limit=500)] == keys
        await mc.stop(0)
        await mc.stop(1)
        # A group's survivor may still serve reads while its leader lease lasts (the promises of
        # the majority it last heard from, docs/metadata.md): wait that out first.
        await anyio.sleep(mc.cfg.objstore.raft_election_timeout_s)
        ok = fail = 0
        lost_groups: set = set()
        async with mc.client("quick", timeout_s=1.0) as quick:
            for k in keys:
                p = ring.partition_of("obj/b", k)
                if {"meta-0", "meta-1"} <= set(ring.replica_set(p)):
                    fail += 1
                    if frozenset(ring.replica_set(p)) in lost_groups:
                        continue  # one 1 s timeout per group that lost its majority is enough
                    lost_groups.add(frozenset(ring.replica_set(p)))
                    with pytest.raises(QuorumUnavailable):
                        await quick.get("obj/b", k)
                else:
                    assert (await meta.get("obj/b", k)).value == {"k": k}
                    ok += 1
        assert ok and fail


async def test_unwritable_data_dir_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    node = MetadataNodeConfig(id="m", port=0, admin_port=1, data_dir=tmp_path / "file" / "meta")
    cfg = ClusterConfig(secret_env=TEST_SECRET_ENV, metadata=(node,))
    with pytest.raises(DataDirError, match="cannot create metadata data_dir"):
        await run_metadata_node(cfg, node, admin=False)


async def test_a_corrupt_record_on_the_leader_is_repaired_from_a_peer(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        await meta.put("obj/b", "k", {"etag": "1"})
        ring = PartitionMap.from_cluster(mc.cfg)
        p = ring.partition_of("obj/b", "k")
        stores = [mc.node(i).store for i in range(3)]
        await settle(lambda: all(st.get("obj/b", p, "k") is not None for st in stores))
        # the leader of the group that holds the key's partition (another node may lead others)
        gid = group_name(ring.group_of(p))
        await settle(lambda: any(gid in mc.node(i).groups and mc.node(i).groups[gid].is_leader for i in range(3)))
        leader = next(i for i in range(3) if gid in mc.node(i).groups and mc.node(i).groups[gid].is_leader)
        store = stores[leader]
        enc = store._encode(p, "obj/b", "k")
        with store._env.begin(write=True) as txn:
            raw = bytearray(store._get_raw(txn, enc))
            raw[2] ^= 0xFF
            store._put_raw(txn, enc, bytes(raw))
        assert (await meta.get("obj/b", "k")).value == {"etag": "1"}
        assert store.get("obj/b", p, "k").value == {"etag": "1"}  # healed in place
        stats = mc.node(leader).statistics()
        assert stats["corrupt_records"] >= 1 and stats["records_repaired"] == 1


@pytest.mark.heavy
async def test_a_node_behind_the_compacted_log_gets_a_snapshot(tmp_path):
    async with meta_cluster(tmp_path, partitions=8) as mc:
        mc.cfg = mc.cfg.replace(objstore=dataclasses.replace(mc.cfg.objstore, raft_log_entries=10))
        for i in range(3):  # restart with the small log limit
            await mc.stop(i)
        for i in range(3):
            await mc.start(i)
        async with mc.client() as meta:
            ring = PartitionMap.from_cluster(mc.cfg)
            await meta.put("obj/b", "before", {"n": 0})
            await meta.put("obj/b", "doomed", {"n": 0})
            await mc.stop(2)
            keys = [f"k{i:03}" for i in range(150)]
            for k in keys:
                await meta.put("obj/b", k, {"k": k})
            await meta.delete("obj/b", "doomed")
            # a follower applies (and so compacts) a heartbeat after the leader
            await settle(lambda: all(mc.node(i).statistics()["raft_compactions"] >= 1 for i in (0, 1)))
            await mc.start(2)
            store = mc.node(2).store

            def caught_up() -> bool:
                held = {k for k in [*keys, "before", "doomed"]
                        if store.get("obj/b", ring.partition_of("obj/b", k), k) is not None}
                return held == {*keys, "before"}
            await settle(caught_up, timeout=10)
            assert sum(mc.node(i).statistics()["raft_snapshots_sent"] for i in (0, 1)) >= 1
            # the records land chunk by chunk; the install counts once the last one is in
            await settle(lambda: mc.node(2).statistics()["raft_snapshots_installed"] >= 1)
            # the snapshot is a working replica: it can serve with either partner gone
            await mc.stop(0)
            assert {e.key for e in await meta.scan("obj/b", limit=500)} == {*keys, "before"}
            await meta.put("obj/b", "after", {"n": 1})
            assert (await meta.get("obj/b", "after")).value == {"n": 1}


async def test_a_replaced_node_with_an_empty_disk_rejoins_without_downtime(tmp_path):
    """Replacing a metadata node's disk: the same id comes back empty, refuses to vote until a
    leader has brought it in, and catches up; clients keep reading and writing throughout."""
    import shutil

    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        ring = PartitionMap.from_cluster(mc.cfg)
        keys = [f"k{i:02}" for i in range(30)]
        for k in keys[:15]:
            await meta.put("obj/b", k, {"k": k})
        # the node leading fewest groups (with 8 groups on 3 nodes and leaders handed to their
        # preferred nodes after 10 s, every node may lead some: then its groups elect anew)
        victim = min(range(3), key=lambda i: sum(g.is_leader for g in mc.node(i).groups.values()))
        await mc.stop(victim)
        shutil.rmtree(mc.cfg.metadata[victim].data_dir)
        await mc.start(victim)
        for k in keys[15:]:  # no pause: the group serves while the new disk fills
            await meta.put("obj/b", k, {"k": k})
        store = mc.node(victim).store
        await settle(lambda: all(store.get("obj/b", ring.partition_of("obj/b", k), k) is not None for k in keys),
                     timeout=10)
        # and it is a full member again: the group survives losing one of the others
        other = next(i for i in range(3) if i != victim)
        await mc.stop(other)
        assert [e.key for e in await meta.scan("obj/b")] == keys
        await meta.put("obj/b", "after", {"n": 1})


async def test_partitions_and_groups_are_fixed_once_the_ring_is_formed(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        await meta.put("obj/b", "k", {"n": 1})
        await mc.stop(0)
        before = mc.cfg
        for change in ({"partitions": 32}, {"metadata_groups": 4}):
            mc.cfg = before.replace(objstore=dataclasses.replace(before.objstore, **change))
            with pytest.raises(RingChanged, match="fixed once a ring is formed"):
                await run_metadata_node(mc.cfg, mc.cfg.metadata[0], admin=False)
        mc.cfg = before
        await mc.start(0)  # the unchanged ring starts as before
        assert (await meta.get("obj/b", "k")).value == {"n": 1}


def _flip(store, p: int, ns: str, key: str) -> None:
    """Flip a byte of ``key``'s stored bytes (its overflow group's, for a long key)."""
    enc = store._encode(p, ns, key)
    gkey = store._group_key(enc) or enc
    with store._env.begin(write=True) as txn:
        raw = bytearray(txn.get(gkey))
        raw[3] ^= 0xFF
        txn.put(gkey, bytes(raw))


async def test_a_corrupt_record_met_while_applying_rebuilds_that_replica(tmp_path):
    """A condition must never be judged on a corrupt copy: the replica that meets one while
    applying stops, wipes itself and catches up, instead of applying a different answer."""
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        ring = PartitionMap.from_cluster(mc.cfg)
        p = ring.partition_of("obj/b", "k")
        await meta.put("obj/b", "k", {"etag": "old"})
        for i in range(10):
            await meta.put("obj/b", f"other{i}", {"n": i})
        stores = [mc.node(i).store for i in range(3)]
        p9 = ring.partition_of("obj/b", "other9")
        await settle(lambda: all(st.get("obj/b", p9, "other9") is not None for st in stores))
        gname = group_name(ring.group_of(p))
        # a follower that is not the group's preferred leader either: a leader hands the group to
        # its preferred node after 10 s of steady leadership, and on a slow machine that could
        # make the corrupted copy the leader's in the middle of the test
        preferred = ring.members_of(ring.group_of(p))[0]
        follower = next(i for i in range(3) if not mc.node(i).groups[gname].is_leader
                        and mc.cfg.metadata[i].id != preferred)
        _flip(stores[follower], p, "obj/b", "k")
        with pytest.raises(ConditionFailed):
            await meta.put("obj/b", "k", {"etag": "new"}, if_absent=True)
        # the follower rebuilt itself and holds exactly what the others hold
        await settle(lambda: mc.node(follower).statistics()["raft_resyncs"] >= 1)

        def rebuilt() -> bool:
            try:
                return stores[follower].get("obj/b", p, "k") is not None
            except CorruptRecord:
                return False  # counted as resyncing, not yet wiped: the corrupt copy is still there

        await settle(rebuilt, timeout=10)
        assert stores[follower].get("obj/b", p, "k").value == {"etag": "old"}
        for i in range(3):  # whoever leads next answers the same
            assert stores[i].get("obj/b", p, "k").value == {"etag": "old"}


async def test_a_corrupt_overflow_group_on_the_leader_is_rebuilt_not_read_as_empty(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        ring = PartitionMap.from_cluster(mc.cfg)
        long1, long2 = "v/" + "a" * 600 + "1", "v/" + "a" * 600 + "2"  # one overflow group
        await meta.put("obj/b", long1, {"n": 1})
        await meta.put("obj/b", long2, {"n": 2})
        stores = [mc.node(i).store for i in range(3)]
        p1 = ring.partition_of("obj/b", long1)
        await settle(lambda: all(st.get("obj/b", p1, long1) is not None for st in stores))
        gname = group_name(ring.group_of(p1))
        # (between two leaders, as after a handover to the preferred node, no node leads)
        await settle(lambda: any(mc.node(i).groups[gname].is_leader for i in range(3)))
        leader = next(i for i in range(3) if mc.node(i).groups[gname].is_leader)
        _flip(stores[leader], p1, "obj/b", long1)
        assert (await meta.get("obj/b", long1)).value == {"n": 1}  # served by the next leader
        assert (await meta.get("obj/b", long2)).value == {"n": 2}
        await settle(lambda: mc.node(leader).statistics()["raft_resyncs"] >= 1)
        await settle(lambda: stores[leader].get("obj/b", p1, long1) is not None, timeout=10)
        assert stores[leader].get("obj/b", p1, long1).value == {"n": 1}
