"""``headwater edge serve --workers N --tls-cert FILE --tls-key FILE --tls-listen HOST:PORT`` run
as the user runs it (a subprocess of the CLI): HTTP/2 over TLS with ALPN checked with curl
``--http2 --cacert``, HTTP/1.1 over TLS when only it is offered, two workers started by the
kernel's supervisor that both answer on the shared ports, one's miss being the other's hit
through the shared disk tier (one origin fetch), a killed worker restarted, purges refused with
the reason, and bad TLS flags named."""

from __future__ import annotations

import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import anyio
import anyio.from_thread
import httpx
import pytest

from tests.cluster import free_ports
from tests.functional.edge_harness import ControlledOrigin, Obj

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def origin():
    o = ControlledOrigin()
    port = free_ports(1)[0]
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        task = portal.start_task(functools.partial(o.run, port))[0]
        o.port = port
        yield o
        task.cancel()


def make_cert(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-days", "2", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def pop(origin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-serve-workers")
    cert, key = make_cert(folder)
    port, admin, tls = free_ports(3, exclude=(origin.port,))
    log = folder / "serve.log"
    args = [sys.executable, "-m", "headwater", "edge", "serve", "--origin", f"http://127.0.0.1:{origin.port}",
            "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--cache-dir", str(folder / "cache"),
            "--ram", "8MiB", "--disk", "64MiB", "--id", "pop-w", "--workers", "2",
            "--tls-cert", str(cert), "--tls-key", str(key), "--tls-listen", f"127.0.0.1:{tls}"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while "workers (admin" not in log.read_text():  # the supervisor says so once both answered
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield type("Pop", (), {"url": f"http://127.0.0.1:{port}", "https": f"https://127.0.0.1:{tls}",
                               "admin": f"http://127.0.0.1:{admin}", "cert": cert, "log": log, "proc": proc,
                               "worker_log": folder / "cache" / "serve" / "logs" / "pop-w.log",
                               "state": folder / "cache" / "serve" / "run" / "state.json"})
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # the supervisor stopped its workers: none is left serving
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/", trust_env=False, timeout=1)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", *args], capture_output=True, timeout=30)


def access_lines(pop) -> list[dict]:
    return [json.loads(x) for x in pop.worker_log.read_text().splitlines() if '"edge.access"' in x]


def logged(pop, keep: Callable[[dict], bool], count: int, timeout_s: float = 10.0) -> list[dict]:
    """The access lines ``keep`` accepts, once there are ``count`` of them: a line is written when
    the answer's last byte has been handed to the connection, so a client can have it all (and
    exit) a moment before its line is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [x for x in access_lines(pop) if keep(x)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_http2_over_tls_with_alpn_and_http11_when_only_it_is_offered(origin, pop):
    origin.objects["/t/seg-1.m4s"] = Obj(b"t" * 3000, [("cache-control", "max-age=600")])
    out = curl("--http2", "--cacert", str(pop.cert), "-D", "-", "-o", "/dev/null", "-w", "%{http_version}",
               pop.https + "/t/seg-1.m4s")
    assert out.returncode == 0, out.stderr
    head = out.stdout.decode()
    assert head.startswith("HTTP/2 200") and head.endswith("2") and "x-cache: Miss from pop-w" in head, head
    again = curl("--http1.1", "--cacert", str(pop.cert), "-D", "-", "-o", "/dev/null", pop.https + "/t/seg-1.m4s")
    assert again.stdout.decode().startswith("HTTP/1.1 200") and "x-cache: Hit from pop-w" in again.stdout.decode()
    refused = curl("--http2", "-o", "/dev/null", pop.https + "/t/seg-1.m4s")  # the self-signed cert is not trusted
    assert refused.returncode == 60, refused
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(pop.cert)), trust_env=False) as client:
        r = client.get(pop.https + "/t/seg-1.m4s")
        assert r.http_version == "HTTP/2" and r.content == b"t" * 3000
    assert origin.fetches["/t/seg-1.m4s"] == 1
    # CloudFront's TLS fields on each line: the negotiated protocol and OpenSSL's cipher name
    lines = logged(pop, lambda x: x["cs-uri-stem"] == "/t/seg-1.m4s", 3)
    by_version = {(x["cs-protocol-version"], x["ssl-protocol"]): x for x in lines}
    assert set(by_version) == {("HTTP/2.0", "TLSv1.3"), ("HTTP/1.1", "TLSv1.3")}, lines
    for x in lines:
        assert x["cs-protocol"] == "https" and x["ssl-cipher"].startswith("TLS_") and x["ssl-cipher"].isupper()
        assert 0 <= x["time-to-first-byte"] < 5
    # a TLS 1.2 client: its protocol and its ECDHE cipher, as CloudFront's logs name them
    tls12 = curl("--http1.1", "--tlsv1.2", "--tls-max", "1.2", "--cacert", str(pop.cert), "-o", "/dev/null",
                 pop.https + "/t/seg-1.m4s")
    assert tls12.returncode == 0, tls12.stderr
    line = next(iter(logged(pop, lambda x: x["cs-uri-stem"] == "/t/seg-1.m4s" and x["ssl-protocol"] == "TLSv1.2", 1)),
                None)
    assert line is not None, access_lines(pop)
    assert line["ssl-cipher"].startswith("ECDHE-ECDSA-") and line["cs-protocol"] == "https", line


def test_two_workers_both_serve_and_share_hits_through_the_disk_tier(origin, pop):
    origin.objects["/w/seg-1.m4s"] = Obj(b"w" * 20000, [("cache-control", "max-age=600")])
    first = httpx.get(pop.url + "/w/seg-1.m4s", trust_env=False)
    assert first.headers["x-cache"] == "Miss from pop-w"
    time.sleep(0.5)  # the disk tier's write lands behind the response
    for _ in range(40):  # a new connection each time: the kernel spreads them over the workers
        r = httpx.get(pop.url + "/w/seg-1.m4s", trust_env=False)
        assert r.content == b"w" * 20000 and r.headers["x-cache"].startswith("Hit from pop-w"), r.headers
    assert origin.fetches["/w/seg-1.m4s"] == 1
    served = logged(pop, lambda x: x["cs-uri-stem"] == "/w/seg-1.m4s", 41)
    hits_by = {x["worker"] for x in served if x["x-edge-result-type"] == "Hit"}
    assert hits_by == {0, 1}, served  # the worker that did not fetch it served it from the shared disk tier
    health = {httpx.get(pop.admin + "/healthz", trust_env=False).json()["worker"] for _ in range(40)}
    assert health == {0, 1}


def test_purges_are_refused_with_the_reason_and_a_killed_worker_comes_back(origin, pop):
    body = json.dumps({"distribution": "default", "paths": ["/*"], "tags": []}).encode()
    r = httpx.post(pop.admin + "/_hw/invalidate", content=body, trust_env=False,
                   headers={"content-type": "application/json"})
    assert r.status_code in (401, 403) and "--workers" in r.text, r.text
    pids = [c["pid"] for c in json.loads(pop.state.read_text())["children"]]
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)

    def restarted() -> bool:
        now = [c["pid"] for c in json.loads(pop.state.read_text())["children"]]
        return pids[0] not in now and all(c["state"] == "running" for c in json.loads(pop.state.read_text())["children"])
    deadline = time.monotonic() + 20
    while not restarted():
        assert time.monotonic() < deadline, pop.state.read_text()
        time.sleep(0.1)
    deadline = time.monotonic() + 20
    while {httpx.get(pop.admin + "/healthz", trust_env=False).json()["worker"] for _ in range(20)} != {0, 1}:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize("extra,flag", [
    (["--tls-cert", "CERT"], "--tls-key"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.pem"], "--tls-cert"),
    (["--tls-cert", "KEY", "--tls-key", "KEY"], "--tls-cert"),  # a key is no certificate
    (["--tls-listen", "127.0.0.1:6443"], "--tls-listen"),
    (["--workers", "2", "--secret-file", "KEY"], "--secret-file"),
    (["--workers", "0"], "--workers"),
])
def test_bad_flags_name_the_flag(tmp_path, extra, flag):
    cert, key = make_cert(tmp_path)
    extra = [str(cert) if x == "CERT" else str(key) if x == "KEY" else x for x in extra]
    bad = subprocess.run([sys.executable, "-m", "headwater", "edge", "serve", "--origin", "http://127.0.0.1:1",
                          "--cache-dir", str(tmp_path / "c"), *extra], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith(f"headwater: {flag}"), bad.stderr
