"""`bench drm`'s command lines, run for real on a two-second clip: Shaka Packager's and
ffmpeg's output carry the scheme asked for, and ours (the same call the bench times) writes its
segments and manifests."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from headwater.bench import drm as bench_drm
from tests.functional.drm_media import FFMPEG, PACKAGER, make_clip, run


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("bench-drm") / "clip.mp4", seconds=2)


def _schm(path: Path) -> bytes:
    """The scheme type of the first ``schm`` box in ``path`` (after its type: version and
    flags, then the four-character scheme)."""
    data = path.read_bytes()
    assert b"encv" in data or b"enca" in data, f"{path} has no encrypted sample entry"
    at = data.index(b"schm")
    return data[at + 8:at + 12]


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_peer_command_lines_encrypt(clip, tmp_path, scheme):
    key, kid = secrets.token_bytes(16), secrets.token_bytes(16)
    shaka = tmp_path / "shaka"
    run(*bench_drm.shaka_argv(PACKAGER, clip, shaka, scheme, key, kid))
    assert _schm(shaka / "video/init.mp4") == scheme.encode() and _schm(shaka / "audio/init.mp4") == scheme.encode()
    assert list((shaka / "video").glob("seg-*.m4s")) and (shaka / "manifest.mpd").exists()
    assert (shaka / "master.m3u8").exists()
    ours = tmp_path / "ours"
    bench_drm._ours(clip, ours, scheme, key, kid)
    assert (ours / "manifest.mpd").exists() and (ours / "master.m3u8").exists()
    assert _schm(ours / "video-1/init.mp4") == scheme.encode()
    if scheme == "cenc":
        ff = tmp_path / "ffmpeg"
        ff.mkdir()
        run(*bench_drm.ffmpeg_argv(FFMPEG, clip, ff, key, kid))
        out = ff / "out.mp4"
        assert _schm(out) == b"cenc" and b"moof" in out.read_bytes()
