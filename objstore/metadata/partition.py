"""Where a record lives: (namespace, key) -> partition -> replica set. Pure lookups, no I/O.

A record's partition is the xxhash of its namespace and key, so consecutive keys (a hot prefix)
land on different partitions by construction. A partition's replica set is chosen by rendezvous
(highest-random-weight) hashing over the metadata node ids: every node scores every partition and
the top ``replicas`` win. Adding or removing one node moves only the partitions that node wins or
loses, and every client and node computes the same answer from the same cluster.toml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import xxhash

__all__ = ["DEFAULT_REPLICAS", "PartitionMap", "partition_of", "rendezvous", "majority", "group_id"]

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


def group_id(replica_set: tuple[str, ...]) -> str:
    """The name of the consensus group a replica set forms: its members, sorted."""
    return ",".join(sorted(replica_set))


def majority(n: int) -> int:
    """Answers needed out of ``n`` replicas so that any two majorities share a node."""
    return n // 2 + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionMap:
    """The metadata ring: partition count, node ids and replicas per partition, precomputed."""

    partitions: int
    nodes: tuple[str, ...]
    replicas: int = DEFAULT_REPLICAS
    _sets: tuple[tuple[str, ...], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.partitions > 65535:
            raise ValueError(f"partitions={self.partitions} must be between 1 and 65535")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"duplicate metadata node ids in {self.nodes}")
        if self.replicas < 1:
            raise ValueError(f"replicas={self.replicas} must be at least 1")
        sets = tuple(rendezvous(p, self.nodes, self.replicas) for p in range(self.partitions))
        object.__setattr__(self, "_sets", sets)

    @classmethod
    def from_cluster(cls, cluster: Any) -> PartitionMap:
        """The map a ClusterConfig describes (``objstore.metadata_replicas`` if present, else 3)."""
        replicas = getattr(cluster.objstore, "metadata_replicas", DEFAULT_REPLICAS)
        return cls(partitions=cluster.objstore.partitions,
                   nodes=tuple(m.id for m in cluster.metadata), replicas=replicas)

    def partition_of(self, ns: str, key: str) -> int:
        return partition_of(ns, key, self.partitions)

    def replica_set(self, partition: int) -> tuple[str, ...]:
        """Nodes holding ``partition``, best-scored first."""
        return self._sets[partition]

    def nodes_for(self, ns: str, key: str) -> tuple[int, tuple[str, ...]]:
        p = self.partition_of(ns, key)
        return p, self._sets[p]

    def quorum(self, partition: int) -> int:
        return majority(len(self._sets[partition]))

    def partitions_of(self, node_id: str) -> list[int]:
        """Partitions ``node_id`` is a replica of."""
        return [p for p, s in enumerate(self._sets) if node_id in s]

    def by_node(self, partitions: list[int] | range | None = None) -> dict[str, list[int]]:
        """Group partitions (default: all) by the nodes holding them, for one request per node."""
        out: dict[str, list[int]] = {}
        for p in (range(self.partitions) if partitions is None else partitions):
            for n in self._sets[p]:
                out.setdefault(n, []).append(p)
        return out
