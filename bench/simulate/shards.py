"""SHARDS: spatial hash-based sampling of the key space (Waldspurger et al., FAST '15).

A key is kept when ``hash(key) mod P < T``; the sampling rate is ``R = T / P``. Every request
for a kept key is kept, so each kept key's reuse pattern is intact, and a cache of ``C`` bytes
over the full stream behaves like a cache of ``R * C`` bytes over the sampled one: hit ratios
are read directly, absolute counts (requests/s, bytes/s) are divided by ``R``.

The hash is splitmix64's finaliser over the key's 64-bit id, vectorised with numpy: the
generator hashes whole titles at once and never materialises unsampled requests. Within the
simulator a key's id is 1:1 with its cache key (the path is built from the id, and the
behaviour keys on the path alone), so sampling by id is sampling by cache key. For a trace,
the id is the trace's object id.

Error: measured in ``tests/unit/test_simulate.py`` and ``docs/simulate.md`` (sampled vs
unsampled on a scenario small enough to replay in full).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MODULUS", "Shards", "spatial_hash", "shard_by"]

MODULUS = 1 << 24
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def spatial_hash(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each id (uint64): uniform bits, the same on every machine and run."""
    z = ids.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


@dataclass(frozen=True, slots=True)
class Shards:
    """Fixed-rate SHARDS: ``threshold`` of ``MODULUS`` hash values are kept."""

    threshold: int

    @classmethod
    def at_rate(cls, rate: float) -> Shards:
        if not 0 < rate <= 1:
            raise ValueError(f"sampling rate {rate} is outside (0, 1]")
        return cls(max(1, round(rate * MODULUS)))

    @property
    def rate(self) -> float:
        return self.threshold / MODULUS

    def keep(self, ids: np.ndarray) -> np.ndarray:
        """A boolean mask: which ids are sampled."""
        if self.threshold >= MODULUS:
            return np.ones(len(ids), dtype=bool)
        return (spatial_hash(ids) & np.uint64(MODULUS - 1)) < np.uint64(self.threshold)

    def scale(self, capacity_bytes: int) -> int:
        """A full-scale cache size as the sampled stream sees it."""
        return int(capacity_bytes * self.rate)

    def unscale(self, count: float) -> float:
        """A count over the sampled stream as the full stream's."""
        return count / self.rate


def shard_by(values: np.ndarray, n: int) -> list[np.ndarray]:
    """Indices of ``values`` (small ints 0..n-1, e.g. POP numbers) grouped by value, each group
    in its original (time) order: per-POP sharding of the sampled stream. Each shard runs on its
    own (a POP's caches see only its viewers), in parallel if wanted."""
    order = np.argsort(values, kind="stable")
    bounds = np.searchsorted(values[order], np.arange(n + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(n)]
