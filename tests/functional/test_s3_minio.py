"""minio-py (the MinIO Python SDK), unmodified, against one real cluster, as a user would call it.

``Minio(endpoint, access_key, secret_key, secure=False, region=...)``: buckets, PutObject with a
known length and streamed (``length=-1``: multipart), fput/fget of a multipart file, ranged GETs,
StatObject, listings, CopyObject and ComposeObject (UploadPartCopy), bulk deletes, presigned GET
and PUT URLs fetched with httpx. Over plain HTTP minio-py signs every request with the SHA-256 of
its body (``x-amz-content-sha256`` the hex digest, never a ``STREAMING-*`` value): it reads each
part into memory before sending it.
"""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from minio import Minio
from minio.commonconfig import GOVERNANCE, REPLACE, ComposeSource, CopySource
from minio.datatypes import PostPolicy
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.retention import Retention

MiB = 1024 * 1024
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
CLUSTER_OPTIONS = dict(stripe_size="64KiB", inline_max_size="4KiB", k=2, m=1, storage_nodes=3, metadata_nodes=1)


@pytest.fixture(scope="module")
def mc(cluster) -> Minio:
    """minio-py as alice, over plain HTTP, in the cluster's region (no GetBucketLocation first)."""
    u = cluster.user(0)
    return Minio(cluster.endpoint.removeprefix("http://"), access_key=u.access_key, secret_key=u.secret_key,
                 secure=False, region=cluster.region)


def blob(size: int, seed: int = 0) -> bytes:
    """Bytes that differ from part to part (so a part sent twice or out of order shows)."""
    return hashlib.shake_256(f"{seed}".encode()).digest(size) if size else b""


def md5_hex(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def s3_error(fn, *args, **kw) -> S3Error:
    with pytest.raises(S3Error) as info:
        fn(*args, **kw)
    return info.value


# --- buckets -------------------------------------------------------------------------------------

def test_buckets(mc, bucket):
    name = bucket + "-mc"
    assert not mc.bucket_exists(name)
    mc.make_bucket(name)
    assert mc.bucket_exists(name)
    listed = {b.name: b for b in mc.list_buckets()}
    assert name in listed and bucket in listed and listed[name].creation_date is not None
    # us-east-1: re-creating one's own bucket succeeds (test_s3_compat.py)
    mc.make_bucket(name)
    mc.put_object(name, "k", io.BytesIO(b"x"), 1)
    assert s3_error(mc.remove_bucket, name).code == "BucketNotEmpty"
    mc.remove_object(name, "k")
    mc.remove_bucket(name)
    assert not mc.bucket_exists(name)
    assert s3_error(mc.remove_bucket, name).code == "NoSuchBucket"


def test_object_lock_is_refused_not_ignored(mc, bucket):
    """Object Lock (WORM retention) is not implemented. A bucket asked for with it is refused
    (501 NotImplemented, the header named) rather than made without it, and writes asking for
    retention or a legal hold get S3's answer on a bucket without Object Lock (400 InvalidRequest):
    their owner must not believe the objects protected."""
    err = s3_error(mc.make_bucket, bucket + "-locked", object_lock=True)
    assert (err.code, err.response.status) == ("NotImplemented", 501)
    assert not mc.bucket_exists(bucket + "-locked")
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)
    for kw in ({"legal_hold": True}, {"retention": Retention(GOVERNANCE, until)}):
        err = s3_error(mc.put_object, bucket, "locked", io.BytesIO(b"x"), 1, **kw)
        assert (err.code, err.message) == ("InvalidRequest", "Bucket is missing Object Lock Configuration")
        err = s3_error(mc.put_object, bucket, "locked", io.BytesIO(b"x"), -1, part_size=5 * MiB, **kw)
        assert err.code == "InvalidRequest"
    mc.put_object(bucket, "src", io.BytesIO(b"x"), 1)
    err = s3_error(mc.copy_object, bucket, "locked", CopySource(bucket, "src"), legal_hold=True)
    assert err.code == "InvalidRequest"
    assert [o.object_name for o in mc.list_objects(bucket)] == ["src"]
    assert list(mc._list_multipart_uploads(bucket).uploads) == []


def test_without_a_region_minio_asks_get_bucket_location(cluster, bucket):
    """Without ``region=`` minio-py asks each bucket's region first (GetBucketLocation: an empty
    LocationConstraint means us-east-1) and signs for it."""
    u = cluster.user(0)
    plain = Minio(cluster.endpoint.removeprefix("http://"), access_key=u.access_key, secret_key=u.secret_key,
                  secure=False)
    plain.put_object(bucket, "k", io.BytesIO(b"v"), 1)
    assert plain.get_object(bucket, "k").data == b"v"
    assert plain._get_region(bucket) == cluster.region


# --- uploads ---------------------------------------------------------------------------------------

def test_put_object_known_length(mc, bucket):
    body = blob(300_000)
    res = mc.put_object(bucket, "a/known", io.BytesIO(body), len(body), content_type="video/mp4",
                        metadata={"Who": "alice", "x-amz-meta-Lang": "en"})
    assert res.etag == md5_hex(body)
    st = mc.stat_object(bucket, "a/known")
    assert (st.size, st.etag, st.content_type) == (len(body), md5_hex(body), "video/mp4")
    assert st.metadata["x-amz-meta-who"] == "alice" and st.metadata["x-amz-meta-lang"] == "en"
    assert st.last_modified is not None
    assert mc.get_object(bucket, "a/known").data == body


def test_put_object_unknown_length_is_multipart(mc, bucket):
    body = blob(11 * MiB + 12345, seed=1)
    res = mc.put_object(bucket, "streamed", io.BytesIO(body), length=-1, part_size=5 * MiB)
    parts = [body[i:i + 5 * MiB] for i in range(0, len(body), 5 * MiB)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"
    assert res.etag == expected
    st = mc.stat_object(bucket, "streamed")
    assert (st.size, st.etag) == (len(body), expected)
    got = mc.get_object(bucket, "streamed")
    try:
        assert hashlib.sha256(got.read()).digest() == hashlib.sha256(body).digest()
    finally:
        got.close()
        got.release_conn()


def test_fput_fget_multipart_file(mc, bucket, tmp_path: Path):
    src = tmp_path / "src.bin"
    body = blob(12 * MiB, seed=2)
    src.write_bytes(body)
    res = mc.fput_object(bucket, "dir/file.bin", str(src), part_size=5 * MiB)
    assert res.etag.endswith("-3")
    dst = tmp_path / "dst.bin"
    st = mc.fget_object(bucket, "dir/file.bin", str(dst))
    assert st.size == len(body) and st.etag == res.etag
    assert dst.read_bytes() == body
    # fget_object leaves no .part.minio file behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]


def test_get_object_offset_and_length(mc, bucket):
    body = blob(200_000, seed=3)
    mc.put_object(bucket, "r", io.BytesIO(body), len(body))
    for offset, length in ((0, 1), (70_000, 65_536), (199_999, 1), (150_000, 0)):
        resp = mc.get_object(bucket, "r", offset=offset, length=length)
        want = body[offset:offset + length] if length else body[offset:]
        assert resp.data == want, (offset, length)
    assert s3_error(mc.get_object, bucket, "r", offset=300_000).code == "InvalidRange"


def test_stat_object_and_missing(mc, bucket):
    err = s3_error(mc.stat_object, bucket, "nope")
    assert err.code == "NoSuchKey" and err.response.status == 404
    assert s3_error(mc.get_object, bucket, "nope").code == "NoSuchKey"
    assert s3_error(mc.stat_object, bucket + "-gone", "nope").code in ("NoSuchBucket", "NoSuchKey")


def test_non_ascii_user_metadata(mc, bucket):
    """minio-py refuses a non-ASCII value under a plain name (its own check, minio-py#770). Under
    a name that already carries ``x-amz-meta-`` the check is skipped: it signs the UTF-8 of the
    text while http.client sends the ISO-8859-1 byte, so the signature cannot match, and S3
    answers SignatureDoesNotMatch to exactly this request (minio-py#764); so do we. ASCII
    metadata, and RFC 2047 values the caller encodes, come back as sent."""
    with pytest.raises(ValueError):
        mc.put_object(bucket, "m", io.BytesIO(b"x"), 1, metadata={"city": "Zürich"})
    err = s3_error(mc.put_object, bucket, "m", io.BytesIO(b"x"), 1, metadata={"x-amz-meta-city": "Zürich"})
    assert err.code == "SignatureDoesNotMatch" and err.response.status == 403
    assert s3_error(mc.stat_object, bucket, "m").code == "NoSuchKey"
    encoded = "=?UTF-8?B?WsO8cmljaA==?="
    mc.put_object(bucket, "m", io.BytesIO(b"x"), 1, metadata={"city": encoded})
    assert mc.stat_object(bucket, "m").metadata["x-amz-meta-city"] == encoded


# --- listings --------------------------------------------------------------------------------------

@pytest.fixture
def tree(mc, bucket) -> str:
    for key in ("a/1", "a/2", "a/b/3", "c", "d/4"):
        mc.put_object(bucket, key, io.BytesIO(key.encode()), len(key), metadata={"k": key.replace("/", "-")})
    return bucket


def test_list_objects(mc, tree):
    # minio-py yields a page's objects, then its common prefixes
    top = list(mc.list_objects(tree))
    assert [(o.object_name, o.is_dir) for o in top] == [("c", False), ("a/", True), ("d/", True)]
    assert [o.object_name for o in mc.list_objects(tree, prefix="a/")] == ["a/1", "a/2", "a/b/"]
    everything = list(mc.list_objects(tree, recursive=True))
    assert [o.object_name for o in everything] == ["a/1", "a/2", "a/b/3", "c", "d/4"]
    assert everything[0].size == 3 and everything[0].etag == md5_hex(b"a/1")
    assert [o.object_name for o in mc.list_objects(tree, recursive=True, start_after="a/b/3")] == ["c", "d/4"]
    # ListObjectsV1 (use_api_v1) pages with a marker
    assert [o.object_name for o in mc.list_objects(tree, recursive=True, use_api_v1=True)] == \
        [o.object_name for o in everything]


def test_list_objects_include_user_meta(mc, tree):
    """``include_user_meta`` is MinIO's own ``metadata=true`` parameter: S3 ignores it, and so do we."""
    listed = list(mc.list_objects(tree, recursive=True, include_user_meta=True))
    assert [o.object_name for o in listed] == ["a/1", "a/2", "a/b/3", "c", "d/4"]


def test_list_objects_include_version(mc, tree):
    listed = list(mc.list_objects(tree, recursive=True, include_version=True))
    assert [o.object_name for o in listed] == ["a/1", "a/2", "a/b/3", "c", "d/4"]
    assert {o.version_id for o in listed} <= {None, "null"}
    assert all(o.is_latest in ("true", None) for o in listed)


# --- copies ----------------------------------------------------------------------------------------

def test_copy_object(mc, bucket):
    body = blob(100_000, seed=4)
    mc.put_object(bucket, "src", io.BytesIO(body), len(body), content_type="text/plain", metadata={"a": "1"})
    res = mc.copy_object(bucket, "copy", CopySource(bucket, "src"))
    assert res.etag == md5_hex(body)
    st = mc.stat_object(bucket, "copy")
    assert st.content_type == "text/plain" and st.metadata["x-amz-meta-a"] == "1"
    mc.copy_object(bucket, "replaced", CopySource(bucket, "src"), metadata={"b": "2", "Content-Type": "image/png"},
                   metadata_directive=REPLACE)
    st = mc.stat_object(bucket, "replaced")
    assert st.content_type == "image/png" and st.metadata["x-amz-meta-b"] == "2"
    assert "x-amz-meta-a" not in st.metadata
    assert mc.get_object(bucket, "replaced").data == body


def test_compose_object(mc, bucket):
    """ComposeObject: a multipart upload whose parts are UploadPartCopy of (ranges of) sources."""
    a, b = blob(6 * MiB, seed=5), blob(1000, seed=6)
    mc.put_object(bucket, "a", io.BytesIO(a), len(a))
    mc.put_object(bucket, "b", io.BytesIO(b), len(b))
    sources = [ComposeSource(bucket, "a"), ComposeSource(bucket, "a", offset=MiB, length=5 * MiB),
               ComposeSource(bucket, "b")]
    mc.compose_object(bucket, "composed", sources)
    want = a + a[MiB:6 * MiB] + b
    got = mc.get_object(bucket, "composed")
    try:
        assert hashlib.sha256(got.read()).digest() == hashlib.sha256(want).digest()
    finally:
        got.close()
        got.release_conn()
    assert mc.stat_object(bucket, "composed").size == len(want)


# --- deletes ---------------------------------------------------------------------------------------

def test_remove_object_and_objects(mc, bucket):
    keys = [f"x/{i}" for i in range(5)]
    for k in keys:
        mc.put_object(bucket, k, io.BytesIO(b"v"), 1)
    mc.remove_object(bucket, keys[0])
    mc.remove_object(bucket, "never-there")  # idempotent, as S3
    errors = list(mc.remove_objects(bucket, [DeleteObject(k) for k in keys[1:3] + ["x/missing"]]))
    assert errors == []
    assert [o.object_name for o in mc.list_objects(bucket, recursive=True)] == keys[3:]


def test_version_ids_other_than_null_do_not_reach_the_object(mc, bucket):
    """Buckets are unversioned: the object is version ``null``, and no other version exists.
    Reading another is 404 NoSuchVersion (as CopyObject's source already was); deleting one,
    alone or in bulk, deletes nothing that exists, so answers as S3 does for a version already
    gone (204, or listed as Deleted) and leaves the object as it is."""
    mc.put_object(bucket, "k", io.BytesIO(b"v"), 1)
    assert mc.get_object(bucket, "k", version_id="null").data == b"v"
    assert mc.stat_object(bucket, "k", version_id="null").size == 1
    assert s3_error(mc.get_object, bucket, "k", version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrH").code == "NoSuchVersion"
    err = s3_error(mc.stat_object, bucket, "k", version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrH")
    assert err.response.status == 404
    mc.remove_object(bucket, "k", version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrH")
    assert list(mc.remove_objects(bucket, [DeleteObject("k", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrH")])) == []
    assert mc.get_object(bucket, "k").data == b"v"
    assert list(mc.remove_objects(bucket, [DeleteObject("k", "null")])) == []
    assert s3_error(mc.stat_object, bucket, "k").code == "NoSuchKey"
    mc.put_object(bucket, "k", io.BytesIO(b"v"), 1)
    mc.remove_object(bucket, "k", version_id="null")
    assert list(mc.list_objects(bucket)) == []


# --- presigned URLs --------------------------------------------------------------------------------

def test_presigned_get_and_put(mc, bucket):
    put_url = mc.presigned_put_object(bucket, "pre/put", expires=timedelta(minutes=5))
    r = httpx.put(put_url, content=b"presigned body")
    assert r.status_code == 200, r.text
    get_url = mc.presigned_get_object(bucket, "pre/put", expires=timedelta(minutes=5),
                                      response_headers={"response-content-type": "text/x-test"})
    r = httpx.get(get_url)
    assert r.status_code == 200 and r.content == b"presigned body"
    assert r.headers["content-type"] == "text/x-test"
    r = httpx.get(get_url.replace("pre%2Fput", "pre%2Fother").replace("pre/put", "pre/other"))
    assert r.status_code == 403


# --- multipart failure -----------------------------------------------------------------------------

def test_failed_streamed_upload_aborts(mc, bucket):
    """A streamed put whose source fails mid-way: minio-py aborts its upload, nothing is left."""

    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            if self.sent >= 6 * MiB:
                raise OSError("source failed")
            n = min(n if n > 0 else MiB, 6 * MiB - self.sent)
            self.sent += n
            return b"z" * n

    with pytest.raises(OSError):
        mc.put_object(bucket, "broken", Broken(), length=-1, part_size=5 * MiB)
    uploads = mc._list_multipart_uploads(bucket)  # minio-py's own (private) ListMultipartUploads
    assert list(uploads.uploads) == []
    assert s3_error(mc.stat_object, bucket, "broken").code == "NoSuchKey"


# --- POST Object (browser uploads) ---------------------------------------------------------------

def post_form(mc, bucket: str, *, prefix: str = "up/", max_size: int = MiB, expires: timedelta = timedelta(minutes=5),
              starts: dict[str, str] | None = None, **equals: str) -> dict[str, str]:
    """minio-py's presigned POST policy: keys under ``prefix``, at most ``max_size`` bytes, an
    exact match for each of ``equals`` and a prefix for each of ``starts`` (field -> value)."""
    policy = PostPolicy(bucket, datetime.now(timezone.utc) + expires)
    policy.add_starts_with_condition("key", prefix)
    for name, value in (starts or {}).items():
        policy.add_starts_with_condition(name, value)
    policy.add_content_length_range_condition(1, max_size)
    for name, value in equals.items():
        policy.add_equals_condition(name, value)
    return mc.presigned_post_policy(policy)


def post(cluster, bucket: str, form: dict[str, str], body: bytes, *, filename: str = "clip.mp4",
         content_type: str = "video/mp4", **fields: str) -> httpx.Response:
    """What a browser sends: the form's fields, then the file, as multipart/form-data."""
    return httpx.post(f"{cluster.endpoint}/{bucket}", data={**form, **fields},
                      files={"file": (filename, body, content_type)}, timeout=60)


@pytest.mark.parametrize("size", [300_000, 9 * MiB + 7])  # past the inline size: stored as stripes
def test_presigned_post_policy_upload(cluster, mc, bucket, size):
    body = blob(size, seed=7)
    form = post_form(mc, bucket, max_size=10 * MiB, **{"Content-Type": "video/mp4", "x-amz-meta-owner": "alice"})
    r = post(cluster, bucket, form, body, key="up/${filename}", **{"Content-Type": "video/mp4",
                                                                   "x-amz-meta-owner": "alice"})
    # S3's default answer: 204, with the ETag and the new object's Location
    assert r.status_code == 204, r.text
    assert r.headers["etag"] == f'"{md5_hex(body)}"'
    assert r.headers["location"].endswith(f"/{bucket}/up/clip.mp4")
    st = mc.stat_object(bucket, "up/clip.mp4")
    assert (st.size, st.etag, st.content_type) == (len(body), md5_hex(body), "video/mp4")
    assert st.metadata["x-amz-meta-owner"] == "alice"
    assert mc.get_object(bucket, "up/clip.mp4").data == body


def test_post_success_action_status_and_redirect(cluster, mc, bucket):
    form = post_form(mc, bucket, success_action_status="201")
    r = post(cluster, bucket, form, b"small", key="up/a", success_action_status="201")
    assert r.status_code == 201, r.text
    root = ET.fromstring(r.content)
    assert root.tag == f"{NS}PostResponse"
    assert [root.findtext(f"{NS}{t}") for t in ("Bucket", "Key", "ETag")] == [bucket, "up/a", f'"{md5_hex(b"small")}"']
    form = post_form(mc, bucket, starts={"success_action_redirect": "https://example.test/"})
    r = post(cluster, bucket, form, b"small", key="up/b", success_action_redirect="https://example.test/done?x=1")
    assert r.status_code == 303
    assert r.headers["location"] == ("https://example.test/done?x=1&bucket=" + bucket + "&key=up%2Fb&etag=%22"
                                     + md5_hex(b"small") + "%22")
    assert mc.stat_object(bucket, "up/b").size == 5
    # no Content-Type field: the file part's own type is not the object's (S3 does the same)
    assert mc.stat_object(bucket, "up/a").content_type == "binary/octet-stream"


def s3_code(r: httpx.Response) -> tuple[int, str, str]:
    root = ET.fromstring(r.content)
    return r.status_code, root.findtext("Code"), root.findtext("Message")


def test_post_policy_is_enforced(cluster, mc, bucket):
    form = post_form(mc, bucket, max_size=1000)
    # a key outside the policy's prefix
    status, code, message = s3_code(post(cluster, bucket, form, b"x", key="elsewhere/x"))
    assert (status, code) == (403, "AccessDenied") and "Policy Condition failed" in message
    # a field the policy does not name
    status, code, message = s3_code(post(cluster, bucket, form, b"x", key="up/x", acl="public-read"))
    assert (status, code) == (403, "AccessDenied") and "Extra input fields: acl" in message
    # content-length-range: too large (while it streams), too small (empty)
    assert s3_code(post(cluster, bucket, form, b"x" * 1001, key="up/x"))[:2] == (400, "EntityTooLarge")
    assert s3_code(post(cluster, bucket, form, b"", key="up/x"))[:2] == (400, "EntityTooSmall")
    # the policy signed for this bucket does not open another one
    other = bucket + "-other"
    mc.make_bucket(other)
    status, code, message = s3_code(post(cluster, other, form, b"x", key="up/x"))
    assert (status, code) == (403, "AccessDenied") and "$bucket" in message
    # a changed policy, a wrong signature, an expired policy
    tampered = {**form, "x-amz-signature": "0" * 64}
    assert s3_code(post(cluster, bucket, tampered, b"x", key="up/x"))[:2] == (403, "SignatureDoesNotMatch")
    expired = post_form(mc, bucket, expires=timedelta(seconds=-1))
    status, code, message = s3_code(post(cluster, bucket, expired, b"x", key="up/x"))
    assert (status, code) == (403, "AccessDenied") and "Policy expired" in message
    # no policy at all: an anonymous upload, which no bucket here takes
    assert s3_code(post(cluster, bucket, {}, b"x", key="up/x"))[:2] == (403, "AccessDenied")
    assert list(mc.list_objects(bucket, recursive=True)) == []
    assert list(mc.list_objects(other, recursive=True)) == []


def test_post_form_limits_and_metadata(cluster, mc, bucket):
    # more than S3's 20 KB of fields before the file
    form = post_form(mc, bucket, starts={"x-amz-meta-note": ""})
    r = post(cluster, bucket, form, b"x", key="up/x", **{"x-amz-meta-note": "n" * 21_000})
    assert s3_code(r)[:2] == (400, "MaxPostPreDataLengthExceededError")
    # no file at all
    r = httpx.post(f"{cluster.endpoint}/{bucket}", data={**form, "key": "up/x"}, files={"other": ("a", b"x")})
    assert s3_code(r)[:2] == (400, "InvalidArgument")
    # non-ASCII metadata in a form (UTF-8, as browsers send it) comes back RFC 2047 encoded, as from a PUT
    r = post(cluster, bucket, form, b"x", key="up/x", **{"x-amz-meta-note": "Grüße"})
    assert r.status_code == 204, r.text
    assert mc.stat_object(bucket, "up/x").metadata["x-amz-meta-note"] == "=?UTF-8?B?R3LDvMOfZQ==?="


def test_post_policy_of_another_user(cluster, mc, bucket):
    """bob's signed policy does not let him into alice's bucket."""
    u = cluster.user(1)
    bob = Minio(cluster.endpoint.removeprefix("http://"), access_key=u.access_key, secret_key=u.secret_key,
                secure=False, region=cluster.region)
    form = post_form(bob, bucket)
    assert s3_code(post(cluster, bucket, form, b"x", key="up/x"))[:2] == (403, "AccessDenied")
    assert list(mc.list_objects(bucket, recursive=True)) == []


# --- POST Object as a hostile client sends it ------------------------------------------------------

def test_post_header_fields_with_control_characters_are_refused(cluster, mc, bucket):
    """A form field, unlike a header, can hold CR, LF or NUL. Content-Type and x-amz-meta-* with
    one are refused (400 InvalidArgument) and nothing is stored: stored, every GET and HEAD of the
    object was a 500 (the header could not be sent). A policy's ``starts-with "image/"`` let
    ``image/png\\r\\nX-Evil: 1`` through."""
    form = post_form(mc, bucket, starts={"Content-Type": "image/", "x-amz-meta-note": ""})
    for fields in ({"Content-Type": "image/png\r\nX-Evil: 1", "x-amz-meta-note": "n"},
                   {"Content-Type": "image/png", "x-amz-meta-note": "a\r\nSet-Cookie: s=1"},
                   {"Content-Type": "image/png", "x-amz-meta-note": "nul\x00"}):
        status, code, message = s3_code(post(cluster, bucket, form, b"x", key="up/x", **fields))
        assert (status, code) == (400, "InvalidArgument") and "control character" in message
    # a metadata field whose name is no header's (a policy can name it)
    for name in ("x-amz-meta-a b", "x-amz-meta-\u00fc", "x-amz-meta-a:b"):
        named = post_form(mc, bucket, starts={name: ""})
        status, code, message = s3_code(post(cluster, bucket, named, b"x", key="up/x", **{name: "v"}))
        assert (status, code) == (400, "InvalidArgument") and "name of an HTTP header" in message
    assert list(mc.list_objects(bucket, recursive=True)) == []
    r = post(cluster, bucket, form, b"x", key="up/x", **{"Content-Type": "image/png", "x-amz-meta-note": "tab\tok"})
    assert r.status_code == 204, r.text
    assert mc.stat_object(bucket, "up/x").content_type == "image/png"


def test_post_redirect_that_no_header_can_carry(cluster, mc, bucket):
    """``success_action_redirect`` with CR/LF or non-latin-1 text: the object was stored and the
    answer was a 500 (or a dropped connection). It is a 303 with the URL percent-encoded."""
    form = post_form(mc, bucket, starts={"success_action_redirect": "https://example.test/"})
    for url, sent in (("https://example.test/a\r\nX-Evil: 1", "https://example.test/a%0D%0AX-Evil:%201"),
                      ("https://example.test/€ x", "https://example.test/%E2%82%AC%20x")):
        r = post(cluster, bucket, form, b"small", key="up/r", success_action_redirect=url)
        assert r.status_code == 303, r.text
        assert r.headers["location"] == sent + "?bucket=" + bucket + "&key=up%2Fr&etag=%22" + md5_hex(b"small") + "%22"
        assert "x-evil" not in r.headers


def test_post_fields_count_boundaries_and_headers(cluster, mc, bucket):
    """S3's 20 KB before the file count the boundaries and part headers, not only names and
    values: 100 000 empty-named parts (5 MB) before the file, or a long preamble, were all read
    and accepted; now MaxPostPreDataLengthExceededError, early, and nothing stored."""
    form = {**post_form(mc, bucket), "key": "up/x"}
    req = httpx.Request("POST", f"{cluster.endpoint}/{bucket}", data=form, files={"file": ("f", b"x")})
    ctype, body = req.headers["content-type"], req.read()
    boundary = ctype.split("boundary=")[1].encode()
    empty = b"--" + boundary + b'\r\nContent-Disposition: form-data; name=""\r\n\r\n\r\n'
    for hostile in (empty * 100_000 + body, b"p" * (1 << 20) + b"\r\n" + body):
        r = httpx.post(f"{cluster.endpoint}/{bucket}", content=hostile, headers={"content-type": ctype}, timeout=60)
        assert s3_code(r)[:2] == (400, "MaxPostPreDataLengthExceededError")
    assert list(mc.list_objects(bucket, recursive=True)) == []
    assert httpx.post(f"{cluster.endpoint}/{bucket}", content=body, headers={"content-type": ctype}).status_code == 204


def test_post_fields_after_the_file_are_ignored_but_bounded(cluster, mc, bucket):
    """Fields after the file are ignored (as S3 ignores them: an acl the policy does not name, a
    second key), but S3's 20 KB are of the whole form less the file: 5 MB of field or of
    epilogue after the file were read to the end before the object was committed."""
    form = {**post_form(mc, bucket), "key": "up/x"}
    req = httpx.Request("POST", f"{cluster.endpoint}/{bucket}", data=form, files={"file": ("f", b"x")})
    ctype, body = req.headers["content-type"], req.read()
    boundary = ctype.split("boundary=")[1].encode()
    closing = b"--" + boundary + b"--\r\n"
    assert body.endswith(closing)

    def after_file(name: str, value: bytes) -> bytes:
        return (body[:-len(closing)] + b"--" + boundary + b'\r\nContent-Disposition: form-data; name="'
                + name.encode() + b'"\r\n\r\n' + value + b"\r\n" + closing)

    for hostile in (after_file("x-ignore-note", b"n" * (5 << 20)), body + b"e" * (5 << 20)):
        r = httpx.post(f"{cluster.endpoint}/{bucket}", content=hostile, headers={"content-type": ctype}, timeout=60)
        assert s3_code(r)[:2] == (400, "MaxPostPreDataLengthExceededError")
    assert list(mc.list_objects(bucket, recursive=True)) == []
    r = httpx.post(f"{cluster.endpoint}/{bucket}", content=after_file("acl", b"public-read"),
                   headers={"content-type": ctype})
    assert r.status_code == 204, r.text
    assert r.headers["location"].endswith("/up/x")


def test_post_with_two_files_is_refused_and_stores_nothing(cluster, mc, bucket):
    """Two ``file`` parts: S3 answers 400 InvalidArgument "POST requires exactly one file upload
    per request." (before, the first was stored and the second ignored). Small and striped
    first files alike leave nothing behind."""
    form = {**post_form(mc, bucket), "key": "up/two"}
    for first in (b"x", blob(300_000, seed=3)):
        r = httpx.post(f"{cluster.endpoint}/{bucket}", data=form, timeout=60,
                       files=[("file", ("a", first)), ("FILE", ("b", b"second"))])
        assert s3_code(r) == (400, "InvalidArgument", "POST requires exactly one file upload per request."), r.text
        assert ET.fromstring(r.content).findtext("ArgumentName") == "file"
    assert list(mc.list_objects(bucket, recursive=True)) == []
    r = httpx.post(f"{cluster.endpoint}/{bucket}", data=form, files=[("file", ("a", b"one"))])
    assert r.status_code == 204, r.text


def test_post_form_without_a_boundary_is_malformed(cluster, mc, bucket):
    """multipart/form-data without a (usable) boundary is a malformed form (400
    MalformedPOSTRequest), not an anonymous request to some other operation (403)."""
    form = {**post_form(mc, bucket), "key": "up/x"}
    req = httpx.Request("POST", f"{cluster.endpoint}/{bucket}", data=form, files={"file": ("f", b"x")})
    for ctype in ("multipart/form-data", 'multipart/form-data; boundary=""', "Multipart/Form-Data;charset=utf-8"):
        r = httpx.post(f"{cluster.endpoint}/{bucket}", content=req.read(), headers={"content-type": ctype})
        assert s3_code(r)[:2] == (400, "MalformedPOSTRequest"), ctype
    assert list(mc.list_objects(bucket, recursive=True)) == []
