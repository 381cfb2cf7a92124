"""Delimiter listings rolled up on the metadata node (RecordStore.rolled_scan, over one partition
or a group's partitions at once) and merged across groups (StreamMerge), against a brute-force
model of S3's listing rules."""

import itertools
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from headwater.objstore.metadata.merge import StreamMerge
from headwater.objstore.metadata.errors import CorruptRecord
from headwater.objstore.metadata.store import (Command, OpKind, Record, RecordStore, encode_record,
                                               record_is_live)

NS = "obj/b"
_ns_counter = itertools.count()


def put(key, ts=1, *, ns=NS, p=0):
    return Command(kind=OpKind.PUT, ns=ns, partition=p, key=key, version=(ts, "w"), value={"v": key})


def load(store, keys, *, ns=NS, partition_of=lambda k: 0):
    with store.env.begin(write=True) as txn:
        for k in keys:
            store.execute(txn, put(k, ns=ns, p=partition_of(k)))


def model(keys, prefix, delimiter, start_after):
    """What S3 lists: (name, is_prefix) after the marker, a marker inside a prefix skipping it."""
    out = []
    for k in sorted(set(keys)):
        if not k.startswith(prefix):
            continue
        cut = k.find(delimiter, len(prefix)) if delimiter else -1
        item = (k[: cut + len(delimiter)], True) if cut >= 0 else (k, False)
        if out and out[-1] == item:
            continue
        out.append(item)
    return [(n, isp) for n, isp in out
            if n > start_after and not (isp and start_after.startswith(n))]


def walk(store, ns, parts, *, prefix, delimiter, start_after, limit, max_examined):
    """Every page of some partitions, resuming as a client does; returns (names, pages)."""
    names, after, open_, pages = [], start_after, False, 0
    while True:
        page = store.rolled_scan(ns, parts, prefix=prefix, delimiter=delimiter, start_after=after,
                                 start_open=open_, limit=limit, max_examined=max_examined)
        pages += 1
        names += [(n, r is None) for n, r in page.items]
        if not page.more:
            return names, pages
        assert page.last is not None and (page.last > after or page.items)
        after, open_ = page.last, page.last_open


@pytest.fixture(scope="module", params=[None, 12], ids=["inline", "overflow"])
def shared_store(request, tmp_path_factory):
    """One store for many hypothesis examples (each in its own namespace); with 12, any key
    over 4 characters lives in an overflow group."""
    s = RecordStore.open(tmp_path_factory.mktemp("rolled") / "meta", map_size_bytes=256 << 20,
                         inline_key_bytes=request.param)
    yield s
    s.close()


def corrupt(store, ns, p, key):
    enc = store._encode(p, ns, key)
    with store.env.begin(write=True) as txn:
        raw = bytearray(store._get_raw(txn, enc))
        raw[3] ^= 0xFF
        store._put_raw(txn, enc, bytes(raw))


alphabet = st.sampled_from(list("ab/c"))
keys_st = st.lists(st.text(alphabet, min_size=1, max_size=7), max_size=40)


@settings(max_examples=100, deadline=None)
@given(keys=keys_st, prefix=st.text(alphabet, max_size=2), delimiter=st.sampled_from(["", "/", "b", "/c"]),
       start_after=st.text(alphabet, max_size=4), limit=st.integers(1, 5), max_examined=st.integers(1, 6),
       seed=st.integers(0, 2**32))
def test_rolled_scan_pages_match_model(shared_store, keys, prefix, delimiter, start_after, limit, max_examined,
                                       seed):
    """One partition, and three partitions walked together (keys spread at random, some corrupt:
    skipped, and no prefix only they would make), paged by tiny limits and record budgets."""
    rng = random.Random(seed)
    where = {k: rng.randrange(3) for k in keys}
    ns = f"obj/h{next(_ns_counter)}"
    load(shared_store, keys, ns=ns, partition_of=where.__getitem__)
    dead = {k for k in where if rng.random() < 0.2}
    for k in dead:
        corrupt(shared_store, ns, where[k], k)
    live = set(keys) - dead
    want = model(live, prefix, delimiter, start_after)
    got, _ = walk(shared_store, ns, [0, 1, 2], prefix=prefix, delimiter=delimiter, start_after=start_after,
                  limit=limit, max_examined=max_examined)
    assert got == want
    got, _ = walk(shared_store, ns, [1], prefix=prefix, delimiter=delimiter, start_after=start_after,
                  limit=limit, max_examined=max_examined)
    assert got == model({k for k in live if where[k] == 1}, prefix, delimiter, start_after)


def test_prefix_is_one_seek_not_a_walk(store):
    """500 prefixes of 20 keys: one page of 500 names reads about one record per prefix."""
    keys = [f"titles/{i:04d}/seg{j:02d}" for i in range(500) for j in range(20)] + ["titles/readme"]
    load(store, keys)
    page = store.rolled_scan(NS, [0], prefix="titles/", delimiter="/", limit=1000)
    assert [n for n, _ in page.items] == [f"titles/{i:04d}/" for i in range(500)] + ["titles/readme"]
    assert not page.more and page.examined <= 501 + 1
    # the marker rule: a start-after inside a prefix skips that prefix, a resumed page does not
    inside = store.rolled_scan(NS, [0], prefix="titles/", delimiter="/", start_after="titles/0007/seg03", limit=1)
    assert inside.items[0][0] == "titles/0008/"
    resumed = store.rolled_scan(NS, [0], prefix="titles/", delimiter="/", start_after="titles/0007/seg03",
                                start_open=True, limit=1)
    assert resumed.items[0][0] == "titles/0007/"


def test_dead_records_bound_a_call_and_do_not_lose_a_prefix(store):
    """A prefix whose first keys are corrupt: a call stops after max_examined records, inside the
    prefix, and the resumed call still lists it because of its live key."""
    keys = [f"v/{i:02d}" for i in range(10)] + ["w"]
    load(store, keys)
    for k in keys[:9]:  # all but v/09 fail their checksum
        corrupt(store, NS, 0, k)
    first = store.rolled_scan(NS, [0], delimiter="/", limit=10, max_examined=4)
    assert first.items == [] and first.more and first.last == "v/03" and first.last_open
    got, pages = walk(store, NS, [0], prefix="", delimiter="/", start_after="", limit=10, max_examined=4)
    assert got == [("v/", True), ("w", False)] and pages == 4  # a resumed call reads its bound again
    with pytest.raises(ValueError):
        store.rolled_scan(NS, [0], limit=0)


@pytest.fixture
def store(tmp_path):
    s = RecordStore.open(tmp_path / "meta", map_size_bytes=64 << 20)
    yield s
    s.close()


# --- the merge across partitions ---------------------------------------------------------------

def merged(store, ns, streams, *, prefix, delimiter, start_after, limit, first_page, max_page, max_examined=10_000):
    """Drive StreamMerge as RaftReplication.list does, one stream per group of partitions, each
    page from rolled_scan over the group; returns (names, rounds)."""
    merge = StreamMerge(range(len(streams)), start_after=start_after, first_page=first_page, max_page=max_page)
    out, rounds = [], 0
    while len(out) < limit:
        if wanted := merge.wanted():
            rounds += 1
            for w in wanted:
                page = store.rolled_scan(ns, streams[w.stream], prefix=prefix, delimiter=delimiter,
                                         start_after=w.start_after, start_open=w.start_open, limit=w.limit,
                                         max_examined=max_examined)
                merge.feed(w.stream, page.items, more=page.more, last=page.last, last_open=page.last_open)
            continue
        if (item := merge.pop()) is None:
            break
        out.append((item[0], item[1] is None))
    return out, rounds


@settings(max_examples=100, deadline=None)
# Found by hypothesis: a page resumed after a dead key inside a common prefix ('/a', corrupt)
# ends on the prefix itself ('/'), which sorts below the key it resumed after.
@example(keys=["a"] * 12 + ["/a", "/b"], prefix="", delimiter="/", start_after="", limit=1, first=1,
         max_examined=1, seed=222)
@given(keys=keys_st, prefix=st.text(alphabet, max_size=2), delimiter=st.sampled_from(["", "/", "b"]),
       start_after=st.text(alphabet, max_size=4), limit=st.integers(1, 30), first=st.integers(1, 4),
       max_examined=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_merge_matches_model(shared_store, keys, prefix, delimiter, start_after, limit, first, max_examined, seed):
    """Keys spread over 6 partitions in 3 groups at random, some corrupt; equal common prefixes
    from several groups come out once."""
    rng = random.Random(seed)
    where = {k: rng.randrange(6) for k in keys}
    ns = f"obj/m{next(_ns_counter)}"
    load(shared_store, keys, ns=ns, partition_of=where.__getitem__)
    dead = {k for k in where if rng.random() < 0.3}
    for k in dead:
        corrupt(shared_store, ns, where[k], k)
    got, _ = merged(shared_store, ns, [[0, 3], [1, 4], [2, 5]], prefix=prefix, delimiter=delimiter,
                    start_after=start_after, limit=limit, first_page=first, max_page=4 * first,
                    max_examined=max_examined)
    assert got == model(set(keys) - dead, prefix, delimiter, start_after)[:limit]


@pytest.mark.parametrize("prefixes,per_prefix", [(500, 20), (5000, 2), (100, 100)])
def test_a_page_is_one_round_whatever_the_prefixes(store, prefixes, per_prefix):
    """A page of 1,001 names from 64 partitions in 8 groups, each group asked for the whole page
    (as the client does with a delimiter), is one round of 8 calls however the keys fall: 500
    prefixes of 20 keys (each prefix in ~27 % of partitions), 5,000 of 2, 100 of 100 (each
    prefix in ~80 % of partitions), and each call reads about a record per prefix and
    partition, not per key."""
    rng = random.Random(7)
    keys = [f"t/{i:05d}/s{j:03d}" for i in range(prefixes) for j in range(per_prefix)]
    load(store, keys, partition_of=lambda k: rng.randrange(64))
    streams = [[p for p in range(64) if p % 8 == g] for g in range(8)]
    got, rounds = merged(store, NS, streams, prefix="t/", delimiter="/", start_after="", limit=1001,
                         first_page=1001, max_page=1001)
    assert got == [(f"t/{i:05d}/", True) for i in range(min(prefixes, 1001))]
    assert rounds == 1
    page = store.rolled_scan(NS, streams[0], prefix="t/", delimiter="/", limit=1001)
    assert page.examined <= 2 * 8 * min(prefixes, 1001) + 8


def test_flat_pages_take_few_rounds(store):
    """Without a delimiter the client asks each group for a quarter of the page; uneven groups
    (one holds most keys) cost a few more rounds, each twice as large."""
    keys = [f"k{i:05d}" for i in range(3000)]
    load(store, keys, partition_of=lambda k: 0 if int(k[1:]) % 4 else int(k[1:]) % 64)
    streams = [[p for p in range(64) if p % 8 == g] for g in range(8)]
    got, rounds = merged(store, NS, streams, prefix="", delimiter="", start_after="k00100", limit=1001,
                         first_page=2 * 1001 // 8 + 16, max_page=1001)
    assert [n for n, _ in got] == keys[101:1102]
    assert rounds <= 3, rounds


def test_merge_refuses_a_stream_that_goes_backwards():
    merge = StreamMerge([0, 1], start_after="m")
    with pytest.raises(ValueError):
        merge.feed(0, [("a", None)], more=False, last=None)
    merge.feed(0, [("n", 1), ("o", 2)], more=True, last="o")
    with pytest.raises(RuntimeError):
        merge.pop()  # partition 1 has not answered
    assert [w.stream for w in merge.wanted()] == [0, 1]  # a round asks every unfinished stream
    merge.feed(1, [("n", None)], more=False, last=None)
    assert merge.pop() == ("n", 1) and merge.wanted() == []
    assert merge.pop() == ("o", 2) and [(w.start_after, w.limit) for w in merge.wanted()] == [("o", 16)]
    with pytest.raises(ValueError):
        merge.feed(0, [("o", 3)], more=False, last=None)  # not after its last page
    merge.feed(0, [], more=False, last=None)
    assert merge.pop() is None
    with pytest.raises(ValueError):
        merge.feed(1, [], more=False, last=None)  # it said it had no more


@pytest.mark.parametrize("version", [(1_764_660_000_000_000_000, "s3-w1"), (5, "w"), (2**63, "x" * 31),
                                     (1_764_660_000_000_000_000, "x" * 40)])
def test_record_is_live_reads_the_flag_in_place_or_decodes(version):
    """The in-place read (a real clock's timestamp, a short writer id) and the general decode
    (anything else) agree, and both verify the checksum."""
    for value in ({"etag": "e", "inline": "x" * 5000}, None):
        raw = encode_record(Record(version=version, value=value))
        assert record_is_live(raw) is (value is not None)
        bad = bytearray(raw)
        bad[len(bad) // 2] ^= 0x01
        with pytest.raises(CorruptRecord):
            record_is_live(bytes(bad))
