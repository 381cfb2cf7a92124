"""The origin's catalogue API on the real daemon (``headwater node origin``, TLS from the local
CA, tokens from the built-in issuer) over an object store cluster, driven by httpx and tuspy.

Covered: a title made from a tuspy upload (201, Location, the transcode job queued with its key
and payload), re-posted (200, the same title, one job); status for its owner and 404 for anyone
else while unpublished; PATCH, withdraw, the owner's list; 401/403/404 for missing tokens, wrong
scopes and other owners; bad JSON, unknown fields, wrong types, a body over 64 KiB, an
unfinished or someone else's upload; search on a seeded catalogue (a few hundred published
titles through ``import_titles``, and unpublished ones no search returns): ranking, typos
(``night trian``), filters, paging, totals and facets; SQL-injection strings in every parameter
(400 or no hits, never 500, nothing changed); a retry (``POST /api/titles/T/retry``) refused for
a title that has not failed or whose job is still queued (409), for others (401/403/404), and
accepted for a failed one (202, transcoding, a new job under a new key, once); and the same API
on PostgreSQL (a second origin whose ``[origin.catalogue]`` names a real server).
"""

from __future__ import annotations

import json
import os

import psycopg
import pytest
from tusclient import client as tus_client

from headwater.origin.catalogue import CatalogueConfig, TitleState, open_catalogue

from tests.cluster import free_ports

from .catalogue_seed import HIDDEN, NAMED, generated
from .origin_harness import ORIGIN_SECTION, TUS, Origin, origin_fixture
from .postgres_server import find_initdb, start_postgres

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")
SEEDED = 300
EXTRA_CLIENTS = """
[[origin.clients]]
id = "other-app"
scopes = ["upload", "titles:read", "titles:write"]
secret = "sealed"
"""

origin = origin_fixture(EXTRA_CLIENTS)

INJECTIONS = ["' OR '1'='1", "'; DROP TABLE titles; --", "\" OR 1=1 --", "1; DELETE FROM titles",
              "night') UNION SELECT id, owner, upload, 1, 1, 1, 1 FROM titles --", "*", "NEAR(night train)",
              "title:night", "^night", "%' --", "\\'", "night & !train | (", "')::tsquery; --", "2020'..'2026"]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tokens(origin):
    return {
        "creator": origin.token("creator-app", "upload titles:write"),
        "upload_only": origin.token("creator-app", "upload"),
        "other": origin.token("other-app", "upload titles:read titles:write"),
        "viewer": origin.token("viewer-app", "view"),
    }


def tus_upload(origin: Origin, token: str, data: bytes) -> str:
    """A whole upload in one creation-with-upload request: its id."""
    with origin.http() as c:
        r = c.post("/uploads", content=data, headers={**bearer(token), **TUS, "upload-length": str(len(data)),
                                                      "content-type": "application/offset+octet-stream"})
    assert r.status_code == 201 and int(r.headers["upload-offset"]) == len(data), r.text
    return r.headers["location"].rsplit("/", 1)[1]


def catalogue_of(origin: Origin):
    return open_catalogue(CatalogueConfig(backend="sqlite", path=origin.cluster.data_dir / "origin" /
                                          "catalogue.sqlite3"))


@pytest.fixture(scope="module")
def seeded(origin):
    """Published titles (NAMED and generated ones) and unpublished ones, imported into the
    running origin's catalogue (SQLite: another process writes it as an operator's import would)."""
    with catalogue_of(origin) as cat:
        ids = cat.import_titles([*NAMED, *generated(SEEDED)], state=TitleState.PUBLISHED)
        hidden = cat.import_titles(HIDDEN)
    return {"published": ids, "hidden": hidden}


def test_title_from_a_tuspy_upload(origin, tokens, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", origin.ca)
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(300_000))
    uploader = tus_client.TusClient(f"{origin.url}/uploads", headers=bearer(tokens["creator"])).uploader(
        str(path), chunk_size=128 * 1024, metadata={"filename": "clip.mp4"})
    uploader.upload()
    upload_id = uploader.url.rsplit("/", 1)[1]
    body = {"title": "Harbour Lights", "description": "Boats at night.", "category": "documentary",
            "year": 2025, "language": "en", "duration_s": 12.5,
            "people": ["Ana Ruiz", {"name": "Li Chen", "role": "director"}], "upload": upload_id}
    with origin.http() as c:
        r = c.post("/api/titles", json=body, headers=bearer(tokens["creator"]))
        assert r.status_code == 201, r.text
        doc = r.json()
        tid = doc["id"]
        assert r.headers["location"] == f"/api/titles/{tid}"
        assert doc["state"] == "uploaded" and doc["progress"] == 0 and doc["error"] is None
        assert doc["owner"] == "creator-app" and doc["upload"] == upload_id and doc["renditions"] == []
        assert doc["people"] == [{"name": "Ana Ruiz", "role": "cast"}, {"name": "Li Chen", "role": "director"}]
        assert doc["created"].endswith("Z")
        # A retried POST (same upload, same owner): the same title, whatever the new body says.
        again = c.post("/api/titles", json={**body, "title": "Other"}, headers=bearer(tokens["creator"]))
        assert again.status_code == 200 and again.json()["id"] == tid and again.json()["title"] == "Harbour Lights"
        assert again.headers["location"] == f"/api/titles/{tid}"

        # A tus termination of the upload a title was made from removes the upload (404 from now
        # on) and keeps its object: it is the title's source, which the transcode job names.
        creator_tus = {**TUS, **bearer(tokens["creator"])}
        assert c.delete(f"/uploads/{upload_id}", headers=creator_tus).status_code == 204
        assert c.head(f"/uploads/{upload_id}", headers=creator_tus).status_code == 404
        assert s3.head_object(Bucket="uploads", Key=f"uploads/{upload_id}")["ContentLength"] == 300_000

        # Status: the owner sees it; nobody else does while it is unpublished.
        assert c.get(f"/api/titles/{tid}", headers=bearer(tokens["creator"])).json()["state"] == "uploaded"
        for headers in ({}, bearer(tokens["other"]), bearer(tokens["viewer"]), bearer(tokens["upload_only"])):
            r = c.get(f"/api/titles/{tid}", headers=headers)
            assert r.status_code == 404 and r.json()["error"] == "title_not_found", headers
        assert c.get(f"/api/titles/{tid}", headers=bearer("not.a.token")).status_code == 401

        mine = c.get("/api/titles", params={"mine": "1"}, headers=bearer(tokens["creator"])).json()
        assert [t["id"] for t in mine["titles"]] == [tid] and mine["next"] is None
        assert c.get("/api/titles?mine=1", headers=bearer(tokens["other"])).json()["titles"] == []

        # PATCH: the fields given change, the others stay; only the owner, with titles:write.
        r = c.patch(f"/api/titles/{tid}", json={"year": 2024, "category": None}, headers=bearer(tokens["creator"]))
        assert r.status_code == 200 and (r.json()["year"], r.json()["category"]) == (2024, None)
        assert r.json()["title"] == "Harbour Lights" and len(r.json()["people"]) == 2
        assert c.patch(f"/api/titles/{tid}", json={"year": 1}, headers=bearer(tokens["other"])).status_code == 404
        r = c.patch(f"/api/titles/{tid}", json={"year": 1}, headers=bearer(tokens["upload_only"]))
        assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["www-authenticate"]
        r = c.patch(f"/api/titles/{tid}", json={"year": 1})
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        r = c.patch(f"/api/titles/{tid}", json={"year": 1}, headers=bearer(tokens["creator"]))
        assert r.status_code == 422 and r.json()["error"] == "invalid_title"
        assert c.put(f"/api/titles/{tid}", json={}).status_code == 405

        # Withdraw (twice: the same answer), by DELETE and by POST .../withdraw.
        assert c.post(f"/api/titles/{tid}/withdraw", headers=bearer(tokens["other"])).status_code == 404
        r = c.delete(f"/api/titles/{tid}", headers=bearer(tokens["creator"]))
        assert r.status_code == 200 and r.json()["state"] == "withdrawn"
        r = c.post(f"/api/titles/{tid}/withdraw", headers=bearer(tokens["creator"]))
        assert r.status_code == 200 and r.json()["state"] == "withdrawn"

    # The transcode job, queued once with the interface's key and payload.
    with catalogue_of(origin) as cat:
        lease = cat.lease("test-worker", ["transcode"])
        assert lease is not None and cat.lease("test-worker", ["transcode"]) is None
        assert lease.job.key == f"transcode:{tid}:{upload_id}" and lease.job.title_id == tid
        assert lease.job.payload == {"bucket": "uploads", "key": f"uploads/{upload_id}"}
        cat.fail(lease, "test: not a transcoder", retry=False)


def test_create_refused(origin, tokens):
    mine = tus_upload(origin, tokens["creator"], b"x" * 1000)
    theirs = tus_upload(origin, tokens["other"], b"y" * 1000)
    with origin.http() as c:
        r = c.post("/uploads", headers={**bearer(tokens["creator"]), **TUS, "upload-length": "5000"})
        unfinished = r.headers["location"].rsplit("/", 1)[1]

        def post(body, token=tokens["creator"], **kw):
            content = body if isinstance(body, (bytes, str)) else json.dumps(body)
            return c.post("/api/titles", content=content, headers={**(bearer(token) if token else {}), **kw})

        for body, error in [(b"{", "invalid_json"), (b"", "invalid_json"), (b"[1]", "invalid_json"),
                            (b"\xff\xfe", "invalid_json"), (b'{"title": NaN}', "invalid_json"),
                            (b"[" * 50_000, "invalid_json"),
                            (b'{"title": "a", "title": "b", "upload": "x"}', "invalid_json"),
                            ({"title": "T", "upload": mine, "rating": 5}, "invalid_json"),
                            ({"title": "T", "upload": mine, "year": "2020"}, "invalid_json"),
                            ({"title": "T", "upload": mine, "year": True}, "invalid_json"),
                            ({"title": "T", "upload": mine, "people": [{"name": 1}]}, "invalid_json"),
                            ({"title": 7, "upload": mine}, "invalid_json"),
                            ({"upload": mine}, "invalid_json"), ({"title": "T"}, "invalid_json"),
                            ({"title": " ", "upload": mine}, "invalid_title"),
                            ({"title": "T", "upload": mine, "year": 1492}, "invalid_title")]:
            r = post(body)
            assert r.status_code == (422 if error == "invalid_title" else 400), (body[:40], r.text)
            assert r.json()["error"] == error and r.headers["content-type"] == "application/json"
        r = post({"title": "T", "upload": mine, "description": "d" * 70_000})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        for upload, status, error in [("0" * 32, 404, "not_found"), ("../../etc", 404, "not_found"),
                                      (theirs, 404, "not_found"), (unfinished, 409, "upload_not_finished")]:
            r = post({"title": "T", "upload": upload})
            assert (r.status_code, r.json()["error"]) == (status, error), r.text
        assert post({"title": "T", "upload": mine}, token="").status_code == 401
        r = post({"title": "T", "upload": mine}, token=tokens["upload_only"])
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
        assert post({"title": "T", "upload": mine}, token=tokens["viewer"]).status_code == 403
        # None of it made a title.
        assert c.get("/api/titles?mine=1", headers=bearer(tokens["other"])).json()["titles"] == []
        assert post({"title": "Fine", "upload": mine}).status_code == 201


def _lease_title_jobs(cat, tid: int) -> list:
    """Lease every runnable transcode job: the title's are returned leased, the others are put
    back (no transcoder runs here)."""
    ours, others = [], []
    while (lease := cat.lease("test-worker", ["transcode"])) is not None:
        (ours if lease.job.title_id == tid else others).append(lease)
    for lease in others:
        cat.fail(lease, "test: put back", retry=True)
    return ours


def check_retry(origin: Origin, open_cat, tokens: dict[str, str]) -> None:
    """The retry route on ``origin`` (whose catalogue ``open_cat()`` opens)."""
    creator = tokens["creator"]
    upload = tus_upload(origin, creator, b"r" * 3000)
    with origin.http() as c:
        r = c.post("/api/titles", json={"title": "Second Try", "upload": upload}, headers=bearer(creator))
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        url = f"/api/titles/{tid}/retry"

        def retry(token=creator):
            return c.post(url, headers=bearer(token) if token else {})

        r = retry()  # uploaded, its job queued
        assert r.status_code == 409 and r.json()["error"] == "illegal_transition", r.text
        assert retry(None).status_code == 401
        assert retry(tokens["upload_only"]).status_code == 403
        assert retry(tokens["other"]).json()["error"] == "title_not_found"  # not told
        assert c.post("/api/titles/999999999/retry", headers=bearer(creator)).status_code == 404
        with open_cat() as cat:
            cat.set_state(tid, TitleState.FAILED, error="test: ffmpeg failed")
        r = retry()  # failed, but its job is still queued: a second one would publish twice
        assert r.status_code == 409 and "still queued" in r.json()["message"], r.text
        with open_cat() as cat:
            (lease,) = _lease_title_jobs(cat, tid)
            cat.fail(lease, "test: ffmpeg failed", retry=False)
        r = retry()
        assert r.status_code == 202, r.text
        doc = r.json()
        assert (doc["state"], doc["error"], doc["progress"], doc["id"]) == ("transcoding", None, 0, tid)
        r = retry()  # transcoding now: once
        assert r.status_code == 409 and r.json()["error"] == "illegal_transition"
        assert c.get(f"/api/titles/{tid}", headers=bearer(creator)).json()["state"] == "transcoding"
    with open_cat() as cat:
        (lease,) = _lease_title_jobs(cat, tid)
        assert lease.job.key.startswith(f"transcode:{tid}:{upload}:retry:"), lease.job.key
        assert lease.job.payload == {"bucket": "uploads", "key": f"uploads/{upload}"} and lease.job.attempts == 1
        cat.fail(lease, "test: not a transcoder", retry=False)


def test_retry(origin, tokens):
    check_retry(origin, lambda: catalogue_of(origin), tokens)


def search(c, **params):
    r = c.get("/api/search", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_search(origin, seeded):
    with origin.http() as c:
        doc = search(c, q="night trian")
        assert [h["title"] for h in doc["hits"][:2]] == ["Night Train", "Night Train to Lisbon"]
        assert doc["corrections"] == {"trian": "train"}
        assert "Night Train Secrets" not in json.dumps(doc)  # never published
        assert [h["title"] for h in search(c, q="night train", category="drama", year="2020..2026")["hits"]] \
            == ["Night Train"]
        assert search(c, q="ana ruiz")["hits"][0]["title"] == "Night Train"  # people
        assert search(c, q="lisb")["hits"][0]["title"] == "Night Train to Lisbon"  # prefix
        assert {h["language"] for h in search(c, q="night", language="nl")["hits"]} == {"nl"}
        assert [h["title"] for h in search(c, q="night", duration="..900")["hits"]] == ["Short Night"]
        # Paging through every drama title without words: disjoint pages, one total.
        first = search(c, category="drama", per_page=7)
        second = search(c, category="drama", per_page=7, page=2)
        assert first["total"] == second["total"] > 14 and first["total_exact"]
        assert first["pages"] == -(-first["total"] // 7) and first["next"].startswith("/api/search?")
        assert len(first["hits"]) == len(second["hits"]) == 7
        assert not {h["id"] for h in first["hits"]} & {h["id"] for h in second["hits"]}
        assert first["facets"]["category"] == {"drama": first["total"]}
        # Past exact_total_max (200) the total is "more than 200" and the facets count 201.
        everything = search(c, per_page=100)
        assert len(seeded["published"]) > 200 and everything["total"] == 200 and not everything["total_exact"]
        assert sum(everything["facets"]["category"].values()) == 201 and everything["pages"] == 2
        assert everything["next"] is not None
        assert c.get(f"/api/titles/{seeded['published'][0]}").json()["title"] == "Night Train"  # public
        assert c.get(f"/api/titles/{seeded['hidden'][0]}").status_code == 404
        cats = c.get("/api/categories").json()["categories"]
        assert {"slug": "drama", "name": "drama"} in cats
        assert {"code": "nl", "name": "nl"} in c.get("/api/languages").json()["languages"]
        for params in ({"page": "0"}, {"per_page": "1000"}, {"year": "2026..2020"}, {"page": "9999"},
                       {"q": "a b c d e f g h i j"}, {"q": "x" * 300}, {"year": "²"},
                       {"year": "--5"}, {"year": "1990..--5"}, {"duration": "--60"}):
            r = c.get("/api/search", params=params)
            assert r.status_code == 400 and r.json()["error"] == "bad_query", (params, r.text)
        assert c.post("/api/search").status_code == 405


def test_sql_injection_changes_nothing(origin, seeded):
    with catalogue_of(origin) as cat:
        before = len(cat.list_titles(limit=100, after_id=0)), cat.categories()
    with origin.http() as c:
        for s in INJECTIONS:
            for key in ("q", "category", "language", "year", "duration", "page", "per_page"):
                r = c.get("/api/search", params={key: s})
                assert r.status_code in (200, 400), (key, s, r.text)
                if r.status_code == 200:
                    assert key == "q" or r.json()["hits"] == [], (key, s)
                    assert "Night Train Secrets" not in r.text
            assert c.get(f"/api/titles/{s}").status_code in (404, 405)
        assert search(c, q="night train")["hits"][0]["title"] == "Night Train"
    with catalogue_of(origin) as cat:
        assert (len(cat.list_titles(limit=100, after_id=0)), cat.categories()) == before


@pytest.fixture(scope="module")
def postgres():
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    server = start_postgres()
    yield server
    server.stop()


def test_the_api_on_postgresql(origin, postgres):
    """A second origin host's configuration: [origin.catalogue] backend = "postgresql"."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE origin_api")
    dsn = postgres.dsn("origin_api")
    port, admin = free_ports(2)
    text = origin.cluster.config_path.read_text()
    text = text[:text.index("\n[origin]\n")] + ORIGIN_SECTION.format(port=port, admin=admin).replace(
        'id = "origin"', 'id = "origin-pg"') + EXTRA_CLIENTS + f'\n[origin.catalogue]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
    config = origin.cluster.root / "cluster-pg.toml"
    config.write_text(text)
    pg = Origin(origin.cluster, port, admin, config_path=config, name="origin-pg")
    pg.start()
    try:
        token = pg.token("creator-app", "upload titles:write")
        upload = tus_upload(pg, token, b"z" * 2000)
        with open_catalogue(CatalogueConfig(backend="postgresql", dsn=dsn)) as cat:
            cat.import_titles([*NAMED, *generated(50)], state=TitleState.PUBLISHED)
        check_retry(pg, lambda: open_catalogue(CatalogueConfig(backend="postgresql", dsn=dsn)),
                    {"creator": token, "upload_only": pg.token("creator-app", "upload"),
                     "other": pg.token("other-app", "upload titles:read titles:write")})
        with pg.http() as c:
            r = c.post("/api/titles", json={"title": "Night Train Reloaded", "upload": upload}, headers=bearer(token))
            assert r.status_code == 201, r.text
            again = c.post("/api/titles", json={"title": "Night Train Reloaded", "upload": upload},
                           headers=bearer(token))
            assert again.status_code == 200 and again.json()["id"] == r.json()["id"]
            assert c.get(f"/api/titles/{r.json()['id']}").status_code == 404  # unpublished
            doc = search(c, q="night trian", category="drama")
            assert [h["title"] for h in doc["hits"]] == ["Night Train", "Night Train to Lisbon"]
            assert doc["total"] == 2 and doc["facets"]["category"] == {"drama": 2}
            for s in INJECTIONS[:4]:
                assert c.get("/api/search", params={"q": s, "category": s}).json()["hits"] == []
    finally:
        pg.stop()
    with open_catalogue(CatalogueConfig(backend="postgresql", dsn=dsn)) as cat:
        assert len(cat.list_titles(limit=100)) == len(NAMED) + 50 + 2
