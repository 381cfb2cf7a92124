"""VP9/Opus renditions through the real transcode pipeline: an object store cluster, the
licence node's key store, the origin's SQLite catalogue and the ``transcoder`` role run as an
operator runs it, with ``codecs = ["h264", "vp9"]`` (libvpx in realtime mode, so the test stays
a few seconds).

A 4-second ``testsrc2`` clip is published with H.264 and VP9 renditions of both rungs, AAC and
Opus audio, all cbcs-encrypted under the title's key: the MPD has one adaptation set per codec,
the HLS master names only H.264 and AAC, ffprobe reads every VP9 rendition, the encrypted VP9
frames' uncompressed headers are clear (ffmpeg's own VP9 header parser reads them without the
key), and the 180p VP9 rendition decrypts with the title's key to the source's picture (SSIM,
which a wrong key fails) and the Opus track to audio ffmpeg decodes without an error. A WebM
upload (VP9 + Opus in Matroska) is a source like any other.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from headwater.drm.client import open_title_keys
from headwater.origin.catalogue import TitleState
from tests.functional.drm_media import FFMPEG, FFPROBE, run
from tests.functional.origin_harness import SMALL_LADDER
from tests.functional.test_origin_transcode import (SECTIONS, VP9_SETTINGS, download, keys_under, ssim, submit,
                                                    transcoder_setup, wait_state)

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB")
MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"

WEBM = SECTIONS.replace('thumbnail_seconds = 5\n', 'thumbnail_seconds = 5\n' + VP9_SETTINGS)


@pytest.fixture(scope="module")
def setup(cluster, s3, tmp_path_factory):
    assert "vp9" in WEBM and SMALL_LADDER in WEBM
    with transcoder_setup(cluster, s3, tmp_path_factory, WEBM, seconds=4) as world:
        assert world[0].transcoder.codecs == ("h264", "vp9")
        yield world


def joined(local: Path, track: str, out: Path) -> Path:
    segs = sorted((local / track).glob("seg-*.m4s"), key=lambda p: int(p.stem.split("-")[1]))
    out.write_bytes((local / track / "init.mp4").read_bytes() + b"".join(s.read_bytes() for s in segs))
    return out


def test_vp9_and_opus_renditions_are_published_encrypted_beside_h264(setup, s3, tmp_path):
    cfg, catalogue, clip, worker = setup
    title_id, job_id = submit(s3, catalogue, "webm-1", clip.read_bytes())
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker, timeout=60)
    assert title.state is TitleState.PUBLISHED, title.error
    prefix = f"titles/{title_id}/v{job_id}-1/"
    by_name = {r.name: r for r in title.renditions}
    assert set(by_name) == {"dash", "hls", "180p", "90p", "180p-vp9", "90p-vp9", "audio", "audio-opus"}
    assert by_name["180p-vp9"].codec.startswith("vp09.00.") and by_name["audio-opus"].codec == "opus"
    assert (by_name["180p-vp9"].width, by_name["90p-vp9"].height) == (320, 90)
    # VP9 was given two thirds of H.264's bits (300k → 200k) and kept near it.
    assert by_name["180p-vp9"].bitrate < by_name["180p"].bitrate
    stored = set(keys_under(s3, prefix))
    assert {r.path for r in title.renditions} <= stored

    local = tmp_path / "title"
    download(s3, prefix, local)
    mpd = ET.parse(local / "manifest.mpd").getroot()
    sets = [(a.get("contentType"), sorted(r.get("codecs") for r in a.iter(f"{MPD_NS}Representation")))
            for a in mpd.iter(f"{MPD_NS}AdaptationSet")]
    families = [(kind, {c.split(".")[0] for c in codecs}) for kind, codecs in sets]
    assert sorted(families, key=str) == sorted([("video", {"avc1"}), ("video", {"vp09"}), ("audio", {"mp4a"}),
                                                ("audio", {"opus"})], key=str), sets
    assert all(len(codecs) == 2 for kind, codecs in sets if kind == "video")
    # Every video rendition, H.264 and VP9, has the same segments (the fixed GOP): a player
    # switching codec or rung lands on the same boundaries.
    timelines = {tuple((s.get("t"), s.get("d"), s.get("r")) for s in rep.iter(f"{MPD_NS}S"))
                 for a in mpd.iter(f"{MPD_NS}AdaptationSet") if a.get("contentType") == "video"
                 for rep in a.iter(f"{MPD_NS}Representation")}
    assert len(timelines) == 1, timelines
    master = (local / "master.m3u8").read_text()
    assert "avc1." in master and "mp4a.40.2" in master and "vp09" not in master and "opus" not in master

    keys = open_title_keys(cfg)
    try:
        (info,) = list(keys.infos(str(title_id)))
        key = keys.get(info.kid).key
    finally:
        keys.close()
    vp9 = {t: joined(local, t, tmp_path / f"{t}.mp4") for t in ("video-3", "video-4")}
    for path, width, height in ((vp9["video-3"], 320, 180), (vp9["video-4"], 160, 90)):
        probe = run(FFPROBE, "-v", "error", "-decryption_key", key.hex(), "-show_entries",
                    "stream=codec_name,width,height", "-of", "csv=p=0", path).stdout.decode().strip()
        assert probe.split(",")[:3] == ["vp9", str(width), str(height)], probe

    # The uncompressed headers are clear: ffmpeg's VP9 header parser reads every frame of the
    # still-encrypted rendition (no key given), each keyframe at 320x180.
    trace = subprocess.run([FFMPEG, "-v", "info", "-i", vp9["video-3"], "-c", "copy", "-bsf:v", "trace_headers",
                            "-f", "null", "-"], capture_output=True, timeout=60).stderr.decode(errors="replace")
    widths = re.findall(r"frame_width_minus_1\s+[01]+ = (\d+)", trace)
    assert widths and set(widths) == {"319"}, trace[-2000:]
    assert len(re.findall(r"header_size_in_bytes", trace)) >= 95  # ~100 frames, a few may show existing ones

    assert ssim(vp9["video-3"], clip, key) > 0.9
    assert ssim(vp9["video-3"], clip, bytes(16)) < 0.8

    opus = joined(local, "audio-6", tmp_path / "opus.mp4")
    good = subprocess.run([FFMPEG, "-v", "error", "-decryption_key", key.hex(), "-i", opus, "-f", "framemd5", "-"],
                          capture_output=True, timeout=60)
    assert good.returncode == 0 and good.stderr == b"", good.stderr[-1000:]
    frames = [line for line in good.stdout.decode().splitlines() if not line.startswith("#")]
    assert len(frames) >= 190  # 4 s of 20 ms Opus frames
    bad = subprocess.run([FFMPEG, "-v", "error", "-decryption_key", bytes(16).hex(), "-i", opus, "-f", "framemd5",
                          "-"], capture_output=True, timeout=60)
    assert bad.stdout != good.stdout


def test_a_webm_upload_is_transcoded_to_both_codecs(setup, s3, tmp_path):
    """A creator's WebM (VP9 + Opus in Matroska) is a source like any other: decoded once,
    published with H.264/AAC and VP9/Opus renditions."""
    cfg, catalogue, clip, worker = setup
    webm = tmp_path / "clip.webm"
    run(FFMPEG, "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000", "-t", "3", "-c:v", "libvpx-vp9",
        "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k", "-c:a", "libopus", "-b:a", "48k", webm)
    assert webm.read_bytes()[:4] == bytes.fromhex("1a45dfa3")  # EBML: a Matroska/WebM file
    title_id, job_id = submit(s3, catalogue, "webm-source", webm.read_bytes())
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker, timeout=60)
    assert title.state is TitleState.PUBLISHED, title.error
    codecs = {r.name: r.codec.split(".")[0] for r in title.renditions}
    assert codecs == {"dash": "manifest", "hls": "manifest", "180p": "avc1", "90p": "avc1", "180p-vp9": "vp09",
                      "90p-vp9": "vp09", "audio": "mp4a", "audio-opus": "opus"}
