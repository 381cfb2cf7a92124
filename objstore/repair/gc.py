"""The garbage collector: removes fragments that no record points to, after a grace period.

Where garbage comes from: a gateway that crashed with layouts in its in-memory retire queue, a
PUT that failed after some nodes committed and whose clean-up could not reach them, fragments
rebuilt for an object deleted meanwhile, files planted or left by a torn write. (Temp files of
writes that never committed are each storage node's own business: it removes those untouched
for an hour, and this collector asks it to look now with ``node.collect``.)

A pass (:meth:`GarbageCollector.run_once`):

1. lists every committed fragment on every storage node that answers;
2. then walks every layout the metadata names (objects, and parts of uploads in progress),
   collecting the object ids in use; if the walk fails anywhere, the pass deletes nothing;
3. a fragment no layout names on that node is a *candidate*: its object id is in no layout,
   or the layouts that have it name another node for that fragment (a copy left behind by a
   rebalancer move or an old placement). It is deleted only once it has
   been a candidate continuously for ``grace_s`` (seen unreferenced by passes at least that far
   apart, and never referenced in between) **and** its file is at least ``grace_s`` old; the
   delete names the file's listed mtime, so a file committed over it meanwhile is not removed.

Why that is safe for a PUT in progress: its fragments are committed (renamed into ``frags/``)
moments before its record is; listing before walking means such a fragment is at worst a
candidate for one pass, and the next pass (``grace_s`` later) finds its record. Why it is safe
for a GET of an object just overwritten: the old fragments become candidates only when the
record stops naming them, and live on for ``grace_s`` after that, as the gateway's own retire
queue would keep them.

The rule is one pure function, :func:`may_delete`, which the rebalancer's removal of the old
copy a move left behind calls too: a copy goes only when no record names it, it has been so for
``grace_s``, and its file is ``grace_s`` old; the delete then names the file's mtime. The
bookkeeping is pure (:class:`Candidates`); the class around it does the I/O, and the loop around
the passes is :class:`headwater.background.BackgroundLoop`.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Iterable

import anyio

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.rpc import RpcError

from ..datapath import StoragePool
from ..layouts import oid_of, walk_layouts
from ..metadata.client import MetadataClient
from .reconstructor import ScanIncomplete, failure_reason

__all__ = ["may_delete", "Candidates", "Listed", "GarbageCollector"]

log = logging.getLogger("headwater.gc")

LIST_PAGE = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class Listed:
    """One committed fragment file as a node listed it."""

    node: str
    fid: str
    size: int
    mtime: float  # wall clock


def may_delete(*, named: bool, unnamed_since: float | None, now: float, mtime: float, wall: float,
               grace_s: float) -> bool:
    """Whether a fragment file may be deleted now: the one rule of the collector and of the
    rebalancer's old copies.

    ``named``: a record names this fragment on this node now (read *after* ``mtime`` was);
    ``unnamed_since``: when (monotonic) it was first seen unnamed in the current run of not
    being named (None: never); ``now`` monotonic, ``wall`` the wall clock, ``mtime`` the
    file's (wall clock). True only when it is not named, has not been for ``grace_s`` (a GET
    may still be reading the layout that named it) and the file is ``grace_s`` old (a file
    committed since is another write's). The caller deletes with ``if_mtime=mtime``."""
    if named or unnamed_since is None:
        return False
    return now - unnamed_since >= grace_s and wall - mtime >= grace_s


class Candidates:
    """Which unreferenced fragments have been so for long enough (sans-IO)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._since: dict[tuple[str, str], float] = {}  # (node, fid) -> monotonic first seen

    def __len__(self) -> int:
        return len(self._since)

    def update(self, listed: Iterable[Listed], in_use: set[str], *, now: float, wall: float,
               nodes_listed: set[str], named: set[tuple[str, str]] | None = None) -> list[Listed]:
        """Record one pass's findings; return the fragments to delete now.

        ``in_use``: object ids some layout names; ``named`` (when given): the (node, fid) pairs
        the layouts name, so that a fragment of a live object on a node its layout no longer
        names is a candidate too.

        ``now`` is monotonic, ``wall`` the wall clock (file mtimes are wall-clock times).
        Fragments on nodes not listed this pass keep their state; a fragment referenced again,
        or gone, is forgotten.
        """
        seen: set[tuple[str, str]] = set()
        due: list[Listed] = []
        for f in listed:
            key = (f.node, f.fid)
            is_named = oid_of(f.fid) in in_use and (named is None or key in named)
            if not is_named:
                seen.add(key)
                self._since.setdefault(key, now)
            if may_delete(named=is_named, unnamed_since=self._since.get(key) if not is_named else None,
                          now=now, mtime=f.mtime, wall=wall, grace_s=self.grace_s):
                due.append(f)
        for key in list(self._since):
            if key[0] in nodes_listed and key not in seen:
                del self._since[key]
        return due

    def forget(self, f: Listed) -> None:
        self._since.pop((f.node, f.fid), None)


class GarbageCollector(BackgroundLoop[int]):
    """Deletes fragments no record names, ``grace_s`` after they stopped being named."""

    name = "gc"
    logger = log

    def __init__(self, meta: MetadataClient, pool: StoragePool, *, grace_s: float,
                 clock: Clock = SYSTEM_CLOCK, interval_s: float = 60.0) -> None:
        super().__init__(interval_s=interval_s, clock=clock, classify=failure_reason)
        self.meta = meta
        self.pool = pool
        self.candidates = Candidates(grace_s)
        self.counters: dict[str, float] = {"fragments_deleted": 0, "bytes_deleted": 0,
                                           "tmp_removed": 0, "fragments_listed": 0}
        self._due = 0

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passes": self.passes, **self.counters, "failures": self.failure_count,
                               "candidates": len(self.candidates), "last_pass_end": self.last_pass_end or 0.0}
        for reason, n in self.failures.items():
            out[f"failures_{reason}"] = n
        return out

    async def _list(self) -> tuple[list[Listed], set[str]]:
        listed: list[Listed] = []
        nodes: set[str] = set()

        async def one(node: str) -> None:
            out: list[Listed] = []
            cursor = ""
            try:
                while True:
                    page, cursor = await self.pool.client(node).list(cursor, LIST_PAGE)
                    out += [Listed(node=node, fid=fid, size=size, mtime=mtime) for fid, size, mtime in page]
                    if cursor is None:
                        break
            except (RpcError, TimeoutError) as e:
                log.info("gc: %s could not be listed, skipped this pass: %s", node, e,
                         extra={"event": "gc.node_skipped", "node": node, "error": str(e)})
                return
            listed.extend(out)
            nodes.add(node)

        async with anyio.create_task_group() as tg:
            for s in self.pool.sites:
                tg.start_soon(one, s.id)
        return listed, nodes

    async def _in_use(self) -> tuple[set[str], set[tuple[str, str]]]:
        """The object ids the layouts name, and the (node, fid) pairs."""
        oids: set[str] = set()
        named: set[tuple[str, str]] = set()
        try:
            async with aclosing(walk_layouts(self.meta)) as refs:
                async for ref in refs:
                    lay = ref.layout
                    oids.add(lay.oid)
                    named.update((n, lay.fid(i)) for i, n in enumerate(lay.nodes) if n is not None)
        except Exception as e:  # noqa: BLE001 - any hole in the walk makes every verdict unsafe
            raise ScanIncomplete(f"metadata walk failed: {type(e).__name__}: {e}") from e
        return oids, named

    async def one_pass(self) -> int:
        """One pass (``run_once``, ``run_forever``); returns how many fragments were deleted.
        Raises ScanIncomplete (having deleted nothing) if the metadata could not be walked whole."""
        listed, nodes = await self._list()  # before the walk: see the module docstring
        self.counters["fragments_listed"] = len(listed)
        in_use, named = await self._in_use()
        due = self.candidates.update(listed, in_use, now=self.clock.monotonic(), wall=self.clock.time(),
                                     nodes_listed=nodes, named=named)
        deleted = 0
        self._due = len(due)
        for f in due:
            try:
                # only the file listed: one committed over it since (the same fid written to
                # this node again, e.g. a fragment moved back onto a node that was out) stays
                if await self.pool.client(f.node).delete(f.fid, if_mtime=f.mtime):
                    deleted += 1
                    self.counters["bytes_deleted"] += f.size
            except RpcError as e:
                log.info("gc: delete of %s on %s failed: %s", f.fid, f.node, e,
                         extra={"event": "gc.delete_failed", "node": f.node, "fid": f.fid, "error": str(e)})
                continue
            self.candidates.forget(f)
        self.counters["fragments_deleted"] += deleted
        for node in nodes:
            try:
                self.counters["tmp_removed"] += await self.pool.client(node).collect()
            except RpcError as e:
                log.info("gc: temp-file collection on %s failed: %s", node, e,
                         extra={"event": "gc.collect_failed", "node": node, "error": str(e)})
        return deleted

    def summary(self, deleted: int) -> dict[str, Any] | None:
        # a line only when there was something to delete (a pass a minute finds nothing, mostly)
        return {"deleted": deleted, "candidates": len(self.candidates)} if deleted or self._due else None
