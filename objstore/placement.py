"""Which storage nodes hold the k+m fragments of a new object: pure, deterministic placement.

Rendezvous (highest-random-weight) hashing of the object id over the nodes that are up, taken
round-robin across failure domains (zone, then rack, then host) so that the fragments of one
stripe spread as widely as the cluster allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import xxhash

__all__ = ["NodeSite", "place", "PlacementError"]


class PlacementError(Exception):
    """Fewer healthy storage nodes than a scheme's width."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSite:
    """A storage node and its failure domains."""

    id: str
    zone: str = "z1"
    rack: str = "r1"
    host: str = ""


def _weight(oid: str, node_id: str) -> int:
    return xxhash.xxh64_intdigest(f"{oid}/{node_id}".encode())


def place(oid: str, width: int, nodes: Sequence[NodeSite], *, down: Iterable[str] = ()) -> list[str]:
    """Pick ``width`` distinct up nodes for ``oid``, spread across zones, racks and hosts.

    Raises PlacementError when fewer than ``width`` nodes are up.
    """
    down_set = set(down)
    up = [n for n in nodes if n.id not in down_set]
    if len(up) < width:
        raise PlacementError(f"{width} fragments need {width} storage nodes up, {len(up)} are")
    ranked = sorted(up, key=lambda n: _weight(oid, n.id), reverse=True)
    chosen: list[NodeSite] = []
    # Take a node from a not-yet-used zone first, then rack, then host, then any: a greedy pass
    # per domain level keeps the rendezvous order within each level.
    for level in ("zone", "rack", "host", None):
        for n in ranked:
            if len(chosen) == width:
                break
            if n in chosen:
                continue
            if level is None or all(_domain(n, level) != _domain(c, level) for c in chosen):
                chosen.append(n)
    return [n.id for n in chosen]


def _domain(n: NodeSite, level: str) -> tuple[str, ...]:
    if level == "zone":
        return (n.zone,)
    if level == "rack":
        return (n.zone, n.rack)
    return (n.zone, n.rack, n.host or n.id)
