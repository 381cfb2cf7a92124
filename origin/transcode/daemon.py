"""The ``transcoder`` daemon: one process per worker (``workers`` in ``[transcoder]``), each
leasing ``transcode`` jobs from the origin's catalogue and running them one at a time in a
thread (the work is blocking: ffmpeg runs, S3 PUTs, the packager), with /healthz and /metrics
on ``admin_port`` (shared by the workers with SO_REUSEPORT).

The first worker (``--worker 0``) also runs the version collector (:mod:`.versions`) every
``version_sweep_seconds``.

Stopping (SIGTERM, ``headwater down``) sets the worker's stop flag: a running ffmpeg is
killed, the attempt's prefix deleted and its job handed back to the queue.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from typing import Any

import anyio

from headwater.admin import export_stats, serve_admin
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import ClusterConfig
from headwater.localca import client_ssl_context
from headwater.metrics import Registry, add_process_metrics
from headwater.workermetrics import shared_metrics

from ..catalogue import open_catalogue
from ..daemon import store_settings
from .config import TranscoderConfig, origin_catalogue, videos_bucket
from .versions import VersionCollector
from .worker import StoreSettings, TranscodeWorker, open_objects

__all__ = ["run_transcoder"]

log = logging.getLogger("headwater.origin.transcode")


async def run_transcoder(cluster: ClusterConfig, node: TranscoderConfig, *, worker: int = 0,
                         clock: Clock = SYSTEM_CLOCK,
                         task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Run one transcode worker until cancelled (the ``transcoder`` role's entry point)."""
    registry = Registry()
    add_process_metrics(registry)
    origin = cluster.origin
    if origin is None:
        raise ValueError("transcoder: cluster.toml has no [origin] section")
    endpoint, access, secret, region = store_settings(cluster, origin)
    trust = client_ssl_context(cluster) if endpoint.startswith("https:") else None
    store = StoreSettings(endpoint=endpoint, access_key=access, secret_key=secret, region=region,
                          videos_bucket=videos_bucket(cluster),
                          ssl_context=trust if isinstance(trust, ssl.SSLContext) else None)
    catalogue = open_catalogue(origin_catalogue(cluster), clock=clock)
    stop = threading.Event()
    name = f"{node.id}#{worker}@{os.uname().nodename}:{os.getpid()}"
    job_worker = TranscodeWorker(node, catalogue, store, cluster=cluster, name=name,
                                 scratch=node.scratch_dir / f"w{worker}", clock=clock, stop=stop)
    # The first worker of each transcoder also sweeps retired versions (versions.py): one
    # sweeper per host is plenty, and several hosts' sweeps are safe together.
    collector = VersionCollector(catalogue, lambda: open_objects(store), bucket=store.videos_bucket,
                                 retention_s=node.version_retention_s, clock=clock) if worker == 0 else None
    export_stats(registry, "hw_transcoder",
                 lambda: {**job_worker.counts, **(collector.counts if collector is not None else {})})

    async def health() -> dict[str, Any]:
        return {"status": "ok", "role": "transcoder", "id": node.id, "pid": os.getpid(), "worker": worker,
                "workers": node.workers, **job_worker.counts, **(collector.counts if collector is not None else {}),
                "current": job_worker.current}

    async def stop_on_cancel() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()

    try:
        async with anyio.create_task_group() as tg:
            # whichever worker answers a scrape, every worker's series (headwater/workermetrics.py)
            metrics = shared_metrics(cluster, node, registry, worker)
            await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                           registry=metrics, reuse_port=True,
                                                           task_status=task_status))
            tg.start_soon(metrics.run_forever)
            tg.start_soon(stop_on_cancel)
            # Not cancellable: on cancel the stop flag ends the loop (ffmpeg killed, the job handed back).
            tg.start_soon(lambda: anyio.to_thread.run_sync(job_worker.run_forever))
            if collector is not None:
                tg.start_soon(lambda: anyio.to_thread.run_sync(collector.run_forever, stop, node.version_sweep_s))
            log.info("transcoder: %s leasing transcode jobs", name, extra={"event": "transcode.started"})
            task_status.started()
    finally:
        stop.set()
        catalogue.close()
