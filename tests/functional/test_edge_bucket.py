"""The edge in front of the object store (a distribution whose origin is ``s3://bucket``): the
shield fetches from the cluster's real S3 gateway with SigV4 as the first ``[[users]]`` entry,
as the default cluster's ``bucket`` distribution does. Objects are written with boto3; the POP
serves them (whole, ranged, cached, with the store's ETag), a missing key is the store's 404,
and an object overwritten in the store is served anew once it is purged.
"""

from __future__ import annotations

import functools

import anyio
import anyio.from_thread
import httpx
import pytest

from headwater.config import load
from headwater.edge.daemon import run_edge
from tests.cluster import free_ports
from tests.data import data

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="256KiB")

EDGE = """
[cdn.client_limits]
enabled = false

[[distributions]]
name = "bucket"
origin = "s3://edgeorigin"

[[edge]]
id = "pop-1"
tier = "pop"
port = {p[0]}
admin_port = {p[1]}
lat = 51.5
lon = -0.12
ram_size = "16MiB"
disk_size = "64MiB"

[[edge]]
id = "shield-1"
tier = "shield"
port = {p[2]}
admin_port = {p[3]}
disk_size = "64MiB"
"""


@pytest.fixture(scope="module")
def pop(cluster, s3):
    s3.create_bucket(Bucket="edgeorigin")
    ports = free_ports(4)
    with open(cluster.config_path, "a") as f:
        f.write(EDGE.format(p=ports))
    cfg = load(str(cluster.config_path))
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        tasks = [portal.start_task(functools.partial(run_edge, cfg, node))[0] for node in cfg.edge]
        yield f"http://127.0.0.1:{ports[0]}"
        for t in tasks:
            t.cancel()


def test_objects_of_the_bucket_through_the_pop(s3, pop):
    body = data(700 * 1024 + 3, 7)
    put = s3.put_object(Bucket="edgeorigin", Key="titles/1/seg-00042.m4s", Body=body,
                        ContentType="video/iso.segment", CacheControl="max-age=600")
    with httpx.Client(trust_env=False, timeout=30) as c:
        first = c.get(pop + "/titles/1/seg-00042.m4s")
        assert first.status_code == 200 and first.content == body
        assert first.headers["x-cache"] == "Miss from pop-1"
        assert first.headers["etag"] == put["ETag"] and first.headers["content-type"] == "video/iso.segment"
        again = c.get(pop + "/titles/1/seg-00042.m4s")
        assert again.headers["x-cache"] == "Hit from pop-1" and again.content == body
        ranged = c.get(pop + "/titles/1/seg-00042.m4s", headers={"range": "bytes=1000-1999"})
        assert ranged.status_code == 206 and ranged.content == body[1000:2000]
        missing = c.get(pop + "/titles/1/nope.m4s")
        assert missing.status_code == 404
        # The store's own keys with characters SigV4 must encode: signed right, found.
        odd = "titles/2/a b+c(1)~é.m4s"
        s3.put_object(Bucket="edgeorigin", Key=odd, Body=b"odd", CacheControl="max-age=600")
        r = c.get(pop + "/titles/2/a%20b%2Bc%281%29~%C3%A9.m4s")
        assert r.status_code == 200 and r.content == b"odd", r.text


def test_the_shield_signs_as_the_configured_user(cluster, s3, pop):
    """A bucket the signing user may not read answers the store's 403 through the POP, never
    the object: the shield holds no privilege of its own."""
    bob = cluster.s3_client(1)
    bob.create_bucket(Bucket="bobs-only")
    bob.put_object(Bucket="bobs-only", Key="x", Body=b"secret")
    with httpx.Client(trust_env=False, timeout=30) as c:
        # (the distribution's bucket is fixed: a path cannot name another bucket)
        r = c.get(pop + "/../bobs-only/x")
        assert r.content != b"secret"
        r = c.get(pop + "/bobs-only/x")
        assert r.status_code == 404 and r.content != b"secret"
