"""Handoff choice, sans-IO: placement + the down set -> the node each fragment goes to, and the
layout's record of fragments away from home."""

import pytest

from headwater.objstore.placement import NodeSite, PlacementError, assign, handoff_order, place
from headwater.objstore.records import Layout


def sites(n, hosts=None):
    hosts = hosts or n
    return [NodeSite(id=f"s{i}", host=f"h{i % hosts}") for i in range(n)]


def test_nothing_down_every_fragment_at_home():
    nodes = sites(6)
    a = assign("obj", 3, nodes)
    assert list(a.nodes) == list(a.homes) == place("obj", 3, nodes)
    assert a.away == {}
    assert list(a.handoffs) == handoff_order("obj", 3, nodes)


def test_handoff_order_continues_placement_and_holds_the_rest():
    nodes = sites(7)
    order = handoff_order("obj", 3, nodes)
    assert place("obj", 7, nodes) == place("obj", 3, nodes) + order
    assert sorted(place("obj", 3, nodes) + order) == sorted(n.id for n in nodes)
    assert handoff_order("obj", 7, nodes) == []


def test_down_home_goes_to_the_first_up_handoff_and_keeps_its_index():
    nodes = sites(6)
    homes = place("obj", 3, nodes)
    order = handoff_order("obj", 3, nodes)
    down = {homes[1], order[0]}  # the first handoff is down too: the second takes it
    a = assign("obj", 3, nodes, down=down)
    assert a.homes == tuple(homes)
    assert a.nodes == (homes[0], order[1], homes[2])
    assert a.away == {1: homes[1]}
    assert list(a.handoffs) == order[2:]  # left for failures during the PUT
    assert not set(a.nodes) & down


def test_two_homes_down_take_distinct_handoffs_in_order():
    nodes = sites(8)
    homes = place("o2", 4, nodes)
    order = handoff_order("o2", 4, nodes)
    a = assign("o2", 4, nodes, down={homes[0], homes[3]})
    assert (a.nodes[0], a.nodes[3]) == (order[0], order[1])
    assert len(set(a.nodes)) == 4


def test_deterministic_whatever_the_order_of_the_down_set():
    nodes = sites(9, hosts=3)
    homes = place("det", 3, nodes)
    a = assign("det", 3, nodes, down=[homes[0], homes[2]])
    b = assign("det", 3, nodes, down={homes[2], homes[0]})
    assert a == b


def test_no_up_node_left_leaves_the_fragment_unplaced():
    nodes = sites(3)
    homes = place("few", 3, nodes)
    a = assign("few", 3, nodes, down={homes[2]})
    assert a.nodes == (homes[0], homes[1], None)
    assert a.away == {2: homes[2]}


def test_too_small_a_cluster_is_refused():
    with pytest.raises(PlacementError):
        assign("x", 4, sites(3))


def test_handoffs_spread_over_hosts_as_homes_do():
    # 6 nodes on 3 hosts, EC 2+1: homes on 3 hosts; a home down goes to a host that holds
    # one fragment, never to the down node's own host twice over when another is free.
    nodes = sites(6, hosts=3)
    host = {n.id: n.host for n in nodes}
    for i in range(50):
        homes = place(f"h{i}", 3, nodes)
        assert len({host[h] for h in homes}) == 3
        order = handoff_order(f"h{i}", 3, nodes)
        assert len({host[h] for h in order}) == 3


def test_layout_marks_and_clears_handoffs_and_round_trips():
    lay = Layout(oid="o", size=10, k=2, m=1, stripe_bytes=4, nodes=("a", "x", "c"), homes=(None, "b", None))
    assert lay.away == {1: "b"} and lay.home_of(1) == "b" and lay.home_of(0) is None
    v = lay.to_value()
    assert v["homes"] == [None, "b", None]
    assert Layout.from_value(v) == lay
    home = lay.moved({1: "b"})
    assert home.nodes == ("a", "b", "c") and home.homes == () and home.away == {}
    assert "homes" not in home.to_value()
    # Rebuilt elsewhere (the handoff node went out): still to go home.
    elsewhere = lay.moved({1: "y"})
    assert elsewhere.away == {1: "b"}
    # A record written before handoffs existed reads as all at home.
    old = {"oid": "o", "size": 10, "k": 2, "m": 1, "stripe": 4, "nodes": ["a", "b", "c"]}
    assert Layout.from_value(old).away == {} and Layout.from_value(old).to_value() == old
