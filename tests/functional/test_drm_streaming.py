"""Packaging while ffmpeg encodes: the ladder written as fragmented MP4 (the transcoder's own
``ladder_command(..., fragmented=True)``) and fed to :class:`StreamingPackager` in arbitrary
pieces makes the segments and manifests the progressive path makes from the same encode;
encrypted, it decrypts to the same frames; a file followed while it grows has segments put
before it is complete; hostile or truncated input publishes nothing."""

from __future__ import annotations

import os
import struct
import time
from concurrent.futures import Future
from fractions import Fraction
from pathlib import Path

import pytest

from headwater.drm.bmff.stream import FragmentStream, StreamLimits
from headwater.drm.errors import MalformedMedia, UnsupportedMedia
from headwater.drm.package.pipeline import PackageOptions, package_path
from headwater.drm.package.sink import LocalFolderSink
from headwater.drm.package.streaming import StreamingPackager
from headwater.origin.transcode.ffmpeg import FRAGMENTED_MOVFLAGS, ladder_command
from headwater.origin.transcode.ladder import PlannedRung
from headwater.origin.transcode.package import StreamedLadder
from headwater.origin.transcode.probe import probe_file
from tests.functional.drm_media import FFMPEG, FFPROBE, framemd5, make_clip, run

KEY, KID = bytes(range(16)), bytes(range(16, 32))
H264 = (PlannedRung(name="180p", width=320, height=180, bitrate=400_000),
        PlannedRung(name="90p", width=160, height=90, bitrate=150_000))
VP9 = H264[:1] + (PlannedRung(name="180p-vp9", width=320, height=180, bitrate=300_000, codec="vp9"),)


def ladder(clip: Path, out: Path, rungs, *, fragmented: bool) -> Path:
    info = probe_file(FFPROBE, clip)
    run(*ladder_command(FFMPEG, clip, out, rungs, info, segment_seconds=1, preset="ultrafast", audio_bitrate=64_000,
                        vp9_deadline="realtime", vp9_cpu_used=8, fragmented=fragmented))
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Per codec set: the ladder as a progressive MP4 (False), as the fragmented one the
    transcoder writes (True: the same command, another encode), and the progressive one
    remuxed into those fragments ("remux": the very same samples)."""
    d = tmp_path_factory.mktemp("streaming")
    clip = make_clip(d / "clip.mp4", seconds=4, gop=25)
    out = {}
    for codecs in ("h264", "vp9"):
        for frag in (False, True):
            out[codecs, frag] = ladder(clip, d / f"{codecs}-{frag}.mp4", H264 if codecs == "h264" else VP9,
                                       fragmented=frag)
        out[codecs, "remux"] = d / f"{codecs}-remux.mp4"
        run(FFMPEG, "-v", "error", "-i", out[codecs, False], "-map", "0", "-c", "copy", "-movflags",
            FRAGMENTED_MOVFLAGS, out[codecs, "remux"])
    return out


def options(scheme: str = "none") -> PackageOptions:
    return PackageOptions(scheme=scheme, key=KEY if scheme != "none" else b"", kid=KID if scheme != "none" else b"",
                          segment_seconds=Fraction(1), licence_url="https://licence.test/clearkey")


def stream(path: Path, out: Path, opts: PackageOptions, piece: int = 997):
    packager = StreamingPackager(LocalFolderSink(out, fsync=False), opts)
    data = path.read_bytes()
    for i in range(0, len(data), piece):
        packager.feed(data[i:i + piece])
    return packager.finish()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def timeline(result) -> list:
    return [(t.codec, t.width, t.presentation_offset, t.frame_rate,
             [(g.name, g.decode_time, g.presentation_time, g.duration, g.sample_count) for g in t.segments])
            for t in result.tracks]


@pytest.mark.parametrize("codecs", ["h264", "vp9"])
def test_streamed_output_is_the_progressive_path_output(media, tmp_path, codecs):
    progressive = package_path(media[codecs, False], LocalFolderSink(tmp_path / "p", fsync=False), options())
    remuxed = stream(media[codecs, "remux"], tmp_path / "s", options())
    a, b = files(tmp_path / "p"), files(tmp_path / "s")
    assert a.keys() == b.keys() and len(a) > 10
    # Same samples, same cuts: every segment and manifest byte for byte. (Not the init
    # segments: ffmpeg writes the sample entry's bitrates, btrt and esds, only where it knows
    # them, after the encode.)
    assert [n for n in a if a[n] != b[n] and not n.endswith("/init.mp4")] == []
    # The transcoder's own fragmented encode (x264 with VBV on threads is not bit-exact from
    # run to run, so its bytes differ): the same timeline, segment for segment.
    encoded = stream(media[codecs, True], tmp_path / "e", options())
    assert timeline(encoded) == timeline(progressive)
    assert files(tmp_path / "e").keys() == a.keys()
    if codecs == "vp9":
        assert {t.codec.split(".")[0] for t in encoded.tracks} == {"avc1", "vp09", "mp4a", "opus"}


def test_streamed_encrypted_output_decrypts_to_the_same_frames(media, tmp_path):
    stream(media["h264", True], tmp_path / "s", options("cenc"))
    clear = stream(media["h264", True], tmp_path / "c", options())
    for kind, n in (("v", "video-1"), ("a", f"audio-{clear.tracks[-1].track_id}")):
        def joined(root: Path) -> Path:
            segs = sorted((root / n).glob("seg-*.m4s"), key=lambda p: int(p.stem.split("-")[1]))
            out = root / f"{n}.mp4"
            out.write_bytes((root / n / "init.mp4").read_bytes() + b"".join(s.read_bytes() for s in segs))
            return out
        assert framemd5(joined(tmp_path / "s"), kind, "-decryption_key", KEY.hex()) == \
            framemd5(joined(tmp_path / "c"), kind)


def test_a_file_followed_while_it_grows_has_segments_put_before_it_is_complete(media, tmp_path):
    data = media["h264", True].read_bytes()
    growing = tmp_path / "ladder.mp4"
    out = tmp_path / "out"
    keys: Future[tuple[bytes, bytes]] = Future()
    keys.set_result((KID, KEY))
    follower = StreamedLadder(growing, LocalFolderSink(out, fsync=False), keys, scheme="cbcs", segment_seconds=1,
                              licence_url="https://licence.test/clearkey", poll_s=0.01, chunk_bytes=4096)
    follower.start()

    def staged() -> list[Path]:
        return [p for p in out.rglob("seg-*.m4s")] if out.exists() else []

    half = len(data) * 3 // 4
    with open(growing, "wb") as f:
        for i in range(0, half, 5000):
            f.write(data[i:min(i + 5000, half)])
            f.flush()
    deadline = time.monotonic() + 10
    while len(staged()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
        follower.check()
    assert len(staged()) >= 4  # segments of every track are out while the file is three quarters written
    assert not (out / "manifest.mpd").exists()
    with open(growing, "ab") as f:
        f.write(data[half:])
    result = follower.finish({}, tick=lambda: None)
    assert (out / "manifest.mpd").exists() and (out / "master.m3u8").exists()
    assert sum(len(t.segments) for t in result.tracks) == len(list(out.rglob("seg-*.m4s")))
    assert 0 < follower.bytes_while_encoding <= follower.bytes_read == len(data)


def test_a_follower_aborted_mid_file_leaves_nothing(media, tmp_path):
    data = media["h264", True].read_bytes()
    growing = tmp_path / "ladder.mp4"
    growing.write_bytes(data[:len(data) // 2])
    keys: Future[tuple[bytes, bytes]] = Future()
    keys.set_result((b"", b""))
    out = tmp_path / "out"
    follower = StreamedLadder(growing, LocalFolderSink(out, fsync=False), keys, scheme="none", segment_seconds=1,
                              licence_url=None, poll_s=0.01)
    follower.start()
    deadline = time.monotonic() + 10
    while follower.bytes_read < len(data) // 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    follower.abort()
    assert not out.exists() or list(out.iterdir()) == []
    # Finishing a truncated file instead is an error, and publishes nothing either.
    follower = StreamedLadder(growing, LocalFolderSink(out, fsync=False), keys, scheme="none", segment_seconds=1,
                              licence_url=None, poll_s=0.01)
    follower.start()
    with pytest.raises(MalformedMedia, match="truncated"):
        follower.finish({}, tick=lambda: None)
    assert not out.exists() or list(out.iterdir()) == []


# --- hostile input ------------------------------------------------------------------------------

def top_level(data: bytes) -> list[tuple[bytes, int, int]]:
    out, at = [], 0
    while at < len(data):
        size, btype = struct.unpack_from(">I4s", data, at)
        out.append((btype, at, size))
        at += size
    return out


def find(data: bytes, btype: bytes, start: int, end: int) -> int:
    """Offset of the first box ``btype`` at any depth in ``data[start:end]`` (containers walked)."""
    at = start
    while at < end:
        size, t = struct.unpack_from(">I4s", data, at)
        if t == btype:
            return at
        if t in (b"moof", b"traf"):
            inner = find(data, btype, at + 8, at + size)
            if inner >= 0:
                return inner
        at += size
    return -1


def second_moof(data: bytes) -> tuple[int, int]:
    moofs = [(at, size) for t, at, size in top_level(data) if t == b"moof"]
    return moofs[1]


@pytest.mark.parametrize("case, error, match", [
    ("truncated", MalformedMedia, "truncated"),
    ("moof claims gigabytes", UnsupportedMedia, "over the .*-byte limit"),
    ("moof before the moov", MalformedMedia, "before the moov"),
    ("a progressive mp4", UnsupportedMedia, "progressive"),
    ("a gap in decode times", MalformedMedia, "decodes from"),
    ("a sample outside its mdat", MalformedMedia, "outside"),
    ("size-0 box", MalformedMedia, "to the end"),
])
def test_hostile_fragments_publish_nothing(media, tmp_path, case, error, match):
    data = bytearray(media["h264", True].read_bytes())
    boxes = top_level(bytes(data))
    moov = next(at + size for t, at, size in boxes if t == b"moov")
    if case == "truncated":
        data = data[:len(data) - 5000]
    elif case == "moof claims gigabytes":
        data = data[:moov] + struct.pack(">I4s", 0xFFFFFF00, b"moof")
    elif case == "moof before the moov":
        ftyp = boxes[0][2]
        at, size = second_moof(bytes(data))
        data = data[:ftyp] + data[at:]
    elif case == "a progressive mp4":
        data = bytearray(media["h264", False].read_bytes())
    elif case == "a gap in decode times":
        at, size = second_moof(bytes(data))
        tfdt = find(bytes(data), b"tfdt", at + 8, at + size)
        value = struct.unpack_from(">Q", data, tfdt + 12)[0]
        struct.pack_into(">Q", data, tfdt + 12, value + 1)
    elif case == "a sample outside its mdat":
        at, size = second_moof(bytes(data))
        trun = find(bytes(data), b"trun", at + 8, at + size)
        struct.pack_into(">i", data, trun + 16, 8)  # data offset: into the moof itself
    else:
        data = data[:moov] + struct.pack(">I4s", 0, b"moof") + bytes(100)
    out = tmp_path / "out"
    packager = StreamingPackager(LocalFolderSink(out, fsync=False), options())
    with pytest.raises(error, match=match):
        for i in range(0, len(data), 4096):
            packager.feed(bytes(data[i:i + 4096]))
        packager.finish()
    assert not out.exists() or list(out.iterdir()) == []


def test_skipped_boxes_are_not_buffered_and_capped_ones_are_refused_on_their_header():
    s = FragmentStream(StreamLimits(max_mdat_bytes=1 << 20))
    # free, mfra, sidx: skipped as they arrive, however large they claim to be.
    assert s.feed(struct.pack(">I4sQ", 1, b"free", 1 << 40) + os.urandom(100_000)) == []
    assert s.buffered == 0
    s = FragmentStream(StreamLimits(max_mdat_bytes=1 << 20))
    with pytest.raises(UnsupportedMedia, match="mdat"):
        s.feed(struct.pack(">I4s", (1 << 20) + 9, b"mdat"))  # its header alone


def test_audio_running_ahead_of_a_stalled_video_is_refused_not_buffered(media, tmp_path):
    """The first fragment whole, then only the audio of the others (the packager's event
    handler driven directly: a file like that is tedious to forge): the audio waits for a
    video cut that never comes, up to the segment cap, then the input is refused."""
    from dataclasses import replace

    from headwater.drm.bmff.stream import SamplesRead

    movie, *samples = FragmentStream().feed(media["h264", True].read_bytes())
    assert all(isinstance(e, SamplesRead) for e in samples)
    audio_id = max(e.track_id for e in samples)
    packager = StreamingPackager(LocalFolderSink(tmp_path / "out", fsync=False), options())
    packager._start(movie.movie)
    for e in samples[:3]:  # the first fragment: 180p, 90p, audio
        packager._samples(e)
    packager._seg = replace(packager._seg, max_segment_bytes=10_000)
    with pytest.raises(UnsupportedMedia, match="past the video's last keyframe"):
        for e in samples[3:]:
            if e.track_id == audio_id:
                packager._samples(e)


# --- any split, any damage ----------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def events_of(data: bytes, cuts: list[int], limits: StreamLimits | None = None) -> list[tuple]:
    """What a FragmentStream says about ``data`` fed in pieces cut at ``cuts``, as plain values;
    the buffer it holds is checked against the largest box the limits allow after every piece."""
    s = FragmentStream(limits)
    lim = s.limits
    most = max(lim.max_moof_bytes + lim.max_mdat_bytes, lim.movie_limits.max_moov_bytes) + 32
    out: list[tuple] = []
    for a, b in zip([0, *cuts], [*cuts, len(data)]):
        for e in s.feed(data[a:b]):
            if hasattr(e, "movie"):
                out.append(("movie", tuple(t.track_id for t in e.movie.tracks)))
            else:
                out.append(("samples", e.track_id, e.base_decode_time, e.samples,
                            tuple(bytes(d) for d in e.data)))
        assert s.buffered <= most
    s.close()
    return out


@pytest.fixture(scope="module")
def fragmented(media) -> tuple[bytes, list[tuple]]:
    """The transcoder's fragmented ladder and its events read in one piece."""
    data = media["h264", True].read_bytes()
    return data, events_of(data, [])


@_FUZZ
@given(st.data())
def test_any_split_of_the_file_reads_as_the_whole(fragmented, data):
    whole, expected = fragmented
    cuts = sorted(data.draw(st.sets(st.integers(1, len(whole) - 1), max_size=40)))
    assert events_of(whole, cuts) == expected


@_FUZZ
@given(st.data())
def test_damaged_files_are_refused_with_media_errors_and_bounded_buffers(fragmented, data):
    """Flipped bytes (in box headers and tables: the first 64 KiB and each moof's
    neighbourhood), cut files and inserted junk: the reader either reads a file or refuses it with
    MalformedMedia/UnsupportedMedia, never another exception, never holding more than its caps."""
    whole, _ = fragmented
    buf = bytearray(whole)
    moofs = [at for t, at, _ in top_level(whole) if t == b"moof"]
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "junk"]))
        base = data.draw(st.sampled_from([0, *moofs]))
        at = min(len(buf) - 1, base + data.draw(st.integers(0, 4096 if base else 65535)))
        if kind == "flip":
            buf[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del buf[at:at + data.draw(st.integers(1, 64))]
        else:
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=24))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(buf) - 1), max_size=8)))
    limits = StreamLimits(max_moof_bytes=256 * 1024, max_mdat_bytes=8 * 1024 * 1024)
    try:
        events_of(bytes(buf), cuts, limits)
    except (MalformedMedia, UnsupportedMedia):
        pass
