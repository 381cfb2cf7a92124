"""``headwater edge serve``: one POP in front of any origin, without cluster.toml (as ``varnishd
-b`` does), run as the user runs it: a subprocess of the CLI, with curl and httpx as clients and
a test origin that counts its fetches. Misses then hits over HTTP/1.1 and h2c, ranges from the
cache, the admin port, purges signed with ``--secret-file`` (and refused without a signature),
and a restart that keeps the disk tier.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

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

    def __init__(self, origin_port: int, folder: Path, port: int, admin: int, secret: Path,
                 extra: Sequence[str] = ()) -> None:
        self.port = port
        self.secret = secret
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin}"
        self.args = [sys.executable, "-m", "headwater", "edge", "serve",
                     "--origin", f"http://127.0.0.1:{origin_port}", "--listen", f"127.0.0.1:{port}",
                     "--admin", f"127.0.0.1:{admin}",
                     "--cache-dir", str(folder / "cache"), "--ram", "8MiB", "--disk", "64MiB",
                     "--id", "pop-x", "--secret-file", str(secret), *extra]
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


def _access_line(pop: Pop, port: int, timeout_s: float = 10.0) -> dict:
    """The access line of the request made from local ``port`` (written once it is over)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for x in pop.log.read_text().splitlines():
            if '"edge.access"' in x and (line := json.loads(x))["c-port"] == port:
                return line
        assert time.monotonic() < deadline, f"no access line from port {port}"
        time.sleep(0.05)


def _small_window_get(pop: Pop, path: str) -> tuple[socket.socket, int, list[bytes]]:
    """A GET of ``path`` on a connection with a 4 KiB receive buffer, its status line's first
    bytes read (a 200): the socket, its local port (the access line's c-port), what was read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(("127.0.0.1", pop.port))
    port = s.getsockname()[1]
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{pop.port}\r\nConnection: close\r\n\r\n".encode())
    got = [s.recv(12)]
    assert got[0].startswith(b"HTTP/1.1 200"), got
    return s, port, got


def _slow_get(pop: Pop, path: str, *, wait_s: float, read_all: bool,
              meanwhile: Callable[[], None] = lambda: None) -> tuple[int, bytes]:
    """GET ``path`` with a 4 KiB receive buffer, read the first bytes, wait ``wait_s`` (calling
    ``meanwhile``); then read the rest, or leave with a reset. Returns the local port (the access
    line's c-port) and what was read."""
    s, port, got = _small_window_get(pop, path)
    meanwhile()
    time.sleep(wait_s)
    if read_all:
        while chunk := s.recv(1 << 20):
            got.append(chunk)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    s.close()
    return port, b"".join(got)


def _body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return length, body


def test_the_access_line_times_the_whole_answer_and_logs_a_viewer_who_left(origin, pop):
    """time-taken runs until the answer's last byte was handed on (CloudFront's "output
    queue"): a viewer that waits before reading a 12 MiB answer (more than a socket's send
    buffer holds, 4 MiB here) makes it that long, not its time-to-first-byte. A viewer who
    leaves mid-body is logged too, as an Error whose detailed type is ClientCommError."""
    body = os.urandom(1 << 20) * 12
    origin.objects["/v/long.mp4"] = Obj(body, [("cache-control", "max-age=600")], etag='"long-1"')
    port, got = _slow_get(pop, "/v/long.mp4", wait_s=1.5, read_all=True)
    slow = _access_line(pop, port)
    assert _body(got) == (len(body), body)
    assert slow["x-edge-result-type"] == slow["x-edge-detailed-result-type"] == "Miss"
    assert slow["time-to-first-byte"] < 1.0 <= 1.4 <= slow["time-taken"] < 20, slow
    left = _access_line(pop, _slow_get(pop, "/v/long.mp4", wait_s=0.3, read_all=False)[0])
    assert (left["x-edge-result-type"], left["x-edge-detailed-result-type"]) == ("Error", "ClientCommError"), left
    assert left["sc-status"] == 200 and left["time-to-first-byte"] <= left["time-taken"]


def test_a_viewer_behind_a_fetch_too_large_to_store_gets_the_rest_by_range(origin, pop):
    """A 12 MiB response is above the disk tier's largest entry (64 MiB / 16), so no store keeps
    it and the fetch keeps only a 4 MiB window for its viewers: one that falls behind is sent
    the rest from a ranged fetch (If-Range: the ETag), whole and exact. If the object changed
    upstream meanwhile, the origin answers 200 to the If-Range and the viewer's response is cut
    short rather than spliced from two versions."""
    body = os.urandom(1 << 20) * 12
    origin.objects["/v/huge.mp4"] = Obj(body, [("cache-control", "max-age=600")], etag='"huge-1"')
    port, got = _slow_get(pop, "/v/huge.mp4", wait_s=1.0, read_all=True)
    assert _body(got) == (len(body), body)
    assert (origin.fetches["/v/huge.mp4"], origin.ranges["/v/huge.mp4"]) == (2, 1)
    assert _access_line(pop, port)["x-edge-result-type"] == "Miss"

    def replace() -> None:
        origin.objects["/v/huge.mp4"] = Obj(os.urandom(1 << 20) * 12, [("cache-control", "max-age=600")],
                                            etag='"huge-2"')
    _, got = _slow_get(pop, "/v/huge.mp4", wait_s=1.0, read_all=True, meanwhile=replace)
    length, cut = _body(got)
    assert length == len(body) and len(cut) < length and body.startswith(cut)
    assert origin.ranges["/v/huge.mp4"] == 1  # (asked, refused by If-Range: not a 206)


@contextlib.contextmanager
def _capped_pop(origin, tmp_path_factory, *flags: str):
    """A POP of its own, started with ``flags`` (its upstream slots)."""
    folder = tmp_path_factory.mktemp("edge-capped")
    secret = folder / "purge.secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    port, admin = free_ports(2, exclude=(origin.port,))
    p = Pop(origin.port, folder, port, admin, secret, flags)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def _trickle_get(pop: Pop, path: str, headed: Callable[[], None], resume: threading.Event,
                 finish: threading.Event | None = None, stop_at: int = 6 << 20) -> tuple[int, bytes]:
    """A slow viewer: GET ``path`` with a 4 KiB receive buffer, read the status line (then call
    ``headed``), then nothing until ``resume`` is set, while the shared fetch runs ahead of it;
    then read until the end or until the edge cuts the answer.

    With ``finish``, it stops again after ``stop_at`` bytes until ``finish`` is set. Stalled, it
    was handed no more than the edge's send buffer holds (tcp_wmem's largest, 4 MiB) before it
    fell behind a finished fetch's 4 MiB window of a 12 MiB body: bytes past that came from a rest
    fetch of its own, and with more than a send buffer of it still to send, the edge cannot have
    read that fetch to its end. Its upstream slots are then taken until ``finish``, however slowly
    the machine runs."""
    s, port, got = _small_window_get(pop, path)
    headed()
    assert resume.wait(30)
    size = 0
    try:
        while True:
            if finish is not None and size >= stop_at:
                assert finish.wait(30)
                finish = None
            chunk = s.recv(1 << 20 if finish is None else min(1 << 20, stop_at - size))
            if not chunk:
                break
            got.append(chunk)
            size += len(chunk)
    except ConnectionResetError:
        pass  # cut short by the edge
    s.close()
    return port, b"".join(got)


def _health(pop: Pop) -> dict:
    return httpx.get(pop.admin + "/healthz", trust_env=False).json()


def _slots(pop: Pop, kind: str) -> dict:
    return _health(pop)["upstream_slots"][kind]


def _until(condition: Callable[[], bool], what: str | Callable[[], str], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what if isinstance(what, str) else what()
        time.sleep(0.02)


def _metric(pop: Pop, name: str, **labels: str) -> float:
    text = httpx.get(pop.admin + "/metrics", trust_env=False).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _behind_one_fetch(pop: Pop, origin: ControlledOrigin, path: str, hold: threading.Event,
                      viewers: Sequence[Future], headed: threading.Semaphore) -> None:
    """Until ``viewers`` all have the head of one shared fetch of ``path`` (the origin holds its
    body meanwhile: none of them can come after the fetch and start one of its own), and that
    fetch is over: each viewer is then behind its window, whatever the machine's speed."""
    for _ in viewers:
        assert headed.acquire(timeout=30), [f.exception() for f in viewers if f.done()]
    assert origin.fetches[path] == 1  # (collapsed onto the one fetch)
    hold.set()

    def over() -> bool:
        health = _health(pop)
        return health["in_flight"] == 0 and health["upstream_slots"]["fetch"]["in_use"] == 0
    _until(over, "the shared fetch never ended")


def test_slow_viewers_cost_the_upstream_no_more_than_max_rest_fetches(origin, tmp_path_factory):
    """Six slow viewers of a 12 MiB object no store keeps each fall behind the shared fetch's
    4 MiB window and need the rest by range: with --max-rest-fetches 2 two rest fetches run and
    four wait for them, the origin never sends more than two answers for it at once (uncapped:
    six), and with a wait long enough every viewer gets a slot in turn and its exact bytes. With
    one slot and a short wait, the viewers past it are cut short (logged as CloudFront's
    SlowReaderOriginError, counted as refusals), and a plain miss with no slot is a 503 with
    Retry-After that never went upstream.

    The test waits on conditions, not on time: the origin holds the body until every viewer has
    joined the one fetch, the viewers resume once it is over (so all are behind its window), and
    a viewer holding a slot stops reading until the test has seen what the others get."""
    body = os.urandom(1 << 20) * 12
    hold = threading.Event()
    origin.objects["/v/crowd.mp4"] = Obj(body, [("cache-control", "max-age=600")], etag='"crowd-1"', counted=True,
                                         hold=hold)
    with _capped_pop(origin, tmp_path_factory, "--max-rest-fetches", "2", "--upstream-wait", "60") as pop:
        headed, resume, finish = threading.Semaphore(0), threading.Event(), threading.Event()
        with ThreadPoolExecutor(6) as pool:
            viewers = [pool.submit(_trickle_get, pop, "/v/crowd.mp4", headed.release, resume, finish)
                       for _ in range(6)]
            _behind_one_fetch(pop, origin, "/v/crowd.mp4", hold, viewers, headed)
            resume.set()
            # Two rest fetches, each held open by its viewer (stopped reading), and four queued.
            def two_and_four() -> bool:
                rest = _slots(pop, "rest")
                return (rest["in_use"], rest["waiting"], origin.ranges["/v/crowd.mp4"]) == (2, 4, 2)
            _until(two_and_four, lambda: f"never two rest fetches upstream and four waiting for a slot: "
                                         f"{_slots(pop, 'rest')}, {origin.ranges['/v/crowd.mp4']} ranges")
            finish.set()
            answers = [f.result() for f in viewers]
        for port, got in answers:
            assert _body(got) == (len(body), body)
            assert _access_line(pop, port)["x-edge-result-type"] == "Miss"
        # (fetches counts every request: the one shared fetch, and the six by range)
        assert (origin.fetches["/v/crowd.mp4"], origin.ranges["/v/crowd.mp4"]) == (7, 6)
        assert origin.peak["/v/crowd.mp4"] <= 2 and _slots(pop, "rest")["peak_in_use"] == 2
        assert _metric(pop, "hw_edge_upstream_slot_waits_total", kind="rest") == 4
        assert _metric(pop, "hw_edge_upstream_slot_refusals_total") == 0

    hold = threading.Event()
    origin.objects["/v/crowd2.mp4"] = Obj(body, [("cache-control", "max-age=600")], etag='"crowd-2"', counted=True,
                                          hold=hold)
    origin.objects["/v/other.mp4"] = Obj(b"x" * 1000, [("cache-control", "max-age=600")])
    with _capped_pop(origin, tmp_path_factory, "--max-upstream-fetches", "1", "--upstream-wait", "0.3") as pop:
        headed, go_first, finish_first, go_late = (threading.Semaphore(0), threading.Event(), threading.Event(),
                                                   threading.Event())
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(_trickle_get, pop, "/v/crowd2.mp4", headed.release, go_first, finish_first)
            late = [pool.submit(_trickle_get, pop, "/v/crowd2.mp4", headed.release, go_late) for _ in range(2)]
            _behind_one_fetch(pop, origin, "/v/crowd2.mp4", hold, [first, *late], headed)
            go_first.set()
            # The first viewer's rest fetch has the one slot (of each kind), and keeps it: the
            # viewer stopped reading, its answer is not over.
            _until(lambda: _slots(pop, "rest")["in_use"] == _slots(pop, "fetch")["in_use"] == 1
                   and origin.ranges["/v/crowd2.mp4"] == 1, "the first viewer's rest fetch never began")
            go_late.set()  # behind the window too, and no slot for them within 0.3 s
            cut = [f.result() for f in late]
            # The one slot is still the first viewer's: a miss is refused without going upstream.
            assert _slots(pop, "fetch")["in_use"] == 1 and not first.done()
            busy = curl("-D", "-", "-o", "/dev/null", pop.url + "/v/other.mp4").stdout.decode().lower()
            finish_first.set()
            port, got = first.result()
        assert " 503" in busy.splitlines()[0] and "retry-after: 1" in busy and "x-cache: error from pop-x" in busy
        assert origin.fetches["/v/other.mp4"] == 0
        assert _body(got) == (len(body), body)
        for cut_port, cut_got in cut:
            length, part = _body(cut_got)
            assert length == len(body) and len(part) < length and body.startswith(part)
            line = _access_line(pop, cut_port)
            assert (line["x-edge-result-type"], line["x-edge-detailed-result-type"]) == \
                ("Error", "SlowReaderOriginError"), line
        log = pop.log.read_text()  # a bound of ours at work, not a crash: a line each, no traceback
        assert log.count("cut short: all 1 rest slots upstream in use") == 2 and "Traceback" not in log
        assert origin.ranges["/v/crowd2.mp4"] == 1 and origin.peak["/v/crowd2.mp4"] == 1
        assert _metric(pop, "hw_edge_upstream_slot_refusals_total", kind="rest", reason="timeout") == 2
        assert _metric(pop, "hw_edge_upstream_slot_refusals_total", kind="fetch") == 1
        _until(lambda: _slots(pop, "fetch")["in_use"] == 0, "the first viewer's slot never came back")
        assert httpx.get(pop.url + "/v/other.mp4", trust_env=False).status_code == 200  # the slot came back


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
