"""The operator surface end to end: `headwater up`, `node`, `status`, over real processes.

The real daemons are written elsewhere; here every role runs ``run_fake`` below (through
HEADWATER_ENTRY_POINTS), a stand-in that listens on its ports and answers /healthz, so the CLI and
supervisor are tested for real: processes, signals, ports, logs, restarts.
``HEADWATER_FAKE="id=crash,id2=hang"`` makes chosen daemons misbehave: ``crash`` raises, ``hang``
never answers /healthz, ``starting`` answers ``"status": "starting"`` for ever, ``degraded``
answers ``"status": "degraded"`` (503) until the file HEADWATER_FAKE_BACK names exists (its
dependency is back), then ok.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from headwater.admin import admin_app
from headwater.http.types import Headers, Request
from headwater.metrics import Registry
from tests.cluster import free_ports

REPO = Path(__file__).resolve().parents[2]
FAKE = "tests.functional.test_cli:run_fake"
FAKE_ROLES = f"metadata={FAKE},storage={FAKE},gateway={FAKE}"


# --- the stand-in daemon (runs in the child processes) ----------------------------------------

async def run_fake(cluster, node_cfg, *, worker=None, task_status=anyio.TASK_STATUS_IGNORED):
    behaviour = dict(item.split("=", 1) for item in os.environ.get("HEADWATER_FAKE", "").split(",") if "=" in item)
    mode = behaviour.get(node_cfg.id, "ok")
    print(f"fake {node_cfg.id} starting in mode {mode}", file=sys.stderr, flush=True)
    if mode == "crash":
        raise RuntimeError(f"fake crash of {node_cfg.id}")
    from headwater.admin import serve_admin

    shared = worker is not None
    main = await anyio.create_tcp_listener(local_host=node_cfg.host, local_port=node_cfg.port, reuse_port=shared)
    details = {"storage": {"free_bytes": 10 * 2**30, "used_bytes": 2**20},
               "gateway": {"ec": cluster.objstore.ec.describe(), "worker": worker},
               "metadata": {"entries": 42}}[node_cfg.role]
    registry = Registry()
    registry.counter("fake_starts_total", "Starts.").inc()

    async def health():
        if mode == "starting":
            return {**details, "status": "starting"}
        if mode == "degraded" and not os.path.exists(os.environ.get("HEADWATER_FAKE_BACK", "")):
            return {**details, "status": "degraded", "error": "fake dependency away"}
        return dict(details)

    async def close(stream):
        await stream.aclose()

    async with main, anyio.create_task_group() as tg:
        tg.start_soon(main.serve, close)
        if mode == "hang":  # listening, never answering
            hung = await anyio.create_tcp_listener(local_host=node_cfg.host, local_port=node_cfg.admin_port)
            tg.start_soon(anyio.sleep_forever)
            async with hung:
                task_status.started()
                await anyio.sleep_forever()
        await tg.start(lambda task_status: serve_admin(
            host=node_cfg.host, port=node_cfg.admin_port, health=health, registry=registry,
            reuse_port=shared, task_status=task_status))
        task_status.started()


# --- helpers ---------------------------------------------------------------------------------------

def write_cluster(tmp_path, *, runtime="asyncio", workers=2, extra="", secret=True):
    """cluster.toml for fake daemons; with ``secret``, var/cluster.secret too (as an operator
    copies it to a host before `headwater node`; `headwater up` creates it itself)."""
    p = free_ports(10)
    text = f"""
[cluster]
name = "test-cluster"
runtime = "{runtime}"
log_level = "debug"
data_dir = "var"

[objstore.ec]
k = 2
m = 1
stripe_size = "64KiB"

[[users]]
name = "admin"
access_key = "testkey"
secret_key = "test-secret-key"

[gateway]
id = "s3"
port = {p[0]}
admin_port = {p[1]}
workers = {workers}

[[metadata]]
id = "meta-1"
port = {p[2]}
admin_port = {p[3]}

[[storage]]
id = "storage-1"
port = {p[4]}
admin_port = {p[5]}

[[storage]]
id = "storage-2"
port = {p[6]}
admin_port = {p[7]}

[[storage]]
id = "storage-3"
port = {p[8]}
admin_port = {p[9]}
{extra}"""
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    if secret:
        (tmp_path / "var").mkdir(mode=0o700, exist_ok=True)
        fd = os.open(tmp_path / "var" / "cluster.secret", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, os.urandom(32).hex().encode())
        os.close(fd)
    return path, p


def env(**extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e["HEADWATER_ENTRY_POINTS"] = FAKE_ROLES
    e.update(extra)
    return e


def headwater(*args, timeout=60, **env_extra):
    return subprocess.run([sys.executable, "-m", "headwater", *args], capture_output=True, text=True,
                          env=env(**env_extra), cwd=REPO, timeout=timeout)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def state(tmp_path):
    try:
        return json.loads((tmp_path / "var" / "run" / "state.json").read_text())
    except (OSError, ValueError):
        return None


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --- config errors and nothing running ---------------------------------------------------------

def test_up_with_a_bad_config_names_key_and_line_and_starts_nothing(tmp_path):
    path, _ = write_cluster(tmp_path, secret=False)
    text = path.read_text().replace('id = "storage-2"\nport = ', 'id = "storage-2"\nport = "x" #')
    path.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith('port = "x"'))
    r = headwater("up", "-c", str(path))
    assert r.returncode == 2
    assert f"{path}:{line}: storage[1].port: expected an integer" in r.stderr
    assert not (tmp_path / "var").exists()


def test_missing_config_file(tmp_path):
    r = headwater("status", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 2
    assert "cannot read" in r.stderr


def test_status_json_with_nothing_running(tmp_path):
    path, ports = write_cluster(tmp_path)
    r = headwater("status", "-c", str(path), "--json", "--timeout", "0.5")
    assert r.returncode == 1, r.stderr
    rows = json.loads(r.stdout)
    assert [row["id"] for row in rows] == ["meta-1", "storage-1", "storage-2", "storage-3", "s3"]
    assert all(row["healthy"] is False and row["pid"] is None for row in rows)
    assert rows[-1]["address"] == f"127.0.0.1:{ports[0]}" and rows[-1]["admin"] == f"127.0.0.1:{ports[1]}"
    assert set(rows[0]) >= {"id", "role", "pid", "address", "admin", "healthy", "details"}
    table = headwater("status", "-c", str(path), "--timeout", "0.5")
    assert table.returncode == 1
    assert "0/5 daemons healthy; EC 2+1, 64 KiB stripes" in table.stdout
    assert "storage-1  storage" in table.stdout and "down" in table.stdout


def test_node_with_an_unknown_id(tmp_path):
    path, _ = write_cluster(tmp_path)
    r = headwater("node", "nope", "-c", str(path))
    assert r.returncode == 2
    assert "no daemon with id 'nope'" in r.stderr


def test_node_worker_flag_only_for_the_gateway(tmp_path):
    path, _ = write_cluster(tmp_path)
    r = headwater("node", "storage-1", "-c", str(path), "--worker", "1")
    assert r.returncode == 2 and "--worker applies only to roles with workers (gateway" in r.stderr
    assert "storage-1 is a storage node" in r.stderr
    r = headwater("node", "s3", "-c", str(path), "--worker", "5")
    assert r.returncode == 2 and "outside 0..1" in r.stderr


def test_node_without_the_cluster_secret_refuses_to_start(tmp_path):
    path, _ = write_cluster(tmp_path, secret=False)
    r = headwater("node", "storage-1", "-c", str(path))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"headwater: storage-1: {path}: cluster.secret_file: cannot read the cluster secret "
        f"{tmp_path / 'var' / 'cluster.secret'}: No such file or directory (`headwater up` creates it on "
        "first start; on other hosts copy it there)")
    secret = tmp_path / "var" / "cluster.secret"
    secret.parent.mkdir()
    secret.write_text("s" * 64)
    secret.chmod(0o640)
    r = headwater("node", "storage-1", "-c", str(path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "permissions 0640 for" in r.stderr and f"chmod 600 {secret}" in r.stderr


def test_node_whose_role_cannot_be_imported(tmp_path):
    path, _ = write_cluster(tmp_path)
    r = headwater("node", "storage-1", "-c", str(path),
                  HEADWATER_ENTRY_POINTS="storage=headwater_no_such_module:run")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "headwater: storage-1: role 'storage' is not available (headwater_no_such_module:run): "
        "cannot import headwater_no_such_module: No module named 'headwater_no_such_module'")


def test_node_with_its_port_in_use(tmp_path):
    path, ports = write_cluster(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports[4]))
        held.listen()
        r = headwater("node", "storage-1", "-c", str(path))
    assert r.returncode == 1
    assert r.stderr.strip() == f"headwater: storage-1: cannot listen on 127.0.0.1:{ports[4]}: address already in use"


def test_node_that_fails_while_starting(tmp_path):
    path, _ = write_cluster(tmp_path)
    r = headwater("node", "storage-2", "-c", str(path), HEADWATER_FAKE="storage-2=crash")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == "headwater: storage-2: failed: RuntimeError: fake crash of storage-2"
    events = [json.loads(ln) for ln in r.stderr.splitlines() if ln.startswith("{")]
    assert events[-1]["event"] == "daemon.failed" and "Traceback" in events[-1]["traceback"]


# --- one daemon in the foreground ----------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_node_serves_until_sigterm_and_logs_json(tmp_path, runtime):
    path, ports = write_cluster(tmp_path, runtime=runtime)
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "node", "meta-1", "-c", str(path)],
                            env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{ports[3]}/healthz", timeout=1).json()
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                return None
        doc = wait_for(healthy, what="meta-1 healthy")
        assert doc == {"status": "ok", "pid": proc.pid, "entries": 42}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    events = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    started = next(e for e in events if e["event"] == "daemon.started")
    assert started["daemon"] == "meta-1" and started["level"] == "info" and started["runtime"] == runtime
    assert started["address"] == f"127.0.0.1:{ports[2]}" and started["ts"].endswith("Z")
    assert events[-1]["event"] == "daemon.stopped" and events[-1]["signal"] == "SIGTERM"


# --- the whole cluster under the supervisor ----------------------------------------------------------

def start_up(path, *args, **env_extra):
    return subprocess.Popen([sys.executable, "-m", "headwater", "up", "-c", str(path), *args],
                            env=env(**env_extra), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until(proc, marker, timeout=60.0):
    """Lines of proc.stdout up to the one containing marker (fails if the process exits first)."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"exited {proc.wait()} before {marker!r}:\n{''.join(lines)}\n{proc.stderr.read()}")
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"no {marker!r} within {timeout}s")


def child_pids(tmp_path):
    return {(c["id"], c["worker"]): c["pid"] for c in state(tmp_path)["children"]}


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_up_status_restart_and_clean_stop(tmp_path, runtime):
    path, ports = write_cluster(tmp_path, runtime=runtime, secret=False)
    proc = start_up(path)
    try:
        started = read_until(proc, "is up")
        secret_file = tmp_path / "var" / "cluster.secret"
        assert f"created the cluster secret {secret_file}" in started
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        summary = read_until(proc, "Ctrl-C")
        assert f"S3 endpoint   http://127.0.0.1:{ports[0]}" in summary
        assert "access key    testkey" in summary and "secret key    test-secret-key" in summary
        assert "[[users]]" in summary
        for daemon_id in ("meta-1", "storage-1", "storage-2", "storage-3", "s3"):
            assert f"\n  {daemon_id} " in summary
        assert str(tmp_path / "var" / "logs") in summary

        pids = child_pids(tmp_path)
        assert len(pids) == 6 and all(pid_alive(p) for p in pids.values())

        r = headwater("status", "-c", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        rows = {row["id"]: row for row in json.loads(r.stdout)}
        assert all(row["healthy"] for row in rows.values())
        assert rows["storage-1"]["pid"] == pids[("storage-1", None)]
        assert rows["s3"]["pid"] in (pids[("s3", 0)], pids[("s3", 1)])
        assert rows["s3"]["details"]["ec"] == "EC 2+1, 64 KiB stripes"
        table = headwater("status", "-c", str(path))
        assert table.returncode == 0 and "5/5 daemons healthy" in table.stdout
        assert "free 10.0 GiB, used 1.0 MiB" in table.stdout and "entries 42" in table.stdout

        # A crashed child comes back with a new pid.
        old = pids[("storage-2", None)]
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (p := child_pids(tmp_path)[("storage-2", None)]) != old and p, what="restart")
        assert pid_alive(new)
        wait_for(lambda: headwater("status", "-c", str(path)).returncode == 0, what="healthy again")
        assert any(c["restarts"] == 1 for c in state(tmp_path)["children"] if c["id"] == "storage-2")

        all_pids = list(child_pids(tmp_path).values())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "stopped (SIGTERM)" in out
    assert not any(pid_alive(p) for p in all_pids)
    assert all(port_free(p) for p in ports)
    assert {c["state"] for c in state(tmp_path)["children"]} == {"stopped"}
    log = (tmp_path / "var" / "logs" / "storage-2.log").read_text()
    assert log.count("fake storage-2 starting") == 2
    secret = secret_file.read_text().strip()
    assert secret not in started + out + err
    assert not any(secret in f.read_text() for f in (tmp_path / "var" / "logs").iterdir() if f.is_file())


def test_up_stops_everything_when_a_daemon_cannot_start(tmp_path):
    path, ports = write_cluster(tmp_path)
    proc = start_up(path, HEADWATER_FAKE="storage-2=crash")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "storage-2 failed to start: exited with code 1" in err
    assert "RuntimeError: fake crash of storage-2" in err  # the end of its log
    assert "every daemon that had started was stopped" in err
    assert not any(pid_alive(c["pid"]) for c in state(tmp_path)["children"] if c["pid"])
    assert all(port_free(p) for p in ports)
    assert "s3" not in {c["id"] for c in state(tmp_path)["children"] if c["pid"]}  # never reached


def test_up_gives_up_on_a_daemon_that_never_becomes_healthy(tmp_path):
    path, ports = write_cluster(tmp_path)
    proc = start_up(path, "--start-timeout", "1.5", "--stop-grace", "2", HEADWATER_FAKE="meta-1=hang")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "meta-1 failed to start: not healthy after 1.5s" in err
    assert all(port_free(p) for p in ports)


def test_up_gives_up_on_a_daemon_that_stays_starting(tmp_path):
    """A daemon answering, but not ready ("starting": a metadata node without its quorum) is
    not started: only "ok" and "degraded" are."""
    path, ports = write_cluster(tmp_path)
    proc = start_up(path, "--start-timeout", "1.5", "--stop-grace", "2", HEADWATER_FAKE="meta-1=starting")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "meta-1 failed to start: not healthy after 1.5s (/healthz answered 503" in err
    assert all(port_free(p) for p in ports)


def test_up_counts_a_degraded_daemon_started_and_status_shows_it(tmp_path):
    """A daemon whose /healthz says "degraded" (503: serving, a dependency away) is started at
    once: the next roles start, `up` says it is up and names it degraded; `status` shows it
    degraded (exit 1: not every daemon ok) until its dependency is back, then ok."""
    path, ports = write_cluster(tmp_path)
    back = tmp_path / "dependency-back"
    proc = start_up(path, "--start-timeout", "20", HEADWATER_FAKE="meta-1=degraded",
                    HEADWATER_FAKE_BACK=str(back))
    try:
        t0 = time.monotonic()
        read_until(proc, "is up")
        summary = read_until(proc, "Ctrl-C")
        assert time.monotonic() - t0 < 15  # not the start timeout's 20 s
        assert "degraded: meta-1 (serving" in summary
        assert {c["id"]: c["health_at_start"] for c in state(tmp_path)["children"]}["meta-1"] == "degraded"

        r = headwater("status", "-c", str(path), "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        rows = {row["id"]: row for row in json.loads(r.stdout)}
        assert rows["meta-1"]["health"] == "degraded" and rows["meta-1"]["healthy"] is False
        assert all(row["health"] == "ok" for i, row in rows.items() if i != "meta-1")
        table = headwater("status", "-c", str(path))
        assert "4/5 daemons healthy, 1 degraded" in table.stdout
        line = next(ln for ln in table.stdout.splitlines() if ln.startswith("meta-1 "))
        assert " degraded " in line and "error: fake dependency away" in line

        back.touch()
        wait_for(lambda: headwater("status", "-c", str(path)).returncode == 0, what="ok again")
        rows = {row["id"]: row for row in json.loads(headwater("status", "-c", str(path), "--json").stdout)}
        assert rows["meta-1"]["health"] == "ok" and rows["meta-1"]["healthy"] is True
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert all(port_free(p) for p in ports)


def test_up_refuses_to_start_when_a_port_is_taken(tmp_path):
    path, ports = write_cluster(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports[0]))
        held.listen()
        r = headwater("up", "-c", str(path))
    assert r.returncode == 1
    assert f"s3: cannot listen on 127.0.0.1:{ports[0]}: address already in use" in r.stderr
    assert "nothing was started" in r.stderr
    assert state(tmp_path) is None


# --- the admin endpoint ----------------------------------------------------------------------------

class _NoBody:
    expects_continue = False
    content_length = 0

    async def receive(self, max_bytes=65536):
        return b""

    async def read_all(self, limit):
        return b""


def _request(method, path):
    return Request(method=method, target=path, path=path, query="", headers=Headers(), body=_NoBody())


@pytest.mark.anyio
async def test_admin_app_health_and_metrics():
    reg = Registry()
    reg.counter("hw_test_total", "Test.").inc(3)
    report = {"status": "ok", "free_bytes": 5}

    async def health():
        return dict(report)

    app = admin_app(health=health, registry=reg)
    r = await app(_request("GET", "/healthz"))
    assert r.status == 200
    assert json.loads(r.body) == {"status": "ok", "free_bytes": 5, "pid": os.getpid()}
    report["status"] = "degraded"
    r = await app(_request("GET", "/healthz"))
    assert r.status == 503 and json.loads(r.body)["status"] == "degraded"

    r = await app(_request("GET", "/metrics"))
    assert r.status == 200
    assert ("content-type", "text/plain; version=0.0.4; charset=utf-8") in r.headers
    assert r.body == b"# HELP hw_test_total Test.\n# TYPE hw_test_total counter\nhw_test_total 3\n"
    r = await app(_request("HEAD", "/metrics"))
    assert r.status == 200 and r.body == b""
    assert (await app(_request("POST", "/metrics"))).status == 405
    assert (await app(_request("GET", "/nope"))).status == 404


@pytest.mark.anyio
async def test_admin_app_reports_a_failing_health_check_as_503():
    async def health():
        raise OSError("disk gone")

    r = await admin_app(health=health, registry=Registry())(_request("GET", "/healthz"))
    assert r.status == 503
    assert json.loads(r.body)["error"] == "OSError: disk gone"


def _server_core_present():
    try:
        import headwater.http.server  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.anyio
@pytest.mark.skipif(not _server_core_present(),
                    reason="headwater/http/server.py (the HTTP server core) is not written yet")
async def test_serve_admin_over_a_real_socket():
    from headwater.admin import serve_admin

    (port,) = free_ports(1)
    reg = Registry()
    reg.gauge("hw_up", "Up.").set(1)

    async def health():
        return {"entries": 1}

    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: serve_admin(host="127.0.0.1", port=port, health=health,
                                                       registry=reg, task_status=task_status))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/healthz")
            assert r.status_code == 200 and r.json() == {"status": "ok", "entries": 1, "pid": os.getpid()}
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.text.endswith("hw_up 1\n")
            assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        tg.cancel_scope.cancel()
