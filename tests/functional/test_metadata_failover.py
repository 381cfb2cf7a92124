"""The metadata client finds a new leader in time when the one it knew of falls silent: not
refused, silent (it accepts connections and never answers, as a frozen or cut-off host does).

In-process nodes as in ``test_metadata.py``; the leader is stopped and its port taken over by a
listener that accepts and never reads, while the followers still name it leader for a moment.
"""

from __future__ import annotations

import anyio
import pytest

from headwater.objstore.metadata.partition import PartitionMap, group_name

from .test_metadata import meta_cluster

pytestmark = pytest.mark.anyio

NS = "obj/b"
TIMEOUT_S = 3.0  # the client's deadline; the cluster's election timeout is 0.5 s


def keys_by_group(ring: PartitionMap, n: int = 2000) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in range(n):
        key = f"k{i}"
        out.setdefault(group_name(ring.group_of(ring.partition_of(NS, key))), []).append(key)
    return out


async def black_hole(port: int, tg) -> None:
    """Accept on ``port`` and never answer (the node that held it just stopped)."""
    with anyio.fail_after(5):
        while True:
            try:
                listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
                break
            except OSError:
                await anyio.sleep(0.05)

    async def hold(stream) -> None:
        async with stream:
            await anyio.sleep_forever()

    tg.start_soon(listener.serve, hold)


async def every_group_led(mc, nodes) -> None:
    with anyio.fail_after(30):  # a loaded machine: elections wait on fsync
        while sum(mc.node(i).statistics()["raft_leading"] for i in nodes) < mc.cfg.objstore.metadata_groups:
            await anyio.sleep(0.05)


async def test_a_silent_leader_is_left_for_the_new_one_well_within_the_deadline(tmp_path):
    async with meta_cluster(tmp_path) as mc, anyio.create_task_group() as tg, \
            mc.client(timeout_s=TIMEOUT_S) as meta:
        rep = meta.replication
        assert rep.attempt_s <= TIMEOUT_S / 3
        await every_group_led(mc, range(3))
        # The victim: the node leading the most groups. The client learns every group's leader.
        led = {i: {name for name, g in mc.node(i).groups.items() if g.is_leader} for i in range(3)}
        victim = max(led, key=lambda i: len(led[i]))
        if len(led[victim]) < 2:
            # One group each (elections spread them so): hand the victim a second one.
            other = next(i for i in range(3) if i != victim and led[i])
            await mc.node(other).groups[min(led[other])].transfer_leadership(mc.cfg.metadata[victim].id)
            await every_group_led(mc, range(3))
            led = {i: {name for name, g in mc.node(i).groups.items() if g.is_leader} for i in range(3)}
        by_group = keys_by_group(rep.ring)
        for name, keys in by_group.items():
            await meta.put(NS, keys[0], {"n": 0})
        victim_keys = [by_group[name][1] for name in sorted(led[victim])]
        assert len(victim_keys) >= 2

        await mc.stop(victim)
        await black_hole(mc.cfg.metadata[victim].port, tg)

        # A write sent as the leader falls silent waits out one attempt on it, then finds the
        # leader elected after it (followers still naming the victim are not believed), within
        # the deadline however long the election takes.
        await meta.put(NS, victim_keys[0], {"n": 1})
        assert rep.stats["silent_attempts"] >= 1, rep.stats

        # Its other groups, once they elected new leaders, do not wait on it again: it is asked
        # only when named leader (the client still believes it leads them).
        await every_group_led(mc, [i for i in range(3) if i != victim])
        victim_id = mc.cfg.metadata[victim].id
        failed = rep.standing.failures(victim_id)
        for key in victim_keys[1:]:
            t = anyio.current_time()
            await meta.put(NS, key, {"n": 1})
            assert anyio.current_time() - t < TIMEOUT_S / 2, key
        # ...and neither do reads, nor requests to every group at once.
        async with anyio.create_task_group() as burst:
            for keys in by_group.values():
                burst.start_soon(meta.put, NS, keys[2], {"n": 2})
        assert (await meta.get(NS, victim_keys[0])).value == {"n": 1}
        # (A live leader slow to answer on a loaded machine is an attempt gone silent too.)
        assert rep.standing.failures(victim_id) == failed and rep.standing.suspect(victim_id), rep.stats
        assert rep.stats["quorum_failures"] == rep.stats["unknown_outcomes"] == 0
        tg.cancel_scope.cancel()


async def test_a_write_a_silent_leader_left_unanswered_is_sent_again_and_acknowledged(tmp_path):
    """The write whose attempt went unanswered is sent again (same version) to the new leader:
    acknowledged, reporting the value before it, and read back as written."""
    async with meta_cluster(tmp_path) as mc, anyio.create_task_group() as tg, \
            mc.client(timeout_s=TIMEOUT_S) as meta:
        rep = meta.replication
        by_group = keys_by_group(rep.ring)
        await every_group_led(mc, range(3))
        for keys in by_group.values():
            await meta.put(NS, keys[0], {"n": 0})
        victim = next(i for i in range(3) if any(g.is_leader for g in mc.node(i).groups.values()))
        name = next(n for n, g in sorted(mc.node(victim).groups.items()) if g.is_leader)
        key = by_group[name][0]
        await mc.stop(victim)
        await black_hole(mc.cfg.metadata[victim].port, tg)
        entry, previous = await meta.replace(NS, key, {"n": 1})
        assert previous is not None and previous.value == {"n": 0}
        got = await meta.get(NS, key)
        assert got == entry
        assert rep.stats["silent_attempts"] >= 1 and rep.stats["retries"] >= 1
        tg.cancel_scope.cancel()
