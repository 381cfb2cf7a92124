"""``headwater up`` with the origin's PostgreSQL down (updegraded): the real origin daemon, started
by the real supervisor (``headwater up``, a cluster.toml naming only the origin), against a throwaway PostgreSQL server
this module starts and stops.

Covered: the origin run once while PostgreSQL is up (it keeps its copy of the cluster's issuer
key and client secrets, as any origin that has ever run does), then stopped, and PostgreSQL
stopped; ``up`` again: it says the cluster is up well within its start timeout and names the
origin degraded; ``status`` shows the origin ``degraded`` (exit 1) with the catalogue's database
named; PostgreSQL started again: without a restart, ``status`` shows the origin ok (exit 0).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from headwater.bench.postgres_server import start_postgres
from headwater.bench.sections import ORIGIN_CLIENTS
from tests.cluster import free_ports

from .postgres_server import find_initdb
from .test_cli import env, headwater, read_until, state, wait_for

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 40   # `up --start-timeout`: an origin waiting to be "ok" would use all of it
UP_BOUND_S = 25        # `up` says "is up" within this with PostgreSQL down

CLUSTER = """
[cluster]
name = "updegraded"
data_dir = "var"

[origin]
id = "origin"
port = {p[0]}
admin_port = {p[1]}
tls = false
uploads_bucket = "uploads"
# An object store nobody runs here: the origin serves regardless (uploads answer 503).
s3_endpoint = "http://127.0.0.1:{p[2]}"
access_key = "testkey"
secret_key = "test-secret-key"

[origin.catalogue]
backend = "postgresql"
dsn = "{dsn}"
connect_timeout_seconds = 2

""" + ORIGIN_CLIENTS


def _up(path: Path) -> subprocess.Popen:
    """``headwater up`` with the real origin (not test_cli's stand-in daemons)."""
    e = {k: v for k, v in env().items() if k != "HEADWATER_ENTRY_POINTS"}
    return subprocess.Popen([sys.executable, "-m", "headwater", "up", "-c", str(path),
                             "--start-timeout", str(START_TIMEOUT_S)],
                            env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _origin_row(path: Path) -> tuple[int, dict]:
    r = headwater("status", "-c", str(path), "--json")
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    return r.returncode, rows["origin"]


@pytest.fixture
def pg_root():
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    root = Path(tempfile.mkdtemp(prefix="hw-pg-updegraded-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_up_counts_the_origin_started_while_postgresql_is_down_and_status_follows_it(tmp_path, pg_root):
    pg_port, *ports = free_ports(4)
    pg = start_postgres(port=pg_port, data_dir=pg_root)
    proc = None
    try:
        path = tmp_path / "cluster.toml"
        path.write_text(CLUSTER.format(p=ports, dsn=pg.dsn()))

        # Once with PostgreSQL up: the origin keeps its copies of the cluster's shared secrets.
        proc = _up(path)
        read_until(proc, "Ctrl-C")
        wait_for(lambda: _origin_row(path)[1]["health"] == "ok", what="origin ok")
        _stop(proc)
        proc = None
        pg.stop()

        # PostgreSQL down: `up` counts the origin started, degraded, without waiting it out.
        t0 = time.monotonic()
        proc = _up(path)
        read_until(proc, "is up")
        summary = read_until(proc, "Ctrl-C")
        took = time.monotonic() - t0
        assert took < UP_BOUND_S, took
        assert "degraded: origin (serving" in summary, summary
        assert {c["id"]: c["health_at_start"] for c in state(tmp_path)["children"]}["origin"] == "degraded"
        code, row = _origin_row(path)
        assert code == 1 and row["health"] == "degraded" and row["healthy"] is False, row
        assert row["details"]["catalogue_database"] == "unavailable", row
        assert row["pid"] == {c["id"]: c["pid"] for c in state(tmp_path)["children"]}["origin"]
        table = headwater("status", "-c", str(path)).stdout
        line = next(ln for ln in table.splitlines() if ln.startswith("origin "))
        assert " degraded " in line, table

        # PostgreSQL back: the same origin process reports ok.
        pid = row["pid"]
        pg = start_postgres(port=pg_port, data_dir=pg_root)
        wait_for(lambda: _origin_row(path)[1]["health"] == "ok", timeout=30, what="origin ok again")
        code, row = _origin_row(path)
        assert code == 0 and row["healthy"] is True and row["pid"] == pid
        assert row["details"]["catalogue_database"] == "available"
        assert proc.poll() is None
    finally:
        if proc is not None:
            _stop(proc)
        pg.stop()
