"""Clients that stop reading a GET cannot make a gateway worker buffer without bound.

Each worker's GETs share one read buffer (``[gateway] read_buffer``): a GET takes a batch of
stripes' bytes from it before reading them from the storage nodes and gives them back once its
client has taken them; it reads ahead only while the buffer has room. Here the buffer holds one
batch (4 MiB): a client that reads the response head of a large GET and then stops holds it,
another GET waits ``read_buffer_wait_seconds`` and is answered 503 SlowDown, and the buffer is
whole again once the stalled client goes away.
"""

from __future__ import annotations

import socket
import time

import botocore.exceptions
import httpx
import pytest

from headwater.config import MiB
from tests.cluster import client_error

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, stripe_size="1MiB",
                       extra_gateway={"read_buffer": "4MiB", "read_buffer_wait_seconds": 1})

SIZE = 24 * MiB


def gateway_health(cluster) -> dict:
    return httpx.get(f"http://127.0.0.1:{cluster.gateway.admin_port}/healthz", trust_env=False).json()


def stalled_get(cluster, bucket: str, key: str) -> socket.socket:
    """A GET whose client reads the status line and then nothing more, with a small receive buffer."""
    url = cluster.s3_client(0).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    path = url.split(str(cluster.gateway.port), 1)[1]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.connect(("127.0.0.1", cluster.gateway.port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{cluster.gateway.port}\r\n\r\n".encode())
    assert s.recv(12).startswith(b"HTTP/1.1 200")
    return s


def test_a_stalled_reader_holds_one_batch_and_other_gets_are_told_to_slow_down(cluster, s3, bucket):
    body = bytes(range(256)) * (SIZE // 256)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == body
    assert gateway_health(cluster)["read_buffer"]["free"] == 4 * MiB

    stalled = stalled_get(cluster, bucket, "big")
    try:
        deadline = time.monotonic() + 10
        while gateway_health(cluster)["read_buffer"]["free"] != 0:
            assert time.monotonic() < deadline, "the stalled GET never filled the read buffer"
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket=bucket, Key="big")["Body"].read()
        assert client_error(e.value) == (503, "SlowDown")
        assert time.monotonic() - started >= 0.9  # it waited for its share first
        # Small objects never touch the read buffer (they live in their metadata record).
        s3.put_object(Bucket=bucket, Key="small", Body=b"x" * 1000)
        assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == b"x" * 1000
    finally:
        stalled.close()
    deadline = time.monotonic() + 10
    while gateway_health(cluster)["read_buffer"]["free"] != 4 * MiB:
        assert time.monotonic() < deadline, "the stalled GET's batch was never given back"
        time.sleep(0.05)
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == body
    health = gateway_health(cluster)["read_buffer"]
    assert health["refusals"] >= 1 and health["free"] == 4 * MiB
