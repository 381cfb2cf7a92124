"""Placement: distinct nodes, widest failure domains first, stable, and refuses when too few are up."""

import pytest

from headwater.objstore.placement import NodeSite, PlacementError, place


def sites(n, zones=1, racks=1):
    return [NodeSite(id=f"s{i}", zone=f"z{i % zones}", rack=f"r{i % racks}", host=f"h{i}") for i in range(n)]


def test_distinct_and_stable():
    nodes = sites(6)
    a = place("obj1", 6, nodes)
    assert sorted(a) == sorted(n.id for n in nodes)
    assert place("obj1", 6, nodes) == a


def test_spreads_across_zones_first():
    nodes = sites(9, zones=3)
    chosen = place("x", 3, nodes)
    zones = {n.zone for n in nodes if n.id in chosen}
    assert len(zones) == 3


def test_skips_down_nodes_and_refuses_when_too_few():
    nodes = sites(6)
    chosen = place("y", 4, nodes, down={"s0", "s1"})
    assert "s0" not in chosen and "s1" not in chosen and len(set(chosen)) == 4
    with pytest.raises(PlacementError):
        place("y", 5, nodes, down={"s0", "s1"})


def test_load_spreads_over_nodes():
    nodes = sites(8)
    counts = {n.id: 0 for n in nodes}
    for i in range(2000):
        for node in place(f"o{i}", 6, nodes):
            counts[node] += 1
    assert max(counts.values()) - min(counts.values()) < 0.1 * 1500
