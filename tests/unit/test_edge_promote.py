"""edge.promote: which disk-tier hits a POP copies into its RAM tier (sans-IO), and the copy."""

from __future__ import annotations

import anyio

from headwater.config import MiB
from headwater.edge.promote import (
    FIRST_HIT,
    IN_PROGRESS,
    OVER_BUDGET,
    PROMOTED,
    TOO_LARGE,
    Promoter,
    PromotionConfig,
    copy_data,
    copy_entry,
)
from headwater.edge.store.disk import DiskSettings, DiskStore
from headwater.edge.store.ram import RamStore


def test_promoted_on_the_second_disk_hit_only_once_while_copying():
    p = Promoter(PromotionConfig(), ram_max_entry_bytes=4 * MiB)
    assert p.consider(b"a", 1000, 0.0) == FIRST_HIT
    assert p.consider(b"b", 1000, 0.0) == FIRST_HIT
    assert p.consider(b"a", 1000, 0.1) == PROMOTED
    assert p.consider(b"a", 1000, 0.2) == IN_PROGRESS
    p.done(b"a")
    # Promoted and done: it starts over (a RAM eviction brings it back to the disk tier).
    assert p.consider(b"a", 1000, 0.3) == FIRST_HIT
    assert p.results == {FIRST_HIT: 3, PROMOTED: 1, IN_PROGRESS: 1}


def test_too_large_for_the_threshold_or_for_the_ram_tier():
    p = Promoter(PromotionConfig(max_object_bytes=1 * MiB), ram_max_entry_bytes=4 * MiB)
    assert p.consider(b"big", 1 * MiB + 1, 0) == TOO_LARGE
    assert p.consider(b"big", 1 * MiB + 1, 0) == TOO_LARGE
    q = Promoter(PromotionConfig(max_object_bytes=1 * MiB), ram_max_entry_bytes=1000)
    assert q.consider(b"x", 1001, 0) == TOO_LARGE
    off = Promoter(PromotionConfig(max_object_bytes=0), ram_max_entry_bytes=1000)
    assert not off.enabled and off.consider(b"x", 0, 0) == TOO_LARGE


def test_the_byte_budget_bounds_a_storm_and_refills_with_time():
    p = Promoter(PromotionConfig(bytes_per_second=1000), ram_max_entry_bytes=10_000)
    keys = [b"k%d" % i for i in range(5)]
    for k in keys:
        assert p.consider(k, 400, 0.0) == FIRST_HIT
    got = [p.consider(k, 400, 0.0) for k in keys]
    assert got == [PROMOTED, PROMOTED, OVER_BUDGET, OVER_BUDGET, OVER_BUDGET]
    # Refused keys stay remembered: half a second later the budget has 500 bytes again.
    assert p.consider(keys[2], 400, 0.5) == PROMOTED
    assert p.consider(keys[3], 400, 0.5) == OVER_BUDGET
    # The burst is one second's budget, however long the promoter was idle.
    assert p.consider(keys[3], 400, 100.0) == PROMOTED
    assert p.consider(keys[4], 400, 100.0) == PROMOTED
    assert p.consider(b"k9", 400, 100.0) == FIRST_HIT
    assert p.consider(b"k9", 400, 100.0) == OVER_BUDGET


def test_the_doorkeeper_is_bounded_and_forgets_the_oldest():
    p = Promoter(PromotionConfig(remembered_keys=3), ram_max_entry_bytes=10_000)
    for k in (b"a", b"b", b"c", b"d"):
        assert p.consider(k, 10, 0) == FIRST_HIT
    assert len(p._seen) == 3
    assert p.consider(b"a", 10, 0) == FIRST_HIT  # forgotten: a scan of many keys promotes none
    assert p.consider(b"d", 10, 0) == PROMOTED
    p.forget(b"c")
    assert p.consider(b"c", 10, 0) == FIRST_HIT


def test_copies_land_in_the_ram_tier_whole_or_not_at_all(tmp_path):
    disk = DiskStore(DiskSettings(cache_dir=tmp_path, capacity_bytes=64 * MiB, block_bytes=64 * 1024))
    ram = RamStore(16 * MiB)
    body = bytes(range(256)) * 1024  # 256 KiB: several checksum blocks, read as chunks
    w = disk.begin(b"k", b"meta")
    w.write(body)
    assert w.commit()
    assert anyio.run(copy_entry, disk, ram, b"k")
    hit = ram.get(b"k")
    assert hit is not None and hit.data == body and hit.info.meta == b"meta"
    assert not anyio.run(copy_entry, disk, ram, b"absent")
    assert copy_data(ram, b"small", b"m", b"xyz") and ram.get(b"small").data == b"xyz"
    claim = ram.claim(b"busy")  # a fetch of this process is filling it: the copy steps aside
    assert not copy_data(ram, b"busy", b"m", b"xyz")
    claim.release()
    disk.close()
