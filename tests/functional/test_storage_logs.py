"""A storage node's disk-full warning: one ``disk.full`` line when writes start failing for want
of space, not one per refused write; another once a write has succeeded in between."""

from __future__ import annotations

import io
import json

import pytest

from headwater import log
from headwater.objstore.storage import daemon as storage_daemon
from headwater.objstore.storage.daemon import StorageNode
from headwater.objstore.storage.fragment import FragmentWriter, StorageFull

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_disk_full_is_logged_once_per_spell(tmp_path, monkeypatch):
    out = io.StringIO()
    log.configure(level="info", stream=out, daemon="storage-1")
    full = True

    def writer(*args, **kw):
        if full:
            raise StorageFull("no space left to create x.0: No space left on device", fid="x.0")
        return FragmentWriter(*args, **kw)

    monkeypatch.setattr(storage_daemon, "FragmentWriter", writer)
    try:
        sn = StorageNode("storage-1", tmp_path / "s1")
        sn.prepare()
        for _ in range(3):
            with pytest.raises(StorageFull):
                await sn.append("x.0", 0, [memoryview(b"a" * 64)], block_bytes=64)
        full = False
        await sn.append("x.0", 0, [memoryview(b"a" * 64)], block_bytes=64)
        full = True
        with pytest.raises(StorageFull):
            await sn.append("y.0", 0, [memoryview(b"a" * 64)], block_bytes=64)
    finally:
        log.reset()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    full_lines = [x for x in lines if x["event"] == "disk.full"]
    assert len(full_lines) == 2 and sn.stats()["storage_full"] == 4
    assert full_lines[0]["level"] == "warning" and full_lines[0]["daemon"] == "storage-1"
    assert full_lines[0]["data_dir"] == str(tmp_path / "s1") and "No space left" in full_lines[0]["error"]
