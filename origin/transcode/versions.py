"""The version collector: deletes the version prefixes the catalogue has retired, once the
retention has passed since they stopped being served.

What is retired, and when, is the catalogue's (``catalogue/versions.py``): a title's earlier
version when a publish replaces it, a dead attempt's prefix when a lease takes its job over (or
the job dies on its last attempt), a failed attempt's when its failure is recorded. Each record
says since when; a sweep (:meth:`VersionCollector.sweep_once`, every ``version_sweep_seconds``
in the transcoder role's first worker) claims the records older than the retention, and for
each lists the prefix and deletes what it holds with DeleteObjects (up to 1,000 keys a request)
until a listing comes back empty, and only then removes the record: a sweep that dies halfway
leaves the record, and the next sweep after the claim has lapsed finishes the job.

Why a retention, not at once: viewers mid-playback hold manifests naming the superseded
version, and the CDN's caches may still fetch its segments (the origin serves only the published
version, but an edge serves what it holds for its TTL), so the objects stay for
``version_retention_seconds`` (24 h: more than the manifest TTL plus the longest playback to
survive). A dead attempt's prefix is kept as long, which also outlasts a worker that was
declared dead but was still writing (its next heartbeat finds the lease gone and it stops).

Safe to run on several hosts at once: a record is claimed by one sweep at a time (the
catalogue's claim), deleting a key twice is harmless, and a record is removed only by the sweep
holding its claim. Never deleted: a prefix the title's renditions name (the claim drops its
record), a prefix an attempt holding a live lease writes (the claim skips it), and anything
outside the record's own ``titles/T/vN/`` folder (checked before any request).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from headwater.clock import SYSTEM_CLOCK, Clock

from ..catalogue import RetiredVersion, SqlCatalogue
from ..catalogue.backoff import OUTAGE_BACKOFF
from ..catalogue.versions import parse_version_prefix
from .objects import MAX_DELETE_KEYS, ObjectStore

__all__ = ["VersionCollector", "Swept"]

log = logging.getLogger("headwater.origin.transcode")


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep did: prefixes emptied (their records removed), objects deleted, prefixes
    that failed (left for a later sweep)."""

    prefixes: int = 0
    objects: int = 0
    errors: int = 0


class VersionCollector:
    """Deletes retired version prefixes of ``bucket`` older than ``retention_s``."""

    def __init__(self, catalogue: SqlCatalogue, objects: Callable[[], ObjectStore], *, bucket: str,
                 retention_s: float, name: str | None = None, clock: Clock = SYSTEM_CLOCK,
                 claim_s: float = 600.0, claim_batch: int = 16, delete_batch: int = MAX_DELETE_KEYS) -> None:
        if not 1 <= delete_batch <= MAX_DELETE_KEYS:
            raise ValueError(f"delete_batch {delete_batch}: 1..{MAX_DELETE_KEYS}")
        self.catalogue = catalogue
        self.objects = objects
        self.bucket = bucket
        self.retention_s = retention_s
        # Unique per sweeper: the claim (and so the record's removal) is this sweeper's alone.
        self.name = name or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.claim_s = claim_s
        self.claim_batch = claim_batch
        self.delete_batch = delete_batch
        self.counts = {"versions_prefixes_removed": 0, "versions_objects_removed": 0, "versions_sweep_errors": 0,
                       "versions_sweeps": 0}

    def sweep_once(self) -> Swept:
        """Claim and delete every retired prefix past the retention (a claim batch at a time)."""
        prefixes = objects = errors = 0
        store = self.objects()
        try:
            while True:
                claimed = self.catalogue.claim_retired_versions(
                    self.name, retired_before=self.clock.time() - self.retention_s, claim_s=self.claim_s,
                    limit=self.claim_batch)
                for r in claimed:
                    try:
                        n = self._empty(store, r)
                    except Exception as e:  # noqa: BLE001 - the store or the catalogue: the next sweep retries
                        errors += 1
                        log.warning("versions: could not delete %s: %s", r.prefix, e,
                                    extra={"event": "versions.delete_failed", "prefix": r.prefix})
                        continue
                    objects += n
                    if self.catalogue.forget_retired_version(r.prefix, self.name):
                        prefixes += 1
                        log.info("versions: deleted %s (%s since %.0f, %d objects)", r.prefix, r.reason, r.since, n,
                                 extra={"event": "versions.deleted", "prefix": r.prefix, "reason": r.reason,
                                        "title": r.title_id, "objects": n})
                # Ours stay claimed: a batch shorter than asked was the last of the due ones.
                if len(claimed) < self.claim_batch:
                    break
        finally:
            store.close()
            self.counts["versions_sweeps"] += 1
            self.counts["versions_prefixes_removed"] += prefixes
            self.counts["versions_objects_removed"] += objects
            self.counts["versions_sweep_errors"] += errors
        return Swept(prefixes=prefixes, objects=objects, errors=errors)

    def _empty(self, store: ObjectStore, r: RetiredVersion) -> int:
        """Delete every object under ``r.prefix`` until it lists empty; how many were deleted."""
        parsed = parse_version_prefix(r.prefix)
        if parsed is None or parsed[0] != r.title_id:
            # Never written so by the catalogue; a hand-edited row is refused, not obeyed.
            raise ValueError(f"{r.prefix!r} is not a version folder of title {r.title_id}")
        deleted = 0
        while True:
            keys = list(islice(store.list_keys(self.bucket, r.prefix), self.delete_batch))
            if not keys:
                return deleted
            stray = [k for k in keys if not k.startswith(r.prefix)]
            if stray:
                raise ValueError(f"listing {r.prefix!r} returned {stray[0]!r}")
            deleted += store.delete_objects(self.bucket, keys)

    def run_forever(self, stop: threading.Event, interval_s: float) -> None:
        """Sweep every ``interval_s`` until ``stop`` is set (the first sweep at once)."""
        failures = 0
        rng = random.Random()
        while not stop.is_set():
            try:
                self.sweep_once()
            except Exception:  # a catalogue outage: log once, back off (at most the interval), go on
                self.counts["versions_sweep_errors"] += 1
                failures += 1
                if failures == 1:
                    log.exception("versions: the sweep failed", extra={"event": "versions.sweep_error"})
                stop.wait(min(interval_s, OUTAGE_BACKOFF.delay(failures, rng)))
                continue
            failures = 0
            stop.wait(interval_s)
