"""The edge on loopback: two POPs, two regionals and a shield (real daemons, in-process through
the role's entry point, in a thread with its own event loop) in front of a test origin whose
answers the test sets and whose fetches it counts; driven by curl and httpx over HTTP/1.1 and
h2c.

Covered: miss then hit with X-Cache, Age growing, max-age expiry and revalidation answered 304
(RefreshHit), no-store never stored, the POP -> regional -> shield -> origin chain (Via,
Server-Timing), 200 concurrent requests over both POPs collapsing into one origin fetch while the
body streams, a truncated origin body never stored, a dead origin answered with stale-if-error,
Range 206/416 from cache, methods and loops refused.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from tests.functional.edge_harness import ControlledOrigin, Obj, running_edge


@dataclass
class Env:
    origin: ControlledOrigin
    pops: list[str]
    admin: dict[str, str]
    portal: Any
    origin_port: int
    tasks: list[Any]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with running_edge(tmp_path_factory.mktemp("edge")) as cluster:
        yield Env(origin=cluster.origin, pops=cluster.pops, admin={e.id: cluster.admin(e.id) for e in cluster.cfg.edge},
                  portal=cluster.portal, origin_port=cluster.origin_port, tasks=cluster.others)


def client(http2: bool = False) -> httpx.Client:
    return httpx.Client(http1=not http2, http2=http2, trust_env=False, timeout=10)


def test_miss_then_hit_over_http1_and_h2c_with_age_growing(env):
    env.origin.objects["/t/1/seg-1.m4s"] = Obj(b"x" * 5000, [("cache-control", "max-age=60")])
    with client() as c:
        first = c.get(env.pops[0] + "/t/1/seg-1.m4s")
        assert first.status_code == 200 and first.content == b"x" * 5000
        assert first.headers["x-cache"] == "Miss from pop-1"
        assert "pop-1" in first.headers["via"]
    with client(http2=True) as c:
        second = c.get(env.pops[0] + "/t/1/seg-1.m4s")
        assert second.http_version == "HTTP/2"
        assert second.headers["x-cache"] == "Hit from pop-1" and second.content == b"x" * 5000
    out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", env.pops[0] + "/t/1/seg-1.m4s"],
                         capture_output=True, text=True, timeout=10).stdout.lower()
    assert "x-cache: hit from pop-1" in out and "content-length: 5000" in out
    assert env.origin.fetches["/t/1/seg-1.m4s"] == 1
    age0 = int(second.headers["age"])
    time.sleep(1.1)
    with client() as c:
        assert int(c.get(env.pops[0] + "/t/1/seg-1.m4s").headers["age"]) >= age0 + 1


def test_expiry_revalidates_with_304_and_stale_if_error_when_the_origin_is_down(env):
    env.origin.objects["/t/2/manifest.mpd"] = Obj(b"<MPD/>", [("cache-control", "max-age=1")], etag='"v1"')
    env.origin.objects["/t/2/seg.m4s"] = Obj(b"s" * 100, [("cache-control", "max-age=1, stale-if-error=60")])
    env.origin.objects["/t/2/must.m4s"] = Obj(b"m" * 100, [("cache-control", "max-age=1, must-revalidate")])
    with client() as c:
        assert c.get(env.pops[0] + "/t/2/manifest.mpd").headers["x-cache"] == "Miss from pop-1"
        assert c.get(env.pops[0] + "/t/2/seg.m4s").status_code == 200
        assert c.get(env.pops[0] + "/t/2/must.m4s").status_code == 200
        time.sleep(1.2)
        again = c.get(env.pops[0] + "/t/2/manifest.mpd")
        assert again.status_code == 200 and again.content == b"<MPD/>"
        assert again.headers["x-cache"] == "RefreshHit from pop-1"
        assert env.origin.conditionals["/t/2/manifest.mpd"] == 1  # the shield's If-None-Match
        assert env.origin.fetches["/t/2/manifest.mpd"] == 2
        # The origin goes away; the stored segment is stale, within stale-if-error.
        env.portal.call(env.origin.scope.cancel)
        try:
            time.sleep(0.3)
            stale = c.get(env.pops[1] + "/t/2/seg.m4s")
            assert stale.status_code == 200 and stale.content == b"s" * 100
            assert stale.headers["x-cache"] in ("StaleHit from pop-2", "Miss from pop-2")
            gone = c.get(env.pops[1] + "/t/2/never-stored")
            assert gone.status_code in (502, 504)
            # must-revalidate: never served stale; RFC 9111 5.2.2.2's 504 rather than a 502.
            must = c.get(env.pops[0] + "/t/2/must.m4s")
            assert must.status_code == 504 and must.content != b"m" * 100
        finally:
            env.tasks.append(env.portal.start_task(env.origin.run, env.origin_port)[0])


def test_stale_while_revalidate_private_and_expires_through_the_tiers(env):
    """RFC 5861's stale-while-revalidate answered at once and refreshed behind the answer;
    ``private`` never stored by a shared cache; ``Expires`` without max-age sets the lifetime."""
    import email.utils

    env.origin.objects["/t/6/swr.mpd"] = Obj(b"v1", [("cache-control", "max-age=1, stale-while-revalidate=60")])
    env.origin.objects["/t/6/private"] = Obj(b"mine", [("cache-control", "private, max-age=600")])
    env.origin.objects["/t/6/expires"] = Obj(b"e", [("expires", email.utils.formatdate(time.time() + 600, usegmt=True))])
    with client() as c:
        assert c.get(env.pops[0] + "/t/6/swr.mpd").content == b"v1"
        time.sleep(1.3)
        env.origin.objects["/t/6/swr.mpd"] = Obj(b"v2", [("cache-control", "max-age=60, stale-while-revalidate=60")])
        stale = c.get(env.pops[0] + "/t/6/swr.mpd")
        assert stale.content == b"v1" and stale.headers["x-cache"].startswith("StaleHit")  # not waiting for v2
        deadline = time.monotonic() + 10
        while c.get(env.pops[0] + "/t/6/swr.mpd").content != b"v2":  # refreshed in the background
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for _ in range(2):
            assert c.get(env.pops[0] + "/t/6/private").content == b"mine"
        assert env.origin.fetches["/t/6/private"] == 2
        assert c.get(env.pops[0] + "/t/6/expires").headers["x-cache"] == "Miss from pop-1"
        assert c.get(env.pops[0] + "/t/6/expires").headers["x-cache"] == "Hit from pop-1"
    assert env.origin.fetches["/t/6/expires"] == 1


def test_no_store_is_never_stored(env):
    env.origin.objects["/t/3/private"] = Obj(b"p", [("cache-control", "no-store")])
    with client() as c:
        for _ in range(2):
            r = c.get(env.pops[0] + "/t/3/private")
            assert r.headers["x-cache"] == "Miss from pop-1"
    assert env.origin.fetches["/t/3/private"] == 2


def test_the_chain_pop_regional_shield_origin(env):
    env.origin.objects["/t/4/seg.m4s"] = Obj(b"c" * 300, [("cache-control", "max-age=60")])
    with client() as c:
        r = c.get(env.pops[0] + "/t/4/seg.m4s")
        via = r.headers["via"]
        assert "shield-1" in via and "regional-" in via and via.endswith("pop-1 (headwater)")
        assert "Miss from shield-1" in r.headers["server-timing"]
        r2 = c.get(env.pops[1] + "/t/4/seg.m4s", headers={"host": "video.test"})
        assert r2.headers["x-cache"] == "Miss from pop-2"
        assert "Hit from regional-" in r2.headers["server-timing"]  # both POPs hash the key to one regional
    assert env.origin.fetches["/t/4/seg.m4s"] == 1


def test_200_concurrent_requests_over_two_pops_make_one_origin_fetch(env):
    body = bytes(range(256)) * 1024  # 256 KiB, streamed by the origin in 8 pieces over ~0.4 s
    env.origin.objects["/t/5/cold.m4s"] = Obj(body, [("cache-control", "max-age=60")], chunk_delay_s=0.05)
    results: list[tuple[int, bytes]] = []

    async def one(c: httpx.AsyncClient, base: str) -> None:
        r = await c.get(base + "/t/5/cold.m4s")
        results.append((r.status_code, r.content))

    async def main() -> None:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(trust_env=False, timeout=20, limits=limits) as h1, \
                httpx.AsyncClient(trust_env=False, timeout=20, http1=False, http2=True) as h2:
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, h1 if i % 2 else h2, env.pops[i % 2])

    anyio.run(main)
    assert len(results) == 200 and all(s == 200 and b == body for s, b in results)
    assert env.origin.fetches["/t/5/cold.m4s"] == 1
    # Counted where they collapsed: which POP's requests overlap its own fetch depends on timing
    # (a POP whose fetch hits the regional's finished copy is done before its other requests come).
    metrics = [httpx.get(env.admin[pop] + "/metrics", trust_env=False).text for pop in ("pop-1", "pop-2")]
    assert any('hw_edge_collapsed_total{tier="pop"}' in m for m in metrics)


def test_a_truncated_origin_body_is_never_stored(env):
    env.origin.objects["/t/6/broken.m4s"] = Obj(b"b" * 10000, [("cache-control", "max-age=60")], truncate=True)
    with client() as c:
        for _ in range(2):
            # A 502 when the break came before the head reached the POP, else a cut response.
            try:
                r = c.get(env.pops[0] + "/t/6/broken.m4s")
            except httpx.HTTPError:
                continue
            assert r.status_code == 502, r.status_code
    assert env.origin.fetches["/t/6/broken.m4s"] == 2  # nothing stored at any tier
    env.origin.objects["/t/6/broken.m4s"] = Obj(b"b" * 10000, [("cache-control", "max-age=60")])
    with client() as c:
        r = c.get(env.pops[0] + "/t/6/broken.m4s")
        assert r.status_code == 200 and len(r.content) == 10000


def test_ranges_from_cache_and_what_the_edge_refuses(env):
    env.origin.objects["/t/7/big.mp4"] = Obj(bytes(range(100)), [("cache-control", "max-age=60")])
    with client() as c:
        c.get(env.pops[0] + "/t/7/big.mp4")
        r = c.get(env.pops[0] + "/t/7/big.mp4", headers={"range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == bytes(range(10, 20))
        assert r.headers["content-range"] == "bytes 10-19/100"
        assert c.get(env.pops[0] + "/t/7/big.mp4", headers={"range": "bytes=500-"}).status_code == 416
        assert c.post(env.pops[0] + "/t/7/big.mp4", content=b"x").status_code == 405
        loop = c.get(env.pops[0] + "/t/7/big.mp4", headers={"via": "1.1 pop-1 (headwater)"})
        assert loop.status_code == 508
    health = httpx.get(env.admin["pop-1"] + "/healthz", trust_env=False).json()
    assert health["status"] == "ok" and health["tier"] == "pop" and "load" in health


def test_a_warm_hit_answers_as_the_full_path_does(env):
    """From its second hit a RAM entry is answered by the warm path (app._WarmHit): the same
    fields in the same order, HEAD, the counts; and whatever a request carries that the warm
    path does not decide (conditionals, Range, Via), or an entry gone stale and replaced, still
    gets the full path's answer."""
    url = env.pops[0] + "/t/8/warm.m4s"
    env.origin.objects["/t/8/warm.m4s"] = Obj(b"w" * 3000, [("cache-control", "max-age=2")], etag='"w1"')

    def fields(r: httpx.Response) -> list[tuple[str, str]]:
        return [(k, v) for k, v in r.headers.multi_items() if k not in ("date", "age")]

    def hits() -> int:
        return httpx.get(env.admin["pop-1"] + "/healthz", trust_env=False).json()["hits"]

    with client() as c:
        assert c.get(url).headers["x-cache"] == "Miss from pop-1"
        before = hits()
        full = c.get(url)  # the full path: remembered for the next request
        warm = [c.get(url) for _ in range(3)]
        assert hits() == before + 4
        for r in warm:
            assert r.status_code == 200 and r.content == b"w" * 3000
            assert fields(r) == fields(full) and r.headers["x-cache"] == "Hit from pop-1"
            assert int(r.headers["age"]) >= int(full.headers["age"])
        head = c.head(url)
        assert head.status_code == 200 and head.content == b""
        assert fields(head) == fields(full)
        with client(http2=True) as c2:  # (HTTP/2 writes the fields itself: Response.prepared is HTTP/1.1's)
            r2 = c2.get(url)
        assert r2.http_version == "HTTP/2" and r2.content == b"w" * 3000
        assert [h for h in fields(r2) if h[0] != "server"] == [h for h in fields(full) if h[0] != "server"]
        assert c.get(url, headers={"if-none-match": '"w1"'}).status_code == 304
        r = c.get(url, headers={"range": "bytes=0-9"})
        assert r.status_code == 206 and r.content == b"w" * 10
        assert c.get(url, headers={"via": "1.1 pop-1 (headwater)"}).status_code == 508
        # Gone stale: revalidated (the origin's new body, a new entry), then warm again.
        env.origin.objects["/t/8/warm.m4s"] = Obj(b"v" * 2000, [("cache-control", "max-age=60")], etag='"w2"')
        time.sleep(2.2)
        fresh = [c.get(url) for _ in range(3)]
        assert [r.content for r in fresh] == [b"v" * 2000] * 3
        assert fresh[-1].headers["etag"] == '"w2"' and fresh[-1].headers["x-cache"] == "Hit from pop-1"
        assert fresh[-1].headers["content-length"] == "2000"


def test_a_cached_error_is_answered_with_its_own_status_on_hits(env):
    """A 404 kept for error_ttl is a hit with status 404 (the whole-body plan once said 200)."""
    with client() as c:
        answers = [c.get(env.pops[0] + "/t/9/missing.m4s") for _ in range(3)]
        heads = c.head(env.pops[0] + "/t/9/missing.m4s")
    assert [(r.status_code, r.headers["x-cache"]) for r in answers] == [
        (404, "Miss from pop-1"), (404, "Hit from pop-1"), (404, "Hit from pop-1")]
    assert heads.status_code == 404 and heads.headers["x-cache"] == "Hit from pop-1"
    assert env.origin.fetches["/t/9/missing.m4s"] == 1
