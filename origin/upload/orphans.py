"""Which objects of the uploads bucket no upload will ever name again (sans-IO): the rules of the
orphan sweep (:meth:`~headwater.origin.upload.service.UploadService.collect_orphans_once`).

What leaves them: a host that dies between a segment's PUT and the record that names it, a
coalesce or a part cut whose DeleteObjects failed or never ran, an upload expired or
terminated while the store refused the segments' delete, a creation that died between
CreateMultipartUpload and the record's INSERT.

Why the rules are safe (the sweep **lists the store first, then reads the records** of the ids
it listed):

- A segment is PUT only by a request holding its upload's lease, and named only by that
  request's fenced record writes. A record read with **no holder** therefore names every segment
  it ever will of those listed before it: the request that PUT a listed segment had given the
  lease back (or lost it to a newer fence) by the time of the read. Such a record's unnamed
  segments are orphans.
- A record **held** at the read may be about to name a segment it just PUT: its segments are
  left to a later sweep (a lease that is never given back lapses, and the expiry, which takes
  it over, removes the upload and its record).
- An id with **no record** left nothing that can come back (ids are random and never reused),
  except while its record is being made: the one-time import of the LMDB records PUTs a segment
  before the record's INSERT, and a creation makes the multipart upload before it. Hence the
  **grace period** on the store's own time of each object: younger than ``grace_s`` is never
  touched, whatever the records say (``upload_orphan_grace_seconds``, validated at load to be
  longer than a lease plus a store request).
- A key that is not ``incomplete/<id>/…`` or ``uploads/<id>`` with a 32-hex-digit id is not the
  service's to judge: left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from .s3 import ListedObject, ListedUpload

__all__ = ["RecordView", "SEGMENT_PREFIX", "UPLOAD_PREFIX", "upload_id_of", "orphan_segments",
           "stray_multipart_uploads"]

SEGMENT_PREFIX = "incomplete/"
UPLOAD_PREFIX = "uploads/"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class RecordView:
    """What the sweep needs of one upload's record, read in one statement: whether a request
    held its lease, the segments it names, its multipart upload and whether it is completed."""

    held: bool
    segments: frozenset[str]
    store_upload_id: str
    finished: bool


def upload_id_of(key: str) -> str | None:
    """The upload id in ``incomplete/<id>/<segment>`` or ``uploads/<id>``; None for any other key."""
    if key.startswith(SEGMENT_PREFIX):
        uid, sep, rest = key[len(SEGMENT_PREFIX):].partition("/")
        if not sep or not rest:
            return None
    elif key.startswith(UPLOAD_PREFIX):
        uid = key[len(UPLOAD_PREFIX):]
    else:
        return None
    return uid if len(uid) == 32 and _HEX.issuperset(uid) else None


def orphan_segments(listed: Iterable[ListedObject], records: Mapping[str, RecordView], *, now: float,
                    grace_s: float) -> list[str]:
    """The keys of ``listed`` segments to delete: older than ``grace_s`` and named by no record
    that can still name them (``records``: the listed ids' records, read after the listing)."""
    out = []
    for obj in listed:
        uid = upload_id_of(obj.key)
        if uid is None or not obj.key.startswith(SEGMENT_PREFIX) or now - obj.modified <= grace_s:
            continue
        rec = records.get(uid)
        if rec is None or (not rec.held and obj.key not in rec.segments):
            out.append(obj.key)
    return out


def stray_multipart_uploads(listed: Iterable[ListedUpload], records: Mapping[str, RecordView], *, now: float,
                            grace_s: float) -> list[ListedUpload]:
    """The multipart uploads to abort: begun more than ``grace_s`` ago, of an upload with no
    record, or whose record (not held) names another one."""
    out = []
    for up in listed:
        uid = upload_id_of(up.key)
        if uid is None or not up.key.startswith(UPLOAD_PREFIX) or now - up.initiated <= grace_s:
            continue
        rec = records.get(uid)
        if rec is None or (not rec.held and rec.store_upload_id != up.upload_id):
            out.append(up)
    return out
