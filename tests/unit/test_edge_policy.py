"""headwater.edge.store.policy: LRU, S3-FIFO and SIEVE over byte sizes, driven without I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.edge.store.policy import DEFAULT_POLICY, LRU, POLICIES, S3FIFO, SIEVE, make_policy
from headwater.edge.store.replay import replay, zipf_trace

NAMES = sorted(POLICIES)

# An operation: ("access", key, size) | ("remove", key) | ("evict_to", fraction)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("access"), st.integers(0, 30), st.integers(0, 400)),
        st.tuples(st.just("admit"), st.integers(0, 30), st.integers(0, 400)),
        st.tuples(st.just("touch"), st.integers(0, 30)),
        st.tuples(st.just("remove"), st.integers(0, 30)),
        st.tuples(st.just("evict_to"), st.floats(0, 1)),
    ),
    max_size=300,
)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(0, 2000), program=ops)
def test_invariants_hold_under_any_sequence(name: str, capacity: int, program: list) -> None:
    evicted: list[tuple[int, int]] = []
    p = POLICIES[name](capacity, lambda k, s: evicted.append((k, s)))
    live: dict[int, int] = {}  # the model: what the policy should hold
    for op in program:
        evicted.clear()
        before = dict(live)
        if op[0] in ("access", "admit"):
            _, key, size = op
            if op[0] == "access":
                hit = p.access(key, size)
                assert hit == (key in before)
                admitted = not hit and key in p
            else:
                admitted = p.admit(key, size)
                assert admitted == (key in p)  # refused means not held, not even the old size
                live.pop(key, None)
            if admitted:
                assert p.size_of(key) == size
                live[key] = size
        elif op[0] == "touch":
            assert p.touch(op[1]) == (op[1] in before)
        elif op[0] == "remove":
            size = p.remove(op[1])
            assert size == before.get(op[1], -1)
            live.pop(op[1], None)
            assert op[1] not in p
        else:
            target = int(capacity * op[1])
            out = p.evict_to(target)
            assert p.used <= target
            assert out == [k for k, _ in evicted]
        for k, s in evicted:
            # every evicted key was held, with that size, and is gone now
            assert before.get(k, live.get(k)) == s
            assert k not in p
            live.pop(k, None)
        assert p.used <= capacity
        assert p.used == sum(live.values())
        assert len(p) == len(live)
        assert sorted(p.keys()) == sorted(live)
        for k, s in live.items():
            assert k in p and p.size_of(k) == s


def sieve_reference(capacity: int, requests: list[tuple[int, int]]) -> list[bool]:
    """SIEVE as the paper draws it: one list (oldest first), a hand index, visited bits."""
    order: list[list] = []  # [key, size, visited]
    hand: int | None = None
    used = 0
    out = []
    for key, size in requests:
        found = next((e for e in order if e[0] == key), None)
        if found:
            found[2] = True
            out.append(True)
            continue
        out.append(False)
        if size > capacity:
            continue
        while used + size > capacity:
            h = 0 if hand is None else hand
            while order[h][2]:
                order[h][2] = False
                h = h + 1 if h + 1 < len(order) else 0
            used -= order.pop(h)[1]
            hand = h if h < len(order) else None
        order.append([key, size, False])
        used += size
    return out


@settings(max_examples=80, deadline=None)
@given(
    capacity=st.integers(1, 1500),
    requests=st.lists(st.tuples(st.integers(0, 25), st.integers(1, 300)), max_size=300),
)
def test_sieve_matches_the_papers_single_list_with_a_hand(capacity: int, requests: list) -> None:
    # A key keeps the size it was first admitted with (as a trace of fixed-size objects).
    first: dict[int, int] = {}
    reqs = [(k, first.setdefault(k, s)) for k, s in requests]
    p = SIEVE(capacity)
    assert [p.access(k, s) for k, s in reqs] == sieve_reference(capacity, reqs)


def lru_reference(capacity: int, requests: list[tuple[int, int]]) -> list[bool]:
    order: list[tuple[int, int]] = []
    out = []
    for key, size in requests:
        idx = next((i for i, e in enumerate(order) if e[0] == key), None)
        if idx is not None:
            order.append(order.pop(idx))
            out.append(True)
            continue
        out.append(False)
        if size > capacity:
            continue
        while sum(s for _, s in order) + size > capacity:
            order.pop(0)
        order.append((key, size))
    return out


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 1500),
    requests=st.lists(st.tuples(st.integers(0, 25), st.integers(1, 300)), max_size=300),
)
def test_lru_matches_a_list_model(capacity: int, requests: list) -> None:
    first: dict[int, int] = {}
    reqs = [(k, first.setdefault(k, s)) for k, s in requests]
    p = LRU(capacity)
    assert [p.access(k, s) for k, s in reqs] == lru_reference(capacity, reqs)


def test_s3fifo_keeps_popular_objects_through_a_scan_of_one_hit_wonders() -> None:
    p = S3FIFO(100)
    for _ in range(3):  # popular: 0..49, each 1 byte, requested several times
        for k in range(50):
            p.access(k, 1)
    for k in range(1000, 3000):  # a scan of one-time keys, 20x the cache
        p.access(k, 1)
    kept = sum(k in p for k in range(50))
    assert kept >= 45
    lru = LRU(100)
    for _ in range(3):
        for k in range(50):
            lru.access(k, 1)
    for k in range(1000, 3000):
        lru.access(k, 1)
    assert sum(k in lru for k in range(50)) == 0


def test_s3fifo_ghost_hit_goes_to_main_and_large_objects_are_refused() -> None:
    p = S3FIFO(1000)
    assert p.small_capacity == 100
    assert not p.admit("big", 100)  # as large as the small queue: refused
    assert "big" not in p
    for k in range(20):
        p.access(k, 10)  # small fills (100), then main until the first eviction
    for k in range(100, 200):
        p.access(k, 10)  # evictions start; the small queue's unhit objects go to the ghost
    victim = next(k for k in range(100, 200) if k not in p)
    assert p.access(victim, 10) is False  # found in the ghost...
    assert victim in p and p._nodes[victim][4] is True  # ...so admitted to the main queue


def test_sieve_visited_entries_survive_and_unvisited_go_first() -> None:
    evicted = []
    p = SIEVE(3, lambda k, s: evicted.append(k))
    for k in "abc":
        p.access(k, 1)
    p.access("a", 1)  # visited
    p.access("d", 1)  # the hand passes a (clears it) and evicts b
    assert evicted == ["b"]
    p.access("e", 1)  # the hand continues at c: unvisited, evicted
    assert evicted == ["b", "c"]
    assert set(p.keys()) == {"a", "d", "e"}


def test_zero_capacity_and_oversized_objects_are_never_admitted() -> None:
    for name in NAMES:
        p = make_policy(name, 0)
        assert p.access("k", 1) is False and "k" not in p and p.used == 0
        q = make_policy(name, 10)
        assert q.admit("k", 11) is False and q.used == 0
    with pytest.raises(ValueError, match="unknown eviction policy 'arc'"):
        make_policy("arc", 10)
    with pytest.raises(ValueError, match="capacity"):
        LRU(-1)


def test_removal_keeps_queues_bounded() -> None:
    for name in NAMES:
        p = make_policy(name, 10**9)
        for i in range(20_000):
            p.access(i, 1)
            p.remove(i)
        assert len(p) == 0 and p.used == 0
        queues = [getattr(p, a) for a in ("_ahead", "_behind", "_small", "_main") if hasattr(p, a)]
        assert sum(len(q) for q in queues) < 200


def test_default_policy_wins_on_a_zipf_trace_with_one_hit_wonders() -> None:
    """The module docstring's choice, re-measured small: the default's hit ratio is the best."""
    trace = zipf_trace(
        requests=60_000, objects=4_000, alpha=0.9, one_hit_share=0.2, rng=random.Random(7)
    )
    cap = trace.distinct_bytes // 20
    results = {name: replay(name, cap, trace) for name in NAMES}
    best = max(results.values(), key=lambda r: r.hit_ratio)
    assert best.policy == DEFAULT_POLICY
    assert results[DEFAULT_POLICY].hit_ratio > results["lru"].hit_ratio + 0.03
    for r in results.values():
        assert r.accesses_per_s > 100_000
