"""`python -m headwater.bench dns`: the GeoDNS against Knot DNS, driven by dnsperf.

One zone, ``cdn.headwater.test.``, of the same size for both: SOA, NS, ``ns1``, the steered name
``video`` (ours steers it among stand-in POPs; Knot serves it as a plain A record), ``www`` a
CNAME to it, and ``--names`` static A records ``h00000``... Knot reads it as a zone file with a
generated knot.conf (``udp-workers`` = the worker count, on 127.0.0.1 on a free port); ours gets
a generated cluster.toml (``[dns] workers`` = the same count, ``[dns.rrl] enabled = false``: one
load generator on 127.0.0.1 is one /24, which RRL exists to limit) and is started as
``python -m headwater up -c FILE``.

The queries, identical for both: a dnsperf binary data file (``-B``: length-prefixed wire
messages, so every query carries its own EDNS options; dnsperf's ``-E`` would put one option on
every query) mixing ``--ecs-share`` (half) steered ``video A`` queries with an EDNS Client Subnet
option (RFC 7871, option code 8) from ``--subnets`` random public /24s, and plain ``A`` queries
without EDNS for random static names (``www`` among them).

For each worker count (``--workers 1,2``), one server at a time: peak queries/s (``dnsperf -l
SECONDS -c CLIENTS -q OUTSTANDING``), then the p99 latency at half of *our* peak rate (``-Q``
caps the rate; dnsperf 2.10 prints only the mean and deviation, so ``-v`` makes it print each
response's latency and the percentile is computed here, a lost query counting as slower than
any answer) for ours and for Knot at that same offered rate. The ratio is ours / Knot's q/s;
the goal (reported, never asserted) is ≥ 0.25x.

The machine's ceilings in the same run: dnsperf against Knot with ``udp-workers`` = every CPU,
and against a bare uvloop UDP responder (echoes each query with QR set: the floor under any
Python DNS server, one process). dnsperf runs with one thread and competes with the servers for
this machine's CPUs: read the ratios, not the absolute numbers. Nothing is installed here:
``scripts/install-bench-deps.sh`` (``make bench``) installs Debian ``knot`` and ``dnsperf``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import ipaddress
import json
import math
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .peers import PeerError, ProcessGroup, free_ports

__all__ = [
    "main", "ZoneSpec", "knot_zone", "knot_conf", "headwater_cluster_toml", "query_file",
    "Dnsperf", "parse_dnsperf", "latencies_from_verbose", "percentile", "DnsServer",
    "start_ours", "start_knot",
]

ZONE = "cdn.headwater.test."
GOAL = 0.25
ECS_OPTION = 8  # RFC 7871


# --- the zone, the configs and the queries ----------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ZoneSpec:
    """The benchmark zone: ``names`` static A records plus the steered name and its CNAME."""

    names: int = 1000
    zone: str = ZONE
    steered: str = "video"
    pops: tuple[tuple[str, str, float, float], ...] = (  # name, address, lat, lon
        ("pop-lon", "127.0.0.11", 51.5, -0.12),
        ("pop-nyc", "127.0.0.12", 40.7, -74.0),
        ("pop-sin", "127.0.0.13", 1.35, 103.8),
        ("pop-sao", "127.0.0.14", -23.5, -46.6),
    )

    def static(self) -> list[tuple[str, str, str]]:
        """(name, type, value) of every static record below the apex."""
        rows = [("ns1", "A", "127.0.0.1"), ("www", "CNAME", self.steered)]
        rows += [(f"h{i:05d}", "A", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
                 for i in range(self.names)]
        return rows


def knot_zone(spec: ZoneSpec) -> str:
    """The zone as an RFC 1035 master file for Knot; ``video`` is a plain A (the first POP)."""
    lines = [f"$ORIGIN {spec.zone}", "$TTL 300",
             "@ SOA ns1 hostmaster 1 3600 600 86400 60", "@ NS ns1",
             f"{spec.steered} 30 A {spec.pops[0][1]}"]
    lines += [f"{name} {rtype} {value}" for name, rtype, value in spec.static()]
    return "\n".join(lines) + "\n"


def knot_conf(root: Path, port: int, workers: int) -> str:
    """knot.conf serving the zone file ``root/zone`` on 127.0.0.1@port with ``workers`` UDP
    workers; everything (pid, database, journal) under ``root``, logs to stderr."""
    return f"""\
server:
    rundir: {root}
    pidfile: {root}/knot.pid
    listen: 127.0.0.1@{port}
    udp-workers: {workers}
    tcp-workers: 1
    background-workers: 1
database:
    storage: {root}/db
log:
  - target: stderr
    any: warning
zone:
  - domain: {ZONE}
    file: {root}/zone
    journal-content: none
    zonefile-sync: -1
"""


def headwater_cluster_toml(spec: ZoneSpec, *, port: int, admin_port: int, workers: int,
                           healthz: str, data_dir: Path) -> str:
    """cluster.toml for our GeoDNS alone (the shape of ``docs``/dns-interfaces: ``[dns]``,
    ``[[dns.records]]``, ``[[dns.steered]]``, ``[[dns.pops]]``), RRL off."""
    out = [
        "[cluster]", 'name = "bench-dns"', 'log_level = "warning"', f'data_dir = "{data_dir}"', "",
        "[dns]", 'id = "dns-1"', 'host = "127.0.0.1"', f"port = {port}", f"admin_port = {admin_port}",
        f"workers = {workers}", f'zone = "{spec.zone}"', "ttl = 300", "steered_ttl = 30",
        "negative_ttl = 60", "",
    ]
    for name, rtype, value in spec.static():
        out += ["[[dns.records]]", f'name = "{name}"', f'type = "{rtype}"', f'value = "{value}"', ""]
    out += ["[[dns.steered]]", f'name = "{spec.steered}"', "answers = 1", ""]
    for name, addr, lat, lon in spec.pops:
        out += ["[[dns.pops]]", f'name = "{name}"', f'ipv4 = ["{addr}"]', "ipv6 = []",
                f"lat = {lat}", f"lon = {lon}", f'healthz = "{healthz}"', ""]
    out += ["[dns.health]", "interval_seconds = 2", "timeout_seconds = 1", "rise = 1", "fall = 2", "",
            "[dns.rrl]", "enabled = false", ""]
    return "\n".join(out)


def _public_subnets(count: int, rng: random.Random) -> list[ipaddress.IPv4Network]:
    nets: set[ipaddress.IPv4Network] = set()
    while len(nets) < count:
        net = ipaddress.IPv4Network((rng.randrange(1 << 8, 224 << 24) & 0xFFFFFF00, 24))
        if net.is_global:
            nets.add(net)
    return sorted(nets)


def _wire_query(qname: str, qtype: int, *, ecs: ipaddress.IPv4Network | None) -> bytes:
    """One query, ID 0 (dnsperf overwrites it), RD clear (we are authoritative); with ``ecs`` an
    OPT record (1232-byte payload) carrying the client subnet, address truncated to its prefix."""
    import dnslib

    q = dnslib.DNSRecord(dnslib.DNSHeader(id=0, rd=0), q=dnslib.DNSQuestion(qname, qtype))
    if ecs is not None:
        addr = ecs.network_address.packed[: (ecs.prefixlen + 7) // 8]
        option = dnslib.EDNSOption(ECS_OPTION, struct.pack("!HBB", 1, ecs.prefixlen, 0) + addr)
        q.add_ar(dnslib.EDNS0(udp_len=1232, opts=[option]))
    return q.pack()


def query_file(spec: ZoneSpec, *, count: int, ecs_share: float, subnets: int, seed: int = 1) -> bytes:
    """dnsperf ``-B`` data: ``count`` length-prefixed queries, ``ecs_share`` of them steered A
    queries with ECS from ``subnets`` random public /24s, the rest plain A queries (no EDNS) for
    random static names."""
    rng = random.Random(seed)
    nets = _public_subnets(subnets, rng)
    static = [name for name, rtype, _ in spec.static() if rtype in ("A", "CNAME")]
    out = bytearray()
    for _ in range(count):
        if rng.random() < ecs_share:
            wire = _wire_query(f"{spec.steered}.{spec.zone}", 1, ecs=rng.choice(nets))
        else:
            wire = _wire_query(f"{rng.choice(static)}.{spec.zone}", 1, ecs=None)
        out += struct.pack("!H", len(wire)) + wire
    return bytes(out)


# --- dnsperf -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Dnsperf:
    """dnsperf's summary: queries sent/completed/lost, q/s, latency (seconds), response codes."""

    sent: int
    completed: int
    lost: int
    qps: float
    run_seconds: float
    latency_avg_s: float
    latency_min_s: float
    latency_max_s: float
    latency_stddev_s: float
    rcodes: dict[str, int] = field(default_factory=dict)
    p99_s: float | None = None


def _num(pattern: str, text: str, what: str) -> str:
    m = re.search(pattern, text, re.M)
    if not m:
        raise ValueError(f"no {what} in dnsperf's output:\n{text[-2000:]}")
    return m.group(1)


def parse_dnsperf(text: str) -> Dnsperf:
    """The "Statistics:" block dnsperf 2.10 prints at the end of a run."""
    rcodes = {}
    m = re.search(r"^\s*Response codes:\s*(.*)$", text, re.M)
    if m:
        for code, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1)):
            rcodes[code] = int(n)
    lat = re.search(r"Average Latency \(s\):\s*([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", text)
    return Dnsperf(
        sent=int(_num(r"^\s*Queries sent:\s*(\d+)", text, "Queries sent")),
        completed=int(_num(r"^\s*Queries completed:\s*(\d+)", text, "Queries completed")),
        lost=int(_num(r"^\s*Queries lost:\s*(\d+)", text, "Queries lost")),
        qps=float(_num(r"^\s*Queries per second:\s*([\d.]+)", text, "Queries per second")),
        run_seconds=float(_num(r"^\s*Run time \(s\):\s*([\d.]+)", text, "Run time")),
        latency_avg_s=float(lat.group(1)) if lat else math.nan,
        latency_min_s=float(lat.group(2)) if lat else math.nan,
        latency_max_s=float(lat.group(3)) if lat else math.nan,
        latency_stddev_s=float(_num(r"Latency StdDev \(s\):\s*([\d.]+)", text, "Latency StdDev"))
        if lat else math.nan,
        rcodes=rcodes,
    )


_VERBOSE = re.compile(r"^> (\S+) .*?(?: ([\d.]+))?$", re.M)


def latencies_from_verbose(text: str) -> tuple[list[float], int]:
    """(latencies in seconds of the answered queries, count of timed-out ones) from the
    per-response lines of ``dnsperf -v`` (``> NOERROR binary input 0.000139``, ``> T ...``)."""
    answered: list[float] = []
    timed_out = 0
    for m in _VERBOSE.finditer(text):
        if m.group(1) in ("T", "I") or m.group(2) is None:
            timed_out += 1
        else:
            answered.append(float(m.group(2)))
    return answered, timed_out


def percentile(latencies: list[float], lost: int, q: float) -> float:
    """The ``q``-th percentile (0..100, nearest rank) with ``lost`` queries counted as slower
    than any answer (infinite when the percentile falls among them)."""
    n = len(latencies) + lost
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100 * n))
    if rank > len(latencies):
        return math.inf
    return sorted(latencies)[rank - 1]


def dnsperf(port: int, datafile: Path, *, seconds: float, clients: int, outstanding: int,
            max_qps: float | None = None) -> Dnsperf:
    """One dnsperf run against 127.0.0.1:port (with ``max_qps``: rate-capped, verbose, p99)."""
    argv = ["dnsperf", "-B", "-d", str(datafile), "-s", "127.0.0.1", "-p", str(port),
            "-l", f"{seconds:g}", "-c", str(clients), "-q", str(outstanding), "-T", "1", "-t", "2",
            "-O", "suppress=timeouts,congestion,sendfailed,sockready,unexpected"]
    if max_qps is not None:
        argv += ["-Q", str(max(1, int(max_qps))), "-v"]
    # stdout to a file, not a pipe: with -v dnsperf writes a line per response, and a pipe
    # read by Python throttled it below the asked rate (28 k of 43 k q/s here).
    with tempfile.TemporaryFile("w+") as out:
        r = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, text=True, timeout=seconds + 60)
        out.seek(0)
        text = out.read()
    if r.returncode != 0:
        raise PeerError(f"dnsperf failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    result = parse_dnsperf(text)
    if max_qps is not None:
        answered, timed_out = latencies_from_verbose(text)
        lost = max(timed_out, result.lost)
        result = Dnsperf(**{**asdict(result), "p99_s": percentile(answered, lost, 99.0)})
    return result


# --- the servers -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class DnsServer:
    """A started server: where it answers, and how to find its processes (for CPU time)."""

    name: str
    port: int
    pids: Callable[[], list[int]]
    description: str = ""


def _probe_query() -> bytes:
    return _wire_query(f"ns1.{ZONE}", 1, ecs=None)


def wait_answering(port: int, procs: ProcessGroup, timeout_s: float = 30.0) -> None:
    """Until 127.0.0.1:port answers a DNS query over UDP (any answer with our ID and QR set)."""
    query = bytearray(_probe_query())
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        ident = 0
        while time.monotonic() < deadline:
            procs.check_alive()
            ident = (ident + 1) & 0xFFFF
            query[0:2] = struct.pack("!H", ident)
            with contextlib.suppress(OSError):
                s.sendto(bytes(query), ("127.0.0.1", port))
                reply = s.recv(4096)
                if len(reply) >= 12 and reply[0:2] == query[0:2] and reply[2] & 0x80:
                    return
            time.sleep(0.05)
    raise PeerError(f"nothing answers DNS on 127.0.0.1:{port} after {timeout_s:g} s")


def _group_pids(leader: int) -> list[int]:
    """The leader and its descendants (a supervisor's workers, Knot's one process)."""
    pids, todo = [], [leader]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextlib.contextmanager
def start_knot(root: Path, spec: ZoneSpec, workers: int) -> Iterator[DnsServer]:
    """knotd with a generated knot.conf in ``root``, stopped (by PID) on exit."""
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    root.mkdir(parents=True, exist_ok=True)
    (root / "zone").write_text(knot_zone(spec))
    port = free_ports(1, udp=True)[0]
    (root / "knot.conf").write_text(knot_conf(root, port, workers))
    procs = ProcessGroup(root)
    try:
        proc = procs.start("knotd", [knotd, "-c", str(root / "knot.conf")])
        wait_answering(port, procs)
        yield DnsServer(name="knot", port=port, pids=lambda: _group_pids(proc.pid),
                        description=f"Knot DNS {_knot_version(knotd)}, udp-workers {workers}")
    finally:
        procs.stop()


def _knot_version(knotd: str) -> str:
    r = subprocess.run([knotd, "--version"], capture_output=True, text=True)
    m = re.search(r"version ([\d.]+)", r.stdout + r.stderr)
    return m.group(1) if m else "?"


@contextlib.contextmanager
def start_ours(config_path: Path, procs: ProcessGroup, *, port: int,
               timeout_s: float = 60.0) -> Iterator[DnsServer]:
    """Our GeoDNS from ``config_path`` (``python -m headwater up -c FILE``: the supervisor and its
    ``workers`` processes), answering on 127.0.0.1:port; stopped by process group on exit."""
    try:
        proc = procs.start("headwater-dns", [sys.executable, "-m", "headwater", "up", "-c",
                                              str(config_path)], cwd=config_path.parent)
        wait_answering(port, procs, timeout_s)
        yield DnsServer(name="ours", port=port, pids=lambda: _group_pids(proc.pid),
                        description="headwater GeoDNS")
    finally:
        procs.stop()


class _HealthzHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"ok\n"
        self.send_response(200 if self.path.startswith("/healthz") else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # a prober that hung up early
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def healthz_standin() -> Iterator[str]:
    """A /healthz that answers 200, for the stand-in POPs ours probes (URL yielded)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthzHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    finally:
        server.shutdown()
        server.server_close()


def _serve_bare(port: int) -> None:
    """The Python floor: a uvloop DatagramProtocol answering each query with itself, QR set."""
    import asyncio

    import uvloop

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):  # type: ignore[override]
            self.transport = transport

        def datagram_received(self, data, addr):  # type: ignore[override]
            if len(data) >= 12:
                self.transport.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], addr)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", port))
        await asyncio.Event().wait()

    uvloop.run(main())


# --- the run ---------------------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class Row:
    """One worker count: each server's peak and its p99 at the shared half rate."""

    workers: int
    peak: dict[str, Dnsperf] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # server CPU seconds per 1000 queries
    half_rate: float = 0.0
    half: dict[str, Dnsperf] = field(default_factory=dict)


def _measure(server: DnsServer, datafile: Path, args: argparse.Namespace,
             max_qps: float | None = None) -> tuple[Dnsperf, float]:
    pids = server.pids()
    cpu0 = _cpu_seconds(pids)
    res = dnsperf(server.port, datafile, seconds=args.seconds if max_qps is None else args.p99_seconds,
                  clients=args.clients, outstanding=args.outstanding, max_qps=max_qps)
    cpu = _cpu_seconds(pids) - cpu0
    return res, (cpu / res.completed * 1000 if res.completed else math.nan)


def _warm(server: DnsServer, datafile: Path, args: argparse.Namespace) -> None:
    dnsperf(server.port, datafile, seconds=1, clients=args.clients, outstanding=args.outstanding)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_res(r: Dnsperf) -> str:
    codes = ", ".join(f"{k} {v}" for k, v in sorted(r.rcodes.items(), key=lambda kv: -kv[1]))
    return (f"{r.qps / 1e3:7.1f} k q/s, {r.lost} lost, rcodes {codes or '-'}, "
            f"mean {r.latency_avg_s * 1e3:.2f} ms"
            + (f", p99 {r.p99_s * 1e3:.2f} ms" if r.p99_s is not None else ""))


def run(args: argparse.Namespace) -> int:
    missing = [c for c in ("dnsperf", "knotd") if shutil.which(c) is None
               and not os.path.exists(f"/usr/sbin/{c}")]
    if missing:
        _log(f"missing {' '.join(missing)}: run scripts/install-bench-deps.sh (make bench does)")
        return 2
    spec = ZoneSpec(names=args.names)
    workers = [int(w) for w in args.workers.split(",")]
    report: dict[str, object] = {"seconds": args.seconds, "names": args.names,
                                 "ecs_share": args.ecs_share, "subnets": args.subnets,
                                 "clients": args.clients, "outstanding": args.outstanding,
                                 "cpus": os.cpu_count(), "rows": [], "ceilings": {}}
    rows: list[Row] = []
    ours_note = ""
    with tempfile.TemporaryDirectory(prefix="hw-dns-bench-") as tmp:
        root = Path(tmp)
        datafile = root / "queries.bin"
        datafile.write_bytes(query_file(spec, count=args.queries, ecs_share=args.ecs_share,
                                        subnets=args.subnets))
        _log(f"zone {ZONE} with {len(spec.static()) + 3} records; {args.queries} queries "
             f"({args.ecs_share:.0%} steered A with ECS from {args.subnets} /24s, the rest plain A); "
             f"dnsperf -T1 -c{args.clients} -q{args.outstanding} -l{args.seconds:g}; "
             f"{os.cpu_count()} CPUs")
        with healthz_standin() as healthz:
            for w in workers:
                row = Row(workers=w)
                rows.append(row)
                if not args.no_ours:
                    port, admin_port = free_ports(2, udp=True)
                    cfg = root / f"cluster-{w}.toml"
                    cfg.write_text(args.ours_config.read_text() if args.ours_config else
                                   headwater_cluster_toml(spec, port=port, admin_port=admin_port,
                                                          workers=w, healthz=healthz,
                                                          data_dir=root / "var"))
                    if args.ours_config:
                        port = args.ours_port
                    procs = ProcessGroup(root)
                    try:
                        with start_ours(cfg, procs, port=port) as ours:
                            _warm(ours, datafile, args)
                            row.peak["ours"], row.cpu["ours"] = _measure(ours, datafile, args)
                            _log(f"  workers {w} ours  peak  {_fmt_res(row.peak['ours'])}")
                            row.half_rate = row.peak["ours"].qps / 2
                            row.half["ours"], _ = _measure(ours, datafile, args, row.half_rate)
                            _log(f"  workers {w} ours  at {row.half_rate / 1e3:.1f} k q/s  "
                                 f"{_fmt_res(row.half['ours'])}")
                    except PeerError as e:
                        logs = sorted((root / "var" / "logs").glob("*.log"))
                        last = (logs[-1].read_text(errors="replace").strip().splitlines() or [""])[-1] \
                            if logs else procs.tail("headwater-dns", 1).strip()
                        ours_note = (f"ours not measured: {str(e).split('; last log lines')[0]}"
                                     + (f" ({last})" if last and last != "(no log)" else ""))
                        _log(f"  workers {w} {ours_note}")
                        args.no_ours = True
                with start_knot(root / f"knot-{w}", spec, w) as knot:
                    _warm(knot, datafile, args)
                    row.peak["knot"], row.cpu["knot"] = _measure(knot, datafile, args)
                    _log(f"  workers {w} knot  peak  {_fmt_res(row.peak['knot'])}")
                    if not row.half_rate:
                        row.half_rate = row.peak["knot"].qps / 2  # ours absent: Knot's own half
                    row.half["knot"], _ = _measure(knot, datafile, args, row.half_rate)
                    _log(f"  workers {w} knot  at {row.half_rate / 1e3:.1f} k q/s  "
                         f"{_fmt_res(row.half['knot'])}")
        ceilings: dict[str, Dnsperf] = {}
        if not args.no_ceilings:
            cpus = os.cpu_count() or 1
            with start_knot(root / "knot-all", spec, cpus) as knot:
                _warm(knot, datafile, args)
                ceilings[f"knot, udp-workers {cpus} (every CPU)"], _ = _measure(knot, datafile, args)
            procs = ProcessGroup(root)
            port = free_ports(1, udp=True)[0]
            try:
                procs.start("bare", [sys.executable, "-m", "headwater.bench.dns", "--serve-bare", str(port)])
                wait_answering(port, procs)
                bare = DnsServer(name="bare", port=port, pids=lambda: [])
                _warm(bare, datafile, args)
                ceilings["bare uvloop UDP echo, 1 process (Python floor)"], _ = _measure(bare, datafile, args)
            finally:
                procs.stop()
            for name, c in ceilings.items():
                _log(f"  ceiling {name}: {_fmt_res(c)}")

    print(render(rows, ceilings, ours_note, args))
    report["rows"] = [{"workers": r.workers, "peak": {k: asdict(v) for k, v in r.peak.items()},
                       "server_cpu_ms_per_1000_queries": {k: v * 1e3 for k, v in r.cpu.items()},
                       "half_rate": r.half_rate, "half": {k: asdict(v) for k, v in r.half.items()}}
                      for r in rows]
    report["ceilings"] = {k: asdict(v) for k, v in ceilings.items()}
    report["ours_note"] = ours_note
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


def _p99_text(r: Dnsperf | None) -> str:
    if r is None or r.p99_s is None:
        return "-"
    return "lost" if math.isinf(r.p99_s) else f"{r.p99_s * 1e3:.2f} ms"


def render(rows: list[Row], ceilings: dict[str, Dnsperf], ours_note: str,
           args: argparse.Namespace) -> str:
    """The report table: per worker count, q/s of each, the ratio against the goal, p99s."""
    head = (f"{'workers':<8}{'ours q/s':>12}{'knot q/s':>12}{'ratio':>8}{'goal':>7}     "
            f"{'p99 at':>12}{'ours p99':>11}{'knot p99':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        o, k = r.peak.get("ours"), r.peak.get("knot")
        ratio = o.qps / k.qps if o and k and k.qps else None
        mark = "" if ratio is None else ("ok" if ratio >= GOAL else "MISS")
        lines.append(
            f"{r.workers:<8}{(f'{o.qps:,.0f}' if o else '-'):>12}{(f'{k.qps:,.0f}' if k else '-'):>12}"
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>8}{GOAL:>6.2f}x {mark:<4}"
            f"{f'{r.half_rate:,.0f}/s':>12}{_p99_text(r.half.get('ours')):>11}"
            f"{_p99_text(r.half.get('knot')):>11}")
    for r in rows:
        if r.cpu:
            cpu = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r.cpu.items())
            if "ours" in r.cpu and "knot" in r.cpu and r.cpu["ours"]:
                cpu += f" (Knot/ours {r.cpu['knot'] / r.cpu['ours']:.2f}x: steadier than q/s when " \
                       f"dnsperf, not the server, is the limit)"
            lines.append(f"  workers {r.workers}: server CPU per 1000 queries at peak: {cpu}")
        for name, p in r.peak.items():
            bad = sum(v for k, v in p.rcodes.items() if k != "NOERROR")
            if bad:
                lines.append(f"  workers {r.workers}: {name} answered {bad} of {p.completed} queries "
                             f"with another RCODE than NOERROR ({p.rcodes}): check the zone")
        for name, h in r.half.items():
            if h.qps < 0.9 * r.half_rate:
                lines.append(f"  workers {r.workers}: {name} answered only {h.qps:,.0f} q/s of the "
                             f"{r.half_rate:,.0f} offered in the p99 run: that p99 is at a lower rate")
    for name, c in ceilings.items():
        lines.append(f"  ceiling: {name}: {c.qps:,.0f} q/s")
    if ours_note:
        lines.append(f"  {ours_note}")
    lines.append(f"  p99 is at half of our peak rate (of Knot's where ours was not measured), "
                 f"{args.p99_seconds:g} s each, dnsperf -Q; load average {os.getloadavg()[0]:.1f} "
                 f"on {os.cpu_count()} CPUs (dnsperf and the server share them)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m headwater.bench dns", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="each peak run (default 15)")
    ap.add_argument("--p99-seconds", type=float, default=None,
                    help="each rate-capped latency run (default: --seconds / 3)")
    ap.add_argument("--quick", action="store_true", help="4 s runs, workers 1 only")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--names", type=int, default=1000, help="static names in the zone (default 1000)")
    ap.add_argument("--queries", type=int, default=100_000, help="queries in the data file (default 100000)")
    ap.add_argument("--ecs-share", type=float, default=0.5, help="steered ECS queries (default 0.5)")
    ap.add_argument("--subnets", type=int, default=4096, help="distinct ECS /24s (default 4096)")
    ap.add_argument("--clients", type=int, default=8, help="dnsperf -c (default 8)")
    ap.add_argument("--outstanding", type=int, default=200, help="dnsperf -q (default 200)")
    ap.add_argument("--no-ours", action="store_true", help="measure Knot and the ceilings only")
    ap.add_argument("--no-ceilings", action="store_true")
    ap.add_argument("--ours-config", type=Path, help="use this cluster.toml for ours as it is")
    ap.add_argument("--ours-port", type=int, default=5353, help="its DNS port (with --ours-config)")
    ap.add_argument("--json", metavar="FILE", help="save every figure")
    ap.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_bare:
        _serve_bare(args.serve_bare)
        return 0
    if args.quick:
        args.seconds = min(args.seconds, 4.0)
        if args.workers == "1,2":
            args.workers = "1"
        args.queries = min(args.queries, 20_000)
    if args.p99_seconds is None:
        args.p99_seconds = max(2.0, args.seconds / 3)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
