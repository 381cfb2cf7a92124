"""`python -m headwater.bench h2_floods`: what each HTTP/2 frame flood costs the server core.

One ``serve()`` process (the loop transport on uvloop, as every daemon; the app answers ``/`` at
once and reads the body of ``/upload``, so a stream there stays open) and one attacker on raw
sockets, a fresh h2c connection per attack. Each attack sends its frame, in writes of 1000, up
to ``--frames`` frames or until the server ends the connection, while a thread reads (and
throws away) what the server answers, so that it never stops reading us for want of a reader.
Reported per attack: frames sent (into the socket: once the server has ended the connection
many of them were never read), the server's CPU time (from /proc) over the attack and per
million frames sent, its RSS growth, the attack's seconds, and how the connection ended
(GOAWAY and its code, or still open when the attacker stopped).

The frames are those a client sends at no cost to itself and that do no useful work: RST_STREAM
and WINDOW_UPDATE of closed streams, WINDOW_UPDATE of windows nothing drew on, PRIORITY,
PRIORITY_UPDATE and unknown frame types, empty DATA, DATA and HEADERS of reset streams,
unsolicited SETTINGS and PING acknowledgements. The HTTP core's flood budget
(``h2_flood_burst``, ``h2_flood_rate_per_second``) should end every one of them within a few
hundred frames.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .peers import free_ports

__all__ = ["main", "ATTACKS"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY_CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
                9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def _block(path: str, method: str = "GET") -> bytes:
    """A request's HPACK block of literals without indexing (no dynamic table state)."""
    out = b""
    for n, v in ((":method", method), (":scheme", "http"), (":path", path), (":authority", "bench")):
        out += b"\x00" + bytes((len(n),)) + n.encode() + bytes((len(v),)) + v.encode()
    return out


GET_1 = frame(0x1, 0x5, 1, _block("/"))  # HEADERS, END_STREAM | END_HEADERS
UPLOAD_1 = frame(0x1, 0x4, 1, _block("/upload", "POST"))  # HEADERS, END_HEADERS: the stream stays open
RESET_1 = frame(0x3, 0, 1, (8).to_bytes(4, "big"))
WU = (1).to_bytes(4, "big")


@dataclass(frozen=True)
class Attack:
    """``setup`` is sent first (then a short pause, so the stream it opens is answered or
    settled); ``one(i)`` is the i-th flooding frame."""

    setup: bytes
    one: Callable[[int], bytes]


ATTACKS: dict[str, Attack] = {
    "rst_closed": Attack(GET_1, lambda i: RESET_1),
    "rst_idle": Attack(GET_1, lambda i: frame(0x3, 0, 1001 + 2 * i, (8).to_bytes(4, "big"))),
    "window_update_conn": Attack(b"", lambda i: frame(0x8, 0, 0, WU)),
    "window_update_open": Attack(UPLOAD_1, lambda i: frame(0x8, 0, 1, WU)),
    "window_update_closed": Attack(GET_1, lambda i: frame(0x8, 0, 1, WU)),
    "window_update_zero": Attack(b"", lambda i: frame(0x8, 0, 0, bytes(4))),
    "priority": Attack(GET_1, lambda i: frame(0x2, 0, 1, bytes(4) + b"\x10")),
    "priority_update": Attack(GET_1, lambda i: frame(0x10, 0, 0, (1).to_bytes(4, "big") + b"u=3")),
    "unknown_type": Attack(b"", lambda i: frame(0xfa, 0, 0, b"12345678")),
    "empty_data_open": Attack(UPLOAD_1, lambda i: frame(0x0, 0, 1)),
    "data_closed": Attack(GET_1, lambda i: frame(0x0, 0, 1, b"x")),
    "data_reset": Attack(UPLOAD_1 + RESET_1, lambda i: frame(0x0, 0, 1, b"x")),
    "headers_reset": Attack(UPLOAD_1 + RESET_1, lambda i: frame(0x1, 0x5, 1, _block("/"))),
    "settings_ack": Attack(b"", lambda i: frame(0x4, 0x1, 0)),
    "ping_ack": Attack(b"", lambda i: frame(0x6, 0x1, 0, b"12345678")),
    "no_end_stream": Attack(b"", lambda i: frame(0x1, 0x4, 1 + 2 * i, _block("/upload", "POST"))),
    # a header block never ended, growing by a CONTINUATION of 16,000 bytes at a time
    "continuation_big": Attack(frame(0x1, 0x1, 1, _block("/")), lambda i: frame(0x9, 0, 1, b"v" * 16000)),
}


# --- the server ------------------------------------------------------------------------------------

def _serve(port: int) -> None:
    from headwater.http import Response, bind_socket, serve
    from headwater.runtime import run

    sock = bind_socket("127.0.0.1", port)
    hello = Response(200, [("content-type", "text/plain")], b"hello\n")

    async def app(request):
        if request.path == "/upload":
            await request.body.read_all(1 << 20)
        return hello

    async def main() -> None:
        await serve(app, sock=sock)

    run(main)


_EDGE_TOML = """
[cluster]
name = "h2-floods"
data_dir = "{root}/var"

[[distributions]]
name = "bench"
hostnames = ["bench"]
origin = "http://127.0.0.1:{origin}"

[[edge]]
id = "pop-1"
tier = "pop"
port = {port}
admin_port = {admin}
lat = 0.0
lon = 0.0
ram_size = "8MiB"
disk_size = "16MiB"
"""


def _serve_edge(port: int, root: str) -> None:
    """One edge POP worker (``run_edge``, as ``headwater up`` runs it) in front of an origin
    that is not there: the attacks' own requests are answered 502 at once."""
    import functools

    from headwater.config import load
    from headwater.edge.daemon import run_edge
    from headwater.rpc.auth import ensure_cluster_secret
    from headwater.runtime import run

    admin, origin = free_ports(2)
    path = Path(root, "cluster.toml")
    path.write_text(_EDGE_TOML.format(root=root, port=port, admin=admin, origin=origin))
    cfg = load(str(path))
    ensure_cluster_secret(cfg)
    run(functools.partial(run_edge, cfg, cfg.daemon("pop-1")))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --- the attacker ----------------------------------------------------------------------------------

class _Reader(threading.Thread):
    """Reads the server's frames until EOF; remembers its GOAWAY's error code."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.goaway: int | None = None
        self.eof = threading.Event()

    def run(self) -> None:
        buf = b""
        try:
            while True:
                try:
                    data = self.sock.recv(1 << 16)
                except TimeoutError:
                    continue  # (the send timeout is the socket's too: silence is not an end)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    n = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + n:
                        break
                    if buf[3] == 0x7 and self.goaway is None:
                        self.goaway = int.from_bytes(buf[13:17], "big")
                    buf = buf[9 + n:]
        except OSError:
            pass
        self.eof.set()


@dataclass(frozen=True)
class Result:
    name: str
    frames: int
    cpu_s: float
    rss_growth: int
    seconds: float
    ended: str

    def row(self) -> str:
        per_m = 1e6 / max(self.frames, 1)
        return (f"{self.name:<22} {self.frames:>9,} {self.cpu_s * 1000:>8.0f} {self.cpu_s * per_m:>8.1f} "
                f"{self.rss_growth / 2**20:>8.1f} {self.seconds:>7.2f}  {self.ended}")


def _wait_idle(pid: int, most_s: float = 60.0) -> None:
    """Return once the server used under 5 ms of CPU in 0.2 s (or after ``most_s``)."""
    deadline = time.monotonic() + most_s
    last = _cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _cpu_seconds(pid)
        if now - last < 0.005:
            return
        last = now


def attack(port: int, pid: int, name: str, most: int) -> Result:
    a = ATTACKS[name]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(3)
    reader = _Reader(sock)
    reader.start()
    _wait_idle(pid)  # (the attack before, or the server's start, are not counted)
    sock.sendall(PREFACE + frame(0x4, 0, 0) + frame(0x4, 0x1, 0) + a.setup)
    time.sleep(0.2)
    cpu, rss, start = _cpu_seconds(pid), _rss_bytes(pid), time.monotonic()
    sent = 0
    try:
        while sent < most and not reader.eof.is_set():
            n = min(1000, most - sent)
            sock.sendall(b"".join(a.one(sent + i) for i in range(n)))
            sent += n
    except OSError:
        pass  # reset by the server, or it stopped reading us for 3 s
    # The server may still be working through what the socket buffers hold: wait until it is
    # idle (or has ended the connection and is idle), so the CPU counted is all of the attack's.
    _wait_idle(pid)
    seconds = time.monotonic() - start
    cpu, rss = _cpu_seconds(pid) - cpu, _rss_bytes(pid) - rss
    ended = (f"GOAWAY {GOAWAY_CODES.get(reader.goaway, reader.goaway)}" if reader.goaway is not None
             else "closed" if reader.eof.is_set() else "open")
    sock.close()
    return Result(name, sent, cpu, rss, seconds, ended)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m headwater.bench h2_floods", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200_000, help="most frames per attack (default 200,000)")
    ap.add_argument("--only", help="comma-separated attacks (default: all)")
    ap.add_argument("--edge", action="store_true",
                    help="attack an edge POP worker (run_edge, one-POP cluster) instead of the bare core")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-edge", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    if args.serve_edge:
        _serve_edge(args.serve_edge, args.root)
        return 0
    names = args.only.split(",") if args.only else list(ATTACKS)
    port = free_ports(1)[0]
    root = tempfile.mkdtemp(prefix="h2-floods-")
    serve = ["--serve-edge", str(port), "--root", root] if args.edge else ["--serve", str(port)]
    # (quiet: the edge logs every request, and the core every flood it cuts)
    proc = subprocess.Popen([sys.executable, "-m", "headwater.bench", "h2_floods", *serve],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)
        print(f"{'attack':<22} {'frames':>9} {'CPU ms':>8} {'CPU s/M':>8} {'RSS MiB':>8} {'seconds':>7}  ended")
        for name in names:
            print(attack(port, proc.pid, name, args.frames).row(), flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
