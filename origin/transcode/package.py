"""Packaging one transcoded title into its version prefix, and the renditions the catalogue
records for it.

The ladder MP4 (one video track per rendition: H.264 tallest first, then VP9 tallest first;
then AAC, and Opus when there is VP9) goes through the DRM packager once
(:func:`headwater.drm.client.package_file`): every track becomes CMAF segments encrypted with
the title's one content key, and one DASH MPD and one HLS master name them. The MPD has one
AdaptationSet per codec (H.264 video, VP9 video, AAC audio, Opus audio), so a player picks the
sets it can decode and adapts within one; the HLS master names the H.264 renditions and the AAC
audio only (VP9/Opus in HLS is played by too few players: README, "VP9 and Opus renditions").
A VP9 rendition whose container is ``webm`` (and the Opus audio, when any is) is packaged as
WebM DASH segments instead of CMAF (:func:`webm_track_ids` names their tracks to the packager):
``video-<k>/init.webm`` and ``seg-<n>.webm``, cut at the same samples as every other rendition,
its frames encrypted by WebM Encryption (AES-CTR) under the same title key, in adaptation sets
of their own (``video/webm``, ``audio/webm``).

The poster and thumbnails are put through the same sink first, so a failure anywhere deletes
them with the segments; the manifests go last, at the sink's commit.

Two paths, by ``[transcoder] stream_packaging``: by default (:class:`StreamedLadder`) ffmpeg
writes the ladder as fragmented MP4 and a thread follows the file as it grows, each segment
encrypted and PUT as soon as ffmpeg has written its fragment
(:class:`~headwater.drm.client.StreamingPackager`); when ffmpeg exits only the last
fragment, the images and the manifests remain, done on the worker's thread. With
``stream_packaging = false`` (:func:`package_title`) the ladder is a progressive MP4,
packaged whole after the run. Both make the same files (same cuts, names and manifests).

Layout of ``titles/T/vN/`` (names from the packager: ``video-<track>`` for rung k is track k):

    manifest.mpd  master.m3u8  video-1.m3u8 … video-H.m3u8  audio-<K+1>.m3u8   (H: H.264 rungs)
    video-1/init.mp4  video-1/seg-1.m4s … video-K/…  audio-<K+1>/init.mp4 …  [audio-<K+2>/ (Opus)]
    poster.jpg  thumbs/thumbs.vtt  thumbs/sprite-001.jpg …
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

from headwater.drm.client import (MASTER_NAME, MPD_NAME, PackageOptions, PackageResult, SegmentSink,
                                  StreamingPackager, TrackOutput, in_hls, media_playlist_name, package_path)

from ..catalogue import Rendition
from .ladder import PlannedRung

__all__ = ["TickingSink", "package_title", "package_options", "StreamedLadder", "renditions_of", "webm_track_ids"]


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


def webm_track_ids(rungs: Sequence[PlannedRung], has_audio: bool) -> frozenset[int]:
    """The ladder file's tracks to package as WebM: the VP9 renditions whose container is
    ``webm`` (track k+1 is rendition k), and the Opus track (after the video tracks and the AAC
    one: :func:`~.ffmpeg.ladder_command`'s order) when any is."""
    ids = {i + 1 for i, r in enumerate(rungs) if r.codec == "vp9" and r.container == "webm"}
    if ids and has_audio:
        ids.add(len(rungs) + 2)
    return frozenset(ids)


def package_title(ladder_mp4: Path, sink: SegmentSink, *, images: Mapping[str, Path], scheme: str, key: bytes,
                  kid: bytes, segment_seconds: int, licence_url: str | None,
                  webm: frozenset[int] = frozenset()) -> PackageResult:
    """Put ``images`` ({name: file}) and the packaged ladder into ``sink`` and commit it; on any
    error the sink is aborted (everything put is deleted) and the error raised."""
    try:
        for name, path in images.items():
            sink.put(name, path.read_bytes())
    except BaseException:
        sink.abort()
        raise
    return package_path(ladder_mp4, sink, package_options(scheme=scheme, key=key, kid=kid,
                                                          segment_seconds=segment_seconds,
                                                          licence_url=licence_url, webm=webm))


def package_options(*, scheme: str, key: bytes, kid: bytes, segment_seconds: int,
                    licence_url: str | None, webm: frozenset[int] = frozenset()) -> PackageOptions:
    """What a title is packaged into: DASH and HLS, one key (none for clear output); the
    tracks ``webm`` names as WebM."""
    return PackageOptions(scheme=scheme, key=key if scheme != "none" else b"",
                          kid=kid if scheme != "none" else b"", segment_seconds=Fraction(segment_seconds),
                          dash=True, hls=True, licence_url=licence_url, webm_track_ids=webm)


class StreamedLadder:
    """The ladder MP4 packaged while ffmpeg writes it (fragmented: ``ladder_command(...,
    fragmented=True)``).

    :meth:`start` starts a thread that waits for the title key (``keys``, the future the worker
    fetches it into while ffmpeg runs), then follows the file: whatever ffmpeg has appended is
    read (``chunk_bytes`` at a time) and fed to the packager, which puts each segment into
    ``sink`` as soon as it is complete; when nothing is new it waits ``poll_s``. The thread
    never touches the catalogue (heartbeats stay on the worker's thread). :meth:`check`, from
    ffmpeg's progress tick, raises the thread's error, which stops ffmpeg: a store refusing PUTs
    or a malformed fragment fails the run at once rather than after the encode.

    When ffmpeg has exited, :meth:`finish` stops the thread and, on the caller's thread, reads
    the rest of the file, puts the images, the last segments and the manifests, and commits.
    :meth:`abort` (any failure before that) stops the thread and aborts the sink: what was put
    is deleted, and nothing of the title was ever named by a manifest."""

    def __init__(self, path: Path, sink: SegmentSink, keys: Future[tuple[bytes, bytes]], *, scheme: str,
                 segment_seconds: int, licence_url: str | None, webm: frozenset[int] = frozenset(),
                 poll_s: float = 0.05, chunk_bytes: int = 1 << 20) -> None:
        self.path = path
        self.sink = sink
        self._keys = keys
        self._scheme, self._segment_seconds, self._licence_url = scheme, segment_seconds, licence_url
        self._webm = webm
        self.poll_s = poll_s
        self.chunk_bytes = chunk_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="transcode-package", daemon=True)
        self._error: BaseException | None = None
        self._packager: StreamingPackager | None = None
        self._file: BinaryIO | None = None
        self.bytes_read = 0
        self.bytes_while_encoding = 0  # read (and packaged) before ffmpeg exited

    def start(self) -> None:
        """Start following the file (it need not exist yet)."""
        self._thread.start()

    def check(self) -> None:
        """Raise the following thread's error, if it had one."""
        if self._error is not None:
            raise self._error

    def finish(self, images: Mapping[str, Path], *, tick: Callable[[], None]) -> PackageResult:
        """ffmpeg has exited: put ``images`` ({name: file}), package the rest of the file,
        put the manifests and commit. On an error the sink is aborted and the error raised."""
        self._halt()
        try:
            self.check()
            self.bytes_while_encoding = self.bytes_read
            packager = self._packager or self._make_packager()
            for name, path in images.items():
                tick()
                self.sink.put(name, path.read_bytes())
            while self._pump(packager):
                pass
            return packager.finish(tick=tick)
        except BaseException:
            self.sink.abort()
            raise
        finally:
            self._close()

    def abort(self) -> None:
        """Stop following and delete what was put."""
        self._halt()
        self._close()
        self.sink.abort()

    # --- the following thread -------------------------------------------------------------

    def _make_packager(self) -> StreamingPackager:
        kid, key = self._keys.result()
        return StreamingPackager(self.sink, package_options(
            scheme=self._scheme, key=key, kid=kid, segment_seconds=self._segment_seconds,
            licence_url=self._licence_url, webm=self._webm))

    def _follow(self) -> None:
        try:
            while True:  # the key first (a stop meanwhile ends the wait)
                try:
                    self._keys.result(timeout=self.poll_s)
                    break
                except TimeoutError:
                    if self._stop.is_set():
                        return
            packager = self._packager = self._make_packager()
            while not self._stop.is_set():
                if not self._pump(packager):
                    self._stop.wait(self.poll_s)
        except BaseException as e:  # noqa: BLE001 - raised on the worker's thread by check()
            self._error = e

    def _pump(self, packager: StreamingPackager) -> bool:
        """Feed what has been appended since the last read (at most ``chunk_bytes``); False
        when there was nothing new."""
        if self._file is None:
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:
                return False
        data = self._file.read(self.chunk_bytes)
        if not data:
            return False
        self.bytes_read += len(data)
        packager.feed(data)
        return True

    def _halt(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def renditions_of(result: PackageResult, rungs: Sequence[PlannedRung], prefix: str) -> tuple[Rendition, ...]:
    """The catalogue's renditions: ``dash`` and ``hls`` (the manifests), then one per planned
    rendition and audio track, each ``path`` a full object key under ``prefix``: its HLS media
    playlist, or for a DASH-only track (VP9, Opus) its init segment (``init.webm`` for a WebM
    one). The AAC track is ``audio``, the Opus one ``audio-opus``."""
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
