"""The GeoDNS's part of ``headwater status``: its DETAILS text from /healthz."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["dns_text"]


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
