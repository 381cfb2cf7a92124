"""Storage faults in a real multi-process cluster: nodes killed with SIGKILL, fragment files
corrupted, truncated and deleted on disk. Reads must return the right bytes or fail cleanly
(a 5xx, or a broken connection) — never wrong bytes.

EC 4+2 over 6 storage nodes with 64 KiB stripes: every object has a fragment on every node, so
killing any two leaves exactly k=4 fragments of each stripe.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import botocore.exceptions
import httpx
import pytest

from tests.cluster import client_error
from tests.data import data

KiB = 1024
STRIPE = 64 * KiB
K, M = 4, 2
CLUSTER_OPTIONS = dict(k=K, m=M, stripe_size=STRIPE, inline_max_size=4 * KiB, min_part_size=100 * KiB,
                       rpc_timeout_seconds=5)

SIZES = [0, 1, 4 * KiB, STRIPE - 1, STRIPE, STRIPE + 1, 200_003, 1_000_003, 16 * STRIPE + 5]
RANGES = ["bytes=0-0", "bytes=0-99", f"bytes={STRIPE - 10}-{STRIPE + 9}", "bytes=-17", "bytes=100000-180000"]

STREAM_ERRORS = (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
                 botocore.exceptions.ConnectionClosedError, botocore.exceptions.ReadTimeoutError,
                 botocore.exceptions.EndpointConnectionError)


def slice_for(spec: str, body: bytes) -> bytes:
    r = spec.removeprefix("bytes=")
    lo, _, hi = r.partition("-")
    if lo == "":
        return body[-int(hi):]
    return body[int(lo):(int(hi) + 1 if hi else None)]


@pytest.fixture(scope="module")
def s3(cluster):
    """boto3 that checks bytes itself: these tests compare every byte, and whole-object checksum
    headers on ranged reads are test_s3_boto3's business, not fault tolerance's."""
    return cluster.s3_client(0, response_checksum_validation="when_required")


@pytest.fixture(scope="module")
def objects(cluster, s3):
    """Objects written while every node was up: {key: bytes}, in bucket "faults"."""
    s3.create_bucket(Bucket="faults")
    objs = {}
    for size in SIZES:
        key = f"obj-{size}"
        objs[key] = data(size, size)
        s3.put_object(Bucket="faults", Key=key, Body=objs[key])
    # a multipart object whose parts are not stripe-aligned
    parts = [data(100 * KiB + 3, 1), data(150 * KiB, 2), data(99, 3)]
    uid = s3.create_multipart_upload(Bucket="faults", Key="multipart")["UploadId"]
    etags = [s3.upload_part(Bucket="faults", Key="multipart", UploadId=uid, PartNumber=i + 1, Body=p)["ETag"]
             for i, p in enumerate(parts)]
    s3.complete_multipart_upload(Bucket="faults", Key="multipart", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    objs["multipart"] = b"".join(parts)
    return objs


@pytest.fixture
def heal(cluster, s3):
    """Restart every storage node a test killed, and wait until writes work again."""
    yield
    for d in cluster.storage:
        p = cluster.procs.get(d.id)
        if p is None or p.poll() is not None:
            cluster.restart_node(d.id)
    wait_writable(s3, cluster)


def wait_writable(s3, cluster=None, timeout: float = 60.0) -> None:
    """The gateway holds a failed node out of placements for a few seconds; wait that out.
    With ``cluster``, also until the gateway marks no storage node down: a PUT succeeds
    before that with k+1 fragments (the write quorum), and a test that then kills two nodes
    would find such an object unreadable by design, not by a fault."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if cluster is not None:
            r = cluster.healthz(cluster.gateway)
            if r is None or r.status_code != 200 or r.json().get("storage_down"):
                last = r.json().get("storage_down") if r is not None and r.status_code == 200 else r
                time.sleep(0.5)
                continue
        try:
            s3.put_object(Bucket="faults", Key="probe-write", Body=data(3 * STRIPE, 99))
            return
        except botocore.exceptions.ClientError as e:
            last = e
            time.sleep(0.5)
    raise AssertionError(f"cluster not writable {timeout}s after healing: {last}")


def read_all_exact(s3, objects) -> None:
    for key, body in objects.items():
        got = s3.get_object(Bucket="faults", Key=key)
        assert got["ContentLength"] == len(body), key
        assert got["Body"].read() == body, f"{key}: wrong bytes"
        for spec in RANGES:
            want = slice_for(spec, body)
            if not body or (spec.startswith("bytes=") and not spec.startswith("bytes=-")
                            and int(spec[6:].split("-")[0]) >= len(body)):
                continue  # unsatisfiable on this object
            r = s3.get_object(Bucket="faults", Key=key, Range=spec)["Body"].read()
            assert r == want, f"{key} {spec}: wrong bytes"


def test_read_all_with_every_node_up(s3, objects):
    read_all_exact(s3, objects)


@pytest.mark.parametrize("victims", [("storage-1", "storage-2"), ("storage-3", "storage-6")])
def test_kill_two_storage_nodes_reads_byte_exact(cluster, s3, objects, heal, victims):
    for v in victims:
        cluster.kill_node(v, signal.SIGKILL)
    read_all_exact(s3, objects)
    # twice: the second pass runs with the gateway already knowing the nodes are down
    read_all_exact(s3, objects)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket="faults")["Contents"]}
    assert set(objects) <= listed


def test_kill_one_storage_node_writes_still_work(cluster, s3, objects, heal):
    cluster.kill_node("storage-4", signal.SIGKILL)
    new = data(5 * STRIPE + 3, 1234)
    deadline = time.monotonic() + 15
    while True:
        try:
            s3.put_object(Bucket="faults", Key="written-degraded", Body=new)
            break
        except botocore.exceptions.ClientError as e:
            status, code = client_error(e)
            assert status == 503, f"a write with one node down failed with {status} {code}"
            assert time.monotonic() < deadline, "writes never succeeded with one of six nodes down"
            time.sleep(0.5)
    assert s3.get_object(Bucket="faults", Key="written-degraded")["Body"].read() == new
    # and writes keep working while the node stays down (past the gateway's memory of the failure)
    failures = []
    for i in range(8):
        try:
            s3.put_object(Bucket="faults", Key=f"degraded-{i}", Body=data(2 * STRIPE + i, i))
        except botocore.exceptions.ClientError as e:
            failures.append((i, *client_error(e), e.response["Error"].get("Message")))
        time.sleep(1)
    assert not failures, f"writes with 5 of 6 storage nodes up failed: {failures}"
    read_all_exact(s3, objects)
    # the object written with a node down survives that node coming back and another going away
    cluster.restart_node("storage-4")
    cluster.kill_node("storage-5", signal.SIGKILL)
    assert s3.get_object(Bucket="faults", Key="written-degraded")["Body"].read() == new


def test_three_nodes_down_writes_503_reads_never_wrong(cluster, s3, objects, heal):
    for v in ("storage-1", "storage-3", "storage-5"):
        cluster.kill_node(v, signal.SIGKILL)
    for attempt in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as ei:
            s3.put_object(Bucket="faults", Key=f"must-fail-{attempt}", Body=data(3 * STRIPE, 5))
        status, code = client_error(ei.value)
        assert status == 503 and code in ("SlowDown", "ServiceUnavailable"), (status, code)
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        uid = s3.create_multipart_upload(Bucket="faults", Key="mp-fail")["UploadId"]
        s3.upload_part(Bucket="faults", Key="mp-fail", UploadId=uid, PartNumber=1, Body=data(2 * STRIPE, 6))
    assert client_error(ei.value)[0] == 503
    for key, body in objects.items():
        try:
            got = s3.get_object(Bucket="faults", Key=key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            status, code = client_error(e)
            assert status >= 500, f"{key}: {status} {code}"
            assert len(body) > 4 * KiB, f"{key}: inline object failed though metadata is all up"
            continue
        except STREAM_ERRORS:
            continue  # the connection broke mid-body: clean, the client knows it is incomplete
        assert got == body, f"{key}: WRONG BYTES with 3 of 6 nodes down"
    # failed writes left nothing visible
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="faults")["Contents"]}
    assert not {"must-fail-0", "must-fail-1"} & keys


def test_all_nodes_back_everything_readable(cluster, s3, objects):
    for d in cluster.storage:
        assert cluster.procs[d.id].poll() is None, f"{d.id} not running"
    wait_writable(s3)
    read_all_exact(s3, objects)


# --- on-disk corruption -------------------------------------------------------------------------

def fresh_object(cluster, s3, key: str, size: int, seed: int) -> tuple[bytes, list[Path]]:
    """PUT an object; return its bytes and the fragment files it added (sorted by index).

    The nodes killed by earlier tests are back, but the gateway may still hold one as down for a
    moment (a write then succeeds on K + 1 of them, as it should): such a PUT is deleted and
    tried again, since the corruption tests need a fragment on every node."""
    body = data(size, seed)
    deadline = time.monotonic() + 30
    while True:
        before = set(cluster.fragment_files())
        s3.put_object(Bucket="faults", Key=key, Body=body)
        added = sorted(set(cluster.fragment_files()) - before, key=lambda p: fragment_index(p))
        if len(added) == K + M or time.monotonic() > deadline:
            break
        s3.delete_object(Bucket="faults", Key=key)
        time.sleep(0.5)
    assert len(added) == K + M, f"expected {K + M} new fragment files, found {len(added)}: {added}"
    return body, added


def fragment_index(p: Path) -> int:
    return int(p.name.rsplit(".", 1)[-1])


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


def storage_counter(cluster, path: Path, name: str) -> float:
    """Counter ``name`` (/metrics ``headwater_storage_<name>``) of the storage node holding ``path``."""
    node = next(d for d in cluster.storage if d.data_dir in path.parents)
    text = httpx.get(f"http://{node.host}:{node.admin_port}/metrics", timeout=2).text
    m = re.search(rf"^headwater_storage_{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_flipped_byte_in_data_fragment(cluster, s3):
    body, frags = fresh_object(cluster, s3, "flip", 6 * STRIPE + 77, 11)
    data0 = frags[0]
    assert fragment_index(data0) == 0
    # Read once first: the fragments (small ones) stay in the page cache after it.
    assert s3.get_object(Bucket="faults", Key="flip")["Body"].read() == body
    flip_byte(data0, data0.stat().st_size // 2)
    sent_unread = storage_counter(cluster, frags[1], "prefixed_reads")
    corrupt = storage_counter(cluster, data0, "corrupt_reads")
    # The fragments came page-cached and unread (each block with its prefix): the gateway found
    # the flipped block itself and told the node holding it, as the node's own check would count it.
    # On a loaded machine the kernel may drop the pages first (and the node rightly reads the
    # slow way): the files are read back into the page cache before each of up to three tries.
    for _try in range(3):
        for f in frags:
            f.read_bytes()
        assert s3.get_object(Bucket="faults", Key="flip")["Body"].read() == body
        if storage_counter(cluster, frags[1], "prefixed_reads") > sent_unread:
            break
    else:
        pytest.fail("no fragment went out page-cached and unread")
    assert storage_counter(cluster, data0, "corrupt_reads") > corrupt
    for spec in RANGES:
        assert s3.get_object(Bucket="faults", Key="flip", Range=spec)["Body"].read() == slice_for(spec, body)


def test_flipped_bytes_in_two_fragments(cluster, s3):
    body, frags = fresh_object(cluster, s3, "flip2", 6 * STRIPE + 78, 12)
    for f in (frags[1], frags[3]):
        size = f.stat().st_size
        for off in (size // 3, size // 2, (2 * size) // 3):
            flip_byte(f, off)
    assert s3.get_object(Bucket="faults", Key="flip2")["Body"].read() == body


def test_flipped_byte_in_header(cluster, s3):
    body, frags = fresh_object(cluster, s3, "fliphead", 3 * STRIPE, 13)
    flip_byte(frags[2], 10)
    assert s3.get_object(Bucket="faults", Key="fliphead")["Body"].read() == body


def test_truncated_fragment(cluster, s3):
    body, frags = fresh_object(cluster, s3, "trunc", 8 * STRIPE + 1, 14)
    victim = frags[0]
    os.truncate(victim, victim.stat().st_size // 2)
    assert s3.get_object(Bucket="faults", Key="trunc")["Body"].read() == body
    tail = f"bytes={8 * STRIPE - 5}-"
    assert s3.get_object(Bucket="faults", Key="trunc", Range=tail)["Body"].read() == body[8 * STRIPE - 5:]
    os.truncate(frags[2], 0)
    assert s3.get_object(Bucket="faults", Key="trunc")["Body"].read() == body


def test_deleted_fragment_files(cluster, s3):
    body, frags = fresh_object(cluster, s3, "deleted", 4 * STRIPE + 9, 15)
    frags[0].unlink()
    frags[4].unlink()
    assert s3.get_object(Bucket="faults", Key="deleted")["Body"].read() == body


def test_too_many_corrupt_fragments_fail_cleanly(cluster, s3):
    body, frags = fresh_object(cluster, s3, "toomany", 4 * STRIPE + 9, 16)
    for f in frags[:M + 1]:
        flip_byte(f, f.stat().st_size // 2)
    try:
        got = s3.get_object(Bucket="faults", Key="toomany")["Body"].read()
    except botocore.exceptions.ClientError as e:
        assert client_error(e)[0] >= 500
        return
    except STREAM_ERRORS:
        return
    assert got == body, "WRONG BYTES from an object with m+1 corrupt fragments"


def test_corruption_combined_with_a_dead_node(cluster, s3, heal):
    body, frags = fresh_object(cluster, s3, "combo", 5 * STRIPE + 1, 17)
    flip_byte(frags[0], frags[0].stat().st_size // 2)
    # kill a node that holds a different fragment of this object
    holder = frags[5].relative_to(cluster.data_dir).parts[0]
    cluster.kill_node(holder, signal.SIGKILL)
    assert s3.get_object(Bucket="faults", Key="combo")["Body"].read() == body
