"""The Raft log on LMDB: what a Ready writes is what a restart loads, applied exactly once."""

from __future__ import annotations

from headwater.objstore.metadata.raft.core import Entry, HardState, Ready
from headwater.objstore.metadata.raft.storage import RaftStorage
from headwater.objstore.metadata.store import Command, OpKind, RecordStore


def put(key: str, n: int, *, p: int = 0, if_absent: bool = False) -> bytes:
    return Command(kind=OpKind.PUT, ns="obj/b", partition=p, key=key, version=(n, "w"), value={"n": n},
                   if_absent=if_absent).encode()


def ready(seq: int, *, hs: HardState | None = None, truncate: int | None = None,
          entries: tuple = (), committed: tuple = (), applied: int = 0) -> Ready:
    return Ready(seq=seq, hard_state=hs, truncate_from=truncate, entries=entries, committed=committed,
                 applied=applied)


def test_a_restart_loads_what_was_saved_and_applies_nothing_twice(tmp_path):
    store = RecordStore.open(tmp_path, map_size_bytes=16 << 20)
    rs = RaftStorage(store, "g", [0, 1])
    e1, e2, e3 = Entry(1, b""), Entry(1, put("a", 1)), Entry(1, put("a", 2, if_absent=True))
    results: list = []
    rs.save(ready(1, hs=HardState(term=1, vote="n1"), entries=((1, e1), (2, e2), (3, e3))), (0, 0),
            lambda *a: results.append(a))
    assert results == []  # nothing committed yet
    rs.save(ready(2, committed=((1, e1), (2, e2), (3, e3)), applied=3), (0, 0), lambda *a: results.append(a))
    assert [(i, r.applied if r else None) for i, _e, r in results] == [(1, None), (2, True), (3, False)]
    assert store.get("obj/b", 0, "a").value == {"n": 1}  # the If-None-Match entry failed its condition
    # an old leader's suffix is replaced
    rs.save(ready(3, hs=HardState(term=2, vote=None), truncate=3, entries=((3, Entry(2, put("b", 3))),)), (0, 0),
            lambda *a: None)
    store.close()

    store = RecordStore.open(tmp_path, map_size_bytes=16 << 20)
    st = RaftStorage(store, "g", [0, 1]).load()
    assert st.hard_state == HardState(term=2, vote=None)
    assert st.applied == 3 and st.snapshot_index == 0
    assert st.entries == [e1, e2, Entry(2, put("b", 3))]
    assert RaftStorage(store, "other", [2]).load().entries == []  # groups are separate
    store.close()


def test_compaction_keeps_the_tail_and_the_snapshot_point(tmp_path):
    store = RecordStore.open(tmp_path, map_size_bytes=16 << 20)
    rs = RaftStorage(store, "g", [0])
    entries = tuple((i, Entry(1, put(f"k{i}", i))) for i in range(1, 11))
    rs.save(ready(1, entries=entries, committed=entries, applied=10), (0, 0), lambda *a: None)
    rs.compact(6, 1, 10)
    st = rs.load()
    assert (st.snapshot_index, st.snapshot_term, st.applied) == (6, 1, 10)
    assert st.entries == [e for _, e in entries[6:]]
    store.close()


def test_a_snapshot_moves_records_and_an_interrupted_install_starts_over(tmp_path):
    src = RecordStore.open(tmp_path / "src", map_size_bytes=16 << 20)
    a = RaftStorage(src, "g", [0, 1])
    entries = tuple((i, Entry(1, put(f"k{i}", i, p=i % 3))) for i in range(1, 31))
    a.save(ready(1, entries=entries, committed=entries, applied=30), (0, 0), lambda *x: None)
    txn, index, term, _config = a.snapshot_reader()
    chunks, after = [], None
    while True:
        pairs, after = a.snapshot_chunk(txn, after, 200)  # small chunks: resumable
        chunks.append(pairs)
        if after is None:
            break
    txn.abort()
    assert index == 30 and term == 1 and len(chunks) > 2
    assert all(int.from_bytes(k[:2], "big") in (0, 1) for c in chunks for k, _ in c)  # not partition 2

    dst = RecordStore.open(tmp_path / "dst", map_size_bytes=16 << 20)
    b = RaftStorage(dst, "g", [0, 1])
    b.save(ready(1, entries=((1, Entry(1, put("stale", 0))),), committed=((1, Entry(1, put("stale", 0))),),
                 applied=1), (0, 0), lambda *x: None)
    b.install_begin()
    b.install_chunk(chunks[0])
    dst.close()
    dst = RecordStore.open(tmp_path / "dst", map_size_bytes=16 << 20)  # a crash mid-install, then a restart
    st = RaftStorage(dst, "g", [0, 1]).load()
    assert st.applied == 0 and st.entries == []
    assert dst.scan("obj/b", 0).items == [] and dst.scan("obj/b", 1).items == []  # wiped, not half-loaded

    b = RaftStorage(dst, "g", [0, 1])
    b.install_begin()
    for c in chunks:
        b.install_chunk(c)
    b.install_end(index, term, None)
    st = b.load()
    assert (st.applied, st.snapshot_index, st.snapshot_term) == (30, 30, 1)
    for p in (0, 1):
        assert dst.scan("obj/b", p).items == src.scan("obj/b", p).items
    src.close()
    dst.close()


def test_a_retried_write_applies_once_and_old_versions_are_forgotten(tmp_path):
    from headwater.objstore.metadata.raft.storage import DEDUP_WINDOW_ENTRIES

    store = RecordStore.open(tmp_path, map_size_bytes=16 << 20)
    rs = RaftStorage(store, "g", [0])
    first = Entry(1, put("k", 10))
    newer = Entry(1, put("k", 20))
    results: list = []
    entries = ((1, first), (2, newer), (3, first))  # the client resent `first` after a lost answer
    rs.save(ready(1, entries=entries, committed=entries, applied=3), (0, 0), lambda *a: results.append(a[2]))
    assert [r.applied for r in results] == [True, True, True]
    assert results[2].previous is None  # a duplicate: nothing new to report
    assert store.get("obj/b", 0, "k").value == {"n": 20}  # the newer write stays
    # a hundred thousand entries later the version is forgotten (whatever the writers' clocks
    # say), so the same command would apply again
    far = DEDUP_WINDOW_ENTRIES + 10
    late = Entry(1, put("other", 10**18))  # a writer with a clock far ahead changes nothing
    again = Entry(1, put("k", 10))
    rs.save(ready(2, entries=((4, late),), committed=((4, late),), applied=4), (0, 0), lambda *a: None)
    rs.save(ready(3, entries=((5, again),), committed=((5, again),), applied=5), (0, 0), lambda *a: None)
    assert store.get("obj/b", 0, "k").value == {"n": 20}  # still remembered: not applied again
    rs.save(ready(4, entries=((far, again),), committed=((far, again),), applied=far), (0, 0), lambda *a: None)
    assert store.get("obj/b", 0, "k").value == {"n": 10}
    # the applied versions are records of the partition: a snapshot carries them
    txn, _, _, _ = rs.snapshot_reader()
    pairs, _ = rs.snapshot_chunk(txn, None, 1 << 20)
    txn.abort()
    assert any(k[2:5] == b"\x7fv\x00" for k, _ in pairs)
    store.close()
