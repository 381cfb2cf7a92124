"""What this machine can do at most, measured in the same run as the store benchmarks.

Each function times one resource the object store leans on — erasure coding, hashing, fsync'd
writes to the data disk, loopback TCP — so a store figure can be read against the ceiling it can
never pass. CPU-bound figures are single-threaded (one core), which is how one gateway worker
runs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .peers import PeerError, ProcessGroup, free_ports, wait_port

__all__ = ["Ceiling", "zfec_codec", "parity_encode", "md5", "sha256", "fsync_writes", "fsync_small_files", "loopback_tcp",
           "parse_iperf3", "s5cmd_get"]

KiB = 1024
MiB = 1024 * KiB
GB = 1e9
MB = 1e6


@dataclass(frozen=True, slots=True, kw_only=True)
class Ceiling:
    """One measured ceiling: ``value`` in ``unit``, and how it was measured."""

    name: str
    value: float
    unit: str
    how: str


def _timed_loop(step, min_seconds: float) -> tuple[int, float]:
    """Run ``step()`` until ``min_seconds`` have passed; return (iterations, seconds)."""
    step()  # warm up (tables, page faults)
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return n, elapsed


def zfec_codec(*, k: int = 4, m: int = 2, stripe_bytes: int = 1 * MiB,
               seconds: float = 1.0) -> list[Ceiling]:
    """zfec encode (k data -> m parity) and decode (rebuild with m data fragments lost), GB/s of
    user data, one core."""
    import zfec

    frag = -(-stripe_bytes // k)
    data = os.urandom(frag * k)
    blocks = tuple(data[i * frag:(i + 1) * frag] for i in range(k))
    enc = zfec.Encoder(k, k + m)
    parity_ids = tuple(range(k, k + m))
    parity = enc.encode(blocks, parity_ids)
    n, s = _timed_loop(lambda: enc.encode(blocks, parity_ids), seconds)
    encode = n * frag * k / s / GB

    # Worst case: the first m data fragments are gone, so m of the k outputs need the matrix.
    have = blocks[m:] + tuple(parity)
    have_ids = tuple(range(m, k)) + parity_ids
    dec = zfec.Decoder(k, k + m)
    out = dec.decode(have, have_ids)
    if b"".join(bytes(b) for b in out) != data:
        raise AssertionError("zfec decode did not give the stripe back")
    n, s = _timed_loop(lambda: dec.decode(have, have_ids), seconds)
    decode = n * frag * k / s / GB
    what = f"zfec {k}+{m}, {stripe_bytes // KiB} KiB stripes, 1 core"
    return [Ceiling(name="zfec encode", value=encode, unit="GB/s", how=what),
            Ceiling(name="zfec decode", value=decode, unit="GB/s", how=f"{what}, {m} data fragments lost")]


def parity_encode(*, k: int = 4, m: int = 2, stripe_bytes: int = 1 * MiB, seconds: float = 1.0) -> Ceiling:
    """What a PUT's erasure code costs as the store computes it (``stripe.encode``: ISA-L with
    zfec's coefficients where libisal2 is installed, zfec otherwise), GB/s of user data, 1 core."""
    from headwater.objstore import parity, stripe
    from headwater.objstore.config import ErasureScheme

    scheme = ErasureScheme(k=k, m=m, stripe_bytes=stripe_bytes)
    data = os.urandom(stripe_bytes)
    n, s = _timed_loop(lambda: stripe.encode(scheme, data), seconds)
    by = "ISA-L, zfec's coefficients" if parity.isal_available() else "zfec (no libisal2)"
    return Ceiling(name="parity encode", value=n * stripe_bytes / s / GB, unit="GB/s",
                   how=f"stripe.encode {k}+{m}, {stripe_bytes // KiB} KiB stripes, {by}, 1 core")


def sha256(*, seconds: float = 1.0, chunk_bytes: int = 1 * MiB) -> Ceiling:
    """hashlib SHA-256 (what a signed payload's x-amz-content-sha256 costs), GB/s, one core."""
    buf = os.urandom(chunk_bytes)
    h = hashlib.sha256()
    n, s = _timed_loop(lambda: h.update(buf), seconds)
    return Ceiling(name="SHA-256", value=n * chunk_bytes / s / GB, unit="GB/s",
                   how=f"hashlib.sha256, {chunk_bytes // KiB} KiB updates, 1 core")


def md5(*, seconds: float = 1.0, chunk_bytes: int = 1 * MiB) -> Ceiling:
    """hashlib MD5 (what an S3 ETag costs), GB/s, one core."""
    buf = os.urandom(chunk_bytes)
    h = hashlib.md5()
    n, s = _timed_loop(lambda: h.update(buf), seconds)
    return Ceiling(name="MD5", value=n * chunk_bytes / s / GB, unit="GB/s",
                   how=f"hashlib.md5, {chunk_bytes // KiB} KiB updates, 1 core")


def _write_fsynced(directory: str, buf: bytes, count: int) -> None:
    """Create ``count`` files of ``buf`` one after another, each fsynced before the next."""
    for i in range(count):
        fd = os.open(os.path.join(directory, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_writes(directory: Path, *, file_bytes: int = 1 * MiB, total_bytes: int = 256 * MiB) -> Ceiling:
    """Write ``file_bytes`` files and fsync each (and the directory at the end), MB/s."""
    buf = os.urandom(file_bytes)
    count = max(1, total_bytes // file_bytes)
    with tempfile.TemporaryDirectory(prefix="hw-fsync-", dir=directory) as d:
        t0 = time.perf_counter()
        _write_fsynced(d, buf, count)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        s = time.perf_counter() - t0
    return Ceiling(name="fsync'd writes", value=count * file_bytes / s / MB, unit="MB/s",
                   how=f"{count} x {file_bytes // KiB} KiB files written+fsynced in {directory}")


def fsync_small_files(directory: Path, *, file_bytes: int = 4 * KiB, count: int = 500) -> Ceiling:
    """Create, write and fsync small files one after another, files/s (bounds small PUTs/s per
    writer that waits for its fsync)."""
    buf = os.urandom(file_bytes)
    with tempfile.TemporaryDirectory(prefix="hw-fsync-", dir=directory) as d:
        t0 = time.perf_counter()
        _write_fsynced(d, buf, count)
        s = time.perf_counter() - t0
    return Ceiling(name="fsync'd small files", value=count / s, unit="files/s",
                   how=f"{count} x {file_bytes // KiB} KiB files written+fsynced one at a time in {directory}")


def parse_iperf3(text: str) -> float:
    """Receiver-side bits/s from ``iperf3 -J`` output."""
    doc = json.loads(text)
    if "error" in doc:
        raise ValueError(doc["error"])
    return float(doc["end"]["sum_received"]["bits_per_second"])


def loopback_tcp(*, seconds: float = 3.0, port: int = 15201) -> Ceiling:
    """One TCP stream over 127.0.0.1, GB/s: iperf3 when installed, else a Python socket loop."""
    iperf = shutil.which("iperf3")
    if iperf:
        server = subprocess.Popen([iperf, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            # No probe connection: it would use up the server's one (-1) test. Retry instead.
            for _ in range(20):
                time.sleep(0.2)
                r = subprocess.run([iperf, "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                                   capture_output=True, text=True, timeout=seconds + 30)
                if r.returncode == 0 or server.poll() is not None:
                    break
            bps = parse_iperf3(r.stdout)
            return Ceiling(name="loopback TCP", value=bps / 8 / GB, unit="GB/s",
                           how=f"iperf3, 1 stream, {seconds:g} s")
        except (ValueError, KeyError, subprocess.SubprocessError, OSError):
            pass  # fall back to the Python loop below
        finally:
            if server.poll() is None:
                server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return _python_tcp(seconds)


def _python_tcp(seconds: float) -> Ceiling:
    chunk = 1 * MiB
    buf = os.urandom(chunk)
    listener = socket.create_server(("127.0.0.1", 0))
    received = [0]

    def sink() -> None:
        conn, _ = listener.accept()
        with conn:
            rb = bytearray(chunk)
            view = memoryview(rb)
            while True:
                n = conn.recv_into(view)
                if not n:
                    return
                received[0] += n

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    client = socket.create_connection(listener.getsockname())
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        client.sendall(buf)
    client.shutdown(socket.SHUT_WR)
    t.join()
    s = time.perf_counter() - t0
    client.close()
    listener.close()
    return Ceiling(name="loopback TCP", value=received[0] / s / GB, unit="GB/s",
                   how=f"Python socket loop (no iperf3), 1 stream, {seconds:g} s")


class _StubS3(http.server.BaseHTTPRequestHandler):
    """Every HEAD and GET answered with one file (a Range honoured), its body by sendfile: an S3
    endpoint that costs next to nothing, so what a client gets from it is the client's ceiling."""

    protocol_version = "HTTP/1.1"
    path_of_body = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass

    def _head(self, lo: int, hi: int, size: int, partial: bool) -> None:
        self.send_response(206 if partial else 200)
        self.send_header("Content-Length", str(hi - lo + 1))
        self.send_header("ETag", '"00000000000000000000000000000000"')
        self.send_header("Last-Modified", "Thu, 03 Dec 2026 00:00:00 GMT")
        self.send_header("Content-Type", "application/octet-stream")
        if partial:
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{size}")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        size = os.path.getsize(self.path_of_body)
        self._head(0, size - 1, size, False)

    def do_GET(self) -> None:  # noqa: N802
        size = os.path.getsize(self.path_of_body)
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        lo, hi = (int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)) if m else (0, size - 1)
        self._head(lo, hi, size, m is not None)
        self.wfile.flush()
        with open(self.path_of_body, "rb") as f:
            offset, left = lo, hi - lo + 1
            while left > 0:
                sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, left)
                if not sent:
                    return
                offset += sent
                left -= sent


def nginx_temp_paths(root: Path) -> str:
    """nginx's temporary folders under ``root`` (its defaults are under /var, which a peer started
    by the bench must not write): lines for an ``http`` block."""
    return "".join(f"    {kind}_temp_path {root}/tmp-{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def _stub_nginx_conf(root: Path, port: int) -> str:
    """nginx answering every HEAD and GET (a Range honoured) with ``root/body`` by sendfile, one
    worker, no logs: the cheapest S3 endpoint a GET can have here (it checks no signature)."""
    return f"""\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    default_type application/octet-stream;
{nginx_temp_paths(root)}    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ try_files /body =404; }}
    }}
}}
"""


@contextlib.contextmanager
def _stub_endpoint(body: Path, server: str) -> Iterator[tuple[int, str]]:
    """A stub S3 endpoint serving ``body`` for every key: (port, what it is). ``server`` "nginx"
    (its own process, out of the way of the bench's), "thread" (a thread of the bench serving by
    sendfile) or "auto" (nginx where there is one)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if server == "nginx" and nginx is None:
        raise RuntimeError("nginx not found")
    if nginx is not None and server in ("nginx", "auto"):
        root = body.parent
        os.chmod(root, 0o755)  # nginx's worker runs as nobody when we are root
        os.chmod(body, 0o644)
        port = free_ports(1)[0]  # (below the ephemeral range: no outgoing connection takes it first)
        (root / "nginx.conf").write_text(_stub_nginx_conf(root, port))
        procs = ProcessGroup(root)
        try:
            try:
                procs.start("nginx", [nginx, "-c", str(root / "nginx.conf"), "-p", str(root)])
                wait_port(port, procs, timeout_s=10)
            except PeerError as e:
                raise RuntimeError(f"nginx for the s5cmd ceiling did not start: {e}") from None
            yield port, "nginx (sendfile, 1 worker)"
        finally:
            procs.stop()
        return
    handler = type("_Stub", (_StubS3,), {"path_of_body": str(body)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], "a sendfile thread of the bench"
    finally:
        server.shutdown()
        server.server_close()


def s5cmd_get(binary: str, scratch: Path, *, object_bytes: int = 64 * MiB, count: int = 8,
              repeats: int = 3, server: str = "auto") -> Ceiling:
    """One s5cmd client GETting ``count`` objects of ``object_bytes`` (as the bench's 1-client GET
    row does: the same count and size, into files in RAM) from a stub endpoint that sends one
    file by sendfile, ``repeats`` times: the best MB/s (a ceiling is what the client reached at
    most), the median and the client's CPU per GB in ``how``. What the client alone allows one
    stream on this machine. ``server``: see :func:`_stub_endpoint`.

    Until 2026-12-03 the stub was a thread of the bench process and one run of 4 objects: at
    that size a run lasts under half a second, so one scheduling hiccup of the shared machine
    (or of the bench's own process) set the figure, and it printed under the store's own row."""
    ram = "/dev/shm" if os.path.isdir("/dev/shm") else str(scratch)
    work = Path(tempfile.mkdtemp(prefix="s5cmd-ceiling-", dir=ram))
    body = work / "body"
    with open(body, "wb") as f:
        chunk = os.urandom(4 * MiB)
        for _ in range(object_bytes // len(chunk)):
            f.write(chunk)
        f.write(chunk[:object_bytes % len(chunk)])
    sink = work / "out"
    part_mib = object_bytes // MiB + 1
    cmds = work / "cmds.txt"
    cmds.write_text("".join(f"cp --concurrency 1 --part-size {max(5, part_mib)} s3://stub/k{i} {sink}/{i}\n"
                            for i in range(count)))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "AWS_ACCESS_KEY_ID": "stub",
           "AWS_SECRET_ACCESS_KEY": "stub", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    runs: list[tuple[float, float]] = []  # (MB/s, client s/GB)
    gb = count * object_bytes / GB
    try:
        with _stub_endpoint(body, server) as (port, what):
            for _ in range(repeats):
                sink.mkdir(exist_ok=True)
                t0 = time.perf_counter()
                proc = subprocess.Popen([binary, "--endpoint-url", f"http://127.0.0.1:{port}",
                                         "--retry-count", "0", "--numworkers", "1", "run", str(cmds)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, status, usage = os.wait4(proc.pid, 0)
                seconds = time.perf_counter() - t0
                got = [f.stat().st_size for f in sink.iterdir()]
                shutil.rmtree(sink, ignore_errors=True)  # the next run writes fresh files, as a batch does
                if os.waitstatus_to_exitcode(status) != 0:
                    raise RuntimeError(f"s5cmd against the stub endpoint exited with status {status}")
                if got != [object_bytes] * count:
                    raise RuntimeError(f"s5cmd got {len(got)} files of {sorted(set(got))} bytes from the stub, "
                                       f"not {count} of {object_bytes}")
                runs.append((gb * GB / MB / seconds, (usage.ru_utime + usage.ru_stime) / gb))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = max(runs)
    rates = sorted(r for r, _ in runs)
    return Ceiling(name="s5cmd GET alone", value=best[0], unit="MB/s",
                   how=f"1 client, {count} x {object_bytes // MiB} MiB from a stub endpoint ({what}) into "
                       f"RAM, best of {len(runs)} (median {rates[len(rates) // 2]:.0f} MB/s); client "
                       f"{best[1]:.2f} s/GB")
