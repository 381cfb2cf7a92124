"""`python -m headwater.bench simulate ...`: the command line of the CDN simulator."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from headwater.config import ConfigError

from .scenario import load_scenario

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m headwater.bench simulate",
        description="Tbps-scale CDN simulator: the edge's own policies and cache keys over a "
                    "SHARDS-sampled workload, or a libCacheSim trace.")
    p.add_argument("--scenario", help="shipped scenario name or TOML path (prime-peak; live with --live)")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2",
                   help="segment, ttl, policy, rate, ram, disk, promote or promote_rate; repeat for a grid")
    p.add_argument("--dask", metavar="ADDRESS", help="run sweep points on this Dask scheduler")
    p.add_argument("--workers", type=int, default=2, help="local processes (default 2)")
    p.add_argument("--rate", type=float, help="override the scenario's SHARDS sampling rate")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts here")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--no-progress", action="store_true")
    t = p.add_argument_group("trace replay")
    t.add_argument("--trace", metavar="FILE", help="a libCacheSim trace (csv or oracleGeneral)")
    t.add_argument("--format", choices=("auto", "csv", "oracleGeneral"), default="auto")
    t.add_argument("--csv-columns", default="1,2,3",
                   help="1-based columns of time, object id, size in a csv trace (default 1,2,3)")
    t.add_argument("--csv-header", action="store_true", help="the csv trace has a header line")
    t.add_argument("--policy", default="s3fifo", help="lru, s3fifo or sieve")
    t.add_argument("--cache-size", default="1%",
                   help="bytes (\"4GiB\") or a share of the trace's working set (\"1%%\")")
    t.add_argument("--ram-share", type=float, default=0.0,
                   help="model a RAM tier of this share of --cache-size in front of the disk tier")
    t.add_argument("--libcachesim", action="store_true", help="replay with libCacheSim too and compare")
    p.add_argument("--speed", action="store_true",
                   help="requests/s of our engine beside libCacheSim's on one trace, and prime-peak's wall time")
    p.add_argument("--shards-error", action="store_true",
                   help="measure SHARDS: the scenario sampled vs unsampled (use a small scenario)")
    p.add_argument("--live", action="store_true",
                   help="replay the scenario (default: live) against edge daemons started for it and "
                        "compare each tier's hit ratio with the simulator's; exit 1 beyond --live-tolerance")
    p.add_argument("--live-scale", type=int, default=256, metavar="N",
                   help="divide every size by N for the live replay (default 256: KiB bodies)")
    p.add_argument("--live-tolerance", type=float, default=2.0, metavar="POINTS",
                   help="the largest disagreement per tier, percentage points (default 2)")
    return p


class _Progress:
    """A rich progress bar per stage (or nothing with --no-progress / no terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        self.tasks: dict[str, int] = {}
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            self.bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), transient=False)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.bar:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total or None)
        self.bar.update(self.tasks[stage], completed=done, total=total or None)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    show = not args.no_progress and sys.stderr.isatty()
    try:
        if args.trace:
            from .trace import trace_main
            return trace_main(args, _Progress(show))
        if args.speed:
            from .trace import speed_main
            return speed_main(args, _Progress(show))
        sc = load_scenario(args.scenario or ("live" if args.live else "prime-peak"))
    except ConfigError as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    if args.rate:
        sc = sc.with_sweep("rate", args.rate)
    if args.shards_error:
        return _shards_error(sc, args)
    if args.live:
        return _live(sc, args)
    if args.sweep:
        return _sweep(sc, args, show)
    from .engine import simulate
    from .report import format_report, summarise

    with _Progress(show) as progress:
        run = simulate(sc, workers=args.workers, progress=progress)
    s = summarise(run)
    cap = sc.capacity
    print(format_report(s, target_hit_ratio=cap.target_hit_ratio, target_fetches=cap.target_fetches_per_s,
                        target_egress_bps=cap.target_egress_bps))
    if args.plot:
        from .plot import plot_run
        for path in plot_run(s, Path(args.plot)):
            print(f"wrote {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(s), indent=2))
    return 0


def _sweep(sc, args, show: bool) -> int:
    from .report import si
    from .sweep import label, parse_sweeps, run_sweep, sweep_points

    try:
        points = sweep_points(parse_sweeps(args.sweep))
    except (ValueError, ConfigError) as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    where = f"on Dask at {args.dask}" if args.dask else f"in {args.workers} local processes"
    print(f"{len(points)} sweep points {where}", file=sys.stderr)
    t0 = time.perf_counter()
    with _Progress(show) as progress:
        done = [0]

        def on_done(i: int, s) -> None:
            done[0] += 1
            progress("sweep", done[0], len(points))
            if not show:
                print(f"  done {label(points[i])} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        summaries = run_sweep(sc, points, workers=args.workers, dask_address=args.dask, on_done=on_done)
    cap = sc.capacity
    print(f"{'point':<28} {'fetches/s':>10} {'edge hit':>9} {'origin req/s':>13} {'origin Gbit/s':>14} "
          f"{'startup p50':>12} {'p95':>8} {'POPs':>5} {'staleness':>10}")
    for p, s in zip(points, summaries):
        print(f"{label(p):<28} {si(s.client_requests_per_s):>10} {100 * s.edge_request_hit_ratio:>7.2f} % "
              f"{s.origin_requests_per_s:>13,.0f} {s.origin_gbps:>14,.2f} {s.startup_p50_s * 1000:>9.0f} ms "
              f"{s.startup_p95_s * 1000:>5.0f} ms {s.pops_needed:>5} {'<= %g s' % s.ttl_s:>10}")
    print(f"sweep wall time {time.perf_counter() - t0:.1f} s")
    if args.plot:
        from .plot import plot_run, plot_sweep
        for path in plot_sweep(points, summaries, Path(args.plot)):
            print(f"wrote {path}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"point": p, "summary": asdict(s)}
                                               for p, s in zip(points, summaries)], indent=2))
    return 0


def _live(sc, args) -> int:
    from headwater.log import configure

    from .livecheck import format_live, live_check

    configure(level="warning")  # (the daemons' access lines: one per request and tier)
    r = live_check(sc, scale=args.live_scale)
    print(format_live(r))
    ok = r.worst() <= args.live_tolerance
    print(f"largest disagreement {r.worst():.2f} points: {'within' if ok else 'NOT within'} "
          f"{args.live_tolerance:g}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(r), indent=2))
    return 0 if ok else 1


def _shards_error(sc, args) -> int:
    from .engine import simulate
    from .report import summarise

    full = summarise(simulate(sc, rate=1.0, workers=args.workers))
    sampled = summarise(simulate(sc, workers=args.workers))
    print(f"SHARDS error on {sc.name}: rate {sampled.sampling_rate:.4g} "
          f"({sampled.sampled_requests:,} of {full.sampled_requests:,} requests)")
    print(f"{'tier':<10} {'unsampled':>10} {'sampled':>10} {'error (points)':>15}")
    for a, b in zip(full.tiers, sampled.tiers):
        print(f"{a.name:<10} {100 * a.request_hit_ratio:>9.2f}% {100 * b.request_hit_ratio:>9.2f}% "
              f"{100 * (b.request_hit_ratio - a.request_hit_ratio):>+15.2f}")
    print(f"{'edge':<10} {100 * full.edge_request_hit_ratio:>9.2f}% {100 * sampled.edge_request_hit_ratio:>9.2f}% "
          f"{100 * (sampled.edge_request_hit_ratio - full.edge_request_hit_ratio):>+15.2f}")
    print(f"origin Gbit/s: unsampled {full.origin_gbps:.3f}, sampled {sampled.origin_gbps:.3f}")
    return 0
