"""Sweeps: the cartesian product of ``--sweep name=v1,v2,...`` run as separate simulations,
in local processes or on a Dask cluster (``distributed``) given its scheduler's address.

A point is a scenario with its parameters replaced (``Scenario.with_sweep``); a worker runs
it whole and sends back its ``Summary`` (plain numbers), so a sweep that outgrows one machine
runs unchanged on a cluster whose workers have this package installed. Points that differ only
in cache settings (ttl, policy, ram, disk) share one generated stream: a task is such a group.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from headwater.config import parse_size

from .scenario import Scenario, parse_duration

__all__ = ["parse_sweeps", "sweep_points", "run_point", "run_group", "run_sweep", "label"]

_PARSERS: dict[str, Callable[[str], Any]] = {
    "segment": lambda v: parse_duration(v if not v.replace(".", "").isdigit() else float(v), "segment"),
    "ttl": lambda v: parse_duration(v if not v.replace(".", "").isdigit() else float(v), "ttl"),
    "policy": str,
    "rate": float,
    "ram": lambda v: parse_size(v, "ram"),
    "disk": lambda v: parse_size(v, "disk"),
    "promote": lambda v: parse_size(v, "promote"),
    "promote_rate": lambda v: parse_size(v, "promote_rate"),
}


def parse_sweeps(specs: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["segment=1,2,4", "ttl=10s,1h"]`` -> ``[("segment", [1.0, 2.0, 4.0]), ("ttl", [10.0, 3600.0])]``."""
    out = []
    for spec in specs:
        name, eq, values = spec.partition("=")
        name = name.strip()
        if not eq or name not in _PARSERS or not values.strip():
            raise ValueError(f"--sweep {spec!r}: expected NAME=V1,V2,... with NAME one of {', '.join(_PARSERS)}")
        out.append((name, [_PARSERS[name](v.strip()) for v in values.split(",") if v.strip()]))
    return out


def sweep_points(sweeps: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination, the first sweep varying slowest."""
    names = [n for n, _ in sweeps]
    return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in sweeps))]


def label(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


# Parameters that change the generated stream; the others (ttl, policy, ram, disk, promote) change
# only the caches, so points differing only in those share one stream.
_WORKLOAD = ("segment", "rate")


def _apply(scenario: Scenario, point: dict[str, Any]) -> Scenario:
    for name, value in point.items():
        scenario = scenario.with_sweep(name, value)
    return scenario


def run_point(scenario: Scenario, point: dict[str, Any]):
    """One sweep point, run whole in this process: its ``Summary``."""
    return run_group(scenario, [point])[0]


def run_group(scenario: Scenario, points: list[dict[str, Any]], workers: int = 1) -> list:
    """Points that share a workload: the stream generated once, each point's caches run on it
    (``workers`` processes for its POPs, when the group is the whole sweep)."""
    from .engine import prepare, simulate
    from .report import summarise

    first = _apply(scenario, points[0])
    prepared = prepare(first)
    out = []
    for p in points:
        sc = _apply(scenario, p)
        run = simulate(sc, prepared=prepared, workers=workers)
        out.append(summarise(run))
    return out


def _groups(points: list[dict[str, Any]]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(tuple(p.get(k) for k in _WORKLOAD), []).append(i)
    return list(groups.values())


def run_sweep(scenario: Scenario, points: list[dict[str, Any]], *, workers: int = 2,
              dask_address: str | None = None,
              on_done: Callable[[int, Any], None] | None = None) -> list:
    """Each point's ``Summary``, in the order of ``points``. ``on_done(i, summary)`` as each ends."""
    results: list = [None] * len(points)
    groups = _groups(points)

    def finished(g: list[int], summaries: list) -> None:
        for i, summary in zip(g, summaries):
            results[i] = summary
            if on_done:
                on_done(i, summary)

    if dask_address:
        from distributed import Client, as_completed as dask_completed

        with Client(dask_address) as client:
            futures = [client.submit(run_group, scenario, [points[i] for i in g], pure=False) for g in groups]
            index = {f.key: gi for gi, f in enumerate(futures)}
            for fut in dask_completed(futures):
                finished(groups[index[fut.key]], fut.result())
        return results
    if workers <= 1 or len(groups) == 1:
        for g in groups:
            finished(g, run_group(scenario, [points[i] for i in g], workers=workers))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futs = {pool.submit(run_group, scenario, [points[i] for i in g]): gi for gi, g in enumerate(groups)}
        for fut in as_completed(futs):
            finished(groups[futs[fut]], fut.result())
    return results
