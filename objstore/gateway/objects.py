"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects, CopyObject."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import AsyncGenerator, AsyncIterator, Callable, Sequence

import anyio

from headwater.http.types import Headers, Response
from headwater.splice import PipeSpan

from ..config import ErasureScheme
from ..datapath import LayoutWriter, read_layout
from ..errors import s3_error
from ..metadata.errors import NOT_STORED, ConditionFailed, InvalidKey, MetadataError
from ..records import BUCKETS_NS, BucketRecord, Layout, ObjectRecord, new_rev, objects_ns
from ..s3 import conditions, encryption, names, ranges, tagging, xmlio
from ..s3 import errors as s3e
from ..s3.xmlio import http_date
from .buckets import check_owned, no_such_bucket, owned_bucket, still_there, xml_response
from .context import Call, Store
from .payload import Payload

__all__ = ["put_object", "get_object", "head_object", "delete_object", "delete_objects", "copy_object",
           "store_body", "get_record", "object_stream", "parse_copy_source"]



async def get_record(store: Store, bucket: str, key: str) -> ObjectRecord | None:
    entry = await store.meta.get(objects_ns(bucket), key)
    return ObjectRecord.from_value(entry.value) if entry else None


async def store_body(store: Store, scheme: ErasureScheme, chunks: AsyncIterator[bytes], *,
                     inline_max: int, digests: Sequence[Callable[[bytes], None]] = ()
                     ) -> tuple[bytes | None, Layout | None]:
    """Consume ``chunks`` into either inline bytes (small bodies) or an erasure-coded layout.

    Each of ``digests`` (a ``Payload.defer_digests()``) is given every byte of the body, in order,
    before this returns: in its own lane of worker threads for a layout (see ``LayoutWriter``),
    here for inline bytes.
    On any failure (bad body, client gone, too few nodes) every fragment written is removed.
    """
    head = bytearray()
    async for piece in chunks:
        head += piece
        if len(head) > inline_max:
            break
    else:
        if inline_max >= 0:
            inline = bytes(head)
            for update in digests:
                update(inline)
            return inline, None
    async with LayoutWriter(store.pool, scheme, digests=digests) as writer:
        await writer.write(bytes(head))
        del head
        # The same iterator goes on where the loop above stopped.
        async for piece in chunks:
            await writer.write(piece)
        return None, await writer.finish()


def standard_headers(h: Headers) -> tuple[str, dict[str, str], dict[str, str]]:
    """Content-Type, the other standard headers, and x-amz-meta-* from a request."""
    std = names.extract_standard_headers(h)
    content_type = std.pop("content-type", None) or "binary/octet-stream"
    return content_type, std, names.extract_metadata(h)


def _etag_condition(h: Headers) -> tuple[bool, str | None]:
    """(If-None-Match: *, If-Match etag) of a conditional PUT."""
    inm = h.get("if-none-match")
    if inm is not None and inm.strip() != "*":
        raise s3e.NotImplemented("If-None-Match on PUT supports only *", header="If-None-Match")
    im = h.get("if-match")
    return inm is not None, (_quote(im.strip()) if im is not None else None)


def _quote(etag: str) -> str:
    etag = etag.strip()
    return etag if etag.startswith('"') else f'"{etag}"'


async def commit_object(store: Store, bucket: str, rec: ObjectRecord, *, if_absent: bool = False,
                        if_match: str | None = None, owns_layouts: bool = True,
                        bucket_rec: BucketRecord | None = None, bucket_sent_at: float = 0.0) -> None:
    """Make ``rec`` the visible version; retire the fragments of the version it replaces.

    ``bucket_rec``: the bucket's record as read (by a call sent at ``bucket_sent_at``) before
    the body was taken. Before and after the write the bucket is checked again
    (``buckets.still_there``): a body that outlasted a DeleteBucket would otherwise leave an
    object under a removed name, for its next owner to list. If it is gone, the record is not
    written, or taken back, its fragments retired (``owns_layouts`` or not), and NoSuchBucket
    raised.

    The record write is shielded: once started it completes even if the client goes away, so
    the outcome is always known here. When the write provably stored nothing, the new
    fragments are removed at once (if ``owns_layouts``); they are never removed on an unknown
    outcome, which would leave a visible record without its bytes.
    """
    # Each version its own rev and data_rev, always (see ObjectRecord): a record built from
    # another one must never carry that one's, or a repair's rewrite (or a tagging change) of the
    # old version read before this write would pass its compare-and-swap and put the old
    # layouts back over this one.
    rec = replace(rec, rev=new_rev(), data_rev=new_rev())
    if bucket_rec is not None:
        checked = await still_there(store, bucket_rec, bucket_sent_at)
        if checked is None:
            store.retire(rec.layouts, now=True)
            raise no_such_bucket(bucket)
        bucket_sent_at = checked
    try:
        with anyio.CancelScope(shield=True):
            _, previous = await store.meta.replace(objects_ns(bucket), rec.key, rec.to_value(),
                                                   if_absent=if_absent,
                                                   if_match=("etag", if_match) if if_match else None)
    except NOT_STORED as e:
        if owns_layouts:
            store.retire(rec.layouts, now=True)
        if isinstance(e, ConditionFailed):
            if if_match is not None and e.current is None:
                raise s3e.NoSuchKey(Key=rec.key) from None
            raise s3e.PreconditionFailed(Condition="If-None-Match" if if_absent else "If-Match") from None
        raise
    if previous is not None:
        # Never the layouts just written: a record that names them is this very write (a resent
        # write the metadata ring had already applied once).
        mine = {layout.oid for layout in rec.layouts}
        store.retire([layout for layout in ObjectRecord.from_value(previous.value).layouts
                      if layout.oid not in mine])
    if bucket_rec is None:
        return
    # Shielded: a client gone now must not leave the write in a removed bucket.
    with anyio.CancelScope(shield=True):
        if await still_there(store, bucket_rec, bucket_sent_at) is not None:
            return
        try:
            mine_now = await store.meta.delete(objects_ns(bucket), rec.key, if_match=("mtime", rec.last_modified))
        except ConditionFailed:
            mine_now = None  # replaced since: not ours to remove
        if mine_now is not None:
            store.retire(ObjectRecord.from_value(mine_now.value).layouts)
        raise no_such_bucket(bucket)


async def put_object(store: Store, call: Call) -> Response:
    sent_at = store.buckets.now()
    bucket_rec = await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    names.validate_key(call.key)
    h = call.request.headers
    if_absent, if_match = _etag_condition(h)
    if if_absent or if_match:
        # Fail fast before reading the body; the metadata write re-checks atomically.
        current = await get_record(store, call.bucket, call.key)
        if if_absent and current is not None:
            raise s3e.PreconditionFailed(Condition="If-None-Match")
        if if_match is not None:
            if current is None:
                raise s3e.NoSuchKey(Key=call.key)
            if current.etag != if_match:
                raise s3e.PreconditionFailed(Condition="If-Match")
    content_type, std, meta = standard_headers(h)
    # Checked before the body is taken: a bad tag set stores nothing (S3 keeps no object either).
    tags = tagging.parse_header(h.get("x-amz-tagging"))
    payload = Payload(call, max_bytes=store.cluster.objstore.max_put_bytes)
    cfg = store.cluster.objstore
    inline, layout = await store_body(store, cfg.scheme_for(call.bucket), payload.chunks(),
                                      inline_max=cfg.inline_max_bytes, digests=payload.defer_digests())
    try:
        payload.verify()
    except BaseException:
        if layout is not None:
            store.retire([layout], now=True)
        raise
    rec = ObjectRecord(key=call.key, size=payload.size, etag=payload.etag, last_modified=store.clock(),
                       owner=call.user.name, content_type=content_type, headers=std, meta=meta,
                       checksums=payload.checksums(), inline=inline, layouts=(layout,) if layout else (),
                       tags=tags)
    await commit_object(store, call.bucket, rec, if_absent=if_absent, if_match=if_match,
                        bucket_rec=bucket_rec, bucket_sent_at=sent_at)
    headers = [("etag", rec.etag), ("content-length", "0")]
    headers += [(f"x-amz-checksum-{a}", v) for a, v in rec.checksums.items()]
    return Response(status=200, headers=headers)


def object_headers(rec: ObjectRecord, call: Call, *, whole: bool = True) -> list[tuple[str, str]]:
    out = [("etag", rec.etag), ("last-modified", http_date(rec.last_modified)), ("accept-ranges", "bytes"),
           ("content-type", rec.content_type)]
    out += sorted(rec.headers.items())
    out += [(f"x-amz-meta-{k}", names.metadata_value_out(v)) for k, v in sorted(rec.meta.items())]
    if rec.tags:
        out.append(("x-amz-tagging-count", str(len(rec.tags))))
    if rec.parts and call.q("partNumber") is not None:
        out.append(("x-amz-mp-parts-count", str(len(rec.parts))))
    # A checksum describes the whole object: S3 returns none with a range (clients would fail
    # to verify the partial bytes against it).
    if whole and (call.header("x-amz-checksum-mode") or "").upper() == "ENABLED":
        out += [(f"x-amz-checksum-{a}", v) for a, v in rec.checksums.items()]
    overrides = names.response_overrides(call.query)
    if overrides:
        out = [(k, v) for k, v in out if k not in overrides] + list(overrides.items())
    return out


async def object_stream(store: Store, rec: ObjectRecord, start: int, end: int, *,
                        spliced: bool = False) -> AsyncGenerator[bytes | PipeSpan, None]:
    """Bytes ``start .. end-1`` of an object, from its inline bytes or its layouts in order
    (``spliced``: as ``read_layout``'s, for a response body)."""
    if rec.inline is not None:
        if end > start:
            yield rec.inline[start:end]
        return
    base = 0
    for lay in rec.layouts:
        lo, hi = max(start - base, 0), min(end - base, lay.size)
        if lo < hi:
            async for piece in read_layout(store.pool, lay, lo, hi, spliced=spliced):
                yield piece
        base += lay.size
        if base >= end:
            return


def other_version(version: str | None) -> str | None:
    """A ``versionId`` naming a version other than the object itself. Buckets are unversioned,
    so only the version ``null`` exists: a request for any other must not act on the object."""
    return version if version not in (None, "null") else None


async def sub_resource_target(store: Store, call: Call) -> tuple[str, str]:
    """The (bucket, key) a sub-resource request on an object (``?tagging``, ``?acl``) names,
    after the bucket's checks. Buckets are unversioned: a versionId other than ``null`` names
    nothing (NoSuchVersion)."""
    await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    names.validate_key(call.key)
    version = other_version(call.q("versionId"))
    if version is not None:
        raise s3e.NoSuchVersion(Key=call.key, VersionId=version)
    return call.bucket, call.key


async def _read_target(store: Store, call: Call) -> ObjectRecord:
    """The object a GET or HEAD reads, after the bucket's checks and the request's conditions.

    The bucket is judged first, as before: NoSuchBucket and AccessDenied over NoSuchKey. Its
    record comes from the worker's bucket cache when kept there (as linearizable as a read, see
    ``bucketcache.py``), and the object's is then the only metadata call; else both are read
    together (one call when one node leads both groups), each linearizably, and the bucket's
    offered to the cache."""
    bucket_name, key = call.bucket, call.key
    assert bucket_name is not None and key is not None
    cache = store.buckets
    kept = cache.get(bucket_name)
    if kept is not None:
        check_owned(kept, call, bucket_name)
        entry = await store.meta.get(objects_ns(bucket_name), key)
    else:
        sent_at = cache.now()
        try:
            bucket, entry = await store.meta.get_pair((BUCKETS_NS, bucket_name), (objects_ns(bucket_name), key))
        except InvalidKey:
            # A key that cannot exist (too long): the bucket is still judged first.
            await owned_bucket(store, call)
            raise
        bucket_rec = BucketRecord.from_value(bucket.value) if bucket else None
        cache.offer(bucket_name, bucket_rec, sent_at)
        check_owned(bucket_rec, call, bucket_name)
    version = other_version(call.q("versionId"))
    if version is not None:
        raise s3e.NoSuchVersion(Key=key, VersionId=version)
    rec = ObjectRecord.from_value(entry.value) if entry else None
    if rec is None:
        raise s3e.NoSuchKey(Key=call.key)
    encryption.check_key_for(call.request.headers)
    conditions.check_get_preconditions(call.request.headers, etag=rec.etag, last_modified=rec.last_modified)
    return rec


def _part_range(call: Call, rec: ObjectRecord) -> tuple[int, int] | None:
    raw = call.q("partNumber")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise s3e.InvalidArgument("Part number must be an integer", ArgumentName="partNumber",
                                  ArgumentValue=raw) from None
    parts = rec.parts or ()
    if not parts:
        if n == 1:
            return 0, rec.size
        raise s3e.InvalidPartNumber()
    if not 1 <= n <= len(parts):
        raise s3e.InvalidPartNumber()
    start = sum(p.size for p in parts[: n - 1])
    return start, start + parts[n - 1].size


async def get_object(store: Store, call: Call, *, head: bool = False) -> Response:
    rec = await _read_target(store, call)
    part = _part_range(call, rec)
    if part is not None and call.header("range") is not None:
        raise s3e.InvalidRequest("Cannot specify both Range header and partNumber query parameter")
    rng = ranges.parse_range(call.header("range"), rec.size) if part is None else None
    headers = object_headers(rec, call, whole=rng is None and (part is None or not rec.parts))
    if part is not None:
        start, end = part
        status = 206 if rec.parts else 200
        if rec.parts:
            headers.append(("content-range", ranges.content_range(start, end - 1, rec.size)))
    elif rng is not None:
        start, end = rng[0], rng[1] + 1
        status = 206
        headers.append(("content-range", ranges.content_range(start, end - 1, rec.size)))
    else:
        start, end, status = 0, rec.size, 200
    headers.append(("content-length", str(end - start)))
    if head:
        return Response(status=status, headers=headers, body=b"")
    if rec.inline is not None:
        return Response(status=status, headers=headers, body=rec.inline[start:end])
    # The first stripes are read before the head is sent, so a GET that cannot start (the read
    # buffer spent, too few fragments) is answered with its S3 error, not a cut 200.
    stream = object_stream(store, rec, start, end, spliced=store.pool.splice_reads)
    try:
        first = await anext(stream, None)
    except BaseException:
        await stream.aclose()
        raise
    return Response(status=status, headers=headers, body=_resumed(first, stream))


async def _resumed(first: bytes | None, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """``first``, then the rest of the stream it came from."""
    try:
        if first is not None:
            yield first
            async for piece in rest:
                yield piece
    finally:
        await rest.aclose()


async def head_object(store: Store, call: Call) -> Response:
    return await get_object(store, call, head=True)


async def delete_object(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    version = call.q("versionId")
    if_match = call.header("if-match")
    # A version that does not exist is deleted already: 204, and the object stays.
    if other_version(version) is None:
        await _delete_key(store, call.bucket, call.key, if_match=if_match)
    return Response(status=204, headers=[("x-amz-version-id", version)] if version is not None else [])


async def _delete_key(store: Store, bucket: str, key: str, *, if_match: str | None = None) -> None:
    """Delete ``key``; with ``if_match`` (If-Match, or DeleteObjects' ``<ETag>``) only while its
    ETag is that one (``*``: any), else PreconditionFailed, or NoSuchKey when there is none:
    the condition is part of the metadata write, so an overwrite in between is never deleted."""
    condition = None
    if if_match is not None and if_match.strip() != "*":
        condition = ("etag", _quote(if_match))
    # Shielded like commit_object: a delete that lands must also retire what it removed.
    try:
        with anyio.CancelScope(shield=True):
            previous = await store.meta.delete(objects_ns(bucket), key, if_match=condition)
    except ConditionFailed as e:
        if e.current is None:
            raise s3e.NoSuchKey(Key=key) from None
        raise s3e.PreconditionFailed(Condition="If-Match") from None
    if previous is None and if_match is not None:
        raise s3e.NoSuchKey(Key=key)
    if previous is not None:
        store.retire(ObjectRecord.from_value(previous.value).layouts)


async def delete_objects(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None
    h = call.request.headers
    if h.get("content-md5") is None and not any(k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm"
                                                for k, _ in h):
        raise s3e.InvalidRequest("Missing required header for this request: Content-MD5")
    wanted, quiet = await Payload(call, max_bytes=2 * 1024 * 1024).read_document(xmlio.parse_delete)
    deleted: list[int] = []
    failed: list[tuple[int, str, str]] = []
    limiter = anyio.CapacityLimiter(16)

    async def one(i: int, obj: xmlio.ObjectToDelete) -> None:
        async with limiter:
            try:
                names.validate_key(obj.key)
                # As DeleteObject: a version that does not exist is deleted already.
                if other_version(obj.version_id) is None:
                    await _delete_key(store, call.bucket, obj.key, if_match=obj.etag)  # type: ignore[arg-type]
                deleted.append(i)
            except (s3e.S3Error, MetadataError) as e:
                err = s3_error(e, "DeleteObjects")
                assert err is not None  # only the client going away answers None
                failed.append((i, err.code, err.message))

    async with anyio.create_task_group() as tg:
        for i, obj in enumerate(wanted):
            tg.start_soon(one, i, obj)
    deleted.sort()
    failed.sort()
    return xml_response(xmlio.delete_result(
        deleted=[xmlio.DeletedEntry(key=wanted[i].key, version_id=wanted[i].version_id) for i in deleted],
        errors=[xmlio.DeleteErrorEntry(key=wanted[i].key, version_id=wanted[i].version_id, code=c, message=m)
                for i, c, m in failed], quiet=quiet))


def parse_copy_source(raw: str) -> tuple[str, str]:
    """(bucket, key) of x-amz-copy-source; buckets are unversioned, so only version ``null`` exists."""
    bucket, key, version = names.parse_copy_source(raw)
    if version not in (None, "null"):
        raise s3e.NoSuchVersion(Key=key, VersionId=version)
    return bucket, key


async def copy_source(store: Store, call: Call) -> ObjectRecord:
    """The readable source record of a copy, after its x-amz-copy-source-if-* conditions."""
    bucket, key = parse_copy_source(call.header("x-amz-copy-source") or "")
    await owned_bucket(store, call, bucket)
    rec = await get_record(store, bucket, key)
    if rec is None:
        raise s3e.NoSuchKey(Key=key)
    encryption.check_key_for(call.request.headers, copy_source=True)
    conditions.check_copy_source_preconditions(call.request.headers, etag=rec.etag, last_modified=rec.last_modified)
    return rec


def _changes_in_place(call: Call) -> bool:
    """Whether a copy of an object onto itself that keeps its metadata changes what S3 counts:
    its storage class (every object here is STANDARD, whatever a write named), its encryption
    or its website redirect. S3 accepts such a copy (how ``aws s3 cp --storage-class`` and
    rclone's ``settier`` change a class in place); the class and encryption are accepted and not
    kept here, as on any write, the redirect is stored (docs/s3-compat.md)."""
    storage_class = (call.header("x-amz-storage-class") or "STANDARD").strip()
    return (storage_class != "STANDARD" or call.header("x-amz-server-side-encryption") is not None
            or call.header("x-amz-website-redirect-location") is not None)


def copied_tags(call: Call, src: ObjectRecord) -> dict[str, str]:
    """A copy's tags: the source's (``x-amz-tagging-directive: COPY``, the default) or the
    request's ``x-amz-tagging`` (``REPLACE``; none without it)."""
    directive = (call.header("x-amz-tagging-directive") or "COPY").strip().upper()
    if directive == "COPY":
        return dict(src.tags)
    if directive == "REPLACE":
        return tagging.parse_header(call.header("x-amz-tagging"))
    raise s3e.InvalidArgument("Unknown tagging directive.", ArgumentName="x-amz-tagging-directive",
                              ArgumentValue=directive)


async def copy_object(store: Store, call: Call) -> Response:
    sent_at = store.buckets.now()
    bucket_rec = await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    names.validate_key(call.key)
    src = await copy_source(store, call)
    directive = (call.header("x-amz-metadata-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise s3e.InvalidArgument("Unknown metadata directive.", ArgumentName="x-amz-metadata-directive",
                                  ArgumentValue=directive)
    src_bucket, src_key = parse_copy_source(call.header("x-amz-copy-source") or "")
    if (src_bucket, src_key) == (call.bucket, call.key) and directive == "COPY" and not _changes_in_place(call):
        raise s3e.InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing "
            "the object's metadata, storage class, website redirect location or encryption attributes.")
    if directive == "REPLACE":
        content_type, std, meta = standard_headers(call.request.headers)
    else:
        content_type, std, meta = src.content_type, dict(src.headers), dict(src.meta)
        # S3 never copies the redirect ("unique to each object"): a COPY takes the request's.
        std.pop(names.WEBSITE_REDIRECT, None)
        redirect = call.header(names.WEBSITE_REDIRECT)
        if redirect is not None:
            names.validate_website_redirect(redirect)
            std[names.WEBSITE_REDIRECT] = redirect
    tags = copied_tags(call, src)
    cfg = store.cluster.objstore
    if src.size > cfg.max_put_bytes:
        raise s3e.InvalidRequest("The specified copy source is larger than the maximum allowable size for a "
                                 "copy source: 5368709120")
    md5 = hashlib.md5()
    # The MD5 runs in the writer's digest lane, behind the erasure code (see store_body).
    inline, layout = await store_body(store, cfg.scheme_for(call.bucket), object_stream(store, src, 0, src.size),
                                      inline_max=cfg.inline_max_bytes, digests=(md5.update,))
    now = store.clock()
    # A copy is a new single-part object: its ETag is the MD5 of its bytes.
    rec = ObjectRecord(key=call.key, size=src.size, etag=f'"{md5.hexdigest()}"', last_modified=now,
                       owner=call.user.name, content_type=content_type, headers=std, meta=meta,
                       checksums=dict(src.checksums) if not src.parts else {}, inline=inline,
                       layouts=(layout,) if layout else (), tags=tags)
    await commit_object(store, call.bucket, rec, bucket_rec=bucket_rec, bucket_sent_at=sent_at)
    return xml_response(xmlio.copy_object_result(etag=rec.etag, last_modified=now))
