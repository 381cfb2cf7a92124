"""Bucket operations and listings: Create/Head/Delete bucket, ListBuckets, ListObjects V1/V2,
ListObjectVersions, GetBucketLocation, GetBucketVersioning."""

from __future__ import annotations

import base64
import math
import secrets
from dataclasses import replace
from typing import Any, Sequence

import anyio

from headwater.http.types import Response

from ..metadata.errors import ConditionFailed
from ..records import BUCKETS_NS, BucketRecord, ObjectRecord, objects_ns, uploads_ns
from ..s3 import errors as s3e
from ..s3 import acl, names, objectlock, xmlio
from .context import Call, Store
from .listing import list_page
from .payload import Payload

__all__ = ["create_bucket", "head_bucket", "delete_bucket", "list_buckets", "list_objects_v1",
           "list_objects_v2", "list_versions", "get_location", "get_versioning", "owned_bucket", "check_owned",
           "still_there",
           "xml_response", "int_param"]

MAX_KEYS = 1000


def xml_response(body: bytes, status: int = 200) -> Response:
    return Response(status=status, headers=[("content-type", "application/xml")], body=body)


def int_param(call: Call, name: str, default: int, lo: int = 0, hi: int = 2**31 - 1) -> int:
    raw = call.q(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise s3e.InvalidArgument(f"{name} must be an integer", ArgumentName=name, ArgumentValue=raw) from None
    if value < lo:
        raise s3e.InvalidArgument(f"{name} must be at least {lo}", ArgumentName=name, ArgumentValue=raw)
    return min(value, hi)


async def get_bucket(store: Store, name: str) -> BucketRecord | None:
    entry = await store.meta.get(BUCKETS_NS, name)
    return BucketRecord.from_value(entry.value) if entry else None


async def owned_bucket(store: Store, call: Call, name: str | None = None) -> BucketRecord:
    """The named bucket, if it exists and the caller owns it (else NoSuchBucket / AccessDenied)."""
    name = name if name is not None else call.bucket
    assert name is not None
    return check_owned(await get_bucket(store, name), call, name)


def no_such_bucket(name: str) -> s3e.NoSuchBucket:
    """S3's NoSuchBucket for bucket ``name``, naming it as S3 does (resource and BucketName)."""
    return s3e.NoSuchBucket(resource=f"/{name}", BucketName=name)


def check_owned(rec: BucketRecord | None, call: Call, name: str) -> BucketRecord:
    """``rec``, bucket ``name``'s record as read, if it exists and the caller owns it (else
    NoSuchBucket / AccessDenied)."""
    if rec is None:
        raise no_such_bucket(name)
    if rec.owner != call.user.name:
        raise s3e.AccessDenied(resource=f"/{name}")
    return rec


async def create_bucket(store: Store, call: Call) -> Response:
    assert call.bucket is not None
    names.validate_bucket_name(call.bucket)
    body = await Payload(call, max_bytes=64 * 1024).read_all()
    region = store.cluster.objstore.region
    if body.strip():
        location = xmlio.parse_create_bucket_configuration(body)
        if location and location != region:
            raise s3e.InvalidLocationConstraint(
                f"this endpoint serves region {region}, not {location}")
    refused = acl.bucket_acl_error(call.request.headers) or objectlock.bucket_lock_error(call.request.headers)
    if refused is not None:
        # Refused only for a bucket it would make (an ACL, Object Lock): the name is judged first.
        entry = await store.meta.get(BUCKETS_NS, call.bucket)
        if entry is None:
            raise refused
        return _created_before(BucketRecord.from_value(entry.value), call, region)
    rec = BucketRecord(name=call.bucket, owner=call.user.name, created=store.clock(), region=region)
    try:
        await store.meta.put(BUCKETS_NS, call.bucket, rec.to_value(), if_absent=True)
    except ConditionFailed as e:
        return _created_before(BucketRecord.from_value(e.current.value) if e.current else None, call, region)
    return _bucket_created(call.bucket)


def _bucket_created(name: str) -> Response:
    return Response(status=200, headers=[("location", f"/{name}"), ("content-length", "0")])


def _created_before(current: BucketRecord | None, call: Call, region: str) -> Response:
    """CreateBucket of a name already taken: BucketAlreadyExists for another's bucket; for one's own,
    BucketAlreadyOwnedByYou, or 200 in us-east-1."""
    assert call.bucket is not None
    if current is None or current.owner != call.user.name:
        raise s3e.BucketAlreadyExists(BucketName=call.bucket)
    # S3: BucketAlreadyOwnedByYou "in all Regions except in the North Virginia Region. For
    # legacy compatibility, if you re-create an existing bucket that you already own in
    # the North Virginia Region, Amazon S3 returns 200 OK" (the bucket is left as it is).
    if region != "us-east-1":
        raise s3e.BucketAlreadyOwnedByYou(BucketName=call.bucket)
    return _bucket_created(call.bucket)


async def head_bucket(store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    return Response(status=200, headers=[("x-amz-bucket-region", rec.region), ("content-length", "0")])


async def delete_bucket(store: Store, call: Call) -> Response:
    """DeleteBucket: BucketNotEmpty while any object is left. Multipart uploads in progress do
    not keep a bucket alive on S3: they are aborted here, their parts retired as
    AbortMultipartUpload retires them, so that no upload outlives its bucket and passes to
    whoever creates the name next."""
    # multipart and tagging import this module's helpers, so they are imported here rather than at the top.
    from .multipart import abort_all
    from .tagging import forget_bucket_tags

    rec = await owned_bucket(store, call)
    name = call.bucket
    assert name is not None
    if await store.meta.scan(objects_ns(name), limit=1):
        raise s3e.BucketNotEmpty(BucketName=name)
    await abort_all(store, name)
    # Marked even with the cache off (no wait then): a write that lands after the scan below
    # finds the mark and takes it off, which our removal, conditional on the mark, then sees.
    token = await _mark_deleting(store, rec)
    # Checked again (after the wait): a Complete that finished meanwhile made an object, and an
    # upload created since the scan would outlive the bucket.
    if await store.meta.scan(objects_ns(name), limit=1) or await store.meta.scan(uploads_ns(name), limit=1):
        await _unmark(store, rec, token)
        raise s3e.BucketNotEmpty(BucketName=name)
    try:
        await store.meta.delete(BUCKETS_NS, name, if_match=("deleting", token))
    except ConditionFailed as e:
        # Another DeleteBucket marked the record since ours (or removed it): it decides.
        if e.current is None:
            raise no_such_bucket(name) from None
        if BucketRecord.from_value(e.current.value).deleting is None:
            # A write that landed after our scan took the mark off (``still_there``).
            raise s3e.BucketNotEmpty(BucketName=name) from None
        raise s3e.OperationAborted() from None
    await forget_bucket_tags(store, rec)
    return Response(status=204)


async def _mark_deleting(store: Store, rec: BucketRecord) -> str:
    """Mark ``rec``'s bucket as being deleted and wait until no gateway keeps it unmarked in its
    bucket cache (``bucketcache.py``); the mark's token, which the removal must match."""
    token = secrets.token_hex(8)
    try:
        await store.meta.put(BUCKETS_NS, rec.name, replace(rec, deleting=token).to_value(),
                             if_match=("created", rec.created))
    except ConditionFailed as e:
        if e.current is None:
            raise no_such_bucket(rec.name) from None
        raise s3e.OperationAborted() from None  # deleted and created again meanwhile
    # From the mark's commit: every unmarked copy (this worker's too) was read before it, and
    # expires before this wait ends.
    if store.buckets.wait_s > 0:
        await anyio.sleep(store.buckets.wait_s)
    return token


async def _unmark(store: Store, rec: BucketRecord, token: str) -> None:
    """Take our mark off a bucket that stays (not empty after all), unless another DeleteBucket
    has marked it since."""
    try:
        await store.meta.put(BUCKETS_NS, rec.name, replace(rec, deleting=None).to_value(),
                             if_match=("deleting", token))
    except ConditionFailed:
        pass


async def still_there(store: Store, read: BucketRecord, sent_at: float) -> float | None:
    """Whether bucket ``read`` (as read by a call sent at ``sent_at``, the bucket cache's clock)
    is still that bucket, asked just before and again just after a write into it (an object, an
    upload). None: it was removed (or removed and created again) since, and the caller must not
    write, or must take its write back: it may have landed after DeleteBucket's last scan, under
    a name whose next owner would list it. Else the ``sent_at`` to ask with next time.

    While a cache entry of the read would still be kept, the answer is yes without a call: by
    the bucket cache's argument, a DeleteBucket that marked the record after that read scans
    only after such an entry would expire, so it sees a write acknowledged before then.

    A DeleteBucket's mark found here is taken off (if still the same mark): that DeleteBucket may
    scan before the write commits, and its removal, conditional on its mark, then fails
    (BucketNotEmpty). A record read unmarked is as good as the first read, from this read on."""
    if read.deleting is None and store.buckets.now() < sent_at + store.buckets.keep_s:
        return sent_at
    for _attempt in range(4):
        sent_at = store.buckets.now()
        entry = await store.meta.get(BUCKETS_NS, read.name)
        now = BucketRecord.from_value(entry.value) if entry else None
        if now is None or now.created != read.created or now.owner != read.owner:
            return None
        if now.deleting is None:
            return sent_at
        try:
            await store.meta.put(BUCKETS_NS, read.name, replace(now, deleting=None).to_value(),
                                 if_match=("deleting", now.deleting))
            return -math.inf  # no read saw it unmarked: the next asking reads again
        except ConditionFailed:
            continue  # removed meanwhile, or marked again by another DeleteBucket: read again
    # DeleteBuckets keep marking it: count the bucket as going.
    return None


MAX_BUCKETS = 10_000  # S3's page size for a paginated ListBuckets, and the largest max-buckets


async def list_buckets(store: Store, call: Call) -> Response:
    """ListBuckets: the caller's buckets in name order. With ``max-buckets``, ``continuation-token``,
    ``prefix`` or ``bucket-region`` it is paginated as S3 paginates it: pages of ``max-buckets``
    (10,000 when not given), a ContinuationToken while more buckets follow, Prefix echoed."""
    prefix = call.q("prefix")
    token = call.q("continuation-token")
    region = call.q("bucket-region")
    paginated = any(call.q(p) is not None for p in ("max-buckets", "continuation-token", "prefix", "bucket-region"))
    raw_max = call.q("max-buckets")
    limit = MAX_BUCKETS
    if raw_max is not None:
        try:
            limit = int(raw_max)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_BUCKETS:
            raise s3e.InvalidArgument(f"max-buckets must be an integer between 1 and {MAX_BUCKETS}",
                                      ArgumentName="max-buckets", ArgumentValue=raw_max)
    after = _decode_token(token) if token else ""
    found: list[BucketRecord] = []
    more = False
    while not more:
        batch = await store.meta.scan(BUCKETS_NS, prefix=prefix or "", start_after=after, limit=1000)
        for e in batch:
            rec = BucketRecord.from_value(e.value)
            if rec.owner != call.user.name or (region is not None and rec.region != region):
                continue
            if paginated and len(found) >= limit:
                more = True
                break
            found.append(rec)
        if len(batch) < 1000:
            break
        after = batch[-1].key
    body = xmlio.list_buckets(owner=_owner(call.user.name),
                              buckets=[xmlio.BucketEntry(name=b.name, created=b.created, region=b.region)
                                       for b in found],
                              continuation_token=_encode_token(found[-1].name) if more else None,
                              prefix=prefix)
    return xml_response(body)


async def get_location(store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    # us-east-1 answers an empty LocationConstraint, as S3 does.
    return xml_response(xmlio.location_constraint("" if rec.region == "us-east-1" else rec.region))


async def get_versioning(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    return xml_response(xmlio.versioning_configuration(None))


def _scanner(store: Store, bucket: str, delimiter: str):
    """The bucket's names for :func:`list_page`, rolled up under ``delimiter`` on the metadata nodes."""
    ns = objects_ns(bucket)

    async def scan(prefix: str, start_after: str, limit: int) -> Sequence[tuple[str, Any]]:
        return [(name, None if e is None else e.value)
                for name, e in await store.meta.list(ns, prefix=prefix, delimiter=delimiter,
                                                     start_after=start_after, limit=limit)]
    return scan


def _listing_args(call: Call) -> tuple[str, str, int, str | None]:
    prefix = call.q("prefix", "") or ""
    delimiter = call.q("delimiter", "") or ""
    max_keys = int_param(call, "max-keys", MAX_KEYS, 0, MAX_KEYS)
    enc = call.q("encoding-type")
    if enc not in (None, "url"):
        raise s3e.InvalidArgument("Invalid Encoding Method specified in Request",
                                  ArgumentName="encoding-type", ArgumentValue=enc)
    return prefix, delimiter, max_keys, enc


def _owner(name: str) -> xmlio.Owner:
    return xmlio.Owner(id=name, display_name=name)


def _entry(key: str, value: dict[str, Any], owner: bool = True) -> xmlio.ObjectEntry:
    rec = ObjectRecord.from_value(value)
    return xmlio.ObjectEntry(key=key, last_modified=rec.last_modified, etag=rec.etag, size=rec.size,
                             owner=_owner(rec.owner) if owner else None,
                             checksum_algorithm=next(iter(rec.checksums), None))


def _version(key: str, value: dict[str, Any]) -> xmlio.VersionEntry:
    rec = ObjectRecord.from_value(value)
    return xmlio.VersionEntry(key=key, last_modified=rec.last_modified, etag=rec.etag, size=rec.size,
                              owner=_owner(rec.owner))


async def list_objects_v1(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None
    prefix, delimiter, max_keys, url = _listing_args(call)
    marker = call.q("marker", "") or ""
    page = await list_page(_scanner(store, call.bucket, delimiter), prefix=prefix, delimiter=delimiter,
                           start_after=marker, max_keys=max_keys, page_size=max_keys + 1)
    body = xmlio.list_objects_v1(
        bucket=call.bucket, prefix=prefix, marker=marker, delimiter=delimiter, max_keys=max_keys,
        is_truncated=page.truncated, next_marker=page.last if (page.truncated and delimiter) else None,
        contents=[_entry(k, v) for k, v in page.contents], common_prefixes=page.prefixes, encoding_type=url)
    return xml_response(body)


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise s3e.InvalidArgument("The continuation token provided is incorrect",
                                  ArgumentName="continuation-token", ArgumentValue=token) from None


async def list_objects_v2(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None
    prefix, delimiter, max_keys, url = _listing_args(call)
    token = call.q("continuation-token")
    start_after = call.q("start-after", "") or ""
    cursor = _decode_token(token) if token else start_after
    fetch_owner = call.q("fetch-owner") == "true"
    page = await list_page(_scanner(store, call.bucket, delimiter), prefix=prefix, delimiter=delimiter,
                           start_after=cursor, max_keys=max_keys, page_size=max_keys + 1)
    body = xmlio.list_objects_v2(
        bucket=call.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
        is_truncated=page.truncated, continuation_token=token,
        next_continuation_token=_encode_token(page.last) if page.truncated else None,
        start_after=start_after or None, contents=[_entry(k, v, fetch_owner) for k, v in page.contents],
        common_prefixes=page.prefixes, encoding_type=url, fetch_owner=fetch_owner)
    return xml_response(body)


async def list_versions(store: Store, call: Call) -> Response:
    """Buckets are unversioned: each object is listed once, version id ``null``, latest."""
    await owned_bucket(store, call)
    assert call.bucket is not None
    prefix, delimiter, max_keys, url = _listing_args(call)
    key_marker = call.q("key-marker", "") or ""
    page = await list_page(_scanner(store, call.bucket, delimiter), prefix=prefix, delimiter=delimiter,
                           start_after=key_marker, max_keys=max_keys, page_size=max_keys + 1)
    body = xmlio.list_object_versions(
        bucket=call.bucket, prefix=prefix, key_marker=key_marker, version_id_marker=call.q("version-id-marker", "") or "",
        delimiter=delimiter, max_keys=max_keys, is_truncated=page.truncated,
        next_key_marker=page.last if page.truncated else None,
        next_version_id_marker="null" if page.truncated else None,
        versions=[_version(k, v) for k, v in page.contents], common_prefixes=page.prefixes, encoding_type=url)
    return xml_response(body)
