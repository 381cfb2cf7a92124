"""Micro-benchmark of the HTTP server core: a trivial app answering 1 KiB, on loopback.

    python -m headwater.bench.http_core [--backend asyncio|trio] [--conns 32] [--seconds 3]

The server runs ``serve()`` in its own process; this process is the load generator: raw
non-blocking sockets, many keep-alive connections, each either one request at a time
(``depth 1``) or ``depth`` pipelined requests per round trip. It prints requests per second and
the server's CPU time per request (less sensitive to a busy machine than req/s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import selectors
import socket
import time

REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY_BYTES = 1024


def _serve(conn, backend: str) -> None:
    from headwater.http import Response, serve
    from headwater.runtime import run

    body = b"x" * BODY_BYTES
    headers = [("content-type", "application/octet-stream")]

    async def app(request):
        return Response(200, headers, body)

    async def main() -> None:
        import anyio

        async with anyio.create_task_group() as tg:
            port = await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=0,
                                                            task_status=task_status))
            conn.send(port)

    run(main, backend=backend)


def _response_size(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(REQUEST)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
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
            s = key.fileobj
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


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--depths", default="1,16", help="pipelining depths to measure")
    args = ap.parse_args(argv)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, args.backend), daemon=True)
    proc.start()
    try:
        port = parent.recv()
        load(port, conns=4, depth=1, seconds=0.5)  # warm up
        print(f"headwater http core, backend={args.backend}, {args.conns} connections, "
              f"1 KiB responses, {os.cpu_count()} CPUs")
        for depth in (int(d) for d in args.depths.split(",")):
            cpu0 = _cpu_seconds(proc.pid) if os.path.exists(f"/proc/{proc.pid}/stat") else None
            t0 = time.perf_counter()
            rate = load(port, conns=args.conns, depth=depth, seconds=args.seconds)
            wall = time.perf_counter() - t0
            line = f"  depth {depth:>3}: {rate:>9,.0f} req/s"
            if cpu0 is not None:
                cpu = _cpu_seconds(proc.pid) - cpu0
                line += f"   server CPU {cpu / wall * 100:5.1f} %, {cpu / (rate * wall) * 1e6:6.1f} us/request"
            print(line, flush=True)
    finally:
        proc.terminate()
        proc.join(5)


if __name__ == "__main__":
    main()
