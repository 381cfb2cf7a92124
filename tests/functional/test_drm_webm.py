"""WebM renditions through the packager, judged by ffmpeg 8.1 and pycryptodome (no daemon: the
packager is sans-IO but for its sink).

A VP9 + Opus MP4 is packaged with its tracks as WebM (``webm_track_ids``), progressively and
while the fragmented MP4 is fed in pieces. Each rendition's frames are decrypted here with
pycryptodome as the WebM Encryption spec says (signal byte, IV, AES-128-CTR with the IV
followed by 8 zero bytes), not with the packager's own code; the clear WebM made of them
decodes in ffmpeg with ``-xerror``, its VP9 frames to exactly the source's pictures (framemd5),
and the KID in each init segment is the title's. A wrong key gives frames ffmpeg cannot decode.
The MPD names both sets as WebM with ``cenc`` (WebM Encryption is CTR whatever the CMAF
scheme), and an H.264 track packaged beside them stays CMAF under its own scheme.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import pytest
from Crypto.Cipher import AES

from headwater.cli import main
from headwater.drm.errors import DrmError, UnsupportedMedia
from headwater.drm.package.pipeline import PackageOptions, package_path
from headwater.drm.package.sink import LocalFolderSink
from headwater.drm.package.streaming import StreamingPackager
from headwater.drm.webm.segment import Block, cluster, init_segment, read_cluster, read_init
from headwater.origin.transcode.ffmpeg import FRAGMENTED_MOVFLAGS
from tests.functional.drm_media import FFMPEG, FFPROBE, framemd5, make_clip, run
from tests.functional.test_drm_vp9 import KEY, KID, vp9_clip

MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"
CENC_KID = "{urn:mpeg:cenc:2013}default_KID"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return vp9_clip(tmp_path_factory.mktemp("webm") / "vp9.mp4", "-deadline", "realtime", "-cpu-used", "8")


def webm_options(scheme: str = "cbcs", ids=frozenset({1, 2}), **kw) -> PackageOptions:
    return PackageOptions(scheme=scheme, key=KEY if scheme != "none" else b"", kid=KID if scheme != "none" else b"",
                          segment_seconds=Fraction(1), hls=False, webm_track_ids=frozenset(ids), **kw)


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("seg-*.webm"), key=lambda p: int(p.stem.split("-")[1]))


def ctr_decrypt(key: bytes, data: bytes) -> bytes:
    """WebM Encryption's frame format, read with nothing of the packager's."""
    assert data[0] == 0x01, "every frame of an encrypted track is encrypted"
    return AES.new(key, AES.MODE_CTR, nonce=b"", initial_value=data[1:9] + bytes(8)).decrypt(data[9:])


def clear_webm(folder: Path, key: bytes | None, out: Path) -> Path:
    """The rendition in ``folder`` as one clear WebM file: its init without ContentEncodings, its
    clusters' frames decrypted with ``key`` (None: the segments joined as they are)."""
    init = (folder / "init.webm").read_bytes()
    if key is None:
        out.write_bytes(init + b"".join(s.read_bytes() for s in segments(folder)))
        return out
    track = read_init(init)
    from dataclasses import replace
    body = [init_segment(replace(track, encryption=b""))]
    for s in segments(folder):
        body.append(cluster([Block(b.timestamp_ms, b.keyframe, ctr_decrypt(key, b.frame))
                             for b in read_cluster(s.read_bytes())]))
    out.write_bytes(b"".join(body))
    return out


def decodes(path: Path) -> bool:
    return subprocess.run([FFMPEG, "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, timeout=60).returncode == 0


def hashes(path: Path, stream: str) -> list[str]:
    return [line.split(",")[-1].strip() for line in framemd5(path, stream)]


def test_webm_renditions_decrypt_with_the_key_to_the_source_frames(clip, tmp_path):
    out = tmp_path / "out"
    result = package_path(clip, LocalFolderSink(out, fsync=False), webm_options())
    assert [(t.track_id, t.container, t.init_name, t.segment_template) for t in result.tracks] == [
        (1, "webm", "video-1/init.webm", "video-1/seg-$Number$.webm"),
        (2, "webm", "audio-2/init.webm", "audio-2/seg-$Number$.webm")]
    assert not list(out.rglob("*.m4s")) and not list(out.rglob("*.mp4"))
    for folder, codec_id in (("video-1", "V_VP9"), ("audio-2", "A_OPUS")):
        track = read_init((out / folder / "init.webm").read_bytes())
        assert (track.codec_id, track.kid) == (codec_id, KID)
        clear = clear_webm(out / folder, KEY, tmp_path / f"{folder}.webm")
        assert decodes(clear), folder
        # One Cluster per segment, each opening on a keyframe, at the MP4's cuts (its 2 s GOPs).
        starts = [read_cluster(s.read_bytes())[0] for s in segments(out / folder)]
        assert len(starts) == 2 and all(b.keyframe for b in starts)
        assert [round(b.timestamp_ms, -2) for b in starts] == [0, 2000]
    # The VP9 frames are the source's, bit for bit (decoded pictures alike).
    assert hashes(tmp_path / "video-1.webm", "v") == hashes(clip, "v")
    probe = run(FFPROBE, "-v", "error", "-show_entries", "stream=codec_name,channels,sample_rate", "-of", "csv=p=0",
                tmp_path / "audio-2.webm").stdout.decode().split()
    assert probe == ["opus,48000,2"]
    # Encrypted as published (or decrypted with a wrong key) the frames are noise to a decoder.
    assert not decodes(clear_webm(out / "video-1", None, tmp_path / "as-published.webm"))
    assert not decodes(clear_webm(out / "video-1", bytes(16), tmp_path / "wrong-key.webm"))

    mpd = ET.fromstring((out / "manifest.mpd").read_bytes())
    sets = mpd.findall(f".//{MPD_NS}AdaptationSet")
    assert [(s.get("mimeType"), s.find(f"{MPD_NS}Representation").get("codecs")) for s in sets] == [
        ("video/webm", "vp09.00.11.08"), ("audio/webm", "opus")]
    for s in sets:
        prot = s.find(f"{MPD_NS}ContentProtection")
        assert prot.get("value") == "cenc" and prot.get(CENC_KID).replace("-", "") == KID.hex()
        template = s.find(f".//{MPD_NS}SegmentTemplate")
        assert template.get("initialization").endswith("/init.webm") and template.get("media").endswith(".webm")


def test_the_streaming_packager_writes_the_same_webm(clip, tmp_path):
    fragmented = tmp_path / "frag.mp4"
    run(FFMPEG, "-v", "error", "-i", clip, "-map", "0", "-c", "copy", "-movflags", FRAGMENTED_MOVFLAGS, fragmented)
    whole = tmp_path / "whole"
    package_path(clip, LocalFolderSink(whole, fsync=False), webm_options())
    streamed = tmp_path / "streamed"
    packager = StreamingPackager(LocalFolderSink(streamed, fsync=False), webm_options())
    data = fragmented.read_bytes()
    for i in range(0, len(data), 997):
        packager.feed(data[i:i + 997])
    packager.finish()
    names = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert names(whole) == names(streamed)
    assert (whole / "manifest.mpd").read_bytes() == (streamed / "manifest.mpd").read_bytes()
    for folder in ("video-1", "audio-2"):
        # Same frames and times; the IVs (random per run) differ.
        for a, b in zip(segments(whole / folder), segments(streamed / folder)):
            left, right = read_cluster(a.read_bytes()), read_cluster(b.read_bytes())
            assert [(x.timestamp_ms, x.keyframe, ctr_decrypt(KEY, x.frame)) for x in left] == \
                [(x.timestamp_ms, x.keyframe, ctr_decrypt(KEY, x.frame)) for x in right]


def test_webm_beside_cmaf_and_what_webm_refuses(tmp_path):
    # WebM of H.264 is refused, and nothing is left of the run.
    h264 = make_clip(tmp_path / "h264.mp4", seconds=2)
    with pytest.raises(UnsupportedMedia, match="WebM carries VP9 and Opus only"):
        package_path(h264, LocalFolderSink(tmp_path / "refused", fsync=False), webm_options(ids={1}))
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").rglob("*.*"))
    with pytest.raises(UnsupportedMedia, match="not in the input"):
        package_path(h264, LocalFolderSink(tmp_path / "refused2", fsync=False), webm_options(ids={7}))
    # The CLI's --webm names the input's VP9 and Opus tracks: an H.264 + AAC input has none.
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["package", str(h264), "--out", str(tmp_path / "cli"), "--scheme", "none", "--webm"])
    assert code != 0 and "no VP9 or Opus track" in err.getvalue(), err.getvalue()
    assert not (tmp_path / "cli").exists() or not any((tmp_path / "cli").rglob("*.*"))
    with pytest.raises(DrmError, match="key rotation or aes128"):
        PackageOptions(scheme="cenc", rotate_seconds=Fraction(4), hls=False, webm_track_ids=frozenset({1}))
    # Clear output, one track WebM beside a CMAF one: no ContentEncodings, frames as they are.
    clip = vp9_clip(tmp_path / "vp9.mp4", "-deadline", "realtime", "-cpu-used", "8", seconds=2)
    out = tmp_path / "clear"
    package_path(clip, LocalFolderSink(out, fsync=False), webm_options(scheme="none", ids={2}))
    assert (out / "video-1" / "init.mp4").exists() and (out / "audio-2" / "init.webm").exists()
    assert read_init((out / "audio-2" / "init.webm").read_bytes()).encryption == b""
    assert decodes(clear_webm(out / "audio-2", None, tmp_path / "a.webm"))
    mpd = ET.fromstring((out / "manifest.mpd").read_bytes())
    assert [s.get("mimeType") for s in mpd.findall(f".//{MPD_NS}AdaptationSet")] == ["video/mp4", "audio/webm"]
