"""The pure parts of scrubbing, repair and collection: pacing, judging fragments, choosing
rebuild targets, rewriting records, and when an unreferenced fragment may go."""

from __future__ import annotations

import pytest

from headwater.objstore.repair.gc import Candidates, Listed
from headwater.objstore.layouts import layouts_in, oid_of, rewrite
from headwater.objstore.placement import NodeSite
from headwater.objstore.repair.reconstructor import (FragState, LayoutCheck, choose_targets, judge,
                                              plan_rebuild)
from headwater.objstore.records import Layout
from headwater.throttle import TokenBucket

KiB = 1024


def lay(nodes, size=10 * 64 * KiB + 5, oid="abc") -> Layout:
    return Layout(oid=oid, size=size, k=4, m=2, stripe_bytes=64 * KiB, nodes=tuple(nodes))


SITES = {f"s{i}": NodeSite(id=f"s{i}", zone="z1", rack="r1", host=f"h{i}") for i in range(1, 8)}


# --- throttle ------------------------------------------------------------------------------------

def test_token_bucket_paces_to_the_rate():
    b = TokenBucket(1000, burst=100)
    assert b.take(100, now=0.0) == 0.0            # the burst is free
    assert b.take(500, now=0.0) == pytest.approx(0.5)  # 500 in debt at 1000/s
    assert b.take(0, now=0.5) == 0.0              # paid off
    # over a long run, bytes / elapsed converges on the rate
    now, sent = 1.0, 0
    for _ in range(100):
        now += b.take(250, now)
        sent += 250
    assert sent / (now - 1.0) == pytest.approx(1000, rel=0.05)


def test_token_bucket_zero_rate_is_unlimited():
    b = TokenBucket(0)
    assert b.unlimited and b.take(10**9, now=0.0) == 0.0


# --- judging and planning ------------------------------------------------------------------------

def ok_stat(layout: Layout) -> dict:
    return {"fid": "x", "complete": True, "nblocks": layout.stripes, "block_bytes": layout.scheme.fragment_bytes}


def test_judge_every_state():
    L = lay(["s1", "s2", "s3", "s4", "s5", None])
    assert judge(L, 0, ok_stat(L)) is FragState.OK
    assert judge(L, 0, {"fid": "x", "error": "fragment_not_found"}) is FragState.MISSING
    assert judge(L, 0, {"fid": "x", "error": "fragment_corrupt"}) is FragState.BAD
    assert judge(L, 0, {**ok_stat(L), "complete": False}) is FragState.BAD
    assert judge(L, 0, {**ok_stat(L), "nblocks": L.stripes - 1}) is FragState.BAD
    assert judge(L, 0, None) is FragState.UNREACHABLE
    assert judge(L, 5, None) is FragState.UNPLACED
    assert judge(L, 0, ok_stat(L), known=False) is FragState.UNPLACED


def check(layout: Layout, states: str) -> LayoutCheck:
    table = {"o": FragState.OK, "m": FragState.MISSING, "b": FragState.BAD, "p": FragState.UNPLACED,
             "u": FragState.UNREACHABLE}
    ref = layouts_in("obj/b", "k", {"layouts": [layout.to_value()]})[0]
    return LayoutCheck(ref=ref, states=tuple(table[c] for c in states))


def test_plan_rebuilds_missing_onto_their_own_node_and_places_unplaced_elsewhere():
    L = lay(["s1", "s2", "s3", "s4", "s5", None])
    plan = plan_rebuild(check(L, "omooop"), list(SITES.values()), SITES)
    assert plan is not None
    assert plan.targets[1] == "s2"                       # back onto the node the layout names
    assert plan.targets[5] not in {"s1", "s2", "s3", "s4", "s5"}  # a node holding nothing of it
    assert plan.moved == {5}
    assert plan.new_layout is not None and plan.new_layout.nodes[5] == plan.targets[5]
    assert plan.sources == (0, 2, 3, 4)


def test_plan_waits_for_unreachable_nodes_and_unreadable_layouts():
    L = lay(["s1", "s2", "s3", "s4", "s5", "s6"])
    assert plan_rebuild(check(L, "oooouu"), list(SITES.values()), SITES) is None  # nothing to do yet
    assert plan_rebuild(check(L, "ooommm"), list(SITES.values()), SITES) is None  # < k sources
    plan = plan_rebuild(check(L, "ooooum"), list(SITES.values()), SITES)
    assert plan is not None and dict(plan.targets) == {5: "s6"}


def test_choose_targets_avoids_used_failure_domains():
    sites = {"a": NodeSite(id="a", zone="z1", rack="r1", host="h1"),
             "b": NodeSite(id="b", zone="z1", rack="r1", host="h1"),
             "c": NodeSite(id="c", zone="z2", rack="r1", host="h2"),
             "d": NodeSite(id="d", zone="z1", rack="r2", host="h3")}
    L = Layout(oid="o", size=10, k=1, m=2, stripe_bytes=64, nodes=("a", None, None))
    picked = choose_targets(L, 2, list(sites.values()), sites)
    assert picked[0] == "c"            # another zone first
    assert picked[1] == "d"            # then another rack of zone z1 (b shares a's host)
    assert choose_targets(L, 5, list(sites.values()), sites) == ["c", "d", "b"]


# --- records -------------------------------------------------------------------------------------

def test_rewrite_is_a_compare_and_swap_on_the_layout_field():
    a, b = lay(["s1"] * 5 + [None], oid="a"), lay(["s2"] * 6, oid="b")
    value = {"key": "k", "layouts": [a.to_value(), b.to_value()], "etag": '"x"'}
    refs = layouts_in("obj/bk", "k", value)
    assert [r.layout.oid for r in refs] == ["a", "b"]
    new_a = Layout(oid="a", size=a.size, k=4, m=2, stripe_bytes=a.stripe_bytes, nodes=("s1",) * 5 + ("s7",))
    new_value, cond = rewrite(refs[0], new_a)
    # a record from before ``rev``: compared on its layouts, and given a rev
    assert cond == ("layouts", value["layouts"]) and new_value["rev"]
    assert new_value["layouts"][0]["nodes"][5] == "s7" and new_value["layouts"][1] == b.to_value()
    assert value["layouts"][0]["nodes"][5] is None  # the record as read is untouched
    part = {"n": 1, "layout": a.to_value()}
    (pref,) = layouts_in("part/bk/u1", "00001", part)
    pv, pcond = rewrite(pref, new_a)
    assert pcond == ("layout", a.to_value()) and pv["layout"]["nodes"][5] == "s7"
    assert layouts_in("obj/bk", "small", {"inline": b"x", "layouts": []}) == []
    assert oid_of("0123abcd.5") == "0123abcd"


# --- the collector's verdicts --------------------------------------------------------------------

def test_orphans_go_only_after_being_unreferenced_for_the_grace_period():
    c = Candidates(grace_s=100)
    old, fresh = 1000.0, 2050.0
    files = [Listed(node="s1", fid="dead.0", size=10, mtime=old),
             Listed(node="s1", fid="live.0", size=10, mtime=old),
             Listed(node="s2", fid="new.1", size=10, mtime=fresh)]
    assert c.update(files, {"live"}, now=0, wall=2000, nodes_listed={"s1", "s2"}) == []
    assert len(c) == 2
    assert c.update(files, {"live"}, now=50, wall=2050, nodes_listed={"s1", "s2"}) == []
    due = c.update(files, {"live"}, now=100, wall=2100, nodes_listed={"s1", "s2"})
    assert [f.fid for f in due] == ["dead.0"]        # new.1's file is not old enough yet
    # a PUT's record appearing after its fragments: referenced again resets the clock
    assert c.update(files, {"live", "new"}, now=200, wall=2200, nodes_listed={"s1", "s2"}) == [files[0]]
    assert ("s2", "new.1") not in c._since
    # a node not listed this pass keeps its candidates
    c.update([], {"live"}, now=300, wall=2300, nodes_listed={"s2"})
    assert ("s1", "dead.0") in c._since
