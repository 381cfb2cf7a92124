"""Rendezvous hashing of cache keys over the regional tier, and marking regionals down."""

from __future__ import annotations

from collections import Counter

from headwater.edge.tiers import TierRouter, Upstream, rendezvous_order

NODES = [Upstream(id=f"regional-{i}", host="127.0.0.1", port=8090 + i) for i in range(1, 5)]
KEYS = [f"video/titles/{i}/seg-{j:05d}.m4s".encode() for i in range(20) for j in range(100)]


def test_keys_spread_over_every_regional():
    counts = Counter(rendezvous_order(k, NODES)[0].id for k in KEYS)
    assert set(counts) == {n.id for n in NODES}
    assert min(counts.values()) > len(KEYS) / len(NODES) * 0.8


def test_a_dead_regionals_keys_move_to_the_others_and_no_other_key_moves():
    before = {k: rendezvous_order(k, NODES)[0].id for k in KEYS}
    survivors = [n for n in NODES if n.id != "regional-2"]
    after = {k: rendezvous_order(k, survivors)[0].id for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "regional-2"}
    assert len(Counter(after[k] for k in moved)) == 3  # spread over all three, not dumped on one


def test_a_regional_is_down_after_fall_failures_and_retried_after_down_seconds():
    now = [100.0]
    router = TierRouter(NODES, fall=2, down_s=10.0, clock=lambda: now[0])
    key = KEYS[0]
    first = router.choose(key)
    assert router.failed(first.id) is False
    assert router.choose(key) == first
    assert router.failed(first.id) is True
    assert router.choose(key) != first and router.state()[first.id] == "down"
    assert router.order(key)[-1] == first  # still tried last, when everything else fails
    now[0] += 10.0
    assert router.choose(key) == first  # retried
    assert router.failed(first.id) is True  # one more failure: down again at once
    assert router.choose(key) != first
    now[0] += 10.0
    router.succeeded(first.id)
    assert router.choose(key) == first and router.state()[first.id] == "up"


def test_every_regional_down_still_gives_an_upstream():
    router = TierRouter(NODES[:2], fall=1, clock=lambda: 0.0)
    for n in NODES[:2]:
        router.failed(n.id)
    assert router.choose(b"k") in NODES[:2]
