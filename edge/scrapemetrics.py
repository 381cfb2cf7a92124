"""The edge's counters kept as plain numbers where they happen (the stores' evictions and
corrupt entries dropped, the origin fetchers' failovers and breakers), turned into Prometheus
series when /metrics is read, so counting costs the hot paths nothing more than an integer
increment:

- ``hw_edge_evictions_total{tier, store}``: entries evicted by a store (``ram``, ``disk``) of
  this worker (the disk tier's evictor is whichever worker holds the role: the sum over workers
  is the tier's);
- ``hw_edge_corrupt_dropped_total{tier, store}``: entries dropped on a read because their body
  failed its checksum or their file was missing or the wrong size;
- ``hw_edge_origin_failovers_total{tier, distribution}``: origin fetches sent to the secondary
  because the primary failed or was marked down;
- ``hw_edge_origin_up{tier, distribution, origin}``: 1 while an origin (``primary``,
  ``secondary``) is up for the breaker, 0 while it is skipped.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from headwater.metrics import Registry

from .store.disk import DiskStore
from .upstream import OriginFetcher

__all__ = ["add_edge_scrape_metrics"]


def add_edge_scrape_metrics(registry: Registry, tier: str, stores: Sequence[Any],
                            origins: Mapping[str, OriginFetcher]) -> None:
    """Register the series above and the collector that brings them up to date at each scrape."""
    evictions = registry.counter("hw_edge_evictions_total", "Cache entries evicted, by tier and store.",
                                 labels=["tier", "store"])
    corrupt = registry.counter("hw_edge_corrupt_dropped_total",
                               "Cache entries dropped on a read for a failed checksum or a missing or "
                               "short file, by tier and store.", labels=["tier", "store"])
    failovers = registry.counter("hw_edge_origin_failovers_total",
                                 "Origin fetches sent to the secondary origin (the primary failed or was down).",
                                 labels=["tier", "distribution"])
    up = registry.gauge("hw_edge_origin_up", "1 while an origin is up for the failover breaker, 0 while skipped.",
                        labels=["tier", "distribution", "origin"])
    named = [("disk" if isinstance(s, DiskStore) else "ram", s) for s in stores]
    # Counters are monotonic here: each scrape adds what the source counted since the last one.
    seen: dict[tuple[str, str], int] = {}

    def add(counter: Any, key: tuple[str, str], value: int) -> None:
        last = seen.get(key, 0)
        if value > last:
            counter.labels(tier, key[1]).inc(value - last)
        elif key not in seen:
            counter.labels(tier, key[1])  # a series from the first scrape, at 0
        seen[key] = value

    def collect() -> None:
        for name, store in named:
            stats = store.stats()
            add(evictions, ("evictions", name), stats.evictions)
            add(corrupt, ("corrupt", name), stats.corrupt_dropped)
        for dist, fetcher in origins.items():
            add(failovers, ("failovers", dist), fetcher.failovers)
            for i, origin in enumerate(fetcher.origins):
                up.labels(tier, dist, "primary" if i == 0 else "secondary").set(
                    1 if fetcher.health.is_up(origin.label) else 0)

    registry.add_collector(collect)
