"""Delimiter listings rolled up on the metadata node (RecordStore.rolled_scan) and merged across
partitions (PartitionMerge), against a brute-force model of S3's listing rules."""

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.objstore.metadata.merge import PartitionMerge
from headwater.objstore.metadata.store import Command, OpKind, RecordStore

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


def walk(store, ns, p, *, prefix, delimiter, start_after, limit, max_examined):
    """Every page of one partition, resuming as a client does; returns (names, pages)."""
    names, after, open_, pages = [], start_after, False, 0
    while True:
        page = store.rolled_scan(ns, p, prefix=prefix, delimiter=delimiter, start_after=after,
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


alphabet = st.sampled_from(list("ab/c"))
keys_st = st.lists(st.text(alphabet, min_size=1, max_size=7), max_size=40)


@settings(max_examples=150, deadline=None)
@given(keys=keys_st, prefix=st.text(alphabet, max_size=2), delimiter=st.sampled_from(["", "/", "b", "/c"]),
       start_after=st.text(alphabet, max_size=4), limit=st.integers(1, 5), max_examined=st.integers(1, 6))
def test_rolled_scan_pages_match_model(shared_store, keys, prefix, delimiter, start_after, limit, max_examined):
    ns = f"obj/h{next(_ns_counter)}"
    load(shared_store, keys, ns=ns)
    got, _ = walk(shared_store, ns, 0, prefix=prefix, delimiter=delimiter, start_after=start_after,
                  limit=limit, max_examined=max_examined)
    assert got == model(keys, prefix, delimiter, start_after)


def test_prefix_is_one_seek_not_a_walk(store):
    """500 prefixes of 20 keys: one page of 500 names reads about one record per prefix."""
    keys = [f"titles/{i:04d}/seg{j:02d}" for i in range(500) for j in range(20)] + ["titles/readme"]
    load(store, keys)
    page = store.rolled_scan(NS, 0, prefix="titles/", delimiter="/", limit=1000)
    assert [n for n, _ in page.items] == [f"titles/{i:04d}/" for i in range(500)] + ["titles/readme"]
    assert not page.more and page.examined <= 501 + 1
    # the marker rule: a start-after inside a prefix skips that prefix, a resumed page does not
    inside = store.rolled_scan(NS, 0, prefix="titles/", delimiter="/", start_after="titles/0007/seg03", limit=1)
    assert inside.items[0][0] == "titles/0008/"
    resumed = store.rolled_scan(NS, 0, prefix="titles/", delimiter="/", start_after="titles/0007/seg03",
                                start_open=True, limit=1)
    assert resumed.items[0][0] == "titles/0007/"


def test_dead_records_bound_a_call_and_do_not_lose_a_prefix(store):
    """A prefix whose first keys are corrupt: a call stops after max_examined records, inside the
    prefix, and the resumed call still lists it because of its live key."""
    keys = [f"v/{i:02d}" for i in range(10)] + ["w"]
    load(store, keys)
    for k in keys[:9]:  # all but v/09 fail their checksum
        corrupt(store, NS, 0, k)
    first = store.rolled_scan(NS, 0, delimiter="/", limit=10, max_examined=4)
    assert first.items == [] and first.more and first.last == "v/03" and first.last_open
    got, pages = walk(store, NS, 0, prefix="", delimiter="/", start_after="", limit=10, max_examined=4)
    assert got == [("v/", True), ("w", False)] and pages == 4  # a resumed call reads its bound again
    with pytest.raises(ValueError):
        store.rolled_scan(NS, 0, limit=0)


@pytest.fixture
def store(tmp_path):
    s = RecordStore.open(tmp_path / "meta", map_size_bytes=64 << 20)
    yield s
    s.close()


# --- the merge across partitions ---------------------------------------------------------------

def merged(store, partitions, *, prefix, delimiter, start_after, limit, first_page, max_page):
    """Drive PartitionMerge as RaftReplication.list does, pages from rolled_scan; (names, rounds)."""
    merge = PartitionMerge(range(partitions), start_after=start_after, first_page=first_page, max_page=max_page)
    out, rounds = [], 0
    while len(out) < limit:
        wanted = merge.wanted()
        if wanted:
            rounds += 1
            for w in wanted:
                page = store.rolled_scan(NS, w.partition, prefix=prefix, delimiter=delimiter,
                                         start_after=w.start_after, start_open=w.start_open, limit=w.limit)
                merge.feed(w.partition, page.items, more=page.more, last=page.last, last_open=page.last_open)
            continue
        item = merge.pop()
        if item is None:
            break
        out.append((item[0], item[1] is None))
    return out, rounds


def corrupt(store, ns, p, key):
    enc = store._encode(p, ns, key)
    with store.env.begin(write=True) as txn:
        raw = bytearray(store._get_raw(txn, enc))
        raw[3] ^= 0xFF
        store._put_raw(txn, enc, bytes(raw))


@settings(max_examples=100, deadline=None)
@given(keys=keys_st, prefix=st.text(alphabet, max_size=2), delimiter=st.sampled_from(["", "/", "b"]),
       start_after=st.text(alphabet, max_size=4), limit=st.integers(1, 30), first=st.integers(1, 4),
       max_examined=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_merge_matches_model(shared_store, keys, prefix, delimiter, start_after, limit, first, max_examined, seed):
    """Keys spread over 4 partitions at random, some of them corrupt (skipped: they are not
    listed, nor is a prefix only they would make); equal common prefixes come out once."""
    rng = random.Random(seed)
    where = {k: rng.randrange(4) for k in keys}
    ns = f"obj/m{next(_ns_counter)}"
    load(shared_store, keys, ns=ns, partition_of=where.__getitem__)
    dead = {k for k in where if rng.random() < 0.3}
    for k in dead:
        corrupt(shared_store, ns, where[k], k)
    merge = PartitionMerge(range(4), start_after=start_after, first_page=first, max_page=4 * first)
    out = []
    while len(out) < limit:
        if wanted := merge.wanted():
            for w in wanted:
                page = shared_store.rolled_scan(ns, w.partition, prefix=prefix, delimiter=delimiter,
                                                start_after=w.start_after, start_open=w.start_open, limit=w.limit,
                                                max_examined=max_examined)
                merge.feed(w.partition, page.items, more=page.more, last=page.last, last_open=page.last_open)
            continue
        if (item := merge.pop()) is None:
            break
        out.append((item[0], item[1] is None))
    assert out == model(set(keys) - dead, prefix, delimiter, start_after)[:limit]


@pytest.mark.parametrize("prefixes,per_prefix", [(500, 20), (5000, 2), (200, 200)])
def test_rounds_per_page_are_bounded_whatever_the_prefixes(store, prefixes, per_prefix):
    """A page of 1001 names from 64 partitions takes a few rounds, not one per prefix, however
    the keys fall: 500 prefixes of 20 keys (each prefix in ~27 % of partitions), 5,000 of 2,
    200 of 200 (every prefix in nearly every partition: the doubling page size matters)."""
    rng = random.Random(7)
    keys = [f"t/{i:05d}/s{j:03d}" for i in range(prefixes) for j in range(per_prefix)]
    load(store, keys, partition_of=lambda k: rng.randrange(64))
    first = max(16, 2 * 1001 // 64 + 16)
    got, rounds = merged(store, 64, prefix="t/", delimiter="/", start_after="", limit=1001,
                         first_page=first, max_page=1001)
    assert got == [(f"t/{i:05d}/", True) for i in range(min(prefixes, 1001))]
    assert rounds <= 6, rounds


def test_merge_refuses_a_partition_that_goes_backwards():
    merge = PartitionMerge([0, 1], start_after="m")
    with pytest.raises(ValueError):
        merge.feed(0, [("a", None)], more=False, last=None)
    merge.feed(0, [("n", 1), ("o", 2)], more=True, last="o")
    with pytest.raises(RuntimeError):
        merge.pop()  # partition 1 has not answered
    assert [w.partition for w in merge.wanted()] == [0, 1]  # a round asks every unfinished partition
    merge.feed(1, [("n", None)], more=False, last=None)
    assert merge.pop() == ("n", 1) and merge.wanted() == []
    assert merge.pop() == ("o", 2) and [(w.start_after, w.limit) for w in merge.wanted()] == [("o", 16)]
    with pytest.raises(ValueError):
        merge.feed(0, [("o", 3)], more=False, last=None)  # not after its last page
    merge.feed(0, [], more=False, last=None)
    assert merge.pop() is None
    with pytest.raises(ValueError):
        merge.feed(1, [], more=False, last=None)  # it said it had no more
