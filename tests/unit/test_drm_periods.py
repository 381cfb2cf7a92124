"""Key-period planning (``plan_periods``) and the segment cuts it forces, on sample tables made
here: no media, no I/O."""

from __future__ import annotations

from array import array
from fractions import Fraction

import pytest

from headwater.drm.bmff.movie import Movie, SampleTables, Track
from headwater.drm.errors import DrmError, UnsupportedMedia
from headwater.drm.package.pipeline import PackageOptions
from headwater.drm.package.segmenter import SegmenterOptions, plan_periods, plan_segments

VIDEO_TS, FRAME = 12800, 512          # 25 fps
AUDIO_TS, AAC_FRAME = 48000, 1024


def tables(count: int, duration: int, sync_every: int | None) -> SampleTables:
    sync = None if sync_every is None else array("I", range(1, count + 1, sync_every))
    return SampleTables(count=count, stts_counts=array("I", [count]), stts_deltas=array("I", [duration]),
                        ctts_counts=array("I"), ctts_offsets=array("i"),
                        stsc_first_chunks=array("I", [1]), stsc_samples_per_chunk=array("I", [count]),
                        chunk_offsets=array("Q", [0]), constant_size=100, sizes=array("I"), sync=sync)


def video(frames: int, gop: int) -> Track:
    return Track(track_id=1, handler=b"vide", timescale=VIDEO_TS, duration=frames * FRAME, language="und",
                 sample_entry=b"", format=b"avc1", codec="avc1.64000c", width=320, height=180,
                 tables=tables(frames, FRAME, gop))


def audio(seconds: float) -> Track:
    count = int(seconds * AUDIO_TS / AAC_FRAME)
    return Track(track_id=2, handler=b"soun", timescale=AUDIO_TS, duration=count * AAC_FRAME, language="und",
                 sample_entry=b"", format=b"mp4a", codec="mp4a.40.2", sample_rate=48000, channels=2,
                 tables=tables(count, AAC_FRAME, None))


def movie(*tracks: Track) -> Movie:
    return Movie(timescale=1000, duration=6000, file_size=1 << 20, tracks=tracks)


def plan(m: Movie, segment: int | Fraction, period: int | Fraction | None):
    options = SegmenterOptions(segment_seconds=Fraction(segment),
                               period_seconds=None if period is None else Fraction(period))
    segments = plan_segments(m, options)
    return segments, plan_periods(m, segments, options)


def test_periods_start_on_whole_segments_and_audio_follows():
    m = movie(video(150, 25), audio(6))
    segments, periods = plan(m, 1, 2)
    assert segments[1] == [0, 25, 50, 75, 100, 125]
    assert periods == {1: [0, 2, 4], 2: [0, 2, 4]}
    # audio's period starts present at or after the video's: 2 s is audio sample 93.75 -> 94
    assert segments[2][2] == 94


def test_a_period_boundary_cuts_a_segment_short():
    # keyframes every 0.6 s: segments reach 1 s at 1.2 s, 2.4 s...; the 4 s boundary cuts at
    # the 4.2 s keyframe although that segment (3.6-4.2 s) is short of the 1 s target
    segments, periods = plan(movie(video(150, 15)), 1, 2)
    assert segments[1] == [0, 30, 60, 90, 105, 135]
    assert periods[1] == [0, 2, 4]


def test_a_long_gop_spans_several_multiples_of_the_period():
    # keyframes every 5 s: the first one after 0 starts period 2 (it passed 2 s and 4 s), the
    # next period then waits for a keyframe at or after 6 s, which this 8 s clip lacks
    segments, periods = plan(movie(video(200, 125)), 1, 2)
    assert segments[1] == [0, 125]
    assert periods[1] == [0, 1]


def test_without_rotation_there_is_one_period():
    segments, periods = plan(movie(video(150, 25), audio(6)), 1, None)
    assert periods == {1: [0], 2: [0]}
    assert len(segments[1]) == 6


def test_a_track_with_no_segment_in_a_period_is_refused():
    with pytest.raises(UnsupportedMedia, match="no segment of its own in key period 3"):
        plan(movie(video(150, 25), audio(3)), 1, 2)


def test_the_period_is_at_least_a_segment():
    with pytest.raises(ValueError, match="at least one segment"):
        SegmenterOptions(segment_seconds=Fraction(2), period_seconds=Fraction(1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(scheme="cenc", kid=bytes(16), key=bytes(16)), "cannot rotate"),
    (dict(scheme="none"), "cenc and cbcs"),
    (dict(scheme="cbcs", segment_seconds=Fraction(4)), "shorter than a segment"),
])
def test_options_refuse_what_cannot_rotate(kwargs, match):
    with pytest.raises(DrmError, match=match):
        PackageOptions(rotate_seconds=Fraction(2), **kwargs)
