"""Validating an upload with ffprobe: the command, and its JSON read into a :class:`SourceInfo`
(sans-IO, :func:`parse_probe`), or :class:`~headwater.origin.errors.InvalidMedia` with a reason a
creator can act on. :func:`probe_file` runs it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import InvalidMedia

__all__ = ["SourceInfo", "probe_command", "parse_probe", "probe_file", "MAX_PROBE_OUTPUT"]

MAX_PROBE_OUTPUT = 1024 * 1024  # ffprobe's JSON for a sane file is a few KiB
MAX_DIMENSION = 8192
MAX_DURATION_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceInfo:
    """What the transcoder needs to know of an upload."""

    width: int
    height: int
    duration_s: float
    frame_rate: Fraction
    video_codec: str
    has_audio: bool


def probe_command(ffprobe: str, path: str | Path) -> list[str]:
    """ffprobe's argv: format and streams as JSON, errors only on stderr."""
    return [ffprobe, "-hide_banner", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
            str(path)]


def _rate(text: Any) -> Fraction | None:
    try:
        num, _, den = str(text).partition("/")
        value = Fraction(int(num), int(den or 1))
    except (ValueError, ZeroDivisionError):
        return None
    return value if 0 < value <= 300 else None


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and value > 0 else None  # NaN and 0 are "unknown"


def parse_probe(output: bytes) -> SourceInfo:
    """The source's facts from ffprobe's JSON; :class:`InvalidMedia` when it is not a video the
    ladder can be made from (no video stream, an image, no duration, absurd sizes)."""
    try:
        doc = json.loads(output)
    except (ValueError, UnicodeDecodeError):
        raise InvalidMedia("ffprobe did not describe the upload (unreadable output)") from None
    if not isinstance(doc, dict):
        raise InvalidMedia("ffprobe did not describe the upload")
    streams = doc.get("streams") if isinstance(doc.get("streams"), list) else []
    fmt = doc.get("format") if isinstance(doc.get("format"), dict) else {}
    videos = [s for s in streams if isinstance(s, dict) and s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams if isinstance(s, dict)})
        raise InvalidMedia(f"the upload has no video stream (found: {', '.join(kinds) or 'no streams'})")
    v = videos[0]
    width, height = v.get("width"), v.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and 0 < width <= MAX_DIMENSION
            and 0 < height <= MAX_DIMENSION):
        raise InvalidMedia(f"the video stream's size {width}x{height} is not within 1..{MAX_DIMENSION}")
    rate = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    if rate is None:
        raise InvalidMedia("the video stream has no frame rate (a still image?)")
    duration = _float(fmt.get("duration")) or _float(v.get("duration"))
    if duration is None:
        raise InvalidMedia("the upload has no duration (a still image or a broken container?)")
    if duration > MAX_DURATION_S:
        raise InvalidMedia(f"the upload lasts {duration:.0f} s, more than {MAX_DURATION_S:.0f} s")
    if duration * rate < 1:
        raise InvalidMedia("the upload is shorter than one frame")
    has_audio = any(isinstance(s, dict) and s.get("codec_type") == "audio" for s in streams)
    return SourceInfo(width=width, height=height, duration_s=duration, frame_rate=rate,
                      video_codec=str(v.get("codec_name") or "unknown"), has_audio=has_audio)


def probe_file(ffprobe: str, path: str | Path, *, timeout_s: float = 60.0) -> SourceInfo:
    """Run ffprobe on ``path`` (a local file) and parse it; :class:`InvalidMedia` when ffprobe
    cannot read it, with the first line of its complaint."""
    try:
        proc = subprocess.run(probe_command(ffprobe, path), capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InvalidMedia(f"ffprobe took more than {timeout_s:g} s to read the upload") from None
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = why[-1][-300:] if why else f"exit {proc.returncode}"
        # ffprobe names the file first ("/scratch/…/source: Invalid data …"): keep the reason only.
        reason = reason.split(": ", 1)[1] if reason.startswith(str(path)) and ": " in reason else reason
        raise InvalidMedia(f"the upload is not a video ffprobe can read: {reason}")
    if len(proc.stdout) > MAX_PROBE_OUTPUT:
        raise InvalidMedia("ffprobe's description of the upload is too large")
    return parse_probe(proc.stdout)
