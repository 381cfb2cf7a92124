"""When a storage node counts as down and as "out" (its fragments rebuilt elsewhere), on an
injected clock, and what the reconstructor plans for the fragments of an out node."""

from __future__ import annotations

import pytest

from headwater.config import ConfigError, loads
from headwater.objstore.layouts import layouts_in
from headwater.objstore.repair.liveness import NodeLiveness
from headwater.objstore.placement import NodeSite
from headwater.objstore.repair.reconstructor import FragState, LayoutCheck, judge, plan_rebuild
from headwater.objstore.records import Layout

KiB = 1024


# --- the bookkeeping -----------------------------------------------------------------------------

def test_a_node_is_down_from_its_first_failed_check_and_out_after_the_threshold():
    live = NodeLiveness(600)
    live.observe("s1", True, 0.0)
    assert live.down(0.0) == {} and live.out(0.0) == set()
    live.observe("s1", False, 100.0)           # the first failure starts the count
    live.observe("s1", False, 160.0)           # later failures do not move it
    assert live.down_since("s1") == 100.0
    assert live.down(160.0) == {"s1": 60.0}
    assert not live.is_out("s1", 699.9)
    assert live.is_out("s1", 700.0) and live.out(700.0) == {"s1"}
    assert live.down_for("s1", 1000.0) == 900.0
    assert live.outs == 1
    assert live.out(800.0) == {"s1"} and live.outs == 1   # counted once per down run


def test_one_answer_clears_down_and_out_and_the_count_starts_afresh():
    live = NodeLiveness(10)
    live.observe("s1", False, 0.0)
    assert live.out(10.0) == {"s1"}
    live.observe("s1", True, 11.0)             # it answers again: no longer out, nor down
    assert live.out(11.0) == set() and live.down(11.0) == {} and live.down_since("s1") is None
    live.observe("s1", False, 12.0)            # down again: a new run, from this failure
    assert not live.is_out("s1", 21.9) and live.is_out("s1", 22.0)
    assert live.out(22.0) == {"s1"} and live.outs == 2


def test_a_failure_between_successes_never_accumulates():
    live = NodeLiveness(5)
    for t in range(0, 100, 2):                 # flapping: fails, answers, fails, ...
        live.observe("s1", t % 4 == 0, float(t))
        assert not live.is_out("s1", float(t))
    assert live.outs == 0


def test_zero_means_never_out_but_down_is_still_tracked():
    live = NodeLiveness(0)
    live.observe("s1", False, 0.0)
    assert live.down(10**9) == {"s1": 10**9} and live.out(10**9) == set()
    with pytest.raises(ValueError):
        NodeLiveness(-1)


def test_observe_many_and_out_of_order_answers():
    live = NodeLiveness(30)
    live.observe_many(up=["s1"], down=["s2", "s3"], now=50.0)
    live.observe("s2", False, 40.0)            # a check made earlier, recorded late
    assert live.down(60.0) == {"s2": 20.0, "s3": 10.0}
    assert live.out(70.0) == {"s2"} and live.out(80.0) == {"s2", "s3"}


# --- judging and planning with an out node ---------------------------------------------------------

SITES = {f"s{i}": NodeSite(id=f"s{i}", zone="z1", rack=f"r{(i - 1) // 2}", host=f"h{i}") for i in range(1, 9)}


def lay(nodes, size=10 * 64 * KiB + 5, oid="abc") -> Layout:
    return Layout(oid=oid, size=size, k=4, m=2, stripe_bytes=64 * KiB, nodes=tuple(nodes))


def check(layout: Layout, states: str) -> LayoutCheck:
    table = {"o": FragState.OK, "m": FragState.MISSING, "p": FragState.UNPLACED,
             "u": FragState.UNREACHABLE, "x": FragState.OUT}
    ref = layouts_in("obj/b", "k", {"layouts": [layout.to_value()]})[0]
    return LayoutCheck(ref=ref, states=tuple(table[c] for c in states))


def test_judge_says_out_only_for_a_node_that_does_not_answer():
    L = lay(["s1", "s2", "s3", "s4", "s5", "s6"])
    assert judge(L, 0, None, out=True) is FragState.OUT
    assert judge(L, 0, None, out=False) is FragState.UNREACHABLE
    ok = {"fid": "x", "complete": True, "nblocks": L.stripes, "block_bytes": L.scheme.fragment_bytes}
    assert judge(L, 0, ok, out=True) is FragState.OK     # it answered: back, not out
    assert FragState.OUT.rebuildable and FragState.OUT.relocated
    assert not FragState.UNREACHABLE.rebuildable


def test_fragments_of_an_out_node_are_rebuilt_onto_another_node_away_from_the_stripe():
    L = lay(["s1", "s2", "s3", "s4", "s5", "s6"])
    up = [s for s in SITES.values() if s.id != "s6"]     # s6 is out: it does not answer
    plan = plan_rebuild(check(L, "ooooox"), up, SITES)
    assert plan is not None and plan.moved == {5}
    # s7 and s8 hold nothing of the stripe; s7/s8 share rack r3, s6's own rack-mate s5 is taken
    assert plan.targets[5] in {"s7", "s8"}
    assert plan.new_layout is not None and plan.new_layout.nodes[5] == plan.targets[5]
    assert plan.sources == (0, 1, 2, 3, 4)


def test_the_out_nodes_failure_domain_no_longer_counts_as_held():
    # one rack per fragment; s7 shares the out node's rack and host, s8 shares s1's rack:
    # counted as held, s6 would push its fragment onto s8 (one shared rack, no shared host);
    # it holds nothing usable any more, so s7's rack and host are empty and s7 wins
    sites = {f"s{i}": NodeSite(id=f"s{i}", zone="z1", rack=f"r{i}", host=f"h{i}") for i in range(1, 7)}
    sites["s7"] = NodeSite(id="s7", zone="z1", rack="r6", host="h6")
    sites["s8"] = NodeSite(id="s8", zone="z1", rack="r1", host="h8")
    L = lay(["s1", "s2", "s3", "s4", "s5", "s6"])
    up = [s for s in sites.values() if s.id != "s6"]
    plan = plan_rebuild(check(L, "ooooox"), up, sites)
    assert plan is not None and plan.targets[5] == "s7"
    # while s6 is merely unreachable nothing moves at all
    assert plan_rebuild(check(L, "ooooou"), up, sites) is None


def test_an_out_node_and_a_merely_unreachable_one():
    L = lay(["s1", "s2", "s3", "s4", "s5", "s6"])
    up = [s for s in SITES.values() if s.id not in ("s5", "s6")]
    plan = plan_rebuild(check(L, "ooooux"), up, SITES)
    assert plan is not None and set(plan.targets) == {5}   # s5's fragment is waited for
    assert plan.targets[5] not in {"s1", "s2", "s3", "s4", "s5", "s6"}


def test_no_spare_node_means_the_out_fragment_waits():
    L = lay(["s1", "s2", "s3", "s4", "s5", "s6"])
    six = {k: v for k, v in SITES.items() if k in L.nodes}
    assert plan_rebuild(check(L, "ooooox"), [s for s in six.values() if s.id != "s6"], six) is None


def test_out_with_fewer_than_k_sources_is_not_planned():
    L = lay(["s1", "s2", "s3", "s4", "s5", "s6"])
    assert plan_rebuild(check(L, "oooxxx"), list(SITES.values()), SITES) is None


# --- the [repair] key -----------------------------------------------------------------------------

BASE = """
[[metadata]]
id = "m1"
port = 9201
admin_port = 9211
[[storage]]
id = "s1"
port = 9101
admin_port = 9111
"""


def test_node_down_out_seconds_defaults_to_600_and_errors_name_the_key():
    assert loads(BASE + "[repair]\n").repair.node_down_out_s == 600.0
    assert loads(BASE + "[repair]\nnode_down_out_seconds = 0\n").repair.node_down_out_s == 0.0
    assert loads(BASE + "[repair]\nnode_down_out_seconds = 2.5\n").repair.node_down_out_s == 2.5
    with pytest.raises(ConfigError, match=r"repair\.node_down_out_seconds"):
        loads(BASE + "[repair]\nnode_down_out_seconds = -1\n")
    with pytest.raises(ConfigError, match=r"repair\.node_down_out_seconds"):
        loads(BASE + "[repair]\nnode_down_out_seconds = \"10m\"\n")
