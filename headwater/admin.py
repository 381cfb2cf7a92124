"""The admin endpoint every daemon serves on its ``admin_port``: GET /healthz and GET /metrics.

``health()`` returns a dict of what the daemon wants operators to see (free space, entries, EC
scheme). It reports trouble with ``"status"`` set to anything but ``"ok"`` (or by raising), which
answers 503: ``"degraded"`` when it serves what it can with a dependency it does not start itself
away (``headwater up`` counts it started), anything else while it is not ready
(:mod:`headwater.health`). ``pid`` is added when the dict has none, so ``headwater status`` can
show it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Awaitable, Callable, Protocol

import anyio
from anyio.abc import TaskStatus

from .config import HttpLimits
from .http.types import Request, Response
from .metrics import CONTENT_TYPE, Registry

__all__ = ["serve_admin", "admin_app", "ADMIN_LIMITS", "export_stats", "MetricsSource"]

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


class MetricsSource(Protocol):
    """What /metrics serves: a :class:`~headwater.metrics.Registry`, or the workers' registries
    together (:class:`~headwater.workermetrics.WorkerMetrics`)."""

    def render(self) -> str: ...

# Scrapers and health probes send tiny requests; nothing here needs a body.
ADMIN_LIMITS = HttpLimits(max_header_bytes=16 * 1024, max_body_bytes=0, header_timeout_s=5.0,
                          idle_timeout_s=30.0, body_timeout_s=5.0, max_concurrent_streams=16,
                          max_connections=256)


def _json(status: int, doc: dict[str, Any], head: bool) -> Response:
    body = json.dumps(doc, default=str, separators=(",", ":")).encode() + b"\n"
    headers = [("content-type", "application/json"), ("content-length", str(len(body))),
               ("cache-control", "no-store")]
    return Response(status=status, headers=headers, body=b"" if head else body)


def _text(status: int, text: str, head: bool, content_type: str = "text/plain; charset=utf-8",
          extra: list[tuple[str, str]] | None = None) -> Response:
    body = text.encode()
    headers = [("content-type", content_type), ("content-length", str(len(body))),
               ("cache-control", "no-store"), *(extra or [])]
    return Response(status=status, headers=headers, body=b"" if head else body)


def admin_app(*, health: HealthCheck, registry: MetricsSource) -> Callable[[Request], Awaitable[Response]]:
    """The admin endpoint as an HTTP app (usable without a socket in tests)."""

    async def app(request: Request) -> Response:
        head = request.method == "HEAD"
        if request.path not in ("/healthz", "/metrics"):
            return _text(404, "not found: try /healthz or /metrics\n", head)
        if request.method not in ("GET", "HEAD"):
            return _text(405, "method not allowed\n", head, extra=[("allow", "GET, HEAD")])
        if request.path == "/metrics":
            return _text(200, registry.render(), head, CONTENT_TYPE)
        try:
            report = dict(await health())
        except Exception as e:  # a failing check means unhealthy, not a broken endpoint
            report = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        report.setdefault("status", "ok")
        report.setdefault("pid", os.getpid())
        doc = {"status": report.pop("status"), **report}
        return _json(200 if doc["status"] == "ok" else 503, doc, head)

    return app


async def serve_admin(*, host: str, port: int, health: HealthCheck, registry: MetricsSource,
                      reuse_port: bool = False,
                      task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve /healthz and /metrics on ``host:port`` until cancelled.

    ``task_status.started()`` fires once the port is listening. Gateway workers pass
    ``reuse_port=True`` so all of them answer on the one admin port, and a
    :class:`~headwater.workermetrics.WorkerMetrics` as ``registry`` so each answers for all.
    """
    from .http.server import serve  # the server core imports more than a health check needs

    await serve(admin_app(health=health, registry=registry), host=host, port=port,
                limits=ADMIN_LIMITS, reuse_port=reuse_port, task_status=task_status)


def export_stats(registry: Registry, prefix: str, stats: Callable[[], dict[str, Any]]) -> None:
    """Publish every numeric value of a daemon's ``stats()`` dict as ``{prefix}_{key}`` at scrape time.

    Daemons keep plain counters in a dict on their hot paths; this turns them into gauges only
    when /metrics is read, so counting costs nothing more than a dict update.
    """
    gauges: dict[str, Any] = {}

    def collect() -> None:
        for key, value in stats().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            g = gauges.get(key)
            if g is None:
                g = gauges[key] = registry.gauge(f"{prefix}_{key}", f"{prefix} {key.replace('_', ' ')}")
            g.set(value)

    registry.add_collector(collect)
