"""The poster and thumbnail sprites made by the real ffmpeg the transcoder runs, as outputs of
the ladder's own run: for a title shorter than one thumbnail interval (its sprite run once wrote
no sprite and failed the job) and for one of several intervals (one cell per started interval);
the ladder MP4 beside them is whole, ffmpeg reports progress during the run, and the poster is
the frame at its time, not the first."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from headwater.origin.transcode.config import default_binary
from headwater.origin.transcode.ffmpeg import ProgressParser, ladder_command
from headwater.origin.transcode.ladder import PlannedRung
from headwater.origin.transcode.poster import (COLUMNS, POSTER_NAME, ROWS, VTT_NAME, collect_images, image_outputs,
                                               sprite_track, thumbnail_grid)
from headwater.origin.transcode.probe import SourceInfo

FFMPEG = default_binary("ffmpeg")
FFPROBE = default_binary("ffprobe")
RUNGS = (PlannedRung(name="180p", width=320, height=180, bitrate=300_000),
         PlannedRung(name="90p", width=160, height=90, bitrate=100_000))


def clip(path: Path, seconds: float) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", str(path)],
                   check=True, timeout=60)
    return path


def probe(path: Path, entries: str) -> list[str]:
    r = subprocess.run([FFPROBE, "-v", "error", "-count_frames", "-show_entries", entries, "-of", "csv=p=0",
                        str(path)], capture_output=True, text=True, timeout=30, check=True)
    return r.stdout.split()


@pytest.mark.parametrize("seconds,every_s,cells", [(2.0, 5.0, 1), (11.0, 2.0, 6)])
def test_sprites_and_poster_from_the_ladder_run(tmp_path, seconds, every_s, cells):
    source = clip(tmp_path / "in.mp4", seconds)
    grid = thumbnail_grid(seconds, every_s, 64, 320, 180)
    assert grid.count == cells
    sprites_from = sprite_track([(r.width, r.codec) for r in RUNGS], grid.width)
    assert sprites_from == 1
    images = image_outputs(tmp_path / "out", grid, poster_at_s=seconds * 0.3, sprites_from=sprites_from)
    info = SourceInfo(width=320, height=180, duration_s=seconds, frame_rate=Fraction(25), video_codec="h264",
                      has_audio=False)
    ladder = tmp_path / "ladder.mp4"
    argv = ladder_command(FFMPEG, source, ladder, RUNGS, info, segment_seconds=1, preset="ultrafast",
                          audio_bitrate=64_000, images=images)
    # Progress every 20 ms: ffmpeg reports none until every output has had a packet, so an
    # image output that gets its first late (a sprite tiled in the run) left the title at 0 %.
    ran = subprocess.run([argv[0], "-stats_period", "0.02", *argv[1:]], capture_output=True, timeout=60, check=True)
    progress = ProgressParser(seconds, frame_rate=25.0).feed(ran.stdout)
    assert progress[-1] == 1.0 and any(0 < p < 1 for p in progress), progress
    frames = round(seconds * 25)
    # Whole, and in the range the ladder alone encodes (the source's, unflagged): the JPEGs' full
    # range stays in their own branches of the graph.
    assert probe(ladder, "stream=width,height,color_range,nb_read_frames") == [
        f"320,180,unknown,{frames}", f"160,90,unknown,{frames}"]
    files = collect_images(FFMPEG, images, grid, seconds, timeout_s=60)
    sprites = sorted(k for k in files if k.endswith(".jpg") and "sprite" in k)
    assert len(sprites) == 1, files
    assert probe(files[sprites[0]], "stream=width,height") == [f"{COLUMNS * grid.width},{ROWS * grid.height}"]
    assert files[VTT_NAME].read_text().count("#xywh=") == cells
    assert probe(files[POSTER_NAME], "stream=width,height") == ["320,180"]
    # The first frame, made the same way, is another picture (testsrc2 moves): the poster is
    # the later frame the select took, which -update wrote over the first.
    first = tmp_path / "first.jpg"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(source), "-vf", "scale=320:180:flags=bicubic,setsar=1",
                    "-frames:v", "1", "-q:v", "3", str(first)], check=True, timeout=60)
    assert first.stat().st_size > 0 and files[POSTER_NAME].read_bytes() != first.read_bytes()
