"""The objstore bench's resilience rows: keys, ratios against our own baseline, goals."""

from headwater.bench.objstore import SELF_ROWS, hot_prefix_keys, render_self_rows, self_rows, uniform_keys


def test_hot_prefix_keys_share_one_prefix_and_uniform_keys_share_none():
    hot = hot_prefix_keys(100, "r0")
    assert len(set(hot)) == 100 and all(k.startswith("videos/2026/") for k in hot)
    uni = uniform_keys(100, "r0")
    assert len(set(uni)) == 100 and len({k[:2] for k in uni}) > 50
    assert uniform_keys(5, "r1") != uniform_keys(5, "r0")  # each round writes new keys


def test_ratios_and_goals():
    results = {"put_uniform_keys": {"value": 500.0}, "put_hot_prefix": {"value": 440.0},
               "put_big_healthy": {"value": 100.0}, "put_big_node_down": {"value": 80.0}}
    rows = {r["key"]: r for r in self_rows(results)}
    assert rows["put_hot_prefix"]["ratio"] == 0.88 and rows["put_hot_prefix"]["goal_met"] is False
    assert rows["put_big_node_down"]["ratio"] == 0.8 and rows["put_big_node_down"]["goal_met"] is None
    text = render_self_rows(list(rows.values()))
    assert "0.88x" in text and "NOT met" in text and "500 uniform keys" in text


def test_missing_figures_give_no_ratio():
    rows = self_rows({"put_hot_prefix": {"value": 1.0}})
    assert len(rows) == len(SELF_ROWS) and all(r["ratio"] is None and r["goal_met"] is None for r in rows)
    assert "-" in render_self_rows(rows)
