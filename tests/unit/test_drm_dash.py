"""The MPD writer: structure, namespaces, protection signalling, segment timing, escaping."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest

from headwater.drm.package.dash import (
    CLEARKEY_SCHEME, DASHIF_NS, MP4PROTECTION_SCHEME, W3C_COMMON_SCHEME, Protection,
    Representation, write_mpd,
)

NS = "{urn:mpeg:dash:schema:mpd:2011}"
CENC = "{urn:mpeg:cenc:2013}"
KID = bytes.fromhex("9eb4050de44b4802932e27d75083e266")


def video(**overrides) -> Representation:
    fields = dict(
        id="v1", kind="video", codecs="avc1.64001f", bandwidth=800_000, timescale=12800,
        init="video/init.mp4", media="video/seg-$Number$.m4s",
        segment_durations=(25600, 25600, 12800), width=1280, height=720,
        frame_rate=Fraction(25),
    )
    fields.update(overrides)
    return Representation(**fields)


def audio(**overrides) -> Representation:
    fields = dict(
        id="a1", kind="audio", codecs="mp4a.40.2", bandwidth=128_000, timescale=48000,
        init="audio/init.mp4", media="audio/seg-$Number$.m4s",
        segment_durations=(96256, 95744, 96256), sampling_rate=48000, channels=2,
        language="en",
    )
    fields.update(overrides)
    return Representation(**fields)


def parse(mpd: bytes) -> ET.Element:
    return ET.fromstring(mpd)


def test_static_mpd_with_profiles_duration_and_sets_video_first():
    root = parse(write_mpd([audio(), video()]))
    assert root.tag == f"{NS}MPD"
    assert root.get("type") == "static"
    assert root.get("profiles").split(",") == [
        "urn:mpeg:dash:profile:isoff-live:2011", "urn:mpeg:dash:profile:cmaf:2019"]
    # a WebM set beside them: the MPD no longer claims that every set is CMAF
    webm = parse(write_mpd([video(), audio(id="a2", codecs="opus", container="webm", init="a/init.webm",
                                          media="a/seg-$Number$.webm")]))
    assert webm.get("profiles") == "urn:mpeg:dash:profile:isoff-live:2011"
    # audio runs 288256/48000 = 6.005333 s, the longest: the presentation's duration
    assert root.get("mediaPresentationDuration") == "PT6.005S"
    sets = root.findall(f"{NS}Period/{NS}AdaptationSet")
    assert [s.get("contentType") for s in sets] == ["video", "audio"]
    assert sets[1].get("lang") == "en"
    rep = sets[0].find(f"{NS}Representation")
    assert (rep.get("width"), rep.get("height"), rep.get("frameRate"), rep.get("codecs")) == (
        "1280", "720", "25", "avc1.64001f")
    channels = sets[1].find(f"{NS}Representation/{NS}AudioChannelConfiguration")
    assert channels.get("value") == "2"


def test_uniform_segments_use_duration_and_a_shorter_last_one_is_allowed():
    template = parse(write_mpd([video()])).find(f".//{NS}SegmentTemplate")
    assert template.get("duration") == "25600"
    assert template.get("startNumber") == "1"
    assert template.get("media") == "video/seg-$Number$.m4s"
    assert template.find(f"{NS}SegmentTimeline") is None


def test_uniform_segments_of_a_track_shorter_than_the_period_use_a_timeline():
    # What `headwater package` made of a 4 s clip: video 2 x 2 s, AAC running on to 4.021 s.
    # @duration=2s would make players count ceil(4.021 / 2) = 3 video segments and ask for a
    # seg-3 that does not exist (Chromium's shaka-player did, getting a 404).
    v = video(segment_durations=(25600, 25600))
    a = audio(segment_durations=(97280, 95744))
    root = parse(write_mpd([v, a]))
    assert root.get("mediaPresentationDuration") == "PT4.021S"
    vt, at = root.findall(f".//{NS}SegmentTemplate")
    assert vt.get("duration") is None
    assert [(e.get("t"), e.get("d"), e.get("r")) for e in vt.iter(f"{NS}S")] == [("0", "25600", "1")]
    # the audio sets the period: ceil(4.021 / 2.0267) = 2, its own count, so @duration stays
    assert at.get("duration") == "97280" and at.find(f"{NS}SegmentTimeline") is None


def test_varying_segments_use_a_timeline_with_runs():
    rep = video(segment_durations=(25600, 25600, 25600, 24000, 25600, 1000))
    template = parse(write_mpd([rep])).find(f".//{NS}SegmentTemplate")
    assert template.get("duration") is None
    s = [(e.get("t"), e.get("d"), e.get("r")) for e in template.iter(f"{NS}S")]
    assert s == [("0", "25600", "2"), (None, "24000", None), (None, "25600", None),
                 (None, "1000", None)]
    # a longer last segment cannot be described by @duration either
    template = parse(write_mpd([video(segment_durations=(100, 200))])).find(
        f".//{NS}SegmentTemplate")
    assert template.find(f"{NS}SegmentTimeline") is not None


def test_force_timeline():
    template = parse(write_mpd([video()], force_timeline=True)).find(f".//{NS}SegmentTemplate")
    assert [(e.get("d"), e.get("r")) for e in template.iter(f"{NS}S")] == [
        ("25600", "1"), ("12800", None)]


def test_fractional_frame_rate_stays_exact():
    rep = parse(write_mpd([video(frame_rate=Fraction(30000, 1001))])).find(
        f".//{NS}Representation")
    assert rep.get("frameRate") == "30000/1001"


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_protection_mp4protection_default_kid_and_clearkey_without_pssh(scheme):
    protection = Protection(scheme=scheme, default_kid=KID)
    mpd = write_mpd([video(protection=protection), audio(protection=protection)])
    root = parse(mpd)
    for aset in root.iter(f"{NS}AdaptationSet"):
        cps = aset.findall(f"{NS}ContentProtection")
        assert [cp.get("schemeIdUri") for cp in cps] == [MP4PROTECTION_SCHEME, CLEARKEY_SCHEME]
        assert cps[0].get("value") == scheme
        assert cps[0].get(f"{CENC}default_KID") == "9eb4050d-e44b-4802-932e-27d75083e266"
        # dash.js refuses a ClearKey ContentProtection that carries a pssh
        assert list(cps[1]) == []
    assert b"pssh" not in mpd
    assert b'xmlns:cenc="urn:mpeg:cenc:2013"' in mpd
    assert b"xmlns:dashif" not in mpd


def test_licence_url_as_dashif_laurl_with_the_prefix_dashjs_needs():
    url = "https://licence.example/licence?title=1&x=<y>\"z\""
    mpd = write_mpd([video(protection=Protection(scheme="cenc", default_kid=KID,
                                                 licence_url=url))])
    # dash.js reads Laurl only under the prefixes dashif, clearkey or ck
    assert b"<dashif:Laurl" in mpd
    assert f'xmlns:dashif="{DASHIF_NS}"'.encode() in mpd
    laurl = parse(mpd).find(f".//{NS}ContentProtection/{{{DASHIF_NS}}}Laurl")
    assert laurl is not None and laurl.text == url  # escaped on the way out, intact on the way in
    assert b"&amp;x=&lt;y&gt;" in mpd


def test_optional_w3c_common_system_carries_its_pssh_separately():
    pssh = b"\x00\x00\x00\x34pssh-box-bytes"
    mpd = write_mpd([video(protection=Protection(scheme="cbcs", default_kid=KID, w3c_pssh=pssh))])
    cps = parse(mpd).findall(f".//{NS}ContentProtection")
    assert [cp.get("schemeIdUri") for cp in cps] == [
        MP4PROTECTION_SCHEME, CLEARKEY_SCHEME, W3C_COMMON_SCHEME]
    assert list(cps[1]) == []
    assert base64.b64decode(cps[2].find(f"{CENC}pssh").text) == pssh


def test_hostile_values_are_escaped_not_interpreted():
    rep = video(id='v"><Evil/>', init="video/init&.mp4", media="video/$Number$<.m4s")
    root = parse(write_mpd([rep]))
    assert root.find(f".//{NS}Evil") is None
    assert root.find(f".//{NS}Representation").get("id") == 'v"><Evil/>'
    assert root.find(f".//{NS}SegmentTemplate").get("initialization") == "video/init&.mp4"


@pytest.mark.parametrize("bad", [
    dict(media="video/seg.m4s"), dict(segment_durations=()), dict(segment_durations=(0,)),
    dict(width=None), dict(kind="text"), dict(bandwidth=0), dict(id="a\x00b"),
])
def test_invalid_representations_are_refused(bad):
    with pytest.raises(ValueError):
        video(**bad)


def test_invalid_sets_are_refused():
    with pytest.raises(ValueError):
        Protection(scheme="cens", default_kid=KID)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Protection(scheme="cenc", default_kid=KID[:8])
    with pytest.raises(ValueError):
        write_mpd([])
    with pytest.raises(ValueError):
        write_mpd([video(), video()])
    with pytest.raises(ValueError, match="protection"):
        write_mpd([video(), video(id="v2", protection=Protection(scheme="cenc", default_kid=KID))])
