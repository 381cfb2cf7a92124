"""The CDN hostname really goes through our DNS, and a lost POP is survived, in a real browser.

Real daemons, each its own process: an object store cluster, ``headwater node`` licence, origin
and transcoder (as ``test_web_page.py`` starts them), the GeoDNS (``dns-1``) and the edge's three
tiers: two POPs on the same port on distinct loopback addresses (``pop-a`` on 127.0.0.2 near
London, ``pop-b`` on 127.0.0.3 in New York, as the default cluster.toml places its POPs), a
regional cache and the shield in front of the origin. The origin's play API hands out URLs on the
CDN's name, ``video.cdn.headwater.test``, signed (``[[cdn.keys]]``).

Headless Chromium maps that name to a test-side forwarder (:mod:`headwater.bench.steered_forwarder`)
which asks the GeoDNS, with the viewer's client subnet (ECS, placed in London by a geo rule),
where each new connection goes: a fresh resolution per connection stands in for a resolver whose
TTL expired, since Chromium's ``--host-resolver-rules`` cannot change while a page plays.

The viewer signs in on the title page and plays (shaka-player, ClearKey from the licence server).
Once playback is under way the POP it uses (pop-a, the nearest) is SIGKILLed: the GeoDNS's health
checks take it out of answers within interval x fall, the player's next requests reach pop-b (its
``X-Cache`` says so), and playback goes on past everything that was buffered at the kill, with no
player error and at most one rebuffer (``waiting`` events after the first ``playing``).

Before that, on the same daemons, security end to end: tampered, cross-title, expired and
unsigned manifest URLs get 403 at a POP that has nothing cached, and neither it nor the shield
fetches anything for them (their upstream-fetch counters stay put; the genuine URL moves them);
an upload without a creator's token is refused (401, or 403 for a viewer's); and in the browser a
viewer whose /play answer carries an entitlement for another title, or an expired one, gets no key
(the licence server answers 403 / 401), decodes no frame, and the page says why. Screenshots go to
``tests/artifacts/cdn/`` (ignored by git).

The world (cluster.toml sections, daemons in start order) is the one ``python -m headwater.bench
playback`` measures startup on: :mod:`headwater.bench.playback`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import dns.exception
import httpx
import pytest
from tusclient import client as tus_client

from headwater import localca
from headwater.bench.origin import set_key
from headwater.bench.playback import (CDN_HOST, LONDON_VIEWER, POP_A, POP_B, WORLD_NODES, leaf_spki,
                                      signing_key, world_ports, world_sections)
from headwater.bench.steered_forwarder import SteeredForwarder, steered_answer
from headwater.config import load
from headwater.drm.client import EntitlementMinter
from headwater.origin.auth.issuer import user_password
from tests.functional.browser_harness import (BROWSER_DIR, CHROMIUM, Browser, PlaybackCase, StaticSite, explain,
                                              require_browser)
from tests.functional.drm_media import make_clip
from tests.functional.licence_harness import cli
from tests.functional.origin_harness import HEADWATER

CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, metadata_nodes=1, stripe_size="1MiB", min_part_size="5MiB")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "cdn"
HEALTH_INTERVAL_S, FALL = 0.5, 2

class Node:
    """``headwater node ID`` in its own process group (so a kill takes all of it), ready when
    ``healthz`` answers 200."""

    def __init__(self, config: Path, node_id: str, healthz: str, log: Path) -> None:
        self.node_id, self.healthz, self.log = node_id, healthz, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([HEADWATER, "node", node_id, "-c", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 60) -> Node:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"{self.node_id} exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.healthz, timeout=0.5, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{self.node_id} did not start:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def world(cluster):
    p = world_ports()
    pub, priv = signing_key(cluster.root / "cdn-keys")
    with open(cluster.config_path, "a") as f:
        f.write(world_sections(p, public_key=pub, private_key=priv, health_interval_s=HEALTH_INTERVAL_S, fall=FALL))
    cfg = load(str(cluster.config_path))
    localca.prepare(cfg)
    EntitlementMinter(cfg)
    logs = cluster.root / "logs"
    config = cluster.config_path
    started: list[Node] = []
    try:
        # All started at once (a tier reaches the next only when a request comes), then waited
        # for in order, so a failure names its daemon.
        for node_id, admin, host in WORLD_NODES:
            started.append(Node(config, node_id, f"http://{host}:{p[admin]}/healthz", logs / f"{node_id}.out"))
        for n in started:
            n.wait()
        ca = str(cluster.data_dir / "ca" / "ca.pem")
        yield {"cfg": cfg, "config": config, "ports": p, "logs": logs, "nodes": {n.node_id: n for n in started},
               "url": f"http://127.0.0.1:{p['origin']}", "ca": ca,
               "licence_spki": leaf_spki(p["licence"], Path(ca)),
               "viewer_password": user_password(cfg, cfg.origin, "vic")}
    finally:
        for n in reversed(started):
            n.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def publish(world, clip: Path, title: str) -> int:
    """``clip`` uploaded (tus) and published as ``title`` through the API; its id."""
    creator = cli(world["config"], "token", "--client", "creator-app", "--scope", "upload titles:write").strip()
    client = tus_client.TusClient(f"{world['url']}/uploads", headers=bearer(creator))
    uploader = client.uploader(str(clip), chunk_size=1024 * 1024, metadata={"filename": clip.name})
    uploader.upload()
    with httpx.Client(base_url=world["url"], timeout=30, trust_env=False) as http:
        r = http.post("/api/titles", headers=bearer(creator),
                      json={"title": title, "category": "documentary", "year": 2026, "language": "en",
                            "upload": uploader.url.rsplit("/", 1)[1]})
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        deadline = time.monotonic() + 90
        while (doc := http.get(f"/api/titles/{tid}", headers=bearer(creator)).json())["state"] not in (
                "published", "failed"):
            assert time.monotonic() < deadline, doc
            time.sleep(0.1)
    assert doc["state"] == "published", (doc, _tail(world, "transcoder"))
    return tid


def _tail(world, name: str) -> str:
    return (world["logs"] / f"{name}.out").read_text(errors="replace")[-3000:]


def run_page(world, spec: dict, *, timeout_s: float) -> dict:
    """failover.mjs with ``spec`` (plus the common fields); its JSON output."""
    require_browser()
    spec = {"chromium": CHROMIUM, "base": world["url"], "trustSpki": [world["licence_spki"]], "cdnHost": CDN_HOST,
            "viewer": {"user": "vic", "password": world["viewer_password"]}, **spec}
    proc = subprocess.run(["node", str(BROWSER_DIR / "failover.mjs")], input=json.dumps(spec) + "\n",
                          capture_output=True, text=True, cwd=BROWSER_DIR, timeout=timeout_s)
    print(proc.stderr[-3000:])
    assert proc.returncode == 0 and proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def title(world, tmp_path_factory) -> int:
    """One published title for every test here: 24 s of 2 s segments (shaka buffers 10 s ahead,
    so a good part of it is fetched after a kill a few seconds in)."""
    clip = make_clip(tmp_path_factory.mktemp("clip") / "Long Crossing.mp4", seconds=24, size="320x180", gop=50)
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    return publish(world, clip, "The Long Crossing")


def _fetches(url: str) -> float:
    """The edge node's upstream fetches so far (its admin /metrics)."""
    text = httpx.get(url, timeout=5, trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("hw_edge_upstream_fetches_total{"))


def test_signed_urls_are_checked_at_the_pop_and_bad_ones_never_go_further(world, title):
    p = world["ports"]
    viewer = cli(world["config"], "token", "--client", "viewer-app", "--scope", "view").strip()
    with httpx.Client(base_url=world["url"], timeout=30, trust_env=False) as http:
        play = http.get(f"/api/titles/{title}/play", headers=bearer(viewer)).json()
    assert play["cdn"]["signed"] and play["dash"].startswith(f"http://{CDN_HOST}:{p['pop']}/titles/{title}/"), play
    # pop-b (New York) has fetched nothing of this title yet; straight to its address, the CDN's
    # name in Host, as a resolver would have sent a New York viewer.
    pop_b = f"http://{POP_B}:{p['pop']}"
    pop_metrics = f"http://{POP_B}:{p['pop_b_admin']}/metrics"
    shield_metrics = f"http://127.0.0.1:{p['shield_admin']}/metrics"
    path_query = play["dash"].split(f":{p['pop']}", 1)[1]
    path, query = path_query.split("?", 1)
    params = dict(kv.split("=", 1) for kv in query.split("&"))

    # Tampered: one character of the signature changed; or the policy of another title.
    sig = params["Signature"]
    tampered = {**params, "Signature": ("A" if sig[0] != "A" else "B") + sig[1:]}
    other_title = path.replace(f"/titles/{title}/", f"/titles/{title + 1000}/")
    # Expired: the same key's grant for this very resource, ended a minute ago.
    from headwater.edge.client import find_signing_key, signed_grant
    expired_grant = signed_grant(play["cdn"]["resource"], find_signing_key(world["cfg"]), expires=int(time.time()) - 60)
    expired = dict(kv.split("=", 1) for kv in expired_grant.query.split("&"))
    before = (_fetches(pop_metrics), _fetches(shield_metrics))
    with httpx.Client(base_url=pop_b, headers={"host": f"{CDN_HOST}:{p['pop']}"}, timeout=10, trust_env=False) as cdn:
        for name, url, q in (("tampered", path, tampered), ("another title", other_title, params),
                             ("expired", path, expired), ("unsigned", path, {})):
            r = cdn.get(url, params=q)
            assert r.status_code == 403, (name, r.status_code, r.headers, r.text[:300])
            assert r.headers.get("x-cache", "").endswith("from pop-b") or "pop-b" in r.headers.get("via", ""), \
                (name, r.headers)
        # None of them went past the POP: neither the POP nor the shield fetched anything.
        assert (_fetches(pop_metrics), _fetches(shield_metrics)) == before
        # The genuine URL, for contrast: 200, fetched through the tiers (so the counters do move).
        r = cdn.get(path, params=params)
        assert r.status_code == 200 and b"<MPD" in r.content, r.text[:300]
    after = (_fetches(pop_metrics), _fetches(shield_metrics))
    assert after[0] > before[0] and after[1] > before[1], (before, after)


def test_an_upload_without_a_creators_token_is_refused(world, tmp_path):
    viewer = cli(world["config"], "token", "--client", "viewer-app", "--scope", "view").strip()
    tus = {"tus-resumable": "1.0.0", "upload-length": "1000"}
    with httpx.Client(base_url=world["url"], timeout=10, trust_env=False) as http:
        assert http.post("/uploads", headers=tus).status_code == 401
        assert http.post("/uploads", headers={**tus, "authorization": "Bearer not-a-token"}).status_code == 401
        assert http.post("/uploads", headers={**tus, **bearer(viewer)}).status_code == 403  # no upload scope
        r = http.post("/api/titles", json={"title": "x", "upload": "nope"})
        assert r.status_code == 401


def test_a_viewer_without_an_entitlement_gets_no_key_and_is_told(world, title):
    # The viewer's /play answer carries an entitlement for another title (as a viewer holding
    # one for something else would): the licence server refuses, no frame is decoded, and the page
    # says why.
    minter = EntitlementMinter(world["cfg"])
    wrong, _ = minter.mint(user="vic", titles=[str(title + 1000)], now=time.time(), lifetime_s=300)
    lapsed, _ = minter.mint(user="vic", titles=[str(title)], now=time.time() - 3600, lifetime_s=60)
    p = world["ports"]
    # Another title's entitlement: 403 (authenticated, not entitled); an expired one: 401.
    for name, token, status in (("another-title", wrong, 403), ("expired", lapsed, 401)):
        shots = ARTIFACTS / f"no-entitlement-{name}"
        shots.mkdir(parents=True, exist_ok=True)
        with SteeredForwarder(name=CDN_HOST + ".", port=p["pop"], dns_port=p["dns"], subnet=LONDON_VIEWER):
            out = run_page(world, {"titleIds": [title], "licenceToken": token, "shots": str(shots),
                                   "timeoutMs": 20000}, timeout_s=90)
        why = json.dumps({k: v for k, v in out.items() if k != "console"})[-3000:] + "\n" + \
            "\n".join(out["console"][-30:])
        assert out["ok"], why
        (play,) = out["plays"]
        assert play["refused"] and "not entitled" in play["refused"], why
        assert play["licence"]["status"] == status, why  # the licence server refused: no key
        assert play["frames"] == 0 and play["currentTime"] < 0.5, why  # nothing was decoded
        assert play["playEnabled"], why  # Play may be pressed again
        assert (shots / f"title-{title}-no-entitlement.png").stat().st_size > 5000


def test_a_viewer_survives_the_loss_of_its_pop(world, title):
    require_browser()
    p = world["ports"]
    tid = title
    # Our DNS sends a London viewer to pop-a.
    assert steered_answer(CDN_HOST + ".", dns_port=p["dns"], dns_host="127.0.0.1", subnet=LONDON_VIEWER) == [POP_A]
    pop_a = world["nodes"]["pop-a"]
    # When the answer changed, watched from outside the browser every 50 ms.
    answers: list[tuple[float, list[str]]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            try:
                a = steered_answer(CDN_HOST + ".", dns_port=p["dns"], subnet=LONDON_VIEWER)
            except (OSError, dns.exception.DNSException):  # a lost datagram on a loaded machine
                continue
            if not answers or answers[-1][1] != a:
                answers.append((time.time(), a))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with SteeredForwarder(name=CDN_HOST + ".", port=p["pop"], dns_port=p["dns"], subnet=LONDON_VIEWER) as fwd:
        # Killed 1 s in with 4 s buffered; played at twice the speed to keep the test short.
        spec = {"titleIds": [tid], "kill": {"pid": pop_a.proc.pid, "atTime": 1.0, "ahead": 4.0}, "playUntil": 2.0,
                "rate": 2,
                "shots": str(ARTIFACTS), "timeoutMs": 45000}
        started = time.monotonic()
        out = run_page(world, spec, timeout_s=120)
        print(f"failover.mjs took {time.monotonic() - started:.1f} s")
        connections = list(fwd.connections)
    stop.set()
    watcher.join(5)
    pop_a.proc.wait(5)

    plays = [{k: v for k, v in p.items() if k != "cdn"} for p in out["plays"]]
    why = json.dumps({**{k: v for k, v in out.items() if k not in ("console", "plays")}, "plays": plays}) + "\n" + \
        "\n".join(json.dumps(r) for p in out["plays"] for r in p["cdn"]) + "\n" + \
        "\n".join(out["console"][-40:]) + "\n" + "\n".join(map(str, connections))
    assert out["ok"], why
    (play,) = out["plays"]
    kill = play["kill"]
    assert play["reached"] and not play["error"], why
    assert "error" not in play["status"].lower(), why

    # Before the kill, everything came from pop-a (through the regional and the shield).
    before = [r for r in play["cdn"] if r["t"] < kill["at"]]
    after = [r for r in play["cdn"] if r["sent"] > kill["at"]]
    assert before and all(r["xcache"].endswith("from pop-a") and r["status"] == 200 for r in before), why
    # After it, the player's requests went to pop-b: the DNS had taken pop-a out.
    from_b = [r for r in after if r["xcache"].endswith("from pop-b") and r["status"] == 200]
    assert sum(".m4s" in r["path"] for r in from_b) >= 2, why
    assert all(not r["xcache"].endswith("from pop-a") for r in after), why
    assert steered_answer(CDN_HOST + ".", dns_port=p["dns"], dns_host="127.0.0.1", subnet=LONDON_VIEWER) == [POP_B]

    # The forwarder's resolutions: pop-a until the kill, pop-b within the health checks' reach after.
    first_b = min(c.connected for c in connections if c.address == POP_B)
    dns_moved_s = first_b - kill["at"] / 1000
    failover_s = (from_b[0]["t"] - kill["at"]) / 1000
    assert all(c.address == POP_A for c in connections if c.at < kill["at"] / 1000), why
    assert all(c.address for c in connections), why  # every connection found a POP
    # The GeoDNS itself: pop-a out of answers within about interval x fall (plus a pass under way
    # and slack for a loaded machine), and never an answer without a POP.
    assert [a for _, a in answers] == [[POP_A], [POP_B]], answers
    dns_out_s = answers[1][0] - kill["at"] / 1000
    assert HEALTH_INTERVAL_S * (FALL - 1) * 0.8 <= dns_out_s < HEALTH_INTERVAL_S * (FALL + 1) + 2.0, answers

    # Playback went on past all that was buffered at the kill, with at most one rebuffer.
    playing = [e for e in play["events"] if e["name"] == "playing"]
    rebuffers = [e for e in play["events"] if e["name"] == "waiting" and playing and e["t"] > playing[0]["t"]]
    assert play["currentTime"] >= kill["bufferedEnd"] + 1.5, why
    assert play["frames"] > kill["frames"] + 50, why
    assert len(rebuffers) <= 1, why
    assert (ARTIFACTS / f"title-{tid}-after-failover.png").stat().st_size > 5000
    print(f"startup {play['startMs']} ms; killed pop-a at media {kill['currentTime']:.2f} s "
          f"(buffered to {kill['bufferedEnd']:.2f} s); GeoDNS answered pop-b after {dns_out_s:.2f} s, "
          f"first connection to pop-b after {dns_moved_s:.2f} s, "
          f"first response from pop-b after {failover_s:.2f} s; {len(rebuffers)} rebuffer(s); "
          f"played to {play['currentTime']:.2f} s, {play['frames']} frames; "
          f"{len(connections)} connections ({sum(c.address == POP_B for c in connections)} to pop-b)")


def test_a_viewer_survives_the_loss_of_a_regional_cache(world, tmp_path):
    # A title no one has watched: every segment the POP needs comes through a regional cache
    # (rendezvous hashing spreads the keys over regional-1 and regional-2). regional-1 is killed
    # mid-play: the POP tries each key's next preference, and the viewer sees nothing of it.
    p = world["ports"]
    tid = publish(world, make_clip(tmp_path / "Quiet Harbour.mp4", seconds=24, gop=50), "Quiet Harbour")
    regional = world["nodes"]["regional-1"]
    with SteeredForwarder(name=CDN_HOST + ".", port=p["pop"], dns_port=p["dns"], subnet=LONDON_VIEWER):
        out = run_page(world, {"titleIds": [tid], "kill": {"pid": regional.proc.pid, "atTime": 1.0, "ahead": 4.0},
                               "playUntil": 2.0, "rate": 2, "timeoutMs": 45000}, timeout_s=120)
    regional.proc.wait(5)
    plays = [{k: v for k, v in x.items() if k != "cdn"} for x in out["plays"]]
    why = json.dumps(plays) + "\n" + "\n".join(json.dumps(r) for x in out["plays"] for r in x["cdn"]) + "\n" + \
        "\n".join(out["console"][-30:])
    assert out["ok"], why
    (play,) = out["plays"]
    kill = play["kill"]
    misses = [r for r in play["cdn"] if r["xcache"].startswith("Miss")]
    # Before the kill both regionals carried this title's misses; after it, regional-2 alone.
    assert any("regional-1" in r["via"] for r in misses if r["t"] < kill["at"]), why
    after = [r for r in misses if r["sent"] > kill["at"]]
    assert after and all("regional-2" in r["via"] and "regional-1" not in r["via"] for r in after), why
    assert all(r["status"] == 200 for r in play["cdn"]), why
    playing = [e for e in play["events"] if e["name"] == "playing"]
    rebuffers = [e for e in play["events"] if e["name"] == "waiting" and playing and e["t"] > playing[0]["t"]]
    assert play["reached"] and not play["error"] and play["currentTime"] >= kill["bufferedEnd"] + 1.5, why
    assert len(rebuffers) <= 1, why
    print(f"regional-1 killed at media {kill['currentTime']:.2f} s (buffered to {kill['bufferedEnd']:.2f} s); "
          f"{len(after)} misses after it, all through regional-2; {len(rebuffers)} rebuffer(s); "
          f"played to {play['currentTime']:.2f} s")


def test_cbcs_and_cenc_titles_play_with_shaka_dashjs_and_hlsjs_through_the_cdn(world, title, tmp_path):
    # Runs after the failover test: pop-a is dead, the GeoDNS sends the London viewer to pop-b.
    p = world["ports"]
    # A cenc title: the transcoder restarted on a copy of cluster.toml with scheme = "cenc" (the
    # scheme is the transcoder's, not the title's; `title` was made with the default, cbcs).
    world["nodes"]["transcoder"].stop()
    cenc_config = world["config"].with_name("cluster-cenc.toml")
    cenc_config.write_text(set_key(world["config"].read_text(), "transcoder", "scheme", '"cenc"'))
    transcoder = Node(cenc_config, "transcoder", f"http://127.0.0.1:{p['transcoder_admin']}/healthz",
                      world["logs"] / "transcoder-cenc.out")
    try:
        transcoder.wait()
        cenc_title = publish(world, make_clip(tmp_path / "Short Crossing.mp4", seconds=8, gop=50), "The Short Crossing")
    finally:
        transcoder.stop()

    viewer = cli(world["config"], "token", "--client", "viewer-app", "--scope", "view").strip()
    cases, plays = [], {}
    with httpx.Client(base_url=world["url"], timeout=30, trust_env=False) as http, \
            httpx.Client(timeout=10, trust_env=False) as cdn:
        for tid, scheme in ((title, "cbcs"), (cenc_title, "cenc")):
            play = http.get(f"/api/titles/{tid}/play", headers=bearer(viewer)).json()
            plays[scheme] = play
            # The MPD says which scheme (fetched from pop-b, the CDN's name in Host).
            mpd = cdn.get(play["dash"].replace(f"{CDN_HOST}:", f"{POP_B}:"), headers={"host": f"{CDN_HOST}:{p['pop']}"})
            assert mpd.status_code == 200, mpd.text[:300]
            assert f'value="{scheme}"' in mpd.text, mpd.text[:2000]
    with StaticSite(tmp_path) as site, \
            SteeredForwarder(name=CDN_HOST + ".", port=p["pop"], dns_port=p["dns"], subnet=LONDON_VIEWER) as fwd, \
            Browser(concurrency=2, trust_spki=[world["licence_spki"]], host_map={CDN_HOST: "127.0.0.1"}) as browser:
        for scheme, play in plays.items():
            for player, manifest in (("shaka", play["dash"]), ("dashjs", play["dash"]), ("hlsjs", play["hls"])):
                cases.append(PlaybackCase(name=f"{scheme}-{player}", timeout_ms=20000, url=site.page_url(
                    player=player, manifest=manifest, licence=play["licence"]["url"],
                    auth=f"Bearer {play['licence']['token']}", cdn_query=play["cdn"]["query"], frames=25)))
        results = browser.run(cases)
    for r in results:
        assert r.ok and r.frames > 25 and r.current_time > 0.5, explain(r)
    # Every player reached the CDN by its name, through our DNS, at the POP still standing.
    assert fwd.connections and {c.address for c in fwd.connections} == {POP_B}, fwd.connections
