"""Failover through the real daemon: two ``headwater node`` workers probe two stand-in POPs'
/healthz; ``dig`` asks for the steered name with an ECS subnet near the first POP. When that
POP's /healthz starts answering 503 the answer moves to the next POP within about interval x
fall (on every worker), comes back after ``rise`` good probes, and when every POP fails the
answer holds all of them (fail open, never empty). ``headwater status`` shows each POP's health
as the DNS sees it along the way."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import dns.edns
import dns.message
import dns.query
import httpx
import pytest

from headwater.cli import main

from .dns_harness import NodeWorkers, StandinHealthz, free_port, wait_for

pytestmark = pytest.mark.timeout(60)

INTERVAL_S, RISE, FALL = 0.3, 2, 2
LONDON = "203.0.113.0/24"  # a geo rule places it in London: lon is nearest, nyc next
LON, NYC = "192.0.2.1", "192.0.2.2"
# A flip is seen within interval x fall, plus one interval (a pass may be under way when the
# status changes), plus slack for a loaded test machine.
SLACK_S = 1.5


def write_config(folder: Path, port: int, admin_port: int, healthz: list[str]) -> Path:
    path = folder / "cluster.toml"
    path.write_text(f"""
[cluster]
name = "dns-failover"
data_dir = "var"
[dns]
id = "dns-f"
port = {port}
admin_port = {admin_port}
workers = 2
zone = "cdn.headwater.test."
reload_interval_seconds = 0
[dns.rrl]
enabled = false
[dns.health]
interval_seconds = {INTERVAL_S}
timeout_seconds = {INTERVAL_S}
rise = {RISE}
fall = {FALL}
[[dns.steered]]
name = "video"
answers = 1
[[dns.pops]]
name = "lon"
ipv4 = ["{LON}"]
lat = 51.5
lon = -0.12
healthz = "{healthz[0]}"
[[dns.pops]]
name = "nyc"
ipv4 = ["{NYC}"]
lat = 40.7
lon = -74.0
healthz = "{healthz[1]}"
[[dns.geo.rules]]
cidr = "{LONDON}"
lat = 51.5
lon = -0.1
""")
    return path


@pytest.fixture
def cluster(tmp_path):
    lon, nyc = StandinHealthz(), StandinHealthz()
    port, admin_port = free_port(), free_port()
    path = write_config(tmp_path, port, admin_port, [lon.url, nyc.url])
    workers = NodeWorkers(path, "dns-f", 2, admin_port)
    try:
        workers.wait_ready()
        yield SimpleNamespace(path=path, port=port, admin_port=admin_port, lon=lon, nyc=nyc)
    finally:
        workers.stop()
        lon.close()
        nyc.close()


def answer(c) -> list[str]:
    """The steered A for a London client (fresh socket: either worker may answer)."""
    q = dns.message.make_query("video.cdn.headwater.test.", "A", use_edns=0,
                               options=[dns.edns.ECSOption.from_text(LONDON)])
    msg = dns.query.udp(q, "127.0.0.1", port=c.port, timeout=2)
    assert msg.answer, "never an empty answer"
    return [r.address for r in msg.answer[0]]


def settled(c, expected: list[str], n: int = 12) -> bool:
    """``n`` answers in a row (spread over both workers) are ``expected``."""
    return all(answer(c) == expected for _ in range(n))


def dig(c) -> list[str]:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(c.port), "+short", "+tries=1", "+time=2",
                          f"+subnet={LONDON}", "video.cdn.headwater.test", "A"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def status(c, capsys) -> str:
    """What ``headwater status`` prints (its warnings included)."""
    capsys.readouterr()
    main(["status", "-c", str(c.path)])
    out = capsys.readouterr()
    return out.out + out.err


def test_failover_recovery_and_fail_open_through_the_daemon(cluster, capsys):
    c = cluster
    wait_for(lambda: settled(c, [LON]), 10)
    assert dig(c) == [LON]

    c.lon.status = 503
    took = wait_for(lambda: settled(c, [NYC]), 10, interval=0.02)
    assert INTERVAL_S * (FALL - 1) * 0.8 <= took <= INTERVAL_S * (FALL + 1) + SLACK_S, took
    assert dig(c) == [NYC]
    shown = status(c, capsys)
    lines = {line.split()[0]: line for line in shown.splitlines() if line.startswith("  ")}
    assert "down" in lines["lon"] and "HTTP 503" in lines["lon"] and "up" in lines["nyc"], shown
    def lon_up() -> list[str]:  # per worker: each runs its own health checks, all must see it down
        text = httpx.get(f"http://127.0.0.1:{c.admin_port}/metrics").text
        return [line.rsplit(" ", 1)[1] for line in text.splitlines()
                if line.startswith("headwater_dns_pop_up{") and 'pop="lon"' in line]

    wait_for(lambda: lon_up() == ["0", "0"], 5, interval=0.1)  # both workers' series, one published ≤ 1 s ago

    c.lon.status = 200
    took = wait_for(lambda: settled(c, [LON]), 10, interval=0.02)
    assert took <= INTERVAL_S * (RISE + 1) + SLACK_S, took
    assert dig(c) == [LON]

    c.lon.status = c.nyc.status = 500
    wait_for(lambda: settled(c, [LON, NYC]), 10, interval=0.02)  # fail open: every POP, nearest first
    assert dig(c) == [LON, NYC]
    shown = status(c, capsys)
    assert "every POP is down" in shown and "POPs up 0/2" in shown, shown
