"""A storage node's disk fills up: PUT answers 503 (never 500), nothing of the failed object is
visible, the node stays up and serves reads, and writes resume once space returns.

storage-1's data directory is a small filesystem of its own: a tmpfs mount (we run as root),
or, where tmpfs cannot be mounted, a loop-mounted ext4 image; where neither can be mounted the
test skips and says why. The mechanism that ran is recorded as the ``disk_full_mechanism``
property (``pytest --junitxml`` keeps it) and printed (``-s``).

EC 2+1 on 3 storage nodes: every stripe has a fragment on every node, and a write needs k+1 = 3
fragments, so one full node is enough to refuse a PUT.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import botocore.exceptions
import pytest

from tests.cluster import Cluster, client_error
from tests.data import data

KiB = 1024
MiB = 1024 * KiB
STRIPE = 64 * KiB
FS_BYTES = 4 * MiB
OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=3, stripe_size=STRIPE, inline_max_size=4 * KiB,
               rpc_timeout_seconds=5)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def mount_small_fs(path: Path, size: int, scratch: Path) -> str:
    """Mount a ``size``-byte filesystem on ``path``; returns which mechanism worked."""
    path.mkdir(parents=True, exist_ok=True)
    tried = []
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if r.returncode == 0:
        return "tmpfs"
    tried.append(f"tmpfs: {r.stderr.strip() or r.returncode}")
    image = scratch / "disk.img"
    with open(image, "wb") as f:
        f.truncate(max(size, 8 * MiB))  # ext4 needs a little room of its own
    r = _run("mkfs.ext4", "-q", "-F", str(image))
    if r.returncode == 0:
        r = _run("mount", "-o", "loop", str(image), str(path))
        if r.returncode == 0:
            return "loop-mounted ext4 image"
    tried.append(f"loop ext4: {r.stderr.strip() or r.returncode}")
    pytest.skip("cannot mount a small filesystem for the data dir (" + "; ".join(tried) + ")")


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the filesystem says ENOSPC; returns it."""
    filler = directory / "filler"
    chunk = b"\0" * (64 * KiB)
    with open(filler, "wb", buffering=0) as f:
        for piece in (chunk, chunk[:4 * KiB], chunk[:512]):
            while True:
                try:
                    f.write(piece)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
    return filler


@pytest.fixture(scope="module")
def full_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk_full")
    c = Cluster(root, **OPTIONS)
    small = c.daemon("storage-1").data_dir
    mechanism = mount_small_fs(small, FS_BYTES, root)
    print(f"\ndisk-full mechanism: {mechanism} on {small}")
    try:
        c.start()
        try:
            yield c, mechanism
        finally:
            c.stop()
    finally:
        _run("umount", "-l", str(small))


def storage_alive(c: Cluster, node_id: str) -> bool:
    r = c.healthz(c.daemon(node_id), timeout=3)
    return c.procs[node_id].poll() is None and r is not None and r.status_code == 200


def test_disk_full_refuses_cleanly_and_recovers(full_cluster, record_property):
    c, mechanism = full_cluster
    record_property("disk_full_mechanism", mechanism)
    s3 = c.s3_client(0, response_checksum_validation="when_required")
    s3.create_bucket(Bucket="full")
    before = {f"before-{i}": data(200 * KiB + i, i) for i in range(3)}
    for key, body in before.items():
        s3.put_object(Bucket="full", Key=key, Body=body)

    small = c.daemon("storage-1").data_dir
    filler = fill(small)
    frags_before = {d.id: len(c.fragment_files(d.id)) for d in c.storage}

    # Every PUT that needs the full node is refused with a 503, never a 500; small objects live
    # in their metadata record, so those still go in.
    for i, size in enumerate([100 * KiB, 1 * MiB + 7]):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="full", Key=f"refused-{i}", Body=data(size, 100 + i))
        status, code = client_error(e.value)
        assert status == 503, (status, code)
        assert code in ("SlowDown", "ServiceUnavailable"), code
    s3.put_object(Bucket="full", Key="tiny", Body=b"inline")

    # Nothing of a refused object is visible, and no fragment of it stays on any node.
    for i in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.head_object(Bucket="full", Key=f"refused-{i}")
        assert client_error(e.value)[0] == 404
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="full", Key=f"refused-{i}")
        assert client_error(e.value) == (404, "NoSuchKey")
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="full").get("Contents", [])]
    assert sorted(listed) == sorted([*before, "tiny"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        temps = [p for d in c.storage for p in (d.data_dir / "tmp").glob("*") if not p.name.startswith(".")]
        if not temps:
            break
        time.sleep(0.2)
    assert not temps, f"temp files of refused writes left behind: {temps}"
    assert {d.id: len(c.fragment_files(d.id)) for d in c.storage} == frags_before

    # The full node stays up, and every object written before reads back byte-exact.
    assert storage_alive(c, "storage-1")
    for key, body in before.items():
        assert s3.get_object(Bucket="full", Key=key)["Body"].read() == body

    # Space returns: writes go on, with no restart.
    filler.unlink()
    body = data(1 * MiB + 7, 200)
    s3.put_object(Bucket="full", Key="refused-1", Body=body)
    assert s3.get_object(Bucket="full", Key="refused-1")["Body"].read() == body
    assert storage_alive(c, "storage-1")
    assert len(c.fragment_files("storage-1")) == frags_before["storage-1"] + 1
