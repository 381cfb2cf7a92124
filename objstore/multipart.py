"""Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts, ListMultipartUploads.

Every part is erasure-coded on its own (its own object id and fragments). Completing an upload
writes one object record that lists the chosen parts' layouts in order, so no bytes move; parts
that were uploaded but not chosen are retired with the upload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets

import anyio

from headwater.http.types import Response

from .buckets import int_param, owned_bucket, xml_response
from .context import Call, Store
from .listing import after_prefix
from .objects import _etag_condition, commit_object, copy_source, object_stream, standard_headers, store_body
from .metadata.errors import NOT_STORED, ConditionFailed, MetadataError
from .payload import Payload
from .records import (ObjectRecord, PartInfo, PartRecord, UploadRecord, part_key, parts_ns, upload_key,
                      uploads_ns)
from .s3 import checksums, names, xmlio
from .s3 import errors as s3e

__all__ = ["create_upload", "upload_part", "upload_part_copy", "complete_upload", "abort_upload",
           "list_parts", "list_uploads"]


async def _upload(store: Store, call: Call, *, open_only: bool = False) -> UploadRecord:
    """The upload the request names (NoSuchUpload if there is none, or with ``open_only``, if it
    is being completed)."""
    assert call.bucket is not None and call.key is not None
    upload_id = call.q("uploadId") or ""
    entry = await store.meta.get(uploads_ns(call.bucket), upload_key(call.key, upload_id))
    if entry is None:
        raise s3e.NoSuchUpload(UploadId=upload_id)
    upload = UploadRecord.from_value(entry.value)
    if open_only and upload.state != "open":
        raise s3e.NoSuchUpload(UploadId=upload_id)
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


async def create_upload(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    names.validate_key(call.key)
    content_type, std, meta = standard_headers(call.request.headers)
    algo = (call.header("x-amz-checksum-algorithm") or "").strip().lower() or None
    if algo is not None and algo not in checksums.ALGORITHMS:
        raise s3e.InvalidRequest(f"checksum algorithm {algo} is not supported")
    upload_id = secrets.token_urlsafe(24)
    rec = UploadRecord(key=call.key, upload_id=upload_id, initiated=store.clock(), owner=call.user.name,
                       content_type=content_type, headers=std, meta=meta, checksum_algorithm=algo)
    await store.meta.put(uploads_ns(call.bucket), upload_key(call.key, upload_id), rec.to_value())
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

    Only while the upload is still open: once a Complete or Abort has started, which layout
    the object uses is not this request's to know, so nothing is retired here and leftovers
    are the garbage collector's.
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
    await _upload(store, call, open_only=True)
    if old is not None:
        store.retire([PartRecord.from_value(old.value).layout])


async def upload_part(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    number = _part_number(call)
    upload = await _upload(store, call, open_only=True)
    payload = Payload(call, max_bytes=store.cluster.objstore.max_put_bytes)
    if upload.checksum_algorithm and payload.algorithm is None:
        payload.algorithm = upload.checksum_algorithm
        payload.checksum = checksums.new_checksum(upload.checksum_algorithm)
    assert call.bucket is not None
    _, layout = await store_body(store, store.cluster.objstore.scheme_for(call.bucket), payload.chunks(),
                                 inline_max=-1)
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
    src = await copy_source(store, call)
    start, end = 0, src.size
    raw_range = call.header("x-amz-copy-source-range")
    if raw_range is not None:
        start, end = _copy_range(raw_range, src.size)
    if end - start > store.cluster.objstore.max_put_bytes:
        raise s3e.InvalidRequest("The specified copy source is larger than the maximum allowable size for a "
                                 "copy source: 5368709120")
    md5 = hashlib.md5()

    async def hashed():
        async for piece in object_stream(store, src, start, end):
            md5.update(piece)
            yield piece

    assert call.bucket is not None
    _, layout = await store_body(store, store.cluster.objstore.scheme_for(call.bucket), hashed(), inline_max=-1)
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
    await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    upload = await _upload(store, call, open_only=True)
    upload_id = upload.upload_id
    body = await Payload(call, max_bytes=4 * 1024 * 1024).read_all()
    wanted = xmlio.parse_complete_multipart_upload(body)
    if_absent, if_match = _etag_condition(call.request.headers)
    upload = await _set_state(store, call.bucket, upload, "completing", expect="open")
    try:
        return await _complete(store, call, upload, wanted, if_absent, if_match)
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                await _set_state(store, call.bucket, upload, "open", expect="completing")
            except (s3e.S3Error, MetadataError):
                pass  # completed after all, or gone: nothing to reopen
        raise


async def _complete(store: Store, call: Call, upload: UploadRecord, wanted: list, if_absent: bool,
                    if_match: str | None) -> Response:
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
                       parts=tuple(PartInfo(number=p.number, size=p.size, etag=p.etag) for p in chosen))
    with anyio.CancelScope(shield=True):
        await commit_object(store, call.bucket, rec, if_absent=if_absent, if_match=if_match, owns_layouts=False)
        kept = {p.number for p in chosen}
        store.retire([p.layout for n, p in have.items() if n not in kept])
        await _drop_upload(store, call.bucket, upload)
    location = f"/{call.bucket}/{call.key}"
    resp = xml_response(xmlio.complete_multipart_upload(location=location, bucket=call.bucket, key=call.key,
                                                        etag=etag))
    resp.headers += [(f"x-amz-checksum-{a}", v) for a, v in sums.items()]
    return resp


async def _drop_upload(store: Store, bucket: str, upload: UploadRecord) -> None:
    await store.meta.delete(uploads_ns(bucket), upload_key(upload.key, upload.upload_id))
    ns = parts_ns(bucket, upload.upload_id)
    for part in await _all_parts(store, bucket, upload.upload_id):
        await store.meta.delete(ns, part_key(part.number))


async def abort_upload(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None
    upload = await _upload(store, call)
    parts = await _all_parts(store, call.bucket, upload.upload_id)
    await _drop_upload(store, call.bucket, upload)
    store.retire([p.layout for p in parts], now=True)
    return Response(status=204)


async def list_parts(store: Store, call: Call) -> Response:
    await owned_bucket(store, call)
    assert call.bucket is not None and call.key is not None
    upload = await _upload(store, call)
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

