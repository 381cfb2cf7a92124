"""How long each storage node has been unreachable, and which ones are "out" (sans-IO).

The repair daemon feeds :class:`NodeLiveness` every health check it makes of a storage node (a
``node.info`` ping of every node at the start of each reconstructor pass, and every
``frag.stat_many`` round during one): :meth:`~NodeLiveness.observe` with ``up`` True or False
and the monotonic time of the check. A node is *down since T* when every check since T failed
(T is the first failure of the current run; one success clears it). It is *out* once it has been
down for ``out_after_s`` or longer: the reconstructor then treats every fragment the layouts
place on it as missing and rebuilds it onto another node (Ceph marks an OSD "out" after
``mon_osd_down_out_interval``, 600 s; Swift's reconstructor rebuilds onto handoff nodes).

``out_after_s`` 0 means never: a node that is down is waited for however long it takes.
A node that answers again is at once no longer down nor out; what was rebuilt elsewhere stays
there (the records name the new nodes) and its now unnamed copies are the garbage collector's.

The clock is the caller's: every method takes ``now`` (monotonic seconds), so the tests need no
sleeping. The count survives a restart of the repair daemon: :meth:`~NodeLiveness.snapshot`
gives each down node's first and last failed check as wall-clock times (a monotonic clock means
nothing to another process or after a reboot), the daemon keeps them on disk
(:mod:`.liveness_file`), and :meth:`~NodeLiveness.restore` resumes them in the next process, so
a node down for hours is declared out at its original deadline however often the daemon
restarts. A run whose last failed check is older than the restore's ``max_gap_s`` is not resumed
(the node may have been back meanwhile, unseen): its count starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["NodeLiveness", "DownRun"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DownRun:
    """One node's current run of failed checks, in wall-clock seconds (what is kept on disk)."""

    since: float  # the first failed check
    last: float   # the latest failed check


class NodeLiveness:
    """Consecutive failed checks per node, and which nodes are out."""

    def __init__(self, out_after_s: float) -> None:
        if out_after_s < 0:
            raise ValueError(f"out_after_s must be >= 0, not {out_after_s}")
        self.out_after_s = out_after_s
        self._down_since: dict[str, float] = {}
        self._last_down: dict[str, float] = {}  # node -> monotonic time of its latest failed check
        self._ever_out: set[str] = set()
        self.outs = 0  # times a node went out (counted once per down run)

    def observe(self, node: str, up: bool, now: float) -> None:
        """Record one health check of ``node`` made at ``now`` (monotonic seconds)."""
        if up:
            self._down_since.pop(node, None)
            self._last_down.pop(node, None)
            self._ever_out.discard(node)
            return
        since = self._down_since.setdefault(node, now)
        if since > now:  # a check answered out of order: the earliest failure counts
            self._down_since[node] = now
        self._last_down[node] = max(self._last_down.get(node, now), now)
        self._note_out(node, now)

    def observe_many(self, up: Iterable[str], down: Iterable[str], now: float) -> None:
        for n in up:
            self.observe(n, True, now)
        for n in down:
            self.observe(n, False, now)

    def _note_out(self, node: str, now: float) -> None:
        if node not in self._ever_out and self.is_out(node, now):
            self._ever_out.add(node)
            self.outs += 1

    def down_since(self, node: str) -> float | None:
        """The monotonic time of the first failed check of the current run, or None (up)."""
        return self._down_since.get(node)

    def down_for(self, node: str, now: float) -> float:
        """Seconds ``node`` has been down at ``now`` (0 when up)."""
        since = self._down_since.get(node)
        return 0.0 if since is None else max(0.0, now - since)

    def is_out(self, node: str, now: float) -> bool:
        """Down for ``out_after_s`` or longer (never when ``out_after_s`` is 0)."""
        if not self.out_after_s:
            return False
        since = self._down_since.get(node)
        return since is not None and now - since >= self.out_after_s

    def down(self, now: float) -> dict[str, float]:
        """Every node down at ``now``, with how many seconds it has been so."""
        return {n: self.down_for(n, now) for n in sorted(self._down_since)}

    def out(self, now: float) -> set[str]:
        """The nodes that are out at ``now``."""
        out = {n for n in self._down_since if self.is_out(n, now)}
        for n in out:
            self._note_out(n, now)
        return out

    # --- across restarts -------------------------------------------------------------------------

    def snapshot(self, now: float, wall: float) -> dict[str, DownRun]:
        """Every down node's run as wall-clock times (``now`` monotonic and ``wall`` the same
        instant on the wall clock)."""
        return {n: DownRun(since=wall - (now - since), last=wall - (now - self._last_down.get(n, since)))
                for n, since in sorted(self._down_since.items())}

    def restore(self, runs: Mapping[str, DownRun], now: float, wall: float, *, max_gap_s: float) -> list[str]:
        """Resume the runs a :meth:`snapshot` of an earlier process gave (``now`` monotonic and
        ``wall`` the same instant). A run whose last failed check is more than ``max_gap_s`` ago
        (0: any age) is dropped, as is one for a node this process already counts down; a
        wall clock that went back counts as no time passed. Returns the nodes resumed."""
        resumed = []
        for node, run in sorted(runs.items()):
            if node in self._down_since or run.last < run.since:
                continue
            if max_gap_s and wall - run.last > max_gap_s:
                continue
            self._down_since[node] = now - max(0.0, wall - run.since)
            self._last_down[node] = now - max(0.0, wall - run.last)
            resumed.append(node)
        return resumed
