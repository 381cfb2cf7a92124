"""Eviction policies, sans-IO: LRU, S3-FIFO and SIEVE over byte sizes.

The edge's RAM and disk tiers and the CDN simulator (issue 15) run these same classes. A policy
knows keys and their sizes in bytes, never bodies or files. Every policy has one interface
(``EvictionPolicy``):

- ``access(key, size) -> bool``: one request, as a simulator replays it: a hit updates the
  policy's state and returns True; a miss admits the key (evicting to fit) and returns False.
- ``touch(key) -> bool`` and ``admit(key, size) -> bool``: the two halves, for a store that
  admits a key only once its body is written (its size is known then).
- ``remove(key) -> int``: drop a key (purge, corrupt entry); its size, or -1 if absent.
- ``evict_to(target_bytes) -> list``: evict until ``used <= target_bytes`` (a shrink, or a disk
  tier that lost space), returning the keys in eviction order.
- every eviction calls ``on_evict(key, size)`` if given, whatever caused it.

All operations are O(1) amortised: queues are ``collections.deque``/``OrderedDict`` (C code);
``remove`` marks a queue node dead and the queue drops it when it reaches it (compacted when dead
nodes outnumber live ones, so memory stays bounded). A key larger than the policy accepts (the
capacity; for S3-FIFO the small queue) is not admitted: ``admit`` returns False.

S3-FIFO follows Yang et al., SOSP '23 and libCacheSim's ``S3FIFO.c`` (the simulator validates
against it): a small FIFO of 10 % of the bytes, a main FIFO with a 2-bit frequency (CLOCK-like
reinsertion), a ghost FIFO of keys sized at 90 % of the capacity in bytes; an object leaves the
small queue for the main queue when it was hit ``move_to_main_threshold`` (2) times, an object
found in the ghost goes straight to the main queue, and until the first eviction new objects go
to the main queue once the small one is full. SIEVE follows Zhang et al., NSDI '24: one FIFO, a
visited bit, a hand that moves from the oldest entry to the newest, clearing visited bits and
evicting the first unvisited entry, survivors staying in place.

Measured with ``python -m headwater.edge.store.replay`` (defaults: Zipf popularity over 20,000
objects of 64 KiB-2 MiB, 1,000,000 requests, 20 % of them for one-hit wonders, seed 1; the cache
as a share of the bytes of all distinct objects requested). Request hit ratio %, byte hit ratio
% in brackets, and millions of accesses per CPU second (Python 3.11, this 2-core machine shared
with four other jobs; ``process_time``)::

    alpha  cache  LRU                    S3-FIFO                SIEVE
    0.8     1 %   33.00 (31.93) 0.98 M   44.06 (43.39) 0.63 M   43.88 (43.12) 1.53 M
    0.8     5 %   56.10 (55.59) 1.02 M   65.72 (65.25) 0.52 M   65.86 (65.31) 1.31 M
    0.8    10 %   67.28 (66.87) 0.88 M   76.47 (76.16) 0.69 M   75.39 (75.04) 1.12 M
    1.0     1 %   52.26 (50.24) 1.53 M   60.95 (59.53) 0.77 M   60.45 (58.96) 1.60 M
    1.0     5 %   66.02 (64.72) 1.44 M   72.60 (71.58) 0.84 M   71.91 (70.86) 1.33 M
    1.0    10 %   71.31 (70.24) 1.68 M   75.92 (75.01) 1.08 M   75.39 (74.45) 1.84 M

The default (``DEFAULT_POLICY``) is S3-FIFO: the best request and byte hit ratio in five cells of
six (SIEVE leads by 0.14 points in one), 4.6-11 points above LRU: its small queue keeps the
one-hit wonders out of the main queue. SIEVE is within about a point of it at twice its speed, so
a simulation that must be fast may pick it; LRU is last everywhere. S3-FIFO's cost is its miss
path (small queue, ghost, main queue); at 0.5-1 M accesses/s it is far above a worker's request
rate, and the simulator samples (SHARDS) rather than replaying every request.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Generic, Hashable, Iterator, Protocol, TypeVar

__all__ = [
    "EvictionPolicy",
    "EvictCallback",
    "LRU",
    "S3FIFO",
    "SIEVE",
    "POLICIES",
    "DEFAULT_POLICY",
    "make_policy",
]

K = TypeVar("K", bound=Hashable)
EvictCallback = Callable[[K, int], None]


class EvictionPolicy(Protocol[K]):
    """The interface every policy has (see the module docstring)."""

    name: str
    capacity: int
    used: int

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def access(self, key: K, size: int) -> bool: ...

    def touch(self, key: K) -> bool: ...

    def admit(self, key: K, size: int) -> bool: ...

    def remove(self, key: K) -> int: ...

    def evict_to(self, target_bytes: int) -> list[K]: ...

    def size_of(self, key: K) -> int: ...

    def keys(self) -> Iterator[K]: ...


def _check_capacity(capacity: int) -> int:
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0 bytes, got {capacity}")
    return int(capacity)


# Queue nodes are small lists (faster to index and mutate than objects with attributes):
# [key, size, bits, alive]; bits is the visited bit (SIEVE) or the frequency (S3-FIFO).
_KEY, _SIZE, _BITS, _ALIVE = 0, 1, 2, 3


class LRU(Generic[K]):
    """Least recently used, over bytes: evicts the entries not accessed for the longest time."""

    name = "lru"
    __slots__ = ("capacity", "used", "on_evict", "_od")

    def __init__(self, capacity: int, on_evict: EvictCallback | None = None) -> None:
        self.capacity = _check_capacity(capacity)
        self.used = 0
        self.on_evict = on_evict
        self._od: OrderedDict[K, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._od)

    def __contains__(self, key: object) -> bool:
        return key in self._od

    def size_of(self, key: K) -> int:
        return self._od.get(key, -1)

    def keys(self) -> Iterator[K]:
        """Keys from the next to be evicted to the most recently used."""
        return iter(list(self._od))

    def access(self, key: K, size: int) -> bool:
        od = self._od
        if key in od:
            od.move_to_end(key)
            return True
        self.admit(key, size)
        return False

    def touch(self, key: K) -> bool:
        try:
            self._od.move_to_end(key)
        except KeyError:
            return False
        return True

    def admit(self, key: K, size: int) -> bool:
        od = self._od
        old = od.pop(key, None)
        if old is not None:
            self.used -= old
        if size > self.capacity:
            return False
        limit = self.capacity - size
        if self.used > limit:
            self._evict_until(limit, None)
        od[key] = size
        self.used += size
        return True

    def remove(self, key: K) -> int:
        size = self._od.pop(key, None)
        if size is None:
            return -1
        self.used -= size
        return size

    def evict_to(self, target_bytes: int) -> list[K]:
        out: list[K] = []
        self._evict_until(max(0, target_bytes), out)
        return out

    def _evict_until(self, limit: int, out: list[K] | None) -> None:
        od, cb = self._od, self.on_evict
        while self.used > limit and od:
            key, size = od.popitem(last=False)
            self.used -= size
            if out is not None:
                out.append(key)
            if cb is not None:
                cb(key, size)


class SIEVE(Generic[K]):
    """SIEVE (NSDI '24): a FIFO with visited bits and a hand that sweeps from old to new.

    The list from the oldest entry to the newest is kept as two deques: ``_ahead`` holds the
    entries from the hand to the newest (new entries join its end), ``_behind`` the survivors the
    hand has passed, in order. When the hand passes the newest entry it wraps to the oldest:
    ``_behind`` becomes ``_ahead``. Survivors thus keep their places, as SIEVE requires.
    """

    name = "sieve"
    __slots__ = ("capacity", "used", "on_evict", "_nodes", "_ahead", "_behind", "_dead")

    def __init__(self, capacity: int, on_evict: EvictCallback | None = None) -> None:
        self.capacity = _check_capacity(capacity)
        self.used = 0
        self.on_evict = on_evict
        self._nodes: dict[K, list] = {}
        self._ahead: deque[list] = deque()
        self._behind: deque[list] = deque()
        self._dead = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def size_of(self, key: K) -> int:
        node = self._nodes.get(key)
        return -1 if node is None else node[_SIZE]

    def keys(self) -> Iterator[K]:
        """Keys in the order the hand meets them (live ones only)."""
        return iter([n[_KEY] for n in (*self._ahead, *self._behind) if n[_ALIVE]])

    def access(self, key: K, size: int) -> bool:
        node = self._nodes.get(key)
        if node is not None:
            node[_BITS] = 1
            return True
        self.admit(key, size)
        return False

    def touch(self, key: K) -> bool:
        node = self._nodes.get(key)
        if node is None:
            return False
        node[_BITS] = 1
        return True

    def admit(self, key: K, size: int) -> bool:
        if key in self._nodes:
            self.remove(key)
        if size > self.capacity:
            return False
        limit = self.capacity - size
        if self.used > limit:
            self._evict_until(limit, None)
        node = [key, size, 0, True]
        self._nodes[key] = node
        self._ahead.append(node)
        self.used += size
        return True

    def remove(self, key: K) -> int:
        node = self._nodes.pop(key, None)
        if node is None:
            return -1
        node[_ALIVE] = False
        self.used -= node[_SIZE]
        self._dead += 1
        if self._dead > len(self._nodes) + 64:
            self._compact()
        return node[_SIZE]

    def evict_to(self, target_bytes: int) -> list[K]:
        out: list[K] = []
        self._evict_until(max(0, target_bytes), out)
        return out

    def _compact(self) -> None:
        self._ahead = deque(n for n in self._ahead if n[_ALIVE])
        self._behind = deque(n for n in self._behind if n[_ALIVE])
        self._dead = 0

    def _evict_until(self, limit: int, out: list[K] | None) -> None:
        nodes, cb = self._nodes, self.on_evict
        ahead, behind = self._ahead, self._behind
        while self.used > limit:
            if not ahead:
                if not behind:
                    break
                ahead, behind = behind, ahead  # the hand wraps to the oldest entry
                self._ahead, self._behind = ahead, behind
            node = ahead.popleft()
            if not node[_ALIVE]:
                self._dead -= 1
                continue
            if node[_BITS]:
                node[_BITS] = 0
                behind.append(node)
                continue
            node[_ALIVE] = False
            key, size = node[_KEY], node[_SIZE]
            del nodes[key]
            self.used -= size
            if not ahead:
                # The hand passed the newest entry: it wraps now, before anything new joins.
                ahead, behind = behind, ahead
                self._ahead, self._behind = ahead, behind
            if out is not None:
                out.append(key)
            if cb is not None:
                cb(key, size)


class S3FIFO(Generic[K]):
    """S3-FIFO (SOSP '23): small FIFO (10 %), main FIFO with 2-bit frequencies, ghost FIFO."""

    name = "s3fifo"
    __slots__ = (
        "capacity",
        "used",
        "on_evict",
        "small_capacity",
        "ghost_capacity",
        "move_to_main_threshold",
        "_nodes",
        "_small",
        "_main",
        "_ghost",
        "_small_used",
        "_main_used",
        "_ghost_used",
        "_has_evicted",
        "_dead",
    )

    def __init__(
        self,
        capacity: int,
        on_evict: EvictCallback | None = None,
        *,
        small_ratio: float = 0.10,
        ghost_ratio: float = 0.90,
        move_to_main_threshold: int = 2,
    ) -> None:
        self.capacity = _check_capacity(capacity)
        self.used = 0
        self.on_evict = on_evict
        self.small_capacity = int(self.capacity * small_ratio)
        self.ghost_capacity = int(self.capacity * ghost_ratio)
        self.move_to_main_threshold = move_to_main_threshold
        # node: [key, size, freq, alive, in_main]
        self._nodes: dict[K, list] = {}
        self._small: deque[list] = deque()
        self._main: deque[list] = deque()
        self._ghost: OrderedDict[K, int] = OrderedDict()
        self._small_used = 0
        self._main_used = 0
        self._ghost_used = 0
        self._has_evicted = False
        self._dead = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def size_of(self, key: K) -> int:
        node = self._nodes.get(key)
        return -1 if node is None else node[_SIZE]

    def keys(self) -> Iterator[K]:
        """Live keys: the small queue's from oldest, then the main queue's."""
        return iter([n[_KEY] for n in (*self._small, *self._main) if n[_ALIVE]])

    # The hot paths index nodes with literals (0 key, 1 size, 2 freq, 3 alive, 4 in main) and
    # inline their helpers: this is the simulator's inner loop.

    def access(self, key: K, size: int) -> bool:
        node = self._nodes.get(key)
        if node is not None:
            if node[2] < 3:
                node[2] += 1
            return True
        self.admit(key, size)
        return False

    def touch(self, key: K) -> bool:
        node = self._nodes.get(key)
        if node is None:
            return False
        if node[2] < 3:
            node[2] += 1
        return True

    def admit(self, key: K, size: int) -> bool:
        nodes = self._nodes
        if key in nodes:
            self.remove(key)
        in_ghost = self._ghost.pop(key, None)
        if in_ghost is not None:
            self._ghost_used -= in_ghost
        elif size >= self.small_capacity:
            # As libCacheSim: an object as large as the small queue would flush it whole.
            return False
        if size > self.capacity:
            return False
        limit = self.capacity - size
        if self.used > limit:
            self._evict_until(limit, None)
        if in_ghost is not None or (not self._has_evicted and self._small_used >= self.small_capacity):
            node = [key, size, 0, True, True]
            self._main.append(node)
            self._main_used += size
        else:
            node = [key, size, 0, True, False]
            self._small.append(node)
            self._small_used += size
        nodes[key] = node
        self.used += size
        return True

    def remove(self, key: K) -> int:
        node = self._nodes.pop(key, None)
        if node is None:
            gsize = self._ghost.pop(key, None)
            if gsize is not None:
                self._ghost_used -= gsize
            return -1
        node[3] = False
        size = node[1]
        self.used -= size
        if node[4]:
            self._main_used -= size
        else:
            self._small_used -= size
        self._dead += 1
        if self._dead > len(self._nodes) + 64:
            self._small = deque(n for n in self._small if n[3])
            self._main = deque(n for n in self._main if n[3])
            self._dead = 0
        return size

    def evict_to(self, target_bytes: int) -> list[K]:
        out: list[K] = []
        self._evict_until(max(0, target_bytes), out)
        return out

    def _evict_until(self, limit: int, out: list[K] | None) -> None:
        """Evict until ``used <= limit``: from the small queue while it holds more than its
        share, else from the main queue (libCacheSim's ``S3FIFO_evict``)."""
        self._has_evicted = True
        main_capacity = self.capacity - self.small_capacity
        small, main, nodes, ghost = self._small, self._main, self._nodes, self._ghost
        threshold, cb = self.move_to_main_threshold, self.on_evict
        while self.used > limit:
            if self._main_used > main_capacity or self._small_used == 0:
                # Main: reinsert objects hit since they were last looked at (freq - 1), evict
                # the first with no hit left.
                victim = None
                while main:
                    node = main.popleft()
                    if not node[3]:
                        self._dead -= 1
                        continue
                    freq = node[2]
                    if freq:
                        node[2] = freq - 1
                        main.append(node)
                        continue
                    victim = node
                    self._main_used -= node[1]
                    break
                if victim is None:
                    return
            else:
                # Small: objects hit often enough move to main; the first other one is evicted
                # and remembered in the ghost.
                victim = None
                while small:
                    node = small.popleft()
                    if not node[3]:
                        self._dead -= 1
                        continue
                    nsize = node[1]
                    self._small_used -= nsize
                    if node[2] >= threshold:
                        node[2] = 0
                        node[4] = True
                        main.append(node)
                        self._main_used += nsize
                        continue
                    victim = node
                    ghost[node[0]] = nsize
                    self._ghost_used += nsize
                    while self._ghost_used > self.ghost_capacity and ghost:
                        self._ghost_used -= ghost.popitem(last=False)[1]
                    break
                if victim is None:
                    continue
            key, vsize = victim[0], victim[1]
            victim[3] = False
            del nodes[key]
            self.used -= vsize
            if out is not None:
                out.append(key)
            if cb is not None:
                cb(key, vsize)


POLICIES: dict[str, type] = {"lru": LRU, "s3fifo": S3FIFO, "sieve": SIEVE}
DEFAULT_POLICY = "s3fifo"


def make_policy(name: str, capacity: int, on_evict: EvictCallback | None = None) -> EvictionPolicy:
    """A policy by its config name (``lru``, ``s3fifo``, ``sieve``)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r} (one of {', '.join(POLICIES)})") from None
    return cls(capacity, on_evict)
