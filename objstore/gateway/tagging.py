"""Object and bucket tagging: ``?tagging`` GET / PUT / DELETE on an object or a bucket.

An object's tags live in its record (``ObjectRecord.tags``), written with the object by PutObject,
CompleteMultipartUpload, CopyObject and POST Object, and changed here without touching anything
else: the ETag and Last-Modified stay (as on S3), and so do the bytes. The change is a
compare-and-swap on the record's ``data_rev``, which every write of the object's data changes:
a PutObject or DeleteObject that lands between our read and our write makes the write fail
instead of bringing back the version it replaced (or mixing its tags into the new one), and so
does a repair's layout rewrite (which would otherwise be undone, pointing the record back at
fragments that are going away); the change is then applied to whatever is there now
(NoSuchKey if nothing is). Another tagging change keeps ``data_rev``, so racing tag writes all
land, the last one winning as on S3 (on ``rev``, which every write changes, they failed each
other until one gave up). A repair's rewrite compares on ``rev``, so a tagging change since its
read fails it in turn. A record written before ``data_rev`` existed is compared on its ``rev``;
one from before ``rev`` on its layouts (unique to a version, and what a repair changes), or for
inline bytes on its ``mtime``; its layouts are written back marked (:func:`retagged`), since a
repair's rewrite of such a record compares on them too.

A bucket's tags live in a record of their own (``records.BUCKET_TAGS_NS``), tied to the bucket
by its ``created`` time, so that a tagging write never races DeleteBucket's mark on the bucket
record, and a bucket created again under the same name starts untagged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio

from headwater.http.types import Response

from ..metadata.errors import ConditionFailed
from ..records import BUCKET_TAGS_NS, BucketRecord, ObjectRecord, new_rev, objects_ns
from ..s3 import errors as s3e
from ..s3 import tagging
from .buckets import owned_bucket, xml_response
from .context import Call, Store
from .objects import sub_resource_target
from .payload import Payload

__all__ = ["get_object_tagging", "put_object_tagging", "delete_object_tagging",
           "get_bucket_tagging", "put_bucket_tagging", "delete_bucket_tagging", "retagged"]

#: How many times a tagging write is tried against records that keep changing under it (each
#: failure means some other write landed: the system as a whole made progress).
ATTEMPTS = 8


def _version_header(call: Call) -> list[tuple[str, str]]:
    return [("x-amz-version-id", "null")] if call.q("versionId") is not None else []


async def get_object_tagging(store: Store, call: Call) -> Response:
    bucket, key = await sub_resource_target(store, call)
    entry = await store.meta.get(objects_ns(bucket), key)
    if entry is None:
        raise s3e.NoSuchKey(Key=key)
    rec = ObjectRecord.from_value(entry.value)
    response = xml_response(tagging.tagging_document(rec.tags))
    response.headers += _version_header(call)
    return response


async def _retag(store: Store, bucket: str, key: str, tags: dict[str, str]) -> ObjectRecord:
    """Give the object at ``key`` the tag set ``tags``, as a conditional write on the version
    read (see the module's docstring); the record written."""
    entry = await store.meta.get(objects_ns(bucket), key)
    for _attempt in range(ATTEMPTS):
        if entry is None:
            raise s3e.NoSuchKey(Key=key)
        rec = ObjectRecord.from_value(entry.value)
        if rec.tags == tags:
            return rec  # nothing to change (a DeleteObjectTagging of an untagged object)
        value, condition = retagged(entry.value, tags)
        try:
            # Shielded: once sent, the outcome is known before we answer.
            with anyio.CancelScope(shield=True):
                await store.meta.put(objects_ns(bucket), key, value, if_match=condition)
            return ObjectRecord.from_value(value)
        except ConditionFailed as e:
            # Replaced since the read: tag the object that is there now, which is what the
            # failed condition was checked against (a second read could lose the race again).
            entry = e.current
    raise s3e.OperationAborted()


def retagged(value: dict[str, Any], tags: dict[str, str]) -> tuple[dict[str, Any], tuple[str, Any]]:
    """The object record ``value`` (as read) with the tag set ``tags``, a fresh ``rev`` (and a
    ``data_rev`` if it had none), and the condition under which that write lands only on the
    version read, its layouts unchanged."""
    rec = ObjectRecord.from_value(value)
    new = replace(rec, tags=dict(tags), rev=new_rev(), data_rev=rec.data_rev or new_rev()).to_value()
    if not value.get("rev") and new["layouts"]:
        # A record from before rev: a repair's rewrite read before this write compares on the
        # layouts (``layouts.rewrite``), which a tagging change keeps, and would land after it,
        # dropping these tags. Marked, they compare unequal and it reads again. The mark is no
        # part of a Layout (``Layout.from_value`` ignores it, a rewrite of its slot drops it).
        new["layouts"] = [{**lay, "retag": new["rev"]} for lay in new["layouts"]]
    return new, _as_read(value)


def _as_read(value: dict[str, Any]) -> tuple[str, Any]:
    """The condition under which a tagging change of the object record ``value`` lands only on
    that version with its layouts as read (see the module's docstring): its ``data_rev``, which
    another tagging change keeps, so that racing tag writes never fail each other."""
    if value.get("drev"):
        return "drev", value["drev"]
    if value.get("rev"):
        return "rev", value["rev"]
    if value.get("layouts"):
        return "layouts", value["layouts"]
    return "mtime", value["mtime"]


async def put_object_tagging(store: Store, call: Call) -> Response:
    bucket, key = await sub_resource_target(store, call)
    tags = await Payload(call, max_bytes=tagging.MAX_DOCUMENT_BYTES).read_document(
        lambda body: tagging.parse_document(body, max_tags=tagging.MAX_OBJECT_TAGS))
    await _retag(store, bucket, key, tags)
    return Response(status=200, headers=[("content-length", "0")] + _version_header(call))


async def delete_object_tagging(store: Store, call: Call) -> Response:
    bucket, key = await sub_resource_target(store, call)
    await _retag(store, bucket, key, {})
    return Response(status=204, headers=_version_header(call))


def _bucket_tags(entry_value: dict[str, Any] | None, bucket: BucketRecord) -> dict[str, str] | None:
    """The tags of ``bucket`` in its tag record as read, or None (no record, or one left by an
    earlier bucket of that name)."""
    if entry_value is None or entry_value.get("created") != bucket.created:
        return None
    return dict(entry_value.get("tags") or {})


async def get_bucket_tagging(store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    entry = await store.meta.get(BUCKET_TAGS_NS, rec.name)
    tags = _bucket_tags(entry.value if entry else None, rec)
    if not tags:
        raise s3e.NoSuchTagSet(BucketName=rec.name)
    return xml_response(tagging.tagging_document(tags))


async def _write_bucket_tags(store: Store, rec: BucketRecord, tags: dict[str, str] | None) -> None:
    """Set (or with None remove) ``rec``'s tag record: a compare-and-swap on the record as read,
    so that a stale write for an earlier bucket of the name never lands over a later one's."""
    for _attempt in range(ATTEMPTS):
        entry = await store.meta.get(BUCKET_TAGS_NS, rec.name)
        current = entry.value if entry else None
        if current is not None and current.get("created", 0) > rec.created:
            # The bucket we checked was deleted and the name created again since.
            raise s3e.NoSuchBucket(resource=f"/{rec.name}", BucketName=rec.name)
        try:
            if tags is None:
                if current is not None:
                    await store.meta.delete(BUCKET_TAGS_NS, rec.name, if_match=("created", current.get("created")))
                return
            value = {"created": rec.created, "tags": tags}
            if current is None:
                await store.meta.put(BUCKET_TAGS_NS, rec.name, value, if_absent=True)
            else:
                await store.meta.put(BUCKET_TAGS_NS, rec.name, value, if_match=("created", current.get("created")))
            return
        except ConditionFailed:
            continue  # written or removed since the read: read again
    raise s3e.OperationAborted()


async def put_bucket_tagging(store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    tags = await Payload(call, max_bytes=tagging.MAX_DOCUMENT_BYTES).read_document(
        lambda body: tagging.parse_document(body, max_tags=tagging.MAX_BUCKET_TAGS))
    await _write_bucket_tags(store, rec, tags)
    return Response(status=204)


async def delete_bucket_tagging(store: Store, call: Call) -> Response:
    rec = await owned_bucket(store, call)
    await _write_bucket_tags(store, rec, None)
    return Response(status=204)


async def forget_bucket_tags(store: Store, rec: BucketRecord) -> None:
    """After DeleteBucket: remove the deleted bucket's tag record (if still its own). A record
    left behind (a crash between the two) is harmless: its ``created`` is not the next bucket's."""
    try:
        await store.meta.delete(BUCKET_TAGS_NS, rec.name, if_match=("created", rec.created))
    except ConditionFailed:
        pass
