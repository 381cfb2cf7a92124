"""The upload service: tus requests (checked by :mod:`.tus`) made real, each PATCH streamed
into the object store's multipart upload. Any origin host on the catalogue's database can serve
any upload's next request: everything acknowledged is in the object store, and the record that
says so is in the database (:mod:`.records`). The design in full: docs/origin-uploads.md.

Where bytes are, and when an offset is acknowledged (``Upload-Offset`` in an answer is always
the durable offset, durable in the erasure-coded store):

- A PATCH's body is read in pieces of at most 256 KiB and appended to the upload's local
  **spool file** (``<data_dir>/spool/<id>.<generation>.<length>``): a working copy of the
  **incomplete part**, the bytes past the last part stored (less than ``part_size``). In memory
  there is one piece per PATCH, and one part while it is being sent (at most
  ``max_parts_in_flight`` parts or segments in the whole process).
- Whenever the spool reaches ``part_size`` (a PATCH without a checksum), that part is read
  back, sent to the store (UploadPart, its SHA-256 signed so the store checks it), and once the
  store has answered, the record gains the part and names an empty incomplete part of the next
  generation: the part is acknowledged because it is durable in the store.
- When a PATCH ends inside a part (or the client goes away mid-body, as tus asks a server to
  keep what it got), the bytes it added to the incomplete part are PUT to the uploads bucket
  as one **segment** object (``incomplete/<id>/<generation>.<random>``, SHA-256 signed), then
  the record names the segment: those bytes are acknowledged, durable in the store. When the
  next part is stored the record stops naming the segments and they are deleted (one
  DeleteObjects). (tusd's S3 store keeps an "incomplete part" object the same way, but
  rewrites it whole at each PATCH.)
- **The write bound.** A PATCH ending mid-part writes only its own bytes as a new segment, not
  the incomplete part again: however small the PATCHes, a byte goes to the store once in a
  segment and once in its part. But a part could gather many segments, each a GET for a host
  rebuilding the spool: a PATCH that would make one more than ``max_incomplete_segments`` (K, 8)
  writes the whole incomplete part (under ``part_size`` bytes) as one segment instead, replacing
  the others. So an upload has at most K segments, and the bytes written to the store are at
  most 2 x the upload's length + ``part_size`` x (PATCHes ending mid-part) / K.
- A PATCH starts from the local spool when its name says it holds the record's generation and
  length (this host wrote it); otherwise (another host took the last PATCH, or this one
  restarted: the spool is emptied at start) it rebuilds it from the segments, read back from the
  store in order. The PATCH that makes the upload whole sends the rest as the last part (no
  segment), then CompleteMultipartUpload; the object is ``s3://<uploads_bucket>/uploads/<id>``.
  Should completion fail, that PATCH acknowledged none of its rest (the client sends it again).
- With ``Upload-Checksum``, nothing of the body counts until the digest matches: the bytes wait
  in the spool (on disk, never in memory), are dropped on a mismatch (460, offset unchanged) or
  when the body is cut, and are cut into parts and a segment once verified. Such bytes are
  bounded for the whole process by ``max_unverified_spool``: before its body is read, a
  checksummed PATCH reserves what it may spool (its Content-Length, else the rest of the
  upload); one that would take the total past the budget is answered 503 ``spool_busy`` with
  Retry-After (nothing read, nothing acknowledged), one larger than the whole budget 413 (send
  smaller chunks). The reservation is released when the PATCH ends, however it ends.
- The spool's filesystem: a PATCH that would leave less than ``min_spool_free`` free (counting
  what it may write) is answered 507 before its body is read; a disk that fills anyway
  (ENOSPC mid-body) drops the bytes not yet recorded and answers 507: the client resumes from
  the recorded offset.

A record is rewritten only after what it names is durable in the store (a part, a segment), so
a crash at any point leaves a record describing bytes that exist; a segment stored but never
named (a crash between the PUT and the record) is an orphan object under ``incomplete/<id>/``,
which the janitor's orphan sweep deletes once ``orphan_grace_s`` old (:mod:`.orphans`).
One request at a time per upload, across hosts: a PATCH, a termination, a completion, a
retirement or a title being made (:meth:`UploadService.claimed`) first takes the upload's
**lease** in the database, and writes only under its fence; another request meanwhile, on any
host, gets 409 ``upload_locked`` (see :mod:`.records`). At most ``max_uploads_per_client``
unfinished uploads per client (429), counted in the database (every host's). A
creation-with-upload whose first chunk is refused (460, 413, 503, 507) is removed at once: its
answer names no upload to resume. An upload of 0 bytes is refused (400 ``empty_upload``): it can
be no video, and each would leave an object and a record for nothing.

Records of completed uploads are retired (:meth:`UploadService.retire_once`, from the janitor
of every host: the lease lets one at a time at an upload) ``upload_retention_seconds`` after
completion. A record is only what lets its owner name the upload in ``POST /api/titles``: a
creator has the retention (7 days by default) to make the title. The title's transcode job names
the object (bucket and key in its payload), never the record, so the object of an upload a title
was made from stays (the source master, for a later transcode); the object of an upload no title
names is deleted with its record, or it would hold its bytes forever. Whether a title names it
is ``source_in_use`` (the catalogue, in the daemon); without one, retirement keeps every object.
A termination (tus DELETE) of an upload a title names removes the record and keeps the object.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import secrets
from dataclasses import replace
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.http.errors import HttpError

from ..errors import BadRequest, ChecksumMismatch, Conflict, Gone, InsufficientStorage, NotFound, OriginError, \
    PayloadTooLarge, SpoolFull, StoreUnavailable, TooManyRequests
from . import tus
from .orphans import SEGMENT_PREFIX, UPLOAD_PREFIX, orphan_segments, stray_multipart_uploads, upload_id_of
from .records import LeaseLost, UploadRecords
from .s3 import MultipartStore
from .tus import Part, UploadState

__all__ = ["UploadService", "READ_BYTES", "SourceInUse"]

#: ``(owner, upload id) -> whether a title was made from that upload`` (the catalogue's answer).
SourceInUse = Callable[[str, str], Awaitable[bool]]

READ_BYTES = 256 * 1024
# What a PATCH refused for the spool budget is told to wait: the PATCHes holding it end at
# their clients' pace, which the origin cannot know; a short wait costs a retry at most.
SPOOL_RETRY_AFTER_S = 10
#: Segments the incomplete part may be stored as before a PATCH writes it whole, as one.
MAX_INCOMPLETE_SEGMENTS = 8
#: How old (the store's time) an object no record names must be before the sweep removes it.
DEFAULT_ORPHAN_GRACE_S = 3600.0
log = logging.getLogger("headwater.origin.upload")


def free_disk_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still put on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class UploadService:
    """Every upload of one origin process (see the module docstring)."""

    def __init__(self, *, records: UploadRecords, store: MultipartStore, spool_dir: Path, part_size: int,
                 max_upload_bytes: int, max_uploads_per_client: int, expiry_s: float, max_metadata_bytes: int,
                 max_parts_in_flight: int = 8, max_unverified_spool_bytes: int = 2 * 1024**3,
                 min_spool_free_bytes: int = 1024**3, retention_s: float = 7 * 86400.0,
                 clock: Clock = SYSTEM_CLOCK, new_id: Callable[[], str] = lambda: secrets.token_hex(16),
                 disk_free: Callable[[Path], int] = free_disk_bytes,
                 source_in_use: SourceInUse | None = None, host_id: str = "origin",
                 max_incomplete_segments: int = MAX_INCOMPLETE_SEGMENTS,
                 orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S, db_threads: int | None = None) -> None:
        self.records = records
        self.store = store
        self.spool_dir = spool_dir
        self.part_size = part_size
        self.max_upload_bytes = max_upload_bytes
        self.max_uploads_per_client = max_uploads_per_client
        self.expiry_s = expiry_s
        self.max_metadata_bytes = max_metadata_bytes
        self.clock = clock
        self.new_id = new_id
        self.max_unverified_spool_bytes = max_unverified_spool_bytes
        self.min_spool_free_bytes = min_spool_free_bytes
        self.retention_s = retention_s
        self.disk_free = disk_free
        self.source_in_use = source_in_use
        self.host_id = host_id
        self.max_incomplete_segments = max_incomplete_segments
        self.orphan_grace_s = orphan_grace_s
        # None: anyio's default limiter (the process's 40 worker threads).
        self._db_limiter = anyio.CapacityLimiter(db_threads) if db_threads is not None else None
        self.unverified_bytes = 0  # reserved by checksummed PATCHes in progress
        # The uploads this process holds the lease of, with the lease's fence.
        self._held: dict[str, int] = {}
        self._released: set[str] = set()  # of those, the ones whose last write gave the lease back
        # A part is in memory while it is sent: this bounds the process's part buffers to
        # max_parts_in_flight x part_size whatever the number of uploads.
        self._part_slots = anyio.Semaphore(max_parts_in_flight)
        self.counts = {"created": 0, "completed": 0, "patches": 0, "parts": 0, "checksum_mismatches": 0,
                       "expired": 0, "terminated": 0, "bytes": 0,
                       "spool_busy": 0, "disk_refusals": 0, "retired": 0,
                       "unused_deleted": 0, "segments_stored": 0, "segments_coalesced": 0,
                       "segments_read": 0, "orphan_segments_deleted": 0, "stray_uploads_aborted": 0,
                       "orphan_sweep_failures": 0}
        spool_dir.mkdir(parents=True, exist_ok=True)

    # --- start: the local spool is a cache -----------------------------------------------------

    async def recover(self) -> list[UploadState]:
        """Empty the local spool (every acknowledged byte is in the store: a copy is rebuilt from
        the segments when a PATCH needs it); returns the uploads that are whole but not completed
        (a crash between the last byte and completion, on any host). Both in worker threads: a
        slow database (or disk) holds up no other task of the loop meanwhile."""
        def empty_spool() -> None:
            for p in self.spool_dir.iterdir():
                p.unlink(missing_ok=True)
        await anyio.to_thread.run_sync(empty_spool)
        return [st for st in await self._db(self.records.unfinished) if st.offset == st.length]

    def _spool(self, st: UploadState, gen: int | None = None, spooled: int | None = None) -> Path:
        """The local copy of the incomplete part, named by what it holds: a file named for the
        record's generation and length was written under a lease that stored those bytes."""
        return self.spool_dir / (f"{st.id}.{st.spool_gen if gen is None else gen}."
                                 f"{st.spooled if spooled is None else spooled}")

    async def _open_spool(self, st: UploadState) -> Any:
        """The local spool of ``st`` opened at its recorded length: this host's copy if it names
        the record's state, else rebuilt from the incomplete part's segments in the store."""
        path = self._spool(st)
        try:
            f = open(path, "r+b")
        except FileNotFoundError:
            f = None
        if f is not None:
            if os.fstat(f.fileno()).st_size >= st.spooled:
                f.truncate(st.spooled)
                f.seek(st.spooled)
                return f
            f.close()
        self._drop_local(st.id)
        f = open(path, "w+b")
        try:
            for key, size in st.segments:
                data = await self.store.read_object(key, max_bytes=size)
                if len(data) != size:
                    raise StoreUnavailable(f"upload {st.id}: segment {key} holds {len(data)} bytes, not {size}")
                f.write(data)
                self.counts["segments_read"] += 1
            if f.tell() != st.spooled:
                raise RuntimeError(f"upload {st.id}: its segments hold {f.tell()} bytes, its record {st.spooled}")
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
        return f

    def _drop_local(self, upload_id: str) -> None:
        for p in self.spool_dir.glob(f"{upload_id}.*"):
            p.unlink(missing_ok=True)

    async def _drop_segments(self, st: UploadState, keys: Any) -> None:
        """Delete segments no record names any more (best effort: one left behind is an orphan
        object under ``incomplete/<id>/``, for the orphan sweep)."""
        keys = list(keys)
        if not keys:
            return
        try:
            failed = await self.store.delete_objects(keys)  # one request for them all
        except OriginError as e:
            failed = keys
            log.warning("upload %s: deleting its segments failed: %s", st.id, e,
                        extra={"event": "origin.segment_orphaned", "upload": st.id, "keys": keys})
        else:
            if failed:
                log.warning("upload %s: the store kept segments %s", st.id, ", ".join(failed),
                            extra={"event": "origin.segment_orphaned", "upload": st.id, "keys": failed})

    # --- the requests --------------------------------------------------------------------------

    async def get(self, owner: str, upload_id: str) -> UploadState:
        """The upload, if it is ``owner``'s (404 for an unknown id or another client's, 410
        expired); its database read in a worker thread.

        Another client's upload is answered exactly as an id that never existed: a 403 would
        tell a prober which ids are live."""
        _check_id(upload_id)
        return self._owned(owner, await self._db(self.records.get, upload_id))

    _read = get

    def _owned(self, owner: str, st: UploadState | None) -> UploadState:
        if st is None or st.owner != owner:
            raise NotFound("no such upload")
        if not st.finished and self.clock.time() >= st.expires:
            raise Gone("the upload has expired")
        return st

    @asynccontextmanager
    async def claimed(self, owner: str, upload_id: str) -> AsyncIterator[UploadState]:
        """The upload (as :meth:`get`), held while the caller makes a title from it: a PATCH, a
        termination or a retirement of it meanwhile is refused or skipped (409 ``upload_locked``
        for one that arrives while it is held, as for one that finds a PATCH running)."""
        st = await self._read(owner, upload_id)
        fence, fresh = await self._acquire(st.id)
        try:
            yield fresh
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(st.id, fence)

    async def head(self, owner: str, upload_id: str) -> UploadState:
        """tus HEAD. An upload whose bytes are all durable but whose completion failed (the store
        was down at the last PATCH) is completed now: a client that reads offset == length takes
        the upload as done, so it must be (503 if the store still refuses)."""
        st = await self._read(owner, upload_id)
        if not st.finished and st.offset == st.length:
            st = await self._locked(st, self._complete_if_whole)
        return st

    async def _complete_if_whole(self, st: UploadState) -> UploadState:
        return st if st.finished else await self._complete(st)

    async def create(self, owner: str, headers: Any, body: Any) -> UploadState:
        """tus creation (and creation-with-upload when the POST has a body)."""
        length, metadata, with_body = tus.creation(headers, max_size=self.max_upload_bytes,
                                                   max_metadata_bytes=self.max_metadata_bytes)
        if length == 0:
            raise _EmptyUpload()
        # Every host's uploads count (the records are shared); two hosts creating at once may
        # let one past the bound.
        if await self._db(self.records.open_count, owner) >= self.max_uploads_per_client:
            raise TooManyRequests(f"at most {self.max_uploads_per_client} unfinished uploads per client")
        self._check_disk(0)  # an upload that could not spool a byte is not worth making
        upload_id = self.new_id()
        key = f"uploads/{upload_id}"
        store_id = await self.store.create(key)
        now = self.clock.time()
        st = UploadState(id=upload_id, owner=owner, length=length, metadata=metadata, created=now,
                         expires=now + self.expiry_s, store_upload_id=store_id, key=key)
        try:
            await self._db(self.records.insert, st)
        except OriginError:
            # No record will ever name this multipart upload: abort it now (best effort: the
            # store's own lifecycle is the last resort), or it would hold parts forever.
            try:
                await self.store.abort(key, store_id)
            except OriginError:
                pass
            raise
        self.counts["created"] += 1
        log.info("upload %s created by %s: %d bytes", upload_id, owner, length,
                 extra={"event": "origin.upload_created", "upload": upload_id, "owner": owner, "length": length})
        if with_body:
            try:
                return await self.patch(owner, upload_id, headers, body, offset_given=False)
            except OriginError:
                # The refusal carries no Location: the client can neither resume nor terminate
                # this upload, which would hold one of its max_uploads_per_client until expiry.
                await self._discard(st)
                raise
        return st

    async def patch(self, owner: str, upload_id: str, headers: Any, body: Any, *,
                    offset_given: bool = True) -> UploadState:
        """tus PATCH: the body appended at the upload's offset; the new durable state."""
        st = await self._read(owner, upload_id)
        if not offset_given:  # creation-with-upload: the body starts at 0 by definition
            headers = _WithOffset(headers, st.offset)
        checksum = tus.patch_start(st, headers, self.clock.time())
        may_write = st.length - st.offset
        declared = (headers.get("content-length") or "").strip()
        if declared.isascii() and declared.isdigit() and len(declared) <= 19:
            may_write = min(may_write, int(declared))
        # Both checks before a byte of the body is read: a refusal costs the client nothing.
        reserved = self._reserve_unverified(may_write) if checksum is not None else 0
        try:
            self._check_disk(may_write if checksum is not None else min(may_write, self.part_size))
            self.counts["patches"] += 1
            return await self._locked(st, lambda s: self._receive_at(s, headers, body, checksum, reserved))
        finally:
            self.unverified_bytes -= reserved

    def _reserve_unverified(self, size: int) -> int:
        """Take ``size`` bytes of the unverified-spool budget (see the module docstring)."""
        budget = self.max_unverified_spool_bytes
        if size > budget:
            raise PayloadTooLarge(f"a PATCH with Upload-Checksum is held on disk until verified: at most "
                                  f"{budget} bytes at once (max_unverified_spool); send chunks of at most "
                                  f"that many bytes")
        if self.unverified_bytes + size > budget:
            self.counts["spool_busy"] += 1
            raise SpoolFull(f"the origin is holding other unverified uploads (max_unverified_spool, {budget} "
                            f"bytes): retry this PATCH later", retry_after_s=SPOOL_RETRY_AFTER_S)
        self.unverified_bytes += size
        return size

    def _check_disk(self, size: int) -> None:
        """507 when writing ``size`` bytes would leave the spool's filesystem below its floor."""
        if self.min_spool_free_bytes <= 0:
            return
        free = self.disk_free(self.spool_dir)
        if free - size < self.min_spool_free_bytes:
            self.counts["disk_refusals"] += 1
            raise InsufficientStorage(f"the origin's spool disk has {free} bytes free, under min_spool_free "
                                      f"({self.min_spool_free_bytes} bytes) once this PATCH is written: retry later")

    async def delete(self, owner: str, upload_id: str) -> None:
        """tus termination: the multipart upload aborted (or the finished object deleted), the
        spool and the record removed."""
        st = await self._read(owner, upload_id)
        await self._locked(st, self._remove)
        self.counts["terminated"] += 1

    async def _discard(self, st: UploadState) -> None:
        """Remove an upload nobody can name any more; a store that refuses leaves it to expiry."""
        try:
            await self._locked(st, self._remove)
        except OriginError as e:
            log.warning("upload %s: discarding it failed, it will expire: %s", st.id, e,
                        extra={"event": "origin.discard_failed", "upload": st.id})

    async def _db(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Every read and write of the records, in a worker thread (at most ``db_threads`` at
        once, as the catalogue's calls: more would only wait for a pooled connection): the
        database's round trip and commit (fsync) never hold up the event loop's other requests."""
        return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs), limiter=self._db_limiter)

    async def _acquire(self, upload_id: str) -> tuple[int, UploadState]:
        """Take the upload's lease (see :mod:`.records`): its fence and the upload as it is now;
        409 ``upload_locked`` while another request, on this host or another, holds it; 404 if
        the upload is gone."""
        if upload_id in self._held:
            raise _Locked()
        self._held[upload_id] = -1  # taken for this request while the database is asked
        try:
            got = await self._db(self.records.acquire, upload_id,
                                 f"{self.host_id}:{os.getpid()}:{secrets.token_hex(4)}")
            if got is None:
                if await self._db(self.records.get, upload_id) is None:
                    raise NotFound("no such upload")
                raise _Locked()
        except BaseException:
            del self._held[upload_id]
            raise
        self._held[upload_id] = got[0]
        return got

    async def _release(self, upload_id: str, fence: int) -> None:
        if self._held.get(upload_id) == fence:
            del self._held[upload_id]
        if upload_id in self._released:
            self._released.discard(upload_id)  # given back with the request's last write
            return
        try:
            await self._db(self.records.release, upload_id, fence)
        except OriginError as e:  # the lease lapses by itself
            log.warning("upload %s: releasing its lease failed: %s", upload_id, e,
                        extra={"event": "origin.lease_release_failed", "upload": upload_id})

    async def _put(self, st: UploadState, *, release: bool = False) -> None:
        """Record ``st`` under the lease this request holds (LeaseLost if it was taken over);
        ``release``: the request's last write, which gives the lease back in the same commit."""
        await self._db(self.records.put, st, fence=self._held[st.id], release=release)
        if release:
            self._released.add(st.id)

    async def _locked(self, st: UploadState, action: Callable[[UploadState], Any]) -> Any:
        fence, fresh = await self._acquire(st.id)
        try:
            return await action(fresh)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(st.id, fence)

    async def _remove(self, st: UploadState) -> None:
        if st.finished:
            # tus: termination frees what the upload holds, but not a title's source
            if self.source_in_use is None or not await self.source_in_use(st.owner, st.id):
                await self.store.delete(st.key)
        else:
            await self.store.abort(st.key, st.store_upload_id)
            # An object of an unfinished upload: the store completed it but the record of that
            # was lost (_complete). No title names it (a title needs a finished upload).
            await self.store.delete(st.key)
        await self._db(self.records.delete, st.id, fence=self._held[st.id])
        self._drop_local(st.id)
        await self._drop_segments(st, [k for k, _ in st.segments])

    # --- a PATCH body ----------------------------------------------------------------------------

    async def _receive_at(self, st: UploadState, headers: Any, body: Any, checksum: tus.Checksum | None,
                          reserved: int) -> UploadState:
        # The upload as the lease found it: another host may have moved it on since the checks
        # before the lease (409 if the PATCH's Upload-Offset is no longer the upload's).
        tus.patch_start(st, headers, self.clock.time())
        return await self._receive(st, body, checksum, reserved)

    async def _receive(self, st: UploadState, body: Any, checksum: tus.Checksum | None,
                       reserved: int) -> UploadState:
        # A checksummed body may not spool more than it reserved of the budget (its
        # Content-Length, which an HTTP/2 peer could overrun without the core noticing).
        limit = reserved if checksum is not None else st.length - st.offset
        hasher = checksum.new() if checksum is not None else None
        drop_unrecorded = hasher is not None  # until verified
        f = await self._open_spool(st)
        renewed = self.clock.monotonic()
        try:
            size = st.spooled  # bytes in the spool file now (recorded or not)
            received = 0
            try:
                while True:
                    chunk = await body.receive(READ_BYTES)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > limit:
                        raise PayloadTooLarge(f"the body ends past Upload-Length {st.length}"
                                              if hasher is None or limit == st.length - st.offset
                                              else f"the body is longer than its Content-Length {limit}")
                    if self.clock.monotonic() - renewed > self.records.lease_s / 3:
                        # A slow body: keep the lease (another host would take it over when it lapses).
                        await self._db(self.records.renew, st.id, self._held[st.id])
                        renewed = self.clock.monotonic()
                    if hasher is not None:
                        hasher.update(chunk)
                        f.write(chunk)
                        size += len(chunk)
                        continue
                    view = memoryview(chunk)
                    while view:
                        if size == self.part_size:
                            # A whole part and more to come: store it. (A part the body ends on
                            # is stored by _end_of_body, whose record also gives the lease back.)
                            st, f = await self._cut_one(st, f)
                            size = 0
                        take = min(len(view), self.part_size - size)
                        f.write(view[:take])
                        size += take
                        view = view[take:]
            except HttpError:
                # The client went away or was cut off mid-body: keep what arrived (tus), unless it
                # was to be verified as a whole.
                # The core cancels the request's scope when the client vanishes: shield the store
                # write and the record, or the bytes already received would never be acknowledged.
                if hasher is None:
                    with anyio.CancelScope(shield=True):
                        st, f = await self._end_of_body(st, f, size)
                raise
            if hasher is not None and checksum is not None:
                if hasher.digest() != checksum.digest:
                    self.counts["checksum_mismatches"] += 1
                    raise ChecksumMismatch(f"the body's {checksum.algorithm} differs from Upload-Checksum")
                drop_unrecorded = False
                st, f, size = await self._cut_spool(st, f, size)
            st, f = await self._end_of_body(st, f, size)
            self.counts["bytes"] += received
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # What was not recorded is not acknowledged: drop it (the disk is full), the client
            # resumes from the recorded offset.
            drop_unrecorded = True
            self.counts["disk_refusals"] += 1
            raise InsufficientStorage("the origin's spool disk is full: retry later") from None
        finally:
            if drop_unrecorded:
                # Unverified bytes leave the disk with the PATCH that brought them (a mismatch, a
                # cut body, a full disk), not at the next PATCH or the expiry. Closed first: a
                # buffered write flushed at close would grow the file again.
                try:
                    f.close()
                except OSError:
                    pass
                _truncate_quietly(self._spool(st), st.spooled)
            else:
                f.close()
        return st

    async def _end_of_body(self, st: UploadState, f: Any, size: int) -> tuple[UploadState, Any]:
        """What a PATCH's body leaves in the spool (``size`` bytes), made durable, in the PATCH's
        last record write (which gives the lease back): the upload completed if it is whole (the
        rest is the last part, never a segment first; should completing fail, nothing of the rest
        is acknowledged and the client sends it again), else a whole part stored, else the rest
        stored as a segment."""
        if st.stored + size == st.length:
            return await self._complete(st, f, size), f
        if size == self.part_size:
            return await self._cut_one(st, f, last=True)
        return await self._commit_spool(st, f, size, last=True), f

    async def _commit_spool(self, st: UploadState, f: Any, size: int, *, last: bool = False) -> UploadState:
        """Store the spool's bytes past the recorded ones as a segment of the incomplete part,
        then record them: those bytes are acknowledged, durable in the store. The segment that
        would be one too many (``max_incomplete_segments``) is written as the whole incomplete
        part instead, replacing the others (see the module docstring: the write bound). ``last``:
        the request's last write, which gives the lease back with it (one commit, not two)."""
        if size == st.spooled:
            return st
        f.flush()
        coalesce = len(st.segments) >= self.max_incomplete_segments
        start = 0 if coalesce else st.spooled
        key = f"incomplete/{st.id}/{st.spool_gen}.{secrets.token_hex(6)}"
        async with self._part_slots:
            data = os.pread(f.fileno(), size - start, start)
            if len(data) != size - start:
                raise RuntimeError(f"upload {st.id}: the spool is shorter than its record")
            await self.store.put_object(key, data)
            del data
        self.counts["segments_stored"] += 1
        if coalesce:
            self.counts["segments_coalesced"] += 1
            new = replace(st, spooled=size, segments=((key, size),))
        else:
            new = replace(st, spooled=size, segments=st.segments + ((key, size - start),))
        try:
            await self._put(new, release=last)
        except LeaseLost:
            await self._drop_segments(st, [key])  # the fenced write matched nothing: nothing names it
            raise
        # Any other failure (the database did not answer) may come after the commit, the record
        # then naming the segment: it stays, and is the orphan sweep's if the write did not happen.
        os.rename(self._spool(st), self._spool(new))
        if coalesce:
            await self._drop_segments(st, [k for k, _ in st.segments])
        return new

    async def _send(self, st: UploadState, f: Any, regions: list[tuple[int, int]]) -> tuple[Part, ...]:
        f.flush()
        out = []
        number = len(st.parts) + 1
        for start, size in regions:
            async with self._part_slots:
                data = os.pread(f.fileno(), size, start)
                if len(data) != size:
                    raise RuntimeError(f"upload {st.id}: the spool is shorter than its record")
                out.append(await self.store.put_part(st.key, st.store_upload_id, number, data))
                del data
            number += 1
            self.counts["parts"] += 1
        return tuple(out)

    async def _new_generation(self, st: UploadState, f: Any, tail_start: int, tail: int) -> Any:
        """A new local spool file holding the old one's last ``tail`` bytes (not yet stored: the
        commit that follows stores them as the new generation's first segment)."""
        data = os.pread(f.fileno(), tail, tail_start) if tail else b""
        nf = open(self._spool(st, st.spool_gen + 1, 0), "w+b")
        nf.write(data)
        return nf

    async def _cut_one(self, st: UploadState, f: Any, *, last: bool = False) -> tuple[UploadState, Any]:
        """The spool is exactly one part: store it, then record it with an empty spool (``last``:
        the request's last write, which gives the lease back)."""
        parts = await self._send(st, f, [(0, self.part_size)])
        nf = await self._new_generation(st, f, 0, 0)
        return await self._switch(st, f, parts, release=last), nf

    async def _cut_spool(self, st: UploadState, f: Any, size: int) -> tuple[UploadState, Any, int]:
        """A verified spool of ``size`` bytes: its whole parts stored, the rest kept."""
        regions = tus.parts_to_cut(size, self.part_size, final=False, stored_parts=len(st.parts))
        if not regions:
            return st, f, size
        parts = await self._send(st, f, regions)
        cut = sum(r[1] for r in regions)
        nf = await self._new_generation(st, f, cut, size - cut)
        return await self._switch(st, f, parts), nf, size - cut

    async def _switch(self, st: UploadState, f: Any, parts: tuple[Part, ...], *,
                      release: bool = False) -> UploadState:
        """Record the new parts (the incomplete part they consumed is gone), then delete its
        segments and local copy."""
        old = self._spool(st)
        new = st.with_parts(parts, st.spool_gen + 1)
        await self._put(new, release=release)
        f.close()
        old.unlink(missing_ok=True)
        await self._drop_segments(st, [k for k, _ in st.segments])
        return new

    async def _complete(self, st: UploadState, f: Any = None, size: int | None = None) -> UploadState:
        """The rest of the spool as the last part, then CompleteMultipartUpload; the record of
        the completed upload is the request's last write (it gives the lease back). ``f`` and
        ``size``: a PATCH's open spool holding ``size`` bytes (else the recorded incomplete part)."""
        own = f is None
        if own:
            f = await self._open_spool(st)
            size = st.spooled
        assert size is not None
        regions = tus.parts_to_cut(size, self.part_size, final=True, stored_parts=len(st.parts))
        try:
            try:
                last = await self._send(st, f, regions)
            finally:
                if own:
                    f.close()
            parts = st.parts + last
            await self.store.complete(st.key, st.store_upload_id, parts)
        except StoreUnavailable:
            # An earlier completion may have succeeded in the store with its record write lost
            # (the database away at that moment): the multipart upload is gone (NoSuchUpload,
            # for ever) and the object whole. Then only the record is missing.
            if not await self._whole_in_store(st):
                raise
            log.info("upload %s: already complete in the store (its record was not): recorded now", st.id,
                     extra={"event": "origin.upload_completion_recorded", "upload": st.id})
        done = replace(st, parts=(), spooled=0, segments=(), completed=self.clock.time())
        await self._put(done, release=True)
        self._drop_local(st.id)
        await self._drop_segments(st, [k for k, _ in st.segments])
        self.counts["completed"] += 1
        log.info("upload %s complete: s3://%s/%s", st.id, self.store.bucket, st.key,
                 extra={"event": "origin.upload_completed", "upload": st.id, "key": st.key, "length": st.length})
        return done

    async def _whole_in_store(self, st: UploadState) -> bool:
        """Whether the store holds ``st``'s object at its full length: only its own multipart
        upload's completion writes ``uploads/<id>`` (ids are random and never reused)."""
        try:
            obj = await self.store.get_object(st.key, head=True)
        except (NotFound, StoreUnavailable):
            return False
        await obj.aclose()
        return obj.status == 200 and obj.headers.get("content-length") == str(st.length)

    async def finish_pending(self, pending: list[UploadState] | None = None) -> None:
        """Complete uploads that are whole but not completed (found at start after a crash, or
        left by a store that refused the completion); every whole one when ``pending`` is None."""
        if pending is None:
            pending = [st for st in await self._db(self.records.unfinished) if st.offset == st.length]
        for st in pending:
            if st.id in self._held:
                continue
            try:
                await self._locked(st, self._complete_if_whole)
            except (StoreUnavailable, Conflict, NotFound) as e:
                log.warning("upload %s: completing at start failed: %s", st.id, e,
                            extra={"event": "origin.complete_failed", "upload": st.id})

    # --- expiry and retention ----------------------------------------------------------------------

    async def retire_once(self) -> int:
        """Remove the records of uploads completed ``retention_s`` ago or more, and the objects
        of those no title was made from (see the module docstring); how many records. One the
        store or the catalogue cannot answer for now (or another host is working on) is left to
        the next pass."""
        old = await self._db(self.records.completed_before, self.clock.time() - self.retention_s)
        retired = 0
        for st in old:
            if st.id in self._held:
                continue
            try:
                await self._locked(st, self._retire)
                retired += 1
            except OriginError as e:
                log.warning("upload %s: retiring it failed, the next pass tries again: %s", st.id, e,
                            extra={"event": "origin.retire_failed", "upload": st.id})
        return retired

    async def _retire(self, st: UploadState) -> None:
        if self.source_in_use is not None and not await self.source_in_use(st.owner, st.id):
            await self.store.delete(st.key)  # first: a record left behind is retried next pass
            self.counts["unused_deleted"] += 1
        await self._db(self.records.delete, st.id, fence=self._held[st.id])
        self.counts["retired"] += 1

    async def expire_once(self) -> int:
        """Abort every unfinished upload past its expiry (every host's: the janitors share the
        records, and the lease lets one of them at a time at an upload); how many."""
        gone = [st for st in await self._db(self.records.expired, self.clock.time()) if st.id not in self._held]
        for st in gone:
            try:
                await self._locked(st, self._remove)
                self.counts["expired"] += 1
            except (StoreUnavailable, Conflict, NotFound) as e:
                log.warning("upload %s: expiring failed: %s", st.id, e, extra={"event": "origin.expire_failed"})
        return len(gone)

    # --- orphans ----------------------------------------------------------------------------------

    async def collect_orphans_once(self) -> tuple[int, int]:
        """Delete the segments and abort the multipart uploads that no upload record will name
        again and are older than ``orphan_grace_s`` (the rules: :mod:`.orphans`); how many of
        each. The store is listed before the records are read, which the rules rely on. A store
        or database that does not answer leaves everything to the next pass."""
        try:
            segments = [o async for o in self.store.list_objects(SEGMENT_PREFIX)]
            strays = [u async for u in self.store.list_uploads(UPLOAD_PREFIX)]
            ids = {upload_id_of(x.key) for x in (*segments, *strays)} - {None}
            views = await self._db(self.records.views, ids) if ids else {}
        except OriginError as e:
            self.counts["orphan_sweep_failures"] += 1
            log.warning("uploads: the orphan sweep could not list the store or read the records: %s", e,
                        extra={"event": "origin.orphan_sweep_failed"})
            return 0, 0
        now = self.clock.time()
        doomed = orphan_segments(segments, views, now=now, grace_s=self.orphan_grace_s)
        deleted = 0
        if doomed:
            try:
                kept = await self.store.delete_objects(doomed)
            except OriginError as e:
                kept = doomed
                log.warning("uploads: deleting orphan segments failed: %s", e,
                            extra={"event": "origin.orphan_sweep_failed"})
            refused = set(kept)
            gone = [k for k in doomed if k not in refused]
            deleted = len(gone)
            self.counts["orphan_segments_deleted"] += deleted
            if gone:
                log.info("uploads: deleted %d orphan segments", deleted,
                         extra={"event": "origin.orphans_deleted", "keys": gone[:50]})
        aborted = 0
        for up in stray_multipart_uploads(strays, views, now=now, grace_s=self.orphan_grace_s):
            try:
                await self.store.abort(up.key, up.upload_id)
            except OriginError as e:
                log.warning("uploads: aborting stray multipart upload %s of %s failed: %s", up.upload_id, up.key, e,
                            extra={"event": "origin.orphan_sweep_failed"})
                continue
            aborted += 1
            self.counts["stray_uploads_aborted"] += 1
            log.info("uploads: aborted stray multipart upload %s of %s", up.upload_id, up.key,
                     extra={"event": "origin.stray_upload_aborted", "key": up.key})
        return deleted, aborted


def _check_id(upload_id: str) -> None:
    """404 for what cannot be an upload id (32 lower-case hex digits), before any lookup."""
    if len(upload_id) != 32 or not all(c in "0123456789abcdef" for c in upload_id):
        raise NotFound("no such upload")


class _Locked(Conflict):
    """Another request is writing this upload."""

    code = "upload_locked"

    def __init__(self) -> None:
        super().__init__("another request is writing this upload; retry after it ends")


class _EmptyUpload(BadRequest):
    """Upload-Length 0."""

    code = "empty_upload"

    def __init__(self) -> None:
        super().__init__("Upload-Length 0: an empty file is no video")


def _truncate_quietly(path: Path, size: int) -> None:
    try:
        with open(path, "r+b") as f:
            f.truncate(size)
    except OSError:  # already gone (the upload removed), or the disk refuses: the next PATCH cuts it
        pass


class _WithOffset:
    """A creation-with-upload's headers seen as a PATCH's: Upload-Offset 0."""

    def __init__(self, headers: Any, offset: int) -> None:
        self._headers, self._offset = headers, offset

    def get(self, name: str, default: str | None = None) -> str | None:
        if name.lower() == "upload-offset":
            return str(self._offset)
        return self._headers.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name == "upload-offset" or name in self._headers
