"""S3 writes interrupted and raced: PUT, DELETE and multipart operations cancelled mid-flight,
racing each other, or left with an unknown outcome, and what they must never leave behind.

Two kinds of test:

- over the wire (boto3 or raw signed requests) against the module's cluster;
- in-process: a ``Store`` built from the cluster's own cluster.toml, with the real metadata
  client and storage pool, driving the operation handlers directly. A thin proxy around the
  metadata client lets a test place a cancellation (what an HTTP/2 RST_STREAM or a gateway
  shutdown does to a handler) or a concurrent request at one exact point, so races that are
  otherwise a matter of luck become deterministic.

Each test replays a bug that a reading of the gateway found (and that is fixed).
"""

from __future__ import annotations

import io
import threading
import time
import traceback
from typing import Any

import anyio
import pytest
from headwater.objstore.datapath import ReadFailed, StoragePool
from headwater.objstore.gateway import multipart, objects
from headwater.objstore.gateway.context import Call, Store
from headwater.objstore.metadata.client import MetadataClient
from headwater.objstore.metadata.errors import MetadataError, WriteOutcomeUnknown
from headwater.objstore.records import parts_ns
from headwater.objstore.s3 import errors as s3e
from headwater.objstore.s3 import sigv4

from headwater.config import load as load_config
from headwater.http.types import Headers, Request
from tests.cluster import client_error, xml_error
from tests.data import data
from tests.functional.test_s3_h2_and_streaming import streaming_put

KiB = 1024
STRIPE = 64 * KiB
CLUSTER_OPTIONS = dict(stripe_size=STRIPE, inline_max_size="4KiB", min_part_size="100KiB", k=2, m=1, storage_nodes=3)




# --- over the wire ------------------------------------------------------------------------------


def test_empty_upload_part_is_accepted(s3, bucket):
    """S3 accepts a zero-byte part (the last part of an upload may be any size, 0 included;
    SDKs send one for an empty stream). store_body(inline_max=-1) returns no layout for an empty
    body and upload_part's ``assert layout is not None`` turns it into a 500."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="empty")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="empty", UploadId=uid, PartNumber=1, Body=b"")
    assert part["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    s3.complete_multipart_upload(Bucket=bucket, Key="empty", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_upload_part_copy_of_empty_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="zero", Body=b"")
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    r = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "zero"})
    assert r["CopyPartResult"]["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'


@pytest.mark.parametrize("tamper", ["first-chunk", "later-chunk", "trailer-signature"])
def test_bad_chunk_signature_in_large_body_is_403(cluster, s3, bucket, tamper):
    """A wrong aws-chunked chunk (or trailer) signature must answer 403 SignatureDoesNotMatch.

    Once the body passes the inline limit, the error is raised inside ``async with
    LayoutWriter`` (a task group): anyio wraps it in an ExceptionGroup, which none of the
    gateway's ``except s3e.S3Error`` / ``WriteFailed`` / ``ClientDisconnected`` clauses match,
    so the client gets 500 InternalError (and retries a request that can never succeed)."""
    body = data(5 * STRIPE + 123)
    kw: dict[str, Any] = {"first-chunk": {"tamper_chunk": 0}, "later-chunk": {"tamper_chunk": 3},
                          "trailer-signature": {"tamper_trailer": True}}[tamper]
    r = streaming_put(cluster, f"/{bucket}/sig", body, **kw)
    assert (r.status_code, xml_error(r).get("Code")) == (403, "SignatureDoesNotMatch"), r.text[:300]
    with pytest.raises(Exception) as ei:
        s3.head_object(Bucket=bucket, Key="sig")
    assert client_error(ei.value)[0] == 404


def test_incomplete_aws_chunked_body_in_large_body_is_400(cluster, bucket):
    """x-amz-decoded-content-length smaller than the chunks: IncompleteBody (400), not 500."""
    body = data(3 * STRIPE)
    r = streaming_put(cluster, f"/{bucket}/short", body, decoded_length=len(body) - 10)
    assert (r.status_code, xml_error(r).get("Code")) == (400, "IncompleteBody"), r.text[:300]


# --- in-process: one handler driven at a precise point --------------------------------------------


class FakeBody:
    """A RequestBody that hands out ``data`` in 64 KiB pieces."""

    def __init__(self, payload: bytes) -> None:
        self._data = payload
        self._pos = 0

    @property
    def expects_continue(self) -> bool:
        return False

    @property
    def content_length(self) -> int | None:
        return len(self._data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        piece = self._data[self._pos:self._pos + min(max_bytes, 65536)]
        self._pos += len(piece)
        return piece

    async def read_all(self, limit: int) -> bytes:
        return self._data[self._pos:]


def make_call(cfg, method: str, bucket: str, key: str, *, body: bytes = b"", query: dict | None = None) -> Call:
    headers = Headers([("host", "127.0.0.1"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                       ("content-length", str(len(body)))])
    req = Request(method=method, target=f"/{bucket}/{key}", path=f"/{bucket}/{key}", query="",
                  headers=headers, body=FakeBody(body))  # type: ignore[arg-type]
    # As sigv4.authenticate would have vouched for it: the body is UNSIGNED-PAYLOAD.
    auth = sigv4.AuthResult(user=cfg.users[0], access_key=cfg.users[0].access_key, signing_key=b"",
                            seed_signature="", amz_date="", scope="", content_sha256="UNSIGNED-PAYLOAD")
    return Call(request=req, request_id="TEST", user=cfg.users[0], bucket=bucket, key=key,
                query={k: [v] for k, v in (query or {}).items()}, auth=auth)


class MetaProxy:
    """The real MetadataClient, with hooks run before (``hooks``) or after (``after``) chosen
    calls (by method and namespace). A hook that raises stands for the call failing: before it,
    nothing was sent; after it, the call took effect but its answer was lost."""

    def __init__(self, meta: MetadataClient) -> None:
        self.meta = meta
        self.hooks: dict[tuple[str, str], Any] = {}
        self.after: dict[tuple[str, str], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.meta, name)

    async def _hooked(self, method: str, ns: str, *args: Any, **kw: Any) -> Any:
        for (m, prefix), hook in list(self.hooks.items()):
            if m == method and ns.startswith(prefix):
                await hook()
        # put() on the real client calls its own replace(), so each is delegated by name
        result = await getattr(self.meta, method)(ns, *args, **kw)
        for (m, prefix), hook in list(self.after.items()):
            if m == method and ns.startswith(prefix):
                await hook()
        return result

    async def get(self, ns: str, *a: Any, **kw: Any) -> Any:
        return await self._hooked("get", ns, *a, **kw)

    async def put(self, ns: str, *a: Any, **kw: Any) -> Any:
        return await self._hooked("put", ns, *a, **kw)

    async def replace(self, ns: str, *a: Any, **kw: Any) -> Any:
        return await self._hooked("replace", ns, *a, **kw)

    async def delete(self, ns: str, *a: Any, **kw: Any) -> Any:
        return await self._hooked("delete", ns, *a, **kw)

    async def scan(self, ns: str, *a: Any, **kw: Any) -> Any:
        return await self._hooked("scan", ns, *a, **kw)


def run_in_store(cluster, fn) -> Any:
    """Run ``await fn(store, proxy, cfg)`` against the cluster with a private Store."""
    cfg = load_config(cluster.config_path)

    async def main() -> Any:
        async with MetadataClient(cfg, writer_id=f"review-{time.monotonic_ns()}") as meta, \
                StoragePool(cfg) as pool:
            proxy = MetaProxy(meta)
            store = Store(cluster=cfg, meta=proxy, pool=pool, clock=time.time,  # type: ignore[arg-type]
                          retire_grace_s=cfg.objstore.retire_grace_s)
            return await fn(store, proxy, cfg)

    return anyio.run(main)


async def read_all(store: Store, bucket: str, key: str) -> bytes | None:
    rec = await objects.get_record(store, bucket, key)
    if rec is None:
        return None
    out = bytearray()
    async for piece in objects.object_stream(store, rec, 0, rec.size):
        out += piece
    return bytes(out)


def frag_oids(cluster) -> set[str]:
    return {p.name.split(".")[0] for p in cluster.fragment_files()}


def test_put_cancelled_during_commit_leaves_no_broken_object(cluster, s3, bucket):
    """A PutObject whose handler is cancelled while the metadata write is in flight (HTTP/2
    RST_STREAM after the body, or the worker shutting down) must leave either the old object or
    the new one, readable.

    MetadataClient.write sends kv.apply to the replicas from its own task group; cancelling the
    caller does not stop them, so the record lands. put_object's ``except BaseException:
    store.retire([layout], now=True)`` then deletes the fragments that record points to: the key
    lists and HEADs fine, but every GET fails (503), and the replaced object's fragments leak."""
    s3.put_object(Bucket=bucket, Key="k", Body=data(3 * STRIPE, seed=1))
    new = data(3 * STRIPE, seed=2)

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> tuple[bytes | None, str | None]:
        scope = anyio.CancelScope()

        async def cancel_now() -> None:
            scope.cancel()  # the reset arrives while the record is on its way to the replicas

        proxy.hooks[("replace", "obj/")] = cancel_now
        with scope:
            await objects.put_object(store, make_call(cfg, "PUT", bucket, "k", body=new))
        proxy.hooks.clear()
        await anyio.sleep(0.5)  # the background kv.apply calls finish
        await store.collect_retired(everything=True)  # the retirer's next tick
        try:
            return await read_all(store, bucket, "k"), None
        except ReadFailed as e:
            return None, str(e)

    got, err = run_in_store(cluster, scenario)
    assert err is None, f"the visible object is unreadable: {err}"
    assert got in (data(3 * STRIPE, seed=1), new)


def test_delete_cancelled_mid_flight_does_not_leak_fragments(cluster, s3, bucket):
    """DeleteObject cancelled while its tombstone is in flight: the tombstone lands (background
    kv.apply), but ``_delete_key`` never gets ``previous`` back, so the object's fragments are
    never retired: a permanent leak (nothing references them any more)."""
    s3.put_object(Bucket=bucket, Key="gone", Body=data(2 * STRIPE, seed=3))
    before = frag_oids(cluster)

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> str:
        rec = await objects.get_record(store, bucket, "gone")
        assert rec is not None
        scope = anyio.CancelScope()

        async def cancel_now() -> None:
            scope.cancel()

        proxy.hooks[("delete", "obj/")] = cancel_now
        with scope:
            await objects.delete_object(store, make_call(cfg, "DELETE", bucket, "gone"))
        proxy.hooks.clear()
        await anyio.sleep(0.5)
        await store.collect_retired(everything=True)
        return rec.layouts[0].oid

    oid = run_in_store(cluster, scenario)
    assert oid in before
    with pytest.raises(Exception) as ei:
        s3.head_object(Bucket=bucket, Key="gone")
    assert client_error(ei.value)[0] == 404
    assert oid not in frag_oids(cluster), "fragments of a deleted object were never removed"


def test_concurrent_uploads_of_one_part_number_leak_no_fragments(cluster, s3, bucket):
    """Two UploadPart calls for the same part number: _save_part does get(old) then put(new)
    (not atomic), so when both read the same ``old`` the loser's layout is overwritten without
    ever being retired. After AbortMultipartUpload every fragment of the upload must go."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> None:
        arrived = 0
        both = anyio.Event()

        async def rendezvous() -> None:  # both uploads read the old part before either writes
            nonlocal arrived
            arrived += 1
            if arrived == 2:
                both.set()
            with anyio.fail_after(10):
                await both.wait()

        proxy.hooks[("get", "part/")] = rendezvous

        async def upload(seed: int) -> None:
            call = make_call(cfg, "PUT", bucket, "mp", body=data(2 * STRIPE, seed=seed),
                             query={"uploadId": uid, "partNumber": "1"})
            await multipart.upload_part(store, call)

        async with anyio.create_task_group() as tg:
            tg.start_soon(upload, 10)
            tg.start_soon(upload, 11)
        proxy.hooks.clear()
        await multipart.abort_upload(store, make_call(cfg, "DELETE", bucket, "mp", query={"uploadId": uid}))
        await store.collect_retired(everything=True)

    before = frag_oids(cluster)
    run_in_store(cluster, scenario)
    leaked = frag_oids(cluster) - before
    assert leaked == set(), f"fragments of an aborted upload left behind: {sorted(leaked)}"


def test_part_reupload_during_complete_does_not_destroy_object(cluster, s3, bucket):
    """UploadPart(n) racing CompleteMultipartUpload: Complete reads the parts, the re-upload
    replaces part n and retires the old layout (upload still present), then Complete commits an
    object made of the old layout. When the grace period ends the object's bytes are deleted."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="race")["UploadId"]
    p1 = data(2 * STRIPE, seed=20)
    etag = s3.upload_part(Bucket=bucket, Key="race", UploadId=uid, PartNumber=1, Body=p1)["ETag"]

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> tuple[bytes | None, str | None]:
        async def reupload() -> None:  # arrives between Complete's scan and its commit
            proxy.hooks.clear()
            call = make_call(cfg, "PUT", bucket, "race", body=data(2 * STRIPE, seed=21),
                             query={"uploadId": uid, "partNumber": "1"})
            try:
                await multipart.upload_part(store, call)
            except s3e.NoSuchUpload:
                pass  # refusing a part while the upload completes is fine; losing bytes is not

        proxy.hooks[("replace", "obj/")] = reupload
        body = (f'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part>'
                f'</CompleteMultipartUpload>').encode()
        call = make_call(cfg, "POST", bucket, "race", body=body, query={"uploadId": uid})
        await multipart.complete_upload(store, call)
        await store.collect_retired(everything=True)  # the grace period has passed
        try:
            return await read_all(store, bucket, "race"), None
        except ReadFailed as e:
            return None, str(e)

    got, err = run_in_store(cluster, scenario)
    assert err is None, f"the completed object lost its bytes: {err}"
    assert got == p1


def test_deleted_bucket_does_not_hand_its_uploads_to_the_next_owner(s3, s3_bob, bucket):
    """DeleteBucket checks only for objects: in-progress multipart uploads survive it (their part
    fragments are never deleted), and whoever creates a bucket of that name next inherits them:
    here bob lists alice's upload and could complete it into an object holding her bytes.
    Either refuse (409 BucketNotEmpty, as several S3 implementations do) or abort the uploads."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="secret")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="secret", UploadId=uid, PartNumber=1, Body=b"alice's bytes")
    try:
        s3.delete_bucket(Bucket=bucket)
    except Exception as e:  # refusing is fine
        assert client_error(e) == (409, "BucketNotEmpty")
        return
    s3_bob.create_bucket(Bucket=bucket)
    uploads = s3_bob.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], f"bob inherited alice's uploads: {uploads}"


# --- AbortMultipartUpload against CompleteMultipartUpload -------------------------------------------


def _complete_body(*parts: tuple[int, str]) -> bytes:
    inner = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
    return f"<CompleteMultipartUpload>{inner}</CompleteMultipartUpload>".encode()


async def _answer(op, store: Store, call: Call) -> tuple[int, str]:
    """(status, S3 code) of one handler call, errors included as the gateway maps them."""
    try:
        resp = await op(store, call)
    except s3e.S3Error as e:
        return e.http_status, e.code
    except MetadataError as e:
        return e.http_status, e.s3_code
    return resp.status, ""


def _one_part_upload(s3, bucket: str, key: str, seed: int) -> tuple[str, str, bytes]:
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    body = data(2 * STRIPE, seed=seed)
    etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=body)["ETag"]
    return uid, etag, body


async def _outcome(store: Store, bucket: str, key: str) -> str:
    """What a reader gets once every retired fragment is gone."""
    await store.collect_retired(everything=True)
    try:
        return "ok" if await read_all(store, bucket, key) is not None else "absent"
    except ReadFailed as e:
        return f"unreadable: {e}"


def _upload_ids(s3, bucket: str) -> list[str]:
    return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_abort_after_complete_committed_deletes_nothing(cluster, s3, bucket):
    """Abort arriving after Complete's object record committed, before Complete dropped the
    upload: abort_upload looked the upload up in any state and retired its parts at once, so the
    new object lost every fragment. S3 answers NoSuchUpload for a completed upload and deletes
    nothing."""
    uid, etag, body = _one_part_upload(s3, bucket, "ac", seed=30)

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> dict[str, Any]:
        out: dict[str, Any] = {}

        async def abort_now() -> None:
            proxy.after.clear()
            out["abort"] = await _answer(multipart.abort_upload, store,
                                         make_call(cfg, "DELETE", bucket, "ac", query={"uploadId": uid}))

        proxy.after[("replace", "obj/")] = abort_now
        out["complete"] = await _answer(multipart.complete_upload, store,
                                        make_call(cfg, "POST", bucket, "ac", body=_complete_body((1, etag)),
                                                  query={"uploadId": uid}))
        out["read"] = await _outcome(store, bucket, "ac")
        return out

    out = run_in_store(cluster, scenario)
    assert out == {"abort": (404, "NoSuchUpload"), "complete": (200, ""), "read": "ok"}
    assert s3.get_object(Bucket=bucket, Key="ac")["Body"].read() == body
    assert uid not in _upload_ids(s3, bucket)


def test_abort_while_completing_is_refused(cluster, s3, bucket):
    """Abort arriving while Complete builds the object (its state is "completing", the object
    not yet written) must not take the upload: 409 OperationAborted, try again. The Complete
    goes on; an Abort after it answers NoSuchUpload."""
    uid, etag, body = _one_part_upload(s3, bucket, "aw", seed=31)

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> dict[str, Any]:
        out: dict[str, Any] = {}
        abort = make_call(cfg, "DELETE", bucket, "aw", query={"uploadId": uid})

        async def abort_now() -> None:
            proxy.hooks.clear()
            out["abort"] = await _answer(multipart.abort_upload, store, abort)

        proxy.hooks[("replace", "obj/")] = abort_now
        out["complete"] = await _answer(multipart.complete_upload, store,
                                        make_call(cfg, "POST", bucket, "aw", body=_complete_body((1, etag)),
                                                  query={"uploadId": uid}))
        out["abort again"] = await _answer(multipart.abort_upload, store,
                                           make_call(cfg, "DELETE", bucket, "aw", query={"uploadId": uid}))
        out["read"] = await _outcome(store, bucket, "aw")
        return out

    out = run_in_store(cluster, scenario)
    assert out == {"abort": (409, "OperationAborted"), "complete": (200, ""),
                   "abort again": (404, "NoSuchUpload"), "read": "ok"}
    assert s3.get_object(Bucket=bucket, Key="aw")["Body"].read() == body


def _lose_answer() -> Any:
    async def raise_unknown() -> None:
        raise WriteOutcomeUnknown("answer lost (simulated)")
    return raise_unknown


@pytest.mark.parametrize("then", ["abort", "retried-complete", "list-uploads"])
def test_unknown_outcome_of_complete_that_committed(cluster, s3, bucket, then):
    """Complete whose object write committed but whose answer was lost (WriteOutcomeUnknown,
    503): complete_upload set the upload back to "open", and an Abort then retired the parts
    the committed object is made of. The upload must stay "completing" until a later request
    finds the object naming its parts: then the upload is over without anything retired. An
    Abort answers NoSuchUpload, a retried Complete 200 with the object's ETag, and listings no
    longer show the upload."""
    key = f"uc-{then}"
    uid, etag, body = _one_part_upload(s3, bucket, key, seed=32)

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> dict[str, Any]:
        out: dict[str, Any] = {}
        complete = make_call(cfg, "POST", bucket, key, body=_complete_body((1, etag)), query={"uploadId": uid})
        proxy.after[("replace", "obj/")] = _lose_answer()
        out["complete"] = await _answer(multipart.complete_upload, store, complete)
        proxy.after.clear()
        if then == "abort":
            out["then"] = await _answer(multipart.abort_upload, store,
                                        make_call(cfg, "DELETE", bucket, key, query={"uploadId": uid}))
        elif then == "retried-complete":
            retry = make_call(cfg, "POST", bucket, key, body=_complete_body((1, etag)), query={"uploadId": uid})
            resp = await multipart.complete_upload(store, retry)
            rec = await objects.get_record(store, bucket, key)
            assert rec is not None
            assert isinstance(resp.body, bytes) and f"<ETag>{rec.etag}</ETag>".encode() in resp.body.replace(
                b"&quot;", b'"'), resp.body
            out["then"] = (resp.status, "")
        else:
            resp = await multipart.list_uploads(store, make_call(cfg, "GET", bucket, ""))
            assert isinstance(resp.body, bytes) and uid.encode() not in resp.body, resp.body
            out["then"] = (resp.status, "")
        out["read"] = await _outcome(store, bucket, key)
        return out

    out = run_in_store(cluster, scenario)
    expected_then = (404, "NoSuchUpload") if then == "abort" else (200, "")
    assert out == {"complete": (503, "ServiceUnavailable"), "then": expected_then, "read": "ok"}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert uid not in _upload_ids(s3, bucket)


@pytest.mark.parametrize("then", ["abort", "retried-complete"])
def test_unknown_outcome_of_complete_that_did_not_commit(cluster, s3, bucket, then):
    """Complete whose object write was lost before it committed (WriteOutcomeUnknown without a
    record): while a Complete may still be writing, Abort and Complete answer 409 and nothing is
    retired; once that lease has passed, the missing object record proves the write did not
    commit, the upload is reopened, and the request goes ahead."""
    key = f"un-{then}"
    before = frag_oids(cluster)
    uid, etag, body = _one_part_upload(s3, bucket, key, seed=33)

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def request() -> Call:
            if then == "abort":
                return make_call(cfg, "DELETE", bucket, key, query={"uploadId": uid})
            return make_call(cfg, "POST", bucket, key, body=_complete_body((1, etag)), query={"uploadId": uid})

        op = multipart.abort_upload if then == "abort" else multipart.complete_upload
        proxy.hooks[("replace", "obj/")] = _lose_answer()
        out["complete"] = await _answer(multipart.complete_upload, store,
                                        make_call(cfg, "POST", bucket, key, body=_complete_body((1, etag)),
                                                  query={"uploadId": uid}))
        proxy.hooks.clear()
        out["within lease"] = await _answer(op, store, request())
        out["read then"] = await _outcome(store, bucket, key)
        lease = 4 * cfg.objstore.metadata_timeout_s
        store.clock = lambda: time.time() + lease + 1  # the lease has passed
        out["after lease"] = await _answer(op, store, request())
        out["read"] = await _outcome(store, bucket, key)
        return out

    out = run_in_store(cluster, scenario)
    assert out["complete"] == (503, "ServiceUnavailable")
    assert out["within lease"] == (409, "OperationAborted")
    assert out["read then"] == "absent"
    if then == "abort":
        assert (out["after lease"], out["read"]) == ((204, ""), "absent")
        assert frag_oids(cluster) - before == set(), "the aborted upload's parts were not removed"
    else:
        assert (out["after lease"], out["read"]) == ((200, ""), "ok")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert uid not in _upload_ids(s3, bucket)


# --- UploadPart and AbortMultipartUpload ----------------------------------------------------------


def part_records(cluster, bucket: str, uid: str) -> list[str]:
    async def scan(store: Store, proxy: MetaProxy, cfg) -> list[str]:
        return [e.key for e in await store.meta.scan(parts_ns(bucket, uid))]

    return run_in_store(cluster, scan)


def settle_oids(cluster, expected: set[str], timeout: float = 10.0) -> set[str]:
    """The fragments' object ids once they are ``expected`` (the retirer deletes within ~1 s),
    or as they are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (got := frag_oids(cluster)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def test_upload_part_after_abort_is_no_such_upload(cluster, s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="late")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="late", UploadId=uid, PartNumber=1, Body=data(2 * STRIPE, seed=30))
    s3.abort_multipart_upload(Bucket=bucket, Key="late", UploadId=uid)
    after_abort = frag_oids(cluster)  # part 1's go after the retire grace, as any retired layout
    with pytest.raises(Exception) as ei:
        s3.upload_part(Bucket=bucket, Key="late", UploadId=uid, PartNumber=2, Body=data(2 * STRIPE, seed=31))
    assert client_error(ei.value) == (404, "NoSuchUpload")
    assert part_records(cluster, bucket, uid) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert frag_oids(cluster) == after_abort


class HeldBody(io.BytesIO):
    """A part body whose sending (not botocore's checksum and signing passes, which read it
    first) stops after ``hold_at`` bytes until ``release`` is set: the request is then at the
    gateway, its body half received."""

    def __init__(self, payload: bytes, hold_at: int) -> None:
        super().__init__(payload)
        self.hold_at = hold_at
        self.held, self.release = threading.Event(), threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        sending = any(f.filename.endswith(("http/client.py", "urllib3/connection.py"))
                      for f in traceback.extract_stack())
        if sending and self.tell() >= self.hold_at and not self.release.is_set():
            self.held.set()
            self.release.wait(30)
        if sending and size is not None and size > 0 and self.tell() < self.hold_at:
            size = min(size, self.hold_at - self.tell())
        return super().read(size)


def test_part_in_flight_during_abort_leaves_nothing(cluster, s3, bucket):
    """An UploadPart whose body is still arriving when AbortMultipartUpload ends the upload: the
    part's record landed under an upload already gone (Abort had scanned the parts before it),
    so it stayed for ever, and its fragments until the garbage collector found them. S3 answers
    NoSuchUpload; afterwards nothing of the upload may be left: no part record, no fragment,
    no listing."""
    before = frag_oids(cluster)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="slow")["UploadId"]
    body = HeldBody(data(5 * STRIPE + 123, seed=33), hold_at=2 * STRIPE)
    out: dict[str, Any] = {}

    def upload() -> None:
        try:
            s3.upload_part(Bucket=bucket, Key="slow", UploadId=uid, PartNumber=1, Body=body)
            out["part"] = "stored"
        except Exception as e:  # noqa: BLE001 - the answer is what the test checks
            out["part"] = client_error(e)

    t = threading.Thread(target=upload)
    t.start()
    try:
        assert body.held.wait(20), "the part's body never started"
        time.sleep(0.3)  # the gateway has taken the request and is reading the body
        s3.abort_multipart_upload(Bucket=bucket, Key="slow", UploadId=uid)
    finally:
        body.release.set()
        t.join(30)
    assert out == {"part": (404, "NoSuchUpload")}
    assert part_records(cluster, bucket, uid) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(Exception) as ei:
        s3.list_parts(Bucket=bucket, Key="slow", UploadId=uid)
    assert client_error(ei.value) == (404, "NoSuchUpload")
    assert settle_oids(cluster, before) == before, "fragments of an aborted upload left behind"


def test_reupload_recorded_as_abort_begins_leaves_nothing(cluster, s3, bucket):
    """Part 1 uploaded again; its record lands just before AbortMultipartUpload takes the upload
    (the Abort sees the new layout, not the one it displaced), and the re-upload, finding the
    upload no longer open, retired nothing: the displaced layout's fragments were no one's."""
    before = frag_oids(cluster)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="re")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="re", UploadId=uid, PartNumber=1, Body=data(2 * STRIPE, seed=34))

    async def scenario(store: Store, proxy: MetaProxy, cfg) -> Any:
        async def abort_now() -> None:
            proxy.after.clear()
            await multipart.abort_upload(store, make_call(cfg, "DELETE", bucket, "re", query={"uploadId": uid}))

        proxy.after[("replace", "part/")] = abort_now
        call = make_call(cfg, "PUT", bucket, "re", body=data(2 * STRIPE, seed=35),
                         query={"uploadId": uid, "partNumber": "1"})
        try:
            await multipart.upload_part(store, call)
            answer: Any = "stored"
        except s3e.S3Error as e:
            answer = e.code
        await store.collect_retired(everything=True)  # the grace period has passed
        return answer, [e.key for e in await store.meta.scan(parts_ns(bucket, uid))]

    assert run_in_store(cluster, scenario) == ("NoSuchUpload", [])
    assert frag_oids(cluster) == before, "fragments of an aborted upload left behind"
