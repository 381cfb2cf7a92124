"""The CDN's origin and the playback API on real daemons: an object store cluster, the origin
(``headwater node origin``, TLS "auto"), the licence server (``headwater node licence``) and an
edge POP with its shield (in-process, through the role's entry point) whose distribution's origin
is the origin over HTTPS, trusting the local CA. A tiny title is published by putting objects in
the videos bucket with boto3 and moving the title through the catalogue (the origin's SQLite file)
— no transcoder.

Covered: GET/HEAD with the CDN's headers (Cache-Control per kind, ETag, Last-Modified,
Surrogate-Key, Content-Type), a Range (206, by curl) and an unsatisfiable one (416), 304 on
If-None-Match and If-Modified-Since; another version, an unpublished title, an unknown file → 404,
traversal spellings → 400/404 on the raw wire; /play without a token (401), without the scope
(403), for an unpublished title (404) and for the published one: its signed DASH URL fetched
through the POP (which refuses it unsigned, and refuses the grant for another title), a segment
fetched with the grant, and the licence token accepted by the licence server for the title's key;
then the title withdrawn and ``request_cdn_purge`` called: the origin answers 410 and, once the
purge went through the shield, so does the POP that had the manifest cached.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import anyio
import anyio.from_thread
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from headwater import localca
from headwater.config import load
from headwater.drm.client import EntitlementMinter
from headwater.edge.daemon import run_edge
from headwater.origin.catalogue import Rendition, TitleDraft, TitleState, open_catalogue
from headwater.origin.delivery import request_cdn_purge
from tests.cluster import free_ports
from tests.functional.licence_harness import cli
from tests.functional.origin_harness import LICENCE_SECTION, Daemon

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
GRANT_JS = Path(__file__).resolve().parents[2] / "origin" / "web" / "static" / "grant.js"
CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB")

SECTIONS = """
[origin]
port = {origin}
admin_port = {origin_admin}
tls_cert = "auto"
tls_key = "auto"

[origin.delivery]
publish_cache_seconds = 1
# Short, so the grant renewal test sees it expire.
play_url_seconds = 20

[[origin.clients]]
id = "creator-app"
scopes = ["upload"]
secret = "sealed"

[[origin.clients]]
id = "viewer-app"
scopes = ["view"]
secret = "sealed"

""" + LICENCE_SECTION + """
[cdn.client_limits]
enabled = false

[[cdn.keys]]
id = "KORIGINTEST"
public_key_file = "{pub}"
private_key_file = "{priv}"

[[distributions]]
name = "video"
hostnames = ["video.test"]
origin = "https://127.0.0.1:{origin}"
trusted_keys = ["KORIGINTEST"]

[[edge]]
id = "pop-1"
tier = "pop"
port = {pop}
admin_port = {pop_admin}
lat = 51.5
lon = -0.12
ram_size = "16MiB"
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {shield}
admin_port = {shield_admin}
disk_size = "64MiB"
"""

SEGMENT = os.urandom(300_000)
MPD = b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"></MPD>\n'
M3U8 = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nvideo-1.m3u8\n"
POSTER = b"\xff\xd8\xff\xe0" + os.urandom(2000)
VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:05.000\nsprite-001.jpg#xywh=0,0,160,90\n"


@pytest.fixture(scope="module")
def world(cluster, s3):
    ports = free_ports(9)
    keys = cluster.root / "keys"
    keys.mkdir(exist_ok=True)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # OpenSSL's: fast
    (keys / "cf.pem").write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                                        serialization.NoEncryption()))
    os.chmod(keys / "cf.pem", 0o600)
    (keys / "cf.pub.pem").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    names = ("origin", "origin_admin", "licence", "licence_admin", "licence_rpc", "pop", "pop_admin", "shield", "shield_admin")
    p = dict(zip(names, ports))
    with open(cluster.config_path, "a") as f:
        f.write(SECTIONS.format(**p, pub=keys / "cf.pub.pem", priv=keys / "cf.pem"))
    cfg = load(str(cluster.config_path))

    # A published title 1 (version 5; an older version 4 is still in the store) and title 2,
    # uploaded but not published.
    s3.create_bucket(Bucket="videos")
    objects = {"titles/1/v5/manifest.mpd": MPD, "titles/1/v5/master.m3u8": M3U8,
               "titles/1/v5/video-1/seg-1.m4s": SEGMENT, "titles/1/v4/manifest.mpd": MPD,
               "titles/1/v5/poster.jpg": POSTER, "titles/1/v5/thumbs/thumbs.vtt": VTT,
               "titles/2/v6/manifest.mpd": MPD}
    for key, body in objects.items():
        s3.put_object(Bucket="videos", Key=key, Body=body)
    catalogue = open_catalogue(cfg.origin.catalogue)
    t1 = catalogue.create_title(TitleDraft(title="Night Train"))
    t2 = catalogue.create_title(TitleDraft(title="Day Bus"))
    assert (t1.id, t2.id) == (1, 2)
    for state in (TitleState.TRANSCODING, TitleState.PACKAGED):
        catalogue.set_state(1, state)
    catalogue.set_state(1, TitleState.PUBLISHED, renditions=[
        Rendition(name="dash", codec="manifest", path="titles/1/v5/manifest.mpd"),
        Rendition(name="hls", codec="manifest", path="titles/1/v5/master.m3u8"),
        Rendition(name="720p", codec="avc1.64001f", width=1280, height=720, bitrate=800_000,
                  path="titles/1/v5/video-1.m3u8")])

    logs = cluster.root / "logs"
    # The local CA and the licence server's sealed token secret made here, as `headwater up`
    # and `headwater entitle` would, so the two daemons can start at once without racing to
    # create them.
    localca.prepare(cfg)
    EntitlementMinter(cfg)
    daemons = [Daemon(cluster.config_path, "licence", p["licence_admin"], logs / "licence.out"),
               Daemon(cluster.config_path, "origin", p["origin_admin"], logs / "origin.out")]
    for d in daemons:
        d.wait()
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        edges = [portal.start_task(functools.partial(run_edge, cfg, cfg.daemon(i)))[0]
                 for i in ("shield-1", "pop-1")]
        try:
            yield {"cfg": cfg, "catalogue": catalogue, "ports": p, "ca": str(cluster.data_dir / "ca" / "ca.pem"),
                   "origin": f"https://127.0.0.1:{p['origin']}", "pop": f"http://127.0.0.1:{p['pop']}",
                   "config": cluster.config_path, "s3": s3}
        finally:
            for e in edges:
                e.cancel()
            for d in daemons:
                d.stop()
            catalogue.close()


def _origin(world) -> httpx.Client:
    return httpx.Client(base_url=world["origin"], verify=ssl.create_default_context(cafile=world["ca"]),
                        timeout=15, trust_env=False)


def test_objects_with_the_headers_a_cdn_needs(world):
    with _origin(world) as c:
        r = c.get("/titles/1/v5/manifest.mpd")
        assert r.status_code == 200 and r.content == MPD
        h = r.headers
        assert h["content-type"] == "application/dash+xml" and h["surrogate-key"] == "title-1"
        assert h["cache-control"] == "public, max-age=60, s-maxage=86400"
        etag, modified = h["etag"], h["last-modified"]
        assert etag.startswith('"') and modified.endswith("GMT") and h["accept-ranges"] == "bytes"
        r = c.get("/titles/1/v5/master.m3u8")
        assert r.headers["content-type"] == "application/vnd.apple.mpegurl" and r.content == M3U8

        r = c.head("/titles/1/v5/video-1/seg-1.m4s")
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) == len(SEGMENT)
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["content-type"] == "video/iso.segment"
        r = c.get("/titles/1/v5/video-1/seg-1.m4s")
        assert r.content == SEGMENT

        # Conditionals: 304 with the validators and the caching headers, no body.
        r = c.get("/titles/1/v5/manifest.mpd", headers={"if-none-match": etag})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
        assert r.headers["surrogate-key"] == "title-1" and "max-age" in r.headers["cache-control"]
        r = c.get("/titles/1/v5/manifest.mpd", headers={"if-modified-since": modified})
        assert r.status_code == 304
        r = c.get("/titles/1/v5/manifest.mpd", headers={"if-none-match": '"other"'})
        assert r.status_code == 200 and r.content == MPD

        # An unsatisfiable range: 416 with the size; several ranges: the whole object.
        r = c.get("/titles/1/v5/video-1/seg-1.m4s", headers={"range": f"bytes={len(SEGMENT)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(SEGMENT)}"
        assert r.json()["error"] == "range_not_satisfiable"
        r = c.get("/titles/1/v5/video-1/seg-1.m4s", headers={"range": "bytes=0-1,5-9"})
        assert r.status_code == 200 and len(r.content) == len(SEGMENT)

    # A single range, by curl: 206 with Content-Range and exactly those bytes.
    out = subprocess.run(["curl", "-sS", "-D", "-", "-o", "-", "--cacert", world["ca"], "-r", "1000-1999",
                          f"{world['origin']}/titles/1/v5/video-1/seg-1.m4s"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"206"
    assert f"content-range: bytes 1000-1999/{len(SEGMENT)}".encode() in head.lower()
    assert body == SEGMENT[1000:2000]


def test_only_the_published_version_is_served(world):
    with _origin(world) as c:
        for path in ("/titles/1/v4/manifest.mpd",    # an older version, still in the store
                     "/titles/2/v6/manifest.mpd",    # a title not published
                     "/titles/9/v1/manifest.mpd",    # no such title
                     "/titles/1/v5/nothing.m4s"):    # not a file of the version
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"] == "not_found", path
            assert r.headers["cache-control"] == "public, max-age=5"
        assert c.get("/titles/2/v6/manifest.mpd").headers["surrogate-key"] == "title-2"
        r = c.post("/titles/1/v5/manifest.mpd", content=b"x")
        assert r.status_code == 405 and "GET" in r.headers["allow"]


def _raw_status(world, target: bytes) -> int:
    """The status for a request line sent as it is (clients normalise dot segments away)."""
    ctx = ssl.create_default_context(cafile=world["ca"])
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", world["ports"]["origin"]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    return int(data.split(b" ", 2)[1])


def test_traversal_never_reaches_outside_titles(world, s3):
    # A published-looking object outside titles/ that a traversal would reach.
    s3.put_object(Bucket="videos", Key="secret.txt", Body=b"secret")
    for target in (b"/titles/1/v5/../../../secret.txt", b"/titles/1/v5/..%2F..%2F..%2Fsecret.txt",
                   b"/titles/1/v5/%2e%2e/%2e%2e/%2e%2e/secret.txt", b"/titles/1/v5/manifest.mpd%00.m4s",
                   b"/titles/1/v5//manifest.mpd", b"/titles/1/v5/./manifest.mpd", b"/titles/1/v5/a\\..\\b",
                   b"/titles/1/v5/" + b"a/" * 700 + b"x.m4s", b"/titles/1/v5/%2Fsecret.txt",
                   b"/titles/1/v5/video-1%2Fseg-1.m4s"):
        status = _raw_status(world, target)
        assert status in (400, 404), (target[:80], status)


def test_play_and_the_edge_and_the_licence(world):
    config = world["config"]
    viewer = cli(config, "token", "--client", "viewer-app", "--scope", "view").strip()
    creator = cli(config, "token", "--client", "creator-app", "--scope", "upload").strip()
    with _origin(world) as c:
        r = c.get("/api/titles/1/play")
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        r = c.get("/api/titles/1/play", headers={"authorization": f"Bearer {creator}"})
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
        r = c.get("/api/titles/2/play", headers={"authorization": f"Bearer {viewer}"})
        assert r.status_code == 404
        r = c.get("/api/titles/1/play", headers={"authorization": f"Bearer {viewer}", "origin": "https://p.test"})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "https://p.test" and r.headers["cache-control"] == "no-store"
        doc = r.json()
        # A browser player's preflight names Authorization.
        r = c.request("OPTIONS", "/api/titles/1/play", headers={"origin": "https://p.test",
                                                                "access-control-request-method": "GET"})
        assert r.status_code == 204 and "Authorization" in r.headers["access-control-allow-headers"]
    pop = world["pop"]
    assert doc["title"] == 1 and doc["dash"].startswith(f"{pop}/titles/1/v5/manifest.mpd?Policy=")
    assert doc["hls"].startswith(f"{pop}/titles/1/v5/master.m3u8?")
    assert time.time() < doc["expires"] <= time.time() + 25 and doc["expires"] - doc["issued"] == 20
    assert doc["cdn"]["resource"] == f"{pop}/titles/1/v5/*" and doc["cdn"]["signed"]
    # The poster and the thumbnail track: signed URLs under the same prefix; the title doc names
    # them unsigned.
    query = doc["cdn"]["query"]
    assert doc["poster"] == f"{pop}/titles/1/v5/poster.jpg?{query}"
    assert doc["thumbnails"] == f"{pop}/titles/1/v5/thumbs/thumbs.vtt?{query}"
    with _origin(world) as c:
        public = c.get("/api/titles/1").json()
    assert (public["poster"], public["thumbnails"]) == (f"{pop}/titles/1/v5/poster.jpg",
                                                        f"{pop}/titles/1/v5/thumbs/thumbs.vtt")

    with httpx.Client(timeout=15, trust_env=False) as c:
        # Through the POP and the shield, from the origin over HTTPS: the signed URL works.
        r = c.get(doc["dash"])
        assert r.status_code == 200 and r.content == MPD, r.text
        assert "surrogate-key" not in r.headers  # the edge keeps it
        r = c.get(doc["dash"])
        assert r.status_code == 200 and "hit" in r.headers.get("x-cache", "").lower()
        # Unsigned, or the grant on another title's URL: refused at the POP.
        assert c.get(f"{pop}/titles/1/v5/manifest.mpd").status_code == 403
        assert c.get(f"{pop}/titles/2/v6/manifest.mpd?{doc['cdn']['query']}").status_code == 403
        r = c.get(doc["poster"])
        assert r.status_code == 200 and r.content == POSTER and r.headers["content-type"] == "image/jpeg"
        r = c.get(doc["thumbnails"])
        assert r.status_code == 200 and r.content == VTT and r.headers["content-type"].startswith("text/vtt")
        assert c.get(public["poster"]).status_code == 403  # unsigned
        # A segment with the same grant (query, then cookies).
        r = c.get(f"{pop}/titles/1/v5/video-1/seg-1.m4s?{doc['cdn']['query']}")
        assert r.status_code == 200 and r.content == SEGMENT
        cookie = "; ".join(f"{k}={v}" for k, v in doc["cdn"]["cookies"].items())
        r = c.get(f"{pop}/titles/1/v5/video-1/seg-1.m4s", headers={"cookie": cookie})
        assert r.status_code == 200 and r.content == SEGMENT

    # The licence token: the licence server gives the title's key for it.
    out = cli(config, "keys", "new", "--title", "1").split()
    kid = out[1]
    lic = doc["licence"]
    assert lic["url"] == f"https://127.0.0.1:{world['ports']['licence']}/licence"
    with httpx.Client(verify=ssl.create_default_context(cafile=world["ca"]), timeout=15, trust_env=False) as c:
        r = c.post(lic["url"], headers={"authorization": f"Bearer {lic['token']}"},
                   json={"kids": [kid], "type": "temporary"})
        assert r.status_code == 200, r.text
        assert r.json()["keys"][0]["kid"] == kid
        claims = json.loads(base64.urlsafe_b64decode(lic["token"].split(".")[1] + "=="))
        assert claims["titles"] == ["1"] and claims["exp"] - claims["iat"] == 300 and claims["sub"]


def test_the_page_renews_the_grant_so_playback_outlasts_it(world):
    """origin/web/static/grant.js, the file the page loads, run by Node against /play and the POP:
    a player fetching a segment and retrying its manifest every 2 s for 34 s, with a 20-s grant,
    is never refused; the same requests with the first grant frozen are 403 once it expires."""
    viewer = cli(world["config"], "token", "--client", "viewer-app", "--scope", "view").strip()
    out = subprocess.run(
        ["node", str(BROWSER_DIR / "renew_grant.mjs"), str(GRANT_JS), world["origin"], "1", viewer,
         "/titles/1/v5/video-1/seg-1.m4s", "34"],
        capture_output=True, text=True, timeout=90, env={**os.environ, "NODE_EXTRA_CA_CERTS": world["ca"]})
    assert out.returncode == 0, out.stderr
    *rounds, summary = [json.loads(line) for line in out.stdout.splitlines()]
    assert summary["summary"] and summary["first_expires_in"] == 20 and summary["seconds"] > 30
    assert summary["renewals"] >= 2 and summary["gave_up"] == [], summary
    assert all(r["segment"] == 200 and r["manifest"] == 200 for r in rounds), rounds
    assert all(r["licence_auth"] and r["signatures_in_manifest_url"] == 1 for r in rounds), rounds
    # The control: the first grant alone (what the page did before) stops working at 20 s.
    assert rounds[0]["frozen"] == 200 and rounds[-1]["frozen"] == 403, rounds


def test_withdrawal_reaches_the_origin_and_the_cdn(world):
    catalogue = world["catalogue"]
    config = world["config"]
    viewer = cli(config, "token", "--client", "viewer-app", "--scope", "view").strip()
    with _origin(world) as c:
        doc = c.get("/api/titles/1/play", headers={"authorization": f"Bearer {viewer}"}).json()
    with httpx.Client(timeout=15, trust_env=False) as c:
        assert c.get(doc["dash"]).status_code == 200  # cached at the POP (immutable for a day)
    title = catalogue.set_state(1, TitleState.WITHDRAWN)
    request_cdn_purge(catalogue, title)
    request_cdn_purge(catalogue, title)  # idempotent: one change, one purge
    with _origin(world) as origin, httpx.Client(timeout=15, trust_env=False) as edge:
        deadline = time.monotonic() + 10
        while True:
            o = origin.get("/titles/1/v5/manifest.mpd").status_code
            e = edge.get(doc["dash"]).status_code
            if (o, e) == (410, 410):
                break
            assert time.monotonic() < deadline, (o, e)
            time.sleep(0.1)
        r = origin.get("/api/titles/1/play", headers={"authorization": f"Bearer {viewer}"})
        assert r.status_code == 410 and r.json()["error"] == "withdrawn"
        health = httpx.get(f"http://127.0.0.1:{world['ports']['origin_admin']}/healthz", timeout=5).json()
        assert health["purges_sent"] == 1 and health["purges_failed"] == 0
