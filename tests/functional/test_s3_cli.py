"""Unmodified command-line clients against a real cluster: the AWS CLI, s5cmd and curl.

This module runs the default scheme (EC 4+2, 1 MiB stripes) and S3's real 5 MiB minimum part
size, so the AWS CLI's 8 MiB multipart chunks and boto3's 5 MiB parts are the real thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import xml.etree.ElementTree as ET

import pytest

from tests.cluster import VENV_BIN, client_error, sha256_file, signed_request, write_random

MiB = 1024 * 1024

CLUSTER_OPTIONS = dict(stripe_size="1MiB", inline_max_size="64KiB", min_part_size="5MiB", metadata_nodes=1)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-data") / "40mib.bin"
    digest = write_random(path, 40 * MiB + 12345, seed=40)
    return path, digest


# --- AWS CLI ------------------------------------------------------------------------------------

def test_aws_mb_ls_rb(cluster):
    cluster.aws("s3", "mb", "s3://cli-mb-bucket")
    out = cluster.aws("s3", "ls").stdout.decode()
    assert "cli-mb-bucket" in out
    other = cluster.aws("s3", "ls", user=1).stdout.decode()
    assert "cli-mb-bucket" not in other
    # us-east-1: S3 answers 200 to re-creating a bucket one owns, so mb succeeds again
    cluster.aws("s3", "mb", "s3://cli-mb-bucket")
    res = cluster.aws("s3", "mb", "s3://cli-mb-bucket", user=1, check=False)
    assert res.returncode != 0
    assert b"BucketAlreadyExists" in res.stderr
    cluster.aws("s3", "rb", "s3://cli-mb-bucket")
    assert "cli-mb-bucket" not in cluster.aws("s3", "ls").stdout.decode()


def test_aws_cp_40mib_multipart_round_trip(cluster, big_file, tmp_path):
    path, digest = big_file
    cluster.aws("s3", "mb", "s3://cli-cp")
    cluster.aws("s3", "cp", str(path), "s3://cli-cp/dir/big.bin")
    head = json.loads(cluster.aws("s3api", "head-object", "--bucket", "cli-cp", "--key", "dir/big.bin").stdout)
    assert head["ContentLength"] == path.stat().st_size
    assert head["ETag"].endswith('-6"'), head["ETag"]  # 8 MiB chunks: 5 full + 1 partial
    out = tmp_path / "down.bin"
    cluster.aws("s3", "cp", "s3://cli-cp/dir/big.bin", str(out))
    assert sha256_file(out) == digest
    # to stdout, streamed
    res = cluster.aws("s3", "cp", "s3://cli-cp/dir/big.bin", "-")
    assert hashlib.sha256(res.stdout).hexdigest() == digest
    listing = cluster.aws("s3", "ls", "s3://cli-cp/dir/").stdout.decode()
    assert "big.bin" in listing and str(path.stat().st_size) in listing


def test_aws_cp_from_stdin_streamed(cluster, big_file):
    path, digest = big_file
    cluster.aws("s3", "mb", "s3://cli-stdin")
    with open(path, "rb") as f:
        res = subprocess.run([str(VENV_BIN / "aws"), "--endpoint-url", cluster.endpoint, "s3", "cp", "-",
                              "s3://cli-stdin/streamed.bin"], stdin=f, env=cluster.client_env(),
                             capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    res = cluster.aws("s3", "cp", "s3://cli-stdin/streamed.bin", "-")
    assert hashlib.sha256(res.stdout).hexdigest() == digest


def test_aws_sync_and_recursive_rm(cluster, tmp_path):
    src = tmp_path / "tree"
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3 * MiB + 1), "sub/deeper/c": b"",
             "with space/d.txt": b"delta", "unicode-\u00e9/e": b"echo" * 1000}
    for rel, body in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    cluster.aws("s3", "mb", "s3://cli-sync")
    out = cluster.aws("s3", "sync", str(src), "s3://cli-sync/tree/").stdout.decode()
    assert out.count("upload:") == len(files)
    again = cluster.aws("s3", "sync", str(src), "s3://cli-sync/tree/").stdout.decode()
    assert "upload:" not in again, again
    listing = cluster.aws("s3", "ls", "--recursive", "s3://cli-sync/").stdout.decode()
    for rel in files:
        assert f"tree/{rel}" in listing
    dst = tmp_path / "back"
    cluster.aws("s3", "sync", "s3://cli-sync/tree/", str(dst))
    for rel, body in files.items():
        assert (dst / rel).read_bytes() == body, rel
    # a changed file is uploaded again, a deleted one removed with --delete
    (src / "a.txt").write_bytes(b"alpha, longer now")
    (src / "sub/deeper/c").unlink()
    out = cluster.aws("s3", "sync", "--delete", str(src), "s3://cli-sync/tree/").stdout.decode()
    assert "upload:" in out and "delete:" in out
    keys = cluster.aws("s3", "ls", "--recursive", "s3://cli-sync/").stdout.decode()
    assert "tree/sub/deeper/c" not in keys
    cluster.aws("s3", "rm", "--recursive", "s3://cli-sync/tree/")
    assert cluster.aws("s3", "ls", "--recursive", "s3://cli-sync/", check=False).stdout.strip() == b""
    cluster.aws("s3", "rb", "s3://cli-sync")




def test_aws_cli_reuses_a_connection_after_an_empty_file(cluster, tmp_path):
    # The AWS CLI's botocore sends "Expect: 100-continue" with every file, empty ones too. An
    # empty PUT answered with its final status and no 100 first left that status on the
    # connection object, and the next Expect request on the same kept-alive connection was parsed
    # with it: the real status line read as a header, the framing lost, a hang to the read timeout
    # (a sync in CI: an empty file, then a 3 MiB one). One request at a time makes it certain.
    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    max_concurrent_requests = 1\n")
    src = tmp_path / "tree"
    src.mkdir()
    files = {"0-empty": b"", "1-data": os.urandom(200_000), "2-empty": b"", "3-data": b"three"}
    for name, body in files.items():
        (src / name).write_bytes(body)
    cluster.aws("s3", "mb", "s3://expect-continue")
    out = cluster.aws("s3", "sync", str(src), "s3://expect-continue/", "--cli-read-timeout", "15",
                      env={"AWS_CONFIG_FILE": str(config)}).stdout.decode()
    assert out.count("upload:") == len(files), out
    back = tmp_path / "back"
    cluster.aws("s3", "sync", "s3://expect-continue/", str(back))
    for name, body in files.items():
        assert (back / name).read_bytes() == body, name

def test_aws_s3api_head_and_errors(cluster):
    cluster.aws("s3api", "create-bucket", "--bucket", "cli-api")
    cluster.aws("s3api", "put-object", "--bucket", "cli-api", "--key", "k", "--content-type", "text/csv",
                "--metadata", "origin=cli", input=None)
    head = json.loads(cluster.aws("s3api", "head-object", "--bucket", "cli-api", "--key", "k").stdout)
    assert head["ContentLength"] == 0
    assert head["ContentType"] == "text/csv"
    assert head["Metadata"] == {"origin": "cli"}
    assert head["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    res = cluster.aws("s3api", "head-object", "--bucket", "cli-api", "--key", "missing", check=False)
    assert res.returncode != 0 and b"404" in res.stderr
    res = cluster.aws("s3api", "get-object", "--bucket", "cli-api", "--key", "missing", "/dev/null", check=False)
    assert res.returncode != 0 and b"NoSuchKey" in res.stderr


# --- boto3 with real 5 MiB parts ----------------------------------------------------------------

def test_boto3_real_5mib_parts(cluster, s3):
    s3.create_bucket(Bucket="real-parts")
    rng = random.Random(5)
    parts = [rng.randbytes(5 * MiB), rng.randbytes(5 * MiB + 3), rng.randbytes(1234)]
    uid = s3.create_multipart_upload(Bucket="real-parts", Key="obj")["UploadId"]
    etags = [s3.upload_part(Bucket="real-parts", Key="obj", UploadId=uid, PartNumber=i + 1, Body=p)["ETag"]
             for i, p in enumerate(parts)]
    done = s3.complete_multipart_upload(Bucket="real-parts", Key="obj", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    assert done["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-3"'
    whole = b"".join(parts)
    assert s3.get_object(Bucket="real-parts", Key="obj")["Body"].read() == whole
    lo = 5 * MiB - 10
    assert s3.get_object(Bucket="real-parts", Key="obj", Range=f"bytes={lo}-{lo + 19}")["Body"].read() == whole[lo:lo + 20]
    # a 1 MiB first part is too small under S3's real limit
    uid = s3.create_multipart_upload(Bucket="real-parts", Key="small")["UploadId"]
    e1 = s3.upload_part(Bucket="real-parts", Key="small", UploadId=uid, PartNumber=1, Body=parts[0][:MiB])["ETag"]
    e2 = s3.upload_part(Bucket="real-parts", Key="small", UploadId=uid, PartNumber=2, Body=b"x")["ETag"]
    with pytest.raises(Exception) as ei:
        s3.complete_multipart_upload(Bucket="real-parts", Key="small", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert client_error(ei.value) == (400, "EntityTooSmall")


# --- s5cmd --------------------------------------------------------------------------------------

def test_s5cmd_cp_ls_cat_rm(cluster, big_file, tmp_path):
    path, digest = big_file
    cluster.s5cmd("mb", "s3://s5-bucket")
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from s5cmd\n")
    cluster.s5cmd("cp", str(small), "s3://s5-bucket/pre/small.txt")
    cluster.s5cmd("cp", str(path), "s3://s5-bucket/pre/big.bin")
    cluster.s5cmd("cp", str(small), "s3://s5-bucket/other/x.txt")
    out = cluster.s5cmd("ls", "s3://s5-bucket/pre/*").stdout.decode()
    assert "pre/small.txt" in out or "small.txt" in out
    assert "big.bin" in out
    assert "x.txt" not in out
    assert cluster.s5cmd("cat", "s3://s5-bucket/pre/small.txt").stdout == b"hello from s5cmd\n"
    res = cluster.s5cmd("cat", "s3://s5-bucket/pre/big.bin")
    assert hashlib.sha256(res.stdout).hexdigest() == digest
    down = tmp_path / "down"
    cluster.s5cmd("cp", "s3://s5-bucket/pre/*", str(down) + "/")
    assert sha256_file(down / "big.bin") == digest
    cluster.s5cmd("rm", "s3://s5-bucket/pre/*")
    out = cluster.s5cmd("ls", "s3://s5-bucket/*").stdout.decode()
    assert "big.bin" not in out and "x.txt" in out
    buckets = cluster.s5cmd("ls").stdout.decode()
    assert "s5-bucket" in buckets


def test_s5cmd_missing_key_fails_cleanly(cluster):
    cluster.s5cmd("mb", "s3://s5-missing")
    res = cluster.s5cmd("cat", "s3://s5-missing/nope", check=False)
    assert res.returncode != 0
    assert b"NoSuchKey" in res.stderr or b"404" in res.stderr or b"not found" in res.stderr.lower()


# --- curl ---------------------------------------------------------------------------------------

def curl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/curl", "-sS", *args], capture_output=True, timeout=60, input=input)


def _split_headers(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def test_curl_unsigned_request_is_access_denied(cluster, s3):
    s3.create_bucket(Bucket="curl-anon")
    s3.put_object(Bucket="curl-anon", Key="private", Body=b"not for you")
    for url in (f"{cluster.endpoint}/curl-anon/private", f"{cluster.endpoint}/curl-anon", f"{cluster.endpoint}/"):
        res = curl("-i", url)
        status, headers, body = _split_headers(res.stdout)
        assert status == 403, (url, res.stdout[:500])
        assert headers.get("x-amz-request-id")
        assert "xml" in headers.get("content-type", "")
        root = ET.fromstring(body)
        assert root.tag == "Error"
        fields = {c.tag: c.text or "" for c in root}
        assert fields["Code"] == "AccessDenied"
        assert fields["Message"]
        assert "Resource" in fields
        assert fields["RequestId"] == headers["x-amz-request-id"]
    res = curl("-i", "-X", "PUT", "--data-binary", "sneaky", f"{cluster.endpoint}/curl-anon/new")
    assert _split_headers(res.stdout)[0] == 403
    assert signed_request(cluster, "HEAD", "/curl-anon/new").status_code == 404


def test_curl_aws_sigv4(cluster, s3):
    """curl's own SigV4 signer (--aws-sigv4) is an unmodified client too."""
    s3.create_bucket(Bucket="curl-signed")
    u = cluster.users[0]
    # S3 requires x-amz-content-sha256 with header SigV4 (400 InvalidRequest without it); curl 7.88
    # does not add it by itself, so give it as S3's documentation tells curl users to
    auth = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{u.access_key}:{u.secret_key}",
            "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]
    res = curl("-f", *auth, "-X", "PUT", "-H", "Content-Type: text/plain", "--data-binary", "@-",
               f"{cluster.endpoint}/curl-signed/hello.txt", input=b"signed by curl")
    assert res.returncode == 0, res.stderr + res.stdout
    res = curl("-f", *auth, f"{cluster.endpoint}/curl-signed/hello.txt")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"signed by curl"
    res = curl("-f", *auth, f"{cluster.endpoint}/curl-signed?list-type=2")
    assert b"<Key>hello.txt</Key>" in res.stdout


def test_curl_without_content_sha256_is_invalid_request(cluster):
    u = cluster.users[0]
    res = curl("-i", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{u.access_key}:{u.secret_key}",
               f"{cluster.endpoint}/")
    status, _, body = _split_headers(res.stdout)
    assert status == 400
    assert ET.fromstring(body).findtext("Code") == "InvalidRequest"


def test_curl_error_for_bad_signature(cluster):
    u = cluster.users[0]
    res = curl("-i", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{u.access_key}:wrong-secret-000000",
               "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", f"{cluster.endpoint}/")
    status, headers, body = _split_headers(res.stdout)
    assert status == 403
    assert ET.fromstring(body).findtext("Code") == "SignatureDoesNotMatch"
