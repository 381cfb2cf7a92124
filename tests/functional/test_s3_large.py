"""A 1 GiB object through multipart upload and back, compared by SHA-256.

The data is written to a temp file from a seeded RNG in 8 MiB blocks, so nothing holds 1 GiB in
memory; boto3's transfer manager uploads it in 16 MiB parts (with its default CRC32 checksums)
and the AWS CLI downloads it.
"""

from __future__ import annotations

import json
import time

from tests.cluster import sha256_file, write_random

MiB = 1024 * 1024
GiB = 1024 * MiB
SIZE = GiB + 4099  # not a multiple of anything

CLUSTER_OPTIONS = dict(stripe_size="1MiB", min_part_size="5MiB")


def test_1gib_multipart_round_trip(cluster, s3, tmp_path):
    from boto3.s3.transfer import TransferConfig

    src = tmp_path / "1gib.bin"
    digest = write_random(src, SIZE, seed=1)
    s3.create_bucket(Bucket="large")
    cfg = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4)
    t0 = time.monotonic()
    s3.upload_file(str(src), "large", "one-gib.bin", Config=cfg)
    up_s = time.monotonic() - t0
    head = json.loads(cluster.aws("s3api", "head-object", "--bucket", "large", "--key", "one-gib.bin").stdout)
    assert head["ContentLength"] == SIZE
    assert head["ETag"].endswith(f'-{-(-SIZE // (16 * MiB))}"'), head["ETag"]
    # a range in the middle, straddling a part boundary
    lo = 16 * MiB * 31 - 1000
    with open(src, "rb") as f:
        f.seek(lo)
        want = f.read(5000)
    got = s3.get_object(Bucket="large", Key="one-gib.bin", Range=f"bytes={lo}-{lo + 4999}")["Body"].read()
    assert got == want
    src.unlink()  # room for the download
    out = tmp_path / "down.bin"
    t0 = time.monotonic()
    cluster.aws("s3", "cp", "s3://large/one-gib.bin", str(out), timeout=600)
    down_s = time.monotonic() - t0
    try:
        assert out.stat().st_size == SIZE
        assert sha256_file(out) == digest
    finally:
        out.unlink(missing_ok=True)
    print(f"1 GiB: upload {SIZE / up_s / MiB:.0f} MiB/s, download {SIZE / down_s / MiB:.0f} MiB/s")
    s3.delete_object(Bucket="large", Key="one-gib.bin")
