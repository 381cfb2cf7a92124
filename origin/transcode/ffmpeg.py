"""ffmpeg for the pipeline: the command lines (sans-IO), ``-progress`` parsing (sans-IO,
:class:`ProgressParser`), and :func:`run_ffmpeg`, which runs one with a deadline, a stop
check, progress callbacks and a bounded tail of stderr for the error message.

The ladder is encoded in one ffmpeg run: the source is decoded once, split, scaled per rung and
encoded into one MP4 with a video track per rendition (H.264 tallest first, then VP9 tallest
first) and one AAC track (and an Opus one when there are VP9 renditions); the DRM packager then
cuts that one file into every rendition's CMAF segments and writes a master DASH MPD and HLS
playlist naming them.

VP9 is libvpx-vp9 into the same MP4 (``vp09`` with its ``vpcC``: CMAF's VP9 binding), with the
same fixed GOP as H.264 so every rendition's segments align: ``-g``/``-keyint_min`` are libvpx's
``kf_max_dist``/``kf_min_dist``, and forced keyframes are honoured. ``-row-mt 1`` lets one
encode use every core; ``-deadline``/``-cpu-used`` trade quality for speed (``realtime`` with a
high ``cpu-used`` is several times faster than ``good``). Opus is libopus at 48 kHz (the only
rate Opus decodes at), stereo, in an ``Opus`` sample entry with its ``dOps``.

The poster and the thumbnails are further outputs of the same run (:class:`ImageOutputs`):
one rung's scaled frames are split off before its encoder, a ``select`` keeps the few frames
wanted: the poster goes to its JPEG, the thumbnails (scaled down) to one raw NUT file, which
:func:`sprite_command` tiles into the sprite JPEGs after the run (a few small frames: tens of
milliseconds). A second ffmpeg run over the finished ladder (as they were made before) decoded
a rendition again after the encode, serially: a third of the pipeline's time around ffmpeg on
a short title. The tiling is not in the ladder run because ffmpeg reports no progress until
every output has had its first packet, and a sprite of 100 thumbnails has its first only when
full (or at the end).
"""

from __future__ import annotations

import collections
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TranscodeFailed
from .ladder import PlannedRung, gop_frames
from .probe import SourceInfo

__all__ = ["FRAGMENTED_MOVFLAGS", "ladder_command", "ImageOutputs", "sprite_command", "every_interval", "first_at", "ProgressParser", "run_ffmpeg", "Stopped", "STDERR_TAIL_BYTES"]

STDERR_TAIL_BYTES = 4096
#: The ladder as fragmented MP4: a fragment (``moof`` + ``mdat``, every track) cut at each
#: keyframe, i.e. at every segment boundary (the GOP is the segment); ``delay_moov`` writes the
#: ``moov`` with the first fragment, once ffmpeg knows the edit lists (the AAC priming, the
#: B-frame delay), so the presentation offsets are the progressive MP4's; sample data offsets
#: relative to each ``moof``, as CMAF has them. ffmpeg writes each fragment whole and never
#: seeks back before ``mfra`` at the end.
FRAGMENTED_MOVFLAGS = "+frag_keyframe+delay_moov+default_base_moof"
MAX_PROGRESS_LINE = 1024


class Stopped(Exception):
    """The run was stopped from outside (the daemon is stopping, or the lease was lost)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageOutputs:
    """The poster and thumbnails a ladder run writes beside its MP4.

    ``poster``: one JPEG of rung ``poster_from``'s frames, the first at or after ``poster_at_s``
    (the first frame when the title is shorter). ``thumbnails``: a NUT file of raw frames of
    ``width`` x ``height``, one every ``every_s`` of rung ``sprites_from``'s frames, for
    :func:`sprite_command` to tile."""

    poster: Path
    poster_at_s: float
    poster_from: int = 0
    thumbnails: Path
    sprites_from: int = 0
    every_s: float
    width: int
    height: int


def every_interval(every_s: float) -> str:
    """A ``select`` expression: the first frame, then the first at least ``every_s`` after the
    last one taken.

    ``select``, not ``fps=1/every_s``: the fps filter gave no frame at all for a title shorter
    than ``every_s``, and the JPEG encoder then failed the whole run."""
    return f"select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{every_s:g})'"


def first_at(at_s: float) -> str:
    """A ``select`` expression: the first frame, and the first frame at or after ``at_s`` (none
    after it). Written with ``-update 1``, the file holds the later of the two: there is always a
    frame, so the encoder never fails for want of one (a title shorter than ``at_s``)."""
    return (f"select='isnan(prev_selected_t)+gte(t\\,{at_s:.3f})*lt(prev_selected_t\\,{at_s:.3f})'")


def ladder_command(ffmpeg: str, source: Path, out: Path, rungs: Sequence[PlannedRung], info: SourceInfo, *,
                   segment_seconds: int, preset: str, audio_bitrate: int, opus_bitrate: int = 96_000,
                   vp9_deadline: str = "good", vp9_cpu_used: int = 4,
                   images: ImageOutputs | None = None, fragmented: bool = False) -> list[str]:
    """One ffmpeg run: ``source`` → ``out``, an MP4 with one video track per rendition (in
    ``rungs``' order, each in its codec) and the first audio stream as stereo AAC, and as
    stereo Opus too when a rendition is VP9; every rendition with the same fixed GOP. With
    ``images``, the poster and the thumbnail sprites too, from the same decoded frames. With
    ``fragmented``, the MP4 is written as it is encoded (:data:`FRAGMENTED_MOVFLAGS`), so
    the packager can follow it."""
    n = len(rungs)
    gop = gop_frames(info.frame_rate, segment_seconds)
    # Per rung, the labels its scaled frames go to: its encoder, then any image chain.
    taps: list[list[str]] = [[f"[v{i}]"] for i in range(n)]
    chains: list[str] = []
    if images is not None:
        if not (0 <= images.poster_from < n and 0 <= images.sprites_from < n):
            raise ValueError("the poster and sprites come from rungs of the ladder")
        taps[images.poster_from].append("[poster_in]")
        taps[images.sprites_from].append("[thumbs_in]")
        # A scale after each select: the JPEG encoder wants full-range frames, and without a
        # filter there to convert the few frames it gets, ffmpeg negotiated full range back
        # through select and split into the rung's own scale: its encoder got pc-range frames.
        chains = [f"[poster_in]{first_at(images.poster_at_s)},scale[poster]",
                  f"[thumbs_in]{every_interval(images.every_s)},scale={images.width}:{images.height}[thumbs]"]
    split = f"[0:v:0]split={n}" + "".join(f"[s{i}]" for i in range(n)) if n > 1 else "[0:v:0]null[s0]"
    scales = [f"[s{i}]scale={r.width}:{r.height}:flags=bicubic,setsar=1"
              + (f",split={len(taps[i])}" if len(taps[i]) > 1 else "") + "".join(taps[i])
              for i, r in enumerate(rungs)]
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-y", "-nostats", "-progress", "pipe:1",
            "-i", str(source), "-filter_complex", ";".join([split, *scales, *chains])]
    for i in range(n):
        argv += ["-map", f"[v{i}]"]
    opus = info.has_audio and any(r.codec == "vp9" for r in rungs)
    if info.has_audio:
        argv += ["-map", "0:a:0"]
    if opus:
        argv += ["-map", "0:a:0"]
    argv += ["-pix_fmt", "yuv420p", "-fps_mode", "cfr",
             # Fixed GOPs aligned across rungs: a keyframe at every multiple of the segment
             # duration, none at scene cuts, none in between.
             "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
             "-force_key_frames", f"expr:gte(t,n_forced*{segment_seconds})"]
    for i, r in enumerate(rungs):
        # Encoder options per output stream (``:v:i``): x264's preset and profile mean nothing
        # to libvpx (an H.264 profile name is an error there) and the reverse.
        if r.codec == "vp9":
            argv += [f"-c:v:{i}", "libvpx-vp9", f"-deadline:v:{i}", vp9_deadline, f"-cpu-used:v:{i}",
                     str(vp9_cpu_used), f"-row-mt:v:{i}", "1", f"-profile:v:{i}", "0"]
        else:
            argv += [f"-c:v:{i}", "libx264", f"-preset:v:{i}", preset, f"-profile:v:{i}", "high"]
        argv += [f"-b:v:{i}", str(r.bitrate), f"-maxrate:v:{i}", str(r.bitrate * 3 // 2),
                 f"-bufsize:v:{i}", str(r.bitrate * 2)]
    if info.has_audio:
        argv += ["-c:a:0", "aac", "-b:a:0", str(audio_bitrate)]
        if opus:
            argv += ["-c:a:1", "libopus", "-b:a:1", str(opus_bitrate), "-ar:a:1", "48000"]
        argv += ["-ac", "2"]
    argv += ["-map_metadata", "-1", "-sn", "-dn"]
    if fragmented:
        argv += ["-movflags", FRAGMENTED_MOVFLAGS]
    argv += ["-f", "mp4", str(out)]
    if images is not None:
        # Options before an output file are that file's own: these touch neither the MP4 nor
        # each other. ``-update 1``: the poster's later frame overwrites its first.
        argv += ["-map", "[poster]", "-fps_mode", "vfr", "-q:v", "3", "-update", "1", "-f", "image2",
                 str(images.poster)]
        argv += ["-map", "[thumbs]", "-fps_mode", "vfr", "-c:v", "rawvideo", "-f", "nut", str(images.thumbnails)]
    return argv


def sprite_command(ffmpeg: str, thumbnails: Path, pattern: Path, *, columns: int, rows: int) -> list[str]:
    """The thumbnails (the ladder run's NUT file) tiled ``columns`` x ``rows`` per JPEG, the
    JPEGs numbered from 1 by ``pattern`` (``…/sprite-%03d.jpg``); the last one padded."""
    return [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(thumbnails),
            "-vf", f"tile={columns}x{rows}", "-fps_mode", "vfr", "-q:v", "4", "-f", "image2", "-start_number", "1",
            str(pattern)]


class ProgressParser:
    """Reads ffmpeg's ``-progress`` stream (``key=value`` lines, each block ending with
    ``progress=continue`` or ``progress=end``) and gives the share of ``duration_s`` done at the
    end of each block. Lines longer than :data:`MAX_PROGRESS_LINE` are dropped, not buffered.

    The share is the larger of ``out_time`` and, given the ``frame_rate``, ``frame`` (frames
    of the first video output) over the duration: ``out_time`` is the least advanced output
    stream's, and a run that also writes the thumbnail sprites has one that gets its first
    packet at the end (``out_time`` stays ``N/A`` until then)."""

    def __init__(self, duration_s: float, frame_rate: float = 0.0) -> None:
        self.duration_s = duration_s
        self.frame_rate = frame_rate
        self._buf = b""
        self._skipping = False
        self._out_us: int | None = None
        self._frames: int | None = None
        self.done = False

    def feed(self, data: bytes) -> list[float]:
        """Progress values (0..1) of the blocks that ``data`` completes."""
        out: list[float] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_PROGRESS_LINE:
                    self._buf, self._skipping = b"", True
                return out
            line, self._buf = self._buf[:nl], self._buf[nl + 1:]
            if self._skipping:
                self._skipping = False
                continue
            key, _, value = line.decode("ascii", "replace").strip().partition("=")
            if key in ("out_time_us", "out_time_ms"):  # both are microseconds (ffmpeg's old name lies)
                try:
                    self._out_us = max(0, int(value))
                except ValueError:
                    pass
            elif key == "frame":
                try:
                    self._frames = max(0, int(value))
                except ValueError:
                    pass
            elif key == "progress":
                if value == "end":
                    self.done = True
                    out.append(1.0)
                    continue
                done_s = [self._out_us / 1e6] if self._out_us is not None else []
                if self._frames is not None and self.frame_rate > 0:
                    done_s.append(self._frames / self.frame_rate)
                if done_s and self.duration_s > 0:
                    out.append(min(1.0, max(done_s) / self.duration_s))


def run_ffmpeg(argv: Sequence[str], *, duration_s: float = 0.0, frame_rate: float = 0.0, timeout_s: float,
               tick: Callable[[float | None], None] = lambda p: None, should_stop: Callable[[], bool] = lambda: False,
               tick_s: float = 0.5, monotonic: Callable[[], float] = time.monotonic) -> None:
    """Run ffmpeg to the end. ``tick(progress)`` is called from this thread every ``tick_s``
    with the latest progress (None before the first; see :class:`ProgressParser` for
    ``duration_s`` and ``frame_rate``), and may raise to stop the run;
    ``should_stop()`` true stops it too (:class:`Stopped`). Past ``timeout_s``, or on a non-zero
    exit, :class:`TranscodeFailed` with the tail of stderr. The process is killed and reaped on
    every way out."""
    parser = ProgressParser(duration_s, frame_rate)
    latest: list[float | None] = [None]
    tail: collections.deque[bytes] = collections.deque()
    tail_size = [0]
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read_progress() -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            for p in parser.feed(chunk):
                latest[0] = p

    def read_stderr() -> None:
        assert proc.stderr is not None
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):  # type: ignore[union-attr]
            tail.append(chunk)
            tail_size[0] += len(chunk)
            while tail_size[0] - len(tail[0]) >= STDERR_TAIL_BYTES:
                tail_size[0] -= len(tail.popleft())

    readers = [threading.Thread(target=read_progress, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    deadline = monotonic() + timeout_s
    try:
        while True:
            try:
                code = proc.wait(timeout=tick_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if should_stop():
                raise Stopped("stopped")
            if monotonic() > deadline:
                raise TranscodeFailed(f"ffmpeg ran longer than {timeout_s:g} s and was killed")
            tick(latest[0])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in readers:
            t.join(5)
    if code != 0:
        text = b"".join(tail)[-STDERR_TAIL_BYTES:].decode(errors="replace").strip()
        raise TranscodeFailed(f"ffmpeg exited {code}: {text or 'no message'}")
