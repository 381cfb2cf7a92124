"""What S3 answers outside us-east-1, against a cluster whose ``[objstore] region`` is eu-west-1:
re-creating one's own bucket is 409 BucketAlreadyOwnedByYou, and GetBucketLocation names the
region (test_s3_compat.py has us-east-1's answers)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from tests.cluster import client_error

CLUSTER_OPTIONS = dict(region="eu-west-1", stripe_size="64KiB", inline_max_size="4KiB",
                       k=2, m=1, storage_nodes=3, metadata_nodes=1)


def test_recreating_an_owned_bucket_outside_us_east_1(cluster, s3, s3_bob):
    s3.create_bucket(Bucket="regional", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for client, code in ((s3, "BucketAlreadyOwnedByYou"), (s3_bob, "BucketAlreadyExists")):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.create_bucket(Bucket="regional", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        assert client_error(info.value) == (409, code)
    res = cluster.aws("s3", "mb", "s3://regional", check=False)
    assert res.returncode != 0 and b"BucketAlreadyOwnedByYou" in res.stderr
    assert s3.get_bucket_location(Bucket="regional")["LocationConstraint"] == "eu-west-1"
    assert s3.head_bucket(Bucket="regional")["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "eu-west-1"
    assert [b.get("BucketRegion") for b in s3.list_buckets(BucketRegion="eu-west-1")["Buckets"]] == ["eu-west-1"]
