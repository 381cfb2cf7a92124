"""Key rotation by period, end to end: ``headwater package --rotate-every`` takes a new key from
the key store for each period; ffmpeg 8.1 decrypts each period (its own init segment and its
segments) with that period's key to the input's frames for that stretch, and not with another
period's; the MPD has one Period per key and the HLS playlists switch key and map at each.

A 6 s clip (a keyframe a second), 1 s segments, a new key every 2 s: three periods.
"""

from __future__ import annotations

import contextlib
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from headwater.cli import main
from headwater.config import load
from headwater.drm.licence.daemon import open_key_store
from tests.functional.drm_media import framemd5, make_clip

NS = {"m": "urn:mpeg:dash:schema:mpd:2011", "cenc": "urn:mpeg:cenc:2013"}


def headwater(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "six.mp4", seconds=6)


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HW_TEST_TOKEN_SECRET", "x" * 32)
    path = tmp_path / "cluster.toml"
    path.write_text(f'[cluster]\nname = "rot"\ndata_dir = "{tmp_path}/var"\n\n[licence]\ntls = false\n\n'
                    '[[licence.tokens.keys]]\nid = "t"\nalg = "HS256"\nsecret_env = "HW_TEST_TOKEN_SECRET"\n')
    return path


def period_keys(config: Path, stdout: str) -> list[bytes]:
    """Each period's key, in order, from the key store (the CLI prints only the KIDs)."""
    kids = [bytes.fromhex(line.split()[-1]) for line in stdout.splitlines() if line.startswith("period ")]
    store = open_key_store(load(str(config)).licence)
    try:
        return [store.get(kid).key for kid in kids]
    finally:
        store.close()


def period_file(out: Path, track: str, period: int) -> Path:
    """Period ``period`` (1-based) of ``track``: its init segment and its two segments, joined."""
    first = 2 * period - 1
    path = out / f"{track}-p{period}.mp4"
    path.write_bytes((out / track / f"p{period}" / "init.mp4").read_bytes()
                     + b"".join((out / track / f"seg-{n}.m4s").read_bytes() for n in (first, first + 1)))
    return path


def md5s(lines: list[str]) -> list[str]:
    # ffmpeg restarts each file's timestamps; the frames are compared by content
    return [line.rsplit(",", 1)[1].strip() for line in lines]


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_each_period_decrypts_with_its_own_key_only(clip, tmp_path, config, scheme):
    out = tmp_path / "out"
    code, stdout, stderr = headwater("package", clip, "--out", out, "--scheme", scheme, "--title", "9",
                                     "--segment", "1s", "--rotate-every", "2s", "-c", config)
    assert code == 0, stderr
    keys = period_keys(config, stdout)
    assert len(keys) == 3 and len(set(keys)) == 3
    clear = md5s(framemd5(clip, "v"))
    assert len(clear) == 150
    for p in (1, 2, 3):
        enc = period_file(out, "video-1", p)
        frames = md5s(framemd5(enc, "v", "-decryption_key", keys[p - 1].hex()))
        assert frames == clear[50 * (p - 1):50 * p], f"period {p} differs after decryption"
        other = keys[p % 3]
        try:
            wrong = md5s(framemd5(enc, "v", "-decryption_key", other.hex()))
        except AssertionError:
            continue            # ffmpeg refused to decode: the other period's key does not open it
        assert wrong != frames, f"period {p} decoded with period {p % 3 + 1}'s key"
    if scheme == "cenc":
        # audio: each period decrypts to clear AAC frames (ffmpeg decodes them without errors)
        for p in (1, 2, 3):
            assert framemd5(period_file(out, "audio-2", p), "a", "-decryption_key", keys[p - 1].hex())


def test_manifests_switch_keys_at_each_period(clip, tmp_path, config):
    out = tmp_path / "out"
    code, stdout, stderr = headwater("package", clip, "--out", out, "--scheme", "cbcs", "--title", "9",
                                     "--segment", "1s", "--rotate-every", "2s", "-c", config)
    assert code == 0, stderr
    kids = [line.split()[-1] for line in stdout.splitlines() if line.startswith("period ")]
    mpd = ET.parse(out / "manifest.mpd").getroot()
    periods = mpd.findall("m:Period", NS)
    assert [p.get("start") for p in periods] == ["PT0S", "PT2S", "PT4S"]
    for p, kid in zip(periods, kids):
        default_kids = {cp.get(f"{{{NS['cenc']}}}default_KID").replace("-", "")
                        for cp in p.iterfind(".//m:ContentProtection", NS)
                        if cp.get(f"{{{NS['cenc']}}}default_KID")}
        assert default_kids == {kid}                    # video and audio, this period's KID only
    video = [p.find(".//m:Representation[@id='video-1']/m:SegmentTemplate", NS) for p in periods]
    assert [t.get("startNumber") for t in video] == ["1", "3", "5"]
    assert [t.get("initialization") for t in video] == [f"video-1/p{n}/init.mp4" for n in (1, 2, 3)]
    # continuous tfdt: each period's offset is its start in the track's timescale (12800 at 25 fps)
    assert [t.get("presentationTimeOffset") for t in video] == [None, "25600", "51200"]
    assert [t.find("m:SegmentTimeline/m:S", NS).get("t") for t in video] == ["0", "25600", "51200"]

    playlist = (out / "video-1.m3u8").read_text()
    assert "#EXT-X-DISCONTINUITY" not in playlist
    lines = playlist.splitlines()
    for n, kid in enumerate(kids):
        key = next(i for i, line in enumerate(lines) if f"KEYID=0x{kid.upper()}" in line)
        # the key tag, then that period's map, then its first segment
        assert lines[key + 1] == f'#EXT-X-MAP:URI="video-1/p{n + 1}/init.mp4"'
        assert lines[key + 3] == f"video-1/seg-{2 * n + 1}.m4s"
    master = (out / "master.m3u8").read_text()
    session = [line for line in master.splitlines() if line.startswith("#EXT-X-SESSION-KEY")]
    assert len(session) == 3 and all(f"KEYID=0x{k.upper()}" in line for k, line in zip(kids, session))


def test_a_given_key_cannot_rotate(clip, tmp_path):
    code, _, stderr = headwater("package", clip, "--out", tmp_path / "out", "--scheme", "cenc",
                                "--kid", "00" * 16, "--key", "11" * 16, "--rotate-every", "2s")
    assert code == 2 and "cannot rotate" in stderr
    code, _, stderr = headwater("package", clip, "--out", tmp_path / "out", "--scheme", "aes128",
                                "--title", "9", "--rotate-every", "2s")
    assert code == 2 and "cenc or cbcs" in stderr
    assert not (tmp_path / "out").exists()
