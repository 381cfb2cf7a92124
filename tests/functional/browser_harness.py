"""Playback in a real browser: Debian's Chromium, driven by ``tests/browser/play.mjs``
(playwright-core), plays a manifest with shaka-player, dash.js or hls.js and a ClearKey licence
server, and reports decoded frames.

- :class:`StaticSite` serves the probe page (``tests/browser/player.html`` and ``player.js``),
  the three players' builds from ``tests/browser/node_modules`` and one media folder, from a
  real HTTP server on 127.0.0.1 (``http.server`` in a thread; static files only).
- :class:`Browser` starts ONE Chromium launch in the background (so it overlaps the caller's
  set-up) and :meth:`Browser.run` plays any number of :class:`PlaybackCase` in it (a fresh
  browser context per case) under a hard timeout, returning a :class:`PlaybackResult` each;
  :func:`run_playback` does both at once.
- :func:`explain` formats a result with the page's console log for an assertion message.

``make setup`` installs Chromium (``/usr/bin/chromium``) and the npm packages; when either is
missing :func:`require_browser` fails the test with the command that fixes it, rather than
skipping: a browser test that silently does not run proves nothing.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

__all__ = [
    "BROWSER_DIR", "CHROMIUM", "Browser", "PlaybackCase", "PlaybackResult", "StaticSite",
    "require_browser", "run_playback", "explain",
]

BROWSER_DIR = Path(__file__).resolve().parent.parent / "browser"
CHROMIUM = "/usr/bin/chromium"
NODE_MODULES = BROWSER_DIR / "node_modules"

#: What the page may load from /player/lib/: each player's browser build, nothing else.
PLAYER_LIBS = {
    "shaka-player.compiled.js": NODE_MODULES / "shaka-player/dist/shaka-player.compiled.js",
    "dash.all.min.js": NODE_MODULES / "dashjs/dist/modern/umd/dash.all.min.js",
    "hls.min.js": NODE_MODULES / "hls.js/dist/hls.min.js",
}
PAGE_FILES = {"player.html": BROWSER_DIR / "player.html", "player.js": BROWSER_DIR / "player.js"}

Player = Literal["shaka", "dashjs", "hlsjs"]


def require_browser() -> None:
    """Fail (not skip) when Chromium, node or the npm packages are missing."""
    missing = [what for what, ok in (
        (CHROMIUM, Path(CHROMIUM).exists()),
        ("node", shutil.which("node") is not None),
        (str(NODE_MODULES / "playwright-core"), (NODE_MODULES / "playwright-core").is_dir()),
        *((str(p), p.exists()) for p in PLAYER_LIBS.values()),
    ) if not ok]
    if missing:
        pytest.fail(f"browser tests need {', '.join(missing)}: run `make setup`", pytrace=False)


class _SiteHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD only: /player/<page file>, /player/lib/<player build>, /media/<path>."""

    site: StaticSite  # set on the per-site subclass
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mpd": "application/dash+xml", ".m3u8": "application/vnd.apple.mpegurl",
        ".m4s": "video/iso.segment", ".mp4": "video/mp4", ".js": "text/javascript",
        ".html": "text/html; charset=utf-8",
    }

    def translate_path(self, path: str) -> str:
        route = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        if route.startswith("/player/lib/"):
            target = PLAYER_LIBS.get(route.removeprefix("/player/lib/"))
        elif route.startswith("/player/"):
            target = PAGE_FILES.get(route.removeprefix("/player/"))
        elif route.startswith("/media/"):
            root = self.site.media_root.resolve()
            candidate = (root / route.removeprefix("/media/")).resolve()
            # resolve() folds any '..': anything outside the media folder is not served.
            target = candidate if candidate.is_relative_to(root) else None
        else:
            target = None
        self.site.requests.append(route)
        return str(target) if target is not None else "/nonexistent/404"

    def list_directory(self, path: str) -> None:  # type: ignore[override]
        self.send_error(404)
        return None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request list is the log


class StaticSite:
    """The probe page, the players and ``media_root`` over HTTP on 127.0.0.1 (a real server in
    a thread). ``requests`` lists every path asked for, in order."""

    def __init__(self, media_root: Path) -> None:
        self.media_root = media_root
        self.requests: list[str] = []
        handler = type("Handler", (_SiteHandler,), {"site": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="static-site",
                                        daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def media_url(self, path: str) -> str:
        return f"{self.origin}/media/{path}"

    def page_url(self, *, player: Player, manifest: str, licence: str, auth: str | None = None,
                 frames: int = 25, timeout_ms: int = 15000, cdn_query: str | None = None) -> str:
        """The probe page's URL; ``cdn_query``: a signed CDN's grant, appended to every manifest
        and segment request (``cdn.query`` of the origin's /play)."""
        query = {"player": player, "manifest": manifest, "licence": licence,
                 "frames": str(frames), "timeout": str(timeout_ms)}
        if auth is not None:
            query["auth"] = auth
        if cdn_query:
            query["cdnquery"] = cdn_query
        return f"{self.origin}/player/player.html?{urllib.parse.urlencode(query)}"

    def __enter__(self) -> StaticSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybackCase:
    """One page load: ``name`` (for messages), the page ``url`` (see :meth:`StaticSite.page_url`)
    and how long the page may take."""

    name: str
    url: str
    timeout_ms: int = 15000


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybackResult:
    """What the page reported: ``ok`` (playback advanced and frames were decoded), ``frames``
    (decoded), ``current_time``, the player's and media element's ``errors``, the page's
    ``events`` and ``console``, and how long the case took (``wall_ms``)."""

    name: str
    ok: bool
    reason: str
    frames: int
    current_time: float
    errors: tuple[str, ...]
    events: tuple[str, ...]
    console: tuple[str, ...]
    wall_ms: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PlaybackResult:
        return cls(
            name=doc.get("name", "?"), ok=bool(doc.get("ok")), reason=str(doc.get("reason")),
            frames=int(doc.get("frames") or 0), current_time=float(doc.get("currentTime") or 0),
            errors=tuple(str(e) for e in doc.get("errors", ())),
            events=tuple(str(e) for e in doc.get("events", ())),
            console=tuple(str(c) for c in doc.get("console", ())),
            wall_ms=int(doc.get("wallMs") or 0), raw=doc,
        )


class Browser:
    """One headless Chromium (``play.mjs``), launched in the background on ``__enter__`` so its
    start overlaps the caller's set-up; :meth:`run` then plays cases in it (once).

    ``concurrency`` cases run at a time, each in a fresh browser context. ``trust_spki``: base64
    SHA-256 digests of the SPKIs of certificates Chromium accepts without a trusted root
    (Chromium's ``--ignore-certificate-errors-spki-list``; e.g. the leaf a cluster's local CA
    issued); no other certificate error is ignored. ``host_map``: host names Chromium resolves
    to a fixed IPv4 address (``--host-resolver-rules``).
    """

    def __init__(self, *, concurrency: int = 3, trust_spki: Sequence[str] = (),
                 host_map: dict[str, str] | None = None) -> None:
        self.concurrency = concurrency
        self.trust_spki = tuple(trust_spki)
        self.host_map = dict(host_map or {})
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None
        self._started = 0.0

    def __enter__(self) -> Browser:
        require_browser()
        self._stderr = tempfile.TemporaryFile()
        self._started = time.monotonic()
        self._proc = subprocess.Popen(["node", str(BROWSER_DIR / "play.mjs")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, cwd=BROWSER_DIR)
        launch = {"chromium": CHROMIUM, "concurrency": self.concurrency, "trustSpki": list(self.trust_spki),
                  "hostMap": self.host_map}
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(launch).encode() + b"\n")
        self._proc.stdin.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # Never ran (the set-up failed): stdin's end makes play.mjs close Chromium and exit;
            # killing node alone could leave Chromium behind.
            try:
                self._proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.communicate(timeout=10)
        if self._stderr is not None:
            self._stderr.close()

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def run(self, cases: Sequence[PlaybackCase], *, timeout_s: float | None = None) -> list[PlaybackResult]:
        """Play ``cases``; a result per case, in the order given.

        The browser is killed after ``timeout_s`` (default: the cases' own timeouts plus 30 s
        for Chromium's start and each page's set-up, as if run one at a time), and that fails
        the test with play.mjs's stderr.
        """
        assert self._proc is not None and self._proc.stdin is not None, "run() inside `with Browser()`"
        if timeout_s is None:
            timeout_s = 30 + sum(c.timeout_ms / 1000 + 5 for c in cases)
        started = time.monotonic()
        spec = {"cases": [{"name": c.name, "url": c.url, "timeoutMs": c.timeout_ms} for c in cases]}
        try:
            stdout, _ = self._proc.communicate(json.dumps(spec).encode() + b"\n", timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate(timeout=10)
            pytest.fail(f"play.mjs ran past {timeout_s:.0f} s; stderr:\n{self._stderr_text()}", pytrace=False)
        except BrokenPipeError:  # play.mjs exited already (Chromium did not start)
            stdout = self._proc.stdout.read() if self._proc.stdout else b""
            self._proc.wait(10)
        if self._proc.returncode != 0:
            pytest.fail(f"play.mjs exited {self._proc.returncode} after "
                        f"{time.monotonic() - self._started:.1f} s; stderr:\n{self._stderr_text()}", pytrace=False)
        try:
            results = [PlaybackResult.from_json(r) for r in json.loads(stdout)["results"]]
        except (ValueError, KeyError, TypeError) as e:
            pytest.fail(f"play.mjs printed no results ({e}); stdout:\n{stdout[-2000:]!r}\n"
                        f"stderr:\n{self._stderr_text()}", pytrace=False)
        # Captured by pytest and shown with a failure (or with -s): where the time went.
        print(f"browser run: {len(results)} cases in {time.monotonic() - started:.1f} s "
              f"({started - self._started:.1f} s after play.mjs started)")
        for r in results:
            print(f"  {r.name}: ok={r.ok} frames={r.frames} wall={r.wall_ms} ms")
        print(self._stderr_text())
        return results


def run_playback(cases: Sequence[PlaybackCase], *, concurrency: int = 3,
                 timeout_s: float | None = None, trust_spki: Sequence[str] = ()) -> list[PlaybackResult]:
    """Run ``cases`` in one headless Chromium started now (see :class:`Browser`)."""
    with Browser(concurrency=concurrency, trust_spki=trust_spki) as browser:
        return browser.run(cases, timeout_s=timeout_s)


def explain(result: PlaybackResult) -> str:
    """A result with its page's console log, for an assertion message."""
    lines = [f"{result.name}: ok={result.ok} reason={result.reason} frames={result.frames} "
             f"currentTime={result.current_time:.2f} wall={result.wall_ms} ms",
             "errors:", *(f"  {e}" for e in result.errors),
             "events:", *(f"  {e}" for e in result.events),
             "console:", *(f"  {c}" for c in result.console[-60:])]
    return "\n".join(lines)

