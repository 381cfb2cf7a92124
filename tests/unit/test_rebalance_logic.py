"""The rebalancer's pure decisions: which fragments move where, and when nothing should."""

from __future__ import annotations

from dataclasses import replace

from headwater.objstore.placement import NodeSite, place
from headwater.objstore.records import Layout
from headwater.objstore.repair.gc import Candidates, Listed, may_delete
from headwater.objstore.repair.rebalancer import (
    apply_moves,
    fair_share,
    plan_moves,
    spread,
    tally,
)

K, M, STRIPE = 4, 2, 64 * 1024


def sites(n: int, **domains) -> list[NodeSite]:
    return [NodeSite(id=f"s{i + 1}", **{k: v(i) for k, v in domains.items()}) for i in range(n)]


def written(oid: str, on: list[NodeSite], size: int = 3 * STRIPE) -> Layout:
    """A layout as a PUT on ``on`` would have placed it."""
    return Layout(oid=oid, size=size, k=K, m=M, stripe_bytes=STRIPE, nodes=tuple(place(oid, K + M, on)))


def rebalance(lays: list[Layout], nodes: list[NodeSite]) -> tuple[list[Layout], int]:
    """Plan every layout in turn, as one pass does; the layouts after and the moves made."""
    load = tally(lays, [s.id for s in nodes])
    out, moved = [], 0
    for lay in lays:
        moves = plan_moves(lay, nodes, load)
        apply_moves(load, lay, moves)
        moved += len(moves)
        new = list(lay.nodes)
        for mv in moves:
            assert new[mv.index] == mv.source
            new[mv.index] = mv.target
        out.append(Layout(oid=lay.oid, size=lay.size, k=K, m=M, stripe_bytes=STRIPE, nodes=tuple(new)))
    return out, moved


def test_balanced_cluster_moves_nothing():
    six = sites(6)
    lays = [written(f"o{i}", six) for i in range(50)]
    assert rebalance(lays, six)[1] == 0
    eight = sites(8)
    lays = [written(f"o{i}", eight) for i in range(200)]
    assert rebalance(lays, eight)[1] == 0  # written where placement puts them


def test_added_node_gets_its_fair_share_and_a_second_pass_moves_nothing():
    six, seven = sites(6), sites(7)
    lays = [written(f"o{i}", six) for i in range(300)]
    after, moved = rebalance(lays, seven)
    load = tally(after, [s.id for s in seven])
    share = fair_share(load, [s.id for s in seven])
    assert load["s7"] >= 0.9 * share
    # at most one fragment per layout moves (to the new node), and only toward placement
    assert moved <= len(lays)
    for before, lay in zip(lays, after):
        changed = [i for i in range(K + M) if before.nodes[i] != lay.nodes[i]]
        assert len(changed) <= 1
        for i in changed:
            assert lay.nodes[i] == "s7"
            assert set(lay.nodes) == set(place(lay.oid, K + M, seven))
        assert len(set(lay.nodes)) == K + M
    # nobody ends far above the mean either
    assert max(load.values()) <= 1.1 * share
    assert rebalance(after, seven)[1] == 0


def test_moves_stop_once_the_new_node_has_its_share():
    six, seven = sites(6), sites(7)
    lays = [written(f"o{i}", six) for i in range(100)]
    ids = [s.id for s in seven]
    load = tally(lays, ids)
    load["s7"] = max(load.values())  # already as full as any (say, of objects written since)
    assert all(not plan_moves(lay, seven, load) for lay in lays)


def test_layouts_for_the_reconstructor_are_left_alone():
    seven = sites(7)
    load = {s.id: 100 * STRIPE for s in seven[:6]} | {"s7": 0}
    lay = written("x", seven[:6])
    degraded = Layout(oid="x", size=lay.size, k=K, m=M, stripe_bytes=STRIPE, nodes=(None, *lay.nodes[1:]))
    assert plan_moves(degraded, seven, load) == []
    gone = Layout(oid="x", size=lay.size, k=K, m=M, stripe_bytes=STRIPE, nodes=("old", *lay.nodes[1:]))
    assert plan_moves(gone, seven, load) == []
    empty = Layout(oid="x", size=0, k=K, m=M, stripe_bytes=STRIPE, nodes=lay.nodes)
    assert plan_moves(empty, seven, load) == []


def test_down_nodes_neither_give_nor_take():
    six, seven = sites(6), sites(7)
    lays = [written(f"o{i}", six) for i in range(60)]
    load = tally(lays, [s.id for s in seven])
    everyone = {s.id for s in seven}
    assert all(not plan_moves(lay, seven, load, up=everyone - {"s7"}) for lay in lays)
    for lay in lays:
        for mv in plan_moves(lay, seven, load, up=everyone - {"s1"}):
            assert mv.source != "s1"


def test_spread_over_failure_domains_never_gets_worse():
    # Three racks of two nodes, then a seventh node added in rack r1: 4+2 keeps two per rack.
    six = sites(6, rack=lambda i: f"r{i // 2 + 1}")
    seven = [*six, NodeSite(id="s7", rack="r1")]
    by_id = {s.id: s for s in seven}
    lays = [written(f"o{i}", six) for i in range(200)]
    after, moved = rebalance(lays, seven)
    assert moved > 0
    for before, lay in zip(lays, after):
        assert spread(lay.nodes, by_id) <= spread(before.nodes, by_id)
        assert max(sum(by_id[n].rack == r for n in lay.nodes) for r in ("r1", "r2", "r3")) == 2


def test_collector_removes_a_copy_its_layout_no_longer_names():
    c = Candidates(grace_s=10)
    old = Listed(node="s1", fid="oid1.3", size=10, mtime=0.0)
    live = Listed(node="s7", fid="oid1.3", size=10, mtime=0.0)
    named = {("s7", "oid1.3")}
    assert c.update([old, live], {"oid1"}, now=0, wall=100, nodes_listed={"s1", "s7"}, named=named) == []
    assert c.update([old, live], {"oid1"}, now=20, wall=120, nodes_listed={"s1", "s7"}, named=named) == [old]
    # without ``named`` (the old rule), a live object id keeps every copy
    c2 = Candidates(grace_s=10)
    c2.update([old], {"oid1"}, now=0, wall=100, nodes_listed={"s1"})
    assert c2.update([old], {"oid1"}, now=20, wall=120, nodes_listed={"s1"}) == []


def test_one_rule_for_deleting_an_unnamed_copy():
    rule = dict(now=100.0, mtime=1000.0, wall=1100.0, grace_s=30.0)
    assert may_delete(named=False, unnamed_since=70.0, **rule)
    assert not may_delete(named=True, unnamed_since=70.0, **rule)             # a record names it
    assert not may_delete(named=False, unnamed_since=None, **rule)            # never seen unnamed
    assert not may_delete(named=False, unnamed_since=70.1, **rule)            # grace not over
    assert not may_delete(named=False, unnamed_since=0.0, **(rule | {"mtime": 1070.1}))  # file too young
    # the collector's candidates decide by it: the same inputs, the same verdicts
    for since, mtime in ((70.0, 1000.0), (70.1, 1000.0), (0.0, 1070.1), (0.0, 1070.0)):
        c = Candidates(grace_s=30.0)
        f = Listed(node="s1", fid="o.0", size=1, mtime=mtime)
        c.update([f], set(), now=since, wall=1000.0, nodes_listed={"s1"})
        verdict = c.update([f], set(), now=100.0, wall=1100.0, nodes_listed={"s1"}) == [f]
        assert verdict == may_delete(named=False, unnamed_since=since, **(rule | {"mtime": mtime}))


def test_fragments_away_from_home_and_their_homes_are_left_to_the_reconstructor():
    eight = sites(8)
    six = eight[:6]
    lays = [written(f"o{i}", six) for i in range(80)]
    load = tally(lays, [s.id for s in eight])
    plain = {lay.oid: plan_moves(lay, eight, load) for lay in lays}
    assert any(mv.target == "s8" for moves in plain.values() for mv in moves)
    checked = 0
    for lay in lays:
        j = 2
        marked = replace(lay, homes=tuple("s8" if i == j else None for i in range(6)))
        assert marked.away == {j: "s8"}
        moves = plan_moves(marked, eight, load)
        assert all(mv.index != j and mv.target != "s8" for mv in moves)
        if any(mv.index == j or mv.target == "s8" for mv in plain[lay.oid]):
            checked += 1
        # what the rebalancer writes keeps the mark
        after = marked.moved({mv.index: mv.target for mv in moves})
        assert after.away == {j: "s8"}
    assert checked > 0


# --- [repair] rebalance keys in cluster.toml ---------------------------------------------------

import pytest  # noqa: E402

from headwater.config import ConfigError, loads  # noqa: E402

REPAIR_TOML = """
[[metadata]]
id = "m1"
port = 9201
admin_port = 9301

[[storage]]
id = "s1"
port = 9101
admin_port = 9111

[repair]
{extra}
"""


def test_rebalance_keys_and_defaults():
    cfg = loads(REPAIR_TOML.format(extra=""))
    assert cfg.repair.rebalance is True and cfg.repair.rebalance_rate_bytes == 16 * 1024 * 1024
    cfg = loads(REPAIR_TOML.format(extra='rebalance = false\nrebalance_rate = "2MiB"\n'
                                         "rebalance_interval_seconds = 5"))
    assert (cfg.repair.rebalance, cfg.repair.rebalance_rate_bytes, cfg.repair.rebalance_interval_s) == (
        False, 2 * 1024 * 1024, 5.0)


@pytest.mark.parametrize("extra,key", [
    ('rebalance_rate = "0"', "repair.rebalance_rate"),
    ('rebalance_rate = "fast"', "repair.rebalance_rate"),
    ('rebalance = "yes"', "repair.rebalance"),
    ("rebalance_interval_seconds = -1", "repair.rebalance_interval_seconds"),
    ("rebalance_speed = 1", "repair.rebalance_speed"),
])
def test_bad_rebalance_keys_name_the_key(extra, key):
    with pytest.raises(ConfigError) as e:
        loads(REPAIR_TOML.format(extra=extra), path="c.toml")
    assert e.value.key == key


def test_status_line_shows_rebalance_progress():
    from headwater.objstore.status import repair_text as _repair_text

    base = {"degraded_objects": 0, "degraded_stripes": 0, "passes": 3, "last_pass_end": 100.0,
            "fragments_rebuilt": 0, "bytes_rebuilt": 0}
    running = {**base, "rebalance": {"passes": 1, "pass_running": True, "pass_progress": 0.4,
                                     "fragments_moved": 12, "bytes_moved": 3 * 1024 * 1024}}
    text = _repair_text(running, now=110.0)
    assert "rebalance moved 12 fragments" in text and "pass 40%" in text, text
    idle = {**base, "rebalance": {"passes": 2, "pass_running": False, "fragments_moved": 12,
                                  "bytes_moved": 0, "least_filled": 0.97}}
    assert "least-filled node at 97% of its share" in _repair_text(idle, now=110.0)
