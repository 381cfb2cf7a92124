"""The poster and thumbnail sprites made by the real ffmpeg the transcoder runs: for a title
shorter than one thumbnail interval (its ffmpeg run once wrote no sprite and failed the job) and
for one of several intervals (one cell per started interval, the first cell the first frame)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from headwater.origin.transcode.config import default_binary
from headwater.origin.transcode.poster import COLUMNS, POSTER_NAME, ROWS, VTT_NAME, make_images, thumbnail_grid

FFMPEG = default_binary("ffmpeg")


def clip(path: Path, seconds: float) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", str(path)],
                   check=True, timeout=60)
    return path


def jpeg_size(path: Path) -> tuple[int, int]:
    probe = subprocess.run([FFMPEG.replace("ffmpeg", "ffprobe"), "-v", "error", "-show_entries", "stream=width,height",
                            "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=30)
    w, h = probe.stdout.strip().split(",")
    return int(w), int(h)


@pytest.mark.parametrize("seconds,every_s,cells", [(2.0, 5.0, 1), (11.0, 2.0, 6)])
def test_sprites_for_short_and_longer_titles(tmp_path, seconds, every_s, cells):
    source = clip(tmp_path / "in.mp4", seconds)
    grid = thumbnail_grid(seconds, every_s, 64, 320, 180)
    assert grid.count == cells
    images = make_images(FFMPEG, source, tmp_path / "out", duration_s=seconds, poster_at=0.3, grid=grid,
                         timeout_s=60, should_stop=lambda: False)
    sprites = sorted(k for k in images if k.endswith(".jpg") and "sprite" in k)
    assert len(sprites) == 1, images
    assert jpeg_size(images[sprites[0]]) == (COLUMNS * grid.width, ROWS * grid.height)
    assert images[VTT_NAME].read_text().count("#xywh=") == cells
    assert images[POSTER_NAME].stat().st_size > 0
