"""Segment prefetch at a POP: on a request for segment *n*, warm *n+1 … n+N* (sans-IO part).

A player fetches a rendition's segments in order, one every few seconds; when segment *n* is a
miss at a POP, *n+1* will be one too a few seconds later. Under a cache behaviour with
``prefetch = N`` (0, off, by default), a POP that serves a GET for a path whose segment number
the distribution's ``segment_pattern`` finds (an RE2 regex with exactly one group: the number;
the default recognises ``seg-7.m4s``, ``seg-00042.m4s``, ``chunk_12.ts``, ``720p/17.m4s`` ...)
fetches the next ``N`` segments from its regional tier in the background, keeping the number's
zero padding (``seg-00042`` -> ``seg-00043``).

The fetches go through the request path's own collapsing (:mod:`.collapse`): a viewer's request
for *n+1* arriving while it is prefetched joins that fetch instead of starting another. What
bounds them (:class:`PrefetchPlanner`):

- a run fetches its segments one after another, and a POP worker runs at most
  ``max_concurrent`` runs at once (a trigger over the cap is dropped: ``busy``);
- a segment already stored, or already being fetched, is skipped and never refetched;
- the first error or 404 ends the run (the rendition ends there, or is not published yet);
- a trigger for the same segment within ``recent_seconds`` starts nothing: a popular segment's
  viewers do not each start a run (the memo is bounded: ``recent_keys``);
- prefetched bodies go to the disk tier only, never to the RAM tier: the disk tier's S3-FIFO
  admits a new key on probation (its small FIFO), so a prefetched segment can displace only
  other probationary entries, never the hot ones of the main FIFO; and the RAM tier gets it only
  by promotion (:mod:`.promote`) once viewers come back to it.

What it gained is counted: a segment fetched by a prefetch and then requested by a viewer (a hit,
or a request that joined the prefetch's fetch) is ``used``; ``/healthz`` shows the share of the
POP's requests that were such hits (``hit_ratio_gained``) beside the prefetch fetches it added.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .limits import compile_regex

__all__ = ["DEFAULT_SEGMENT_PATTERN", "PrefetchConfig", "SegmentNamer", "PrefetchPlanner", "read_prefetch_config"]

# A run of digits right before a media segment's extension, at the end of the path.
DEFAULT_SEGMENT_PATTERN = r"(\d{1,12})\.(?:m4s|m4v|m4a|cmfv|cmfa|ts|aac|vtt|webm)$"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefetchConfig:
    """``[cdn.prefetch]``: how segment numbers are found, and how much prefetching a worker does."""

    segment_pattern: str = DEFAULT_SEGMENT_PATTERN
    max_concurrent: int = 4
    recent_seconds: float = 30.0
    recent_keys: int = 4096
    used_keys: int = 4096


class SegmentNamer:
    """The paths of the segments after a path's segment (``segment_pattern``'s one group)."""

    def __init__(self, pattern: str) -> None:
        self.regex = compile_regex(pattern)
        if self.regex.groups != 1:
            raise ValueError(f"segment_pattern needs exactly one group (the segment number), has {self.regex.groups}")

    def following(self, path: str, count: int) -> list[str]:
        """The paths of the ``count`` segments after ``path``'s, padding kept; [] if ``path``
        names no numbered segment."""
        if count <= 0:
            return []
        m = self.regex.search(path)
        if m is None:
            return []
        start, end = m.start(1), m.end(1)
        if start < 0:
            return []
        digits = path[start:end]
        if not digits.isdigit() or not digits.isascii():
            return []
        n, width = int(digits), len(digits)
        return [path[:start] + str(n + i).zfill(width) + path[end:] for i in range(1, count + 1)]


class PrefetchPlanner:
    """Which triggers start a run, and what prefetching gained (one per worker; sans-IO)."""

    def __init__(self, config: PrefetchConfig) -> None:
        self.config = config
        self.namer = SegmentNamer(config.segment_pattern)
        self.running = 0
        self._recent: OrderedDict[bytes, float] = OrderedDict()
        self._fetched: OrderedDict[bytes, None] = OrderedDict()
        self.results: dict[str, int] = {}
        self.used = 0

    def count(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1

    def start(self, trigger: bytes, now: float) -> str:
        """Whether a request for ``trigger`` (the cache key of segment *n*) starts a run now:
        ``"start"`` (then call ``finish()`` when the run is over), ``"recent"`` (one started for
        it lately) or ``"busy"`` (``max_concurrent`` runs already)."""
        recent = self._recent
        seen = recent.get(trigger)
        if seen is not None and now - seen < self.config.recent_seconds:
            return "recent"
        if self.running >= self.config.max_concurrent:
            self.count("busy")
            return "busy"
        recent[trigger] = now
        recent.move_to_end(trigger)
        while len(recent) > self.config.recent_keys:
            recent.popitem(last=False)
        self.running += 1
        return "start"

    def finish(self) -> None:
        self.running -= 1

    def fetched(self, key: bytes) -> None:
        """A prefetch is fetching ``key`` (a viewer's request for it from now on counts as used)."""
        self._fetched[key] = None
        while len(self._fetched) > self.config.used_keys:
            self._fetched.popitem(last=False)

    def forget(self, key: bytes) -> None:
        """The prefetch of ``key`` failed or was not stored."""
        self._fetched.pop(key, None)

    def requested(self, key: bytes) -> bool:
        """A viewer asked for ``key``: True (once) if a prefetch had fetched it."""
        if key not in self._fetched:
            return False
        del self._fetched[key]
        self.used += 1
        return True

    def health(self, requests: int) -> dict[str, Any]:
        """What /healthz shows: runs and results, and the share of ``requests`` it turned into hits."""
        return {"running": self.running, **{f"prefetch_{k}": v for k, v in sorted(self.results.items())},
                "used": self.used, "hit_ratio_gained": round(self.used / requests, 4) if requests else 0.0}


def read_prefetch_config(r: Any, value: Any, p: str) -> PrefetchConfig:
    """``[cdn.prefetch]``: ``segment_pattern`` (RE2, one group), ``max_concurrent`` (runs per
    worker), ``recent_seconds``."""
    if value is None:
        return PrefetchConfig()
    if not isinstance(value, dict):
        raise r.error(p, "expected a table")
    r.check_keys(value, p, {"segment_pattern", "max_concurrent", "recent_seconds"})
    pattern = r.get(value, "segment_pattern", p, str, DEFAULT_SEGMENT_PATTERN)
    try:
        SegmentNamer(pattern)
    except ValueError as e:
        raise r.error(f"{p}.segment_pattern", str(e)) from None
    concurrent = r.get(value, "max_concurrent", p, int, 4)
    if not 1 <= concurrent <= 1024:
        raise r.error(f"{p}.max_concurrent", "must be between 1 and 1024")
    return PrefetchConfig(segment_pattern=pattern, max_concurrent=concurrent,
                          recent_seconds=r.positive(value, "recent_seconds", p, 30.0))
