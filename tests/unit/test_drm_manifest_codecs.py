"""Which manifest names which codec (drm/package/manifests.py, dash.py): one DASH adaptation set
per kind, language and codec; HLS only H.264, HEVC and AAC, and a clear refusal when that
leaves no video to offer."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest

from headwater.drm.errors import UnsupportedMedia
from headwater.drm.package.dash import codec_family
from headwater.drm.package.manifests import MASTER_NAME, ManifestProtection, dash_manifest, hls_manifests
from headwater.drm.package.segmenter import SegmentInfo, TrackOutput

NS = "{urn:mpeg:dash:schema:mpd:2011}"


def track(track_id: int, codec: str, *, height: int = 180, bandwidth: int = 300_000) -> TrackOutput:
    kind = "audio" if codec.split(".")[0] in ("mp4a", "opus") else "video"
    folder = f"{kind}-{track_id}"
    timescale = 48000 if kind == "audio" else 12800
    segs = tuple(SegmentInfo(number=n, name=f"{folder}/seg-{n}.m4s", decode_time=(n - 1) * 2 * timescale,
                             presentation_time=(n - 1) * 2 * timescale, duration=2 * timescale, size=bandwidth // 4,
                             sample_count=50) for n in (1, 2))
    extra = dict(width=height * 16 // 9, height=height, frame_rate=Fraction(25)) if kind == "video" else \
        dict(sample_rate=48000, channels=2)
    return TrackOutput(track_id=track_id, kind=kind, codec=codec, timescale=timescale, language="und",
                       init_name=f"{folder}/init.mp4", segment_template=f"{folder}/seg-$Number$.m4s", segments=segs,
                       duration=4 * timescale, bandwidth=bandwidth, peak_bandwidth=bandwidth, presentation_offset=0,
                       **extra)


LADDER = [track(1, "avc1.64000d"), track(2, "avc1.64000b", height=90), track(3, "vp09.00.11.08"),
          track(4, "vp09.00.10.08", height=90), track(5, "mp4a.40.2"), track(6, "opus")]
PROTECTION = ManifestProtection("cbcs", bytes(range(16)))


def test_codec_families():
    assert [codec_family(c) for c in ("avc1.64001f", "avc3.4d401e", "hvc1.1.6.L93.B0", "hev1.1", "vp09.00.10.08",
                                      "mp4a.40.2", "opus")] == ["avc", "avc", "hevc", "hevc", "vp09", "mp4a", "opus"]


def test_the_mpd_has_one_adaptation_set_per_codec():
    mpd = ET.fromstring(dash_manifest(LADDER, PROTECTION))
    sets = [(a.get("contentType"), sorted(r.get("id") for r in a.iter(f"{NS}Representation")))
            for a in mpd.iter(f"{NS}AdaptationSet")]
    assert sorted(sets) == sorted([("video", ["video-1", "video-2"]), ("video", ["video-3", "video-4"]),
                                   ("audio", ["audio-5"]), ("audio", ["audio-6"])])
    assert [s[0] for s in sets][:2] == ["video", "video"]  # video first
    for a in mpd.iter(f"{NS}AdaptationSet"):                # each set signals the protection
        assert any(c.get("value") == "cbcs" for c in a.iter(f"{NS}ContentProtection"))


def test_hls_names_only_h264_and_aac():
    playlists = hls_manifests(LADDER, PROTECTION)
    assert set(playlists) == {MASTER_NAME, "video-1.m3u8", "video-2.m3u8", "audio-5.m3u8"}
    master = playlists[MASTER_NAME].decode()
    assert re.findall(r'CODECS="([^"]+)"', master) == ["avc1.64000d,mp4a.40.2", "avc1.64000b,mp4a.40.2"]
    assert "audio-6" not in master


@pytest.mark.parametrize("tracks", [LADDER[2:4], LADDER[2:5], [LADDER[5]]],
                         ids=["vp9", "vp9+aac", "opus"])
def test_hls_without_an_h264_video_is_refused(tracks):
    with pytest.raises(UnsupportedMedia, match="HLS carries"):
        hls_manifests(tracks, PROTECTION)

