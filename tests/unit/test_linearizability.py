"""The register linearizability checker of tests/linearizability.py, against known histories,
a brute-force checker on small random histories, and simulated atomic registers."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.linearizability import AnyExcept, Kind, Op, Recorder, check, check_key, step

R, W, D, PIA, PIM = Kind.READ, Kind.WRITE, Kind.DELETE, Kind.PUT_IF_ABSENT, Kind.PUT_IF_MATCH


def op(kind, t0, t1, *, value=None, expected=None, result=None, key="k", p=0):
    return Op(key=key, kind=kind, invoke=t0, complete=t1, value=value, expected=expected, result=result, process=p)


def read(t0, t1, result, **kw):
    return op(R, t0, t1, result=result, **kw)


def write(t0, t1, value, **kw):
    return op(W, t0, t1, value=value, **kw)


# --- known histories ----------------------------------------------------------------------------

def test_empty_and_sequential():
    assert check([]).ok
    h = [read(0, 1, None), write(2, 3, "a"), read(4, 5, "a"), op(D, 6, 7), read(8, 9, None),
         op(PIA, 10, 11, value="b", result=True), op(PIA, 12, 13, value="c", result=False),
         op(PIM, 14, 15, expected="b", value="d", result=True), op(PIM, 16, 17, expected="b", value="e", result=False),
         read(18, 19, "d")]
    r = check(h)
    assert r.ok and r.ops == len(h) and r.keys == 1, r.explain()


def test_concurrent_read_may_see_either():
    for seen in ("a", "b"):
        h = [write(0, 1, "a"), write(2, 10, "b"), read(3, 4, seen)]
        assert check(h).ok
    # both orders within one read's lifetime, but the two reads must agree on one order
    h = [write(0, 10, "a", p=0), write(0, 10, "b", p=1), read(1, 11, "a", p=2), read(1, 11, "b", p=3),
         read(12, 13, "b", p=2)]
    assert check(h).ok
    h += [read(14, 15, "a", p=3)]
    assert check(h).ok is False


def test_stale_read_after_acknowledged_write():
    h = [write(0, 1, "a", p=0), write(2, 3, "b", p=0), read(4, 5, "a", p=1)]
    r = check(h)
    assert r.ok is False and r.key == "k"
    assert r.stuck is not None and r.stuck.kind is R and r.stuck.result == "a"
    assert r.window_from_any_state
    assert {(o.kind, o.value or o.result) for o in r.window} == {(W, "b"), (R, "a")}
    assert "NOT linearizable" in r.explain()


def test_two_successful_put_if_absent():
    for second in [(2, 3), (0.5, 3)]:  # after, and overlapping
        h = [op(PIA, 0, 1, value="a", result=True, p=0), op(PIA, *second, value="b", result=True, p=1)]
        r = check(h)
        assert r.ok is False and r.stuck.kind is PIA, r.explain()
    # a delete in between makes it fine
    h = [op(PIA, 0, 1, value="a", result=True), op(D, 2, 3), op(PIA, 4, 5, value="b", result=True)]
    assert check(h).ok


def test_read_of_a_value_never_written():
    h = [write(0, 1, "a"), read(2, 3, "zzz")]
    r = check(h)
    assert r.ok is False and "no op in the window wrote" in r.reason
    # not even concurrent with a read of absent
    assert check([read(0, 1, "ghost")]).ok is False


def test_read_may_not_precede_the_write():
    assert check([read(0, 1, "a"), write(2, 3, "a")]).ok is False
    assert check([read(0, 2.5, "a"), write(2, 3, "a")]).ok


def test_failed_conditions():
    # put_if_absent fails only if something is there
    assert check([op(PIA, 0, 1, value="a", result=False)]).ok is False
    assert check([write(0, 1, "x"), op(PIA, 2, 3, value="a", result=False)]).ok
    # put_if_match on an absent key fails; on the matching value it must succeed
    assert check([op(PIM, 0, 1, expected="x", value="a", result=False)]).ok
    assert check([write(0, 1, "x"), op(PIM, 2, 3, expected="x", value="a", result=False)]).ok is False
    assert check([write(0, 1, "x"), op(PIM, 2, 3, expected="y", value="a", result=True)]).ok is False
    # two successful compare-and-sets from the same value cannot both win
    h = [write(0, 1, "x"), op(PIM, 2, 5, expected="x", value="a", result=True, p=1),
         op(PIM, 2, 5, expected="x", value="b", result=True, p=2)]
    assert check(h).ok is False


def test_unknown_outcomes():
    # an unknown write may take effect late...
    h = [write(0, None, "a", p=0), read(5, 6, None, p=1), read(7, 8, "a", p=1), read(9, 10, "a", p=2)]
    assert check(h).ok
    # ...or never
    assert check([write(0, None, "a"), read(5, 6, None), read(7, 8, None)]).ok
    # but not before it was invoked
    assert check([read(0, 1, "a"), write(2, None, "a")]).ok is False
    # and once seen it is there to stay (until overwritten)
    assert check([write(0, None, "a"), read(5, 6, "a"), read(7, 8, None)]).ok is False
    # an unknown put_if_absent that took effect found the key absent
    h = [write(0, 1, "x"), op(PIA, 2, None, value="a"), read(5, 6, "a")]
    assert check(h).ok is False
    h = [write(0, 1, "x"), op(PIA, 2, None, value="a"), op(D, 3, 4), read(5, 6, "a")]
    assert check(h).ok
    # an unknown read carries nothing
    r = check([write(0, 1, "a"), read(2, None, "nonsense")])
    assert r.ok and r.ops == 2 and r.unknown == 1
    # an unknown write can explain a failed conditional write
    h = [write(0, 1, "x"), write(1.5, None, "y"), op(PIM, 2, 3, expected="x", value="z", result=False)]
    assert check(h).ok


def test_keys_are_independent():
    h = [write(0, 1, "a", key="k1"), write(0, 1, "b", key="k2"), read(2, 3, "a", key="k1"),
         read(2, 3, "a", key="k2")]
    r = check(h)
    assert r.ok is False and r.key == "k2" and r.keys == 2


def test_window_is_local_to_the_violation():
    rng = random.Random(7)
    h = simulate(rng, n_ops=400, keys=["k"], processes=4)
    last = max(o.complete for o in h if o.complete is not None)
    h.append(write(last + 1, last + 2, "fresh", p=9))
    h.append(read(last + 3, last + 4, None, p=9))  # stale: the register holds "fresh"
    r = check(h)
    assert r.ok is False and r.stuck.result is None and r.window_from_any_state
    assert len(r.window) <= 5, r.explain()


def test_recorder():
    clock = itertools.count()
    rec = Recorder(clock=lambda: float(next(clock)))
    a = rec.invoke(process=0, key="k", kind=W, value="a")
    b = rec.invoke(process=1, key="k", kind=R)
    c = rec.invoke(process=2, key="k", kind=W, value="c")
    d = rec.invoke(process=3, key="k", kind=PIM, expected="a", value="d")
    rec.ok(a)
    rec.ok(b, "a")
    rec.unknown(c)
    rec.discard(d)
    h = rec.history()
    assert [o.id for o in h] == [0, 1, 2] and h[2].unknown and h[1].complete == 5.0
    assert check(h).ok


# --- against brute force -------------------------------------------------------------------------

def brute_force(ops: list[Op], initial=None) -> bool:
    ops = [o for o in ops if not (o.kind is R and o.complete is None)]
    optional = [o for o in ops if o.complete is None]
    required = [o for o in ops if o.complete is not None]
    for n in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, n):
            for perm in itertools.permutations(required + list(chosen)):
                if _respects_real_time(perm) and _runs(perm, initial):
                    return True
    return False


def _respects_real_time(perm) -> bool:
    return all(not (b.complete is not None and b.complete < a.invoke)
               for i, a in enumerate(perm) for b in perm[i + 1:])


def _runs(perm, state) -> bool:
    for o in perm:
        ok, state = step(state, o)
        if not ok:
            return False
    return True


VALUES = ["a", "b", "c"]


@st.composite
def small_histories(draw):
    n = draw(st.integers(0, 6))
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from(list(Kind)))
        t0 = draw(st.integers(0, 8))
        t1 = None if draw(st.integers(0, 5)) == 0 else t0 + draw(st.integers(0, 4))
        value = draw(st.sampled_from(VALUES)) if kind in (W, PIA, PIM) else None
        expected = draw(st.sampled_from(VALUES)) if kind is PIM else None
        if kind is R:
            result = draw(st.sampled_from([None, *VALUES]))
        elif kind in (PIA, PIM):
            result = draw(st.booleans())
        else:
            result = None
        ops.append(Op(key="k", kind=kind, invoke=t0, complete=t1, value=value, expected=expected,
                      result=result, process=i))
    return ops


@settings(max_examples=400, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(h):
    r = check_key(h)
    assert r.ok is brute_force(h), "\n".join(o.describe() for o in h)
    if r.ok is False and r.window_from_any_state:
        # the window alone is a violation whatever the register held when it starts
        for initial in [None, *VALUES, "other"]:
            assert not brute_force(list(r.window), initial), r.explain()


def test_any_state_model():
    any_ = AnyExcept()
    assert step(any_, read(0, 1, "q")) == (True, "q")
    ok, s = step(any_, op(PIA, 0, 1, value="a", result=False))
    assert ok and s == AnyExcept(frozenset({None}))
    assert step(s, read(0, 1, None))[0] is False
    assert step(s, op(PIA, 0, 1, value="a", result=True))[0] is False


# --- simulated atomic registers -----------------------------------------------------------------

def simulate(rng: random.Random, *, n_ops: int, keys: list[str], processes: int,
             unknown_rate: float = 0.0) -> list[Op]:
    """Processes run ops back to back on atomic registers; each op takes effect at a random
    point inside its interval, so the history is linearizable by construction."""
    state = {k: None for k in keys}
    free_at = [0.0] * processes
    pending: list[tuple[float, int, dict]] = []
    out: list[Op] = []
    seq = itertools.count()
    for _ in range(n_ops):
        p = rng.randrange(processes)
        t0 = free_at[p] + rng.random() * 0.5
        t1 = t0 + 0.1 + rng.random() * 2.0
        at = rng.uniform(t0, t1)
        free_at[p] = t1
        kind = rng.choice([R, R, W, D, PIA, PIM])
        key = rng.choice(keys)
        pending.append((at, next(seq), dict(kind=kind, key=key, p=p, t0=t0, t1=t1)))
    pending.sort()
    last_value = {k: None for k in keys}
    for at, i, d in pending:
        kind, key = d["kind"], d["key"]
        value = f"v{i}" if kind in (W, PIA, PIM) else None
        expected = None
        if kind is PIM:  # half the time the current value, else the last one seen (maybe stale)
            expected = (state[key] if rng.random() < 0.5 else last_value[key]) or "nothing"
        o = with_result(Op(key=key, kind=kind, invoke=d["t0"], complete=d["t1"], value=value,
                           expected=expected, process=d["p"]), state[key])
        ok, state[key] = step(state[key], o)
        assert ok
        last_value[key] = state[key] or last_value[key]
        if kind is not R and rng.random() < unknown_rate:
            o = replace(o, complete=None, result=None)
        out.append(o)
    out.sort(key=lambda o: o.invoke)
    return out


def with_result(o: Op, state) -> Op:
    if o.kind is R:
        result = state
    elif o.kind is PIA:
        result = state is None
    elif o.kind is PIM:
        result = state == o.expected
    else:
        result = None
    return replace(o, result=result)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 80), st.integers(1, 5))
def test_simulated_registers_are_linearizable(seed, n_ops, processes):
    h = simulate(random.Random(seed), n_ops=n_ops, keys=["x", "y"], processes=processes, unknown_rate=0.1)
    r = check(h)
    assert r.ok, r.explain()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(5, 80))
def test_a_forged_read_is_caught(seed, n_ops):
    rng = random.Random(seed)
    h = simulate(rng, n_ops=n_ops, keys=["x"], processes=3)
    reads = [i for i, o in enumerate(h) if o.kind is R]
    if not reads:
        return
    i = rng.choice(reads)
    h[i] = replace(h[i], result="forged")
    r = check(h)
    assert r.ok is False and r.stuck.result == "forged", r.explain()


@pytest.mark.timeout(120)
def test_thousands_of_ops_are_checked():
    # Speed is the checker benchmark's business, not a timed test's (a shared machine makes any
    # wall-clock bound flaky); the timeout only catches an exponential blow-up of the search.
    rng = random.Random(1)
    h = simulate(rng, n_ops=3000, keys=[f"k{i}" for i in range(5)], processes=6, unknown_rate=0.03)
    r = check(h)
    assert r.ok, r.explain()
    assert r.ops == 3000 and r.unknown > 0
    # a violation at the very end is found, and explained
    last = max(o.complete for o in h if o.complete is not None)
    h += [write(last + 1, last + 2, "final", key="k3"), read(last + 3, last + 4, "stale", key="k3")]
    r = check(h)
    assert r.ok is False and r.key == "k3"


def test_unknown_horizon():
    # an unknown write that took effect long after it was invoked: fine in the strict model,
    # not within a horizon
    h = [write(0, None, "a", p=0), read(50, 51, None, p=1), read(100, 101, "a", p=1)]
    assert check(h).ok
    assert check(h, unknown_horizon_s=30).ok is False
    assert check(h, unknown_horizon_s=200).ok
    # one that never took effect is fine either way
    h = [write(0, 1, "x"), write(2, None, "a"), read(100, 101, "x")]
    assert check(h).ok and check(h, unknown_horizon_s=30).ok


@settings(max_examples=300, deadline=None)
@given(small_histories(), st.integers(0, 6))
def test_horizon_agrees_with_brute_force(h, horizon):
    # within a horizon an unknown op is an op that completes (applied) at invoke + horizon, or none at all
    bounded = [o if o.complete is not None else replace(o, complete=o.invoke + horizon, result=True) for o in h]
    optional = [i for i, o in enumerate(h) if o.complete is None and o.kind is not R]
    want = any(brute_force([o for i, o in enumerate(bounded) if i not in dropped and
                            not (h[i].complete is None and h[i].kind is R)])
               for n in range(len(optional) + 1) for dropped in itertools.combinations(optional, n))
    assert check_key(h, unknown_horizon_s=horizon).ok is want, "\n".join(o.describe() for o in h)


@pytest.mark.timeout(120)
def test_many_unknown_outcomes_are_checked():
    rng = random.Random(3)
    h = simulate(rng, n_ops=6000, keys=[f"k{i}" for i in range(5)], processes=6, unknown_rate=0.25)
    assert check(h).ok
    last = max(o.complete for o in h if o.complete is not None)
    h += [write(last + 1, last + 2, "final", key="k3"), read(last + 3, last + 4, "stale", key="k3")]
    r = check(h, unknown_horizon_s=10)
    assert r.ok is False and r.key == "k3" and r.window_from_any_state, r.explain()
