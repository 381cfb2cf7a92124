"""Replay a synthetic CDN trace through the eviction policies: hit ratios and accesses/s.

``python -m headwater.edge.store.replay [--requests N] [--objects N] [--alpha A ...]`` prints a
table per Zipf skew and cache size. The figures chose ``policy.DEFAULT_POLICY`` and are quoted in
``policy.py``'s docstring. The trace is deterministic for a seed.

The workload: ``objects`` distinct objects with Zipf(``alpha``) popularity (rank r requested with
probability proportional to 1/r^alpha), each with a fixed size drawn log-uniformly between
``min_size`` and ``max_size``; a share ``one_hit_share`` of the requests goes to objects requested
exactly once (one-hit wonders: the long tail a CDN sees, which a good policy keeps from pushing out
the popular objects).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time
from dataclasses import dataclass

from headwater.edge.store.policy import POLICIES

__all__ = ["Trace", "zipf_trace", "ReplayResult", "replay", "main"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """Requests as parallel lists: key and size of each."""

    keys: list[int]
    sizes: list[int]
    distinct_bytes: int  # bytes of all distinct objects requested (cache sizes are shares of it)


def zipf_trace(
    *,
    requests: int,
    objects: int,
    alpha: float,
    one_hit_share: float,
    rng: random.Random,
    min_size: int = 64 * 1024,
    max_size: int = 2 * 1024 * 1024,
) -> Trace:
    """A trace of ``requests`` requests (see the module docstring)."""
    weights = [1.0 / (r**alpha) for r in range(1, objects + 1)]
    cum = list(itertools.accumulate(weights))
    log_lo, log_hi = math.log(min_size), math.log(max_size)
    obj_size = [int(math.exp(rng.uniform(log_lo, log_hi))) for _ in range(objects)]
    popular = rng.choices(range(objects), cum_weights=cum, k=requests)
    keys: list[int] = []
    sizes: list[int] = []
    next_wonder = objects
    seen: set[int] = set()
    distinct = 0
    for rank in popular:
        if rng.random() < one_hit_share:
            keys.append(next_wonder)
            size = int(math.exp(rng.uniform(log_lo, log_hi)))
            sizes.append(size)
            distinct += size
            next_wonder += 1
        else:
            keys.append(rank)
            sizes.append(obj_size[rank])
            if rank not in seen:
                seen.add(rank)
                distinct += obj_size[rank]
    return Trace(keys=keys, sizes=sizes, distinct_bytes=distinct)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult:
    """One policy over one trace at one cache size."""

    policy: str
    capacity: int
    hit_ratio: float
    byte_hit_ratio: float
    accesses_per_s: float  # per CPU second of this process


def replay(policy_name: str, capacity: int, trace: Trace) -> ReplayResult:
    """Run ``trace`` through a fresh policy of ``capacity`` bytes."""
    policy = POLICIES[policy_name](capacity)
    access = policy.access
    hits = 0
    hit_bytes = 0
    # CPU time, not wall time: this machine is shared, and the figure is the policy's cost.
    t0 = time.process_time()
    for key, size in zip(trace.keys, trace.sizes):
        if access(key, size):
            hits += 1
            hit_bytes += size
    elapsed = time.process_time() - t0
    n = len(trace.keys)
    return ReplayResult(
        policy=policy_name,
        capacity=capacity,
        hit_ratio=hits / n if n else 0.0,
        byte_hit_ratio=hit_bytes / max(1, sum(trace.sizes)),
        accesses_per_s=n / elapsed if elapsed > 0 else float("inf"),
    )


def main(argv: list[str] | None = None) -> None:
    """Print hit ratios (request %, byte %) and accesses/s per policy, skew and cache size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--objects", type=int, default=20_000)
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.8, 1.0])
    ap.add_argument("--one-hit-share", type=float, default=0.2)
    ap.add_argument("--cache", type=float, nargs="+", default=[0.01, 0.05, 0.10], help="shares")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    for alpha in args.alpha:
        trace = zipf_trace(
            requests=args.requests,
            objects=args.objects,
            alpha=alpha,
            one_hit_share=args.one_hit_share,
            rng=random.Random(args.seed),
        )
        for share in args.cache:
            cap = int(trace.distinct_bytes * share)
            cells = []
            for name in POLICIES:
                r = replay(name, cap, trace)
                cells.append(
                    f"{name} {100 * r.hit_ratio:5.2f}% (bytes {100 * r.byte_hit_ratio:5.2f}%)"
                    f" {r.accesses_per_s / 1e6:4.2f} M/s"
                )
            print(f"alpha {alpha:.1f} cache {100 * share:4.1f}%: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
