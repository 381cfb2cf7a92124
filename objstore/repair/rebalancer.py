"""The rebalancer: moves fragments toward where placement would put them now, in the background.

When a storage node joins the cluster, new writes use it (placement is rendezvous hashing over
every node) but existing fragments stay where they were written, so the new node stays nearly
empty. A rebalancer pass:

1. walks every layout (:func:`layouts.walk_layouts`) and tallies the fragment bytes each
   storage node holds according to the records (:func:`tally`); the fair share is the mean;
2. walks them again and, for each object layout, asks :func:`plan_moves` which fragments to
   move: fragment i goes from node A to node B only when B is where :func:`placement.place`
   would put a fragment of this object now and A is not, B is below its fair share (less a
   ``slack``) and fuller nodes give to emptier ones, and the failure-domain spread of the layout
   does not get worse. Moves only go toward the desired placement and stop once the new node
   has its share, so the churn of one added node is bounded (about one fragment per object
   whose desired placement names it) and a second pass moves nothing;
3. copies each chosen fragment: reads its blocks from A (the node verifies each block's
   checksum), appends them to B, commits, reads B's copy back and compares an xxhash of the
   bytes, then points the record at B with a conditional write (the reconstructor's
   ``record_moves``: a concurrent overwrite or delete wins and the copy is removed);
4. removes A's copy on exactly the collector's condition (:func:`gc.may_delete`): the file's
   mtime read first (``frag.stat``), then the record, and the copy deleted, naming that mtime,
   only if the record does not name it, the record changed ``grace_s`` ago or more (a gateway
   may be mid-GET on the old layout) and the file is ``grace_s`` old. A copy named again is
   left alone (the collector's, should it become unnamed again); one whose file is younger (the
   fragment written to A again since) is looked at again when it is old enough.

Handed-off fragments (``Layout.homes``) are the reconstructor's: the rebalancer never moves a
fragment that is away from home, never moves another fragment onto a node that is an away
fragment's home (that would keep it from coming home), and its record rewrite keeps the marks.

Reads never wait: until the record changes, GETs read A; after it, B; A's copy outlives the
change by the retire grace. Writes never wait: the record write is a compare-and-swap the
rebalancer loses. A copy left behind by a crash is unnamed by any record, and the garbage
collector removes it (it judges each node's files, not only object ids).

Multipart uploads in progress are left alone (their part records are short-lived and
CompleteMultipartUpload copies their layouts into the object record, which a later pass moves).

The planning is pure (:func:`tally`, :func:`plan_moves`); the class around it does the I/O, and
the loop around the passes is :class:`headwater.background.BackgroundLoop` (old copies are its
idle work between passes).
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import anyio
import xxhash

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.rpc import RpcError
from headwater.throttle import Pacer

from ..datapath import StoragePool
from ..layouts import LayoutRef, layouts_in, walk_layouts
from ..metadata.client import MetadataClient
from ..placement import NodeSite, place
from ..records import Layout
from ..storage.client import FragmentNotFound
from .gc import may_delete
from .reconstructor import (
    REBUILD_BATCH_BYTES,
    Reconstructor,
    RepairError,
    failure_reason,
)

__all__ = ["Move", "tally", "fair_share", "spread", "plan_moves", "Rebalancer", "CopyMismatch"]

log = logging.getLogger("headwater.rebalancer")

# A node counts as under-filled below this fraction of the fair share short of it: enough
# hysteresis that a balanced cluster moves nothing because of one object's size.
DEFAULT_SLACK = 0.05
# How often run_forever looks at the queue of old copies waiting out their grace.
RETIRE_CHECK_S = 1.0


class CopyMismatch(RepairError):
    """The copy read back from the target differs from what was read from the source."""

    reason = "copy_mismatch"


# --- planning (pure) -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    """Fragment ``index`` of a layout goes from ``source`` to ``target``."""

    index: int
    source: str
    target: str


def fragment_size(layout: Layout) -> int:
    """Bytes of one fragment of ``layout`` (payload; every fragment of a layout is this size)."""
    return layout.stripes * layout.scheme.fragment_bytes


def tally(layouts: Sequence[Layout] | Any, nodes: Sequence[str] = ()) -> dict[str, int]:
    """Fragment bytes each node holds according to ``layouts`` (every node of ``nodes`` present,
    at 0 if it holds nothing)."""
    load = {n: 0 for n in nodes}
    for lay in layouts:
        size = fragment_size(lay)
        for n in lay.nodes:
            if n is not None:
                load[n] = load.get(n, 0) + size
    return load


def fair_share(load: Mapping[str, float], nodes: Sequence[str]) -> float:
    """The mean load over ``nodes`` (every node the same weight, as placement gives them)."""
    return sum(load.get(n, 0) for n in nodes) / len(nodes) if nodes else 0.0


def spread(nodes: Sequence[str], sites: Mapping[str, NodeSite]) -> tuple[int, int, int]:
    """Most fragments of one stripe in one zone, one rack and one host (lower is safer)."""
    counts: list[dict[tuple[str, ...], int]] = [{}, {}, {}]
    for n in nodes:
        s = sites[n]
        for level, key in enumerate(((s.zone,), (s.zone, s.rack), (s.zone, s.rack, s.host or s.id))):
            counts[level][key] = counts[level].get(key, 0) + 1
    return tuple(max(c.values(), default=0) for c in counts)  # type: ignore[return-value]


def plan_moves(layout: Layout, sites: Sequence[NodeSite], load: Mapping[str, float], *,
               up: set[str] | None = None, slack: float = DEFAULT_SLACK) -> list[Move]:
    """Which fragments of ``layout`` to move now, given each node's ``load`` (bytes).

    A layout with an unplaced fragment, a node the cluster no longer has, or a node twice is
    the reconstructor's business: nothing moves; nor does a fragment away from home
    (``layout.away``), and no fragment moves onto an away fragment's home. Otherwise fragment
    i moves from A to B when: B is in the placement ``place()`` gives the object over ``sites``
    and A is not; both are up (``up``: None means all); B is below ``fair share * (1 - slack)`` and the move narrows the
    gap between them (A holds more than B will); and the layout's failure-domain
    :func:`spread` is no worse afterwards. Among several sources, the one leaving the best
    spread, then the fullest, gives.
    """
    by_id = {s.id: s for s in sites}
    nodes = list(layout.nodes)
    if layout.size == 0 or any(n is None or n not in by_id for n in nodes) or len(set(nodes)) != len(nodes):
        return []
    width = layout.k + layout.m
    if len(sites) < width:
        return []
    desired = place(layout.oid, width, sites)
    current = set(nodes)
    share = fair_share(load, [s.id for s in sites])
    size = fragment_size(layout)
    live = (lambda n: True) if up is None else (lambda n: n in up)
    away = layout.away  # handed off: the reconstructor moves these home, and their homes are theirs
    sources = [n for i, n in enumerate(nodes) if n not in desired and live(n) and i not in away]
    targets = [n for n in desired if n not in current and live(n) and n not in away.values()]
    plan_load = dict(load)
    moves: list[Move] = []
    for target in targets:
        if plan_load.get(target, 0) >= share * (1 - slack):
            continue
        before = spread(nodes, by_id)
        best: tuple | None = None
        for source in sources:
            if plan_load.get(source, 0) - size < plan_load.get(target, 0):
                continue  # would only swap which of the two is short
            after = [target if n == source else n for n in nodes]
            sp = spread(after, by_id)
            if sp > before:
                continue
            key = (sp, -plan_load.get(source, 0), source)
            if best is None or key < best[0]:
                best = (key, source)
        if best is None:
            continue
        source = best[1]
        index = nodes.index(source)
        moves.append(Move(index=index, source=source, target=target))
        nodes[index] = target
        sources.remove(source)
        plan_load[source] = plan_load.get(source, 0) - size
        plan_load[target] = plan_load.get(target, 0) + size
    return moves


def apply_moves(load: dict[str, float], layout: Layout, moves: Sequence[Move]) -> None:
    """Account ``moves`` of ``layout`` in ``load`` (after they landed)."""
    size = fragment_size(layout)
    for mv in moves:
        load[mv.source] = load.get(mv.source, 0) - size
        load[mv.target] = load.get(mv.target, 0) + size


# --- the rebalancer ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class _OldCopy:
    unnamed_since: float  # monotonic: when the record stopped naming it
    due: float            # monotonic: when to look at it next
    ns: str
    key: str
    node: str
    oid: str
    index: int
    size: int


class Rebalancer(BackgroundLoop[dict[str, float]]):
    """Moves fragments as :func:`plan_moves` says, ``rate_bytes_s`` paced (bytes read plus
    written plus read back). ``recon`` lends its fragment-writing and record-rewriting code."""

    name = "rebalancer"
    idle_what = "removing old copies"
    logger = log

    def __init__(self, cluster: Any, meta: MetadataClient, pool: StoragePool, *, recon: Reconstructor,
                 rate_bytes_s: float, grace_s: float, clock: Clock = SYSTEM_CLOCK,
                 interval_s: float = 60.0, slack: float = DEFAULT_SLACK,
                 batch_bytes: int = REBUILD_BATCH_BYTES) -> None:
        super().__init__(interval_s=interval_s, clock=clock, tick_s=RETIRE_CHECK_S, classify=failure_reason)
        self.cluster = cluster
        self.meta = meta
        self.pool = pool
        self.recon = recon
        self.grace_s = grace_s
        self.slack = slack
        self.batch_bytes = batch_bytes
        self.pacer = Pacer(rate_bytes_s, clock=clock)
        self.sites = list(pool.sites)
        self.counters: dict[str, float] = {
            "fragments_moved": 0, "bytes_moved": 0, "moves_lost_race": 0,
            "old_copies_removed": 0, "move_seconds": 0.0,
        }
        # (self.progress: share of the current pass's layouts looked at)
        self.last: dict[str, float] = {"layouts": 0, "moves_planned": 0, "fragments_moved": 0,
                                       "imbalance": 0.0, "least_filled": 0.0}
        self._old: list[_OldCopy] = []

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passes": self.passes, **self.counters, "failures": self.failure_count,
                               "pass_running": int(self.running),
                               "pass_progress": self.progress, "old_copies_waiting": len(self._old),
                               "last_pass_end": self.last_pass_end or 0.0}
        for k, v in self.last.items():
            out[f"last_{k}"] = v
        for reason, n in self.failures.items():
            out[f"failures_{reason}"] = n
        return out

    # --- a pass ------------------------------------------------------------------------------

    async def one_pass(self) -> dict[str, float]:
        """Tally, then move what :func:`plan_moves` says (``run_once``, ``run_forever``); returns
        the pass's figures."""
        await self.collect_old_copies()
        ids = [s.id for s in self.sites]
        load: dict[str, float] = {n: 0 for n in ids}
        total = 0
        async with aclosing(walk_layouts(self.meta)) as refs:
            async for ref in refs:
                total += 1
                for n, size in tally([ref.layout]).items():
                    load[n] = load.get(n, 0) + size
        up = await self._up()
        share = fair_share(load, ids)
        figures = {"layouts": 0, "moves_planned": 0, "fragments_moved": 0}
        seen = 0
        async with aclosing(walk_layouts(self.meta)) as refs:
            async for ref in refs:
                seen += 1
                self.progress = min(1.0, seen / total) if total else 1.0
                if not ref.ns.startswith("obj/"):
                    continue
                figures["layouts"] += 1
                moves = plan_moves(ref.layout, self.sites, load, up=up, slack=self.slack)
                if not moves:
                    continue
                figures["moves_planned"] += len(moves)
                try:
                    done = await self.move(ref, moves)
                except Exception as e:  # noqa: BLE001 - one layout must not stop the pass
                    self.record_failure(e, f"move of {ref.layout.oid}")
                    continue
                apply_moves(load, ref.layout, done)
                figures["fragments_moved"] += len(done)
                await self.collect_old_copies()
        least = min((load.get(n, 0) for n in ids), default=0)
        self.last = {**figures, "least_filled": least / share if share else 1.0,
                     "imbalance": (max((load.get(n, 0) for n in ids), default=0) - least) / share if share else 0.0}
        return dict(self.last)

    def summary(self, figures: dict[str, float]) -> dict[str, Any]:
        return {"layouts": int(figures["layouts"]), "fragments_moved": int(figures["fragments_moved"]),
                "least_filled": round(figures["least_filled"], 3), "imbalance": round(figures["imbalance"], 3)}

    async def idle(self) -> None:
        """Between passes: old copies are removed as their grace ends."""
        await self.collect_old_copies()

    async def _up(self) -> set[str]:
        up: set[str] = set()

        async def ping(node: str) -> None:
            try:
                with anyio.fail_after(5):
                    await self.pool.client(node).info()
            except (RpcError, TimeoutError):
                return
            up.add(node)

        async with anyio.create_task_group() as tg:
            for s in self.sites:
                tg.start_soon(ping, s.id)
        return up

    # --- one move ------------------------------------------------------------------------------

    async def move(self, ref: LayoutRef, moves: Sequence[Move]) -> list[Move]:
        """Copy each move's fragment to its target, then rewrite the record; returns the moves
        that landed (none if the object changed meanwhile: the copies are removed then)."""
        lay = ref.layout
        started = time.perf_counter()
        copied: list[Move] = []
        for mv in moves:
            try:
                await self._copy(lay, mv)
            except FragmentNotFound:
                # Gone from the source since the walk: the object was overwritten or deleted
                # (its fragments retired), or the fragment was lost (the reconstructor's case).
                self.counters["moves_lost_race"] += 1
                log.info("rebalancer: %s left %s before it could be copied", lay.fid(mv.index), mv.source,
                         extra={"event": "rebalancer.source_gone", "fid": lay.fid(mv.index), "node": mv.source})
                continue
            except Exception as e:  # noqa: BLE001 - the others may still go
                self.record_failure(e, f"copy of {lay.fid(mv.index)} {mv.source}->{mv.target}")
                continue
            copied.append(mv)
        if not copied:
            return []
        landed = await self.recon.record_moves(ref, {mv.index: mv.target for mv in copied},
                                                replacing={mv.index: mv.source for mv in copied})
        size = fragment_size(lay)
        self.counters["move_seconds"] += time.perf_counter() - started
        if not landed:
            self.counters["moves_lost_race"] += len(copied)
            log.info("rebalancer: %s changed while moving; copies removed", lay.oid,
                     extra={"event": "rebalancer.lost_race", "oid": lay.oid})
            return []
        changed = self.clock.monotonic()
        for mv in copied:
            self._old.append(_OldCopy(unnamed_since=changed, due=changed + self.grace_s, ns=ref.ns, key=ref.key,
                                      node=mv.source, oid=lay.oid, index=mv.index, size=size))
        self.counters["fragments_moved"] += len(copied)
        self.counters["bytes_moved"] += size * len(copied)
        log.info("rebalancer: moved %s", ", ".join(f"{lay.fid(m.index)} {m.source}->{m.target}" for m in copied),
                 extra={"event": "rebalancer.moved", "oid": lay.oid,
                        "moves": [{"fid": lay.fid(m.index), "from": m.source, "to": m.target} for m in copied]})
        return copied

    async def _copy(self, lay: Layout, mv: Move) -> None:
        """Fragment ``mv.index`` from source to target, committed and read back identical."""
        scheme = lay.scheme
        i = mv.index
        fid = lay.fid(i)
        nstripes = lay.stripes
        per_round = max(1, min(1024, self.batch_bytes // max(1, scheme.fragment_bytes)))
        meta = {"k": scheme.k, "m": scheme.m, "stripe": scheme.stripe_bytes}
        targets = {i: mv.target}
        src = self.pool.client(mv.source)
        digest = xxhash.xxh64()
        try:
            for first in range(0, nstripes, per_round):
                count = min(per_round, nstripes - first)
                blocks = await src.read(fid, first, count)  # each block verified by the source node
                if len(blocks) != count:
                    raise RepairError(f"{fid} on {mv.source}: {len(blocks)} of {count} blocks")
                for b in blocks:
                    digest.update(b)
                await self.recon.append(lay, targets, first, {i: blocks}, meta)
                if not targets:
                    raise RepairError(f"{fid}: {mv.target} refused the copy")
                await self.pacer.pace(2 * sum(len(b) for b in blocks))
            await self.recon.commit(lay, targets, nstripes)
            if not targets:
                raise RepairError(f"{fid}: {mv.target} refused the commit")
            check = xxhash.xxh64()
            dst = self.pool.client(mv.target)
            for first in range(0, nstripes, per_round):
                count = min(per_round, nstripes - first)
                blocks = await dst.read(fid, first, count)
                for b in blocks:
                    check.update(b)
                await self.pacer.pace(sum(len(b) for b in blocks))
            if check.intdigest() != digest.intdigest():
                raise CopyMismatch(f"{fid} on {mv.target} does not read back as written")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.recon.abort(lay, {i: mv.target})
                # A committed copy is no temp file: abort leaves it, so delete it (never the source).
                try:
                    with anyio.fail_after(10):
                        await self.pool.client(mv.target).delete(fid)
                except (RpcError, TimeoutError):
                    pass  # unnamed by any record: the collector's
            raise

    # --- old copies ------------------------------------------------------------------------------

    async def collect_old_copies(self, *, everything: bool = False) -> int:
        """Delete the old copies :func:`gc.may_delete` allows now (``everything``: look at every
        one waiting, due or not; the rule still applies); returns how many went."""
        now = self.clock.monotonic()
        look = [c for c in self._old if everything or c.due <= now]
        if not look:
            return 0
        self._old = [c for c in self._old if not (everything or c.due <= now)]
        removed = 0
        for c in look:
            fid = f"{c.oid}.{c.index}"
            try:
                # the file first, then the record: the collector's order (its module docstring)
                try:
                    st = await self.pool.client(c.node).stat(fid)
                except FragmentNotFound:
                    continue  # gone already
                mtime = st.get("mtime")
                if not isinstance(mtime, (int, float)):
                    continue  # a node that does not say: the collector judges it from its listing
                entry = await self.meta.get(c.ns, c.key)
                named = entry is not None and any(
                    r.layout.oid == c.oid and r.layout.nodes[c.index] == c.node
                    for r in layouts_in(c.ns, c.key, entry.value))
                if named:
                    continue  # named again: no longer ours; the collector's should that change
                now, wall = self.clock.monotonic(), self.clock.time()
                if not may_delete(named=False, unnamed_since=c.unnamed_since, now=now, mtime=mtime, wall=wall,
                                  grace_s=self.grace_s):
                    # a file written since the move (the fragment came back here): look again
                    # once both clocks allow it
                    wait = max(c.unnamed_since + self.grace_s - now, self.grace_s - (wall - mtime), 1.0)
                    self._old.append(replace(c, due=now + wait))
                    continue
                if await self.pool.client(c.node).delete(fid, if_mtime=mtime):
                    removed += 1
            except Exception as e:  # noqa: BLE001 - try again on the next look
                self._old.append(c)
                self.record_failure(e, f"removing {fid} from {c.node}")
        self.counters["old_copies_removed"] += removed
        return removed
