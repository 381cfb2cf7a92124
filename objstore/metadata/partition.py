"""Where a record lives: (namespace, key) -> partition -> Raft group -> nodes. Pure lookups, no I/O.

A record's partition is the xxhash of its namespace and key, so consecutive keys (a hot prefix)
land on different partitions by construction. Partition ``p`` belongs to Raft group
``p % groups``, for good: partitions and groups are fixed when the ring is formed. What moves is a
group's membership. Where a group *should* live is chosen by rendezvous (highest-random-weight)
hashing over the metadata node ids: every node scores every group and the top ``replicas`` win,
so adding or removing one node changes only the groups that node wins or loses. Where a group
*does* live is its own business (configuration entries in its log, see ``raft/core.py``);
``headwater meta rebalance`` walks each group from the one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import xxhash

__all__ = ["DEFAULT_REPLICAS", "PartitionMap", "partition_of", "rendezvous", "majority", "group_name"]

DEFAULT_REPLICAS = 3

_SEED_PARTITION = 0x4857_4D45  # "HWME": keeps these hashes apart from other xxhash users
_SEED_PLACEMENT = 0x4857_5250


def partition_of(ns: str, key: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) that holds ``key`` of namespace ``ns``."""
    h = xxhash.xxh3_64_intdigest(ns.encode("utf-8", "surrogatepass") + b"\0"
                                 + key.encode("utf-8", "surrogatepass"), seed=_SEED_PARTITION)
    return h % partitions


def rendezvous(partition: int, node_ids: tuple[str, ...] | list[str], replicas: int) -> tuple[str, ...]:
    """The ``min(replicas, len(node_ids))`` nodes with the highest score for ``partition``."""
    scored = sorted(node_ids, key=lambda n: (xxhash.xxh3_64_intdigest(f"{partition}/{n}".encode(),
                                                                      seed=_SEED_PLACEMENT), n),
                    reverse=True)
    return tuple(scored[:max(0, min(replicas, len(scored)))])


def group_name(group: int) -> str:
    """The name of Raft group ``group`` (its key prefix on disk, its id on the wire)."""
    return f"g{group}"


def majority(n: int) -> int:
    """Answers needed out of ``n`` replicas so that any two majorities share a node."""
    return n // 2 + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionMap:
    """The metadata ring: partitions, Raft groups, and where each group should live (the top
    ``replicas`` of ``nodes`` by rendezvous score), precomputed."""

    partitions: int
    nodes: tuple[str, ...]
    replicas: int = DEFAULT_REPLICAS
    groups: int = 0  # 0: one group per partition
    _sets: tuple[tuple[str, ...], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.partitions > 65535:
            raise ValueError(f"partitions={self.partitions} must be between 1 and 65535")
        if self.groups == 0:
            object.__setattr__(self, "groups", self.partitions)
        if not 1 <= self.groups <= self.partitions:
            raise ValueError(f"groups={self.groups} must be between 1 and partitions={self.partitions}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"duplicate metadata node ids in {self.nodes}")
        if self.replicas < 1:
            raise ValueError(f"replicas={self.replicas} must be at least 1")
        sets = tuple(rendezvous(g, self.nodes, self.replicas) for g in range(self.groups))
        object.__setattr__(self, "_sets", sets)

    @classmethod
    def from_cluster(cls, cluster: Any) -> PartitionMap:
        """Where cluster.toml wants the groups: on its metadata nodes that are not draining."""
        return cls(partitions=cluster.objstore.partitions, groups=cluster.objstore.metadata_groups,
                   nodes=tuple(m.id for m in cluster.metadata if not m.drain), replicas=DEFAULT_REPLICAS)

    def partition_of(self, ns: str, key: str) -> int:
        return partition_of(ns, key, self.partitions)

    def group_of(self, partition: int) -> int:
        return partition % self.groups

    def partitions_in(self, group: int) -> list[int]:
        return list(range(group, self.partitions, self.groups))

    def members_of(self, group: int) -> tuple[str, ...]:
        """Where ``group`` should live, best-scored first."""
        return self._sets[group]

    def replica_set(self, partition: int) -> tuple[str, ...]:
        """Nodes that should hold ``partition``, best-scored first."""
        return self._sets[self.group_of(partition)]

    def nodes_for(self, ns: str, key: str) -> tuple[int, tuple[str, ...]]:
        p = self.partition_of(ns, key)
        return p, self.replica_set(p)

    def quorum(self, partition: int) -> int:
        return majority(len(self.replica_set(partition)))

    def partitions_of(self, node_id: str) -> list[int]:
        """Partitions ``node_id`` is a replica of."""
        return [p for p in range(self.partitions) if node_id in self.replica_set(p)]

    def by_node(self, partitions: list[int] | range | None = None) -> dict[str, list[int]]:
        """Group partitions (default: all) by the nodes holding them, for one request per node."""
        out: dict[str, list[int]] = {}
        for p in (range(self.partitions) if partitions is None else partitions):
            for n in self.replica_set(p):
                out.setdefault(n, []).append(p)
        return out
