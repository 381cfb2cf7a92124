"""The edge over TLS with the cluster's local CA: a POP with ``tls_cert = tls_key = "auto"`` (a real
daemon, in-process through the role's entry point) in front of the controlled origin of
test_edge.py; curl and httpx trusting the CA's certificate and nothing else.

Covered: the POP makes the CA and its leaf when it starts (no certificate files given), HTTP/2
chosen by ALPN (curl --http2, httpx http2=True, a bare TLS socket) and HTTP/1.1 for clients that
offer only it, X-Cache Miss then Hit over TLS, the distribution's hostname and a sibling through
the wildcard verified by name, clients that do not trust the CA refused, and an https origin
holding the CA's certificate verified by the POP's own client. Then ``headwater up``
as an operator runs it: it makes and announces the CA before the POP starts, ``headwater ca
path`` finds it, and curl reaches the POP's HTTPS port with it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.from_thread
import httpx
import pytest

from headwater import cli
from headwater.config import load
from headwater.edge.daemon import run_edge
from headwater.http import serve, server_ssl_context
from headwater.rpc.auth import ensure_cluster_secret
from tests.cluster import free_ports
from tests.functional.test_edge import ControlledOrigin, Obj

CONFIG = """
[cluster]
name = "edge-tls-test"
data_dir = "var"

[[distributions]]
name = "video"
hostnames = ["video.cdn.headwater.test"]
origin = "http://127.0.0.1:{origin}"

# The same origin over HTTPS with the local CA's certificate (as the gateway with "auto" would be).
[[distributions]]
name = "secure"
hostnames = ["secure.cdn.headwater.test"]
origin = "https://localhost:{p[4]}"

[[edge]]
id = "pop-1"
tier = "pop"
port = {p[0]}
admin_port = {p[1]}
tls_port = {p[2]}
tls_cert = "auto"
tls_key = "auto"
lat = 51.5
lon = -0.12
ram_size = "16MiB"
disk_size = "16MiB"
"""


class Env:
    def __init__(self, origin: ControlledOrigin, base: str, port: int, ca: Path) -> None:
        self.origin = origin
        self.base = base
        self.port = port
        self.ca = ca


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder: Path = tmp_path_factory.mktemp("edge-tls")
    ports = free_ports(5)
    path = folder / "cluster.toml"
    path.write_text(CONFIG.format(origin=ports[3], p=ports))
    cfg = load(str(path))
    ensure_cluster_secret(cfg, env={})  # what `headwater up` does first; the CA key is sealed under it
    assert not (folder / "var" / "ca").exists()
    origin = ControlledOrigin()
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        futures = [portal.start_task(origin.run, ports[3])[0],
                   portal.start_task(functools.partial(run_edge, cfg, cfg.edge[0]))[0]]
        ca = folder / "var" / "ca"
        tls = server_ssl_context(ca / "tls.pem", ca / "tls-key.pem")  # the POP has made them by now
        futures.append(portal.start_task(functools.partial(serve, origin.app, host="127.0.0.1", port=ports[4],
                                                           ssl_context=tls))[0])
        yield Env(origin, f"https://127.0.0.1:{ports[2]}", ports[2], ca / "ca.pem")
        for f in futures:
            f.cancel()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "5", *args], capture_output=True, text=True, timeout=10)


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def test_the_pop_made_the_ca_and_curl_gets_http2_miss_then_hit(env):
    assert env.ca.exists() and (env.ca.parent / "tls.pem").exists()
    assert oct((env.ca.parent / "tls-key.pem").stat().st_mode & 0o777) == "0o600"
    env.origin.objects["/t/1/seg-1.m4s"] = Obj(b"v" * 3000, [("cache-control", "max-age=60")])
    seen = []
    for _ in range(2):
        r = curl("--http2", "--cacert", str(env.ca), "-D", "-", "-o", "/dev/null",
                 "-w", "version=%{http_version}\n", env.base + "/t/1/seg-1.m4s")
        assert r.returncode == 0, r.stderr
        out = r.stdout.lower()
        assert out.startswith("http/2 200") and "version=2" in out
        seen.append(next(line for line in out.splitlines() if line.startswith("x-cache:")))
    assert seen == ["x-cache: miss from pop-1", "x-cache: hit from pop-1"]
    assert env.origin.fetches["/t/1/seg-1.m4s"] == 1
    # A client that offers only HTTP/1.1 gets it on the same port.
    r = curl("--http1.1", "--cacert", str(env.ca), "-D", "-", "-o", "/dev/null", env.base + "/t/1/seg-1.m4s")
    assert r.stdout.lower().startswith("http/1.1 200") and "x-cache: hit from pop-1" in r.stdout.lower()


def test_an_https_origin_with_the_local_ca_certificate_is_verified_and_cached(env):
    env.origin.objects["/t/4/secure.m4s"] = Obj(b"s" * 500, [("cache-control", "max-age=60")])
    with httpx.Client(http2=True, verify=trusting(env.ca), trust_env=False, timeout=10) as c:
        url = env.base + "/t/4/secure.m4s"
        first = c.get(url, headers={"host": "secure.cdn.headwater.test"})
        second = c.get(url, headers={"host": "secure.cdn.headwater.test"})
    assert first.status_code == 200 and first.content == b"s" * 500, first.text
    assert first.headers["x-cache"] == "Miss from pop-1" and second.headers["x-cache"] == "Hit from pop-1"
    assert env.origin.fetches["/t/4/secure.m4s"] == 1


def test_the_distribution_hostname_and_its_wildcard_verify_by_name(env):
    env.origin.objects["/t/2/manifest.mpd"] = Obj(b"<MPD/>", [("cache-control", "max-age=60")])
    for host in ("video.cdn.headwater.test", "img.cdn.headwater.test", "localhost"):
        r = curl("--http2", "--cacert", str(env.ca), "--resolve", f"{host}:{env.port}:127.0.0.1",
                 "-o", "/dev/null", "-w", "%{http_code} %{http_version}", f"https://{host}:{env.port}/t/2/manifest.mpd")
        assert (r.returncode, r.stdout) == (0, "200 2"), (host, r.stderr)
    # A name the certificate does not carry fails verification (curl's exit 60).
    r = curl("--cacert", str(env.ca), "--resolve", f"www.example.org:{env.port}:127.0.0.1",
             f"https://www.example.org:{env.port}/t/2/manifest.mpd")
    assert r.returncode == 60 and "certificate" in r.stderr.lower()


def test_httpx_over_http2_trusting_the_ca(env):
    env.origin.objects["/t/3/seg.m4s"] = Obj(bytes(range(256)) * 64, [("cache-control", "max-age=60")])
    with httpx.Client(http1=False, http2=True, verify=trusting(env.ca), trust_env=False, timeout=10) as c:
        first = c.get(env.base + "/t/3/seg.m4s")
        second = c.get(env.base + "/t/3/seg.m4s")
    assert first.http_version == second.http_version == "HTTP/2"
    assert first.headers["x-cache"] == "Miss from pop-1" and second.headers["x-cache"] == "Hit from pop-1"
    assert second.content == bytes(range(256)) * 64


def test_ssl_cert_file_alone_makes_httpx_trust_the_ca(env, monkeypatch):
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(env.ca))  # the README's way for OpenSSL-based clients
    with httpx.Client(http2=True, timeout=5) as c:
        r = c.get(env.base + "/t/3/seg.m4s")
    assert r.status_code == 200 and r.http_version == "HTTP/2"


def test_alpn_negotiates_h2_first_and_http11_when_only_it_is_offered(env):
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        ctx = trusting(env.ca)
        ctx.set_alpn_protocols(offered)
        with socket.create_connection(("127.0.0.1", env.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="video.cdn.headwater.test") as tls:
            assert tls.selected_alpn_protocol() == chosen
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_clients_that_do_not_trust_the_ca_are_refused(env):
    r = curl("--http2", env.base + "/t/1/seg-1.m4s")  # the system's trust store only
    assert r.returncode == 60, (r.returncode, r.stderr)
    with httpx.Client(http2=True, trust_env=False, timeout=5) as c, pytest.raises(httpx.ConnectError,
                                                                                  match="CERTIFICATE_VERIFY_FAILED"):
        c.get(env.base + "/t/1/seg-1.m4s")


# --- headwater up, as an operator runs it -------------------------------------------------------------

def test_headwater_up_announces_the_ca_and_serves_https_with_it(tmp_path: Path, capsys):
    ports = free_ports(5)
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG.format(origin=ports[3], p=ports))
    hw = [sys.executable, "-m", "headwater"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    proc = subprocess.Popen([*hw, "up", "-c", str(path), "--stop-grace", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "is up" in line:
                break
        said = "".join(lines)
        assert "created a local CA" in said and "is up" in said, said
        assert cli.main(["ca", "path", "-c", str(path)]) == cli.EXIT_OK
        ca = capsys.readouterr().out.strip()
        assert ca == str(tmp_path / "var" / "ca" / "ca.pem")
        # No origin listens: the POP answers 502 over HTTP/2, and TLS with the CA verified.
        r = curl("--http2", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                 f"https://127.0.0.1:{ports[2]}/t/none")
        assert (r.returncode, r.stdout) == (0, "502 2"), r.stderr
        health = json.loads(curl(f"http://127.0.0.1:{ports[1]}/healthz").stdout)
        assert health["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
