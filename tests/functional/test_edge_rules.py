"""The edge's request path on its real components: a POP and a shield (real daemons, in-process
through the role's entry point) in front of a test origin that answers Range requests and counts
every fetch and every body byte it sends.

Covered: signed URLs made by botocore's ``CloudFrontSigner`` and signed cookies (valid: cached
and served without the signature; expired, tampered, missing: 403 with the reason, the origin
untouched), a request flood from one client answered 429 and counted while the origin sees
nothing more, rules answering 403, the per-client connection cap (the HTTP core's
``on_connection`` hook), a seek into a 64 MiB object with 1 MiB slices fetching only the slices
it touches, Vary variants, behaviours' TTL clamps and keyed query strings, a cache key longer than
LMDB's key limit, and an unsafe method passed through invalidating the stored response.

Each test talks from its own loopback address (127.0.0.N): the POP's limits are per client.
"""

from __future__ import annotations

import datetime
import functools
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from botocore.signers import CloudFrontSigner
from Crypto.Hash import SHA1
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from headwater.config import load
from headwater.edge.daemon import run_edge
from headwater.edge.signedurl import cf_b64encode
from headwater.http import Request, Response, serve
from headwater.rpc.auth import ensure_cluster_secret
from tests.cluster import free_ports

MiB = 1024 * 1024
BIG = bytes(range(256)) * (64 * MiB // 256)  # 64 MiB, every byte's value is its offset mod 256


@dataclass
class Obj:
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    by_language: dict[str, bytes] | None = None  # Vary: Accept-Language


class RangeOrigin:
    """An origin the test controls: ``objects`` by path; fetches, body bytes, queries and
    request headers recorded by path. Answers one byte range with 206, as S3 does."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.fetches: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.queries: dict[str, list[str]] = {}
        self.seen: dict[str, list[Any]] = {}
        self.bodies: dict[str, list[bytes]] = {}

    async def app(self, request: Request) -> Response:
        path = request.path
        self.fetches[path] += 1
        self.queries.setdefault(path, []).append(request.query)
        self.seen.setdefault(path, []).append(list(request.headers))
        if request.method not in ("GET", "HEAD"):
            self.bodies.setdefault(path, []).append(await request.body.read_all(1 << 20))
            return Response(200, [("content-type", "text/plain")], b"done")
        obj = self.objects.get(path)
        if obj is None:
            return Response(404, [("content-length", "0")], b"")
        body = obj.body
        headers = list(obj.headers)
        if obj.by_language is not None:
            body = obj.by_language.get(request.headers.get("accept-language") or "", b"default")
            headers.append(("vary", "Accept-Language"))
        rng = request.headers.get("range")
        if rng and rng.startswith("bytes=") and "," not in rng:
            first, _, last = rng[6:].partition("-")
            a = int(first)
            b = min(int(last) if last else len(body) - 1, len(body) - 1)
            if a >= len(body):
                return Response(416, [("content-range", f"bytes */{len(body)}")], b"")
            piece = body[a:b + 1]
            self.bytes_sent[path] += len(piece)
            return Response(206, headers + [("content-range", f"bytes {a}-{b}/{len(body)}")], piece)
        self.bytes_sent[path] += len(body)
        return Response(200, headers, body)


CONFIG = """
[cluster]
name = "edge-rules-test"
data_dir = "var"

[[cdn.keys]]
id = "K2JCJMDEHXQW5F"
public_key_file = "{pub}"

[cdn.client_limits]
requests_per_second = 20
burst = 20
max_connections_per_client = 4

[[cdn.rules]]
name = "no-bad-bots"
action = "block"
user_agent_contains = ["BadBot"]

[[cdn.rules]]
name = "no-admin"
action = "block"
paths = ["/admin/*"]

[[cdn.rules]]
name = "not-in-gb"
action = "block"
countries = ["GB"]
paths = ["/regional/*"]

[[cdn.rules]]
name = "no-zz-at-all"
action = "block"
countries = ["ZZ"]

[[cdn.geo.rules]]
cidr = "127.0.0.44/32"
lat = 51.5
lon = -0.12
country = "GB"

[[cdn.geo.rules]]
cidr = "127.0.0.45/32"
lat = 48.85
lon = 2.35
country = "FR"

[[cdn.geo.rules]]
cidr = "127.0.0.46/32"
lat = 0.0
lon = 0.0
country = "ZZ"

[[distributions]]
name = "video"
hostnames = ["video.test"]
origin = "http://127.0.0.1:{origin}"

[[distributions.behaviours]]
path_pattern = "/private/*"
trusted_keys = ["K2JCJMDEHXQW5F"]

[[distributions.behaviours]]
path_pattern = "/big/*"
slice_size = "1MiB"

[[distributions.behaviours]]
path_pattern = "/vary/*"
forward_headers = ["accept-language"]

[[distributions.behaviours]]
path_pattern = "/ttl-min/*"
min_ttl = 30
default_ttl = 60

[[distributions.behaviours]]
path_pattern = "/ttl-max/*"
max_ttl = 1
default_ttl = 1

[[distributions.behaviours]]
path_pattern = "/keyed/*"
key_query = ["v"]

[[distributions.behaviours]]
path_pattern = "/api/*"
allowed_methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]

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


@dataclass
class Env:
    origin: RangeOrigin
    pop: str
    shield: str
    admin: dict[str, str]
    pop_port: int
    key: Any


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder: Path = tmp_path_factory.mktemp("edge-rules")
    key = RSA.generate(2048)
    (folder / "cf.pub").write_bytes(key.public_key().export_key())
    ports = free_ports(5)
    path = folder / "cluster.toml"
    path.write_text(CONFIG.format(pub=folder / "cf.pub", origin=ports[4], p=ports))
    cfg = load(str(path))
    ensure_cluster_secret(cfg, env={})  # what `headwater up` does first: the tiers sign their purge pulls
    origin = RangeOrigin()
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        futures = [portal.start_task(functools.partial(serve, origin.app, host="127.0.0.1", port=ports[4]))[0]]
        for node in cfg.edge:
            futures.append(portal.start_task(functools.partial(run_edge, cfg, node))[0])
        yield Env(origin=origin, pop=f"http://127.0.0.1:{ports[0]}", shield=f"http://127.0.0.1:{ports[2]}",
                  admin={e.id: f"http://127.0.0.1:{e.admin_port}" for e in cfg.edge}, pop_port=ports[0], key=key)
        for f in futures:
            f.cancel()


def client(source: str) -> httpx.Client:
    """A client whose connections come from ``source`` (a loopback address: its own POP client)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), trust_env=False, timeout=20)


def metric(env: Env, node: str, name: str, **labels: str) -> float:
    text = httpx.get(env.admin[node] + "/metrics", trust_env=False).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
        elif not want and line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def signer(env: Env) -> CloudFrontSigner:
    return CloudFrontSigner("K2JCJMDEHXQW5F", lambda message: pkcs1_15.new(env.key).sign(SHA1.new(message)))


def in_(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(time.time() + seconds, tz=datetime.timezone.utc)


# --- signed URLs and cookies -------------------------------------------------------------------

def test_signed_urls_from_botocore_and_signed_cookies(env):
    env.origin.objects["/private/a.m4s"] = Obj(b"secret" * 100, [("cache-control", "max-age=600")])
    url = env.pop + "/private/a.m4s"
    with client("127.0.0.2") as c:
        missing = c.get(url)
        assert missing.status_code == 403 and b"missing" in missing.content
        assert env.origin.fetches["/private/a.m4s"] == 0

        first = c.get(signer(env).generate_presigned_url(url, date_less_than=in_(3600)))
        assert first.status_code == 200 and first.content == b"secret" * 100
        assert first.headers["x-cache"] == "Miss from pop-1"
        # Another signature for the same object: the signing parameters are not in the cache key.
        second = c.get(signer(env).generate_presigned_url(url, date_less_than=in_(7200)))
        assert second.status_code == 200 and second.headers["x-cache"] == "Hit from pop-1"
        assert env.origin.fetches["/private/a.m4s"] == 1
        # No tier behind the POP saw a signature.
        assert env.origin.queries["/private/a.m4s"] == [""]

        expired = c.get(signer(env).generate_presigned_url(url, date_less_than=in_(-60)))
        assert expired.status_code == 403 and b"expired" in expired.content
        good = signer(env).generate_presigned_url(url, date_less_than=in_(3600))
        tampered = c.get(good.replace("/private/a.m4s", "/private/b.m4s"))
        assert tampered.status_code == 403 and b"bad-signature" in tampered.content
        assert c.get(good.replace("Signature=", "Signature=A")).status_code == 403
        assert env.origin.fetches["/private/a.m4s"] == 1 and env.origin.fetches["/private/b.m4s"] == 0

        # Signed cookies with a custom policy (botocore's builder) granting /private/*.
        policy = signer(env).build_policy(env.pop + "/private/*", date_less_than=in_(600)).encode()
        cookies = {"CloudFront-Policy": cf_b64encode(policy),
                   "CloudFront-Signature": cf_b64encode(pkcs1_15.new(env.key).sign(SHA1.new(policy))),
                   "CloudFront-Key-Pair-Id": "K2JCJMDEHXQW5F"}
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        by_cookie = c.get(url, headers={"cookie": cookie + "; theme=dark"})
        assert by_cookie.status_code == 200 and by_cookie.headers["x-cache"] == "Hit from pop-1"
        bad = cookie.replace("CloudFront-Signature=", "CloudFront-Signature=AAAA")
        assert c.get(url, headers={"cookie": bad}).status_code == 403
    assert metric(env, "pop-1", "hw_edge_rejected_total", reason="signature:expired") >= 1


# --- limits -----------------------------------------------------------------------------------

def test_a_flood_from_one_client_gets_429_and_never_reaches_upstream(env):
    env.origin.objects["/flood/x.m4s"] = Obj(b"f" * 100, [("cache-control", "max-age=600")])
    shield_before = metric(env, "shield-1", "hw_edge_requests_total")
    with client("127.0.0.3") as c:
        statuses = Counter()
        retry_after = set()
        for _ in range(80):
            r = c.get(env.pop + "/flood/x.m4s")
            statuses[r.status_code] += 1
            if r.status_code == 429:
                retry_after.add(r.headers["retry-after"])
                assert r.headers["x-cache"] == "LimitExceeded from pop-1"
    assert statuses[429] >= 40 and statuses[200] >= 20, statuses
    assert retry_after and all(int(v) >= 1 for v in retry_after)
    assert env.origin.fetches["/flood/x.m4s"] == 1
    assert metric(env, "shield-1", "hw_edge_requests_total") == shield_before + 1
    assert metric(env, "pop-1", "hw_edge_rejected_total", tier="pop", reason="rate") >= statuses[429]
    # Another client is not limited by this one's flood; a forged X-Forwarded-For changes nothing.
    with client("127.0.0.4") as c:
        assert c.get(env.pop + "/flood/x.m4s").status_code == 200
    # Sent at once on one HTTP/2 connection, so the bucket cannot refill between them however
    # slow the machine is: 40 requests against a burst of 20.
    async def forge() -> Counter:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3", http1=False, http2=True)
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=20) as c:
            statuses: Counter = Counter()

            async def one(i: int) -> None:
                r = await c.get(env.pop + "/flood/x.m4s", headers={"x-forwarded-for": f"10.9.9.{i}"})
                statuses[r.status_code] += 1

            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(one, i)
            return statuses

    forged = anyio.run(forge)
    assert forged[429] >= 10, forged


def test_rules_block_by_user_agent_and_path(env):
    env.origin.objects["/admin/panel"] = Obj(b"admin", [("cache-control", "max-age=600")])
    env.origin.objects["/ok/seg.m4s"] = Obj(b"ok", [("cache-control", "max-age=600")])
    with client("127.0.0.5") as c:
        bot = c.get(env.pop + "/ok/seg.m4s", headers={"user-agent": "Mozilla/5.0 BadBot/2.1"})
        assert bot.status_code == 403
        assert c.get(env.pop + "/admin/panel").status_code == 403
        assert c.get(env.pop + "/ok/seg.m4s").status_code == 200
    assert env.origin.fetches["/admin/panel"] == 0 and env.origin.fetches["/ok/seg.m4s"] == 1
    assert metric(env, "pop-1", "hw_edge_rejected_total", reason="rule:no-bad-bots") == 1
    assert metric(env, "pop-1", "hw_edge_rejected_total", reason="rule:no-admin") == 1


def test_a_url_past_8_KiB_is_414_and_goes_nowhere(env):
    long_path = "/ok/" + "a" * 8200
    near = "/ok/" + "b" * 7000
    env.origin.objects[near] = Obj(b"near", [("cache-control", "max-age=600")])
    with client("127.0.0.8") as c:
        refused = c.get(env.pop + long_path)
        assert refused.status_code == 414 and b"8192" in refused.content
        assert c.get(env.pop + "/ok/x?" + "q" * 8200).status_code == 414  # the query counts too
        assert c.get(env.pop + near).content == b"near"
    assert env.origin.fetches[long_path] == 0 and env.origin.fetches["/ok/x"] == 0
    assert metric(env, "pop-1", "hw_edge_rejected_total", reason="url_too_long") == 2


def test_rules_by_country_from_the_geo_data(env):
    env.origin.objects["/regional/seg.m4s"] = Obj(b"regional", [("cache-control", "max-age=600")])
    with client("127.0.0.44") as gb:  # placed in GB by [[cdn.geo.rules]]
        assert gb.get(env.pop + "/regional/seg.m4s").status_code == 403
    assert env.origin.fetches["/regional/seg.m4s"] == 0
    with client("127.0.0.45") as fr, client("127.0.0.47") as unplaced:  # FR; a private address: no country
        assert fr.get(env.pop + "/regional/seg.m4s").status_code == 200
        assert unplaced.get(env.pop + "/regional/seg.m4s").status_code == 200
    assert metric(env, "pop-1", "hw_edge_rejected_total", reason="rule:not-in-gb") == 1
    with client("127.0.0.46") as zz:  # a rule by country alone, any path
        assert zz.get(env.pop + "/ok/seg.m4s").status_code == 403
    assert metric(env, "pop-1", "hw_edge_rejected_total", reason="rule:no-zz-at-all") == 1


def test_connection_cap_per_client(env):
    opened = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", env.pop_port), source_address=("127.0.0.6", 0))
            opened.append(s)
        time.sleep(0.1)
        fifth = socket.create_connection(("127.0.0.1", env.pop_port), source_address=("127.0.0.6", 0))
        fifth.settimeout(5)
        try:
            fifth.sendall(b"GET /ok/seg.m4s HTTP/1.1\r\nhost: video.test\r\n\r\n")
            assert fifth.recv(100) == b""  # closed before a byte was read
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            fifth.close()
        # The four open ones still work.
        opened[0].sendall(b"GET /ok/seg.m4s HTTP/1.1\r\nhost: video.test\r\n\r\n")
        opened[0].settimeout(5)
        assert opened[0].recv(100).startswith(b"HTTP/1.1 ")
    finally:
        for s in opened:
            s.close()
    assert metric(env, "pop-1", "hw_edge_rejected_total", reason="connections") >= 1
    time.sleep(0.2)  # closed connections are forgotten: this client may connect again
    with client("127.0.0.6") as c:
        assert c.get(env.pop + "/ok/seg.m4s").status_code == 200


# --- slices -----------------------------------------------------------------------------------

def test_a_seek_into_a_64_MiB_object_fetches_only_the_slices_it_touches(env):
    env.origin.objects["/big/movie.mp4"] = Obj(BIG, [("cache-control", "max-age=600"), ("etag", '"m1"'),
                                                     ("content-type", "video/mp4")])
    start = 40 * MiB + 100
    end = start + 2 * MiB - 1  # touches slices 40, 41 and 42
    with client("127.0.0.7") as c:
        r = c.get(env.pop + "/big/movie.mp4", headers={"range": f"bytes={start}-{end}"})
        assert r.status_code == 206 and r.content == BIG[start:end + 1]
        assert r.headers["content-range"] == f"bytes {start}-{end}/{len(BIG)}"
        assert r.headers["x-cache"] == "Miss from pop-1"
        assert env.origin.fetches["/big/movie.mp4"] == 3
        assert env.origin.bytes_sent["/big/movie.mp4"] == 3 * MiB
        ranges = [dict(h).get("range") for h in env.origin.seen["/big/movie.mp4"]]
        assert ranges == [f"bytes={i * MiB}-{(i + 1) * MiB - 1}" for i in (40, 41, 42)]
        # The same region again, and a part of it: from the POP's slices, nothing upstream.
        again = c.get(env.pop + "/big/movie.mp4", headers={"range": f"bytes={41 * MiB}-{41 * MiB + 999}"})
        assert again.status_code == 206 and again.content == BIG[41 * MiB:41 * MiB + 1000]
        assert again.headers["x-cache"] == "Hit from pop-1"
        # Two ranges across known and new slices: multipart, only the new slice fetched.
        multi = c.get(env.pop + "/big/movie.mp4", headers={"range": f"bytes=0-9,{42 * MiB}-{42 * MiB + 9}"})
        assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
        assert BIG[:10] in multi.content and BIG[42 * MiB:42 * MiB + 10] in multi.content
        assert env.origin.fetches["/big/movie.mp4"] == 4
        # Past the end: 416 from the object's record.
        assert c.get(env.pop + "/big/movie.mp4", headers={"range": f"bytes={len(BIG)}-"}).status_code == 416
        head = c.head(env.pop + "/big/movie.mp4")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(BIG))
    assert env.origin.fetches["/big/movie.mp4"] == 4


def test_a_small_object_under_a_slicing_behaviour_is_stored_whole(env):
    env.origin.objects["/big/small.mp4"] = Obj(b"s" * 5000, [("cache-control", "max-age=600")])
    with client("127.0.0.7") as c:
        assert c.get(env.pop + "/big/small.mp4").content == b"s" * 5000
        r = c.get(env.pop + "/big/small.mp4", headers={"range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == b"s" * 10 and r.headers["x-cache"] == "Hit from pop-1"
    assert env.origin.fetches["/big/small.mp4"] == 1


# --- behaviours: Vary, TTL clamps, keyed query strings, long keys, unsafe methods ---------------

def test_vary_variants_are_stored_side_by_side(env):
    env.origin.objects["/vary/menu.json"] = Obj(b"", [("cache-control", "max-age=600")],
                                                by_language={"en": b"hello", "fr": b"bonjour"})
    with client("127.0.0.8") as c:
        for lang, body, result in (("en", b"hello", "Miss"), ("fr", b"bonjour", "Miss"),
                                   ("en", b"hello", "Hit"), ("fr", b"bonjour", "Hit")):
            r = c.get(env.pop + "/vary/menu.json", headers={"accept-language": lang})
            assert r.content == body and r.headers["x-cache"] == f"{result} from pop-1", (lang, r.headers)
    assert env.origin.fetches["/vary/menu.json"] == 2


def test_behaviour_ttl_clamps_and_keyed_query_strings(env):
    env.origin.objects["/ttl-min/a"] = Obj(b"min", [("cache-control", "max-age=1")])
    env.origin.objects["/ttl-max/a"] = Obj(b"max", [("cache-control", "max-age=3600")])
    env.origin.objects["/keyed/a"] = Obj(b"keyed", [("cache-control", "max-age=600")])
    with client("127.0.0.9") as c:
        c.get(env.pop + "/ttl-min/a")
        c.get(env.pop + "/ttl-max/a")
        assert c.get(env.pop + "/keyed/a?v=1&utm_source=x").headers["x-cache"] == "Miss from pop-1"
        assert c.get(env.pop + "/keyed/a?utm_source=y&v=1").headers["x-cache"] == "Hit from pop-1"
        assert c.get(env.pop + "/keyed/a?v=2").headers["x-cache"] == "Miss from pop-1"
        time.sleep(1.3)
        # max-age=1 raised to min_ttl=30: still fresh; max-age=3600 cut to max_ttl=1: refetched.
        assert c.get(env.pop + "/ttl-min/a").headers["x-cache"] == "Hit from pop-1"
        assert c.get(env.pop + "/ttl-max/a").headers["x-cache"] != "Hit from pop-1"
    assert env.origin.fetches["/ttl-min/a"] == 1 and env.origin.fetches["/ttl-max/a"] == 2
    # Only the keyed parameter went upstream.
    assert env.origin.queries["/keyed/a"] == ["v=1", "v=2"]


def test_a_cache_key_longer_than_lmdb_allows_is_stored_and_hit(env):
    env.origin.objects["/keyed/long"] = Obj(b"long", [("cache-control", "max-age=600")])
    target = "/keyed/long?v=" + "x" * 700
    with client("127.0.0.10") as c:
        assert c.get(env.pop + target).headers["x-cache"] == "Miss from pop-1"
        assert c.get(env.pop + target).headers["x-cache"] == "Hit from pop-1"
        # The shield keeps only a disk tier: its LMDB index holds the key's digest.
        shield = c.get(env.shield + target)
        assert shield.content == b"long" and shield.headers["x-cache"] == "Hit from shield-1"
        assert c.get(env.pop + "/keyed/long?v=" + "x" * 699 + "y").headers["x-cache"] == "Miss from pop-1"
    assert env.origin.fetches["/keyed/long"] == 2


def test_an_unsafe_method_is_passed_through_and_invalidates(env):
    env.origin.objects["/api/item"] = Obj(b"v1", [("cache-control", "max-age=600")])
    with client("127.0.0.11") as c:
        assert c.get(env.pop + "/api/item").headers["x-cache"] == "Miss from pop-1"
        assert c.get(env.pop + "/api/item").headers["x-cache"] == "Hit from pop-1"
        posted = c.post(env.pop + "/api/item", content=b"new value")
        assert posted.status_code == 200 and posted.content == b"done"
        assert env.origin.bodies["/api/item"] == [b"new value"]
        env.origin.objects["/api/item"] = Obj(b"v2", [("cache-control", "max-age=600")])
        after = c.get(env.pop + "/api/item")
        assert after.content == b"v2" and after.headers["x-cache"] == "Miss from pop-1"
        # Not allowed outside /api/*.
        assert c.post(env.pop + "/ok/seg.m4s", content=b"x").status_code == 405
    assert env.origin.fetches["/api/item"] == 3  # GET, POST, GET (both tiers invalidated)
