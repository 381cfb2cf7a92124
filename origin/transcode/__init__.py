"""The transcode pipeline: the ``transcoder`` role leases ``transcode`` jobs from the origin's
catalogue and turns an upload into a published, encrypted title (:mod:`.worker`): ffprobe
validation (:mod:`.probe`), the ABR ladder (:mod:`.ladder`) encoded by ffmpeg (:mod:`.ffmpeg`),
a poster and thumbnail track (:mod:`.poster`), CMAF packaging and encryption through
``headwater.drm.client`` into ``s3://videos/titles/T/vN/`` (:mod:`.package`), and one fenced
catalogue update that publishes it. The version collector (:mod:`.versions`) deletes superseded
versions and dead attempts' prefixes after a retention."""

from headwater.lazy import lazy_exports

# Names are imported on first use (headwater.lazy): reading this package's config
# does not load its servers.
_EXPORTS = {
    "Rung": ".config",
    "TranscoderConfig": ".config",
    "read_transcoder": ".config",
    "JOB_KIND": ".worker",
    "TranscodeWorker": ".worker",
    "version_prefix": ".worker",
    "VersionCollector": ".versions",
}

__all__ = ["Rung", "TranscoderConfig", "read_transcoder", "TranscodeWorker", "JOB_KIND", "version_prefix",
           "VersionCollector"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
