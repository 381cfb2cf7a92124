"""A POP worker killed under ``headwater up`` is restarted by the supervisor with its cache
intact: the disk tier (LMDB, shared by the POP's workers) survives the process, so what was
fetched before the kill is served as hits after it, with no new origin fetch.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import anyio.from_thread
import httpx
import pytest

from tests.cluster import free_ports
from tests.functional.dns_harness import headwater_up, wait_for
from tests.functional.edge_harness import ControlledOrigin, Obj
from tests.functional.test_edge_signing_keys import CONFIG

pytestmark = pytest.mark.timeout(240)


def pop_workers(state: Path) -> dict[int, tuple[int, str]]:
    """pop-1's workers in the supervisor's state.json: worker -> (pid, state)."""
    doc = json.loads(state.read_text())
    return {c["worker"]: (c["pid"], c["state"]) for c in doc["children"] if c["id"] == "pop-1"}


def test_a_killed_pop_worker_comes_back_with_its_cache(tmp_path):
    ports = free_ports(5)
    path = tmp_path / "cluster.toml"
    config = CONFIG.replace('ram_size = "16MiB"', 'ram_size = "16MiB"\nworkers = 2', 1)
    assert "workers = 2" in config
    path.write_text(config.format(origin=ports[4], p=ports))
    origin = ControlledOrigin()
    paths = [f"/titles/1/seg-{i}.m4s" for i in range(8)]
    for i, p in enumerate(paths):
        origin.objects[p] = Obj(bytes([65 + i]) * 50_000, [("cache-control", "max-age=600")])
    state = tmp_path / "var" / "run" / "state.json"

    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        served, _ = portal.start_task(origin.run, ports[4])
        try:
            with headwater_up(path, tmp_path / "up.log", timeout=120):
                url = f"http://127.0.0.1:{ports[0]}"
                with httpx.Client(trust_env=False, timeout=10, headers={"host": "video.test"}) as c:
                    for p in paths:
                        assert c.get(url + p).status_code == 200
                    victim, _ = pop_workers(state)[0]
                    os.kill(victim, signal.SIGKILL)

                    def back() -> bool:
                        workers = pop_workers(state)
                        return workers[0][0] not in (None, victim) and workers[0][1] == "running"
                    wait_for(back, 60, interval=0.1)
                    # New connections land on either worker (SO_REUSEPORT): many, to reach the new one.
                    results = []
                    for _ in range(4):
                        for p in paths:
                            with httpx.Client(trust_env=False, timeout=10, headers={"host": "video.test"}) as fresh:
                                r = fresh.get(url + p)
                                results.append((r.status_code, r.headers.get("x-cache", "")))
                    assert all(s == 200 and x.startswith("Hit from pop-1") for s, x in results), results
                assert all(origin.fetches[p] == 1 for p in paths), dict(origin.fetches)
        finally:
            served.cancel()
