"""rclone against a real cluster, as a user runs it: remote ``hw:`` of type s3, provider Other,
configured only through ``RCLONE_CONFIG_HW_*`` environment variables (``Cluster.rclone``).

rclone runs with one try and no low-level retries, and a command passes only with exit code 0
and no ERROR line, so an answer rclone would have retried past is a failure here. What it
reports is compared with the bytes, ETags and metadata boto3 reads back from the store.

S3's real 5 MiB minimum part size: ``--s3-upload-cutoff 5M --s3-chunk-size 5M`` makes rclone
upload the 12 MiB file in three parts, and ``--s3-copy-cutoff 5M`` makes its server-side copy
of it CreateMultipartUpload + UploadPartCopy (CopyObject below the cutoff).
"""

from __future__ import annotations

import base64
import hashlib
import random
import urllib.request
from pathlib import Path

import pytest

from tests.cluster import Cluster, client_error

MiB = 1024 * 1024

CLUSTER_OPTIONS = dict(stripe_size="1MiB", inline_max_size="64KiB", min_part_size="5MiB", k=2, m=1,
                       storage_nodes=3, metadata_nodes=1)

MULTIPART = ("--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M")
BIG = "sub/big.bin"
BIG_SIZE = 12 * MiB + 345  # three 5 MiB chunks: 5 + 5 + 2 MiB and a bit


def make_tree(root: Path) -> dict[str, bytes]:
    """A local tree: small files, an empty one, names with spaces, unicode, '+', '%', '#' and
    '=', and one file above the upload cutoff."""
    rng = random.Random(7)
    files = {
        "a.txt": b"alpha\n",
        "empty": b"",
        "sub/d.txt": b"delta\n",
        BIG: rng.randbytes(BIG_SIZE),
        "with space/f+plus \u00e9.txt": b"x" * 1000,
        "\u00fcn\u00efc\u00f8d\u00e9/\u540d\u524d 1+1=2.txt": "unicode \u540d\u524d\n".encode(),
        "100% sure#.bin": rng.randbytes(70_000),  # above the inline size: striped
    }
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return files


def ls_sizes(out: bytes) -> dict[str, int]:
    """``rclone ls`` output: ``<size> <path>`` a line, the size right-aligned."""
    sizes = {}
    for line in out.decode().splitlines():
        size, _, path = line.strip().partition(" ")
        sizes[path] = int(size)
    return sizes


def keys(s3, bucket: str, prefix: str = "") -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def client_error_of(call) -> tuple[int, str]:
    """(status, code) of the boto3 call's ClientError."""
    with pytest.raises(Exception) as info:
        call()
    return client_error(info.value)


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


@pytest.fixture
def tree(tmp_path) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path / "src"
    return src, make_tree(src)


def test_rclone_copy_list_check_sync(cluster, s3, tree):
    src, files = tree
    cluster.rclone("mkdir", "hw:rc-copy")
    s3.head_bucket(Bucket="rc-copy")
    res = cluster.rclone("copy", str(src), "hw:rc-copy/t", *MULTIPART, "-v")
    assert res.stderr.count(b"Copied (new)") == len(files), res.stderr.decode()
    for rel, body in files.items():
        got = s3.get_object(Bucket="rc-copy", Key=f"t/{rel}")
        assert got["Body"].read() == body, rel
        assert "mtime" in got["Metadata"], rel  # rclone's X-Amz-Meta-Mtime
    head = s3.head_object(Bucket="rc-copy", Key=f"t/{BIG}")
    assert head["ETag"].endswith('-3"'), head["ETag"]  # three parts of a real multipart upload
    # the ETag of a multipart object is no MD5 of its bytes: rclone keeps that in X-Amz-Meta-Md5chksum
    assert head["Metadata"]["md5chksum"] == md5_b64(files[BIG])

    assert ls_sizes(cluster.rclone("ls", "hw:rc-copy").stdout) == {f"t/{k}": len(v) for k, v in files.items()}
    # lsd: the common prefixes, "<size> <date> <time> <count> <name>" a line
    lsd = cluster.rclone("lsd", "hw:rc-copy/t").stdout.decode().splitlines()
    assert {line.split(maxsplit=4)[4] for line in lsd} == {"sub", "with space", "\u00fcn\u00efc\u00f8d\u00e9"}
    want = set(files) | {"sub/", "with space/", "\u00fcn\u00efc\u00f8d\u00e9/"}
    assert set(cluster.rclone("lsf", "-R", "hw:rc-copy/t").stdout.decode().splitlines()) == want
    # the same through ListObjects (v1) in pages of two, names not URL-encoded
    assert set(cluster.rclone("lsf", "-R", "--s3-list-version", "1", "--s3-list-chunk", "2",
                              "--s3-list-url-encode=false", "hw:rc-copy/t").stdout.decode().splitlines()) == want

    # check compares sizes and MD5s: the ETag of single-part objects, md5chksum of the multipart one
    res = cluster.rclone("check", str(src), "hw:rc-copy/t")
    assert b"0 differences found" in res.stderr and f"{len(files)} matching files".encode() in res.stderr
    assert b"could not be checked" not in res.stderr, res.stderr.decode()
    md5s = {line[34:]: line[:32] for line in cluster.rclone("md5sum", "hw:rc-copy/t").stdout.decode().splitlines()}
    assert md5s == {rel: hashlib.md5(body).hexdigest() for rel, body in files.items()}
    cluster.rclone("check", "--download", str(src), "hw:rc-copy/t")

    # a change behind rclone's back, same size: check finds it by its MD5
    s3.put_object(Bucket="rc-copy", Key="t/a.txt", Body=b"ALPHA\n")
    res = cluster.rclone("check", str(src), "hw:rc-copy/t", check=False)
    assert res.returncode != 0 and b"1 differences found" in res.stderr, res.stderr.decode()

    # sync: the changed file again, a deleted one removed, then nothing left to do
    (src / "sub/d.txt").unlink()
    res = cluster.rclone("sync", str(src), "hw:rc-copy/t", *MULTIPART, "-v")
    assert res.stderr.count(b"Copied") == 1 and b"a.txt: Copied (replaced existing)" in res.stderr, res.stderr.decode()
    assert b"d.txt: Deleted" in res.stderr
    del files["sub/d.txt"]
    assert keys(s3, "rc-copy") == {f"t/{k}": len(v) for k, v in files.items()}
    res = cluster.rclone("sync", str(src), "hw:rc-copy/t", *MULTIPART, "-v")
    assert b"Copied" not in res.stderr and b"Deleted" not in res.stderr, res.stderr.decode()


def test_rclone_server_side_copy_and_move(cluster, s3, tree):
    src, files = tree
    cluster.rclone("copy", str(src), "hw:rc-server-copy/t", *MULTIPART)
    # below the copy cutoff: CopyObject, metadata (rclone's mtime) copied along
    res = cluster.rclone("copyto", "hw:rc-server-copy/t/a.txt", "hw:rc-server-copy/c/a.txt", "-v")
    assert b"Copied (server-side copy)" in res.stderr, res.stderr.decode()
    copied = s3.get_object(Bucket="rc-server-copy", Key="c/a.txt")
    assert copied["Body"].read() == files["a.txt"]
    assert copied["Metadata"]["mtime"] == s3.head_object(Bucket="rc-server-copy", Key="t/a.txt")["Metadata"]["mtime"]
    # above it: CreateMultipartUpload, UploadPartCopy of 5 MiB ranges, Complete
    res = cluster.rclone("copyto", f"hw:rc-server-copy/t/{BIG}", "hw:rc-server-copy/c/big.bin",
                         "--s3-copy-cutoff", "5M", "-v")
    assert b"Copied (server-side copy)" in res.stderr, res.stderr.decode()
    big = s3.get_object(Bucket="rc-server-copy", Key="c/big.bin")
    assert big["ETag"].endswith('-3"'), big["ETag"]
    assert big["Body"].read() == files[BIG]
    assert big["Metadata"]["md5chksum"] == md5_b64(files[BIG])
    assert cluster.rclone("md5sum", "hw:rc-server-copy/c/big.bin").stdout.decode().split()[0] == \
        hashlib.md5(files[BIG]).hexdigest()
    # a copy to another bucket of the same owner is server-side too
    res = cluster.rclone("copyto", "hw:rc-server-copy/t/empty", "hw:rc-server-copy-2/empty", "-v")
    assert b"server-side copy" in res.stderr
    assert s3.get_object(Bucket="rc-server-copy-2", Key="empty")["Body"].read() == b""

    # moveto: copy, then delete the source
    name = "with space/f+plus \u00e9.txt"
    cluster.rclone("moveto", f"hw:rc-server-copy/t/{name}", "hw:rc-server-copy/moved/\u00e9+.txt")
    assert client_error_of(lambda: s3.head_object(Bucket="rc-server-copy", Key=f"t/{name}")) == (404, "404")
    assert s3.get_object(Bucket="rc-server-copy", Key="moved/\u00e9+.txt")["Body"].read() == files[name]
    cluster.rclone("moveto", f"hw:rc-server-copy/c/big.bin", "hw:rc-server-copy/moved/big.bin", "--s3-copy-cutoff", "5M")
    assert set(keys(s3, "rc-server-copy", "moved/")) == {"moved/\u00e9+.txt", "moved/big.bin"}
    assert "c/big.bin" not in keys(s3, "rc-server-copy")


def test_rclone_cat_ranges_rcat_touch_metadata(cluster, s3, tree, tmp_path):
    src, files = tree
    cluster.rclone("copy", str(src), "hw:rc-cat/t", *MULTIPART)
    big = files[BIG]
    for offset, count in ((0, 10), (5 * MiB - 3, 7), (BIG_SIZE - 5, 100), (123_456, MiB + 17)):
        out = cluster.rclone("cat", f"hw:rc-cat/t/{BIG}", "--offset", str(offset), "--count", str(count)).stdout
        assert out == big[offset:offset + count], (offset, count)
    assert cluster.rclone("cat", f"hw:rc-cat/t/{BIG}", "--tail", "99").stdout == big[-99:]
    assert cluster.rclone("cat", "hw:rc-cat/t/empty").stdout == b""
    # a multi-thread download: concurrent range GETs of 1 MiB written in place
    down = tmp_path / "down"
    res = cluster.rclone("copy", "hw:rc-cat/t/sub", str(down), "--multi-thread-cutoff", "1M",
                         "--multi-thread-streams", "4", "--multi-thread-chunk-size", "1M", "-vv")
    assert b"Starting multi-thread copy" in res.stderr
    assert (down / "big.bin").read_bytes() == big

    # rcat: a stream of unknown length is a multipart upload of 5 MiB chunks
    stream = random.Random(3).randbytes(11 * MiB + 1)
    cluster.rclone("rcat", "hw:rc-cat/stream.bin", "--s3-chunk-size", "5M", input=stream)
    got = s3.get_object(Bucket="rc-cat", Key="stream.bin")
    assert got["Body"].read() == stream and got["ETag"].endswith('-3"'), got["ETag"]

    # touch: the modification time is metadata (X-Amz-Meta-Mtime), rewritten by a copy in place
    cluster.rclone("touch", "hw:rc-cat/t/a.txt", "-t", "2020-01-02T03:04:05")
    assert "2020-01-02 03:04:05" in cluster.rclone("lsl", "hw:rc-cat/t/a.txt").stdout.decode()
    head = s3.head_object(Bucket="rc-cat", Key="t/a.txt")
    assert float(head["Metadata"]["mtime"]) == 1577934245
    assert s3.get_object(Bucket="rc-cat", Key="t/a.txt")["Body"].read() == files["a.txt"]
    cluster.rclone("touch", "hw:rc-cat/new-empty")  # a new, empty object
    assert s3.head_object(Bucket="rc-cat", Key="new-empty")["ContentLength"] == 0

    # metadata set by the user arrives as the headers it names
    cluster.rclone("copyto", str(src / "a.txt"), "hw:rc-cat/meta.txt", "-M", "--metadata-set", "content-type=text/x-rc",
                   "--metadata-set", "cache-control=no-cache", "--metadata-set", "colour=blue")
    head = s3.head_object(Bucket="rc-cat", Key="meta.txt")
    assert (head["ContentType"], head["CacheControl"], head["Metadata"]["colour"]) == ("text/x-rc", "no-cache", "blue")
    # rclone link: a presigned GET (SigV4 query, a week long) that needs no credentials
    url = cluster.rclone("link", "hw:rc-cat/t/a.txt").stdout.decode().strip()
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == files["a.txt"]


def test_rclone_delete_purge_rmdir_versions(cluster, s3, tree):
    src, files = tree
    cluster.rclone("copy", str(src), "hw:rc-delete/t", *MULTIPART)
    cluster.rclone("copy", str(src), "hw:rc-delete/u")
    # an unversioned bucket lists each key once, as version "null": --s3-versions shows the same
    plain = cluster.rclone("ls", "hw:rc-delete").stdout
    assert ls_sizes(cluster.rclone("ls", "--s3-versions", "hw:rc-delete").stdout) == ls_sizes(plain)

    cluster.rclone("delete", "hw:rc-delete/t", "--include", "*.txt")
    assert set(keys(s3, "rc-delete", "t/")) == {f"t/{k}" for k in files if not k.endswith(".txt")}
    # S3 refuses to delete a bucket that holds objects: rclone reports it and exits non-zero
    res = cluster.rclone("rmdir", "hw:rc-delete", check=False)
    assert res.returncode != 0 and b"BucketNotEmpty" in res.stderr, res.stderr.decode()
    cluster.rclone("purge", "hw:rc-delete/t")
    assert set(keys(s3, "rc-delete")) == {f"u/{k}" for k in files}
    cluster.rclone("delete", "hw:rc-delete")
    assert keys(s3, "rc-delete") == {}
    cluster.rclone("rmdir", "hw:rc-delete")
    assert client_error_of(lambda: s3.head_bucket(Bucket="rc-delete"))[0] == 404
    # purge of a whole bucket: its objects, then the bucket
    cluster.rclone("copy", str(src), "hw:rc-purge/x", *MULTIPART)
    cluster.rclone("purge", "hw:rc-purge")
    assert "rc-purge" not in cluster.rclone("lsd", "hw:").stdout.decode()


def test_rclone_sigv2_multipart(cluster, s3, tree):
    """``--s3-v2-auth``: rclone signs SigV2, with the sub-resource of ``POST ?uploads=`` bare."""
    src, files = tree
    v2 = ("--s3-v2-auth",)
    cluster.rclone("mkdir", "hw:rc-sigv2", *v2)
    cluster.rclone("copy", str(src), "hw:rc-sigv2/t", *MULTIPART, *v2)
    assert s3.get_object(Bucket="rc-sigv2", Key=f"t/{BIG}")["Body"].read() == files[BIG]
    cluster.rclone("check", str(src), "hw:rc-sigv2/t", *v2)
    cluster.rclone("copyto", f"hw:rc-sigv2/t/{BIG}", "hw:rc-sigv2/c.bin", "--s3-copy-cutoff", "5M", *v2)
    assert s3.get_object(Bucket="rc-sigv2", Key="c.bin")["Body"].read() == files[BIG]
    assert cluster.rclone("cat", "hw:rc-sigv2/t/a.txt", "--offset", "1", "--count", "3", *v2).stdout == b"lph"
    cluster.rclone("purge", "hw:rc-sigv2", *v2)


SSE_C = ("--s3-sse-customer-algorithm", "AES256", "--s3-sse-customer-key", "0123456789abcdef0123456789abcdef")


def test_rclone_sse_c_is_refused_not_stored_in_the_clear(cluster, s3, tree):
    """The gateway cannot encrypt with a customer's key. As on an S3 bucket where SSE-C is
    blocked (every new bucket since April 2026), an SSE-C write is 403 AccessDenied and stores
    nothing; a key given to read a plain object is 400 InvalidRequest."""
    src, files = tree
    cluster.rclone("copy", str(src), "hw:rc-sse-c/plain", *MULTIPART)
    for rel in ("a.txt", BIG):
        res = cluster.rclone("copyto", str(src / rel), f"hw:rc-sse-c/secret/{rel}", *MULTIPART, *SSE_C, check=False)
        assert res.returncode != 0 and b"AccessDenied" in res.stderr, res.stderr.decode()
    assert keys(s3, "rc-sse-c", "secret/") == {}
    res = cluster.rclone("cat", "hw:rc-sse-c/plain/a.txt", *SSE_C, check=False)
    assert res.returncode != 0 and res.stdout == b"", res.stderr.decode()
    assert b"InvalidRequest" in res.stderr or b"400" in res.stderr, res.stderr.decode()
    # a server-side copy naming the source's key: the source is not encrypted with it
    res = cluster.rclone("copyto", "hw:rc-sse-c/plain/a.txt", "hw:rc-sse-c/c.txt", *SSE_C, check=False)
    assert res.returncode != 0 and b"400" in res.stderr, res.stderr.decode()
    # SSE-S3 is accepted (not acted on: docs/s3-compat.md); a method S3 does not have is InvalidArgument
    cluster.rclone("copyto", str(src / "a.txt"), "hw:rc-sse-c/sse-s3.txt", "--s3-server-side-encryption", "AES256")
    res = cluster.rclone("copyto", str(src / "a.txt"), "hw:rc-sse-c/bad.txt", "--s3-server-side-encryption", "AES-256",
                         check=False)
    assert res.returncode != 0 and b"InvalidArgument" in res.stderr, res.stderr.decode()
    assert keys(s3, "rc-sse-c") == {**{f"plain/{k}": len(v) for k, v in files.items()}, "sse-s3.txt": len(files["a.txt"])}


def test_rclone_storage_class(cluster, s3, tree):
    """A storage class of S3's list is accepted (and kept as every object is, STANDARD); a name
    S3 does not have is 400 InvalidStorageClass and stores nothing."""
    src, files = tree
    cluster.rclone("copy", str(src), "hw:rc-class/ia", *MULTIPART, "--s3-storage-class", "STANDARD_IA")
    assert keys(s3, "rc-class") == {f"ia/{k}": len(v) for k, v in files.items()}
    assert s3.head_object(Bucket="rc-class", Key=f"ia/{BIG}").get("StorageClass", "STANDARD") == "STANDARD"
    for rel in ("a.txt", BIG):
        res = cluster.rclone("copyto", str(src / rel), f"hw:rc-class/bogus/{rel}", *MULTIPART,
                             "--s3-storage-class", "BOGUS", check=False)
        assert res.returncode != 0 and b"InvalidStorageClass" in res.stderr, res.stderr.decode()
    assert keys(s3, "rc-class", "bogus/") == {}


def test_rclone_crypt_remote_over_the_gateway(cluster, s3, tree):
    """rclone's crypt remote layered on the gateway (how many users keep backups): names and
    bytes are encrypted by rclone, and cryptcheck verifies them against the local tree."""
    src, files = tree
    password = cluster.rclone("obscure", "a passphrase").stdout.decode().strip()
    crypt = {"RCLONE_CONFIG_SEC_TYPE": "crypt", "RCLONE_CONFIG_SEC_REMOTE": "hw:rc-crypt/vault",
             "RCLONE_CONFIG_SEC_PASSWORD": password}
    cluster.rclone("copy", str(src), "sec:", *MULTIPART, env=crypt)
    res = cluster.rclone("cryptcheck", str(src), "sec:", env=crypt)
    assert b"0 differences found" in res.stderr and f"{len(files)} matching files".encode() in res.stderr
    stored = keys(s3, "rc-crypt")
    assert len(stored) == len(files) and not any("a.txt" in k or "big" in k for k in stored), stored
    assert set(cluster.rclone("lsf", "-R", "--files-only", "sec:", env=crypt).stdout.decode().splitlines()) == set(files)
    assert cluster.rclone("cat", f"sec:{BIG}", "--offset", str(6 * MiB), "--count", "100", env=crypt).stdout == \
        files[BIG][6 * MiB:6 * MiB + 100]


def test_rclone_acls(cluster, s3, tree):
    """Objects are their owner's alone. ``acl = private`` (common in rclone configs, sent on
    CreateBucket and every write) is what is stored anyway and works; an ACL granting anyone
    else is refused as on an S3 bucket with ACLs disabled, and nothing is stored."""
    src, files = tree
    private = {"RCLONE_CONFIG_HW_ACL": "private", "RCLONE_CONFIG_HW_BUCKET_ACL": "private"}
    cluster.rclone("copy", str(src), "hw:rc-acl/p", *MULTIPART, env=private)
    assert keys(s3, "rc-acl") == {f"p/{k}": len(v) for k, v in files.items()}
    cluster.rclone("copyto", "hw:rc-acl/p/a.txt", "hw:rc-acl/p/a2.txt", "--s3-acl", "bucket-owner-full-control")
    for rel in ("a.txt", BIG):
        res = cluster.rclone("copyto", str(src / rel), f"hw:rc-acl/pub/{rel}", *MULTIPART, "--s3-acl", "public-read",
                             check=False)
        assert res.returncode != 0 and b"AccessControlListNotSupported" in res.stderr, res.stderr.decode()
    res = cluster.rclone("copyto", "hw:rc-acl/p/a.txt", "hw:rc-acl/pub/a.txt", "--s3-acl", "public-read", check=False)
    assert res.returncode != 0 and b"AccessControlListNotSupported" in res.stderr, res.stderr.decode()
    assert keys(s3, "rc-acl", "pub/") == {}
    res = cluster.rclone("mkdir", "hw:rc-acl-public", "--s3-bucket-acl", "public-read", check=False)
    assert res.returncode != 0 and b"InvalidBucketAclWithObjectOwnership" in res.stderr, res.stderr.decode()
    assert client_error_of(lambda: s3.head_bucket(Bucket="rc-acl-public"))[0] == 404


def test_rclone_object_lock_is_refused_not_ignored(cluster, s3, tree):
    """No Object Lock here. A locked upload fails as on an S3 bucket without an Object Lock
    configuration (InvalidRequest), instead of being stored deletable while rclone reports it
    locked; a bucket asked to have Object Lock is not made (NotImplemented)."""
    src, files = tree
    cluster.rclone("mkdir", "hw:rc-lock")
    lock = ("--s3-object-lock-mode", "COMPLIANCE", "--s3-object-lock-retain-until-date", "2030-01-01T00:00:00Z")
    for rel in ("a.txt", BIG):
        res = cluster.rclone("copyto", str(src / rel), f"hw:rc-lock/{rel}", *MULTIPART, *lock, check=False)
        assert res.returncode != 0 and b"Bucket is missing Object Lock Configuration" in res.stderr, res.stderr.decode()
    res = cluster.rclone("copyto", str(src / "a.txt"), "hw:rc-lock/held.txt", "--s3-object-lock-legal-hold-status", "ON",
                         check=False)
    assert res.returncode != 0 and b"InvalidRequest" in res.stderr, res.stderr.decode()
    assert keys(s3, "rc-lock") == {}
    res = cluster.rclone("mkdir", "hw:rc-lock-new", "--s3-bucket-object-lock-enabled", check=False)
    assert res.returncode != 0 and b"NotImplemented" in res.stderr, res.stderr.decode()
    assert client_error_of(lambda: s3.head_bucket(Bucket="rc-lock-new"))[0] == 404
    # the flag on a copy into a bucket that exists changes nothing there (the name is judged first)
    cluster.rclone("copyto", str(src / "a.txt"), "hw:rc-lock/plain.txt", "--s3-bucket-object-lock-enabled")
    assert keys(s3, "rc-lock") == {"plain.txt": len(files["a.txt"])}


@pytest.fixture
def tls_cluster(tmp_path_factory):
    """A second, TLS cluster (the module's is plain HTTP): rclone's Go client then speaks HTTP/2,
    negotiated by ALPN, which no other client of these tests does over many streams at once."""
    c = Cluster(tmp_path_factory.mktemp("rclone-tls"), tls=True, **CLUSTER_OPTIONS)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_rclone_over_tls_speaks_http2(tls_cluster, tree, tmp_path):
    src, files = tree
    many = tmp_path / "many"
    many.mkdir()
    for i in range(60):
        (many / f"f{i:02}.txt").write_bytes(f"file {i}\n".encode())
    c = tls_cluster
    res = c.rclone("copy", str(src), "hw:rc-h2/t", *MULTIPART, "--dump", "headers")
    assert b"HTTP/2.0 200 OK" in res.stderr and b"HTTP/1.1 200 OK" not in res.stderr
    c.rclone("copy", str(many), "hw:rc-h2/many", "--transfers", "16", "--checkers", "16")
    res = c.rclone("check", str(src), "hw:rc-h2/t")
    assert b"0 differences found" in res.stderr and f"{len(files)} matching files".encode() in res.stderr
    res = c.rclone("check", str(many), "hw:rc-h2/many", "--checkers", "16")
    assert b"60 matching files" in res.stderr
    c.rclone("copyto", f"hw:rc-h2/t/{BIG}", "hw:rc-h2/c.bin", "--s3-copy-cutoff", "5M")
    assert c.rclone("cat", "hw:rc-h2/c.bin", "--offset", str(7 * MiB), "--count", "99").stdout == \
        files[BIG][7 * MiB:7 * MiB + 99]
    down = tmp_path / "down"
    c.rclone("copy", "hw:rc-h2/t", str(down), "--multi-thread-cutoff", "1M", "--multi-thread-streams", "4")
    assert all((down / rel).read_bytes() == body for rel, body in files.items())
    c.rclone("purge", "hw:rc-h2")


def test_rclone_settier_copies_in_place(cluster, s3):
    """rclone's settier (provider AWS) copies an object onto itself, metadata kept, with a new
    x-amz-storage-class: S3 accepts a copy in place that changes the storage class. The object is
    left as it was (one storage class here); a copy in place that changes nothing is refused."""
    s3.create_bucket(Bucket="rc-tier")
    s3.put_object(Bucket="rc-tier", Key="k.txt", Body=b"tiered", Metadata={"mtime": "1577934245"})
    cluster.rclone("settier", "STANDARD_IA", "hw:rc-tier/k.txt", env={"RCLONE_CONFIG_HW_PROVIDER": "AWS"})
    got = s3.get_object(Bucket="rc-tier", Key="k.txt")
    assert got["Body"].read() == b"tiered" and got["Metadata"] == {"mtime": "1577934245"}
    s3.copy_object(Bucket="rc-tier", Key="k.txt", CopySource="rc-tier/k.txt", ServerSideEncryption="AES256")
    with pytest.raises(Exception) as info:
        s3.copy_object(Bucket="rc-tier", Key="k.txt", CopySource="rc-tier/k.txt", StorageClass="STANDARD")
    assert client_error(info.value) == (400, "InvalidRequest")


def test_sse_c_keys_on_parts_and_reads_boto3(cluster, s3):
    """The SSE-C refusals where rclone cannot reach them: a part (uploaded or copied) naming a
    key for an upload not begun with one, and a HEAD or GET naming one (400), while a missing
    object is still 404."""
    key = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "0123456789abcdef0123456789abcdef"}
    s3.create_bucket(Bucket="rc-sse-c-parts")
    s3.put_object(Bucket="rc-sse-c-parts", Key="plain", Body=b"x" * 100)
    uid = s3.create_multipart_upload(Bucket="rc-sse-c-parts", Key="mp")["UploadId"]
    for call, args in ((s3.upload_part, dict(Body=b"part")),
                       (s3.upload_part_copy, dict(CopySource="rc-sse-c-parts/plain"))):
        with pytest.raises(Exception) as info:
            call(Bucket="rc-sse-c-parts", Key="mp", UploadId=uid, PartNumber=1, **args, **key)
        assert client_error(info.value) == (400, "InvalidRequest")
    assert s3.list_parts(Bucket="rc-sse-c-parts", Key="mp", UploadId=uid).get("Parts", []) == []
    for call in (s3.head_object, s3.get_object):
        assert client_error_of(lambda: call(Bucket="rc-sse-c-parts", Key="plain", **key))[0] == 400
        assert client_error_of(lambda: call(Bucket="rc-sse-c-parts", Key="missing", **key))[0] == 404
