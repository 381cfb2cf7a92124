"""The repair daemon's down-timers across restarts: what a snapshot keeps, what a restore
resumes (on injected clocks), and the file they are kept in (atomic, bounded, never fatal)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from headwater.config import loads
from headwater.objstore.repair.liveness import DownRun, NodeLiveness
from headwater.objstore.repair.liveness_file import (
    MAX_FILE_BYTES,
    MAX_NODES,
    LivenessFile,
    LivenessFileError,
    decode,
    encode,
)

WALL = 1_764_000_000.0  # the wall clock at monotonic 0 of the first process


# --- snapshot and restore (sans-IO) --------------------------------------------------------------

def test_a_restored_run_keeps_its_original_deadline():
    first = NodeLiveness(600)
    first.observe("s1", False, 100.0)
    first.observe("s1", False, 400.0)
    runs = first.snapshot(400.0, WALL + 400.0)
    assert runs == {"s1": DownRun(since=WALL + 100.0, last=WALL + 400.0)}
    # a new process: its monotonic clock starts elsewhere; 50 s went by during the restart
    second = NodeLiveness(600)
    assert second.restore(runs, 7.0, WALL + 450.0, max_gap_s=600) == ["s1"]
    assert second.down_for("s1", 7.0) == pytest.approx(350.0)
    assert not second.is_out("s1", 7.0 + 249.9)
    assert second.is_out("s1", 7.0 + 250.0)        # wall WALL + 700: 600 s after the first failure
    second.observe("s1", False, 300.0)
    assert second.snapshot(300.0, WALL + 743.0)["s1"] == DownRun(since=WALL + 100.0, last=WALL + 743.0)


def test_a_run_not_seen_for_longer_than_the_gap_starts_afresh():
    runs = {"s1": DownRun(since=WALL, last=WALL + 10.0), "s2": DownRun(since=WALL, last=WALL + 500.0)}
    live = NodeLiveness(600)
    assert live.restore(runs, 0.0, WALL + 1000.0, max_gap_s=600) == ["s2"]   # s1 last failed 990 s ago
    assert live.down_since("s1") is None and live.down_for("s2", 0.0) == pytest.approx(1000.0)
    assert live.out(0.0) == {"s2"}
    never = NodeLiveness(0)
    assert never.restore(runs, 0.0, WALL + 10 ** 6, max_gap_s=0) == ["s1", "s2"]  # 0: any age
    assert never.out(0.0) == set()


def test_a_wall_clock_gone_back_counts_as_no_time_passed_and_bad_runs_are_dropped():
    live = NodeLiveness(60)
    runs = {"s1": DownRun(since=WALL + 100.0, last=WALL + 200.0), "s2": DownRun(since=WALL + 9.0, last=WALL + 1.0)}
    assert live.restore(runs, 50.0, WALL, max_gap_s=60) == ["s1"]
    assert live.down_for("s1", 50.0) == 0.0 and not live.is_out("s1", 109.9) and live.is_out("s1", 110.0)


def test_an_answer_after_a_restore_clears_the_run_and_a_node_already_counted_is_kept():
    live = NodeLiveness(60)
    live.observe("s2", False, 5.0)
    assert live.restore({"s1": DownRun(since=WALL, last=WALL), "s2": DownRun(since=WALL - 999, last=WALL)},
                        10.0, WALL + 10.0, max_gap_s=60) == ["s1"]
    assert live.down_since("s2") == 5.0
    live.observe("s1", True, 11.0)
    assert live.snapshot(11.0, WALL + 11.0).keys() == {"s2"}


# --- the file ------------------------------------------------------------------------------------

def test_encode_decode_round_trip_and_unknown_nodes_are_dropped():
    runs = {"s2": DownRun(since=WALL, last=WALL + 5), "s1": DownRun(since=WALL + 1, last=WALL + 2)}
    data = encode(runs)
    assert json.loads(data)["version"] == 1 and list(json.loads(data)["down"]) == ["s1", "s2"]
    assert decode(data) == runs
    assert decode(data, known={"s1", "s9"}) == {"s1": runs["s1"]}


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"version": 2, "down": {}}', b'{"version": 1, "down": []}',
    b'{"version": 1, "down": {"s1": 5}}', b'{"version": 1, "down": {"s1": {"since": "x", "last": 1}}}',
    b'{"version": 1, "down": {"s1": {"since": true, "last": 1}}}',
    b'{"version": 1, "down": {"s1": {"since": 1e300, "last": 1}}}',
    b'{"version": 1, "down": {"s1": {"since": NaN, "last": 1}}}',
])
def test_anything_else_does_not_decode(data):
    with pytest.raises(LivenessFileError):
        decode(data)


def test_size_is_bounded():
    with pytest.raises(LivenessFileError):
        encode({f"s{i}": DownRun(since=WALL, last=WALL) for i in range(MAX_NODES + 1)})
    with pytest.raises(LivenessFileError):
        decode(b" " * (MAX_FILE_BYTES + 1))
    many = json.dumps({"version": 1, "down": {f"s{i}": {"since": 1, "last": 1} for i in range(MAX_NODES + 1)}})
    with pytest.raises(LivenessFileError):
        decode(many.encode())


def test_save_replaces_the_file_whole_and_load_ignores_a_bad_one(tmp_path: Path, caplog):
    f = LivenessFile(tmp_path / "repair" / "node-liveness.json")
    assert f.load() == {}                                   # no file yet: nothing down
    runs = {"s1": DownRun(since=WALL, last=WALL + 3)}
    f.save(runs)                                            # creates the directory
    assert f.load({"s1"}) == runs and f.writes == 1
    f.save({})
    assert f.load() == {}
    assert sorted(p.name for p in f.path.parent.iterdir()) == ["node-liveness.json"]  # no temp file left
    f.path.write_bytes(b'{"version": 1, "down": {"s1": {"since"')  # torn by hand: ignored, logged
    assert f.load() == {}
    assert any(getattr(r, "event", "") == "repair.liveness_file_ignored" for r in caplog.records)


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch):
    f = LivenessFile(tmp_path / "node-liveness.json")
    f.save({"s1": DownRun(since=WALL, last=WALL)})

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        f.save({})
    monkeypatch.undo()
    assert f.load() == {"s1": DownRun(since=WALL, last=WALL)}
    assert [p.name for p in tmp_path.iterdir()] == ["node-liveness.json"]


# --- the [repair] key ----------------------------------------------------------------------------

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


def test_the_repair_daemon_has_a_data_dir(tmp_path: Path):
    cfg = loads(BASE + "[cluster]\ndata_dir = \"/srv/hw\"\n[repair]\n", path=str(tmp_path / "cluster.toml"))
    assert cfg.repair.data_dir == Path("/srv/hw/repair")
    cfg = loads(BASE + "[repair]\nid = \"r2\"\ndata_dir = \"/srv/r2\"\n", path=str(tmp_path / "cluster.toml"))
    assert cfg.repair.data_dir == Path("/srv/r2")
