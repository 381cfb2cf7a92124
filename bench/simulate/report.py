"""The planner's figures from a run, and their printed form.

Only the measured part of the window counts (after the warm-up). Counts over the sampled stream
are divided by the SHARDS rate to give the full stream's (requests/s, Gbit/s); ratios are read
as they are.

- Per tier: requests/s it receives, request hit ratio (fresh hits / requests), byte hit ratio
  (bytes it serves from its own storage, fresh or revalidated / bytes requested of it).
- Egress: bytes to viewers, mean over the measured window and its busiest minute.
- Origin: requests that reach it (fetches and revalidations) per second, body Gbit/s.
- POPs: how many serve the busiest minute at the planned utilisation of their NICs; disks per
  POP: the larger of what holds the POP's disk cache and what carries its busiest minute's disk
  reads (disk hits) and writes (fills); the same at the CDN card's design point, scaled from
  this workload's ratios.
- Startup: time to first byte of the manifest, then of segment 0, plus segment 0's transfer at
  the session's bandwidth, by the tier that served each (``[latency]``), p50 and p95 over the
  sessions whose segment 0 was sampled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .engine import LEVELS, Run
from .tiers import (HIT, MISS, POP_DISK_HIT, POP_DISK_STALE, POP_MISS, POP_RAM_HIT, POP_RAM_STALE,
                    STALE)

__all__ = ["TierFigures", "Summary", "summarise", "format_report", "si"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TierFigures:
    name: str
    requests_per_s: float
    request_hit_ratio: float
    byte_hit_ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """A run's figures (plain numbers: cheap to send back from a sweep worker)."""

    scenario: str
    policy: str
    segment_s: float
    ttl_s: float
    sampling_rate: float
    sampled_requests: int
    sessions: int
    peak_concurrent: int
    tiers: tuple[TierFigures, ...]
    client_requests_per_s: float
    egress_gbps: float
    peak_egress_gbps: float
    edge_request_hit_ratio: float
    edge_byte_hit_ratio: float
    cdn_request_hit_ratio: float
    cdn_byte_hit_ratio: float
    origin_requests_per_s: float
    origin_gbps: float
    mean_object_bytes: float
    pops_configured: int
    pops_needed: int
    busiest_pop_gbps: float
    disks_per_pop: int
    disks_for_capacity: int
    disks_for_throughput: int
    target_pops: int
    target_disks: int
    target_fetches_per_s: float
    target_origin_gbps: float
    startup_p50_s: float
    startup_p95_s: float
    startup_samples: int
    served_share: tuple[float, ...]
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarise(run: Run) -> Summary:
    sc, req = run.scenario, run.requests
    rate = req.rate
    win, cap = sc.window, sc.capacity
    span = win.measured_s
    m = req.time >= win.warmup_s
    size = req.size.astype(np.float64)

    def per_s(count: float) -> float:
        return count / rate / span

    pc = run.pop_code[m]
    sz = size[m]
    tiers = []
    ram_stale = pc == POP_RAM_STALE
    tiers.append(TierFigures(name="POP RAM", requests_per_s=per_s(len(pc)),
                             request_hit_ratio=_ratio((pc == POP_RAM_HIT).sum(), len(pc)),
                             byte_hit_ratio=_ratio(sz[(pc == POP_RAM_HIT) | ram_stale].sum(), sz.sum())))
    to_disk = pc >= POP_DISK_HIT
    tiers.append(TierFigures(name="POP disk", requests_per_s=per_s(to_disk.sum()),
                             request_hit_ratio=_ratio((pc == POP_DISK_HIT).sum(), to_disk.sum()),
                             byte_hit_ratio=_ratio(sz[(pc == POP_DISK_HIT) | (pc == POP_DISK_STALE)].sum(),
                                                   sz[to_disk].sum())))
    for name, idx, code in (("regional", run.regional_idx, run.regional_code),
                            ("shield", run.shield_idx, run.shield_code)):
        mm = req.time[idx] >= win.warmup_s
        c, s = code[mm], size[idx][mm]
        tiers.append(TierFigures(name=name, requests_per_s=per_s(len(c)),
                                 request_hit_ratio=_ratio((c == HIT).sum(), len(c)),
                                 byte_hit_ratio=_ratio(s[c != MISS].sum(), s.sum())))
    sh_m = req.time[run.shield_idx] >= win.warmup_s
    sh_c = run.shield_code[sh_m]
    sh_s = size[run.shield_idx][sh_m]
    origin_req = ((sh_c == MISS) | (sh_c == STALE)).sum()
    origin_bytes = sh_s[sh_c == MISS].sum()

    # Egress by minute (all POPs, then each POP) for the peak.
    minute = ((req.time[m] - win.warmup_s) // 60).astype(np.int64)
    n_min = int(math.ceil(span / 60))
    by_min = np.bincount(minute, weights=sz, minlength=n_min)
    peak_egress_bps = by_min.max() * 8 / rate / 60 if len(by_min) else 0.0
    n_pops = len(sc.pops)
    pop_min = req.pop[m].astype(np.int64) * n_min + minute
    by_pop_min = np.bincount(pop_min, weights=sz, minlength=n_pops * n_min)
    busiest_pop_bps = by_pop_min.max() * 8 / rate / 60 if len(by_pop_min) else 0.0
    disk_bytes = np.where((pc == POP_DISK_HIT) | (pc == POP_DISK_STALE) | (pc == POP_MISS), sz, 0.0)
    disk_pop_min = np.bincount(pop_min, weights=disk_bytes, minlength=n_pops * n_min)
    busiest_disk_bps = disk_pop_min.max() * 8 / rate / 60 if len(disk_pop_min) else 0.0

    pop_capacity = cap.pop_egress_bps * cap.utilisation
    pops_needed = math.ceil(peak_egress_bps / pop_capacity) if pop_capacity else 0
    # A POP at its planned utilisation: disk traffic per egress bit as the busiest POP had it.
    disk_per_egress = _ratio(busiest_disk_bps, busiest_pop_bps) if busiest_pop_bps else 0.0
    disks_cap = math.ceil(sc.tiers.pop_disk_bytes / cap.disk_bytes) if cap.disk_bytes else 0
    disks_tp = math.ceil(disk_per_egress * pop_capacity / cap.disk_bps) if cap.disk_bps else 0
    disks = max(disks_cap, disks_tp)
    target_pops = math.ceil(cap.target_egress_bps / pop_capacity) if pop_capacity else 0

    egress_bytes = sz.sum()
    cdn_byte_hit = 1 - _ratio(origin_bytes, egress_bytes)
    mean_obj = _ratio(egress_bytes, len(sz))

    # Startup: manifest + segment 0, each at its serving tier's time to first byte.
    lat = np.array(sc.latency.by_level())
    rng = np.random.default_rng(sc.seed)
    firsts = np.flatnonzero(req.first & m)
    manifests = np.flatnonzero(req.manifest & m)
    if len(firsts) and len(manifests):
        man_lat = lat[run.served[manifests]] + req.size[manifests] * 8 / (req.client_mbps[manifests] * 1e6)
        startup = (lat[run.served[firsts]] + req.size[firsts] * 8 / (req.client_mbps[firsts] * 1e6)
                   + rng.choice(man_lat, len(firsts)))
        p50, p95 = (float(x) for x in np.percentile(startup, [50, 95]))
    else:
        p50 = p95 = float("nan")
    served_m = run.served[m]
    share = tuple(float((served_m == i).mean()) if len(served_m) else 0.0 for i in range(len(LEVELS)))

    return Summary(
        scenario=sc.name, policy=sc.tiers.policy, segment_s=sc.media.segment_s, ttl_s=sc.media.ttl_s,
        sampling_rate=rate, sampled_requests=len(req), sessions=req.sessions,
        peak_concurrent=int(req.concurrency.max()) if len(req.concurrency) else 0,
        tiers=tuple(tiers), client_requests_per_s=per_s(len(pc)),
        egress_gbps=egress_bytes * 8 / rate / span / 1e9, peak_egress_gbps=peak_egress_bps / 1e9,
        edge_request_hit_ratio=_ratio(((pc == POP_RAM_HIT) | (pc == POP_DISK_HIT)).sum(), len(pc)),
        edge_byte_hit_ratio=1 - _ratio(sz[pc == POP_MISS].sum(), egress_bytes),
        cdn_request_hit_ratio=1 - _ratio(origin_req, len(pc)), cdn_byte_hit_ratio=cdn_byte_hit,
        origin_requests_per_s=per_s(origin_req), origin_gbps=origin_bytes * 8 / rate / span / 1e9,
        mean_object_bytes=mean_obj, pops_configured=n_pops, pops_needed=pops_needed,
        busiest_pop_gbps=busiest_pop_bps / 1e9, disks_per_pop=disks, disks_for_capacity=disks_cap,
        disks_for_throughput=disks_tp, target_pops=target_pops, target_disks=target_pops * disks,
        target_fetches_per_s=cap.target_egress_bps / 8 / mean_obj if mean_obj else float("nan"),
        target_origin_gbps=cap.target_egress_bps * (1 - cdn_byte_hit) / 1e9,
        startup_p50_s=p50, startup_p95_s=p95, startup_samples=len(firsts), served_share=share,
        seconds=dict(run.seconds),
    )


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f} %"


def si(x: float) -> str:
    """A count with an SI prefix: ``478.62 k``, ``1.97 M``."""
    if x != x:
        return "n/a"
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.1f}"


def format_report(s: Summary, *, target_hit_ratio: float = 0.9, target_fetches: float = 37.5e6,
                  target_egress_bps: float = 300e12) -> str:
    """The report as text (a table per section)."""
    lines = [
        f"scenario {s.scenario}: policy {s.policy}, segment {s.segment_s:g} s, TTL {s.ttl_s:g} s, "
        f"SHARDS rate {s.sampling_rate:.4g} ({s.sampled_requests:,} sampled requests, "
        f"{s.sessions:,} sessions, peak {s.peak_concurrent:,} concurrent)",
        "",
        f"{'tier':<10} {'requests/s':>12} {'request hit':>12} {'byte hit':>10}",
    ]
    for t in s.tiers:
        lines.append(f"{t.name:<10} {si(t.requests_per_s):>12} {_pct(t.request_hit_ratio):>12} "
                     f"{_pct(t.byte_hit_ratio):>10}")
    lines.append(f"{'origin':<10} {si(s.origin_requests_per_s):>12}")
    lines += [
        "",
        f"egress            {s.egress_gbps:,.0f} Gbit/s mean, {s.peak_egress_gbps:,.0f} Gbit/s busiest minute; "
        f"{si(s.client_requests_per_s)} fetches/s of {s.mean_object_bytes / 1e6:.2f} MB mean",
        f"edge hit ratio    {_pct(s.edge_request_hit_ratio)} of requests, {_pct(s.edge_byte_hit_ratio)} of bytes "
        f"(served by the POP; target {_pct(target_hit_ratio)}: "
        f"{'met' if s.edge_request_hit_ratio >= target_hit_ratio else 'NOT met'})",
        f"CDN hit ratio     {_pct(s.cdn_request_hit_ratio)} of requests, {_pct(s.cdn_byte_hit_ratio)} of bytes "
        f"(not reaching the origin)",
        f"origin            {si(s.origin_requests_per_s)} requests/s, {s.origin_gbps:,.2f} Gbit/s",
        "served by         " + ", ".join(f"{n} {100 * x:.1f} %" for n, x in zip(LEVELS, s.served_share)),
        f"POPs              {s.pops_needed} needed for the busiest minute ({s.pops_configured} in the scenario; "
        f"busiest POP {s.busiest_pop_gbps:,.0f} Gbit/s)",
        f"disks per POP     {s.disks_per_pop} ({s.disks_for_capacity} to hold the disk cache, "
        f"{s.disks_for_throughput} for its reads and fills at the planned utilisation)",
        f"at {target_egress_bps / 1e12:g} Tbit/s     {s.target_pops} POPs, {s.target_disks} disks, "
        f"{si(s.target_fetches_per_s)} fetches/s (card: {si(target_fetches)}), "
        f"origin {s.target_origin_gbps:,.0f} Gbit/s",
        f"startup           p50 {s.startup_p50_s * 1000:.0f} ms, p95 {s.startup_p95_s * 1000:.0f} ms "
        f"({s.startup_samples:,} sampled session starts)",
        "wall time         " + ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items()),
    ]
    return "\n".join(lines)
