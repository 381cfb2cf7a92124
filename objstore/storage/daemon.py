"""The storage node daemon: erasure-coded fragments on one data directory, served over RPC.

Write protocol: ``frag.append`` adds blocks (stripe ``index``, ``index + 1``, ...) to a temp file
``data_dir/tmp/<fid>``; ``frag.commit`` writes the footer, fsyncs the file, renames it to
``data_dir/frags/ab/cd/<fid>`` and fsyncs that directory before it answers. ``frag.abort``
removes the temp file, one a block-0 append is still creating included (it answers once that is
gone, so a writer that aborts without waiting for an append it gave up on leaves nothing); temp
files nobody touched for ``tmp_max_age_s`` are removed by
:meth:`StorageNode.collect_garbage`. Every read verifies the checksum of each block it returns.
A ``frag.read`` whose blocks the page cache holds is read, verified and answered in the
connection's reader (the RPC server's at-once path), its payload sent from the file by sendfile
once verified (page cache to socket, never through a buffer of ours); any other read gets a task
and a worker thread, which waits for the disk and raises what it finds.

RPC methods (args map / payload):

=================  =========================================================  =====================
method             args                                                       reply
=================  =========================================================  =====================
``frag.append``    fid, index, lengths [n...], block_bytes, meta (first only)  {written}; payload =
                                                                              the blocks back to back
``frag.commit``    fid, nblocks                                               {size_bytes}
``frag.abort``     fid                                                        {aborted: bool}
``frag.read``      fid, first, count, pending (optional: the upload in        {lengths}; payload =
                   progress, if any), prefixed (optional: the reader          the blocks back to back
                   verifies)                                                  ({lengths, stride,
                                                                              prefixed}: each block
                                                                              with its prefix)
``frag.suspect``   fid, block (a reader found it corrupt)                     {}
``frag.stat``      fid                                                        {block_bytes, nblocks,
                                                                              last_len, size_bytes,
                                                                              complete, meta, mtime}
``frag.delete``    fid, if_mtime (optional: only the file listed with it)     {deleted: bool}
``frag.stat_many`` fids [...] (at most 1024)                                  {stats: [{fid, ...} or
                                                                              {fid, error: code}]}
``frag.list``      after (cursor), limit                                      {entries: [[fid, size,
                                                                              mtime]], next}
``node.info``      -                                                          {id, free_bytes, ...}
``node.collect``   -                                                          {removed: n} (stale
                                                                              temp files)
=================  =========================================================  =====================

A ``prefixed`` read (a GET's: the gateway receives the bytes anyway and hashes them there, warm in
its cache) of a committed range the page cache holds whole is answered from the file as it lies,
each block's length-and-xxh3 prefix included, with nothing read or hashed on the node; anything
else (not cached, pending, an error) is answered as an ordinary read, verified here, and says so
by leaving out ``prefixed``. A reader whose check fails tells the node (``frag.suspect``).

Corruption: a fragment that fails a checksum on read is handed to the node's scrubber to verify
whole; a fragment the scrubber finds corrupt is moved to ``data_dir/quarantine/`` (never served
again, kept for inspection), so it reads as missing and the reconstructor rebuilds it. Its mtime
is set to when it was quarantined, and the node's background loop (:meth:`StorageNode.run_gc_forever`)
removes it ``quarantine_retention_s`` later (:meth:`StorageNode.prune_quarantine`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import anyio
import anyio.abc
import anyio.to_thread

from headwater.admin import export_stats, serve_admin
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import ClusterConfig
from headwater.malloc import keep_freed_memory
from headwater.metrics import Registry, add_process_metrics
from headwater.rpc import LATER, BadRequest, ClusterSecret, FileRange, Reply, RpcServer, cluster_secret

from ..config import StorageNodeConfig, rpc_socket_path
from ..errors import StoreError
from .fragment import (
    BLOCK_PREFIX,
    FragmentCorrupt,
    FragmentNotFound,
    FragmentWriter,
    StorageFull,
    cached_range_open,
    check_fid,
    fragment_relpath,
    fsync_dir,
    read_blocks,
    read_blocks_cached,
    read_blocks_cached_open,
    read_info,
)
from .scrubber import Scrubber

__all__ = ["StorageNode", "StorageNodeError", "run_storage_node", "DEFAULT_TMP_MAX_AGE_S", "MAX_STAT_FIDS"]

log = logging.getLogger("headwater.storage")

DEFAULT_TMP_MAX_AGE_S = 3600.0
DEFAULT_QUARANTINE_RETENTION_S = 7 * 86400.0
GC_INTERVAL_S = 60.0
MAX_READ_BLOCKS = 1024
# Unless every page is kept (``storage_page_cache = "all"``), what a read brings in from the disk
# leaves the page cache once read when its fragment is larger than this; smaller ones stay (a
# hot segment is read from memory from its second GET on). Swift keeps objects up to 5 MiB
# (``keep_cache_size``); 4 MiB fragments are those of objects up to 16 MiB in EC 4+2.
READ_CACHED_MAX_BYTES = 4 * 1024 * 1024
# A page-cached read's reply payload at least this large is sent from the file (sendfile), not
# from the buffer it was verified in; smaller ones go out joined with their frame's header.
SENDFILE_MIN_BYTES = 64 * 1024
MAX_STAT_FIDS = 1024
MAX_LIST_ENTRIES = 10_000


def _well_formed_read(fid: object, first: object, count: object) -> bool:
    """Whether a read's arguments name a fragment and a block range it may ask for (the
    answered-at-once paths decline anything else; :meth:`StorageNode.read` refuses it)."""
    if (not isinstance(fid, str) or type(first) is not int or type(count) is not int or first < 0
            or not 0 <= count <= MAX_READ_BLOCKS):
        return False
    try:
        check_fid(fid)
    except BadRequest:
        return False
    return True


class StorageNodeError(StoreError):
    """The node cannot start (its data directory is missing, not a directory, or read-only)."""


class _Upload:
    __slots__ = ("writer", "lock", "touched")

    def __init__(self, writer: FragmentWriter, now: float):
        self.writer = writer
        self.lock = threading.Lock()  # held by the worker thread doing file I/O on it
        self.touched = now


class _Opening:
    """A block-0 append creating its temp file on a worker thread: ``aborted`` once a
    ``frag.abort`` of the fid came meanwhile, ``done`` once the append has either opened the
    upload or (aborted) removed the file again."""

    __slots__ = ("aborted", "done")

    def __init__(self) -> None:
        self.aborted = False
        self.done = anyio.Event()


class StorageNode:
    """One node's fragments. All blocking file I/O runs in worker threads.

    ``clock`` is a wall clock (seconds since the epoch, like ``time.time``): temp files left by an
    earlier run of the node are judged by their mtime against it, and quarantined fragments by
    when it says they were quarantined (0 ``quarantine_retention_s``: kept for ever).
    """

    def __init__(self, node_id: str, data_dir: str | os.PathLike[str], *,
                 tmp_max_age_s: float = DEFAULT_TMP_MAX_AGE_S,
                 quarantine_retention_s: float = DEFAULT_QUARANTINE_RETENTION_S,
                 page_cache: str = "none", clock: Callable[[], float] = time.time):
        self.id = node_id
        self.data_dir = Path(data_dir)
        self.frags_dir = self.data_dir / "frags"
        self.tmp_dir = self.data_dir / "tmp"
        self.quarantine_dir = self.data_dir / "quarantine"
        self.tmp_max_age_s = tmp_max_age_s
        self.quarantine_retention_s = quarantine_retention_s
        self.clock = clock
        # Which fragment pages stay in the page cache: "none", "data" or "all" (see
        # ``[objstore] storage_page_cache`` and headwater/pagecache.py).
        self.page_cache = page_cache
        self._uploads: dict[str, _Upload] = {}
        # Block-0 appends whose temp file is being created: not in _uploads yet, but an abort
        # arriving now must still reach them (see append).
        self._opening: dict[str, _Opening] = {}
        self.rpc: RpcServer | None = None
        self.rpc_port: int | None = None
        self._fragments = 0
        self._used_bytes = 0
        # Fids whose commit may be renaming a file into place right now; a quarantine of the same
        # fid waits its turn on _lock and then leaves the fresh file alone.
        self._lock = threading.Lock()
        self._committing: dict[str, int] = {}
        # Set by run_storage_node: fragments that failed a read are handed to it to verify whole.
        self.scrubber: Any = None
        self.counters = {"bytes_written": 0, "bytes_read": 0, "blocks_written": 0, "blocks_read": 0,
                         "cached_reads": 0, "commits_uncached": 0, "commits": 0, "aborts": 0, "deletes": 0,
                         "corrupt_reads": 0, "prefixed_reads": 0,
                         "not_found_reads": 0, "storage_full": 0, "tmp_collected": 0,
                         "quarantined": 0, "quarantine_pruned": 0, "quarantine_pruned_bytes": 0}
        self._quarantine_files = 0
        self._quarantine_bytes = 0
        self._full = False  # a write found the disk full and none has succeeded since

    # --- startup -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the data directory layout, check it is writable, count what is there (blocking)."""
        try:
            for d in (self.data_dir, self.frags_dir, self.tmp_dir, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.tmp_dir / f".probe-{os.getpid()}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"headwater")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
            fsync_dir(self.data_dir)
        except OSError as e:
            raise StorageNodeError(f"storage node {self.id}: data_dir {self.data_dir} is not usable: "
                                   f"{e.strerror or e}") from None
        count = used = 0
        for root, _dirs, files in os.walk(self.frags_dir):
            for name in files:
                try:
                    used += os.stat(os.path.join(root, name)).st_size
                    count += 1
                except FileNotFoundError:
                    pass
        self._fragments, self._used_bytes = count, used
        self._count_quarantine()

    def _count_quarantine(self) -> None:
        files = size = 0
        try:
            with os.scandir(self.quarantine_dir) as it:
                for e in it:
                    try:
                        size += e.stat(follow_symlinks=False).st_size
                        files += 1
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass
        self._quarantine_files, self._quarantine_bytes = files, size

    def path_of(self, fid: str) -> Path:
        return self.data_dir / fragment_relpath(fid)

    @property
    def fragment_count(self) -> int:
        return self._fragments

    # --- operations ----------------------------------------------------------------------------

    async def append(self, fid: str, index: int, blocks: list[memoryview], *, block_bytes: int,
                     meta: dict | None = None) -> int:
        check_fid(fid)
        if not isinstance(index, int) or index < 0:
            raise BadRequest(f"bad block index {index!r}")
        up = self._uploads.get(fid)
        if index == 0:
            if up is not None:  # a writer starting over: drop what it wrote before
                self._uploads.pop(fid, None)
                await anyio.to_thread.run_sync(self._locked, up, up.writer.abort)
            tmp = self.tmp_dir / fid
            # The file is created on a worker thread, which a cancelled caller does not stop: a
            # writer whose append it gave up on (a failed hash, say) sends its abort at once, and
            # that abort may land while the file is being created, before the upload is in
            # _uploads, where it would find nothing and leave the file behind. So it is told
            # (claim.aborted), this append removes what it made, and the abort answers after.
            claim = self._opening[fid] = _Opening()
            try:
                writer = await anyio.to_thread.run_sync(self._new_writer, tmp, fid, block_bytes, meta)
                if claim.aborted:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(writer.abort)
                    raise BadRequest(f"upload of {fid} aborted while it started", fid=fid)
                writer.drop_behind = not self._keeps_cached(writer)
                up = _Upload(writer, self.clock())
                self._uploads[fid] = up
            finally:
                if self._opening.get(fid) is claim:
                    del self._opening[fid]
                claim.done.set()
        elif up is None:
            raise BadRequest(f"no upload of {fid} in progress (start at block 0)", fid=fid)
        elif up.writer.header.block_bytes != block_bytes:
            raise BadRequest(f"{fid}: block_bytes {block_bytes} differs from {up.writer.header.block_bytes}")
        up.touched = self.clock()
        written = await anyio.to_thread.run_sync(self._locked, up, up.writer.append, index, blocks)
        up.touched = self.clock()
        self.counters["bytes_written"] += written
        self.counters["blocks_written"] += len(blocks)
        self._full = False
        return written

    def _new_writer(self, tmp: Path, fid: str, block_bytes: int, meta: dict | None) -> FragmentWriter:
        try:
            return FragmentWriter(tmp, fid, block_bytes, meta)
        except StorageFull as e:
            self._disk_full(e)
            raise
        except OSError as e:
            if e.errno == errno.ENOENT:  # tmp/ removed under us: recreate it
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                return FragmentWriter(tmp, fid, block_bytes, meta)
            raise

    def _locked(self, up: _Upload, fn: Callable[..., Any], *args: Any) -> Any:
        with up.lock:
            try:
                return fn(*args)
            except StorageFull as e:
                self._disk_full(e)
                raise

    def _disk_full(self, e: StorageFull) -> None:
        """Count a write refused for want of space; say so once until a write succeeds again."""
        self.counters["storage_full"] += 1
        if not self._full:
            self._full = True
            log.warning("storage %s: disk full: %s", self.id, e,
                        extra={"event": "disk.full", "data_dir": str(self.data_dir), "error": str(e)})

    async def commit(self, fid: str, nblocks: int) -> int:
        """Make the fragment durable and visible; idempotent once it has succeeded."""
        check_fid(fid)
        up = self._uploads.get(fid)
        dest = self.path_of(fid)
        if up is None:
            # A retried commit whose first answer was lost: succeed if the same fragment is there.
            try:
                info = await anyio.to_thread.run_sync(read_info, dest, fid)
            except FragmentNotFound:
                raise BadRequest(f"no upload of {fid} in progress", fid=fid) from None
            if info.complete and info.nblocks == nblocks:
                return info.size_bytes
            raise BadRequest(f"no upload of {fid} in progress", fid=fid)
        existed = await anyio.to_thread.run_sync(dest.exists)
        self._mark_committing(fid, +1)
        try:
            # Shielded: once the rename may have happened, the node's books must follow it.
            with anyio.CancelScope(shield=True):
                size = await anyio.to_thread.run_sync(self._locked, up, self._commit_writer, up.writer, dest,
                                                      nblocks)
        except BadRequest:
            raise  # wrong block count: the upload stays open so the writer can finish or abort
        except BaseException:
            self._uploads.pop(fid, None)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._locked, up, up.writer.abort)
            raise
        finally:
            self._mark_committing(fid, -1)
        self._uploads.pop(fid, None)
        self.counters["commits"] += 1
        if not self._keeps_cached(up.writer):
            self.counters["commits_uncached"] += 1
        if not existed:
            self._fragments += 1
        self._used_bytes += size
        return size

    def _keeps_cached(self, writer: FragmentWriter) -> bool:
        """Whether a committed fragment's pages stay in the page cache (``page_cache``)."""
        if self.page_cache == "all":
            return True
        # A parity fragment is read only to rebuild or decode around a lost data fragment.
        return self.page_cache == "data" and not writer.is_parity

    def _commit_writer(self, writer: FragmentWriter, dest: Path, nblocks: int) -> int:
        return writer.commit(dest, nblocks, keep_cached=self._keeps_cached(writer))

    async def abort(self, fid: str) -> bool:
        """Remove the upload of ``fid`` in progress, its temp file included (one a block-0
        append is creating right now too: this answers once it is gone). Whether there was one."""
        check_fid(fid)
        up = self._uploads.pop(fid, None)
        claim = self._opening.pop(fid, None)
        if claim is not None:
            claim.aborted = True  # its append removes the file once it is made: wait for that
            await claim.done.wait()
        if up is not None:
            await anyio.to_thread.run_sync(self._locked, up, up.writer.abort)
        elif claim is None:  # maybe left over from before a restart
            try:
                await anyio.to_thread.run_sync(os.unlink, self.tmp_dir / fid)
            except FileNotFoundError:
                return False
        self.counters["aborts"] += 1
        return True

    async def read(self, fid: str, first: int, count: int, *, pending: bool = False) -> list[memoryview]:
        """Blocks ``first .. first+count-1`` of a committed fragment, each verified. With
        ``pending``, of the upload of ``fid`` in progress if there is one (its blocks appended
        so far), else of the committed file: what a gateway reads to rebuild, for a handoff
        node, the blocks a failed node took before the PUT ends."""
        check_fid(fid)
        if not isinstance(first, int) or not isinstance(count, int) or first < 0 or not 0 <= count <= MAX_READ_BLOCKS:
            raise BadRequest(f"bad block range first={first!r} count={count!r} (count <= {MAX_READ_BLOCKS})")
        try:
            up = self._uploads.get(fid) if pending else None
            blocks = None
            if up is not None:
                if first + count > up.writer.count:
                    raise BadRequest(f"{fid}: {up.writer.count} blocks appended so far; asked for "
                                     f"{first}..{first + count - 1}", fid=fid)
                try:
                    blocks = await anyio.to_thread.run_sync(read_blocks, up.writer.tmp_path, fid, first, count)
                except FragmentNotFound:
                    blocks = None  # committed (renamed) meanwhile: read it where it is now
            if blocks is None:
                # A range the page cache holds is read right here (~0.1-0.3 ms per MiB): the
                # worker thread's hand-off and wake-ups cost more than that. Anything else, an
                # error included, goes to the thread, which waits for the disk and raises.
                blocks = self.read_now(fid, first, count)
                if blocks is not None:
                    return blocks
                blocks = await anyio.to_thread.run_sync(self._read_from_disk, self.path_of(fid), fid,
                                                        first, count)
        except FragmentCorrupt as e:
            self.counters["corrupt_reads"] += 1
            log.warning("storage %s: %s", self.id, e,
                        extra={"event": "fragment.corrupt_read", "fid": fid, "error": str(e)})
            if self.scrubber is not None:
                self.scrubber.suspect(fid)
            raise
        except FragmentNotFound:
            self.counters["not_found_reads"] += 1
            raise
        self._count_read(blocks)
        return blocks

    def _count_read(self, blocks: list[memoryview]) -> None:
        self.counters["blocks_read"] += len(blocks)
        self.counters["bytes_read"] += sum(len(b) for b in blocks)

    def read_now(self, fid: object, first: object, count: object) -> list[memoryview] | None:
        """What :meth:`read` returns for a committed fragment whose range the page cache holds,
        read and verified right here; None for anything else (not cached, malformed, missing,
        corrupt, pending): :meth:`read` then does it, on a worker thread where it must wait, and
        raises what it finds."""
        if not _well_formed_read(fid, first, count):
            return None
        blocks = read_blocks_cached(self.path_of(fid), fid, first, count)
        if blocks is not None:
            self.counters["cached_reads"] += 1
            self._count_read(blocks)
        return blocks

    def read_now_open(self, fid: object, first: object,
                      count: object) -> tuple[list[memoryview], int, int] | None:
        """:meth:`read_now` with the fragment file left open: ``(blocks, fd, offset)`` (see
        ``read_blocks_cached_open``), for a reply sent from the file; the caller closes ``fd``."""
        if not _well_formed_read(fid, first, count):
            return None
        got = read_blocks_cached_open(self.path_of(fid), fid, first, count)
        if got is not None:
            self.counters["cached_reads"] += 1
            self._count_read(got[0])
        return got

    def _read_from_disk(self, path: Path, fid: str, first: int, count: int) -> list[memoryview]:
        keep = None if self.page_cache == "all" else READ_CACHED_MAX_BYTES
        return read_blocks(path, fid, first, count, drop_behind_above=keep)

    async def stat(self, fid: str) -> dict:
        check_fid(fid)
        return await anyio.to_thread.run_sync(self._stat, fid)

    def _stat(self, fid: str) -> dict:
        path = self.path_of(fid)
        try:
            mtime = os.stat(path).st_mtime  # first: what a delete naming it will compare
        except FileNotFoundError:
            raise FragmentNotFound(f"no fragment {fid}", fid=fid) from None
        info = read_info(path, fid)
        return {"fid": fid, "block_bytes": info.block_bytes, "nblocks": info.nblocks,
                "last_len": info.last_len, "size_bytes": info.size_bytes,
                "complete": info.complete, "meta": info.meta, "mtime": mtime}

    async def stat_many(self, fids: list[str]) -> list[dict]:
        """``stat`` of many fragments in one call (the reconstructor's check); a fragment that is
        missing or damaged answers ``{fid, error: code}`` instead of failing the call."""
        for fid in fids:
            check_fid(fid)
        return await anyio.to_thread.run_sync(self._stat_many, fids)

    def _stat_many(self, fids: list[str]) -> list[dict]:
        out = []
        for fid in fids:
            try:
                info = read_info(self.path_of(fid), fid)
            except (FragmentNotFound, FragmentCorrupt) as e:
                out.append({"fid": fid, "error": e.code})
                continue
            out.append({"fid": fid, "block_bytes": info.block_bytes, "nblocks": info.nblocks,
                        "last_len": info.last_len, "size_bytes": info.size_bytes,
                        "complete": info.complete})
        return out

    def list_fragments(self, after: str = "", limit: int = 1000) -> tuple[list[list], str | None]:
        """Committed fragments in on-disk order after the cursor ``after`` (blocking).

        Returns ``([[fid, size_bytes, mtime], ...], next_cursor)``; ``next_cursor`` is None at
        the end. The cursor is the fragment's path under ``frags/``, so a page resumes without
        walking what came before it.
        """
        out: list[list] = []
        last = ""
        cursor = after.split("/") if after else []
        for top in _sorted_dirs(self.frags_dir):
            if cursor and top < cursor[0]:
                continue
            for sub in _sorted_dirs(self.frags_dir / top):
                if cursor and (top, sub) < (cursor[0], cursor[1]):
                    continue
                d = self.frags_dir / top / sub
                try:
                    names = sorted(os.listdir(d))
                except FileNotFoundError:
                    continue
                for name in names:
                    rel = f"{top}/{sub}/{name}"
                    if after and rel <= after:
                        continue
                    try:
                        st = os.stat(d / name)
                    except FileNotFoundError:
                        continue
                    out.append([name, st.st_size, st.st_mtime])
                    last = rel
                    if len(out) >= limit:
                        return out, last
        return out, None

    def quarantine(self, fid: str, inode: tuple[int, int] | None = None) -> bool:
        """Move a corrupt fragment to ``quarantine/`` so it is never served and reads as missing.

        ``inode`` is the (st_dev, st_ino) that was found corrupt: if the path now names another
        file (a rebuild committed meanwhile), or a commit of this fid is under way, nothing moves.
        Blocking; returns whether the file was moved.
        """
        path = self.path_of(fid)
        with self._lock:
            if self._committing.get(fid):
                return False
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return False
            if inode is not None and (st.st_dev, st.st_ino) != inode:
                return False
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            dest = self.quarantine_dir / fid
            os.replace(path, dest)
            self._fragments -= 1
            self._used_bytes -= st.st_size
        try:
            # when it was quarantined, for the retention (a rename keeps the old mtime)
            now = self.clock()
            os.utime(dest, (now, now))
        except OSError as e:
            log.warning("storage %s: could not stamp quarantined %s: %s", self.id, fid, e,
                        extra={"event": "quarantine.stamp_failed", "fid": fid, "error": str(e)})
        self._count_quarantine()
        try:
            fsync_dir(path.parent)
            fsync_dir(self.quarantine_dir)
        except OSError as e:
            log.warning("storage %s: fsync after quarantining %s failed: %s", self.id, fid, e,
                        extra={"event": "fsync.failed", "fid": fid, "error": str(e)})
        self.counters["quarantined"] += 1
        log.warning("storage %s: quarantined corrupt fragment %s", self.id, fid,
                    extra={"event": "fragment.quarantined", "fid": fid,
                           "path": str(self.quarantine_dir / fid)})
        return True

    def _mark_committing(self, fid: str, delta: int) -> None:
        with self._lock:
            n = self._committing.get(fid, 0) + delta
            if n > 0:
                self._committing[fid] = n
            else:
                self._committing.pop(fid, None)

    async def delete(self, fid: str, if_mtime: float | None = None) -> bool:
        """Remove a committed fragment. With ``if_mtime`` (the mtime ``frag.list`` gave), only
        that file: not one committed over it since (the same fid written again, say a fragment
        moved back onto this node), nor while a commit of the fid is under way."""
        check_fid(fid)
        return await anyio.to_thread.run_sync(self._delete, fid, if_mtime)

    def _delete(self, fid: str, if_mtime: float | None = None) -> bool:
        path = self.path_of(fid)
        with self._lock:
            if if_mtime is not None and self._committing.get(fid):
                return False
            try:
                st = os.stat(path)
                if if_mtime is not None and st.st_mtime != if_mtime:
                    return False
                os.unlink(path)
            except FileNotFoundError:
                return False
            self._fragments -= 1
            self._used_bytes -= st.st_size
        self.counters["deletes"] += 1
        return True

    async def info(self) -> dict:
        return await anyio.to_thread.run_sync(self.stats)

    def disk_usage(self) -> tuple[int, int]:
        """(free_bytes, total_bytes) of the data directory's filesystem."""
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and node.info (blocking: it asks the filesystem for free space)."""
        try:
            free, total = self.disk_usage()
        except OSError:
            free = total = 0
        scrub = self.scrubber.stats() if self.scrubber is not None else {}
        return {"id": self.id, "free_bytes": free, "total_bytes": total,
                "fragments": self._fragments, "used_bytes": self._used_bytes,
                "quarantine_files": self._quarantine_files, "quarantine_bytes": self._quarantine_bytes,
                "uploads_open": len(self._uploads), **self.counters, **scrub}

    # --- garbage ---------------------------------------------------------------------------------

    def collect_garbage(self, now: float | None = None) -> list[str]:
        """Remove temp files untouched for ``tmp_max_age_s`` (blocking). Returns their fids."""
        now = self.clock() if now is None else now
        cutoff = now - self.tmp_max_age_s
        removed = []
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return removed
        for name in names:
            up = self._uploads.get(name)
            if up is not None:
                if up.touched >= cutoff or not up.lock.acquire(blocking=False):
                    continue
                try:
                    if self._uploads.get(name) is up:
                        del self._uploads[name]
                    up.writer.abort()
                finally:
                    up.lock.release()
                removed.append(name)
                continue
            path = self.tmp_dir / name
            try:
                if os.stat(path).st_mtime >= cutoff:
                    continue
                if name in self._uploads:  # an upload started meanwhile
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(name)
        if removed:
            self.counters["tmp_collected"] += len(removed)
            log.info("storage %s: removed %d stale temp files", self.id, len(removed),
                     extra={"event": "tmp.collected", "files": len(removed)})
        return removed

    def prune_quarantine(self, now: float | None = None) -> list[str]:
        """Remove quarantined fragments kept ``quarantine_retention_s`` or longer (blocking;
        nothing when the retention is 0). A fragment's age counts from when it was quarantined:
        its mtime, stamped then on this node's clock. (One quarantined by a version that did not
        stamp it counts from when it was written.) Returns their names."""
        if not self.quarantine_retention_s:
            return []
        now = self.clock() if now is None else now
        cutoff = now - self.quarantine_retention_s
        removed: list[str] = []
        freed = 0
        try:
            entries = list(os.scandir(self.quarantine_dir))
        except FileNotFoundError:
            return removed
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                if st.st_mtime > cutoff:
                    continue
                os.unlink(e.path)
            except FileNotFoundError:
                continue
            removed.append(e.name)
            freed += st.st_size
        if removed:
            self.counters["quarantine_pruned"] += len(removed)
            self.counters["quarantine_pruned_bytes"] += freed
            self._count_quarantine()
            log.info("storage %s: removed %d quarantined fragments kept %.0fs", self.id, len(removed),
                     self.quarantine_retention_s,
                     extra={"event": "quarantine.pruned", "files": len(removed), "bytes": freed})
        return removed

    async def run_gc_forever(self, interval_s: float = GC_INTERVAL_S, *, clock: Clock = SYSTEM_CLOCK) -> None:
        """Every ``interval_s`` on ``clock``: stale temp files, then quarantined fragments past
        their retention."""
        while True:
            await clock.sleep(interval_s)
            try:
                await anyio.to_thread.run_sync(self.collect_garbage)
            except OSError as e:
                log.warning("storage %s: temp-file collection failed: %s", self.id, e,
                            extra={"event": "tmp.collect_failed", "error": str(e)})
            try:
                await anyio.to_thread.run_sync(self.prune_quarantine)
            except OSError as e:
                log.warning("storage %s: quarantine pruning failed: %s", self.id, e,
                            extra={"event": "quarantine.prune_failed", "error": str(e)})

    # --- RPC -----------------------------------------------------------------------------------

    def rpc_server(self, secret: ClusterSecret) -> RpcServer:
        srv = RpcServer(f"storage:{self.id}", secret=secret)
        srv.add("frag.append", self._rpc_append)
        srv.add("frag.commit", self._rpc_commit)
        srv.add("frag.abort", self._rpc_abort)
        srv.add("frag.read", self._rpc_read, at_once=self._read_at_once)
        srv.add("frag.suspect", self._rpc_suspect)
        srv.add("frag.stat", self._rpc_stat)
        srv.add("frag.delete", self._rpc_delete)
        srv.add("frag.stat_many", self._rpc_stat_many)
        srv.add("frag.list", self._rpc_list)
        srv.add("node.info", self._rpc_info)
        srv.add("node.collect", self._rpc_collect)
        return srv

    async def _rpc_append(self, args: dict, payload: bytes) -> Any:
        lengths = args.get("lengths")
        if lengths is None:
            lengths = [len(payload)]
        if (not isinstance(lengths, list) or not all(isinstance(n, int) and n > 0 for n in lengths)
                or sum(lengths) != len(payload)):
            raise BadRequest("lengths must be positive block sizes adding up to the payload")
        mv = memoryview(payload)
        blocks, pos = [], 0
        for n in lengths:
            blocks.append(mv[pos:pos + n])
            pos += n
        block_bytes = args.get("block_bytes")
        if not isinstance(block_bytes, int):
            raise BadRequest("block_bytes is required")
        meta = args.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise BadRequest("meta must be a map")
        written = await self.append(args.get("fid"), args.get("index"), blocks,
                                    block_bytes=block_bytes, meta=meta)
        return {"written": written}

    async def _rpc_commit(self, args: dict, payload: bytes) -> Any:
        nblocks = args.get("nblocks")
        if not isinstance(nblocks, int) or nblocks < 0:
            raise BadRequest("nblocks must be a non-negative integer")
        return {"size_bytes": await self.commit(args.get("fid"), nblocks)}

    async def _rpc_abort(self, args: dict, payload: bytes) -> Any:
        return {"aborted": await self.abort(args.get("fid"))}

    def _read_at_once(self, args: dict, payload: bytes) -> Any:
        """A read of page-cached blocks answered in the connection's reader: no task, cancel
        scope or in-flight slot for it (most of what the node spent per read RPC in Python
        besides the copies). Anything that would wait or fail goes to :meth:`_rpc_read`."""
        if args.get("pending") is not None:
            return LATER
        if args.get("prefixed") is True:
            reply = self._prefixed_read_now(args.get("fid"), args.get("first", 0), args.get("count", 1))
            if reply is not None:
                return reply
        got = self.read_now_open(args.get("fid"), args.get("first", 0), args.get("count", 1))
        if got is None:
            return LATER
        blocks, fd, offset = got
        return _read_reply_from_file(blocks, fd, offset)

    def _prefixed_read_now(self, fid: object, first: object, count: object) -> Reply | None:
        """A ``prefixed`` read's reply sent from the file unread (see the module docstring), or
        None where the range is not wholly page-cached, not committed, malformed or small."""
        if not _well_formed_read(fid, first, count):
            return None
        got = cached_range_open(self.path_of(fid), fid, first, count)  # type: ignore[arg-type]
        if got is None:
            return None
        fd, offset, size, lengths = got
        if size < SENDFILE_MIN_BYTES:
            os.close(fd)
            return None
        self.counters["cached_reads"] += 1
        self.counters["prefixed_reads"] += 1
        self.counters["blocks_read"] += len(lengths)
        self.counters["bytes_read"] += sum(lengths)
        return Reply({"lengths": lengths, "stride": BLOCK_PREFIX + lengths[0], "prefixed": True},
                     FileRange(fd, offset, size))

    async def _rpc_suspect(self, args: dict, payload: bytes) -> Any:
        """A reader found a block of ``fid`` corrupt in a prefixed read: counted and logged as a
        corrupt read here, and the fragment handed to the scrubber (which verifies it whole
        before it quarantines anything: a false report costs one scan)."""
        fid = check_fid(args.get("fid"))
        self.counters["corrupt_reads"] += 1
        log.warning("storage %s: a reader found block %s of %s corrupt", self.id, args.get("block"), fid,
                    extra={"event": "fragment.corrupt_read", "fid": fid, "error": "reported by the reader"})
        if self.scrubber is not None:
            self.scrubber.suspect(fid)
        return {}

    async def _rpc_read(self, args: dict, payload: bytes) -> Reply:
        blocks = await self.read(args.get("fid"), args.get("first", 0), args.get("count", 1),
                                 pending=args.get("pending") is True)
        return _read_reply(blocks)

    async def _rpc_stat(self, args: dict, payload: bytes) -> Any:
        return await self.stat(args.get("fid"))

    async def _rpc_delete(self, args: dict, payload: bytes) -> Any:
        if_mtime = args.get("if_mtime")
        if if_mtime is not None and (isinstance(if_mtime, bool) or not isinstance(if_mtime, (int, float))):
            raise BadRequest("if_mtime must be a number")
        return {"deleted": await self.delete(args.get("fid"), if_mtime)}

    async def _rpc_info(self, args: dict, payload: bytes) -> Any:
        return await self.info()

    async def _rpc_stat_many(self, args: dict, payload: bytes) -> Any:
        fids = args.get("fids")
        if not isinstance(fids, list) or len(fids) > MAX_STAT_FIDS:
            raise BadRequest(f"fids must be a list of at most {MAX_STAT_FIDS} fragment ids")
        return {"stats": await self.stat_many(fids)}

    async def _rpc_list(self, args: dict, payload: bytes) -> Any:
        after = args.get("after") or ""
        limit = args.get("limit", 1000)
        if not isinstance(after, str) or len(after) > 300 or ".." in after:
            raise BadRequest("after must be a cursor from an earlier frag.list")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_ENTRIES:
            raise BadRequest(f"limit must be between 1 and {MAX_LIST_ENTRIES}")
        entries, nxt = await anyio.to_thread.run_sync(self.list_fragments, after, limit)
        return {"entries": entries, "next": nxt}

    async def _rpc_collect(self, args: dict, payload: bytes) -> Any:
        return {"removed": len(await anyio.to_thread.run_sync(self.collect_garbage))}


def _read_reply(blocks: list[memoryview]) -> Reply:
    """A frag.read reply: the blocks' lengths, and their bytes as one payload."""
    lengths = [len(b) for b in blocks]
    if len(blocks) <= 1:
        return Reply({"lengths": lengths}, blocks[0] if blocks else b"")
    # read_blocks leaves block j at j * stride + BLOCK_PREFIX in one buffer (every block but
    # the last is full): send that buffer from the first block's data on, the later blocks'
    # prefixes included, and let the client slice. No copy on the node.
    stride = BLOCK_PREFIX + lengths[0]
    end = (len(blocks) - 1) * stride + BLOCK_PREFIX + lengths[-1]
    whole = memoryview(blocks[0].obj)[BLOCK_PREFIX:end]
    return Reply({"lengths": lengths, "stride": stride}, whole)


def _read_reply_from_file(blocks: list[memoryview], fd: int, offset: int) -> Reply:
    """:func:`_read_reply` for blocks just read and verified from the page cache of the file
    ``fd`` (block 0's prefix at ``offset``): the same payload, sent from the file by sendfile
    (a :class:`FileRange` that owns ``fd``), so the bytes go from the page cache to the socket
    without the copy into a socket buffer (on the Unix socket the gateway then copies them
    straight from the page cache). What goes out is the pages just verified: a committed
    fragment is never written in place (a rebuild or quarantine renames; the open file keeps
    its inode). Small payloads are sent from memory (``fd`` closed here)."""
    reply = _read_reply(blocks)
    size = len(reply.payload)
    if size < SENDFILE_MIN_BYTES:
        os.close(fd)
        return reply
    return Reply(reply.result, FileRange(fd, offset + BLOCK_PREFIX, size))


def _sorted_dirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir())
    except FileNotFoundError:
        return []


async def run_storage_node(cluster: ClusterConfig, node: StorageNodeConfig, *,
                           task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
                           port: int | None = None, clock: Callable[[], float] = time.time) -> None:
    """Run one storage node until cancelled. ``task_status.started(StorageNode)`` once listening
    (``node.rpc_port`` holds the bound port; pass ``port=0`` in tests for an ephemeral one)."""
    secret = cluster_secret(cluster)
    # Every received block is a fresh 1 MiB buffer: reuse freed ones rather than fault pages in.
    keep_freed_memory()
    sn = StorageNode(node.id, node.data_dir, clock=clock,
                     quarantine_retention_s=cluster.objstore.quarantine_retention_s,
                     page_cache=cluster.objstore.storage_page_cache)
    await anyio.to_thread.run_sync(sn.prepare)
    srv = sn.rpc_server(secret)
    sn.scrubber = Scrubber(sn, rate_bytes_s=cluster.objstore.scrub_rate_bytes,
                           interval_s=cluster.objstore.scrub_interval_s)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(srv.serve, node.host, node.port if port is None else port)
        sn.rpc_port, sn.rpc = bound, srv
        if cluster.objstore.storage_unix_sockets:
            sock_path = rpc_socket_path(node.data_dir, bound)
            try:
                await tg.start(srv.serve_unix, sock_path)
            except OSError as e:  # a path too long for a socket address, say: TCP serves alone
                log.warning("storage node %s: no Unix socket at %s: %s", node.id, sock_path, e,
                            extra={"event": "storage.no_unix_socket", "path": str(sock_path), "error": str(e)})
        tg.start_soon(sn.run_gc_forever)
        tg.start_soon(sn.scrubber.run_forever)
        registry = Registry()
        add_process_metrics(registry)
        export_stats(registry, "headwater_storage", sn.stats)

        async def health() -> dict[str, Any]:
            st = sn.stats()
            return {"status": "ok", "role": "storage", "id": node.id, "rpc_port": bound,
                    "free_bytes": st.get("free_bytes"), "used_bytes": st.get("used_bytes"),
                    "total_bytes": st.get("total_bytes"), "fragments": st.get("fragments"),
                    "quarantined": st.get("quarantined"), "quarantine_files": st.get("quarantine_files"),
                    "quarantine_pruned": st.get("quarantine_pruned"), "scrub_enabled": bool(st.get("scrub_enabled")),
                    "scrub_last_pass_end": st.get("scrub_last_pass_end") or None,
                    "scrub_pass_progress": st.get("scrub_pass_progress")}

        if port is None:
            await tg.start(lambda task_status: serve_admin(host=node.host, port=node.admin_port, health=health,
                                                           registry=registry, task_status=task_status))
        log.info("storage node %s serving %s on %s:%d", node.id, node.data_dir, node.host, bound,
                 extra={"event": "storage.serving", "data_dir": str(node.data_dir), "address": f"{node.host}:{bound}",
                        "fragments": sn.fragment_count})
        task_status.started(sn)
