"""The whole origin flow on real daemons, as a creator and a viewer see it: an object store
cluster, ``headwater node licence``, ``headwater node origin`` (TLS "auto" from the local CA, the
built-in issuer) and ``headwater node transcoder``, each its own process, driven only through
their public interfaces. The origin speaks plain HTTP here (``tls = false``): the static ffprobe
8.1 is built with mbedTLS, which refuses the local CA's certificate (its critical Name
Constraints extension), so HTTPS to the origin is left to ``test_origin_delivery.py``; the
licence server is on HTTPS with the local CA.

A creator's token (``upload titles:write``) from the built-in issuer; a 10-second ``testsrc2``
clip uploaded with ``tuspy`` (stopped half-way, resumed by a second uploader from the server's
offset); ``POST /api/titles``; ``GET /api/titles/T`` polled through ``transcoding`` (progress
only going up; the transcoder's ffmpeg held until the poll has seen it: ``ffmpeg_hold.py``) to
``published``; a search with a typo finds it; a viewer's token gets ``/play``;
the HLS master and a segment are fetched through an edge POP and its shield (in-process, as
``test_origin_delivery.py`` runs them) from the origin, and ffprobe reads the HLS URL on the POP;
the licence server answers the /play licence token with the title's key for the KID in the
MPD's ``cenc:default_KID``.

A title whose ffmpeg fails (``ffmpeg_hold.py``'s failing mode: exit 1 with an error) is seen
``transcoding`` with the retry's error, then ``failed`` with ffmpeg's, nothing of it in the
videos bucket; ``POST /api/titles/T/retry`` with a working ffmpeg publishes it (poster and
thumbnail track in the title doc and /play, served); withdrawn and retried again, it publishes a
new version: the old one is 404 at the origin and, after the publish's surrogate-key purge, at
the POP that had cached it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import re
import sqlite3
import ssl
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urljoin

import anyio
import anyio.from_thread
import httpx
import pytest
from tusclient import client as tus_client

from headwater import localca
from headwater.config import load
from headwater.drm.client import EntitlementMinter, open_title_keys
from headwater.edge.daemon import run_edge
from tests.cluster import free_ports
from tests.functional.drm_media import FFPROBE, make_clip
from tests.functional.ffmpeg_hold import FfmpegHold
from tests.functional.licence_harness import cli
from tests.functional.origin_harness import (LICENCE_SECTION, ORIGIN_CLIENTS, POP_AND_SHIELD, TRANSCODER_SECTION,
                                             Daemon)

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")
CENC = "{urn:mpeg:cenc:2013}"

SECTIONS = """
[origin]
port = {origin}
admin_port = {origin_admin}
tls = false

[origin.delivery]
publish_cache_seconds = 1

[origin.catalogue]
job_max_attempts = 2
backoff_base_seconds = 3

""" + ORIGIN_CLIENTS + """
""" + LICENCE_SECTION + """
""" + TRANSCODER_SECTION.replace("[transcoder]\n", "[transcoder]\n{transcoder_ffmpeg}") + POP_AND_SHIELD


@pytest.fixture(scope="module")
def world(cluster):
    names = ("origin", "origin_admin", "licence", "licence_admin", "licence_rpc", "transcoder_admin", "pop", "pop_admin", "shield",
             "shield_admin")
    p = dict(zip(names, free_ports(len(names))))
    hold = FfmpegHold(cluster.root)
    with open(cluster.config_path, "a") as f:
        f.write(SECTIONS.format(transcoder_ffmpeg=hold.toml, **p))
    cfg = load(str(cluster.config_path))
    # The local CA and the licence token secret made once here, as `headwater up` would, so the
    # daemons do not race to create them.
    localca.prepare(cfg)
    EntitlementMinter(cfg)
    logs = cluster.root / "logs"
    # The licence node first: it makes the key store's KEK the transcoder then opens.
    daemons = [Daemon(cluster.config_path, "licence", p["licence_admin"], logs / "licence.out").wait()]
    try:
        daemons += [Daemon(cluster.config_path, "origin", p["origin_admin"], logs / "origin.out"),
                    Daemon(cluster.config_path, "transcoder", p["transcoder_admin"], logs / "transcoder.out")]
        for d in daemons:
            d.wait()
        # The edge (a POP and its shield) in-process through the role's entry point, as
        # test_origin_delivery.py runs it: /play's URLs are on the POP.
        with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
            edges = [portal.start_task(functools.partial(run_edge, cfg, cfg.daemon(i)))[0]
                     for i in ("shield-1", "pop-1")]
            try:
                yield {"cfg": cfg, "config": cluster.config_path, "ports": p, "logs": logs,
                       "url": f"http://127.0.0.1:{p['origin']}", "pop": f"http://127.0.0.1:{p['pop']}",
                       "ca": str(cluster.data_dir / "ca" / "ca.pem"), "ffmpeg_hold": hold}
            finally:
                for e in edges:
                    e.cancel()
    finally:
        for d in reversed(daemons):
            d.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_video_file_becomes_a_playable_encrypted_title(world, tmp_path):
    config, ca = world["config"], world["ca"]
    creator = cli(config, "token", "--client", "creator-app", "--scope", "upload titles:write").strip()
    viewer = cli(config, "token", "--client", "viewer-app", "--scope", "view").strip()
    clip = make_clip(tmp_path / "clip.mp4", seconds=10, size="320x180", gop=25)

    # tuspy: the first uploader stops half-way; a second one resumes from the server's offset.
    client = tus_client.TusClient(f"{world['url']}/uploads", headers=bearer(creator))
    size = clip.stat().st_size
    first = client.uploader(str(clip), chunk_size=64 * 1024, metadata={"filename": "clip.mp4"})
    first.upload(stop_at=size // 2)
    second = client.uploader(str(clip), url=first.url, chunk_size=64 * 1024, upload_checksum=True)
    assert 0 < second.offset < size
    second.upload()
    upload_id = first.url.rsplit("/", 1)[1]

    http = httpx.Client(base_url=world["url"], timeout=30, trust_env=False)
    # The clip is encoded in well under a second and the title is transcoding for ~1.5 s: a
    # poll slowed by a loaded machine could miss it. So ffmpeg waits (the title transcoding,
    # its download reported) until a poll has seen that, and is released then.
    with http, world["ffmpeg_hold"].held() as hold:
        r = http.post("/api/titles", headers=bearer(creator),
                      json={"title": "Midnight Lighthouse", "category": "documentary", "year": 2026,
                            "language": "en", "upload": upload_id})
        assert r.status_code == 201, r.text
        tid = r.json()["id"]

        # Status, as the creator polls it: uploaded -> transcoding (progress only going up) -> published.
        states, progress = [], []
        deadline = time.monotonic() + 90
        while True:
            doc = http.get(f"/api/titles/{tid}", headers=bearer(creator)).json()
            if not states or states[-1] != doc["state"]:
                states.append(doc["state"])
            progress.append(doc["progress"])
            if doc["state"] == "transcoding" and 0 < doc["progress"] < 100:
                hold.release()
            if doc["state"] in ("published", "failed"):
                break
            assert time.monotonic() < deadline, (states, progress, _tail(world, "transcoder"))
            time.sleep(0.1)
        assert doc["state"] == "published", (doc["error"], _tail(world, "transcoder"))
        assert "transcoding" in states and states[-1] == "published", states
        assert progress == sorted(progress) and progress[-1] == 100, progress  # per cent
        assert any(0 < x < 100 for x in progress), progress  # reported while it ran, not only at the end
        by_name = {r["name"]: r for r in doc["renditions"]}
        assert {"dash", "hls", "180p", "90p"} <= set(by_name), by_name
        version = by_name["hls"]["path"].rsplit("/", 1)[0]
        assert re.fullmatch(rf"titles/{tid}/v\d+-1", version), version

        # Search: public, typo-tolerant.
        hits = http.get("/api/search", params={"q": "lighthuose"}).json()["hits"]
        assert tid in [h["id"] for h in hits], hits

        # Playback: a viewer's token; the manifests on the POP, which fetches from the origin.
        assert http.get(f"/api/titles/{tid}/play").status_code == 401
        r = http.get(f"/api/titles/{tid}/play", headers=bearer(viewer))
        assert r.status_code == 200, r.text
        play = r.json()
        assert http.get(f"/{version}/master.m3u8").headers["surrogate-key"] == f"title-{tid}"  # the origin's own URL
        base = f"{world['pop']}/{version}/"
        assert play["hls"].startswith(base + "master.m3u8") and play["dash"].startswith(base + "manifest.mpd")
        master = http.get(play["hls"])
        assert master.status_code == 200 and "shield-1" in master.headers["via"], master.headers
        variant = next(line for line in master.text.splitlines() if line and not line.startswith("#"))
        media = http.get(urljoin(play["hls"], variant))
        assert media.status_code == 200, media.text
        segment = next(line for line in media.text.splitlines() if line and not line.startswith("#"))
        seg = http.get(urljoin(str(media.url), segment))
        assert seg.status_code == 200 and len(seg.content) > 1000
        assert "immutable" in seg.headers["cache-control"]
        mpd = http.get(play["dash"])
        assert mpd.status_code == 200

    # ffprobe reads the HLS master and what it names from the origin (the ClearKey key URI in the
    # playlists is a data: URI, which ffmpeg allows only with -allowed_extensions ALL).
    probe = subprocess.run([FFPROBE, "-v", "error", "-allowed_extensions", "ALL",
                            "-show_entries", "stream=codec_type,width,height", "-of", "csv=p=0", play["hls"]],
                           capture_output=True, text=True, timeout=60)
    assert "video,320,180" in probe.stdout and "video,160,90" in probe.stdout and "audio" in probe.stdout, \
        probe.stdout + probe.stderr[-2000:]

    # The licence: the /play token buys the title's key for the MPD's KID.
    kids = {e.get(f"{CENC}default_KID") for e in ET.fromstring(mpd.content).iter()} - {None}
    assert len(kids) == 1, kids
    kid = uuid.UUID(kids.pop()).bytes
    b64 = base64.urlsafe_b64encode(kid).rstrip(b"=").decode()
    lic = play["licence"]
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=15, trust_env=False) as c:
        r = c.post(lic["url"], headers=bearer(lic["token"]), json={"kids": [b64], "type": "temporary"})
    assert r.status_code == 200, r.text
    (key,) = r.json()["keys"]
    keys = open_title_keys(world["cfg"])
    try:
        expected = keys.get(kid).key
        assert [i.kid for i in keys.infos(str(tid))] == [kid]
    finally:
        keys.close()
    assert key["kid"] == b64
    assert base64.urlsafe_b64decode(key["k"] + "==") == expected
    # The transcoder took the key over the licence server's keys.title RPC (rpc_port is set).
    health = httpx.get(f"http://127.0.0.1:{world['cfg'].licence.admin_port}/healthz", timeout=5).json()
    assert health["keys_served"] >= 1 and health["keys_refused"] == 0


def _wait_state(http, tid: int, token: str, done: tuple[str, ...], world, timeout_s: float = 90) -> list[dict]:
    """The creator's polls of the title until its state is one of ``done``: every doc seen."""
    docs = []
    deadline = time.monotonic() + timeout_s
    while True:
        docs.append(http.get(f"/api/titles/{tid}", headers=bearer(token)).json())
        if docs[-1]["state"] in done:
            return docs
        assert time.monotonic() < deadline, (docs[-1], _tail(world, "transcoder"))
        time.sleep(0.1)


def _origin_health(world) -> dict:
    return httpx.get(f"http://127.0.0.1:{world['ports']['origin_admin']}/healthz", timeout=5).json()


def test_a_failed_title_is_retried_and_republished(world, tmp_path, s3):
    config, hold = world["config"], world["ffmpeg_hold"]
    creator = cli(config, "token", "--client", "creator-app", "--scope", "upload titles:write").strip()
    viewer = cli(config, "token", "--client", "viewer-app", "--scope", "view").strip()
    data = make_clip(tmp_path / "clip.mp4", seconds=4, size="320x180", gop=25).read_bytes()
    http = httpx.Client(base_url=world["url"], timeout=30, trust_env=False)
    with http:
        r = http.post("/uploads", content=data, headers={**bearer(creator), "tus-resumable": "1.0.0",
                                                         "upload-length": str(len(data)),
                                                         "content-type": "application/offset+octet-stream"})
        assert r.status_code == 201, r.text
        upload_id = r.headers["location"].rsplit("/", 1)[1]

        # ffmpeg fails: the title is retried (transcoding, the attempt's error shown), then failed.
        with hold.failing():
            r = http.post("/api/titles", headers=bearer(creator), json={"title": "Lantern Ferry", "upload": upload_id})
            assert r.status_code == 201, r.text
            tid = r.json()["id"]
            docs = _wait_state(http, tid, creator, ("failed", "published"), world)
        failed = docs[-1]
        assert failed["state"] == "failed" and hold.FAILURE in failed["error"], failed
        retrying = [d for d in docs if d["state"] == "transcoding" and d["error"]]
        assert retrying and "attempt 1 of 2 failed, retrying" in retrying[0]["error"], docs
        assert hold.FAILURE in retrying[0]["error"]
        assert failed["renditions"] == [] and failed["poster"] is None and failed["thumbnails"] is None
        # No partial title: nothing to read, play or fetch, nothing of it in the bucket.
        assert http.get(f"/api/titles/{tid}").status_code == 404
        assert http.get(f"/api/titles/{tid}/play", headers=bearer(viewer)).status_code == 404
        assert s3.list_objects_v2(Bucket="videos", Prefix=f"titles/{tid}/").get("KeyCount", 0) == 0

        # The retry route: the owner's titles:write; 404 unknown, 401/403 without a token or the scope.
        assert http.post(f"/api/titles/{tid}/retry").status_code == 401
        r = http.post(f"/api/titles/{tid}/retry", headers=bearer(viewer))
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
        r = http.post("/api/titles/999999999/retry", headers=bearer(creator))
        assert r.status_code == 404 and r.json()["error"] == "title_not_found"
        assert http.get(f"/api/titles/{tid}/retry", headers=bearer(creator)).status_code == 405
        r = http.post(f"/api/titles/{tid}/retry", headers=bearer(creator))
        assert r.status_code == 202, r.text
        assert (r.json()["state"], r.json()["error"], r.json()["progress"]) == ("transcoding", None, 0)
        assert r.headers["location"] == f"/api/titles/{tid}"
        again = http.post(f"/api/titles/{tid}/retry", headers=bearer(creator))  # it is transcoding now
        assert again.status_code == 409 and again.json()["error"] == "illegal_transition", again.text
        doc = _wait_state(http, tid, creator, ("failed", "published"), world)[-1]
        assert doc["state"] == "published", (doc["error"], _tail(world, "transcoder"))
        first = next(r["path"] for r in doc["renditions"] if r["name"] == "hls").rsplit("/", 1)[0]

        # The poster and the thumbnail track: named by the title doc (public once published) and
        # by /play (on the POP, under the manifests' prefix), and served.
        public = http.get(f"/api/titles/{tid}").json()
        base = world["pop"]
        assert (public["poster"], public["thumbnails"]) == (f"{base}/{first}/poster.jpg",
                                                            f"{base}/{first}/thumbs/thumbs.vtt"), public
        # (/play reads a title's publication through a 1 s cache, which may still hold the 404
        # this test saw before the retry)
        deadline = time.monotonic() + 5
        while (r := http.get(f"/api/titles/{tid}/play", headers=bearer(viewer))).status_code == 404 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        play = r.json()
        assert "poster" in play, play
        assert play["poster"].startswith(public["poster"]) and play["thumbnails"].startswith(public["thumbnails"])
        poster = http.get(play["poster"])
        assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
        assert poster.content[:2] == b"\xff\xd8"
        vtt = http.get(play["thumbnails"])
        assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT") and "#xywh=" in vtt.text, vtt.text
        sprite = vtt.text.split("#xywh=")[0].split()[-1]
        assert http.get(urljoin(play["thumbnails"], sprite)).status_code == 200

        # A published title is not retried; withdrawn, it is.
        r = http.post(f"/api/titles/{tid}/retry", headers=bearer(creator))
        assert r.status_code == 409 and r.json()["error"] == "illegal_transition"
        assert http.get(f"{base}/{first}/master.m3u8").status_code == 200  # the POP holds the first version
        purged = _origin_health(world)["purges_sent"]
        assert http.post(f"/api/titles/{tid}/withdraw", headers=bearer(creator)).json()["state"] == "withdrawn"
        r = http.post(f"/api/titles/{tid}/retry", headers=bearer(creator))
        assert r.status_code == 202 and r.json()["state"] == "transcoding", r.text
        doc = _wait_state(http, tid, creator, ("failed", "published"), world)[-1]
        assert doc["state"] == "published", (doc["error"], _tail(world, "transcoder"))
        second = next(r["path"] for r in doc["renditions"] if r["name"] == "hls").rsplit("/", 1)[0]
        assert second != first and doc["poster"] == f"{base}/{second}/poster.jpg"
        # The old version is gone from the origin, the new one served (once the origin's 1 s cache
        # of the title's publication, which saw it withdrawn, has let go).
        deadline = time.monotonic() + 5
        while http.get(f"/{second}/master.m3u8").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        old = http.get(f"/{first}/master.m3u8")
        assert old.status_code == 404 and old.headers["surrogate-key"] == f"title-{tid}", old.text
        assert http.get(f"/{first}/poster.jpg").status_code == 404
        # The re-publish queued its surrogate-key purge through the publish path (as the first
        # publish and the withdrawal did), and the origin's purge worker sent it to the edge.
        catalogue = world["cfg"].data_dir / "origin" / "catalogue.sqlite3"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.closing(sqlite3.connect(catalogue)) as db:
                purges = db.execute("SELECT key, state FROM jobs WHERE kind = 'cdn-purge' AND title_id = ? "
                                    "ORDER BY id", (tid,)).fetchall()
            if _origin_health(world)["purges_sent"] >= purged + 2 and all(st == "done" for _, st in purges):
                break
            assert time.monotonic() < deadline, (purges, _origin_health(world), _tail(world, "origin"))
            time.sleep(0.2)
        assert [k.split(":")[2] for k, _ in purges] == ["published", "withdrawn", "published"], purges
        # The re-publish recorded the first version for the version collector (deleted after the
        # retention: test_origin_transcode.py), never the second.
        with contextlib.closing(sqlite3.connect(catalogue)) as db:
            retired = dict(db.execute("SELECT prefix, reason FROM retired_versions WHERE title_id = ?", (tid,)))
        assert retired.get(f"{first.lstrip('/')}/") == "superseded" and f"{second.lstrip('/')}/" not in retired, retired
        # The POP: the origin's 404 for the old version (not its cached 200 or 410), the new one.
        deadline = time.monotonic() + 20
        while http.get(f"{base}/{first}/master.m3u8").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert http.get(f"{base}/{second}/master.m3u8").status_code == 200
        play = http.get(f"/api/titles/{tid}/play", headers=bearer(viewer)).json()
        assert play["hls"].startswith(f"{base}/{second}/") and play["poster"].startswith(f"{base}/{second}/")


def _tail(world, name: str) -> str:
    return (world["logs"] / f"{name}.out").read_text(errors="replace")[-3000:]
