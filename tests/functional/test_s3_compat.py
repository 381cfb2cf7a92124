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
import httpx
import pytest

from tests.cluster import client_error, sign_headers, signed_request, xml_error

CLUSTER_OPTIONS = dict(stripe_size="64KiB", inline_max_size="4KiB", min_part_size="100KiB",
                       extra_objstore={"retire_grace_seconds": 0.2}, k=2, m=1, storage_nodes=3, metadata_nodes=1)
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


# --- 2. SigV2 ------------------------------------------------------------------------------------

def v2_client(cluster, user: int = 0):
    """boto3 signing SigV2 (``signature_version="s3"``): headers, and presigned URLs."""
    import boto3
    from botocore.config import Config

    u = cluster.user(user)
    return boto3.client("s3", endpoint_url=cluster.endpoint, region_name=cluster.region,
                        aws_access_key_id=u.access_key, aws_secret_access_key=u.secret_key,
                        config=Config(signature_version="s3", s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1, "mode": "standard"}))


def test_sigv2_header_signed_requests(cluster, s3, bucket):
    v2 = v2_client(cluster)
    v2.put_object(Bucket=bucket, Key="dir/a b+c.txt", Body=b"hello v2", ContentType="text/plain",
                  Metadata={"who": "v2"})
    got = v2.get_object(Bucket=bucket, Key="dir/a b+c.txt", ResponseContentDisposition='attachment; filename="x y"')
    assert got["Body"].read() == b"hello v2" and got["Metadata"] == {"who": "v2"}
    assert got["ContentDisposition"] == 'attachment; filename="x y"'
    assert [o["Key"] for o in v2.list_objects_v2(Bucket=bucket, Prefix="dir/")["Contents"]] == ["dir/a b+c.txt"]
    assert bucket in {b["Name"] for b in v2.list_buckets()["Buckets"]}
    # a multipart upload: ?uploads, ?uploadId&partNumber, ?uploadId are signed sub-resources
    uid = v2.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = v2.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"part")["ETag"]
    v2.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"part"
    v2.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "mp"}, {"Key": "dir/a b+c.txt"}]})
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    # the wrong secret, and another user's bucket
    bad = boto3_with_secret(cluster, "wrong")
    expect_error(bad.list_buckets, 403, "SignatureDoesNotMatch")
    expect_error(v2_client(cluster, 1).list_objects_v2, 403, "AccessDenied", Bucket=bucket)


def boto3_with_secret(cluster, secret: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=cluster.endpoint, region_name=cluster.region,
                        aws_access_key_id=cluster.user(0).access_key, aws_secret_access_key=secret,
                        config=Config(signature_version="s3", s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1, "mode": "standard"}))


def test_sigv2_presigned_urls_with_httpx(cluster, s3, bucket):
    v2 = v2_client(cluster)
    s3.put_object(Bucket=bucket, Key="movie.mp4", Body=b"frames")
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "movie.mp4"}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in url and "Signature=" in url and "Expires=" in url and "X-Amz-" not in url
    r = httpx.get(url)
    assert (r.status_code, r.content) == (200, b"frames")
    assert httpx.head(url).status_code == 403  # signed for GET
    # PUT, with a content type and metadata signed into the URL (boto3 puts them in the query)
    url = v2.generate_presigned_url("put_object", ExpiresIn=300, Params={
        "Bucket": bucket, "Key": "up.txt", "ContentType": "text/plain", "Metadata": {"origin": "presigned"}})
    r = httpx.put(url, content=b"uploaded", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    head = s3.head_object(Bucket=bucket, Key="up.txt")
    assert (head["ContentType"], head["Metadata"]) == ("text/plain", {"origin": "presigned"})
    r = httpx.put(url, content=b"x", headers={"Content-Type": "text/html"})
    assert (r.status_code, xml_error(r)["Code"]) == (403, "SignatureDoesNotMatch")
    # a tampered URL
    r = httpx.get(url.replace("up.txt", "movie.mp4"))
    assert (r.status_code, xml_error(r)["Code"]) == (403, "SignatureDoesNotMatch")


def test_sigv2_presigned_url_expired(cluster, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    url = v2_client(cluster).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                                    ExpiresIn=-5)
    r = httpx.get(url)
    err = xml_error(r)
    assert (r.status_code, err["Code"], err["Message"]) == (403, "AccessDenied", "Request has expired")
    assert set(err) >= {"Expires", "ServerTime", "RequestId"}
    r = httpx.get(url.split("?")[0] + "?AWSAccessKeyId=" + cluster.user(0).access_key)
    assert (r.status_code, xml_error(r)["Code"]) == (403, "AccessDenied")


# --- 3. non-ASCII user metadata -------------------------------------------------------------------

def raw_metadata_client(cluster):
    """boto3 as it sends non-ASCII metadata once its client-side ASCII check is off (the check
    S3 does not make): the header carries the UTF-8 bytes, and SigV4 signs those bytes."""
    import botocore.handlers

    client = cluster.s3_client(0)
    client.meta.events.unregister("before-parameter-build.s3.PutObject", botocore.handlers.validate_ascii_metadata)
    client.meta.events.unregister("before-parameter-build.s3.CreateMultipartUpload",
                                  botocore.handlers.validate_ascii_metadata)
    return client


def decoded(value: str) -> str:
    from email.header import decode_header, make_header

    return str(make_header(decode_header(value)))


@pytest.mark.parametrize("value", ["Café", "日本語のタイトル", "à la carte — Å", "emoji 🎬 " * 11 + "fin"])
def test_non_ascii_metadata_is_accepted_and_returned_rfc2047_encoded(cluster, s3, bucket, value):
    raw = raw_metadata_client(cluster)
    raw.put_object(Bucket=bucket, Key="k", Body=b"x", Metadata={"title": value, "plain": "ascii only"})
    got = s3.head_object(Bucket=bucket, Key="k")["Metadata"]
    # S3: "encoded as per RFC 2047 to make them mail-safe before returning"; ASCII as it was
    assert got["plain"] == "ascii only"
    assert got["title"].startswith("=?UTF-8?B?") and got["title"].isascii()
    assert decoded(got["title"]) == value
    # multipart uploads keep it the same way, and a copy carries it on
    uid = raw.create_multipart_upload(Bucket=bucket, Key="mp", Metadata={"title": value})["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"p")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "mp"})
    for key in ("mp", "copy"):
        assert decoded(s3.get_object(Bucket=bucket, Key=key)["Metadata"]["title"]) == value


def test_non_ascii_metadata_with_sigv2(cluster, s3, bucket):
    import botocore.handlers

    v2 = v2_client(cluster)
    v2.meta.events.unregister("before-parameter-build.s3.PutObject", botocore.handlers.validate_ascii_metadata)
    v2.put_object(Bucket=bucket, Key="k", Body=b"x", Metadata={"title": "Grüße"})
    assert decoded(s3.head_object(Bucket=bucket, Key="k")["Metadata"]["title"]) == "Grüße"


# --- 4. stored headers byte for byte ------------------------------------------------------------

STORED = dict(ContentEncoding="deflate, gzip", CacheControl="max-age=60,  public", ContentLanguage="en-GB, fr",
              ContentDisposition='attachment; filename="a  b.txt"', ContentType="text/plain; charset=UTF-8")


def test_stored_headers_come_back_as_sent(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", **STORED)
    for resp in (s3.get_object(Bucket=bucket, Key="k"), s3.head_object(Bucket=bucket, Key="k")):
        assert {name: resp[name] for name in STORED} == STORED
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp", **STORED)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"p")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    head = s3.head_object(Bucket=bucket, Key="mp")
    assert {name: head[name] for name in STORED} == STORED


@pytest.mark.parametrize("sent,stored", [("aws-chunked", None), ("gzip, aws-chunked", "gzip"),
                                         ("aws-chunked,deflate, gzip", "deflate, gzip")])
def test_aws_chunked_is_removed_from_content_encoding(cluster, s3, bucket, sent, stored):
    """As boto3 and the AWS CLI upload over HTTPS: an aws-chunked body with a trailing checksum."""
    import base64
    import zlib

    payload = b"compressed bytes, notionally"
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    body = (f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n"
            + f"x-amz-checksum-crc32:{crc}\r\n\r\n".encode())
    headers = {"Content-Encoding": sent, "x-amz-decoded-content-length": str(len(payload)),
               "x-amz-trailer": "x-amz-checksum-crc32", "Content-Length": str(len(body))}
    url = f"{cluster.endpoint}/{bucket}/k"
    hdrs = sign_headers(cluster, "PUT", url, headers=headers, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    r = httpx.put(url, headers=hdrs, content=body)
    assert r.status_code == 200, r.text
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == payload
    assert got.get("ContentEncoding") == stored


# --- 5. listing parameters with control characters ----------------------------------------------

def plain_listing_client(cluster):
    """boto3 without its default encoding-type=url on listings: the XML carries the text as is."""
    import botocore.handlers

    client = cluster.s3_client(0)
    for op in ("ListObjects", "ListObjectsV2", "ListObjectVersions"):
        client.meta.events.unregister(f"before-parameter-build.s3.{op}",
                                      botocore.handlers.set_list_objects_encoding_type_url)
    return client


@pytest.mark.parametrize("ctl", ["\n", "\r", "\r\n", "\t"], ids=["lf", "cr", "crlf", "tab"])
def test_listing_parameters_with_control_characters_come_back_as_sent(cluster, s3, bucket, ctl):
    prefix = f"line{ctl}one/"
    for k in (f"{prefix}a", f"{prefix}sub/b", "z"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"")
    plain = plain_listing_client(cluster)
    v2 = plain.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/", StartAfter=f"{prefix}0")
    assert "EncodingType" not in v2
    assert (v2["Prefix"], v2["Delimiter"], v2["StartAfter"]) == (prefix, "/", f"{prefix}0")
    assert [o["Key"] for o in v2["Contents"]] == [f"{prefix}a"]
    assert v2["CommonPrefixes"] == [{"Prefix": f"{prefix}sub/"}]
    v1 = plain.list_objects(Bucket=bucket, Prefix=f"line{ctl}", Delimiter=ctl, Marker=f"line{ctl}")
    assert (v1["Prefix"], v1["Delimiter"], v1["Marker"]) == (f"line{ctl}", ctl, f"line{ctl}")
    versions = plain.list_object_versions(Bucket=bucket, Prefix=prefix, KeyMarker=f"{prefix}a")
    assert (versions["Prefix"], versions["KeyMarker"]) == (prefix, f"{prefix}a")
    assert [v["Key"] for v in versions["Versions"]] == [f"{prefix}sub/b"]
    # boto3's default (encoding-type=url, decoded by botocore) sees the same
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")["CommonPrefixes"] == \
        [{"Prefix": f"{prefix}sub/"}]


def test_listing_a_character_xml_cannot_carry_needs_encoding_type_url(cluster, s3, bucket):
    """U+0001 cannot appear in an XML 1.0 document, not even as &#x1; (S3 writes that reference,
    which boto3's parser and most others refuse): 400 InvalidArgument without encoding-type=url."""
    s3.put_object(Bucket=bucket, Key="a\x01b", Body=b"")
    expect_error(plain_listing_client(cluster).list_objects_v2, 400, "InvalidArgument", Bucket=bucket)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a\x01b"]


# --- 6. CreateBucket of one's own bucket, GetBucketLocation (us-east-1) --------------------------

def test_recreating_an_owned_bucket_in_us_east_1_is_200(s3, s3_bob, bucket):
    """(The AWS CLI's ``mb`` of it then succeeds too: test_s3_cli.py.)"""
    s3.put_object(Bucket=bucket, Key="k", Body=b"kept")
    resp = s3.create_bucket(Bucket=bucket)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200 and resp["Location"] == f"/{bucket}"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"kept"
    expect_error(s3_bob.create_bucket, 409, "BucketAlreadyExists", Bucket=bucket)
    # us-east-1 answers LocationConstraint null (an empty element)
    assert s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") is None
    assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"


# --- 7. ListBuckets with max-buckets, continuation-token, prefix ----------------------------------

def test_list_buckets_paginated(cluster, s3, s3_bob):
    mine = [f"page-{i:02d}" for i in range(7)]
    for name in mine:
        s3.create_bucket(Bucket=name)
    s3_bob.create_bucket(Bucket="page-bob")  # someone else's, between alice's in name order
    pages, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        resp = s3.list_buckets(MaxBuckets=3, Prefix="page-", **kw)
        assert resp["Prefix"] == "page-"
        pages.append([b["Name"] for b in resp["Buckets"]])
        token = resp.get("ContinuationToken")
        if not token:
            break
    assert pages == [mine[0:3], mine[3:6], mine[6:]]
    # boto3's paginator does the same
    got = [b["Name"] for page in s3.get_paginator("list_buckets").paginate(Prefix="page-",
                                                                          PaginationConfig={"PageSize": 2})
           for b in page["Buckets"]]
    assert got == mine
    # a prefix alone: one page of up to 10,000
    resp = s3.list_buckets(Prefix="page-0")
    assert [b["Name"] for b in resp["Buckets"]] == mine and "ContinuationToken" not in resp
    assert [b["Name"] for b in s3.list_buckets(Prefix="nothing-here")["Buckets"]] == []
    assert [b["Name"] for b in s3.list_buckets(BucketRegion="eu-west-1", Prefix="page-")["Buckets"]] == []
    # unpaginated: every bucket, no token
    resp = s3.list_buckets()
    assert set(mine) <= {b["Name"] for b in resp["Buckets"]} and "ContinuationToken" not in resp
    expect_error(s3.list_buckets, 400, "InvalidArgument", MaxBuckets=10_001)
    for bad in ("0", "ten"):  # boto3 refuses these itself
        r = signed_request(cluster, "GET", "/", query=f"max-buckets={bad}")
        assert (r.status_code, xml_error(r)["Code"], xml_error(r)["ArgumentName"]) == (400, "InvalidArgument",
                                                                                      "max-buckets")
    expect_error(s3.list_buckets, 400, "InvalidArgument", ContinuationToken="%%%not-a-token")


# --- 8. presigned URLs outside their validity window ---------------------------------------------

def presign_at(cluster, s3, bucket: str, key: str, *, expires: int, when=None) -> str:
    """A SigV4 presigned GET, as boto3 makes it, signed as if the clock said ``when``."""
    from unittest import mock

    if when is None:
        return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
    with mock.patch("botocore.auth.get_current_datetime", lambda *a, **k: when):
        return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


def test_presigned_url_validity_window(cluster, s3, bucket):
    import datetime as dt

    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    ok = presign_at(cluster, s3, bucket, "k", expires=604800)
    assert httpx.get(ok).status_code == 200
    cases = [
        (presign_at(cluster, s3, bucket, "k", expires=604801), 400, "AuthorizationQueryParametersError",
         "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires must be "
         "less than 604800 seconds"),
        (presign_at(cluster, s3, bucket, "k", expires=-1), 400, "AuthorizationQueryParametersError",
         "X-Amz-Expires must be non-negative"),
        (presign_at(cluster, s3, bucket, "k", expires=60, when=now - dt.timedelta(seconds=61)),
         403, "AccessDenied", "Request has expired"),
        (presign_at(cluster, s3, bucket, "k", expires=60, when=now + dt.timedelta(hours=1)),
         403, "AccessDenied", "Request is not yet valid"),
    ]
    for url, status, code, message in cases:
        r = httpx.get(url)
        err = xml_error(r)
        assert (r.status_code, err["Code"], err["Message"]) == (status, code, message), url
    r = httpx.get(cases[2][0])
    assert {"X-Amz-Expires", "Expires", "ServerTime"} <= set(xml_error(r))


def test_sigv2_virtual_host_style(cluster, s3, bucket):
    """The bucket named by the Host is signed in front of the path (``/bucket/key``)."""
    from botocore.auth import HmacV1Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    s3.put_object(Bucket=bucket, Key="vh/key", Body=b"virtual")
    u = cluster.user(0)
    port = cluster.endpoint.rsplit(":", 1)[1]
    for path, auth_path in (("/vh/key", f"/{bucket}/vh/key"), ("/vh/key", "/vh/key")):
        req = AWSRequest(method="GET", url=cluster.endpoint + path)
        req.auth_path = auth_path
        HmacV1Auth(Credentials(u.access_key, u.secret_key)).add_auth(req)
        headers = dict(req.headers) | {"Host": f"{bucket}.localhost:{port}"}
        r = httpx.get(cluster.endpoint + path, headers=headers)
        if auth_path.startswith(f"/{bucket}/"):
            assert (r.status_code, r.content) == (200, b"virtual")
        else:
            assert (r.status_code, xml_error(r)["Code"]) == (403, "SignatureDoesNotMatch")


# --- conditional deletes --------------------------------------------------------------------------

def test_conditional_deletes(s3, bucket):
    """DeleteObject with If-Match, and DeleteObjects' <ETag> per object (boto3's ``IfMatch`` and
    ``ETag``): the object goes only while its ETag is the one named; otherwise 412
    PreconditionFailed (an Error entry in bulk) and it stays; NoSuchKey when there is none."""
    old = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["ETag"]
    new = s3.put_object(Bucket=bucket, Key="k", Body=b"two")["ETag"]
    expect_error(s3.delete_object, 412, "PreconditionFailed", Bucket=bucket, Key="k", IfMatch=old)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"
    expect_error(s3.delete_object, 404, "NoSuchKey", Bucket=bucket, Key="absent", IfMatch=old)
    resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", "ETag": old}]})
    assert [(e["Key"], e["Code"]) for e in resp["Errors"]] == [("k", "PreconditionFailed")]
    assert s3.head_object(Bucket=bucket, Key="k")["ETag"] == new
    resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", "ETag": new}]})
    assert [d["Key"] for d in resp["Deleted"]] == ["k"] and not resp.get("Errors")
    s3.put_object(Bucket=bucket, Key="k", Body=b"three")
    s3.delete_object(Bucket=bucket, Key="k", IfMatch=s3.head_object(Bucket=bucket, Key="k")["ETag"])
    expect_error(s3.head_object, 404, "404", Bucket=bucket, Key="k")
