"""The origin as an operator runs it, for functional tests: ``headwater node origin`` on a real
object store cluster (the module's ``cluster`` fixture), TLS "auto" from the local CA, the
built-in issuer, tokens from ``headwater token`` run in this process.

A test module gets a running origin with ``origin = origin_fixture()``, or
``origin_fixture(extra)`` to append TOML after the ``[origin]`` section (``[origin.catalogue]``,
more ``[[origin.clients]]``).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from headwater.bench.sections import LICENCE_SECTION, ORIGIN_CLIENTS, SMALL_LADDER, TRANSCODER_SECTION
from headwater.cli import main
from tests.cluster import free_ports

__all__ = ["HEADWATER", "TUS", "ORIGIN_SECTION", "ORIGIN_CLIENTS", "LICENCE_SECTION", "SMALL_LADDER",
           "TRANSCODER_SECTION", "POP_AND_SHIELD", "Daemon", "Origin", "origin_fixture", "auth"]

HEADWATER = str(Path(sys.executable).with_name("headwater"))
TUS = {"tus-resumable": "1.0.0"}

ORIGIN_SECTION = """
[origin]
id = "origin"
port = {port}
admin_port = {admin}
tls_cert = "auto"
tls_key = "auto"
uploads_bucket = "uploads"
part_size = "5MiB"
max_upload_size = "64MiB"
max_uploads_per_client = 8
upload_expiry_seconds = 3600

""" + ORIGIN_CLIENTS


#: Distribution ``video`` from the origin on http://127.0.0.1:{origin}, served by one POP and a
#: shield (format keys: ``origin``, ``pop``, ``pop_admin``, ``shield``, ``shield_admin``).
POP_AND_SHIELD = """[cdn.client_limits]
enabled = false

[[distributions]]
name = "video"
origin = "http://127.0.0.1:{origin}"

[[edge]]
id = "pop-1"
tier = "pop"
port = {pop}
admin_port = {pop_admin}
lat = 51.5
lon = -0.12
ram_size = "16MiB"
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {shield}
admin_port = {shield_admin}
disk_size = "64MiB"
"""


class Origin:
    """One origin process of ``cluster``, started from ``config_path`` (the cluster's own file
    by default)."""

    def __init__(self, cluster, port: int, admin: int, *, config_path: Path | None = None,
                 name: str = "origin") -> None:
        self.cluster, self.port, self.admin = cluster, port, admin
        self.name = name  # the node id in the config file
        self.config_path = config_path or cluster.config_path
        self.url = f"https://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = cluster.root / "logs" / f"{name}.out"
        self.log = open(self.log_path, "ab")

    def start(self) -> None:
        self.proc = subprocess.Popen([HEADWATER, "node", self.name, "-c", str(self.config_path)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.admin}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the origin did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGKILL if running, and close the log."""
        self.kill()
        self.log.close()

    def cli(self, *args: str) -> str:
        """``headwater ARGS -c FILE`` in this process (the CLI's own code path without a fresh
        interpreter's seconds on a loaded machine; the origin is another process all the same)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main([*args, "-c", str(self.config_path)])
        assert code == 0, out.getvalue()
        return out.getvalue().strip()

    def token(self, client: str, scope: str) -> str:
        """An access token of the built-in issuer."""
        return self.cli("token", "--client", client, "--scope", scope)

    @property
    def ca(self) -> str:
        return str(self.cluster.data_dir / "ca" / "ca.pem")

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=self.ca), timeout=30,
                            trust_env=False)


class Daemon:
    """``headwater node ID`` as a subprocess; :meth:`wait` for its admin /healthz."""

    def __init__(self, config: Path, node_id: str, admin: int, log: Path) -> None:
        self.log, self.node_id, self.admin = log, node_id, admin
        with log.open("ab") as out:
            self.proc = subprocess.Popen([HEADWATER, "node", node_id, "-c", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> Daemon:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.admin}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{self.node_id} did not start:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def origin_fixture(extra: str = ""):
    """A module-scoped fixture: the cluster's origin with ``ORIGIN_SECTION`` + ``extra``."""

    @pytest.fixture(scope="module")
    def origin(cluster):
        port, admin = free_ports(2)
        with open(cluster.config_path, "a") as f:
            f.write(ORIGIN_SECTION.format(port=port, admin=admin) + extra)
        o = Origin(cluster, port, admin)
        o.start()
        try:
            yield o
        finally:
            o.stop()

    return origin


def auth(token: str) -> dict[str, str]:
    """Bearer and tus headers."""
    return {"authorization": f"Bearer {token}", **TUS}
