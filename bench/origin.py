"""`python -m headwater.bench origin`: upload throughput through the origin's tus endpoint beside a
plain S3 multipart upload, and the transcode pipeline's overhead over ffmpeg alone.

One run, in this order (never two measured things at once):

1. **The cluster** — the object store's sections of ``cluster.toml`` (``[cluster]``,
   ``[objstore]``, ``[[users]]``, ``[gateway]``, ``[[metadata]]``, ``[[storage]]``: no repair,
   DNS, edges) started by :func:`peers.headwater_cluster` (``headwater up`` on a copy with its
   ports moved by ``--port-offset`` and its data under the work dir); then the origin's own
   sections of the same file (``[licence]``, ``[origin]``, ``[transcoder]``, every port a free
   one, ``part_size`` = ``--part-size``, ``log_level`` warning) appended to a second copy, and
   ``headwater node origin -c`` that copy: TLS "auto" from the local CA, the built-in issuer,
   the default SQLite catalogue.
2. **Ceilings** — loopback TCP (iperf3, one stream) and fsync'd 1 MiB writes in the work dir's
   filesystem (the origin fsyncs its spool there and the store its fragments).
3. **Uploads** of one random file (``--upload-size``, 256 MiB; 64 MiB with ``--quick``), each
   row ``--rounds`` times, the order reversed every other round, the object deleted after each:

   - *tus via the origin*: a token from ``headwater token --client creator-app --scope upload``,
     ``POST /uploads`` then httpx PATCHes of ``part_size`` each (HTTP/1.1 over TLS, keep-alive),
     timed from the POST to the last PATCH's 204: by then the origin has completed the multipart
     upload in the store (its answer says so); the object's size is checked with a HEAD;
   - *tus, one PATCH*: the same with the whole file in one PATCH (the origin cuts the parts);
   - *tus, small PATCHes*: PATCHes of ``--small-chunk`` MiB (1), each ending inside a part: the
     origin stores the bytes past the last part as a segment of the incomplete part per PATCH
     (coalesced past ``max_incomplete_segments``) before it acknowledges them;
   - *tus, PostgreSQL* and *tus, small, PostgreSQL*: the same two through a second origin whose
     catalogue (so its upload records) is in PostgreSQL, a durable server this bench starts
     (``--no-postgresql``: none), with its own data_dir and uploads bucket; PostgreSQL's
     CPU-seconds beside the origin's;
   - *S3 multipart, 1 stream*: boto3 ``upload_file`` straight to the gateway, same part size,
     ``max_concurrency=1`` — the shape of the origin's own sending (one part at a time per upload);
   - *S3 multipart, 10 streams*: the same with boto3's default concurrency (10);
   - *S3 PUT*: one PutObject of the whole file: the store's own PUT figure in this run;
   - *S3 PUTs, small, serial*: a PutObject per ``--small-chunk`` MiB, one after the other: the
     floor of *tus, small PATCHes*, which stores each PATCH's bytes so before answering.

   MB/s (10^6 bytes per second of wall time); ratio = tus / S3 multipart. What the origin adds
   on the way is printed under the table (TLS, the spool write, re-reading the part, the
   record in the catalogue's database, the incomplete part's segments, one part in flight at a
   time); each tus row also has the origin process's CPU-seconds (/proc/PID/stat). ``--profile FILE``
   records one more tus upload with ``py-spy record --nonblocking --subprocesses`` attached to
   the origin and prints where its samples go (collapsed stacks kept in FILE).
4. **Transcode** of a 1280x720 25 fps ``testsrc2`` + sine clip (``--clip-seconds``, 30; 10
   with ``--quick``; x264 ``veryfast`` CRF 20, made once into ``--cache``), ``--rounds`` times,
   the two alternating which goes first:

   - *ffmpeg alone*: the transcoder's ladder command line
     (:func:`headwater.origin.transcode.ffmpeg.ladder_command` with the ``[transcoder]``
     settings and the rungs of its ladder that fit 720p, from ``ffprobe`` of the clip) on the
     clip, output beside the worker's scratch dir, *without* the poster and sprite outputs the
     worker adds to that run (``images=None``): the ladder alone, so what the images cost
     inside the run counts as the pipeline's overhead;
   - *the pipeline*: the clip PUT in ``uploads``, a title and its ``transcode`` job in the
     catalogue (as ``POST /api/titles`` makes them), then one
     :class:`~headwater.origin.transcode.worker.TranscodeWorker` (the class each
     ``headwater node transcoder`` worker process runs) in this process: ``run_once()`` from the
     lease to the published title. Its steps are timed by wrapping the functions the worker
     calls (download, ffprobe, the ladder ffmpeg with its poster and thumbnails, the sprites
     and thumbnail track, the title key, packaging + encryption, the S3 PUTs of the packager's
     sink, catalogue calls); the rest is "other". What ran beside the worker's thread of steps (the
     title key and bucket on their own thread, heartbeats while ffmpeg ran) is listed apart,
     outside the sum (:class:`StepTimer`).

   Seconds, multiple of real time, CPU-seconds (this process and its ffmpeg children), and
   overhead = (pipeline - ffmpeg alone) / ffmpeg alone, per round and the median. Goal (the
   issue's, reported, never asserted): under 10 %.

Progress goes to stderr, the report to stdout, with the load average at the start and end;
``--json FILE`` keeps every run. The machine's 2 cores are shared: read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import resource
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .ceilings import Ceiling, fsync_writes, loopback_tcp
from .peers import PeerError, ProcessGroup, _HEADER, free_ports, headwater_cluster, wait_http

__all__ = ["main", "split_tables", "origin_sections", "postgres_origin_sections", "set_key", "summarise_collapsed",
           "ProfileSummary", "UploadRow",
           "TranscodeRound"]

MB = 1_000_000
MiB = 1 << 20
STORE_TABLES = ("cluster", "objstore", "users", "gateway", "metadata", "storage")
ORIGIN_TABLES = ("licence", "origin", "transcoder")
OVERHEAD_GOAL = 0.10
PG_UPLOADS_BUCKET = "uploads-pg"
_RPC_PORT_LINE = re.compile(r"^\s*rpc_port\s*=")
_PORT_LINE = re.compile(r"^(\s*(?:port|admin_port|tls_port)\s*=\s*)(\d+)(.*)$")
_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cluster.toml"


def _headwater() -> str:
    return str(Path(sys.executable).with_name("headwater"))


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- configs (text in, text out) -------------------------------------------------------------------

def split_tables(text: str, keep: tuple[str, ...]) -> str:
    """The lines of the TOML tables whose top-level name is in ``keep`` (``[origin.oauth]``
    belongs to ``origin``), in their order; what comes before the first table is dropped."""
    out: list[str] = []
    current: str | None = None
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h and not line.lstrip().startswith("#"):
            current = h.group(1).replace('"', "").split(".")[0]
        if current in keep:
            out.append(line)
    return "\n".join(out) + "\n"


def set_key(text: str, table: str, key: str, value: str) -> str:
    """``key = value`` in ``[table]`` (exactly that table): the line replaced if there, else
    added right after the header. ValueError if the table is missing."""
    lines = text.splitlines()
    header = None
    current = None
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i, line in enumerate(lines):
        h = _HEADER.match(line)
        if h and not line.lstrip().startswith("#"):
            current = h.group(1).replace('"', "")
            if current == table and line.strip().startswith("[") and not line.strip().startswith("[["):
                header = i
            continue
        if current == table and key_re.match(line):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    if header is None:
        raise ValueError(f"no [{table}] table")
    lines.insert(header + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def origin_sections(text: str, ports: Iterator[int], *, part_size: int, max_upload: int) -> str:
    """``[licence]``, ``[origin]`` and ``[transcoder]`` of ``text`` (a cluster.toml) with every
    port a fresh one from ``ports``, the origin's ``part_size`` and ``max_upload_size`` set, and
    the idle transcoder's poll shortened (the bench's worker leases in-process anyway)."""
    out = []
    for line in split_tables(text, ORIGIN_TABLES).splitlines():
        if _RPC_PORT_LINE.match(line):
            continue  # no licence daemon runs here: the in-process worker opens the key store itself
        m = _PORT_LINE.match(line)
        out.append(f"{m.group(1)}{next(ports)}{m.group(3)}" if m else line)
    body = "\n".join(out) + "\n"
    body = set_key(body, "origin", "part_size", str(part_size))
    body = set_key(body, "origin", "max_upload_size", str(max(max_upload, part_size)))
    return body


# --- the daemons ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class OriginRun:
    """The running origin: its config file, URL, trust and process."""

    config: Path
    url: str
    admin_url: str
    ca: Path
    pid: int

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def postgres_origin_sections(body: str, *, dsn: str, data_dir: Path, bucket: str) -> str:
    """The origin's sections (``origin_sections``'s text) for a second origin on PostgreSQL: its
    own data_dir and uploads bucket (its records are another database's: sharing a bucket, each
    origin's orphan sweep would take the other's segments for orphans)."""
    body = set_key(body, "origin", "data_dir", json.dumps(str(data_dir)))
    body = set_key(body, "origin", "uploads_bucket", json.dumps(bucket))
    try:
        body = set_key(body, "origin.catalogue", "backend", '"postgresql"')
    except ValueError:
        body += '\n[origin.catalogue]\nbackend = "postgresql"\n'
    return set_key(body, "origin.catalogue", "dsn", json.dumps(dsn))


@contextlib.contextmanager
def origin_cluster(config: Path, work: Path, *, port_offset: int, part_size: int, max_upload: int,
                   postgres_dsn: str | None = None) -> Iterator[tuple[Any, OriginRun, OriginRun | None]]:
    """The object store (``headwater up`` on its sections) and ``headwater node origin``; with
    ``postgres_dsn`` a second origin process whose catalogue (and upload records) are in that
    PostgreSQL database (its own ports, data_dir and uploads bucket ``uploads-pg``)."""
    text = config.read_text()
    store_src = work / "store-src.toml"
    store_src.write_text(set_key(split_tables(text, STORE_TABLES), "cluster", "log_level", '"warning"'))
    with headwater_cluster(store_src, work / "store", port_offset=port_offset, ready_timeout_s=240) as endpoint:
        full = work / "store" / "full.toml"
        ports = iter(free_ports(32))
        full.write_text((work / "store" / "cluster.toml").read_text()
                        + origin_sections(text, ports, part_size=part_size, max_upload=max_upload))
        from headwater.config import load

        cfg = load(full)
        procs = ProcessGroup(work / "store")
        try:
            proc = procs.start("origin", [_headwater(), "node", cfg.origin.id, "-c", str(full)], cwd=work)
            admin = f"http://{cfg.origin.host}:{cfg.origin.admin_port}"
            wait_http(admin + "/healthz", timeout_s=240, procs=procs, ok=lambda s: s == 200)
            from headwater.localca import CA_CERT_FILE, ca_folder

            run = OriginRun(config=full, url=f"https://{cfg.origin.host}:{cfg.origin.port}",
                            admin_url=admin, ca=ca_folder(cfg) / CA_CERT_FILE, pid=proc.pid)
            pg_run = None
            if postgres_dsn is not None:
                # After the first is up: the local CA it made is the second's too.
                pg_conf = work / "store" / "full-pg.toml"
                pg_conf.write_text((work / "store" / "cluster.toml").read_text() + postgres_origin_sections(
                    origin_sections(text, ports, part_size=part_size, max_upload=max_upload), dsn=postgres_dsn,
                    data_dir=work / "origin-pg", bucket=PG_UPLOADS_BUCKET))
                pg_cfg = load(pg_conf)
                pg_proc = procs.start("origin-pg", [_headwater(), "node", pg_cfg.origin.id, "-c", str(pg_conf)],
                                      cwd=work)
                pg_admin = f"http://{pg_cfg.origin.host}:{pg_cfg.origin.admin_port}"
                wait_http(pg_admin + "/healthz", timeout_s=240, procs=procs, ok=lambda s: s == 200)
                pg_run = OriginRun(config=pg_conf, url=f"https://{pg_cfg.origin.host}:{pg_cfg.origin.port}",
                                   admin_url=pg_admin, ca=ca_folder(pg_cfg) / CA_CERT_FILE, pid=pg_proc.pid)
            yield endpoint, run, pg_run
        finally:
            procs.stop()


def _token(config: Path, client: str, scope: str) -> str:
    r = subprocess.run([_headwater(), "token", "--client", client, "--scope", scope, "-c", str(config)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise PeerError(f"headwater token failed: {r.stderr[-1000:]}")
    return r.stdout.strip()


def _s3(endpoint: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint.url, aws_access_key_id=endpoint.access_key,
                        aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                      read_timeout=300, connect_timeout=10))


def _ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - missing (404) or not yet made: create it
        s3.create_bucket(Bucket=bucket)


# --- uploads ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRow:
    """One way of uploading: every run's wall and client CPU seconds."""

    who: str
    how: str
    size: int
    seconds: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    origin_cpu: list[float] = field(default_factory=list)  # the origin process's CPU-seconds (tus rows)
    db_cpu: list[float] = field(default_factory=list)  # PostgreSQL's processes' CPU-seconds (its tus rows)

    @property
    def best_mb_s(self) -> float:
        return self.size / min(self.seconds) / MB if self.seconds else 0.0

    @property
    def median_mb_s(self) -> float:
        return self.size / statistics.median(self.seconds) / MB if self.seconds else 0.0


def tus_upload(origin: OriginRun, token: str, path: Path, *, chunk: int) -> tuple[float, str]:
    """POST + PATCHes of ``chunk`` bytes: (seconds, upload id). Raises unless every answer is
    the one tus requires and the last offset is the file's size."""
    import base64

    import httpx

    size = path.stat().st_size
    auth = {"authorization": f"Bearer {token}", "tus-resumable": "1.0.0"}
    meta = "filename " + base64.b64encode(path.name.encode()).decode()
    with httpx.Client(base_url=origin.url, verify=origin.ssl_context(), timeout=300, trust_env=False) as c, \
            open(path, "rb") as f:
        t0 = time.perf_counter()
        r = c.post("/uploads", headers={**auth, "upload-length": str(size), "upload-metadata": meta})
        if r.status_code != 201:
            raise PeerError(f"POST /uploads: {r.status_code} {r.text[:500]}")
        location = r.headers["location"]
        offset = 0
        while offset < size:
            data = f.read(min(chunk, size - offset))
            r = c.patch(location, content=data, headers={
                **auth, "upload-offset": str(offset), "content-type": "application/offset+octet-stream"})
            if r.status_code != 204:
                raise PeerError(f"PATCH at {offset}: {r.status_code} {r.text[:500]}")
            offset = int(r.headers["upload-offset"])
            if offset != f.tell():
                raise PeerError(f"PATCH acknowledged {offset}, sent up to {f.tell()}")
        seconds = time.perf_counter() - t0
    return seconds, location.rstrip("/").rsplit("/", 1)[-1]


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_children() -> float:
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


def _cpu_all() -> float:
    return _cpu_self() + _cpu_children()


def _cpu_of(pid: int) -> float:
    """A process's CPU-seconds so far (user + system, /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_of_tree(root: int) -> float:
    """CPU-seconds of ``root`` and every live process below it (a PostgreSQL server: runuser,
    the postmaster and its backends; the pooled connections live as long as the origin, so none
    of their work is lost between two readings)."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, clock ticks)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, grown = {root}, True
    while grown:
        below = {pid for pid, (parent, _) in stats.items() if parent in tree} - tree
        grown = bool(below)
        tree |= below
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


#: The rows' names (``--rows``), in the order each round runs them.
UPLOAD_ROWS = ("tus", "tus1", "tus_small", "tus_pg", "tus_small_pg", "mpu1", "mpu10", "put", "put_small")


def measure_uploads(endpoint: Any, origin: OriginRun, src: Path, *, part_size: int, rounds: int,
                    uploads_bucket: str, small_chunk: int = MiB, pg_origin: OriginRun | None = None,
                    pg_pid: int | None = None, only: tuple[str, ...] | None = None) -> list[UploadRow]:
    """Every upload row ``rounds`` times (order reversed every other round), each object deleted
    after its run. With ``pg_origin`` (the origin on PostgreSQL, its server's process
    root ``pg_pid``) the tus rows of 8 MiB and small PATCHes are run through it too."""
    from boto3.s3.transfer import TransferConfig

    s3 = _s3(endpoint)
    _ensure_bucket(s3, "bench")
    _ensure_bucket(s3, uploads_bucket)
    if pg_origin is not None:
        _ensure_bucket(s3, PG_UPLOADS_BUCKET)
    size = src.stat().st_size
    token = _token(origin.config, "creator-app", "upload")
    pg_token = _token(pg_origin.config, "creator-app", "upload") if pg_origin is not None else ""
    rows = {
        "tus": UploadRow(who="tus via the origin", how=f"httpx PATCHes of {part_size // MiB} MiB, TLS", size=size),
        "tus1": UploadRow(who="tus, one PATCH", how="the whole file in one PATCH, TLS", size=size),
        "tus_small": UploadRow(who="tus, small PATCHes",
                               how=f"httpx PATCHes of {small_chunk / MiB:g} MiB (ending mid-part), TLS", size=size),
        "tus_pg": UploadRow(who="tus, PostgreSQL", how="as 'tus via the origin', the records in PostgreSQL",
                            size=size),
        "tus_small_pg": UploadRow(who="tus, small, PostgreSQL",
                                  how="as 'tus, small PATCHes', the records in PostgreSQL", size=size),
        "mpu1": UploadRow(who="S3 multipart, 1 stream", how=f"boto3, {part_size // MiB} MiB parts, concurrency 1",
                          size=size),
        "mpu10": UploadRow(who="S3 multipart, 10 streams",
                           how=f"boto3, {part_size // MiB} MiB parts, concurrency 10", size=size),
        "put": UploadRow(who="S3 PUT", how="boto3 put_object of the whole file", size=size),
        "put_small": UploadRow(who="S3 PUTs, small, serial",
                               how=f"boto3 put_object of each {small_chunk / MiB:g} MiB in turn (the segments' "
                                   "shape: their floor)", size=size),
    }

    if pg_origin is None:
        del rows["tus_pg"], rows["tus_small_pg"]
    if only is not None:
        rows = {k: v for k, v in rows.items() if k in only}

    def run(name: str) -> None:
        on_pg = name.endswith("_pg")
        by = pg_origin if on_pg and pg_origin is not None else origin
        c0, o0 = _cpu_self(), _cpu_of(by.pid)
        d0 = _cpu_of_tree(pg_pid) if on_pg and pg_pid else 0.0
        if name.startswith("tus"):
            chunk = {"tus": part_size, "tus1": size, "tus_small": small_chunk}[name.removesuffix("_pg")]
            seconds, upload_id = tus_upload(by, pg_token if on_pg else token, src, chunk=chunk)
            key = f"uploads/{upload_id}"
            bucket = PG_UPLOADS_BUCKET if on_pg else uploads_bucket
            got = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            if got != size:
                raise PeerError(f"the origin stored {got} bytes of {size}")
            s3.delete_object(Bucket=bucket, Key=key)
            if on_pg and pg_pid:
                rows[name].db_cpu.append(_cpu_of_tree(pg_pid) - d0)
        else:
            key = f"bench-{name}-{secrets.token_hex(4)}"
            t0 = time.perf_counter()
            if name == "put":
                with open(src, "rb") as f:
                    s3.put_object(Bucket="bench", Key=key, Body=f)
            elif name == "put_small":
                with open(src, "rb") as f:
                    n = 0
                    while chunk := f.read(small_chunk):
                        s3.put_object(Bucket="bench", Key=f"{key}-{n}", Body=chunk)
                        n += 1
                seconds = time.perf_counter() - t0
                for i in range(n):
                    s3.delete_object(Bucket="bench", Key=f"{key}-{i}")
                rows[name].seconds.append(seconds)
                rows[name].client_cpu.append(_cpu_self() - c0)
                rows[name].origin_cpu.append(_cpu_of(origin.pid) - o0)
                _log(f"  {rows[name].who:<26} {seconds:7.2f} s = {size / seconds / MB:7.1f} MB/s  (load {_loadavg()})")
                return
            else:
                conc = 1 if name == "mpu1" else 10
                s3.upload_file(str(src), "bench", key, Config=TransferConfig(
                    multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=conc,
                    use_threads=conc > 1))
            seconds = time.perf_counter() - t0
            got = s3.head_object(Bucket="bench", Key=key)["ContentLength"]
            if got != size:
                raise PeerError(f"the store holds {got} bytes of {size}")
            s3.delete_object(Bucket="bench", Key=key)
        rows[name].seconds.append(seconds)
        rows[name].client_cpu.append(_cpu_self() - c0)
        rows[name].origin_cpu.append(_cpu_of(by.pid) - o0)
        _log(f"  {rows[name].who:<26} {seconds:7.2f} s = {size / seconds / MB:7.1f} MB/s  (load {_loadavg()})")

    order = list(rows)
    for rnd in range(rounds):
        for name in (order if rnd % 2 == 0 else list(reversed(order))):
            run(name)
    return list(rows.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSummary:
    """py-spy's samples of one upload: how many, the seconds they span at the sampling rate, and
    the largest shares of them by the frame running (self, with its line) and by the origin's
    own functions on the stack (inclusive)."""

    samples: int
    seconds: float
    rate: int
    self_frames: list[tuple[str, float]]
    origin_frames: list[tuple[str, float]]

    @property
    def on_cpu(self) -> float:
        """Share of the upload's wall time the origin's threads were sampled running (py-spy
        without ``--idle`` leaves out threads waiting in the kernel)."""
        return self.samples / (self.rate * self.seconds) if self.seconds else 0.0


def summarise_collapsed(text: str, *, top: int = 12, own: str = "origin/") -> tuple[int, list[tuple[str, float]],
                                                                                  list[tuple[str, float]]]:
    """From py-spy's collapsed stacks (``frame;frame;... count``): the sample count; the share of
    samples by the innermost frame (``function (file:line)``); and the share in which each
    function of a file under ``own`` is on the stack (``function (file)``, counted once per
    stack). ``top`` of each, largest first."""
    total = 0
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";")]
        leaf[frames[-1]] += n
        for name in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            if f"({own}" in name:
                inclusive[name] += n
    if not total:
        return 0, [], []
    return (total, [(f, n / total) for f, n in leaf.most_common(top)],
            [(f, n / total) for f, n in inclusive.most_common(top)])


def profile_upload(origin: OriginRun, src: Path, out: Path, *, part_size: int,
                   rate: int = 200) -> ProfileSummary | None:
    """One more tus upload with py-spy attached to the origin (``--nonblocking``: it does not pause
    the daemon); collapsed stacks into ``out``; the summary."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    token = _token(origin.config, "creator-app", "upload")
    proc = subprocess.Popen([spy, "record", "--nonblocking", "--subprocesses", "--rate", str(rate), "--format", "raw",
                             "-o", str(out), "-p", str(origin.pid)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        time.sleep(1.0)  # py-spy attaches
        if proc.poll() is not None:
            raise PeerError(f"py-spy exited: {proc.stderr.read().decode(errors='replace')[-1000:]}")
        seconds, _ = tus_upload(origin, token, src, chunk=part_size)
        _log(f"  profiled tus upload: {seconds:.2f} s")
    finally:
        if proc.poll() is None:
            proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not out.exists():
        return None
    samples, self_frames, origin_frames = summarise_collapsed(out.read_text())
    return ProfileSummary(samples=samples, seconds=seconds, rate=rate, self_frames=self_frames,
                          origin_frames=origin_frames)


# --- transcode -------------------------------------------------------------------------------------

def make_clip(cache: Path, *, seconds: int, ffmpeg: str) -> Path:
    """The 1280x720 25 fps testsrc2 + 440 Hz sine clip in ``cache`` (made once)."""
    path = cache / f"clip-720p-{seconds}s.mp4"
    if path.exists() and path.stat().st_size > 0:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    _log(f"making the clip once: {path}")
    r = subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-y",
                        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                        "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
                        "-pix_fmt", "yuv420p", "-g", "50", "-c:a", "aac", "-b:a", "128k", "-ac", "2",
                        "-movflags", "+faststart", str(tmp)], capture_output=True, text=True)
    if r.returncode != 0:
        raise PeerError(f"ffmpeg could not make the clip: {r.stderr[-2000:]}")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscodeRound:
    """One round: ffmpeg alone and the pipeline, wall and CPU seconds, the pipeline's steps."""

    alone_s: float
    alone_cpu_s: float
    pipeline_s: float
    pipeline_cpu_s: float
    steps: dict[str, float]
    title_id: int
    first: str
    overlapped: dict[str, float] = field(default_factory=dict)
    ladder_cpu_s: float = 0.0  # the pipeline's ladder ffmpeg (with the poster and thumbnails), CPU-seconds

    @property
    def overhead(self) -> float:
        return (self.pipeline_s - self.alone_s) / self.alone_s


class StepTimer:
    """Wall seconds spent in named functions, by replacing them (module globals or class
    attributes) with timing wrappers for the length of a ``with`` block. Each step gets its own
    time only: a wrapped call inside another (the sink's PUTs inside packaging) is taken out of
    the outer one's, so the steps add up to at most the wall time.

    The critical path is the thread that entered the block (the worker's). A call made on another
    thread (the worker fetches the title key while ffmpeg runs), or inside a step wrapped with
    ``shadows`` (a heartbeat inside the ladder's ffmpeg run, which goes on meanwhile), ran beside
    the critical path: its seconds go to :attr:`overlapped`, not to :attr:`seconds`, and are not
    taken out of the step around it. :attr:`children_cpu` is the CPU-seconds of the child
    processes each critical-path step reaped (the ladder's ffmpeg)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.overlapped: Counter[str] = Counter()
        self.children_cpu: Counter[str] = Counter()
        self._undo: list[tuple[Any, str, Any]] = []
        self._inner: list[float] = []  # per active wrapped call: seconds of the wrapped calls in it
        self._thread = threading.get_ident()
        self._shadowing = 0            # active calls of ``shadows`` steps on the critical path
        self._lock = threading.Lock()

    def wrap(self, owner: Any, attr: str, step: str, *, shadows: bool = False) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._thread or self._shadowing:
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    with self._lock:
                        self.overlapped[step] += time.perf_counter() - t0
            self._inner.append(0.0)
            self._shadowing += shadows
            c0, t0 = _cpu_children(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self.children_cpu[step] += _cpu_children() - c0
                self._shadowing -= shadows
                self.seconds[step] += elapsed - self._inner.pop()
                if self._inner:
                    self._inner[-1] += elapsed

        self._undo.append((owner, attr, original))
        setattr(owner, attr, timed)

    def __enter__(self) -> "StepTimer":
        self._thread = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


#: (module or class path, attribute, step name). The sink's PUTs happen inside package_title:
#: StepTimer keeps them out of that step. The ladder's run_ffmpeg shadows what the worker does
#: while it runs (heartbeats); the title key and the bucket are made on a thread of their own
#: meanwhile: both are reported as overlapped, not as steps.
_LADDER = "ffmpeg ladder (+ poster and thumbnails)"
_STEPS = (
    ("headwater.origin.transcode.objects:ObjectStore", "download", "download the upload"),
    ("headwater.origin.transcode.worker", "probe_file", "ffprobe"),
    ("headwater.origin.transcode.worker", "run_ffmpeg", _LADDER),
    ("headwater.origin.transcode.worker", "collect_images", "sprites tiled + thumbnail track"),
    ("headwater.origin.transcode.worker", "fetch_title_key", "title key (key store or licence RPC)"),
    ("headwater.origin.transcode.worker", "package_title", "packaging + encryption"),
    # Packaging while ffmpeg encodes: the follower thread's feeds are beside the critical path
    # (overlapped); what is left when ffmpeg exits (finish: the last fragment, the images, the
    # manifests) is on it.
    ("headwater.origin.transcode.package:StreamedLadder", "finish", "packaging + encryption"),
    ("headwater.drm.package.streaming:StreamingPackager", "feed", "packaging + encryption"),
    ("headwater.drm.package.s3sink:S3Sink", "put", "S3 PUTs of segments/images"),
    ("headwater.drm.package.s3sink:S3Sink", "commit", "S3 PUTs of manifests (commit)"),
    ("headwater.origin.transcode.objects:ObjectStore", "ensure_bucket", "catalogue + store calls"),
    ("headwater.origin.transcode.worker", "request_cdn_purge", "catalogue + store calls"),
)
_SHADOWS = {"run_ffmpeg"}
_CATALOGUE_CALLS = ("lease", "heartbeat", "move_title", "complete", "get_title")


def _resolve(path: str) -> Any:
    import importlib

    module, _, cls = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


def measure_transcode(endpoint: Any, origin: OriginRun, clip: Path, work: Path, *, rounds: int,
                      package: str | None = None) -> tuple[list[TranscodeRound], dict[str, Any]]:
    """``rounds`` × (ffmpeg alone, the pipeline), alternating which goes first. ``package``
    ("while" or "after" the encode; default the config's ``stream_packaging``) picks the
    worker's path, and ffmpeg alone writes the ladder the way that path's run does (fragmented
    or progressive MP4)."""
    from headwater.config import load
    from headwater.origin.catalogue import TitleDraft, TitleState, open_catalogue
    from headwater.origin.daemon import store_settings
    from headwater.origin.transcode.config import origin_catalogue, videos_bucket
    from headwater.origin.transcode.ffmpeg import ladder_command
    from headwater.origin.transcode.ladder import plan_ladder
    from headwater.origin.transcode.probe import probe_file
    from headwater.origin.transcode.worker import StoreSettings, TranscodeWorker

    cfg = load(origin.config)
    tc = cfg.transcoder
    if package is not None:
        tc = dataclasses.replace(tc, stream_packaging=package == "while")
    info = probe_file(tc.ffprobe, clip)
    rungs = plan_ladder(tc.ladder, info, tc.codecs)
    tc.scratch_dir.mkdir(parents=True, exist_ok=True)
    alone_out = tc.scratch_dir.parent / "alone-ladder.mp4"  # same filesystem as the worker's scratch
    argv = ladder_command(tc.ffmpeg, clip, alone_out, rungs, info, segment_seconds=tc.segment_seconds,
                          preset=tc.preset, audio_bitrate=tc.audio_bitrate, opus_bitrate=tc.opus_bitrate,
                          vp9_deadline=tc.vp9_deadline, vp9_cpu_used=tc.vp9_cpu_used,
                          fragmented=tc.stream_packaging)
    setup = {"argv": argv, "rungs": [asdict(r) for r in rungs], "duration_s": info.duration_s,
             "clip_bytes": clip.stat().st_size, "scheme": tc.scheme, "preset": tc.preset,
             "package": "while" if tc.stream_packaging else "after"}
    _log("  ffmpeg: " + " ".join(argv[1:]))

    s3 = _s3(endpoint)
    uploads_bucket = cfg.origin.uploads_bucket
    _ensure_bucket(s3, uploads_bucket)
    ep, access, secret, region = store_settings(cfg, cfg.origin)
    store = StoreSettings(endpoint=ep, access_key=access, secret_key=secret, region=region,
                          videos_bucket=videos_bucket(cfg))
    catalogue = open_catalogue(origin_catalogue(cfg))
    worker = TranscodeWorker(tc, catalogue, store, cluster=cfg, name="bench#0", scratch=tc.scratch_dir / "bench")
    out: list[TranscodeRound] = []
    try:
        for rnd in range(rounds):
            name = f"clip-{rnd}-{secrets.token_hex(3)}"
            s3.put_object(Bucket=uploads_bucket, Key=f"uploads/{name}", Body=clip.read_bytes())
            clip.read_bytes()  # the clip in the page cache for ffmpeg alone too

            def alone() -> tuple[float, float]:
                c0, t0 = _cpu_all(), time.perf_counter()
                r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600)
                wall, cpu = time.perf_counter() - t0, _cpu_all() - c0
                if r.returncode != 0:
                    raise PeerError(f"ffmpeg alone failed: {r.stderr.decode(errors='replace')[-2000:]}")
                alone_out.unlink(missing_ok=True)
                _log(f"  round {rnd + 1} ffmpeg alone: {wall:6.2f} s ({info.duration_s / wall:.2f}x real time), "
                     f"CPU {cpu:.2f} s  (load {_loadavg()})")
                return wall, cpu

            def pipeline() -> tuple[float, float, dict[str, float], dict[str, float], float, int]:
                title = catalogue.create_title(TitleDraft(title=f"Bench clip {name}", upload=name,
                                                          owner="creator-app"))
                catalogue.enqueue("transcode", f"transcode:{title.id}:{name}", title_id=title.id,
                                  payload={"bucket": uploads_bucket, "key": f"uploads/{name}"})
                with StepTimer() as timer:
                    for path, attr, step in _STEPS:
                        timer.wrap(_resolve(path), attr, step, shadows=attr in _SHADOWS)
                    for call in _CATALOGUE_CALLS:
                        timer.wrap(catalogue, call, "catalogue + store calls")
                    c0, t0 = _cpu_all(), time.perf_counter()
                    if not worker.run_once():
                        raise PeerError("the worker found no job to lease")
                    wall, cpu = time.perf_counter() - t0, _cpu_all() - c0
                    steps = dict(timer.seconds)
                    overlapped = dict(timer.overlapped)
                    ladder_cpu = timer.children_cpu[_LADDER]
                got = catalogue.get_title(title.id)
                if got.state is not TitleState.PUBLISHED:
                    raise PeerError(f"title {title.id} is {got.state.value}: {got.error}")
                steps["other (scratch, Python, cleanup)"] = wall - sum(steps.values())
                _log(f"  round {rnd + 1} pipeline:     {wall:6.2f} s ({info.duration_s / wall:.2f}x real time), "
                     f"CPU {cpu:.2f} s, title {title.id} published  (load {_loadavg()})")
                return wall, cpu, steps, overlapped, ladder_cpu, title.id

            if rnd % 2 == 0:
                a = alone()
                p = pipeline()
            else:
                p = pipeline()
                a = alone()
            out.append(TranscodeRound(alone_s=a[0], alone_cpu_s=a[1], pipeline_s=p[0], pipeline_cpu_s=p[1],
                                      steps=p[2], overlapped=p[3], ladder_cpu_s=p[4], title_id=p[5],
                                      first="alone" if rnd % 2 == 0 else "pipeline"))
    finally:
        catalogue.close()
    return out, setup


# --- the report ------------------------------------------------------------------------------------

def render(rows: list[UploadRow], ceilings: list[Ceiling], rounds: list[TranscodeRound], setup: dict[str, Any],
           profile: ProfileSummary | None, *, part_size: int, load_start: str, load_end: str) -> str:
    out: list[str] = []
    out.append(f"origin bench — load average {load_start} at the start, {load_end} at the end "
               f"({os.cpu_count()} CPUs)")
    if rows:
        size = rows[0].size
        by = {r.who: r for r in rows}
        tus = by.get("tus via the origin", rows[0])
        out.append("")
        out.append(f"Uploads of {size // MiB} MiB (random bytes), {len(tus.seconds)} run(s) each: "
                   "MB/s median (best)")
        out.append(f"  {'row':<28}{'MB/s':>9}{'best':>9}  {'tus / this':>10}{'origin CPU s':>13}{'PG CPU s':>9}  how")
        for r in rows:
            ratio = tus.median_mb_s / r.median_mb_s if r.median_mb_s else 0.0
            cpu = f"{statistics.median(r.origin_cpu):13.2f}" if r.who.startswith("tus") and r.origin_cpu \
                else f"{'-':>13}"
            db = f"{statistics.median(r.db_cpu):9.2f}" if r.db_cpu else f"{'-':>9}"
            out.append(f"  {r.who:<28}{r.median_mb_s:9.1f}{r.best_mb_s:9.1f}  {ratio:9.2f}x{cpu}{db}  {r.how}")
        mpu1, mpu10 = by.get("S3 multipart, 1 stream"), by.get("S3 multipart, 10 streams")
        if mpu1 is not None and mpu10 is not None and tus is by.get("tus via the origin"):
            out.append(f"  ratio tus / S3 multipart: {tus.median_mb_s / mpu1.median_mb_s:.2f}x of the same shape "
                       f"(1 stream), {tus.median_mb_s / mpu10.median_mb_s:.2f}x of boto3's default (10 streams)")
        pairs = [("tus via the origin", "tus, PostgreSQL"), ("tus, small PATCHes", "tus, small, PostgreSQL")]
        for lite, pg in pairs:
            if lite in by and pg in by and by[pg].median_mb_s:
                a, b = by[lite], by[pg]
                pg_cpu = statistics.median(b.db_cpu or [0.0])
                out.append(f"  {pg} / {lite}: {b.median_mb_s / a.median_mb_s:.2f}x the MB/s; origin CPU-s "
                           f"{statistics.median(b.origin_cpu):.2f} + PostgreSQL {pg_cpu:.2f} against "
                           f"{statistics.median(a.origin_cpu):.2f} (SQLite inside the origin)")
        out.append("  ceilings of this run:")
        for c in ceilings:
            out.append(f"    {c.name:<18} {c.value:9.2f} {c.unit:<6} {c.how}")
        out.append(f"  What the origin adds to each byte: TLS (the gateway is cleartext here); a write into the "
                   f"spool file on the origin's disk; per {part_size // MiB} MiB part a re-read of it (pread), "
                   f"one UploadPart with its SHA-256 to the gateway (one part in flight per upload), a new "
                   f"spool file and a record in the catalogue's database (SQLite here, fsync'd); per PATCH "
                   f"ending mid-part the bytes past the last part PUT to the store as a segment of the "
                   f"incomplete part and a record (those bytes go to the store twice: segment, then in "
                   f"their part); at the end CompleteMultipartUpload.")
        if profile is not None:
            out.append(f"  py-spy on the origin during one more tus upload ({profile.seconds:.2f} s): its threads "
                       f"were running in {profile.on_cpu * 100:.0f} % of the wall time ({profile.samples} samples "
                       f"at {profile.rate}/s); of those samples:")
            out.append("    by the frame running:")
            for name, share in profile.self_frames:
                out.append(f"      {share * 100:5.1f} %  {name[:140]}")
            out.append("    by the origin's functions on the stack:")
            for name, share in profile.origin_frames:
                out.append(f"      {share * 100:5.1f} %  {name[:140]}")
    if rounds:
        dur = setup["duration_s"]
        rungs = ", ".join(f"{r['name']} {r['width']}x{r['height']} {r['bitrate'] // 1000}k" for r in setup["rungs"])
        out.append("")
        out.append(f"Transcode of a {dur:g} s 1280x720 testsrc2+sine clip ({setup['clip_bytes'] / MB:.1f} MB) to "
                   f"{rungs} + AAC; x264 {setup['preset']}; packaging {setup['scheme']} "
                   + ("while ffmpeg encodes (fragmented MP4, alone too)" if setup.get("package", "after") == "while"
                      else "after the encode (progressive MP4)"))
        out.append(f"  {'round':<7}{'ffmpeg alone':>14}{'(x rt)':>8}{'CPU s':>8}{'pipeline':>11}{'(x rt)':>8}"
                   f"{'CPU s':>8}{'overhead':>10}{'CPU ovh':>9}  first")
        for i, r in enumerate(rounds):
            out.append(f"  {i + 1:<7}{r.alone_s:13.2f}s{dur / r.alone_s:7.2f}x{r.alone_cpu_s:8.1f}"
                       f"{r.pipeline_s:10.2f}s{dur / r.pipeline_s:7.2f}x{r.pipeline_cpu_s:8.1f}"
                       f"{r.overhead * 100:9.1f}%{(r.pipeline_cpu_s / r.alone_cpu_s - 1) * 100:8.1f}%  {r.first}")
        med = statistics.median(r.overhead for r in rounds)
        verdict = "meets" if med < OVERHEAD_GOAL else "misses"
        out.append(f"  pipeline overhead, median of rounds: {med * 100:.1f} % (goal < {OVERHEAD_GOAL * 100:.0f} %: "
                   f"{verdict} it)")
        out.append("  where the pipeline's time goes (median seconds over rounds; lease → published):")
        names = list(rounds[0].steps)
        for name in names:
            vals = [r.steps.get(name, 0.0) for r in rounds]
            out.append(f"    {statistics.median(vals):8.2f} s  {name}")
        shadowed = sorted({n for r in rounds for n in r.overlapped})
        if shadowed:
            out.append("  beside the critical path (while ffmpeg ran; not in the sum):")
            for name in shadowed:
                out.append(f"    {statistics.median(r.overlapped.get(name, 0.0) for r in rounds):8.2f} s  {name}")
        extra = [n for n in names if n != _LADDER]
        around = [sum(r.steps[n] for n in extra) for r in rounds]
        out.append(f"    = {statistics.median(around):.2f} s around the ladder ffmpeg; the ladder run itself vs "
                   f"ffmpeg alone: {statistics.median(r.steps[_LADDER] - r.alone_s for r in rounds):+.2f} s wall, "
                   f"{statistics.median(r.ladder_cpu_s - r.alone_cpu_s for r in rounds):+.2f} CPU-s (the poster "
                   f"and thumbnails it also makes, and the machine's drift between two runs)")
        ratios = [a / r.alone_s for a, r in zip(around, rounds)]
        # Signed: the CPU-seconds of two runs of one command differ by about a second here, so
        # clamping the difference at zero would only add that noise.
        with_images = [(a + r.ladder_cpu_s - r.alone_cpu_s) / r.alone_s for a, r in zip(around, rounds)]
        out.append(f"  overhead without that drift, (seconds around the ladder) / ffmpeg alone, median: "
                   f"{statistics.median(ratios) * 100:.1f} %; with the ladder run's extra CPU-seconds added: "
                   f"{statistics.median(with_images) * 100:.1f} %")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m headwater.bench origin", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 MiB upload, 10 s clip, one round")
    p.add_argument("--json", metavar="FILE", help="save every run here")
    p.add_argument("-c", "--config", type=Path, default=_DEFAULT_CONFIG, help="the cluster.toml to take sections from")
    p.add_argument("--port-offset", type=int, default=12000, help="moves the store's ports (S3 on 9000+offset)")
    p.add_argument("--upload-size", default=None, help="MiB to upload (256; 64 with --quick)")
    p.add_argument("--part-size", type=int, default=8, help="MiB: the origin's part_size, the PATCH and S3 part size")
    p.add_argument("--small-chunk", type=float, default=1.0,
                   help="MiB: the PATCH size of the 'tus, small PATCHes' row (1)")
    p.add_argument("--rounds", type=int, default=None, help="runs of every row (2; 1 with --quick)")
    p.add_argument("--clip-seconds", type=int, default=None, help="the clip's length (30; 10 with --quick)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "headwater-bench" / "origin")
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir under var/ of the repo's disk")
    p.add_argument("--profile", metavar="FILE", type=Path, help="py-spy the origin during one more tus upload")
    p.add_argument("--no-postgresql", action="store_true",
                   help="no second origin on PostgreSQL (by default the bench starts a PostgreSQL server and "
                        "an origin on it for the rows 'tus, PostgreSQL' and 'tus, small, PostgreSQL')")
    p.add_argument("--rows", default=None,
                   help=f"comma-separated rows to run (default all): {','.join(UPLOAD_ROWS)}")
    p.add_argument("--no-upload", action="store_true")
    p.add_argument("--no-transcode", action="store_true")
    p.add_argument("--package", choices=("while", "after"), default=None,
                   help="package while ffmpeg encodes or after it (default: [transcoder] stream_packaging)")
    args = p.parse_args(argv)
    size = int(args.upload_size or (64 if args.quick else 256)) * MiB
    rounds = args.rounds or (1 if args.quick else 2)
    clip_s = args.clip_seconds or (10 if args.quick else 30)
    part = args.part_size * MiB
    load_start = _loadavg()
    _log(f"origin bench: load average {load_start}")
    base = args.work_dir or Path(tempfile.mkdtemp(prefix="hw-origin-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: list[UploadRow] = []
    ceilings: list[Ceiling] = []
    rounds_out: list[TranscodeRound] = []
    setup: dict[str, Any] = {}
    profile: ProfileSummary | None = None
    only = tuple(x.strip() for x in args.rows.split(",")) if args.rows else None
    if only is not None and set(only) - set(UPLOAD_ROWS):
        p.error(f"--rows: unknown {', '.join(sorted(set(only) - set(UPLOAD_ROWS)))}")
    pg_server = None
    try:
        wants_pg = only is None or bool({"tus_pg", "tus_small_pg"} & set(only))
        if not args.no_postgresql and not args.no_upload and wants_pg:
            from .postgres_server import find_initdb, start_postgres

            if find_initdb() is None:
                _log("PostgreSQL is not installed (Debian package postgresql): no PostgreSQL rows")
            else:
                # Durable as an operator runs it (the tests' server has fsync off): an upload's
                # offset is acknowledged after its record's commit.
                pg_server = start_postgres(60, port=free_ports(1)[0],
                                           settings={"fsync": "on", "synchronous_commit": "on",
                                                     "full_page_writes": "on"})
                import psycopg

                with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
                    conn.execute("CREATE DATABASE origin")
        with origin_cluster(args.config, base, port_offset=args.port_offset, part_size=part, max_upload=size,
                            postgres_dsn=pg_server.dsn("origin") if pg_server is not None else None) \
                as (endpoint, origin, pg_origin):
            _log(f"store {endpoint.url}, origin {origin.url} (config {origin.config})"
                 + (f", origin on PostgreSQL {pg_origin.url}" if pg_origin is not None else ""))
            if not args.no_upload:
                _log("ceilings")
                ceilings.append(loopback_tcp(seconds=2.0, port=free_ports(1)[0]))
                ceilings.append(fsync_writes(base, total_bytes=min(size, 256 * MiB)))
                src = base / "upload.bin"
                with open(src, "wb") as f:
                    for _ in range(size // MiB):
                        f.write(os.urandom(MiB))
                _log(f"uploads of {size // MiB} MiB, {rounds} round(s)")
                from headwater.config import load

                rows = measure_uploads(endpoint, origin, src, part_size=part, rounds=rounds,
                                       uploads_bucket=load(origin.config).origin.uploads_bucket,
                                       small_chunk=int(args.small_chunk * MiB), pg_origin=pg_origin,
                                       pg_pid=pg_server.proc.pid if pg_server is not None else None, only=only)
                if args.profile:
                    profile = profile_upload(origin, src, args.profile, part_size=part)
                src.unlink()
            if not args.no_transcode:
                from headwater.origin.transcode.config import default_binary

                clip = make_clip(args.cache, seconds=clip_s, ffmpeg=default_binary("ffmpeg"))
                _log(f"transcode of {clip}, {rounds} round(s)")
                rounds_out, setup = measure_transcode(endpoint, origin, clip, base, rounds=rounds,
                                                      package=args.package)
    except PeerError as e:
        print(f"origin bench: {e}", file=sys.stderr)
        return 1
    finally:
        if pg_server is not None:
            pg_server.stop()
        if args.work_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    load_end = _loadavg()
    print(render(rows, ceilings, rounds_out, setup, profile, part_size=part, load_start=load_start,
                 load_end=load_end))
    if args.json:
        doc = {"load_start": load_start, "load_end": load_end, "part_size": part,
               "uploads": [{**asdict(r), "median_mb_s": r.median_mb_s, "best_mb_s": r.best_mb_s} for r in rows],
               "ceilings": [asdict(c) for c in ceilings],
               "transcode": {"setup": setup, "rounds": [{**asdict(r), "overhead": r.overhead} for r in rounds_out]},
               "profile": asdict(profile) if profile is not None else None}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
