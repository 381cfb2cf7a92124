"""Clients that go away mid-upload: nothing partial may ever become visible.

A raw socket sends a signed PutObject or UploadPart whose headers promise 10 MiB, sends part of
the body and closes. Afterwards the object does not exist, the part is not listed, the gateway
still serves, and no committed fragment file was left behind.
"""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from tests.cluster import client_error, sign_headers

KiB = 1024
MiB = 1024 * KiB
CLUSTER_OPTIONS = dict(stripe_size="256KiB", inline_max_size="4KiB", min_part_size="1MiB",
                       k=2, m=1, storage_nodes=3, metadata_nodes=1)

PROMISED = 10 * MiB


def body_bytes(n: int) -> bytes:
    block = hashlib.sha256(b"disconnect").digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


def send_partial(cluster, path: str, query: str, sent: int, *, signed_payload: bool, half_close: bool = False) -> bytes:
    """PUT ``path?query`` promising PROMISED bytes, send ``sent`` of them, then close (or half-close)."""
    full = body_bytes(PROMISED)
    url = f"{cluster.endpoint}{path}" + (f"?{query}" if query else "")
    kw = {} if signed_payload else {"payload_hash": "UNSIGNED-PAYLOAD"}
    hdrs = sign_headers(cluster, "PUT", url, body=full if signed_payload else b"",
                        headers={"Content-Length": str(PROMISED)}, **kw)
    target = path + (f"?{query}" if query else "")
    head = f"PUT {target} HTTP/1.1\r\nHost: {cluster.host}:{cluster.gateway.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if k.lower() != "host") + "\r\n"
    got = b""
    sock = socket.create_connection((cluster.host, cluster.gateway.port), timeout=10)
    try:
        sock.sendall(head.encode())
        sock.sendall(full[:sent])
        time.sleep(0.3)  # let the gateway start storing what it has
        if half_close:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(15)
            try:
                while chunk := sock.recv(65536):
                    got += chunk
            except (TimeoutError, ConnectionResetError):
                pass
    finally:
        sock.close()
    return got


def wait_quiet(cluster, s3, bucket, seconds: float = 2.0) -> None:
    """Give the gateway time to notice the disconnect and clean up; it must keep serving."""
    time.sleep(seconds)
    assert s3.list_objects_v2(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.mark.parametrize("signed_payload", [False, True], ids=["unsigned-payload", "signed-payload"])
@pytest.mark.parametrize("sent", [0, 100 * KiB, 3 * MiB + 17], ids=["no-body", "100KiB", "3MiB"])
def test_disconnected_put_leaves_no_object(cluster, s3, bucket, sent, signed_payload):
    before = set(cluster.fragment_files())
    send_partial(cluster, f"/{bucket}/partial", "", sent, signed_payload=signed_payload)
    wait_quiet(cluster, s3, bucket)
    with pytest.raises(Exception) as ei:
        s3.head_object(Bucket=bucket, Key="partial")
    assert client_error(ei.value)[0] == 404
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert set(cluster.fragment_files()) - before == set(), "committed fragments left by an aborted PUT"
    # and the key is writable at once
    s3.put_object(Bucket=bucket, Key="partial", Body=b"complete")
    assert s3.get_object(Bucket=bucket, Key="partial")["Body"].read() == b"complete"


def test_half_closed_put_gets_error_or_close(cluster, s3, bucket):
    raw = send_partial(cluster, f"/{bucket}/half", "", 2 * MiB, signed_payload=False, half_close=True)
    if raw:
        status = int(raw.split(b"\r\n", 1)[0].split()[1])
        assert 400 <= status < 500, raw[:300]  # IncompleteBody / RequestTimeout, never 200
    wait_quiet(cluster, s3, bucket, 1.0)
    with pytest.raises(Exception) as ei:
        s3.head_object(Bucket=bucket, Key="half")
    assert client_error(ei.value)[0] == 404


@pytest.mark.parametrize("sent", [0, 2 * MiB + 5], ids=["no-body", "2MiB"])
def test_disconnected_upload_part_leaves_no_part(cluster, s3, bucket, sent):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    good = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=body_bytes(MiB))
    before = set(cluster.fragment_files())
    send_partial(cluster, f"/{bucket}/mp", f"partNumber=2&uploadId={uid}", sent, signed_payload=False)
    wait_quiet(cluster, s3, bucket)
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid).get("Parts", [])
    assert [p["PartNumber"] for p in parts] == [1]
    assert set(cluster.fragment_files()) - before == set()
    # the upload is still usable: complete it with the one good part
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": good["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == body_bytes(MiB)


def test_disconnected_replacement_part_keeps_old_part(cluster, s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp2")["UploadId"]
    first = s3.upload_part(Bucket=bucket, Key="mp2", UploadId=uid, PartNumber=1, Body=b"old part")
    send_partial(cluster, f"/{bucket}/mp2", f"partNumber=1&uploadId={uid}", MiB, signed_payload=False)
    wait_quiet(cluster, s3, bucket)
    parts = s3.list_parts(Bucket=bucket, Key="mp2", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [(1, first["ETag"], 8)]


def test_disconnect_while_overwriting_keeps_old_object(cluster, s3, bucket):
    s3.put_object(Bucket=bucket, Key="keep", Body=b"the old bytes")
    send_partial(cluster, f"/{bucket}/keep", "", 3 * MiB, signed_payload=True)
    wait_quiet(cluster, s3, bucket)
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"the old bytes"
