"""Trace replay: libCacheSim's trace formats through the edge's policies, and validation
against libCacheSim itself (PyPI ``libcachesim``, the S3-FIFO and SIEVE papers' simulator).

Formats: ``oracleGeneral`` (binary records ``<uint32 time, uint64 id, uint32 size, int64
next access>``, 24 bytes) and ``csv`` (columns of time, object id and size, 1-based, as
libCacheSim's ``-t csv -t-params`` name them; a non-numeric id is hashed). A cache size is bytes
or a share of the trace's working set (the bytes of its distinct objects, as libCacheSim's
``--cache-size 0.01`` means).

``--speed``: our engine's requests/s beside libCacheSim's on the same trace and policy, and the
wall time of the ``prime-peak`` report.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from headwater.config import parse_size

from .tiers import HIT, PLAIN_DISK, POP_DISK_HIT, POP_RAM_HIT, run_node, run_pop

__all__ = ["Trace", "read_trace", "write_oracle_general", "cache_bytes", "replay", "libcachesim_replay",
           "trace_main", "speed_main", "ORACLE_GENERAL"]

ORACLE_GENERAL = np.dtype([("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])


@dataclass(frozen=True, slots=True)
class Trace:
    """A trace in memory: object ids and sizes (and times) per request."""

    path: str
    format: str
    ids: np.ndarray
    sizes: np.ndarray
    times: np.ndarray

    def working_set_bytes(self) -> int:
        _, first = np.unique(self.ids, return_index=True)
        return int(self.sizes[first].astype(np.int64).sum())


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = Path(path).name.lower()
    if name.endswith(".csv") or name.endswith(".csv.txt"):
        return "csv"
    if "oraclegeneral" in name or name.endswith(".bin"):
        return "oracleGeneral"
    raise ValueError(f"{path}: cannot tell the trace format from its name; pass --format")


def read_trace(path: str, fmt: str = "auto", *, columns: tuple[int, int, int] = (1, 2, 3),
               header: bool = False) -> Trace:
    """Read a libCacheSim trace (``fmt``: ``auto``, ``csv`` or ``oracleGeneral``)."""
    fmt = _format_of(path, fmt)
    if fmt == "oracleGeneral":
        rec = np.fromfile(path, dtype=ORACLE_GENERAL)
        return Trace(path, fmt, rec["id"].astype(np.uint64), rec["size"].astype(np.int64),
                     rec["time"].astype(np.float64))
    t_col, id_col, size_col = (c - 1 for c in columns)
    ids, sizes, times = [], [], []
    with open(path, newline="") as f:
        rows = csv.reader(f)
        if header:
            next(rows, None)
        for row in rows:
            if not row:
                continue
            raw = row[id_col].strip()
            try:
                ids.append(int(raw))
            except ValueError:
                ids.append(xxhash.xxh3_64_intdigest(raw.encode()))
            sizes.append(int(float(row[size_col])))
            times.append(float(row[t_col]) if t_col >= 0 else 0.0)
    return Trace(path, fmt, np.array(ids, dtype=np.uint64), np.array(sizes, dtype=np.int64),
                 np.array(times, dtype=np.float64))


def write_oracle_general(path: str, ids: np.ndarray, sizes: np.ndarray, times: np.ndarray) -> None:
    """Write an oracleGeneral trace (next-access times left at -1: not needed here)."""
    rec = np.zeros(len(ids), dtype=ORACLE_GENERAL)
    rec["time"], rec["id"], rec["size"], rec["next"] = times, ids, sizes, -1
    rec.tofile(path)


def cache_bytes(spec: str, trace: Trace) -> int:
    """``"1%"`` of the working set, ``"0.01"`` likewise, or a size such as ``"4GiB"``."""
    spec = spec.strip()
    if spec.endswith("%"):
        return int(trace.working_set_bytes() * float(spec[:-1]) / 100)
    try:
        share = float(spec)
    except ValueError:
        return parse_size(spec, "--cache-size")
    return int(trace.working_set_bytes() * share) if share < 1 else int(share)


def replay(trace: Trace, policy: str, size: int, *, ram_share: float = 0.0) -> list[tuple[str, float, float]]:
    """``(tier, request hit ratio, byte hit ratio)`` per tier: one cache of ``size`` bytes, or
    with ``ram_share`` a POP's RAM (that share of ``size``) in front of its disk (``size``), with
    the edge's rules between them (misses written to both, promotion on the second disk hit)."""
    uniq, inv = np.unique(trace.ids, return_inverse=True)
    keys = uniq.tolist()
    objs, sizes = inv.tolist(), trace.sizes.tolist()
    times = trace.times.tolist()
    sz = trace.sizes.astype(np.float64)
    if ram_share <= 0:
        codes = run_node(policy, size, float("inf"), keys, objs, sizes, times, disk=PLAIN_DISK)
        hit = codes == HIT
        return [("cache", float(hit.mean()), float(sz[hit].sum() / sz.sum()))]
    codes = run_pop(policy, int(size * ram_share), size, float("inf"), keys, objs, sizes, times,
                    ram_overhead=False, ram_meta_bytes=0, disk=PLAIN_DISK)
    ram = codes == POP_RAM_HIT
    to_disk = ~ram
    disk = codes == POP_DISK_HIT
    return [("POP RAM", float(ram.mean()), float(sz[ram].sum() / sz.sum())),
            ("POP disk", float(disk.sum() / max(1, to_disk.sum())), float(sz[disk].sum() / max(1.0, sz[to_disk].sum())))]


_LCS_POLICIES = {"lru": "LRU", "s3fifo": "S3FIFO", "sieve": "Sieve"}


def libcachesim_replay(trace: Trace, policy: str, size: int, *,
                       columns: tuple[int, int, int] = (1, 2, 3), header: bool = False) -> tuple[float, float, float]:
    """libCacheSim's ``(request hit ratio, byte hit ratio, seconds)`` on the same trace file."""
    import libcachesim as lcs

    if trace.format == "oracleGeneral":
        reader = lcs.TraceReader(trace.path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    else:
        params = lcs.ReaderInitParam()
        params.time_field, params.obj_id_field, params.obj_size_field = columns
        params.delimiter = ","
        params.has_header = header
        reader = lcs.TraceReader(trace.path, lcs.TraceType.CSV_TRACE, params)
    cache = getattr(lcs, _LCS_POLICIES[policy])(size)
    t0 = time.process_time()
    miss, byte_miss = cache.process_trace(reader)
    return 1 - miss, 1 - byte_miss, time.process_time() - t0


def trace_main(args, progress) -> int:
    columns = tuple(int(c) for c in args.csv_columns.split(","))
    trace = read_trace(args.trace, args.format, columns=columns, header=args.csv_header)  # type: ignore[arg-type]
    size = cache_bytes(args.cache_size, trace)
    print(f"trace {args.trace} ({trace.format}): {len(trace.ids):,} requests, "
          f"{len(np.unique(trace.ids)):,} objects, working set {trace.working_set_bytes() / 2**30:.2f} GiB; "
          f"policy {args.policy}, cache {size / 2**30:.3f} GiB")
    t0 = time.process_time()
    tiers = replay(trace, args.policy, size, ram_share=args.ram_share)
    ours_s = time.process_time() - t0
    print(f"{'tier':<10} {'request hit':>12} {'byte hit':>10}")
    for name, rh, bh in tiers:
        print(f"{name:<10} {100 * rh:>11.2f}% {100 * bh:>9.2f}%")
    if args.libcachesim:
        if args.ram_share > 0:
            t0 = time.process_time()
            ours = replay(trace, args.policy, size)[0]
            ours_s = time.process_time() - t0
        else:
            ours = tiers[0]
        lrh, lbh, lcs_s = libcachesim_replay(trace, args.policy, size, columns=columns, header=args.csv_header)
        print(f"libCacheSim {args.policy}: request hit {100 * lrh:.2f}% (ours {100 * ours[1]:.2f}%, "
              f"{100 * (ours[1] - lrh):+.2f} points), byte hit {100 * lbh:.2f}% (ours {100 * ours[2]:.2f}%, "
              f"{100 * (ours[2] - lbh):+.2f} points)")
        print(f"speed: ours {len(trace.ids) / ours_s / 1e6:.2f} M requests/CPU-s, "
              f"libCacheSim {len(trace.ids) / lcs_s / 1e6:.2f} M ({lcs_s and ours_s / lcs_s:.1f}x slower)")
    return 0


def speed_main(args, progress) -> int:
    """Our engine vs libCacheSim on one trace (``--trace`` or the ``small`` scenario's unsampled
    stream written as oracleGeneral), then the wall time of the ``prime-peak`` report."""
    from .engine import simulate
    from .report import summarise
    from .scenario import load_scenario
    from .workload import generate

    with tempfile.TemporaryDirectory() as tmp:
        if args.trace:
            columns = tuple(int(c) for c in args.csv_columns.split(","))
            trace = read_trace(args.trace, args.format, columns=columns, header=args.csv_header)  # type: ignore[arg-type]
        else:
            sc = load_scenario("small")
            req = generate(sc, rate=1.0)
            path = os.path.join(tmp, "small.oracleGeneral")
            write_oracle_general(path, req.object_ids[req.obj], req.size, req.time.astype(np.uint32))
            trace = read_trace(path, "oracleGeneral")
            columns = (1, 2, 3)
        print(f"trace: {len(trace.ids):,} requests ({'the small scenario, unsampled' if not args.trace else trace.path})")
        print(f"{'policy':<8} {'ours hit':>9} {'libCacheSim':>12} {'ours M req/s':>13} {'libCacheSim':>12} {'slower':>7}")
        for policy in ("lru", "s3fifo", "sieve"):
            size = cache_bytes(args.cache_size, trace)
            t0 = time.process_time()
            ours = replay(trace, policy, size)[0]
            ours_s = time.process_time() - t0
            lrh, _, lcs_s = libcachesim_replay(trace, policy, size, columns=columns, header=args.csv_header)
            n = len(trace.ids)
            print(f"{policy:<8} {100 * ours[1]:>8.2f}% {100 * lrh:>11.2f}% {n / ours_s / 1e6:>13.2f} "
                  f"{n / lcs_s / 1e6:>12.2f} {ours_s / lcs_s:>6.1f}x")
    sys.stdout.flush()
    sc = load_scenario(args.scenario or "prime-peak")
    if args.rate:
        sc = sc.with_sweep("rate", args.rate)
    t0 = time.perf_counter()
    with progress:
        s = summarise(simulate(sc, workers=args.workers, progress=progress))
    wall = time.perf_counter() - t0
    print(f"{sc.name}: whole report in {wall:.1f} s wall ({s.sampled_requests:,} sampled requests, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}); stages: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items()))
    return 0
