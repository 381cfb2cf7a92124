"""A storage node down for good, in a real multi-process cluster: it goes "out" and is replaced.

EC 4+2 over 7 storage nodes (one spare), 64 KiB stripes, a repair daemon passing every second
with ``node_down_out_seconds = 2`` and a 3-second grace for unnamed fragments; the rebalancer is
off so nothing moves back on its own.

A storage node is killed with SIGKILL and left down. Two seconds of failed health checks later
it is out: the reconstructor rebuilds every fragment the layouts placed on it onto the spare,
and the records stop naming it. Then two *more* nodes are killed (three down of seven): with
EC 4+2 that loses data unless the first node's fragments really were rebuilt, and every object
still reads back byte for byte through S3. Finally the first node comes back: it is no longer
out, and the collector removes its copies, which no record names any more, after the grace.
"""

from __future__ import annotations

import re
import signal

import pytest
from headwater.objstore.storage import fragment as fr

from tests.data import data
from tests.probe.test_repair_faults import (
    admin_get,
    frag_path,
    layouts,
    metric,
    read_all_exact,
    repair_state,
    wait_for,
)

KiB = 1024
STRIPE = 64 * KiB
K, M = 4, 2
CLUSTER_OPTIONS = dict(
    k=K, m=M, stripe_size=STRIPE, inline_max_size=4 * KiB, min_part_size=100 * KiB, rpc_timeout_seconds=5,
    storage_nodes=7,
    extra_objstore={"retire_grace_seconds": 3},
    repair={"interval_seconds": 1, "gc_interval_seconds": 1, "rebuild_rate": "64MiB",
            "node_down_out_seconds": 2, "rebalance": False},
)


@pytest.fixture(scope="module")
def s3(cluster):
    return cluster.s3_client(0, response_checksum_validation="when_required")


def test_a_node_down_for_good_goes_out_its_fragments_are_rebuilt_and_collected_when_back(cluster, s3):
    bucket = "out"
    s3.create_bucket(Bucket=bucket)
    objects = {f"o{i}": data(5 * KiB + i * 37 * KiB, 500 + i) for i in range(12)}  # 5 KiB .. 412 KiB
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    # one multipart object: the layouts of its parts live in the object record too
    up = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    parts = [data(150 * KiB, 600), data(70 * KiB + 5, 601)]
    etags = [s3.upload_part(Bucket=bucket, Key="multi", UploadId=up, PartNumber=n + 1, Body=p)["ETag"]
             for n, p in enumerate(parts)]
    s3.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=up, MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": n + 1} for n, e in enumerate(etags)]})
    objects["multi"] = b"".join(parts)

    before = {k: ls for k, ls in layouts(cluster, bucket, objects).items()}
    victim = "storage-3"
    stale = [(lay.fid(lay.nodes.index(victim)), key) for key, ls in before.items() for lay in ls
             if victim in lay.nodes]
    assert len(stale) >= 8, "too few fragments on the victim to prove anything"
    rebuilt_before = repair_state(cluster)["out_fragments_rebuilt"]

    cluster.kill_node(victim, signal.SIGKILL)   # down for good (until we say otherwise)
    # down first (seconds counted in /healthz), then out
    def seen_down():
        st = repair_state(cluster)
        return st if victim in st["nodes_down"] else None

    st = wait_for(f"{victim} to be seen down", seen_down, 20, every=0.2)
    assert st["node_down_out_seconds"] == 2
    wait_for(f"{victim} to be out", lambda: victim in repair_state(cluster)["nodes_out"], 20, every=0.2)

    # every fragment it held is rebuilt elsewhere and the records no longer name it
    def moved_off():
        lays = layouts(cluster, bucket, objects)
        return lays if all(victim not in lay.nodes for ls in lays.values() for lay in ls) else None

    after = wait_for("the records to stop naming the out node", moved_off, 30, every=0.5)
    for key, ls in after.items():
        for lay in ls:
            assert None not in lay.nodes and len(set(lay.nodes)) == K + M, f"{key}: {lay.nodes}"
            for i, node in enumerate(lay.nodes):
                assert len(fr.read_blocks(frag_path(cluster, node, lay.fid(i)), lay.fid(i), 0, lay.stripes)) \
                    == lay.stripes
    st = repair_state(cluster)
    assert st["out_fragments_rebuilt"] - rebuilt_before >= len(stale)
    text = admin_get(cluster, "repair", "/metrics")
    assert metric(text, "headwater_repair_nodes_out") == 1
    assert re.search(rf'^headwater_repair_node_out\{{node="{victim}"\}} 1$', text, re.M), text
    assert re.search(rf'^headwater_repair_node_down_seconds\{{node="{victim}"\}} [0-9.]+$', text, re.M)

    # two more nodes lost (three of seven down): EC 4+2 still has k of every stripe
    others = [d.id for d in cluster.storage if d.id != victim][:2]
    for n in others:
        cluster.kill_node(n, signal.SIGKILL)
    read_all_exact(s3, bucket, objects)

    # everyone back: the out node is no longer out, and its unnamed copies are collected
    for n in others:
        cluster.restart_node(n)
    assert all(frag_path(cluster, victim, fid).exists() for fid, _ in stale)
    cluster.restart_node(victim)
    wait_for(f"{victim} to be back", lambda: not repair_state(cluster)["nodes_down"], 20, every=0.2)
    assert repair_state(cluster)["nodes_out"] == []
    wait_for("the collector to remove the out node's old copies",
             lambda: not any(frag_path(cluster, victim, fid).exists() for fid, _ in stale), 30, every=0.5)
    assert repair_state(cluster)["gc"]["fragments_deleted"] >= len(stale)
    # and the records (unchanged since) still name whole fragments: everything reads back
    assert layouts(cluster, bucket, objects) == after
    read_all_exact(s3, bucket, objects)
