"""The HLS writer: media and master playlists, key tags per scheme, versions, quoting."""

from __future__ import annotations

import base64
from fractions import Fraction

import pytest

from headwater.drm.package.hls import (
    AudioRendition, Key, MasterPlaylist, MediaPlaylist, Variant, aes128_key, clearkey_key,
    quoted, write_master_playlist, write_media_playlist,
)

KID = bytes.fromhex("9eb4050de44b4802932e27d75083e266")


def media(**overrides) -> MediaPlaylist:
    fields = dict(init_uri="video/init.mp4", template="video/seg-$Number$.m4s", start_number=1,
                  segment_durations=(25600, 25600, 12800), timescale=12800)
    fields.update(overrides)
    return MediaPlaylist.numbered(**fields)


def tags(text: str) -> list[str]:
    return text.splitlines()


def test_clear_media_playlist():
    lines = tags(write_media_playlist(media()))
    assert lines == [
        "#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="video/init.mp4"',
        "#EXTINF:2.000,", "video/seg-1.m4s", "#EXTINF:2.000,", "video/seg-2.m4s",
        "#EXTINF:1.000,", "video/seg-3.m4s", "#EXT-X-ENDLIST",
    ]


def test_target_duration_rounds_the_longest_segment_to_nearest():
    # 2.5 s rounds to 3 (half up); 2.4 s to 2; an EXTINF must round to <= the target
    assert media(segment_durations=(32000, 100), timescale=12800).target_duration == 3
    assert media(segment_durations=(30720,), timescale=12800).target_duration == 2
    assert media(segment_durations=(1,), timescale=12800).target_duration == 1


def test_extinf_keeps_milliseconds():
    text = write_media_playlist(media(segment_durations=(96256, 95744), timescale=48000))
    assert "#EXTINF:2.005," in text and "#EXTINF:1.995," in text


@pytest.mark.parametrize("scheme,method", [("cbcs", "SAMPLE-AES"), ("cenc", "SAMPLE-AES-CTR")])
def test_clearkey_key_tag_per_scheme(scheme, method):
    key = clearkey_key(scheme, KID)
    lines = tags(write_media_playlist(media(key=key)))
    key_line = next(line for line in lines if line.startswith("#EXT-X-KEY:"))
    b64 = base64.b64encode(KID).decode()
    assert key_line == (
        f'#EXT-X-KEY:METHOD={method},URI="data:text/plain;base64,{b64}",'
        f'KEYID=0x9EB4050DE44B4802932E27D75083E266,KEYFORMAT="org.w3.clearkey",'
        f'KEYFORMATVERSIONS="1"')
    # the key comes before the map, so it applies to the init segment too
    assert lines.index(key_line) < next(i for i, l in enumerate(lines) if l.startswith("#EXT-X-MAP"))


def test_aes128_key_with_iv_for_clear_content():
    key = aes128_key("https://keys.example/k?id=1", iv=bytes(range(16)))
    line = next(l for l in tags(write_media_playlist(media(key=key))) if "EXT-X-KEY" in l)
    assert line == ('#EXT-X-KEY:METHOD=AES-128,URI="https://keys.example/k?id=1",'
                    'IV=0x000102030405060708090A0B0C0D0E0F')
    assert key.min_version == 2


def master(**overrides) -> MasterPlaylist:
    fields = dict(
        variants=(
            Variant(uri="v720.m3u8", bandwidth=3_000_000, average_bandwidth=2_500_000,
                    codecs=("avc1.64001f", "mp4a.40.2"), width=1280, height=720,
                    frame_rate=Fraction(30000, 1001), audio_group="aud"),
            Variant(uri="v360.m3u8", bandwidth=900_000, average_bandwidth=800_000,
                    codecs=("avc1.64001e", "mp4a.40.2"), width=640, height=360,
                    frame_rate=Fraction(25), audio_group="aud"),
        ),
        audio=(AudioRendition(group_id="aud", name="English", uri="audio.m3u8", channels=2,
                              language="en"),),
        session_keys=(clearkey_key("cbcs", KID),),
    )
    fields.update(overrides)
    return MasterPlaylist(**fields)


def test_master_playlist():
    lines = tags(write_master_playlist(master()))
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:5", "#EXT-X-INDEPENDENT-SEGMENTS"]
    assert lines[3].startswith("#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,")
    assert lines[4] == ('#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="English",LANGUAGE="en",'
                        'DEFAULT=YES,AUTOSELECT=YES,CHANNELS="2",URI="audio.m3u8"')
    # lowest bandwidth first
    assert lines[5] == ('#EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=800000,'
                        'CODECS="avc1.64001e,mp4a.40.2",RESOLUTION=640x360,FRAME-RATE=25.000,'
                        'AUDIO="aud"')
    assert lines[6] == "v360.m3u8"
    assert "FRAME-RATE=29.970" in lines[7]
    assert lines[8] == "v720.m3u8"


def test_clear_master_needs_only_version_1():
    assert tags(write_master_playlist(master(session_keys=())))[1] == "#EXT-X-VERSION:1"


@pytest.mark.parametrize("value", ['a"b', "a\nb", "a\rb"])
def test_quoted_refuses_what_a_quoted_string_cannot_carry(value):
    with pytest.raises(ValueError):
        quoted(value)
    with pytest.raises(ValueError):
        Key(method="AES-128", uri=value)
    with pytest.raises(ValueError):
        media(init_uri=value)


def test_hostile_uris_and_values_are_refused():
    with pytest.raises(ValueError):
        media(template="seg-$Number$.m4s\n#EXT-X-ENDLIST")
    with pytest.raises(ValueError):
        MediaPlaylist(init_uri="i.mp4", segment_uris=("#EXT-X-KEY:METHOD=NONE",),
                      segment_durations=(1,), timescale=1)
    with pytest.raises(ValueError):
        master(audio=(AudioRendition(group_id='x",URI="evil', name="n", uri="a.m3u8",
                                     channels=2),))


def test_invalid_descriptions_are_refused():
    with pytest.raises(ValueError):
        MediaPlaylist(init_uri="i.mp4", segment_uris=("a", "b"), segment_durations=(1,),
                      timescale=1)
    with pytest.raises(ValueError):
        media(template="seg.m4s")
    with pytest.raises(ValueError):
        clearkey_key("cens", KID)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        clearkey_key("cenc", KID[:15])
    with pytest.raises(ValueError):
        Key(method="NONE", uri="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="audio group"):
        master(audio=())
    with pytest.raises(ValueError):
        master(variants=())


def test_a_key_per_segment_is_written_where_it_changes():
    iv = [bytes([i]) * 16 for i in range(4)]
    uri = "https://licence.example/keys/" + KID.hex()
    keys = (aes128_key(uri, iv=iv[1]), aes128_key(uri, iv=iv[1]), aes128_key(uri, iv=iv[2]))
    lines = tags(write_media_playlist(media(key=aes128_key(uri, iv=iv[0]), segment_keys=keys)))
    key_lines = [i for i, line in enumerate(lines) if line.startswith("#EXT-X-KEY:")]
    # the map's key, then segment 1's (a new IV), none for segment 2 (the same), then segment 3's
    assert [lines[i].split("IV=0x")[1] for i in key_lines] == [iv[n].hex().upper() for n in (0, 1, 2)]
    assert lines[key_lines[0] + 1].startswith("#EXT-X-MAP:")
    assert [lines[i + 1] for i in key_lines[1:]] == ["#EXTINF:2.000,", "#EXTINF:1.000,"]
    assert lines[key_lines[2] + 2] == "video/seg-3.m4s"
    with pytest.raises(ValueError):
        media(segment_keys=keys[:2])
