"""Where cached responses live: the RAM tier, the disk tier shared by a POP's workers, and eviction policies.

``api`` is the interface the request path uses (``Store``, ``Hit``, ``Writer``, ``Claim``);
``ram.RamStore`` and ``disk.DiskStore`` implement it; ``policy`` holds the sans-IO eviction
policies that the stores and the simulator share; ``replay`` measures them on a synthetic trace.
"""

from headwater.edge.store.api import (
    AlreadyFilling,
    Claim,
    EntryAborted,
    EntryCorrupt,
    EntryInfo,
    Hit,
    Store,
    StoreFault,
    StoreStats,
    Writer,
)
from headwater.edge.store.disk import DiskSettings, DiskStore
from headwater.edge.store.policy import DEFAULT_POLICY, LRU, POLICIES, S3FIFO, SIEVE, make_policy
from headwater.edge.store.ram import RamStore

__all__ = [
    "AlreadyFilling",
    "Claim",
    "EntryAborted",
    "EntryCorrupt",
    "EntryInfo",
    "Hit",
    "Store",
    "StoreFault",
    "StoreStats",
    "Writer",
    "DiskSettings",
    "DiskStore",
    "RamStore",
    "DEFAULT_POLICY",
    "LRU",
    "S3FIFO",
    "SIEVE",
    "POLICIES",
    "make_policy",
]
