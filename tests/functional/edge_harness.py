"""What the edge's functional tests share: a test origin whose answers the test sets and whose
fetches it counts, the five-daemon cluster.toml (two POPs, two regionals, a shield), and an
:class:`EdgeCluster` running every daemon in-process (through the role's entry point, in a thread
with its own event loop), with single daemons stopped and started again on the same cache.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import anyio
import anyio.from_thread

from headwater.config import ClusterConfig, load
from headwater.edge.daemon import run_edge
from headwater.http import Request, Response, serve
from headwater.rpc.auth import ensure_cluster_secret
from tests.cluster import free_ports

__all__ = ["Obj", "ControlledOrigin", "CONFIG", "EdgeCluster", "running_edge"]


@dataclass
class Obj:
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    etag: str | None = None
    chunk_delay_s: float = 0.0  # a slow origin: the body in 8 pieces, this long apart
    truncate: bool = False  # declare the full length, send half, then end
    # Set by the test when the rest may come: the body's first piece is sent, then the origin
    # waits for it (a threading.Event: the test sets it from outside the origin's event loop).
    hold: threading.Event | None = None
    # Count the answers for this path in progress at once (ControlledOrigin.sending, .peak;
    # ControlledOrigin._counted says until when). Such a body honours ``hold`` too (the pieces
    # after the first wait for it); truncate and chunk_delay_s do not apply to it.
    counted: bool = False


class ControlledOrigin:
    """An origin the test controls: ``objects`` by path, ``fetches`` counted by path."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.fetches: Counter[str] = Counter()
        self.conditionals: Counter[str] = Counter()
        self.ranges: Counter[str] = Counter()  # 206s answered to "Range: bytes=N-" by path
        self.scope: anyio.CancelScope | None = None
        self.sending: Counter[str] = Counter()  # answers of Obj.counted paths being sent now
        self.peak: Counter[str] = Counter()  # ... and the most at once

    def _counted(self, path: str, body: bytes, hold: threading.Event | None = None) -> Any:
        """``body`` in 64 KiB pieces, counted in ``sending`` from the request until its last
        piece is handed to the server (not until that is sent: the edge reads it at its viewer's
        pace, and may ask again the moment it has it) or the edge lets go of it. The pieces after
        the first wait for ``hold``, if given."""
        async def pieces():
            self.sending[path] += 1
            self.peak[path] = max(self.peak[path], self.sending[path])
            counted = True
            try:
                for i in range(0, len(body), 64 * 1024):
                    while i and hold is not None and not hold.is_set():
                        await anyio.sleep(0.02)
                    if i + 64 * 1024 >= len(body):
                        self.sending[path] -= 1
                        counted = False
                    yield body[i:i + 64 * 1024]
            finally:
                if counted:
                    self.sending[path] -= 1
        return pieces()

    async def app(self, request: Request) -> Response:
        self.fetches[request.path] += 1
        obj = self.objects.get(request.path)
        if obj is None:
            return Response(404, [("content-length", "0")], b"")
        headers = list(obj.headers)
        if obj.etag:
            headers.append(("etag", obj.etag))
            if request.headers.get("if-none-match") == obj.etag:
                self.conditionals[request.path] += 1
                return Response(304, headers, b"")
        wanted = request.headers.get("range", "")
        if_range = request.headers.get("if-range")
        if (wanted.startswith("bytes=") and wanted.endswith("-") and wanted[6:-1].isdigit()
                and (if_range is None or if_range == obj.etag) and int(wanted[6:-1]) < len(obj.body)):
            # (only what the edge asks: the rest from an offset, under If-Range with the ETag)
            start = int(wanted[6:-1])
            self.ranges[request.path] += 1
            rest = obj.body[start:]
            return Response(206, headers + [("content-length", str(len(obj.body) - start)),
                                            ("content-range", f"bytes {start}-{len(obj.body) - 1}/{len(obj.body)}")],
                            self._counted(request.path, rest, obj.hold) if obj.counted else rest)
        headers.append(("content-length", str(len(obj.body))))
        if obj.counted:
            return Response(200, headers, self._counted(request.path, obj.body, obj.hold))
        if obj.truncate:
            async def half():
                yield obj.body[: len(obj.body) // 2]
            return Response(200, headers, half())
        if obj.chunk_delay_s or obj.hold is not None:
            async def slow():
                step = max(1, len(obj.body) // 8)
                for i in range(0, len(obj.body), step):
                    while i and obj.hold is not None and not obj.hold.is_set():
                        await anyio.sleep(0.02)
                    await anyio.sleep(obj.chunk_delay_s)
                    yield obj.body[i:i + step]
            return Response(200, headers, slow())
        return Response(200, headers, obj.body)

    async def run(self, port: int, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as self.scope:
            await serve(self.app, host="127.0.0.1", port=port, task_status=task_status)


# {origin}: the origin's port; {p[0..9]}: each daemon's port and admin port.
CONFIG = """
[cluster]
name = "edge-test"
data_dir = "var"

# Every test request comes from 127.0.0.1: one client to the POPs' limits, which 200 concurrent
# connections would exceed with the defaults (64 connections, burst 200).
[cdn.client_limits]
max_connections_per_client = 1000
requests_per_second = 1000
burst = 5000

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
ram_size = "64MiB"

[[edge]]
id = "pop-2"
tier = "pop"
port = {p[2]}
admin_port = {p[3]}
lat = 40.7
lon = -74.0
ram_size = "64MiB"

[[edge]]
id = "regional-1"
tier = "regional"
port = {p[4]}
admin_port = {p[5]}
disk_size = "64MiB"

[[edge]]
id = "regional-2"
tier = "regional"
port = {p[6]}
admin_port = {p[7]}
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {p[8]}
admin_port = {p[9]}
disk_size = "64MiB"
"""


@dataclass
class EdgeCluster:
    """The running cluster: its config (and file), the origin, the portal into its event loop."""

    cfg: ClusterConfig
    config_path: Path
    origin: ControlledOrigin
    origin_port: int
    portal: Any
    tasks: dict[str, concurrent.futures.Future] = field(default_factory=dict)
    others: list[concurrent.futures.Future] = field(default_factory=list)

    def url(self, node_id: str) -> str:
        e = self.cfg.daemon(node_id)
        return f"http://{e.host}:{e.port}"

    def admin(self, node_id: str) -> str:
        e = self.cfg.daemon(node_id)
        return f"http://{e.host}:{e.admin_port}"

    @property
    def pops(self) -> list[str]:
        return [self.url(e.id) for e in self.cfg.edge if e.tier == "pop"]

    def start(self, node_id: str) -> None:
        """Start one daemon (again: on the same cache_dir) and wait until it listens."""
        future, _ = self.portal.start_task(functools.partial(run_edge, self.cfg, self.cfg.daemon(node_id)))
        self.tasks[node_id] = future

    def stop(self, node_id: str) -> None:
        """Stop one daemon (cancel its task, as a SIGTERM does) and wait until it is gone."""
        future = self.tasks.pop(node_id)
        future.cancel()
        concurrent.futures.wait([future], timeout=10)

    def restart_origin(self) -> None:
        self.others.append(self.portal.start_task(self.origin.run, self.origin_port)[0])


@contextmanager
def running_edge(folder: Path, config: str = CONFIG) -> Iterator[EdgeCluster]:
    """Every ``[[edge]]`` daemon of ``config`` and the origin, on fresh ports, with the cluster
    secret made as ``headwater up`` makes it; all stopped on exit."""
    ports = free_ports(11)
    path = folder / "cluster.toml"
    path.write_text(config.format(origin=ports[10], p=ports))
    cfg = load(str(path))
    ensure_cluster_secret(cfg)
    origin = ControlledOrigin()
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        cluster = EdgeCluster(cfg=cfg, config_path=path, origin=origin, origin_port=ports[10], portal=portal)
        cluster.others.append(portal.start_task(origin.run, ports[10])[0])
        # Upper tiers first: a POP's purge puller then catches up at its first pull.
        for node in sorted(cfg.edge, key=lambda e: ("shield", "regional", "pop").index(e.tier)):
            cluster.start(node.id)
        try:
            yield cluster
        finally:
            for f in [*cluster.tasks.values(), *cluster.others]:
                f.cancel()
