"""S3 behaviours that real tools trip over, each checked with an unmodified client (boto3, the AWS
CLI, or a presigned URL fetched with httpx) against one real cluster in us-east-1.

- DeleteBucket on a bucket holding only multipart uploads in progress aborts them and succeeds;
- SigV2, in the Authorization header and in presigned query strings;
- user metadata with non-ASCII characters, as boto3 signs and sends it;
- stored headers come back byte for byte (``aws-chunked`` removed);
- listing parameters with control characters come back as sent;
- CreateBucket of a bucket one already owns, GetBucketLocation;
- ListBuckets with max-buckets, continuation-token and prefix;
- presigned URLs out of their validity window.

The other region's answers (BucketAlreadyOwnedByYou, a named LocationConstraint) are in
test_s3_compat_region.py.
"""

from __future__ import annotations

import time

import botocore.exceptions
import pytest

from tests.cluster import client_error

CLUSTER_OPTIONS = dict(stripe_size="64KiB", inline_max_size="4KiB", min_part_size="100KiB",
                       extra_objstore={"retire_grace_seconds": 0.2})
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def expect_error(fn, status: int, code: str, **kw) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        fn(**kw)
    assert client_error(info.value) == (status, code)
    return info.value


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- 1. DeleteBucket with multipart uploads in progress -----------------------------------------

def test_delete_bucket_aborts_uploads_in_progress(cluster, s3, bucket):
    before = set(cluster.fragment_files())
    ids = [s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"] for k in ("a/one", "b/two", "b/two")]
    for uid, key in zip(ids, ("a/one", "b/two", "b/two")):
        s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"p" * 70_000)
    part_files = set(cluster.fragment_files()) - before
    assert part_files, "the parts wrote fragments"
    assert len(s3.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 3

    assert s3.delete_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error(s3.head_bucket, 404, "404", Bucket=bucket)
    # the parts are collected as AbortMultipartUpload collects them (after the retire grace)
    assert wait_until(lambda: not part_files & set(cluster.fragment_files())), "part fragments left behind"
    # and the next owner of the name inherits nothing
    s3.create_bucket(Bucket=bucket)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    expect_error(s3.list_parts, 404, "NoSuchUpload", Bucket=bucket, Key="a/one", UploadId=ids[0])


def test_delete_bucket_with_an_object_and_uploads_is_not_empty(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    s3.put_object(Bucket=bucket, Key="obj", Body=b"x")
    expect_error(s3.delete_bucket, 409, "BucketNotEmpty", Bucket=bucket)
    # nothing was aborted by the refused delete
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [uid]
    s3.delete_object(Bucket=bucket, Key="obj")
    assert s3.delete_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_aws_cli_rb_after_an_abandoned_upload(cluster, s3):
    """What cleanup tools do: delete every object, then the bucket (``aws s3 rb --force``)."""
    s3.create_bucket(Bucket="compat-rb-force")
    s3.put_object(Bucket="compat-rb-force", Key="k", Body=b"x")
    s3.create_multipart_upload(Bucket="compat-rb-force", Key="abandoned")
    cluster.aws("s3", "rb", "--force", "s3://compat-rb-force")
    expect_error(s3.head_bucket, 404, "404", Bucket="compat-rb-force")
