"""Prometheus's view of a cluster: one scrape job per role, every daemon's admin endpoint a target.

``headwater monitoring prometheus-config -c cluster.toml`` prints a prometheus.yml made here from
the role registry alone (``ClusterConfig.daemons()``: every daemon knows its ``host`` and
``admin_port``), so the kernel still imports no daemon. Each target carries

- ``job``: the daemon's role (``storage``, ``gateway``, ``edge``, ``dns``, ``licence``, ...), which
  the alert rules and dashboards in ``monitoring/`` select on;
- ``daemon``: its id in cluster.toml (``storage-3``, ``pop-1``), for humans and for per-daemon
  alerts; ``instance`` stays Prometheus's ``host:admin_port``. (Not ``node``: the repair
  daemon's own metrics label the storage node they describe with ``node``, and a target label
  of the same name would rename theirs to ``exported_node``.)
- ``cluster``: ``[cluster] name``, so one Prometheus can watch several clusters (a target
  label, not an external one: rules and dashboards can group by it).

The output is YAML written by :func:`to_yaml` (the config is small and its shape fixed; no YAML
library is needed at run time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .config import ClusterConfig
from .roles import registry
from .status import url_host

__all__ = ["Target", "targets", "prometheus_config", "to_yaml", "DEFAULT_SCRAPE_INTERVAL_S",
           "DEFAULT_EVALUATION_INTERVAL_S"]

DEFAULT_SCRAPE_INTERVAL_S = 15.0
DEFAULT_EVALUATION_INTERVAL_S = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One daemon's admin endpoint as Prometheus scrapes it."""

    job: str       # the role
    daemon: str    # the daemon's id
    address: str   # host:admin_port, reachable from this machine


def targets(cfg: ClusterConfig) -> list[Target]:
    """Every daemon of ``cfg``, in the registry's start order."""
    return [Target(job=d.role, daemon=d.id, address=f"{url_host(d.host)}:{d.admin_port}") for d in cfg.daemons()]


def _seconds(s: float) -> str:
    """A Prometheus duration ("15s", "500ms")."""
    return f"{int(s)}s" if float(s).is_integer() else f"{int(round(s * 1000))}ms"


def prometheus_config(cfg: ClusterConfig, *, rule_files: Sequence[str | Path] = (),
                      scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S,
                      evaluation_interval_s: float = DEFAULT_EVALUATION_INTERVAL_S,
                      alertmanagers: Sequence[str] = ()) -> dict[str, Any]:
    """prometheus.yml as a dict: a job per role that has daemons (in start order), the rule files
    (globs allowed) and, when given, Alertmanager addresses (``host:port``)."""
    by_job: dict[str, list[Target]] = {}
    for t in targets(cfg):
        by_job.setdefault(t.job, []).append(t)
    jobs = [role.name for role in registry().roles() if role.name in by_job]
    doc: dict[str, Any] = {
        "global": {"scrape_interval": _seconds(scrape_interval_s),
                   "evaluation_interval": _seconds(evaluation_interval_s)},
    }
    if rule_files:
        doc["rule_files"] = [str(f) for f in rule_files]
    if alertmanagers:
        doc["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    doc["scrape_configs"] = [
        {"job_name": job, "metrics_path": "/metrics", "scheme": "http",
         # a scrape must end before the next one starts
         "scrape_timeout": _seconds(min(10.0, scrape_interval_s)),
         "static_configs": [{"targets": [t.address], "labels": {"daemon": t.daemon, "cluster": cfg.name}}
                            for t in by_job[job]]}
        for job in jobs
    ]
    return doc


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar


def _lines(value: Any, indent: int) -> Iterable[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, (Mapping, list, tuple)) and v:
                yield f"{pad}{k}:"
                yield from _lines(v, indent + 2)
            else:
                yield f"{pad}{k}: {_scalar(v) if not isinstance(v, (Mapping, list, tuple)) else ('{}' if isinstance(v, Mapping) else '[]')}"
    else:
        for item in value:
            if isinstance(item, (Mapping, list, tuple)) and item:
                first, *rest = list(_lines(item, indent + 2))
                yield f"{pad}- {first.lstrip()}"
                yield from rest
            else:
                yield f"{pad}- {_scalar(item)}"


def to_yaml(doc: Mapping[str, Any], *, header: str = "") -> str:
    """``doc`` (dicts, lists, strings, numbers) as block YAML, with ``header`` as # comments."""
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    out.extend(_lines(doc, 0))
    return "\n".join(out) + "\n"
