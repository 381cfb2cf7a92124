"""Request collapsing across processes: the edge started by ``headwater up`` as an operator starts
it (3 POPs of two worker processes each, sharing their port with SO_REUSEPORT and one disk cache;
2 regionals; 1 shield) in front of a test origin that streams one cold object slowly and counts
its fetches. Hundreds of concurrent requests for that object, over HTTP/1.1 and h2c, on many
connections to every POP (the kernel spreads them over both workers): every answer is 200 with
the exact body, both workers of every POP answered some (the access log's ``worker``), and the
origin saw exactly one fetch.

Where the requests collapse: in each worker (its flight), across a POP's workers (the disk
store's claim: the other worker follows the growing entry), across POPs (every POP hashes the
key to the same regional), and at the shield (the one flight in front of the origin).

The 1,000-request run the issue names is ``slow``; a 300-request run is not.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import anyio
import anyio.from_thread
import httpx
import pytest

from tests.cluster import free_ports
from tests.functional.edge_harness import ControlledOrigin, Obj

pytestmark = pytest.mark.timeout(90)

HEADWATER = str(Path(sys.executable).with_name("headwater"))
POPS = ("pop-1", "pop-2", "pop-3")

# {origin}: the origin's port; {p[0..11]}: each daemon's port and admin port.
CONFIG = """
[cluster]
name = "edge-workers"
data_dir = "var"

# Every test request comes from 127.0.0.1: one client to the POPs' limits.
[cdn.client_limits]
max_connections_per_client = 2000
requests_per_second = 5000
burst = 10000

[[distributions]]
name = "video"
hostnames = ["video.test"]
origin = "http://127.0.0.1:{origin}"

[[edge]]
id = "pop-1"
tier = "pop"
port = {p[0]}
admin_port = {p[1]}
lat = 51.5
lon = -0.12
workers = 2
ram_size = "{ram}"
disk_size = "64MiB"

[[edge]]
id = "pop-2"
tier = "pop"
port = {p[2]}
admin_port = {p[3]}
lat = 40.7
lon = -74.0
workers = 2
ram_size = "{ram}"
disk_size = "64MiB"

[[edge]]
id = "pop-3"
tier = "pop"
port = {p[4]}
admin_port = {p[5]}
lat = 35.7
lon = 139.7
workers = 2
ram_size = "{ram}"
disk_size = "64MiB"

[[edge]]
id = "regional-1"
tier = "regional"
port = {p[6]}
admin_port = {p[7]}
disk_size = "64MiB"

[[edge]]
id = "regional-2"
tier = "regional"
port = {p[8]}
admin_port = {p[9]}
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {p[10]}
admin_port = {p[11]}
disk_size = "64MiB"
"""


class UpEdge:
    """The edge of ``CONFIG`` under one ``headwater up``, and the origin in this process."""

    def __init__(self, folder: Path, origin: ControlledOrigin, ports: list[int]) -> None:
        self.folder = folder
        self.origin = origin
        self.ports = ports

    def pop(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[2 * index]}"

    def access_lines(self, pop_id: str) -> list[dict]:
        """Every ``edge.access`` line the workers of ``pop_id`` wrote (one log file per worker)."""
        lines = []
        for path in sorted((self.folder / "var" / "logs").glob(f"{pop_id}*.log")):
            for raw in path.read_text(errors="replace").splitlines():
                if '"edge.access"' in raw:
                    lines.append(json.loads(raw))
        return lines


@contextmanager
def up_edge(folder: Path, *, ram: str = "64MiB") -> Iterator[UpEdge]:
    ports = free_ports(13)
    path = folder / "cluster.toml"
    path.write_text(CONFIG.format(origin=ports[12], p=ports, ram=ram))
    origin = ControlledOrigin()
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        served = portal.start_task(origin.run, ports[12])[0]
        log = (folder / "up.log").open("w+")
        up = subprocess.Popen([HEADWATER, "up", "-c", str(path)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while "is up" not in (said := (folder / "up.log").read_text()):
                assert up.poll() is None and time.monotonic() < deadline, said
                time.sleep(0.1)
            yield UpEdge(folder, origin, ports)
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                import os
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
            log.close()
            served.cancel()


async def _fire(pops: list[str], path: str, n: int) -> list[tuple[int, bytes, str]]:
    """``n`` concurrent GETs of ``path`` spread over ``pops``: per POP, HTTP/1.1 requests on a
    connection each and h2c requests multiplexed over four connections (four clients)."""
    results: list[tuple[int, bytes, str]] = []

    async def one(c: httpx.AsyncClient, base: str) -> None:
        r = await c.get(base + path)
        results.append((r.status_code, r.content, r.headers.get("x-cache", "")))

    h1 = httpx.AsyncClient(trust_env=False, timeout=30, limits=httpx.Limits(max_connections=n))
    h2s = [httpx.AsyncClient(trust_env=False, timeout=30, http1=False, http2=True) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                base = pops[i % len(pops)]
                client = h1 if (i // len(pops)) % 2 else h2s[(i // (2 * len(pops))) % len(h2s)]
                tg.start_soon(one, client, base)
    finally:
        for c in (h1, *h2s):
            await c.aclose()
    return results


def _collapse(folder: Path, n: int, *, ram: str = "64MiB") -> None:
    body = bytes(range(256)) * 256  # 64 KiB, streamed by the origin in 8 pieces over ~1.6 s
    path = "/t/cold/seg-1.m4s"
    with up_edge(folder, ram=ram) as edge:
        edge.origin.objects[path] = Obj(body, [("cache-control", "max-age=60")], chunk_delay_s=0.2)
        started = time.monotonic()
        results = anyio.run(_fire, [edge.pop(i) for i in range(len(POPS))], path, n,
                            backend_options={"use_uvloop": True})
        taken = time.monotonic() - started
        bad = [(s, len(b), x) for s, b, x in results if s != 200 or b != body]
        assert len(results) == n and not bad, (len(results), bad[:5])
        assert edge.origin.fetches[path] == 1, edge.origin.fetches
        # Most requests came while the one fetch was under way (the rest were hits after it).
        misses = sum(1 for _, _, x in results if x.startswith("Miss"))
        assert misses > n // 3, (misses, taken)
        time.sleep(0.3)  # the access lines of the last answers reach the log files
        for pop_id in POPS:
            served = Counter(line["worker"] for line in edge.access_lines(pop_id)
                             if line["cs-uri-stem"] == path and line["sc-status"] == 200)
            assert set(served) == {0, 1}, (pop_id, served)
            assert sum(served.values()) == n // len(POPS) + (POPS.index(pop_id) < n % len(POPS)), served


def test_300_concurrent_requests_over_three_pops_of_two_workers_make_one_origin_fetch(tmp_path):
    _collapse(tmp_path, 300)


@pytest.mark.slow
def test_1000_concurrent_requests_over_three_pops_of_two_workers_make_one_origin_fetch(tmp_path):
    _collapse(tmp_path, 1000)
