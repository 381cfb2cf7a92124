"""How far a GET reads ahead of its client, against what the worker's read buffer has left.

A GET reads up to ``READ_AHEAD`` batches of stripes ahead of the one it sends while at least half
of the worker's read buffer (``[gateway] read_buffer``) is free, and one batch ahead otherwise;
a GET that starts while no other reads in its worker reads larger batches (``READ_BATCH_ALONE``
stripes, ``READ_AHEAD_ALONE`` ahead). Stalled clients (they read the response head, then
nothing) show what each GET holds: here stripes are 1 MiB (EC 2+1) and the buffer 32 MiB, so the
first stalled GET, alone, holds 1 + READ_AHEAD_ALONE batches of 8 stripes (16 MiB), and the
second, not alone, reads batches of 4 stripes and, finding less than half free once it holds
two, stops there (8 MiB): free is 8 MiB, not the 4 it would be without the half rule.
"""

from __future__ import annotations

import time

from headwater.config import MiB
from headwater.objstore.datapath import READ_AHEAD, READ_AHEAD_ALONE, READ_BATCH, READ_BATCH_ALONE
from tests.functional.test_s3_slow_readers import gateway_health, stalled_get

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, metadata_groups=1, stripe_size="1MiB",
                       extra_gateway={"read_buffer": "32MiB", "read_buffer_wait_seconds": 1, "splice_reads": True})

BATCH = READ_BATCH * MiB
BATCH_ALONE = READ_BATCH_ALONE * MiB
SIZE = 12 * BATCH  # long enough that neither stalled GET nears its end


def free_settles_at(cluster, expected: int, timeout_s: float = 10.0) -> None:
    """The read buffer's free bytes reach ``expected`` and stay there for half a second."""
    deadline = time.monotonic() + timeout_s
    while gateway_health(cluster)["read_buffer"]["free"] != expected:
        assert time.monotonic() < deadline, (f"read buffer free {gateway_health(cluster)['read_buffer']}, "
                                             f"expected {expected}")
        time.sleep(0.05)
    time.sleep(0.5)
    assert gateway_health(cluster)["read_buffer"]["free"] == expected


def test_a_get_reads_further_ahead_only_while_half_the_buffer_is_free(cluster, s3, bucket):
    assert (READ_AHEAD, READ_BATCH, READ_AHEAD_ALONE, READ_BATCH_ALONE) == (2, 4, 1, 8), \
        "the figures below assume these batches"
    body = bytes(range(256)) * (SIZE // 256)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    total = gateway_health(cluster)["read_buffer"]["total"]
    assert total == 32 * MiB

    first = stalled_get(cluster, bucket, "big")
    try:
        alone = (1 + READ_AHEAD_ALONE) * BATCH_ALONE
        free_settles_at(cluster, total - alone)  # 16 MiB free: half
        second = stalled_get(cluster, bucket, "big")
        try:
            free_settles_at(cluster, total - alone - 2 * BATCH)  # 8 MiB
        finally:
            second.close()
    finally:
        first.close()
    free_settles_at(cluster, total)
    # A client that reads it all gets every byte, in order, with the deeper read-ahead.
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="big", Range="bytes=5-20971525")["Body"].read() == body[5:20971526]


def test_a_worker_tells_where_its_gets_waited(cluster, s3, bucket):
    """``/healthz``'s ``read_timing``: a GET's batches counted once each, the first batch's wait
    (request to first bytes) apart from the later batches' waits and the time sending took."""
    body = bytes(range(256)) * (SIZE // 256)
    s3.put_object(Bucket=bucket, Key="timed", Body=body)
    before = gateway_health(cluster)["read_timing"]
    assert s3.get_object(Bucket=bucket, Key="timed")["Body"].read() == body
    after = gateway_health(cluster)["read_timing"]
    assert after["reads"] - before["reads"] == 1
    assert after["batches"] - before["batches"] == SIZE // BATCH_ALONE  # alone: the larger batches
    for k in ("first_wait_s", "wait_s", "send_s"):
        assert after[k] > before[k], k
    # A ranged GET inside one batch is one read of one batch.
    got = s3.get_object(Bucket=bucket, Key="timed", Range="bytes=100-199")["Body"].read()
    assert got == body[100:200]
    last = gateway_health(cluster)["read_timing"]
    assert (last["reads"] - after["reads"], last["batches"] - after["batches"]) == (1, 1)


def test_a_get_sends_the_nodes_bytes_on_through_pipes(cluster, s3, bucket):
    """With ``[gateway] splice_reads`` a GET over plain HTTP/1.1 hands the storage nodes' replies on still in pipes
    (``read_timing.piped_bytes``), spliced to the client's socket: whole, ranged (cut inside
    blocks, across stripes and batches, the object's unpadded tail) and byte for byte."""
    size = 3 * BATCH + 12345  # a short last batch and a last stripe that is not whole
    body = bytes((i * 7 + i // 251) % 256 for i in range(size))
    s3.put_object(Bucket=bucket, Key="piped", Body=body)
    before = gateway_health(cluster)["read_timing"]["piped_bytes"]
    assert s3.get_object(Bucket=bucket, Key="piped")["Body"].read() == body
    after = gateway_health(cluster)["read_timing"]["piped_bytes"]
    # A GET alone reads 8-stripe batches: the last stripe's 12345 bytes come in the second
    # batch's replies, with 4 whole stripes (a reply under 64 KiB would be received as bytes).
    assert READ_BATCH_ALONE == 8 and size // MiB == 12
    assert after - before == size
    for lo, hi in [(1, 2), (100, 300_000), (MiB - 7, 3 * MiB + 9), (BATCH - 1, 2 * BATCH + 1),
                   (size - 20_000, size - 1), (0, size - 1)]:
        got = s3.get_object(Bucket=bucket, Key="piped", Range=f"bytes={lo}-{hi}")["Body"].read()
        assert got == body[lo:hi + 1], (lo, hi)
