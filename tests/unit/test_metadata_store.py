"""The metadata node's LMDB store: Raft commands in log order, checksums, sorted scans, snapshots."""

import lmdb
import msgpack
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.objstore.metadata.errors import CorruptGroup, CorruptRecord, DataDirError, InvalidKey, KeyTooLong, StoreFull
from headwater.objstore.metadata.raft.core import Entry, Ready
from headwater.objstore.metadata.raft.storage import RaftStorage
from headwater.objstore.metadata.store import Command, OpKind, Record, RecordStore, decode_record, encode_record


def put(key, ts, value=None, *, ns="obj/b", p=0, writer="w", if_absent=False, if_match=None):
    return Command(kind=OpKind.PUT, ns=ns, partition=p, key=key, version=(ts, writer),
                   value={"v": ts} if value is None else value, if_absent=if_absent, if_match=if_match)


def delete(key, ts, *, ns="obj/b", p=0, writer="w", if_match=None):
    return Command(kind=OpKind.DELETE, ns=ns, partition=p, key=key, version=(ts, writer), if_match=if_match)


def run(store, *cmds):
    """Execute ``cmds`` in one write transaction, as RaftStorage.save applies committed entries."""
    with store.env.begin(write=True) as txn:
        results = [store.execute(txn, c) for c in cmds]
    return results[0] if len(results) == 1 else results


def keys(store, ns="obj/b", p=0, **kw):
    return [k for k, _ in store.scan(ns, p, **kw).items]


@pytest.fixture
def store(tmp_path):
    s = RecordStore.open(tmp_path / "meta", map_size_bytes=64 << 20)
    yield s
    s.close()


@pytest.fixture(params=[None, 24], ids=["inline", "overflow"])
def any_store(request, tmp_path):
    """The default store, and one whose keys over 24 bytes all go to overflow groups."""
    s = RecordStore.open(tmp_path / "meta", map_size_bytes=64 << 20, inline_key_bytes=request.param)
    yield s
    s.close()


# --- records and commands ------------------------------------------------------------------------

def test_record_round_trip_and_checksum():
    rec = Record(version=(5, "w1"), value={"etag": "abc", "size": 3, "n": [1, 2]})
    raw = encode_record(rec)
    assert decode_record(raw) == rec
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        with pytest.raises(CorruptRecord):
            decode_record(bytes(bad))


def test_an_old_tombstone_still_decodes():
    # what the last-writer-wins design wrote for a delete: [1, ts, writer, True, None] + xxh3
    payload = msgpack.packb([1, 7, "w", True, None])
    raw = payload + xxhash.xxh3_64_intdigest(payload).to_bytes(8, "big")
    assert decode_record(raw) == Record(version=(7, "w"), value=None)
    assert encode_record(Record(version=(7, "w"), value=None)) == raw


@pytest.mark.parametrize("cmd", [
    put("k", 1),
    put("a/" + "é" * 600, 2, {"etag": "x", "parts": [1, 2]}, ns="obj/z", p=65534, writer="gw-1", if_absent=True),
    put("k", 3, if_match=("etag", "abc")),
    delete("k", 4, if_match=("etag", None)),
])
def test_command_round_trip(cmd):
    assert Command.decode(cmd.encode()) == cmd


# --- execute -------------------------------------------------------------------------------------

def test_writes_apply_in_log_order_not_by_timestamp(any_store):
    for key in ("k", "long/" + "x" * 40):
        r = run(any_store, put(key, 30, writer="b"))
        assert r.applied and r.previous is None
        r = run(any_store, put(key, 10, writer="a"))  # an older timestamp later in the log still wins
        assert r.applied and r.previous == Record(version=(30, "b"), value={"v": 30})
        assert any_store.get("obj/b", 0, key) == Record(version=(10, "a"), value={"v": 10})


def test_delete_removes_the_key(any_store):
    for key in ("k", "long/" + "x" * 40):
        run(any_store, put(key, 10))
        r = run(any_store, delete(key, 20))
        assert r.applied and r.previous == Record(version=(10, "w"), value={"v": 10})
        assert any_store.get("obj/b", 0, key) is None
        r = run(any_store, delete(key, 30))  # deleting what is absent applies and changes nothing
        assert r.applied and r.previous is None
        run(any_store, put(key, 15))  # older than the delete: applied all the same
        assert any_store.get("obj/b", 0, key).value == {"v": 15}
    assert any_store.info(1)["entries"] == 2  # no tombstones left behind
    run(any_store, delete("k", 40), delete("long/" + "x" * 40, 40))
    assert any_store.info(1)["entries"] == 0 and any_store.scan("obj/b", 0).items == []


def test_if_absent(any_store):
    for key in ("k", "long/" + "x" * 40):
        assert run(any_store, put(key, 10, if_absent=True)).applied
        # a second If-None-Match writer ordered after the first fails and sees the winner
        r = run(any_store, put(key, 11, writer="x", if_absent=True))
        assert not r.applied and r.previous == Record(version=(10, "w"), value={"v": 10})
        assert any_store.get("obj/b", 0, key).version == (10, "w")
        run(any_store, delete(key, 12))
        assert run(any_store, put(key, 13, if_absent=True)).applied  # absent again after a delete


def test_if_match(store):
    r = run(store, put("k", 1, {"etag": "a"}, if_match=("etag", "a")))
    assert not r.applied and r.previous is None  # nothing to match
    assert store.get("obj/b", 0, "k") is None
    run(store, put("k", 2, {"etag": "a"}))
    r = run(store, put("k", 3, {"etag": "b"}, if_match=("etag", "a")))
    assert r.applied and r.previous.value == {"etag": "a"}
    # the compare-and-swap the first writer won makes a second one on the old etag fail
    r = run(store, put("k", 4, {"etag": "c"}, if_match=("etag", "a")))
    assert not r.applied and r.previous == Record(version=(3, "w"), value={"etag": "b"})
    assert not run(store, put("k", 5, {"etag": "d"}, if_match=("other", "b"))).applied  # a missing field
    assert not run(store, delete("k", 6, if_match=("etag", "a"))).applied
    assert store.get("obj/b", 0, "k").value == {"etag": "b"}
    r = run(store, delete("k", 7, if_match=("etag", "b")))
    assert r.applied and r.previous.value == {"etag": "b"}
    assert store.get("obj/b", 0, "k") is None


def test_if_match_compares_structures_exactly_and_a_missing_field_as_none(store):
    """What the object records' compare-and-swaps rely on (``layouts.rewrite``, tagging): a
    layouts list matches only as stored (Python's ``==``, on the command as decoded from the
    log, where a tuple sent is a list); one changed node or one added key fails it. A field the record lacks compares as
    None: ``(field, None)`` matches it (no caller relies on that; none sends None)."""
    lay = {"oid": "o", "size": 5, "k": 2, "m": 1, "stripe": 64, "nodes": ["s1", None, "s3"]}
    run(store, put("k", 1, {"layouts": [lay]}))
    assert not run(store, put("k", 2, {"x": 1}, if_match=("layouts", [{**lay, "nodes": ["s1", "s2", "s3"]}]))).applied
    assert not run(store, put("k", 3, {"x": 1}, if_match=("layouts", [{**lay, "retag": "r"}]))).applied
    assert not run(store, put("k", 4, {"x": 1}, if_match=("layouts", []))).applied
    reordered = dict(reversed(list(lay.items())))  # key order is no part of a dict's value
    sent = put("k", 5, {"layouts": [lay]}, if_match=("layouts", ({**reordered, "nodes": ("s1", None, "s3")},)))
    assert not run(store, sent).applied  # Python's ==: a tuple is no list ...
    assert run(store, Command.decode(sent.encode())).applied  # ... but entries are applied as logged
    assert run(store, put("k", 6, {"layouts": [lay]}, if_match=("rev", None))).applied  # missing: None
    assert not run(store, put("k", 7, {"rev": "r1"}, if_match=("rev", ""))).applied


def test_commands_in_one_transaction_see_each_other_and_abort_together(store):
    results = run(store, put("a", 1), put("a", 2, if_absent=True), delete("a", 3), put("a", 4, if_absent=True))
    assert [r.applied for r in results] == [True, False, True, True]
    assert store.get("obj/b", 0, "a").version == (4, "w")
    with pytest.raises(InvalidKey):
        run(store, put("c", 1), put("d", 1, ns="bad\0ns"))
    assert store.get("obj/b", 0, "c") is None  # the transaction aborted: nothing of it applied


def test_an_old_tombstone_counts_as_absent(any_store):
    for key in ("k", "long/" + "x" * 40):
        any_store.put_record("obj/b", 0, key, Record(version=(5, "w"), value=None))
        assert any_store.get("obj/b", 0, key).value is None
        assert key not in keys(any_store)
        assert not run(any_store, put(key, 6, if_match=("v", None))).applied
        r = run(any_store, put(key, 7, if_absent=True))
        assert r.applied and r.previous is None
        assert any_store.get("obj/b", 0, key).value == {"v": 7}


def test_corrupt_record_detected(any_store):
    long_key = "x" * 40
    for key in ("k", long_key):
        run(any_store, put(key, 10))
        enc = any_store._encode(0, "obj/b", key)
        with any_store.env.begin(write=True) as txn:
            raw = bytearray(any_store._get_raw(txn, enc))
            raw[3] ^= 0xFF
            any_store._put_raw(txn, enc, bytes(raw))
        with pytest.raises(CorruptRecord):
            any_store.get("obj/b", 0, key)
    assert any_store.scan("obj/b", 0).items == []  # skipped, not returned
    assert any_store.corrupt_reads >= 2
    # a command must not judge anything on a corrupt record: it raises, and the transaction
    # applies nothing (the Raft group rebuilds this replica instead)
    before = any_store.corrupt_reads
    with pytest.raises(CorruptRecord):
        run(any_store, put("k", 5, if_absent=True))
    assert any_store.corrupt_reads == before + 1
    # and a repair replaces the inline record with a peer's copy
    any_store.put_record("obj/b", 0, "k", Record(version=(10, "w"), value={"v": 10}))
    assert any_store.get("obj/b", 0, "k").value == {"v": 10}


def test_a_corrupt_overflow_group_is_an_error_on_reads_and_skipped_in_scans(tmp_path):
    s = RecordStore.open(tmp_path / "m", map_size_bytes=16 << 20, inline_key_bytes=12)
    try:
        run(s, put("group/" + "a" * 20, 1), put("group/" + "b" * 20, 1), put("other", 1))
        gkey = s._group_key(s._encode(0, "obj/b", "group/" + "a" * 20))
        with s.env.begin(write=True) as txn:
            txn.put(gkey, txn.get(gkey)[:-1] + b"!")
        assert keys(s) == ["other"] and s.corrupt_reads == 1  # a listing skips it, logged
        with pytest.raises(CorruptGroup):  # a read of a member never answers "absent"
            s.get("obj/b", 0, "group/" + "a" * 20)
        with pytest.raises(CorruptGroup):  # nor does a write judge (or rewrite) the group
            run(s, put("group/" + "b" * 20, 2, if_absent=True))
    finally:
        s.close()


def test_namespaces_and_partitions_are_separate(store):
    run(store, put("k", 1, ns="obj/a"), put("k", 2, ns="obj/a2"), put("k", 3, ns="obj/a", p=1))
    assert keys(store, "obj/a") == ["k"]
    assert store.scan("obj/a", 0).items[0][1].version == (1, "w")
    assert store.scan("obj/a", 1).items[0][1].version == (3, "w")
    assert store.scan("obj", 0).items == []
    assert store.get("obj/a", 2, "k") is None
    info = store.info(4)
    assert info["partitions"] == 2 and info["entries"] == 3 and info["db_bytes"] > 0


def test_key_limits(store):
    with pytest.raises(KeyTooLong):
        run(store, put("k" * 5000, 1))
    with pytest.raises(KeyTooLong):
        run(store, put("k", 1, ns="n" * 300))
    with pytest.raises(InvalidKey):
        run(store, put("\udcff", 1))
    with pytest.raises(InvalidKey):
        store.get("", 0, "k")
    with pytest.raises(InvalidKey):
        run(store, put("", 1))
    with pytest.raises(InvalidKey):
        run(store, put("k", 1, p=65535))
    run(store, put("k" * 1024, 1))  # S3's longest key fits, in an overflow group
    assert keys(store) == ["k" * 1024]


def test_data_dir_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataDirError, match="cannot create"):
        RecordStore.open(f / "meta")


def test_durable_across_reopen(tmp_path):
    s = RecordStore.open(tmp_path / "m", map_size_bytes=16 << 20)
    run(s, put("a", 1), put("b", 2), delete("a", 3), put("c" * 600, 4))
    s.close()
    s = RecordStore.open(tmp_path / "m", map_size_bytes=16 << 20)
    assert s.get("obj/b", 0, "a") is None and s.get("obj/b", 0, "b").value == {"v": 2}
    assert s.get("obj/b", 0, "c" * 600).value == {"v": 4}
    s.close()


# --- a full map ----------------------------------------------------------------------------------

BIG = {"pad": "x" * 20_000}


def test_a_full_map_is_store_full(tmp_path):
    s = RecordStore.open(tmp_path / "m", map_size_bytes=256 << 10)
    try:
        with pytest.raises(StoreFull, match="map"):
            for i in range(100):
                s.put_record("obj/b", 0, f"k{i:03}", Record(version=(i, "w"), value=BIG))
        held = keys(s, limit=1000)
        assert len(held) > 2
        # execute runs in its caller's transaction: the error aborts it whole, and the caller maps it
        with pytest.raises(lmdb.MapFullError):
            run(s, *[put(f"z{i:03}", 1, BIG) for i in range(100)])
        assert keys(s, limit=1000) == held
        run(s, delete("k000", 1))  # still usable: freeing space works
        assert keys(s, limit=1000) == held[1:]
    finally:
        s.close()


def test_a_full_map_during_raft_apply_is_store_full(tmp_path):
    s = RecordStore.open(tmp_path / "m", map_size_bytes=256 << 10)
    try:
        rs = RaftStorage(s, "g", [0])
        committed = tuple((i, Entry(1, put(f"k{i:03}", i, BIG).encode())) for i in range(1, 100))
        with pytest.raises(StoreFull, match="map"):  # the records fill the map, not the log
            rs.save(Ready(seq=1, hard_state=None, truncate_from=None, entries=(), committed=committed,
                          applied=99), (0, 0), lambda *a: None)
        assert s.scan("obj/b", 0).items == []
    finally:
        s.close()


# --- scans ---------------------------------------------------------------------------------------

KEYS = ["a", "a/", "a/b", "a/b/c", "a\0upload", "a0", "ab", "b", "é", "日本", "🎞", "z" * 30,
        "a/" + "y" * 600, "a/" + "y" * 600 + "1", "a/" + "y" * 599 + "z", "a/" + "é" * 700]


def test_scan_order_prefix_start_after_limit(any_store):
    run(any_store, *[put(k, i + 1) for i, k in enumerate(KEYS)])
    run(any_store, delete("ab", 100))
    live = sorted(k for k in KEYS if k != "ab")
    assert keys(any_store) == live
    assert sorted(live, key=lambda k: k.encode()) == live  # code-point order is byte order
    for prefix in ("", "a", "a/", "a/y", "z", "nope"):
        for after in ("", "a", "a/b", "a/" + "y" * 600, "ab", "zz"):
            want = [k for k in live if k.startswith(prefix) and k > after]
            assert keys(any_store, prefix=prefix, start_after=after) == want, (prefix, after)
    # paging with a small limit visits every key once, in order
    seen, after = [], ""
    while True:
        page = any_store.scan("obj/b", 0, start_after=after, limit=3)
        seen += [k for k, _ in page.items]
        if not page.more:
            break
        after = page.last
    assert seen == live
    with pytest.raises(ValueError):
        any_store.scan("obj/b", 0, limit=0)


def test_scan_across_overflow_groups_in_order(tmp_path):
    """Long keys sharing a prefix share a group; groups and inline keys interleave in key order."""
    s = RecordStore.open(tmp_path / "m", map_size_bytes=16 << 20, inline_key_bytes=16)
    try:
        ks = [f"{c}/{'p' * 20}{i}" for c in "acd" for i in range(5)] + ["a", "b", "b/short", "c/" + "p" * 5, "e"]
        run(s, *[put(k, 1) for k in reversed(ks)])
        assert keys(s) == sorted(ks)
        assert s.info(1)["entries"] == 3 + 5  # three groups, five inline keys
        seen, after = [], ""
        while True:
            page = s.scan("obj/b", 0, start_after=after, limit=2)
            seen += [k for k, _ in page.items]
            if not page.more:
                break
            after = page.last
        assert seen == sorted(ks)
        assert keys(s, prefix="c/pp") == sorted(k for k in ks if k.startswith("c/pp"))
    finally:
        s.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="ab/é\0", min_size=1, max_size=40), st.integers(1, 5),
                          st.sampled_from(["put", "put-if-absent", "delete"])),
                max_size=40),
       st.text(alphabet="ab/", max_size=3), st.text(alphabet="ab/", max_size=4))
def test_execute_and_scan_match_a_dict(tmp_path_factory, writes, prefix, after):
    s = RecordStore.open(tmp_path_factory.mktemp("m"), map_size_bytes=16 << 20, inline_key_bytes=12)
    try:
        model: dict[str, int] = {}
        for key, ts, kind in writes:
            cmd = delete(key, ts) if kind == "delete" else put(key, ts, if_absent=kind == "put-if-absent")
            r = run(s, cmd)
            assert (r.previous.value["v"] if r.previous else None) == model.get(key)
            assert r.applied == (kind != "put-if-absent" or key not in model)
            if kind == "delete":
                model.pop(key, None)
            elif r.applied:
                model[key] = ts
        want = sorted(k for k in model if k.startswith(prefix) and k > after)
        assert keys(s, prefix=prefix, start_after=after) == want
        assert {k: r.value["v"] for k, r in s.scan("obj/b", 0).items} == model
    finally:
        s.close()


# --- repairs and snapshots -----------------------------------------------------------------------

def test_put_record_stores_as_is(any_store):
    for key in ("k", "long/" + "x" * 40):
        run(any_store, put(key, 50))
        any_store.put_record("obj/b", 0, key, Record(version=(3, "peer"), value={"v": 3}))  # no version order
        assert any_store.get("obj/b", 0, key) == Record(version=(3, "peer"), value={"v": 3})
        any_store.put_record("obj/b", 0, key, None)
        assert any_store.get("obj/b", 0, key) is None
    any_store.put_record("obj/b", 0, "long/" + "x" * 40, Record(version=(1, "w"), value={}))
    any_store.put_record("obj/b", 0, "long/" + "x" * 41, Record(version=(1, "w"), value={}))
    assert keys(any_store) == ["long/" + "x" * 40, "long/" + "x" * 41]
    with pytest.raises(InvalidKey):
        any_store.put_record("bad\0ns", 0, "k", None)


def fill(store, partitions, tag):
    cmds = []
    for p in partitions:
        for ns in ("obj/a", "obj/b"):
            cmds += [put(k, p, {"p": p, "tag": tag}, ns=ns, p=p) for k in ("x", "y/" + "z" * 40, "y/" + "z" * 41)]
    run(store, *cmds)


def contents(store, partitions):
    return {(ns, p, k): r for p in partitions for ns in ("obj/a", "obj/b") for k, r in store.scan(ns, p).items}


def dump(store, partitions, limit_bytes):
    chunks, after = [], None
    with store.env.begin(buffers=False) as txn:
        while True:
            pairs, after = store.dump_partitions(txn, partitions, after, limit_bytes)
            chunks.append(pairs)
            if after is None:
                return chunks


@pytest.mark.parametrize("inline", [None, 24], ids=["inline", "overflow"])
@pytest.mark.parametrize("limit_bytes", [1, 300, 1 << 20])
def test_snapshot_round_trip(tmp_path, inline, limit_bytes):
    src = RecordStore.open(tmp_path / "src", map_size_bytes=16 << 20, inline_key_bytes=inline)
    dst = RecordStore.open(tmp_path / "dst", map_size_bytes=16 << 20, inline_key_bytes=inline)
    try:
        group = [5, 2]
        fill(src, [0, 2, 3, 5, 9], "src")
        with src.env.begin(write=True, db=src.raft_db) as txn:
            txn.put(b"g\0S", b"raft state")  # the Raft database is no partition's
        fill(dst, [0, 2, 7], "dst")  # dst's stale copy of 2 goes; 0 and 7 belong to other groups
        chunks = dump(src, group, limit_bytes)
        pairs = [kv for c in chunks for kv in c]
        assert [k for k, _ in pairs] == sorted({k for k, _ in pairs})  # in order, each once
        assert {int.from_bytes(k[:2], "big") for k, _ in pairs} == {2, 5}
        if limit_bytes == 1:
            assert all(len(c) == 1 for c in chunks[:-1])
        elif limit_bytes > 1000:
            assert len(chunks) == 1
        else:
            assert len(chunks) > 1
        with dst.env.begin(write=True) as txn:
            dst.clear_partitions(txn, group)
        assert contents(dst, group) == {} and contents(dst, [0, 7]) != {}
        for c in chunks:
            with dst.env.begin(write=True) as txn:
                dst.load_raw(txn, c, set(group))
        assert contents(dst, group) == contents(src, group) != {}
        assert all(r.value["tag"] == "dst" for r in contents(dst, [0, 7]).values())
        assert contents(dst, [3, 9]) == {}
        with dst.env.begin(write=True) as txn:
            with pytest.raises(ValueError, match="outside"):
                dst.load_raw(txn, dump(src, [3], 1 << 20)[0], set(group))
    finally:
        src.close()
        dst.close()


def test_a_dump_is_a_consistent_view_while_writes_go_on(store):
    run(store, *[put(f"k{i}", 1, p=1) for i in range(5)])
    chunks, after = [], None
    with store.env.begin(buffers=False) as txn:
        while True:
            pairs, after = store.dump_partitions(txn, [1], after, 1)
            chunks.append(pairs)
            run(store, put(f"k{len(chunks)}", 2, p=1), put("new", 2, p=1), delete("k0", 2, p=1))
            if after is None:
                break
    dumped = [(bytes(k), decode_record(v)) for c in chunks for k, v in c]
    assert [(k[-2:], r.version) for k, r in dumped] == [(f"k{i}".encode(), (1, "w")) for i in range(5)]


def test_clear_partitions_leaves_other_partitions_and_the_raft_log(store):
    fill(store, [0, 1, 2, 65534], "x")
    with store.env.begin(write=True, db=store.raft_db) as txn:
        txn.put(b"g\0H", b"hard state")
    with store.env.begin(write=True) as txn:
        store.clear_partitions(txn, [1, 65534, 40])  # 40 holds nothing
    assert contents(store, [1, 65534]) == {}
    assert {p for _ns, p, _k in contents(store, [0, 1, 2, 65534])} == {0, 2}
    with store.env.begin(db=store.raft_db) as txn:
        assert txn.get(b"g\0H") == b"hard state"
