"""The origin's web page in a real browser, on real daemons: an object store cluster,
``headwater node licence`` (HTTPS from the local CA), ``headwater node origin`` (plain HTTP on
127.0.0.1, a secure context for Chromium all the same) and ``headwater node transcoder``, each its
own process, as ``test_origin_pipeline.py`` starts them, and like it an edge POP and its shield
in-process: /play's URLs are on the POP, so the page's player fetches manifests and segments
through the CDN, cross-origin.

Headless Chromium (``tests/browser/site.mjs``, playwright-core) then does what people do: a
creator opens /upload, signs in (a wrong password first: the form says so), uploads a 10-second
clip with the progress bar and watches the title go uploaded -> transcoding % -> published (the
transcoder's ffmpeg held until the page has shown ``transcoding``: ``ffmpeg_hold.py``); a
viewer types a misspelt query into the search box (no Enter), opens the title, presses Play, is
sent to sign in and back, and plays it: the page's shaka-player fetches the manifest, gets the
key from the licence server with /play's entitlement token, and the test reads the decoded frame
count and the advancing clock. Screenshots of the search page, the title page (playing) and the
upload page go to ``tests/artifacts/web/`` (ignored by git), kept after the run.

Also the page's own headers: its Content-Security-Policy and caching, the sign-in's bounds over
HTTP, and ``headwater demo`` (a 4-second title) on the same daemons.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import anyio
import anyio.from_thread
import httpx
import pytest
from cryptography import x509

from headwater import localca
from headwater.config import load
from headwater.drm.client import EntitlementMinter
from headwater.edge import cdnkeys
from headwater.edge.daemon import run_edge
from headwater.origin.auth.issuer import user_password
from headwater.origin.auth.login import hash_password
from tests.cluster import free_ports
from tests.functional.browser_harness import BROWSER_DIR, CHROMIUM, require_browser
from tests.functional.drm_media import make_clip
from tests.functional.ffmpeg_hold import FfmpegHold
from tests.functional.licence_harness import cli, spki_sha256
from tests.functional.origin_harness import LICENCE_SECTION, POP_AND_SHIELD, TRANSCODER_SECTION, Daemon

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "web"
CREATOR_PASSWORD = "correct horse battery staple"

SECTIONS = """
[origin]
port = {origin}
admin_port = {origin_admin}
tls = false

[origin.delivery]
publish_cache_seconds = 1
# Signed as the shipped cluster.toml signs (its [[cdn.keys]] "local", made as `headwater up` makes
# it), with a grant short enough that the page renews it while the viewer watches.
play_url_seconds = 8

[[origin.clients]]
id = "creator-app"
scopes = ["upload", "titles:write"]
secret = "sealed"

[[origin.users]]
name = "ada"
scopes = ["upload", "titles:write", "titles:read", "view"]
password_scrypt = "{creator_hash}"

[[origin.users]]
name = "vic"
scopes = ["view"]
password = "sealed"

""" + LICENCE_SECTION + """
""" + TRANSCODER_SECTION.replace("[transcoder]\n", "[transcoder]\n{transcoder_ffmpeg}") + POP_AND_SHIELD.replace(
    'origin = "http://127.0.0.1:{origin}"\n', 'origin = "http://127.0.0.1:{origin}"\ntrusted_keys = ["local"]\n', 1) + """
[[cdn.keys]]
id = "local"
private_key_file = "auto"
"""


def _leaf_spki(port: int, ca: str) -> str:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return spki_sha256(x509.load_der_x509_certificate(der))


@pytest.fixture(scope="module")
def world(cluster):
    names = ("origin", "origin_admin", "licence", "licence_admin", "licence_rpc", "transcoder_admin", "pop", "pop_admin", "shield",
             "shield_admin")
    p = dict(zip(names, free_ports(len(names))))
    # A cheap scrypt (2^10) for the test; cluster.toml's default cost is 2^15.
    creator_hash = hash_password(CREATOR_PASSWORD, log_n=10)
    hold = FfmpegHold(cluster.root)
    with open(cluster.config_path, "a") as f:
        f.write(SECTIONS.format(creator_hash=creator_hash, transcoder_ffmpeg=hold.toml, **p))
    assert cdnkeys.prepare(load(str(cluster.config_path)))  # the CDN key, as `headwater up` makes it
    cfg = load(str(cluster.config_path))
    localca.prepare(cfg)
    EntitlementMinter(cfg)
    logs = cluster.root / "logs"
    daemons = [Daemon(cluster.config_path, "licence", p["licence_admin"], logs / "licence.out").wait()]
    try:
        daemons += [Daemon(cluster.config_path, "origin", p["origin_admin"], logs / "origin.out"),
                    Daemon(cluster.config_path, "transcoder", p["transcoder_admin"], logs / "transcoder.out")]
        for d in daemons:
            d.wait()
        ca = str(cluster.data_dir / "ca" / "ca.pem")
        # The edge (a POP and its shield) in-process through the role's entry point, as
        # test_origin_pipeline.py runs it: /play's URLs are on the POP, so the browser fetches
        # the manifest and segments through the CDN, cross-origin from the page.
        with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
            edges = [portal.start_task(functools.partial(run_edge, cfg, cfg.daemon(i)))[0]
                     for i in ("shield-1", "pop-1")]
            try:
                yield {"cfg": cfg, "config": cluster.config_path, "url": f"http://127.0.0.1:{p['origin']}",
                       "pop": f"http://127.0.0.1:{p['pop']}", "logs": logs, "ca": ca,
                       "licence_spki": _leaf_spki(p["licence"], ca), "ffmpeg_hold": hold,
                       "viewer_password": user_password(cfg, cfg.origin, "vic")}
            finally:
                for e in edges:
                    e.cancel()
    finally:
        for d in reversed(daemons):
            d.stop()


def _tail(world, name: str) -> str:
    return (world["logs"] / f"{name}.out").read_text(errors="replace")[-3000:]


def test_a_creator_uploads_and_a_viewer_finds_and_plays_in_a_browser(world, tmp_path):
    require_browser()
    clip = make_clip(tmp_path / "Harbour Lights.mp4", seconds=10, size="320x180", gop=25)
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    spec = {"chromium": CHROMIUM, "base": world["url"], "trustSpki": [world["licence_spki"]], "clip": str(clip),
            "title": "Harbour Lights at Dusk", "query": "harbuor", "shots": str(ARTIFACTS), "timeoutMs": 60000,
            "cdn": world["pop"],
            "viewport": {"width": 390, "height": 844},  # a phone
            "creator": {"user": "ada", "password": CREATOR_PASSWORD},
            "viewer": {"user": "vic", "password": world["viewer_password"]}}
    started = time.monotonic()
    # The encode of this clip takes well under a second, the title is transcoding for ~1.5 s
    # and the page polls every half-second: left alone, a slow poll on a loaded machine sees
    # uploaded, then published. So ffmpeg waits until the page has shown the title transcoding
    # (site.mjs deletes the hold file then); the page must still show it to end the wait.
    with world["ffmpeg_hold"].held() as hold:
        spec["hold"] = str(hold.hold_file)
        proc = subprocess.run(["node", str(BROWSER_DIR / "site.mjs")], input=json.dumps(spec) + "\n",
                              capture_output=True, text=True, cwd=BROWSER_DIR, timeout=150)
    print(f"site.mjs took {time.monotonic() - started:.1f} s; screenshots in {ARTIFACTS}")
    print(proc.stderr[-3000:])
    assert proc.returncode == 0 and proc.stdout, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    why = json.dumps({k: v for k, v in out.items() if k != "console"}, indent=1) + "\n" + \
        "\n".join(out["console"][-60:]) + "\n" + _tail(world, "transcoder")
    assert out["ok"], why

    # The creator: refused with a wrong password, then signed in; the bar went up while the
    # bytes went, then through transcoding to published.
    assert "wrong password" in out["wrongPassword"].lower(), why
    assert out["creatorWho"] == "ada", why
    samples = out["upload"]["samples"]
    labels = [s["label"] for s in samples]
    assert "Uploading" in labels and "Transcoding" in labels and labels[-1] == "Published", why
    transcoding = [s["value"] for s in samples if s["label"] == "Transcoding"]
    assert transcoding == sorted(transcoding), why
    assert samples[-1]["value"] == 100 and not samples[-1]["notice"], why

    # The viewer: found by a misspelt query typed into the box, played after signing in.
    assert out["titleText"] == "Harbour Lights at Dusk", why
    play = out["play"]
    assert play["ok"] and play["frames"] > 25 and play["currentTime"] > 1.0, why
    assert not play["error"], why
    # The grant was signed and the page renewed it (8-s grants) while playing, with no error.
    grant = play["grant"]
    assert grant["signed"] and grant["renewals"] >= 1 and not grant["playerError"], why
    # The manifest and the segments came through the CDN's POP, not from the origin.
    cdn = out["cdn"]
    assert any(u.endswith("manifest.mpd") for u in cdn) and sum(".m4s" in u or ".mp4" in u for u in cdn) >= 2, cdn
    print(f"played: {play['frames']} frames, {play['currentTime']:.2f} s in {play['startMs']} ms from Play")
    for shot in ("viewer-search.png", "viewer-title-playing.png", "upload-transcoding.png", "upload-published.png",
                 "signin-refused.png"):
        assert (ARTIFACTS / shot).stat().st_size > 5000, shot


def test_the_page_is_served_with_a_strict_policy_and_bounded(world):
    with httpx.Client(base_url=world["url"], timeout=10, trust_env=False) as http:
        for path in ("/", "/title/7", "/upload", "/signed-in"):
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8", path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
            assert "connect-src 'self'" in csp and str(world["cfg"].licence.port) in csp  # the licence server
            assert f"media-src 'self' blob: {world['pop']};" in csp  # the CDN
            assert r.headers["cache-control"] == "no-cache" and r.headers["x-content-type-options"] == "nosniff"
        etag = r.headers["etag"]
        assert http.get("/", headers={"if-none-match": etag}).status_code == 304
        js = http.get("/static/app.js")
        assert js.headers["content-type"].startswith("text/javascript") and "max-age" in js.headers["cache-control"]
        lib = http.get("/static/lib/shaka-player.compiled.js")
        assert lib.status_code == 200 and len(lib.content) > 100_000
        for bad in ("/static/../app.py", "/static/lib/x.js", "/title/0", "/title/abc", "/static/"):
            assert http.get(bad).status_code == 404, bad
        assert http.post("/", content=b"x").status_code == 405

        # The sign-in form: only for this site's own pages, with S256 PKCE; never redirected
        # elsewhere when the request is bad.
        good = {"response_type": "code", "client_id": "headwater-web", "redirect_uri": world["url"] + "/signed-in",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256",
                "state": "abc"}
        r = http.get("/oauth/authorize", params=good)
        assert r.status_code == 200 and 'name="password"' in r.text
        assert "script-src" not in r.headers["content-security-policy"]  # the form runs no script
        for key, value in (("redirect_uri", "https://evil.example/x"), ("code_challenge_method", "plain"),
                           ("client_id", "creator-app")):
            r = http.get("/oauth/authorize", params={**good, key: value})
            assert r.status_code == 400 and "location" not in r.headers, key
        r = http.post("/oauth/authorize", data={**good, "username": "ada", "password": CREATOR_PASSWORD})
        assert r.status_code == 303 and r.headers["location"].startswith(world["url"] + "/signed-in?code="), r.text
        code = r.headers["location"].split("code=")[1].split("&")[0]
        # The code without its verifier buys nothing, and is spent.
        r = http.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                            "client_id": "headwater-web", "redirect_uri": good["redirect_uri"],
                                            "code_verifier": "x" * 43})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        # Attempts at one user name are bounded (10, then one a minute), whoever makes them.
        statuses = [http.post("/oauth/authorize", data={**good, "username": "mallory", "password": f"guess{i}"})
                    .status_code for i in range(11)]
        assert statuses == [401] * 10 + [429], statuses
        r = http.post("/oauth/authorize", content=b"a=" + b"x" * 5000,
                      headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400


def test_headwater_demo_publishes_a_title_and_prints_its_page(world):
    # The command as a user runs it, on the running daemons (8 s instead of 60 to keep it quick;
    # over the ladder's thumbnail interval of 5 s: the transcoder fails titles shorter than it).
    out = cli(world["config"], "demo", "--seconds", "8", "--title", "Demo Reel", "--timeout", "90")
    url = next(line.split()[-1] for line in out.splitlines() if line.startswith("published:"))
    assert url.startswith(world["url"] + "/title/"), out
    assert f"sign in as vic (view): password {world['viewer_password']}" in out, out
    with httpx.Client(timeout=10, trust_env=False) as http:
        assert http.get(url).status_code == 200
        doc = http.get(url.replace("/title/", "/api/titles/")).json()
    assert doc["state"] == "published" and doc["title"] == "Demo Reel", doc
