"""``[[dns.pops]]`` entries that name ``[[edge]]`` POPs and give nothing else of their own
(a weight): the running GeoDNS (two ``headwater node`` workers) answers a London client with the
London POP's ``host``, steered by the POP table's ``lat``/``lon``, and probes the ``/healthz``
on its ``admin_port``: when that stand-in answers 503 the answer moves to the next POP. The
edge daemons are not started; their tables only say where the POPs are."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .dns_harness import NodeWorkers, StandinHealthz, free_port, wait_for

pytestmark = pytest.mark.timeout(60)

LONDON = "203.0.113.0/24"


def write_config(folder: Path, port: int, admin_port: int, lon_admin: int, nyc_healthz: str) -> Path:
    path = folder / "cluster.toml"
    path.write_text(f"""
[cluster]
name = "dns-edge-pops"
data_dir = "var"
[dns]
id = "dns-e"
port = {port}
admin_port = {admin_port}
workers = 2
zone = "cdn.headwater.test."
reload_interval_seconds = 0
[dns.rrl]
enabled = false
[dns.health]
interval_seconds = 0.3
timeout_seconds = 0.3
rise = 2
fall = 2
[[dns.steered]]
name = "video"
[[dns.pops]]
name = "pop-lon"
weight = 1.0
[[dns.pops]]
name = "pop-nyc"
healthz = "{nyc_healthz}"
[[dns.geo.rules]]
cidr = "{LONDON}"
lat = 51.5
lon = -0.1

[[distributions]]
name = "video"
hostnames = ["video.cdn.headwater.test"]
origin = "http://127.0.0.1:9"

[[edge]]
id = "pop-nyc"
tier = "pop"
host = "127.0.0.2"
port = {free_port()}
admin_port = {free_port()}
lat = 40.71
lon = -74.0
region = "us"

[[edge]]
id = "pop-lon"
tier = "pop"
host = "127.0.0.1"
port = {free_port()}
admin_port = {lon_admin}
lat = 51.5
lon = -0.12
region = "eu"
""")
    return path


def dig(port: int) -> list[str]:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=2",
                          f"+subnet={LONDON}", "video.cdn.headwater.test", "A"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_pops_named_as_edge_pops_are_answered_and_probed_as_their_tables_say(tmp_path):
    lon, nyc = StandinHealthz(), StandinHealthz()
    port, admin_port = free_port(), free_port()
    lon_admin = int(lon.url.split(":")[2].split("/")[0])
    path = write_config(tmp_path, port, admin_port, lon_admin, nyc.url)
    workers = NodeWorkers(path, "dns-e", 2, admin_port)
    try:
        workers.wait_ready()
        # pop-lon's address is its [[edge]] host, chosen for London by the table's lat/lon
        wait_for(lambda: all(dig(port) == ["127.0.0.1"] for _ in range(6)), 10)
        assert lon.calls > 0  # probed on its admin_port, the URL no [[dns.pops]] line gave
        lon.status = 503
        wait_for(lambda: all(dig(port) == ["127.0.0.2"] for _ in range(6)), 10, interval=0.05)
        lon.status = 200
        wait_for(lambda: all(dig(port) == ["127.0.0.1"] for _ in range(6)), 10, interval=0.05)
    finally:
        workers.stop()
        lon.close()
        nyc.close()
