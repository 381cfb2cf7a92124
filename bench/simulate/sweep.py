"""Sweeps: the cartesian product of ``--sweep name=v1,v2,...`` run as separate simulations,
in local processes or on a Dask cluster (``distributed``) given its scheduler's address.

A point is a scenario with its parameters replaced (``Scenario.with_sweep``); a worker runs
it whole and sends back its ``Summary`` (plain numbers), so a sweep that outgrows one machine
runs unchanged on a cluster whose workers have this package installed.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from headwater.config import parse_size

from .scenario import Scenario, parse_duration

__all__ = ["parse_sweeps", "sweep_points", "run_point", "run_sweep", "label"]

_PARSERS: dict[str, Callable[[str], Any]] = {
    "segment": lambda v: parse_duration(v if not v.replace(".", "").isdigit() else float(v), "segment"),
    "ttl": lambda v: parse_duration(v if not v.replace(".", "").isdigit() else float(v), "ttl"),
    "policy": str,
    "rate": float,
    "ram": lambda v: parse_size(v, "ram"),
    "disk": lambda v: parse_size(v, "disk"),
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


def run_point(scenario: Scenario, point: dict[str, Any]):
    """One sweep point, run whole in this process: its ``Summary``."""
    from .engine import simulate
    from .report import summarise

    sc = scenario
    for name, value in point.items():
        sc = sc.with_sweep(name, value)
    return summarise(simulate(sc, workers=1))


def run_sweep(scenario: Scenario, points: list[dict[str, Any]], *, workers: int = 2,
              dask_address: str | None = None,
              on_done: Callable[[int, Any], None] | None = None) -> list:
    """Each point's ``Summary``, in the order of ``points``. ``on_done(i, summary)`` as each ends."""
    results: list = [None] * len(points)
    if dask_address:
        from distributed import Client, as_completed as dask_completed

        with Client(dask_address) as client:
            futures = [client.submit(run_point, scenario, p, pure=False) for p in points]
            index = {f.key: i for i, f in enumerate(futures)}
            for fut in dask_completed(futures):
                i = index[fut.key]
                results[i] = fut.result()
                if on_done:
                    on_done(i, results[i])
        return results
    if workers <= 1:
        for i, p in enumerate(points):
            results[i] = run_point(scenario, p)
            if on_done:
                on_done(i, results[i])
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futs = {pool.submit(run_point, scenario, p): i for i, p in enumerate(points)}
        for fut in as_completed(futs):
            i = futs[fut]
            results[i] = fut.result()
            if on_done:
                on_done(i, results[i])
    return results
