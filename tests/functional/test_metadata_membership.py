"""Adding and draining metadata nodes on a live ring: each Raft group walks to its new members one
server at a time (learner, catch-up, voter, then the old member leaves) while a client writes and
reads. Nothing acknowledged is lost, and clients that knew only the old nodes follow the hints."""

from __future__ import annotations

import collections
import dataclasses
import time

import anyio
import pytest
from headwater.objstore.config import MetadataNodeConfig
from headwater.objstore.metadata import QuorumUnavailable, WriteOutcomeUnknown
from headwater.objstore.metadata.partition import PartitionMap, group_name
from headwater.objstore.metadata.rebalance import RebalanceError, prefer_leaders, rebalance, survey

from ..cluster import free_ports
from .test_metadata import meta_cluster

pytestmark = pytest.mark.anyio


async def add_meta_3(mc, tmp_path) -> None:
    """Start a fourth node, meta-3, which joins the running ring (it holds nothing until a
    rebalance moves groups to it), and wait until it has the ring's record from a founder: under
    load that can take longer than any fixed pause, so it is waited for (bounded)."""
    extra = MetadataNodeConfig(id="meta-3", port=free_ports(1)[0], admin_port=1,
                               data_dir=tmp_path / "meta-3", map_size_bytes=64 << 20)
    mc.cfg = mc.cfg.replace(metadata=(*mc.cfg.metadata, extra))
    await mc.start(3)
    with anyio.fail_after(10):
        while not mc.node(3).ring_record:
            await anyio.sleep(0.05)


@pytest.mark.heavy
async def test_adding_a_node_then_draining_one_moves_groups_without_losing_a_write(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client("w1") as meta:
        acked: dict[str, int] = {}
        for i in range(40):
            await meta.put("obj/b", f"pre{i:02}", {"n": i})
            acked[f"pre{i:02}"] = i
        done = anyio.Event()
        progress = {"ok": 0, "unavailable": 0}

        async def writer() -> None:
            n = 0
            while not done.is_set():
                key = f"live{n:04}"
                try:
                    await meta.put("obj/b", key, {"n": n})
                    acked[key] = n
                    progress["ok"] += 1
                except (QuorumUnavailable, WriteOutcomeUnknown):
                    progress["unavailable"] += 1
                n += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await add_meta_3(mc, tmp_path)
            assert mc.node(3).groups == {}  # joined, not founding: no group until a leader adds it
            assert mc.node(3).ring_record["founders"] == ["meta-0", "meta-1", "meta-2"]
            before = progress["ok"]
            states = await rebalance(mc.cfg, catch_up_s=30)
            assert progress["ok"] > before  # writes went on during the moves
            ring = PartitionMap.from_cluster(mc.cfg)
            moved = [g for g in range(ring.groups) if "meta-3" in ring.members_of(g)]
            assert moved and all(st.in_place and st.leader for st in states), states
            assert set(mc.node(3).groups) == {group_name(g) for g in moved}
            for g in moved:  # the member each moved group left holds no copy any more
                (left,) = {"meta-0", "meta-1", "meta-2"} - set(ring.members_of(g))
                assert group_name(g) not in mc.node(int(left[-1])).groups
                assert group_name(g) in mc.node(int(left[-1])).retired

            # Drain meta-0: its groups move to the others; then it is stopped.
            mc.cfg = mc.cfg.replace(metadata=tuple(
                dataclasses.replace(m, drain=True) if m.id == "meta-0" else m for m in mc.cfg.metadata))
            def elections() -> collections.Counter:
                """Elections nodes 1-3 started: after a hand-over (TimeoutNow), or on a timer."""
                stats = [mc.node(i).statistics() for i in (1, 2, 3)]
                handed = sum(st["raft_transfers_received"] for st in stats)
                return collections.Counter(handed=handed, timer=sum(st["raft_elections"] for st in stats) - handed)
            at_start = elections()
            # meta-0's replicas, kept: a retired one leaves the node's summed statistics.
            drained = list(mc.node(0).groups.values())
            to_drained = sum(g.stats["transfers_received"] for g in drained)
            before = progress["ok"]
            lines: list[str] = []
            states = await rebalance(mc.cfg, catch_up_s=30, report=lines.append)
            assert progress["ok"] > before
            # No leader handed a group to the node being drained (rebalance told every node
            # the new preferred leaders first: meta.prefer).
            assert sum(g.stats["transfers_received"] for g in drained) == to_drained, lines
            assert all(st.in_place and "meta-0" not in st.voters for st in states), (states, lines)
            # meta-0 never removed itself, which would leave a group it led to an election: it
            # hands the group to another voter, which removes it, so the step that finished each
            # group's move was asked of a leader other than meta-0.
            last_step = {line.partition(": ")[0]: line for line in lines if " -> " in line}
            assert not [line for line in last_step.values() if line.endswith("(leader meta-0)")], lines
            # And when no election on a timer (a busy machine) was held meanwhile, so that none
            # can have taken a leadership from meta-0 first, a group it led was handed over.
            during = elections() - at_start
            if any(line.endswith("(leader meta-0)") for line in lines) and not during["timer"]:
                assert during["handed"] >= 1, lines
            assert mc.node(0).groups == {}
            await mc.stop(0)
            # Writes go on with meta-0 gone for good. Counted, not timed: how many land in a
            # fixed pause (or in the whole test) depends on how busy the machine is.
            before = progress["ok"]
            with anyio.fail_after(30):
                while progress["ok"] < before + 5:
                    await anyio.sleep(0.05)
            done.set()

        # The client that knew only meta-0..2 found the groups through the hints; everything
        # acknowledged is there, by key and in a listing.
        for key, n in acked.items():
            got = await meta.get("obj/b", key)
            assert got is not None and got.value == {"n": n}, key
        listed = {e.key for e in await meta.scan("obj/b", limit=10_000)}
        assert set(acked) <= listed
        # A new client from the new cluster.toml, and writes with meta-0 gone for good.
        async with mc.client("w2") as fresh:
            await fresh.put("obj/b", "after", {"n": -1})
            assert (await fresh.get("obj/b", "after")).value == {"n": -1}
            assert len(await fresh.scan("obj/b", limit=10_000)) == len(listed) + 1
        assert {st.group for st in await survey(mc.cfg)} == set(range(mc.cfg.objstore.metadata_groups))


@pytest.mark.heavy
async def test_a_group_whose_leader_steps_down_as_its_move_ends_is_reported_in_place(tmp_path):
    """The moment a group is in place and its old member is told to drop its copy, its leader
    may change (a hand-over to the preferred leader, or a step-down on a busy machine, both seen
    during drains under load). What rebalance returns is what a leader saw after the move, not a
    survey taken between two leaders, which would call a moved group unmoved."""
    async with meta_cluster(tmp_path) as mc, mc.client("w1") as meta:
        await meta.put("obj/b", "k", {"n": 1})
        await add_meta_3(mc, tmp_path)
        stepped_down: list[str] = []

        def report(line: str) -> None:
            # Called just after the last stray dropped its copy, before rebalance looks at the
            # group again: its leader steps down then, so an election is on when it looks.
            name, _, rest = line.partition(": ")
            if rest.endswith("dropped its replica"):
                for i in mc.running:
                    g = mc.node(i).groups.get(name)
                    if g is not None and g.is_leader:
                        g.core.step_down(time.monotonic())
                        stepped_down.append(name)

        states = await rebalance(mc.cfg, catch_up_s=30, report=report)
        ring = PartitionMap.from_cluster(mc.cfg)
        moved = {group_name(g) for g in range(ring.groups) if "meta-3" in ring.members_of(g)}
        assert moved and set(stepped_down) == moved
        for st in states:
            assert st.leader is not None and st.in_place, st
        assert set(mc.node(3).groups) == moved
        await meta.put("obj/b", "k", {"n": 2})
        assert (await meta.get("obj/b", "k")).value == {"n": 2}


@pytest.mark.heavy
async def test_a_node_that_never_catches_up_is_not_made_a_voter(tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client("w1") as meta:
        await meta.put("obj/b", "k", {"n": 1})
        ghost = MetadataNodeConfig(id="meta-9", port=free_ports(1)[0], admin_port=1,
                                   data_dir=tmp_path / "meta-9", map_size_bytes=64 << 20)
        mc.cfg = mc.cfg.replace(metadata=(*mc.cfg.metadata, ghost))  # listed, never started
        with pytest.raises(RebalanceError):
            await rebalance(mc.cfg, catch_up_s=1.0, attempts=2)
        for st in await survey(mc.cfg):
            assert "meta-9" not in st.voters  # at most a learner, which counts for nothing
        # The group stays fully writable with a learner that never answers.
        await meta.put("obj/b", "k", {"n": 2})
        assert (await meta.get("obj/b", "k")).value == {"n": 2}


async def test_rebalance_refuses_to_shrink_groups_below_three(tmp_path):
    async with meta_cluster(tmp_path) as mc:
        mc.cfg = mc.cfg.replace(metadata=tuple(
            dataclasses.replace(m, drain=True) if m.id == "meta-0" else m for m in mc.cfg.metadata))
        with pytest.raises(RebalanceError, match="not draining"):
            await rebalance(mc.cfg)


@pytest.mark.heavy
async def test_leaders_move_to_their_preferred_nodes_and_spread(tmp_path):
    """Leadership lands wherever an election timer fires first; each group's leader hands over
    to the placement's first choice once both are steady, so the write work spreads."""
    from .test_metadata import settle
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        ring = PartitionMap.from_cluster(mc.cfg)
        preferred = {group_name(g): ring.members_of(g)[0] for g in range(ring.groups)}

        def settled() -> bool:
            groups = [mc.node(int(node[-1])).groups.get(name) for name, node in preferred.items()]
            return all(g is not None and g.is_leader for g in groups)
        await settle(settled, timeout=60)
        leading = [sum(g.is_leader for g in mc.node(i).groups.values()) for i in range(3)]
        assert sorted(leading) == sorted(list(collections.Counter(preferred.values()).values())
                                         + [0] * (3 - len(set(preferred.values()))))
        await meta.put("obj/b", "k", {"n": 1})
        assert (await meta.get("obj/b", "k")).value == {"n": 1}


@pytest.mark.heavy
async def test_leaders_do_not_hand_groups_to_a_node_being_drained(tmp_path):
    """A node reads its ring once, at start-up: told nothing, the leader of a group whose
    start-up first choice is meta-0 hands the group back to meta-0 after its ~10 s of steady
    leadership even while meta-0 is being drained (an extra hand-over and election per group).
    The rebalance first tells every node the new placement's preferred leaders, which never
    name a draining node, and the hand-over to meta-0 does not happen."""
    async with meta_cluster(tmp_path) as mc:
        await add_meta_3(mc, tmp_path)
        mc.cfg = mc.cfg.replace(metadata=tuple(
            dataclasses.replace(m, drain=True) if m.id == "meta-0" else m for m in mc.cfg.metadata))
        old = PartitionMap(partitions=mc.cfg.objstore.partitions, groups=mc.cfg.objstore.metadata_groups,
                           nodes=("meta-0", "meta-1", "meta-2"))
        names = [group_name(g) for g in range(old.groups) if old.members_of(g)[0] == "meta-0"]
        assert names  # the start-up ring prefers meta-0 for some group (g0 with these ids)
        lines: list[str] = []
        assert await prefer_leaders(mc.cfg, report=lines.append) == ["meta-0", "meta-1", "meta-2", "meta-3"], lines
        for name in names:
            assert mc.node(1).groups[name].preferred_leader != "meta-0"
        # Leadership of those groups away from meta-0 (where an election, e.g. on a busy
        # machine, can leave it at any time).
        for name in names:
            g0 = mc.node(0).groups[name]
            with anyio.fail_after(10):
                while not any(mc.node(i).groups[name].is_leader for i in range(3)):
                    await anyio.sleep(0.05)
            if g0.is_leader:
                await g0.transfer_leadership("meta-1")
        received = {name: mc.node(0).groups[name].stats["transfers_received"] for name in names}
        # Past the steady-leadership delay (10 s) that precedes a hand-over to the preferred leader.
        await anyio.sleep(14)
        assert {name: mc.node(0).groups[name].stats["transfers_received"] for name in names} == received
        assert not [name for name in names if mc.node(0).groups[name].is_leader]
