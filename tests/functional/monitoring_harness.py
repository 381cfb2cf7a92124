"""One daemon of every role on loopback, for the monitoring tests.

The smallest cluster that still has each kind of target Prometheus scrapes: the object store
(EC 2+1 on three storage nodes, one metadata node, the gateway, the repair daemon), a GeoDNS
server watching the POP, an edge POP and its shield, the licence server, the origin and one
transcoder; each daemon ``headwater node ID``, its own process, as systemd runs them. The
gateway and the GeoDNS run two workers each on one admin port, so Prometheus scrapes the
workers' series merged (headwater/workermetrics.py).

They start as soon as what they need is there rather than role by role as ``headwater up`` does
(which waits for each role's health before the next: about 45 s here against about 20): the
secret and the local CA first (what ``up`` makes), then the object store, the licence server,
the DNS and the edge together; the origin and the transcoder once the store and the licence
server (whose key store the transcoder opens) are healthy.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import httpx

from headwater import localca
from headwater.config import load
from headwater.drm.client import EntitlementMinter
from tests.cluster import Cluster, free_ports
from tests.functional.dns_harness import NodeWorkers
from tests.functional.origin_harness import LICENCE_SECTION, POP_AND_SHIELD, Daemon

__all__ = ["monitored_cluster", "running_monitored_cluster", "wait_healthy", "SECTIONS"]

# Appended to the object store's cluster.toml. The origin speaks plain HTTP (nothing here needs
# its TLS); the licence server takes the local CA's certificate ("auto"), as by default.
SECTIONS = """
[origin]
port = {origin}
admin_port = {origin_admin}
tls = false

[[origin.clients]]
id = "viewer-app"
scopes = ["view"]
secret = "sealed"

""" + LICENCE_SECTION + """
[transcoder]
admin_port = {transcoder_admin}
workers = 1
poll_seconds = 0.5

[[transcoder.ladder]]
name = "90p"
height = 90
bitrate = "100k"

""" + POP_AND_SHIELD + """
[dns]
id = "dns-1"
port = {dns}
admin_port = {dns_admin}
workers = 2
zone = "cdn.headwater.test."
reload_interval_seconds = 0

[dns.rrl]
enabled = false

[dns.health]
interval_seconds = 0.5
timeout_seconds = 0.5
rise = 1
fall = 1

[[dns.steered]]
name = "video"
answers = 1

[[dns.pops]]
name = "pop-1"
ipv4 = ["127.0.0.1"]
lat = 51.5
lon = -0.12
healthz = "http://127.0.0.1:{pop_admin}/healthz"
"""

PORT_NAMES = ("origin", "origin_admin", "licence", "licence_admin", "licence_rpc", "transcoder_admin", "pop", "pop_admin",
              "shield", "shield_admin", "dns", "dns_admin")


def monitored_cluster(root: Path) -> Cluster:
    """A Cluster (not started) whose cluster.toml has one daemon of every role."""
    c = Cluster(root, k=2, m=1, storage_nodes=3, metadata_nodes=1, workers=2,
                repair={"interval_seconds": 1})
    taken = {p for d in c.daemons for p in (d.port, d.admin_port)}
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES), exclude=taken)))
    with open(c.config_path, "a") as f:
        f.write(SECTIONS.format(**ports))
    return c


def wait_healthy(config_path: Path, timeout: float = 90.0) -> list[str]:
    """Wait until every daemon of ``config_path`` answers /healthz 200; returns their ids."""
    cfg = load(str(config_path))
    todo = {d.id: f"http://{d.host}:{d.admin_port}/healthz" for d in cfg.daemons()}
    ids = list(todo)
    deadline = time.monotonic() + timeout
    while todo:
        for node_id, url in list(todo.items()):
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    del todo[node_id]
            except httpx.HTTPError:
                pass
        if todo and time.monotonic() > deadline:
            raise AssertionError(f"not healthy after {timeout:.0f}s: {sorted(todo)}")
        time.sleep(0.1)
    return ids


@contextlib.contextmanager
def running_monitored_cluster(root: Path) -> Iterator[Cluster]:
    """:func:`monitored_cluster`, every daemon started and healthy; all stopped on exit."""
    c = monitored_cluster(root)
    logs = c.root / "logs"
    others: list[Daemon | NodeWorkers] = []
    try:
        c.provision_secret()
        cfg = load(str(c.config_path))
        # What `headwater up` makes before any daemon: the local CA's certificates and the
        # licence token key (made once here, so the daemons do not race to create them).
        localca.prepare(cfg)
        EntitlementMinter(cfg)
        early = [d for d in cfg.daemons() if d.role in ("licence", "edge")]
        others += [Daemon(c.config_path, d.id, d.admin_port, logs / f"{d.id}.out") for d in early]
        dns = NodeWorkers(c.config_path, cfg.dns.id, cfg.dns.workers, cfg.dns.admin_port)
        others.append(dns)
        c.start()
        for d in others:
            d.wait_ready() if isinstance(d, NodeWorkers) else d.wait()
        late = [d for d in cfg.daemons() if d.role in ("origin", "transcoder")]
        others += [Daemon(c.config_path, d.id, d.admin_port, logs / f"{d.id}.out") for d in late]
        wait_healthy(c.config_path)
        yield c
    finally:
        for d in reversed(others):
            d.stop()
        c.stop()
