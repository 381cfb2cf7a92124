"""The playback bench's pure parts: the world's TOML (read by the real config loader on top of
the repo's store sections), the browser's output as cold and warm plays, the medians and the
report beside the goals."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.bench.origin import STORE_TABLES, split_tables
from headwater.bench.playback import (COLD_GOAL_MS, POP_A, POP_B, WARM_GOAL_MS, WORLD_NODES, WORLD_PORTS, Play,
                                      plays_from, render, signing_key, summarise, world_sections)
from headwater.config import load

REPO_CONFIG = Path(__file__).resolve().parents[2] / "cluster.toml"


def test_the_world_sections_load_as_one_cluster(tmp_path):
    ports = {name: 20000 + i for i, name in enumerate(WORLD_PORTS)}
    pub, priv = signing_key(tmp_path / "keys")
    text = split_tables(REPO_CONFIG.read_text(), STORE_TABLES) + world_sections(
        ports, public_key=pub, private_key=priv, health_interval_s=0.5, fall=2, scheme="cenc")
    (tmp_path / "cluster.toml").write_text(text)
    cfg = load(tmp_path / "cluster.toml")
    pops = {i: cfg.daemon(i) for i in ("pop-a", "pop-b")}
    assert {pops["pop-a"].host, pops["pop-b"].host} == {POP_A, POP_B}
    assert pops["pop-a"].port == pops["pop-b"].port == ports["pop"]  # one port: the CDN name's
    assert [p.name for p in cfg.dns.steering.pops] == ["pop-a", "pop-b"]
    assert cfg.dns.health.interval_s == 0.5
    assert cfg.transcoder.scheme == "cenc"
    assert cfg.origin.delivery.cdn_base_url == f"http://video.cdn.headwater.test:{ports['pop']}"
    assert {n for n, _, _ in WORLD_NODES} <= {d.id for d in cfg.daemons()}
    with pytest.raises(ValueError, match="dns"):
        world_sections({k: v for k, v in ports.items() if k != "dns"}, public_key=Path("a"), private_key=Path("b"))


def test_a_titles_first_viewer_is_cold_and_the_rest_warm():
    # Only answers up to the first frame count: the later ones are not part of the startup.
    doc = {"plays": [{"titleId": 3, "startMs": 900, "clickToFrameMs": 1000, "firstFrameAt": 50,
                      "cdn": [{"t": 10, "xcache": "Miss from pop-a"}, {"t": 20, "xcache": "Miss from pop-a"},
                              {"t": 30, "xcache": "Hit from pop-a"}, {"t": 60, "xcache": "Miss from pop-a"}]},
                     {"titleId": 3, "startMs": 300, "clickToFrameMs": 350},
                     {"titleId": 4, "startMs": None, "clickToFrameMs": None},
                     {"titleId": 4, "startMs": 250, "clickToFrameMs": 300}]}
    plays = plays_from(doc)
    assert [(p.title, p.cold) for p in plays] == [(3, True), (3, False), (4, True), (4, False)]
    assert (plays[0].cdn_misses, plays[0].cdn_requests) == (2, 3)
    s = summarise(plays)
    # A play with no frame counts as slower than any: the cold median of [900, none] is no figure.
    assert s.cold_median_ms is None and not s.cold_met
    assert s.warm_median_ms == 275 and s.warm_met


def test_the_report_puts_each_median_beside_its_goal():
    plays = [Play(1, True, 3500, 3600), Play(1, False, 2100, 2200), Play(2, True, 4500, 4600),
             Play(2, False, 1900, 2000), Play(3, True, 3900, 4000), Play(3, False, 2500, 2600)]
    s = summarise(plays)
    assert s.cold_median_ms == 3900 and s.cold_met  # goal < 4 s
    assert s.warm_median_ms == 2100 and not s.warm_met  # goal < 2 s
    text = render(plays, load_start="1.0 1.0 1.0", load_end="2.0 2.0 2.0", clip_s=8, cpus=2)
    assert f"cold median 3.90 s (goal < {COLD_GOAL_MS // 1000} s): met" in text
    assert f"warm median 2.10 s (goal < {WARM_GOAL_MS // 1000} s): NOT met" in text
    assert "load average 1.0 1.0 1.0 at the start, 2.0 2.0 2.0 at the end" in text
    assert text.count(" cold ") == 3 and text.count(" warm ") == 3
