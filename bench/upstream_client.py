"""`python -m headwater.bench upstream_client`: the edge's upstream client against httpx.

What it answers: which HTTP/1.1 client the edge fetches from its upstream tiers and origins with
(issue 10: "the client library chosen by measurement"). One server process (the kernel's
``serve()`` on uvloop answering a 1 KiB and a 2 MiB body from memory) and, in this process, one
client at a time fetching in a loop over keep-alive connections, ``--concurrency`` fetches at
once (1: one after the other, as a cold miss does; more: as collapsed misses of several keys do):

| client | what |
|---|---|
| ``httpx`` | ``httpx.AsyncClient`` streaming the body with ``aiter_raw`` (the edge's client before) |
| ``headwater`` | ``headwater.http.client.HttpClient`` (llhttp's parser, anyio, its own pool) |
| ``floor`` | one blocking socket and httptools' parser, no event loop (concurrency 1 only): the cost a Python client cannot go under |

Each round runs every client back to back (the order alternating between rounds); the report
gives the median over rounds of fetches/s, Gbit/s of body, and the client's CPU time per fetch
(steadier than the rate on a shared machine), and the ratio headwater/httpx.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import sys
import time
from typing import Any, Callable

SIZES = {"1KiB": 1024, "2MiB": 2 * 1024 * 1024}


def _serve(port: int, ready: Any) -> None:
    import anyio

    from headwater.http import Response, serve

    bodies = {f"/{name}": b"x" * size for name, size in SIZES.items()}

    async def app(request: Any) -> Response:
        body = bodies.get(request.path)
        if body is None:
            return Response(404, [("content-length", "0")], b"")
        return Response(200, [("content-type", "application/octet-stream"), ("cache-control", "max-age=60")], body)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=port, task_status=task_status))
            ready.set()
            await anyio.sleep_forever()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        anyio.run(main)


async def _loop_httpx(url: str, seconds: float, concurrency: int) -> tuple[int, int]:
    import anyio
    import httpx

    count = nbytes = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=10) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count, nbytes
            while time.perf_counter() < deadline:
                request = client.build_request("GET", url, headers=[("host", "origin.test")])
                response = await client.send(request, stream=True)
                async for chunk in response.aiter_raw(256 * 1024):
                    nbytes += len(chunk)
                await response.aclose()
                count += 1

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
    return count, nbytes


async def _loop_headwater(url: str, seconds: float, concurrency: int) -> tuple[int, int]:
    import anyio

    from headwater.http.client import HttpClient

    count = nbytes = 0
    client = HttpClient()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count, nbytes
        while time.perf_counter() < deadline:
            response = await client.request("GET", url, [("host", "origin.test")])
            while chunk := await response.receive():
                nbytes += len(chunk)
            await response.aclose()
            count += 1

    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(client.run)  # the read deadlines' watchdog, as the edge runs it
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)
            outer.cancel_scope.cancel()
    finally:
        await client.aclose()
    return count, nbytes


def _loop_floor(url: str, seconds: float, concurrency: int) -> tuple[int, int]:
    import httptools

    host, port_path = url.split("://", 1)[1].split(":", 1)
    port, path = port_path.split("/", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET /{path} HTTP/1.1\r\nhost: origin.test\r\n\r\n".encode()
    state = {"done": False, "bytes": 0}

    class Sink:
        def on_body(self, body: bytes) -> None:
            state["bytes"] += len(body)

        def on_message_complete(self) -> None:
            state["done"] = True

    parser = httptools.HttpResponseParser(Sink())
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sock.sendall(request)
        state["done"] = False
        while not state["done"]:
            parser.feed_data(sock.recv(256 * 1024))
        count += 1
    sock.close()
    return count, state["bytes"]


def _run(client: str, url: str, seconds: float, concurrency: int) -> dict[str, float]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    if client == "floor":
        count, nbytes = _loop_floor(url, seconds, concurrency)
    else:
        loop: Callable[..., Any] = _loop_httpx if client == "httpx" else _loop_headwater
        try:
            import uvloop
            count, nbytes = uvloop.run(loop(url, seconds, concurrency))
        except ImportError:
            import anyio
            count, nbytes = anyio.run(loop, url, seconds, concurrency)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"rate": count / wall, "gbit": nbytes * 8 / wall / 1e9, "cpu_us": cpu / max(1, count) * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m headwater.bench upstream_client", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per client, size and round (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args(argv)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(20):
            print("the server did not start", file=sys.stderr)
            return 1
        results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for size in SIZES:
                url = f"http://127.0.0.1:{port}/{size}"
                for conc in args.concurrency:
                    clients = ["httpx", "headwater"] + (["floor"] if conc == 1 else [])
                    if r % 2:
                        clients.reverse()
                    for client in clients:
                        results.setdefault((size, conc, client), []).append(_run(client, url, args.seconds, conc))
        print(f"{'object':<7} {'conc':>4} {'client':<10} {'fetches/s':>10} {'Gbit/s':>7} {'CPU us/fetch':>13}  vs httpx")
        for size in SIZES:
            for conc in args.concurrency:
                base = None
                for client in ("httpx", "headwater", "floor"):
                    runs = results.get((size, conc, client))
                    if not runs:
                        continue
                    rate = statistics.median(x["rate"] for x in runs)
                    gbit = statistics.median(x["gbit"] for x in runs)
                    cpu = statistics.median(x["cpu_us"] for x in runs)
                    if client == "httpx":
                        base = rate
                    ratio = f"{rate / base:.2f}x" if base else ""
                    print(f"{size:<7} {conc:>4} {client:<10} {rate:>10.0f} {gbit:>7.2f} {cpu:>13.0f}  {ratio}")
    finally:
        server.terminate()
        server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
