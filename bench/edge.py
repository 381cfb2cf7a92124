"""`python -m headwater.bench edge`: the CDN edge's cache hits beside nginx and Varnish, its miss
path through three tiers, and its origin fetches under a Zipf workload.

Everything runs on 127.0.0.1 on free ports, from a temp dir (nothing in /etc), one worker each:

- **the origin**: nginx serving the objects (1 KiB, 100 KiB, 2 MiB) as static files with
  ``Cache-Control: public, max-age=86400``, logging every fetch it answers (the caches' Via /
  X-Varnish in each line, so the bench knows which cache fetched what);
- **nginx** as a ``proxy_cache`` in front of it: ``worker_processes 1``, the cache on disk read
  through the page cache (``open_file_cache``, ``sendfile``), keep-alive to the origin, HTTP/1.1
  on one port, HTTP/2 over TLS on a second and h2c (prior knowledge) on a third;
- **Varnish**: ``varnishd -a ... -b ORIGIN -s malloc,256m``, one thread pool, ``-p
  feature=+http2`` (h2c; Varnish has no TLS);
- **ours**: one POP worker with a 256 MiB RAM tier, HTTP/1.1 and h2c on one port, HTTP/2 over TLS
  on ``tls_port``, from a generated cluster.toml (``headwater up``). ``headwater edge serve`` runs
  the same ``run_edge``, but it has no TLS flag and logs every request at info; the bench wants
  the TLS port and no access log, as nginx (``access_log off``) and Varnish (its shared-memory log
  costs it little) run here.

Each cache is warmed (every object fetched twice) and the origin's log is counted before and after
the measured runs: a fetch during them would mean a measured request was a miss, and the report
says so. Load: ``wrk -t2 -c64`` over HTTP/1.1 with keep-alive, ``h2load -t2 -c32 -m8`` over HTTP/2
(``-m1`` for 2 MiB).
Rounds alternate the servers' order; each ratio is the median of the per-round ratios, so drift
in the shared machine's load hits both sides of a ratio alike. Each run also reads the serving
processes' CPU (user + system, ``/proc``) and reports it per request answered: on a machine shared
with other work it moves far less than requests/s. The report says how many processes serve for
each server (counted in ``/proc``): the comparison with nginx is one worker process each.
``--hits-only --protos h1 --objects 1k`` runs only the 1 KiB HTTP/1.1 hits (under a minute).

Then the machine's ceilings of the same run (wrk against the origin nginx serving each file
itself from the page cache, nginx answering 1 KiB from memory, loopback TCP with iperf3), the miss
latency (cold objects, one at a time: origin direct, one POP, POP -> regional -> shield -> origin,
and nginx's and Varnish's single-tier misses), and origin fetches per 1,000 requests under a
Zipf workload over ``--zipf-objects`` objects against one POP whose RAM and disk tiers together
hold less than the working set, beside an LRU cache of the same bytes simulated on the same trace
and a Varnish with a malloc store of the same bytes.

Last, segment prefetch (``edge.prefetch``): viewers playing video renditions segment after
segment (a think time between; Zipf-popular titles; some start mid-way, seek ahead or abandon,
so some prefetched segments are never asked for) through a fresh POP -> regional -> shield chain
with prefetch off, then the same seeded sessions through another with ``prefetch = 3``: the
POP's hit ratio (requests and bytes), regional and origin fetches per 1,000 requests (what
prefetching adds), and the viewers' latency p50/p99. ``--prefetch-only`` runs just that (the
origin nginx and the two chains; about two minutes, ``--quick`` one).

Nothing is installed here: ``scripts/install-bench-deps.sh`` installs Debian ``nginx``,
``varnish``, ``wrk`` and ``nghttp2-client`` (h2load).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import http.client
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from headwater.edge.store.disk import ENTRY_OVERHEAD_BYTES as DISK_ENTRY_OVERHEAD_BYTES

from . import ceilings as _ceilings
from .http_core import parse_wrk
from .peers import PeerError, ProcessGroup, _sigterm_as_interrupt, free_ports, wait_http, wait_port

__all__ = [
    "main", "OBJECTS", "GOALS", "Figure", "H2load", "parse_h2load", "origin_nginx_conf",
    "cache_nginx_conf", "varnish_argv", "solo_cluster_toml", "chain_cluster_toml", "zipf_trace",
    "lru_fetches", "percentile", "fetcher_of", "RENDITIONS", "Session", "Played", "segment_path",
    "playback_sessions", "is_hit", "segment_fetches", "prefetch_summary", "write_segments", "PrefetchRun",
    "render_prefetch",
]

KiB = 1024
MiB = 1024 * KiB
# name -> body bytes; every object is a static file of the origin.
OBJECTS = {"1k": 1 * KiB, "100k": 100 * KiB, "2m": 2 * MiB}
LABEL = {"1k": "1 KiB", "100k": "100 KiB", "2m": "2 MiB"}
# (object, peer) -> the least ours/peer ratio the issue asks for (reported, never asserted).
GOALS = {("1k", "nginx"): 0.5, ("2m", "nginx"): 0.8}
SERVERS = ("ours", "nginx", "varnish")
MAX_AGE = 86400


# --- the configs (pure) --------------------------------------------------------------------------

def origin_nginx_conf(root: Path, www: Path, *, port: int, direct_port: int, memory_port: int) -> str:
    """The origin: ``www``'s files on ``port`` with a day's max-age, each fetch logged to
    ``root/fetches.log`` as ``VIA|X-VARNISH|URI`` (which cache asked for what); the same files
    unlogged on ``direct_port`` (the ceiling: nginx serving the file itself) and 1 KiB from
    memory on ``memory_port``. Any ``/cold/NAME`` is the 1 KiB file (a fresh object per name, for
    miss latency) and any ``/z/NAME`` the ``zipf`` file (the Zipf workload's objects). Video
    segments under ``/p/`` (files of ``www``: :func:`write_segments`) are logged apart, to
    ``root/segments.log`` as ``STATUS|BYTES|URI``: a 404 past a rendition's end is a fetch too."""
    return f"""\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    open_file_cache max=1000 inactive=60s;
{_ceilings.nginx_temp_paths(root)}    log_format fetch "$http_via|$http_x_varnish|$request_uri";
    log_format segment "$status|$body_bytes_sent|$request_uri";
    server {{
        listen 127.0.0.1:{port};
        root {www};
        access_log {root}/fetches.log fetch;
        add_header Cache-Control "public, max-age={MAX_AGE}" always;
        location /cold/ {{ try_files /1k =404; }}
        location /z/ {{ try_files /zipf =404; }}
        location /p/ {{ access_log {root}/segments.log segment; }}
    }}
    server {{
        listen 127.0.0.1:{direct_port};
        root {www};
    }}
    server {{
        listen 127.0.0.1:{memory_port};
        location / {{ return 200 "{'x' * OBJECTS['1k']}"; }}
    }}
}}
"""


def cache_nginx_conf(root: Path, *, origin_port: int, port: int, tls_port: int, h2c_port: int,
                     cert: Path, key: str | Path, max_size: str = "1g") -> str:
    """nginx as a ``proxy_cache`` in front of the origin, one worker: the cache in files under
    ``root/cache`` (read through the page cache: ``open_file_cache`` and ``sendfile``; the keys in
    a 16 MiB shared zone), keep-alive to the origin, one fetch per missing key
    (``proxy_cache_lock``); HTTP/1.1 on ``port``, HTTP/2 over TLS on ``tls_port`` and h2c on
    ``h2c_port`` (nginx 1.22 speaks h2c only to prior-knowledge clients, on a port of its own)."""
    return f"""\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    open_file_cache max=10000 inactive=60s;
{_ceilings.nginx_temp_paths(root)}    proxy_cache_path {root}/cache levels=1:2 keys_zone=edge:16m max_size={max_size} inactive=1d use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl http2;
        listen 127.0.0.1:{h2c_port} http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        http2_max_concurrent_streams 128;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Via "1.1 nginx";
            proxy_cache edge;
            proxy_cache_key $uri;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


def varnish_argv(varnishd: str, workdir: Path, *, port: int, origin_port: int, malloc: str = "256m",
                 threads: int = 200) -> list[str]:
    """``varnishd`` in the foreground in front of the origin with the built-in VCL (``-b``): a
    malloc store, one thread pool of ``threads`` (Varnish gives every busy connection a thread; 64
    load connections plus its own fit), h2c on, its shared-memory log in ``workdir``."""
    return [varnishd, "-F", "-n", str(workdir), "-a", f"127.0.0.1:{port}", "-b", f"127.0.0.1:{origin_port}",
            "-s", f"malloc,{malloc}", "-p", "thread_pools=1", "-p", f"thread_pool_min={threads}",
            "-p", f"thread_pool_max={threads * 2}", "-p", "feature=+http2",
            "-T", "none"]


def solo_cluster_toml(data_dir: Path, *, origin_port: int, pop: tuple[int, int, int], cert: Path,
                      key: Path, ram: str, zipf_pop: tuple[int, int], zipf_ram: str, zipf_disk: str) -> str:
    """Two POPs with no tier above them (misses go to the origin), one worker each: ``pop`` for the
    hits (port, admin port, TLS port; ``ram`` RAM tier) and ``zpop`` for the Zipf workload (RAM and
    disk tiers smaller than its working set). Warnings only: no access log."""
    return f"""\
[cluster]
name = "bench-edge"
log_level = "warning"
data_dir = "{data_dir}"

# One load generator on 127.0.0.1 is one client: per-client limits would measure the limiter.
[cdn.client_limits]
enabled = false

[[distributions]]
name = "bench"
origin = "http://127.0.0.1:{origin_port}"

[[edge]]
id = "pop"
tier = "pop"
port = {pop[0]}
admin_port = {pop[1]}
tls_port = {pop[2]}
tls_cert = "{cert}"
tls_key = "{key}"
workers = 1
lat = 0.0
lon = 0.0
ram_size = "{ram}"
disk_size = "1GiB"

[[edge]]
id = "zpop"
tier = "pop"
port = {zipf_pop[0]}
admin_port = {zipf_pop[1]}
workers = 1
lat = 0.0
lon = 0.0
ram_size = "{zipf_ram}"
disk_size = "{zipf_disk}"
"""


def chain_cluster_toml(data_dir: Path, *, origin_port: int, ports: list[int], prefetch: int | None = None) -> str:
    """A POP, a regional and a shield (one worker each, ``ports`` = their port/admin port pairs):
    a POP's miss goes to the regional, the regional's to the shield, the shield's to the origin.
    ``prefetch`` (0 = off) adds a ``*.m4s`` behaviour with that ``prefetch``: the segment
    prefetch scenario runs the same chain with it off and on."""
    tables = []
    for i, (node, tier) in enumerate((("cpop", "pop"), ("regional", "regional"), ("shield", "shield"))):
        extra = 'lat = 0.0\nlon = 0.0\nram_size = "64MiB"\n' if tier == "pop" else ""
        tables.append(f'[[edge]]\nid = "{node}"\ntier = "{tier}"\nport = {ports[2 * i]}\n'
                      f'admin_port = {ports[2 * i + 1]}\nworkers = 1\ndisk_size = "256MiB"\n{extra}')
    return (f'[cluster]\nname = "bench-edge-chain"\nlog_level = "warning"\ndata_dir = "{data_dir}"\n\n'
            '[cdn.client_limits]\nenabled = false\n\n'
            f'[[distributions]]\nname = "bench"\norigin = "http://127.0.0.1:{origin_port}"\n\n'
            + (f'[[distributions.behaviours]]\npath_pattern = "*.m4s"\nprefetch = {prefetch}\n\n'
               if prefetch is not None else "")
            + "\n".join(tables))


# --- load generators and their output (parsing is pure) ------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class H2load:
    """h2load's summary: requests/s, the outcome counts, body bytes and request times (ms)."""

    rps: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    data_bytes: int
    protocol: str
    mean_ms: float
    max_ms: float


_H2_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_h2load(text: str) -> H2load:
    """The summary h2load (nghttp2 1.52) prints after a run."""
    m = re.search(r"^finished in [\d.]+m?s, ([\d.]+) req/s", text, re.M)
    if not m:
        raise ValueError(f"no 'finished in' line in h2load's output:\n{text[-2000:]}")
    rps = float(m.group(1))
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", text, re.M)
    if not req:
        raise ValueError(f"no 'requests:' line in h2load's output:\n{text[-2000:]}")
    codes = re.search(r"^status codes: (\d+) 2xx", text, re.M)
    data = re.search(r"^traffic: .*?([\d.]+\w*) \((\d+)\) data\s*$", text, re.M)
    proto = re.search(r"^Application protocol: (\S+)", text, re.M)
    times = re.search(r"^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text, re.M)
    return H2load(
        rps=rps, done=int(req.group(3)), succeeded=int(req.group(4)), failed=int(req.group(5)),
        errored=int(req.group(6)), timeout=int(req.group(7)),
        status_2xx=int(codes.group(1)) if codes else 0, data_bytes=int(data.group(2)) if data else 0,
        protocol=proto.group(1) if proto else "?",
        mean_ms=float(times.group(5)) * _H2_TIME[times.group(6)] if times else math.nan,
        max_ms=float(times.group(3)) * _H2_TIME[times.group(4)] if times else math.nan,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One load run against one server: requests/s, body Gbit/s, errors (any non-2xx, socket
    error or failed stream), p50/p99 latency when the tool gives them (wrk)."""

    rps: float
    gbit_per_s: float
    errors: int
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    # The server's CPU (user + system, /proc) per request answered during the run, in µs: on a
    # shared machine much steadier than requests/s.
    cpu_us: float = math.nan


# --- the servers' processes (/proc) -----------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    return []


def serving_pids(server: str, root: int) -> list[int]:
    """The processes that answer ``server``'s requests, under its root process: our hit POP's
    workers (``headwater node pop``), nginx's workers, Varnish's child (its worker threads)."""
    pids = descendants(root)
    if server == "ours":  # (python -m headwater node pop -c FILE [--worker N])
        return [p for p in pids if cmdline(p)[3:5] == ["node", "pop"]]
    if server == "nginx":
        return [p for p in pids if cmdline(p)[:1] == ["nginx: worker process"]]
    return [p for p in pids if p != root]  # Varnish: the manager's child (cache-main)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (every thread's)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, body_bytes: int, *, threads: int, conns: int, seconds: float) -> Figure:
    """``wrk --latency`` against ``url`` (HTTP/1.1, keep-alive)."""
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency", url],
                       capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise PeerError(f"wrk failed ({r.returncode}): {r.stderr.strip()}")
    w = parse_wrk(r.stdout)
    return Figure(rps=w["rps"], gbit_per_s=w["rps"] * body_bytes * 8 / 1e9, errors=int(w["errors"]),
                  p50_ms=w.get("p50_ms", math.nan), p99_ms=w.get("p99_ms", math.nan))


def run_h2load(url: str, body_bytes: int, *, threads: int, conns: int, streams: int, seconds: float) -> Figure:
    """``h2load`` for ``seconds`` against ``url``: over TLS (ALPN h2) for https://, h2c with prior
    knowledge for http://."""
    argv = ["h2load", f"-t{threads}", f"-c{conns}", f"-m{streams}", "-D", f"{seconds * 1000:.0f}ms",
            "--warm-up-time", "500ms", url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0 and "finished in" not in r.stdout:
        raise PeerError(f"h2load failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")
    h = parse_h2load(r.stdout)
    if h.protocol not in ("h2", "h2c"):
        raise PeerError(f"h2load spoke {h.protocol!r} to {url}, not HTTP/2")
    # Successes per second of the measured period (h2load's req/s counts failed requests too;
    # its status-code counts also include the warm-up, so they are not compared with "done").
    rps = h.rps * (h.succeeded / h.done) if h.done else 0.0
    return Figure(rps=rps, gbit_per_s=rps * body_bytes * 8 / 1e9, errors=h.failed + h.errored + h.timeout)


# --- the Zipf workload (pure) ----------------------------------------------------------------------

def zipf_trace(objects: int, requests: int, *, s: float, rng: random.Random) -> list[int]:
    """``requests`` object indices in 0..objects-1, index i drawn with probability ∝ 1/(i+1)^s."""
    weights = [1.0 / (i + 1) ** s for i in range(objects)]
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    cdf[-1] = 1.0
    return [bisect.bisect_left(cdf, rng.random()) for _ in range(requests)]


def lru_fetches(trace: list[int], *, object_bytes: int, capacity_bytes: int, warm: int = 0,
                entry_overhead: int = 0) -> int:
    """Origin fetches an LRU cache of ``capacity_bytes`` makes over ``trace[warm:]`` after seeing
    ``trace[:warm]`` (every object ``object_bytes``, charged ``entry_overhead`` more, as a store
    charges its metadata and index): the yardstick for a cache of that size."""
    slots = capacity_bytes // (object_bytes + entry_overhead)
    cache: OrderedDict[int, None] = OrderedDict()
    fetches = 0
    for n, key in enumerate(trace):
        if key in cache:
            cache.move_to_end(key)
            continue
        if n >= warm:
            fetches += 1
        if slots:
            cache[key] = None
            if len(cache) > slots:
                cache.popitem(last=False)
    return fetches


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100, nearest rank) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def fetcher_of(line: str) -> str:
    """Which cache made the origin fetch logged as ``VIA|X-VARNISH|URI``: ours (a Via naming
    headwater), nginx (its ``Via: 1.1 nginx``), Varnish (an X-Varnish id), else a direct client."""
    via, _, rest = line.partition("|")
    xvarnish = rest.partition("|")[0]
    if "headwater" in via:
        return "ours"
    if "nginx" in via:
        return "nginx"
    if xvarnish not in ("", "-"):
        return "varnish"
    return "direct"


# --- the segment prefetch workload (pure) ---------------------------------------------------------

# rendition -> segment body bytes (a 2 s segment at roughly 0.8, 2.4 and 6 Mbit/s, scaled down by
# 10: the ratios, not the sizes, are what a byte hit ratio weighs).
RENDITIONS = {"360p": 20 * KiB, "720p": 60 * KiB, "1080p": 150 * KiB}


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """One viewer playing one rendition of a title: the segment numbers it asks for, in order."""

    title: int
    rendition: str
    segments: tuple[int, ...]

    def paths(self) -> list[str]:
        return [segment_path(self.title, self.rendition, n) for n in self.segments]


def segment_path(title: int, rendition: str, n: int) -> str:
    """The origin path of segment ``n`` (zero-padded, as packagers write them)."""
    return f"/p/t{title}/{rendition}/seg-{n:05d}.m4s"


def playback_sessions(count: int, *, titles: int, segments: int, rng: random.Random, s: float = 0.8,
                      start_mid: float = 0.2, seek: float = 0.04, abandon: float = 0.05) -> list[Session]:
    """``count`` viewing sessions: a title drawn by Zipf(``s``) over ``titles``, a rendition at
    random; most start at segment 0 (``start_mid`` of them somewhere inside), then play on one
    segment at a time, after each segment seeking ahead 5-20 segments with probability ``seek``
    (the prefetched ones are wasted) and abandoning with probability ``abandon`` (so are the
    ones prefetched past the last watched); a session ends at the rendition's last segment."""
    picks = zipf_trace(titles, count, s=s, rng=rng)
    out = []
    for title in picks:
        rendition = rng.choice(list(RENDITIONS))
        n = rng.randrange(segments) if rng.random() < start_mid else 0
        played = []
        while n < segments:
            played.append(n)
            if rng.random() < abandon:
                break
            n += rng.randint(5, 20) if rng.random() < seek else 1
        out.append(Session(title=title, rendition=rendition, segments=tuple(played)))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Played:
    """One segment request as its viewer saw it."""

    ms: float
    bytes: int
    hit: bool  # the POP answered from its cache (X-Cache: Hit/RefreshHit/StaleHit from ...)
    status: int


def is_hit(x_cache: str) -> bool:
    """Whether an ``X-Cache`` value says the answering tier had it (``Hit``, ``RefreshHit``,
    ``StaleHit``); a request that joined an in-flight fetch (a prefetch's too) is a ``Miss``."""
    return x_cache.partition(" ")[0] in ("Hit", "RefreshHit", "StaleHit")


def segment_fetches(log_lines: list[str]) -> dict[str, int]:
    """The origin's segment log (``STATUS|BYTES|URI``): fetches, how many were 404s, body bytes."""
    out = {"fetches": 0, "not_found": 0, "bytes": 0}
    for line in log_lines:
        status, _, rest = line.partition("|")
        size = rest.partition("|")[0]
        out["fetches"] += 1
        out["not_found"] += status == "404"
        out["bytes"] += int(size) if size.isdigit() else 0
    return out


def prefetch_summary(played: list[Played]) -> dict[str, float]:
    """Hit ratio by requests and by bytes, and the latency p50/p99 (ms) of what the viewers saw."""
    ok = [p for p in played if p.status == 200]
    total_bytes = sum(p.bytes for p in ok)
    ms = [p.ms for p in played]
    return {"requests": len(played), "errors": len(played) - len(ok),
            "hit_ratio": sum(p.hit for p in ok) / len(ok) if ok else math.nan,
            "byte_hit_ratio": sum(p.bytes for p in ok if p.hit) / total_bytes if total_bytes else math.nan,
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "miss_p50_ms": percentile([p.ms for p in ok if not p.hit], 50)}


# --- the servers -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Stack:
    """Where everything listens once started."""

    origin: int
    direct: int
    memory: int
    fetch_log: Path
    h1: dict[str, int]  # server -> HTTP/1.1 port
    h2c: dict[str, int]  # server -> h2c (prior knowledge) port
    tls: dict[str, int]  # server -> HTTPS port (h2 by ALPN)
    chain_pop: int
    zipf_pop: int
    versions: dict[str, str]
    pids: dict[str, list[int]]  # server -> the processes answering its requests (serving_pids)


def _self_signed(root: Path) -> tuple[Path, Path]:
    cert, key = root / "cert.pem", root / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, text=True)
    if r.returncode != 0:
        raise PeerError(f"openssl could not make a certificate: {r.stderr.strip()}")
    return cert, key


def _version(argv: list[str], pattern: str) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else "?"


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


@contextlib.contextmanager
def start_stack(root: Path, args: argparse.Namespace) -> Iterator[tuple[Stack, ProcessGroup]]:
    """The origin, nginx, Varnish, our two POPs and our three-tier chain, each stopped by PID on
    exit (normal, error or Ctrl-C)."""
    nginx, varnishd = _binary("nginx"), _binary("varnishd")
    assert nginx and varnishd  # checked by main()
    os.chmod(root, 0o755)  # nginx's workers run as nobody and Varnish's child as vcache when we are root
    www = root / "www"
    www.mkdir()
    for name, size in OBJECTS.items():
        (www / name).write_bytes(os.urandom(size))
    (www / "zipf").write_bytes(os.urandom(args.zipf_object_bytes))
    write_segments(www, titles=args.prefetch_titles, segments=args.prefetch_segments)
    cert, key = _self_signed(root)
    (p_origin, p_direct, p_memory, p_nginx, p_nginx_tls, p_nginx_h2c, p_varnish,
     p_pop, p_pop_admin, p_pop_tls, p_zpop, p_zpop_admin, *p_chain) = free_ports(19)
    for sub in ("origin", "nginx", "varnish", "ours", "chain", "logs"):
        (root / sub).mkdir()
    (root / "origin" / "nginx.conf").write_text(origin_nginx_conf(
        root / "origin", www, port=p_origin, direct_port=p_direct, memory_port=p_memory))
    (root / "nginx" / "nginx.conf").write_text(cache_nginx_conf(
        root / "nginx", origin_port=p_origin, port=p_nginx, tls_port=p_nginx_tls, h2c_port=p_nginx_h2c,
        cert=cert, key=key))
    solo = root / "ours" / "cluster.toml"
    solo.write_text(solo_cluster_toml(root / "ours" / "var", origin_port=p_origin, pop=(p_pop, p_pop_admin, p_pop_tls),
                                      cert=cert, key=key, ram=args.ram, zipf_pop=(p_zpop, p_zpop_admin),
                                      zipf_ram=args.zipf_ram, zipf_disk=args.zipf_disk))
    chain = root / "chain" / "cluster.toml"
    chain.write_text(chain_cluster_toml(root / "chain" / "var", origin_port=p_origin, ports=p_chain))
    procs = ProcessGroup(root / "logs")
    with _sigterm_as_interrupt():
        try:
            procs.start("origin", [nginx, "-c", str(root / "origin" / "nginx.conf"), "-p", str(root / "origin")])
            roots = {"nginx": procs.start("nginx", [nginx, "-c", str(root / "nginx" / "nginx.conf"),
                                                   "-p", str(root / "nginx")]).pid,
                     "varnish": procs.start("varnish", varnish_argv(varnishd, root / "varnish", port=p_varnish,
                                                                    origin_port=p_origin)).pid}
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            roots["ours"] = procs.start("ours", [sys.executable, "-m", "headwater", "up", "-c", str(solo)], env=env).pid
            procs.start("chain", [sys.executable, "-m", "headwater", "up", "-c", str(chain)], env=env)
            for port in (p_origin, p_direct, p_memory, p_nginx, p_nginx_tls, p_nginx_h2c, p_varnish,
                         p_pop, p_pop_tls, p_zpop, p_chain[0], p_chain[2], p_chain[4]):
                wait_port(port, procs, 60.0)
            for admin in (p_pop_admin, p_zpop_admin, p_chain[1], p_chain[3], p_chain[5]):
                wait_http(f"http://127.0.0.1:{admin}/healthz", timeout_s=60, procs=procs, ok=lambda s: s == 200)
            versions = {
                "nginx": _version([nginx, "-v"], r"nginx/([\d.]+)"),
                "varnish": _version([varnishd, "-V"], r"varnish-([\d.]+)"),
                "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
                "h2load": _version(["h2load", "--version"], r"nghttp2/([\d.]+)"),
            }
            yield Stack(origin=p_origin, direct=p_direct, memory=p_memory, fetch_log=root / "origin" / "fetches.log",
                        h1={"ours": p_pop, "nginx": p_nginx, "varnish": p_varnish},
                        h2c={"ours": p_pop, "nginx": p_nginx_h2c, "varnish": p_varnish},
                        tls={"ours": p_pop_tls, "nginx": p_nginx_tls},
                        chain_pop=p_chain[0], zipf_pop=p_zpop, versions=versions,
                        pids={name: serving_pids(name, pid) for name, pid in roots.items()}), procs
        finally:
            procs.stop()


@contextlib.contextmanager
def start_origin(root: Path, args: argparse.Namespace) -> Iterator[int]:
    """Only the origin nginx (``--prefetch-only``), with the segments; its port."""
    nginx = _binary("nginx")
    assert nginx  # checked by main()
    os.chmod(root, 0o755)
    www = root / "www"
    www.mkdir()
    write_segments(www, titles=args.prefetch_titles, segments=args.prefetch_segments)
    port, direct, memory = free_ports(3)
    (root / "origin").mkdir()
    (root / "origin" / "nginx.conf").write_text(origin_nginx_conf(
        root / "origin", www, port=port, direct_port=direct, memory_port=memory))
    procs = ProcessGroup(root / "origin")
    with _sigterm_as_interrupt():
        try:
            procs.start("origin", [nginx, "-c", str(root / "origin" / "nginx.conf"), "-p", str(root / "origin")])
            wait_port(port, procs, 60.0)
            yield port
        finally:
            procs.stop()


# --- small HTTP client (warming, latency, Zipf) ----------------------------------------------------

def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, int, dict[str, str]]:
    conn.request("GET", path)  # Host: 127.0.0.1:PORT, as wrk and h2load send (Varnish keys on it)
    r = conn.getresponse()
    body = r.read()
    return r.status, len(body), {k.lower(): v for k, v in r.getheaders()}


def fetch_counts(log: Path) -> dict[str, int]:
    """Origin fetches so far, by fetcher."""
    counts = {name: 0 for name in (*SERVERS, "direct")}
    with contextlib.suppress(FileNotFoundError):
        for line in log.read_text().splitlines():
            counts[fetcher_of(line)] += 1
    return counts


def warm(stack: Stack) -> None:
    """Fetch every object twice through every cache, checking what comes back."""
    for server, port in stack.h1.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for name, size in OBJECTS.items():
                for _ in range(2):
                    status, got, _ = _get(conn, f"/{name}")
                    if status != 200 or got != size:
                        raise PeerError(f"{server}: GET /{name} gave {status} with {got} bytes (want 200, {size})")
        finally:
            conn.close()


def cold_latencies(port: int, prefix: str, count: int) -> list[float]:
    """Milliseconds to fetch ``count`` never-seen objects, one at a time on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        _get(conn, "/1k")  # the connection, not the first miss, pays the handshake
        for i in range(count):
            t0 = time.perf_counter()
            status, got, _ = _get(conn, f"/cold/{prefix}-{i}")
            out.append((time.perf_counter() - t0) * 1e3)
            if status != 200 or got != OBJECTS["1k"]:
                raise PeerError(f"cold fetch {prefix}-{i} on port {port}: {status}, {got} bytes")
    finally:
        conn.close()
    return out


def drive_trace(port: int, paths: list[str], clients: int) -> tuple[int, float]:
    """GET every path of ``paths`` over ``clients`` keep-alive connections (each its own slice,
    in order); (non-200 answers, seconds)."""
    errors = [0] * clients

    def one(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for path in paths[k::clients]:
                if _get(conn, path)[0] != 200:
                    errors[k] += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(errors), time.perf_counter() - t0


# --- segment prefetch: POP -> regional -> shield -> origin, off then on ----------------------------

def write_segments(www: Path, *, titles: int, segments: int) -> None:
    """Every title's renditions as ``segments`` files each under ``www/p`` (hard links to one
    random body per rendition: the origin serves them as static files, 404 past the last)."""
    bodies = www / "p-bodies"
    bodies.mkdir()
    for rendition, size in RENDITIONS.items():
        (bodies / rendition).write_bytes(os.urandom(size))
    for title in range(titles):
        for rendition in RENDITIONS:
            folder = www / "p" / f"t{title}" / rendition
            folder.mkdir(parents=True)
            for n in range(segments):
                os.link(bodies / rendition, www / segment_path(title, rendition, n).lstrip("/"))


def play(port: int, sessions: list[Session], *, viewers: int, think_s: float) -> list[Played]:
    """``viewers`` players at once, each playing its share of ``sessions`` (``sessions[k::viewers]``)
    back to back on its own keep-alive connection, ``think_s`` between a segment's arrival and the
    next request (a player's buffer filling, scaled down); starts staggered over one think time."""
    results: list[list[Played]] = [[] for _ in range(viewers)]
    failures: list[BaseException] = []

    def one(k: int) -> None:
        time.sleep(think_s * k / viewers)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for session in sessions[k::viewers]:
                for path in session.paths():
                    t0 = time.perf_counter()
                    status, got, headers = _get(conn, path)
                    results[k].append(Played(ms=(time.perf_counter() - t0) * 1e3, bytes=got, status=status,
                                             hit=is_hit(headers.get("x-cache", ""))))
                    time.sleep(think_s)
        except BaseException as e:  # reported by the caller: a silent thread would shrink the sample
            failures.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(viewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise PeerError(f"a viewer failed: {failures[0]!r}")
    return [p for r in results for p in r]


# A tier's /healthz counts of the requests it answered (the refused never reached its cache).
_ANSWERED = ("hits", "misses", "refresh_hits", "stale", "errors")


def _health(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=10) as r:
        return json.loads(r.read())


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchRun:
    """One pass of the sessions through a fresh chain: what the viewers saw
    (:func:`prefetch_summary`), what the tiers above the POP were asked, and the POP's
    ``/healthz`` prefetch figures (empty with prefetch off)."""

    requests: int
    errors: int
    hit_ratio: float
    byte_hit_ratio: float
    p50_ms: float
    p99_ms: float
    miss_p50_ms: float
    seconds: float
    regional_fetches: int  # requests the regional answered: the POP's fetches, prefetches included
    origin_fetches: int
    origin_not_found: int  # 404s past a rendition's end (a prefetch run ends at the first)
    origin_bytes: int
    pop_prefetch: dict[str, Any]
    # Distinct segments the sessions ask for: an endless cache without prefetch fetches each
    # once, so 1 - distinct / requests is the off run's ceiling (requests joining a fetch in
    # flight count as misses at the viewer, so it sits a little under).
    distinct_segments: int

    def per_1000(self, count: int) -> float:
        return count / self.requests * 1000 if self.requests else math.nan


def measure_prefetch(root: Path, origin_port: int, segment_log: Path,
                     args: argparse.Namespace) -> dict[str, PrefetchRun]:
    """The same viewing sessions through a fresh POP -> regional -> shield chain with prefetch
    off, then through another with ``prefetch = --prefetch-depth``: ``{"off": ..., "on": ...}``."""
    sessions = playback_sessions(args.prefetch_sessions, titles=args.prefetch_titles, segments=args.prefetch_segments,
                                 rng=random.Random(args.prefetch_seed))
    out: dict[str, PrefetchRun] = {}
    for label, depth in (("off", 0), ("on", args.prefetch_depth)):
        ports = free_ports(6)
        folder = root / f"prefetch-{label}"
        folder.mkdir()
        toml = folder / "cluster.toml"
        toml.write_text(chain_cluster_toml(folder / "var", origin_port=origin_port, ports=ports, prefetch=depth))
        procs = ProcessGroup(folder)
        try:
            procs.start("chain", [sys.executable, "-m", "headwater", "up", "-c", str(toml)],
                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
            for admin in ports[1::2]:
                wait_http(f"http://127.0.0.1:{admin}/healthz", timeout_s=60, procs=procs, ok=lambda s: s == 200)
            before = len(segment_log.read_text().splitlines()) if segment_log.exists() else 0
            _log(f"  prefetch {label}: {len(sessions)} sessions, {sum(len(x.segments) for x in sessions)} segment "
                 f"requests, {args.prefetch_viewers} viewers at once, {args.prefetch_think * 1e3:.0f} ms think time")
            t0 = time.perf_counter()
            played = play(ports[0], sessions, viewers=args.prefetch_viewers, think_s=args.prefetch_think)
            secs = time.perf_counter() - t0
            # Runs still fetching are part of what prefetching cost: let them end before counting.
            deadline = time.monotonic() + 30
            while depth and time.monotonic() < deadline and _health(ports[1]).get("prefetch", {}).get("running"):
                time.sleep(0.2)
            pop, regional = _health(ports[1]), _health(ports[3])
            procs.check_alive()
        finally:
            procs.stop()
        origin = segment_fetches(segment_log.read_text().splitlines()[before:] if segment_log.exists() else [])
        out[label] = PrefetchRun(
            **prefetch_summary(played), seconds=secs,
            regional_fetches=sum(int(regional.get(k, 0)) for k in _ANSWERED),
            origin_fetches=origin["fetches"], origin_not_found=origin["not_found"], origin_bytes=origin["bytes"],
            pop_prefetch={k: v for k, v in pop.get("prefetch", {}).items() if k != "running"},
            distinct_segments=len({path for x in sessions for path in x.paths()}))
    return out


def render_prefetch(result: dict[str, PrefetchRun], args: argparse.Namespace) -> list[str]:
    """Off against on: hit ratios, the fetches each tier above the POP made per 1,000 viewer
    requests, the viewers' latency, and what the POP counted of its prefetches."""
    off, on = result["off"], result["on"]
    head = f"{'segment prefetch':<44}{'off':>10}{'on':>10}{'on - off':>10}"
    sizes = ", ".join(f"{r} {b // KiB} KiB" for r, b in RENDITIONS.items())
    lines = [f"segment prefetch: {args.prefetch_sessions} sessions ({off.requests:,} segment requests) over "
             f"{args.prefetch_titles} titles x {len(RENDITIONS)} renditions x {args.prefetch_segments} segments "
             f"({sizes}), {args.prefetch_viewers} viewers at once, {args.prefetch_think * 1e3:.0f} ms think time, "
             f"seed {args.prefetch_seed}; POP -> regional -> shield -> origin, fresh caches each run; "
             f"on = prefetch {args.prefetch_depth}", head, "-" * len(head)]
    rows: list[tuple[str, Callable[[PrefetchRun], float], str]] = [
        ("POP hit ratio, requests (%)", lambda r: r.hit_ratio * 100, "{:.1f}"),
        ("POP hit ratio, bytes (%)", lambda r: r.byte_hit_ratio * 100, "{:.1f}"),
        ("regional fetches / 1,000 requests", lambda r: r.per_1000(r.regional_fetches), "{:.0f}"),
        ("origin fetches / 1,000 requests", lambda r: r.per_1000(r.origin_fetches), "{:.0f}"),
        ("  of which 404 past a rendition's end", lambda r: r.per_1000(r.origin_not_found), "{:.0f}"),
        ("origin MiB fetched", lambda r: r.origin_bytes / MiB, "{:.1f}"),
        ("viewer latency p50 (ms)", lambda r: r.p50_ms, "{:.1f}"),
        ("viewer latency p99 (ms)", lambda r: r.p99_ms, "{:.1f}"),
        ("viewer latency p50 of POP misses (ms)", lambda r: r.miss_p50_ms, "{:.1f}"),
        ("errors (non-200 answers)", lambda r: r.errors, "{:.0f}"),
    ]
    for label, get, fmt in rows:
        a, b = get(off), get(on)
        delta = ("+" if b >= a else "") + fmt.format(b - a)
        lines.append(f"{label:<44}{fmt.format(a):>10}{fmt.format(b):>10}{delta:>10}")
    counted = ", ".join(f"{k.removeprefix('prefetch_')} {v}" for k, v in on.pop_prefetch.items())
    ceiling = 1 - off.distinct_segments / off.requests if off.requests else math.nan
    lines += [f"  ceiling without prefetch (an endless cache, each distinct segment fetched once): hit ratio "
              f"{ceiling * 100:.1f} %, {off.per_1000(off.distinct_segments):.0f} fetches / 1,000 requests",
              f"  the POP's /healthz with prefetch on: {counted}",
              f"  run time off {off.seconds:.0f} s, on {on.seconds:.0f} s"]
    return lines


# --- the run -----------------------------------------------------------------------------------------

def _fmt(fig: Figure | None, name: str) -> str:
    if fig is None:
        return "-"
    if name == "1k":
        return f"{fig.rps / 1e3:.1f} k/s"
    return f"{fig.gbit_per_s:.2f} Gb/s"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_hits(stack: Stack, args: argparse.Namespace) -> dict[str, dict[str, dict[str, list[Figure]]]]:
    """proto -> object -> server -> one Figure per round (``--protos`` x ``--objects``)."""
    every: dict[str, dict[str, int]] = {"h1": stack.h1, "h2-tls": stack.tls, "h2c": stack.h2c}
    protos = {p: every[p] for p in args.protos}
    objects = {o: OBJECTS[o] for o in args.objects}
    out: dict[str, dict[str, dict[str, list[Figure]]]] = {
        p: {o: {s: [] for s in ports} for o in objects} for p, ports in protos.items()}
    for rnd in range(args.rounds):
        for proto, ports in protos.items():
            for name, size in objects.items():
                order = list(ports)
                shift = rnd % len(order)
                for server in order[shift:] + order[:shift]:
                    scheme = "https" if proto == "h2-tls" else "http"
                    url = f"{scheme}://127.0.0.1:{ports[server]}/{name}"
                    cpu0 = cpu_seconds(stack.pids[server])
                    if proto == "h1":
                        fig = run_wrk(url, size, threads=args.threads, conns=args.conns, seconds=args.seconds)
                        answered = fig.rps * args.seconds
                    else:
                        # One stream per connection for 2 MiB: 32 x 8 x 2 MiB in flight would
                        # leave most streams unfinished within a few seconds on a slow server.
                        streams = args.h2_streams if size <= 100 * KiB else 1
                        fig = run_h2load(url, size, threads=args.threads, conns=args.h2_conns,
                                         streams=streams, seconds=args.seconds)
                        answered = fig.rps * (args.seconds + 0.5)  # (the CPU includes h2load's warm-up)
                    if answered:
                        fig = dataclasses.replace(fig, cpu_us=(cpu_seconds(stack.pids[server]) - cpu0) / answered * 1e6)
                    out[proto][name][server].append(fig)
                    _log(f"  round {rnd + 1} {proto:<6} {LABEL[name]:>7} {server:<7} {fig.rps / 1e3:8.1f} k req/s "
                         f"{fig.gbit_per_s:6.2f} Gbit/s  {fig.cpu_us:7.1f} µs CPU/req  errors {fig.errors}")
    return out


def _ratio(figs: dict[str, list[Figure]], peer: str) -> float | None:
    if peer not in figs or not figs[peer] or not figs["ours"]:
        return None
    pairs = [o.rps / p.rps for o, p in zip(figs["ours"], figs[peer]) if p.rps > 0]
    return statistics.median(pairs) if pairs else None


def _median_fig(figs: list[Figure]) -> Figure | None:
    return sorted(figs, key=lambda f: f.rps)[len(figs) // 2] if figs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m headwater.bench edge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s per point, one round, fewer Zipf requests")
    ap.add_argument("--seconds", type=float, default=5.0, help="per load point")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="wrk/h2load threads")
    ap.add_argument("--conns", type=int, default=64, help="wrk connections")
    ap.add_argument("--h2-conns", type=int, default=32)
    ap.add_argument("--h2-streams", type=int, default=8, help="h2load concurrent streams per connection")
    ap.add_argument("--ram", default="256MiB", help="our hit POP's RAM tier")
    ap.add_argument("--cold", type=int, default=200, help="cold fetches per miss-latency row")
    ap.add_argument("--zipf-objects", type=int, default=10_000)
    ap.add_argument("--zipf-object-bytes", type=int, default=8 * KiB)
    ap.add_argument("--zipf-s", type=float, default=0.9, help="the Zipf exponent")
    ap.add_argument("--zipf-warm", type=int, default=10_000, help="requests before counting")
    ap.add_argument("--zipf-requests", type=int, default=10_000, help="requests counted")
    ap.add_argument("--zipf-ram", default="8MiB")
    ap.add_argument("--zipf-disk", default="16MiB")
    ap.add_argument("--zipf-clients", type=int, default=8)
    ap.add_argument("--prefetch-sessions", type=int, default=128, help="viewing sessions (segment prefetch)")
    ap.add_argument("--prefetch-viewers", type=int, default=16, help="sessions played at once")
    ap.add_argument("--prefetch-think", type=float, default=0.15, help="seconds between a segment and the next request")
    ap.add_argument("--prefetch-titles", type=int, default=8)
    ap.add_argument("--prefetch-segments", type=int, default=60, help="segments per rendition")
    ap.add_argument("--prefetch-depth", type=int, default=3, help="prefetch = N in the 'on' run")
    ap.add_argument("--prefetch-seed", type=int, default=11)
    ap.add_argument("--prefetch-only", action="store_true",
                    help="only the segment prefetch scenario (prefetch off, then on): no other server than the "
                         "origin nginx and two POP -> regional -> shield chains")
    ap.add_argument("--protos", default="h1,h2-tls,h2c", type=lambda v: _choices(v, ("h1", "h2-tls", "h2c")),
                    help="the hit rows' protocols (comma-separated: h1, h2-tls, h2c)")
    ap.add_argument("--objects", default=",".join(OBJECTS), type=lambda v: _choices(v, tuple(OBJECTS)),
                    help="the hit rows' objects (comma-separated: 1k, 100k, 2m)")
    ap.add_argument("--hits-only", action="store_true",
                    help="only the hit table: no ceilings, miss latency or Zipf (e.g. --hits-only --protos h1 "
                         "--objects 1k: the 1 KiB HTTP/1.1 hits in under a minute)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.cold = 2.0, 1, 100
        args.zipf_warm, args.zipf_requests = 5_000, 5_000
        args.prefetch_sessions, args.prefetch_viewers, args.prefetch_think = 48, 12, 0.1
    needed = ("nginx",) if args.prefetch_only else ("nginx", "varnishd", "wrk", "h2load", "openssl")
    missing = [name for name in needed if _binary(name) is None]
    if missing:
        _log(f"missing {' '.join(missing)}: run scripts/install-bench-deps.sh (make bench does)")
        return 2
    if args.prefetch_only:
        with tempfile.TemporaryDirectory(prefix="hw-edge-bench-") as tmp, start_origin(Path(tmp), args) as origin:
            _log(f"edge bench, segment prefetch only; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
            prefetch = measure_prefetch(Path(tmp), origin, Path(tmp) / "origin" / "segments.log", args)
        print("\n".join(render_prefetch(prefetch, args)
                        + [f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"]))
        if args.json:
            only = {"args": vars(args), "prefetch": {k: asdict(v) for k, v in prefetch.items()}}
            Path(args.json).write_text(json.dumps(only, indent=2, default=str))
        return 0
    from headwater.config import parse_size

    zipf_budget = parse_size(args.zipf_ram, "--zipf-ram") + parse_size(args.zipf_disk, "--zipf-disk")
    report: dict[str, object] = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="hw-edge-bench-") as tmp, start_stack(Path(tmp), args) as (stack, procs):
        _log(f"edge bench: nginx {stack.versions['nginx']}, Varnish {stack.versions['varnish']}, "
             f"wrk {stack.versions['wrk']}, h2load {stack.versions['h2load']}; {os.cpu_count()} CPUs, "
             f"load average {os.getloadavg()[0]:.1f}")
        warm(stack)
        before = fetch_counts(stack.fetch_log)
        hits = measure_hits(stack, args)
        after = fetch_counts(stack.fetch_log)
        procs.check_alive()
        measured_fetches = {s: after[s] - before[s] for s in SERVERS}
        if args.hits_only:
            print("\n".join(render_hits(stack, hits, None, None, None, args, measured_fetches=measured_fetches)
                            + [f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"]))
            if args.json:
                report.update({"versions": stack.versions, "serving_processes": stack.pids,
                               "hits": _hits_json(hits)})
                Path(args.json).write_text(json.dumps(report, indent=2, default=str))
            return 0
        # Ceilings: the origin nginx serving each file itself, 1 KiB from memory, loopback TCP.
        direct = {name: run_wrk(f"http://127.0.0.1:{stack.direct}/{name}", size, threads=args.threads,
                                conns=args.conns, seconds=args.seconds) for name, size in OBJECTS.items()}
        memory = run_wrk(f"http://127.0.0.1:{stack.memory}/", OBJECTS["1k"], threads=args.threads,
                         conns=args.conns, seconds=args.seconds)
        _log("  ceilings measured; miss latency next")
        # Miss latency: origin direct, one tier (ours, nginx, Varnish), three tiers (ours).
        miss_ports = {"origin direct": stack.origin, "ours, one POP": stack.h1["ours"],
                      "ours, POP -> regional -> shield": stack.chain_pop, "nginx proxy_cache": stack.h1["nginx"],
                      "varnish": stack.h1["varnish"]}
        misses = {label: cold_latencies(port, f"{i}", args.cold) for i, (label, port) in enumerate(miss_ports.items())}
        # Zipf: one POP (RAM + disk < working set), then Varnish with a malloc store of the same bytes.
        rng = random.Random(10)
        trace = zipf_trace(args.zipf_objects, args.zipf_warm + args.zipf_requests, s=args.zipf_s, rng=rng)
        paths = [f"/z/{i}" for i in trace]
        zipf: dict[str, dict[str, float]] = {}
        _log(f"  Zipf: {len(paths)} requests over {args.zipf_objects} objects of {args.zipf_object_bytes} B")
        targets = [("ours", stack.zipf_pop, None)]
        targets.append(("varnish", 0, zipf_budget))
        for name, port, malloc in targets:
            with contextlib.ExitStack() as extra:
                if malloc is not None:
                    port = free_ports(1)[0]
                    vdir = Path(tmp) / "varnish-zipf"
                    zprocs = ProcessGroup(Path(tmp) / "logs")
                    extra.callback(zprocs.stop)
                    zprocs.start("varnish-zipf", varnish_argv(_binary("varnishd") or "varnishd", vdir, port=port,
                                                              origin_port=stack.origin, malloc=str(malloc)))
                    wait_port(port, zprocs, 60.0)
                errs_w, _ = drive_trace(port, paths[:args.zipf_warm], args.zipf_clients)
                c0 = fetch_counts(stack.fetch_log)[name]
                errs_m, secs = drive_trace(port, paths[args.zipf_warm:], args.zipf_clients)
                fetched = fetch_counts(stack.fetch_log)[name] - c0
            zipf[name] = {"fetches": fetched, "per_1000": fetched / args.zipf_requests * 1000,
                          "errors": errs_w + errs_m, "req_per_s": args.zipf_requests / secs}
        for label, capacity in (("LRU, RAM tier's bytes", parse_size(args.zipf_ram, "--zipf-ram")),
                                ("LRU, RAM + disk tiers' bytes", zipf_budget)):
            f = lru_fetches(trace, object_bytes=args.zipf_object_bytes, capacity_bytes=capacity, warm=args.zipf_warm)
            zipf[label] = {"fetches": f, "per_1000": f / args.zipf_requests * 1000}
        # The same budget charged as our disk tier charges an entry (its index and metadata, in
        # whole pages): what LRU would do holding as many objects as our tiers can.
        f = lru_fetches(trace, object_bytes=args.zipf_object_bytes, capacity_bytes=zipf_budget, warm=args.zipf_warm,
                        entry_overhead=DISK_ENTRY_OVERHEAD_BYTES)
        zipf["LRU, RAM + disk tiers' bytes, each entry charged as our disk tier's"] = {
            "fetches": f, "per_1000": f / args.zipf_requests * 1000}
        prefetch = measure_prefetch(Path(tmp), stack.origin, Path(tmp) / "origin" / "segments.log", args)
        load_avg = os.getloadavg()[0]
    loopback = _ceilings.loopback_tcp(seconds=min(args.seconds, 3.0), port=free_ports(1)[0])

    lines = render(stack, hits, direct, memory, loopback, misses, zipf, args,
                   measured_fetches=measured_fetches, load_avg=load_avg)
    lines[-1:-1] = ["", *render_prefetch(prefetch, args)]
    print("\n".join(lines))
    if args.json:
        report.update({
            "versions": stack.versions,
            "serving_processes": stack.pids,
            "hits": _hits_json(hits),
            "ceilings": {"nginx_direct": {o: asdict(f) for o, f in direct.items()}, "nginx_memory_1k": asdict(memory),
                         "loopback_gbit_per_s": loopback.value * 8, "loopback_how": loopback.how},
            "miss_ms": {k: {"p50": percentile(v, 50), "p99": percentile(v, 99), "all": v} for k, v in misses.items()},
            "zipf": zipf,
            "prefetch": {k: asdict(v) for k, v in prefetch.items()},
        })
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


def _choices(value: str, allowed: tuple[str, ...]) -> list[str]:
    picked = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in picked if v not in allowed]
    if bad or not picked:
        raise argparse.ArgumentTypeError(f"{value!r}: pick from {', '.join(allowed)}")
    return picked


def _hits_json(hits: dict[str, dict[str, dict[str, list[Figure]]]]) -> dict[str, object]:
    return {p: {o: {s: [asdict(f) for f in figs] for s, figs in by.items()} for o, by in objs.items()}
            for p, objs in hits.items()}


def _processes_line(stack: Stack) -> str:
    """How many processes answer for each server, read from /proc (the comparison is one worker
    process each: our POP runs ``workers = 1``, nginx ``worker_processes 1``; Varnish is one child
    process whose thread pool can use every CPU)."""
    n = {s: len(p) for s, p in stack.pids.items()}
    return (f"serving processes: ours {n.get('ours', 0)} (POP workers = 1), nginx {n.get('nginx', 0)} "
            f"(worker_processes 1), varnish {n.get('varnish', 0)} (one child, a thread pool: may use every CPU)")


def _cpu_ratio(figs: dict[str, list[Figure]], peer: str) -> float | None:
    """Our CPU per request over the peer's (median of the rounds): >1 = we spend more."""
    if peer not in figs or not figs[peer] or not figs["ours"]:
        return None
    pairs = [o.cpu_us / p.cpu_us for o, p in zip(figs["ours"], figs[peer]) if p.cpu_us > 0 and o.cpu_us == o.cpu_us]
    return statistics.median(pairs) if pairs else None


def render_hits(stack: Stack, hits: dict[str, dict[str, dict[str, list[Figure]]]], direct: dict[str, Figure] | None,
                memory: Figure | None, loopback: _ceilings.Ceiling | None, args: argparse.Namespace, *,
                measured_fetches: dict[str, int]) -> list[str]:
    """The hit table (ratios, goals and, when measured, the ceilings) and the CPU per request."""
    proto_label = {"h1": "HTTP/1.1", "h2-tls": "h2 TLS", "h2c": "h2c"}
    head = (f"{'cache hits':<18}{'ours':>12}{'nginx':>12}{'varnish':>12}{'ours/nginx':>12}{'ours/varnish':>14}"
            f"   {'goal':<20}ceiling (same run)")
    lines = [f"edge cache hits, one worker each; HTTP/1.1: wrk -t{args.threads} -c{args.conns}; HTTP/2: h2load "
             f"-t{args.threads} -c{args.h2_conns} -m{args.h2_streams} (-m1 for 2 MiB); {args.seconds:g} s per point, "
             f"{args.rounds} round(s); nginx {stack.versions['nginx']}, Varnish {stack.versions['varnish']}",
             _processes_line(stack), head, "-" * len(head)]
    loop_gbit = loopback.value * 8 if loopback is not None else math.nan
    for proto, objs in hits.items():
        for name, figs in objs.items():
            med = {s: _median_fig(f) for s, f in figs.items()}
            rn, rv = _ratio(figs, "nginx"), _ratio(figs, "varnish")
            goal = GOALS.get((name, "nginx"))
            goal_text = ""
            if goal is not None and rn is not None:
                goal_text = f"≥{goal:.1f}x nginx {'met' if rn >= goal else 'MISSED'}"
            if direct is None or memory is None:
                ceiling = "(not measured)"
            elif name == "1k":
                ceiling = f"nginx direct {direct[name].rps / 1e3:.1f} k/s, from memory {memory.rps / 1e3:.1f} k/s"
            else:
                ceiling = f"nginx direct {direct[name].gbit_per_s:.2f} Gb/s, loopback {loop_gbit:.1f} Gb/s"
            if proto != "h1" and direct is not None:
                ceiling = "(HTTP/1.1 ceilings above)" if name == "1k" else ""
            row = f"{proto_label[proto]} {LABEL[name]}"
            lines.append(f"{row:<18}{_fmt(med.get('ours'), name):>12}{_fmt(med.get('nginx'), name):>12}"
                         f"{_fmt(med.get('varnish'), name) if 'varnish' in figs else 'no TLS':>12}"
                         f"{f'{rn:.2f}x' if rn is not None else '-':>12}"
                         f"{f'{rv:.2f}x' if rv is not None else '-':>14}   {goal_text:<20}{ceiling}")
    errors = {s: sum(f.errors for objs in hits.values() for figs in objs.values() for f in figs.get(s, []))
              for s in SERVERS}
    lines += [
        "  1 KiB rows in requests/s, larger objects in body Gbit/s (a ratio is the same in either unit);",
        f"  ratio = median of the per-round ratios; load errors: {', '.join(f'{s} {n}' for s, n in errors.items())};",
        "  origin fetches during the measured runs (0 = every measured request was a hit): "
        + ", ".join(f"{s} {n}" for s, n in measured_fetches.items()) + ";",
        "  Varnish has no TLS (it is run behind a TLS terminator such as hitch): no h2 TLS column;"
        " its h2c is -p feature=+http2.",
        "",
        "server CPU per request answered (µs, user + system of the serving processes, /proc; median of the rounds):",
        f"{'cache hits':<18}{'ours':>10}{'nginx':>10}{'varnish':>10}{'ours/nginx':>12}{'ours/varnish':>14}",
    ]
    for proto, objs in hits.items():
        for name, figs in objs.items():
            med = {s: statistics.median([f.cpu_us for f in fs]) if fs else math.nan for s, fs in figs.items()}
            rn, rv = _cpu_ratio(figs, "nginx"), _cpu_ratio(figs, "varnish")
            lines.append(f"{proto_label[proto] + ' ' + LABEL[name]:<18}{med.get('ours', math.nan):>10.1f}"
                         f"{med.get('nginx', math.nan):>10.1f}{med.get('varnish', math.nan):>10.1f}"
                         f"{f'{rn:.2f}x' if rn is not None else '-':>12}{f'{rv:.2f}x' if rv is not None else '-':>14}")
    return lines


def render(stack: Stack, hits: dict[str, dict[str, dict[str, list[Figure]]]], direct: dict[str, Figure],
           memory: Figure, loopback: _ceilings.Ceiling, misses: dict[str, list[float]],
           zipf: dict[str, dict[str, float]], args: argparse.Namespace, *, measured_fetches: dict[str, int],
           load_avg: float) -> list[str]:
    """The report: the hit table with ratios, goals and ceilings, then misses and Zipf."""
    lines = render_hits(stack, hits, direct, memory, loopback, args, measured_fetches=measured_fetches)
    lines += [
        "",
        f"miss latency, {args.cold} cold 1 KiB objects one at a time on one keep-alive connection (ms):",
        f"{'path':<36}{'p50':>8}{'p99':>8}",
    ]
    for label, values in misses.items():
        lines.append(f"{label:<36}{percentile(values, 50):8.2f}{percentile(values, 99):8.2f}")
    lines += ["", f"Zipf (s={args.zipf_s:g}) over {args.zipf_objects:,} objects of {args.zipf_object_bytes // KiB} KiB "
                  f"({args.zipf_objects * args.zipf_object_bytes / MiB:.0f} MiB working set), {args.zipf_warm:,} "
                  f"requests to warm then {args.zipf_requests:,} counted, {args.zipf_clients} clients:",
              f"{'cache':<40}{'origin fetches / 1,000 requests':>32}"]
    for label, z in zipf.items():
        shown = {"ours": f"ours: one POP, RAM {args.zipf_ram} + disk {args.zipf_disk}",
                 "varnish": "varnish, malloc of RAM + disk bytes"}.get(label, label)
        extra = f"   ({z['req_per_s']:.0f} req/s, {z['errors']:.0f} errors)" if "req_per_s" in z else ""
        lines.append(f"{shown:<40}{z['per_1000']:>32.1f}{extra}")
    lines.append(f"  load average {load_avg:.1f} on {os.cpu_count()} CPUs, shared with the load generators "
                 "and other tenants: read the ratios, not the absolute numbers")
    return lines


if __name__ == "__main__":
    sys.exit(main())
