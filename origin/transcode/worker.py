"""The lease loop: one worker takes one ``transcode`` job at a time from the catalogue's queue
and turns the upload it names into a published title.

One job, step by step (the title's progress in brackets)::

    lease → title transcoding (0) → fetch the upload to scratch (0.02, reported at once) →
    ffprobe → ffmpeg: the ladder MP4, the poster and the thumbnails in one run (0.05 → 0.85,
    heartbeats; 0.85 reported at once when it ends; the title's key
    fetched and the bucket made meanwhile, and each segment packaged into titles/T/vN/ as
    ffmpeg writes it) → the sprites tiled, the thumbnail track → the last segments, the images
    and the manifests (0.9) → title packaged → publish: complete(lease, published, renditions)

Only ffmpeg's run is long; what can wait on it does (the key, the bucket), what could be a
second decode after it (poster, sprites) is an output of it, and the packaging and its PUTs
follow the ladder file as ffmpeg writes it (fragmented MP4, :class:`~.package.StreamedLadder`),
so after ffmpeg only the last fragment's segments, the images and the manifests are left. With
``[transcoder] stream_packaging = false`` the ladder is a progressive MP4 packaged after the
run instead (the log's ``transcode.packaged`` event says which path a title took).

Idempotency and fencing: every attempt writes under its own version prefix
``titles/T/v<job id>-<attempt>/``, so two attempts never write the same object, and an attempt
that fails or loses its lease deletes only its own prefix (never once its publish was sent: a
publish that fails may have committed with only its answer lost, the title then naming the
prefix; the version collector deletes it if the failure recorded it). What an attempt leaves is recorded in
the catalogue for the version collector (:mod:`.versions`) in the transaction that ends it: a
dead attempt's prefix (the lease expired: SIGKILL, a lost host) by the lease that takes its job
over, a failed one's by its failure (its own clean-up may have failed with the store), and the
title's earlier version by the publish that supersedes it; the collector deletes them after
the retention (``version_retention_seconds``). The
title changes only through catalogue calls fenced by the lease token (:meth:`move_title`,
:meth:`complete`, :meth:`fail`), so a worker whose lease was taken over can no longer publish:
its next heartbeat or its publish raises :class:`LeaseLost`, and it cleans up and gives up.
Publishing is the one ``complete`` transaction: until it commits nothing of the prefix is named
by the catalogue, and the manifests are written last (the sink's commit).

Failures: bad input (:class:`InvalidMedia`) fails the title at once with the reason; anything
else (ffmpeg, the store, the packager) is retried by the queue with backoff while attempts are
left (the title stays ``transcoding`` with the error shown), then fails the title. A worker that
dies on the job's last attempt cannot: the next lease fails the title (``fail_titles``). A failed
title is transcoded again only by a new job (``POST /api/titles/T/retry``), so a new version.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.drm.client import S3Sink, S3Target, fetch_title_key, licence_url

from ..catalogue import JobState, Lease, LeaseLost, SqlCatalogue, TitleState
from ..catalogue.backoff import OUTAGE_BACKOFF
from ..catalogue.versions import attempt_prefix
from ..delivery.invalidation import request_cdn_purge
from ..errors import InvalidMedia, TranscodeError
from .config import TranscoderConfig
from .ffmpeg import Stopped, ladder_command, run_ffmpeg
from .ladder import plan_ladder
from .objects import ObjectStore
from .package import StreamedLadder, TickingSink, package_title, renditions_of, webm_track_ids
from .poster import collect_images, image_outputs, sprite_track, thumbnail_grid
from .probe import probe_file

__all__ = ["TranscodeWorker", "StoreSettings", "JOB_KIND", "version_prefix", "open_objects"]

log = logging.getLogger("headwater.origin.transcode")

JOB_KIND = "transcode"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    """Where uploads are read and titles written."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    videos_bucket: str = "videos"
    ssl_context: Any = None


def open_objects(store: StoreSettings) -> ObjectStore:
    """A client of ``store`` (one connection: one thread's)."""
    return ObjectStore(store.endpoint, access_key=store.access_key, secret_key=store.secret_key,
                       region=store.region, ssl_context=store.ssl_context)


version_prefix = attempt_prefix  # ``titles/T/v<job>-<attempt>/``: the folder one attempt of one job writes


class TranscodeWorker:
    """One worker: :meth:`run_once` takes and runs at most one job; :meth:`run_forever` loops."""

    def __init__(self, config: TranscoderConfig, catalogue: SqlCatalogue, store: StoreSettings, *, cluster: Any,
                 name: str, scratch: Path, clock: Clock = SYSTEM_CLOCK,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.catalogue = catalogue
        self.store = store
        self.cluster = cluster
        self.name = name
        self.scratch = scratch
        self.clock = clock
        self.stop = stop or threading.Event()
        self.counts = {"jobs_leased": 0, "jobs_published": 0, "jobs_failed": 0, "jobs_retried": 0, "jobs_dropped": 0,
                       "leases_lost": 0}
        self.current: dict[str, Any] | None = None

    def _objects(self) -> ObjectStore:
        return open_objects(self.store)

    def run_forever(self) -> None:
        """Lease and run jobs until :attr:`stop` is set; wait ``poll_s`` when there is none."""
        failures = 0
        rng = random.Random()
        while not self.stop.is_set():
            try:
                did = self.run_once()
            except Exception:  # a catalogue or store outage: log once, back off, go on
                failures += 1
                if failures == 1:
                    log.exception("transcoder: %s: the lease loop failed; retrying with backoff", self.name,
                                  extra={"event": "transcode.loop_error"})
                self.stop.wait(OUTAGE_BACKOFF.delay(failures, rng))
                continue
            if failures:
                log.info("transcoder: %s: the lease loop works again", self.name,
                         extra={"event": "transcode.loop_resumed"})
                failures = 0
            if not did:
                self.stop.wait(self.config.poll_s)

    def run_once(self) -> bool:
        """Lease one job and run it to its end (published, retried, failed or lost); False if
        there was none."""
        # A dead attempt's prefix is recorded for the version collector by the lease taking over.
        lease = self.catalogue.lease(self.name, [JOB_KIND], self.config.lease_s, fail_titles=True,
                                     attempt_prefix=version_prefix)
        if lease is None:
            return False
        self.counts["jobs_leased"] += 1
        _Job(self, lease).run()
        return True


class _Job:
    """One attempt of one job."""

    def __init__(self, worker: TranscodeWorker, lease: Lease) -> None:
        self.w = worker
        self.lease = lease
        self.job = lease.job
        assert self.job.title_id is not None, "a transcode job names its title"
        self.title_id: int = self.job.title_id
        self.prefix = version_prefix(self.title_id, self.job.id, self.job.attempts)
        self.next_beat = worker.clock.monotonic() + worker.config.heartbeat_s
        self.progress = 0.0
        # Set once the publish (complete) is sent: a failure from then on may come after its
        # commit (the connection lost with the COMMIT's answer), the title published from this
        # prefix, so the prefix is no longer this attempt's to delete.
        self.publish_sent = False

    # --- lease keeping ----------------------------------------------------------------------

    def beat(self, progress: float | None = None, *, force: bool = False) -> None:
        """Heartbeat (with progress) when one is due; raises :class:`LeaseLost` if it was taken."""
        if progress is not None:
            self.progress = max(self.progress, progress)
        now = self.w.clock.monotonic()
        if force or now >= self.next_beat:
            self.lease = self.w.catalogue.heartbeat(self.lease, self.w.config.lease_s, progress=self.progress)
            self.next_beat = now + self.w.config.heartbeat_s
        if self.w.stop.is_set():
            raise Stopped("the transcoder is stopping")

    def stopping(self) -> bool:
        return self.w.stop.is_set()

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> None:
        w = self.w
        w.current = {"job": self.job.id, "title": self.title_id, "attempt": self.job.attempts}
        work = w.scratch / f"job-{self.job.id}-{self.job.attempts}"
        shutil.rmtree(w.scratch, ignore_errors=True)  # this worker's leftovers (a killed run's too)
        work.mkdir(parents=True)
        objects = w._objects()
        try:
            self._attempt(objects, work)
        except LeaseLost as e:
            w.counts["leases_lost"] += 1
            log.warning("transcoder: job %s: lease lost (%s); its attempt is dropped", self.job.id, e,
                        extra={"event": "transcode.lease_lost", "job": self.job.id})
            self._clean(objects)
        except Stopped:
            self._clean(objects)
            self._give_back("the transcoder stopped during the job", retry=True)
        except Exception as e:
            retry = e.retry if isinstance(e, TranscodeError) else True
            message = str(e) if isinstance(e, TranscodeError) else f"{type(e).__name__}: {e}"
            log.warning("transcoder: job %s (title %s) attempt %s failed: %s", self.job.id, self.title_id,
                        self.job.attempts, message, extra={"event": "transcode.failed", "job": self.job.id})
            if not self.publish_sent:
                self._clean(objects)
            # Else the prefix is left to the version collector: the failure records it if the
            # publish did not commit (the job is still ours); if it did, the title names it and
            # nothing records it (the failure finds the job done: LeaseLost).
            self._give_back(message, retry=retry)
        finally:
            objects.close()
            shutil.rmtree(work, ignore_errors=True)
            w.current = None

    def _attempt(self, objects: ObjectStore, work: Path) -> None:
        w, cfg = self.w, self.w.config
        bucket = w.store.videos_bucket
        if w.catalogue.get_title(self.title_id).state is TitleState.WITHDRAWN:
            # Withdrawn while its job waited: transcoding now would bring the title back.
            w.catalogue.complete(self.lease)
            w.counts["jobs_dropped"] += 1
            log.info("transcoder: job %s dropped: title %s was withdrawn", self.job.id, self.title_id,
                     extra={"event": "transcode.dropped", "job": self.job.id, "title": self.title_id})
            return
        w.catalogue.move_title(self.lease, TitleState.TRANSCODING, progress=0.0)
        payload = self.job.payload
        if not isinstance(payload.get("bucket"), str) or not isinstance(payload.get("key"), str):
            raise InvalidMedia("the job names no upload (payload bucket and key)")
        source = work / "source"
        objects.download(payload["bucket"], payload["key"], source, max_bytes=cfg.max_source_bytes)
        # Reported at once, not at the next heartbeat: a short title's whole ffmpeg run can
        # fit between two, and the creator would see 0 % until it is published.
        self.beat(0.02, force=True)
        info = probe_file(cfg.ffprobe, source)
        rungs = plan_ladder(cfg.ladder, info, cfg.codecs, cfg.container)
        webm = webm_track_ids(rungs, info.has_audio)
        grid = thumbnail_grid(info.duration_s, cfg.thumbnail_s, cfg.thumbnail_width, rungs[0].width,
                              rungs[0].height)
        images = image_outputs(work / "images", grid, poster_at_s=info.duration_s * cfg.poster_at,
                               sprites_from=sprite_track([(r.width, r.codec) for r in rungs], cfg.thumbnail_width))
        ladder_mp4 = work / "ladder.mp4"
        streamed = cfg.stream_packaging
        argv = ladder_command(cfg.ffmpeg, source, ladder_mp4, rungs, info, segment_seconds=cfg.segment_seconds,
                              preset=cfg.preset, audio_bitrate=cfg.audio_bitrate, opus_bitrate=cfg.opus_bitrate,
                              vp9_deadline=cfg.vp9_deadline, vp9_cpu_used=cfg.vp9_cpu_used, images=images,
                              fragmented=streamed)
        s = w.store
        sink = S3Sink(S3Target(endpoint=s.endpoint, bucket=bucket, prefix=self.prefix, access_key=s.access_key,
                               secret_key=s.secret_key, region=s.region), ssl_context=s.ssl_context)
        lic = licence_url(w.cluster) if cfg.scheme != "none" else None
        # The key and the bucket while ffmpeg runs (a thread of its own: this one keeps the
        # heartbeats); a failure of either is raised after the run, as it would have been (or,
        # packaging while encoding, stops the run: the packager needs them).
        with ThreadPoolExecutor(1, thread_name_prefix="transcode-prepare") as prepare:
            prepared = prepare.submit(self._prepare_publish, objects, bucket)
            follower = StreamedLadder(ladder_mp4, sink, prepared, scheme=cfg.scheme,
                                      segment_seconds=cfg.segment_seconds, licence_url=lic,
                                      webm=webm) if streamed else None

            def tick(p: float | None) -> None:
                if follower is not None:
                    follower.check()
                self.beat(None if p is None else 0.05 + 0.8 * p)

            try:
                if follower is not None:
                    follower.start()
                run_ffmpeg(argv, duration_s=info.duration_s, frame_rate=float(info.frame_rate),
                           timeout_s=cfg.job_timeout_s, should_stop=self.stopping, tick=tick)
                kid, key = prepared.result()
                source.unlink()
                self.beat(0.85, force=True)
                image_files = collect_images(cfg.ffmpeg, images, grid, info.duration_s, timeout_s=cfg.job_timeout_s,
                                             should_stop=self.stopping)
            except BaseException:
                if follower is not None:
                    try:
                        follower.abort()
                    except Exception as e:  # noqa: BLE001 - the run's own error is the one to raise
                        log.warning("transcoder: job %s: packaging's abort failed: %s", self.job.id, e,
                                    extra={"event": "transcode.abort_failed", "job": self.job.id})
                raise
        if follower is not None:
            # Only the last fragment, the images and the manifests are left.
            result = follower.finish(image_files, tick=lambda: self.beat(0.9))
            log.info("transcoder: job %s packaged while encoding (%d of %d bytes of the ladder before ffmpeg "
                     "exited)", self.job.id, follower.bytes_while_encoding, follower.bytes_read,
                     extra={"event": "transcode.packaged", "job": self.job.id, "path": "streamed"})
        else:
            result = package_title(ladder_mp4, TickingSink(sink, lambda: self.beat(0.9)), images=image_files,
                                   scheme=cfg.scheme, key=key, kid=kid, segment_seconds=cfg.segment_seconds,
                                   licence_url=lic, webm=webm)
            log.info("transcoder: job %s packaged after the encode", self.job.id,
                     extra={"event": "transcode.packaged", "job": self.job.id, "path": "after"})
        renditions = renditions_of(result, rungs, self.prefix)
        w.catalogue.move_title(self.lease, TitleState.PACKAGED)
        # The publish: fenced, one transaction. LeaseLost here leaves the title to the new holder.
        self.publish_sent = True
        w.catalogue.complete(self.lease, title_state=TitleState.PUBLISHED, renditions=renditions)
        w.counts["jobs_published"] += 1
        try:
            # The CDN may hold this title's earlier version or a cached 404: purge its surrogate key.
            request_cdn_purge(w.catalogue, w.catalogue.get_title(self.title_id))
        except Exception as e:  # noqa: BLE001 - published stays published; the purge is what is lost
            log.warning("transcoder: title %s published, but its CDN purge was not queued: %s", self.title_id, e,
                        extra={"event": "transcode.purge_not_queued", "title": self.title_id})
        log.info("transcoder: title %s published as %s (%d rungs)", self.title_id, self.prefix, len(rungs),
                 extra={"event": "transcode.published", "job": self.job.id, "title": self.title_id})

    def _prepare_publish(self, objects: ObjectStore, bucket: str) -> tuple[bytes, bytes]:
        """The title's (KID, key) (empty for clear output) and the videos bucket made: what
        packaging needs, got while ffmpeg runs. ``objects`` is this thread's alone meanwhile."""
        kid = key = b""
        if self.w.config.scheme != "none":
            content = fetch_title_key(self.w.cluster, str(self.title_id), self.w.config.scheme)
            kid, key = content.kid, content.key
        objects.ensure_bucket(bucket)
        return kid, key

    def _clean(self, objects: ObjectStore) -> None:
        """Delete this attempt's prefix (never another's) at once; a failure is logged: the
        version collector deletes what is left (the failure or the next lease recorded it)."""
        try:
            objects.delete_prefix(self.w.store.videos_bucket, self.prefix)
        except Exception as e:
            log.warning("transcoder: could not delete %s: %s", self.prefix, e,
                        extra={"event": "transcode.cleanup_failed", "job": self.job.id})

    def _give_back(self, message: str, *, retry: bool) -> None:
        """Record the failure, fenced, the job and its title in one transaction: retried (the
        title stays transcoding, the error shown) or dead (the title failed with the reason)."""
        w = self.w
        try:
            job = w.catalogue.fail(self.lease, message, retry=retry, move_title=True, retire_prefix=self.prefix)
            w.counts["jobs_retried" if job.state is JobState.QUEUED else "jobs_failed"] += 1
        except LeaseLost:
            w.counts["leases_lost"] += 1
            log.warning("transcoder: job %s: lease lost before its failure was recorded", self.job.id,
                        extra={"event": "transcode.lease_lost", "job": self.job.id})

