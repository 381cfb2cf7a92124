"""Object and bucket tagging, with unmodified clients against one real cluster: boto3, the AWS CLI
(``s3api put-object-tagging`` ...) and minio-py (``set_object_tags`` ...), plus signed raw
requests for what no client sends (hostile documents and headers).

Tags are written with the object (PutObject's ``x-amz-tagging``, CreateMultipartUpload ->
CompleteMultipartUpload, CopyObject's ``x-amz-tagging-directive``, POST Object's ``tagging``
field) or by ``?tagging``; changing them changes neither the ETag nor Last-Modified, and never
brings back a version a concurrent PutObject replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import urllib.parse
from datetime import datetime, timedelta, timezone

import botocore.exceptions
import httpx
import pytest
from minio import Minio
from minio.commonconfig import REPLACE, CopySource, Tags
from minio.datatypes import PostPolicy
from minio.error import S3Error

from tests.cluster import client_error, signed_request

MiB = 1024 * 1024
CLUSTER_OPTIONS = dict(stripe_size="64KiB", inline_max_size="4KiB", min_part_size="64KiB", k=2, m=1,
                       storage_nodes=3, metadata_nodes=1)


@pytest.fixture(scope="module")
def mc(cluster) -> Minio:
    u = cluster.user(0)
    return Minio(cluster.endpoint.removeprefix("http://"), access_key=u.access_key, secret_key=u.secret_key,
                 secure=False, region=cluster.region)


def tagset(d: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in d.items()]


def as_dict(tag_set: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tag_set}


def error(fn, *args, **kw) -> tuple[int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        fn(*args, **kw)
    return client_error(info.value)


def tagging_xml(*pairs: tuple[str, str]) -> bytes:
    tags = "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>" for k, v in pairs)
    return f'<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><TagSet>{tags}</TagSet></Tagging>'.encode()


# --- boto3 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10, 200_000])  # inline, and erasure-coded
def test_put_object_with_tagging_header_then_get_put_delete(s3, bucket, size):
    body = hashlib.shake_256(b"t").digest(size)
    s3.put_object(Bucket=bucket, Key="k", Body=body, Tagging="project=headwater&stage=caf%C3%A9+1")
    got = s3.get_object_tagging(Bucket=bucket, Key="k")
    assert as_dict(got["TagSet"]) == {"project": "headwater", "stage": "caf\u00e9 1"}
    head = s3.head_object(Bucket=bucket, Key="k")
    obj = s3.get_object(Bucket=bucket, Key="k")
    assert obj["TagCount"] == 2 and obj["Body"].read() == body
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    # PutObjectTagging replaces the whole set; ETag and Last-Modified stay (as S3)
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": tagset({"only": "one"})})
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"]) == {"only": "one"}
    after = s3.head_object(Bucket=bucket, Key="k")
    assert (after["ETag"], after["LastModified"]) == (head["ETag"], head["LastModified"])
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    # DeleteObjectTagging: 204, then an empty TagSet and no x-amz-tagging-count
    resp = s3.delete_object_tagging(Bucket=bucket, Key="k")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []
    assert "x-amz-tagging-count" not in s3.head_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPHeaders"]
    assert "TagCount" not in s3.get_object(Bucket=bucket, Key="k")
    # an overwrite without tags has none
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": tagset({"a": "1"})})
    s3.put_object(Bucket=bucket, Key="k", Body=b"new")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []


def test_object_tagging_errors(s3, s3_bob, bucket):
    assert error(s3.put_object_tagging, Bucket=bucket, Key="missing",
                 Tagging={"TagSet": tagset({"a": "1"})}) == (404, "NoSuchKey")
    assert error(s3.get_object_tagging, Bucket=bucket, Key="missing") == (404, "NoSuchKey")
    assert error(s3.delete_object_tagging, Bucket=bucket, Key="missing") == (404, "NoSuchKey")
    assert error(s3.get_object_tagging, Bucket=bucket + "-none", Key="k") == (404, "NoSuchBucket")
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert error(s3_bob.get_object_tagging, Bucket=bucket, Key="k") == (403, "AccessDenied")
    assert error(s3_bob.put_object_tagging, Bucket=bucket, Key="k",
                 Tagging={"TagSet": tagset({"a": "1"})}) == (403, "AccessDenied")
    for bad in ({f"k{i}": "v" for i in range(11)}, {"k" * 129: "v"}, {"k": "v" * 257}, {"aws:x": "v"},
                {"a*b": "v"}):
        assert error(s3.put_object_tagging, Bucket=bucket, Key="k",
                     Tagging={"TagSet": tagset(bad)}) == (400, "InvalidTag"), bad
    assert error(s3.put_object_tagging, Bucket=bucket, Key="k",
                 Tagging={"TagSet": [{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}]}) == (400, "InvalidTag")
    # the limits are S3's: exactly 10 tags of 128 / 256 characters are fine
    full = {f"{i}".ljust(128, "\u00e9"): "v" * 256 for i in range(10)}
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": tagset(full)})
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"]) == full
    # refused writes store nothing
    assert error(s3.put_object, Bucket=bucket, Key="k2", Body=b"x", Tagging="aws:a=1") == (400, "InvalidTag")
    # a key twice in the header: InvalidArgument, as S3 answers `put-object --tagging 'a=&a='`
    assert error(s3.put_object, Bucket=bucket, Key="k2", Body=b"x", Tagging="a=1&a=2") == (400, "InvalidArgument")
    assert error(s3.head_object, Bucket=bucket, Key="k2") == (404, "404")
    # versionId: only null exists
    assert error(s3.get_object_tagging, Bucket=bucket, Key="k", VersionId="v1") == (404, "NoSuchVersion")
    assert s3.get_object_tagging(Bucket=bucket, Key="k", VersionId="null")["TagSet"]


def test_multipart_upload_carries_tags_to_the_object(s3, bucket):
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", Tagging="kind=multipart&n=2")
    parts = []
    for n in (1, 2):
        r = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=n, Body=b"p" * (64 * 1024))
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="mp")["TagSet"]) == {"kind": "multipart", "n": "2"}
    assert s3.get_object(Bucket=bucket, Key="mp")["TagCount"] == 2
    assert error(s3.create_multipart_upload, Bucket=bucket, Key="mp2", Tagging="a=%zz") == (400, "InvalidArgument")
    # retagging a multipart object keeps what makes it one: its ETag, its parts, its bytes
    head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=2)
    s3.put_object_tagging(Bucket=bucket, Key="mp", Tagging={"TagSet": tagset({"re": "tagged"})})
    again = s3.head_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert (again["ETag"], again["PartsCount"], again["ContentLength"]) == (head["ETag"], 2, 64 * 1024)
    assert s3.get_object(Bucket=bucket, Key="mp", PartNumber=1)["Body"].read() == b"p" * (64 * 1024)
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="mp")["TagSet"]) == {"re": "tagged"}


@pytest.mark.parametrize("key", ["a b/c?d=e&tagging", "caf\u00e9/+%2F#x", "tagging", "..a/./b"])
def test_tagging_on_keys_with_special_characters(s3, bucket, key):
    """The ?tagging subresource on keys that look like queries, escapes or paths: the key is the
    path's, whole (boto3 percent-encodes it)."""
    s3.put_object(Bucket=bucket, Key=key, Body=b"x", Tagging="a=1")
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]) == {"a": "1"}
    s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tagset({"b": "2"})})
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]) == {"b": "2"}
    assert s3.get_object(Bucket=bucket, Key=key)["TagCount"] == 1
    s3.delete_object_tagging(Bucket=bucket, Key=key)
    assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == []
    s3.delete_object(Bucket=bucket, Key=key)


def presign_hoisted(cluster, method: str, url: str, expires: int = 300, headers: dict[str, str] | None = None) -> str:
    """A SigV4 presigned URL whose query already holds header fields (``x-amz-tagging=...``), as
    the AWS SDK for JavaScript v3's presigner hoists them; botocore's ``generate_presigned_url``
    keeps them as signed headers instead (the client must send them)."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    u = cluster.user(0)
    req = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    S3SigV4QueryAuth(Credentials(u.access_key, u.secret_key), "s3", cluster.region, expires=expires).add_auth(req)
    return req.url


def test_presigned_put_applies_hoisted_tagging_and_metadata(cluster, s3, bucket):
    """x-amz-tagging (and x-amz-meta-*) sent as signed query parameters of a SigV4 presigned PUT
    apply as the headers they stand for (before, they were silently dropped); a header sent
    too wins; one holding a control character is refused. botocore's own presigned PUT with
    Tagging signs it as a header, which the client then sends."""
    base = f"{cluster.endpoint}/{bucket}/hoisted"
    url = presign_hoisted(cluster, "PUT", base + "?x-amz-tagging=a%3D1%26b%3Dtwo%20words&x-amz-meta-note=hi")
    r = httpx.put(url, content=b"body")
    assert r.status_code == 200, r.text
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="hoisted")["TagSet"]) == {"a": "1", "b": "two words"}
    assert s3.head_object(Bucket=bucket, Key="hoisted")["Metadata"] == {"note": "hi"}
    # The header wins over the parameter (both signed).
    url = presign_hoisted(cluster, "PUT", base + "?x-amz-tagging=a%3D1", headers={"x-amz-tagging": "h=2"})
    assert httpx.put(url, content=b"b", headers={"x-amz-tagging": "h=2"}).status_code == 200
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="hoisted")["TagSet"]) == {"h": "2"}
    # A value no header can carry.
    url = presign_hoisted(cluster, "PUT", base + "?x-amz-meta-note=a%0D%0Ab")
    r = httpx.put(url, content=b"b")
    assert r.status_code == 400 and "<Code>InvalidArgument</Code>" in r.text, r.text
    # botocore: Tagging is a signed header of the URL.
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "boto", "Tagging": "k=v"})
    assert "x-amz-tagging" in urllib.parse.unquote(url)
    assert httpx.put(url, content=b"x", headers={"x-amz-tagging": "k=v"}).status_code == 200
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="boto")["TagSet"]) == {"k": "v"}


def test_copy_object_tagging_directive(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"source", Tagging="from=src")
    s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "src"})
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="copied")["TagSet"]) == {"from": "src"}
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource={"Bucket": bucket, "Key": "src"},
                   TaggingDirective="REPLACE", Tagging="new=1")
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="replaced")["TagSet"]) == {"new": "1"}
    s3.copy_object(Bucket=bucket, Key="none", CopySource={"Bucket": bucket, "Key": "src"},
                   TaggingDirective="REPLACE")
    assert s3.get_object_tagging(Bucket=bucket, Key="none")["TagSet"] == []
    assert error(s3.copy_object, Bucket=bucket, Key="bad", CopySource={"Bucket": bucket, "Key": "src"},
                 TaggingDirective="REPLACE", Tagging="aws:x=1") == (400, "InvalidTag")


def test_bucket_tagging(s3, s3_bob, bucket):
    assert error(s3.get_bucket_tagging, Bucket=bucket) == (404, "NoSuchTagSet")
    tags = {f"team{i}": f"v{i}" for i in range(50)}
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tagset(tags)})
    assert as_dict(s3.get_bucket_tagging(Bucket=bucket)["TagSet"]) == tags
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tagset({"a": "1"})})
    assert as_dict(s3.get_bucket_tagging(Bucket=bucket)["TagSet"]) == {"a": "1"}
    assert error(s3.put_bucket_tagging, Bucket=bucket,
                 Tagging={"TagSet": tagset({f"k{i}": "v" for i in range(51)})}) == (400, "InvalidTag")
    assert error(s3_bob.get_bucket_tagging, Bucket=bucket) == (403, "AccessDenied")
    assert error(s3_bob.put_bucket_tagging, Bucket=bucket, Tagging={"TagSet": tagset({"b": "1"})}) == (403, "AccessDenied")
    assert s3.delete_bucket_tagging(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert error(s3.get_bucket_tagging, Bucket=bucket) == (404, "NoSuchTagSet")
    assert error(s3.get_bucket_tagging, Bucket=bucket + "-none") == (404, "NoSuchBucket")
    # a bucket created again under the name starts untagged
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tagset({"old": "1"})})
    s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    assert error(s3.get_bucket_tagging, Bucket=bucket) == (404, "NoSuchTagSet")


def test_retagging_never_brings_back_a_replaced_version(s3, bucket):
    """PutObjectTagging racing PutObjects: a tag write is a compare-and-swap on the version it
    read, so the last PutObject's body always survives (an unconditional write of the record
    read would put an older version back)."""
    s3.put_object(Bucket=bucket, Key="race", Body=b"v0")
    stop = threading.Event()
    errors: list[BaseException] = []

    def tagger() -> None:
        i = 0
        while not stop.is_set():
            try:
                s3.put_object_tagging(Bucket=bucket, Key="race", Tagging={"TagSet": tagset({"n": str(i)})})
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return
            i += 1

    threads = [threading.Thread(target=tagger) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for v in range(1, 60):
            s3.put_object(Bucket=bucket, Key="race", Body=f"v{v}".encode() + b"." * (v * 100))
            got = s3.get_object(Bucket=bucket, Key="race")["Body"].read()
            assert got.startswith(f"v{v}.".encode()), (v, got[:10])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert s3.get_object(Bucket=bucket, Key="race")["Body"].read().startswith(b"v59.")


# --- hostile input (signed raw requests) ---------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"<Tagging><TagSet><Tag><Key>a</Key>",
    b"not xml at all",
    b"<Tagging/>",
    b'<!DOCTYPE t [<!ENTITY x "xxxxxxxxxx">]><Tagging><TagSet><Tag><Key>&x;</Key><Value>v</Value></Tag></TagSet></Tagging>',
    b"<Tagging><TagSet><Tag><Key>a</Key></Tag></TagSet></Tagging>",
])
def test_malformed_tagging_documents_are_malformed_xml(cluster, s3, bucket, body):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for path in (f"/{bucket}/k", f"/{bucket}"):
        r = signed_request(cluster, "PUT", path, query="tagging", body=body)
        assert r.status_code == 400 and b"<Code>MalformedXML</Code>" in r.content, (path, r.status_code, r.text)


def test_oversized_and_huge_tag_sets_are_refused(cluster, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    thousand = tagging_xml(*[(f"k{i}", "v") for i in range(1000)])
    r = signed_request(cluster, "PUT", f"/{bucket}/k", query="tagging", body=thousand)
    assert r.status_code == 400 and b"<Code>InvalidTag</Code>" in r.content, r.text
    r = signed_request(cluster, "PUT", f"/{bucket}/k", query="tagging", body=b"<Tagging>" + b" " * 2 * MiB + b"</Tagging>")
    assert r.status_code == 400, r.status_code
    header = "&".join(f"k{i}=v{i}" for i in range(1000))
    r = signed_request(cluster, "PUT", f"/{bucket}/h", headers={"x-amz-tagging": header}, body=b"x")
    assert r.status_code == 400 and b"<Code>InvalidTag</Code>" in r.content, r.text
    for bad in ("a=%zz", "a=%C3", "a=%", "%ZZ=1"):
        r = signed_request(cluster, "PUT", f"/{bucket}/h", headers={"x-amz-tagging": bad}, body=b"x")
        assert r.status_code == 400 and b"<Code>InvalidArgument</Code>" in r.content, (bad, r.text)
    assert error(s3.head_object, Bucket=bucket, Key="h") == (404, "404")
    # the object's own tags are untouched by all of that
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []


def test_post_object_tagging_field(cluster, mc, s3, bucket):
    doc = tagging_xml(("via", "post"), ("n", "1")).decode()
    policy = PostPolicy(bucket, datetime.now(timezone.utc) + timedelta(minutes=5))
    policy.add_starts_with_condition("key", "up/")
    policy.add_equals_condition("tagging", doc)
    form = mc.presigned_post_policy(policy)
    r = httpx.post(f"{cluster.endpoint}/{bucket}", data={**form, "key": "up/a", "tagging": doc},
                   files={"file": ("a.txt", b"hello", "text/plain")}, timeout=60)
    assert r.status_code == 204, r.text
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="up/a")["TagSet"]) == {"via": "post", "n": "1"}


# --- the AWS CLI ---------------------------------------------------------------------------------

def test_aws_cli_object_and_bucket_tagging(cluster, s3, bucket):
    s3.put_object(Bucket=bucket, Key="cli", Body=b"x")
    cluster.aws("s3api", "put-object-tagging", "--bucket", bucket, "--key", "cli",
                "--tagging", "TagSet=[{Key=env,Value=prod},{Key=owner,Value=alice}]")
    out = json.loads(cluster.aws("s3api", "get-object-tagging", "--bucket", bucket, "--key", "cli").stdout)
    assert as_dict(out["TagSet"]) == {"env": "prod", "owner": "alice"}
    cluster.aws("s3api", "delete-object-tagging", "--bucket", bucket, "--key", "cli")
    out = json.loads(cluster.aws("s3api", "get-object-tagging", "--bucket", bucket, "--key", "cli").stdout)
    assert out["TagSet"] == []
    cluster.aws("s3api", "put-object", "--bucket", bucket, "--key", "cli2", "--tagging", "a=1&b=2")
    out = json.loads(cluster.aws("s3api", "get-object-tagging", "--bucket", bucket, "--key", "cli2").stdout)
    assert as_dict(out["TagSet"]) == {"a": "1", "b": "2"}
    cluster.aws("s3api", "put-bucket-tagging", "--bucket", bucket, "--tagging", "TagSet=[{Key=cost,Value=42}]")
    out = json.loads(cluster.aws("s3api", "get-bucket-tagging", "--bucket", bucket).stdout)
    assert as_dict(out["TagSet"]) == {"cost": "42"}
    cluster.aws("s3api", "delete-bucket-tagging", "--bucket", bucket)
    res = cluster.aws("s3api", "get-bucket-tagging", "--bucket", bucket, check=False)
    assert res.returncode != 0 and b"NoSuchTagSet" in res.stderr
    res = cluster.aws("s3api", "put-object-tagging", "--bucket", bucket, "--key", "nope",
                      "--tagging", "TagSet=[{Key=a,Value=b}]", check=False)
    assert res.returncode != 0 and b"NoSuchKey" in res.stderr


# --- minio-py ------------------------------------------------------------------------------------

def test_minio_object_and_bucket_tags(mc, bucket):
    tags = Tags.new_object_tags()
    tags["project"] = "headwater"
    tags["stage"] = "caf\u00e9 1"
    mc.put_object(bucket, "m", io.BytesIO(b"data"), 4, tags=tags)
    assert dict(mc.get_object_tags(bucket, "m")) == {"project": "headwater", "stage": "caf\u00e9 1"}
    new = Tags.new_object_tags()
    new["only"] = "one"
    mc.set_object_tags(bucket, "m", new)
    assert dict(mc.get_object_tags(bucket, "m")) == {"only": "one"}
    mc.delete_object_tags(bucket, "m")
    assert not mc.get_object_tags(bucket, "m")
    # copies: the source's tags by default (tags given without the REPLACE directive are not
    # used, as on S3), the given ones with it
    mc.set_object_tags(bucket, "m", tags)
    mc.copy_object(bucket, "m1", CopySource(bucket, "m"), tags=new, metadata_directive=REPLACE)
    assert dict(mc.get_object_tags(bucket, "m1")) == {"project": "headwater", "stage": "caf\u00e9 1"}
    mc.copy_object(bucket, "m2", CopySource(bucket, "m"), tags=new, tagging_directive=REPLACE)
    assert dict(mc.get_object_tags(bucket, "m2")) == {"only": "one"}
    with pytest.raises(S3Error) as info:
        mc.set_object_tags(bucket, "missing", new)
    assert info.value.code == "NoSuchKey"
    # buckets: none yet (minio-py reads NoSuchTagSet as None), set, read, delete
    assert mc.get_bucket_tags(bucket) is None
    bt = Tags.new_bucket_tags()
    for i in range(20):
        bt[f"k{i}"] = f"v{i}"
    mc.set_bucket_tags(bucket, bt)
    assert dict(mc.get_bucket_tags(bucket)) == {f"k{i}": f"v{i}" for i in range(20)}
    mc.delete_bucket_tags(bucket)
    assert mc.get_bucket_tags(bucket) is None
