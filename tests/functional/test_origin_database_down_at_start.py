"""An origin (re)started while its catalogue's PostgreSQL is down comes up and serves what it can
(origindb): a real origin (``headwater node origin``, ``backend = "postgresql"``, the local
search index) on a throwaway PostgreSQL server this module starts and stops with
``pg_ctl stop -m immediate``, the object store cluster holding a published title's objects;
titles seeded through the catalogue itself; everything asked over HTTP with httpx.

Covered: the origin stopped, then PostgreSQL, then the origin started again: it is up within a
bound; /healthz answers "degraded" (503) naming the catalogue's database, /metrics
``hw_origin_catalogue_available 0``; a published title played before the restart plays on
(manifest and segment: its published version as the catalogue last confirmed it, kept in the
data dir), one never played here and a title's page answer 503 ``catalogue_unavailable`` with
Retry-After; a search answers from the local index kept from before, marked stale by the time
the file recorded (``stale_seconds``, ``X-Search-Stale``); a catalogue write (PATCH) answers
503 JSON with Retry-After, quickly. PostgreSQL started again: without a restart of the origin,
within a bound, searches are fresh, the write succeeds, the title plays and /healthz is ok; the
purge loop logged the outage once (it backs off) rather than once a second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from headwater.origin.catalogue import CatalogueConfig, Rendition, TitleDraft, TitleState, open_catalogue
from tests.cluster import free_ports
from tests.functional.licence_harness import cli
from tests.functional.origin_harness import ORIGIN_CLIENTS, Daemon

from .postgres_server import find_initdb, stop_immediately
from headwater.bench.postgres_server import start_postgres

STALE_MAX_S = 600
DURABLE = {"synchronous_commit": "on"}
START_BOUND_S = 20   # the origin answers /healthz within this of its start, PostgreSQL down
BACK_BOUND_S = 30    # and serves everything within this of PostgreSQL's return

SECTIONS = """
[origin]
id = "origin"
port = {port}
admin_port = {admin}
tls = false
uploads_bucket = "uploads"
part_size = "5MiB"
max_upload_size = "64MiB"

[origin.catalogue]
backend = "postgresql"
dsn = "{dsn}"
search_wait_seconds = 1
search_retry_seconds = 1
search_stale_max_seconds = {stale_max}

[origin.delivery]
publish_cache_seconds = 1

""" + ORIGIN_CLIENTS

TITLES = [("Harbour Lights", "drama", 1998), ("Harbour Of Ghosts", "horror", 2004),
          ("The Quiet Harbour", "documentary", 2019)]
MPD = b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"></MPD>\n'
M3U8 = b"#EXTM3U\n#EXT-X-VERSION:7\n"
SEGMENT = os.urandom(100_000)



@pytest.fixture(scope="module")
def world(cluster, s3):
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    root = Path(tempfile.mkdtemp(prefix="hw-pg-start-down-"))
    pg_port, port, admin = free_ports(3)
    pg = start_postgres(port=pg_port, data_dir=root, settings=DURABLE)
    state = {"pg": pg, "daemon": None}
    try:
        s3.create_bucket(Bucket="videos")
        with open_catalogue(CatalogueConfig(backend="postgresql", dsn=pg.dsn())) as cat:
            ids = []
            for title, category, year in TITLES:
                t = cat.create_title(TitleDraft(title=title, category=category, year=year, owner="creator-app"))
                for s in (TitleState.TRANSCODING, TitleState.PACKAGED):
                    cat.set_state(t.id, s)
                prefix = f"titles/{t.id}/v1"
                for key, body in ((f"{prefix}/manifest.mpd", MPD), (f"{prefix}/master.m3u8", M3U8),
                                  (f"{prefix}/video-1/seg-1.m4s", SEGMENT)):
                    s3.put_object(Bucket="videos", Key=key, Body=body)
                cat.set_state(t.id, TitleState.PUBLISHED, renditions=[
                    Rendition(name="dash", codec="manifest", path=f"{prefix}/manifest.mpd"),
                    Rendition(name="hls", codec="manifest", path=f"{prefix}/master.m3u8")])
                ids.append(t.id)
        with open(cluster.config_path, "a") as f:
            f.write(SECTIONS.format(port=port, admin=admin, dsn=pg.dsn(), stale_max=STALE_MAX_S))
        state.update(ids=ids, url=f"http://127.0.0.1:{port}", admin=admin, config=cluster.config_path,
                     log=cluster.root / "logs" / "origin-start-down.out")
        yield state
    finally:
        if state["daemon"] is not None:
            state["daemon"].stop()
        state["pg"].stop()
        shutil.rmtree(root, ignore_errors=True)


def _get(world, path: str, **kw) -> httpx.Response:
    return httpx.get(f"{world['url']}{path}", timeout=30, trust_env=False, **kw)


def _search(world, q: str) -> httpx.Response:
    return _get(world, "/api/search", params={"q": q})


def _health(world) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{world['admin']}/healthz", timeout=10, trust_env=False)


def _metrics(world) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{world['admin']}/metrics", timeout=10, trust_env=False).text
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in text.splitlines() if line and not line.startswith("#"))
            if "{" not in name}


def _patch(world, tok: str, title_id: int, doc: dict) -> httpx.Response:
    return httpx.patch(f"{world['url']}/api/titles/{title_id}", json=doc, timeout=30, trust_env=False,
                       headers={"authorization": f"Bearer {tok}"})


def _hits(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def _plays(world, title_id: int) -> tuple[httpx.Response, httpx.Response]:
    return _get(world, f"/titles/{title_id}/v1/manifest.mpd"), _get(world, f"/titles/{title_id}/v1/video-1/seg-1.m4s")


def test_an_origin_started_while_postgresql_is_down_serves_what_it_can_then_everything(world):
    log: Path = world["log"]
    world["daemon"] = Daemon(world["config"], "origin", world["admin"], log).wait()
    deadline = time.monotonic() + 60
    while b"local search index built" not in log.read_bytes():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    fresh = _search(world, "harbour")
    assert fresh.json()["stale_seconds"] is None and sorted(h["id"] for h in _hits(fresh)) == sorted(world["ids"])
    manifest, segment = _plays(world, world["ids"][0])
    assert manifest.content == MPD and segment.content == SEGMENT
    # A token while everything is up (the issuer's key and the clients' secrets are the cluster's,
    # in the database; the origin keeps its copy of them).
    tok = cli(world["config"], "token", "--client", "creator-app", "--scope", "titles:write",
              "--origin", "origin").strip()
    assert _patch(world, tok, world["ids"][2], {"description": "before"}).status_code == 200

    world["daemon"].stop()
    world["daemon"] = None
    stop_immediately(world["pg"])
    stopped = time.monotonic()

    # Started while PostgreSQL is down: it comes up (degraded) rather than exit.
    started = time.monotonic()
    world["daemon"] = Daemon(world["config"], "origin", world["admin"], log)
    while True:
        assert world["daemon"].proc.poll() is None, log.read_text()[-3000:]
        try:
            health = _health(world)
            break
        except httpx.HTTPError:
            pass
        assert time.monotonic() - started < START_BOUND_S, log.read_text()[-3000:]
        time.sleep(0.1)
    assert health.status_code == 503, health.text
    doc = health.json()
    assert doc["status"] == "degraded" and doc["catalogue_database"] == "unavailable", doc
    assert doc["pid"] == world["daemon"].proc.pid
    assert _metrics(world)["hw_origin_catalogue_available"] == 0

    # Search: the index kept from before answers alone, stale since the time it recorded.
    t0 = time.monotonic()
    stale = _search(world, "harbour")
    assert time.monotonic() - t0 < 5
    assert _hits(stale) == _hits(fresh)
    age = stale.json()["stale_seconds"]
    assert isinstance(age, int) and 0 <= age <= time.monotonic() - stopped + 10, age
    assert stale.headers["x-search-stale"] == str(age)
    assert [h["title"] for h in _hits(_search(world, "quiet"))] == ["The Quiet Harbour"]

    # A title played before the restart plays on: its published version, as the catalogue last
    # confirmed it, was kept in the data dir (delivery/lastknown.py).
    manifest, segment = _plays(world, world["ids"][0])
    assert manifest.status_code == 200 and manifest.content == MPD, manifest.text
    assert segment.status_code == 200 and segment.content == SEGMENT
    assert _metrics(world)["hw_origin_publish_stale_answers"] >= 1
    # One this host never served, and the title's page: only the catalogue can say; a clean 503.
    for r in (*_plays(world, world["ids"][1]), _get(world, f"/api/titles/{world['ids'][0]}")):
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "catalogue_unavailable" and r.headers["retry-after"] == "5"

    # A catalogue write: 503 JSON with Retry-After, at once (no wait on the dead database).
    t0 = time.monotonic()
    r = _patch(world, tok, world["ids"][2], {"description": "during"})
    assert time.monotonic() - t0 < 5
    assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
    assert r.json()["error"] == "catalogue_unavailable" and r.headers["retry-after"] == "5"
    assert world["daemon"].proc.poll() is None

    # PostgreSQL back: everything served, no restart.
    pg = world["pg"]
    world["pg"] = pg = start_postgres(port=pg.port, data_dir=pg.root, settings=DURABLE)
    back = time.monotonic()
    while True:
        r = _search(world, "harbour")
        if r.status_code == 200 and r.json()["stale_seconds"] is None:
            break
        assert time.monotonic() - back < BACK_BOUND_S, r.text
        time.sleep(0.2)
    assert _hits(r) == _hits(fresh)
    r = _patch(world, tok, world["ids"][2], {"description": "after"})
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "after"
    manifest, segment = _plays(world, world["ids"][0])
    assert manifest.content == MPD and segment.content == SEGMENT
    while (health := _health(world)).status_code != 200:
        assert time.monotonic() - back < BACK_BOUND_S, health.text
        time.sleep(0.2)
    assert health.json()["catalogue_database"] == "available"
    assert _metrics(world)["hw_origin_catalogue_available"] == 1
    assert world["daemon"].proc.poll() is None
    text = log.read_text()
    assert "cannot be reached at start" in text and "the database answers; schema migrated" in text
    # The purge loop (a catalogue lease every second) logged the outage once and backed off.
    assert text.count("the purge loop failed") == 1, text.count("the purge loop failed")
