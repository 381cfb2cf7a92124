"""Fragments no record points to any more go away: overwrites, deletes, aborted uploads.

The gateway retires a replaced layout after a grace period (so a GET that read the old record
can still finish); this cluster shortens the grace to half a second.
"""

from __future__ import annotations

import os
import time

import pytest

CLUSTER_OPTIONS = {"stripe_size": "64KiB", "inline_max_size": "4KiB", "min_part_size": "100KiB",
                   "extra_objstore": {"retire_grace_seconds": 0.5},
                   "k": 2, "m": 1, "storage_nodes": 3, "metadata_nodes": 1}
WIDTH = CLUSTER_OPTIONS["k"] + CLUSTER_OPTIONS["m"]  # fragment files per stripe


def _settle(cluster, expected: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    count = len(cluster.fragment_files())
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        count = len(cluster.fragment_files())
    return count


def test_overwrite_and_delete_remove_old_fragments(cluster, s3, bucket):
    base = len(cluster.fragment_files())
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(300 * 1024))
    assert _settle(cluster, base + WIDTH) == base + WIDTH  # one fragment file per fragment index
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(200 * 1024))
    assert _settle(cluster, base + WIDTH) == base + WIDTH
    s3.delete_object(Bucket=bucket, Key="k")
    assert _settle(cluster, base) == base


def test_aborted_and_unused_parts_are_removed(cluster, s3, bucket):
    base = len(cluster.fragment_files())
    up = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    parts = []
    for n in (1, 2, 3):
        r = s3.upload_part(Bucket=bucket, Key="m", UploadId=up, PartNumber=n, Body=os.urandom(120 * 1024))
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    assert _settle(cluster, base + 3 * WIDTH) == base + 3 * WIDTH
    # Complete with parts 1 and 3: part 2's fragments are no longer anyone's.
    s3.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=up,
                                 MultipartUpload={"Parts": [parts[0], parts[2]]})
    assert _settle(cluster, base + 2 * WIDTH) == base + 2 * WIDTH
    up2 = s3.create_multipart_upload(Bucket=bucket, Key="n")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="n", UploadId=up2, PartNumber=1, Body=os.urandom(120 * 1024))
    assert _settle(cluster, base + 3 * WIDTH) == base + 3 * WIDTH
    s3.abort_multipart_upload(Bucket=bucket, Key="n", UploadId=up2)
    assert _settle(cluster, base + 2 * WIDTH) == base + 2 * WIDTH
    s3.delete_object(Bucket=bucket, Key="m")
    assert _settle(cluster, base) == base


@pytest.mark.parametrize("size", [100, 200 * 1024])
def test_copy_leaves_source_intact(cluster, s3, bucket, size):
    body = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="src", Body=body)
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    s3.delete_object(Bucket=bucket, Key="src")
    time.sleep(1.5)
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == body
