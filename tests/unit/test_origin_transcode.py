"""The transcoder's sans-IO parts: the ladder for a source, ffprobe's JSON, ffmpeg's progress
stream, the command lines, the thumbnail track and the [transcoder] reader."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from headwater.config import ConfigError, loads
from headwater.origin.errors import InvalidMedia
from headwater.origin.transcode.config import DEFAULT_LADDER, Rung, parse_bitrate
from headwater.origin.transcode.ffmpeg import ProgressParser, ladder_command, sprite_command
from headwater.origin.transcode.ladder import PlannedRung, gop_frames, plan_ladder
from headwater.origin.transcode.poster import image_outputs, sprite_track, thumbnail_grid, thumbnail_vtt
from headwater.origin.transcode.probe import SourceInfo, parse_probe
from headwater.origin.transcode.worker import version_prefix


def source(w=1920, h=1080, rate=Fraction(25), audio=True) -> SourceInfo:
    return SourceInfo(width=w, height=h, duration_s=30.0, frame_rate=rate, video_codec="h264", has_audio=audio)


def test_ladder_skips_rungs_above_the_source_and_keeps_its_aspect():
    rungs = plan_ladder(DEFAULT_LADDER, source(1280, 720))
    assert [(r.name, r.width, r.height) for r in rungs] == [("720p", 1280, 720), ("480p", 854, 480),
                                                            ("360p", 640, 360)]
    # 4:3 and odd results round to even widths
    assert [(r.width, r.height) for r in plan_ladder(DEFAULT_LADDER, source(1440, 1080))][-1] == (480, 360)


def test_a_source_below_every_rung_gets_one_at_its_own_height():
    (only,) = plan_ladder(DEFAULT_LADDER, source(320, 181))
    assert (only.name, only.width, only.height, only.bitrate) == ("360p", 318, 180, 700_000)


def test_gop_is_one_segment_of_frames():
    assert gop_frames(Fraction(25), 2) == 50
    assert gop_frames(Fraction(30000, 1001), 2) == 60


def probe_json(**over) -> bytes:
    doc = {"streams": [{"codec_type": "video", "codec_name": "h264", "width": 320, "height": 180,
                        "avg_frame_rate": "25/1", "r_frame_rate": "25/1"},
                       {"codec_type": "audio", "codec_name": "aac"}],
           "format": {"duration": "12.000000"}}
    doc.update(over)
    return json.dumps(doc).encode()


def test_probe_reads_size_rate_duration_and_audio():
    info = parse_probe(probe_json())
    assert (info.width, info.height, info.frame_rate, info.duration_s, info.has_audio) == (320, 180, 25, 12.0, True)


@pytest.mark.parametrize("doc,reason", [
    (b"not json", "unreadable"),
    (probe_json(streams=[{"codec_type": "audio"}]), "no video stream (found: audio)"),
    (probe_json(streams=[]), "no streams"),
    (probe_json(format={}), "no duration"),
    (probe_json(streams=[{"codec_type": "video", "width": 0, "height": 180, "avg_frame_rate": "25/1"}]), "size"),
    (probe_json(streams=[{"codec_type": "video", "width": 9, "height": 9, "avg_frame_rate": "0/0",
                          "r_frame_rate": "0/0"}]), "frame rate"),
    (probe_json(streams=[{"codec_type": "video", "width": 9, "height": 9, "avg_frame_rate": "25/1",
                          "disposition": {"attached_pic": 1}}]), "no video stream"),
])
def test_probe_refuses_what_is_not_a_video(doc, reason):
    with pytest.raises(InvalidMedia, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_probe(doc)


def test_progress_blocks_give_the_share_done_and_end():
    p = ProgressParser(10.0)
    stream = b"frame=5\nout_time_us=2500000\nprogress=continue\nout_time_ms=5000000\nprogress=cont"
    assert p.feed(stream[:20]) == []
    assert p.feed(stream[20:]) == [0.25]
    assert p.feed(b"inue\nout_time_us=N/A\nprogress=continue\nprogress=end\n") == [0.5, 0.5, 1.0]
    assert p.done


def test_progress_counts_frames_when_an_output_holds_out_time_back():
    # The sprites' output gets its first packet at the end: out_time is N/A (then 0) until then.
    p = ProgressParser(10.0, frame_rate=25.0)
    assert p.feed(b"frame=125\nout_time_us=N/A\nprogress=continue\n") == [0.5]
    assert p.feed(b"frame=200\nout_time_us=0\nprogress=continue\n") == [0.8]
    assert p.feed(b"frame=100\nout_time_us=9000000\nprogress=continue\n") == [0.9]  # the larger
    assert ProgressParser(10.0).feed(b"frame=125\nout_time_us=N/A\nprogress=continue\n") == []


def test_progress_drops_overlong_lines_without_buffering_them():
    p = ProgressParser(4.0)
    assert p.feed(b"x" * 5000) == []
    assert len(p._buf) == 0
    assert p.feed(b"yyy=1\nout_time_us=1000000\nprogress=continue\n") == [0.25]


def test_ladder_command_maps_every_rung_with_aligned_keyframes():
    rungs = (PlannedRung(name="a", width=640, height=360, bitrate=800_000),
             PlannedRung(name="b", width=320, height=180, bitrate=300_000))
    argv = ladder_command("ffmpeg", Path("in"), Path("out.mp4"), rungs, source(1280, 720), segment_seconds=2,
                          preset="veryfast", audio_bitrate=96_000)
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.startswith("[0:v:0]split=2[s0][s1];") and "scale=640:360" in graph and "scale=320:180" in graph
    maps = [argv[i + 1] for i, a in enumerate(argv) if a == "-map"]
    assert maps == ["[v0]", "[v1]", "0:a:0"]
    assert argv[argv.index("-g") + 1] == "50" and argv[argv.index("-sc_threshold") + 1] == "0"
    assert argv[argv.index("-force_key_frames") + 1] == "expr:gte(t,n_forced*2)"
    assert argv[argv.index("-b:v:1") + 1] == "300000" and argv[argv.index("-b:a:0") + 1] == "96000"
    assert argv[argv.index("-progress") + 1] == "pipe:1" and argv[-1] == "out.mp4"
    assert "-movflags" not in argv
    # Packaging while encoding: the same command, the MP4 fragmented at each keyframe.
    frag = ladder_command("ffmpeg", Path("in"), Path("out.mp4"), rungs, source(1280, 720), segment_seconds=2,
                          preset="veryfast", audio_bitrate=96_000, fragmented=True)
    assert frag[-5:] == ["-movflags", "+frag_keyframe+delay_moov+default_base_moof", "-f", "mp4", "out.mp4"]
    assert frag[:-5] == argv[:-3]
    silent = ladder_command("ffmpeg", Path("in"), Path("o"), rungs[:1], source(audio=False), segment_seconds=4,
                            preset="fast", audio_bitrate=96_000)
    assert "0:a:0" not in silent and "-c:a" not in silent
    assert silent[silent.index("-filter_complex") + 1].startswith("[0:v:0]null[s0];")


def test_thumbnail_track_names_regions_of_the_sprites():
    grid = thumbnail_grid(1005.0, 10.0, 160, 1920, 1080)
    assert (grid.count, grid.width, grid.height, grid.sprites) == (101, 160, 90, 2)
    vtt = thumbnail_vtt(grid, 1005.0).splitlines()
    assert vtt[0] == "WEBVTT"
    assert vtt[2:4] == ["00:00:00.000 --> 00:00:10.000", "sprite-001.jpg#xywh=0,0,160,90"]
    cues = [line for line in vtt if "#xywh" in line]
    assert cues[11] == "sprite-001.jpg#xywh=160,90,160,90"
    assert cues[100] == "sprite-002.jpg#xywh=0,0,160,90"
    assert vtt[-2] == "00:16:40.000 --> 00:16:45.000"


def test_the_poster_and_sprites_are_outputs_of_the_ladder_run(tmp_path):
    rungs = (PlannedRung(name="a", width=1280, height=720, bitrate=3_000_000),
             PlannedRung(name="b", width=640, height=360, bitrate=700_000))
    grid = thumbnail_grid(30.0, 10.0, 160, 1280, 720)
    images = image_outputs(tmp_path / "img", grid, poster_at_s=3.0, sprites_from=1)
    assert (tmp_path / "img" / "thumbs").is_dir()
    plain = ladder_command("ffmpeg", Path("in"), Path("out.mp4"), rungs, source(1280, 720), segment_seconds=2,
                           preset="veryfast", audio_bitrate=96_000)
    argv = ladder_command("ffmpeg", Path("in"), Path("out.mp4"), rungs, source(1280, 720), segment_seconds=2,
                          preset="veryfast", audio_bitrate=96_000, images=images)
    # The ladder's own outputs are unchanged: the images come after the MP4, each its own file.
    mp4 = argv.index("out.mp4")
    assert [a for a in argv[:mp4 + 1] if a != argv[argv.index("-filter_complex") + 1]] == \
        [a for a in plain if a != plain[plain.index("-filter_complex") + 1]]
    graph = argv[argv.index("-filter_complex") + 1].split(";")
    assert graph[1] == "[s0]scale=1280:720:flags=bicubic,setsar=1,split=2[v0][poster_in]"
    assert graph[2] == "[s1]scale=640:360:flags=bicubic,setsar=1,split=2[v1][thumbs_in]"
    assert graph[3] == ("[poster_in]select='isnan(prev_selected_t)+gte(t\\,3.000)*lt(prev_selected_t\\,3.000)',"
                        "scale[poster]")
    assert graph[4] == "[thumbs_in]select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,10)',scale=160:90[thumbs]"
    assert argv[mp4 + 1:] == [
        "-map", "[poster]", "-fps_mode", "vfr", "-q:v", "3", "-update", "1", "-f", "image2",
        str(tmp_path / "img" / "poster.jpg"),
        "-map", "[thumbs]", "-fps_mode", "vfr", "-c:v", "rawvideo", "-f", "nut", str(tmp_path / "img" / "thumbnails.nut")]
    # The tiling after the run (a sprite's first packet only once it is full would hold back
    # ffmpeg's progress reports for the whole run).
    tile = sprite_command("ffmpeg", images.thumbnails, Path("t/sprite-%03d.jpg"), columns=10, rows=10)
    assert tile[tile.index("-i") + 1] == str(images.thumbnails) and tile[tile.index("-vf") + 1] == "tile=10x10"
    assert tile[-5:] == ["-f", "image2", "-start_number", "1", "t/sprite-%03d.jpg"]
    # One rung: poster and sprites both split off it.
    one = ladder_command("ffmpeg", Path("in"), Path("o"), rungs[:1], source(), segment_seconds=2, preset="fast",
                         audio_bitrate=96_000,
                         images=image_outputs(tmp_path / "one", grid, poster_at_s=0.0, sprites_from=0))
    assert "setsar=1,split=3[v0][poster_in][thumbs_in]" in one[one.index("-filter_complex") + 1]
    with pytest.raises(ValueError):
        ladder_command("ffmpeg", Path("in"), Path("o"), rungs[:1], source(), segment_seconds=2, preset="fast",
                       audio_bitrate=96_000, images=images)


def test_sprites_are_read_from_the_narrowest_h264_rendition_wide_enough():
    ladder = [(1280, "h264"), (854, "h264"), (640, "h264"), (1280, "vp9"), (640, "vp9")]
    assert sprite_track(ladder, 160) == 2          # 640 H.264, not the 640 VP9 (slower to decode)
    assert sprite_track(ladder, 900) == 0
    assert sprite_track(ladder, 2000) == 0         # none wide enough: the widest
    assert sprite_track([(320, "h264"), (160, "h264"), (90, "h264")], 160) == 1
    assert sprite_track([(640, "vp9")], 160) == 0  # (a ladder always has H.264; never fails anyway)


def test_each_attempt_has_its_own_prefix():
    assert version_prefix(7, 12, 1) == "titles/7/v12-1/"
    assert version_prefix(7, 12, 1) != version_prefix(7, 12, 2)


def test_bitrates():
    assert parse_bitrate("3000k") == 3_000_000 and parse_bitrate("5M") == 5_000_000 and parse_bitrate("640") == 640
    for bad in ("", "0k", "3.5M", "fast"):
        with pytest.raises(ValueError):
            parse_bitrate(bad)


BASE = '[cluster]\nname = "t"\n\n[origin]\ntls = false\n\n[licence]\ntls = false\n\n'


def test_reader_defaults_and_a_ladder():
    cfg = loads(BASE + '[transcoder]\nworkers = 2\nlease_seconds = 8\n[[transcoder.ladder]]\nname = "small"\n'
                       'height = 180\nbitrate = "300k"\n[[transcoder.ladder]]\nname = "big"\nheight = 360\n'
                       'bitrate = 800000\n')
    t = cfg.transcoder
    assert (t.workers, t.lease_s, t.heartbeat_s, t.scheme, t.segment_seconds) == (2, 8.0, 2.0, "cbcs", 2)
    assert t.stream_packaging is True
    assert loads(BASE + "[transcoder]\nstream_packaging = false\n").transcoder.stream_packaging is False
    assert t.ladder == (Rung(name="big", height=360, bitrate=800_000), Rung(name="small", height=180, bitrate=300_000))
    assert t.scratch_dir == t.data_dir / "scratch" and t.port_keys == ("admin_port",)
    assert (t.version_retention_s, t.version_sweep_s) == (86400.0, 300.0)
    kept = loads(BASE + "[transcoder]\nlease_seconds = 8\nversion_retention_seconds = 16\nversion_sweep_seconds = 5\n")
    assert (kept.transcoder.version_retention_s, kept.transcoder.version_sweep_s) == (16.0, 5.0)


def test_a_retention_under_two_leases_is_refused_at_its_line():
    with pytest.raises(ConfigError, match=r"version_retention_seconds: 19 .*twice lease_seconds \(20\)") as e:
        loads(BASE + "[transcoder]\nlease_seconds = 10\nversion_retention_seconds = 19\n")
    assert e.value.line == 12


@pytest.mark.parametrize("body,key", [
    ("scheme = \"aes128\"\n", "transcoder.scheme"),
    ("workers = 0\n", "transcoder.workers"),
    ("stream_packaging = 1\n", "transcoder.stream_packaging"),
    ("heartbeat_seconds = 40\n", "transcoder.heartbeat_seconds"),
    ("version_retention_seconds = 0\n", "transcoder.version_retention_seconds"),
    ("version_retention_seconds = 119\n", "transcoder.version_retention_seconds"),  # under 2 leases
    ("version_retention_seconds = \"1d\"\n", "transcoder.version_retention_seconds"),
    ("version_sweep_seconds = 0\n", "transcoder.version_sweep_seconds"),
    ("[[transcoder.ladder]]\nname = \"x\"\nheight = 181\nbitrate = \"1M\"\n", "transcoder.ladder[0].height"),
    ("[[transcoder.ladder]]\nname = \"dash\"\nheight = 180\nbitrate = \"1M\"\n", "transcoder.ladder[0].name"),
    ("colour = 1\n", "transcoder.colour"),
    ('codecs = ["h264", "av1"]\n', "transcoder.codecs"),
    ('codecs = ["vp9"]\n', "transcoder.codecs"),
    ('codecs = []\n', "transcoder.codecs"),
    ('codecs = ["h264", "h264"]\n', "transcoder.codecs"),
    ('vp9_deadline = "best"\n', "transcoder.vp9_deadline"),
    ('vp9_cpu_used = 9\n', "transcoder.vp9_cpu_used"),
    ('opus_bitrate = "fast"\n', "transcoder.opus_bitrate"),
    ('[[transcoder.ladder]]\nname = "x"\nheight = 180\nbitrate = "1M"\ncodecs = ["vp8"]\n',
     "transcoder.ladder[0].codecs"),
    ('[[transcoder.ladder]]\nname = "x"\nheight = 180\nbitrate = "1M"\nvp9_bitrate = "0k"\n',
     "transcoder.ladder[0].vp9_bitrate"),
    ('[[transcoder.ladder]]\nname = "x-vp9"\nheight = 180\nbitrate = "1M"\n', "transcoder.ladder[0].name"),
    ('[[transcoder.ladder]]\nname = "x"\nheight = 180\nbitrate = "1M"\ncodecs = ["vp9"]\n', "transcoder.codecs"),
])
def test_reader_errors_name_the_key(body, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        loads(BASE + "[transcoder]\n" + body)


def test_the_transcoder_needs_the_origin_and_for_keys_the_licence_node():
    with pytest.raises(ConfigError, match="origin"):
        loads('[cluster]\nname = "t"\n\n[licence]\ntls = false\n\n[transcoder]\n')
    with pytest.raises(ConfigError, match="licence"):
        loads('[cluster]\nname = "t"\n\n[origin]\ntls = false\n\n[transcoder]\n')
    assert loads('[cluster]\nname = "t"\n\n[origin]\ntls = false\n\n[transcoder]\nscheme = "none"\n').transcoder


def test_vp9_renditions_follow_the_h264_ones_with_their_own_bitrates_and_encoder():
    cfg = loads(BASE + '[transcoder]\ncodecs = ["vp9", "h264"]\nvp9_deadline = "realtime"\nvp9_cpu_used = 8\n'
                       '[[transcoder.ladder]]\nname = "big"\nheight = 360\nbitrate = "900k"\n'
                       '[[transcoder.ladder]]\nname = "small"\nheight = 180\nbitrate = "300k"\n'
                       'codecs = ["h264"]\n[[transcoder.ladder]]\nname = "tiny"\nheight = 90\n'
                       'bitrate = "200k"\nvp9_bitrate = "90k"\n')
    t = cfg.transcoder
    assert (t.codecs, t.vp9_deadline, t.vp9_cpu_used, t.opus_bitrate) == (("h264", "vp9"), "realtime", 8, 96_000)
    assert loads(BASE + "[transcoder]\n").transcoder.codecs == ("h264",)   # the default is unchanged
    rungs = plan_ladder(t.ladder, source(640, 360), t.codecs)
    assert [(r.name, r.codec, r.height, r.bitrate) for r in rungs] == [
        ("big", "h264", 360, 900_000), ("small", "h264", 180, 300_000), ("tiny", "h264", 90, 200_000),
        ("big-vp9", "vp9", 360, 600_000), ("tiny-vp9", "vp9", 90, 90_000)]
    argv = ladder_command("ffmpeg", Path("in"), Path("out.mp4"), rungs, source(640, 360), segment_seconds=2,
                          preset="veryfast", audio_bitrate=96_000, opus_bitrate=64_000, vp9_deadline="realtime",
                          vp9_cpu_used=8)
    maps = [argv[i + 1] for i, a in enumerate(argv) if a == "-map"]
    assert maps == ["[v0]", "[v1]", "[v2]", "[v3]", "[v4]", "0:a:0", "0:a:0"]
    assert [argv[argv.index(f"-c:v:{i}") + 1] for i in range(5)] == ["libx264"] * 3 + ["libvpx-vp9"] * 2
    assert argv[argv.index("-deadline:v:3") + 1] == "realtime" and argv[argv.index("-cpu-used:v:4") + 1] == "8"
    assert argv[argv.index("-row-mt:v:3") + 1] == "1" and "-preset:v:3" not in argv
    assert argv[argv.index("-profile:v:0") + 1] == "high" and argv[argv.index("-profile:v:3") + 1] == "0"
    assert argv[argv.index("-b:v:4") + 1] == "90000"
    assert argv[argv.index("-c:a:1") + 1] == "libopus" and argv[argv.index("-b:a:1") + 1] == "64000"
    assert argv[argv.index("-ar:a:1") + 1] == "48000"
    # Every rendition, VP9 too, has the same fixed GOP: keyframes only at segment boundaries.
    assert argv[argv.index("-g") + 1] == argv[argv.index("-keyint_min") + 1] == "50"
    # Without VP9 there is no Opus track; without audio neither.
    plain = ladder_command("ffmpeg", Path("in"), Path("o"), rungs[:2], source(), segment_seconds=2,
                           preset="fast", audio_bitrate=96_000)
    assert "libopus" not in plain and [plain[i + 1] for i, a in enumerate(plain) if a == "-map"][-1] == "0:a:0"
    silent = ladder_command("ffmpeg", Path("in"), Path("o"), rungs, source(audio=False), segment_seconds=2,
                            preset="fast", audio_bitrate=96_000)
    assert "libopus" not in silent and "0:a:0" not in silent


def test_a_source_below_every_h264_rung_still_gets_one_h264_rendition():
    ladder = (Rung(name="big", height=720, bitrate=3_000_000, codecs=("h264",)),
              Rung(name="small", height=180, bitrate=300_000, codecs=("vp9",)))
    rungs = plan_ladder(ladder, source(640, 360))
    assert [(r.name, r.codec) for r in rungs] == [("small", "h264"), ("small-vp9", "vp9")]


@pytest.mark.parametrize("body,key,line", [
    # WebM of an H.264-only rung: named at the rung's own key, whatever order the ladder was written in.
    ('codecs = ["h264", "vp9"]\n[[transcoder.ladder]]\nname = "a"\nheight = 90\nbitrate = "1M"\n'
     '[[transcoder.ladder]]\nname = "b"\nheight = 180\nbitrate = "1M"\ncodecs = ["h264"]\ncontainer = "webm"\n',
     "transcoder.ladder[1].container", 21),
    # WebM for the ladder, but no rung is VP9.
    ('container = "webm"\n', "transcoder.container", 11),
    ('container = "mkv"\n', "transcoder.container", 11),
    ('codecs = ["h264", "vp9"]\n[[transcoder.ladder]]\nname = "a"\nheight = 90\nbitrate = "1M"\ncontainer = "ogg"\n',
     "transcoder.ladder[0].container", 16),
])
def test_a_webm_container_is_for_vp9_and_opus_only(body, key, line):
    with pytest.raises(ConfigError) as e:
        loads(BASE + "[transcoder]\n" + body)
    assert e.value.key == key and e.value.line == line, (e.value, e.value.line)


def test_webm_renditions_are_planned_per_rung_and_name_their_tracks():
    from headwater.origin.transcode.package import webm_track_ids
    cfg = loads(BASE + '[transcoder]\ncodecs = ["h264", "vp9"]\ncontainer = "webm"\n'
                       '[[transcoder.ladder]]\nname = "big"\nheight = 360\nbitrate = "900k"\n'
                       '[[transcoder.ladder]]\nname = "small"\nheight = 180\nbitrate = "300k"\ncontainer = "mp4"\n')
    t = cfg.transcoder
    assert t.container == "webm" and [r.container for r in t.ladder] == [None, "mp4"]
    assert loads(BASE + "[transcoder]\n").transcoder.container == "mp4"
    rungs = plan_ladder(t.ladder, source(640, 360), t.codecs, t.container)
    assert [(r.name, r.codec, r.container) for r in rungs] == [
        ("big", "h264", "mp4"), ("small", "h264", "mp4"), ("big-vp9", "vp9", "webm"), ("small-vp9", "vp9", "mp4")]
    # Tracks: 1-4 video in that order, 5 AAC, 6 Opus (WebM with the WebM rendition).
    assert webm_track_ids(rungs, has_audio=True) == {3, 6}
    assert webm_track_ids(rungs, has_audio=False) == {3}
    # The ladder's mp4 with a rung's own webm: that rung's VP9 rendition only.
    own = loads(BASE + '[transcoder]\ncodecs = ["h264", "vp9"]\n'
                       '[[transcoder.ladder]]\nname = "big"\nheight = 360\nbitrate = "900k"\n'
                       '[[transcoder.ladder]]\nname = "small"\nheight = 180\nbitrate = "300k"\ncontainer = "webm"\n')
    mixed = plan_ladder(own.transcoder.ladder, source(640, 360), own.transcoder.codecs, own.transcoder.container)
    assert [r.container for r in mixed] == ["mp4", "mp4", "mp4", "webm"]
    assert webm_track_ids(mixed, has_audio=True) == {4, 6}
    assert webm_track_ids(plan_ladder(t.ladder, source(640, 360), t.codecs, "mp4")[:2], has_audio=True) == set()
