"""What the GeoDNS functional tests share: free ports, stand-in POPs' /healthz, ``headwater node``
workers as real processes, a UDP proxy between a client and the daemon (it rewrites queries or
tampers with answers), and BIND's validator (``delv``) with our DS as its only trust anchor."""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx

from tests.cluster import free_ports

HEADWATER = str(Path(sys.executable).with_name("headwater"))


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free for both UDP and TCP, never one this process was handed before.

    Picked below the kernel's ephemeral range (as ``tests.cluster.free_ports`` does) and
    remembered: two calls in a row could otherwise get the same just-released port (a CI run
    gave the DNS port and the admin port one number, and the daemon rightly refused).
    """
    for _ in range(200):
        port = free_ports(1)[0]
        if port in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> float:
    """Seconds until ``condition()`` is true, polled; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(interval)
    return time.monotonic() - start


@contextlib.contextmanager
def headwater_up(path: Path, log: Path, *, timeout: float, stop: signal.Signals = signal.SIGINT,
                 stop_wait: float = 30.0) -> Iterator[subprocess.Popen]:
    """``headwater up -c path``, its output in ``log``, once it says it is up (failing at once
    if it exits first); stopped with ``stop`` on the way out, killed if not gone in ``stop_wait``."""
    with log.open("w+") as out:
        up = subprocess.Popen([HEADWATER, "up", "-c", str(path)], stdout=out, stderr=subprocess.STDOUT)
        try:
            def ready() -> bool:
                assert up.poll() is None, log.read_text()
                return "is up" in log.read_text()
            wait_for(ready, timeout, interval=0.1)
            yield up
        finally:
            up.send_signal(stop)
            try:
                up.wait(stop_wait)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()


def write_secret(data_dir: Path) -> Path:
    """The cluster secret ``headwater up`` would make, in ``data_dir/cluster.secret``."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / "cluster.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


class StandinHealthz:
    """A POP's /healthz on 127.0.0.1 whose HTTP status the test sets (stdlib server, a thread)."""

    def __init__(self) -> None:
        self.status = 200
        self.calls = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 — the stdlib's name
                owner.calls += 1
                body = b'{"status":"ok"}' if owner.status == 200 else b'{"status":"failing"}'
                self.send_response(owner.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class NodeWorkers:
    """``headwater node ID --worker i -c PATH`` for each worker, as separate processes (what
    ``headwater up`` starts for a role with workers)."""

    def __init__(self, path: Path, node_id: str, workers: int, admin_port: int) -> None:
        self.path = path
        self.admin_port = admin_port
        self.logs = [path.parent / f"{node_id}-{i}.log" for i in range(workers)]
        self.procs = [subprocess.Popen([HEADWATER, "node", node_id, "-c", str(path), "--worker", str(i)],
                                       stdout=log.open("wb"), stderr=subprocess.STDOUT)
                      for i, log in enumerate(self.logs)]

    def wait_ready(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            for proc, log in zip(self.procs, self.logs):
                assert proc.poll() is None, f"a worker exited: {log.read_text()}"
            try:
                return httpx.get(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, timeout)
        # every worker logs when it listens; the admin port answers as soon as the first does
        wait_for(lambda: all(b"dns.listening" in log.read_bytes() for log in self.logs), timeout)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class UdpProxy:
    """Forwards each UDP datagram to ``upstream`` and the answer back, through ``on_query`` and
    ``on_answer`` (bytes -> bytes), one exchange at a time (enough for dig and delv)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.on_query: Callable[[bytes], bytes] = lambda b: b
        self.on_answer: Callable[[bytes], bytes] = lambda b: b
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(2)
            while not self._stop.is_set():
                try:
                    data, client = self.sock.recvfrom(65535)
                except socket.timeout:
                    continue
                up.sendto(self.on_query(data), self.upstream)
                try:
                    answer = up.recv(65535)
                except socket.timeout:
                    continue
                self.sock.sendto(self.on_answer(answer), client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def delv_validate(host: str, port: int, qname: str, qtype: str, ds: tuple[int, int, int, str], zone: str,
                  workdir: Path, *, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Ask a GeoDNS (or a proxy before it) for ``qname``/``qtype`` with ``delv`` (bind9-dnsutils),
    validating with ``ds`` (key tag, algorithm, digest type, digest hex) for ``zone`` as the only
    trust anchor. ``delv`` fetches the DNSKEY RRset itself and prints "; fully validated" for a
    good answer, "; negative response, fully validated" for a proven NXDOMAIN/NODATA, and
    "resolution failed: ..." for a bogus one (its exit status is 0 either way)."""
    anchors = workdir / "delv-anchors.conf"
    tag, algorithm, digest_type, digest = ds
    anchors.write_text(f'trust-anchors {{\n  {zone} static-ds {tag} {algorithm} {digest_type} "{digest}";\n}};\n')
    return subprocess.run(["delv", f"@{host}", "-p", str(port), "-a", str(anchors), f"+root={zone}",
                           qname, qtype], capture_output=True, text=True,
                          timeout=timeout_s)
