"""The reconstructor: finds fragments that are missing, damaged or never written, and rebuilds them.

A pass walks every layout the metadata names (:func:`layouts.walk_layouts`), asks the storage
nodes about the fragments in batches (``frag.stat_many``), and judges each fragment
(:func:`judge`):

- ``ok``: committed, complete, as many blocks as the layout has stripes;
- ``missing`` / ``bad``: the node answers but has no such file (lost, or quarantined by the
  scrubber) or a file cut short: rebuilt onto that same node;
- ``unplaced``: the layout names no node (the write went on with the node down, k+1 quorum) or
  a node the cluster no longer has: rebuilt onto another node, chosen away from the layout's
  failure domains (:func:`choose_targets`), and the record rewritten with a conditional write;
- ``unreachable``: the node does not answer: nothing to do until it is back (then its fragments
  are ``ok``, or ``missing`` and rebuilt onto it);
- ``out``: the node has not answered for ``out_after_s`` (``[repair] node_down_out_seconds``,
  tracked by :class:`liveness.NodeLiveness`): its fragments are rebuilt onto other nodes as
  ``unplaced`` ones are, and the record rewritten only where it still names the out node.
  Should the node come back, its copies are unnamed and the garbage collector removes them.

- ``away`` (not a state: a mark of the layout, ``Layout.homes``): a fragment a PUT handed off to
  another node because its home was down. Once the home answers, the fragment is copied home
  (read block by block, each block's checksum verified by the node serving it), committed and
  checked there (``frag.stat``: complete, every stripe), the record rewritten to name the home
  by a compare-and-swap on the layout that still names the handoff node (so an overwrite or
  delete of the object meanwhile is never undone: the home copy is removed instead), and only
  then is the handoff copy deleted (:meth:`Reconstructor.bring_home`). Parts of multipart
  uploads in progress stay away until their upload completes (CompleteMultipartUpload copies a
  part's layout as it read it into the object's record: a handoff copy deleted meanwhile would
  be named there); the object's record is then moved home. An unplaced fragment whose home
  answers is rebuilt there.

A rebuild reads k surviving fragments a few stripes at a time (data fragments first, switching
to another survivor if one fails mid-way), regenerates the wanted blocks with zfec
(:func:`stripe.rebuild`), appends them to the targets and commits, exactly as a PUT writes:
the new file replaces a damaged one atomically. Traffic is paced to ``rate_bytes_s``.

The judging and target choice are pure; the class around them does the I/O, and the loop
around the passes is :class:`headwater.background.BackgroundLoop`.
"""

from __future__ import annotations

import enum
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import anyio
import anyio.to_thread
import xxhash

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.rpc import RpcError, Unavailable
from headwater.throttle import Pacer

from .. import stripe
from ..datapath import StoragePool
from ..errors import StoreError
from ..layouts import LayoutRef, layouts_in, rewrite, walk_layouts
from ..metadata.client import MetadataClient
from ..metadata.errors import ConditionFailed, MetadataError
from ..placement import NodeSite
from ..records import Layout
from .liveness import DownRun, NodeLiveness
from .liveness_file import LivenessFile

__all__ = [
    "FragState", "LayoutCheck", "RebuildPlan", "judge", "choose_targets", "plan_rebuild",
    "Reconstructor", "RepairError", "SourcesLost", "TargetsFailed", "failure_reason",
]

log = logging.getLogger("headwater.reconstructor")

# Layouts whose fragments are checked with one frag.stat_many round per node.
CHECK_BATCH = 64
# Surviving-fragment bytes read per rebuild round (all k sources together).
REBUILD_BATCH_BYTES = 4 * 1024 * 1024
STAT_TIMEOUT_S = 10.0


# --- errors: the repair daemon's root, mapped to metric reasons in one place ------------------

class RepairError(StoreError):
    """Root of what the repair daemon raises; ``reason`` labels it in metrics and logs."""

    reason = "repair_error"


class SourcesLost(RepairError):
    """Fewer than k fragments of a stripe could be read: nothing to rebuild from (yet)."""

    reason = "sources_lost"


class TargetsFailed(RepairError):
    """Every node a rebuilt fragment was to go to refused it."""

    reason = "targets_failed"


class ScanIncomplete(RepairError):
    """The metadata or a storage listing could not be read whole; the pass stops, deleting nothing."""

    reason = "scan_incomplete"


def failure_reason(exc: BaseException) -> str:
    """The metric label for a failed repair step (the one place errors are classified)."""
    if isinstance(exc, RepairError):
        return exc.reason
    if isinstance(exc, MetadataError):
        return "metadata"
    if isinstance(exc, RpcError):
        return "storage_rpc"
    if isinstance(exc, OSError):
        return "os"
    return "internal"


# --- judging (pure) --------------------------------------------------------------------------

class FragState(enum.Enum):
    OK = "ok"
    MISSING = "missing"          # node up, no file (lost or quarantined)
    BAD = "bad"                  # node up, file damaged or of the wrong size
    UNPLACED = "unplaced"        # no node (written degraded) or a node no longer in the cluster
    UNREACHABLE = "unreachable"  # node not answering
    OUT = "out"                  # node not answering for longer than node_down_out_seconds

    @property
    def rebuildable(self) -> bool:
        return self in (FragState.MISSING, FragState.BAD, FragState.UNPLACED, FragState.OUT)

    @property
    def relocated(self) -> bool:
        """Rebuilt onto another node (not the one the layout names)."""
        return self in (FragState.UNPLACED, FragState.OUT)


def judge(layout: Layout, index: int, stat: Mapping[str, Any] | None, *, known: bool = True,
          out: bool = False) -> FragState:
    """What fragment ``index`` of ``layout`` is, from its node's ``frag.stat_many`` answer
    (``stat`` None: the node did not answer). ``known``: the node is in the cluster; ``out``:
    it has been down for longer than ``node_down_out_seconds``."""
    if layout.nodes[index] is None or not known:
        return FragState.UNPLACED
    if stat is None:
        return FragState.OUT if out else FragState.UNREACHABLE
    err = stat.get("error")
    if err == "fragment_not_found":
        return FragState.MISSING
    if err is not None:
        return FragState.BAD
    if not stat.get("complete") or stat.get("nblocks") != layout.stripes:
        return FragState.BAD
    if stat.get("block_bytes") != layout.scheme.fragment_bytes:
        return FragState.BAD
    return FragState.OK


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutCheck:
    """One layout and the state of each of its fragments."""

    ref: LayoutRef
    states: tuple[FragState, ...]

    @property
    def layout(self) -> Layout:
        return self.ref.layout

    @property
    def healthy(self) -> list[int]:
        return [i for i, s in enumerate(self.states) if s is FragState.OK]

    @property
    def degraded(self) -> bool:
        return any(s is not FragState.OK for s in self.states)

    @property
    def readable(self) -> bool:
        return len(self.healthy) >= self.layout.k

    @property
    def rebuildable(self) -> list[int]:
        return [i for i, s in enumerate(self.states) if s.rebuildable]


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildPlan:
    """Rebuild fragments ``targets`` (index -> node) from ``sources``; ``moved`` indexes change
    node, so the record must be rewritten to ``new_layout`` once they are stored."""

    check: LayoutCheck
    sources: tuple[int, ...]
    targets: Mapping[int, str]
    moved: frozenset[int] = field(default_factory=frozenset)
    new_layout: Layout | None = None


def _weight(oid: str, node_id: str) -> int:
    return xxhash.xxh64_intdigest(f"{oid}/{node_id}".encode())


def choose_targets(layout: Layout, count: int, up: Sequence[NodeSite],
                   sites: Mapping[str, NodeSite]) -> list[str]:
    """Up to ``count`` up nodes that hold no fragment of ``layout``, fewest shared failure domains
    (zone, then rack, then host) with the nodes already holding it first, then rendezvous order."""
    used = [n for n in layout.nodes if n is not None]
    taken = set(used)
    held = [sites[n] for n in used if n in sites]
    chosen: list[str] = []
    for _ in range(count):
        best: tuple | None = None
        best_id = None
        for s in up:
            if s.id in taken:
                continue
            zone = sum(h.zone == s.zone for h in held)
            rack = sum((h.zone, h.rack) == (s.zone, s.rack) for h in held)
            host = sum((h.host or h.id) == (s.host or s.id) for h in held)
            key = (zone, rack, host, -_weight(layout.oid, s.id))
            if best is None or key < best:
                best, best_id = key, s.id
        if best_id is None:
            break
        chosen.append(best_id)
        taken.add(best_id)
        held.append(sites[best_id])
    return chosen


def plan_rebuild(check: LayoutCheck, up: Sequence[NodeSite], sites: Mapping[str, NodeSite]) -> RebuildPlan | None:
    """What to rebuild of a checked layout, or None (healthy, or fewer than k sources now)."""
    want = check.rebuildable
    if not want or not check.readable:
        return None
    lay = check.layout
    targets: dict[int, str] = {}
    unplaced = []
    for i in want:
        if check.states[i].relocated:
            unplaced.append(i)
        else:
            targets[i] = lay.nodes[i]  # type: ignore[assignment]
    moved: set[int] = set()
    new_layout = None
    if unplaced:
        # Nodes the cluster lost (or that are out) count as taken no more; nodes merely
        # unreachable still hold theirs.
        up_ids = {s.id for s in up}
        taken = {n for n in lay.nodes if n is not None}
        homeward = []
        for i in unplaced:
            home = lay.home_of(i)
            if home is not None and home in up_ids and home not in taken:
                targets[i] = home  # its home is back: rebuilt where it belongs
                taken.add(home)
                moved.add(i)
            else:
                homeward.append(i)
        unplaced = homeward
        known_lay = Layout(oid=lay.oid, size=lay.size, k=lay.k, m=lay.m, stripe_bytes=lay.stripe_bytes,
                           nodes=tuple(n if (n in sites and not check.states[i].relocated) else None
                                       for i, n in enumerate(lay.nodes)))
        picked = choose_targets(known_lay, len(unplaced), up, sites)
        for i, node in zip(unplaced, picked):
            if node in taken:
                continue
            targets[i] = node
            moved.add(i)
        if moved:
            new_layout = lay.moved({i: targets[i] for i in moved})
    if not targets:
        return None
    # zfec is systematic: data fragments as sources mean no decode when only parity is lost.
    return RebuildPlan(check=check, sources=tuple(check.healthy), targets=targets,
                       moved=frozenset(moved), new_layout=new_layout)


# --- the reconstructor -------------------------------------------------------------------------

class Reconstructor(BackgroundLoop[dict[str, float]]):
    """Checks every layout and rebuilds what :func:`plan_rebuild` says, ``rate_bytes_s`` paced.

    ``out_after_s``: a storage node that has failed every health check for this long is out
    (its fragments are rebuilt elsewhere); 0 waits for down nodes forever. ``liveness_file``
    (the daemon's): where the down-timers are kept across restarts; the first pass resumes
    them, and every pass (and every change of who is down) writes them."""

    name = "reconstructor"
    logger = log

    def __init__(self, cluster: Any, meta: MetadataClient, pool: StoragePool, *, rate_bytes_s: float,
                 clock: Clock = SYSTEM_CLOCK, interval_s: float = 60.0,
                 batch_bytes: int = REBUILD_BATCH_BYTES, out_after_s: float = 0.0,
                 liveness_file: LivenessFile | None = None) -> None:
        super().__init__(interval_s=interval_s, clock=clock, classify=failure_reason)
        self.cluster = cluster
        self.meta = meta
        self.pool = pool
        self.batch_bytes = batch_bytes
        self.pacer = Pacer(rate_bytes_s, clock=clock)
        self.sites = {s.id: s for s in pool.sites}
        self.liveness = NodeLiveness(out_after_s)
        self.liveness_file = liveness_file
        self._liveness_loaded = liveness_file is None
        self._liveness_saved: dict[str, DownRun] = {}
        self.counters: dict[str, float] = {
            "layouts_checked": 0, "fragments_rebuilt": 0, "fragments_relocated": 0,
            "bytes_rebuilt": 0, "bytes_read": 0, "rebuild_seconds": 0.0,
            "records_rewritten": 0, "orphaned_rebuilds": 0, "out_fragments_rebuilt": 0,
            "fragments_moved_home": 0, "homecomings_abandoned": 0,
            "down_timers_resumed": 0, "down_timer_writes": 0,
        }
        # Figures of the last complete pass (what `headwater status` shows) and the current one.
        self.last: dict[str, float] = {"degraded_objects": 0, "degraded_layouts": 0, "degraded_stripes": 0,
                                       "unreadable_objects": 0, "layouts": 0}
        self.current: dict[str, float] = dict(self.last)

    # --- stats -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        total = self.last["layouts"]
        progress = 1.0 if not self.running else (
            min(0.99, self.current["layouts"] / total) if total else 0.0)
        out: dict[str, Any] = {"passes": self.passes, **self.counters, "failures": self.failure_count,
                               **self.last, "pass_progress": progress,
                               "pass_running": int(self.running),
                               "last_pass_end": self.last_pass_end or 0.0}
        for reason, n in self.failures.items():
            out[f"failures_{reason}"] = n
        out["rebuild_bytes_per_second"] = (self.counters["bytes_rebuilt"] / self.counters["rebuild_seconds"]
                                           if self.counters["rebuild_seconds"] else 0.0)
        now = self.clock.monotonic()
        out["nodes_down"] = len(self.liveness.down(now))
        out["nodes_out"] = len(self.liveness.out(now))
        out["nodes_marked_out"] = self.liveness.outs
        out["node_down_out_seconds"] = self.liveness.out_after_s
        return out

    def node_liveness(self) -> dict[str, Any]:
        """Storage nodes down now, with seconds down, and which of them are out."""
        now = self.clock.monotonic()
        return {"down": {n: round(s, 1) for n, s in self.liveness.down(now).items()},
                "out": sorted(self.liveness.out(now))}

    # --- checking ------------------------------------------------------------------------------

    async def check(self, refs: Sequence[LayoutRef]) -> tuple[list[LayoutCheck], set[str]]:
        """Judge every fragment of ``refs``: one ``frag.stat_many`` per node. Returns the checks
        and the nodes that answered."""
        by_node: dict[str, list[str]] = {}
        for ref in refs:
            for i, node in enumerate(ref.layout.nodes):
                if node is not None and node in self.sites and ref.layout.size > 0:
                    by_node.setdefault(node, []).append(ref.layout.fid(i))
        answers: dict[tuple[str, str], dict] = {}
        up: set[str] = set()

        async def ask(node: str, fids: list[str]) -> None:
            try:
                for start in range(0, len(fids), 1024):
                    got = await self.pool.client(node).stat_many(fids[start:start + 1024], timeout=STAT_TIMEOUT_S)
                    for st in got:
                        answers[(node, st["fid"])] = st
            except (RpcError, TimeoutError) as e:
                log.info("reconstructor: %s did not answer frag.stat_many: %s", node, e,
                         extra={"event": "reconstructor.node_silent", "node": node, "error": str(e)})
                return
            up.add(node)

        async with anyio.create_task_group() as tg:
            for node, fids in by_node.items():
                tg.start_soon(ask, node, fids)
        now = self.clock.monotonic()
        self.liveness.observe_many(up, set(by_node) - up, now)
        await self.save_liveness(every_pass=False)
        out = self.liveness.out(now)
        checks = []
        for ref in refs:
            lay = ref.layout
            if lay.size == 0:
                continue
            states = tuple(judge(lay, i, answers.get((n, lay.fid(i))) if n in up else None,
                                 known=n is None or n in self.sites, out=n in out)
                           for i, n in enumerate(lay.nodes))
            checks.append(LayoutCheck(ref=ref, states=states))
        return checks, up

    # --- down-timers across restarts ------------------------------------------------------------

    def resume_gap_s(self) -> float:
        """How old a kept run's last failed check may be and still be resumed: the out period,
        or two passes if those are longer apart (a run is refreshed on disk once a pass)."""
        return max(self.liveness.out_after_s, 2 * self.interval_s)

    async def load_liveness(self) -> list[str]:
        """Resume the down-timers an earlier process kept (once; the first pass calls it).
        Returns the nodes resumed."""
        if self._liveness_loaded:
            return []
        self._liveness_loaded = True
        assert self.liveness_file is not None
        runs = await anyio.to_thread.run_sync(self.liveness_file.load, set(self.sites))
        resumed = self.liveness.restore(runs, self.clock.monotonic(), self.clock.time(),
                                        max_gap_s=self.resume_gap_s() if self.liveness.out_after_s else 0.0)
        self._liveness_saved = runs  # what is on disk: the next write drops what was not resumed
        self.counters["down_timers_resumed"] += len(resumed)
        if resumed:
            now = self.clock.monotonic()
            log.warning("reconstructor: resumed the down-timers of %s", ", ".join(
                f"{n} ({self.liveness.down_for(n, now):.0f}s)" for n in resumed),
                extra={"event": "node.down_resumed", "nodes": {n: round(self.liveness.down_for(n, now), 1)
                                                               for n in resumed}})
        return resumed

    async def save_liveness(self, *, every_pass: bool) -> None:
        """Write the down-timers if who is down (or since when) changed; with ``every_pass``
        (once a pass) also to refresh each run's latest failed check. A failed write is
        counted and logged, never fatal: the file is a hint for the next process."""
        if self.liveness_file is None:
            return
        runs = self.liveness.snapshot(self.clock.monotonic(), self.clock.time())
        if not runs and not self._liveness_saved:
            return
        kept = self._liveness_saved
        same = runs.keys() == kept.keys() and all(abs(runs[n].since - kept[n].since) < 1.0 for n in runs)
        if same and not every_pass:
            return
        try:
            await anyio.to_thread.run_sync(self.liveness_file.save, runs)
        except OSError as e:
            self.record_failure(e, f"writing {self.liveness_file.path}")
            return
        self._liveness_saved = runs
        self.counters["down_timer_writes"] += 1

    async def probe_nodes(self) -> list[NodeSite]:
        """Ping every storage node (``node.info``) and record who answered in :attr:`liveness`:
        the health check that starts each pass (so a node holding nothing the pass looks at is
        tracked too). Returns the nodes that answered: those that can take a fragment rebuilt
        away from its layout's node."""
        up: list[NodeSite] = []
        down: list[str] = []

        async def ping(site: NodeSite) -> None:
            try:
                await self.pool.client(site.id).info(timeout=STAT_TIMEOUT_S)
            except (RpcError, TimeoutError):
                down.append(site.id)
                return
            up.append(site)

        async with anyio.create_task_group() as tg:
            for s in self.sites.values():
                tg.start_soon(ping, s)
        now = self.clock.monotonic()
        self.liveness.observe_many([s.id for s in up], down, now)
        await self.save_liveness(every_pass=True)
        for node, secs in self.liveness.down(now).items():
            out = self.liveness.is_out(node, now)
            log.warning("reconstructor: storage node %s down for %.0fs%s", node, secs,
                        " (out: its fragments are rebuilt onto other nodes)" if out else "",
                        extra={"event": "node.down", "node": node, "down_s": round(secs, 1), "out": out})
        return sorted(up, key=lambda s: s.id)

    # --- a pass ------------------------------------------------------------------------------

    async def one_pass(self) -> dict[str, float]:
        """Check every layout once and rebuild what can be (``run_once``, ``run_forever``);
        returns the pass's figures."""
        self.current = {k: 0 for k in self.last}
        if not self._liveness_loaded:
            await self.load_liveness()
        degraded_objects: set[tuple[str, str]] = set()
        unreadable: set[tuple[str, str]] = set()
        # Every node pinged once a pass: who is down (and out), and who can take a fragment
        # rebuilt away from its layout's node.
        up_sites = await self.probe_nodes()
        up_ids = {s.id for s in up_sites}
        batch: list[LayoutRef] = []

        async def flush() -> None:
            checks, _answered = await self.check(batch)
            batch.clear()
            for c in checks:
                self.current["layouts"] += 1
                self.counters["layouts_checked"] += 1
                # Only an object's: CompleteMultipartUpload copies a part record's layout into
                # the object's record unconditionally, so a part's handoff copy deleted after the
                # Complete read it would leave the object naming a deleted fragment. Once the
                # object is written, the next pass moves it (a compare-and-swap on that record).
                if c.layout.away and c.ref.slot is not None:
                    try:
                        await self.bring_home(c, up_ids)
                    except Exception as e:  # noqa: BLE001 - one layout must not stop the pass
                        self.record_failure(e, f"move home of {c.layout.oid}")
                if not c.degraded:
                    continue
                obj = (c.ref.ns, c.ref.key)
                plan = plan_rebuild(c, up_sites, self.sites)
                if plan is not None:
                    try:
                        done = await self.rebuild(plan)
                        if set(done) == set(c.rebuildable) and FragState.UNREACHABLE not in c.states:
                            continue  # fully repaired now
                    except Exception as e:  # noqa: BLE001 - one layout must not stop the pass
                        self.record_failure(e, f"rebuild of {c.layout.oid}")
                self.current["degraded_layouts"] += 1
                self.current["degraded_stripes"] += c.layout.stripes
                degraded_objects.add(obj)
                if not c.readable:
                    unreadable.add(obj)
                self.current["degraded_objects"] = len(degraded_objects)
                self.current["unreadable_objects"] = len(unreadable)

        async with aclosing(walk_layouts(self.meta)) as refs:
            async for ref in refs:
                batch.append(ref)
                if len(batch) >= CHECK_BATCH:
                    await flush()
        if batch:
            await flush()
        self.last = dict(self.current)
        return dict(self.last)

    def summary(self, figures: dict[str, float]) -> dict[str, Any]:
        return {"layouts": int(figures["layouts"]), "degraded_objects": int(figures["degraded_objects"]),
                "degraded_stripes": int(figures["degraded_stripes"]),
                "unreadable_objects": int(figures["unreadable_objects"])}

    # --- moving handed-off fragments home ------------------------------------------------------

    async def bring_home(self, check: LayoutCheck, up: set[str]) -> dict[int, str]:
        """Move every handed-off fragment of ``check`` that is intact on its handoff node to its
        home node, where that node answers and holds no other fragment of the layout: copy,
        verify, rewrite the record (compare-and-swap), then delete the handoff copy. Returns the
        fragments moved (index -> home)."""
        lay = check.layout
        moves = {i: home for i, home in lay.away.items()
                 if check.states[i] is FragState.OK and home in up and home not in lay.nodes}
        done: dict[int, str] = {}
        for i, home in moves.items():
            handoff = lay.nodes[i]
            assert handoff is not None
            if not await self._copy_home(lay, i, handoff, home):
                continue
            applied = await self.record_moves(check.ref, {i: home}, replacing={i: handoff})
            if not applied:
                # The object changed meanwhile (overwritten, deleted, or its fragment moved by
                # someone else): record_moves removed the home copy; the handoff copy is the old
                # layout's, for whoever replaced it (or the collector) to remove.
                self.counters["homecomings_abandoned"] += 1
                continue
            self.counters["fragments_moved_home"] += 1
            done[i] = home
            try:
                await self.pool.client(handoff).delete(lay.fid(i))
            except RpcError as e:  # unnamed now: the collector removes it if this did not
                log.info("reconstructor: handoff copy %s on %s not deleted: %s", lay.fid(i), handoff, e)
            log.info("reconstructor: %s moved home from %s to %s", lay.fid(i), handoff, home,
                     extra={"event": "reconstructor.moved_home", "fid": lay.fid(i), "from": handoff,
                            "to": home})
            # Later moves of this layout compare against the record as now written.
            entry = await self.meta.get(check.ref.ns, check.ref.key)
            if entry is None:
                break
            ref = next((r for r in layouts_in(check.ref.ns, check.ref.key, entry.value)
                        if r.layout.oid == lay.oid), None)
            if ref is None:
                break
            check = LayoutCheck(ref=ref, states=check.states)
            lay = ref.layout
        return done

    async def _copy_home(self, lay: Layout, i: int, source: str, home: str) -> bool:
        """Copy fragment i from ``source`` to ``home`` and check it there; False (nothing left
        behind on ``home``) if a read, a write or the check fails."""
        fid = lay.fid(i)
        scheme = lay.scheme
        meta = {"k": scheme.k, "m": scheme.m, "stripe": scheme.stripe_bytes}
        per_round = max(1, min(1024, self.batch_bytes // max(1, scheme.fragment_bytes)))
        nstripes = lay.stripes
        try:
            for first in range(0, nstripes, per_round):
                count = min(per_round, nstripes - first)
                blocks = await self.pool.client(source).read(fid, first, count)  # verified there
                if len(blocks) != count:
                    raise TargetsFailed(f"{fid}: {source} returned {len(blocks)} of {count} blocks")
                await self.pool.client(home).append_many(fid, first, blocks, block_bytes=scheme.fragment_bytes,
                                                         meta=meta)
                n = sum(len(b) for b in blocks)
                self.counters["bytes_read"] += n
                await self.pacer.pace(2 * n)
            await self.pool.client(home).commit(fid, nstripes)
            st = await self.pool.client(home).stat(fid)
            if not st.get("complete") or st.get("nblocks") != nstripes or st.get("block_bytes") != scheme.fragment_bytes:
                raise TargetsFailed(f"{fid} on {home}: {st.get('nblocks')} blocks after the copy, want {nstripes}")
        except (RpcError, TargetsFailed) as e:
            log.warning("reconstructor: moving %s home to %s failed: %s", fid, home, e,
                        extra={"event": "reconstructor.move_home_failed", "fid": fid, "node": home,
                               "error": str(e)})
            with anyio.CancelScope(shield=True):
                await self.abort(lay, {i: home})
                try:
                    await self.pool.client(home).delete(fid)
                except RpcError:
                    pass
            return False
        return True

    # --- one rebuild ---------------------------------------------------------------------------

    async def rebuild(self, plan: RebuildPlan) -> dict[int, str]:
        """Rebuild ``plan.targets`` and, for moved fragments, rewrite the record. Returns the
        fragments stored (index -> node; a target that failed is left out). Raises SourcesLost /
        TargetsFailed, leaving nothing half-written behind."""
        lay = plan.check.layout
        scheme = lay.scheme
        targets = dict(plan.targets)
        meta = {"k": scheme.k, "m": scheme.m, "stripe": scheme.stripe_bytes}
        nstripes = lay.stripes
        per_round = max(1, min(1024, self.batch_bytes // max(1, scheme.k * scheme.fragment_bytes)))
        sources = list(plan.sources)
        started = time.perf_counter()
        written = 0
        try:
            for first in range(0, nstripes, per_round):
                count = min(per_round, nstripes - first)
                got = await self._read_sources(lay, sources, first, count)
                read = sum(len(b) for blocks in got.values() for b in blocks)
                self.counters["bytes_read"] += read
                made = await anyio.to_thread.run_sync(_rebuild_blocks, scheme, got, count, sorted(targets))
                written += await self.append(lay, targets, first, made, meta)
                if not targets:
                    raise TargetsFailed(f"{lay.oid}: every target refused the rebuilt fragments")
                await self.pacer.pace(read + sum(len(b) for i in targets for b in made[i]))
            await self.commit(lay, targets, nstripes)
            if not targets:
                raise TargetsFailed(f"{lay.oid}: every target refused the commit")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.abort(lay, targets)
            raise
        self.counters["rebuild_seconds"] += time.perf_counter() - started
        self.counters["bytes_rebuilt"] += written
        self.counters["fragments_rebuilt"] += len(targets)
        moved = {i: n for i, n in targets.items() if i in plan.moved}
        if moved:
            applied: set[int] = set()
            await self.record_moves(plan.check.ref, moved, off={i: lay.nodes[i] for i in moved}, applied=applied)
            self.counters["out_fragments_rebuilt"] += sum(
                1 for i in applied if plan.check.states[i] is FragState.OUT)
        log.info("reconstructor: rebuilt %s fragments %s (%d bytes)", lay.oid,
                 {i: n for i, n in sorted(targets.items())}, written,
                 extra={"event": "reconstructor.rebuilt", "oid": lay.oid,
                        "targets": {str(i): n for i, n in sorted(targets.items())}, "bytes": written})
        return targets

    async def _read_sources(self, lay: Layout, sources: list[int], first: int, count: int) -> dict[int, list]:
        """Blocks ``first .. first+count-1`` of k fragments; a source that fails is dropped for the
        rest of this rebuild and the next one is read instead."""
        k = lay.k
        got: dict[int, list] = {}
        tried: set[int] = set()
        while len(got) < k:
            todo = [i for i in sources if i not in got and i not in tried][:k - len(got)]
            if not todo:
                raise SourcesLost(f"{lay.oid}: stripes {first}..{first + count - 1}: only {len(got)} of "
                                  f"{k} fragments readable")

            async def one(i: int) -> None:
                node = lay.nodes[i]
                assert node is not None
                try:
                    blocks = await self.pool.client(node).read(lay.fid(i), first, count)
                except RpcError as e:
                    log.info("reconstructor: source %s on %s failed: %s", lay.fid(i), node, e,
                             extra={"event": "reconstructor.source_failed", "fid": lay.fid(i), "node": node,
                                    "error": str(e)})
                    if isinstance(e, Unavailable):
                        self.pool.mark_down(node)
                    return
                if len(blocks) == count:
                    got[i] = blocks

            async with anyio.create_task_group() as tg:
                for i in todo:
                    tried.add(i)
                    tg.start_soon(one, i)
            for i in todo:
                if i not in got and i in sources:
                    sources.remove(i)
        return got

    async def append(self, lay: Layout, targets: dict[int, str], first: int, made: dict[int, list],
                      meta: dict) -> int:
        """Append stripes ``first``.. of fragment i (``made[i]``) to ``targets[i]``; a target
        that fails is aborted and dropped from ``targets``. Returns the bytes written."""
        written = 0
        failed: list[int] = []

        async def one(i: int, node: str) -> None:
            nonlocal written
            try:
                await self.pool.client(node).append_many(lay.fid(i), first, made[i],
                                                         block_bytes=lay.scheme.fragment_bytes, meta=meta)
            except RpcError as e:
                log.warning("reconstructor: append of %s to %s failed: %s", lay.fid(i), node, e,
                            extra={"event": "reconstructor.append_failed", "fid": lay.fid(i), "node": node,
                                   "error": str(e)})
                failed.append(i)
                return
            written += sum(len(b) for b in made[i])

        async with anyio.create_task_group() as tg:
            for i, node in targets.items():
                tg.start_soon(one, i, node)
        for i in failed:
            await self.abort(lay, {i: targets.pop(i)})
        return written

    async def commit(self, lay: Layout, targets: dict[int, str], nstripes: int) -> None:
        """Commit the appended fragments; a target that fails is dropped from ``targets``."""
        failed: list[int] = []

        async def one(i: int, node: str) -> None:
            try:
                await self.pool.client(node).commit(lay.fid(i), nstripes)
            except RpcError as e:
                log.warning("reconstructor: commit of %s on %s failed: %s", lay.fid(i), node, e,
                            extra={"event": "reconstructor.commit_failed", "fid": lay.fid(i), "node": node,
                                   "error": str(e)})
                failed.append(i)

        async with anyio.create_task_group() as tg:
            for i, node in targets.items():
                tg.start_soon(one, i, node)
        for i in failed:
            targets.pop(i)

    async def abort(self, lay: Layout, targets: Mapping[int, str]) -> None:
        """Drop uncommitted fragment writes (best effort)."""
        for i, node in targets.items():
            try:
                with anyio.fail_after(10):
                    await self.pool.client(node).abort(lay.fid(i))
            except (RpcError, TimeoutError):
                pass  # a temp file left behind is the node's own collector's

    async def record_moves(self, ref: LayoutRef, moved: dict[int, str], *,
                            replacing: Mapping[int, str] | None = None,
                            off: Mapping[int, str | None] | None = None,
                            applied: set[int] | None = None) -> bool:
        """Point the record at the fragments rebuilt onto new nodes: a compare-and-swap on the
        layout field, re-read and retried if the record changed for another reason. If the
        layout is gone (object overwritten or deleted meanwhile), the new fragments are removed;
        if the outcome is unknown (metadata unavailable), they stay for the collector to judge.

        ``replacing`` (the rebalancer's moves: index -> the node the fragment moves off) makes
        every index conditional on still being on that node; if one is not, nothing is rewritten
        and the new fragments are removed. Without it (the reconstructor's), an index is
        rewritten where the record names no node, a node the cluster no longer has, or still
        ``off[i]`` (the out node it was rebuilt away from); indexes rewritten are added to
        ``applied``. Returns whether the record was rewritten."""
        oid = ref.layout.oid
        for _attempt in range(4):
            current = next((r for r in _refs_of(ref) if r.layout.oid == oid), None)
            if current is None:
                break
            nodes = list(current.layout.nodes)
            if replacing is not None and any(nodes[i] != replacing[i] for i in moved):
                break
            done = set()
            for i, node in moved.items():
                if (replacing is not None or nodes[i] is None or nodes[i] not in self.sites
                        or (off is not None and off.get(i) is not None and nodes[i] == off[i])):
                    nodes[i] = node
                    done.add(i)
            if not done:
                break  # every index was filled by someone else meanwhile: ours are garbage
            new = current.layout.moved({i: nodes[i] for i in done})
            value, cond = rewrite(current, new)
            try:
                await self.meta.put(ref.ns, ref.key, value, if_match=cond)
            except ConditionFailed:
                entry = await self.meta.get(ref.ns, ref.key)
                if entry is None:
                    break
                ref = LayoutRef(ns=ref.ns, key=ref.key, slot=ref.slot, layout=ref.layout, value=entry.value)
                continue
            if replacing is None:
                self.counters["records_rewritten"] += 1
                self.counters["fragments_relocated"] += len(done)
            if applied is not None:
                applied |= done
            return True
        # The layout is gone: what was rebuilt for it is garbage now.
        if replacing is None:
            self.counters["orphaned_rebuilds"] += len(moved)
        for i, node in moved.items():
            if current is not None and current.layout.nodes[i] == node:
                continue  # named by the record after all: not ours to remove
            try:
                await self.pool.client(node).delete(ref.layout.fid(i))
            except RpcError:
                pass
        return False


def _refs_of(ref: LayoutRef) -> Iterable[LayoutRef]:
    return layouts_in(ref.ns, ref.key, ref.value)


def _rebuild_blocks(scheme: Any, got: Mapping[int, list], count: int, want: list[int]) -> dict[int, list]:
    """The blocks ``want`` of ``count`` stripes, from the blocks ``got`` (index -> per stripe)."""
    out: dict[int, list] = {i: [] for i in want}
    for j in range(count):
        made = stripe.rebuild(scheme, {i: blocks[j] for i, blocks in got.items()}, want)
        for i in want:
            out[i].append(made[i])
    return out
