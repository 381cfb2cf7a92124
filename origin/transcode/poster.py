"""The poster and the thumbnail track of a title.

- ``poster.jpg``: one frame of the top rung, ``poster_at`` into the title;
- ``thumbs/thumbs.vtt``: a WebVTT track whose cue for each interval of ``thumbnail_seconds``
  names its picture as a region of a sprite, ``sprite-001.jpg#xywh=x,y,w,h`` (the media
  fragment form players' thumbnail plugins read), and ``thumbs/sprite-NNN.jpg``: JPEGs of
  :data:`COLUMNS` x :data:`ROWS` thumbnails each, numbered from 1, row by row.

Both come from the ladder's own ffmpeg run (:class:`~.ffmpeg.ImageOutputs`, from the frames
it has already decoded and scaled; no second decode): :func:`image_outputs` says where they go,
:func:`collect_images` tiles the thumbnails into the sprites once the run is over, writes the
track (:func:`thumbnail_vtt`, sans-IO) and names every file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..delivery.objectpath import POSTER_NAME, THUMBNAILS_NAME
from ..errors import TranscodeFailed
from .ffmpeg import ImageOutputs, run_ffmpeg, sprite_command

__all__ = ["COLUMNS", "ROWS", "POSTER_NAME", "THUMBS_DIR", "VTT_NAME", "ThumbnailGrid", "thumbnail_grid",
           "thumbnail_vtt", "sprite_name", "sprite_track", "image_outputs", "collect_images"]

COLUMNS = 10
ROWS = 10
THUMBS_DIR = "thumbs"
VTT_NAME = THUMBNAILS_NAME  # the published layout's names (objectpath): what the title doc and /play name


@dataclass(frozen=True, slots=True, kw_only=True)
class ThumbnailGrid:
    """How many thumbnails, their size, and the interval they cover."""

    count: int
    width: int
    height: int
    every_s: float

    @property
    def sprites(self) -> int:
        return math.ceil(self.count / (COLUMNS * ROWS))


def thumbnail_grid(duration_s: float, every_s: float, width: int, source_width: int,
                   source_height: int) -> ThumbnailGrid:
    """The grid for a title of ``duration_s``: one thumbnail per started interval, the height
    keeping the source's aspect (even)."""
    height = max(2, 2 * round(width * source_height / source_width / 2))
    return ThumbnailGrid(count=max(1, math.ceil(duration_s / every_s)), width=width, height=height, every_s=every_s)


def sprite_name(n: int) -> str:
    """The n-th sprite's file name (from 1), as ffmpeg's image2 pattern numbers them."""
    return f"sprite-{n:03d}.jpg"


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def thumbnail_vtt(grid: ThumbnailGrid, duration_s: float) -> str:
    """The WebVTT thumbnail track; cue URLs are relative to the track (in the same folder)."""
    lines = ["WEBVTT", ""]
    per_sprite = COLUMNS * ROWS
    for i in range(grid.count):
        start = i * grid.every_s
        end = min(duration_s, start + grid.every_s)
        if end <= start:
            break
        n, cell = divmod(i, per_sprite)
        x, y = (cell % COLUMNS) * grid.width, (cell // COLUMNS) * grid.height
        lines += [f"{_stamp(start)} --> {_stamp(end)}",
                  f"{sprite_name(n + 1)}#xywh={x},{y},{grid.width},{grid.height}", ""]
    return "\n".join(lines)


def sprite_track(renditions: Sequence[tuple[int, str]], width: int) -> int:
    """Which rendition of the ladder (``renditions``: each one's width and codec, in file order)
    the sprites are cut from: the narrowest H.264 one at least ``width`` wide (its scaled frames
    are the fewest pixels to pick and scale down; an H.264 rung is of every size the ladder
    has), else the widest H.264 one."""
    h264 = [(w, i) for i, (w, codec) in enumerate(renditions) if codec == "h264"] or \
        [(w, i) for i, (w, _) in enumerate(renditions)]
    wide_enough = [(w, i) for w, i in h264 if w >= width]
    return min(wide_enough)[1] if wide_enough else max(h264)[1]


def image_outputs(folder: Path, grid: ThumbnailGrid, *, poster_at_s: float, sprites_from: int) -> ImageOutputs:
    """Where the ladder run writes the poster (from the first rendition, the top rung) and the
    thumbnails the sprites are tiled from (from rendition ``sprites_from``, see
    :func:`sprite_track`): under ``folder``, which is made."""
    (folder / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    return ImageOutputs(poster=folder / POSTER_NAME, poster_at_s=poster_at_s, poster_from=0,
                        thumbnails=folder / "thumbnails.nut", sprites_from=sprites_from, every_s=grid.every_s,
                        width=grid.width, height=grid.height)


def collect_images(ffmpeg: str, images: ImageOutputs, grid: ThumbnailGrid, duration_s: float, *,
                   timeout_s: float, should_stop: Callable[[], bool] = lambda: False) -> dict[str, Path]:
    """After the ladder run: its thumbnails tiled into the sprites (:data:`COLUMNS` x
    :data:`ROWS` each), the thumbnail track written beside them, and {object name: file} of
    the poster, the track and every sprite. :class:`TranscodeFailed` if there is no poster or
    no sprite."""
    folder = images.poster.parent
    thumbs = folder / THUMBS_DIR
    run_ffmpeg(sprite_command(ffmpeg, images.thumbnails, thumbs / "sprite-%03d.jpg", columns=COLUMNS, rows=ROWS),
               timeout_s=timeout_s, should_stop=should_stop)
    sprites = sorted(thumbs.glob("sprite-*.jpg"))
    if not images.poster.is_file() or not sprites:
        raise TranscodeFailed(f"ffmpeg made {'a' if images.poster.is_file() else 'no'} poster and "
                              f"{len(sprites)} thumbnail sprite(s)")
    (folder / VTT_NAME).write_text(thumbnail_vtt(grid, duration_s))
    out = {POSTER_NAME: images.poster, VTT_NAME: folder / VTT_NAME}
    for p in sprites:
        out[f"{THUMBS_DIR}/{p.name}"] = p
    return out
