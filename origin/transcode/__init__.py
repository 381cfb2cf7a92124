"""The transcode pipeline: the ``transcoder`` role leases ``transcode`` jobs from the origin's
catalogue and turns an upload into a published, encrypted title (:mod:`.worker`): ffprobe
validation (:mod:`.probe`), the ABR ladder (:mod:`.ladder`) encoded by ffmpeg (:mod:`.ffmpeg`),
a poster and thumbnail track (:mod:`.poster`), CMAF packaging and encryption through
``headwater.drm.client`` into ``s3://videos/titles/T/vN/`` (:mod:`.package`), and one fenced
catalogue update that publishes it."""

from .config import Rung, TranscoderConfig, read_transcoder
from .worker import JOB_KIND, TranscodeWorker, version_prefix

__all__ = ["Rung", "TranscoderConfig", "read_transcoder", "TranscodeWorker", "JOB_KIND", "version_prefix"]
