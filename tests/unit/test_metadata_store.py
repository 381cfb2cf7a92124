"""The metadata node's LMDB store: last writer wins, tombstones, checksums, sorted scans."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.objstore.metadata.errors import CorruptRecord, DataDirError, InvalidKey, KeyTooLong
from headwater.objstore.metadata.store import (MIN_VERSION, Op, OpKind, Record, Status, Store, decode_record,
                                               encode_record)


def put(key, ts, value=None, *, ns="obj/b", p=0, writer="w", expect=None):
    return Op(ns=ns, partition=p, key=key, kind=OpKind.PUT, version=(ts, writer),
              value={"v": ts} if value is None else value, expect=expect)


def delete(key, ts, *, ns="obj/b", p=0, writer="w", expect=None):
    return Op(ns=ns, partition=p, key=key, kind=OpKind.DELETE, version=(ts, writer), expect=expect)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "meta", map_size_bytes=64 << 20)
    yield s
    s.close()


@pytest.fixture(params=[None, 24], ids=["inline", "overflow"])
def any_store(request, tmp_path):
    """The default store, and one whose keys over 24 bytes all go to overflow groups."""
    s = Store.open(tmp_path / "meta", map_size_bytes=64 << 20, inline_key_bytes=request.param)
    yield s
    s.close()


def test_record_round_trip_and_checksum():
    rec = Record(version=(5, "w1"), value={"etag": "abc", "size": 3, "n": [1, 2]})
    raw = encode_record(rec)
    assert decode_record(raw) == rec
    assert decode_record(encode_record(Record(version=(6, "w"), value=None))).tombstone
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        with pytest.raises(CorruptRecord):
            decode_record(bytes(bad))


def test_last_writer_wins_in_any_order(any_store):
    ops = [put("k", ts, writer=w) for ts in (10, 20, 30) for w in ("a", "b")]
    random.Random(1).shuffle(ops)
    for op in ops:
        any_store.apply(op)
    assert any_store.get("obj/b", 0, "k") == Record(version=(30, "b"), value={"v": 30})


def test_stale_write_is_ignored_and_reported(store):
    assert store.apply(put("k", 20)).status is Status.APPLIED
    r = store.apply(put("k", 10))
    assert r.status is Status.STALE
    assert r.previous.version == (20, "w")
    assert store.get("obj/b", 0, "k").version == (20, "w")
    assert store.apply(put("k", 20)).status is Status.SAME


def test_tombstones(any_store):
    any_store.apply(put("k", 10))
    r = any_store.apply(delete("k", 20))
    assert r.status is Status.APPLIED and r.previous.value == {"v": 10}
    assert any_store.get("obj/b", 0, "k").tombstone
    assert any_store.apply(put("k", 15)).status is Status.STALE  # older than the delete
    assert any_store.scan("obj/b", 0).items == []
    page = any_store.scan("obj/b", 0, include_tombstones=True)
    assert [(k, r.tombstone) for k, r in page.items] == [("k", True)]
    any_store.apply(put("k", 30))
    assert any_store.get("obj/b", 0, "k").value == {"v": 30}


def test_conditional_apply(store):
    # absent: expect MIN_VERSION accepts
    assert store.apply(put("k", 10, expect=MIN_VERSION)).status is Status.APPLIED
    # a second if-absent writer who also read "absent" is refused
    r = store.apply(put("k", 11, writer="x", expect=MIN_VERSION))
    assert r.status is Status.CONFLICT and r.previous.version == (10, "w")
    # expecting the current version accepts; expecting a newer one (this replica lags) accepts too
    assert store.apply(put("k", 20, expect=(10, "w"))).status is Status.APPLIED
    assert store.apply(put("k", 40, expect=(30, "w"))).status is Status.APPLIED
    # expecting an older version than held is refused
    assert store.apply(put("k", 50, expect=(20, "w"))).status is Status.CONFLICT
    assert store.apply(delete("k", 60, expect=(40, "w"))).status is Status.APPLIED


def test_revert_only_its_own_version(store):
    store.apply(put("k", 10))
    store.apply(put("k", 20))
    undo = Op(ns="obj/b", partition=0, key="k", kind=OpKind.REVERT, version=(99, "w"),
              restore=Record(version=(10, "w"), value={"v": 10}))
    assert store.apply(undo).status is Status.NOOP
    undo = Op(ns="obj/b", partition=0, key="k", kind=OpKind.REVERT, version=(20, "w"),
              restore=Record(version=(10, "w"), value={"v": 10}))
    assert store.apply(undo).status is Status.REVERTED
    assert store.get("obj/b", 0, "k").version == (10, "w")
    store.apply(put("new", 5))
    assert store.apply(Op(ns="obj/b", partition=0, key="new", kind=OpKind.REVERT,
                          version=(5, "w"))).status is Status.REVERTED
    assert store.get("obj/b", 0, "new") is None


def test_batch_is_one_transaction_in_order(store):
    results = store.apply_batch([put("a", 1), put("b", 1), delete("a", 2), put("a", 1)])
    assert [r.status for r in results] == [Status.APPLIED, Status.APPLIED, Status.APPLIED, Status.STALE]
    with pytest.raises(InvalidKey):
        store.apply_batch([put("c", 1), put("d", 1, ns="bad\0ns")])
    assert store.get("obj/b", 0, "c") is None  # nothing of a rejected batch applied


def test_corrupt_record_detected(any_store):
    long_key = "x" * 40
    for key in ("k", long_key):
        any_store.apply(put(key, 10))
        enc = any_store._encode(0, "obj/b", key)
        with any_store._env.begin(write=True) as txn:
            raw = bytearray(any_store._get_raw(txn, enc))
            raw[3] ^= 0xFF
            any_store._put_raw(txn, enc, bytes(raw))
        with pytest.raises(CorruptRecord):
            any_store.get("obj/b", 0, key)
    assert any_store.scan("obj/b", 0).items == []  # skipped, not returned
    assert any_store.corrupt_reads >= 2
    # a write (a repair) replaces a corrupt record
    assert any_store.apply(put("k", 5)).status is Status.APPLIED
    assert any_store.get("obj/b", 0, "k").version == (5, "w")


def test_namespaces_and_partitions_are_separate(store):
    store.apply(put("k", 1, ns="obj/a"))
    store.apply(put("k", 2, ns="obj/a2"))
    store.apply(put("k", 3, ns="obj/a", p=1))
    assert [k for k, _ in store.scan("obj/a", 0).items] == ["k"]
    assert store.scan("obj/a", 0).items[0][1].version == (1, "w")
    assert store.scan("obj/a", 1).items[0][1].version == (3, "w")
    assert store.scan("obj", 0).items == []
    info = store.info(4)
    assert info["partitions"] == 2 and info["entries"] == 3 and info["db_bytes"] > 0


KEYS = ["a", "a/", "a/b", "a/b/c", "a\0upload", "a0", "ab", "b", "é", "日本", "🎞", "z" * 30,
        "a/" + "y" * 600, "a/" + "y" * 600 + "1", "a/" + "y" * 599 + "z", "a/" + "é" * 700]


def test_scan_order_prefix_start_after_limit(any_store):
    for i, k in enumerate(KEYS):
        any_store.apply(put(k, i + 1))
    any_store.apply(delete("ab", 100))
    live = sorted(k for k in KEYS if k != "ab")
    assert [k for k, _ in any_store.scan("obj/b", 0).items] == live
    assert sorted(live, key=lambda k: k.encode()) == live  # code-point order is byte order
    for prefix in ("", "a", "a/", "a/y", "z", "nope"):
        for after in ("", "a", "a/b", "a/" + "y" * 600, "ab", "zz"):
            want = [k for k in live if k.startswith(prefix) and k > after]
            got = [k for k, _ in any_store.scan("obj/b", 0, prefix=prefix, start_after=after).items]
            assert got == want, (prefix, after)
    # paging with a small limit visits every key once, in order
    seen, after = [], ""
    while True:
        page = any_store.scan("obj/b", 0, start_after=after, limit=3)
        seen += [k for k, _ in page.items]
        if not page.more:
            break
        after = page.last
    assert seen == live


def test_scan_bounds_tombstone_runs(store):
    for i in range(50):
        store.apply(put(f"k{i:03}", 1))
        store.apply(delete(f"k{i:03}", 2))
    store.apply(put("z", 1))
    page = store.scan("obj/b", 0, limit=10, max_examined=20)
    assert page.items == [] and page.more and page.last == "k019"
    page = store.scan("obj/b", 0, limit=10, include_tombstones=True)
    assert len(page.items) == 10 and page.more


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="ab/é\0", min_size=1, max_size=40), st.integers(1, 5), st.booleans()),
                max_size=40),
       st.text(alphabet="ab/", max_size=3), st.text(alphabet="ab/", max_size=4))
def test_scan_matches_a_dict(tmp_path_factory, writes, prefix, after):
    s = Store.open(tmp_path_factory.mktemp("m"), map_size_bytes=16 << 20, inline_key_bytes=12)
    try:
        model: dict[str, tuple[tuple[int, str], bool]] = {}
        for key, ts, is_delete in writes:
            s.apply(delete(key, ts) if is_delete else put(key, ts))
            if key not in model or model[key][0] < (ts, "w"):
                model[key] = ((ts, "w"), is_delete)
        want = sorted(k for k, (_, dead) in model.items() if not dead and k.startswith(prefix) and k > after)
        assert [k for k, _ in s.scan("obj/b", 0, prefix=prefix, start_after=after).items] == want
    finally:
        s.close()


def test_key_limits(store):
    with pytest.raises(KeyTooLong):
        store.apply(put("k" * 5000, 1))
    with pytest.raises(InvalidKey):
        store.apply(put("\udcff", 1))
    with pytest.raises(InvalidKey):
        store.get("", 0, "k")
    with pytest.raises(InvalidKey):
        store.apply(put("", 1))


def test_data_dir_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataDirError, match="cannot create"):
        Store.open(f / "meta")


def test_durable_across_reopen(tmp_path):
    s = Store.open(tmp_path / "m", map_size_bytes=16 << 20)
    s.apply_batch([put("a", 1), put("b", 2), delete("a", 3)])
    s.close()
    s = Store.open(tmp_path / "m", map_size_bytes=16 << 20)
    assert s.get("obj/b", 0, "a").tombstone and s.get("obj/b", 0, "b").value == {"v": 2}
    s.close()
