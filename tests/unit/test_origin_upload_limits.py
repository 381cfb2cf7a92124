"""The upload service's bounds on the origin's own disk, on an injected clock and disk gauge:
the process-wide budget of unverified (checksummed) spool bytes, the spool filesystem's free
floor, retiring completed uploads' records (in the catalogue's SQLite database), zero-length uploads, and the
``[origin]`` keys that set them; and the app's one write budget per client for tus and the JSON
API.

No object store is reached: every path here ends before a part or a segment of the incomplete
part would be stored (a refusal, a checksum mismatch, a record retired). The store object points
at a closed port so that a path that did reach it fails (503, nothing acknowledged: an offset is
acknowledged only once its bytes are in the store).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from headwater.clock import FakeClock
from headwater.config import ConfigError, loads
from headwater.http.client import ClientSettings, HttpClient
from headwater.http.types import Headers, Request, Response
from headwater.origin.api.wire import Route, json_response
from headwater.origin.app import OriginApp
from headwater.origin.auth.issuer import ClientRegistry, Issuer
from headwater.origin.auth.ratelimit import RateLimits
from headwater.origin.auth.tokens import AccessTokenVerifier
from headwater.origin.errors import (BadRequest, ChecksumMismatch, Conflict, InsufficientStorage, PayloadTooLarge,
                                     SpoolFull, StoreUnavailable, wire_of)
from headwater.origin.catalogue import CatalogueConfig, open_catalogue
from headwater.origin.upload.records import UploadRecords
from headwater.origin.upload.s3 import MultipartStore
from headwater.origin.upload.service import SPOOL_RETRY_AFTER_S, SourceInUse, UploadService
from headwater.origin.upload.tus import UploadState
from headwater.tokenbucket import RateLimit

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
OWNER = "creator-app"


class Body:
    """A request body as the HTTP core hands it to the app: ``receive`` in pieces; counts the
    reads, so a test can say no byte was read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    @property
    def content_length(self) -> int | None:
        return len(self.data)

    expects_continue = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.reads += 1
        chunk, self.data = self.data[:max_bytes], self.data[max_bytes:]
        return chunk


class SlowBody(Body):
    """A body whose first piece arrives at once and the rest once ``go`` is set."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.started, self.go = anyio.Event(), anyio.Event()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.reads == 1:
            self.started.set()
            await self.go.wait()
        return await super().receive(max_bytes)


class Disk:
    """The spool filesystem's free bytes, as the test sets them."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked = 0

    def __call__(self, path: Path) -> int:
        self.asked += 1
        return self.free


def service(tmp_path: Path, clock: FakeClock, *, budget: int = 4 * MiB, floor: int = 0, disk: Disk | None = None,
            retention_s: float = 7 * 86400.0,
            source_in_use: SourceInUse | None = None) -> UploadService:
    store = MultipartStore(HttpClient(ClientSettings(connect_timeout_s=0.1, read_timeout_s=0.1)),
                           endpoint="http://127.0.0.1:9", bucket="uploads", access_key="a", secret_key="s",
                           region="us-east-1", clock=clock)
    catalogue = open_catalogue(CatalogueConfig(backend="sqlite", path=tmp_path / "catalogue.sqlite3"), clock=clock)
    return UploadService(records=UploadRecords(catalogue, clock=clock), store=store,
                         spool_dir=tmp_path / "spool", part_size=1 * MiB, max_upload_bytes=64 * MiB,
                         max_uploads_per_client=4, expiry_s=3600.0, max_metadata_bytes=1024,
                         max_unverified_spool_bytes=budget, min_spool_free_bytes=floor, retention_s=retention_s,
                         clock=clock, disk_free=disk or Disk(10**15), source_in_use=source_in_use)


def put_upload(svc: UploadService, upload_id: str, length: int, *, completed: float | None = None) -> UploadState:
    """An upload as creation records it (its multipart upload id is never used here)."""
    now = svc.clock.time()
    st = UploadState(id=upload_id, owner=OWNER, length=length, metadata="", created=now, expires=now + 3600,
                     store_upload_id="mp", key=f"uploads/{upload_id}", completed=completed)
    svc.records.put(st)
    return st


def patch_headers(body: bytes, *, digest: bytes | None = None, length: int | None = None,
                  offset: int = 0) -> Headers:
    h = [("tus-resumable", "1.0.0"), ("upload-offset", str(offset)), ("content-type", "application/offset+octet-stream"),
         ("content-length", str(len(body) if length is None else length))]
    if digest is not None:
        h.append(("upload-checksum", "sha256 " + base64.b64encode(digest).decode()))
    return Headers(h)


def uid(n: int) -> str:
    return f"{n:032x}"


async def test_a_checksummed_patch_over_the_budget_is_503_before_its_body_is_read(tmp_path):
    svc = service(tmp_path, FakeClock(), budget=3 * MiB)
    a, b = put_upload(svc, uid(1), 2 * MiB), put_upload(svc, uid(2), 2 * MiB)
    slow = SlowBody(b"s" * 2 * MiB)  # a's PATCH: its first piece arrived, the rest is on its way
    second = Body(b"x" * 2 * MiB)
    async with anyio.create_task_group() as tg:
        async def first() -> None:
            with pytest.raises(ChecksumMismatch):
                await svc.patch(OWNER, a.id, patch_headers(slow.data, digest=b"\0" * 32), slow)
        tg.start_soon(first)
        await slow.started.wait()
        assert svc.unverified_bytes == 2 * MiB
        with pytest.raises(SpoolFull) as e:
            await svc.patch(OWNER, b.id, patch_headers(second.data, digest=b"\0" * 32), second)
        assert wire_of(e.value) == (503, "spool_busy") and e.value.retry_after_s == SPOOL_RETRY_AFTER_S
        assert "max_unverified_spool" in str(e.value)
        assert second.reads == 0 and svc.unverified_bytes == 2 * MiB  # nothing read, nothing taken
        # Without a checksum b's bytes are not held back by the budget: they go to the store
        # (here a closed port: 503, and nothing is acknowledged).
        plain = Body(b"p" * 1000)
        with pytest.raises(StoreUnavailable):
            await svc.patch(OWNER, b.id, patch_headers(plain.data), plain)
        assert plain.reads > 0 and svc.records.get(b.id).offset == 0
        slow.go.set()
    assert svc.unverified_bytes == 0 and svc.counts["spool_busy"] == 1
    # The budget is back: the same checksummed PATCH now goes through to its verification.
    again = Body(b"x" * 2 * MiB)
    with pytest.raises(ChecksumMismatch):
        await svc.patch(OWNER, b.id, patch_headers(again.data, digest=b"\0" * 32), again)


async def test_a_checksummed_patch_larger_than_the_whole_budget_is_413(tmp_path):
    svc = service(tmp_path, FakeClock(), budget=1 * MiB)
    st = put_upload(svc, uid(3), 2 * MiB)
    body = Body(b"y" * 2 * MiB)
    with pytest.raises(PayloadTooLarge, match="max_unverified_spool"):
        await svc.patch(OWNER, st.id, patch_headers(body.data, digest=hashlib.sha256(body.data).digest()), body)
    assert body.reads == 0 and svc.unverified_bytes == 0


async def test_the_reservation_is_released_and_the_bytes_dropped_when_the_checksum_differs(tmp_path):
    svc = service(tmp_path, FakeClock(), budget=1 * MiB)
    st = put_upload(svc, uid(4), 600_000)
    data = b"z" * 600_000
    for _ in range(3):  # a budget that leaked would refuse the second or third
        body = Body(data)
        with pytest.raises(ChecksumMismatch):
            await svc.patch(OWNER, st.id, patch_headers(data, digest=b"\1" * 32), body)
        assert body.reads > 0 and svc.unverified_bytes == 0
        assert (svc.spool_dir / f"{st.id}.0.0").stat().st_size == 0  # gone with the PATCH, not later
    assert svc.records.get(st.id).offset == 0


async def test_a_body_longer_than_its_content_length_cannot_overrun_its_reservation(tmp_path):
    svc = service(tmp_path, FakeClock(), budget=1 * MiB)
    st = put_upload(svc, uid(5), 4 * MiB)
    data = b"w" * 700_000
    body = Body(data)  # declares 300000, sends 700000 (as an HTTP/2 peer could)
    with pytest.raises(PayloadTooLarge, match="Content-Length"):
        await svc.patch(OWNER, st.id, patch_headers(data, digest=hashlib.sha256(data).digest(), length=300_000),
                        body)
    assert svc.unverified_bytes == 0 and (svc.spool_dir / f"{st.id}.0.0").stat().st_size == 0


async def test_the_spool_disk_floor_is_507_before_the_body_is_read(tmp_path):
    disk = Disk(free=3 * MiB)
    svc = service(tmp_path, FakeClock(), floor=2 * MiB, disk=disk)
    st = put_upload(svc, uid(6), 8 * MiB)
    # Checksummed: its whole Content-Length counts (2 MiB would leave 1 MiB < the floor).
    data = b"v" * 2 * MiB
    body = Body(data)
    with pytest.raises(InsufficientStorage) as e:
        await svc.patch(OWNER, st.id, patch_headers(data, digest=hashlib.sha256(data).digest()), body)
    assert wire_of(e.value) == (507, "insufficient_storage") and "min_spool_free" in str(e.value)
    assert body.reads == 0 and svc.unverified_bytes == 0 and disk.asked == 1
    # Unchecked: at most a part (1 MiB) goes to disk first, which fits: the body is read (and
    # refused by the closed-port store, 503, not 507).
    small = Body(b"u" * 1000)
    with pytest.raises(StoreUnavailable):
        await svc.patch(OWNER, st.id, patch_headers(small.data), small)
    assert small.reads > 0 and svc.counts["disk_refusals"] == 1
    disk.free = 2 * MiB + 10  # now under the floor once a part is written
    late = Body(b"t" * 1000)
    with pytest.raises(InsufficientStorage):
        await svc.patch(OWNER, st.id, patch_headers(late.data), late)
    assert late.reads == 0 and svc.records.get(st.id).offset == 0
    # A new upload under the floor: 507 before the store is asked for a multipart upload (this
    # one's store is a closed port: reaching it would be 503).
    disk.free = 2 * MiB - 1
    with pytest.raises(InsufficientStorage):
        await svc.create(OWNER, Headers([("tus-resumable", "1.0.0"), ("upload-length", "10")]), Body(b""))
    assert svc.records.count() == 1 and svc.records.open_count(OWNER) == 1


async def test_completed_records_are_retired_after_the_retention_and_others_kept(tmp_path):
    clock = FakeClock()
    svc = service(tmp_path, clock, retention_s=100.0)
    old = put_upload(svc, uid(7), 10, completed=clock.time())
    unfinished = put_upload(svc, uid(8), 10)
    clock.advance(60)
    young = put_upload(svc, uid(9), 10, completed=clock.time())
    assert await svc.retire_once() == 0
    clock.advance(40)  # old: completed 100 s ago
    assert await svc.retire_once() == 1
    assert svc.records.get(old.id) is None
    assert svc.records.get(young.id) is not None and svc.records.get(unfinished.id) is not None
    clock.advance(60)
    assert await svc.retire_once() == 1 and svc.records.get(young.id) is None
    assert svc.records.get(unfinished.id) is not None  # expiry, not retention, removes it
    assert svc.counts["retired"] == 2


async def test_a_zero_length_upload_is_refused_before_anything_is_made(tmp_path):
    svc = service(tmp_path, FakeClock())
    with pytest.raises(BadRequest) as e:
        await svc.create(OWNER, Headers([("tus-resumable", "1.0.0"), ("upload-length", "0")]), Body(b""))
    assert wire_of(e.value) == (400, "empty_upload")
    assert svc.records.count() == 0 and svc.records.open_count(OWNER) == 0


def test_the_keys_in_cluster_toml():
    node = loads('[origin]\ntls = false\nmax_unverified_spool = "512MiB"\nmin_spool_free = "0"\n'
                 'upload_retention_seconds = 3600\n', path="cluster.toml").origin
    assert (node.max_unverified_spool_bytes, node.min_spool_free_bytes, node.upload_retention_s) == \
        (512 * MiB, 0, 3600.0)
    default = loads("[origin]\ntls = false\n", path="cluster.toml").origin
    assert (default.max_unverified_spool_bytes, default.min_spool_free_bytes, default.upload_retention_s) == \
        (2 * 1024 * MiB, 1024 * MiB, 7 * 86400.0)
    for text, key in (('max_unverified_spool = "0"', "origin.max_unverified_spool"),
                      ('min_spool_free = "lots"', "origin.min_spool_free"),
                      ("upload_retention_seconds = 0", "origin.upload_retention_seconds")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            loads(f"[origin]\ntls = false\n{text}\n", path="cluster.toml")


# --- the JSON API's writes take the client's write budget (origin/app.py) ----------------------

async def test_json_api_writes_and_tus_writes_share_one_budget_per_client(tmp_path):
    clock = FakeClock()
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = Issuer(key=key, issuer="https://origin.test", audience="headwater-origin", lifetime_s=600,
                    clients=ClientRegistry({}))
    verifier = AccessTokenVerifier(lambda: [issuer.access_key], issuer="https://origin.test",
                                   audience="headwater-origin", clock=clock.time)
    handled: list[str] = []

    async def handler(request: Request, args: tuple[str, ...]) -> Response:
        handled.append(request.method)
        return json_response(200, {"ok": True})

    app = OriginApp(verifier=verifier, uploads=service(tmp_path, clock), issuer=None, clock=clock,
                    rate_limits=RateLimits(writes_per_client=RateLimit(requests_per_s=1.0, burst=3.0)),
                    routes=[Route.of("GET POST PATCH DELETE", r"/api/titles(?:/([0-9]+))?", handler)])
    mine = issuer.mint("creator-app", ("upload", "titles:write"), clock.time())
    other = issuer.mint("other-app", ("titles:write",), clock.time())

    def request(method: str, path: str, token: str | None) -> Request:
        headers = [("tus-resumable", "1.0.0")] + ([("authorization", f"Bearer {token}")] if token else [])
        return Request(method=method, target=path, path=path, query="", headers=Headers(headers), body=Body(b""))

    for method in ("POST", "PATCH", "DELETE"):
        assert (await app(request(method, "/api/titles/7", mine))).status == 200
    r = await app(request("PATCH", "/api/titles/7", mine))
    assert r.status == 429 and json.loads(r.body)["error"] == "too_many_requests"
    assert dict(r.headers)["retry-after"] == "1" and handled == ["POST", "PATCH", "DELETE"]
    # The same client's tus write is refused by the same budget (before the upload is looked up).
    r = await app(request("DELETE", f"/uploads/{uid(1)}", mine))
    assert r.status == 429
    # Reads are not writes; another client and a caller without a token (the handler's 401) are
    # not charged to this one.
    assert (await app(request("GET", "/api/titles/7", mine))).status == 200
    assert (await app(request("PATCH", "/api/titles/7", other))).status == 200
    assert (await app(request("PATCH", "/api/titles/7", None))).status == 200
    clock.advance(1.0)  # one write a second refills
    assert (await app(request("PATCH", "/api/titles/7", mine))).status == 200
    assert (await app(request("PATCH", "/api/titles/7", mine))).status == 429


async def test_retiring_an_unused_upload_whose_object_cannot_be_deleted_keeps_its_record(tmp_path):
    # This service's store is a closed port: deleting the unused upload's object fails, so its
    # record stays for the next pass (a record gone first would leave the object behind for
    # ever); the used upload is retired without asking the store; a claimed one is skipped.
    clock = FakeClock()
    asked: list[str] = []

    async def in_use(owner: str, upload_id: str) -> bool:
        asked.append(upload_id)
        return upload_id == uid(1)

    svc = service(tmp_path, clock, retention_s=100.0, source_in_use=in_use)
    used = put_upload(svc, uid(1), 10, completed=clock.time())
    unused = put_upload(svc, uid(2), 10, completed=clock.time())
    held = put_upload(svc, uid(3), 10, completed=clock.time())
    clock.advance(100)
    async with svc.claimed(OWNER, held.id):
        assert await svc.retire_once() == 1
        with pytest.raises(Conflict):  # a second claim while a title is being made
            async with svc.claimed(OWNER, held.id):
                pass
    assert asked == [used.id, unused.id]
    assert svc.records.get(used.id) is None
    assert svc.records.get(unused.id) is not None and svc.records.get(held.id) is not None
    assert svc.counts["retired"] == 1 and svc.counts["unused_deleted"] == 0
