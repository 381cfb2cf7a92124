"""Token buckets by key in a fixed-size, set-associative table. Sans-IO.

The shape every per-client limit in Headwater shares (the edge's per-client limits, the DRM
licence server's per-user and per-address limits): a :class:`RateLimit` (refill rate, burst) and
a :class:`TokenBuckets` table whose memory is bounded whatever the number of keys a hostile
crowd presents.

The table holds at most ``max_buckets`` buckets, set-associatively (sets of :data:`WAYS` slots
chosen by a keyed BLAKE2b hash with a secret drawn at start, so nobody outside can aim keys at a
chosen set). A new key takes a free slot in its set, else evicts the bucket holding the *most
tokens* (refilled to now, relative to its burst). That choice makes eviction harmless: a full
bucket is indistinguishable from a fresh one (fresh buckets start full), so evicting it changes
no decision; a key being limited (an empty bucket) is evicted only when every other bucket in
its set is emptier. A spray of one-request keys leaves near-full buckets that only evict each
other, and cannot free a flooding key of its debt. (An LRU would do the opposite: every new
spoofed source would push out the oldest entry — the limited flooder.)

Time (``now``, monotonic seconds) and the hash secret are injected.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
from dataclasses import dataclass

__all__ = ["RateLimit", "TokenBuckets", "WAYS", "address_key"]

WAYS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A token bucket's shape: refill rate (requests/s) and capacity (burst)."""

    requests_per_s: float
    burst: float

    def __post_init__(self) -> None:
        if self.requests_per_s <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs requests_per_s > 0 and burst >= 1")


# A bucket is a small list mutated in place on the hot path: [tokens, stamp, rate, burst, key]
_TOK, _STAMP, _RATE, _BURST, _KEY = range(5)


class TokenBuckets:
    """Token buckets by key in a fixed-size set-associative table (see the module docstring)."""

    def __init__(self, max_buckets: int, *, secret: bytes | None = None) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        secret = secret if secret is not None else os.urandom(16)
        self._ways = min(WAYS, max_buckets)
        self._nsets = max(1, max_buckets // self._ways)
        self.capacity = self._nsets * self._ways
        self._sets: list[list[list]] = [[] for _ in range(self._nsets)]
        self._blake = hashlib.blake2b(key=secret, digest_size=8)
        self._buckets: dict[tuple, list] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: tuple, limit: RateLimit, now: float) -> float:
        """Take one token from ``key``'s bucket; 0.0 if taken, else seconds until one is there."""
        rate, burst = limit.requests_per_s, limit.burst
        b = self._buckets.get(key)
        if b is None:
            b = self._insert(key, rate, burst, now)
        else:
            dt = now - b[_STAMP]
            if dt > 0.0:
                t = b[_TOK] + rate * dt
                b[_TOK] = burst if t > burst else t
                b[_STAMP] = now
            b[_RATE], b[_BURST] = rate, burst
        if b[_TOK] >= 1.0:
            b[_TOK] -= 1.0
            return 0.0
        return (1.0 - b[_TOK]) / rate

    def _insert(self, key: tuple, rate: float, burst: float, now: float) -> list:
        h = self._blake.copy()
        h.update(repr(key).encode())
        slots = self._sets[int.from_bytes(h.digest(), "little") % self._nsets]
        b = [burst, now, rate, burst, key]
        if len(slots) < self._ways:
            slots.append(b)
        else:
            # Evict the bucket with the most tokens relative to its burst, refilled to now: a full
            # bucket is the same as a fresh one, so that eviction changes nothing.
            best, best_fill = 0, -1.0
            for i, s in enumerate(slots):
                fill = min(s[_BURST], s[_TOK] + s[_RATE] * max(0.0, now - s[_STAMP])) / s[_BURST]
                if fill > best_fill:
                    best, best_fill = i, fill
            del self._buckets[slots[best][_KEY]]
            slots[best] = b
            self.evictions += 1
        self._buckets[key] = b
        return b


@functools.lru_cache(maxsize=8192)
def address_key(client_ip: str, ipv6_prefix: int = 64) -> tuple[int, int]:
    """The bucket key of a client address: (4, the IPv4 address) or (6, the IPv6 address's
    /``ipv6_prefix``: a host owns a /64); IPv4-mapped IPv6 counts as IPv4; an unparseable
    address is (0, 0), one shared key. Cached (bounded): a keep-alive client's address is
    parsed once, not per request."""
    try:
        addr = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return (0, 0)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        return (4, int(addr))
    return (6, int(addr) >> (128 - ipv6_prefix))
