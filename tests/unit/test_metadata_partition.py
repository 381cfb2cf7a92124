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


def test_groups_are_fixed_per_partition_and_placed_by_rendezvous():
    ring = PartitionMap(partitions=64, groups=8, nodes=("a", "b", "c", "d"))
    assert [ring.group_of(p) for p in range(10)] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert ring.partitions_in(3) == [3, 11, 19, 27, 35, 43, 51, 59]
    assert all(ring.replica_set(p) == ring.members_of(p % 8) for p in range(64))
    # a fifth node changes only the groups it wins: the group's partitions stay where they are
    wider = PartitionMap(partitions=64, groups=8, nodes=("a", "b", "c", "d", "e"))
    for g in range(8):
        if "e" not in wider.members_of(g):
            assert set(wider.members_of(g)) == set(ring.members_of(g))
        else:
            assert len(set(wider.members_of(g)) - set(ring.members_of(g))) == 1
    with pytest.raises(ValueError):
        PartitionMap(partitions=4, groups=5, nodes=("a",))


def _toml(objstore: str = "", drain: str = "") -> str:
    return f"""
[objstore]
{objstore}
[[metadata]]
id = "m1"
port = 9201
admin_port = 9301
{drain}
[[metadata]]
id = "m2"
port = 9202
admin_port = 9302
"""


def test_metadata_groups_and_drain_are_read_and_checked():
    from headwater.config import ConfigError, loads
    cfg = loads(_toml())
    assert cfg.objstore.metadata_groups == 8 and not cfg.metadata[0].drain
    cfg = loads(_toml("partitions = 4"))
    assert cfg.objstore.metadata_groups == 4  # never more groups than partitions
    cfg = loads(_toml("metadata_groups = 2", "drain = true"))
    assert cfg.objstore.metadata_groups == 2 and cfg.metadata[0].drain
    assert PartitionMap.from_cluster(cfg).nodes == ("m2",)  # a draining node is placed nowhere
    for bad in ("metadata_groups = 0", "partitions = 4\nmetadata_groups = 5"):
        with pytest.raises(ConfigError, match="metadata_groups"):
            loads(_toml(bad), path="c.toml")
    with pytest.raises(ConfigError, match="drain"):
        loads(_toml("", 'drain = "yes"'), path="c.toml")
