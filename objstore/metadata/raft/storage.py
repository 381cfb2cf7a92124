"""One Raft group's log and hard state, in the metadata node's LMDB environment.

Keys in the store's Raft database, per group (``g`` = the group id, UTF-8)::

    g NUL "H"            msgpack [term, vote]
    g NUL "S"            msgpack [applied, snapshot_index, snapshot_term, applied_term]
    g NUL "L" index(8)   msgpack [term, data]
    g NUL "C"            the membership as of the applied index (a Config entry's data); absent:
                         the group's first membership, which the ring derives
    g NUL "I"            present while a snapshot is being installed
    g NUL "R"            present once this node was removed from the group: the membership that
                         removed it, so that clients asking here can be sent on

``save`` writes a :class:`~.core.Ready` in one transaction: hard state, truncation, new entries,
and the committed entries applied to the records with the applied index beside them. Applying
and recording it commit together, so a restart neither skips nor repeats an entry. LMDB syncs
the transaction to disk before ``save`` returns.

Synchronous; the group runs it on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import lmdb
import msgpack

from ..errors import StoreFull
from ..store import Command, CommandResult, Record, RecordStore
from .core import Config, Entry, HardState, Ready, is_config

__all__ = ["LoadedState", "RaftStorage", "read_ring", "write_ring", "save_together", "SaveItem"]

_RING_KEY = b"\0ring"
# Applied write versions live in each partition under namespaces no client can name (0x7f,
# see store.check_ns): version -> log index, and log index -> version so that the oldest can be
# dropped in order. The window is counted in log entries, not in the writers' clocks, so a
# gateway whose clock runs fast cannot cut it short.
_DEDUP_BY_VERSION = b"\x7fv\0"
_DEDUP_BY_INDEX = b"\x7fi\0"
DEDUP_WINDOW_ENTRIES = 100_000


def _dedup_keys(partition: int, version: tuple[int, str], index: int) -> tuple[bytes, bytes]:
    p = partition.to_bytes(2, "big")
    return (p + _DEDUP_BY_VERSION + max(0, version[0]).to_bytes(8, "big") + version[1].encode(),
            p + _DEDUP_BY_INDEX + index.to_bytes(8, "big"))


def read_ring(store: RecordStore) -> dict[str, object] | None:
    """The ring this node joined (see ``ring.py``), None before it joined one."""
    with store.env.begin(db=store.raft_db) as txn:
        raw = txn.get(_RING_KEY)
    return msgpack.unpackb(raw, raw=False) if raw is not None else None


def write_ring(store: RecordStore, ring: dict[str, object]) -> None:
    with store.env.begin(write=True) as txn:
        txn.put(_RING_KEY, msgpack.packb(ring, use_bin_type=True), db=store.raft_db)


SaveItem = tuple["RaftStorage", Ready, tuple[int, int], Callable[[int, Entry, CommandResult | None], None]]


def save_together(items: list[SaveItem]) -> list[Exception | None]:
    """Persist several groups' readies (all in one store) in one transaction, so that groups
    busy at once share one fsync; each item as ``RaftStorage.save``. If the shared transaction
    fails (a corrupt record met while applying, a full map), each is tried alone, so that one
    group's trouble is its own. Returns each item's error, None when it is durable."""
    store = items[0][0].store
    try:
        with store.env.begin(write=True) as txn:
            written = [st._write(txn, r, snap) for st, r, snap, _ in items]
    except Exception as e:
        if len(items) == 1:
            return [StoreFull(f"LMDB map of {store.path} is full; raise map_size")
                    if isinstance(e, lmdb.MapFullError) else e]
        return [save_together([item])[0] for item in items]
    for (st, r, _snap, on_result), (applied_term, results) in zip(items, written):
        if r.committed:
            st.applied_term = applied_term
        for res in results:
            on_result(*res)
    return [None] * len(items)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedState:
    hard_state: HardState
    entries: list[Entry]
    snapshot_index: int
    snapshot_term: int
    applied: int
    config: Config | None  # as of the applied index; None: the group's first
    retired: Config | None  # the membership that removed this node, if it was removed


def _index_key(prefix: bytes, index: int) -> bytes:
    return prefix + b"L" + index.to_bytes(8, "big")


class RaftStorage:
    """Persistence for group ``group`` whose records live in ``partitions`` of ``store``."""

    def __init__(self, store: RecordStore, group: str, partitions: list[int]):
        self.store = store
        self.group = group
        self.partitions = sorted(partitions)
        self._prefix = group.encode() + b"\0"
        self._db = store.raft_db
        self.applied_term = 0

    def load(self) -> LoadedState:
        with self.store.env.begin(write=True) as txn:
            if txn.get(self._prefix + b"I", db=self._db) is not None:
                # A snapshot install was cut short: its records are a mix of old and new, and
                # replaying a log over them could diverge. Start empty; the leader sends it again.
                self.store.clear_partitions(txn, self.partitions)
                txn.delete(self._prefix + b"I", db=self._db)
        with self.store.env.begin(db=self._db) as txn:
            hs = txn.get(self._prefix + b"H")
            term, vote = msgpack.unpackb(hs) if hs is not None else (0, None)
            st = txn.get(self._prefix + b"S")
            applied, snap_i, snap_t, applied_term = msgpack.unpackb(st) if st is not None else (0, 0, 0, 0)
            entries: list[Entry] = []
            cur = txn.cursor()
            expect = snap_i + 1
            if cur.set_range(_index_key(self._prefix, expect)):
                for k, v in cur:
                    k = bytes(k)
                    if not k.startswith(self._prefix + b"L"):
                        break
                    index = int.from_bytes(k[-8:], "big")
                    if index != expect:
                        raise RuntimeError(f"raft log of {self.group} has a gap at {expect} (found {index})")
                    t, data = msgpack.unpackb(v)
                    entries.append(Entry(t, bytes(data)))
                    expect += 1
            cfg = txn.get(self._prefix + b"C")
            retired = txn.get(self._prefix + b"R")
        self.applied_term = applied_term
        return LoadedState(hard_state=HardState(term=term, vote=vote), entries=entries,
                           snapshot_index=snap_i, snapshot_term=snap_t, applied=applied,
                           config=Config.decode(bytes(cfg)) if cfg is not None else None,
                           retired=Config.decode(bytes(retired)) if retired is not None else None)

    def save(self, r: Ready, snapshot: tuple[int, int], on_result: Callable[[int, Entry, CommandResult | None], None]
             ) -> None:
        """Persist ``r``; ``on_result(index, entry, result)`` for each applied entry (result
        None for a no-op). ``snapshot`` = the log's current (snapshot_index, snapshot_term)."""
        error = save_together([(self, r, snapshot, on_result)])[0]
        if error is not None:
            raise error

    def _write(self, txn: lmdb.Transaction, r: Ready, snapshot: tuple[int, int]
               ) -> tuple[int, list[tuple[int, Entry, CommandResult | None]]]:
        """Write ``r`` into ``txn``; (the applied term after it, the applied entries' results)."""
        results: list[tuple[int, Entry, CommandResult | None]] = []
        if r.hard_state is not None:
            txn.put(self._prefix + b"H", msgpack.packb([r.hard_state.term, r.hard_state.vote]), db=self._db)
        if r.truncate_from is not None:
            self._delete_log(txn, first=r.truncate_from)
        for index, e in r.entries:
            txn.put(_index_key(self._prefix, index), msgpack.packb([e.term, e.data]), db=self._db)
        applied_term = self.applied_term
        for index, e in r.committed:
            if is_config(e.data):
                txn.put(self._prefix + b"C", e.data, db=self._db)
                res = None
            else:
                res = self._apply(txn, index, Command.decode(e.data)) if e.data else None
            results.append((index, e, res))
            applied_term = e.term
        if r.committed:
            txn.put(self._prefix + b"S", msgpack.packb([r.applied, snapshot[0], snapshot[1], applied_term]),
                    db=self._db)
        return applied_term, results

    def _apply(self, txn: lmdb.Transaction, index: int, cmd: Command) -> CommandResult:
        """Apply ``cmd`` (log entry ``index``) once: a client that lost the answer to a write
        sends the same command (same version) again, and a retry of a write that did apply must
        not apply twice (a reader could see its value come back after a newer one). Applied
        versions are kept for DEDUP_WINDOW_ENTRIES log entries, as records of the partition, so
        snapshots carry them."""
        base = cmd.partition.to_bytes(2, "big") + _DEDUP_BY_INDEX
        cur = txn.cursor()
        if cur.set_range(base):
            while True:
                k = bytes(cur.key())
                if not k.startswith(base) or int.from_bytes(k[len(base):], "big") >= index - DEDUP_WINDOW_ENTRIES:
                    break
                txn.delete(bytes(cur.value()))
                if not cur.delete():
                    break
        by_version, by_index = _dedup_keys(cmd.partition, cmd.version, index)
        if txn.get(by_version) is not None:
            return CommandResult(applied=True, previous=None)
        result = self.store.execute(txn, cmd)
        if result.applied:
            txn.put(by_version, index.to_bytes(8, "big"))
            txn.put(by_index, by_version)
        return result

    def compact(self, upto: int, term: int, applied: int) -> None:
        """Delete log entries up to ``upto`` (they are applied; the records are the snapshot)."""
        with self.store.env.begin(write=True) as txn:
            self._delete_log(txn, last=upto)
            txn.put(self._prefix + b"S", msgpack.packb([applied, upto, term, self.applied_term]), db=self._db)

    def _delete_log(self, txn: lmdb.Transaction, *, first: int = 0, last: int | None = None) -> None:
        """Delete this group's log entries ``first``..``last`` (to the end when None)."""
        cur = txn.cursor(db=self._db)
        if not cur.set_range(_index_key(self._prefix, first)):
            return
        while True:
            k = bytes(cur.key())
            if not k.startswith(self._prefix + b"L") or (last is not None and int.from_bytes(k[-8:], "big") > last):
                return
            if not cur.delete():
                return

    def read_applied(self, ns: str, partition: int, key: str) -> tuple[int, Record | None]:
        """(applied index, the record) from one read transaction: the record as of that index.
        Raises CorruptRecord."""
        with self.store.env.begin() as txn:
            st = txn.get(self._prefix + b"S", db=self._db)
            applied = msgpack.unpackb(st)[0] if st is not None else 0
            return applied, self.store.get(ns, partition, key, txn=txn)

    # --- snapshots ------------------------------------------------------------------------------

    def snapshot_reader(self) -> tuple[lmdb.Transaction, int, int, bytes | None]:
        """A read transaction (a consistent view while it lives) with its applied index and term
        and the membership as of then (None: the group's first)."""
        txn = self.store.env.begin(buffers=False)
        st = txn.get(self._prefix + b"S", db=self._db)
        applied, _si, _st, applied_term = msgpack.unpackb(st) if st is not None else (0, 0, 0, 0)
        cfg = txn.get(self._prefix + b"C", db=self._db)
        return txn, applied, applied_term, bytes(cfg) if cfg is not None else None

    def snapshot_chunk(self, txn: lmdb.Transaction, after: bytes | None, limit_bytes: int
                       ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        return self.store.dump_partitions(txn, self.partitions, after, limit_bytes)

    def install_begin(self) -> None:
        """Wipe this group's records and log before a snapshot's chunks arrive. The applied
        index drops to 0 first, so a crash mid-install restarts as an empty replica."""
        with self.store.env.begin(write=True) as txn:
            self._wipe(txn)
            txn.put(self._prefix + b"I", b"1", db=self._db)

    def wipe(self) -> None:
        """Make this replica empty (records, log, applied index) in one transaction: it
        catches up from the group as a replaced disk would. The hard state stays."""
        with self.store.env.begin(write=True) as txn:
            self._wipe(txn)
            txn.delete(self._prefix + b"I", db=self._db)

    def _wipe(self, txn: lmdb.Transaction) -> None:
        self.store.clear_partitions(txn, self.partitions)
        self._delete_log(txn)
        txn.put(self._prefix + b"S", msgpack.packb([0, 0, 0, 0]), db=self._db)
        txn.delete(self._prefix + b"C", db=self._db)

    def retire(self, config: Config) -> None:
        """This node was removed from the group by ``config`` (committed): drop its replica
        (records, log, membership) and remember where the group went. The hard state stays, so
        a vote once cast is never cast again should the node be added back."""
        with self.store.env.begin(write=True) as txn:
            self._wipe(txn)
            txn.delete(self._prefix + b"I", db=self._db)
            txn.put(self._prefix + b"R", config.encode(), db=self._db)

    def unretire(self) -> None:
        """The node is being added back to the group: it starts as an empty replica."""
        with self.store.env.begin(write=True) as txn:
            txn.delete(self._prefix + b"R", db=self._db)

    def install_chunk(self, pairs: list[tuple[bytes, bytes]]) -> None:
        with self.store.env.begin(write=True) as txn:
            self.store.load_raw(txn, pairs, set(self.partitions))

    def install_end(self, index: int, term: int, config: bytes | None) -> None:
        with self.store.env.begin(write=True) as txn:
            txn.put(self._prefix + b"S", msgpack.packb([index, index, term, term]), db=self._db)
            if config is not None:
                txn.put(self._prefix + b"C", config, db=self._db)
            txn.delete(self._prefix + b"I", db=self._db)
        self.applied_term = term
