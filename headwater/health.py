"""What a daemon's ``/healthz`` answer means to the kernel: ok, degraded, or not serving.

Every daemon's admin endpoint (:mod:`headwater.admin`) answers a JSON object whose ``"status"``
is ``"ok"`` (HTTP 200) or anything else (HTTP 503). The kernel reads only that field, never a
daemon's own keys, and sorts the answer into three :class:`Health` values, as Kubernetes tells
liveness from readiness:

- ``ok``: 200 with ``"status": "ok"``: serving everything.
- ``degraded``: 503 with ``"status": "degraded"``: the daemon is up and serving what it can, but
  a dependency it does not start itself is away (the origin's PostgreSQL, a gateway's metadata
  quorum). A load balancer steers around it (503); the supervisor counts it *started*, since
  waiting on it cannot bring the dependency back, and restarting it would not either.
- ``down``: no answer, not JSON, or any other status: ``"starting"`` (a metadata node without
  its quorum yet), ``"catching_up"`` (an edge replaying purges), ``"error"`` (its check raised).
  The supervisor waits for such a daemon (up to ``--start-timeout``) before the next role starts.

Pure: the callers do the HTTP.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["Health", "health_of"]


class Health(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"

    @property
    def started(self) -> bool:
        """Whether ``up`` counts the daemon started: it serves, fully or degraded."""
        return self is not Health.DOWN


def health_of(status_code: int, doc: Any) -> Health:
    """The health a ``/healthz`` answer (its HTTP status and parsed JSON body) reports."""
    status = doc.get("status") if isinstance(doc, dict) else None
    if status_code == 200 and status == "ok":
        return Health.OK
    if status_code == 503 and status == "degraded":
        return Health.DEGRADED
    return Health.DOWN
