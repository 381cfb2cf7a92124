"""The S3 gateway over TLS: a real cluster started by ``headwater up`` with ``tls_cert`` and
``tls_key`` (a throwaway CA and a certificate for 127.0.0.1, made with the openssl CLI), driven by
the AWS CLI (``--ca-bundle``), boto3 (``verify=ca.pem``), httpx over HTTP/2 and curl, which must
negotiate h2 by ALPN.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import subprocess
import time

import httpx
import pytest

from tests.cluster import VENV_BIN, client_error, signed_request, xml_error

CLUSTER_OPTIONS = dict(tls=True, mode="up", stripe_size="64KiB", inline_max_size="4KiB",
                       min_part_size="100KiB", k=2, m=1, storage_nodes=3, metadata_nodes=1)
KiB = 1024


def blob(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def test_endpoint_is_https_and_up_says_so(cluster):
    assert cluster.endpoint.startswith("https://127.0.0.1:")
    deadline = time.monotonic() + 30
    while "S3 endpoint" not in (summary := (cluster.logs / "up.log").read_text()):
        assert time.monotonic() < deadline, summary  # `up` prints once it has seen every daemon ready
        time.sleep(0.1)
    assert f"S3 endpoint   https://127.0.0.1:{cluster.gateway.port}" in summary
    assert "http://127.0.0.1" not in summary.split("S3 endpoint", 1)[1].splitlines()[0]


def test_cleartext_and_untrusted_clients_are_refused(cluster):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{cluster.gateway.port}/", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(cluster.endpoint + "/", timeout=5)  # the system store does not know the test CA
    r = subprocess.run(["curl", "-sS", cluster.endpoint + "/"], capture_output=True, timeout=30)
    assert r.returncode == 60  # peer certificate cannot be authenticated


def test_boto3_over_tls(cluster, s3, bucket):
    small, big = blob(3 * KiB, 1), blob(300 * KiB, 2)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    assert s3.get_object(Bucket=bucket, Key="small", Range="bytes=10-19")["Body"].read() == small[10:20]
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    parts = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=n,
                                                      Body=blob(120 * KiB, n))["ETag"]} for n in (1, 2)]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == blob(120 * KiB, 1) + blob(120 * KiB, 2)
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["big", "mp", "small"]
    try:
        s3.get_object(Bucket=bucket, Key="absent")
    except Exception as e:  # noqa: BLE001
        assert client_error(e) == (404, "NoSuchKey")
    else:
        raise AssertionError("GET of a missing key succeeded")


def test_aws_cli_over_tls(cluster, bucket, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(blob(200 * KiB, 3))
    cluster.aws("s3", "cp", str(src), f"s3://{bucket}/cli/up.bin")
    listing = cluster.aws("s3", "ls", f"s3://{bucket}/cli/").stdout.decode()
    assert "up.bin" in listing
    res = cluster.aws("s3", "cp", f"s3://{bucket}/cli/up.bin", "-")
    assert res.stdout == src.read_bytes()
    head = json.loads(cluster.aws("s3api", "head-object", "--bucket", bucket, "--key", "cli/up.bin").stdout)
    assert head["ContentLength"] == 200 * KiB
    # the same CLI without the CA refuses the certificate
    env = cluster.client_env()
    env.pop("AWS_CA_BUNDLE")
    r = subprocess.run([str(VENV_BIN / "aws"), "--endpoint-url", cluster.endpoint, "s3", "ls"], env=env,
                       capture_output=True, timeout=120)
    assert r.returncode != 0 and b"CERTIFICATE_VERIFY_FAILED" in r.stderr


def test_curl_negotiates_h2_by_alpn(cluster, s3, bucket):
    body = blob(100 * KiB, 4)
    s3.put_object(Bucket=bucket, Key="h2", Body=body)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "h2"}, ExpiresIn=300)
    ca = str(cluster.tls.ca)
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        r = subprocess.run(["curl", "-sS", "--cacert", ca, flag, "-o", "-", "-w", "\n%{http_version} %{http_code}",
                            url], capture_output=True, timeout=30, check=True)
        got, _, trailer = r.stdout.rpartition(b"\n")
        assert trailer.decode() == f"{version} 200" and got == body
    # an error over h2 is an S3 error document too
    r = subprocess.run(["curl", "-sS", "--cacert", ca, "--http2", "-w", "\n%{http_version} %{http_code}",
                        url.replace("/h2?", "/nope?")], capture_output=True, timeout=30, check=True)
    text, _, trailer = r.stdout.decode().rpartition("\n")
    assert trailer == "2 403" or trailer == "2 404"  # the signature covers the path: 403
    assert re.search(r"<Code>(SignatureDoesNotMatch|NoSuchKey)</Code>", text)


def test_httpx_http2_over_tls(cluster, s3, bucket):
    ctx = ssl.create_default_context(cafile=str(cluster.tls.ca))
    body = blob(70 * KiB, 5)
    put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "x"}, ExpiresIn=300)
    get = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "x"}, ExpiresIn=300)
    with httpx.Client(http2=True, verify=ctx) as c:
        r = c.put(put, content=body)
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        r = c.get(get)
        assert r.http_version == "HTTP/2" and r.content == body
    r = signed_request(cluster, "GET", f"/{bucket}/missing")
    assert (r.status_code, xml_error(r)["Code"]) == (404, "NoSuchKey")
