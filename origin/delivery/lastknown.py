"""The published versions this origin host last confirmed with the catalogue, kept in a file of its
data dir, so that published titles keep playing while the catalogue's database is away, even
across a restart of the host during the outage (origindb).

Why: which version of a title is published is the catalogue's (PostgreSQL's) to say, and the
CDN's origin asks it for every title at most once per ``publish_cache_seconds``. With the
database down, every manifest and segment the edges do not hold would answer 503, although the
objects are all in the object store. So each verdict "title T is published as version N"
the catalogue gave is remembered with the wall-clock time it was confirmed; while the catalogue
cannot answer, a remembered *published* verdict confirmed within ``publish_stale_max_seconds``
is served (anything else, a title never seen or not published, still answers 503: only a
database can say a title is published). A withdrawal this host learns of (the catalogue's
answer, or a purge's ``forget``) drops the title at once; one made while this host could not hear
of it is served for at most ``publish_stale_max_seconds`` of outage, as the edges' caches would.

The file is rewritten (whole, atomically: :func:`headwater.sealed.publish_private`) when a
verdict changed, at most every ``SAVE_EVERY_S`` and at shutdown; it is derived data: deleting it
only means a restart during an outage plays nothing until the database answers. Sans-IO but for
:meth:`LastKnownPublications.load` and :meth:`~LastKnownPublications.save`; the clock is injected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.sealed import publish_private

from .published import Availability, Publication

__all__ = ["LastKnownPublications", "SAVE_EVERY_S"]

log = logging.getLogger("headwater.origin")

#: How often (at most) the daemon writes the file when a verdict changed.
SAVE_EVERY_S = 5.0
_FORMAT = 1


class LastKnownPublications:
    """Published verdicts by title id, each with when (wall clock) the catalogue confirmed it;
    at most ``max_entries`` (the least recently confirmed dropped first)."""

    def __init__(self, path: Path | None, *, stale_max_s: float, max_entries: int = 10_000,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = path
        self.stale_max_s = stale_max_s
        self.max_entries = max_entries
        self.clock = clock
        self._known: dict[int, tuple[float, Publication]] = {}
        self._dirty = False

    def __len__(self) -> int:
        return len(self._known)

    def confirmed(self, title_id: int, pub: Publication) -> None:
        """The catalogue just said ``pub`` of this title: remember it if published, else forget it."""
        if pub.availability is not Availability.PUBLISHED:
            self.forget(title_id)
            return
        old = self._known.pop(title_id, None)
        self._known[title_id] = (self.clock.time(), pub)
        if old is None or old[1] != pub or self.clock.time() - old[0] >= SAVE_EVERY_S:
            self._dirty = True
        while len(self._known) > self.max_entries:
            del self._known[next(iter(self._known))]

    def forget(self, title_id: int) -> None:
        if self._known.pop(title_id, None) is not None:
            self._dirty = True

    def get(self, title_id: int) -> tuple[Publication, float] | None:
        """The remembered published verdict and its age in seconds, if within ``stale_max_s``."""
        entry = self._known.get(title_id)
        if entry is None or self.stale_max_s <= 0:
            return None
        age = max(0.0, self.clock.time() - entry[0])
        return (entry[1], age) if age <= self.stale_max_s else None

    # --- the file ------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file a previous run left (missing or unreadable: start empty)."""
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_bytes())
            if doc.get("format") != _FORMAT:
                return
            known = {}
            for key, (at, version, dash, hls, poster, thumbnails) in doc["titles"].items():
                known[int(key)] = (float(at), Publication(Availability.PUBLISHED, str(version), dash, hls,
                                                          poster=poster, thumbnails=thumbnails))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("origin: the published versions kept in %s are unreadable (%s): starting without them",
                        self.path, e, extra={"event": "origin.published_versions_unreadable"})
            return
        self._known = dict(sorted(known.items(), key=lambda kv: kv[1][0]))

    def snapshot(self, *, force: bool = False) -> bytes | None:
        """The file's new content if a verdict changed since the last snapshot (``force``: in
        any case), else None. Taken where the verdicts change (the event loop); written by
        :meth:`write` (in a worker thread: it fsyncs)."""
        if self.path is None or not (self._dirty or force):
            return None
        self._dirty = False
        doc = {"format": _FORMAT, "titles": {
            str(t): [at, p.version, p.dash, p.hls, p.poster, p.thumbnails] for t, (at, p) in self._known.items()}}
        return json.dumps(doc, separators=(",", ":")).encode()

    def write(self, data: bytes | None) -> None:
        """Write a :meth:`snapshot` (None: nothing to write)."""
        if data is not None and self.path is not None:
            publish_private(self.path, data)
