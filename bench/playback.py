"""`python -m headwater.bench playback`: a viewer's startup time in headless Chromium, from
``player.load()`` to the first decoded frame, through DNS -> POP -> regional -> shield -> origin
-> store, cold (nothing cached anywhere) and warm (a second viewer of the same title).

One run:

1. **The world** — the object store's sections of ``cluster.toml`` started by
   :func:`peers.headwater_cluster` (``headwater up`` on a copy with its ports moved by
   ``--port-offset``), then :func:`world_sections` appended (licence server, origin on plain HTTP
   with the built-in issuer, one transcoder, two POPs on 127.0.0.2 and 127.0.0.3 sharing a port,
   two regional caches, the shield, the GeoDNS with health checks of both POPs, a CDN signing key:
   the play API's URLs are signed and on ``video.cdn.headwater.test``), each ``headwater node``
   its own process.
2. **Titles** — ``--rounds`` clips (``--clip-seconds`` of ``testsrc2`` + sine, 320x180, the small
   two-rung ladder) uploaded with tus and published; each is a title no one has asked for, so its
   first viewer finds every cache empty (browser, POP, regional, shield, the origin's publish
   cache).
3. **Viewers** — ``tests/browser/failover.mjs`` (playwright-core, Debian's Chromium): per title a
   viewer signs in on the title page (not timed) and presses Play; the page asks /play, calls
   ``player.load()`` (shaka-player) and the clock runs until the video element has decoded a
   frame. Then a second viewer (a fresh browser context: an empty browser cache) does the same:
   warm. Chromium maps the CDN's name to :class:`~headwater.bench.steered_forwarder.SteeredForwarder`,
   which asks our GeoDNS (ECS: a London viewer, so pop-a) for every new connection: the DNS
   query is inside the figure, as a real viewer's first resolution would be.

With ``--viewers N`` step 3 is instead N simulated viewers (:mod:`headwater.bench.viewer_load`,
:func:`load_main`): a Zipf choice among ``--titles`` titles, both POPs by the GeoDNS's answers for
two client subnets, playback paced in real time, beside the CDN simulator's prediction.

The report: each round's cold and warm figure, the median of each beside its goal (the issue's:
warm under 2 s, cold under 4 s, on this machine), and whether it is met — reported, never
asserted. ``--json FILE`` keeps every play. The machine's cores are shared: the load average
at the start and the end is printed with the figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import math
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from .origin import STORE_TABLES, set_key, split_tables
from .peers import PeerError, ProcessGroup, free_ports, headwater_cluster, wait_http
from .sections import LICENCE_SECTION, ORIGIN_CLIENTS, SMALL_LADDER, TRANSCODER_KEYS
from .steered_forwarder import SteeredForwarder, steered_answer

__all__ = ["main", "world_sections", "Play", "Summary", "summarise", "render", "WARM_GOAL_MS", "COLD_GOAL_MS",
           "CDN_HOST", "NEW_YORK_VIEWER", "load_main", "POP_A", "POP_B", "LONDON_VIEWER", "leaf_spki", "signing_key", "world_ports"]

WARM_GOAL_MS = 2000
COLD_GOAL_MS = 4000
CDN_HOST = "video.cdn.headwater.test"
LONDON_VIEWER = "198.51.100.0/24"  # a geo rule places it in London: pop-a nearest, pop-b next
NEW_YORK_VIEWER = "203.0.113.0/24"  # and this one in New York: pop-b nearest
POP_A, POP_B = "127.0.0.2", "127.0.0.3"
BROWSER_DIR = Path(__file__).resolve().parent.parent / "tests" / "browser"
_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cluster.toml"

#: Everything but the object store: formatted by :func:`world_sections`.
WORLD = """
[origin]
port = {origin}
admin_port = {origin_admin}
tls = false

[origin.delivery]
publish_cache_seconds = 1
cdn_base_url = "http://{cdn_host}:{pop}"

""" + ORIGIN_CLIENTS + """
[[origin.users]]
name = "vic"
scopes = ["view"]
password = "sealed"

[[origin.users]]
name = "nora"
scopes = ["view"]
password = "sealed"

""" + LICENCE_SECTION + "\n" + TRANSCODER_KEYS + 'scheme = "{scheme}"\n\n' + SMALL_LADDER + """
[cdn.client_limits]
enabled = false

[[cdn.keys]]
id = "KPLAYBACK"
public_key_file = "{pub}"
private_key_file = "{priv}"

[[distributions]]
name = "video"
hostnames = ["{cdn_host}"]
origin = "http://127.0.0.1:{origin}"
trusted_keys = ["KPLAYBACK"]

[[edge]]
id = "pop-a"
tier = "pop"
host = "{pop_a}"
port = {pop}
admin_port = {pop_a_admin}
lat = 51.5
lon = -0.12
ram_size = "16MiB"
disk_size = "64MiB"

[[edge]]
id = "pop-b"
tier = "pop"
host = "{pop_b}"
port = {pop}
admin_port = {pop_b_admin}
lat = 40.71
lon = -74.0
ram_size = "16MiB"
disk_size = "64MiB"

[[edge]]
id = "regional-1"
tier = "regional"
port = {regional}
admin_port = {regional_admin}
disk_size = "64MiB"

[[edge]]
id = "regional-2"
tier = "regional"
port = {regional2}
admin_port = {regional2_admin}
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {shield}
admin_port = {shield_admin}
disk_size = "64MiB"

[dns]
id = "dns-1"
port = {dns}
admin_port = {dns_admin}
workers = 1
zone = "cdn.headwater.test."
steered_ttl = 1
reload_interval_seconds = 0

[dns.rrl]
enabled = false

[dns.health]
interval_seconds = {interval}
timeout_seconds = {interval}
rise = 2
fall = {fall}

[[dns.steered]]
name = "video"
answers = 1

[[dns.pops]]
name = "pop-a"
ipv4 = ["{pop_a}"]
lat = 51.5
lon = -0.12
healthz = "http://{pop_a}:{pop_a_admin}/healthz"

[[dns.pops]]
name = "pop-b"
ipv4 = ["{pop_b}"]
lat = 40.71
lon = -74.0
healthz = "http://{pop_b}:{pop_b_admin}/healthz"

[[dns.geo.rules]]
cidr = "{viewer}"
lat = 51.5
lon = -0.1

[[dns.geo.rules]]
cidr = "{ny_viewer}"
lat = 40.7
lon = -74.0
"""

#: The ports :func:`world_sections` needs (``pop`` must be free on both POP addresses too,
#: ``dns`` for UDP as well as TCP).
WORLD_PORTS = ("origin", "origin_admin", "licence", "licence_admin", "licence_rpc", "transcoder_admin", "pop",
               "pop_a_admin", "pop_b_admin", "regional", "regional_admin", "regional2", "regional2_admin", "shield",
               "shield_admin", "dns", "dns_admin")

#: The daemons of :data:`WORLD` in start order (each tier after the one it fetches from), with
#: the port key and host of their /healthz.
WORLD_NODES = (("licence", "licence_admin", "127.0.0.1"), ("origin", "origin_admin", "127.0.0.1"),
               ("transcoder", "transcoder_admin", "127.0.0.1"), ("shield-1", "shield_admin", "127.0.0.1"),
               ("regional-1", "regional_admin", "127.0.0.1"), ("regional-2", "regional2_admin", "127.0.0.1"),
               ("pop-a", "pop_a_admin", POP_A),
               ("pop-b", "pop_b_admin", POP_B), ("dns-1", "dns_admin", "127.0.0.1"))


def world_sections(ports: dict[str, int], *, public_key: Path, private_key: Path, health_interval_s: float = 0.5,
                   fall: int = 2, scheme: str = "cbcs") -> str:
    """:data:`WORLD` for ``ports`` (every key of :data:`WORLD_PORTS`) and a CDN signing key pair
    (PEM files): TOML to append to a cluster.toml that has the object store. ``scheme``: the
    transcoder's encryption ("cbcs", its default, or "cenc")."""
    missing = set(WORLD_PORTS) - set(ports)
    if missing:
        raise ValueError(f"ports missing: {sorted(missing)}")
    return WORLD.format(**ports, pub=public_key, priv=private_key, cdn_host=CDN_HOST, pop_a=POP_A, pop_b=POP_B,
                        viewer=LONDON_VIEWER, ny_viewer=NEW_YORK_VIEWER, interval=health_interval_s, fall=fall, scheme=scheme)


def world_ports() -> dict[str, int]:
    """Free ports for :data:`WORLD_PORTS` (the POPs' shared port free on 127.0.0.1, .2 and .3)."""
    ports = dict(zip(WORLD_PORTS, free_ports(len(WORLD_PORTS))))
    for _ in range(50):
        try:
            for address in ("127.0.0.1", POP_A, POP_B):
                with socket.socket() as s:
                    s.bind((address, ports["pop"]))
            break
        except OSError:
            ports["pop"] = free_ports(1)[0]
    (ports["dns"],) = free_ports(1, udp=True)
    return ports


def signing_key(folder: Path) -> tuple[Path, Path]:
    """A fresh RSA key pair for ``[[cdn.keys]]``: (public PEM, private PEM) in ``folder``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    folder.mkdir(parents=True, exist_ok=True)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = folder / "cdn.pem", folder / "cdn.pub.pem"
    priv.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    priv.chmod(0o600)
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub, priv


# --- figures (pure) ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Play:
    """One viewer's play: the title, whether it was the title's first (``cold``), ms from
    ``player.load()`` to the first decoded frame (None: no frame) and from the Play click, and
    of the CDN's answers that came before that frame, how many the POP had to fetch
    (``X-Cache: Miss``): every one on a cold play, none on a warm one, or the figure is not
    what it says."""

    title: int
    cold: bool
    start_ms: int | None
    click_ms: int | None
    cdn_misses: int = 0
    cdn_requests: int = 0


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians (None without a single figure) and whether each meets its goal."""

    cold: list[int | None]
    warm: list[int | None]
    cold_median_ms: float | None
    warm_median_ms: float | None
    cold_met: bool
    warm_met: bool


def plays_from(doc: dict[str, Any]) -> list[Play]:
    """failover.mjs's output as plays; a title's first viewer is cold, later ones warm."""
    seen: set[int] = set()
    out = []
    for p in doc.get("plays", ()):
        tid = int(p["titleId"])
        until = p.get("firstFrameAt")
        cdn = [r for r in p.get("cdn", ()) if until is None or r.get("t", 0) <= until]
        out.append(Play(title=tid, cold=tid not in seen, start_ms=p.get("startMs"), click_ms=p.get("clickToFrameMs"),
                        cdn_misses=sum(str(r.get("xcache", "")).startswith("Miss") for r in cdn),
                        cdn_requests=len(cdn)))
        seen.add(tid)
    return out


def _median(xs: list[int | None]) -> float | None:
    """The median, a play without a first frame counting as slower than any (a failure never
    improves the figure); None when there is none, or when the median is such a failure."""
    if not xs:
        return None
    m = statistics.median(float("inf") if x is None else float(x) for x in xs)
    return None if m == float("inf") else m


def summarise(plays: list[Play]) -> Summary:
    cold = [p.start_ms for p in plays if p.cold]
    warm = [p.start_ms for p in plays if not p.cold]
    cm, wm = _median(cold), _median(warm)
    return Summary(cold=cold, warm=warm, cold_median_ms=cm, warm_median_ms=wm,
                   cold_met=cm is not None and cm < COLD_GOAL_MS, warm_met=wm is not None and wm < WARM_GOAL_MS)


def _ms(x: float | None) -> str:
    return "no frame" if x is None else f"{x / 1000:.2f} s"


def render(plays: list[Play], *, load_start: str, load_end: str, clip_s: int, cpus: int | None = None,
           scheme: str = "cbcs") -> str:
    """The report: every play, then the medians beside the goals."""
    s = summarise(plays)
    lines = [f"playback startup: player.load() -> first decoded frame, headless Chromium, shaka-player, "
             f"{clip_s} s titles (2 s segments, 2 rungs, ClearKey {scheme})",
             "path: GeoDNS (ECS) -> pop-a -> regional-1|2 (rendezvous by key) -> shield-1 -> origin -> object store; "
             "signed URLs",
             f"load average {load_start} at the start, {load_end} at the end; {cpus or '?'} CPUs", "",
             f"{'title':>6}  {'viewer':<6}  {'load->frame':>12}  {'click->frame':>13}  POP misses/requests"]
    for p in plays:
        lines.append(f"{p.title:>6}  {'cold' if p.cold else 'warm':<6}  {_ms(p.start_ms):>12}  {_ms(p.click_ms):>13}  "
                     f"{p.cdn_misses}/{p.cdn_requests}")
    lines += ["",
              f"cold median {_ms(s.cold_median_ms)} (goal < {COLD_GOAL_MS / 1000:.0f} s): "
              f"{'met' if s.cold_met else 'NOT met'}",
              f"warm median {_ms(s.warm_median_ms)} (goal < {WARM_GOAL_MS / 1000:.0f} s): "
              f"{'met' if s.warm_met else 'NOT met'}"]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _headwater() -> str:
    return str(Path(sys.executable).with_name("headwater"))


@dataclass(frozen=True, slots=True)
class World:
    config: Path
    ports: dict[str, int]
    url: str
    licence_spki: str
    pids: dict[str, int] = dataclasses.field(default_factory=dict)  # each daemon's (session leader's) PID


@contextlib.contextmanager
def world(config: Path, work: Path, *, port_offset: int, scheme: str = "cbcs") -> Iterator[World]:
    """The store (``headwater up``), then every daemon of :data:`WORLD` as ``headwater node``."""
    store_src = work / "store-src.toml"
    store_src.write_text(set_key(split_tables(config.read_text(), STORE_TABLES), "cluster", "log_level", '"warning"'))
    with headwater_cluster(store_src, work / "store", port_offset=port_offset, ready_timeout_s=240):
        full = work / "store" / "full.toml"
        ports = world_ports()
        pub, priv = signing_key(work / "cdn-keys")
        full.write_text((work / "store" / "cluster.toml").read_text()
                        + world_sections(ports, public_key=pub, private_key=priv, scheme=scheme))
        from headwater import localca
        from headwater.config import load
        from headwater.drm.client import EntitlementMinter

        cfg = load(full)
        localca.prepare(cfg)  # made once here, as `headwater up` would, so the daemons do not race
        EntitlementMinter(cfg)
        procs = ProcessGroup(work / "store")
        try:
            for node, admin, host in WORLD_NODES:
                procs.start(node, [_headwater(), "node", node, "-c", str(full)], cwd=work)
                wait_http(f"http://{host}:{ports[admin]}/healthz", timeout_s=120, procs=procs, ok=lambda s: s == 200)
            yield World(config=full, ports=ports, url=f"http://127.0.0.1:{ports['origin']}",
                        licence_spki=leaf_spki(ports["licence"], localca.ca_folder(cfg) / localca.CA_CERT_FILE),
                        pids={name: proc.pid for name, proc in procs.procs})
        finally:
            procs.stop()


def leaf_spki(port: int, ca: Path) -> str:
    """base64 SHA-256 of the licence server's certificate's SPKI (what Chromium is told to trust)."""
    import hashlib
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _token(config: Path, client: str, scope: str) -> str:
    r = subprocess.run([_headwater(), "token", "--client", client, "--scope", scope, "-c", str(config)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise PeerError(f"headwater token failed: {r.stderr[-1000:]}")
    return r.stdout.strip()


def make_clip(path: Path, *, seconds: int) -> Path:
    """``seconds`` of testsrc2 (320x180, 25 fps, a keyframe a second) and a sine tone, H.264/AAC."""
    from headwater.origin.transcode.config import default_binary

    subprocess.run([default_binary("ffmpeg"), "-hide_banner", "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "64k", str(path)], check=True, timeout=120)
    return path


def publish(w: World, clip: Path, title: str, token: str, *, timeout_s: float = 120) -> int:
    """``clip`` uploaded with tus (one PATCH) and published as ``title``; its id."""
    import httpx

    auth = {"authorization": f"Bearer {token}", "tus-resumable": "1.0.0"}
    data = clip.read_bytes()
    with httpx.Client(base_url=w.url, timeout=60, trust_env=False) as http:
        name = base64.b64encode(clip.name.encode()).decode()
        r = http.post("/uploads", headers={**auth, "upload-length": str(len(data)),
                                           "upload-metadata": f"filename {name}"})
        if r.status_code != 201:
            raise PeerError(f"POST /uploads: {r.status_code} {r.text[:300]}")
        location = r.headers["location"]
        r = http.patch(location, content=data, headers={**auth, "upload-offset": "0",
                                                        "content-type": "application/offset+octet-stream"})
        if r.status_code != 204:
            raise PeerError(f"PATCH: {r.status_code} {r.text[:300]}")
        r = http.post("/api/titles", headers=auth, json={"title": title, "category": "documentary", "year": 2026,
                                                         "language": "en", "upload": location.rsplit("/", 1)[1]})
        if r.status_code != 201:
            raise PeerError(f"POST /api/titles: {r.status_code} {r.text[:300]}")
        tid = int(r.json()["id"])
        deadline = time.monotonic() + timeout_s
        while (doc := http.get(f"/api/titles/{tid}", headers=auth).json())["state"] not in ("published", "failed"):
            if time.monotonic() > deadline:
                raise PeerError(f"title {tid} not published in {timeout_s:.0f} s: {doc}")
            time.sleep(0.2)
    if doc["state"] != "published":
        raise PeerError(f"title {tid} failed: {doc.get('error')}")
    return tid


def play_in_browser(w: World, titles: list[int], *, viewers: int = 2, timeout_s: float = 300) -> dict[str, Any]:
    """Every title played by ``viewers`` viewers in turn (failover.mjs, no kill); its output."""
    from headwater.config import load
    from headwater.origin.auth.issuer import user_password

    cfg = load(w.config)
    spec = {"chromium": "/usr/bin/chromium", "base": w.url, "trustSpki": [w.licence_spki], "cdnHost": CDN_HOST,
            "viewer": {"user": "vic", "password": user_password(cfg, cfg.origin, "vic")},
            "titleIds": [t for t in titles for _ in range(viewers)], "playUntil": 0.5, "rate": 1,
            "timeoutMs": 30000}
    with SteeredForwarder(name=CDN_HOST + ".", port=w.ports["pop"], dns_port=w.ports["dns"], subnet=LONDON_VIEWER):
        proc = subprocess.run(["node", str(BROWSER_DIR / "failover.mjs")], input=json.dumps(spec) + "\n",
                              capture_output=True, text=True, cwd=BROWSER_DIR, timeout=timeout_s)
    if proc.returncode != 0 or not proc.stdout:
        raise PeerError(f"failover.mjs exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    if not doc.get("ok"):
        raise PeerError(f"the browser failed: {doc.get('error')}\n" + "\n".join(doc.get("console", [])[-30:]))
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m headwater.bench playback", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="titles, each played cold then warm (3)")
    p.add_argument("--clip-seconds", type=int, default=None,
                   help="each title's length (8; with --viewers, --seconds rounded up)")
    p.add_argument("--scheme", choices=("cbcs", "cenc"), default="cbcs", help="the titles' encryption (cbcs)")
    p.add_argument("--json", metavar="FILE", help="save every play here")
    p.add_argument("-c", "--config", type=Path, default=_DEFAULT_CONFIG, help="the cluster.toml to take the store from")
    p.add_argument("--port-offset", type=int, default=13000, help="moves the store's ports (S3 on 9000+offset)")
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir")
    g = p.add_argument_group("load: many simulated viewers instead of the browser (bench/viewer_load.py)")
    g.add_argument("--viewers", type=int, default=0, metavar="N", help="simulated viewers (0: the browser run)")
    g.add_argument("--titles", type=int, default=4, metavar="K", help="published titles, Zipf-chosen (4)")
    g.add_argument("--seconds", type=float, default=40, metavar="S", help="each viewer's watch time (40)")
    g.add_argument("--ramp-seconds", type=float, default=10, help="viewers' starts spread over this (10)")
    g.add_argument("--ahead-segments", type=float, default=3, help="media buffered ahead, in segments (3)")
    g.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the titles' popularity (1.0)")
    g.add_argument("--no-simulate", action="store_true", help="skip the simulator's prediction")
    args = p.parse_args(argv)
    if args.viewers > 0:
        args.clip_seconds = args.clip_seconds or math.ceil(args.seconds)
        return load_main(args)
    args.clip_seconds = args.clip_seconds or 8
    for need in ("/usr/bin/chromium", str(BROWSER_DIR / "node_modules" / "playwright-core")):
        if not Path(need).exists():
            print(f"playback bench: {need} is missing: run `make setup`", file=sys.stderr)
            return 1
    load_start = _loadavg()
    _log(f"playback bench: load average {load_start}")
    base = args.work_dir or Path(tempfile.mkdtemp(prefix="hw-playback-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        with world(args.config, base, port_offset=args.port_offset, scheme=args.scheme) as w:
            answer = steered_answer(CDN_HOST + ".", dns_port=w.ports["dns"], subnet=LONDON_VIEWER)
            _log(f"world up: origin {w.url}, the GeoDNS answers {answer} for a London viewer")
            token = _token(w.config, "creator-app", "upload titles:write")
            titles = []
            for i in range(args.rounds):
                clip = make_clip(base / f"clip-{i}.mp4", seconds=args.clip_seconds)
                titles.append(publish(w, clip, f"Bench Reel {i + 1}", token))
                _log(f"published title {titles[-1]}")
            doc = play_in_browser(w, titles)
    except (PeerError, subprocess.SubprocessError) as e:
        print(f"playback bench: {e}", file=sys.stderr)
        return 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    plays = plays_from(doc)
    load_end = _loadavg()
    import os

    print(render(plays, load_start=load_start, load_end=load_end, clip_s=args.clip_seconds, cpus=os.cpu_count(),
                 scheme=args.scheme))
    if args.json:
        doc = {"load_start": load_start, "load_end": load_end, "plays": [asdict(x) for x in plays],
               "summary": asdict(summarise(plays))}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


# --- load: many simulated viewers ---------------------------------------------------------------

SEGMENT_S = 2  # the transcoder's default segment length (the packager's segment_seconds)
LADDER_KBPS = (300, 100)  # WORLD's [[transcoder.ladder]]


def _plays(w: World, titles: list[int], token: str, *, concurrency: int = 16) -> list[dict[str, Any]]:
    """/play for each of ``titles`` (repeats allowed), ``concurrency`` at a time: not timed."""
    import asyncio

    import httpx

    async def run() -> list[dict[str, Any]]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=w.url, timeout=60, trust_env=False,
                                     headers={"authorization": f"Bearer {token}"}) as http:
            async def one(t: int) -> dict[str, Any]:
                async with sem:
                    r = await http.get(f"/api/titles/{t}/play")
                    if r.status_code != 200:
                        raise PeerError(f"/play {t}: {r.status_code} {r.text[:200]}")
                    return r.json()
            return await asyncio.gather(*(one(t) for t in titles))

    return asyncio.run(run())


def _edge_metrics(w: World) -> dict[str, Any]:
    """Every edge node's /metrics, parsed."""
    import httpx

    from .viewer_load import parse_metrics

    p = w.ports
    nodes = {"pop-a": (POP_A, p["pop_a_admin"]), "pop-b": (POP_B, p["pop_b_admin"]),
             "regional-1": ("127.0.0.1", p["regional_admin"]), "regional-2": ("127.0.0.1", p["regional2_admin"]),
             "shield-1": ("127.0.0.1", p["shield_admin"])}
    return {n: parse_metrics(httpx.get(f"http://{h}:{port}/metrics", timeout=10, trust_env=False).text)
            for n, (h, port) in nodes.items()}


def _prediction(args: argparse.Namespace, work: Path) -> str:
    """The simulator's report for the same scenario, or why there is none."""
    from .viewer_load import scenario_toml

    path = work / "bench-scenario.toml"
    path.write_text(scenario_toml(titles=args.titles, clip_s=args.clip_seconds, segment_s=SEGMENT_S,
                                  viewers=args.viewers, ladder_kbps=LADDER_KBPS, alpha=args.zipf,
                                  watch_s=min(args.seconds, args.clip_seconds), ramp_s=args.ramp_seconds,
                                  pops=("pop-a", "pop-b"),
                                  regionals=("regional-1", "regional-2"), shields=("shield-1",)))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "headwater.bench", "simulate", "--scenario", str(path),
                        "--no-progress", "--workers", "1"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return f"simulator: failed ({r.returncode}): {r.stderr[-500:]}"
    return (f"the simulator's prediction for the same scenario ({path.name}, {time.monotonic() - t0:.0f} s):\n"
            + r.stdout.rstrip())


def _run_loop(coro: Any) -> Any:
    """``coro`` on uvloop (less of the generator's CPU per request) when it is there."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def load_main(args: argparse.Namespace) -> int:
    """``--viewers N``: the world, ``--titles`` published, N simulated viewers, the report."""
    import asyncio
    import os
    import random

    from .viewer_load import (Target, percentile, pick_titles, render_load, run_viewers, summarise_viewers,
                              tier_figures)

    load_start = _loadavg()
    _log(f"playback load bench: {args.viewers} viewers; load average {load_start}")
    base = args.work_dir or Path(tempfile.mkdtemp(prefix="hw-playback-load-"))
    base.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    try:
        with world(args.config, base, port_offset=args.port_offset, scheme=args.scheme) as w:
            pops = {}
            for subnet in (LONDON_VIEWER, NEW_YORK_VIEWER):
                answer = steered_answer(CDN_HOST + ".", dns_port=w.ports["dns"], subnet=subnet)
                if not answer:
                    raise PeerError(f"the GeoDNS answered nothing for {subnet}")
                pops[subnet] = answer[0]
            _log(f"world up: origin {w.url}, the GeoDNS answers {pops}")
            token = _token(w.config, "creator-app", "upload titles:write")
            clip = make_clip(base / "clip.mp4", seconds=args.clip_seconds)
            titles = []
            for i in range(args.titles):
                titles.append(publish(w, clip, f"Load Reel {i + 1}", token, timeout_s=300))
                _log(f"published title {titles[-1]}")
            chosen = pick_titles(titles, args.viewers, alpha=args.zipf, rng=rng)
            viewer_token = _token(w.config, "viewer-app", "view")
            plays = _plays(w, chosen, viewer_token)
            subnets = (LONDON_VIEWER, NEW_YORK_VIEWER)
            targets = []
            for i, (t, play) in enumerate(zip(chosen, plays)):
                address = pops[subnets[i % 2]]
                targets.append(Target(title=t, pop=address, base=f"http://{address}:{w.ports['pop']}",
                                      host=f"{CDN_HOST}:{w.ports['pop']}", play=play))
            before = _edge_metrics(w)
            from .viewer_load import session_cpu_seconds

            daemons = {n: w.pids[n] for n in ("pop-a", "pop-b", "regional-1", "regional-2", "shield-1", "origin")}
            cpu_before = {n: session_cpu_seconds(pid) for n, pid in daemons.items()}
            _log(f"{args.viewers} viewers start over {args.ramp_seconds:.0f} s")
            cpu0, wall0 = time.process_time(), time.monotonic()
            results, lag = _run_loop(run_viewers(targets, watch_s=args.seconds, ahead_s=args.ahead_segments * SEGMENT_S,
                                                   ramp_s=args.ramp_seconds, seed=2))
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            daemon_cpu = {n: session_cpu_seconds(pid) - cpu_before[n] for n, pid in daemons.items()}
            after = _edge_metrics(w)
    except (PeerError, subprocess.SubprocessError) as e:
        print(f"playback bench: {e}", file=sys.stderr)
        return 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    load_end = _loadavg()
    prediction = ""
    if not args.no_simulate:
        with tempfile.TemporaryDirectory(prefix="hw-playback-sim-") as tmp:
            prediction = _prediction(args, args.work_dir or Path(tmp))
    names = {POP_A: "pop-a", POP_B: "pop-b"}
    for r in results:
        r.pop = names.get(r.pop, r.pop)
    figures = summarise_viewers(results)
    print(render_load(figures, tier_figures(before, after), titles=args.titles, clip_s=args.clip_seconds,
                      watch_s=min(args.seconds, args.clip_seconds), wall_s=wall, gen_cpu_s=cpu,
                      lag_p95_s=percentile(lag, 95), load_start=load_start, load_end=load_end,
                      cpus=os.cpu_count(), errors=[r.error for r in results if r.error], prediction=prediction,
                      daemon_cpu_s=daemon_cpu))
    if args.json:
        Path(args.json).write_text(json.dumps({"load_start": load_start, "load_end": load_end,
                                               "figures": asdict(figures),
                                               "viewers": [asdict(r) for r in results]}, indent=2) + "\n")
    return 0
