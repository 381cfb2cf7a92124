"""WebM renditions through the real transcode pipeline: an object store cluster, the licence
node's key store, the origin's SQLite catalogue and the ``transcoder`` role, with
``codecs = ["h264", "vp9"]`` and ``container = "webm"``.

A 4-second clip is published with H.264/AAC renditions in CMAF and VP9/Opus renditions as WebM
DASH segments: the MPD has a ``video/webm`` and an ``audio/webm`` set beside the CMAF ones,
every video rendition on the same segment timeline; each WebM init segment names the title's
KID, and its frames, decrypted here with the title's key from the key store (pycryptodome, the
WebM Encryption frame format), decode in ffmpeg with ``-xerror`` to the source's picture (SSIM,
which the still-encrypted frames cannot give). The HLS master names H.264 and AAC only. With
``stream_packaging = false`` (packaged after the encode) the same WebM files are published.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from headwater.bench.origin import set_key
from headwater.drm.client import open_title_keys
from headwater.drm.webm.segment import read_init
from headwater.origin.catalogue import TitleState
from tests.functional.drm_media import FFMPEG, FFPROBE, run
from tests.functional.origin_harness import SMALL_LADDER
from tests.functional.test_drm_webm import clear_webm, decodes
from tests.functional.test_origin_transcode import (SECTIONS, VP9_SETTINGS, download, keys_under, ssim, submit,
                                                    transcoder_setup, wait_state)

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB")
MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"

WEBM = SECTIONS.replace('thumbnail_seconds = 5\n', 'thumbnail_seconds = 5\ncontainer = "webm"\n' + VP9_SETTINGS)


@pytest.fixture(scope="module")
def setup(cluster, s3, tmp_path_factory):
    assert 'container = "webm"' in WEBM and SMALL_LADDER in WEBM
    with transcoder_setup(cluster, s3, tmp_path_factory, WEBM, seconds=4) as world:
        assert world[0].transcoder.container == "webm"
        yield world


def test_vp9_and_opus_are_published_as_encrypted_webm_beside_cmaf_h264(setup, s3, tmp_path):
    cfg, catalogue, clip, worker = setup
    title_id, job_id = submit(s3, catalogue, "webm-dash-1", clip.read_bytes())
    title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker, timeout=60)
    assert title.state is TitleState.PUBLISHED, title.error
    prefix = f"titles/{title_id}/v{job_id}-1/"
    by_name = {r.name: r for r in title.renditions}
    assert set(by_name) == {"dash", "hls", "180p", "90p", "180p-vp9", "90p-vp9", "audio", "audio-opus"}
    assert by_name["180p-vp9"].path == prefix + "video-3/init.webm"
    assert by_name["audio-opus"].path == prefix + "audio-6/init.webm"
    stored = set(keys_under(s3, prefix))
    assert {r.path for r in title.renditions} <= stored
    assert any(k.endswith("video-4/seg-2.webm") for k in stored) and not any(
        k.startswith(prefix + "video-3/") and k.endswith(".m4s") for k in stored)

    local = tmp_path / "title"
    download(s3, prefix, local)
    mpd = ET.parse(local / "manifest.mpd").getroot()
    sets = {(a.get("mimeType"), frozenset(r.get("codecs").split(".")[0] for r in a.iter(f"{MPD_NS}Representation")))
            for a in mpd.iter(f"{MPD_NS}AdaptationSet")}
    assert sets == {("video/mp4", frozenset({"avc1"})), ("video/webm", frozenset({"vp09"})),
                    ("audio/mp4", frozenset({"mp4a"})), ("audio/webm", frozenset({"opus"}))}, sets
    for a in mpd.iter(f"{MPD_NS}AdaptationSet"):
        scheme = a.find(f"{MPD_NS}ContentProtection").get("value")
        assert scheme == ("cenc" if a.get("mimeType").endswith("webm") else "cbcs")
    # WebM and CMAF renditions share one segment timeline: a player switching lands on the same cuts.
    timelines = {tuple((s.get("t"), s.get("d"), s.get("r")) for s in rep.iter(f"{MPD_NS}S"))
                 for a in mpd.iter(f"{MPD_NS}AdaptationSet") if a.get("contentType") == "video"
                 for rep in a.iter(f"{MPD_NS}Representation")}
    assert len(timelines) == 1, timelines
    master = (local / "master.m3u8").read_text()
    assert "avc1." in master and "vp09" not in master and "opus" not in master and ".webm" not in master

    keys = open_title_keys(cfg)
    try:
        (info,) = list(keys.infos(str(title_id)))
        key = keys.get(info.kid).key
    finally:
        keys.close()
    for folder in ("video-3", "video-4", "audio-6"):
        assert read_init((local / folder / "init.webm").read_bytes()).kid == info.kid
    video = clear_webm(local / "video-3", key, tmp_path / "180p.webm")
    assert decodes(video)
    probe = run(FFPROBE, "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0",
                video).stdout.decode().strip()
    assert probe == "vp9,320,180", probe
    assert ssim(video, clip) > 0.9
    assert not decodes(clear_webm(local / "video-3", None, tmp_path / "encrypted.webm"))
    assert decodes(clear_webm(local / "video-4", key, tmp_path / "90p.webm"))
    audio = clear_webm(local / "audio-6", key, tmp_path / "opus.webm")
    assert decodes(audio)
    frames = [line for line in run(FFMPEG, "-v", "error", "-i", audio, "-f", "framemd5", "-").stdout.decode()
              .splitlines() if not line.startswith("#")]
    assert len(frames) >= 190  # 4 s of 20 ms Opus frames


def test_packaged_after_the_run_the_webm_renditions_are_the_same(setup, cluster, s3, tmp_path):
    """``stream_packaging = false`` (the progressive ladder, packaged after ffmpeg exits) makes
    the same WebM files, encrypted under the title's key."""
    cfg, catalogue, clip, worker = setup
    worker.kill()
    text = cluster.config_path.read_text()
    cluster.config_path.write_text(set_key(text, "transcoder", "stream_packaging", "false"))
    try:
        worker.start()
        title_id, job_id = submit(s3, catalogue, "webm-after", clip.read_bytes())
        title = wait_state(catalogue, title_id, {TitleState.PUBLISHED, TitleState.FAILED}, worker, timeout=60)
        assert title.state is TitleState.PUBLISHED, title.error
        assert "packaged after the encode" in worker.tail()
        prefix = f"titles/{title_id}/v{job_id}-1/"
        stored = {k.removeprefix(prefix) for k in keys_under(s3, prefix)}
        assert {"video-3/init.webm", "video-3/seg-2.webm", "video-4/init.webm", "audio-6/init.webm",
                "audio-6/seg-2.webm", "video-1/init.mp4", "audio-5/seg-2.m4s"} <= stored, stored
        local = tmp_path / "title"
        download(s3, prefix, local)
        keys = open_title_keys(cfg)
        try:
            (info,) = list(keys.infos(str(title_id)))
            key = keys.get(info.kid).key
        finally:
            keys.close()
        assert decodes(clear_webm(local / "video-3", key, tmp_path / "180p.webm"))
        assert decodes(clear_webm(local / "audio-6", key, tmp_path / "opus.webm"))
    finally:
        worker.kill()
        cluster.config_path.write_text(text)
        worker.start()
