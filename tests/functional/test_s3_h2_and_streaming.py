"""The S3 API over HTTP/2 (h2c with prior knowledge) and aws-chunked streaming uploads with
trailers (STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-UNSIGNED-PAYLOAD-TRAILER), as the
AWS SDKs send them: signed with botocore's SigV4 signer, framed here.

``streaming_request`` / ``streaming_put`` are also used by test_s3_write_races.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET
import zlib

import anyio
import httpx
import pytest

from tests.cluster import client_error, sign_headers, xml_error
from tests.data import data

KiB = 1024
STRIPE = 64 * KiB
CLUSTER_OPTIONS = dict(stripe_size=STRIPE, inline_max_size="4KiB", min_part_size="100KiB",
                       k=2, m=1, storage_nodes=3, metadata_nodes=1)
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"




def crc32_b64(b: bytes) -> str:
    return base64.b64encode(zlib.crc32(b).to_bytes(4, "big")).decode()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def streaming_request(cluster, method: str, path: str, payload: bytes, *, query: str = "",
                      mode: str = SIGNED_TRAILER, chunk: int = 64 * KiB, checksum: str | None = None,
                      tamper_chunk: int | None = None, tamper_trailer: bool = False,
                      decoded_length: int | None = None,
                      headers: dict[str, str] | None = None) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of an aws-chunked request in ``mode``, with an x-amz-checksum-crc32
    trailer in the TRAILER modes (``checksum`` overrides its value)."""
    user = cluster.user(0)
    url = cluster.endpoint + path + ("?" + query if query else "")
    signed = mode.startswith("STREAMING-AWS4")
    trailer = mode.endswith("TRAILER")
    pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)]
    hdrs = {"content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(payload) if decoded_length is None else decoded_length),
            **(headers or {})}
    if trailer:
        hdrs["x-amz-trailer"] = "x-amz-checksum-crc32"
    empty = hashlib.sha256(b"").hexdigest()

    def frame(sign, seed: str) -> bytes:
        prev = seed
        body = bytearray()
        for i, p in enumerate(pieces + [b""]):
            ext = ""
            if signed:
                sig = sign("\n".join(("AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, empty,
                                      hashlib.sha256(p).hexdigest())))
                if tamper_chunk == i:
                    sig = "0" * 64
                prev = sig
                ext = f";chunk-signature={sig}"
            body += f"{len(p):x}{ext}\r\n".encode()
            if p or not trailer:
                body += p + b"\r\n"
        if trailer:
            value = checksum if checksum is not None else crc32_b64(payload)
            body += f"x-amz-checksum-crc32:{value}\r\n".encode()
            if signed:
                canonical = f"x-amz-checksum-crc32:{value}\n"
                tsig = sign("\n".join(("AWS4-HMAC-SHA256-TRAILER", amz_date, scope, prev,
                                       hashlib.sha256(canonical.encode()).hexdigest())))
                if tamper_trailer:
                    tsig = "f" * 64
                body += f"x-amz-trailer-signature:{tsig}\r\n".encode()
            body += b"\r\n"
        return bytes(body)

    # The framing's length does not depend on the signature values: size it with dummies, then
    # sign the headers (botocore signs Content-Length), then frame with the real chunk signatures.
    amz_date, scope = "20000101T000000Z", "x"
    hdrs["content-length"] = str(len(frame(lambda sts: "0" * 64, "0" * 64)))
    hdrs = sign_headers(cluster, method, url, headers=hdrs, payload_hash=mode)
    amz_date = hdrs["X-Amz-Date"]
    seed = re.search(r"Signature=([0-9a-f]{64})", hdrs["Authorization"]).group(1)  # type: ignore[union-attr]
    scope = f"{amz_date[:8]}/{cluster.region}/s3/aws4_request"
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + user.secret_key).encode(), amz_date[:8]), cluster.region), "s3"),
                "aws4_request")
    body = frame(lambda sts: hmac.new(key, sts.encode(), hashlib.sha256).hexdigest(), seed)
    assert str(len(body)) == hdrs["content-length"]
    return url, hdrs, bytes(body)


def streaming_put(cluster, path: str, payload: bytes, *, client: httpx.Client | None = None,
                  **kw) -> httpx.Response:
    url, hdrs, body = streaming_request(cluster, "PUT", path, payload, **kw)
    if client is not None:
        return client.put(url, headers=hdrs, content=body)
    with httpx.Client(timeout=30) as c:
        return c.put(url, headers=hdrs, content=body)


# --- aws-chunked with trailers --------------------------------------------------------------------


@pytest.mark.parametrize("mode", [SIGNED_TRAILER, UNSIGNED_TRAILER, SIGNED])
@pytest.mark.parametrize("size", [100, 3 * STRIPE + 7], ids=["inline", "3-stripes"])
def test_streaming_put_with_trailer(cluster, s3, bucket, mode, size):
    body = data(size, seed=size)
    r = streaming_put(cluster, f"/{bucket}/t", body, mode=mode)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    if mode != SIGNED:
        assert r.headers.get("x-amz-checksum-crc32") == crc32_b64(body)
        assert got.get("ChecksumCRC32") == crc32_b64(body)


@pytest.mark.parametrize("mode", [SIGNED_TRAILER, UNSIGNED_TRAILER])
def test_streaming_put_with_wrong_trailer_checksum_is_bad_digest(cluster, s3, bucket, mode):
    body = data(2 * STRIPE)
    r = streaming_put(cluster, f"/{bucket}/bad", body, mode=mode, checksum=crc32_b64(b"other"))
    assert (r.status_code, xml_error(r).get("Code")) == (400, "BadDigest"), r.text[:300]
    with pytest.raises(Exception) as ei:
        s3.head_object(Bucket=bucket, Key="bad")
    assert client_error(ei.value)[0] == 404


def test_streaming_upload_part_with_signed_trailer(cluster, s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="CRC32")["UploadId"]
    p1, p2 = data(150 * KiB, 1), data(10 * KiB, 2)
    etags = []
    for n, p in ((1, p1), (2, p2)):
        r = streaming_put(cluster, f"/{bucket}/mp", p, query=f"partNumber={n}&uploadId={uid}")
        assert r.status_code == 200, r.text[:300]
        assert r.headers["x-amz-checksum-crc32"] == crc32_b64(p)
        etags.append(r.headers["etag"])
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e, "ChecksumCRC32": crc32_b64(p)}
                                   for n, e, p in ((1, etags[0], p1), (2, etags[1], p2))]})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == p1 + p2


# --- HTTP/2 ---------------------------------------------------------------------------------------


@pytest.fixture
def h2(cluster):
    with httpx.Client(http1=False, http2=True, timeout=30) as c:
        yield c


def h2_request(cluster, client: httpx.Client, method: str, path: str, *, query: str = "", body: bytes = b"",
               headers: dict[str, str] | None = None, **sign_kw) -> httpx.Response:
    url = cluster.endpoint + path + ("?" + query if query else "")
    hdrs = sign_headers(cluster, method, url, body=body, headers=headers, **sign_kw)
    r = client.request(method, url, headers=hdrs, content=body)
    assert r.http_version == "HTTP/2"
    return r


def test_h2_object_round_trip(cluster, h2, bucket):
    body = data(3 * STRIPE + 5)
    r = h2_request(cluster, h2, "PUT", f"/{bucket}/obj", body=body, headers={"Expect": "100-continue"})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert "x-amz-request-id" in r.headers
    r = h2_request(cluster, h2, "GET", f"/{bucket}/obj")
    assert r.status_code == 200 and r.content == body
    r = h2_request(cluster, h2, "GET", f"/{bucket}/obj", headers={"Range": "bytes=65530-65600"})
    assert r.status_code == 206 and r.content == body[65530:65601]
    assert r.headers["content-range"] == f"bytes 65530-65600/{len(body)}"
    r = h2_request(cluster, h2, "HEAD", f"/{bucket}/obj")
    assert r.status_code == 200 and r.headers["content-length"] == str(len(body)) and r.content == b""
    r = h2_request(cluster, h2, "PUT", f"/{bucket}/unsigned", body=body, payload_hash="UNSIGNED-PAYLOAD")
    assert r.status_code == 200
    r = h2_request(cluster, h2, "GET", f"/{bucket}", query="list-type=2")
    keys = [k.text for k in ET.fromstring(r.content).iter(f"{NS}Key")]
    assert keys == ["obj", "unsigned"]
    assert h2_request(cluster, h2, "DELETE", f"/{bucket}/obj").status_code == 204
    r = h2_request(cluster, h2, "GET", f"/{bucket}/obj")
    assert (r.status_code, xml_error(r)["Code"]) == (404, "NoSuchKey")
    r = h2_request(cluster, h2, "HEAD", f"/{bucket}/obj")
    assert r.status_code == 404 and r.content == b""


def test_h2_errors_before_body(cluster, h2, bucket):
    """An error answered before the body is read (no such bucket, bad digest header) arrives
    whole over HTTP/2, and the connection stays usable."""
    body = data(2 * STRIPE)
    r = h2_request(cluster, h2, "PUT", f"/{bucket}-missing/x", body=body, headers={"Expect": "100-continue"})
    assert (r.status_code, xml_error(r)["Code"]) == (404, "NoSuchBucket")
    r = h2_request(cluster, h2, "PUT", f"/{bucket}/x", body=body, headers={"Content-MD5": "AAAA"})
    assert (r.status_code, xml_error(r)["Code"]) == (400, "InvalidDigest")
    r = h2_request(cluster, h2, "PUT", f"/{bucket}/x", body=body, payload_hash="0" * 64)
    assert (r.status_code, xml_error(r)["Code"]) == (400, "XAmzContentSHA256Mismatch")
    assert h2_request(cluster, h2, "PUT", f"/{bucket}/x", body=b"ok").status_code == 200


def test_h2_streaming_trailer_put(cluster, s3, h2, bucket):
    body = data(2 * STRIPE + 1)
    r = streaming_put(cluster, f"/{bucket}/s", body, client=h2)
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200, r.text[:300]
    assert r.headers["x-amz-checksum-crc32"] == crc32_b64(body)
    assert s3.get_object(Bucket=bucket, Key="s")["Body"].read() == body


def test_h2_multipart_upload(cluster, s3, h2, bucket):
    r = h2_request(cluster, h2, "POST", f"/{bucket}/mp", query="uploads=")
    assert r.status_code == 200, r.text
    uid = ET.fromstring(r.content).find(f"{NS}UploadId").text  # type: ignore[union-attr]
    parts = [data(120 * KiB, 7), data(3 * KiB, 8)]
    etags = []
    for n, p in enumerate(parts, 1):
        r = h2_request(cluster, h2, "PUT", f"/{bucket}/mp", query=f"partNumber={n}&uploadId={uid}", body=p)
        assert r.status_code == 200, r.text
        etags.append(r.headers["etag"])
    xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1))
    r = h2_request(cluster, h2, "POST", f"/{bucket}/mp", query=f"uploadId={uid}",
                   body=f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode())
    assert r.status_code == 200, r.text
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"".join(parts)


def test_h2_concurrent_streams_on_one_connection(cluster, s3, bucket):
    """Many PUTs and GETs multiplexed on one h2c connection, interleaved."""
    bodies = {f"k{i}": data(STRIPE + 1000 * i, seed=100 + i) for i in range(8)}

    async def main() -> None:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as c:
            async def put(key: str, body: bytes) -> None:
                url = f"{cluster.endpoint}/{bucket}/{key}"
                r = await c.put(url, headers=sign_headers(cluster, "PUT", url, body=body), content=body)
                assert r.status_code == 200 and r.http_version == "HTTP/2", r.text

            async def get(key: str) -> None:
                url = f"{cluster.endpoint}/{bucket}/{key}"
                r = await c.get(url, headers=sign_headers(cluster, "GET", url))
                assert r.status_code == 200 and r.content == bodies[key]

            async with anyio.create_task_group() as tg:
                for k, b in bodies.items():
                    tg.start_soon(put, k, b)
            async with anyio.create_task_group() as tg:
                for k in bodies:
                    tg.start_soon(get, k)

    anyio.run(main)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == len(bodies)
