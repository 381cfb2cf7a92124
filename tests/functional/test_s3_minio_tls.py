"""minio-py over HTTPS (a throwaway CA, as test_s3_tls.py makes it): there it signs no body but
sends ``x-amz-content-sha256: UNSIGNED-PAYLOAD`` with a Content-MD5 on every upload, parts
included, and the gateway must verify those instead. Plain HTTP is test_s3_minio.py's."""

from __future__ import annotations

import hashlib
import io
import ssl

import httpx
import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

CLUSTER_OPTIONS = dict(tls=True, stripe_size="64KiB", inline_max_size="4KiB", k=2, m=1,
                       storage_nodes=3, metadata_nodes=1)
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def mc(cluster) -> Minio:
    u = cluster.user(0)
    pool = urllib3.PoolManager(ca_certs=str(cluster.tls.ca), retries=False, timeout=60)
    return Minio(cluster.endpoint.removeprefix("https://"), access_key=u.access_key, secret_key=u.secret_key,
                 secure=True, region=cluster.region, http_client=pool)


def test_uploads_over_https_carry_content_md5(cluster, mc, bucket):
    body = hashlib.shake_256(b"tls").digest(11 * MiB)
    mc.put_object(bucket, "small", io.BytesIO(body[:1000]), 1000)
    res = mc.put_object(bucket, "streamed", io.BytesIO(body), -1, part_size=5 * MiB)
    assert res.etag.endswith("-3")
    assert mc.stat_object(bucket, "streamed").size == len(body)
    got = mc.get_object(bucket, "streamed", offset=5 * MiB - 10, length=20)
    assert got.data == body[5 * MiB - 10:5 * MiB + 10]
    assert mc.get_object(bucket, "small").data == body[:1000]
    url = mc.presigned_get_object(bucket, "small")
    assert httpx.get(url, verify=ssl.create_default_context(cafile=str(cluster.tls.ca))).content == body[:1000]


def test_a_wrong_content_md5_is_refused(cluster, mc, bucket):
    """The Content-MD5 minio-py sends over HTTPS is what vouches for the body: a wrong one is
    BadDigest (here forced through minio-py's own headers, as a corrupting proxy would)."""
    with pytest.raises(S3Error) as info:
        mc._execute("PUT", bucket, "bad", body=b"hello", headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    assert info.value.code == "BadDigest"
    assert [o.object_name for o in mc.list_objects(bucket)] == []
