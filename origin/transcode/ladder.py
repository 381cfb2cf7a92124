"""The ABR ladder for one source (sans-IO): which rungs of the configured ladder to make and at
what size, and the keyframe spacing that keeps every rung's segments aligned for CMAF.

A rung is made only if the source is at least as tall (upscaling spends bits on no detail);
a source shorter than every rung gets one rendition at its own height with the lowest rung's
bitrate. Widths keep the source's display aspect, rounded to even numbers (4:2:0 chroma).
Every rung has the same fixed GOP of ``segment_seconds`` (keyframes forced at each multiple of
it, scene-cut keyframes off), so segment n of every rung starts at the same time and a player
switches between rungs at any segment boundary.

Each rung is made in its codecs (``[transcoder] codecs``, or the rung's own): the planned
renditions are every H.264 one, tallest first, then every VP9 one, tallest first — the order of
the ladder file's video tracks, so the first track (the poster's, and the one the packager cuts
audio by) is the tallest H.264 rung. A VP9 rendition is named ``<rung>-vp9``; its container is
the rung's (``[transcoder] container`` when it names none): ``mp4`` (CMAF) or ``webm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from .config import Rung
from .probe import SourceInfo

__all__ = ["PlannedRung", "plan_ladder", "gop_frames"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedRung:
    """One rendition to encode: its rung's name (``-vp9`` appended for VP9), size, video bitrate
    codec (``h264`` or ``vp9``) and container (``mp4``, or ``webm`` for a VP9 one)."""

    name: str
    width: int
    height: int
    bitrate: int
    codec: str = "h264"
    container: str = "mp4"


def _even(x: float) -> int:
    return max(2, 2 * round(x / 2))


def plan_ladder(ladder: Sequence[Rung], source: SourceInfo, codecs: Sequence[str] = ("h264",),
                container: str = "mp4") -> tuple[PlannedRung, ...]:
    """The renditions of ``ladder`` to make of ``source``: H.264 ones tallest first, then VP9
    ones tallest first; ``codecs`` and ``container`` are those of the rungs that name none of
    their own."""
    if not ladder:
        raise ValueError("the ladder has no rungs")
    rungs = sorted(ladder, key=lambda r: -r.height)
    chosen = [r for r in rungs if r.height <= source.height]
    if not chosen:
        lowest = rungs[-1]
        chosen = [Rung(name=lowest.name, height=source.height - source.height % 2 or 2, bitrate=lowest.bitrate,
                       codecs=lowest.codecs, vp9_bitrate=lowest.vp9_bitrate, container=lowest.container)]
    aspect = Fraction(source.width, source.height)
    h264 = [r for r in chosen if "h264" in (r.codecs or codecs)] or chosen[:1]
    # (A source below every H.264 rung still gets one H.264 rendition, its tallest rung's: HLS
    # players need one.)
    planned = [PlannedRung(name=r.name, width=_even(r.height * aspect), height=r.height, bitrate=r.bitrate)
               for r in h264]
    planned += [PlannedRung(name=f"{r.name}-vp9", width=_even(r.height * aspect), height=r.height,
                            bitrate=r.vp9_bits, codec="vp9", container=r.container or container)
                for r in chosen if "vp9" in (r.codecs or codecs)]
    return tuple(planned)


def gop_frames(frame_rate: Fraction, segment_seconds: int) -> int:
    """Frames per GOP: one segment's worth (at least 1)."""
    return max(1, math.ceil(frame_rate * segment_seconds))
