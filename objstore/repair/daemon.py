"""The repair daemon: the reconstructor, the garbage collector and the rebalancer of one cluster.

One process per cluster (``[repair]`` in cluster.toml, role ``repair``): both walk the whole
metadata, so running them once is enough, and they share one metadata client and one set of
storage-node connections. The scrubbers are not here: each storage node scrubs its own disk.

It serves only an admin endpoint: ``/healthz`` reports degraded objects and stripes, repair
progress, storage nodes down (seconds each) and out (down longer than
``node_down_out_seconds``: their fragments are rebuilt elsewhere; the down-timers survive a
restart, kept in ``data_dir/node-liveness.json``) and collector figures (what
``headwater status`` prints); ``/metrics`` the same as ``headwater_repair_*`` (with
``headwater_repair_node_down_seconds{node}`` and ``headwater_repair_node_out{node}`` per down
node), ``headwater_gc_*`` and ``headwater_rebalance_*`` (fragments and bytes moved, pass
progress). A failed pass is logged and counted by reason
(:func:`reconstructor.failure_reason`, the one place repair errors are classified) and the next
pass comes ``interval_seconds`` later; the daemon itself never stops for one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import anyio
import anyio.abc

from headwater.admin import export_stats, serve_admin
from headwater.clock import SYSTEM_CLOCK
from headwater.config import ClusterConfig
from headwater.metrics import Registry, add_process_metrics

from ..config import RepairConfig
from ..datapath import StoragePool
from ..metadata.client import MetadataClient
from .gc import GarbageCollector
from .liveness_file import FILE_NAME, LivenessFile
from .rebalancer import Rebalancer
from .reconstructor import Reconstructor

__all__ = ["run_repair", "repair_health"]

log = logging.getLogger("headwater.repair")


def repair_health(node: RepairConfig, recon: Reconstructor, gc: GarbageCollector | None,
                  rebalancer: Rebalancer | None = None) -> dict[str, Any]:
    """What /healthz says: the last complete pass's figures and the current pass's progress."""
    st = recon.stats()
    live = recon.node_liveness()
    doc: dict[str, Any] = {
        "status": "ok", "role": "repair", "id": node.id,
        "degraded_objects": int(st["degraded_objects"]), "degraded_stripes": int(st["degraded_stripes"]),
        "unreadable_objects": int(st["unreadable_objects"]), "layouts": int(st["layouts"]),
        "passes": int(st["passes"]), "pass_running": bool(st["pass_running"]),
        "pass_progress": round(st["pass_progress"], 3),
        "last_pass_end": st["last_pass_end"] or None,
        "fragments_rebuilt": int(st["fragments_rebuilt"]), "fragments_relocated": int(st["fragments_relocated"]),
        "bytes_rebuilt": int(st["bytes_rebuilt"]), "rebuild_bytes_per_second": round(st["rebuild_bytes_per_second"]),
        "rebuild_failures": int(st["failures"]), "rebuild_rate_limit": node.rebuild_rate_bytes,
        # storage nodes failing every health check: node -> seconds down; "out" ones (down for
        # node_down_out_seconds or longer, 0 = never) have their fragments rebuilt elsewhere
        "nodes_down": live["down"], "nodes_out": live["out"],
        "node_down_out_seconds": node.node_down_out_s,
        "out_fragments_rebuilt": int(st["out_fragments_rebuilt"]),
    }
    if gc is not None:
        g = gc.stats()
        doc["gc"] = {"passes": int(g["passes"]), "fragments_deleted": int(g["fragments_deleted"]),
                     "bytes_deleted": int(g["bytes_deleted"]), "candidates": int(g["candidates"]),
                     "tmp_removed": int(g["tmp_removed"]), "last_pass_end": g["last_pass_end"] or None}
    if rebalancer is not None:
        b = rebalancer.stats()
        doc["rebalance"] = {
            "passes": int(b["passes"]), "pass_running": bool(b["pass_running"]),
            "pass_progress": round(b["pass_progress"], 3), "last_pass_end": b["last_pass_end"] or None,
            "fragments_moved": int(b["fragments_moved"]), "bytes_moved": int(b["bytes_moved"]),
            "last_pass_moved": int(b["last_fragments_moved"]),
            "least_filled": round(b["last_least_filled"], 3), "imbalance": round(b["last_imbalance"], 3),
            "moves_lost_race": int(b["moves_lost_race"]), "old_copies_waiting": int(b["old_copies_waiting"]),
            "old_copies_removed": int(b["old_copies_removed"]), "failures": int(b["failures"]),
            "rate_limit": node.rebalance_rate_bytes,
        }
    return doc


def export_liveness(registry: Registry, recon: Reconstructor) -> None:
    """Per storage node that is down now: ``headwater_repair_node_down_seconds{node}`` and
    ``headwater_repair_node_out{node}`` (1 once out); a node that answers again drops out of both."""
    down = registry.gauge("headwater_repair_node_down_seconds",
                          "seconds a storage node has failed every health check", labels=("node",))
    out = registry.gauge("headwater_repair_node_out",
                         "1 if a storage node is out (down for node_down_out_seconds): its fragments "
                         "are rebuilt elsewhere", labels=("node",))

    def collect() -> None:
        live = recon.node_liveness()
        down.clear()
        out.clear()
        for n, secs in live["down"].items():
            down.labels(n).set(secs)
            out.labels(n).set(1 if n in live["out"] else 0)

    registry.add_collector(collect)


async def run_repair(cluster: ClusterConfig, node: RepairConfig, *,
                     task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
    """Run the reconstructor and (if enabled) the collector until cancelled; admin on
    ``node.admin_port``. ``task_status.started()`` once the admin endpoint listens."""
    registry = Registry()
    add_process_metrics(registry)
    async with MetadataClient(cluster, writer_id=f"{node.id}-{os.getpid()}") as meta, \
            StoragePool(cluster) as pool:
        recon = Reconstructor(cluster, meta, pool, rate_bytes_s=node.rebuild_rate_bytes,
                              interval_s=node.interval_s, clock=SYSTEM_CLOCK,
                              out_after_s=node.node_down_out_s,
                              liveness_file=LivenessFile(node.data_dir / FILE_NAME) if node.data_dir else None)
        gc = (GarbageCollector(meta, pool, grace_s=cluster.objstore.retire_grace_s,
                               interval_s=node.gc_interval_s, clock=SYSTEM_CLOCK) if node.gc else None)
        rebalancer = (Rebalancer(cluster, meta, pool, recon=recon, rate_bytes_s=node.rebalance_rate_bytes,
                                 grace_s=cluster.objstore.retire_grace_s, interval_s=node.rebalance_interval_s,
                                 clock=SYSTEM_CLOCK) if node.rebalance else None)
        export_stats(registry, "headwater_repair", recon.stats)
        export_liveness(registry, recon)
        if gc is not None:
            export_stats(registry, "headwater_gc", gc.stats)
        if rebalancer is not None:
            export_stats(registry, "headwater_rebalance", rebalancer.stats)

        async def health() -> dict[str, Any]:
            return repair_health(node, recon, gc, rebalancer)

        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                           registry=registry, task_status=task_status))
            tg.start_soon(recon.run_forever)
            if gc is not None:
                tg.start_soon(gc.run_forever)
            if rebalancer is not None:
                tg.start_soon(rebalancer.run_forever)
            log.info("repair %s: reconstructor at %d B/s, nodes out after %s, collector %s (grace %.0fs)",
                     node.id, node.rebuild_rate_bytes,
                     f"{node.node_down_out_s:.0f}s down" if node.node_down_out_s else "never",
                     "on" if gc else "off", cluster.objstore.retire_grace_s)
            task_status.started()
