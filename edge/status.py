"""The edge's part of ``headwater status``: its DETAILS text from /healthz, and a line per tier
(daemons answering, hit ratio) below the table."""

from __future__ import annotations

from typing import Any, Mapping

from headwater.roles import StatusReport

__all__ = ["edge_text", "status_report"]


def edge_text(details: Mapping[str, Any]) -> str:
    """Tier, hit ratio, bytes cached, upstreams down."""
    shown: list[str] = []
    if details.get("tier"):
        shown.append(str(details["tier"]))
    hits, misses = details.get("hits", 0), details.get("misses", 0)
    if isinstance(hits, int) and isinstance(misses, int) and hits + misses:
        shown.append(f"hits {hits / (hits + misses):.0%} of {hits + misses}")
    if isinstance(details.get("cached_bytes"), int):
        shown.append(f"cached {details['cached_bytes'] / 2**20:.1f} MiB")
    upstreams = details.get("upstreams")
    if isinstance(upstreams, dict):
        down = [u for u, state in upstreams.items() if state != "up"]
        if down:
            shown.append(f"upstream down: {', '.join(down)}")
    return ", ".join(shown)


def status_report(cfg: Any, rows: list[dict[str, Any]]) -> StatusReport:
    """Per tier: how many daemons answer; a warning when a whole tier is down."""
    lines: list[str] = []
    warnings: list[str] = []
    edges = tuple(getattr(cfg, "edge", ()) or ())
    if not edges:
        return StatusReport()
    healthy = {r.get("id") for r in rows if r.get("role") == "edge" and r.get("healthy")}
    parts = []
    for tier in ("pop", "regional", "shield"):
        ids = [e.id for e in edges if e.tier == tier]
        if not ids:
            continue
        up = [i for i in ids if i in healthy]
        parts.append(f"{tier}s {len(up)}/{len(ids)}")
        if not up:
            warnings.append(f"every edge {tier} is down")
    lines.append("edge: " + ", ".join(parts))
    return StatusReport(lines=lines, warnings=warnings)
