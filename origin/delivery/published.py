"""Which version of a title is published, asked of the catalogue at most once per title per
``ttl_s``: a segment storm (every viewer fetching every segment) must not be a storm of queries.

:func:`publication_of` reads a :class:`~headwater.origin.catalogue.Title` (sans-IO): the published
version is the folder of its ``dash`` and ``hls`` renditions' paths (``titles/T/vN/...``), and a
title whose two manifests disagree, or that has neither, is treated as not published (nothing of
a half-recorded publication is served).

:class:`PublishedVersions` caches those verdicts: an LRU of at most ``max_entries`` titles, each
verdict reused for ``ttl_s`` on the injected clock, and concurrent misses for one title collapsed
into one catalogue read (run off the event loop by the ``lookup`` the daemon gives it). So a
withdrawal takes effect within ``ttl_s``; :meth:`PublishedVersions.forget` applies it at once in
this process (the invalidation hook calls it). While the catalogue cannot be reached, a title's
published verdict the catalogue last gave (:mod:`.lastknown`, kept across restarts) answers, within
its age bound; and while the catalogue's database breaker (``catalogue/breaker.py``) says the
database failed within its interval, the catalogue is not asked at all: the kept verdict (or the
503) comes at once, rather than after the pool's wait for a connection (up to
``connect_timeout_seconds``) once per title per ``ttl_s``. One lookup per interval probes it.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

import anyio

from headwater.clock import SYSTEM_CLOCK, Clock

from ..catalogue import BackendUnavailable, Title, TitleNotFound, TitleState
from .objectpath import POSTER_NAME, THUMBNAILS_NAME, version_of_key

if TYPE_CHECKING:
    from ..catalogue.breaker import Breaker
    from .lastknown import LastKnownPublications

__all__ = ["Availability", "Publication", "publication_of", "PublishedVersions", "UNKNOWN"]


class Availability(str, enum.Enum):
    PUBLISHED = "published"
    WITHDRAWN = "withdrawn"
    UNAVAILABLE = "unavailable"  # no such title, or not (yet) published


@dataclass(frozen=True, slots=True)
class Publication:
    """What the origin may serve of one title: ``version`` (and the object keys of its DASH and
    HLS manifests, its poster and its thumbnail track) are set only when published."""

    availability: Availability
    version: str | None = None
    dash: str | None = None
    hls: str | None = None
    poster: str | None = None
    thumbnails: str | None = None


UNKNOWN = Publication(Availability.UNAVAILABLE)


def publication_of(title: Title) -> Publication:
    """The title's :class:`Publication` (see the module docstring)."""
    if title.state is TitleState.WITHDRAWN:
        return Publication(Availability.WITHDRAWN)
    if title.state is not TitleState.PUBLISHED:
        return UNKNOWN
    manifests = {r.name: r.path for r in title.renditions if r.name in ("dash", "hls")}
    versions = {version_of_key(title.id, path) for path in manifests.values()}
    if len(versions) != 1 or None in versions:
        return UNKNOWN
    (version,) = versions
    prefix = f"titles/{title.id}/v{version}/"
    return Publication(Availability.PUBLISHED, version, manifests.get("dash"), manifests.get("hls"),
                       poster=prefix + POSTER_NAME, thumbnails=prefix + THUMBNAILS_NAME)


class PublishedVersions:
    """Cached :class:`Publication` per title id (see the module docstring). ``lookup`` reads a
    title (off the event loop) and raises :class:`TitleNotFound` for an unknown id."""

    def __init__(self, lookup: Callable[[int], Awaitable[Title]], *, ttl_s: float = 1.0,
                 max_entries: int = 10_000, clock: Clock = SYSTEM_CLOCK,
                 last_known: LastKnownPublications | None = None, breaker: Breaker | None = None) -> None:
        self._lookup = lookup
        self.last_known = last_known
        self._breaker = breaker
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[int, tuple[float, Publication]] = OrderedDict()
        self._inflight: dict[int, anyio.Event] = {}
        # publish_lookups_skipped: the breaker said the database is down, so it was not asked.
        self.counts = {"publish_lookups": 0, "publish_cache_hits": 0, "publish_stale_answers": 0,
                       "publish_lookups_skipped": 0}

    async def get(self, title_id: int) -> Publication:
        """The title's publication, from the cache while fresh."""
        while True:
            entry = self._entries.get(title_id)
            if entry is not None and entry[0] > self.clock.monotonic():
                self._entries.move_to_end(title_id)
                self.counts["publish_cache_hits"] += 1
                return entry[1]
            waiting = self._inflight.get(title_id)
            if waiting is None:
                break
            await waiting.wait()  # another request is reading this title: share its answer
            if title_id not in self._entries:  # its read failed: try ourselves
                break
        done = self._inflight[title_id] = anyio.Event()
        try:
            breaker = self._breaker
            try:
                if breaker is not None and not breaker.allow():
                    # The database failed within the breaker's interval: waiting for the pool
                    # would only end in the same failure.
                    self.counts["publish_lookups_skipped"] += 1
                    raise BackendUnavailable("the catalogue database cannot be reached (it failed within "
                                             "the last few seconds)")
                self.counts["publish_lookups"] += 1
                try:
                    pub = publication_of(await self._lookup(title_id))
                except TitleNotFound:
                    pub = UNKNOWN
                except BackendUnavailable:
                    if breaker is not None:
                        breaker.failed()
                    raise
                if breaker is not None:
                    breaker.succeeded()
            except BackendUnavailable:
                kept = self.last_known.get(title_id) if self.last_known is not None else None
                if kept is None:
                    raise  # only the catalogue can say a title is published: 503
                # Cached like an answer: the catalogue is asked again after ttl_s, not per request.
                self.counts["publish_stale_answers"] += 1
                self._store(title_id, kept[0])
                return kept[0]
            if self.last_known is not None:
                self.last_known.confirmed(title_id, pub)
            self._store(title_id, pub)
            return pub
        finally:
            del self._inflight[title_id]
            done.set()

    def _store(self, title_id: int, pub: Publication) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[title_id] = (self.clock.monotonic() + self.ttl_s, pub)
        self._entries.move_to_end(title_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, title_id: int) -> None:
        """Drop the title's cached verdict (and the kept one): the next request reads the catalogue."""
        self._entries.pop(title_id, None)
        if self.last_known is not None:
            self.last_known.forget(title_id)

    def __len__(self) -> int:
        return len(self._entries)
