"""The simulator against the real edge: one small trace, predicted and replayed on loopback.

Issue 15's last validation: a small scenario's request stream, replayed one request at a time
(so request collapsing never enters) against running edge POPs, gives per-tier hit ratios within
2 points of what the simulator predicts for the same stream.

Scale: the trace's objects are segments of MB; replayed, every size is divided by ``scale``
(KiB bodies), and so are the tiers' sizes and the largest promoted body, so the caches hold the
same share of the working set. The per-entry costs the stores charge (the disk's file and index,
the RAM store's metadata and node) do not scale, so the simulator is given them as the edge has
them (``run_pop``'s and ``run_node``'s overheads), which is what makes the prediction comparable.

The cluster (:func:`live_cluster`): every POP, regional and shield the scenario names, one worker
each (one RAM cache per POP, as the simulator models), all in this process (the ``edge`` role's
entry point in a thread with its own event loop) in front of an origin that serves each object's
body with a one-day lifetime and counts its fetches. A TTL of a day and a promotion rate that
never binds (``promote_rate`` of the live scenario) keep freshness and the wall clock out of it.

What is compared, per tier (the report's definitions): POP RAM, hits over the POP's requests;
POP disk, hits over what RAM did not answer; regional and shield, hits over what reached them.
The POPs' hits and misses come from their ``/metrics`` (``hw_edge_requests_total``); the split
between RAM and disk from each response's ``Server-Timing: tier;desc="ram"|"disk"``; the
regional and shield tiers' from their ``/metrics``. Each request's outcome at every tier is
also read from the response (the upstream tiers' ``Server-Timing`` entries) and compared with the
simulator's outcome for it: the first requests that disagree say where the model and the edge
part.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .engine import Prepared, Run, prepare, simulate
from .scenario import Scenario, load_scenario
from .tiers import HIT, POP_DISK_HIT, POP_RAM_HIT, STALE
from .workload import object_path

__all__ = ["TIERS", "LiveResult", "scaled", "predict", "cluster_toml", "live_cluster", "replay",
           "live_check", "format_live"]

TIERS = ("POP RAM", "POP disk", "regional", "shield")
DEFAULT_SCALE = 256
_HOST = "video.test"


@dataclass(frozen=True, slots=True)
class LiveResult:
    """Per tier: the simulator's request hit ratio, the daemons', and the requests each counted;
    ``mismatches``: requests whose outcome differs at some tier (first few, for diagnosis)."""

    requests: int
    predicted: dict[str, float]
    measured: dict[str, float]
    counts: dict[str, tuple[int, int]]  # tier -> (simulated requests, live requests)
    mismatches: list[str]
    origin_fetches: tuple[int, int]  # simulated, live
    seconds: dict[str, float]

    def worst(self) -> float:
        """The largest disagreement, in percentage points."""
        return max(abs(self.predicted[t] - self.measured[t]) * 100 for t in TIERS)


def scaled(sc: Scenario, prepared: Prepared, scale: int) -> tuple[Scenario, Prepared]:
    """``sc`` and its stream with every size divided by ``scale``: bodies, tiers, promotion."""
    t = sc.tiers
    tiers = dataclasses.replace(
        t, pop_ram_bytes=t.pop_ram_bytes // scale, pop_disk_bytes=t.pop_disk_bytes // scale,
        regional_bytes=t.regional_bytes // scale, shield_bytes=t.shield_bytes // scale,
        promote_max_bytes=t.promote_max_bytes // scale, promote_bytes_per_s=t.promote_bytes_per_s // scale)
    req = prepared.requests
    sizes = np.maximum(1, req.size // scale).astype(req.size.dtype)
    return (dataclasses.replace(sc, tiers=tiers),
            Prepared(dataclasses.replace(req, size=sizes), prepared.keys, {}))


def _ratios(run: Run) -> tuple[dict[str, float], dict[str, tuple[int, int]], int]:
    pc = run.pop_code
    to_disk = pc != POP_RAM_HIT
    reg, sh = run.regional_code, run.shield_code
    counts = {"POP RAM": len(pc), "POP disk": int(to_disk.sum()), "regional": len(reg), "shield": len(sh)}
    hits = {"POP RAM": int((pc == POP_RAM_HIT).sum()), "POP disk": int((pc == POP_DISK_HIT).sum()),
            "regional": int((reg == HIT).sum()), "shield": int((sh == HIT).sum())}
    origin = int(((sh != HIT) & (sh != STALE)).sum())
    return ({t: hits[t] / counts[t] if counts[t] else 0.0 for t in TIERS},
            {t: (hits[t], counts[t]) for t in TIERS}, origin)


def predict(sc: Scenario, prepared: Prepared) -> Run:
    """The simulator's run of ``prepared`` (already scaled) under ``sc``'s tiers, unsampled."""
    return simulate(sc, workers=1, prepared=prepared)


def cluster_toml(sc: Scenario, *, origin_port: int, ports: list[int], data_dir: Path) -> str:
    """A cluster.toml with ``sc``'s POPs, regional caches and shields (sizes as ``sc`` has them:
    pass the scaled scenario), one worker each; ``ports`` two per daemon (cache, admin) in the
    order POPs, regionals, shields."""
    if len(sc.regions) != 1:
        # One region: every POP fetches from every regional cache, as the simulator routes a
        # region's POPs (the daemons would need `upstreams` per POP for more).
        raise ValueError("the live check runs one region")
    t = sc.tiers
    lines = [
        "[cluster]", 'name = "simulate-live"', f'data_dir = "{data_dir}"', "",
        # Every request comes from 127.0.0.1, one client to the POPs' limits.
        "[cdn.client_limits]", "max_connections_per_client = 1000", "requests_per_second = 100000",
        "burst = 100000", "",
        "[[distributions]]", 'name = "vod"', f'hostnames = ["{_HOST}"]',
        f'origin = "http://127.0.0.1:{origin_port}"', "",
    ]
    nodes = [(p, "pop") for r in sc.regions for p in r.pops]
    nodes += [(g, "regional") for r in sc.regions for g in r.regionals]
    nodes += [(s, "shield") for s in t.shields]
    for i, (node_id, tier) in enumerate(nodes):
        lines += ["[[edge]]", f'id = "{node_id}"', f'tier = "{tier}"', f"port = {ports[2 * i]}",
                  f"admin_port = {ports[2 * i + 1]}", "workers = 1"]
        if tier == "pop":
            lines += ["lat = 51.5", "lon = -0.12", f"ram_size = {t.pop_ram_bytes}", f"disk_size = {t.pop_disk_bytes}",
                      f"promote_max_size = {t.promote_max_bytes}", f"promote_rate = {t.promote_bytes_per_s}"]
        else:
            lines.append(f"disk_size = {t.regional_bytes if tier == 'regional' else t.shield_bytes}")
        lines.append("")
    return "\n".join(lines)


class _Origin:
    """The test origin: each path's body (``size`` bytes) with a day's lifetime; fetches counted."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.fetches = 0

    async def app(self, request: Any) -> Any:
        from headwater.http import Response
        self.fetches += 1
        size = self.sizes.get(request.path)
        if size is None:
            return Response(404, [("content-length", "0")], b"")
        return Response(200, [("content-type", "video/mp4"), ("cache-control", "max-age=86400"),
                              ("content-length", str(size))], b"v" * size)


@dataclass
class LiveCluster:
    """The running daemons: the POPs' base URLs by id, every daemon's admin URL, the origin."""

    pops: dict[str, str]
    admins: dict[str, str]
    tiers: dict[str, str]
    origin: _Origin


@contextmanager
def live_cluster(sc: Scenario, sizes: dict[str, int], folder: Path) -> Iterator[LiveCluster]:
    """``sc``'s edge daemons (in-process) and an origin serving ``sizes`` (path -> bytes)."""
    import anyio
    import anyio.from_thread

    from headwater.config import load
    from headwater.edge.daemon import run_edge
    from headwater.http import serve
    from headwater.rpc.auth import ensure_cluster_secret

    from ..peers import free_ports

    n = sum(len(r.pops) + len(r.regionals) for r in sc.regions) + len(sc.tiers.shields)
    ports = free_ports(2 * n + 1)
    path = folder / "cluster.toml"
    path.write_text(cluster_toml(sc, origin_port=ports[-1], ports=ports, data_dir=folder / "var"))
    cfg = load(str(path))
    ensure_cluster_secret(cfg)
    origin = _Origin(sizes)
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        futures = [portal.start_task(functools.partial(serve, origin.app, host="127.0.0.1", port=ports[-1]))[0]]
        try:
            # Upper tiers first, as `headwater up` starts them.
            for node in sorted(cfg.edge, key=lambda e: ("shield", "regional", "pop").index(e.tier)):
                futures.append(portal.start_task(functools.partial(run_edge, cfg, node))[0])
            yield LiveCluster(pops={e.id: f"{e.host}:{e.port}" for e in cfg.edge if e.tier == "pop"},
                              admins={e.id: f"{e.host}:{e.admin_port}" for e in cfg.edge},
                              tiers={e.id: e.tier for e in cfg.edge}, origin=origin)
        finally:
            for f in futures:
                f.cancel()


_TIMING = re.compile(r'edge;desc="(\w+) from ([\w.-]+)"')
_STORE = re.compile(r'tier;desc="(ram|disk)"')


def replay(cluster: LiveCluster, paths: list[str], pops: list[str]) -> list[tuple[str, str | None, dict[str, str]]]:
    """Each request in order, one at a time, to its POP (keep-alive, one connection per POP):
    per request the POP's result, the store that answered a hit, and each tier's result (from
    the ``Server-Timing`` entries: this tier's, then the upstream tiers' on a miss)."""
    conns = {p: http.client.HTTPConnection(*cluster.pops[p].rsplit(":", 1), timeout=30) for p in cluster.pops}
    out = []
    try:
        for path, pop in zip(paths, pops):
            c = conns[pop]
            c.request("GET", path, headers={"host": _HOST})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"{path} via {pop}: {r.status}")
            timing = r.getheader("server-timing") or ""
            by_node = {node: result for result, node in _TIMING.findall(timing)}
            store = _STORE.search(timing)
            out.append((by_node.get(pop, "?"), store.group(1) if store else None, by_node))
    finally:
        for c in conns.values():
            c.close()
    return out


def _metrics(admin: str) -> dict[tuple[str, str], float]:
    host, port = admin.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    out: dict[tuple[str, str], float] = {}
    for m in re.finditer(r'^hw_edge_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = (labels.get("tier", ""), labels.get("result", ""))
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def live_check(scenario: str | Scenario = "live", *, scale: int = DEFAULT_SCALE,
               folder: Path | None = None) -> LiveResult:
    """Predict, then replay ``scenario`` (unsampled) against a cluster started for it."""
    sc0 = load_scenario(scenario) if isinstance(scenario, str) else scenario
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sc, prepared = scaled(sc0, prepare(sc0, rate=1.0), scale)
    req = prepared.requests
    run = predict(sc, prepared)
    predicted, sim_counts, sim_origin = _ratios(run)
    seconds["simulate"] = time.perf_counter() - t0

    paths_of = {int(o): object_path(int(req.object_ids[o]), sc) for o in np.unique(req.obj)}
    paths = [paths_of[int(o)] for o in req.obj]
    pop_names = [p for r in sc.regions for p in r.pops]
    pops = [pop_names[int(p)] for p in req.pop]
    sizes = {paths_of[int(o)]: int(s) for o, s in zip(req.obj, req.size)}

    with tempfile.TemporaryDirectory(prefix="hw-simlive-") as tmp:
        t1 = time.perf_counter()
        with live_cluster(sc, sizes, Path(folder or tmp)) as cluster:
            seconds["start"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            results = replay(cluster, paths, pops)
            seconds["replay"] = time.perf_counter() - t2
            metrics = {node: _metrics(a) for node, a in cluster.admins.items()}
            origin_fetches = cluster.origin.fetches

    def tier_counts(tier: str) -> tuple[int, int]:
        hit = sum(v for node, m in metrics.items() if cluster.tiers[node] == tier
                  for (t, result), v in m.items() if t == tier and result == "Hit")
        total = sum(v for node, m in metrics.items() if cluster.tiers[node] == tier
                    for (t, _), v in m.items() if t == tier)
        return int(hit), int(total)

    pop_hit, pop_total = tier_counts("pop")
    ram_hit = sum(1 for result, store, _ in results if result == "Hit" and store == "ram")
    live_counts = {"POP RAM": (ram_hit, pop_total), "POP disk": (pop_hit - ram_hit, pop_total - ram_hit),
                   "regional": tier_counts("regional"), "shield": tier_counts("shield")}
    measured = {t: h / n if n else 0.0 for t, (h, n) in live_counts.items()}

    mismatches = _mismatches(run, results, pops, sc)
    return LiveResult(requests=len(req), predicted=predicted, measured=measured,
                      counts={t: (sim_counts[t][1], live_counts[t][1]) for t in TIERS},
                      mismatches=mismatches, origin_fetches=(sim_origin, origin_fetches), seconds=seconds)


def _mismatches(run: Run, results: list, pops: list[str], sc: Scenario, limit: int = 10) -> list[str]:
    """The first requests whose outcome differs between the model and the edge (at the POP:
    RAM, disk or miss; upstream: which node and its result)."""
    names = {POP_RAM_HIT: "ram", POP_DISK_HIT: "disk"}
    regionals = [g for r in sc.regions for g in r.regionals]
    at_reg = {int(i): (regionals[int(n)], "Hit" if c == HIT else "Miss")
              for i, n, c in zip(run.regional_idx, run.regional_node, run.regional_code)}
    at_sh = {int(i): "Hit" if c == HIT else "Miss" for i, c in zip(run.shield_idx, run.shield_code)}
    out = []
    for i, (result, store, by_node) in enumerate(results):
        sim_pop = names.get(int(run.pop_code[i]), "miss")
        live_pop = store if result == "Hit" else "miss"
        sim_up = [f"{n} {r}" for n, r in [at_reg.get(i, (None, None))] if n]
        if i in at_sh:
            sim_up.append(f"{sc.tiers.shields[0] if len(sc.tiers.shields) == 1 else 'shield'} {at_sh[i]}")
        live_up = [f"{n} {r}" for n, r in by_node.items() if n != pops[i]]
        if sim_pop != live_pop or (len(sc.tiers.shields) == 1 and sim_up != live_up):
            out.append(f"#{i} {pops[i]}: simulator {sim_pop} {sim_up}, daemons {live_pop} {live_up}")
            if len(out) >= limit:
                break
    return out


def format_live(r: LiveResult) -> str:
    """The comparison as the report prints it."""
    lines = [f"live check: {r.requests:,} requests replayed one at a time",
             f"{'tier':<10} {'simulator':>10} {'daemons':>10} {'diff':>7}   requests (sim / live)"]
    for t in TIERS:
        d = (r.measured[t] - r.predicted[t]) * 100
        lines.append(f"{t:<10} {r.predicted[t] * 100:>9.2f}% {r.measured[t] * 100:>9.2f}% {d:>+7.2f}   "
                     f"{r.counts[t][0]:,} / {r.counts[t][1]:,}")
    lines.append(f"origin fetches: simulator {r.origin_fetches[0]:,}, daemons {r.origin_fetches[1]:,}")
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items()))
    if r.mismatches:
        lines.append("first requests that differ:")
        lines += [f"  {m}" for m in r.mismatches]
    return "\n".join(lines)
