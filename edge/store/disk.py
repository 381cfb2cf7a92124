"""The disk tier: one cache directory shared by a POP's worker processes.

Layout of ``cache_dir``::

    index/          LMDB environment (every worker opens it; LMDB serialises writers across
                    processes and gives readers consistent snapshots without locks)
    bodies/xx/NAME  body files (``xx`` = the name's first two hex digits); ``NAME.part`` while
                    being written, renamed on commit
    evictor.lock    flock held by the one worker that runs the eviction policy

The index's sub-databases:

- ``entries``: key -> msgpack ``[1, name, size, stored_at, xxh3_128(body), block_bytes,
  block sums (xxh3_64 per block, concatenated), meta, seq]``: committed, servable entries.
- ``filling``: key -> msgpack ``[pid, lease_until, token, name, meta | None, started]``: the
  in-flight marker. ``claim`` writes it (meta None: "I am fetching"), ``begin`` adds the meta and
  creates ``NAME.part``; ``commit`` replaces it with the ``entries`` record. A marker whose lease
  ran out or whose process is gone is dead: anyone may remove it (and its file).
- ``byseq``: commit sequence number -> key (commit order: the oldest committed entries first).
- ``journal``: sequence number -> ``[op, key, size]`` with op commit / hit / remove: what every
  worker did, in one total order, for the evictor.
- ``state``: ``seq`` (the last sequence number), ``used`` (bytes of committed bodies),
  ``overflow`` (the journal was full and records were dropped).

Eviction, and why this way: the policies (``policy.py``) are in-memory objects, and their
decisions are only consistent if one object sees every admission and hit in one order. So one
worker, the evictor (whoever holds ``evictor.lock``; the kernel releases a flock when its holder
dies and the next worker's ``run_once`` takes it over), runs the policy. Every worker appends
what it does to the journal: commits and removals inside their own write transaction, hits
batched (``hit_flush_count`` or ``hit_flush_interval_s``, one write transaction per batch, so a
hit costs a list append). The evictor's ``run_once`` replays the journal into its policy in order
and deletes the victims' entries under the same write transaction, then unlinks their files.
A new evictor rebuilds its policy from the index (entries admitted in commit order: the queues
come back, the access bits do not). The policy aims at ``capacity * (1 - headroom)``; the hard
bound ``capacity_bytes`` is checked by every commit in its own transaction, which, if the
evictor lags, evicts the oldest committed entries first (``byseq``) and journals the removals,
so the bound holds at every commit whatever the evictor does.

Checksums: every hit is verified. A body of at most one block (``block_bytes``) is read and
checked against the whole-body xxh3_128 before ``get`` returns (``Hit.data``). Larger bodies are
verified per block as they are streamed (``chunks``), or all blocks before the fd is handed over
for sendfile (``file_body``). A bad block drops the entry (and its file) and counts
``corrupt_dropped``; a file that is missing or has the wrong size is dropped at ``get``.

Entries being written: ``get`` of a key whose fill has begun returns a growing hit
(``complete`` False): its ``chunks`` read the ``.part`` file (the same inode after the rename) as it
grows, sleeping with a bounded backoff (1 ms doubling to 50 ms) when it has caught up, until the
writer commits (the stream is checked against the committed checksum before its last piece is
yielded) or aborts or dies (``EntryAborted``). A stream that sees no progress for
``follow_stall_s`` gives up.

Restart: the index is persistent. ``recover()`` (run when a store opens) drops dead fills and
their files, entries whose file is missing or has the wrong size, and files no record names.
LMDB runs with ``sync=False``: a process crash loses nothing, a machine crash may lose the last
commits; a body that does not match its record is caught by its checksum.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import lmdb
import msgpack
import xxhash

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.edge.store.api import (
    AlreadyFilling,
    EntryAborted,
    EntryCorrupt,
    EntryInfo,
    KeyPredicate,
    StoreStats,
)
from headwater.edge.store.policy import DEFAULT_POLICY, EvictionPolicy, make_policy
from headwater.http.types import FileBody

__all__ = ["DiskSettings", "DiskStore", "DiskHit", "DiskWriter", "DiskClaim"]

log = logging.getLogger("headwater.edge")

MiB = 1024 * 1024
GiB = 1024 * MiB

_OP_COMMIT, _OP_HIT, _OP_REMOVE = 0, 1, 2
_SEQ, _USED, _OVERFLOW = b"seq", b"used", b"overflow"
# entries record fields
_E_NAME, _E_SIZE, _E_STORED, _E_SUM, _E_BLOCK, _E_BLOCKSUMS, _E_META, _E_SEQ = range(1, 9)
# filling record fields
_F_PID, _F_LEASE, _F_TOKEN, _F_NAME, _F_META, _F_STARTED = range(6)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSettings:
    """How a disk tier is run. The edge's config reader builds it from ``[[edge]]``."""

    cache_dir: Path
    capacity_bytes: int
    policy: str = DEFAULT_POLICY
    max_entry_bytes: int | None = None  # default capacity // 16 (below S3-FIFO's small queue)
    block_bytes: int = 1 * MiB  # checksum block; bodies up to one block are verified whole
    headroom: float = 0.05  # the evictor keeps the tier this far below capacity
    lease_s: float = 10.0  # an in-flight marker not renewed for this long is dead
    follow_stall_s: float = 30.0  # a follower gives up after this long without progress
    hit_flush_count: int = 256
    hit_flush_interval_s: float = 0.2
    journal_max: int = 1_000_000  # records; beyond, records are dropped and the evictor rebuilds
    map_bytes: int = 4 * GiB  # LMDB map size (address space, not disk: the file grows as used)

    def entry_limit(self) -> int:
        return self.capacity_bytes // 16 if self.max_entry_bytes is None else self.max_entry_bytes


# What an entry costs besides its body: its file (at least one filesystem block and an inode) and
# its index records. Charged for the body alone, empty bodies (404s, 204s) under distinct keys
# cost nothing, and a client requesting random paths filled the disk with files and the index.
ENTRY_OVERHEAD_BYTES = 4096


def charged(key: bytes, size: int) -> int:
    """The bytes an entry of ``size`` body bytes under ``key`` is charged against the capacity."""
    return size + len(key) + ENTRY_OVERHEAD_BYTES


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> list:
    return msgpack.unpackb(data, raw=False)


def _seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_REPLACED: DiskHit = object()  # type: ignore[assignment]  # _open_complete: "look again"


@dataclass(slots=True)
class _Counters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corrupt_dropped: int = 0
    commits: int = 0
    aborts: int = 0
    declined: int = 0
    followed: int = 0


@dataclass(slots=True)
class _Evictor:
    lock_fd: int
    policy: EvictionPolicy


class DiskStore:
    """The disk tier (``Store``), one instance per worker process on a shared ``cache_dir``."""

    def __init__(
        self,
        settings: DiskSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        recover: bool = True,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._dir = Path(settings.cache_dir)
        self._bodies = self._dir / "bodies"
        self._bodies.mkdir(parents=True, exist_ok=True)  # its 256 sub-directories as needed
        (self._dir / "index").mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(self._dir / "index"),
            map_size=settings.map_bytes,
            max_dbs=8,
            sync=False,
            metasync=False,
            readahead=False,
            max_readers=512,
        )
        self._entries = self._env.open_db(b"entries")
        self._filling = self._env.open_db(b"filling")
        self._byseq = self._env.open_db(b"byseq")
        self._journal = self._env.open_db(b"journal")
        self._state = self._env.open_db(b"state")
        self._pending_hits: list[bytes] = []
        self._last_flush = clock.monotonic()
        self._evictor: _Evictor | None = None
        self._victims: list[bytes] = []  # the evictor's policy's choices, deleted per pass
        self._verify_buf = bytearray()  # file_body's block buffer, reused (one process, one loop)
        self._n = _Counters()
        self._closed = False
        if recover:
            self.recover()

    # -- paths and small helpers ---------------------------------------------------------------

    def _path(self, name: str, part: bool = False) -> str:
        return f"{self._bodies}/{name[:2]}/{name}{'.part' if part else ''}"

    def _new_name(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _unlink(self, name: str) -> None:
        for part in (False, True):
            try:
                os.unlink(self._path(name, part))
            except FileNotFoundError:
                pass

    @staticmethod
    def _int(txn: lmdb.Transaction, db: object, key: bytes) -> int:
        v = txn.get(key, db=db)
        return 0 if v is None else int.from_bytes(v, "big", signed=True)

    @staticmethod
    def _set_int(txn: lmdb.Transaction, db: object, key: bytes, value: int) -> None:
        txn.put(key, value.to_bytes(8, "big", signed=True), db=db)

    def _next_seq(self, txn: lmdb.Transaction) -> int:
        seq = self._int(txn, self._state, _SEQ) + 1
        self._set_int(txn, self._state, _SEQ, seq)
        return seq

    def _journal_append(self, txn: lmdb.Transaction, op: int, key: bytes, size: int) -> None:
        if txn.stat(self._journal)["entries"] >= self.settings.journal_max:
            self._set_int(txn, self._state, _OVERFLOW, 1)
            return
        txn.put(_seq_key(self._next_seq(txn)), _pack([op, key, size]), db=self._journal)

    def _fill_alive(self, rec: list) -> bool:
        return rec[_F_LEASE] > self._clock.time() and _pid_alive(rec[_F_PID])

    def _drop_entry_txn(self, txn: lmdb.Transaction, key: bytes, rec: list, journal: bool) -> None:
        """Delete a committed entry inside ``txn`` (its file is the caller's to unlink after)."""
        txn.delete(key, db=self._entries)
        txn.delete(_seq_key(rec[_E_SEQ]), db=self._byseq)
        cost = charged(key, rec[_E_SIZE])
        self._set_int(txn, self._state, _USED, self._int(txn, self._state, _USED) - cost)
        if journal:
            self._journal_append(txn, _OP_REMOVE, key, cost)

    def _drop_if_same(self, key: bytes, name: str, why: str) -> bool:
        """Drop ``key``'s entry if it is still the one stored in ``name`` (corrupt or missing:
        ``why``, logged); False if it is gone or another version by now."""
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._entries)
            if raw is None:
                return False
            rec = _unpack(raw)
            if rec[_E_NAME] != name:
                return False
            self._drop_entry_txn(txn, key, rec, journal=True)
        self._unlink(name)
        self._n.corrupt_dropped += 1
        # A disk going bad shows here first: say which entry, and why, each time.
        log.warning("disk tier %s: entry %r dropped: %s", self.settings.cache_dir, key, why,
                    extra={"event": "edge.corrupt_dropped", "key": key.decode("utf-8", "replace"), "why": why})
        return True

    # -- reading -------------------------------------------------------------------------------

    def _verify_buffer(self, size: int) -> bytearray:
        buf = self._verify_buf
        if len(buf) < size:
            buf = self._verify_buf = bytearray(size)
        return buf

    def get(self, key: bytes) -> DiskHit | None:
        """A verified hit, a growing hit (``complete`` False), or None (miss)."""
        hit = self._lookup(key)
        if hit is None:
            self._n.misses += 1
            self._maybe_flush()
        elif hit.complete:
            self._n.hits += 1
            self._note_hit(key)
        else:
            self._n.followed += 1
        return hit

    def _lookup(self, key: bytes) -> DiskHit | None:
        for _ in range(2):  # a second look if the file changed between snapshot and open
            with self._env.begin() as txn:
                raw = txn.get(key, db=self._entries)
                fraw = None if raw is not None else txn.get(key, db=self._filling)
            if raw is not None:
                hit = self._open_complete(key, _unpack(raw))
                if hit is _REPLACED:
                    continue
                return hit
            if fraw is None:
                break
            frec = _unpack(fraw)
            if frec[_F_META] is None or not self._fill_alive(frec):
                break
            try:
                fd = os.open(self._path(frec[_F_NAME], part=True), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # committed (renamed) or aborted meanwhile: look again
            info = EntryInfo(
                key=key, meta=frec[_F_META], size=os.fstat(fd).st_size,
                stored_at=frec[_F_STARTED], complete=False,
            )
            return DiskHit(self, info, fd, frec[_F_NAME], None)
        return None

    def _open_complete(self, key: bytes, rec: list) -> DiskHit | None:
        """The hit for a committed record, verified if small; None if it failed (dropped)."""
        name, size = rec[_E_NAME], rec[_E_SIZE]
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # Lost, or replaced by a newer commit (whose file is another): look again then.
            return _REPLACED if not self._drop_if_same(key, name, "file missing") else None
        ok = False
        try:
            if os.fstat(fd).st_size != size:
                self._drop_if_same(key, name, "file size differs from the record")
                return None
            info = EntryInfo(
                key=key, meta=rec[_E_META], size=size, stored_at=rec[_E_STORED], complete=True
            )
            if size <= rec[_E_BLOCK]:
                data = os.pread(fd, size, 0)
                if len(data) != size or xxhash.xxh3_128_digest(data) != rec[_E_SUM]:
                    self._drop_if_same(key, name, "body failed its checksum")
                    return None
                return DiskHit(self, info, None, name, None, data=data)
            ok = True
            return DiskHit(self, info, fd, name, rec)
        finally:
            if not ok:
                os.close(fd)

    def _note_hit(self, key: bytes) -> None:
        self._pending_hits.append(key)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        s = self.settings
        if self._pending_hits and (
            len(self._pending_hits) >= s.hit_flush_count
            or self._clock.monotonic() - self._last_flush >= s.hit_flush_interval_s
        ):
            self.flush_hits()

    def flush_hits(self) -> None:
        """Journal the hits seen since the last flush, in one write transaction."""
        hits, self._pending_hits = self._pending_hits, []
        self._last_flush = self._clock.monotonic()
        if not hits:
            return
        with self._env.begin(write=True) as txn:
            room = self.settings.journal_max - txn.stat(self._journal)["entries"]
            if room < len(hits):
                self._set_int(txn, self._state, _OVERFLOW, 1)
                hits = hits[: max(0, room)]
            seq = self._int(txn, self._state, _SEQ)
            put, journal = txn.put, self._journal
            for key in hits:
                seq += 1
                put(_seq_key(seq), _pack([_OP_HIT, key, 0]), db=journal)
            self._set_int(txn, self._state, _SEQ, seq)

    # -- the in-flight marker and waiting for it --------------------------------------------------

    def claim(self, key: bytes) -> DiskClaim | None:
        """Become the fetcher of ``key`` (None: a live fetcher exists, ``wait_filling`` for it)."""
        token = self._rng.getrandbits(64)
        name = self._new_name()
        now = self._clock.time()
        dead_name = None
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._filling)
            if raw is not None:
                rec = _unpack(raw)
                if self._fill_alive(rec):
                    return None
                dead_name = rec[_F_NAME]
            rec = [os.getpid(), now + self.settings.lease_s, token, name, None, now]
            txn.put(key, _pack(rec), db=self._filling)
        if dead_name is not None:
            self._unlink(dead_name)
        return DiskClaim(self, key, token, name)

    async def wait_filling(self, key: bytes, timeout: float) -> DiskHit | None:
        """Wait for the fetcher of ``key``: its hit (growing or committed), or None when there is
        no live fetcher any more (claim again) or ``timeout`` seconds passed."""
        deadline = self._clock.monotonic() + timeout
        delay = 0.001
        while True:
            hit = self._lookup(key)
            if hit is not None:
                if hit.complete:
                    self._n.hits += 1
                    self._note_hit(key)
                else:
                    self._n.followed += 1
                return hit
            with self._env.begin() as txn:
                raw = txn.get(key, db=self._filling)
            if raw is None or not self._fill_alive(_unpack(raw)):
                return None
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return None
            await self._clock.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    # -- writing -------------------------------------------------------------------------------

    def begin(self, key: bytes, meta: bytes, *, claim: DiskClaim | None = None) -> DiskWriter:
        """A writer for ``key``; followers see the entry (and ``meta``) from now on."""
        if claim is None:
            claim = self.claim(key)
            if claim is None:
                raise AlreadyFilling(f"another process is filling {key!r}")
        # The claim's record names the file before the file exists (a recovery scan never takes
        # a live writer's file for an orphan); the file exists before followers are told of it.
        writer = DiskWriter(self, key, claim)
        now = self._clock.time()
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._filling)
            rec = None if raw is None else _unpack(raw)
            lost = rec is None or rec[_F_TOKEN] != claim.token
            if not lost:
                rec[_F_META] = meta
                rec[_F_LEASE] = now + self.settings.lease_s
                txn.put(key, _pack(rec), db=self._filling)
        if lost:
            # The marker was taken over (our lease ran out) or purged: this writer writes nothing.
            writer._drop("aborted")
        return writer

    def update_meta(self, key: bytes, meta: bytes) -> bool:
        """Replace a committed entry's metadata (after a 304); False if absent."""
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._entries)
            if raw is None:
                return False
            rec = _unpack(raw)
            rec[_E_META] = meta
            txn.put(key, _pack(rec), db=self._entries)
        return True

    def remove(self, key: bytes) -> bool:
        """Drop ``key``'s entry, and any fill in flight for it (its commit will fail: what was
        being fetched when a purge came must not be served). True if an entry was stored."""
        names = []
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._entries)
            if raw is not None:
                rec = _unpack(raw)
                self._drop_entry_txn(txn, key, rec, journal=True)
                names.append(rec[_E_NAME])
            fraw = txn.get(key, db=self._filling)
            if fraw is not None:
                txn.delete(key, db=self._filling)
                names.append(_unpack(fraw)[_F_NAME])
        for name in names:
            self._unlink(name)
        return raw is not None

    def keys_matching(self, pred: KeyPredicate) -> list[bytes]:
        """Committed keys whose ``pred(key, meta)`` is true (for purges)."""
        out = []
        with self._env.begin() as txn:
            for key, raw in txn.cursor(db=self._entries):
                if pred(bytes(key), _unpack(raw)[_E_META]):
                    out.append(bytes(key))
        return out

    def stats(self) -> StoreStats:
        """The tier's entries and bytes (shared), this process's counters."""
        with self._env.begin() as txn:
            entries = txn.stat(self._entries)["entries"]
            used = self._int(txn, self._state, _USED)
        n = self._n
        return StoreStats(
            entries=entries, bytes=used, capacity_bytes=self.settings.capacity_bytes,
            hits=n.hits, misses=n.misses, evictions=n.evictions,
            corrupt_dropped=n.corrupt_dropped, commits=n.commits, aborts=n.aborts,
            declined=n.declined, followed=n.followed,
        )

    # -- eviction ------------------------------------------------------------------------------

    @property
    def is_evictor(self) -> bool:
        """Whether this process runs the eviction policy now."""
        return self._evictor is not None

    def run_once(self) -> int:
        """Background work, every ~0.1-0.5 s: journal pending hits; take over as evictor if
        nobody is; as evictor, replay the journal and evict. Returns the entries evicted."""
        self.flush_hits()
        if self._evictor is None and not self._become_evictor():
            return 0
        return self._evict_pass()

    def _become_evictor(self) -> bool:
        fd = os.open(self._dir / "evictor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._evictor = _Evictor(fd, self._new_policy())
        with self._env.begin(write=True) as txn:
            self._rebuild(txn)
        return True

    def _new_policy(self) -> EvictionPolicy:
        s = self.settings
        target = int(s.capacity_bytes * (1.0 - s.headroom))
        return make_policy(s.policy, target, lambda key, size: self._victims.append(key))

    def _rebuild(self, txn: lmdb.Transaction) -> None:
        """A fresh policy from the index (commit order), the journal emptied (all in the index)."""
        ev = self._evictor
        assert ev is not None
        ev.policy = self._new_policy()
        self._victims.clear()
        for _, key in txn.cursor(db=self._byseq):
            raw = txn.get(key, db=self._entries)
            if raw is not None:
                ev.policy.admit(bytes(key), charged(bytes(key), _unpack(raw)[_E_SIZE]))
        txn.drop(self._journal, delete=False)
        self._set_int(txn, self._state, _OVERFLOW, 0)

    def _evict_pass(self) -> int:
        ev = self._evictor
        assert ev is not None
        unlink: list[str] = []
        with self._env.begin(write=True) as txn:
            if self._int(txn, self._state, _OVERFLOW):
                self._rebuild(txn)
            else:
                cur = txn.cursor(db=self._journal)
                refused: list[bytes] = []
                for _, raw in cur.iternext():
                    op, key, size = _unpack(raw)
                    if op == _OP_HIT:
                        ev.policy.touch(key)
                    elif op == _OP_COMMIT:
                        if not ev.policy.admit(key, size):
                            refused.append(key)  # too large for the policy: not kept
                    else:
                        ev.policy.remove(key)
                txn.drop(self._journal, delete=False)
                self._victims.extend(refused)
            for key in self._victims:
                if key in ev.policy:
                    continue  # evicted, then committed again later in the journal: kept
                raw = txn.get(key, db=self._entries)
                if raw is None:
                    continue
                rec = _unpack(raw)
                self._drop_entry_txn(txn, key, rec, journal=False)
                unlink.append(rec[_E_NAME])
            self._victims.clear()
        for name in unlink:
            self._unlink(name)
        self._n.evictions += len(unlink)
        return len(unlink)

    # -- recovery ------------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Drop dead fills, entries without a sound file, and files no record names. Safe while
        other workers run (their live fills are kept). Returns what was removed, by kind."""
        # Files first, records after: a record is written before its file, so every file listed
        # here that belongs to a live fill or an entry has its record in the later snapshot.
        files: list[tuple[str, str]] = []
        for sub in self._bodies.iterdir():
            if not sub.is_dir():
                continue
            for f in os.listdir(sub):
                files.append((f, f"{sub}/{f}"))
        dead_fills: list[str] = []
        bad_entries: list[str] = []
        known: set[str] = set()
        used = 0
        with self._env.begin(write=True) as txn:
            for key, raw in list(txn.cursor(db=self._filling)):
                rec = _unpack(raw)
                if self._fill_alive(rec):
                    known.add(rec[_F_NAME])
                else:
                    txn.delete(key, db=self._filling)
                    dead_fills.append(rec[_F_NAME])
            for key, raw in list(txn.cursor(db=self._entries)):
                rec = _unpack(raw)
                try:
                    ok = os.stat(self._path(rec[_E_NAME])).st_size == rec[_E_SIZE]
                except FileNotFoundError:
                    ok = False
                if ok:
                    known.add(rec[_E_NAME])
                    used += charged(bytes(key), rec[_E_SIZE])
                else:
                    self._drop_entry_txn(txn, bytes(key), rec, journal=True)
                    bad_entries.append(rec[_E_NAME])
            # Recounted, not trusted: a cache written by an older version charged bodies only.
            self._set_int(txn, self._state, _USED, used)
        orphans = 0
        doomed = set(dead_fills) | set(bad_entries)
        for fname, path in files:
            base = fname.removesuffix(".part")
            if base not in known and base not in doomed:
                try:
                    os.unlink(path)
                    orphans += 1
                except FileNotFoundError:
                    pass
        for name in dead_fills + bad_entries:
            self._unlink(name)
        return {"dead_fills": len(dead_fills), "bad_entries": len(bad_entries), "orphans": orphans}

    def close(self) -> None:
        """Journal pending hits, give up the evictor role, close the index."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush_hits()
        finally:
            if self._evictor is not None:
                os.close(self._evictor.lock_fd)  # releases the flock
                self._evictor = None
            self._env.close()


class DiskClaim:
    """The in-flight marker for ``key`` held by this process (``Claim``)."""

    __slots__ = ("key", "token", "name", "_store", "_held")

    def __init__(self, store: DiskStore, key: bytes, token: int, name: str) -> None:
        self.key = key
        self.token = token
        self.name = name
        self._store = store
        self._held = True

    def renew(self) -> bool:
        """Extend the lease (while waiting long for the upstream's headers); False if lost."""
        s = self._store
        with s._env.begin(write=True) as txn:
            raw = txn.get(self.key, db=s._filling)
            rec = None if raw is None else _unpack(raw)
            if rec is None or rec[_F_TOKEN] != self.token:
                self._held = False
                return False
            rec[_F_LEASE] = s._clock.time() + s.settings.lease_s
            txn.put(self.key, _pack(rec), db=s._filling)
        return True

    def release(self) -> None:
        """Give the marker up (the fetch failed before ``begin``, or the writer is done)."""
        if not self._held:
            return
        self._held = False
        s = self._store
        with s._env.begin(write=True) as txn:
            raw = txn.get(self.key, db=s._filling)
            if raw is not None and _unpack(raw)[_F_TOKEN] == self.token:
                txn.delete(self.key, db=s._filling)
        s._unlink(self.name)


class DiskWriter:
    """Writes ``NAME.part``, hashing as it goes; ``commit`` renames it and indexes it (``Writer``)."""

    __slots__ = (
        "key", "written", "_store", "_claim", "_fd", "_state", "_sum", "_block", "_block_fill",
        "_block_sums", "_renew_at", "_limit",
    )

    def __init__(self, store: DiskStore, key: bytes, claim: DiskClaim) -> None:
        self.key = key
        self.written = 0
        self._store = store
        self._claim = claim
        self._sum = xxhash.xxh3_128()
        self._block = xxhash.xxh3_64()
        self._block_fill = 0
        self._block_sums: list[bytes] = []
        s = store.settings
        self._limit = s.entry_limit()
        self._renew_at = store._clock.time() + s.lease_s / 3
        self._state = "open"
        self._fd = -1
        path = store._path(claim.name, part=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._fd = os.open(path, flags, 0o644)

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            return
        if self.written + len(chunk) > self._limit:
            self._store._n.declined += 1
            self._drop("declined")
            return
        view = memoryview(chunk)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += len(chunk)
        self._sum.update(chunk)
        bb = self._store.settings.block_bytes
        pos = 0
        whole = memoryview(chunk)
        while pos < len(chunk):
            take = min(bb - self._block_fill, len(chunk) - pos)
            self._block.update(whole[pos : pos + take])
            self._block_fill += take
            pos += take
            if self._block_fill == bb:
                self._block_sums.append(self._block.digest())
                self._block.reset()
                self._block_fill = 0
        now = self._store._clock.time()
        if now >= self._renew_at:
            self._renew_at = now + self._store.settings.lease_s / 3
            if not self._claim.renew():
                self._drop("aborted")

    def commit(self) -> bool:
        if self._state != "open":
            return False
        s = self._store
        if self._block_fill or not self._block_sums:
            self._block_sums.append(self._block.digest())
        os.close(self._fd)
        self._fd = -1
        name = self._claim.name
        try:
            os.rename(s._path(name, part=True), s._path(name))
        except FileNotFoundError:
            # Purged or taken over meanwhile (the remover unlinked the file): not ours to store.
            self._store._n.aborts += 1
            self._drop("aborted")
            return False
        rec = [
            1, name, self.written, s._clock.time(), self._sum.digest(), s.settings.block_bytes,
            b"".join(self._block_sums), None, 0,
        ]
        unlink: list[str] = []
        if s._evictor is not None:
            # The evictor's own hits first, journaled before this commit: they came before it, and
            # the pass below replays them in that order (a hit replayed after the admit that
            # evicts its key is lost to the policy).
            s.flush_hits()
        with s._env.begin(write=True) as txn:
            fraw = txn.get(self.key, db=s._filling)
            frec = None if fraw is None else _unpack(fraw)
            if frec is None or frec[_F_TOKEN] != self._claim.token:
                committed = False  # purged or taken over meanwhile: not ours to store
            else:
                committed = True
                rec[_E_META] = frec[_F_META]
                txn.delete(self.key, db=s._filling)
                old = txn.get(self.key, db=s._entries)
                if old is not None:
                    orec = _unpack(old)
                    s._drop_entry_txn(txn, self.key, orec, journal=False)
                    unlink.append(orec[_E_NAME])
                seq = s._next_seq(txn)
                rec[_E_SEQ] = seq
                txn.put(self.key, _pack(rec), db=s._entries)
                txn.put(_seq_key(seq), self.key, db=s._byseq)
                used = s._int(txn, s._state, _USED) + charged(self.key, self.written)
                # The hard bound, whatever the evictor does: the oldest commits go first.
                cap = s.settings.capacity_bytes
                if used > cap:
                    cur = txn.cursor(db=s._byseq)
                    cur.first()
                    while used > cap and cur.key():
                        vkey = bytes(cur.value())
                        if vkey == self.key:
                            break
                        vrec = _unpack(txn.get(vkey, db=s._entries))
                        txn.delete(vkey, db=s._entries)
                        cur.delete()
                        used -= charged(vkey, vrec[_E_SIZE])
                        unlink.append(vrec[_E_NAME])
                        s._journal_append(txn, _OP_REMOVE, vkey, charged(vkey, vrec[_E_SIZE]))
                        s._n.evictions += 1
                s._set_int(txn, s._state, _USED, used)
                s._journal_append(txn, _OP_COMMIT, self.key, charged(self.key, self.written))
        self._state = "committed" if committed else "aborted"
        self._claim._held = False
        if not committed:
            unlink.append(name)
            s._n.aborts += 1
        else:
            s._n.commits += 1
        for n in unlink:
            s._unlink(n)
        if committed and s._evictor is not None:
            s._evict_pass()
        return committed

    def abort(self) -> None:
        if self._state == "open":
            self._store._n.aborts += 1
            self._drop("aborted")

    def _drop(self, state: str) -> None:
        self._state = state
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._claim.release()  # removes the marker (if still ours) and the file

    def __del__(self) -> None:
        # A writer dropped without commit/abort (a cancelled fetch) must not leak its fd; the
        # marker's lease then lets others take over.
        if self._fd >= 0:
            os.close(self._fd)


class DiskHit:
    """A disk entry to serve: ``data`` (small, verified), or an fd read in verified blocks, or a
    growing entry followed as it is written (``complete`` False). ``Hit`` of ``api.py``."""

    __slots__ = ("info", "data", "_store", "_fd", "_name", "_rec")

    def __init__(
        self, store: DiskStore, info: EntryInfo, fd: int | None, name: str, rec: list | None,
        *, data: bytes | None = None,
    ) -> None:
        self.info = info
        self.data = data
        self._store = store
        self._fd = fd
        self._name = name
        self._rec = rec

    @property
    def complete(self) -> bool:
        return self.info.complete

    def close(self) -> None:
        """Close the fd if this hit still holds one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def _bad(self) -> EntryCorrupt:
        self.close()
        self._store._drop_if_same(self.info.key, self._name, "a block failed its checksum")
        return EntryCorrupt(f"disk entry {self.info.key!r} failed its checksum: dropped")

    def _blocks(self, offset: int, end: int):
        """(block start, verified block bytes) covering [offset, end)."""
        rec = self._rec
        assert rec is not None and self._fd is not None
        bb, sums = rec[_E_BLOCK], rec[_E_BLOCKSUMS]
        i = offset // bb
        while i * bb < end:
            start = i * bb
            want = min(bb, self.info.size - start)
            data = os.pread(self._fd, want, start)
            if len(data) != want or xxhash.xxh3_64_digest(data) != sums[8 * i : 8 * i + 8]:
                raise self._bad()
            yield start, data
            i += 1

    def _range(self, offset: int, length: int | None) -> tuple[int, int]:
        size = self.info.size
        end = size if length is None else min(size, offset + length)
        return min(offset, size), end

    def file_body(self, offset: int = 0, length: int | None = None) -> FileBody | None:
        """Verify the blocks of the range, then hand the fd over for sendfile (``Hit``)."""
        if self._fd is None or self._rec is None:
            return None
        start, end = self._range(offset, length)
        # Read into one reused buffer: a fresh bytes object per block costs more in page faults
        # than the hashing (the bytes are only checked here; sendfile sends them).
        rec, fd = self._rec, self._fd
        bb, sums, size = rec[_E_BLOCK], rec[_E_BLOCKSUMS], self.info.size
        buf = self._store._verify_buffer(bb)
        i = start // bb
        while i * bb < end:
            want = min(bb, size - i * bb)
            view = memoryview(buf)[:want]
            if os.preadv(fd, [view], i * bb) != want or (
                xxhash.xxh3_64_digest(view) != sums[8 * i : 8 * i + 8]
            ):
                self._bad()
                return None
            i += 1
        fd, self._fd = self._fd, None
        return FileBody(path=self._store._path(self._name), offset=start, length=end - start, fd=fd)

    async def chunks(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The body (or a range) in verified pieces; a growing entry is followed (``Hit``)."""
        if self.data is not None:
            start, end = self._range(offset, length)
            if start < end:
                yield self.data[start:end]
            return
        if not self.info.complete:
            async for piece in self._follow(offset, length):
                yield piece
            return
        start, end = self._range(offset, length)
        try:
            for bstart, data in self._blocks(start, end):
                lo = max(start - bstart, 0)
                hi = min(end - bstart, len(data))
                yield data[lo:hi] if (lo, hi) != (0, len(data)) else data
        finally:
            self.close()

    async def _follow(self, offset: int, length: int | None) -> AsyncIterator[bytes]:
        """Read the growing ``.part`` file until its writer commits; hash everything, and check
        the hash against the committed checksum before the last piece goes out."""
        store, key, fd = self._store, self.info.key, self._fd
        assert fd is not None
        clock = store._clock
        bb = store.settings.block_bytes
        hasher = xxhash.xxh3_128()
        pos = 0
        want_end = None if length is None else offset + length
        held: bytes | None = None  # the last byte read, held back until the end is checked
        delay = 0.001
        last_progress = clock.monotonic()
        final: list | None = None
        try:
            while True:
                avail = os.fstat(fd).st_size
                if final is not None:
                    avail = min(avail, final[_E_SIZE])
                if pos < avail:
                    data = os.pread(fd, min(bb, avail - pos), pos)
                    if not data:
                        raise EntryAborted(f"the body of {key!r} shrank while being followed")
                    hasher.update(data)
                    lo = max(offset - pos, 0)
                    hi = len(data) if want_end is None else min(want_end - pos, len(data))
                    pos += len(data)
                    if lo < hi:
                        piece = data[lo:hi] if (lo, hi) != (0, len(data)) else data
                        if held is not None:
                            piece = held + piece
                        # All but the last byte goes out now; that byte waits until the end is
                        # known and checked, so a truncated or corrupt fill is never whole.
                        held = piece[-1:]
                        if len(piece) > 1:
                            yield piece[:-1]
                    delay = 0.001
                    last_progress = clock.monotonic()
                    continue
                if final is not None:
                    # All of the committed body is read: it must be what was committed.
                    if pos != final[_E_SIZE] or hasher.digest() != final[_E_SUM]:
                        store._drop_if_same(key, self._name, "followed body failed its checksum")
                        raise EntryCorrupt(f"the followed body of {key!r} does not match its checksum")
                    if held is not None:
                        yield held
                    return
                with store._env.begin() as txn:
                    raw = txn.get(key, db=store._entries)
                    fraw = txn.get(key, db=store._filling)
                if raw is not None and _unpack(raw)[_E_NAME] == self._name:
                    final = _unpack(raw)
                    continue
                frec = None if fraw is None else _unpack(fraw)
                if frec is None or frec[_F_NAME] != self._name or not store._fill_alive(frec):
                    raise EntryAborted(f"the writer of {key!r} aborted or died")
                if clock.monotonic() - last_progress > store.settings.follow_stall_s:
                    raise EntryAborted(f"the writer of {key!r} made no progress")
                await clock.sleep(delay)
                delay = min(delay * 2, 0.05)
        finally:
            self.close()
