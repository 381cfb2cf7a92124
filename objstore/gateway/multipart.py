"""Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts, ListMultipartUploads.

Every part is erasure-coded on its own (its own object id and fragments). Completing an upload
writes one object record that lists the chosen parts' layouts in order, so no bytes move; parts
that were uploaded but not chosen are retired with the upload.

An upload's record goes ``open -> completing -> (dropped)`` or ``open -> aborting -> (dropped)``,
each step a compare-and-set on its state, so Complete and Abort never both own it. Only an Abort
that won ``open -> aborting`` (or finishes one) retires part fragments. When Complete's object
write has an unknown outcome the upload stays ``completing`` and the next request that meets it
settles it (:func:`_settle`): done if the object record names the upload's parts, reopened if not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets

import anyio

from headwater.http.types import Response

from ..metadata.errors import NOT_STORED, ConditionFailed, MetadataError
from ..records import (
    Layout,
    ObjectRecord,
    PartInfo,
    PartRecord,
    UploadRecord,
    objects_ns,
    part_key,
    parts_ns,
    upload_key,
    uploads_ns,
)
from ..s3 import checksums, encryption, names, tagging, xmlio
from ..s3 import errors as s3e
from .buckets import int_param, no_such_bucket, owned_bucket, still_there, xml_response
from .context import Call, Store
from .listing import after_prefix
from .objects import (
    _etag_condition,
    commit_object,
    copy_source,
    get_record,
    object_stream,
    standard_headers,
    store_body,
)
from .payload import Payload

__all__ = ["create_upload", "upload_part", "upload_part_copy", "complete_upload", "abort_upload",
           "list_parts", "list_uploads", "abort", "abort_all"]


async def _lookup(store: Store, call: Call) -> tuple[UploadRecord, int]:
    """The upload the request names (NoSuchUpload if there is none), and when its record was
    last written (wall-clock ns of its version: when it entered its present state)."""
    assert call.bucket is not None and call.key is not None
    upload_id = call.q("uploadId") or ""
    entry = await store.meta.get(uploads_ns(call.bucket), upload_key(call.key, upload_id))
    if entry is None:
        raise s3e.NoSuchUpload(UploadId=upload_id)
    return UploadRecord.from_value(entry.value), entry.version[0]


async def _upload(store: Store, call: Call, *, open_only: bool = False) -> UploadRecord:
    """The upload the request names (NoSuchUpload if there is none, or with ``open_only``, if it
    is being completed or aborted)."""
    upload, _ = await _lookup(store, call)
    if open_only and upload.state != "open":
        raise s3e.NoSuchUpload(UploadId=upload.upload_id)
    return upload


async def _set_state(store: Store, bucket: str, upload: UploadRecord, state: str, *, expect: str) -> UploadRecord:
    """Compare-and-set the upload's state; OperationAborted if someone else changed it."""
    new = dataclasses.replace(upload, state=state)
    try:
        with anyio.CancelScope(shield=True):
            await store.meta.put(uploads_ns(bucket), upload_key(upload.key, upload.upload_id), new.to_value(),
                                 if_match=("state", expect))
    except ConditionFailed as e:
        if e.current is None:
            raise s3e.NoSuchUpload(UploadId=upload.upload_id) from None
        raise s3e.OperationAborted("A conflicting conditional operation is currently in progress against "
                                   "this resource. Please try again.") from None
    return new


def _completing_lease_s(store: Store) -> float:
    """How long a ``completing`` upload may still have a Complete at work on it.

    A Complete gives up before its object write once half of this has passed since it took the
    upload (see complete_upload), and the write itself answers or fails within
    ``metadata_timeout_s``; a write whose answer was lost is committed or dropped by the next
    leader well within the rest. After the lease an object record that does not name the
    upload's parts proves the write did not commit. (Wall clocks of gateways are assumed to
    agree to well under the lease.)
    """
    return 4 * store.cluster.objstore.metadata_timeout_s


def _names_parts(rec: ObjectRecord | None, parts: list[PartRecord]) -> bool:
    """Whether ``rec`` is the object a Complete of this upload wrote: its layouts are exactly the
    layouts of the upload's parts it lists, in order. Layouts compare by object id, which is
    unique per part (the rebalancer may since have moved fragments to other nodes)."""
    if rec is None or not rec.parts or len(rec.parts) != len(rec.layouts):
        return False
    by_number = {p.number: p.layout.oid for p in parts}
    return all(by_number.get(info.number) == lay.oid for info, lay in zip(rec.parts, rec.layouts))


async def _settle(store: Store, bucket: str, upload: UploadRecord, written_ns: int) -> UploadRecord | None:
    """Resolve an upload left ``completing`` (a Complete whose object write had an unknown
    outcome, or that is still at work); any other upload is returned as it is.

    - The object record names this upload's parts: the Complete committed. The upload record is
      dropped and nothing retired (the object uses the chosen parts; the garbage collector takes
      the unchosen ones, which no record names any more): None.
    - Within the lease (a Complete may still be writing): the upload, still ``completing``.
    - The key was written after the upload began completing, by someone else (or by this
      Complete, then overwritten): which cannot be told, so the upload ends as above (None)
      rather than reopen onto layouts an overwrite may have retired.
    - Otherwise the write provably did not commit: the upload is reopened.
    """
    if upload.state != "completing":
        return upload
    parts = await _all_parts(store, bucket, upload.upload_id)
    entry = await store.meta.get(objects_ns(bucket), upload.key)
    rec = ObjectRecord.from_value(entry.value) if entry is not None else None
    if _names_parts(rec, parts):
        await _drop_upload(store, bucket, upload)
        return None
    if store.clock() - written_ns / 1e9 < _completing_lease_s(store):
        return upload
    if entry is not None and entry.version[0] > written_ns:
        await _drop_upload(store, bucket, upload)
        return None
    return await _set_state(store, bucket, upload, "open", expect="completing")


async def _reopen(store: Store, bucket: str, upload: UploadRecord) -> None:
    """Back to ``open`` after a Complete that provably stored no object."""
    with anyio.CancelScope(shield=True):
        try:
            await _set_state(store, bucket, upload, "open", expect="completing")
        except (s3e.S3Error, MetadataError):
            pass  # gone, changed, or unreachable: a later request settles it


def _in_progress(upload: UploadRecord) -> s3e.S3Error:
    # S3 documents no answer for an upload whose Complete is still running; this is the
    # "conflicting operation in progress, try again" of its error table (409). A retry after the
    # Complete finished gets NoSuchUpload (completed) or goes ahead (reopened).
    return s3e.OperationAborted("A conflicting conditional operation is currently in progress against this "
                                "resource. Please try again.", UploadId=upload.upload_id)


async def create_upload(store: Store, call: Call) -> Response:
    sent_at = store.buckets.now()
    bucket_rec = await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    names.validate_key(call.key)
    content_type, std, meta = standard_headers(call.request.headers)
    tags = tagging.parse_header(call.header("x-amz-tagging"))  # the completed object's
    algo = (call.header("x-amz-checksum-algorithm") or "").strip().lower() or None
    if algo is not None and algo not in checksums.ALGORITHMS:
        raise s3e.InvalidRequest(f"checksum algorithm {algo} is not supported")
    upload_id = secrets.token_urlsafe(24)
    rec = UploadRecord(key=call.key, upload_id=upload_id, initiated=store.clock(), owner=call.user.name,
                       content_type=content_type, headers=std, meta=meta, checksum_algorithm=algo, tags=tags)
    await store.meta.put(uploads_ns(call.bucket), upload_key(call.key, upload_id), rec.to_value())
    with anyio.CancelScope(shield=True):
        if await still_there(store, bucket_rec, sent_at) is None:
            # Created after DeleteBucket's last scan: it would outlive the bucket.
            await store.meta.delete(uploads_ns(call.bucket), upload_key(call.key, upload_id))
            raise no_such_bucket(call.bucket)
    headers = [("x-amz-checksum-algorithm", algo.upper())] if algo else []
    resp = xml_response(xmlio.initiate_multipart_upload(bucket=call.bucket, key=call.key, upload_id=upload_id))
    resp.headers.extend(headers)
    return resp


def _part_number(call: Call) -> int:
    raw = call.q("partNumber") or ""
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= 10000:
        raise s3e.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive",
                                  ArgumentName="partNumber", ArgumentValue=raw)
    return n


async def _save_part(store: Store, call: Call, part: PartRecord) -> None:
    """Record a part; the layout it replaces (same number uploaded again) is retired.

    The upload is looked up again once the part is recorded. Still open: any Abort takes the
    upload after this record landed, so it sees the part and retires it. Aborted (``aborting``,
    or gone and its object names neither layout) meanwhile: an Abort may have scanned the parts
    before this record landed, so this request takes its own part back, record and fragments
    (and the layout it displaced), and answers NoSuchUpload, as S3 does for a part after an
    abort. Being completed: which layout the object uses is not this request's to know, so
    nothing is retired (the Complete drops the part records; unchosen fragments no record
    names are the garbage collector's).
    """
    assert call.bucket is not None
    upload_id = call.q("uploadId") or ""
    ns = parts_ns(call.bucket, upload_id)
    try:
        with anyio.CancelScope(shield=True):
            _, old = await store.meta.replace(ns, part_key(part.number), part.to_value())
    except NOT_STORED:
        store.retire([part.layout], now=True)
        raise
    displaced = [PartRecord.from_value(old.value).layout] if old is not None else []
    with anyio.CancelScope(shield=True):
        try:
            upload, _ = await _lookup(store, call)
        except s3e.NoSuchUpload:
            upload = None
        if upload is None or upload.state == "aborting":
            assert call.key is not None
            await _take_back(store, call.bucket, call.key, upload_id, part, displaced,
                             aborting=upload is not None)
            raise s3e.NoSuchUpload(UploadId=upload_id)
    if upload.state != "open":
        raise s3e.NoSuchUpload(UploadId=upload_id)
    store.retire(displaced)


async def _take_back(store: Store, bucket: str, key: str, upload_id: str, part: PartRecord,
                     displaced: list[Layout], *, aborting: bool) -> None:
    """Remove a part recorded after its upload was aborted: its fragments, those of the layout
    it displaced, and its record. With the upload record gone (``aborting`` false) the upload
    may instead have completed, with either layout: one the key's object names is kept."""
    layouts = [part.layout, *displaced]
    if not aborting:
        entry = await store.meta.get(objects_ns(bucket), key)
        named = {lay.oid for lay in ObjectRecord.from_value(entry.value).layouts} if entry is not None else set()
        layouts = [lay for lay in layouts if lay.oid not in named]
    store.retire(layouts, now=True)
    # Every part record of an ended upload is garbage, whoever wrote it: no condition needed.
    await store.meta.delete(parts_ns(bucket, upload_id), part_key(part.number))


async def upload_part(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    number = _part_number(call)
    upload = await _upload(store, call, open_only=True)
    encryption.check_key_for(call.request.headers)  # no upload is begun with SSE-C
    payload = Payload(call, max_bytes=store.cluster.objstore.max_put_bytes)
    if upload.checksum_algorithm and payload.algorithm is None:
        payload.algorithm = upload.checksum_algorithm
        payload.checksum = checksums.new_checksum(upload.checksum_algorithm)
    assert call.bucket is not None
    _, layout = await store_body(store, store.cluster.objstore.scheme_for(call.bucket), payload.chunks(),
                                 inline_max=-1, digests=payload.defer_digests())
    assert layout is not None
    try:
        payload.verify()
    except BaseException:
        store.retire([layout], now=True)
        raise
    part = PartRecord(number=number, size=payload.size, etag=payload.etag, md5=payload.md5.digest(),
                      last_modified=store.clock(), checksums=payload.checksums(), layout=layout)
    await _save_part(store, call, part)
    headers = [("etag", part.etag), ("content-length", "0")]
    headers += [(f"x-amz-checksum-{a}", v) for a, v in part.checksums.items()]
    return Response(status=200, headers=headers)


async def upload_part_copy(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    number = _part_number(call)
    await _upload(store, call, open_only=True)
    encryption.check_key_for(call.request.headers)  # no upload is begun with SSE-C
    src = await copy_source(store, call)
    start, end = 0, src.size
    raw_range = call.header("x-amz-copy-source-range")
    if raw_range is not None:
        start, end = _copy_range(raw_range, src.size)
    if end - start > store.cluster.objstore.max_put_bytes:
        raise s3e.InvalidRequest("The specified copy source is larger than the maximum allowable size for a "
                                 "copy source: 5368709120")
    md5 = hashlib.md5()
    assert call.bucket is not None
    # The MD5 runs in the writer's digest lane, behind the erasure code (see store_body).
    _, layout = await store_body(store, store.cluster.objstore.scheme_for(call.bucket),
                                 object_stream(store, src, start, end), inline_max=-1, digests=(md5.update,))
    assert layout is not None
    part = PartRecord(number=number, size=end - start, etag=f'"{md5.hexdigest()}"', md5=md5.digest(),
                      last_modified=store.clock(), layout=layout)
    await _save_part(store, call, part)
    return xml_response(xmlio.copy_part_result(etag=part.etag, last_modified=part.last_modified))


def _copy_range(raw: str, size: int) -> tuple[int, int]:
    """x-amz-copy-source-range ``bytes=first-last`` (both required, inside the source)."""
    m = re.fullmatch(r"\s*bytes=(\d+)-(\d+)\s*", raw)
    if not m:
        raise s3e.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last "
                                  "where first and last are the zero-based offsets of the first and last bytes "
                                  "to copy", ArgumentName="x-amz-copy-source-range", ArgumentValue=raw)
    first, last = int(m.group(1)), int(m.group(2))
    if first > last or last >= size:
        raise s3e.InvalidRange(ActualObjectSize=str(size))
    return first, last + 1


async def _all_parts(store: Store, bucket: str, upload_id: str) -> list[PartRecord]:
    ns = parts_ns(bucket, upload_id)
    out: list[PartRecord] = []
    after = ""
    while True:
        batch = await store.meta.scan(ns, start_after=after, limit=1000)
        out += [PartRecord.from_value(e.value) for e in batch]
        if len(batch) < 1000:
            return out
        after = batch[-1].key


async def complete_upload(store: Store, call: Call) -> Response:
    sent_at = store.buckets.now()
    bucket_rec = await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    upload, written_ns = await _lookup(store, call)
    wanted = await Payload(call, max_bytes=4 * 1024 * 1024).read_document(xmlio.parse_complete_multipart_upload)
    settled = await _settle(store, call.bucket, upload, written_ns)
    if settled is None:
        return await _completed_before(store, call, upload, wanted)
    upload = settled
    if upload.state == "completing":
        raise _in_progress(upload)
    if upload.state != "open":
        raise s3e.NoSuchUpload(UploadId=upload.upload_id)
    if_absent, if_match = _etag_condition(call.request.headers)
    took = store.clock()
    upload = await _set_state(store, call.bucket, upload, "completing", expect="open")
    try:
        rec, unchosen = await _assemble(store, call, upload, wanted)
        if store.clock() - took > _completing_lease_s(store) / 2:
            # Too late to write: a settle may already take the upload for abandoned.
            raise s3e.ServiceUnavailable()
    except BaseException:
        await _reopen(store, call.bucket, upload)
        raise
    with anyio.CancelScope(shield=True):
        try:
            await commit_object(store, call.bucket, rec, if_absent=if_absent, if_match=if_match,
                                owns_layouts=False, bucket_rec=bucket_rec, bucket_sent_at=sent_at)
        except (s3e.PreconditionFailed, s3e.NoSuchKey, *NOT_STORED):
            # commit_object raises these only when the record provably was not stored.
            await _reopen(store, call.bucket, upload)
            raise
        except s3e.NoSuchBucket:
            # The bucket was deleted meanwhile: the object was not written or was taken back
            # (its parts retired either way);
            # the upload goes too, as DeleteBucket would have aborted it.
            store.retire(unchosen)
            await _drop_upload(store, call.bucket, upload)
            raise
        # Any other failure (WriteOutcomeUnknown above all: 503) may have stored the record: the
        # upload stays "completing" and the next request on it settles it.
        store.retire(unchosen)
        try:
            await _drop_upload(store, call.bucket, upload)
        except MetadataError:
            pass  # the object is committed; the next request on the upload drops it (_settle)
    return _complete_response(call, rec.etag, rec.checksums)


async def _completed_before(store: Store, call: Call, upload: UploadRecord, wanted: list) -> Response:
    """A Complete of an upload found completed (a retry after an unknown outcome): S3 answers
    with the object's ETag when the same parts are asked for."""
    assert call.bucket is not None and call.key is not None
    rec = await get_record(store, call.bucket, call.key)
    asked = [(w.part_number, w.etag.strip().strip('"')) for w in wanted]
    if rec is None or asked != [(p.number, p.etag.strip('"')) for p in rec.parts]:
        raise s3e.NoSuchUpload(UploadId=upload.upload_id)
    return _complete_response(call, rec.etag, rec.checksums)


def _complete_response(call: Call, etag: str, sums: dict[str, str]) -> Response:
    assert call.bucket is not None and call.key is not None
    location = f"/{call.bucket}/{call.key}"
    resp = xml_response(xmlio.complete_multipart_upload(location=location, bucket=call.bucket, key=call.key,
                                                        etag=etag))
    resp.headers += [(f"x-amz-checksum-{a}", v) for a, v in sums.items()]
    return resp


async def _assemble(store: Store, call: Call, upload: UploadRecord,
                    wanted: list) -> tuple[ObjectRecord, list]:
    """The object record the Complete asks for, and the layouts of the parts it leaves out."""
    assert call.bucket is not None and call.key is not None
    upload_id = upload.upload_id
    if not wanted:
        raise s3e.MalformedXML("The XML you provided was not well-formed or did not validate against our "
                               "published schema")
    numbers = [p.part_number for p in wanted]
    if any(b <= a for a, b in zip(numbers, numbers[1:])):
        raise s3e.InvalidPartOrder(UploadId=upload_id)
    have = {p.number: p for p in await _all_parts(store, call.bucket, upload_id)}
    chosen: list[PartRecord] = []
    for w in wanted:
        part = have.get(w.part_number)
        if part is None or part.etag.strip('"') != w.etag.strip().strip('"'):
            raise s3e.InvalidPart(UploadId=upload_id, PartNumber=str(w.part_number), ETag=w.etag)
        chosen.append(part)
    min_part = store.cluster.objstore.min_part_bytes
    for part in chosen[:-1]:
        if part.size < min_part:
            raise s3e.EntityTooSmall(ProposedSize=str(part.size), MinSizeAllowed=str(min_part),
                                     PartNumber=str(part.number), ETag=part.etag)
    etag = checksums.quote_etag(checksums.multipart_etag([p.md5 for p in chosen]))
    sums: dict[str, str] = {}
    algo = upload.checksum_algorithm
    if algo and all(algo in p.checksums for p in chosen):
        sums[algo] = checksums.composite_checksum(algo, [p.checksums[algo] for p in chosen])
    rec = ObjectRecord(key=call.key, size=sum(p.size for p in chosen), etag=etag, last_modified=store.clock(),
                       owner=call.user.name, content_type=upload.content_type, headers=dict(upload.headers),
                       meta=dict(upload.meta), checksums=sums, layouts=tuple(p.layout for p in chosen),
                       parts=tuple(PartInfo(number=p.number, size=p.size, etag=p.etag) for p in chosen),
                       tags=dict(upload.tags))
    kept = {p.number for p in chosen}
    return rec, [p.layout for n, p in have.items() if n not in kept]


async def _drop_upload(store: Store, bucket: str, upload: UploadRecord, *, expect: str | None = None) -> bool:
    """Delete the upload's record, then its parts' records; whether this call removed the upload
    record (with ``expect``, only while its state is that one)."""
    try:
        previous = await store.meta.delete(uploads_ns(bucket), upload_key(upload.key, upload.upload_id),
                                           if_match=("state", expect) if expect else None)
    except ConditionFailed:
        return False
    ns = parts_ns(bucket, upload.upload_id)
    for part in await _all_parts(store, bucket, upload.upload_id):
        await store.meta.delete(ns, part_key(part.number))
    return previous is not None


async def abort(store: Store, bucket: str, upload: UploadRecord, written_ns: int) -> None:
    """Abort one upload (``written_ns``: the version time of its record) and retire its parts'
    fragments. NoSuchUpload if it turns out to have completed, OperationAborted while a
    Complete is still at work on it. AbortMultipartUpload and DeleteBucket both end uploads here.
    """
    settled = await _settle(store, bucket, upload, written_ns)
    if settled is None:
        # Completed: S3 answers NoSuchUpload ("may have been aborted or completed") and deletes
        # nothing; the parts are the object's now.
        raise s3e.NoSuchUpload(UploadId=upload.upload_id)
    upload = settled
    if upload.state == "completing":
        raise _in_progress(upload)
    if upload.state == "open":
        upload = await _set_state(store, bucket, upload, "aborting", expect="open")
    # "aborting": this Abort won the CAS, or finishes one that stopped half-way. Either way no
    # Complete can take the upload any more, so its parts are no one's once its record is gone.
    with anyio.CancelScope(shield=True):
        parts = await _all_parts(store, bucket, upload.upload_id)
        if await _drop_upload(store, bucket, upload, expect="aborting"):
            store.retire([p.layout for p in parts])


async def abort_upload(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None
    upload, written_ns = await _lookup(store, call)
    await abort(store, call.bucket, upload, written_ns)
    return Response(status=204)


async def abort_all(store: Store, bucket: str) -> int:
    """Abort every upload in progress in ``bucket`` (DeleteBucket); how many were aborted.

    An upload that completed meanwhile is skipped (its object then keeps the bucket non-empty);
    one a Complete is still writing raises OperationAborted, so that the caller retries once
    the outcome is known.
    """
    aborted = 0
    after = ""
    while True:
        batch = await store.meta.scan(uploads_ns(bucket), start_after=after, limit=1000)
        for e in batch:
            try:
                await abort(store, bucket, UploadRecord.from_value(e.value), e.version[0])
                aborted += 1
            except s3e.NoSuchUpload:
                pass  # completed or aborted by someone else meanwhile
        if len(batch) < 1000:
            return aborted
        after = batch[-1].key


async def list_parts(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    upload, written_ns = await _lookup(store, call)
    settled = await _settle(store, call.bucket, upload, written_ns)
    if settled is None:
        raise s3e.NoSuchUpload(UploadId=upload.upload_id)
    upload = settled
    marker = int_param(call, "part-number-marker", 0)
    max_parts = int_param(call, "max-parts", 1000, 0, 1000)
    batch = await store.meta.scan(parts_ns(call.bucket, upload.upload_id), start_after=part_key(marker) if marker else "",
                                  limit=max_parts + 1)
    parts = [PartRecord.from_value(e.value) for e in batch]
    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    body = xmlio.list_parts(
        bucket=call.bucket, key=call.key, upload_id=upload.upload_id, part_number_marker=marker,
        next_part_number_marker=parts[-1].number if parts else marker, max_parts=max_parts,
        is_truncated=truncated, owner=xmlio.Owner(id=upload.owner, display_name=upload.owner),
        checksum_algorithm=upload.checksum_algorithm,
        parts=[xmlio.PartEntry(part_number=p.number, last_modified=p.last_modified, etag=p.etag, size=p.size,
                               checksums=p.checksums) for p in parts])
    return xml_response(body)


async def list_uploads(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None
    prefix = call.q("prefix", "") or ""
    delimiter = call.q("delimiter", "") or ""
    key_marker = call.q("key-marker", "") or ""
    id_marker = call.q("upload-id-marker", "") or ""
    max_uploads = int_param(call, "max-uploads", 1000, 0, 1000)
    if id_marker:
        start = upload_key(key_marker, id_marker)
    elif delimiter and key_marker.endswith(delimiter):
        start = after_prefix(key_marker)  # the marker is a common prefix: skip all of it
    elif key_marker:
        start = upload_key(key_marker, "\U0010ffff")
    else:
        start = ""
    uploads: list[UploadRecord] = []
    prefixes: list[str] = []
    truncated = False
    last_key, last_id = "", ""  # where the next page starts: after an upload, or a whole prefix
    after = start
    while not truncated:
        batch = await store.meta.scan(uploads_ns(call.bucket), prefix=prefix, start_after=after, limit=1000)
        for e in batch:
            rec = UploadRecord.from_value(e.value)
            after = e.key
            if rec.state == "completing":
                try:
                    settled = await _settle(store, call.bucket, rec, e.version[0])
                except (s3e.S3Error, MetadataError):
                    settled = rec  # listed as it is; the next request on it settles it
                if settled is None:
                    continue  # completed
                rec = settled
            if delimiter:
                cut = rec.key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = rec.key[: cut + len(delimiter)]
                    if prefixes and prefixes[-1] == common:
                        continue
                    if len(uploads) + len(prefixes) >= max_uploads:
                        truncated = True
                        break
                    prefixes.append(common)
                    last_key, last_id = common, ""
                    continue
            if len(uploads) + len(prefixes) >= max_uploads:
                truncated = True
                break
            uploads.append(rec)
            last_key, last_id = rec.key, rec.upload_id
        if len(batch) < 1000:
            break
    body = xmlio.list_multipart_uploads(
        bucket=call.bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker, upload_id_marker=id_marker,
        next_key_marker=last_key if truncated else None,
        next_upload_id_marker=last_id if truncated else None,
        max_uploads=max_uploads, is_truncated=truncated,
        uploads=[xmlio.UploadEntry(key=u.key, upload_id=u.upload_id, initiated=u.initiated,
                                   owner=xmlio.Owner(id=u.owner, display_name=u.owner)) for u in uploads],
        common_prefixes=prefixes, encoding_type=call.q("encoding-type"))
    return xml_response(body)

