"""Packaging one transcoded title into its version prefix, and the renditions the catalogue
records for it.

The ladder MP4 (one video track per rendition: H.264 tallest first, then VP9 tallest first;
then AAC, and Opus when there is VP9) goes through the DRM packager once
(:func:`headwater.drm.client.package_file`): every track becomes CMAF segments encrypted with
the title's one content key, and one DASH MPD and one HLS master name them. The MPD has one
AdaptationSet per codec (H.264 video, VP9 video, AAC audio, Opus audio), so a player picks the
sets it can decode and adapts within one; the HLS master names the H.264 renditions and the AAC
audio only (VP9/Opus in HLS is played by too few players: README, "VP9 and Opus renditions").
The poster and thumbnails are put through the same sink first, so a failure anywhere deletes
them with the segments; the manifests go last, at the sink's commit.

Layout of ``titles/T/vN/`` (names from the packager: ``video-<track>`` for rung k is track k):

    manifest.mpd  master.m3u8  video-1.m3u8 … video-H.m3u8  audio-<K+1>.m3u8   (H: H.264 rungs)
    video-1/init.mp4  video-1/seg-1.m4s … video-K/…  audio-<K+1>/init.mp4 …  [audio-<K+2>/ (Opus)]
    poster.jpg  thumbs/thumbs.vtt  thumbs/sprite-001.jpg …
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

from headwater.drm.client import (MASTER_NAME, MPD_NAME, PackageOptions, PackageResult, SegmentSink, TrackOutput,
                                  in_hls, media_playlist_name, package_path)

from ..catalogue import Rendition
from .ladder import PlannedRung

__all__ = ["TickingSink", "package_title", "renditions_of"]


class TickingSink:
    """A sink that calls ``tick()`` before each file, so a long packaging run still heartbeats
    its lease (and stops, aborting the sink, when ``tick`` raises)."""

    def __init__(self, inner: SegmentSink, tick: Callable[[], None]) -> None:
        self.inner = inner
        self.tick = tick
        self.files = 0

    def put(self, name: str, data: bytes) -> None:
        self.tick()
        self.inner.put(name, data)
        self.files += 1

    def commit(self) -> None:
        self.tick()
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


def package_title(ladder_mp4: Path, sink: SegmentSink, *, images: Mapping[str, Path], scheme: str, key: bytes,
                  kid: bytes, segment_seconds: int, licence_url: str | None) -> PackageResult:
    """Put ``images`` ({name: file}) and the packaged ladder into ``sink`` and commit it; on any
    error the sink is aborted (everything put is deleted) and the error raised."""
    try:
        for name, path in images.items():
            sink.put(name, path.read_bytes())
    except BaseException:
        sink.abort()
        raise
    options = PackageOptions(scheme=scheme, key=key if scheme != "none" else b"",
                             kid=kid if scheme != "none" else b"", segment_seconds=Fraction(segment_seconds),
                             dash=True, hls=True, licence_url=licence_url)
    return package_path(ladder_mp4, sink, options)


def renditions_of(result: PackageResult, rungs: Sequence[PlannedRung], prefix: str) -> tuple[Rendition, ...]:
    """The catalogue's renditions: ``dash`` and ``hls`` (the manifests), then one per planned
    rendition and audio track, each ``path`` a full object key under ``prefix``: its HLS media
    playlist, or for a DASH-only track (VP9, Opus) its init segment. The AAC track is
    ``audio``, the Opus one ``audio-opus``."""
    videos = [t for t in result.tracks if t.kind == "video"]
    if len(videos) != len(rungs):
        raise ValueError(f"the ladder file has {len(videos)} video tracks for {len(rungs)} rungs")
    out = [Rendition(name="dash", codec="manifest", path=prefix + MPD_NAME),
           Rendition(name="hls", codec="manifest", path=prefix + MASTER_NAME)]
    def path(t: TrackOutput) -> str:
        return prefix + (media_playlist_name(t) if in_hls(t) else t.init_name)

    for rung, t in zip(rungs, videos):
        out.append(Rendition(name=rung.name, codec=t.codec, width=t.width, height=t.height, bitrate=t.bandwidth,
                             path=path(t)))
    for t in result.tracks:
        if t.kind == "audio":
            out.append(Rendition(name="audio" if in_hls(t) else f"audio-{t.codec.split('.')[0]}", codec=t.codec,
                                 bitrate=t.bandwidth, path=path(t)))
    return tuple(out)
