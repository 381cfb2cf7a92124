"""The ``edge`` daemon: one worker process of a POP, a regional cache or a shield.

:func:`run_edge` is the role's entry point. Each worker opens its stores (a POP's RAM tier is
its own; the disk tier is shared by the daemon's workers through edge-store's LMDB index),
builds its upstream client and the router over the next tier, and serves:

- the cache on ``port``: HTTP/1.1 and h2c (prior knowledge), every worker on one port with
  SO_REUSEPORT; HTTPS with ALPN (h2, http/1.1) on ``tls_port`` when it is configured, with the
  operator's files or, for ``"auto"``, the cluster's local CA's leaf (:mod:`headwater.localca`);
- the admin endpoint on ``admin_port``: /healthz (tier, hits, misses, cached bytes, upstreams'
  state, ``load`` for the GeoDNS's health checks, purges applied) and /metrics, and the signed
  invalidation routes ``POST /_hw/invalidate`` and ``GET /_hw/purges`` (:mod:`.invalidation`,
  whose pullers run in the worker's task group).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import anyio

from headwater.admin import ADMIN_LIMITS, admin_app, export_stats
from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import ClusterConfig
from headwater.http import serve
from headwater.localca import client_ssl_context, tls_context
from headwater.log import get_logger
from headwater.metrics import Registry, add_process_metrics
from headwater.workermetrics import shared_metrics
from headwater.rpc.auth import cluster_secret

from .access import FrontDoor
from .adminauth import admin_key
from .app import EdgeApp
from .config import CdnConfig, EdgeConfig
from .invalidation import MAX_BODY_BYTES, Invalidation
from .scrapemetrics import add_edge_scrape_metrics
from .store.disk import DiskSettings, DiskStore
from .store.ram import RamStore
from .tiers import TierRouter, Upstream
from .upstream import OriginFetcher, UpstreamClient

__all__ = ["DiskUpkeep", "next_tier", "open_stores", "run_edge"]

log = logging.getLogger("headwater.edge")


def next_tier(cluster: ClusterConfig, node: EdgeConfig, clock: Clock = SYSTEM_CLOCK) -> TierRouter | None:
    """The router over the tier this daemon fetches from; None when that is the origin."""
    edges = tuple(getattr(cluster, "edge", ()) or ())
    wanted = {"pop": ("regional", "shield"), "regional": ("shield",), "shield": ()}[node.tier]
    for tier in wanted:
        members = [e for e in edges if e.tier == tier and (not node.upstreams or e.id in node.upstreams)]
        if members:
            return TierRouter([Upstream(id=e.id, host=e.host, port=e.port) for e in members],
                              fall=node.upstream_fall, down_s=node.upstream_down_s, clock=clock.monotonic)
    return None


class DiskUpkeep(BackgroundLoop[int]):
    """The disk tier's background work (``DiskStore.run_once``): journal the hits seen, take over
    as the evictor when no worker is, and as the evictor replay the journal into the eviction
    policy and evict. Without it no worker ever becomes the evictor: the tier then evicted only
    by its hard bound at commit (oldest commit first, a FIFO whatever the policy) and the hit
    journal grew to its cap (found by the simulator's live check, bench/simulate/livecheck.py).
    Once a worker is the evictor, its own commits run a pass too; this loop covers the others'."""

    name = "edge.disk_upkeep"

    def __init__(self, disk: DiskStore, *, clock: Clock = SYSTEM_CLOCK, interval_s: float = 0.2) -> None:
        super().__init__(interval_s=interval_s, clock=clock)
        self.disk = disk

    async def one_pass(self) -> int:
        return self.disk.run_once()

    def summary(self, evicted: int) -> dict[str, Any] | None:
        return None  # (five passes a second: no line each)


def open_stores(node: EdgeConfig, worker: int) -> list[Any]:
    """The tiers of this worker: a POP's RAM store (its own), then the disk store (shared)."""
    stores: list[Any] = []
    if node.tier == "pop" and node.ram_bytes > 0:
        stores.append(RamStore(node.ram_bytes))
    stores.append(DiskStore(DiskSettings(cache_dir=Path(node.cache_dir), capacity_bytes=node.disk_bytes)))
    return stores


async def run_edge(cluster: ClusterConfig, node: EdgeConfig, *, worker: int = 0, clock: Clock = SYSTEM_CLOCK,
                   purges_refused: str | None = None,
                   task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve one worker of ``node`` until cancelled (the ``edge`` role's entry point).

    ``purges_refused``: this worker takes no purge (``edge serve --workers N``, where no one
    process could hold the purge log); its admin port says why to whoever sends one."""
    registry = Registry()
    add_process_metrics(registry)
    # First: with tls_cert = "auto" this makes the local CA on a first start without `headwater up`,
    # which the upstream client below then trusts.
    tls = tls_context(cluster, node.tls_cert, node.tls_key, clock=clock) if node.tls_port is not None else None
    stores = open_stores(node, worker)
    # An https origin signed by the cluster's local CA (the gateway with tls_cert = "auto") verifies.
    # Its pool per upstream is as large as the worker's upstream slots (edge.upstreamslots), which
    # bound it first: past them a fetch queues (then 503), never waits out a connect timeout for a
    # 504 as though the upstream had failed.
    upstream = UpstreamClient(connect_timeout_s=node.connect_timeout_s, read_timeout_s=node.read_timeout_s,
                              max_connections=node.upstream_slots.max_upstream_fetches,
                              verify=client_ssl_context(cluster))
    router = next_tier(cluster, node, clock)
    distributions = tuple(getattr(cluster, "distributions", ()) or ())
    # The origins' breaker follows the tiers' rule and settings (upstream_fall, upstream_down_seconds).
    origins = {d.name: OriginFetcher(cluster, d, upstream, clock=clock.time, fall=node.upstream_fall,
                                     down_s=node.upstream_down_s, monotonic=clock.monotonic)
               for d in distributions} if router is None else {}
    # Workers share the port: the access line says which one answered (the kernel chose).
    access_log = get_logger(node.id).bind(worker=worker)
    # A POP's front door (client limits, rules, signed URLs); the other tiers' clients are POPs.
    door = FrontDoor(getattr(cluster, "cdn", None) or CdnConfig(), distributions, registry=registry,
                     tier=node.tier, monotonic=clock.monotonic, wall=clock.time) if node.tier == "pop" else None
    if door is not None:
        for key in (getattr(cluster, "cdn", None) or CdnConfig()).keys.keys:
            if key.missing:
                # Fail closed (what it signs is refused), but say why every signed URL is a 403.
                log.warning("edge: %s: CDN key %s is not made yet (%s): URLs signed with it are refused; "
                            "copy the file from the host whose `headwater up` made it", node.id, key.id,
                            key.auto_file, extra={"event": "edge.key_missing", "key_id": key.id})
    hooks: dict[str, Any] = {} if door is None else {"on_connection": door.on_connection,
                                                      "on_disconnect": door.on_disconnect,
                                                      "on_flood": door.on_flood}
    purges = Invalidation(cluster=cluster, node=node, distributions=distributions, stores=stores,
                          top=router is None, worker=worker, clock=clock,
                          key=lambda: admin_key(cluster_secret(cluster)), refused=purges_refused)
    try:
        await purges.open()
        async with anyio.create_task_group() as tg:
            tg.start_soon(upstream.run)
            app = EdgeApp(node=node, distributions=distributions, stores=stores, upstream=upstream,
                          next_tier=router, origins=origins, registry=registry, spawn=tg.start_soon,
                          clock=clock, access_log=access_log, front_door=door, purges=purges,
                          promotion=node.promotion,
                          prefetch=(getattr(cluster, "cdn", None) or CdnConfig()).prefetch,
                          compression=(getattr(cluster, "cdn", None) or CdnConfig()).compression)
            export_stats(registry, "hw_edge_worker", lambda: {
                **app.counts, "in_flight": len(app.collapser.flights), "active": app.active,
                "upstream_fetches": app.slots["fetch"].in_use, "rest_fetches": app.slots["rest"].in_use,
                "upstream_waiting": app.slots["fetch"].waiting + app.slots["rest"].waiting})
            purges.flights = app.collapser.flights
            export_stats(registry, "hw_edge_purge", purges.stats)
            add_edge_scrape_metrics(registry, node.tier, stores, origins)
            for puller in purges.pullers():
                tg.start_soon(puller.run_forever)
            tg.start_soon(DiskUpkeep(stores[-1], clock=clock).run_forever)

            async def health() -> dict[str, Any]:
                return {**app.health(), "worker": worker}

            await tg.start(lambda task_status: serve(app, host=node.host, port=node.port, limits=node.limits,
                                                     reuse_port=True, clock=clock, task_status=task_status,
                                                     **hooks))
            if tls is not None:
                await tg.start(lambda task_status: serve(app, host=node.host, port=node.tls_port, limits=node.limits,
                                                         ssl_context=tls, reuse_port=True, clock=clock,
                                                         task_status=task_status, **hooks))
            # whichever worker answers a scrape, every worker's series (headwater/workermetrics.py)
            metrics = shared_metrics(cluster, node, registry, worker)
            tg.start_soon(metrics.run_forever)
            admin = purges.admin_app(admin_app(health=health, registry=metrics))
            # Invalidation bodies, and long polls that must outlast no idle timeout.
            admin_limits = dataclasses.replace(
                ADMIN_LIMITS, max_body_bytes=MAX_BODY_BYTES,
                idle_timeout_s=max(ADMIN_LIMITS.idle_timeout_s, purges.config.long_poll_s + 10))
            await tg.start(lambda task_status: serve(admin, host=node.host, port=node.admin_port, limits=admin_limits,
                                                     reuse_port=True, clock=clock, task_status=task_status))
            log.info("edge: %s (%s) serving on %s:%d, worker %d", node.id, node.tier, node.host, node.port, worker,
                     extra={"event": "edge.started", "tier": node.tier, "worker": worker})
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
            await purges.aclose()
        for store in stores:
            try:
                store.close()
            except Exception:
                log.exception("edge: closing a store failed")
