"""The ABR ladder for one source (sans-IO): which rungs of the configured ladder to make and at
what size, and the keyframe spacing that keeps every rung's segments aligned for CMAF.

A rung is made only if the source is at least as tall (upscaling spends bits on no detail);
a source shorter than every rung gets one rendition at its own height with the lowest rung's
bitrate. Widths keep the source's display aspect, rounded to even numbers (4:2:0 chroma).
Every rung has the same fixed GOP of ``segment_seconds`` (keyframes forced at each multiple of
it, scene-cut keyframes off), so segment n of every rung starts at the same time and a player
switches between rungs at any segment boundary.
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
    """One rendition to encode."""

    name: str
    width: int
    height: int
    bitrate: int


def _even(x: float) -> int:
    return max(2, 2 * round(x / 2))


def plan_ladder(ladder: Sequence[Rung], source: SourceInfo) -> tuple[PlannedRung, ...]:
    """The rungs of ``ladder`` to make of ``source``, tallest first."""
    if not ladder:
        raise ValueError("the ladder has no rungs")
    rungs = sorted(ladder, key=lambda r: -r.height)
    chosen = [r for r in rungs if r.height <= source.height]
    if not chosen:
        lowest = rungs[-1]
        chosen = [Rung(name=lowest.name, height=source.height - source.height % 2 or 2, bitrate=lowest.bitrate)]
    aspect = Fraction(source.width, source.height)
    return tuple(PlannedRung(name=r.name, width=_even(r.height * aspect), height=r.height, bitrate=r.bitrate)
                 for r in chosen)


def gop_frames(frame_rate: Fraction, segment_seconds: int) -> int:
    """Frames per GOP: one segment's worth (at least 1)."""
    return max(1, math.ceil(frame_rate * segment_seconds))
