"""The gateway's bucket cache: what it keeps, for how long, and what it never keeps."""

from __future__ import annotations

import pytest

from headwater.objstore.gateway.bucketcache import BucketCache
from headwater.objstore.records import BucketRecord


class Ticker:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def record(name: str = "b1", *, owner: str = "alice", deleting: str | None = None) -> BucketRecord:
    return BucketRecord(name=name, owner=owner, created=1.5, deleting=deleting)


def test_a_record_is_kept_for_the_ttl_less_the_drift_from_when_its_read_was_sent() -> None:
    clock = Ticker()
    cache = BucketCache(ttl_s=1.0, clock_drift=0.1, monotonic=clock)
    sent = cache.now()
    clock.t += 0.3  # the read took this long
    cache.offer("b1", record(), sent)
    assert cache.get("b1") == record()
    clock.t = sent + 0.899
    assert cache.get("b1") is None  # the one sent to read it again (see below)
    assert cache.get("b1") == record()
    clock.t = sent + 0.9  # 1 s x (1 - 0.1), counted from the send, not from the answer
    assert cache.get("b1") is None
    assert cache.statistics() == {"entries": 0, "hits": 2, "misses": 1, "refreshes": 1}
    # DeleteBucket waits the whole ttl, longer than any entry lives on any clock within the drift.
    assert cache.wait_s == 1.0


def test_one_caller_reads_the_record_again_in_the_last_quarter_the_others_keep_using_it() -> None:
    clock = Ticker()
    cache = BucketCache(ttl_s=1.0, clock_drift=0.1, monotonic=clock)
    cache.offer("b1", record(), cache.now())  # kept 0.9 s: refreshed from 0.675 s on
    clock.t += 0.674
    assert [cache.get("b1") for _ in range(3)] == [record()] * 3
    clock.t += 0.001
    assert cache.get("b1") is None  # this caller reads the record again and offers it
    assert [cache.get("b1") for _ in range(3)] == [record()] * 3  # the requests in flight do not
    cache.offer("b1", record(), cache.now())  # the new read: kept 0.9 s from now
    clock.t += 0.8
    assert cache.get("b1") is None  # its own last quarter
    assert cache.get("b1") == record()
    assert cache.statistics()["refreshes"] == 2 and cache.statistics()["misses"] == 0


def test_absence_and_marked_records_are_never_kept() -> None:
    clock = Ticker()
    cache = BucketCache(ttl_s=1.0, clock_drift=0.1, monotonic=clock)
    cache.offer("b1", None, cache.now())
    assert cache.get("b1") is None
    cache.offer("b1", record(deleting="t0k3n"), cache.now())
    assert cache.get("b1") is None
    # A marked record read later replaces an unmarked one kept earlier.
    cache.offer("b1", record(), cache.now())
    cache.offer("b1", record(deleting="t0k3n"), cache.now())
    assert cache.get("b1") is None


def test_an_answer_that_arrives_after_its_expiry_is_not_kept() -> None:
    clock = Ticker()
    cache = BucketCache(ttl_s=1.0, clock_drift=0.1, monotonic=clock)
    sent = cache.now()
    clock.t += 2.0
    cache.offer("b1", record(), sent)
    assert cache.get("b1") is None


@pytest.mark.parametrize("ttl_s, drift", [(0.0, 0.1), (1.0, 1.0)])
def test_off_keeps_nothing_and_deletebucket_does_not_wait(ttl_s: float, drift: float) -> None:
    cache = BucketCache(ttl_s=ttl_s, clock_drift=drift, monotonic=Ticker())
    assert not cache.enabled and cache.wait_s == 0.0
    cache.offer("b1", record(), cache.now())
    assert cache.get("b1") is None


def test_the_number_of_entries_is_bounded() -> None:
    clock = Ticker()
    cache = BucketCache(ttl_s=1.0, clock_drift=0.1, monotonic=clock, max_entries=8)
    for i in range(100):
        cache.offer(f"b{i}", record(f"b{i}"), cache.now())
        assert cache.statistics()["entries"] <= 8
    assert cache.get("b99") is not None  # the newest stay
    # Expired entries go first when room is needed.
    clock.t += 5
    cache.offer("new", record("new"), cache.now())
    assert cache.statistics()["entries"] == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        BucketCache(ttl_s=-1.0, clock_drift=0.1)
    with pytest.raises(ValueError):
        BucketCache(ttl_s=1.0, clock_drift=1.5)


def test_the_mark_travels_in_the_record_and_old_records_have_none() -> None:
    marked = record(deleting="t0k3n")
    assert BucketRecord.from_value(marked.to_value()) == marked
    plain = record()
    assert "deleting" not in plain.to_value()  # records written before the mark keep their shape
    assert BucketRecord.from_value({"name": "b1", "owner": "alice", "created": 1.5}).deleting is None
