"""A linearizability checker for a key-value store whose keys are independent registers.

A history is a list of :class:`Op` records, one per client operation, with the client's
invocation and completion times. Each key is a register checked on its own (linearizability is
compositional: a history is linearizable iff its restriction to every key is), with the
Wing–Gong search and Lowe's memoization (a cache of (set of linearized ops, register state)),
as in Porcupine: ops are laid out as call and return entries in time order in a doubly linked
list; the search linearizes a pending call whose model step agrees with its result, and
backtracks when it meets the return of an op it has not linearized yet.

The register model (``None`` = absent):

=================  ==============================================  ==========================
kind               result                                          effect
=================  ==============================================  ==========================
``read``           the value read, ``None`` for 404                none; must equal the state
``write``          —                                               state := value
``delete``         —                                               state := None
``put_if_absent``  True (applied) / False (412)                    if state is None: := value
``put_if_match``   True / False (412 or 404)                       if state == expected: := value
=================  ==============================================  ==========================

An op with ``complete=None`` has an unknown outcome (a timeout, a 5xx): it may take effect at
any point after its invocation, or never; a conditional one that takes effect had its condition
hold. Reads with unknown outcome carry no information and are dropped.

On a violation the result names the key, the op whose completion no linearization could reach
(``stuck``), the longest partial linearization found, and a window: the ops from some start
time S to that completion which are non-linearizable *by themselves from any register state*
(ops straddling S may or may not take effect), so the window alone is a proof of the violation.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Iterable, Sequence

__all__ = ["Kind", "Op", "CheckResult", "Recorder", "check", "check_key", "AnyExcept"]


class Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    PUT_IF_ABSENT = "put_if_absent"
    PUT_IF_MATCH = "put_if_match"


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One client operation. ``complete=None``: the outcome is unknown (``result`` ignored)."""

    key: Hashable
    kind: Kind
    invoke: float
    complete: float | None
    value: Hashable = None      # written by write / put_if_*
    expected: Hashable = None   # put_if_match's condition
    result: Hashable = None     # read: the value (None = absent); put_if_*: True / False
    process: int = 0
    id: int = -1

    @property
    def unknown(self) -> bool:
        return self.complete is None

    def describe(self) -> str:
        end = "?" if self.complete is None else f"{self.complete:.3f}"
        arg = {Kind.READ: "", Kind.WRITE: repr(self.value), Kind.DELETE: "",
               Kind.PUT_IF_ABSENT: repr(self.value),
               Kind.PUT_IF_MATCH: f"{self.expected!r} -> {self.value!r}"}[self.kind]
        if self.complete is None:
            res = "unknown outcome"
        elif self.kind is Kind.READ:
            res = f"-> {self.result!r}"
        elif self.kind in (Kind.PUT_IF_ABSENT, Kind.PUT_IF_MATCH):
            res = "-> ok" if self.result else "-> failed"
        else:
            res = "-> ok"
        return (f"#{self.id} p{self.process} [{self.invoke:.3f}, {end}] {self.key!r} "
                f"{self.kind.value}({arg}) {res}")


@dataclass(frozen=True, slots=True)
class AnyExcept:
    """A register state known only not to be any of ``excluded`` (the window's unknown start)."""

    excluded: frozenset = frozenset()


def step(state: Hashable, op: Op) -> tuple[bool, Hashable]:
    """The register model: (does ``op`` agree with ``state``, the state after it)."""
    kind = op.kind
    vague = isinstance(state, AnyExcept)
    if kind is Kind.WRITE:
        return True, op.value
    if kind is Kind.DELETE:
        return True, None
    if kind is Kind.READ:
        if vague:
            return op.result not in state.excluded, op.result
        return state == op.result, state
    applied = op.result or op.complete is None  # an unknown conditional op is linearized only if applied
    want = None if kind is Kind.PUT_IF_ABSENT else op.expected
    if applied:
        ok = (want not in state.excluded) if vague else state == want
        return ok, op.value
    if vague:
        return True, AnyExcept(state.excluded | {want})
    return state != want, state


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """``ok``: True linearizable, False not, None the budget ran out first."""

    ok: bool | None
    ops: int = 0
    unknown: int = 0
    keys: int = 0
    key: Hashable = None
    reason: str = ""
    stuck: Op | None = None
    linearized: tuple[Op, ...] = ()
    window: tuple[Op, ...] = ()
    window_from_any_state: bool = False
    unknown_horizon_s: float | None = None
    steps: int = 0
    elapsed_s: float = 0.0

    def __bool__(self) -> bool:
        return self.ok is True

    def explain(self, tail: int = 12) -> str:
        head = (f"{'linearizable' if self.ok else 'NOT linearizable' if self.ok is False else 'inconclusive'}: "
                f"{self.ops} ops ({self.unknown} unknown outcome) on {self.keys} keys, "
                f"{self.steps} search steps in {self.elapsed_s:.3f}s"
                + ("" if self.unknown_horizon_s is None
                   else f", assuming unknown outcomes settle within {self.unknown_horizon_s}s"))
        if self.ok:
            return head
        lines = [head, f"key {self.key!r}: {self.reason}"]
        if self.stuck is not None:
            lines.append(f"no linearization reaches the completion of: {self.stuck.describe()}")
        if self.linearized:
            lines.append(f"longest partial linearization ({len(self.linearized)} ops), last {tail}:")
            lines += ["    " + o.describe() for o in self.linearized[-tail:]]
        if self.window:
            start = "any register state" if self.window_from_any_state else "the empty register"
            lines.append(f"window of {len(self.window)} ops, non-linearizable by itself from {start}:")
            lines += ["    " + o.describe() for o in sorted(self.window, key=lambda o: o.invoke)]
        return "\n".join(lines)


class _Budget:
    def __init__(self, deadline: float, max_steps: int):
        self.deadline = deadline
        self.max_steps = max_steps
        self.steps = 0

    def exhausted(self) -> bool:
        return self.steps >= self.max_steps or time.monotonic() > self.deadline


@dataclass(slots=True)
class _Search:
    ok: bool | None
    stuck: int = -1                 # index of the op whose return could not be reached
    stuck_at: float = -math.inf
    linearized: list[int] = field(default_factory=list)


class _Unseen:
    """The value of a write no read returned and no If-Match named: all such values behave alike."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unseen>"


UNSEEN = _Unseen()


def _canonical(ops: Sequence[Op]) -> list[Op]:
    """``ops`` with every unobserved written value replaced by :data:`UNSEEN`, so that register
    states no op can tell apart are one state in the cache."""
    observed = {o.result for o in ops if o.kind is Kind.READ} | {o.expected for o in ops if o.kind is Kind.PUT_IF_MATCH}
    return [replace(o, value=UNSEEN) if o.value is not None and o.value not in observed else o for o in ops]


def _search(ops: Sequence[Op], initial: Hashable, budget: _Budget, horizon: float | None = None,
            deadlines: Sequence[float] | None = None) -> _Search:
    """Wing–Gong with Lowe's cache over ``ops`` (one key). Unknown ops return at +inf.

    Two unknown ops with the same effect (e.g. two deletes, or two writes of unobserved values)
    are interchangeable once both are invoked, since neither ever has to be linearized: at each
    choice point only the first of each such class is tried.

    ``horizon``: an unknown op takes effect within this many seconds of its invocation or never
    (None: at any time, the strict model). ``deadlines[i]``, when given, replaces that bound for
    each unknown op ``ops[i]``."""
    n = len(ops)
    ops = _canonical(ops)
    sig = [(o.kind, o.value, o.expected) if o.complete is None else None for o in ops]
    events = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))  # at equal times a call sorts first (treated as concurrent)
        if op.complete is not None:
            end = op.complete
        elif deadlines is not None:
            end = deadlines[i]
        else:
            end = math.inf if horizon is None else op.invoke + horizon
        events.append((end, 1, i))
    events.sort()
    # entry 0 is the head sentinel; entries 1..2n follow time order; -1 ends the list
    size = 2 * n + 1
    nxt = list(range(1, size)) + [-1]
    prv = [-1] + list(range(0, size - 1))
    op_of = [-1] * size
    is_call = [False] * size
    match = [-1] * size
    call_entry = [0] * n
    for e, (_t, ret, i) in enumerate(events, start=1):
        op_of[e] = i
        if ret:
            match[call_entry[i]] = e
        else:
            is_call[e] = True
            call_entry[i] = e
    required = [op.complete is not None for op in ops]

    def lift(e: int) -> None:
        r = match[e]
        nxt[prv[e]] = nxt[e]
        if nxt[e] != -1:
            prv[nxt[e]] = prv[e]
        nxt[prv[r]] = nxt[r]
        if nxt[r] != -1:
            prv[nxt[r]] = prv[r]

    def unlift(e: int) -> None:
        r = match[e]
        nxt[prv[r]] = r
        if nxt[r] != -1:
            prv[nxt[r]] = r
        nxt[prv[e]] = e
        if nxt[e] != -1:
            prv[nxt[e]] = e

    state = initial
    lin = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable, set]] = []
    tried: set = set()  # classes of unknown ops tried at this choice point
    out = _Search(ok=None)
    e = nxt[0]
    steps = 0
    while e != -1:
        steps += 1
        if steps & 0xFFF == 0:
            budget.steps += 0x1000
            if budget.exhausted():
                return out
        i = op_of[e]
        if is_call[e]:
            if sig[i] is not None:
                if sig[i] in tried:
                    e = nxt[e]
                    continue
                tried.add(sig[i])
            ok, new = step(state, ops[i])
            if ok:
                nlin = lin | (1 << i)
                k = (nlin, new)
                if k not in cache:
                    cache.add(k)
                    stack.append((e, state, tried))
                    state, lin, tried = new, nlin, set()
                    lift(e)
                    e = nxt[0]
                    continue
            e = nxt[e]
            continue
        if not required[i]:
            if events[e - 1][0] == math.inf:
                break  # returns at +inf: every op with a known outcome is linearized
            # its horizon passed and it never took effect: linearize it as a no-op, no choice
            nlin = lin | (1 << i)
            if (nlin, state) not in cache:
                cache.add((nlin, state))
                stack.append((call_entry[i], state, None))
                lin, tried = nlin, set()
                lift(call_entry[i])
                e = nxt[0]
                continue
        else:
            t = ops[i].complete
            assert t is not None
            if t > out.stuck_at or (t == out.stuck_at and len(stack) > len(out.linearized)):
                out.stuck, out.stuck_at = i, t
                out.linearized = [op_of[frame[0]] for frame in stack if frame[2] is not None]
        while True:  # backtrack to the last real choice
            if not stack:
                budget.steps += steps & 0xFFF
                out.ok = False
                return out
            ce, state, tried = stack.pop()
            lin &= ~(1 << op_of[ce])
            unlift(ce)
            if tried is not None:
                break
        e = nxt[ce]
    budget.steps += steps & 0xFFF
    out.ok = True
    out.linearized = [op_of[frame[0]] for frame in stack if frame[2] is not None]
    return out


def _prepare(ops: Iterable[Op]) -> list[Op]:
    """Drop what carries no information: reads with unknown outcome."""
    return [o for o in ops if not (o.kind is Kind.READ and o.complete is None)]


def _window(ops: Sequence[Op], start: float, end: float,
            horizon: float | None = None) -> tuple[list[Op], list[float]]:
    """Ops of the prefix up to ``end`` from ``start`` on, relaxed so that the window is linearizable
    from some state whenever the whole history is: ops invoked after ``end`` are dropped, ops still
    running at ``end`` become optional, ops straddling ``start`` become optional and start there.
    Returns the ops and, for each, the time by which it takes effect if it ever does."""
    out = []
    deadlines = []
    for o in ops:
        if o.invoke > end or (o.complete is not None and o.complete < start):
            continue
        if o.complete is None and horizon is not None and o.invoke + horizon < start:
            continue  # settled (as a no-op, or folded into the start state) before the window
        optional = (o.complete is not None and o.complete > end) or o.invoke < start
        if optional and (o.kind is Kind.READ or (o.complete is not None and o.result is False)):
            continue  # may be placed after the window, and has no effect: no constraint left
        deadline = math.inf if horizon is None or o.complete is not None else o.invoke + horizon
        if optional:
            o = replace(o, invoke=max(o.invoke, start), complete=None)
        out.append(o)
        deadlines.append(deadline)
    return out, deadlines


def _shrink(ops: Sequence[Op], stuck: Op, budget: _Budget, horizon: float | None) -> list[Op]:
    """The shortest window (latest start) found that fails from any state, or [] if none within budget."""
    end = stuck.complete
    assert end is not None
    starts = sorted({o.invoke for o in ops if o.invoke <= stuck.invoke}, reverse=True)
    for s in starts:
        if budget.exhausted():
            return []
        w, deadlines = _window(ops, s, end, horizon)
        if _search(w, AnyExcept(), budget, horizon, deadlines).ok is False:
            return w
    return []


def check_key(ops: Sequence[Op], *, key: Hashable = None, timeout_s: float = 10.0,
              max_steps: int = 50_000_000, shrink_s: float = 2.0,
              unknown_horizon_s: float | None = None) -> CheckResult:
    """Check the history of one register (every op of ``ops`` is taken to be on that key).

    ``unknown_horizon_s``: assume an op with unknown outcome took effect within this long of its
    invocation or never. None (the default) is the strict model; a horizon keeps long histories
    with many unknown outcomes tractable at the price of that assumption."""
    t0 = time.monotonic()
    ops = [o if o.id >= 0 else replace(o, id=i) for i, o in enumerate(_prepare(ops))]
    for o in ops:
        if o.complete is not None and o.complete < o.invoke:
            raise ValueError(f"op completes before it is invoked: {o.describe()}")
    budget = _Budget(t0 + timeout_s, max_steps)
    found = _search(ops, None, budget, unknown_horizon_s)
    base = dict(ops=len(ops), unknown=sum(o.unknown for o in ops), keys=1, key=key, steps=budget.steps,
                unknown_horizon_s=unknown_horizon_s)
    if found.ok is True:
        return CheckResult(ok=True, **{**base, "key": None}, elapsed_s=time.monotonic() - t0)
    if found.ok is None:
        return CheckResult(ok=None, reason=f"search budget ({timeout_s}s / {max_steps} steps) exhausted",
                           **base, elapsed_s=time.monotonic() - t0)
    stuck = ops[found.stuck]
    linearized = tuple(ops[i] for i in found.linearized)
    window = _shrink(ops, stuck, _Budget(time.monotonic() + shrink_s, max_steps), unknown_horizon_s)
    from_any = bool(window)
    if not window:
        window = _window(ops, -math.inf, stuck.complete or math.inf, unknown_horizon_s)[0]
    return CheckResult(ok=False, reason=_reason(window, stuck), stuck=stuck, linearized=linearized,
                       window=tuple(window), window_from_any_state=from_any,
                       **{**base, "steps": budget.steps}, elapsed_s=time.monotonic() - t0)


def _reason(window: Sequence[Op], stuck: Op) -> str:
    written = {o.value for o in window if o.kind is not Kind.READ and o.kind is not Kind.DELETE}
    if stuck.kind is Kind.READ and stuck.result is not None and stuck.result not in written:
        return f"read {stuck.result!r}, a value no op in the window wrote (stale, or never written)"
    if stuck.kind is Kind.READ:
        return f"read {stuck.result!r}, which no order of the concurrent writes explains"
    if stuck.kind is Kind.PUT_IF_ABSENT and stuck.result:
        return "put_if_absent succeeded on a key that every order shows present"
    if stuck.kind is Kind.PUT_IF_MATCH and stuck.result:
        return f"put_if_match succeeded though the register never held {stuck.expected!r} when it could run"
    if stuck.kind in (Kind.PUT_IF_ABSENT, Kind.PUT_IF_MATCH):
        return f"{stuck.kind.value} failed though its condition held in every order"
    return f"{stuck.kind.value} cannot be placed"


def check(history: Iterable[Op], *, timeout_s: float = 30.0, max_steps: int = 200_000_000,
          shrink_s: float = 2.0, unknown_horizon_s: float | None = None) -> CheckResult:
    """Check a whole history, key by key; the first key that is not linearizable is reported
    (an inconclusive key is reported only if no key fails)."""
    t0 = time.monotonic()
    by_key: dict[Hashable, list[Op]] = {}
    for i, o in enumerate(history):
        by_key.setdefault(o.key, []).append(o if o.id >= 0 else replace(o, id=i))
    total = sum(len(v) for v in by_key.values())
    unknown = sum(o.unknown for v in by_key.values() for o in v)
    steps = 0
    inconclusive: CheckResult | None = None
    for key in sorted(by_key, key=repr):
        left = timeout_s - (time.monotonic() - t0)
        r = check_key(by_key[key], key=key, timeout_s=max(left, 0.0), max_steps=max_steps, shrink_s=shrink_s,
                      unknown_horizon_s=unknown_horizon_s)
        steps += r.steps
        if r.ok is False:
            return replace(r, ops=total, unknown=unknown, keys=len(by_key), steps=steps,
                           elapsed_s=time.monotonic() - t0)
        if r.ok is None and inconclusive is None:
            inconclusive = r
    if inconclusive is not None:
        return replace(inconclusive, ops=total, unknown=unknown, keys=len(by_key), steps=steps,
                       elapsed_s=time.monotonic() - t0)
    return CheckResult(ok=True, ops=total, unknown=unknown, keys=len(by_key), steps=steps,
                       unknown_horizon_s=unknown_horizon_s, elapsed_s=time.monotonic() - t0)


class Recorder:
    """A thread-safe history: ``i = rec.invoke(...)`` before the request, then ``rec.ok(i, result)``,
    ``rec.unknown(i)`` (timeout, 5xx) or ``rec.discard(i)`` (known to have had no effect)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._ops: list[Op | None] = []

    def invoke(self, *, process: int, key: Hashable, kind: Kind, value: Hashable = None,
               expected: Hashable = None) -> int:
        with self._lock:
            self._ops.append(Op(key=key, kind=kind, invoke=self.clock(), complete=None, value=value,
                                expected=expected, process=process, id=len(self._ops)))
            return len(self._ops) - 1

    def ok(self, i: int, result: Hashable = None) -> Op:
        op = self._ops[i]
        assert op is not None
        done = replace(op, complete=self.clock(), result=result)
        self._ops[i] = done
        return done

    def unknown(self, i: int) -> None:
        pass  # invoked, never completed: complete stays None

    def discard(self, i: int) -> None:
        self._ops[i] = None

    def history(self) -> list[Op]:
        with self._lock:
            return [o for o in self._ops if o is not None]
