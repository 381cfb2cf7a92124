"""VP9 and Opus through the packager, judged by ffmpeg 8.1 (no daemon: the packager is sans-IO
but for its sink).

ffmpeg's own VP9 header parser (the ``trace_headers`` bitstream filter, CBS) is the oracle for
where each frame's uncompressed header ends: our reader must agree on every frame of a real
libvpx encode, in the slow ``good`` mode (alt-ref frames, loop-filter deltas) and the
``realtime`` mode the tests' pipeline uses, and two-pass ``good`` whose hidden alt-ref frames
come in superframes. Then a VP9 + Opus clip packaged with ``cenc`` and
``cbcs`` decrypts with ffmpeg to exactly the frames it was made of (framemd5 of the decoded
video and audio), and a wrong key does not.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from headwater.drm.bmff.movie import read_movie
from headwater.drm.package.pipeline import PackageOptions, package_path
from headwater.drm.package.sink import LocalFolderSink
from headwater.drm.errors import UnsupportedMedia
from headwater.drm.package.vp9 import Vp9HeaderReader
from tests.functional.drm_media import FFMPEG, framemd5, run

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
KID = bytes.fromhex("0123456789abcdef0123456789abcdef")


def vp9_clip(path: Path, *vpx: str, seconds: int = 4) -> Path:
    """A VP9 + Opus MP4; with ``-pass`` in ``vpx``, both passes are run."""
    passes = [("-pass", "1", "-passlogfile", str(path) + ".log"), ("-pass", "2", "-passlogfile", str(path) + ".log")] \
        if "-pass" in vpx else [()]
    vpx = tuple(a for a in vpx if a != "-pass")
    for extra in passes:
        run(FFMPEG, "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
            "-c:v", "libvpx-vp9", *vpx, *extra, "-b:v", "200k", "-g", "50", "-keyint_min", "50",
            "-pix_fmt", "yuv420p", "-c:a", "libopus", "-b:a", "48k", "-ac", "2", "-f", "mp4",
            "/dev/null" if extra and extra[1] == "1" else path)
    return path


def ffmpeg_header_sizes(path: Path) -> list[int | None]:
    """Per frame, the uncompressed header's bytes as ffmpeg's VP9 parser reads them (None for a
    show_existing_frame frame, which is all header)."""
    trace = subprocess.run([FFMPEG, "-v", "info", "-i", path, "-map", "0:v:0", "-c", "copy", "-bsf:v",
                            "trace_headers", "-f", "null", "-"], capture_output=True, timeout=60).stderr.decode()
    sizes: list[int | None] = []
    for line in trace.splitlines():
        if line.rstrip().endswith("] Frame"):
            sizes.append(None)
        m = re.search(r"\] (\d+)\s+header_size_in_bytes", line)
        if m:
            sizes[-1] = (int(m.group(1)) + 16 + 7) // 8
    return sizes


@pytest.mark.parametrize("vpx", [
    ("-deadline", "good", "-cpu-used", "4", "-auto-alt-ref", "1", "-lag-in-frames", "16"),
    ("-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", "-tile-columns", "2", "-error-resilient", "1"),
    ("-deadline", "good", "-cpu-used", "4", "-auto-alt-ref", "1", "-lag-in-frames", "16", "-pass"),
], ids=["good", "realtime", "two-pass"])
def test_header_sizes_agree_with_ffmpeg(tmp_path, vpx):
    clip = vp9_clip(tmp_path / "clip.mp4", *vpx)
    with open(clip, "rb") as f:
        movie = read_movie(f, os.path.getsize(clip))
        (track,) = [t for t in movie.tracks if t.kind == "video"]
        reader = Vp9HeaderReader()
        ours: list[int | None] = []
        superframes = 0
        for s in track.samples():
            f.seek(s.offset)
            frames = reader.frames(f.read(s.size))
            superframes += len(frames) > 1
            ours += [fr.header_size if fr.header_size != fr.size else None for fr in frames]
    theirs = ffmpeg_header_sizes(clip)
    assert len(theirs) >= 100 and ours == theirs
    if "-pass" in vpx:
        assert superframes > 0


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_a_packaged_vp9_and_opus_clip_decrypts_to_its_frames(tmp_path, scheme):
    # Two-pass: superframes among the samples.
    clip = vp9_clip(tmp_path / "clip.mp4", "-deadline", "good", "-cpu-used", "5", "-auto-alt-ref", "1",
                    "-lag-in-frames", "16", "-pass")
    out = tmp_path / "out"
    result = package_path(clip, LocalFolderSink(out, fsync=False),
                          PackageOptions(scheme=scheme, key=KEY, kid=KID, hls=False))
    assert [(t.kind, t.codec.split(".")[0]) for t in result.tracks] == [("video", "vp09"), ("audio", "opus")]
    init = (out / "video-1/init.mp4").read_bytes()
    assert b"encv" in init and b"vpcC" in init and scheme.encode() in init
    assert b"enca" in (out / "audio-2/init.mp4").read_bytes() and b"dOps" in (out / "audio-2/init.mp4").read_bytes()
    for track, stream in (("video-1", "v"), ("audio-2", "a")):
        segs = sorted((out / track).glob("seg-*.m4s"), key=lambda p: int(p.stem.split("-")[1]))
        joined = tmp_path / f"{track}.mp4"
        joined.write_bytes((out / track / "init.mp4").read_bytes() + b"".join(s.read_bytes() for s in segs))
        # The frames' hashes (the last column: timestamps move by Opus's pre-skip in fMP4).
        want = [line.split(",")[-1] for line in framemd5(clip, stream)]
        got = [line.split(",")[-1] for line in framemd5(joined, stream, "-decryption_key", KEY.hex())]
        assert got == want and len(want) >= 100
        wrong = subprocess.run([FFMPEG, "-v", "quiet", "-decryption_key", bytes(16).hex(), "-i", joined,
                                "-f", "framemd5", "-"], capture_output=True, timeout=60).stdout.decode()
        assert [line.split(",")[-1] for line in wrong.splitlines() if not line.startswith("#")] != want


def test_a_vp9_title_asked_for_hls_is_refused_before_any_segment(tmp_path):
    clip = vp9_clip(tmp_path / "clip.mp4", "-deadline", "realtime", "-cpu-used", "8", seconds=2)

    class Sink:
        def __init__(self) -> None:
            self.names: list[str] = []
            self.aborted = False

        def put(self, name: str, data: bytes) -> None:
            self.names.append(name)

        def commit(self) -> None:
            raise AssertionError("nothing may be committed")

        def abort(self) -> None:
            self.aborted = True

    sink = Sink()
    with pytest.raises(UnsupportedMedia, match="HLS carries H.264, HEVC and AAC only"):
        package_path(clip, sink, PackageOptions(scheme="cbcs", key=KEY, kid=KID))
    assert sink.names == [] and sink.aborted
