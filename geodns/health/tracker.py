"""POP health, sans-IO: probe results in, an up/down (and full/not full) view out.

Each POP has rise/fall hysteresis: an up POP goes down after ``fall`` failed probes in a row, a
down POP comes back after ``rise`` good ones, so one lost probe neither drops a POP nor lets a
flapping one back. The prober (:mod:`headwater.dns.health.prober`) feeds :meth:`HealthTracker.record`;
the steering reads :meth:`~HealthTracker.is_up`, :meth:`~HealthTracker.is_full` and
:attr:`~HealthTracker.generation` (which moves whenever either view changes, so an answer
cache keyed by it never serves a POP that has just gone down).

**A POP starts up ("unknown", counted as up) and needs ``fall`` failures to go down.** Starting
down would make every restart, reload or new worker answer fail-open (every POP, nearest or not)
for ``rise`` intervals, and several GeoDNS instances restarted at different times would disagree
for that long; starting up costs nothing new, since a POP that is really down is dropped after
``fall`` probes, the same time a running instance takes to notice a POP that has just failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, Sequence

from headwater.clock import SYSTEM_CLOCK, Clock

__all__ = ["ProbedPop", "HealthView", "PopHealth", "HealthTracker", "StaticHealthView", "parse_load"]

State = Literal["unknown", "up", "down"]


class ProbedPop(Protocol):
    """What the tracker and the prober need of a POP (``steering.config.Pop`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def healthz(self) -> str: ...
    @property
    def max_load(self) -> float | None: ...


class HealthView(Protocol):
    """The health the steering answers from (a :class:`HealthTracker`, or a :class:`StaticHealthView`)."""

    @property
    def generation(self) -> int: ...
    def is_up(self, pop: str) -> bool: ...
    def is_full(self, pop: str) -> bool: ...
    def load(self, pop: str) -> float | None: ...
    def state(self, pop: str) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PopHealth:
    """One POP's health as the tracker sees it (``last_*`` are wall-clock seconds, None: never)."""

    name: str
    state: State
    load: float | None = None
    full: bool = False
    successes: int = 0          # good probes in a row
    failures: int = 0           # failed probes in a row
    probes: int = 0
    last_probe: float | None = None
    last_change: float | None = None
    last_error: str = ""

    @property
    def up(self) -> bool:
        return self.state != "down"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "up": self.up, "load": self.load, "full": self.full,
                "successes": self.successes, "failures": self.failures, "probes": self.probes,
                "last_probe": self.last_probe, "last_change": self.last_change,
                "last_error": self.last_error}


def parse_load(value: Any) -> float | None:
    """A ``load`` from a /healthz JSON body: a finite number >= 0, else None (not reported)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _full(load: float | None, max_load: float | None) -> bool:
    return load is not None and max_load is not None and load >= max_load


class HealthTracker:
    """Per-POP rise/fall state (see the module docstring). Not thread-safe: one event loop owns it."""

    def __init__(self, pops: Sequence[ProbedPop], rise: int, fall: int, clock: Clock = SYSTEM_CLOCK) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall
        self.clock = clock
        self.generation = 0
        self._pops: dict[str, ProbedPop] = {}
        self._health: dict[str, PopHealth] = {}
        self.set_pops(pops)

    @property
    def pops(self) -> tuple[ProbedPop, ...]:
        """The POPs tracked, in configuration order."""
        return tuple(self._pops.values())

    def set_pops(self, pops: Sequence[ProbedPop]) -> None:
        """Track ``pops`` (a reload): POPs kept by name keep their state, new ones start unknown."""
        names = [p.name for p in pops]
        if len(set(names)) != len(names):
            raise ValueError("POP names must be unique")
        old = self._health
        self._pops = {p.name: p for p in pops}
        self._health = {}
        for p in pops:
            h = old.get(p.name) or PopHealth(name=p.name, state="unknown")
            full = _full(h.load, p.max_load)
            self._health[p.name] = h if h.full == full else _replace(h, full=full)
        self.generation += 1

    def record(self, pop: str, ok: bool, load: float | None = None, *, error: str = "") -> bool:
        """One probe of ``pop``: ``ok`` and the ``load`` it reported (None: none). True when
        the view changed (up/down or full/not full), which also bumps :attr:`generation`."""
        h = self._health[pop]
        now = self.clock.time()
        state: State = h.state
        if ok:
            successes, failures = h.successes + 1, 0
            if h.state == "down" and successes >= self.rise:
                state = "up"
            elif h.state == "unknown":
                state = "up"  # it was counted as up already: confirmed, not a change of view
            new_load = load
        else:
            successes, failures = 0, h.failures + 1
            if h.state != "down" and failures >= self.fall:
                state = "down"
            new_load = h.load  # a failed probe tells nothing of load; keep the last report
        full = _full(new_load, self._pops[pop].max_load)
        view_changed = (state == "down") != (h.state == "down") or full != h.full
        self._health[pop] = PopHealth(
            name=pop, state=state, load=new_load, full=full, successes=successes, failures=failures,
            probes=h.probes + 1, last_probe=now,
            last_change=now if state != h.state else h.last_change,
            last_error="" if ok else (error or "probe failed"),
        )
        if view_changed:
            self.generation += 1
        return view_changed

    def health(self, pop: str) -> PopHealth:
        return self._health[pop]

    def is_up(self, pop: str) -> bool:
        """Up or not yet probed enough to be down. A POP this tracker does not know is up."""
        h = self._health.get(pop)
        return h is None or h.state != "down"

    def is_full(self, pop: str) -> bool:
        h = self._health.get(pop)
        return h is not None and h.full

    def load(self, pop: str) -> float | None:
        h = self._health.get(pop)
        return None if h is None else h.load

    def state(self, pop: str) -> str:
        h = self._health.get(pop)
        return "unknown" if h is None else h.state

    def snapshot(self) -> dict[str, PopHealth]:
        """Every POP's health, in configuration order (frozen records: safe to keep)."""
        return dict(self._health)

    def to_json(self) -> dict[str, Any]:
        """The snapshot as JSON (the DNS daemon's /healthz; :class:`StaticHealthView` reads it back)."""
        return {"generation": self.generation, "rise": self.rise, "fall": self.fall,
                "pops": {name: h.to_json() for name, h in self._health.items()}}


class StaticHealthView:
    """A frozen health view, from :meth:`HealthTracker.to_json` (``headwater dns explain`` reads
    the daemon's) or from nothing (every POP unknown, so up)."""

    def __init__(self, pops: Mapping[str, PopHealth] | None = None, *, generation: int = 0) -> None:
        self._health = dict(pops or {})
        self.generation = generation

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StaticHealthView:
        """Read :meth:`HealthTracker.to_json` output back (unknown fields ignored, bad ones dropped)."""
        pops: dict[str, PopHealth] = {}
        raw = data.get("pops", {}) if isinstance(data, Mapping) else {}
        for name, h in (raw.items() if isinstance(raw, Mapping) else ()):
            if not isinstance(name, str) or not isinstance(h, Mapping):
                continue
            state = h.get("state")
            pops[name] = PopHealth(
                name=name, state=state if state in ("unknown", "up", "down") else "unknown",
                load=parse_load(h.get("load")), full=h.get("full") is True,
                successes=_int(h.get("successes")), failures=_int(h.get("failures")),
                probes=_int(h.get("probes")), last_probe=_num(h.get("last_probe")),
                last_change=_num(h.get("last_change")), last_error=str(h.get("last_error") or ""))
        gen = data.get("generation", 0) if isinstance(data, Mapping) else 0
        return cls(pops, generation=gen if isinstance(gen, int) else 0)

    def health(self, pop: str) -> PopHealth | None:
        return self._health.get(pop)

    def is_up(self, pop: str) -> bool:
        h = self._health.get(pop)
        return h is None or h.state != "down"

    def is_full(self, pop: str) -> bool:
        h = self._health.get(pop)
        return h is not None and h.full

    def load(self, pop: str) -> float | None:
        h = self._health.get(pop)
        return None if h is None else h.load

    def state(self, pop: str) -> str:
        h = self._health.get(pop)
        return "unknown" if h is None else h.state


def _replace(h: PopHealth, **changes: Any) -> PopHealth:
    from dataclasses import replace

    return replace(h, **changes)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
