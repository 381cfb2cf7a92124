"""What reaches the operator: every daemon's log file, read as JSON lines, in a real cluster.

- Every line a daemon writes (its own events and the stdlib ``logging`` of the server core, the
  RPC layer and the object store) is one JSON object with ts, level, daemon, event.
- The metadata nodes' Raft elections are there (``raft.leader_elected`` / ``raft.leader_changed``
  with group, term, leader), and a new election after the leader of a group is killed -9.
- A fragment corrupted on disk and then read: the storage node logs ``fragment.corrupt_read``
  and, once its scrubber has verified it, ``fragment.quarantined``.
- ``log_level = "warning"``: no info line from either path, while warnings still come through.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headwater.objstore.storage import fragment as fr
from headwater.objstore.storage.daemon import StorageNode
from tests.cluster import Cluster

KiB = 1024
OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=3, stripe_size=64 * KiB, inline_max_size=4 * KiB,
               rpc_timeout_seconds=5)


def read_lines(path: Path) -> list[dict]:
    """The daemon's lines in ``path`` as parsed JSON; the harness's own ``=== start`` markers
    are skipped, and any other line that is not one JSON object fails the test."""
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        if not raw.strip() or raw.startswith("=== "):
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}: not a JSON line: {raw[:300]!r}")
        assert isinstance(line, dict) and {"ts", "level", "daemon", "event"} <= set(line), raw
        out.append(line)
    return out


def wait_for(what: str, find, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = find()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"not logged within {timeout:.0f}s: {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("logs"), **OPTIONS)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_every_line_of_every_daemon_is_json_with_its_id(cluster):
    for d in cluster.daemons:
        lines = read_lines(cluster.logs / f"{d.id}.log")
        assert lines, d.id
        assert {x["daemon"] for x in lines} == {d.id}
        assert "daemon.started" in {x["event"] for x in lines}  # the CLI's own Logger path
    storage = read_lines(cluster.logs / "storage-1.log")
    serving = [x for x in storage if x["event"] == "storage.serving"]  # a stdlib record
    assert serving and serving[0]["level"] == "info" and "msg" in serving[0]


def test_raft_elections_and_a_leader_killed(cluster):
    def elections():
        meta = {d.id: read_lines(cluster.logs / f"{d.id}.log") for d in cluster.metadata}
        every_node_knows = all(any(x["event"] in ("raft.leader_elected", "raft.leader_changed") for x in lines)
                               for lines in meta.values())
        return meta if every_node_knows else None

    # A node answers /healthz before its groups have elected: wait for every node to hear of one.
    meta = wait_for("every metadata node learning a group's leader", elections)
    elected = [x for lines in meta.values() for x in lines if x["event"] == "raft.leader_elected"]
    changed = [x for lines in meta.values() for x in lines if x["event"] == "raft.leader_changed"]
    assert elected and changed
    for x in elected:
        assert x["leader"] == x["daemon"] and isinstance(x["term"], int) and x["term"] >= 1 and x["group"]
        assert x["level"] == "info" and x["msg"].startswith(f"raft group {x['group']}: leader is now")
    for x in changed:
        assert x["leader"] != x["daemon"] and x["leader"] in meta
    # every node learnt who leads each of its groups
    for node, lines in meta.items():
        assert any(x["event"] in ("raft.leader_elected", "raft.leader_changed") for x in lines), node

    # kill -9 the node that last won an election: a survivor wins a newer term of a group
    victim = max(elected, key=lambda x: x["ts"])["daemon"]
    term_before: dict[str, int] = {}
    for x in elected:
        term_before[x["group"]] = max(term_before.get(x["group"], 0), x["term"])
    cluster.kill_node(victim, signal.SIGKILL)
    survivors = [d.id for d in cluster.metadata if d.id != victim]

    def new_elections():
        return [x for n in survivors for x in read_lines(cluster.logs / f"{n}.log")
                if x["event"] == "raft.leader_elected" and x["term"] > term_before.get(x["group"], 0)]

    won = wait_for(f"a new leader after {victim} was killed", new_elections)
    assert all(x["daemon"] in survivors for x in won)
    cluster.restart_node(victim)


def test_a_corrupt_fragment_read_is_logged_and_quarantined(cluster):
    s3 = cluster.s3_client(0, response_checksum_validation="when_required")
    s3.create_bucket(Bucket="logs")
    body = os.urandom(100 * KiB)
    s3.put_object(Bucket="logs", Key="k", Body=body)
    [path] = [p for p in cluster.fragment_files() if p.name.endswith(".0")]  # a data fragment: read first
    node = next(d.id for d in cluster.storage if d.data_dir in path.parents)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert s3.get_object(Bucket="logs", Key="k")["Body"].read() == body  # from the parity fragment

    def quarantined():
        lines = read_lines(cluster.logs / f"{node}.log")
        return [x for x in lines if x["event"] == "fragment.quarantined" and x["fid"] == path.name]

    [q] = wait_for(f"{path.name} quarantined on {node}", quarantined)
    assert q["level"] == "warning" and q["daemon"] == node and Path(q["path"]).exists()
    events = [x for x in read_lines(cluster.logs / f"{node}.log") if x.get("fid") == path.name]
    read = next(x for x in events if x["event"] == "fragment.corrupt_read")
    assert read["level"] == "warning" and read["error"]
    assert any(x["event"] == "scrub.corrupt" for x in events)
    gateway = read_lines(cluster.logs / "s3.log")
    assert any(x["event"] == "fragment.read_failed" and x["fid"] == path.name and x["node"] == node
               for x in gateway)


@pytest.mark.parametrize("level", ["info", "warning"])
def test_log_level_applies_to_the_daemon_and_the_stdlib_lines(tmp_path, level):
    """One storage node on its own, a corrupt fragment planted before it starts: its scrubber's
    first pass quarantines it (a stdlib warning) while it starts up (info lines on both paths)."""
    c = Cluster(tmp_path, log_level=level, **OPTIONS)
    d = c.daemon("storage-1")
    sn = StorageNode(d.id, d.data_dir)
    sn.prepare()
    w = fr.FragmentWriter(sn.tmp_dir / "bad.0", "bad.0", 4096, {"k": 2})
    w.append(0, [os.urandom(4096) for _ in range(4)])
    w.commit(sn.path_of("bad.0"), 4)
    raw = bytearray(sn.path_of("bad.0").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    sn.path_of("bad.0").write_bytes(bytes(raw))

    c.provision_secret()  # as `headwater up` would have
    log_path = tmp_path / "storage-1.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "headwater", "node", d.id, "-c", str(c.config_path)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_for("fragment.quarantined", lambda: [x for x in read_lines(log_path)
                                                  if x["event"] == "fragment.quarantined"])
        assert (sn.quarantine_dir / "bad.0").exists()
        if level == "info":  # the pass's own line comes just after
            wait_for("scrub.pass_done", lambda: [x for x in read_lines(log_path) if x["event"] == "scrub.pass_done"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    lines = read_lines(log_path)
    assert {x["daemon"] for x in lines} == {d.id}
    events = {(x["level"], x["event"]) for x in lines}
    assert ("warning", "fragment.quarantined") in events and ("warning", "scrub.corrupt") in events
    if level == "info":
        for info in ("daemon.started", "storage.serving", "scrub.pass_done", "daemon.stopped"):
            assert ("info", info) in events, info
    else:
        assert {x["level"] for x in lines} == {"warning"}, events
