"""Invalidation end to end: two POPs, two regionals and a shield (real daemons in-process, see
edge_harness) in front of a counting origin; purges issued with ``headwater cdn invalidate`` (a
real subprocess signing with the cluster secret) and with the HTTP API.

Covered: a wildcard path purge reaches every POP and tier (the next request is a Miss through the
shield and the origin sees a fetch) while other paths stay hits; a Surrogate-Key tag purge sent to
a POP (forwarded to the shield, applied at that POP before it answers) and the header never reaching
viewers; a POP stopped during a purge, restarted while the shield is down, refuses to serve until
it has caught up, then misses the purged object; the shield's log surviving its restart;
requests without valid credentials (none, another secret, a tampered body, a replay, an old
timestamp) refused with nothing changed; ``headwater cdn sign`` making a URL the verifier accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from headwater.edge.adminauth import AdminKey, admin_key
from headwater.rpc.auth import cluster_secret
from tests.functional.edge_harness import Obj, running_edge

LONG = [("cache-control", "max-age=600")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_edge(tmp_path_factory.mktemp("edge-purge")) as c:
        yield c


def get(c: httpx.Client, base: str, path: str) -> httpx.Response:
    r = c.get(base + path)
    assert r.status_code == 200, (r.status_code, r.text)
    return r


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


def cdn(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headwater", "cdn", *args, "-c", str(cluster.config_path)],
                          capture_output=True, text=True, timeout=30)


def purge_state(cluster, node_id: str) -> dict:
    return httpx.get(cluster.admin(node_id) + "/healthz", trust_env=False, timeout=5).json()["purge"]["video"]


def warm(cluster, c: httpx.Client, paths: list[str]) -> None:
    """Each path cached at both POPs (and so at a regional and the shield): a hit at each POP."""
    for path in paths:
        for pop in cluster.pops:
            get(c, pop, path)
            assert get(c, pop, path).headers["x-cache"].startswith("Hit from pop-")


def test_a_wildcard_purge_reaches_every_pop_and_tier(cluster):
    origin = cluster.origin
    for name in ("a", "b"):
        origin.objects[f"/titles/1/{name}.m4s"] = Obj(name.encode() * 1000, LONG)
    origin.objects["/titles/2/c.m4s"] = Obj(b"c" * 1000, LONG)
    paths = ["/titles/1/a.m4s", "/titles/1/b.m4s", "/titles/2/c.m4s"]
    with client() as c:
        warm(cluster, c, paths)
        assert [origin.fetches[p] for p in paths] == [1, 1, 1]
        before = purge_state(cluster, "shield-1")["last_seq"]

        done = cdn(cluster, "invalidate", "video", "/titles/1/*")
        assert done.returncode == 0, done.stderr
        assert "accepted by shield-1" in done.stdout and "applied at every tier (5 of 5)" in done.stdout
        for e in cluster.cfg.edge:
            assert purge_state(cluster, e.id)["last_seq"] == before + 1

        # Gone from every POP and tier: each POP misses, and so does every tier behind it.
        for pop, path in zip(cluster.pops, ["/titles/1/a.m4s", "/titles/1/b.m4s"]):
            r = get(c, pop, path)
            assert r.headers["x-cache"].startswith("Miss from pop-")
            assert 'Miss from shield-1' in r.headers["server-timing"] and "Hit from" not in r.headers["server-timing"]
            assert r.content == path.split("/")[-1][0].encode() * 1000
        assert [origin.fetches[p] for p in paths] == [2, 2, 1]
        # Other paths are still hits everywhere.
        for pop in cluster.pops:
            assert get(c, pop, "/titles/2/c.m4s").headers["x-cache"].startswith("Hit from pop-")
        # And the purged objects are cached again from their new fetch.
        assert get(c, cluster.pops[0], "/titles/1/a.m4s").headers["x-cache"] == "Hit from pop-1"
    assert origin.fetches["/titles/2/c.m4s"] == 1


def test_a_tag_purge_through_a_pop_with_the_http_api(cluster):
    origin = cluster.origin
    origin.objects["/titles/3/x.mpd"] = Obj(b"x", LONG + [("surrogate-key", "title-3 season-1")])
    origin.objects["/titles/3/y.m4s"] = Obj(b"y", LONG + [("surrogate-key", "title-3")])
    origin.objects["/titles/4/z.m4s"] = Obj(b"z", LONG + [("surrogate-key", "title-4")])
    paths = ["/titles/3/x.mpd", "/titles/3/y.m4s", "/titles/4/z.m4s"]
    key = admin_key(cluster_secret(cluster.cfg))
    with client() as c:
        warm(cluster, c, paths)
        r = get(c, cluster.pops[0], "/titles/3/x.mpd")
        assert "surrogate-key" not in r.headers and "hw-purge-seq" not in r.headers  # never to viewers

        body = json.dumps({"distribution": "video", "tags": ["title-3"]}).encode()
        answer = c.post(cluster.admin("pop-2") + "/_hw/invalidate", content=body,
                        headers={"authorization": key.authorization("POST", "/_hw/invalidate", body, now=time.time())})
        assert answer.status_code == 201, answer.text
        doc = answer.json()
        assert doc["at"] == "pop-2" and doc["applied_here"] is True and doc["seq"] >= 1
        # Read-your-own-purge at the POP that was asked: no wait.
        for path in paths[:2]:
            r = get(c, cluster.pops[1], path)
            assert r.headers["x-cache"] == "Miss from pop-2" and "Miss from shield-1" in r.headers["server-timing"]
        assert get(c, cluster.pops[1], "/titles/4/z.m4s").headers["x-cache"] == "Hit from pop-2"
        _wait_applied(cluster, "pop-1", doc["seq"])
        assert get(c, cluster.pops[0], "/titles/3/y.m4s").headers["x-cache"] == "Miss from pop-1"
        assert get(c, cluster.pops[0], "/titles/4/z.m4s").headers["x-cache"] == "Hit from pop-1"
    assert [origin.fetches[p] for p in paths] == [2, 2, 1]


def _wait_applied(cluster, node_id: str, seq: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while purge_state(cluster, node_id)["last_seq"] < seq:
        assert time.monotonic() < deadline, f"{node_id} did not apply purge {seq}"
        time.sleep(0.05)


def test_a_pop_down_during_a_purge_catches_up_before_it_serves(cluster, capsys):
    from headwater.cli import main  # the same command in-process (a subprocess costs seconds under load)

    origin = cluster.origin
    origin.objects["/titles/5/seg.m4s"] = Obj(b"5" * 2000, LONG)
    with client() as c:
        warm(cluster, c, ["/titles/5/seg.m4s"])
        cluster.stop("pop-2")
        code = main(["cdn", "invalidate", "video", "/titles/5/seg.m4s", "--wait", "10",
                     "-c", str(cluster.config_path)])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "applied at 4 of 5 tiers" in err and "pop-2 (ConnectError" in err
        seq = purge_state(cluster, "shield-1")["last_seq"]

        # pop-2 comes back while the shield (the purge home) is down: it cannot catch up, so it
        # does not serve its disk tier's copy of the purged object.
        cluster.stop("shield-1")
        cluster.start("pop-2")
        health = httpx.get(cluster.admin("pop-2") + "/healthz", trust_env=False, timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "catching_up"
        refused = c.get(cluster.pops[1] + "/titles/5/seg.m4s")
        assert refused.status_code == 503 and "catching up" in refused.text

        cluster.start("shield-1")  # its log survived the restart: same epoch, same numbers
        _wait_applied(cluster, "pop-2", seq)
        assert httpx.get(cluster.admin("pop-2") + "/healthz", trust_env=False).status_code == 200
        assert purge_state(cluster, "pop-2")["epoch"] == purge_state(cluster, "shield-1")["epoch"]
        r = get(c, cluster.pops[1], "/titles/5/seg.m4s")
        assert r.headers["x-cache"] == "Miss from pop-2" and "Miss from shield-1" in r.headers["server-timing"]
    assert origin.fetches["/titles/5/seg.m4s"] == 2


def test_admin_requests_without_valid_credentials_change_nothing(cluster):
    origin = cluster.origin
    origin.objects["/titles/6/a.m4s"] = Obj(b"6" * 100, LONG)
    shield = cluster.admin("shield-1")
    good = admin_key(cluster_secret(cluster.cfg))
    other = AdminKey(good.cluster, b"\x01" * 32)  # another secret
    body = json.dumps({"distribution": "video", "paths": ["/titles/6/*"]}).encode()
    now = time.time()
    with client() as c:
        warm(cluster, c, ["/titles/6/a.m4s"])
        seq = purge_state(cluster, "shield-1")["last_seq"]

        def post(base: str, content: bytes, auth: str | None) -> httpx.Response:
            return c.post(base + "/_hw/invalidate", content=content,
                          headers={"authorization": auth} if auth is not None else {})

        none = post(shield, body, None)
        assert none.status_code == 401 and none.headers["www-authenticate"] == "HW-HMAC-SHA256"
        assert post(cluster.admin("pop-1"), body, None).status_code == 401  # at a POP, before forwarding
        assert post(shield, body, "Bearer whatever").status_code == 401
        assert post(shield, body, other.authorization("POST", "/_hw/invalidate", body, now=now)).status_code == 403
        decoy = json.dumps({"distribution": "video", "paths": ["/titles/6/nothing"]}).encode()
        tampered = post(shield, body, good.authorization("POST", "/_hw/invalidate", decoy, now=now))
        assert tampered.status_code == 403 and "signature" in tampered.json()["error"]
        stale = post(shield, body, good.authorization("POST", "/_hw/invalidate", body, now=now - 3600))
        assert stale.status_code == 403 and "timestamp" in stale.json()["error"]
        feed = c.get(shield + "/_hw/purges?distribution=video&since=0")
        assert feed.status_code == 401
        # A valid request is accepted once; the same bytes again are a replay.
        auth = good.authorization("POST", "/_hw/invalidate", decoy, now=now)
        assert post(shield, decoy, auth).status_code == 201
        replay = post(shield, decoy, auth)
        assert replay.status_code == 403 and "replay" in replay.json()["error"]
        assert purge_state(cluster, "shield-1")["last_seq"] == seq + 1  # only the decoy
        for pop in cluster.pops:
            assert get(c, pop, "/titles/6/a.m4s").headers["x-cache"].startswith("Hit from pop-")
    assert origin.fetches["/titles/6/a.m4s"] == 1


def test_cdn_sign_prints_a_url_the_verifier_accepts(cluster, tmp_path, capsys):
    from Crypto.PublicKey import RSA

    from headwater.cli import main
    from headwater.config import load
    from headwater.edge.signedurl import Verifier

    key = RSA.generate(1024)
    (tmp_path / "k.pem").write_bytes(key.export_key())
    (tmp_path / "k.pub").write_bytes(key.public_key().export_key())
    text = cluster.config_path.read_text() + (
        f'\n[[cdn.keys]]\nid = "K2JCJMDEHXQW5F"\npublic_key_file = "{tmp_path / "k.pub"}"\n'
        f'private_key_file = "{tmp_path / "k.pem"}"\n')
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    assert main(["cdn", "sign", "video", "/titles/1/manifest.mpd", "--expires", "1h", "-c", str(path)]) == 0
    url = httpx.URL(capsys.readouterr().out.strip())
    pop = cluster.cfg.daemon("pop-1")
    assert (url.scheme, url.host, url.port, url.path) == ("http", "video.test", pop.port, "/titles/1/manifest.mpd")
    assert "Key-Pair-Id=K2JCJMDEHXQW5F" in str(url)
    verifier = Verifier(load(str(path)).cdn.keys)
    target = url.raw_path.decode()
    ok = verifier.verify(scheme="http", host=f"video.test:{pop.port}", target=target, client_ip="127.0.0.1",
                         now=time.time())
    assert ok.allowed and ok.target == "/titles/1/manifest.mpd"
    late = verifier.verify(scheme="http", host=f"video.test:{pop.port}", target=target, client_ip="127.0.0.1",
                           now=time.time() + 7200)
    assert not late.allowed
    # No private key for the id asked for: a usage error naming it.
    assert main(["cdn", "sign", "video", "/x", "--expires", "1h", "--key-id", "NOPE", "-c", str(path)]) == 2
    assert "NOPE" in capsys.readouterr().err
