"""The objstore bench's resilience rows: keys, ratios against our own baseline, goals, the rebuild window."""

import tomllib

from headwater.bench.objstore import (SELF_ROWS, hot_prefix_keys, rebuild_window, rebuild_window_text,
                                      render_self_rows, self_rows, uniform_keys, with_rebuild_rate)


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


def test_with_rebuild_rate_replaces_only_the_repair_tables_setting():
    text = ('[objstore]\nrebuild_rate = "1"  # not repair\n\n[repair]\nid = "repair"\n'
            'rebuild_rate = "64MiB"  # comment\ninterval_seconds = 60\n\n[[storage]]\nid = "s1"\n')
    out = with_rebuild_rate(text, "1GiB")
    doc = tomllib.loads(out)
    assert doc["repair"]["rebuild_rate"] == "1GiB" and doc["objstore"]["rebuild_rate"] == "1"
    assert doc["repair"]["interval_seconds"] == 60 and doc["storage"] == [{"id": "s1"}]


def test_with_rebuild_rate_adds_the_setting_or_leaves_a_config_without_repair_alone():
    for text in ('[repair]\nid = "repair"\n\n[gateway]\nport = 1\n', '[gateway]\nport = 1\n[ repair ]\n'):
        assert tomllib.loads(with_rebuild_rate(text, "2GiB"))["repair"]["rebuild_rate"] == "2GiB"
    text = '[gateway]\nport = 1\n# [repair]\n'
    assert with_rebuild_rate(text, "2GiB") == text


def _health(t, rebuilt, frags, running, passes=0):
    return (t, {"bytes_rebuilt": rebuilt, "fragments_rebuilt": frags, "pass_running": running, "passes": passes})


def test_rebuild_window_counts_what_was_rebuilt_between_start_and_end():
    samples = [_health(0.0, 0, 0, True), _health(1.0, 10_000_000, 1, True), _health(3.0, 30_000_000, 3, True),
               _health(5.0, 50_000_000, 5, True), _health(6.0, 60_000_000, 6, False, passes=1),
               _health(7.0, 60_000_000, 6, False, passes=1)]
    w = rebuild_window(samples, 1.0, 5.0)
    assert w["bytes_rebuilt"] == 40_000_000 and w["fragments_rebuilt"] == 4
    assert w["mb_per_s"] == 10.0 and w["running_fraction"] == 1.0 and w["pass_done_s"] == 5.0
    # The pass ends inside the window: it ran for half of it.
    w = rebuild_window(samples, 4.0, 8.0)
    assert w["running_fraction"] == 0.5 and w["pass_done_s"] == 2.0 and w["bytes_rebuilt"] == 30_000_000
    text = rebuild_window_text({**w, "pass_finished": True, "pass_fragments_rebuilt": 6, "pass_bytes_rebuilt": 6e7,
                                "pass_rebuild_mb_per_s": 12.0, "degraded_objects_left": 0})
    assert "30 MB (3 fragments)" in text and "ended 2.0 s into it" in text and "50%" in text
    assert "0 degraded objects left" in text


def test_rebuild_window_counts_rebalancer_traffic_only_when_reported():
    samples = [_health(0.0, 0, 0, True), _health(2.0, 10, 1, True)]
    assert rebuild_window(samples, 0.0, 2.0)["bytes_rebalanced"] is None
    for (t, d), moved in zip(samples, (0, 5_000_000)):
        d["rebalance"] = {"bytes_moved": moved}
    w = rebuild_window(samples, 0.0, 2.0)
    assert w["bytes_rebalanced"] == 5_000_000
    assert "rebalancer also moved 5 MB" in rebuild_window_text({**w, "pass_finished": None})


def test_rebuild_window_without_samples_has_no_figures():
    w = rebuild_window([], 1.0, 2.0)
    assert w["bytes_rebuilt"] is None and w["running_fraction"] is None
    assert "no figures" in rebuild_window_text(w)


def test_rebuild_rows():
    results = {"put_big_healthy": {"value": 100.0}, "put_big_rebuilding": {"value": 70.0},
               "rebuild_rate": {"value": 50.0}, "rebuild_disk_ceiling": {"value": 200.0}}
    rows = {r["key"]: r for r in self_rows(results)}
    assert rows["put_big_rebuilding"]["ratio"] == 0.7 and rows["rebuild_rate"]["ratio"] == 0.25
    text = render_self_rows(list(rows.values()))
    assert "0.25x" in text and "200 fsync'd writes" in text
