"""The operator commands on a temporary cluster: ``headwater up``, ``headwater status``.

- ``up`` starts every daemon; ``status --json`` then shows each healthy, with live pids.
- SIGTERM to ``up`` stops every child: no stray process is left.
- A port already taken: ``up`` fails, names the daemon, and leaves nothing running.
- A bad config: exit code 2, naming the key and its line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import Cluster

# What the port-conflict tests start: which daemon fails matters, not the layout's shape.
SMALL = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1)
EXPECTED_IDS = ["meta-1", "meta-2", "meta-3", *[f"storage-{i}" for i in range(1, 7)], "s3"]


def _descendants(pid: int) -> set[int]:
    """Every live process whose ancestry leads to ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry)] = ppid
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        nxt = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out |= nxt
        frontier = nxt
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _processes_using(config_path: Path) -> list[int]:
    """Live processes whose command line names ``config_path``."""
    needle = str(config_path).encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmd and _alive(int(entry)):
            out.append(int(entry))
    return out


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


@pytest.fixture
def up_cluster(tmp_path):
    c = Cluster(tmp_path / "up", mode="up", workers=2)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        for pid in _processes_using(c.config_path):  # belt and braces: never leak daemons
            os.kill(pid, signal.SIGKILL)


def test_up_status_and_sigterm(up_cluster):
    c = up_cluster
    rows = c.status()
    assert [r["id"] for r in rows] == EXPECTED_IDS
    for r in rows:
        assert set(r) >= {"id", "role", "pid", "address", "admin", "healthy", "details"}, r
        assert r["healthy"] is True, r
        assert isinstance(r["pid"], int) and _alive(r["pid"]), r
        d = c.daemon(r["id"])
        assert r["role"] == d.role
        assert r["address"] == f"127.0.0.1:{d.port}"
        assert r["admin"] == f"127.0.0.1:{d.admin_port}"
    # the human form works too and exits 0
    human = c.headwater("status", "-c", str(c.config_path))
    assert human.returncode == 0, human.stderr
    for i in EXPECTED_IDS:
        assert i in human.stdout
    # the S3 gateway (two workers on one port) answers real clients
    s3 = c.s3_client()
    s3.create_bucket(Bucket="up-bucket")
    for i in range(8):
        s3.put_object(Bucket="up-bucket", Key=f"k{i}", Body=b"x" * (i * 50_000))
    assert s3.list_objects_v2(Bucket="up-bucket")["KeyCount"] == 8
    assert s3.get_object(Bucket="up-bucket", Key="k7")["Body"].read() == b"x" * 350_000

    up = c.procs["up"]
    children = _descendants(up.pid)
    assert len(children) >= len(EXPECTED_IDS) + 1, children  # + the second gateway worker
    os.kill(up.pid, signal.SIGTERM)
    try:
        code = up.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("headwater up did not exit within 30 s of SIGTERM")
    assert code == 0, c.log_tail("up")
    time.sleep(0.2)
    stray = [p for p in children if _alive(p)]
    assert stray == [], f"processes left after SIGTERM to up: {stray}"
    assert _processes_using(c.config_path) == []
    for d in c.daemons:
        assert not _listening(d.port) and not _listening(d.admin_port), d.id
    # status now says every daemon is down, and exits non-zero
    down = c.headwater("status", "-c", str(c.config_path), "--json")
    assert down.returncode == 1
    assert all(r["healthy"] is False for r in json.loads(down.stdout))


def test_up_restarts_a_killed_child(up_cluster):
    c = up_cluster
    before = {r["id"]: r["pid"] for r in c.status()}
    os.kill(before["storage-2"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = {r["id"]: r for r in c.status()}
        row = rows["storage-2"]
        if row["healthy"] and row["pid"] != before["storage-2"]:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"storage-2 was not restarted: {rows['storage-2']}")
    assert _alive(row["pid"])


def test_up_with_taken_port_fails_and_starts_nothing(tmp_path):
    c = Cluster(tmp_path / "taken", mode="up", **SMALL)
    victim = c.daemon("storage-3")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", victim.port))
    blocker.listen(1)
    try:
        res = c.headwater("up", "-c", str(c.config_path), timeout=60)
        assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
        out = res.stdout + res.stderr
        assert "storage-3" in out, out
        assert str(victim.port) in out, out
        time.sleep(0.3)
        assert _processes_using(c.config_path) == []
        for d in c.daemons:
            if d is not victim:
                assert not _listening(d.port) and not _listening(d.admin_port), f"{d.id} left listening"
    finally:
        blocker.close()
        for pid in _processes_using(c.config_path):
            os.kill(pid, signal.SIGKILL)


def test_up_with_port_taken_by_a_late_binder(tmp_path):
    """A port that was free at the check but is taken when the daemon binds: still a clean failure."""
    c = Cluster(tmp_path / "late", mode="up", **SMALL)
    victim = c.daemon("s3")
    # a listener without SO_REUSEPORT on the gateway's admin port, bound after `up` checked ports
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "up", "-c", str(c.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        first = proc.stdout.readline()  # "headwater: starting N daemons ..." comes after the port check
        assert b"starting" in first, first
        try:
            blocker.bind(("127.0.0.1", victim.admin_port))
            blocker.listen(1)
        except OSError:
            pytest.skip("the gateway bound its admin port before the test could")
        out, _ = proc.communicate(timeout=90)
        if proc.returncode == 0:
            pytest.fail(f"up exited 0 though {victim.id}'s admin port was taken:\n{out.decode()[-2000:]}")
        assert b"s3" in out
        time.sleep(0.3)
        assert _processes_using(c.config_path) == []
    finally:
        blocker.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _processes_using(c.config_path):
            os.kill(pid, signal.SIGKILL)


def _bad_config(tmp_path, mutate) -> tuple[Path, int, str]:
    c = Cluster(tmp_path / "bad", mode="up")
    text = c.config_text()
    lines = text.splitlines()
    new_lines, key, line_no = mutate(lines)
    c.config_path.write_text("\n".join(new_lines) + "\n")
    return c.config_path, line_no, key


def _replace_in_section(lines, section_header: str, nth: int, key: str, value: str):
    seen = -1
    in_section = False
    for i, line in enumerate(lines):
        if line.strip() == section_header:
            seen += 1
            in_section = seen == nth
            continue
        if line.startswith("["):
            in_section = False
        if in_section and line.split("=")[0].strip() == key:
            lines = list(lines)
            lines[i] = f"{key} = {value}"
            return lines, i + 1
    raise AssertionError(f"{key} not found in {section_header} #{nth}")


@pytest.mark.parametrize("case", ["bad-port-type", "port-out-of-range", "unknown-key", "bad-size", "bad-k"])
def test_bad_config_exit_2_names_key_and_line(tmp_path, case):
    def mutate(lines):
        if case == "bad-port-type":
            new, n = _replace_in_section(lines, "[[storage]]", 1, "port", '"abc"')
            return new, "storage[1].port", n
        if case == "port-out-of-range":
            new, n = _replace_in_section(lines, "[[metadata]]", 2, "port", "70000")
            return new, "metadata[2].port", n
        if case == "unknown-key":
            new, n = _replace_in_section(lines, "[gateway]", 0, "workers", "1\nwokrers = 2")
            return new, "gateway.wokrers", n + 1
        if case == "bad-size":
            new, n = _replace_in_section(lines, "[objstore]", 0, "min_part_size", '"5 parsecs"')
            return new, "objstore.min_part_size", n
        new, n = _replace_in_section(lines, "[objstore.ec]", 0, "k", "0")
        return new, "objstore.ec.k", n

    path, line_no, key = _bad_config(tmp_path, mutate)
    res = subprocess.run([sys.executable, "-m", "headwater", "up", "-c", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert key in res.stderr, res.stderr
    assert f":{line_no}" in res.stderr, (line_no, res.stderr)
    assert _processes_using(path) == []
    # status refuses the same file the same way
    res = subprocess.run([sys.executable, "-m", "headwater", "status", "-c", str(path), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and key in res.stderr


def test_missing_config_file_exit_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "headwater", "up", "-c", str(tmp_path / "nope.toml")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "nope.toml" in res.stderr
