"""Several origin hosts on one PostgreSQL catalogue, as an operator runs them: one cluster.toml
with ``[[origin.hosts]]`` (origin-a, origin-b) and ``[origin.catalogue] backend = "postgresql"``
(a throwaway server this module starts), each host ``headwater node <id>``, a transcoder, the
real object store. Clients: tuspy, raw sockets for PATCHes cut or held mid-body, httpx, boto3.

Covered: a token from host A (``headwater token --origin origin-a``) accepted by host B and the
other way round, both hosts publishing one JWKS (the signing key made once for the cluster); a
tuspy upload interrupted on A and resumed on B with checksums, its bytes right, and a title
made from it on B transcoded; a PATCH ending mid-part whose bytes are in the store (the
incomplete part's segment) when its offset is acknowledged: A killed (SIGKILL) right after the
answer and the upload resumed and completed on B; two PATCHes at once on one upload from A and
B: the second refused 409 ``upload_locked``, the offsets the same on both hosts afterwards.
Hostile: a forged Upload-Offset (ahead, behind, 20 digits), a body past Upload-Length, and a
PATCH (and HEAD) on another client's upload from the other host: refused, nothing changed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time

import httpx
import psycopg
import pytest
from tusclient import client as tus_client

from headwater.config import load
from tests.cluster import free_ports
from tests.functional.drm_media import make_clip
from tests.functional.licence_harness import cli
from tests.functional.origin_harness import ORIGIN_CLIENTS, TRANSCODER_SECTION, Daemon

from .postgres_server import find_initdb, start_postgres

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")
MiB = 1024 * 1024
TUS = {"tus-resumable": "1.0.0"}

SECTIONS = """
[origin]
port = {table}
admin_port = {table_admin}
tls = false
part_size = "5MiB"
max_upload_size = "64MiB"
max_uploads_per_client = 8
upload_lease_seconds = 20

[origin.catalogue]
backend = "postgresql"
dsn = "{dsn}"

[[origin.hosts]]
id = "origin-a"
port = {a}
admin_port = {a_admin}

[[origin.hosts]]
id = "origin-b"
port = {b}
admin_port = {b_admin}

""" + ORIGIN_CLIENTS + """
[[origin.clients]]
id = "other-app"
scopes = ["upload"]
secret = "sealed"

""" + TRANSCODER_SECTION.replace("[transcoder]\n", '[transcoder]\nscheme = "none"\n')


@pytest.fixture(scope="module")
def world(cluster):
    if find_initdb() is None:
        pytest.fail("PostgreSQL is missing: install Debian's postgresql (make setup does)")
    pg = start_postgres()
    daemons: list[Daemon] = []
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE multihost")
        names = ("table", "table_admin", "a", "a_admin", "b", "b_admin", "transcoder_admin")
        p = dict(zip(names, free_ports(len(names))))
        with open(cluster.config_path, "a") as f:
            f.write(SECTIONS.format(dsn=pg.dsn("multihost"), **p))
        logs = cluster.root / "logs"
        # Both hosts at once: they race to migrate the schema and to make the cluster's secrets.
        daemons += [Daemon(cluster.config_path, "origin-a", p["a_admin"], logs / "origin-a.out"),
                    Daemon(cluster.config_path, "origin-b", p["b_admin"], logs / "origin-b.out")]
        for d in daemons:
            d.wait()
        daemons.append(Daemon(cluster.config_path, "transcoder", p["transcoder_admin"],
                              logs / "transcoder.out").wait())
        yield {"config": cluster.config_path, "ports": p, "logs": logs, "daemons": daemons, "pg": pg,
               "a": f"http://127.0.0.1:{p['a']}", "b": f"http://127.0.0.1:{p['b']}"}
    finally:
        for d in reversed(daemons):
            d.stop()
        pg.stop()


def token(world, client: str, scope: str, host: str) -> str:
    return cli(world["config"], "token", "--client", client, "--scope", scope, "--origin", host).strip()


def bearer(tok: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}", **TUS}


def head(url: str, tok: str) -> httpx.Response:
    return httpx.head(url, headers=bearer(tok), timeout=30, trust_env=False)


def offset(url: str, tok: str) -> int:
    r = head(url, tok)
    assert r.status_code == 200, r.text
    return int(r.headers["upload-offset"])


def create(base: str, tok: str, length: int) -> str:
    r = httpx.post(f"{base}/uploads", headers={**bearer(tok), "upload-length": str(length)}, timeout=30,
                   trust_env=False)
    assert r.status_code == 201, r.text
    return r.headers["location"] if r.headers["location"].startswith("http") else base + r.headers["location"]


def patch(url: str, tok: str, at: int, data: bytes, **extra: str) -> httpx.Response:
    return httpx.patch(url, content=data, headers={**bearer(tok), "upload-offset": str(at),
                                                   "content-type": "application/offset+octet-stream", **extra},
                       timeout=60, trust_env=False)


def on(url: str, base: str) -> str:
    """The same upload's URL on another host."""
    return base + "/uploads/" + url.rsplit("/", 1)[1]


def segments(s3, upload_id: str) -> list[int]:
    found = s3.list_objects_v2(Bucket="uploads", Prefix=f"incomplete/{upload_id}/").get("Contents", [])
    return sorted(o["Size"] for o in found)


def test_a_token_from_one_host_is_accepted_by_the_other(world):
    jwks = [httpx.get(f"{world[h]}/.well-known/jwks.json", timeout=10, trust_env=False).json() for h in "ab"]
    assert jwks[0] == jwks[1] and len(jwks[0]["keys"]) == 1  # one signing key for the cluster
    from_a = token(world, "creator-app", "upload", "origin-a")
    from_b = token(world, "creator-app", "upload", "origin-b")
    for tok in (from_a, from_b):
        for base in (world["a"], world["b"]):
            url = create(base, tok, 10)
            assert offset(url, tok) == 0
            assert httpx.delete(url, headers=bearer(tok), timeout=30, trust_env=False).status_code == 204
    # The client's secret is one for the cluster: each host's token endpoint takes it.
    secret = cli(world["config"], "token", "--client", "creator-app", "--print-secret", "--origin", "origin-b").strip()
    for base in (world["a"], world["b"]):
        r = httpx.post(f"{base}/oauth/token", data={"grant_type": "client_credentials", "scope": "upload"},
                       auth=("creator-app", secret), timeout=30, trust_env=False)
        assert r.status_code == 200, r.text


def test_an_upload_interrupted_on_a_is_resumed_on_b(world, s3, tmp_path):
    tok = token(world, "creator-app", "upload", "origin-a")
    data = os.urandom(12 * MiB + 4321)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    first = tus_client.TusClient(f"{world['a']}/uploads", headers={"Authorization": f"Bearer {tok}"}) \
        .uploader(str(path), chunk_size=1 * MiB)
    first.upload(stop_at=7 * MiB)  # one part (5 MiB) and an incomplete part of two segments
    upload_id = first.url.rsplit("/", 1)[1]
    assert offset(first.url, tok) == 7 * MiB
    assert segments(s3, upload_id) == [1 * MiB, 1 * MiB]
    url_b = on(first.url, world["b"])
    assert offset(url_b, tok) == 7 * MiB
    second = tus_client.TusClient(f"{world['b']}/uploads", headers={"Authorization": f"Bearer {tok}"}) \
        .uploader(str(path), url=url_b, chunk_size=2 * MiB, upload_checksum=True)
    assert second.offset == 7 * MiB
    second.upload()
    assert offset(first.url, tok) == offset(url_b, tok) == len(data)
    got = s3.get_object(Bucket="uploads", Key=f"uploads/{upload_id}")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert segments(s3, upload_id) == []  # deleted once their bytes were in a part


def test_a_clip_started_on_a_and_finished_on_b_becomes_a_title_on_b(world, tmp_path):
    tok = token(world, "creator-app", "upload titles:write", "origin-a")
    clip = make_clip(tmp_path / "clip.mp4", seconds=4)
    size = clip.stat().st_size
    first = tus_client.TusClient(f"{world['a']}/uploads", headers={"Authorization": f"Bearer {tok}"}) \
        .uploader(str(clip), chunk_size=64 * 1024, metadata={"filename": "clip.mp4"})
    first.upload(stop_at=size // 2)
    url_b = on(first.url, world["b"])
    second = tus_client.TusClient(f"{world['b']}/uploads", headers={"Authorization": f"Bearer {tok}"}) \
        .uploader(str(clip), url=url_b, chunk_size=64 * 1024, upload_checksum=True)
    assert 0 < second.offset < size
    second.upload()
    with httpx.Client(base_url=world["b"], timeout=30, trust_env=False) as http:
        r = http.post("/api/titles", headers={"authorization": f"Bearer {tok}"},
                      json={"title": "Two Hosts", "upload": first.url.rsplit("/", 1)[1]})
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        deadline = time.monotonic() + 120
        while True:
            doc = http.get(f"/api/titles/{tid}", headers={"authorization": f"Bearer {tok}"}).json()
            if doc["state"] in ("published", "failed"):
                break
            assert time.monotonic() < deadline, (doc, (world["logs"] / "transcoder.out").read_text()[-3000:])
            time.sleep(0.3)
        assert doc["state"] == "published", (doc, (world["logs"] / "transcoder.out").read_text()[-3000:])


def _held_patch(base: str, url: str, tok: str, at: int, length: int, first: bytes) -> socket.socket:
    """A PATCH whose head and first bytes are sent, the rest held back by the caller."""
    port = int(base.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    path = "/uploads/" + url.rsplit("/", 1)[1]
    s.sendall((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {tok}\r\n"
               f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
               f"Upload-Offset: {at}\r\nContent-Length: {length}\r\n\r\n").encode() + first)
    return s


def _answer(s: socket.socket) -> tuple[int, dict[str, str]]:
    s.settimeout(30)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        assert chunk, raw
        raw += chunk
    lines = raw.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers


def test_two_hosts_patching_one_upload_at_once_one_is_refused(world, s3):
    tok = token(world, "creator-app", "upload", "origin-a")
    data = os.urandom(3 * MiB)
    url_a = create(world["a"], tok, len(data))
    url_b = on(url_a, world["b"])
    s = _held_patch(world["a"], url_a, tok, 0, 2 * MiB, data[:100_000])
    try:
        time.sleep(1.0)  # A has taken the upload's lease and is reading the body
        r = patch(url_b, tok, 0, data[:1 * MiB])
        assert r.status_code == 409 and r.json()["error"] == "upload_locked", r.text
        assert offset(url_b, tok) == 0
        s.sendall(data[100_000:2 * MiB])
        status, headers = _answer(s)
        assert status == 204 and headers["upload-offset"] == str(2 * MiB)
    finally:
        s.close()
    assert offset(url_a, tok) == offset(url_b, tok) == 2 * MiB
    # The lease is free again: B goes on from the offset A acknowledged.
    r = patch(url_b, tok, 2 * MiB, data[2 * MiB:])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    upload_id = url_a.rsplit("/", 1)[1]
    assert s3.get_object(Bucket="uploads", Key=f"uploads/{upload_id}")["Body"].read() == data


def test_hostile_offsets_lengths_and_another_clients_upload(world):
    tok = token(world, "creator-app", "upload", "origin-a")
    other = token(world, "other-app", "upload", "origin-b")
    url_a = create(world["a"], tok, 1000)
    url_b = on(url_a, world["b"])
    assert patch(url_a, tok, 0, b"x" * 300).status_code == 204
    for at in ("400", "100", "0"):  # ahead of, behind, far behind the offset
        r = patch(url_b, tok, int(at), b"y" * 10)
        assert r.status_code == 409 and r.json()["error"] == "offset_mismatch", r.text
    r = patch(url_b, tok, 0, b"y", **{"upload-offset": "99999999999999999999"})
    assert r.status_code == 400, r.text
    r = patch(url_b, tok, 300, b"z" * 701)  # past Upload-Length
    assert r.status_code == 413, r.text
    # Another client's upload, from the other host: as if it did not exist.
    assert head(url_b, other).status_code == 404
    r = patch(url_b, other, 300, b"o" * 10)
    assert r.status_code == 404, r.text
    assert httpx.delete(url_b, headers=bearer(other), timeout=30, trust_env=False).status_code == 404
    assert offset(url_a, tok) == offset(url_b, tok) == 300


def test_a_patch_ending_mid_part_is_in_the_store_when_acknowledged(world, s3):
    """Host A killed (SIGKILL) right after it answered: B resumes from what A acknowledged."""
    tok = token(world, "creator-app", "upload", "origin-a")
    data = os.urandom(6 * MiB + 777)
    url_a = create(world["a"], tok, len(data))
    upload_id = url_a.rsplit("/", 1)[1]
    r = patch(url_a, tok, 0, data[:700_000])
    assert r.status_code == 204 and r.headers["upload-offset"] == "700000"
    os.killpg(world["daemons"][0].proc.pid, 9)  # origin-a, at once
    world["daemons"][0].proc.wait(10)
    assert segments(s3, upload_id) == [700_000]
    url_b = on(url_a, world["b"])
    assert offset(url_b, tok) == 700_000
    r = patch(url_b, tok, 700_000, data[700_000:])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data)), r.text
    assert s3.get_object(Bucket="uploads", Key=f"uploads/{upload_id}")["Body"].read() == data
    assert segments(s3, upload_id) == []
