"""Origin failover at the shield, on loopback: a POP, a regional and a shield (real daemons,
in-process through the role's entry point) in front of a primary origin the test breaks (nothing
listening, 503, a hang) and a healthy secondary (the harness's ControlledOrigin).

Covered: a refused, a 503 and a hung primary each end in the secondary's 200 at the viewer, the
hung one at the default timeouts (before the fix the POP and regional gave up, 504, at the moment
the shield failed over); the breaker skipping a primary marked down and probing it again after
its down time; and on /metrics the failovers, the breaker's state, the RAM tier's evictions and a
corrupt disk entry dropped (with its log line).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import anyio
import httpx
import pytest

from headwater.http import Request, Response, serve
from tests.functional.edge_harness import EdgeCluster, Obj, running_edge

# {origin}: the secondary (the harness's ControlledOrigin); {p[6]}: the primary's port.
CONFIG = """
[cluster]
name = "edge-failover"
data_dir = "var"

[cdn.client_limits]
max_connections_per_client = 1000
requests_per_second = 1000
burst = 5000

[[distributions]]
name = "video"
hostnames = ["video.test"]
origin = "http://127.0.0.1:{p[6]}"
secondary_origin = "http://127.0.0.1:{origin}"
TIMEOUTS

[[edge]]
id = "pop-1"
tier = "pop"
port = {p[0]}
admin_port = {p[1]}
lat = 51.5
lon = -0.12
ram_size = "1MiB"

[[edge]]
id = "regional-1"
tier = "regional"
port = {p[2]}
admin_port = {p[3]}
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {p[4]}
admin_port = {p[5]}
disk_size = "64MiB"
BREAKER
"""
# The defaults everywhere (the probe of issue 10), or a breaker with short timers.
DEFAULTS = CONFIG.replace("TIMEOUTS", "").replace("BREAKER", "")
FAST = CONFIG.replace("TIMEOUTS", "origin_timeout_seconds = 0.5").replace(
    "BREAKER", "upstream_fall = 2\nupstream_down_seconds = 1.5")


class Primary:
    """The primary origin, in one of the ways it fails (``mode``), or healthy ("ok")."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.fetches = 0

    async def app(self, request: Request) -> Response:
        self.fetches += 1
        if self.mode == "hang":
            await anyio.sleep(3600)
        if self.mode == "503":
            return Response(503, [("content-length", "0")], b"")
        return Response(200, [("content-length", "7"), ("cache-control", "max-age=60")], b"primary")

    async def run(self, port: int, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        await serve(self.app, host="127.0.0.1", port=port, task_status=task_status)


def start(tmp_path: Path, config: str, mode: str) -> Iterator[tuple[EdgeCluster, Primary]]:
    primary = Primary(mode)
    with running_edge(tmp_path, config) as cluster:
        if mode != "refused":
            port = cluster.cfg.distributions[0].origin.port
            cluster.others.append(cluster.portal.start_task(primary.run, port)[0])
        yield cluster, primary


def offer(cluster: EdgeCluster, path: str, body: bytes = b"secondary") -> None:
    cluster.origin.objects[path] = Obj(body, [("cache-control", "max-age=60")])


def get(cluster: EdgeCluster, path: str, node: str = "pop-1") -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as c:
        return c.get(cluster.url(node) + path, headers={"host": "video.test"})


def metrics(cluster: EdgeCluster, node: str = "shield-1") -> str:
    return httpx.get(cluster.admin(node) + "/metrics", trust_env=False).text


@pytest.mark.parametrize("mode", ["refused", "503"])
def test_a_refused_or_503_primary_fails_over_to_the_secondary(tmp_path, mode):
    for cluster, primary in start(tmp_path, FAST, mode):
        offer(cluster, "/t/a.m4s")
        r = get(cluster, "/t/a.m4s")
        assert r.status_code == 200 and r.content == b"secondary", r.headers
        assert r.headers["x-cache"] == "Miss from pop-1"
        assert cluster.origin.fetches["/t/a.m4s"] == 1
        assert primary.fetches == (1 if mode == "503" else 0)
        assert 'hw_edge_origin_failovers_total{tier="shield",distribution="video"} 1' in metrics(cluster)


def test_a_hung_primary_fails_over_in_time_at_the_default_timeouts(tmp_path):
    """Issue 10's probe: at the defaults the POP and the regional wait longer than the shield's
    origin timeout plus the secondary's answer (before: 10 s each, and a 504 from pop-1)."""
    for cluster, primary in start(tmp_path, DEFAULTS, "hang"):
        offer(cluster, "/t/hung.m4s")
        began = time.monotonic()
        r = get(cluster, "/t/hung.m4s")
        taken = time.monotonic() - began
        assert r.status_code == 200 and r.content == b"secondary", (r.status_code, r.headers)
        assert primary.fetches == 1
        origin_timeout = cluster.cfg.distributions[0].origin_timeout_s
        assert origin_timeout <= taken < origin_timeout + 5


def test_the_breaker_skips_a_down_primary_then_probes_it_after_its_down_time(tmp_path):
    for cluster, primary in start(tmp_path, FAST, "503"):
        for i in range(4):
            offer(cluster, f"/t/{i}.m4s")
        # upstream_fall = 2: two failures in a row mark the primary down
        assert get(cluster, "/t/0.m4s").status_code == 200
        assert get(cluster, "/t/1.m4s").status_code == 200
        assert primary.fetches == 2
        assert 'hw_edge_origin_up{tier="shield",distribution="video",origin="primary"} 0' in metrics(cluster)
        r = get(cluster, "/t/2.m4s")  # skipped: straight to the secondary
        assert r.status_code == 200 and r.content == b"secondary" and primary.fetches == 2
        text = metrics(cluster)
        assert 'hw_edge_origin_failovers_total{tier="shield",distribution="video"} 3' in text
        assert 'hw_edge_origin_up{tier="shield",distribution="video",origin="secondary"} 1' in text
        time.sleep(1.6)  # upstream_down_seconds = 1.5: the next fetch probes the primary
        primary.mode = "ok"
        r = get(cluster, "/t/3.m4s")
        assert r.status_code == 200 and r.content == b"primary" and primary.fetches == 3
        assert cluster.origin.fetches["/t/3.m4s"] == 0
        assert 'hw_edge_origin_up{tier="shield",distribution="video",origin="primary"} 1' in metrics(cluster)


def test_evictions_and_a_corrupt_disk_entry_are_counted_on_metrics(tmp_path, caplog):
    for cluster, _ in start(tmp_path, FAST, "refused"):
        # pop-1's RAM tier is 1 MiB (entries up to 64 KiB): 40 of 48 KiB evict
        for i in range(40):
            offer(cluster, f"/ram/{i}.m4s", bytes([i]) * 48 * 1024)
            assert get(cluster, f"/ram/{i}.m4s").status_code == 200
        line = next(x for x in metrics(cluster, "pop-1").splitlines()
                    if x.startswith('hw_edge_evictions_total{tier="pop",store="ram"}'))
        assert int(float(line.split()[-1])) > 0
        assert 'hw_edge_corrupt_dropped_total{tier="shield",store="disk"} 0' in metrics(cluster)
        # one entry on the shield's disk, its body changed, then read from the shield
        offer(cluster, "/c.m4s", b"stored once")
        assert get(cluster, "/c.m4s", "shield-1").content == b"stored once"
        bodies = [f for f in Path(cluster.cfg.daemon("shield-1").cache_dir, "bodies").rglob("*")
                  if f.is_file() and not f.name.endswith(".part")]
        target = next(f for f in bodies if f.read_bytes() == b"stored once")
        target.write_bytes(b"STORED ONCE")
        with caplog.at_level(logging.WARNING, logger="headwater.edge"):
            r = get(cluster, "/c.m4s", "shield-1")
        assert r.status_code == 200 and r.content == b"stored once"
        assert r.headers["x-cache"] == "Miss from shield-1"  # dropped, fetched again
        assert cluster.origin.fetches["/c.m4s"] == 2
        assert 'hw_edge_corrupt_dropped_total{tier="shield",store="disk"} 1' in metrics(cluster)
        assert any(getattr(rec, "event", "") == "edge.corrupt_dropped" for rec in caplog.records)
