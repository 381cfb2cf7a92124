"""Writes that route around a lost storage node: one node stopped (SIGSTOP: silent, as a host
cut off) while PUTs keep coming; every PUT answers 200 (the client does not retry), each of its
fragments lands on a live node (a handoff node in place of the stopped one, marked in the
layout), every object reads back byte-exact; once the node answers again the repair daemon
moves the handed-off fragments home and deletes the handoff copies; reads stay exact.

EC 2+1 on 4 storage nodes: every object has a home on the stopped node with probability 3/4, so
most PUTs after the stop need a handoff, some in the middle of their write (6 MiB objects are
two write batches: the second batch's failure rebuilds the first batch's blocks for the handoff
node from the upload's other fragments).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import anyio
import pytest
from headwater.objstore.metadata.client import MetadataClient
from headwater.objstore.records import ObjectRecord, objects_ns

from headwater.config import load as load_config
from tests.cluster import Cluster
from tests.data import data

KiB, MiB = 1024, 1024 * 1024
VICTIM = "storage-1"
SIZES = [300 * KiB + 1, 6 * MiB + 7, 70 * KiB]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("handoff"), k=2, m=1, storage_nodes=4, metadata_nodes=1,
                stripe_size=64 * KiB, inline_max_size=4 * KiB, rpc_timeout_seconds=2,
                repair={"interval_seconds": 1})
    try:
        c.start()
        yield c
    finally:
        try:
            c.kill_node(VICTIM, signal.SIGCONT, wait=False)
        finally:
            c.stop()


def records(c: Cluster, bucket: str, keys: list[str]) -> dict[str, ObjectRecord]:
    """The object records of ``keys``, straight from the metadata ring."""
    cfg = load_config(c.config_path)

    async def main() -> dict[str, ObjectRecord]:
        out = {}
        async with MetadataClient(cfg, writer_id=f"handoff-test-{time.monotonic_ns()}") as meta:
            for key in keys:
                e = await meta.get(objects_ns(bucket), key)
                assert e is not None, key
                out[key] = ObjectRecord.from_value(e.value)
        return out

    return anyio.run(main)


def test_puts_route_around_a_stopped_node_and_fragments_go_home(cluster):
    c = cluster
    s3 = c.s3_client(0, response_checksum_validation="when_required")
    s3.create_bucket(Bucket="handoff")
    acked: dict[str, bytes] = {}
    for i, size in enumerate(SIZES):
        body = data(size, i)
        s3.put_object(Bucket="handoff", Key=f"before/{i}", Body=body)
        acked[f"before/{i}"] = body

    failures: list[tuple[str, Any]] = []
    stop = threading.Event()
    during: list[str] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            key, body = f"during/{n}", data(SIZES[n % len(SIZES)], 100 + n)
            try:
                s3.put_object(Bucket="handoff", Key=key, Body=body)
            except Exception as e:  # noqa: BLE001 - every failure is the test's finding
                failures.append((key, e))
            else:
                acked[key] = body
                during.append(key)
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.3)  # a PUT in flight when the node falls silent
        c.kill_node(VICTIM, signal.SIGSTOP, wait=False)
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < 8 or len(during) < 8:
            assert time.monotonic() - stopped_at < 30, f"only {len(during)} PUTs in 30s"
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not failures, f"PUTs failed while {VICTIM} was stopped: {failures}"

    recs = records(c, "handoff", list(acked))
    away = {k: lay.away for k, r in recs.items() for lay in r.layouts if lay.away}
    assert away, "no layout records a handoff"
    assert all(home == VICTIM for a in away.values() for home in a.values()), away
    # Written once the node was known down: no fragment of the last PUTs is on it.
    for key in during[-3:]:
        for lay in recs[key].layouts:
            assert VICTIM not in lay.nodes and len({n for n in lay.nodes if n}) == 3, (key, lay)
    for key, body in acked.items():
        assert s3.get_object(Bucket="handoff", Key=key)["Body"].read() == body, key

    # The node answers again: the repair daemon moves every handed-off fragment home.
    c.kill_node(VICTIM, signal.SIGCONT, wait=False)
    deadline = time.monotonic() + 25
    while True:
        recs = records(c, "handoff", list(away))
        left = {k: lay.away for k, r in recs.items() for lay in r.layouts if lay.away}
        if not left:
            break
        assert time.monotonic() < deadline, f"still away after 25s: {left}"
        time.sleep(0.5)
    victim_fids = {p.name for p in c.fragment_files(VICTIM)}
    for key, r in recs.items():
        for lay in r.layouts:
            assert lay.homes == ()
            for i in away_indexes(away[key]):
                assert lay.nodes[i] == VICTIM and lay.fid(i) in victim_fids
                others = {p.name for d in c.storage if d.id != VICTIM for p in c.fragment_files(d.id)}
                assert lay.fid(i) not in others, f"handoff copy of {lay.fid(i)} left behind"
    for key, body in acked.items():
        assert s3.get_object(Bucket="handoff", Key=key)["Body"].read() == body, key


def away_indexes(a: dict[int, str]) -> list[int]:
    return sorted(a)
