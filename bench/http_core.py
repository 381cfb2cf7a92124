"""`python -m headwater.bench http_core`: the HTTP server core against nginx, driven by wrk.

One run, one worker each (our ``serve()`` in one process; nginx with ``worker_processes 1``),
never two servers under load at once, each driven by the same ``wrk`` command:

| row | ours | nginx |
|---|---|---|
| 1 KiB, req/s | an app answering a 1 KiB bytes body | a 1 KiB static file (sendfile on) |
| 2 MiB, GB/s of body | an app answering ``FileBody`` of a 2 MiB file | a 2 MiB static file |

and the ceilings of the same run: for 1 KiB, wrk against nginx answering 1 KiB from memory
(``return 200``: a C responder with no file at all) and against a bare uvloop ``asyncio.Protocol``
with httptools (the floor a Python server cannot go under); for 2 MiB, loopback TCP (iperf3, one
stream). Each round measures ours and nginx back to back (the order alternating) and gives one
ratio; the report shows the median of those paired ratios beside the median figures, so drift in
a shared machine's load hits both sides of every ratio alike. The servers' CPU time per request
(from /proc) is printed too: on a busy machine it is steadier than requests per second. Nothing is installed here: ``make bench``
runs ``scripts/install-bench-deps.sh`` (Debian ``wrk`` and ``nginx``).

``--driver raw`` keeps the older raw-socket load generator (pipelining depths, server CPU per
request) against ours only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import ceilings as _ceilings
from .peers import PeerError, ProcessGroup, free_ports, wait_port

__all__ = ["main", "parse_wrk", "nginx_conf", "Figure", "load"]

KiB = 1024
MiB = 1024 * KiB
SMALL_BYTES = 1 * KiB
LARGE_BYTES = 2 * MiB
REQUEST = b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n"
GOALS = {"1k": 0.5, "2m": 0.8}


# --- the servers ---------------------------------------------------------------------------------

def _serve_ours(root: str, port: int, backend: str) -> None:
    """Our core with a trivial app: /1k from memory, /2m as a FileBody (sendfile)."""
    from headwater.http import FileBody, Response, bind_socket, serve
    from headwater.runtime import run

    small = Path(root, "1k").read_bytes()
    large = Path(root, "2m")
    headers = [("content-type", "application/octet-stream")]
    not_found = Response(404, [], b"not found\n")
    sock = bind_socket("127.0.0.1", port)

    async def app(request):
        if request.path == "/1k":
            return Response(200, headers, small)
        if request.path == "/2m":
            return Response(200, headers, FileBody(large))
        return not_found

    async def main() -> None:
        await serve(app, sock=sock)  # the loop transport on asyncio, as every daemon

    run(main, backend=backend)


def _serve_bare(port: int) -> None:
    """The Python floor: an asyncio Protocol on uvloop with httptools, 1 KiB answers, no limits."""
    import asyncio

    import httptools
    import uvloop

    body = b"x" * SMALL_BYTES
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\n\r\n" % len(body))

    class Bare(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data):
            self.parser.feed_data(data)

        def on_message_complete(self):
            self.transport.write(head + body)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Bare, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def nginx_conf(root: Path, port: int, memory_port: int) -> str:
    """nginx.conf for one worker: static files from ``root`` on ``port``, 1 KiB from memory on
    ``memory_port``; no logs, keep-alive for the whole run."""
    return f"""\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
    server {{
        listen 127.0.0.1:{memory_port};
        location / {{ return 200 "{'x' * SMALL_BYTES}"; }}
    }}
}}
"""


# --- wrk -------------------------------------------------------------------------------------------

_UNITS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "KB": KiB, "MB": MiB, "GB": 1024 * MiB,
          "B": 1}


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/s, errors and latency percentiles from wrk's ``--latency`` report."""
    out: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if not m:
        raise ValueError(f"no Requests/sec in wrk's output:\n{text}")
    out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if m:
        out["requests"] = float(m.group(1))
    errors = 0
    for m in re.finditer(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    out["errors"] = float(errors)
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            out[f"p{pct}_ms"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return out


def wrk(url: str, *, conns: int, seconds: float, threads: int = 1) -> dict[str, float]:
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency", url],
                       capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise PeerError(f"wrk failed ({r.returncode}): {r.stderr.strip()}")
    return parse_wrk(r.stdout)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pid(proc: subprocess.Popen[bytes]) -> int:
    """nginx's one worker (the master's child), or the process itself."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else proc.pid
    except OSError:
        return proc.pid


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One wrk run: requests/s, body bytes/s, server CPU share, errors, latency."""

    rps: float
    body_bytes_per_s: float
    server_cpu: float
    errors: int
    p50_ms: float
    p99_ms: float


def measure(url: str, body_bytes: int, pid: int | None, *, conns: int, seconds: float) -> Figure:
    cpu0 = _cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    w = wrk(url, conns=conns, seconds=seconds)
    wall = time.perf_counter() - t0
    cpu = (_cpu_seconds(pid) - cpu0) / wall if pid else 0.0
    return Figure(rps=w["rps"], body_bytes_per_s=w["rps"] * body_bytes, server_cpu=cpu,
                  errors=int(w["errors"]), p50_ms=w.get("p50_ms", 0.0), p99_ms=w.get("p99_ms", 0.0))


# --- the run ------------------------------------------------------------------------------------

def _fmt(row: str, fig: Figure) -> str:
    if row == "1k":
        return f"{fig.rps / 1e3:8.1f} k req/s"
    return f"{fig.body_bytes_per_s / 1e9:8.2f} GB/s   "


def _us_per_request(fig: Figure) -> float:
    return fig.server_cpu / fig.rps * 1e6 if fig.rps else float("inf")


def _median(figs: list[Figure]) -> Figure:
    return sorted(figs, key=lambda f: f.rps)[len(figs) // 2]


def run_wrk(args: argparse.Namespace) -> int:
    missing = [c for c in ("wrk", "nginx") if shutil.which(c) is None
               and not os.path.exists(f"/usr/sbin/{c}")]
    if missing:
        print(f"missing {' '.join(missing)}: run scripts/install-bench-deps.sh (make bench does)",
              file=sys.stderr)
        return 2
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="hw-http-bench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # nginx's worker runs as nobody when we are root
        www = root / "www"
        www.mkdir()
        (www / "1k").write_bytes(b"x" * SMALL_BYTES)
        (www / "2m").write_bytes(os.urandom(LARGE_BYTES))
        ours_port, nginx_port, memory_port, bare_port = free_ports(4)
        (root / "nginx.conf").write_text(nginx_conf(root, nginx_port, memory_port))
        procs = ProcessGroup(root)
        try:
            ours = procs.start("ours", [sys.executable, "-m", "headwater.bench.http_core",
                                        "--serve", str(ours_port), "--root", str(www),
                                        "--backend", args.backend])
            nginx = procs.start("nginx", [nginx_bin, "-c", str(root / "nginx.conf"), "-p", str(root)])
            bare = procs.start("bare", [sys.executable, "-m", "headwater.bench.http_core",
                                        "--serve-bare", str(bare_port)])
            for p in (ours_port, nginx_port, memory_port, bare_port):
                wait_port(p, procs, 15.0)
            nginx_pid = _worker_pid(nginx)
            urls = {"ours": f"http://127.0.0.1:{ours_port}/", "nginx": f"http://127.0.0.1:{nginx_port}/"}
            pids = {"ours": ours.pid, "nginx": nginx_pid}
            for name in urls:  # warm up (imports, page cache, first connections)
                wrk(urls[name] + "1k", conns=args.conns, seconds=1)
                wrk(urls[name] + "2m", conns=args.conns, seconds=1)
            print(f"headwater http core ({args.backend}) against nginx "
                  f"{_nginx_version(nginx_bin)}, one worker each; wrk -t1 -c{args.conns} "
                  f"-d{args.seconds:g}s, {args.rounds} rounds (median), {os.cpu_count()} CPUs",
                  file=sys.stderr)
            results: dict[str, dict[str, list[Figure]]] = {r: {"ours": [], "nginx": []}
                                                           for r in ("1k", "2m")}
            size = {"1k": SMALL_BYTES, "2m": LARGE_BYTES}
            for rnd in range(args.rounds):
                for row in ("1k", "2m"):
                    order = ("ours", "nginx") if rnd % 2 == 0 else ("nginx", "ours")
                    for name in order:
                        fig = measure(urls[name] + row, size[row], pids[name],
                                      conns=args.conns, seconds=args.seconds)
                        results[row][name].append(fig)
                        print(f"  round {rnd + 1} {row} {name:<5} {_fmt(row, fig)}  "
                              f"server CPU {fig.server_cpu * 100:3.0f} % = "
                              f"{_us_per_request(fig):6.1f} us/request  errors {fig.errors}",
                              file=sys.stderr, flush=True)
            procs.check_alive()
            memory = measure(f"http://127.0.0.1:{memory_port}/", SMALL_BYTES, nginx_pid,
                             conns=args.conns, seconds=args.seconds)
            floor = measure(f"http://127.0.0.1:{bare_port}/", SMALL_BYTES, bare.pid,
                            conns=args.conns, seconds=args.seconds)
        finally:
            procs.stop()
    loopback = _ceilings.loopback_tcp(seconds=min(args.seconds, 3.0), port=free_ports(1)[0])

    medians = {row: {name: _median(figs) for name, figs in by.items()} for row, by in results.items()}
    lines = [f"{'row':<22}{'ours':>16}{'nginx':>16}{'ratio':>8}{'goal':>7}   ceiling "
             f"(same run)"]
    ceiling_text = {
        "1k": f"{memory.rps / 1e3:.1f} k req/s nginx from memory; "
              f"{floor.rps / 1e3:.1f} k req/s bare uvloop+httptools",
        "2m": f"{loopback.value:.2f} GB/s loopback TCP ({loopback.how})",
    }
    label = {"1k": "1 KiB GET (req/s)", "2m": "2 MiB GET (body GB/s)"}
    report: dict[str, object] = {"backend": args.backend, "conns": args.conns,
                                 "seconds": args.seconds, "rounds": args.rounds, "rows": {}}
    for row in ("1k", "2m"):
        o, n = medians[row]["ours"], medians[row]["nginx"]
        ratio = statistics.median(f.rps / g.rps for f, g in zip(results[row]["ours"],
                                                                  results[row]["nginx"]))
        mark = "ok" if ratio >= GOALS[row] else "MISS"
        lines.append(f"{label[row]:<22}{_fmt(row, o):>16}{_fmt(row, n):>16}{ratio:>7.2f}x"
                     f"{GOALS[row]:>6.1f}x {mark:<4} {ceiling_text[row]}")
        report["rows"][row] = {  # type: ignore[index]
            "ours": [asdict(f) for f in results[row]["ours"]],
            "nginx": [asdict(f) for f in results[row]["nginx"]],
            "ratio": ratio, "goal": GOALS[row]}
    ratios = [f.rps / g.rps for f, g in zip(results["1k"]["ours"], results["1k"]["nginx"])]
    lines.append(f"  per-round 1 KiB ratios: {', '.join(f'{r:.2f}' for r in ratios)}; "
                 f"2 MiB: {', '.join(f'{f.rps / g.rps:.2f}' for f, g in zip(results['2m']['ours'], results['2m']['nginx']))}")
    cpu = {row: {name: min(_us_per_request(f) for f in figs) for name, figs in by.items()}
           for row, by in results.items()}
    lines.append(f"  server CPU per request (best round; steadier than req/s on a busy machine): "
                 f"1 KiB ours {cpu['1k']['ours']:.1f} us, nginx {cpu['1k']['nginx']:.1f} us "
                 f"({cpu['1k']['nginx'] / cpu['1k']['ours']:.2f}x); 2 MiB ours {cpu['2m']['ours']:.0f} us, "
                 f"nginx {cpu['2m']['nginx']:.0f} us ({cpu['2m']['nginx'] / cpu['2m']['ours']:.2f}x)")
    lines.append(f"  ratio = median of the {args.rounds} paired rounds; ours and nginx columns are "
                 f"medians; bare uvloop+httptools used {_us_per_request(floor):.1f} us/request")
    lines.append(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
                 f"(wrk, the server and everything else share them)")
    report["ceilings"] = {"nginx_memory_rps": memory.rps, "bare_python_rps": floor.rps,
                          "loopback_gb_per_s": loopback.value, "loopback_how": loopback.how}
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _nginx_version(binary: str) -> str:
    r = subprocess.run([binary, "-v"], capture_output=True, text=True)
    m = re.search(r"nginx/([\d.]+)", r.stderr + r.stdout)
    return m.group(1) if m else "?"


# --- the raw-socket driver (pipelining) ----------------------------------------------------------

def _response_size(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(REQUEST)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            rest += s.recv(65536)
        return len(head) + 4 + length


def load(port: int, *, conns: int, depth: int, seconds: float) -> float:
    """Requests per second over ``conns`` keep-alive connections, ``depth`` pipelined each."""
    size = _response_size(port)  # every response has the same size (the Date is fixed-width)
    batch = REQUEST * depth
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, int] = {}
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.sendall(batch)
        pending[s] = 0
        sel.register(s, selectors.EVENT_READ)
    done = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for key, _ in sel.select(0.5):
            s = key.fileobj  # type: ignore[assignment]
            data = s.recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed a keep-alive connection")
            pending[s] += len(data)
            if pending[s] >= size * depth:
                if pending[s] != size * depth:
                    raise RuntimeError("response size changed mid-run")
                pending[s] = 0
                done += depth
                s.sendall(batch)
    elapsed = time.perf_counter() - start
    for s in pending:
        s.close()
    return done / elapsed


def run_raw(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hw-http-bench-") as tmp:
        Path(tmp, "1k").write_bytes(b"x" * SMALL_BYTES)
        Path(tmp, "2m").write_bytes(b"y" * LARGE_BYTES)
        port = free_ports(1)[0]
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_serve_ours, args=(tmp, port, args.backend), daemon=True)
        proc.start()
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or not proc.is_alive():
                        raise
                    time.sleep(0.05)
            load(port, conns=4, depth=1, seconds=0.5)  # warm up
            print(f"headwater http core, backend={args.backend}, {args.conns} connections, "
                  f"1 KiB responses, raw-socket driver, {os.cpu_count()} CPUs")
            for depth in (int(d) for d in args.depths.split(",")):
                assert proc.pid is not None
                cpu0 = _cpu_seconds(proc.pid)
                t0 = time.perf_counter()
                rate = load(port, conns=args.conns, depth=depth, seconds=args.seconds)
                wall = time.perf_counter() - t0
                cpu = _cpu_seconds(proc.pid) - cpu0
                print(f"  depth {depth:>3}: {rate:>9,.0f} req/s   server CPU "
                      f"{cpu / wall * 100:5.1f} %, {cpu / (rate * wall) * 1e6:6.1f} us/request",
                      flush=True)
        finally:
            proc.terminate()
            proc.join(5)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m headwater.bench http_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    ap.add_argument("--conns", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per wrk run (default 3)")
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds (default 5)")
    ap.add_argument("--json", metavar="FILE", help="save every round's figures")
    ap.add_argument("--driver", default="wrk", choices=["wrk", "raw"])
    ap.add_argument("--depths", default="1,16", help="pipelining depths (raw driver)")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        _serve_ours(args.root, args.serve, args.backend)
        return 0
    if args.serve_bare:
        _serve_bare(args.serve_bare)
        return 0
    if args.driver == "raw":
        return run_raw(args)
    return run_wrk(args)


if __name__ == "__main__":
    sys.exit(main())
