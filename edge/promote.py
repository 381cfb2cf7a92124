"""Disk -> RAM promotion at a POP: which disk-tier hits are copied into the RAM tier (sans-IO).

A POP's miss is written into both tiers, so an object found on disk but not in RAM is one the
RAM tier lost: evicted by its policy, gone with a restarted worker, or fetched by another worker
of the POP (each worker has its own RAM tier; the disk tier is shared). Serving it from disk
again and again costs a file read (and a checksum) per hit; copying it into RAM costs one read
and a RAM admission, which in turn displaces something else.

When to copy: on the **second** disk hit, not the first. That is S3-FIFO's own rule
(:mod:`.store.policy`) applied to the step from disk to RAM: S3-FIFO puts a new key on probation
(the small FIFO) and moves it to its main FIFO only once it has been hit again
(``move_to_main_threshold``), and its ghost FIFO remembers keys only (no bodies) so that a key
coming back soon is recognised. Most objects a CDN sees are requested once; a first disk hit says
little (a crawler or a seek through a catalogue reads each object once), and promoting on it let
such a scan copy every object it touched into RAM, pushing out the RAM tier's own probationary
entries. The doorkeeper here is a ghost of the same kind: a bounded FIFO of the keys hit once on
disk; a key hit again while it is still remembered is promoted. (The RAM tier's S3-FIFO still
decides where the promoted key lands: a key it evicted recently is in its ghost and goes straight
to its main FIFO.)

Bounds: only bodies up to ``max_object_bytes`` (and up to what the RAM tier accepts); never more
than ``bytes_per_second`` of copying (a token bucket whose burst is one second's budget), so a
restart of a busy POP, which turns its whole working set into disk hits at once, warms the RAM
tier at a bounded rate instead of in a storm. A refused promotion leaves the key remembered: its
next hit tries again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from headwater.config import MiB

__all__ = ["PromotionConfig", "Promoter", "PROMOTED", "FIRST_HIT", "TOO_LARGE", "OVER_BUDGET", "IN_PROGRESS"]

PROMOTED = "promoted"
FIRST_HIT = "first_hit"
TOO_LARGE = "too_large"
OVER_BUDGET = "over_budget"
IN_PROGRESS = "in_progress"


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionConfig:
    """``max_object_bytes`` 0 turns promotion off. ``remembered_keys`` bounds the doorkeeper."""

    max_object_bytes: int = 1 * MiB
    bytes_per_second: int = 64 * MiB
    remembered_keys: int = 16384


class Promoter:
    """Decides, per disk hit, whether to copy the entry into the RAM tier.

    ``consider(key, size, now)`` returns one of the result names (``PROMOTED``: copy it now, and
    call ``done(key)`` once the copy is over, whatever its outcome). ``now`` is a monotonic time
    in seconds. ``ram_max_entry_bytes`` is the largest body the RAM tier admits."""

    def __init__(self, config: PromotionConfig, *, ram_max_entry_bytes: int, now: float = 0.0) -> None:
        self.config = config
        self.max_bytes = min(config.max_object_bytes, ram_max_entry_bytes)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._copying: set[bytes] = set()
        self._tokens = float(config.bytes_per_second)
        self._last = now
        self.results: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.config.bytes_per_second > 0

    def _count(self, result: str) -> str:
        self.results[result] = self.results.get(result, 0) + 1
        return result

    def consider(self, key: bytes, size: int, now: float) -> str:
        """What to do with a disk hit of ``size`` body bytes for ``key``."""
        if size > self.max_bytes or not self.enabled:
            return self._count(TOO_LARGE)
        if key in self._copying:
            return self._count(IN_PROGRESS)
        seen = self._seen
        if key not in seen:
            seen[key] = None
            if len(seen) > self.config.remembered_keys:
                seen.popitem(last=False)
            return self._count(FIRST_HIT)
        rate = self.config.bytes_per_second
        self._tokens = min(float(rate), self._tokens + (now - self._last) * rate)
        self._last = now
        cost = max(size, 1)
        if cost > self._tokens:
            return self._count(OVER_BUDGET)  # (still remembered: the next hit tries again)
        self._tokens -= cost
        del seen[key]
        self._copying.add(key)
        return self._count(PROMOTED)

    def done(self, key: bytes) -> None:
        """The copy of ``key`` (started on ``PROMOTED``) is over."""
        self._copying.discard(key)

    def forget(self, key: bytes) -> None:
        """``key`` was purged or replaced: its past hits no longer count."""
        self._seen.pop(key, None)


def copy_data(ram: object, key: bytes, meta: bytes, data: bytes) -> bool:
    """Put a verified body already in memory (a small disk hit's ``data``) into ``ram`` under the
    store key ``key``; False when the RAM tier declined it or is filling the key itself."""
    try:
        writer = ram.begin(key, meta)  # type: ignore[attr-defined]
    except Exception:  # AlreadyFilling: a fetch of this process is writing it already
        return False
    writer.write(data)
    return writer.commit()


async def copy_entry(disk: object, ram: object, key: bytes) -> bool:
    """Read the disk tier's entry for the store key ``key`` (verified block by block) into
    ``ram``; nothing is committed unless all of it was read."""
    hit = disk.get(key)  # type: ignore[attr-defined]
    if hit is None:
        return False
    try:
        writer = ram.begin(key, hit.info.meta)  # type: ignore[attr-defined]
    except Exception:
        hit.close()
        return False
    try:
        async for chunk in hit.chunks():
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    finally:
        hit.close()
    return writer.commit()
