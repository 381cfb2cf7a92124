"""Published titles play on without waiting while the catalogue's PostgreSQL is down (updegraded):
a real origin (``headwater node origin``, ``backend = "postgresql"``, the local search index) on
a throwaway PostgreSQL server this module stops mid-run with ``pg_ctl stop -m immediate``, the
object store cluster holding two published titles' objects; segments asked over HTTP with httpx.

Covered: once the catalogue's database breaker knows the database is down (a failed publish
lookup, or the search index's worker, told it), a segment's publish lookup does not wait for
the pool (``connect_timeout_seconds``, 3 s here) each ``publish_cache_seconds`` (1 s): every
segment answer after the first is quick (< 0.5 s) for several seconds, across many cache
expiries, for the title that failed first and for another title too; the bytes are right.
PostgreSQL back: a title withdrawn meanwhile is no longer served once the breaker closes (the
search index's worker reaches the database).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from headwater.bench.postgres_server import start_postgres
from headwater.origin.catalogue import CatalogueConfig, Rendition, TitleDraft, TitleState, open_catalogue
from tests.cluster import free_ports
from tests.functional.origin_harness import ORIGIN_CLIENTS, Daemon

from .postgres_server import find_initdb, stop_immediately

CONNECT_TIMEOUT_S = 3
RETRY_S = 30         # search_retry_seconds: the breaker's interval, longer than the outage's checks
QUICK_S = CONNECT_TIMEOUT_S / 2  # a segment answered without waiting for the pool (which takes 3 s)
OUTAGE_S = 5         # how long segments are asked during the outage (5 publish cache expiries)

SECTIONS = """
[origin]
id = "origin"
port = {port}
admin_port = {admin}
tls = false
uploads_bucket = "uploads"

[origin.catalogue]
backend = "postgresql"
dsn = "{dsn}"
connect_timeout_seconds = {connect}
search_wait_seconds = 1
search_retry_seconds = {retry}

[origin.delivery]
publish_cache_seconds = 1

""" + ORIGIN_CLIENTS

MPD = b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"></MPD>\n'
M3U8 = b"#EXTM3U\n#EXT-X-VERSION:7\n"
SEGMENT = os.urandom(50_000)



@pytest.fixture(scope="module")
def world(cluster, s3):
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    root = Path(tempfile.mkdtemp(prefix="hw-pg-publish-down-"))
    pg_port, port, admin = free_ports(3)
    pg = start_postgres(port=pg_port, data_dir=root, settings={"synchronous_commit": "on"})
    state = {"pg": pg, "daemon": None}
    try:
        s3.create_bucket(Bucket="videos")
        with open_catalogue(CatalogueConfig(backend="postgresql", dsn=pg.dsn())) as cat:
            ids = []
            for title in ("Harbour Lights", "Harbour Of Ghosts"):
                t = cat.create_title(TitleDraft(title=title, category="drama", year=2000, owner="creator-app"))
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
            f.write(SECTIONS.format(port=port, admin=admin, dsn=pg.dsn(), connect=CONNECT_TIMEOUT_S,
                                    retry=RETRY_S))
        log = cluster.root / "logs" / "origin-publish-down.out"
        state.update(ids=ids, url=f"http://127.0.0.1:{port}", log=log, root=root,
                     daemon=Daemon(cluster.config_path, "origin", admin, log).wait())
        yield state
    finally:
        if state["daemon"] is not None:
            state["daemon"].stop()
        state["pg"].stop()
        shutil.rmtree(root, ignore_errors=True)


def _segment(world, title_id: int) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.get(f"{world['url']}/titles/{title_id}/v1/video-1/seg-1.m4s", timeout=30, trust_env=False)
    return r, time.monotonic() - t0


def test_segments_do_not_wait_for_the_pool_once_the_breaker_knows_the_database_is_down(world):
    first, second = world["ids"]
    for title_id in (first, second):  # played while the database is up: their verdicts are kept
        r, _ = _segment(world, title_id)
        assert r.status_code == 200 and r.content == SEGMENT, r.text
    stop_immediately(world["pg"])

    # The first lookup after the outage began may wait for the pool (it is what tells the
    # breaker, unless the search index's worker already has).
    time.sleep(1.1)  # past publish_cache_seconds: the next answer needs a lookup
    r, took = _segment(world, first)
    assert r.status_code == 200 and r.content == SEGMENT, r.text
    assert took < CONNECT_TIMEOUT_S + 2, took

    # From then on, no answer waits: each second (the publish cache's TTL) a lookup skips the
    # database, for this title and for the other one, whose own lookup never failed.
    times = []
    end = time.monotonic() + OUTAGE_S
    while time.monotonic() < end:
        for title_id in (first, second):
            r, took = _segment(world, title_id)
            assert r.status_code == 200 and r.content == SEGMENT, r.text
            times.append(round(took, 3))
        time.sleep(0.2)
    assert len(times) >= 10 and max(times) < QUICK_S, times

    # PostgreSQL back, a title withdrawn meanwhile: no longer served once a lookup gets through.
    world["pg"] = start_postgres(port=world["pg"].port, data_dir=world["root"], settings={"synchronous_commit": "on"})
    with open_catalogue(CatalogueConfig(backend="postgresql", dsn=world["pg"].dsn())) as cat:
        cat.set_state(second, TitleState.WITHDRAWN)
    deadline = time.monotonic() + RETRY_S + CONNECT_TIMEOUT_S + 15
    while _segment(world, second)[0].status_code == 200:
        assert time.monotonic() < deadline, world["log"].read_text()[-3000:]
        time.sleep(0.2)
    r, _ = _segment(world, first)
    assert r.status_code == 200 and r.content == SEGMENT
