"""``headwater meta rebalance``: move each Raft group of the metadata ring to where cluster.toml
places it now (``PartitionMap.members_of``: rendezvous over the nodes that are not draining).

First it tells every node each group's preferred leader in that placement (``meta.prefer``):
a node reads its ring once, at start-up, and would otherwise go on handing groups' leadership
to a node now marked ``drain`` (or never to a node added since). Then, for each group, it finds
the leader and asks it to walk the membership there one server at a
time (``meta.reconfigure``: a new node joins as a learner, catches up, becomes a voter, and only
then is an old one removed), then tells every node the group left to drop its replica
(``meta.retire``). Reads and writes go on throughout: every step keeps a majority of the old and
of the new voters. Running it again resumes where it stopped; a group already in place is left
alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio

from headwater.config import ClusterConfig
from headwater.rpc import ClientPool, RpcError, cluster_secret

from .errors import MetadataError, NotLeaderError
from .partition import DEFAULT_REPLICAS, PartitionMap, group_name
from .raft.core import Config

__all__ = ["GroupState", "RebalanceError", "survey", "prefer_leaders", "rebalance"]

log = logging.getLogger("headwater.objstore.metadata.rebalance")


class RebalanceError(MetadataError):
    """A group could not be moved (no leader, a learner that did not catch up, too few nodes)."""

    s3_code = "ServiceUnavailable"
    http_status = 503


@dataclass(slots=True)
class GroupState:
    """One group as its leader sees it, beside where cluster.toml places it."""

    group: int
    target: tuple[str, ...]
    leader: str | None = None
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    holders: list[str] = field(default_factory=list)  # nodes holding a replica, members or not

    @property
    def in_place(self) -> bool:
        return set(self.voters) == set(self.target) and not self.learners

    @property
    def strays(self) -> list[str]:
        """Nodes still holding a replica of a group that no longer names them."""
        return sorted(n for n in self.holders if n not in self.voters and n not in self.learners)


def _pool(cluster: ClusterConfig) -> ClientPool:
    return ClientPool({m.id: (m.host, m.port) for m in cluster.metadata}, secret=cluster_secret(cluster),
                      connect_timeout=1.0, default_timeout=5.0)


async def _views(pool: ClientPool, g: int, timeout_s: float) -> dict[str, dict[str, Any]]:
    """Every reachable node's view of group ``g`` (``meta.config``)."""
    views: dict[str, dict[str, Any]] = {}

    async def one(node: str) -> None:
        try:
            views[node] = (await (await pool.get(node)).call("meta.config", {"g": group_name(g)},
                                                                timeout=timeout_s)).result
        except (RpcError, OSError):
            pass

    async with anyio.create_task_group() as tg:
        for node in list(pool.addresses):
            tg.start_soon(one, node)
    return views


async def _state(pool: ClientPool, ring: PartitionMap, g: int, timeout_s: float) -> GroupState:
    st = GroupState(group=g, target=tuple(sorted(ring.members_of(g))))
    views = await _views(pool, g, timeout_s)
    st.holders = sorted(n for n, v in views.items() if v.get("role") not in (None, "retired"))
    # A deposed leader may not know it yet: the one of the latest term leads.
    leaders = sorted((int(v.get("term", 0)), node) for node, v in views.items() if v.get("role") == "leader")
    if leaders:
        node = leaders[-1][1]
        st.leader = node
        st.voters = tuple(views[node]["config"]["voters"])
        st.learners = tuple(views[node]["config"]["learners"])
    return st


async def survey(cluster: ClusterConfig, *, timeout_s: float = 2.0) -> list[GroupState]:
    """Each group's leader, voters and learners, and where cluster.toml wants it."""
    ring = PartitionMap.from_cluster(cluster)
    async with _pool(cluster) as pool:
        return [await _state(pool, ring, g, timeout_s) for g in range(ring.groups)]


async def _retire_strays(pool: ClientPool, name: str, st: GroupState, addresses: dict[str, list[Any]],
                         report: Callable[[str], None]) -> None:
    """Tell each node that still holds a replica of group ``name`` but is no member of it any
    more (``st``, in place as its leader sees it) to drop that replica."""
    config = Config(voters=st.voters, addresses={n: addresses[n] for n in st.voters}).to_wire()
    for node in st.strays:
        try:
            await (await pool.get(node)).call("meta.retire", {"g": name, "config": config}, timeout=30.0)
            report(f"{name}: {node} dropped its replica")
        except (RpcError, OSError) as e:
            # It keeps a stale copy it never serves; the next run tries again.
            report(f"{name}: {node} could not drop its replica: {e}")


async def _announce_leaders(pool: ClientPool, ring: PartitionMap, timeout_s: float,
                            report: Callable[[str], None]) -> list[str]:
    """Tell every reachable node each group's preferred leader in ``ring`` (the placement's
    first choice, never a draining node); returns the nodes told. Best effort: a node that
    misses it keeps its start-up choice, which costs hand-overs, not correctness."""
    leaders = {group_name(g): ring.members_of(g)[0] for g in range(ring.groups) if ring.members_of(g)}
    told: list[str] = []

    async def one(node: str) -> None:
        try:
            await (await pool.get(node)).call("meta.prefer", {"leaders": leaders}, timeout=timeout_s)
            told.append(node)
        except (RpcError, OSError) as e:
            report(f"{node}: could not be told the preferred leaders: {e}")

    async with anyio.create_task_group() as tg:
        for node in list(pool.addresses):
            tg.start_soon(one, node)
    return sorted(told)


async def prefer_leaders(cluster: ClusterConfig, *, timeout_s: float = 2.0,
                         report: Callable[[str], None] = lambda line: None) -> list[str]:
    """Tell every metadata node each group's preferred leader as ``cluster`` places the groups
    (what ``rebalance`` does first); returns the nodes told."""
    async with _pool(cluster) as pool:
        return await _announce_leaders(pool, PartitionMap.from_cluster(cluster), timeout_s, report)


async def rebalance(cluster: ClusterConfig, *, catch_up_s: float = 300.0, attempts: int = 3,
                    leader_wait_s: float = 30.0,
                    report: Callable[[str], None] = lambda line: None) -> list[GroupState]:
    """Move every group to its placement in ``cluster``, one group at a time; returns the
    groups' states afterwards, each as a leader of the group saw it once the nodes it left were
    told to drop their copies (an election just then is waited out, as during the move). A group
    gets ``attempts`` failed changes and ``leader_wait_s`` without a leader before it counts as
    stuck. Raises RebalanceError for a group that could not be moved (the groups before it stay
    moved; running again goes on from there)."""
    ring = PartitionMap.from_cluster(cluster)
    wanted = min(DEFAULT_REPLICAS, len(cluster.metadata))
    if len(ring.nodes) < wanted:
        raise RebalanceError(f"only {len(ring.nodes)} metadata node(s) are not draining; each group needs {wanted}")
    addresses = {m.id: [m.host, m.port] for m in cluster.metadata}
    out: list[GroupState] = []
    async with _pool(cluster) as pool:
        # Before any move: a leader must not hand a group to a node being drained.
        await _announce_leaders(pool, ring, 2.0, report)
        for g in range(ring.groups):
            name = group_name(g)
            st = await _state(pool, ring, g, 2.0)
            failures = redirects = 0
            retired = False
            leaderless_until = anyio.current_time() + leader_wait_s
            while True:
                if st.leader is None:
                    # An election (a leader that just handed over, a hand-over to the preferred
                    # leader, a busy machine): wait for it. The state returned waits too: one
                    # read between two leaders shows no voters, i.e. a moved group as unmoved.
                    if anyio.current_time() > leaderless_until:
                        break
                    await anyio.sleep(0.5)
                    st = await _state(pool, ring, g, 2.0)
                    continue
                leaderless_until = anyio.current_time() + leader_wait_s
                if st.in_place:
                    if retired:
                        break  # in place as a leader saw it after the old members were told
                    await _retire_strays(pool, name, st, addresses, report)
                    retired = True
                    st = await _state(pool, ring, g, 2.0)
                    continue
                retired = False  # a leader that took over without the change: move it again
                if failures >= attempts:
                    break
                report(f"{name}: {','.join(st.voters)} -> {','.join(st.target)} (leader {st.leader})")
                try:
                    await (await pool.get(st.leader)).call(
                        "meta.reconfigure", {"g": name, "voters": {n: addresses[n] for n in st.target},
                                             "catch_up_s": catch_up_s}, timeout=catch_up_s + 60.0)
                except NotLeaderError:
                    redirects += 1  # handed over, or deposed: ask the group again
                    if redirects > 10 * attempts:
                        break
                except (RpcError, OSError) as e:
                    failures += 1
                    report(f"{name}: attempt {failures} failed: {e}")
                    await anyio.sleep(1.0)
                st = await _state(pool, ring, g, 2.0)
            if st.leader is None or not st.in_place:
                raise RebalanceError(f"{name} could not be moved to {','.join(st.target)} "
                                     f"(now: voters {','.join(st.voters) or '?'}, leader {st.leader or 'none'})")
            out.append(st)
    return out
