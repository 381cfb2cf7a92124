"""One metadata node's records on LMDB, written in Raft log order, checksummed.

Layout: one LMDB environment per node, one unnamed database, keys sorted bytewise::

    partition (2 bytes, big-endian) | namespace (UTF-8) | NUL | key (UTF-8)

UTF-8 byte order is code-point order, which is the order S3 lists keys in. LMDB caps a key at
511 bytes and S3 keys reach 1024, so a key longer than ``inline_key_bytes`` lives in an
*overflow group*: one LMDB record under its first ``inline_key_bytes`` bytes plus one NUL byte,
holding every long key with that prefix, sorted. No inline key has that length, and the group
key sorts exactly where its members do, so a cursor walk still yields keys in order.

A stored record is ``msgpack([1, ts, writer, tombstone, value]) + xxh3_64`` (8 bytes, big-endian)
and is verified on every read; a group is the same wrapping around ``[[key, record], ...]``.

Every write is a Raft :class:`Command`, applied by :meth:`RecordStore.execute` inside the caller's
write transaction in log order, so every replica holds the same records at the same index.
A delete removes the key. The tombstone flag is still decoded (the old last-writer-wins design
wrote tombstones; such a record reads with ``value`` None and counts as absent), but nothing
writes one now. ``put_record`` stores a peer's copy to repair a corrupt record, and
``dump_partitions`` / ``clear_partitions`` / ``load_raw`` move a Raft group's records as a
snapshot. The Raft log itself lives in a named database of the same environment.

This module is synchronous; the node runs writes on a worker thread.
"""

from __future__ import annotations

import collections
import enum
import heapq
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import lmdb
import msgpack
import xxhash

from .errors import CorruptGroup, CorruptRecord, DataDirError, InvalidKey, KeyTooLong, StoreFull

__all__ = [
    "Version", "Record", "OpKind", "ScanPage", "RolledPage", "RecordStore", "encode_record", "decode_record",
    "record_is_live", "record_to_wire",
    "record_from_wire", "check_ns", "check_key", "MAX_NS_BYTES", "MAX_KEY_BYTES", "Command", "CommandResult",
    "RAFT_DB_NAME",
]

log = logging.getLogger("headwater.objstore.metadata.store")

Version = tuple[int, str]

RAFT_DB_NAME = b"\xff\xff\xffraft"
MAX_NS_BYTES = 255
MAX_KEY_BYTES = 4096
_FORMAT = 1
_SUM_BYTES = 8


# --- records -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One version of a key on one node. ``value`` is None only for a tombstone the old
    last-writer-wins design left on disk: such a record counts as absent."""

    version: Version
    value: dict[str, Any] | None


def _wrap(payload: bytes) -> bytes:
    return payload + xxhash.xxh3_64_intdigest(payload).to_bytes(_SUM_BYTES, "big")


def _unwrap(raw: bytes, where: str) -> bytes:
    if len(raw) < _SUM_BYTES:
        raise CorruptRecord(where)
    payload, stored = raw[:-_SUM_BYTES], raw[-_SUM_BYTES:]
    if xxhash.xxh3_64_intdigest(payload).to_bytes(_SUM_BYTES, "big") != stored:
        raise CorruptRecord(where)
    return payload


def encode_record(rec: Record) -> bytes:
    ts, writer = rec.version
    return _wrap(msgpack.packb([_FORMAT, ts, writer, rec.value is None, rec.value], use_bin_type=True))


def decode_record(raw: bytes, where: str = "?") -> Record:
    payload = _unwrap(bytes(raw), where)
    try:
        fmt, ts, writer, tomb, value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:
        raise CorruptRecord(where) from None
    if fmt != _FORMAT:
        raise CorruptRecord(f"{where} (unknown format {fmt})")
    return Record(version=(ts, writer), value=None if tomb else value)


def record_is_live(raw: bytes, where: str = "?") -> bool:
    """Whether a stored record is live (not an old tombstone), checksum verified, without decoding
    its value: a listing that rolls a key up into a common prefix needs no more (an inline
    object's value can be tens of KiB)."""
    payload = _unwrap(raw, where)
    # The usual layout, read in place: fixarray(5), format 1, a uint64 timestamp, a writer id of
    # at most 31 bytes, then the tombstone flag. Anything else takes the general path below.
    if payload[:3] == b"\x95\x01\xcf" and len(payload) > 12 and 0xa0 <= payload[11] <= 0xbf:
        flag = 12 + (payload[11] & 0x1f)
        if flag < len(payload) and payload[flag] in (0xc2, 0xc3):
            return payload[flag] == 0xc2
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(payload)
    try:
        if unpacker.read_array_header() != 5:
            raise ValueError("not a record")
        fmt, _ts, _writer, tomb = unpacker.unpack(), unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
    except Exception:
        raise CorruptRecord(where) from None
    if fmt != _FORMAT:
        raise CorruptRecord(f"{where} (unknown format {fmt})")
    return not tomb


def record_to_wire(rec: Record | None) -> list[Any] | None:
    """A record as an RPC argument: ``[ts, writer, value-or-None]``."""
    if rec is None:
        return None
    return [rec.version[0], rec.version[1], rec.value]


def record_from_wire(w: list[Any] | None) -> Record | None:
    if w is None:
        return None
    ts, writer, value = w
    if not isinstance(ts, int) or not isinstance(writer, str) or not (value is None or isinstance(value, dict)):
        raise ValueError(f"malformed record {w!r}")
    return Record(version=(ts, writer), value=value)


# --- keys ----------------------------------------------------------------------------------------

def check_ns(ns: str) -> bytes:
    if not isinstance(ns, str) or not ns:
        raise InvalidKey(f"namespace must be a non-empty string, got {ns!r}")
    if "\0" in ns:
        raise InvalidKey(f"namespace {ns!r} contains NUL")
    if ns.startswith("\x7f"):
        raise InvalidKey(f"namespace {ns!r} is reserved (0x7f starts the store's own namespaces)")
    try:
        b = ns.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"namespace {ns!r} is not valid UTF-8") from None
    if len(b) > MAX_NS_BYTES:
        raise KeyTooLong(f"namespace is {len(b)} bytes, the limit is {MAX_NS_BYTES}")
    return b


def check_key(key: str) -> bytes:
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a string, got {type(key).__name__}")
    try:
        b = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"key {key!r} is not valid UTF-8") from None
    if len(b) > MAX_KEY_BYTES:
        raise KeyTooLong(f"key is {len(b)} bytes, the limit is {MAX_KEY_BYTES}")
    return b


# --- operations ----------------------------------------------------------------------------------

class OpKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanPage:
    """Records of one partition in key order. ``last`` is the last key examined: the page is
    complete up to it, and when ``more`` is true the next page starts after it."""

    items: list[tuple[str, Record]]
    more: bool
    last: str | None


@dataclass(frozen=True, slots=True)
class RolledPage:
    """One partition's listing with keys under a delimiter rolled up into common prefixes.

    ``items`` are (name, record) in name order; a record of None marks a common prefix. When
    ``more`` is true the next page starts after ``last`` with ``last_open`` passed back: true when
    ``last`` lies inside a common prefix that was not returned yet (only live keys make one, and
    the page stopped among dead records under it), so resuming must not skip that prefix.
    ``examined`` counts the records the page read, returned or not.
    """

    items: list[tuple[str, Record | None]]
    more: bool
    last: str | None
    last_open: bool
    examined: int


# Above every UTF-8 byte: an exclusive bound after every key that starts with a given prefix.
_PAST = b"\xff"


# --- the store -----------------------------------------------------------------------------------

class RecordStore:
    """A node's LMDB environment. Reads may run on any thread; writes serialise in LMDB."""

    def __init__(self, env: lmdb.Environment, path: Path, *, inline_key_bytes: int | None = None):
        self._env = env
        self.path = path
        limit = env.max_key_size() - 1
        self._inline = min(inline_key_bytes, limit) if inline_key_bytes else limit
        self.corrupt_reads = 0
        # The Raft log and state share the environment, so that applying an entry and recording
        # it applied commit together. Its name starts with bytes no partition prefix followed by
        # a UTF-8 namespace can produce, so it never shows up in a partition's key range.
        self.raft_db = env.open_db(RAFT_DB_NAME)

    @property
    def env(self) -> lmdb.Environment:
        return self._env

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, map_size_bytes: int = 1 << 30,
             inline_key_bytes: int | None = None) -> RecordStore:
        """Open (creating) the environment in directory ``path``; a clear error if it cannot."""
        p = Path(path)
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataDirError(f"cannot create metadata data_dir {p}: {e.strerror or e}") from None
        if not os.access(p, os.W_OK | os.X_OK):
            raise DataDirError(f"metadata data_dir {p} is not writable")
        try:
            env = lmdb.open(str(p), map_size=map_size_bytes, subdir=True, sync=True, metasync=True,
                            max_dbs=2, readahead=False, max_readers=256)
        except lmdb.Error as e:
            raise DataDirError(f"cannot open LMDB in {p}: {e}") from None
        return cls(env, p, inline_key_bytes=inline_key_bytes)

    def close(self) -> None:
        self._env.close()

    # keys

    @staticmethod
    def _base(partition: int, ns: str) -> bytes:
        if not 0 <= partition < 65535:
            raise InvalidKey(f"partition {partition} is outside 0..65534")
        return partition.to_bytes(2, "big") + check_ns(ns) + b"\0"

    def _encode(self, partition: int, ns: str, key: str) -> bytes:
        if key == "":
            raise InvalidKey("a key cannot be empty")
        return self._base(partition, ns) + check_key(key)

    def _group_key(self, enc: bytes) -> bytes | None:
        """The overflow group holding ``enc``, or None when ``enc`` is stored inline."""
        return None if len(enc) <= self._inline else enc[:self._inline] + b"\0"

    # raw access inside a transaction

    def _read_group(self, txn: lmdb.Transaction, gkey: bytes, *, strict: bool = True) -> dict[bytes, bytes]:
        """An overflow group's members. A corrupt group raises CorruptGroup (``strict``: a read
        of one key, or a write that would rewrite the group and drop its other members) or,
        in a scan, is logged and skipped."""
        raw = txn.get(gkey)
        if raw is None:
            return {}
        try:
            members = msgpack.unpackb(_unwrap(bytes(raw), f"group {gkey!r}"), raw=True)
            return {gkey[:-1] + bytes(tail): bytes(rec) for tail, rec in members}
        except Exception:
            self.corrupt_reads += 1
            if strict:
                raise CorruptGroup(f"overflow group {gkey[:40]!r}") from None
            log.error("metadata overflow group %r failed its checksum; skipped in a scan", gkey,
                      extra={"event": "record.corrupt", "overflow_group": repr(gkey), "skipped": True})
            return {}

    def _write_group(self, txn: lmdb.Transaction, gkey: bytes, members: dict[bytes, bytes]) -> None:
        if not members:
            txn.delete(gkey)
            return
        cut = len(gkey) - 1
        payload = msgpack.packb([[k[cut:], members[k]] for k in sorted(members)], use_bin_type=True)
        txn.put(gkey, _wrap(payload))

    def _get_raw(self, txn: lmdb.Transaction, enc: bytes) -> bytes | None:
        gkey = self._group_key(enc)
        if gkey is None:
            raw = txn.get(enc)
            return None if raw is None else bytes(raw)
        return self._read_group(txn, gkey).get(enc)

    def _put_raw(self, txn: lmdb.Transaction, enc: bytes, raw: bytes | None) -> None:
        gkey = self._group_key(enc)
        if gkey is None:
            if raw is None:
                txn.delete(enc)
            else:
                txn.put(enc, raw)
            return
        members = self._read_group(txn, gkey)
        if raw is None:
            members.pop(enc, None)
        else:
            members[enc] = raw
        self._write_group(txn, gkey, members)

    def _load(self, txn: lmdb.Transaction, enc: bytes, where: str) -> Record | None:
        raw = self._get_raw(txn, enc)
        return None if raw is None else decode_record(raw, where)

    # public operations

    def get(self, ns: str, partition: int, key: str, *, txn: lmdb.Transaction | None = None) -> Record | None:
        """The node's record for ``key``, or None (inside ``txn`` if given). Raises CorruptRecord."""
        enc = self._encode(partition, ns, key)
        if txn is not None:
            return self._get_in(txn, enc, ns, key)
        with self._env.begin() as own:
            return self._get_in(own, enc, ns, key)

    def _get_in(self, txn: lmdb.Transaction, enc: bytes, ns: str, key: str) -> Record | None:
        try:
            return self._load(txn, enc, f"{ns}/{key!r}")
        except CorruptRecord:
            self.corrupt_reads += 1
            raise

    def put_record(self, ns: str, partition: int, key: str, rec: Record | None) -> None:
        """Store ``rec`` as is (None removes the key): a repair from a peer's copy."""
        enc = self._encode(partition, ns, key)
        try:
            with self._env.begin(write=True) as txn:
                self._put_raw(txn, enc, None if rec is None else encode_record(rec))
        except lmdb.MapFullError:
            raise StoreFull(f"LMDB map of {self.path} is full; raise map_size") from None

    def scan(self, ns: str, partition: int, *, prefix: str = "", start_after: str = "",
             limit: int = 1000) -> ScanPage:
        """Records of ``ns`` in ``partition`` with keys starting with ``prefix`` and greater than
        ``start_after``, in key order, at most ``limit`` of them. Corrupt records and old
        tombstones are skipped, corrupt ones with an error logged."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        base = self._base(partition, ns)
        pfx = base + check_key(prefix)
        after = base + check_key(start_after) if start_after else None
        seek = max(pfx, after) if after is not None else pfx
        seek = seek[:self._inline]  # a long bound's overflow group sorts at its truncated prefix
        items: list[tuple[str, Record]] = []
        last: bytes | None = None
        more = False
        with self._env.begin() as txn:
            for enc, raw in self._walk(txn, seek, base):
                if after is not None and enc <= after:
                    continue
                if not enc.startswith(pfx):
                    if enc > pfx:
                        break
                    continue
                key = enc[len(base):].decode("utf-8")
                try:
                    rec = decode_record(raw, f"{ns}/{key!r}")
                except CorruptRecord:
                    self.corrupt_reads += 1
                    log.error("metadata record %s/%r failed its checksum; skipped in a scan", ns, key,
                              extra={"event": "record.corrupt", "ns": ns, "key": key, "skipped": True})
                    continue
                last = enc
                if rec.value is None:
                    continue
                items.append((key, rec))
                if len(items) >= limit:
                    more = True
                    break
        return ScanPage(items=items, more=more, last=None if last is None else last[len(base):].decode("utf-8"))

    def rolled_scan(self, ns: str, partitions: Sequence[int], *, prefix: str = "", delimiter: str = "",
                    start_after: str = "", start_open: bool = False, limit: int = 1000,
                    max_examined: int = 10_000) -> RolledPage:
        """Live keys of ``ns`` in ``partitions`` that start with ``prefix``, merged in order, with
        every key that has ``delimiter`` after the prefix rolled up into its common prefix (the key
        up to and including that delimiter), returned once, as S3 lists "folders".

        A cursor per partition; after a common prefix, each cursor that reaches a key of it jumps
        past all of them with one seek, so a page costs a seek per prefix and partition rather
        than a read per key. Names returned are greater than ``start_after``; a ``start_after``
        inside a common prefix skips that whole prefix (S3's rule for a marker) unless
        ``start_open`` (a resumed page, see :class:`RolledPage`). At most ``limit`` names, and at
        most ``max_examined`` records read, per call.
        """
        if limit < 1 or max_examined < 1:
            raise ValueError("limit and max_examined must be at least 1")
        bases = [self._base(p, ns) for p in partitions]
        pfx = check_key(prefix)
        check_key(delimiter)
        # Bounds are compared on a key's bytes after its partition's base: the same in every partition.
        lower = check_key(start_after) if start_after else None  # exclusive
        jump_first = None
        if delimiter and not start_open and start_after.startswith(prefix):
            cut = start_after.find(delimiter, len(prefix))
            if cut >= 0:
                past = start_after[: cut + len(delimiter)].encode("utf-8") + _PAST
                lower = past if lower is None else max(lower, past)
                jump_first = past if lower == past else None
        items: list[tuple[str, Record | None]] = []
        examined = 0
        last: str | None = None
        last_open = False
        more = False
        with self._env.begin() as txn:
            walkers = [_PartitionWalker(self, txn, base) for base in bases]
            heap: list[tuple[bytes, int]] = []
            start = pfx if lower is None else max(pfx, lower)
            for i, w in enumerate(walkers):
                if (head := w.seek(start)) is not None:
                    heap.append((head, i))
            heapq.heapify(heap)
            # Where a key at or below ``lower`` jumps to: past a listed prefix with one seek, unless
            # the seek would land in the same overflow group again (then it steps).
            jump = jump_first
            inline = self._inline
            base_len = len(bases[0]) if bases else 0  # one namespace: the same in every partition
            while heap:
                kb, i = heap[0]
                w = walkers[i]
                examined += 1
                if lower is not None and kb <= lower:
                    # the bound itself, an overflow group's members before it, or a key of a
                    # prefix already listed (the hot path: one per prefix and partition)
                    if jump is not None and base_len + len(jump) <= inline:
                        head = w.seek(jump)
                    else:
                        head = w.step()
                    if head is None:
                        heapq.heappop(heap)
                    else:
                        heapq.heapreplace(heap, (head, i))
                    continue
                if not kb.startswith(pfx):
                    if kb > pfx:
                        heapq.heappop(heap)  # past the prefix: this partition is done
                    else:
                        _replace(heap, w.step(), i)
                    continue
                key = kb.decode("utf-8")
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                rec: Record | None = None
                try:
                    if cut < 0:
                        rec = decode_record(w.raw())
                        live = rec.value is not None
                    else:
                        live = record_is_live(w.raw())
                except CorruptRecord:
                    self.corrupt_reads += 1
                    log.error("metadata record %s/%r failed its checksum; skipped in a scan", ns, key,
                              extra={"event": "record.corrupt", "ns": ns, "key": key, "skipped": True})
                    live = False
                if not live:
                    last, last_open = key, cut >= 0
                    _replace(heap, w.step(), i)
                elif cut >= 0:
                    common = key[: cut + len(delimiter)]
                    items.append((common, None))
                    last, last_open = common, False
                    lower = jump = common.encode("utf-8") + _PAST
                    _replace(heap, w.seek(lower), i)  # the other partitions jump when they reach it
                else:
                    items.append((key, rec))
                    last, last_open = key, False
                    lower, jump = kb, None
                    _replace(heap, w.step(), i)
                if len(items) >= limit or examined >= max_examined:
                    more = bool(heap)
                    break
        return RolledPage(items=items, more=more, last=last, last_open=last_open, examined=examined)

    def _walk(self, txn: lmdb.Transaction, seek: bytes, base: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(encoded key, raw record) from ``seek`` on, overflow groups expanded, while under ``base``."""
        cur = txn.cursor()
        if not cur.set_range(seek):
            return
        for k, v in cur:
            k = bytes(k)
            if not k.startswith(base):
                return
            if len(k) == self._inline + 1:
                yield from sorted(self._read_group(txn, k, strict=False).items())
            else:
                yield k, bytes(v)

    # the replicated state machine (see Command)

    def execute(self, txn: lmdb.Transaction, cmd: Command) -> CommandResult:
        """Apply one Raft command inside write transaction ``txn``. A corrupt record raises
        CorruptRecord: what the command does may depend on it (a condition), and guessing
        would make this replica differ from the others, so the caller must not apply here.
        The caller owns ``txn``: it maps ``lmdb.MapFullError`` (from here or from the commit)
        to StoreFull."""
        enc = self._encode(cmd.partition, cmd.ns, cmd.key)
        try:
            cur = self._load(txn, enc, f"{cmd.ns}/{cmd.key!r}")
        except CorruptRecord:
            self.corrupt_reads += 1
            raise
        live = cur if cur is not None and cur.value is not None else None
        if not _satisfied(cmd, live):
            return CommandResult(applied=False, previous=live)
        if cmd.kind is OpKind.PUT:
            self._put_raw(txn, enc, encode_record(Record(version=cmd.version, value=cmd.value)))
        else:
            self._put_raw(txn, enc, None)  # consensus orders deletes: no tombstone to keep
        return CommandResult(applied=True, previous=live)

    # snapshots of a Raft group's partitions

    def dump_partitions(self, txn: lmdb.Transaction, partitions: list[int], after: bytes | None,
                        limit_bytes: int) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Raw (key, value) pairs of ``partitions`` (sorted) after raw key ``after``, about
        ``limit_bytes`` of them; returns them and the key to continue after (None: done)."""
        out: list[tuple[bytes, bytes]] = []
        size = 0
        cur = txn.cursor()
        for p in sorted(partitions):
            base = p.to_bytes(2, "big")
            if after is not None and after[:2] > base:
                continue
            seek = after if after is not None and after[:2] == base else base
            if not cur.set_range(seek):
                break
            for k, v in cur:
                k = bytes(k)
                if not k.startswith(base):
                    break
                if after is not None and k <= after:
                    continue
                out.append((k, bytes(v)))
                size += len(k) + len(v)
                if size >= limit_bytes:
                    return out, k
        return out, None

    def clear_partitions(self, txn: lmdb.Transaction, partitions: list[int]) -> None:
        """Delete every record of ``partitions`` (before a snapshot is installed)."""
        cur = txn.cursor()
        for p in partitions:
            base = p.to_bytes(2, "big")
            if not cur.set_range(base):
                continue
            while bytes(cur.key()).startswith(base):
                if not cur.delete():
                    break

    def load_raw(self, txn: lmdb.Transaction, pairs: list[tuple[bytes, bytes]], partitions: set[int]) -> None:
        """RecordStore snapshot pairs from ``dump_partitions`` as they are."""
        for k, v in pairs:
            if len(k) < 3 or int.from_bytes(k[:2], "big") not in partitions:
                raise ValueError(f"snapshot key {k[:40]!r} is outside the group's partitions")
            txn.put(k, v)

    # introspection

    def info(self, partitions: int) -> dict[str, Any]:
        """``partitions`` holding data, LMDB ``entries`` (an overflow group counts once), ``db_bytes``."""
        with self._env.begin() as txn:
            cur = txn.cursor()
            held = 0
            p = 0
            while p < min(partitions, 65535):
                if not cur.set_range(p.to_bytes(2, "big")):
                    break
                found = int.from_bytes(bytes(cur.key())[:2], "big")
                if found >= partitions:
                    break
                held += 1
                p = found + 1
            stat = txn.stat()
        info = self._env.info()
        # The Raft database's name is one record of the main database: not an entry.
        return {"partitions": held, "entries": stat["entries"] - 1,
                "db_bytes": (info["last_pgno"] + 1) * stat["psize"], "map_bytes": info["map_size"]}


# --- the replicated state machine ----------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """One write as a Raft log entry: applied in log order on every replica, the same everywhere.

    The condition is checked when the entry is applied, against the state every replica holds
    at that point of the log: that is what makes ``If-None-Match: *`` races have one winner and
    ``If-Match`` a compare-and-swap.
    """

    kind: OpKind
    ns: str
    partition: int
    key: str
    version: Version
    value: dict[str, Any] | None = None
    if_absent: bool = False
    if_match: tuple[str, Any] | None = None

    def encode(self) -> bytes:
        return msgpack.packb([self.kind.value, self.ns, self.partition, self.key, list(self.version), self.value,
                              self.if_absent, list(self.if_match) if self.if_match else None], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Command:
        kind, ns, p, key, (ts, writer), value, if_absent, if_match = msgpack.unpackb(
            data, raw=False, strict_map_key=False)
        return cls(kind=OpKind(kind), ns=ns, partition=p, key=key, version=(ts, writer), value=value,
                   if_absent=if_absent, if_match=tuple(if_match) if if_match else None)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    """``applied`` false: the condition failed and nothing changed. ``previous``: the live
    record the command met (None when the key was absent)."""

    applied: bool
    previous: Record | None


def _satisfied(cmd: Command, live: Record | None) -> bool:
    if cmd.if_absent and live is not None:
        return False
    if cmd.if_match is not None:
        field, expected = cmd.if_match
        return live is not None and live.value is not None and live.value.get(field) == expected
    return True


def _replace(heap: list[tuple[bytes, int]], head: bytes | None, i: int) -> None:
    """Partition ``i`` (at the top of ``heap``) moved to ``head``, or ran out (None)."""
    if head is None:
        heapq.heappop(heap)
    else:
        heapq.heapreplace(heap, (head, i))


class _PartitionWalker:
    """One partition's records in key order from an LMDB cursor, overflow groups expanded.

    ``seek(bound)`` goes to the first key at or after ``bound`` and ``step()`` to the next; both
    return that key's bytes after the partition's base (None at the end of the partition), and
    ``raw()`` its record (read only when asked: a key skipped by a seek costs no value read).
    """

    __slots__ = ("_store", "_txn", "_cur", "base", "_pending")

    def __init__(self, store: RecordStore, txn: lmdb.Transaction, base: bytes):
        self._store = store
        self._txn = txn
        self._cur = txn.cursor()
        self.base = base
        self._pending: collections.deque[tuple[bytes, bytes]] = collections.deque()

    def seek(self, bound: bytes) -> bytes | None:
        if self._pending:
            self._pending.clear()
        cur, base = self._cur, self.base
        if not cur.set_range((base + bound)[:self._store._inline]):
            return None
        k = cur.key()
        if k.startswith(base) and len(k) != self._store._inline + 1:
            return k[len(base):]  # the usual case, without the call to _load
        return self._load()

    def step(self) -> bytes | None:
        if self._pending:
            self._pending.popleft()
            if self._pending:
                return self._pending[0][0][len(self.base):]
        if not self._cur.next():
            return None
        return self._load()

    def raw(self) -> bytes:
        return self._pending[0][1] if self._pending else self._cur.value()

    def _load(self) -> bytes | None:
        """The key under the cursor, or an overflow group's first member (the cursor stays on
        the group until ``step`` has walked its members)."""
        while True:
            k = self._cur.key()
            if not k.startswith(self.base):
                return None
            if len(k) != self._store._inline + 1:
                return k[len(self.base):]
            members = sorted(self._store._read_group(self._txn, bytes(k), strict=False).items())
            if members:
                self._pending.extend(members)
                return members[0][0][len(self.base):]
            if not self._cur.next():
                return None
