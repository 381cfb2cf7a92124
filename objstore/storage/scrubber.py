"""The scrubber: each storage node re-reads and verifies its own fragments at a bounded rate.

Swift's object auditor, in our terms. It runs inside the storage node (the disk it reads is the
node's own, so no fragment crosses the network to be checked), walks every committed fragment
file in on-disk order, and verifies the header, the footer and every block's xxh3 checksum,
``scrub_rate`` bytes per second at most. A fragment that fails is moved to ``quarantine/``
(:meth:`StorageNode.quarantine`): it is never served again and reads as missing, so the
reconstructor's next pass rebuilds it from the other fragments of its stripes.

Fragments that failed a client read are *suspects*: the node hands them over at once
(:meth:`Scrubber.suspect`) and they are verified ahead of the pass, within about a second.

The loop around the passes (interval, a failed pass retried after a backoff, the books) is
:class:`headwater.background.BackgroundLoop`; suspects are its idle work between passes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.throttle import Pacer

from .fragment import FragmentCorrupt, FragmentNotFound, FragmentScanner

if TYPE_CHECKING:
    from .daemon import StorageNode

__all__ = ["Scrubber", "CHUNK_BLOCKS"]

log = logging.getLogger("headwater.scrubber")

# Blocks verified per worker-thread call: large enough that thread hops cost little, small
# enough (16 x 256 KiB with 1 MiB stripes and k=4) that pacing stays smooth.
CHUNK_BLOCKS = 16
# How often run_forever looks for suspects while it waits between passes.
SUSPECT_POLL_S = 1.0
LIST_PAGE = 1000


class Scrubber(BackgroundLoop[int]):
    """Verifies ``node``'s fragments; ``rate_bytes_s <= 0`` disables full passes (suspects are
    still verified), ``interval_s`` is the pause between two passes."""

    name = "scrub"
    idle_what = "suspect check"
    logger = log

    def __init__(self, node: StorageNode, *, rate_bytes_s: float, interval_s: float,
                 clock: Clock = SYSTEM_CLOCK, chunk_blocks: int = CHUNK_BLOCKS) -> None:
        super().__init__(interval_s=interval_s, clock=clock, tick_s=SUSPECT_POLL_S)
        self.node = node
        self.enabled = rate_bytes_s > 0
        self.chunk_blocks = chunk_blocks
        self.pacer = Pacer(rate_bytes_s, clock=clock)
        self._suspects: dict[str, None] = {}  # insertion-ordered set
        self.counters = {"scrub_fragments": 0, "scrub_bytes": 0, "scrub_corrupt": 0,
                         "scrub_suspects_checked": 0}
        self._pass_total = 0
        self._pass_done = 0

    # --- what others call --------------------------------------------------------------------

    def suspect(self, fid: str) -> None:
        """Verify ``fid`` soon (a read found a bad block in it)."""
        self._suspects[fid] = None

    def stats(self) -> dict[str, Any]:
        age = None if self.last_pass_end is None else max(0.0, self.clock.time() - self.last_pass_end)
        return {"scrub_passes": self.passes, **self.counters, "scrub_enabled": int(self.enabled),
                "scrub_pass_progress": self.progress if self.running else 0.0,
                "scrub_last_pass_end": self.last_pass_end or 0.0,
                "scrub_age_seconds": age if age is not None else -1.0}

    # --- one fragment ------------------------------------------------------------------------

    async def check(self, fid: str) -> bool:
        """Verify one fragment, paced; quarantine it if it fails. True if it is sound (or gone)."""
        try:
            scanner = await anyio.to_thread.run_sync(FragmentScanner, self.node.path_of(fid), fid)
        except FragmentNotFound:
            return True
        try:
            try:
                await anyio.to_thread.run_sync(scanner.start)
                await self.pacer.pace(scanner.header.header_len if scanner.header else 0)
                while not scanner.done:
                    n = await anyio.to_thread.run_sync(scanner.verify_next, self.chunk_blocks)
                    self.counters["scrub_bytes"] += n
                    await self.pacer.pace(n)
            except FragmentCorrupt as e:
                self.counters["scrub_corrupt"] += 1
                log.warning("scrub %s: %s", self.node.id, e,
                            extra={"event": "scrub.corrupt", "fid": fid, "error": str(e)})
                await anyio.to_thread.run_sync(self.node.quarantine, fid, scanner.inode)
                return False
        finally:
            scanner.close()
        self.counters["scrub_fragments"] += 1
        return True

    async def check_suspects(self) -> int:
        """Verify every fragment handed over by a failed read; returns how many were corrupt."""
        bad = 0
        while self._suspects:
            fid = next(iter(self._suspects))
            del self._suspects[fid]
            self.counters["scrub_suspects_checked"] += 1
            if not await self.check(fid):
                bad += 1
        return bad

    # --- passes ------------------------------------------------------------------------------

    async def one_pass(self) -> int:
        """One pass over every committed fragment (``run_once``, ``run_forever``); returns how
        many were found corrupt."""
        self._pass_total = max(self.node.fragment_count, 1)
        self._pass_done = 0
        bad = 0
        cursor = ""
        while True:
            entries, nxt = await anyio.to_thread.run_sync(self.node.list_fragments, cursor, LIST_PAGE)
            for fid, _size, _mtime in entries:
                bad += await self.check_suspects()
                if not await self.check(fid):
                    bad += 1
                self._pass_done += 1
                self.progress = min(1.0, self._pass_done / self._pass_total)
            if nxt is None:
                break
            cursor = nxt
        bad += await self.check_suspects()
        return bad

    def summary(self, bad: int) -> dict[str, Any]:
        return {"fragments": self._pass_done, "corrupt": bad}

    async def idle(self) -> None:
        """Between passes (and always, when passes are disabled): suspects within a second."""
        await self.check_suspects()
