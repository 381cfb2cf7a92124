"""The tier model: POP RAM -> POP disk -> regional (rendezvous) -> shield (rendezvous) -> origin.

Every cache is an instance of the edge's own eviction policy (``headwater.edge.store.policy``)
sized ``capacity * R`` (SHARDS), keyed by the edge's own cache keys (``cache_key`` of the path
the player requests under the default behaviour), and the POP -> regional and regional -> shield
choices are the edge's ``TierRouter`` (rendezvous hashing of the cache key).

A POP follows the edge's own rules around its stores: a miss is written into both tiers, and a
disk hit is copied into RAM only as the edge's ``Promoter`` decides (``headwater.edge.promote``:
on the second disk hit, bodies up to ``promote_max_size``).

The tiers run one after another, each over its whole stream: a POP's caches see only that POP's
requests (per-POP sharding), so the POPs run independently (in parallel processes if wanted);
their misses, in time order, are the regional caches' stream, split by rendezvous; and so on.
This is exact, not an approximation: a tier never waits on the one above it in this model
(the fill of a miss is taken as instant, as the edge's request collapsing makes it for others).

Freshness: an entry older than the TTL is revalidated upstream (a conditional request: VOD
objects never change, so the answer is a 304 and no body moves) and counts as a miss for the
request hit ratio but not for the byte hit ratio. A POP's RAM and disk share one freshness.

Outcome codes per request: POP ``0`` RAM hit, ``1`` RAM stale, ``2`` disk hit, ``3`` disk stale,
``4`` miss; other tiers ``0`` hit, ``1`` stale (revalidated upstream), ``2`` miss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from headwater.edge.cache.behaviour import DEFAULT_BEHAVIOUR
from headwater.edge.cache.cachekey import cache_key
from headwater.edge.entry import store_key
from headwater.edge.promote import PROMOTED, PromotionConfig, Promoter
from headwater.edge.store.disk import ENTRY_OVERHEAD_BYTES as DISK_ENTRY_OVERHEAD_BYTES
from headwater.edge.store.disk import DiskSettings
from headwater.edge.store.policy import make_policy
from headwater.edge.store.ram import ENTRY_OVERHEAD_BYTES
from headwater.edge.tiers import Upstream, rendezvous_order

__all__ = ["POP_RAM_HIT", "POP_RAM_STALE", "POP_DISK_HIT", "POP_DISK_STALE", "POP_MISS",
           "HIT", "STALE", "MISS", "run_pop", "run_node", "route", "PlaybackRequest",
           "cache_keys", "DiskModel", "EDGE_DISK", "PLAIN_DISK", "RAM_META_BYTES"]

POP_RAM_HIT, POP_RAM_STALE, POP_DISK_HIT, POP_DISK_STALE, POP_MISS = range(5)
HIT, STALE, MISS = range(3)

# What a RAM entry's metadata (the edge's ``encode_meta``: the stored response's status, header
# fields and times, and the key once more) costs besides the body: the RAM store charges it.
# Measured in the live check's POP stores, a segment as the regional tier hands it on (content
# type, cache-control, date, server, two tiers' Via; a 31-byte key): 273 bytes.
RAM_META_BYTES = 273


_DISK_HEADROOM: float = next(f.default for f in fields(DiskSettings) if f.name == "headroom")


@dataclass(frozen=True, slots=True)
class DiskModel:
    """How a disk tier (the edge's ``DiskStore``) holds entries: its evictor's policy aims at
    ``capacity * (1 - headroom)``; each entry is charged its body, its store key and
    ``overhead`` bytes (file and index records); bodies above ``capacity // 16`` are not stored."""

    overhead: int = DISK_ENTRY_OVERHEAD_BYTES
    headroom: float = _DISK_HEADROOM
    limit_share: int = 16  # max entry = capacity // limit_share (0: no limit)

    def target(self, capacity: int) -> int:
        return int(capacity * (1.0 - self.headroom))

    def limit(self, capacity: int) -> int:
        return capacity // self.limit_share if self.limit_share else capacity


EDGE_DISK = DiskModel()
# A plain cache of ``capacity`` bytes charged by body size (trace replays, libCacheSim's model).
PLAIN_DISK = DiskModel(overhead=0, headroom=0.0, limit_share=0)


def _store_key_lengths(keys: Sequence[bytes]) -> dict[bytes, int]:
    return {k: len(store_key(k)) for k in keys}


class _NoHeaders:
    """A request without header fields: the simulator's players send none the key reads."""

    def get(self, name: str, default: str | None = None) -> str | None:
        return default

    def get_all(self, name: str) -> list[str]:
        return []

    def __iter__(self):
        return iter(())


class PlaybackRequest:
    """A player's GET as the edge's cache rules read it (``CacheRequest``)."""

    __slots__ = ("path",)
    method = "GET"
    query = ""
    headers = _NoHeaders()

    def __init__(self, path: str) -> None:
        self.path = path


def cache_keys(paths: Sequence[str], distribution: str = "vod") -> list[bytes]:
    """The edge's cache key of each path (default behaviour: the path alone is keyed)."""
    return [cache_key(PlaybackRequest(p), DEFAULT_BEHAVIOUR, distribution=distribution) for p in paths]


def route(keys: Sequence[bytes], objs: np.ndarray, nodes: Sequence[str]) -> np.ndarray:
    """For each request (``objs`` index ``keys``), the index in ``nodes`` its key goes to, as the
    edge's ``TierRouter`` chooses with all nodes up: the key's first rendezvous preference."""
    if len(nodes) == 1:
        return np.zeros(len(objs), dtype=np.int32)
    upstreams = [Upstream(id=n, host="127.0.0.1", port=1) for n in nodes]
    index = {n: i for i, n in enumerate(nodes)}
    uniq, inv = np.unique(objs, return_inverse=True)
    choice = np.fromiter((index[rendezvous_order(keys[o], upstreams)[0].id] for o in uniq.tolist()),
                         dtype=np.int32, count=len(uniq))
    return choice[inv]


def run_pop(policy: str, ram_bytes: int, disk_bytes: int, ttl_s: float, keys: Sequence[bytes],
            objs: Sequence[int], sizes: Sequence[int], times: Sequence[float], *,
            promotion: PromotionConfig | None = None, ram_max_entry_bytes: int | None = None,
            ram_overhead: bool = True, disk: DiskModel = EDGE_DISK,
            ram_meta_bytes: int = RAM_META_BYTES) -> np.ndarray:
    """One POP's stream through its RAM and disk caches; an outcome code per request.

    As the edge's POP does: a miss is written into both tiers (RAM only up to
    ``ram_max_entry_bytes``, the RAM store's default ``capacity // 16``); a disk hit is copied into
    RAM only when the edge's own ``Promoter`` says so (second disk hit, bodies up to
    ``promote_max_size``, at most ``promote_rate`` bytes/s; pass the config scaled by the
    sampling rate). RAM entries are charged body + metadata (``ram_meta_bytes``) + key + the RAM
    store's per-entry overhead (``ram_overhead``; off for a plain trace replay); the disk tier
    as ``disk`` says (the edge's ``DiskStore``: headroom, per-entry overhead, entry limit)."""
    ram = make_policy(policy, ram_bytes)
    disk_cache = make_policy(policy, disk.target(disk_bytes))
    disk_limit, disk_extra = disk.limit(disk_bytes), disk.overhead
    skey_len = _store_key_lengths(keys) if disk_extra else None
    ram_touch, ram_admit = ram.touch, ram.admit
    disk_touch, disk_admit = disk_cache.touch, disk_cache.admit
    ram_max = ram_bytes // 16 if ram_max_entry_bytes is None else ram_max_entry_bytes
    promoter = Promoter(promotion or PromotionConfig(), ram_max_entry_bytes=ram_max,
                        now=times[0] if len(times) else 0.0)
    consider, done = promoter.consider, promoter.done
    extra = ENTRY_OVERHEAD_BYTES + ram_meta_bytes
    expires = not (ttl_s >= 1e12 or ttl_s >= (max(times) - min(times) if len(times) else 0))
    out = bytearray(len(objs))
    fetched: dict[bytes, float] = {}
    for i, (o, s, t) in enumerate(zip(objs, sizes, times)):
        key = keys[o]
        if ram_touch(key):
            if expires and t - fetched[key] > ttl_s:
                fetched[key] = t
                out[i] = POP_RAM_STALE
            continue  # 0: RAM hit
        if disk_touch(key):
            if consider(key, s, t) == PROMOTED:
                ram_admit(key, s + len(key) + extra if ram_overhead else s)
                done(key)
            if expires and t - fetched[key] > ttl_s:
                fetched[key] = t
                out[i] = POP_DISK_STALE
            else:
                out[i] = POP_DISK_HIT
            continue
        # A miss: fetched upstream, written into the disk tier and (if small enough) RAM.
        fetched[key] = t
        if s <= disk_limit:
            disk_admit(key, s + skey_len[key] + disk_extra if skey_len is not None else s)
        if s <= ram_max:
            ram_admit(key, s + len(key) + extra if ram_overhead else s)
        out[i] = POP_MISS
    return np.frombuffer(bytes(out), dtype=np.uint8)


def run_node(policy: str, capacity: int, ttl_s: float, keys: Sequence[bytes], objs: Sequence[int],
             sizes: Sequence[int], times: Sequence[float], disk: DiskModel = EDGE_DISK) -> np.ndarray:
    """One regional or shield cache (a disk tier, as ``disk`` models it) over its stream; an
    outcome code per request."""
    cache = make_policy(policy, disk.target(capacity))
    out = bytearray(len(objs))
    limit, extra = disk.limit(capacity), disk.overhead
    if not extra and limit >= capacity:
        access = cache.access  # (a plain cache: the one call, as libCacheSim replays)
        if ttl_s >= 1e12 or ttl_s >= (max(times) - min(times) if len(times) else 0):
            for i, o, s in zip(range(len(objs)), objs, sizes):
                if not access(keys[o], s):
                    out[i] = MISS
            return np.frombuffer(bytes(out), dtype=np.uint8)
    touch, admit = cache.touch, cache.admit
    skey_len = _store_key_lengths(keys) if extra else None
    expires = not (ttl_s >= 1e12 or ttl_s >= (max(times) - min(times) if len(times) else 0))
    fetched: dict[bytes, float] = {}
    for i, (o, s, t) in enumerate(zip(objs, sizes, times)):
        key = keys[o]
        if touch(key):
            if expires and t - fetched[key] > ttl_s:
                fetched[key] = t
                out[i] = STALE
            continue
        fetched[key] = t
        out[i] = MISS
        if s <= limit:
            admit(key, s + skey_len[key] + extra if skey_len is not None else s)
    return np.frombuffer(bytes(out), dtype=np.uint8)
