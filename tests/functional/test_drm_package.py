"""``headwater package`` end to end: our encrypted CMAF decrypts in ffmpeg 8.1 to the input's
exact frames, with the right key only; the manifests name the KID; keys come from the key
store by title; a title goes into the object store over S3; bad input publishes nothing.

ffmpeg is the independent judge here: it decrypts ``cenc`` and ``cbcs`` (its mov demuxer reads
``tenc``/``senc``/``saiz``/``saio`` itself), so a wrong IV, subsample map or pattern shows as
frames that differ from the clear input's (or as a decode error).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.cli import main
from headwater.drm.bmff.movie import read_movie
from tests.functional.drm_media import framemd5, make_clip

KID = bytes.fromhex("9eb4050de44b4802932e27d75083e266")
KEY = bytes.fromhex("166634c675823c235a4a9446fad52e4d")
WRONG = bytes.fromhex("00112233445566778899aabbccddeeff")

CLUSTER_OPTIONS = {"k": 2, "m": 1, "storage_nodes": 3}


def headwater(*args: str | Path) -> tuple[int, str, str]:
    """The CLI in this process (a fresh interpreter costs seconds on a loaded machine)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {codec: make_clip(d / f"{codec}.mp4", codec=codec, seconds=3) for codec in ("h264", "hevc")}


def joined(out: Path, kind: str) -> Path:
    """A track's init segment and media segments as one fragmented MP4 that ffmpeg reads."""
    folder = next(out.glob(f"{kind}-*"))
    segs = sorted(folder.glob("seg-*.m4s"), key=lambda p: int(p.stem.split("-")[1]))
    path = out / f"{kind}.mp4"
    path.write_bytes((folder / "init.mp4").read_bytes() + b"".join(s.read_bytes() for s in segs))
    return path


@pytest.mark.parametrize("codec,scheme", [("h264", "cenc"), ("h264", "cbcs"), ("hevc", "cenc"), ("hevc", "cbcs")])
def test_output_decrypts_to_the_inputs_frames_with_the_right_key_only(clips, tmp_path, codec, scheme):
    out = tmp_path / "out"
    code, stdout, stderr = headwater("package", clips[codec], "--out", out, "--scheme", scheme,
                                     "--kid", KID.hex(), "--key", KEY.hex(), "--segment", "1s")
    assert code == 0, stderr
    assert f"kid {KID.hex()}" in stdout
    for kind, stream in (("video", "v"), ("audio", "a")):
        enc = joined(out, kind)
        clear = framemd5(clips[codec], stream)
        assert framemd5(enc, stream, "-decryption_key", KEY.hex()) == clear, f"{kind} differs after decryption"
        # Without the key the bytes are not the clear ones: ffmpeg either fails or decodes garbage.
        try:
            wrong = framemd5(enc, stream, "-decryption_key", WRONG.hex())
        except AssertionError:
            continue
        assert wrong != clear, f"{kind} decoded to the clear frames with the wrong key"


def test_manifests_name_the_kid_scheme_and_licence_server(clips, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = headwater("package", clips["h264"], "--out", out, "--scheme", "cbcs", "--kid", KID.hex(),
                                "--key", KEY.hex(), "--licence-url", "https://127.0.0.1:8443/licence")
    assert code == 0, stderr
    mpd = ET.fromstring((out / "manifest.mpd").read_bytes())
    ns = {"m": "urn:mpeg:dash:schema:mpd:2011", "cenc": "urn:mpeg:cenc:2013"}
    cps = mpd.findall(".//m:ContentProtection", ns)
    mp4 = [c for c in cps if c.get("schemeIdUri") == "urn:mpeg:dash:mp4protection:2011"]
    assert mp4 and all(c.get("value") == "cbcs" for c in mp4)
    kid_uuid = f"{KID.hex()[:8]}-{KID.hex()[8:12]}-{KID.hex()[12:16]}-{KID.hex()[16:20]}-{KID.hex()[20:]}"
    assert all(c.get("{urn:mpeg:cenc:2013}default_KID") == kid_uuid for c in mp4)
    assert b"https://127.0.0.1:8443/licence" in (out / "manifest.mpd").read_bytes()
    master = (out / "master.m3u8").read_text()
    assert "#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES," in master
    media = (out / "video-1.m3u8").read_text()
    assert "#EXT-X-MAP:URI=\"video-1/init.mp4\"" in media
    segs = re.findall(r"^video-1/seg-\d+\.m4s$", media, re.M)
    assert len(segs) == len(list((out / "video-1").glob("seg-*.m4s"))) >= 1
    # no staging folder, no stray files: the title is exactly its manifests and tracks
    assert sorted(p.name for p in out.iterdir()) == ["audio-2", "audio-2.m3u8", "manifest.mpd", "master.m3u8",
                                                     "video-1", "video-1.m3u8"]


def frames(lines: list[str]) -> list[tuple[str, str]]:
    """framemd5 lines as (size, MD5) of each decoded frame."""
    return [tuple(f.strip() for f in line.split(",")[-2:]) for line in lines]  # type: ignore[misc]


@contextlib.contextmanager
def served(root: Path) -> Iterator[tuple[str, list[str]]]:
    """``root`` over plain HTTP on 127.0.0.1 (a real server in a thread): (base URL, paths asked)."""
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_aes128_hls_plays_in_ffmpeg_to_the_inputs_frames_with_the_key_from_its_uri(clips, tmp_path):
    # The key is served where the playlists say (beside the licence URL, GET /keys/<KID hex>),
    # the media beside it; ffmpeg's HLS demuxer fetches the key, decrypts every file whole
    # (the init segment too, with the IV of the key tag before EXT-X-MAP) and decodes.
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / KID.hex()).write_bytes(KEY)
    with served(tmp_path) as (base, asked):
        out = tmp_path / "out"
        code, stdout, stderr = headwater("package", clips["h264"], "--out", out, "--scheme", "aes128",
                                         "--kid", KID.hex(), "--key", KEY.hex(), "--segment", "1s",
                                         "--licence-url", f"{base}/licence")
        assert code == 0, stderr
        assert sorted(p.name for p in out.iterdir()) == ["audio-2", "audio-2.m3u8", "master.m3u8",
                                                         "video-1", "video-1.m3u8"]  # HLS only
        media = (out / "video-1.m3u8").read_text()
        ivs = re.findall(rf'^#EXT-X-KEY:METHOD=AES-128,URI="{base}/keys/{KID.hex()}",IV=0x([0-9A-F]{{32}})$',
                         media, re.M)
        segments = list((out / "video-1").glob("seg-*.m4s"))
        # one key tag for the map, one before each segment: every IV explicit and distinct
        assert len(ivs) == len(segments) + 1 == len(set(ivs)), media
        assert media.index("#EXT-X-KEY") < media.index("#EXT-X-MAP")
        # no file is clear: an encrypted init segment is not a box stream
        assert (out / "video-1/init.mp4").read_bytes()[4:8] != b"ftyp"
        assert all(p.stat().st_size % 16 == 0 for p in out.rglob("*.m*4*"))
        for kind, stream in (("video-1", "v"), ("audio-2", "a")):
            # Each frame's size and MD5: over HLS the audio's timestamps start at its first
            # sample, not at the input's edit (the priming), so the timestamps are not compared.
            got = frames(framemd5(f"{base}/out/{kind}.m3u8", stream))  # type: ignore[arg-type]
            assert got == frames(framemd5(clips["h264"], stream)), f"{kind} differs after AES-128 decryption"
        assert f"/keys/{KID.hex()}" in asked
        # A wrong key served: nothing decodes to the clear frames.
        (tmp_path / "keys" / KID.hex()).write_bytes(WRONG)
        try:
            wrong = framemd5(f"{base}/out/video-1.m3u8", "v")  # type: ignore[arg-type]
        except AssertionError:
            wrong = []
        assert wrong != framemd5(clips["h264"], "v")


def test_aes128_refuses_dash_and_needs_a_key_url(clips, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = headwater("package", clips["h264"], "--out", out, "--scheme", "aes128", "--dash", "--hls",
                                "--kid", KID.hex(), "--key", KEY.hex(), "--licence-url", "https://127.0.0.1:8443/licence")
    assert code == 2 and "DASH" in stderr and "aes128" in stderr, stderr
    # no --licence-url and no cluster.toml to take the licence server from
    code, _, stderr = headwater("package", clips["h264"], "--out", out, "--scheme", "aes128",
                                "--kid", KID.hex(), "--key", KEY.hex(), "-c", tmp_path / "absent.toml")
    assert code == 2 and "--licence-url" in stderr, stderr
    assert not out.exists()


def test_clear_output_plays_without_a_key(clips, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = headwater("package", clips["h264"], "--out", out, "--scheme", "none", "--dash")
    assert code == 0, stderr
    assert framemd5(joined(out, "video"), "v") == framemd5(clips["h264"], "v")
    assert (out / "manifest.mpd").exists() and not (out / "master.m3u8").exists()
    assert b"ContentProtection" not in (out / "manifest.mpd").read_bytes()


def test_keys_come_from_the_key_store_by_title(clips, tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\nname = "pk"\ndata_dir = "{tmp_path}/var"\n\n[licence]\ntls = false\n\n[[licence.tokens.keys]]\nid = "t"\nalg = "HS256"\n'
                      f'secret_env = "HW_TEST_TOKEN_SECRET"\n')
    kids = []
    for run_no in range(2):
        out = tmp_path / f"out{run_no}"
        code, stdout, stderr = headwater("package", clips["h264"], "--out", out, "--scheme", "cenc",
                                         "--title", "7", "--dash", "-c", config)
        assert code == 0, stderr
        kids.append(re.search(r"kid ([0-9a-f]{32})", stdout).group(1))
    # the first run made the title's key, the second re-used it (players keep their licences)
    assert kids[0] == kids[1]
    code, stdout, _ = headwater("keys", "list", "--title", "7", "-c", config)
    assert code == 0 and kids[0] in stdout and stdout.count("title 7") == 1


@pytest.mark.parametrize("case", ["truncated", "not-mp4", "no-such-file", "short-key"])
def test_bad_input_publishes_nothing(clips, tmp_path, case):
    src = tmp_path / "in.mp4"
    data = clips["h264"].read_bytes()
    key = KEY.hex()
    if case == "truncated":
        src.write_bytes(data[: len(data) * 2 // 3])
    elif case == "not-mp4":
        src.write_bytes(b"<html>not a video</html>" * 100)
    elif case == "short-key":
        src.write_bytes(data)
        key = KEY.hex()[:30]
    out = tmp_path / "out"
    code, _, stderr = headwater("package", src, "--out", out, "--scheme", "cenc", "--kid", KID.hex(), "--key", key)
    assert code != 0 and stderr.strip(), stderr
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))


def test_s3_output_lands_in_the_object_store_and_reads_back(clips, tmp_path, cluster, s3):
    s3.create_bucket(Bucket="videos")
    code, stdout, stderr = headwater("package", clips["h264"], "--out", "s3://videos/titles/1/", "--scheme", "cenc",
                                     "--kid", KID.hex(), "--key", KEY.hex(), "-c", cluster.config_path)
    assert code == 0, stderr
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="videos", Prefix="titles/1/")["Contents"]}
    assert {"titles/1/manifest.mpd", "titles/1/master.m3u8", "titles/1/video-1/init.mp4",
            "titles/1/video-1/seg-1.m4s", "titles/1/audio-2/init.mp4"} <= keys
    head = s3.head_object(Bucket="videos", Key="titles/1/video-1/seg-1.m4s")
    assert head["ContentType"] == "video/iso.segment" and "immutable" in head["CacheControl"]
    assert s3.head_object(Bucket="videos", Key="titles/1/manifest.mpd")["ContentType"] == "application/dash+xml"
    # what the store holds decrypts like the local output does
    local = tmp_path / "store"
    for k in keys:
        dst = local / k.removeprefix("titles/1/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(s3.get_object(Bucket="videos", Key=k)["Body"].read())
    assert framemd5(joined(local, "video"), "v", "-decryption_key", KEY.hex()) == framemd5(clips["h264"], "v")


def test_s3_output_of_a_bad_input_leaves_nothing_in_the_store(clips, tmp_path, cluster, s3):
    s3.create_bucket(Bucket="videos-bad")
    src = tmp_path / "in.mp4"
    src.write_bytes(clips["h264"].read_bytes())
    # A video sample in the last second gets a NAL length running past its end: the moov is
    # sound, so the run fails only when it reaches that sample, after earlier segments (and
    # the audio's) were uploaded, which the abort must delete again.
    with open(src, "r+b") as f:
        video = read_movie(f).tracks[0]
        late = [s for s in video.samples()][-10]
        f.seek(late.offset)
        f.write(b"\xff\xff\xff\xf0")
    code, _, stderr = headwater("package", src, "--out", "s3://videos-bad/t/", "--scheme", "cenc",
                                "--kid", KID.hex(), "--key", KEY.hex(), "--segment", "1s", "-c", cluster.config_path)
    assert code == 1 and "nothing published" in stderr, stderr
    assert s3.list_objects_v2(Bucket="videos-bad").get("KeyCount") == 0
