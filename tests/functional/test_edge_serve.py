"""``headwater edge serve``: one POP in front of any origin, without cluster.toml (as ``varnishd
-b`` does), run as the user runs it: a subprocess of the CLI, with curl and httpx as clients and
a test origin that counts its fetches. Misses then hits over HTTP/1.1 and h2c, ranges from the
cache, the admin port, purges signed with ``--secret-file`` (and refused without a signature),
and a restart that keeps the disk tier.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.from_thread
import httpx
import pytest

from tests.cluster import free_ports
from tests.functional.edge_harness import ControlledOrigin, Obj


@pytest.fixture(scope="module")
def origin():
    o = ControlledOrigin()
    port = free_ports(1)[0]
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        task = portal.start_task(functools.partial(o.run, port))[0]
        o.port = port
        yield o
        task.cancel()


class Pop:
    """A ``headwater edge serve`` process."""

    def __init__(self, origin_port: int, folder: Path, port: int, admin: int, secret: Path) -> None:
        self.port = port
        self.secret = secret
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin}"
        self.args = [sys.executable, "-m", "headwater", "edge", "serve",
                     "--origin", f"http://127.0.0.1:{origin_port}", "--listen", f"127.0.0.1:{port}",
                     "--admin", f"127.0.0.1:{admin}",
                     "--cache-dir", str(folder / "cache"), "--ram", "8MiB", "--disk", "64MiB",
                     "--id", "pop-x", "--secret-file", str(secret)]
        self.log = folder / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.admin + "/healthz", trust_env=False, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("edge serve did not come up: " + self.log.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def pop(origin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-serve")
    secret = folder / "purge.secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    port, admin = free_ports(2, exclude=(origin.port,))
    p = Pop(origin.port, folder, port, admin, secret)
    p.start()
    yield p
    p.stop()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", *args], capture_output=True, timeout=30)


def test_misses_then_hits_over_http1_and_h2c(origin, pop):
    origin.objects["/v/seg-1.m4s"] = Obj(b"a" * 5000, [("cache-control", "max-age=600")])
    first = curl("-D", "-", "-o", "/dev/null", pop.url + "/v/seg-1.m4s").stdout.decode()
    assert " 200" in first.splitlines()[0] and "x-cache: miss from pop-x" in first.lower()
    second = curl("-D", "-", "-o", "/dev/null", pop.url + "/v/seg-1.m4s").stdout.decode()
    assert "x-cache: hit from pop-x" in second.lower()
    with httpx.Client(http1=False, http2=True, trust_env=False) as h2c:  # prior knowledge on http://
        r = h2c.get(pop.url + "/v/seg-1.m4s")
        assert r.http_version == "HTTP/2" and r.content == b"a" * 5000
        assert r.headers["x-cache"].startswith("Hit from pop-x")
    ranged = curl("-D", "-", "-r", "10-19", pop.url + "/v/seg-1.m4s").stdout
    assert b" 206" in ranged.splitlines()[0] and ranged.endswith(b"a" * 10)
    beyond = curl("-o", "/dev/null", "-w", "%{http_code}", "-r", "9000-9999", pop.url + "/v/seg-1.m4s")
    assert beyond.stdout == b"416"
    assert origin.fetches["/v/seg-1.m4s"] == 1
    # The access log: one JSON line a request, CloudFront's standard field names.
    lines = [json.loads(x) for x in pop.log.read_text().splitlines() if '"edge.access"' in x]
    ranged_line = next(x for x in lines if x["cs-uri-stem"] == "/v/seg-1.m4s" and x["sc-status"] == 206)
    assert (ranged_line["sc-range-start"], ranged_line["sc-range-end"], ranged_line["sc-bytes"]) == (10, 19, 10)
    assert ranged_line["c-ip"] == "127.0.0.1" and ranged_line["c-port"] > 0
    assert ranged_line["x-edge-result-type"] == "Hit" and ranged_line["cs-method"] == "GET"
    # plain TCP: no TLS fields; the protocol version as CloudFront writes it, h2c's too
    assert (ranged_line["cs-protocol"], ranged_line["cs-protocol-version"], ranged_line["ssl-protocol"],
            ranged_line["ssl-cipher"]) == ("http", "HTTP/1.1", "-", "-")
    assert 0 <= ranged_line["time-to-first-byte"] <= ranged_line["time-taken"] < 5
    h2c_line = next(x for x in lines if x["cs-uri-stem"] == "/v/seg-1.m4s" and x["cs-protocol-version"] == "HTTP/2.0")
    assert (h2c_line["cs-protocol"], h2c_line["ssl-protocol"], h2c_line["ssl-cipher"]) == ("http", "-", "-")
    ids = [x["x-edge-request-id"] for x in lines]
    assert len(set(ids)) == len(ids)
    metrics = httpx.get(pop.admin + "/metrics", trust_env=False).text
    assert 'hw_edge_upstream_fetches_total{' in metrics and 'hw_edge_requests_total{' in metrics, metrics[-3000:]


def purge(pop: Pop, paths: list[str], *, signed: bool) -> httpx.Response:
    """``POST /_hw/invalidate`` as ``headwater cdn invalidate`` sends it, signed with the
    ``--secret-file`` (the edge's admin scheme), or not."""
    from headwater.edge.adminauth import admin_key
    from headwater.edge.commands import serve_config
    from headwater.edge.invalidation import INVALIDATE_PATH
    from headwater.rpc.auth import cluster_secret

    body = json.dumps({"distribution": "default", "paths": paths, "tags": []}).encode()
    headers = {"content-type": "application/json"}
    if signed:
        args = argparse.Namespace(origin="http://127.0.0.1:1", listen="127.0.0.1:1", admin=None,
                                  cache_dir="x", ram="1MiB", disk="1MiB", id="x", secret_file=str(pop.secret))
        key = admin_key(cluster_secret(serve_config(args)))
        headers["authorization"] = key.authorization("POST", INVALIDATE_PATH, body, now=time.time())
    return httpx.post(pop.admin + INVALIDATE_PATH, content=body, headers=headers, trust_env=False)


def test_purges_need_the_secret(origin, pop):
    origin.objects["/v/seg-2.m4s"] = Obj(b"old", [("cache-control", "max-age=600")])
    assert httpx.get(pop.url + "/v/seg-2.m4s", trust_env=False).content == b"old"
    origin.objects["/v/seg-2.m4s"] = Obj(b"new", [("cache-control", "max-age=600")])
    assert purge(pop, ["/v/seg-2.m4s"], signed=False).status_code in (401, 403)
    assert httpx.get(pop.url + "/v/seg-2.m4s", trust_env=False).content == b"old"
    assert origin.fetches["/v/seg-2.m4s"] == 1
    done = purge(pop, ["/v/*"], signed=True)
    assert done.status_code == 201, done.text
    assert httpx.get(pop.url + "/v/seg-2.m4s", trust_env=False).content == b"new"
    assert origin.fetches["/v/seg-2.m4s"] == 2


def test_a_restart_keeps_the_disk_tier(origin, pop):
    origin.objects["/v/seg-3.m4s"] = Obj(b"d" * 20000, [("cache-control", "max-age=600")])
    assert httpx.get(pop.url + "/v/seg-3.m4s", trust_env=False).headers["x-cache"] == "Miss from pop-x"
    time.sleep(0.5)  # the disk tier's write lands behind the response
    pop.stop()
    pop.start()
    again = httpx.get(pop.url + "/v/seg-3.m4s", trust_env=False)
    assert again.content == b"d" * 20000 and again.headers["x-cache"].startswith("Hit from pop-x")
    assert origin.fetches["/v/seg-3.m4s"] == 1


def test_bad_flags_name_the_flag(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "headwater", "edge", "serve", "--origin", "ftp://x",
                          "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--origin" in bad.stderr
