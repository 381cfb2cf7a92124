"""One simulation run: generate the sampled stream, then run it through the tiers.

``simulate(scenario)`` returns a ``Run``: the stream and, per request, the outcome at each tier
it reached and the level that served it (0 POP RAM, 1 POP disk, 2 regional, 3 shield, 4
origin). ``report.summarise`` turns a run into the planner's figures.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from headwater.edge.promote import PromotionConfig

from .scenario import Scenario
from .shards import Shards, shard_by
from .tiers import (HIT, MISS, POP_DISK_HIT, POP_DISK_STALE, POP_MISS, POP_RAM_STALE, STALE,
                    cache_keys, route, run_node, run_pop)
from .workload import Requests, generate, object_path

__all__ = ["Run", "Prepared", "prepare", "simulate", "LEVELS"]

LEVELS = ("POP RAM", "POP disk", "regional", "shield", "origin")

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: a stage's units done so far (requests or sessions)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A finished run: the stream, outcome codes per tier, served level per request.

    ``pop_code`` has one code per request; ``regional_idx``/``regional_code`` the requests that
    went to a regional cache and their codes there; likewise for the shield.
    """

    scenario: Scenario
    requests: Requests
    pop_code: np.ndarray
    regional_idx: np.ndarray
    regional_code: np.ndarray
    regional_node: np.ndarray
    shield_idx: np.ndarray
    shield_code: np.ndarray
    served: np.ndarray
    seconds: dict[str, float]


def _pop_task(args: tuple) -> np.ndarray:
    *positional, promotion, ram_max = args
    return run_pop(*positional, promotion=promotion, ram_max_entry_bytes=ram_max)


def _node_task(args: tuple) -> np.ndarray:
    return run_node(*args)


def _local(keys: list[bytes], objs: np.ndarray) -> tuple[list[bytes], list[int]]:
    """The keys one shard needs and its requests' indices into them (small pickles)."""
    uniq, inv = np.unique(objs, return_inverse=True)
    return [keys[o] for o in uniq.tolist()], inv.tolist()


def _run_shards(fn, tasks: list[tuple], workers: int, stage: str, sizes: list[int],
                progress: Progress | None) -> list[np.ndarray]:
    total, done = sum(sizes), 0
    results: list[np.ndarray | None] = [None] * len(tasks)
    if workers <= 1 or len(tasks) <= 1:
        for i, t in enumerate(tasks):
            results[i] = fn(t)
            done += sizes[i]
            if progress:
                progress(stage, done, total)
        return results  # type: ignore[return-value]
    # Largest shards first, so the pool's last task is a short one.
    order = sorted(range(len(tasks)), key=lambda i: -sizes[i])
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(fn, tasks[i]) for i in order}
        for i in order:
            results[i] = futures[i].result()
            done += sizes[i]
            if progress:
                progress(stage, done, total)
    return results  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A generated stream and its cache keys: what sweep points that differ only in cache
    settings (TTL, policy, sizes) share."""

    requests: Requests
    keys: list[bytes]
    seconds: dict[str, float]


def prepare(sc: Scenario, *, rate: float | None = None, progress: Progress | None = None) -> Prepared:
    """Generate ``sc``'s sampled stream and build the edge's cache key of each object in it."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sessions_done = [0]

    def gen_progress(n: int, total: int) -> None:
        sessions_done[0] += n
        if progress:
            progress("sessions", sessions_done[0], total)

    req = generate(sc, rate=rate, progress=gen_progress)
    seconds["generate"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    keys: list[bytes] = [b""] * len(req.object_ids)
    used = np.unique(req.obj)
    for o, k in zip(used.tolist(), cache_keys([object_path(int(i), sc) for i in req.object_ids[used]])):
        keys[o] = k
    seconds["cache keys"] = time.perf_counter() - t1
    return Prepared(req, keys, seconds)


def simulate(sc: Scenario, *, workers: int = 1, progress: Progress | None = None,
             rate: float | None = None, prepared: Prepared | None = None) -> Run:
    """Run ``sc`` (``rate`` overrides its SHARDS rate; ``workers`` processes for the shards;
    ``prepared``: a stream made by ``prepare`` for a scenario with the same workload)."""
    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare(sc, rate=rate, progress=progress)
        seconds = dict(prepared.seconds)
    else:
        seconds = {}
    req, keys = prepared.requests, prepared.keys
    shards = Shards.at_rate(req.rate)

    tiers, policy, ttl = sc.tiers, sc.tiers.policy, sc.media.ttl_s
    n = len(req)
    obj, size, tm = req.obj, req.size, req.time
    t2 = time.perf_counter()
    pops = sc.pops
    pop_shards = shard_by(req.pop, len(pops))
    tasks = []
    # The edge's promotion, its byte budget and remembered keys scaled like the caches; the
    # largest RAM entry is the full-size RAM store's (an object's size does not scale).
    promotion = PromotionConfig(max_object_bytes=tiers.promote_max_bytes,
                                bytes_per_second=max(1, shards.scale(tiers.promote_bytes_per_s)),
                                remembered_keys=max(16, shards.scale(PromotionConfig().remembered_keys)))
    for idx in pop_shards:
        k, o = _local(keys, obj[idx])
        tasks.append((policy, shards.scale(tiers.pop_ram_bytes), shards.scale(tiers.pop_disk_bytes),
                      ttl, k, o, size[idx].tolist(), tm[idx].tolist(), promotion, tiers.pop_ram_bytes // 16))
    codes = _run_shards(_pop_task, tasks, workers, "POPs", [len(i) for i in pop_shards], progress)
    pop_code = np.zeros(n, dtype=np.uint8)
    for idx, c in zip(pop_shards, codes):
        pop_code[idx] = c
    seconds["POP tiers"] = time.perf_counter() - t2

    # Regional caches: each POP's region's nodes, by rendezvous of the cache key.
    t3 = time.perf_counter()
    up = np.flatnonzero((pop_code == POP_MISS) | (pop_code == POP_RAM_STALE) | (pop_code == POP_DISK_STALE))
    pop_region = np.concatenate([np.full(len(r.pops), i) for i, r in enumerate(sc.regions)])
    regional_names = [name for r in sc.regions for name in r.regionals]
    first_node = np.cumsum([0] + [len(r.regionals) for r in sc.regions])
    node = np.zeros(len(up), dtype=np.int32)
    region_of = pop_region[req.pop[up]]
    for ri, r in enumerate(sc.regions):
        sel = np.flatnonzero(region_of == ri)
        node[sel] = first_node[ri] + route(keys, obj[up[sel]], r.regionals)
    reg_code = _run_nodes(keys, up, node, len(regional_names), policy,
                          shards.scale(tiers.regional_bytes), ttl, req, workers, "regional", progress)
    seconds["regional tier"] = time.perf_counter() - t3

    t4 = time.perf_counter()
    up2 = up[(reg_code == MISS) | (reg_code == STALE)]
    snode = route(keys, obj[up2], tiers.shields)
    sh_code = _run_nodes(keys, up2, snode, len(tiers.shields), policy,
                         shards.scale(tiers.shield_bytes), ttl, req, workers, "shield", progress)
    seconds["shield tier"] = time.perf_counter() - t4

    served = np.where(pop_code == POP_DISK_HIT, 1, 0).astype(np.uint8)
    served[up] = 2
    served[up2] = 3
    served[up2[(sh_code == MISS) | (sh_code == STALE)]] = 4
    seconds["total"] = time.perf_counter() - t0
    return Run(scenario=sc, requests=req, pop_code=pop_code, regional_idx=up, regional_code=reg_code,
               regional_node=node, shield_idx=up2, shield_code=sh_code, served=served, seconds=seconds)


def _run_nodes(keys: list[bytes], idx: np.ndarray, node: np.ndarray, n_nodes: int, policy: str,
               capacity: int, ttl: float, req: Requests, workers: int, stage: str,
               progress: Progress | None) -> np.ndarray:
    """Each node's share of ``idx`` (requests in time order) through its own cache."""
    groups = shard_by(node, n_nodes)
    tasks = []
    for g in groups:
        sel = idx[g]
        k, o = _local(keys, req.obj[sel])
        tasks.append((policy, capacity, ttl, k, o, req.size[sel].tolist(), req.time[sel].tolist()))
    codes = _run_shards(_node_task, tasks, workers, stage, [len(g) for g in groups], progress)
    out = np.full(len(idx), HIT, dtype=np.uint8)
    for g, c in zip(groups, codes):
        out[g] = c
    return out


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
