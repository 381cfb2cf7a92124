"""A viewer's search keeps answering while the catalogue's PostgreSQL is down (issue 14): a real
origin (``headwater node origin``, ``[origin.catalogue] backend = "postgresql"``, the local
search index) on a throwaway PostgreSQL server this module starts and stops with
``pg_ctl stop -m immediate``; titles seeded and withdrawn through the catalogue itself (the
source of truth the origin's index is fed from); searches over HTTP with httpx.

Covered: the same hits (every field a result shows) marked stale (``X-Search-Stale``, the
JSON's ``stale_seconds``) once the database is gone; a title withdrawn while it was up never
shown; one bounded wait per ``search_retry_seconds``, not one per search; past
``search_stale_max_seconds`` 503 ``search_unavailable`` with Retry-After; the database back:
fresh answers again, and a title published then is found.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from headwater.origin.catalogue import CatalogueConfig, TitleDraft, TitleState, open_catalogue
from tests.cluster import free_ports
from tests.functional.origin_harness import ORIGIN_CLIENTS, Daemon

from .postgres_server import find_initdb, stop_immediately
from headwater.bench.postgres_server import start_postgres

STALE_MAX_S = 10
RETRY_S = 30
DURABLE = {"synchronous_commit": "on"}  # longer than the test's outage: only the worker's polls close the breaker

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
search_retry_seconds = {retry}
search_stale_max_seconds = {stale_max}

""" + ORIGIN_CLIENTS

TITLES = [("Harbour Lights", "drama", 1998, "en", 5400.0), ("Harbour Of Ghosts", "horror", 2004, "fr", 6100.0),
          ("The Quiet Harbour", "documentary", 2019, "de", 3000.0), ("Harbour Blues", "music", 2011, "en", 4200.0)]



@pytest.fixture(scope="module")
def world(cluster):
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    # A data folder kept across the stop, so the server restarts with its titles (crash recovery).
    root = Path(tempfile.mkdtemp(prefix="hw-pg-down-"))
    pg_port, port, admin = free_ports(3)
    # Commits durable before they are acknowledged (the test server's default is not): an
    # immediate stop then loses none, as on a production server.
    pg = start_postgres(port=pg_port, data_dir=root, settings=DURABLE)
    daemon = None
    state = {"pg": pg}
    try:
        with open_catalogue(CatalogueConfig(backend="postgresql", dsn=pg.dsn())) as cat:
            ids = []
            for title, category, year, language, duration in TITLES:
                t = cat.create_title(TitleDraft(title=title, category=category, year=year, language=language,
                                                duration_s=duration))
                for s in (TitleState.TRANSCODING, TitleState.PACKAGED, TitleState.PUBLISHED):
                    cat.set_state(t.id, s)
                ids.append(t.id)
        with open(cluster.config_path, "a") as f:
            f.write(SECTIONS.format(port=port, admin=admin, dsn=pg.dsn(), retry=RETRY_S, stale_max=STALE_MAX_S))
        log = cluster.root / "logs" / "origin-search-down.out"
        daemon = Daemon(cluster.config_path, "origin", admin, log).wait()
        # The origin builds its index from PostgreSQL at start; searches use the database until then.
        deadline = time.monotonic() + 60
        while b"local search index built" not in log.read_bytes():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        state.update(ids=ids, url=f"http://127.0.0.1:{port}", admin=admin, log=log)
        yield state
    finally:
        if daemon is not None:
            daemon.stop()
        state["pg"].stop()
        shutil.rmtree(root, ignore_errors=True)


def _search(world, q: str) -> httpx.Response:
    return httpx.get(f"{world['url']}/api/search", params={"q": q}, timeout=30, trust_env=False)


def _metrics(world) -> dict[str, float]:
    """The origin's unlabelled series on its admin port's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{world['admin']}/metrics", timeout=10, trust_env=False).text
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in text.splitlines() if line and not line.startswith("#"))
            if "{" not in name}


def _hits(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_search_answers_stale_while_the_database_is_down_then_fresh_again(world):
    pg = world["pg"]
    fresh = _search(world, "harbour")
    assert "x-search-stale" not in fresh.headers and fresh.json()["stale_seconds"] is None
    assert sorted(h["id"] for h in _hits(fresh)) == sorted(world["ids"])

    # Withdrawn while the database is up: the next search applies it to the index.
    gone = world["ids"][1]
    with open_catalogue(CatalogueConfig(backend="postgresql", dsn=pg.dsn())) as cat:
        cat.set_state(gone, TitleState.WITHDRAWN)
    fresh = _search(world, "harbour")
    assert fresh.json()["stale_seconds"] is None
    assert gone not in {h["id"] for h in _hits(fresh)}
    ghosts = _search(world, "ghosts")
    assert _hits(ghosts) == [] and ghosts.json()["stale_seconds"] is None

    stop_immediately(pg)
    stopped = time.monotonic()
    t0 = time.monotonic()
    stale = _search(world, "harbour")
    first_s = time.monotonic() - t0
    doc = stale.json()
    # The same page (every field a result shows), from the index alone, marked stale.
    assert _hits(stale) == _hits(fresh)
    assert doc["total"] == fresh.json()["total"] and doc["facets"] == fresh.json()["facets"]
    assert isinstance(doc["stale_seconds"], int) and 0 <= doc["stale_seconds"] <= STALE_MAX_S
    assert stale.headers["x-search-stale"] == str(doc["stale_seconds"])
    assert stale.headers["cache-control"] == "no-store"
    assert first_s < 5, first_s  # one bounded wait (search_wait_seconds) at most
    # The withdrawn title: never shown, whatever the query.
    for q in ("ghosts", "harbour of ghosts", "horror"):
        r = _search(world, q)
        assert gone not in {h["id"] for h in _hits(r)} and r.json()["stale_seconds"] is not None
    # The breaker: a dead database costs no further wait within search_retry_seconds.
    t0 = time.monotonic()
    for _ in range(10):
        r = _search(world, "quiet harbour")
        assert [h["title"] for h in _hits(r)][:1] == ["The Quiet Harbour"] and "x-search-stale" in r.headers
    assert time.monotonic() - t0 < 4, "each search waited on the dead database"
    # /healthz says "degraded" meanwhile (it counts the upload records, kept in the database),
    # within its own bound rather than the pool's connect timeout.
    t0 = time.monotonic()
    health = httpx.get(f"http://127.0.0.1:{world['admin']}/healthz", timeout=10, trust_env=False)
    assert health.status_code == 503 and time.monotonic() - t0 < 3, health.text
    assert health.json()["status"] == "degraded" and health.json()["catalogue_database"] == "unavailable"
    metrics = _metrics(world)
    assert metrics["hw_origin_search_stale_answers"] >= 14 and metrics["hw_origin_search_database_skipped"] == 1
    assert 0 <= metrics["hw_origin_search_index_age_seconds"] <= STALE_MAX_S

    # Past the staleness bound: 503 with a JSON error, never an older page.
    deadline = stopped + STALE_MAX_S + 30
    while (r := _search(world, "harbour")).status_code == 200:
        assert int(r.headers["x-search-stale"]) <= STALE_MAX_S + 1
        assert time.monotonic() < deadline, "still answering past the staleness bound"
        time.sleep(0.5)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "search_unavailable" and "old" in r.json()["message"]
    assert r.headers["retry-after"] == "5" and r.headers["content-type"] == "application/json"
    assert _metrics(world)["hw_origin_search_unavailable"] >= 1

    # The database back: fresh answers again (the worker reaches it and the index catches up).
    world["pg"] = pg = start_postgres(port=pg.port, data_dir=pg.root, settings=DURABLE)
    deadline = time.monotonic() + 60
    while True:
        r = _search(world, "harbour")
        if r.status_code == 200 and r.json()["stale_seconds"] is None:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert "x-search-stale" not in r.headers and _hits(r) == _hits(fresh)
    with open_catalogue(CatalogueConfig(backend="postgresql", dsn=pg.dsn())) as cat:
        t = cat.create_title(TitleDraft(title="Harbour After The Storm", category="drama"))
        for s in (TitleState.TRANSCODING, TitleState.PACKAGED, TitleState.PUBLISHED):
            cat.set_state(t.id, s)
    r = _search(world, "storm")
    assert [h["id"] for h in _hits(r)] == [t.id] and r.json()["stale_seconds"] is None
    log = world["log"].read_text()
    assert "searches answer from the local search index alone" in log and "searches are current" in log
    assert _metrics(world)["hw_origin_search_database_skipped"] == 0
