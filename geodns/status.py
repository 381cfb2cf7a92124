"""The GeoDNS's part of ``headwater status``: its DETAILS text from /healthz, and each POP's
health as the DNS sees it below the table."""

from __future__ import annotations

from typing import Any, Mapping

from headwater.roles import StatusReport

__all__ = ["dns_text", "status_report"]


def dns_text(details: Mapping[str, Any]) -> str:
    """Zones, the generation, the cache hit ratio and the steering state."""
    shown: list[str] = []
    zones = details.get("zones")
    if isinstance(zones, list) and zones:
        shown.append("zones " + " ".join(str(z) for z in zones))
    if "generation" in details:
        shown.append(f"generation {details['generation']}")
    cache = details.get("cache")
    if isinstance(cache, dict):
        hits, misses = cache.get("hits", 0), cache.get("misses", 0)
        if hits + misses:
            shown.append(f"cache {hits / (hits + misses):.0%} hits")
    pops = details.get("pops")
    if isinstance(pops, dict) and isinstance(pops.get("pops"), dict):
        states = pops["pops"]
        up = [n for n, h in states.items() if isinstance(h, dict) and h.get("up")]
        down = [n for n in states if n not in up]
        shown.append(f"POPs up {len(up)}/{len(states)}" + (f" (down: {', '.join(down)})" if down else ""))
    if details.get("steered") and not details.get("steering"):
        shown.append("steering not wired: steered names SERVFAIL")
    if "workers" in details:
        shown.append(f"workers {details['workers']}")
    return ", ".join(shown)


def status_report(cfg: Any, rows: list[dict[str, Any]]) -> StatusReport:
    """One line per POP (state, load, last error) from the first healthy dns row's /healthz,
    and a warning when every POP is down (the DNS then answers with all of them)."""
    lines: list[str] = []
    warnings: list[str] = []
    for row in rows:
        details = row.get("details") or {}
        if row.get("role") != "dns" or not row.get("healthy") or not isinstance(details.get("pops"), dict):
            continue
        pops = details["pops"].get("pops")
        if not isinstance(pops, dict) or not pops:
            continue
        lines.append(f"POPs as {row.get('id', 'the DNS')} sees them:")
        for name, h in pops.items():
            if not isinstance(h, dict):
                continue
            text = f"  {name:<12} {h.get('state', '?'):<8}"
            if h.get("load") is not None:
                text += f" load {h['load']:.2f}" + (" (full)" if h.get("full") else "")
            if h.get("last_error") and not h.get("up"):
                text += f"  {h['last_error']}"
            lines.append(text)
        if not any(isinstance(h, dict) and h.get("up") for h in pops.values()):
            warnings.append("every POP is down: the DNS answers steered names with all of them (fail open)")
        break
    return StatusReport(lines=lines, warnings=warnings)
