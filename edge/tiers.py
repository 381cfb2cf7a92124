"""Which upstream a request goes to: rendezvous hashing of the cache key over the next tier,
with upstreams marked down after failures and retried later. Sans-IO, time injected.

POP -> regional -> shield -> origin. Rendezvous (highest random weight) hashing gives each key
a preference order over the candidates: the first live one is chosen. A dead regional's keys
go to each key's next preference, spread over the others, and no other key moves (the
property consistent hashing exists for; the unit tests check both halves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import xxhash

from .health import Health

__all__ = ["Upstream", "rendezvous_order", "TierRouter"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    """A daemon of the next tier: its id and where it listens."""

    id: str
    host: str
    port: int


def rendezvous_order(key: bytes, nodes: Sequence[Upstream]) -> list[Upstream]:
    """``nodes`` in ``key``'s preference order (highest weight first), ties broken by id."""
    return sorted(nodes, key=lambda n: (-xxhash.xxh3_64_intdigest(key, seed=_seed(n.id)), n.id))


_SEEDS: dict[str, int] = {}


def _seed(node_id: str) -> int:
    seed = _SEEDS.get(node_id)
    if seed is None:
        seed = _SEEDS[node_id] = xxhash.xxh3_64_intdigest(node_id.encode())
    return seed


class TierRouter:
    """The next tier of one daemon, and which of its members are up.

    ``fall`` failures in a row mark an upstream down for ``down_s`` seconds; after that it is
    tried again (one request decides: a success brings it back, a failure restarts the wait):
    :class:`~.health.Health`, whose ``is_up``/``succeeded``/``failed``/``state`` it passes on.
    When every upstream is down the key's first preference is tried anyway: a request is never
    refused only because of old failures.
    """

    def __init__(self, upstreams: Sequence[Upstream], *, fall: int = 3, down_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstreams = tuple(upstreams)
        self.health = Health((u.id for u in self.upstreams), fall=fall, down_s=down_s, clock=clock)

    def is_up(self, upstream_id: str) -> bool:
        return self.health.is_up(upstream_id)

    def order(self, key: bytes) -> list[Upstream]:
        """The upstreams to try for ``key``: live ones in preference order, then the down ones."""
        ranked = rendezvous_order(key, self.upstreams)
        live = [u for u in ranked if self.is_up(u.id)]
        return live + [u for u in ranked if not self.is_up(u.id)]

    def choose(self, key: bytes) -> Upstream:
        return self.order(key)[0]

    def succeeded(self, upstream_id: str) -> None:
        self.health.succeeded(upstream_id)

    def failed(self, upstream_id: str) -> bool:
        """Count a failure; True when it marks the upstream down (now or again)."""
        return self.health.failed(upstream_id)

    def state(self) -> dict[str, str]:
        """Each upstream: "up" or "down" (for /healthz)."""
        return self.health.state()
