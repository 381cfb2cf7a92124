"""The edge's video-aware features on loopback (the five-daemon cluster of edge_harness, driven
by httpx and curl): disk -> RAM promotion at a POP (edge.promote), segment prefetch
(edge.prefetch), compression of text responses by Accept-Encoding (edge.compress)."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import threading
import time

import brotli
import httpx
import pytest

from tests.functional.edge_harness import CONFIG, Obj, running_edge

# Segments under /v/ are prefetched three ahead; /n/ (the default behaviour) is not.
FEATURES = CONFIG.replace('''origin = "http://127.0.0.1:{origin}"
''', '''origin = "http://127.0.0.1:{origin}"

[[distributions.behaviours]]
path_pattern = "/v/*"
prefetch = 3

[[distributions.behaviours]]
path_pattern = "/m/*"
compress = true
''', 1).replace('''lon = -74.0
ram_size = "64MiB"
''', '''lon = -74.0
ram_size = "64MiB"
max_upstream_fetches = 4
''', 1)
assert FEATURES.count("max_upstream_fetches = 4") == 1  # pop-2's: three of them are a prefetch's


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_edge(tmp_path_factory.mktemp("edge-features"), FEATURES) as c:
        yield c


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


def tier_of(response: httpx.Response) -> str | None:
    m = re.search(r'tier;desc="(\w+)"', ", ".join(response.headers.get_list("server-timing")))
    return m.group(1) if m else None


def metric(c: httpx.Client, admin: str, name: str) -> float:
    text = c.get(admin + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_a_disk_hit_is_promoted_to_ram_on_its_second_hit_after_a_restart(cluster):
    cluster.origin.objects["/p/seg-7.m4s"] = Obj(b"p" * 200_000, [("cache-control", "max-age=600")])
    big = b"B" * (2 * 1024 * 1024)  # above promote_max_size (1 MiB): stays a disk hit
    cluster.origin.objects["/p/big.mp4"] = Obj(big, [("cache-control", "max-age=600")])
    pop = cluster.url("pop-1")
    with client() as c:
        miss = c.get(pop + "/p/seg-7.m4s")
        assert miss.headers["x-cache"] == "Miss from pop-1"
        hit = c.get(pop + "/p/seg-7.m4s")
        assert hit.headers["x-cache"] == "Hit from pop-1" and tier_of(hit) == "ram"
        assert c.get(pop + "/p/big.mp4").content == big
        cluster.stop("pop-1")  # its RAM tier is gone; its disk tier stays
        cluster.start("pop-1")
        tiers = []
        for _ in range(3):
            r = c.get(pop + "/p/seg-7.m4s")
            assert r.headers["x-cache"] == "Hit from pop-1" and r.content == b"p" * 200_000
            tiers.append(tier_of(r))
        # First disk hit: remembered; second: served from disk and copied; third: from RAM.
        assert tiers == ["disk", "disk", "ram"]
        for _ in range(3):
            r = c.get(pop + "/p/big.mp4")
            assert r.content == big and tier_of(r) == "disk"
        admin = cluster.admin("pop-1")
        assert metric(c, admin, "hw_edge_promotions_total") == 1
        declined = c.get(admin + "/metrics").text
        assert 'hw_edge_promotions_declined_total{reason="too_large",tier="pop"} 3' in declined or \
            'hw_edge_promotions_declined_total{tier="pop",reason="too_large"} 3' in declined
    assert cluster.origin.fetches["/p/seg-7.m4s"] == 1


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_segment_request_prefetches_the_next_ones_once_and_a_404_ends_the_run(cluster):
    origin = cluster.origin
    for n in range(1, 4):
        origin.objects[f"/v/r1/seg-{n:05d}.m4s"] = Obj(b"%d" % n * 3000, [("cache-control", "max-age=600")])
    pop = cluster.url("pop-1")
    with client() as c:
        assert c.get(pop + "/v/r1/seg-00001.m4s").headers["x-cache"] == "Miss from pop-1"
        # seg-2 and seg-3 are fetched once each; seg-4 is not published: the run ends there.
        wait_for(lambda: origin.fetches["/v/r1/seg-00004.m4s"] == 1)
        assert [origin.fetches[f"/v/r1/seg-{n:05d}.m4s"] for n in range(1, 5)] == [1, 1, 1, 1]
        health = c.get(cluster.admin("pop-1") + "/healthz").json()
        wait_for(lambda: c.get(cluster.admin("pop-1") + "/healthz").json()["prefetch"]["running"] == 0)
        second = c.get(pop + "/v/r1/seg-00002.m4s")
        assert second.headers["x-cache"] == "Hit from pop-1" and second.content == b"2" * 3000
        assert tier_of(second) == "disk"  # prefetches go to the disk tier, never into RAM
        # seg-2's request triggers a run too: seg-3 is cached, seg-4 is the 404 cached for error_ttl
        # (not refetched), seg-5 never asked for.
        third = c.get(pop + "/v/r1/seg-00003.m4s")
        assert third.headers["x-cache"] == "Hit from pop-1"
        time.sleep(0.3)
        assert origin.fetches["/v/r1/seg-00005.m4s"] == 0
        assert sum(origin.fetches[f"/v/r1/seg-{n:05d}.m4s"] for n in range(1, 5)) == 4
        health = c.get(cluster.admin("pop-1") + "/healthz").json()["prefetch"]
        assert health["used"] == 2 and health["prefetch_fetched"] == 2 and health["prefetch_not_found"] >= 1
        assert health["hit_ratio_gained"] > 0
        text = c.get(cluster.admin("pop-1") + "/metrics").text
        assert re.search(r'hw_edge_prefetch_total\{[^}]*result="fetched"[^}]*\} 2', text)
        assert re.search(r'hw_edge_prefetch_total\{[^}]*result="used"[^}]*\} 2', text)


def test_a_viewer_asking_during_a_prefetch_shares_its_fetch(cluster):
    origin = cluster.origin
    origin.objects["/v/r2/seg-1.m4s"] = Obj(b"a" * 4000, [("cache-control", "max-age=600")])
    # seg-2 comes slowly: the viewer's request arrives while the prefetch is fetching it.
    origin.objects["/v/r2/seg-2.m4s"] = Obj(b"b" * 80_000, [("cache-control", "max-age=600")], chunk_delay_s=0.15)
    pop = cluster.url("pop-2")
    with client() as c:
        assert c.get(pop + "/v/r2/seg-1.m4s").status_code == 200
        wait_for(lambda: origin.fetches["/v/r2/seg-2.m4s"] == 1)
        joined = c.get(pop + "/v/r2/seg-2.m4s")
        assert joined.status_code == 200 and joined.content == b"b" * 80_000
        assert joined.headers["x-cache"] == "Miss from pop-2"
        assert origin.fetches["/v/r2/seg-2.m4s"] == 1
        # Joined at the POP itself (not merely collapsed further up): pop-2 saw no other request.
        assert metric(c, cluster.admin("pop-2"), "hw_edge_collapsed_total") == 1
        assert c.get(cluster.admin("pop-2") + "/healthz").json()["prefetch"]["used"] >= 1


def test_a_prefetch_never_takes_the_upstream_slots_viewers_need(cluster):
    """pop-2 may have 4 fetches open upstream; a prefetch takes one only while a quarter (1)
    stays free and nobody queues. Three viewers held mid-answer leave it none: the run ends
    (no_slot) without going upstream; once they are done, prefetching resumes."""
    origin = cluster.origin
    hold = threading.Event()
    for n in range(3):
        origin.objects[f"/h/held-{n}"] = Obj(b"h" * 80_000, [("cache-control", "max-age=600")], hold=hold)
    for n in range(1, 4):
        origin.objects[f"/v/r3/seg-{n}.m4s"] = Obj(b"%d" % n * 3000, [("cache-control", "max-age=600")])
    pop, admin = cluster.url("pop-2"), cluster.admin("pop-2")
    bodies: list[bytes] = []

    def viewer(n: int) -> None:
        with client() as c:
            bodies.append(c.get(pop + f"/h/held-{n}").content)

    viewers = [threading.Thread(target=viewer, args=(n,)) for n in range(3)]
    try:
        for t in viewers:
            t.start()
        with client() as c:
            wait_for(lambda: c.get(admin + "/healthz").json()["upstream_slots"]["fetch"]["in_use"] == 3)
            assert c.get(pop + "/v/r3/seg-1.m4s").status_code == 200
            wait_for(lambda: c.get(admin + "/healthz").json()["prefetch"].get("prefetch_no_slot") == 1)
            time.sleep(0.3)
            assert origin.fetches["/v/r3/seg-2.m4s"] == 0  # never sent upstream
            slots = c.get(admin + "/healthz").json()["upstream_slots"]["fetch"]
            assert slots["refused_full"] == slots["refused_timeout"] == 0  # not a viewer's refusal
            assert re.search(r'hw_edge_prefetch_total\{[^}]*result="no_slot"[^}]*\} 1', c.get(admin + "/metrics").text)
            hold.set()
            for t in viewers:
                t.join(10)
            assert bodies == [b"h" * 80_000] * 3
            wait_for(lambda: c.get(admin + "/healthz").json()["upstream_slots"]["fetch"]["in_use"] == 0)
            # seg-2, asked for now, is a miss whose run prefetches seg-3 as usual
            assert c.get(pop + "/v/r3/seg-2.m4s").headers["x-cache"] == "Miss from pop-2"
            wait_for(lambda: origin.fetches["/v/r3/seg-3.m4s"] == 1)
    finally:
        hold.set()
        for t in viewers:
            t.join(10)


def test_no_prefetch_under_a_behaviour_without_it(cluster):
    origin = cluster.origin
    for n in (1, 2):
        origin.objects[f"/n/r1/seg-{n}.m4s"] = Obj(b"n" * 100, [("cache-control", "max-age=600")])
    with client() as c:
        assert c.get(cluster.url("pop-1") + "/n/r1/seg-1.m4s").status_code == 200
        time.sleep(0.5)
        assert origin.fetches["/n/r1/seg-2.m4s"] == 0
        assert c.get(cluster.url("pop-1") + "/n/r1/seg-2.m4s").headers["x-cache"] == "Miss from pop-1"


MPD = ("<?xml version='1.0'?><MPD>" + "".join(f"<S t='{i * 2000}' d='2000'/>" for i in range(800)) + "</MPD>").encode()
JSON = json.dumps({"titles": [{"id": i, "name": f"title {i}"} for i in range(500)]}).encode()


def raw_get(url: str, **headers: str) -> httpx.Response:
    """A GET whose body is read as sent (httpx does not decode it)."""
    with httpx.Client(trust_env=False, timeout=10) as c:
        with c.stream("GET", url, headers=headers) as r:
            r.raw_body = b"".join(r.iter_raw())
            return r


def test_text_is_compressed_once_per_encoding_and_round_trips_byte_exact(cluster):
    origin = cluster.origin
    origin.objects["/m/a.mpd"] = Obj(MPD, [("content-type", "application/dash+xml"),
                                           ("cache-control", "max-age=600")], etag='"m1"')
    pop = cluster.url("pop-1")
    br = raw_get(pop + "/m/a.mpd", **{"accept-encoding": "gzip, deflate, br"})
    assert br.status_code == 200 and br.headers["content-encoding"] == "br"
    assert brotli.decompress(br.raw_body) == MPD and len(br.raw_body) < len(MPD) // 4
    assert br.headers["etag"] == 'W/"m1"' and br.headers["vary"] == "Accept-Encoding"
    gz = raw_get(pop + "/m/a.mpd", **{"accept-encoding": "gzip;q=1.0, br;q=0.5"})
    assert gz.headers["content-encoding"] == "gzip" and gzip.decompress(gz.raw_body) == MPD
    plain = raw_get(pop + "/m/a.mpd", **{"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.raw_body == MPD
    assert plain.headers["etag"] == '"m1"' and plain.headers["vary"] == "Accept-Encoding"
    # Each encoding is stored once: hits now, byte-identical, over httpx (decoding) and curl.
    again = raw_get(pop + "/m/a.mpd", **{"accept-encoding": "br"})
    assert again.headers["x-cache"] == "Hit from pop-1" and again.raw_body == br.raw_body
    with httpx.Client(trust_env=False, timeout=10) as c:
        decoded = c.get(pop + "/m/a.mpd", headers={"accept-encoding": "gzip"})
        assert decoded.headers["x-cache"] == "Hit from pop-1" and decoded.content == MPD
    out = subprocess.run(["curl", "-s", "--compressed", "-D", "/dev/stderr", pop + "/m/a.mpd"],
                         capture_output=True, timeout=10)
    assert out.stdout == MPD and b"content-encoding: br" in out.stderr.lower()
    assert b"x-cache: hit from pop-1" in out.stderr.lower()
    assert origin.fetches["/m/a.mpd"] == 3  # br, gzip, identity: one fetch each, whole CDN
    # A Range request is served from the identity variant (a hit, no coding).
    part = raw_get(pop + "/m/a.mpd", **{"accept-encoding": "br", "range": "bytes=10-99"})
    assert part.status_code == 206 and "content-encoding" not in part.headers
    assert part.raw_body == MPD[10:100] and part.headers["x-cache"] == "Hit from pop-1"
    # The client's own conditional with the compressed variant's weak ETag: 304.
    cond = raw_get(pop + "/m/a.mpd", **{"accept-encoding": "br", "if-none-match": 'W/"m1"'})
    assert cond.status_code == 304


def test_what_is_never_compressed(cluster):
    origin = cluster.origin
    pre = gzip.compress(JSON)
    origin.objects["/m/pre.json"] = Obj(pre, [("content-type", "application/json"), ("content-encoding", "gzip"),
                                             ("cache-control", "max-age=600")], etag='"p1"')
    origin.objects["/m/seg.m4s"] = Obj(b"\x00" * 5000, [("content-type", "video/iso.segment"),
                                                       ("cache-control", "max-age=600")])
    origin.objects["/m/tiny.json"] = Obj(b'{"a": 1}', [("content-type", "application/json"),
                                                     ("cache-control", "max-age=600")])
    origin.objects["/m/nt.json"] = Obj(JSON, [("content-type", "application/json"),
                                              ("cache-control", "max-age=600, no-transform")])
    origin.objects["/n/big.json"] = Obj(JSON, [("content-type", "application/json"),
                                               ("cache-control", "max-age=600")])
    pop = cluster.url("pop-2")
    for _ in range(2):
        r = raw_get(pop + "/m/pre.json", **{"accept-encoding": "br"})  # the origin's gzip, as sent
        assert r.headers["content-encoding"] == "gzip" and r.raw_body == pre and r.headers["etag"] == '"p1"'
        for path, body in (("/m/seg.m4s", b"\x00" * 5000), ("/m/tiny.json", b'{"a": 1}'), ("/m/nt.json", JSON),
                           ("/n/big.json", JSON)):
            r = raw_get(pop + path, **{"accept-encoding": "br, gzip"})
            assert "content-encoding" not in r.headers and r.raw_body == body, path
    # Under a behaviour without compress, no Vary either; a refused coding is never sent.
    assert "vary" not in r.headers
    refused = raw_get(pop + "/m/nt.json", **{"accept-encoding": "br;q=0, gzip;q=0"})
    assert "content-encoding" not in refused.headers
