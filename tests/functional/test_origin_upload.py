"""The origin's upload service on real daemons: an object store cluster, and the origin as an
operator runs it (``headwater node origin``, TLS "auto" from the local CA, the built-in issuer),
driven by real clients: ``headwater token`` and curl for tokens, the ``tuspy`` tus client for
uploads, httpx for the protocol's corners, boto3 to read the result back from the store.

Covered: a 12 MiB upload with tuspy stopped after a few chunks, a PATCH whose connection dies
mid-body (its bytes kept: tus), the origin killed (SIGKILL) and restarted, then the upload resumed
by a new tuspy uploader from the server's offset with sha1 checksums, and the completed object's
bytes equal to the file's; a wrong checksum -> 460 with the offset unchanged; no token, a wrong
scope, an expired token, another client's upload -> 401/403/404 JSON; the built-in issuer's token
by curl (Basic auth) verifying against its JWKS; tus discovery and the CORS preflight; 412; the
S3 gateway down during a PATCH -> 503 with nothing acknowledged, then the same PATCH once it is back;
the JWKS fetcher against the built-in issuer; expiry (410, then aborted by the janitor) and the
spool's recovery at start (emptied: the incomplete part is in the store), on a fake clock against
the real store. Several origin hosts on one PostgreSQL: test_origin_multihost.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import time

import httpx
import jwt
import pytest
from tusclient import client as tus_client

from tests.bodies import MemoryBody

from .origin_harness import TUS, Origin, auth, origin_fixture

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")
MiB = 1024 * 1024

origin = origin_fixture()


@pytest.fixture(scope="module")
def token(origin):
    return origin.cli("token", "--client", "creator-app", "--scope", "upload")


def offset_of(origin: Origin, url: str, token: str) -> int:
    with origin.http() as c:
        r = c.head(url, headers=auth(token))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return int(r.headers["upload-offset"])


def test_builtin_issuer_by_curl(origin):
    secret = origin.cli("token", "--client", "creator-app", "--print-secret")
    out = subprocess.run(["curl", "-sS", "--cacert", origin.ca, "-u", f"creator-app:{secret}",
                          "-d", "grant_type=client_credentials", "-d", "scope=upload titles:write",
                          "-w", "\n%{http_code}", f"{origin.url}/oauth/token"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    body, status = out.rsplit("\n", 1)
    doc = json.loads(body)
    assert status == "200" and doc["token_type"] == "Bearer" and doc["scope"] == "upload titles:write"
    jwks = json.loads(subprocess.run(["curl", "-sS", "--cacert", origin.ca, f"{origin.url}/.well-known/jwks.json"],
                                     capture_output=True, text=True, timeout=30, check=True).stdout)
    kid = jwt.get_unverified_header(doc["access_token"])["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(doc["access_token"], jwt.PyJWK(key).key, algorithms=["ES256"], audience="headwater-origin",
                        issuer=origin.url)
    assert claims["client_id"] == "creator-app" and claims["scope"] == "upload titles:write"
    with origin.http() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
        assert meta["token_endpoint"] == f"{origin.url}/oauth/token"
        bad = c.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("creator-app", "wrong"))
        assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
        assert bad.headers["www-authenticate"].startswith("Basic")
        scope = c.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "view"},
                       auth=("creator-app", secret))
        assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"


def test_tuspy_upload_interrupted_killed_and_resumed(origin, token, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", origin.ca)
    data = os.urandom(12 * MiB + 12345)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    client = tus_client.TusClient(f"{origin.url}/uploads", headers={"Authorization": f"Bearer {token}"})
    first = client.uploader(str(path), chunk_size=1 * MiB, metadata={"filename": "clip.mp4"})
    first.upload(stop_at=6 * MiB)  # the client stops after six chunks
    url = first.url
    assert offset_of(origin, url, token) == 6 * MiB
    # One part (5 MiB) is in the store, and the part being filled is too, as the incomplete
    # part's segment (one per PATCH ending mid-part); the origin's spool holds a copy of it.
    upload_id = url.rsplit('/', 1)[1]
    spool = list((origin.cluster.data_dir / "origin" / "spool").iterdir())
    assert [p.stat().st_size for p in spool] == [1 * MiB]
    segments = s3.list_objects_v2(Bucket="uploads", Prefix=f"incomplete/{upload_id}/").get("Contents", [])
    assert [o["Size"] for o in segments] == [1 * MiB]

    # A PATCH whose connection dies mid-body: what arrived is kept and acknowledged (tus).
    host = "127.0.0.1"
    ctx = ssl.create_default_context(cafile=origin.ca)
    sent = 700_000
    with socket.create_connection((host, origin.port)) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        head = (f"PATCH /uploads/{url.rsplit('/', 1)[1]} HTTP/1.1\r\nHost: {host}:{origin.port}\r\n"
                f"Authorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n"
                f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {6 * MiB}\r\n"
                f"Content-Length: {2 * MiB}\r\n\r\n")
        s.sendall(head.encode() + data[6 * MiB: 6 * MiB + sent])
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while offset_of(origin, url, token) != 6 * MiB + sent and time.monotonic() < deadline:
        time.sleep(0.1)
    assert offset_of(origin, url, token) == 6 * MiB + sent

    # The origin dies (SIGKILL) and comes back: the acknowledged offset survives.
    origin.kill()
    origin.start()
    assert offset_of(origin, url, token) == 6 * MiB + sent

    # A new uploader (another process, say) resumes from the server's offset, with checksums.
    second = client.uploader(str(path), url=url, chunk_size=2 * MiB, upload_checksum=True)
    assert second.offset == 6 * MiB + sent
    second.upload()
    assert offset_of(origin, url, token) == len(data)
    got = s3.get_object(Bucket="uploads", Key=f"uploads/{url.rsplit('/', 1)[1]}")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not list((origin.cluster.data_dir / "origin" / "spool").iterdir())
    assert not s3.list_objects_v2(Bucket="uploads", Prefix=f"incomplete/{upload_id}/").get("Contents")


def _create(c: httpx.Client, token: str, length: int, **extra: str) -> str:
    r = c.post("/uploads", headers={**auth(token), "upload-length": str(length), **extra})
    assert r.status_code == 201, r.text
    return r.headers["location"]


def test_checksum_mismatch_keeps_the_offset(origin, token, s3):
    body = os.urandom(300_000)
    good = base64.b64encode(hashlib.sha256(body).digest()).decode()
    bad = base64.b64encode(hashlib.sha256(body + b"x").digest()).decode()
    patch = {**auth(token), "content-type": "application/offset+octet-stream", "upload-offset": "0"}
    with origin.http() as c:
        url = _create(c, token, len(body), **{"upload-metadata": "filename " + base64.b64encode(b"a.mp4").decode()})
        r = c.patch(url, content=body, headers={**patch, "upload-checksum": f"sha256 {bad}"})
        assert r.status_code == 460 and r.json()["error"] == "checksum_mismatch"
        assert offset_of(origin, url, token) == 0
        r = c.patch(url, content=body, headers={**patch, "upload-checksum": f"md5 {bad}"})
        assert r.status_code == 400
        r = c.patch(url, content=body[:10], headers={**patch, "upload-offset": "5"})
        assert r.status_code == 409 and r.json()["error"] == "offset_mismatch"
        r = c.patch(url, content=body, headers={**patch, "content-type": "application/octet-stream"})
        assert r.status_code == 415
        r = c.patch(url, content=body, headers={**patch, "upload-checksum": f"sha256 {good}"})
        assert r.status_code == 204 and r.headers["upload-offset"] == str(len(body))
        h = c.head(url, headers=auth(token))
        assert h.headers["upload-metadata"] == "filename " + base64.b64encode(b"a.mp4").decode()
        # creation-with-upload: the whole (small) body in the POST.
        r = c.post("/uploads", content=b"tiny", headers={**auth(token), "upload-length": "4",
                                                         "content-type": "application/offset+octet-stream"})
        assert r.status_code == 201 and r.headers["upload-offset"] == "4"
        tiny = r.headers["location"].rsplit("/", 1)[1]
        # A zero-length upload is refused: no video, and it would leave an object and a record.
        r = c.post("/uploads", headers={**auth(token), "upload-length": "0"})
        assert r.status_code == 400 and r.json()["error"] == "empty_upload"
        # termination
        gone = _create(c, token, 10)
        assert c.delete(gone, headers=auth(token)).status_code == 204
        assert c.head(gone, headers=auth(token)).status_code == 404
        # too large for Tus-Max-Size
        r = c.post("/uploads", headers={**auth(token), "upload-length": str(65 * MiB)})
        assert r.status_code == 413
    got = s3.get_object(Bucket="uploads", Key=f"uploads/{url.rsplit('/', 1)[1]}")["Body"].read()
    assert got == body
    assert s3.get_object(Bucket="uploads", Key=f"uploads/{tiny}")["Body"].read() == b"tiny"
    with origin.http() as c:  # terminating a finished upload deletes its object
        assert c.delete(f"/uploads/{tiny}", headers=auth(token)).status_code == 204
    with pytest.raises(Exception, match="NoSuchKey|404"):
        s3.get_object(Bucket="uploads", Key=f"uploads/{tiny}")


def test_tokens_and_scopes(origin, token, cluster):
    from headwater.config import load
    from headwater.origin.auth.issuer import ClientRegistry, Issuer, load_signing_key

    viewer = origin.cli("token", "--client", "viewer-app")
    with origin.http() as c:
        r = c.post("/uploads", headers={**TUS, "upload-length": "10"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        r = c.post("/uploads", headers={**auth(viewer), "upload-length": "10"})
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
        # An expired token, signed with the issuer's real (sealed) key.
        cfg = load(cluster.config_path)
        issuer = Issuer(key=load_signing_key(cfg, cfg.origin), issuer=origin.url, audience="headwater-origin",
                        lifetime_s=600, clients=ClientRegistry({}))
        old = issuer.mint("creator-app", ("upload",), time.time() - 3600)
        r = c.post("/uploads", headers={**auth(old), "upload-length": "10"})
        assert r.status_code == 401 and "expired" in r.json()["message"]
        # Another client's upload: 404, as if it did not exist (no existence oracle).
        url = _create(c, token, 10)
        other = issuer.mint("intruder", ("upload",), time.time())
        assert c.head(url, headers=auth(other)).status_code == 404
        # tus: a request without Tus-Resumable -> 412 naming the version.
        r = c.post("/uploads", headers={"authorization": f"Bearer {token}", "upload-length": "10"})
        assert r.status_code == 412 and r.headers["tus-version"] == "1.0.0"
        # Discovery and the CORS preflight (no token needed).
        r = c.options("/uploads")
        assert r.status_code == 204 and "checksum" in r.headers["tus-extension"]
        r = c.options("/uploads", headers={"origin": "https://studio.example",
                                           "access-control-request-method": "PATCH"})
        assert r.headers["access-control-allow-origin"] == "https://studio.example"
        assert "Upload-Offset" in r.headers["access-control-allow-headers"]
        assert "Location" in r.headers["access-control-expose-headers"]
        assert c.delete(url, headers=auth(token)).status_code == 204


def test_store_down_acknowledges_nothing(origin, token, cluster, s3):
    """The S3 gateway is down while a PATCH fills a part: 503 JSON, the offset unchanged; once
    the gateway is back the same PATCH goes through and the object is whole."""
    body = os.urandom(6 * MiB)
    patch = {**auth(token), "content-type": "application/offset+octet-stream", "upload-offset": "0"}
    with origin.http() as c:
        url = _create(c, token, len(body))
        cluster.kill_node("s3")
        try:
            r = c.patch(url, content=body, headers=patch)
            assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
            assert offset_of(origin, url, token) == 0
        finally:
            cluster.restart_node("s3")
        r = c.patch(url, content=body, headers=patch)
        assert r.status_code == 204 and r.headers["upload-offset"] == str(len(body))
    assert s3.get_object(Bucket="uploads", Key=f"uploads/{url.rsplit('/', 1)[1]}")["Body"].read() == body


def test_jwks_source_fetches_an_issuers_keys(origin, token):
    """The external-issuer path: :class:`JwksSource` (the kernel's HttpClient, TLS trusting the
    local CA) fetches this origin's JWKS as it would an OIDC provider's, and a verifier on those
    keys accepts the origin's tokens."""
    import anyio

    from headwater.http.client import HttpClient, client_ssl_context
    from headwater.origin.auth.jwks import JwksSource
    from headwater.origin.auth.tokens import AccessTokenVerifier

    async def main() -> None:
        client = HttpClient(ssl_context=client_ssl_context(origin.ca))
        source = JwksSource(f"{origin.url}/.well-known/jwks.json", client=client, refresh_s=60, max_bytes=64 * 1024,
                            max_keys=4, monotonic=time.monotonic)
        await source.fetch_once()
        assert source.errors == 0 and len(source.keys) == 1
        verifier = AccessTokenVerifier(lambda: source.keys, issuer=origin.url, audience="headwater-origin",
                                       clock=time.time)
        assert "upload" in verifier.verify(token).scopes
        tiny = JwksSource(f"{origin.url}/.well-known/jwks.json", client=client, refresh_s=60, max_bytes=16,
                          max_keys=4, monotonic=time.monotonic)
        await tiny.fetch_once()  # larger than its bound: refused, no keys
        assert tiny.errors == 1 and tiny.keys == []
        await client.aclose()

    anyio.run(main)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_expiry_and_recovery_on_a_fake_clock(cluster, s3, tmp_path, backend):
    """The upload service in this process against the cluster's real S3 gateway, on a fake
    clock: an unfinished upload is 410 once expired and the janitor's pass aborts its multipart
    upload and removes it; at start, the local spool (a cache of the stored incomplete parts) is
    emptied."""
    import anyio

    from headwater.clock import SYSTEM_CLOCK, FakeClock
    from headwater.http import Headers
    from headwater.http.client import HttpClient
    from headwater.origin.errors import Gone, NotFound, TooManyRequests
    from headwater.origin.upload.janitor import UploadJanitor
    from headwater.origin.catalogue import CatalogueConfig, open_catalogue
    from headwater.origin.upload.records import UploadRecords
    from headwater.origin.upload.s3 import MultipartStore
    from headwater.origin.upload.service import UploadService

    clock = FakeClock(start=time.time())
    user = cluster.user(0)

    def service(client: HttpClient, records: UploadRecords) -> UploadService:
        # requests are signed at the real time: the fake clock runs hours ahead (RequestTimeTooSkewed)
        store = MultipartStore(client, endpoint=cluster.endpoint, bucket="uploads", access_key=user.access_key,
                               secret_key=user.secret_key, region=cluster.region, clock=SYSTEM_CLOCK)
        return UploadService(records=records, store=store, spool_dir=tmp_path / "spool", part_size=5 * MiB,
                             max_upload_bytes=64 * MiB, max_uploads_per_client=2, expiry_s=600,
                             max_metadata_bytes=4096, retention_s=3600, clock=clock,
                             source_in_use=source_in_use,
                             # the origin daemon of this module shares the bucket, with other records:
                             # its objects are not this service's to sweep (test_origin_upload_orphans.py)
                             orphan_grace_s=365 * 86400.0)

    titled: set[str] = set()  # the uploads "a title was made from", as the catalogue would answer

    async def source_in_use(owner: str, upload_id: str) -> bool:
        return upload_id in titled

    async def main() -> None:
        client = HttpClient()
        catalogue = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "catalogue.sqlite3"),
                                   clock=clock)
        records = UploadRecords(catalogue, clock=clock)
        uploads = service(client, records)
        await uploads.store.ensure_bucket()
        hdrs = Headers([("tus-resumable", "1.0.0"), ("upload-length", "1000")])
        a = await uploads.create("alice-app", hdrs, None)
        b = await uploads.create("alice-app", hdrs, None)
        with pytest.raises(TooManyRequests):  # a third unfinished upload for the same client
            await uploads.create("alice-app", hdrs, None)
        live = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket="uploads").get("Uploads", [])}
        assert {a.store_upload_id, b.store_upload_id} <= live

        # Junk in the spool (a crash mid-PATCH): a restarted service empties it (what was
        # acknowledged is in the store).
        (tmp_path / "spool" / f"{b.id}.0.0").write_bytes(b"x" * 500)
        (tmp_path / "spool" / "orphan.3").write_bytes(b"y")
        uploads = service(client, records)
        assert await uploads.recover() == []
        assert not list((tmp_path / "spool").iterdir())

        clock.advance(601)
        with pytest.raises(Gone):
            await uploads.get("alice-app", a.id)
        assert await UploadJanitor(uploads, interval_s=60, clock=clock).run_once() == (2, 0, 0, 0)
        with pytest.raises(NotFound):
            await uploads.get("alice-app", a.id)
        live = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket="uploads").get("Uploads", [])}
        assert not {a.store_upload_id, b.store_upload_id} & live
        assert not list((tmp_path / "spool").iterdir())

        # A completed upload's record is retired after the retention; the object of one a title
        # was made from stays (the title's source), the object of one no title names goes.
        def whole(data: bytes) -> tuple[Headers, MemoryBody]:
            return Headers([("tus-resumable", "1.0.0"), ("upload-length", str(len(data))),
                            ("content-type", "application/offset+octet-stream"),
                            ("content-length", str(len(data)))]), MemoryBody(data)
        done = await uploads.create("alice-app", *whole(b"abc"))
        unused = await uploads.create("alice-app", *whole(b"never titled"))
        assert done.finished and unused.finished
        titled.add(done.id)
        clock.advance(3599)
        assert await UploadJanitor(uploads, interval_s=60, clock=clock).run_once() == (0, 0, 0, 0)
        assert (await uploads.get("alice-app", done.id)).finished
        clock.advance(1)
        assert await UploadJanitor(uploads, interval_s=60, clock=clock).run_once() == (0, 2, 0, 0)
        for gone in (done, unused):
            with pytest.raises(NotFound):
                await uploads.get("alice-app", gone.id)
        assert s3.get_object(Bucket="uploads", Key=f"uploads/{done.id}")["Body"].read() == b"abc"
        with pytest.raises(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket="uploads", Key=f"uploads/{unused.id}")
        assert uploads.counts["unused_deleted"] == 1
        catalogue.close()
        await client.aclose()

    anyio.run(main, backend=backend)


def test_small_patches_alternating_between_two_services_coalesce_their_segments(cluster, s3, tmp_path):
    """Two upload services (two hosts: each its own spool, one records database) against the
    real store take turns at one upload's PATCHes of 1,000 bytes: each PATCH's bytes are a
    segment of the incomplete part in the store when it is answered; past
    ``max_incomplete_segments`` (3) a PATCH writes the incomplete part whole as one; each service
    rebuilds the part from the store when the other moved on; the last PATCH completes the
    upload, its bytes right, its segments gone."""
    import anyio

    from headwater.http import Headers
    from headwater.http.client import HttpClient
    from headwater.origin.catalogue import CatalogueConfig, open_catalogue
    from headwater.origin.upload.records import UploadRecords
    from headwater.origin.upload.s3 import MultipartStore
    from headwater.origin.upload.service import UploadService

    user = cluster.user(0)
    data = os.urandom(10_000)

    async def main() -> None:
        client = HttpClient()
        catalogue = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "catalogue.sqlite3"))
        store = MultipartStore(client, endpoint=cluster.endpoint, bucket="uploads", access_key=user.access_key,
                               secret_key=user.secret_key, region=cluster.region)
        await store.ensure_bucket()
        hosts = [UploadService(records=UploadRecords(catalogue), store=store, spool_dir=tmp_path / f"spool-{n}",
                               part_size=5 * MiB, max_upload_bytes=64 * MiB, max_uploads_per_client=2, expiry_s=600,
                               max_metadata_bytes=4096, max_incomplete_segments=3, host_id=f"host-{n}")
                 for n in range(2)]
        st = await hosts[0].create("alice-app", Headers([("tus-resumable", "1.0.0"),
                                                          ("upload-length", str(len(data)))]), None)
        seen = []
        for i in range(10):
            chunk = data[i * 1000:(i + 1) * 1000]
            headers = Headers([("tus-resumable", "1.0.0"), ("upload-offset", str(i * 1000)),
                               ("content-type", "application/offset+octet-stream"),
                               ("content-length", "1000")])
            st = await hosts[i % 2].patch("alice-app", st.id, headers, MemoryBody(chunk))
            assert st.offset == (i + 1) * 1000
            found = s3.list_objects_v2(Bucket="uploads", Prefix=f"incomplete/{st.id}/").get("Contents", [])
            seen.append(sorted(o["Size"] for o in found))
        # 1, 2, 3 segments; the fourth PATCH writes the 4,000 bytes as one; and so on.
        assert seen[:9] == [[1000], [1000, 1000], [1000, 1000, 1000], [4000], [1000, 4000],
                            [1000, 1000, 4000], [7000], [1000, 7000], [1000, 1000, 7000]]
        assert seen[9] == [] and st.finished  # the last PATCH: its rest went into the last part
        assert s3.get_object(Bucket="uploads", Key=f"uploads/{st.id}")["Body"].read() == data
        stored = sum(h.counts["segments_stored"] for h in hosts)
        assert stored == 9 and sum(h.counts["segments_coalesced"] for h in hosts) == 2
        assert sum(h.counts["segments_read"] for h in hosts) > 0  # each rebuilt what the other stored
        catalogue.close()
        await client.aclose()

    anyio.run(main)


def test_the_lmdb_records_of_the_previous_version_are_brought_over(cluster, s3, tmp_path):
    """An upgrade: an unfinished upload's record in the old LMDB environment, 3,000 bytes of it
    in the old spool file (acknowledged then); the import stores them as a segment, puts the
    record in the database and renames the LMDB folder; the upload then completes with the
    right bytes. A second start imports nothing."""
    import json

    import anyio
    import lmdb

    from headwater.http import Headers
    from headwater.http.client import HttpClient
    from headwater.origin.catalogue import CatalogueConfig, open_catalogue
    from headwater.origin.upload.legacy import import_lmdb_records
    from headwater.origin.upload.records import UploadRecords
    from headwater.origin.upload.s3 import MultipartStore
    from headwater.origin.upload.service import UploadService
    from headwater.origin.upload.tus import UploadState

    user = cluster.user(0)
    data = os.urandom(5000)
    state_dir, spool_dir = tmp_path / "uploads", tmp_path / "spool"

    async def main() -> None:
        client = HttpClient()
        store = MultipartStore(client, endpoint=cluster.endpoint, bucket="uploads", access_key=user.access_key,
                               secret_key=user.secret_key, region=cluster.region)
        await store.ensure_bucket()
        upload_id = "ab" * 16
        key = f"uploads/{upload_id}"
        old = UploadState(id=upload_id, owner="alice-app", length=len(data), metadata="", created=time.time(),
                          expires=time.time() + 600, store_upload_id=await store.create(key), key=key,
                          spooled=3000, spool_gen=0)
        done = UploadState(id="cd" * 16, owner="alice-app", length=3, metadata="", created=time.time(),
                           expires=time.time() + 600, store_upload_id="x", key="uploads/done", completed=time.time())
        env = lmdb.open(str(state_dir), map_size=1 << 20, max_dbs=1, subdir=True)
        with env.begin(write=True) as txn:
            for st in (old, done):
                record = st.to_record()
                del record["segments"]  # the old format had none
                txn.put(st.id.encode(), json.dumps(record).encode())
        env.close()
        spool_dir.mkdir()
        (spool_dir / f"{upload_id}.0").write_bytes(data[:3000])
        catalogue = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "catalogue.sqlite3"))
        records = UploadRecords(catalogue)
        assert await import_lmdb_records(state_dir, spool_dir, records, store) == 2
        assert not state_dir.exists() and (tmp_path / "uploads.imported").exists()
        assert await import_lmdb_records(state_dir, spool_dir, records, store) == 0
        assert records.get(done.id).finished
        st = records.get(upload_id)
        assert st.offset == 3000 and [n for _, n in st.segments] == [3000]
        uploads = UploadService(records=records, store=store, spool_dir=spool_dir, part_size=5 * MiB,
                                max_upload_bytes=64 * MiB, max_uploads_per_client=2, expiry_s=600,
                                max_metadata_bytes=4096)
        assert await uploads.recover() == [] and not list(spool_dir.iterdir())
        headers = Headers([("tus-resumable", "1.0.0"), ("upload-offset", "3000"),
                           ("content-type", "application/offset+octet-stream"), ("content-length", "2000")])
        st = await uploads.patch("alice-app", upload_id, headers, MemoryBody(data[3000:]))
        assert st.finished
        assert s3.get_object(Bucket="uploads", Key=key)["Body"].read() == data
        catalogue.close()
        await client.aclose()

    anyio.run(main)
