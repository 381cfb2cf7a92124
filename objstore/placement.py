"""Which storage nodes hold the k+m fragments of a new object: pure, deterministic placement.

Rendezvous (highest-random-weight) hashing of the object id over the nodes that are up, spread
over failure domains so that no zone, then no rack, then no host holds more fragments of one
stripe than it must: each next fragment goes to the node whose zone, rack and host hold the
fewest so far (compared in that order), the rendezvous weight breaking ties.

:func:`analyse` says what losing one zone, rack, host or node would cost a scheme on a given
layout (fragments of a stripe lost, whether writes go on), and :func:`placement_warnings` turns
that into the lines ``headwater status`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import xxhash

from .errors import StoreError

__all__ = ["NodeSite", "place", "handoff_order", "Assignment", "assign", "PlacementError", "DomainLoss", "analyse", "placement_warnings", "LEVELS"]


class PlacementError(StoreError):
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

    Greedy water-filling, widest domain first: every pick takes the node whose zone holds the
    fewest fragments chosen so far, then whose rack does, then whose host does, so one zone
    (rack, host) never holds more than the even share the layout allows. Taking domains in
    rounds and then filling "any" node (the earlier rule) could stack the overflow on one host.

    Raises PlacementError when fewer than ``width`` nodes are up.
    """
    down_set = set(down)
    up = [n for n in nodes if n.id not in down_set]
    if len(up) < width:
        raise PlacementError(f"{width} fragments need {width} storage nodes up, {len(up)} are")
    weight = {n.id: _weight(oid, n.id) for n in up}
    counts: dict[tuple[str, ...], int] = {}
    left = list(up)
    chosen: list[str] = []
    for _ in range(width):
        best = min(left, key=lambda n: (counts.get(_domain(n, "zone"), 0), counts.get(_domain(n, "rack"), 0),
                                        counts.get(_domain(n, "host"), 0), -weight[n.id], n.id))
        left.remove(best)
        chosen.append(best.id)
        for level in ("zone", "rack", "host"):
            key = _domain(best, level)
            counts[key] = counts.get(key, 0) + 1
    return chosen


def handoff_order(oid: str, width: int, nodes: Sequence[NodeSite]) -> list[str]:
    """The nodes that take a fragment of ``oid`` in place of a home node, in the order to try.

    The same greedy walk as :func:`place`, continued past ``width`` over every node: the first
    handoff is the node placement would have picked next (fewest fragments in its zone, rack and
    host so far, then rendezvous weight), so handoffs spread over failure domains as homes do,
    and every gateway and the reconstructor derive the same order from the object id alone.
    """
    return place(oid, len(nodes), nodes)[width:] if len(nodes) > width else []


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Where a new object's fragments go: ``nodes[i]`` takes fragment i (None: no live node was
    left for it); ``homes[i]`` is its home node, which differs from ``nodes[i]`` for handoffs."""

    nodes: tuple[str | None, ...]
    homes: tuple[str, ...]
    handoffs: tuple[str, ...]  # the rest of the handoff order, unused yet, for mid-write failures

    @property
    def away(self) -> dict[int, str]:
        return {i: h for i, h in enumerate(self.homes) if self.nodes[i] != h}


def assign(oid: str, width: int, nodes: Sequence[NodeSite], *, down: Iterable[str] = ()) -> Assignment:
    """Fragment i of ``oid`` to its home node (:func:`place` over *all* nodes, down or not), or,
    where the home is down, to the next node of :func:`handoff_order` that is up and holds no
    fragment of the object yet. Deterministic: the same object, layout and down set give the
    same answer. Raises PlacementError when the cluster has fewer than ``width`` nodes.
    """
    down_set = set(down)
    homes = place(oid, width, nodes)
    spare = [n for n in handoff_order(oid, width, nodes) if n not in down_set]
    chosen: list[str | None] = []
    for home in homes:
        if home not in down_set:
            chosen.append(home)
        else:
            chosen.append(spare.pop(0) if spare else None)
    return Assignment(nodes=tuple(chosen), homes=tuple(homes), handoffs=tuple(spare))


def _domain(n: NodeSite, level: str) -> tuple[str, ...]:
    if level == "zone":
        return (n.zone,)
    if level == "rack":
        return (n.zone, n.rack)
    return (n.zone, n.rack, n.host or n.id)


# --- what a domain loss costs --------------------------------------------------------------------

LEVELS = ("zone", "rack", "host", "node")
# Object ids placed to find the worst domain: placement only breaks ties by hash, so a few dozen
# ids meet every way the ties can fall on any layout of a realistic size.
_SAMPLE_OIDS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainLoss:
    """What losing one failure domain of ``level`` costs a scheme ``k+m`` on a layout."""

    level: str             # "zone", "rack", "host" or "node"
    domains: int           # distinct domains of this level among the storage nodes
    worst: str             # the domain whose loss costs most (its name)
    fragments_lost: int    # most fragments of one stripe that domain holds
    width: int             # k+m
    m: int                 # fragments a stripe can lose and still be read
    nodes_left: int        # storage nodes still up after losing ``worst``
    write_quorum: int      # fragments a write must store

    @property
    def readable(self) -> bool:
        """Every stripe still has k fragments after the loss."""
        return self.fragments_lost <= self.m

    @property
    def writable(self) -> bool:
        """Enough storage nodes remain for a write to reach its quorum."""
        return self.nodes_left >= self.write_quorum

    @property
    def spare(self) -> int:
        """Further fragment losses a stripe survives after this one (negative: already lost)."""
        return self.m - self.fragments_lost

    @property
    def unsafe(self) -> bool:
        """Worth a warning: the level has several domains (so the layout could do better or the
        operator chose it), and losing one would lose data, leave no parity margin (when that
        takes more than one fragment: a node holding one fragment is the scheme itself), or stop
        writes."""
        if self.domains < 2:
            return False
        if not self.readable:
            return True
        if self.fragments_lost > 1 and self.spare == 0:
            return True
        return not self.writable

    def cost(self) -> str:
        """One line: what the loss of the worst domain of this level does."""
        if self.domains == 1:
            head = f"{self.level} loss: all {self.width} fragments (every storage node is in {self.level} {self.worst})"
        else:
            head = f"{self.level} loss ({self.worst}): {self.fragments_lost} of {self.width} fragments per stripe"
        if not self.readable:
            tail = (f"more than m={self.m}: objects unreadable while it is out, lost if it does not "
                    f"come back")
        elif self.spare == 0 and self.m > 0:
            tail = f"all m={self.m} parity used: the next failure anywhere loses data"
        else:
            tail = f"tolerated, {self.spare} more loss{'es' if self.spare != 1 else ''} to spare"
        if self.readable:
            writes = (f"writes go on ({self.nodes_left} storage nodes left, a write needs {self.write_quorum})"
                      if self.writable else
                      f"writes stop ({self.nodes_left} storage nodes left, a write needs {self.write_quorum})")
            tail = f"{tail}; {writes}"
        return f"{head}: {tail}"


def _domain_name(n: NodeSite, level: str) -> tuple[str, ...]:
    return (n.id,) if level == "node" else _domain(n, level)


def analyse(nodes: Sequence[NodeSite], *, k: int, m: int, write_quorum: int) -> list[DomainLoss]:
    """What losing one zone, one rack, one host and one node costs EC ``k+m`` on ``nodes``.

    Placement is run for a sample of object ids, and the worst stripe counts: the domain that
    holds the most fragments of any one stripe. Levels come widest first (``LEVELS``).
    Raises PlacementError when there are fewer nodes than k+m.
    """
    width = k + m
    if len(nodes) < width:
        raise PlacementError(f"EC {k}+{m} needs {width} storage nodes, the layout has {len(nodes)}")
    by_id = {n.id: n for n in nodes}
    worst: dict[str, tuple[int, tuple[str, ...]]] = {}
    for i in range(_SAMPLE_OIDS):
        chosen = [by_id[x] for x in place(f"analyse-{i}", width, nodes)]
        for level in LEVELS:
            per: dict[tuple[str, ...], int] = {}
            for n in chosen:
                key = _domain_name(n, level)
                per[key] = per.get(key, 0) + 1
            key, count = max(per.items(), key=lambda kv: (kv[1], kv[0]))
            if count > worst.get(level, (0, ()))[0]:
                worst[level] = (count, key)
    out = []
    for level in LEVELS:
        count, key = worst[level]
        members = [n for n in nodes if _domain_name(n, level) == key]
        out.append(DomainLoss(level=level, domains=len({_domain_name(n, level) for n in nodes}),
                              worst="/".join(key) if level == "rack" else key[-1], fragments_lost=count, width=width, m=m,
                              nodes_left=len(nodes) - len(members), write_quorum=write_quorum))
    return out


def placement_warnings(losses: Sequence[DomainLoss], *, k: int, m: int) -> list[str]:
    """Operator-facing warnings for the levels where one domain's loss is unsafe, widest first."""
    out = []
    for d in losses:
        if not d.unsafe:
            continue
        counts = f"EC {k}+{m} on {d.domains} {d.level}s"
        out.append(f"{counts}: {d.cost()}")
    return out
