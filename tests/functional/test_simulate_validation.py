"""The simulator against libCacheSim (same trace, same policy: hit ratios within 1 point) and
sweeps on a real Dask cluster (a local scheduler and two worker processes)."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.bench.simulate.scenario import loads_scenario
from headwater.bench.simulate.sweep import run_sweep
from headwater.bench.simulate.trace import (cache_bytes, libcachesim_replay, read_trace, replay,
                                            write_oracle_general)
from headwater.bench.simulate.workload import generate

from tests.unit.test_simulate import TINY

pytest.importorskip("libcachesim")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """The tiny scenario's unsampled stream as an oracleGeneral and a csv trace."""
    req = generate(loads_scenario(TINY))
    ids = req.object_ids[req.obj]
    d = tmp_path_factory.mktemp("traces")
    og = str(d / "tiny.oracleGeneral")
    write_oracle_general(og, ids, req.size, req.time.astype(np.uint32))
    cs = str(d / "tiny.csv")
    with open(cs, "w") as f:
        f.write("time,obj,size\n")
        for t, i, s in zip(req.time.astype(np.uint32).tolist(), ids.tolist(), req.size.tolist()):
            f.write(f"{t},{i},{s}\n")
    return og, cs


@pytest.mark.parametrize("policy, share", [("s3fifo", "1%"), ("sieve", "5%"), ("lru", "5%")])
def test_hit_ratios_match_libcachesim(traces, policy, share):
    og, _ = traces
    trace = read_trace(og)
    size = cache_bytes(share, trace)
    [(_, ours, ours_bytes)] = replay(trace, policy, size)
    theirs, theirs_bytes, _ = libcachesim_replay(trace, policy, size)
    print(f"{policy} {share}: ours {100 * ours:.2f} %, libCacheSim {100 * theirs:.2f} %")
    assert 0.05 < theirs < 0.99
    assert abs(ours - theirs) < 0.01 and abs(ours_bytes - theirs_bytes) < 0.01


def test_csv_and_oracle_general_read_the_same(traces):
    og, cs = traces
    a, b = read_trace(og), read_trace(cs, header=True)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.sizes, b.sizes)
    theirs, _, _ = libcachesim_replay(b, "s3fifo", cache_bytes("1%", b), header=True)
    assert replay(b, "s3fifo", cache_bytes("1%", b))[0][1] == pytest.approx(theirs, abs=0.01)
    # A POP's RAM in front of its disk: the disk sees the RAM's misses only.
    ram, disk = replay(a, "s3fifo", cache_bytes("5%", a), ram_share=0.1)
    assert 0 < ram[1] < 1 and 0 < disk[1] < 1


def test_sweep_on_a_dask_cluster_matches_the_local_run():
    distributed = pytest.importorskip("distributed")
    sc = loads_scenario(TINY)
    # Two segment lengths: two workloads, so two tasks, one per worker.
    points = [{"segment": 2.0, "ttl": 10.0}, {"segment": 4.0, "ttl": 3600.0}]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster:
        on_dask = run_sweep(sc, points, dask_address=cluster.scheduler_address)
        workers = cluster.scheduler_info["workers"]
        assert len(workers) == 2
    local = run_sweep(sc, points, workers=1)
    assert [s.tiers for s in on_dask] == [s.tiers for s in local]
    assert on_dask[0].origin_requests_per_s > on_dask[1].origin_requests_per_s
