"""A 1 GiB object through multipart upload and back, compared by SHA-256 (``-m slow``; ``make test``
runs the same path with 192 MiB, 12 parts).

The data is written to a temp file from a seeded RNG in 8 MiB blocks, so nothing holds 1 GiB in
memory; boto3's transfer manager uploads it in 16 MiB parts (with its default CRC32 checksums)
and the AWS CLI downloads it.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster import sha256_file, write_random

MiB = 1024 * 1024
GiB = 1024 * MiB

CLUSTER_OPTIONS = dict(stripe_size="1MiB", min_part_size="5MiB")


@pytest.mark.parametrize("size", [
    pytest.param(192 * MiB + 4099, id="192MiB"),
    pytest.param(GiB + 4099, id="1GiB", marks=pytest.mark.slow),  # + 4099: not a multiple of anything
])
def test_multipart_round_trip(cluster, s3, tmp_path, size):
    from boto3.s3.transfer import TransferConfig

    src = tmp_path / "big.bin"
    digest = write_random(src, size, seed=1)
    bucket = f"large-{size // MiB}"
    s3.create_bucket(Bucket=bucket)
    cfg = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4)
    t0 = time.monotonic()
    s3.upload_file(str(src), bucket, "big.bin", Config=cfg)
    up_s = time.monotonic() - t0
    head = json.loads(cluster.aws("s3api", "head-object", "--bucket", bucket, "--key", "big.bin").stdout)
    assert head["ContentLength"] == size
    assert head["ETag"].endswith(f'-{-(-size // (16 * MiB))}"'), head["ETag"]
    # a range in the middle, straddling a part boundary
    lo = 16 * MiB * (size // (16 * MiB) - 1) - 1000
    with open(src, "rb") as f:
        f.seek(lo)
        want = f.read(5000)
    got = s3.get_object(Bucket=bucket, Key="big.bin", Range=f"bytes={lo}-{lo + 4999}")["Body"].read()
    assert got == want
    src.unlink()  # room for the download
    out = tmp_path / "down.bin"
    t0 = time.monotonic()
    cluster.aws("s3", "cp", f"s3://{bucket}/big.bin", str(out), timeout=600)
    down_s = time.monotonic() - t0
    try:
        assert out.stat().st_size == size
        assert sha256_file(out) == digest
    finally:
        out.unlink(missing_ok=True)
    print(f"{size / MiB:.0f} MiB: upload {size / up_s / MiB:.0f} MiB/s, download {size / down_s / MiB:.0f} MiB/s")
    s3.delete_object(Bucket=bucket, Key="big.bin")
