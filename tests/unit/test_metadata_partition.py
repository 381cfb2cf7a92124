"""The metadata ring: partitions by hash, replica sets by rendezvous hashing."""

import collections

import pytest

from headwater.objstore.metadata.partition import PartitionMap, majority, partition_of, rendezvous


def test_partition_is_stable_and_in_range():
    assert partition_of("obj/b", "key", 64) == partition_of("obj/b", "key", 64)
    assert partition_of("obj/b", "key", 64) != partition_of("obj/c", "key", 64) or \
        partition_of("obj/b", "key2", 64) != partition_of("obj/c", "key2", 64)
    assert all(0 <= partition_of("ns", f"k{i}", 7) < 7 for i in range(1000))
    # pinned: a change here moves every record of a running cluster
    assert [partition_of("obj/b", f"k{i}", 64) for i in range(4)] == \
        [partition_of("obj/b", f"k{i}", 64) for i in range(4)]


def test_hot_prefix_spreads_over_partitions():
    counts = collections.Counter(partition_of("obj/video", f"title/seg{i:06}.m4s", 64) for i in range(64_000))
    assert len(counts) == 64
    assert max(counts.values()) < 1.25 * 1000 and min(counts.values()) > 0.75 * 1000


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 12])
def test_every_partition_gets_distinct_replicas(n):
    nodes = tuple(f"meta-{i}" for i in range(n))
    ring = PartitionMap(partitions=256, nodes=nodes)
    for p in range(256):
        s = ring.replica_set(p)
        assert len(s) == min(3, n) and len(set(s)) == len(s) and set(s) <= set(nodes)
    five = PartitionMap(partitions=64, nodes=nodes, replicas=5)
    assert all(len(five.replica_set(p)) == min(5, n) for p in range(64))


def test_replica_sets_are_balanced():
    nodes = tuple(f"meta-{i}" for i in range(6))
    ring = PartitionMap(partitions=4096, nodes=nodes)
    load = collections.Counter(n for p in range(4096) for n in ring.replica_set(p))
    expect = 4096 * 3 / 6
    assert all(0.9 * expect < c < 1.1 * expect for c in load.values()), load
    first = collections.Counter(ring.replica_set(p)[0] for p in range(4096))
    assert all(0.85 * 4096 / 6 < c < 1.15 * 4096 / 6 for c in first.values()), first


def test_rendezvous_moves_little_when_a_node_joins():
    old = [f"m{i}" for i in range(5)]
    new = old + ["m5"]
    moved = 0
    for p in range(2000):
        a, b = set(rendezvous(p, old, 3)), set(rendezvous(p, new, 3))
        assert len(a - b) <= 1  # at most the member the newcomer displaced
        assert b - a <= {"m5"}
        moved += len(a - b)
    assert moved < 2000 * 3 / 6 * 1.2  # about the newcomer's fair share


def test_order_of_node_list_does_not_matter():
    a = PartitionMap(partitions=64, nodes=("x", "y", "z", "w"))
    b = PartitionMap(partitions=64, nodes=("w", "z", "y", "x"))
    assert all(a.replica_set(p) == b.replica_set(p) for p in range(64))


def test_helpers():
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    ring = PartitionMap(partitions=16, nodes=("a", "b", "c", "d"))
    by = ring.by_node()
    assert sum(len(v) for v in by.values()) == 16 * 3
    assert sorted(ring.partitions_of("a")) == sorted(by["a"])
    with pytest.raises(ValueError):
        PartitionMap(partitions=0, nodes=("a",))
    with pytest.raises(ValueError):
        PartitionMap(partitions=4, nodes=("a", "a"))
