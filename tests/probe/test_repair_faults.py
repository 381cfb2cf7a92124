"""Scrubbing, reconstruction and garbage collection in a real multi-process cluster.

EC 4+2 over 6 storage nodes with 64 KiB stripes, a repair daemon passing every second, storage
nodes scrubbing every second, and a 3-second grace for orphan fragments. Each test ends by
reading every object it had acknowledged, byte for byte.

- kill -9 of storage nodes during a stream of PUTs and GETs: when they are back, the
  reconstructor rebuilds what they missed (fragments on disk, verified block by block, layouts
  naming six distinct nodes), and killing two *other* nodes then loses nothing;
- a flipped byte and a truncated fragment: the scrubber quarantines the first, the reconstructor
  rebuilds both, and both are counted in /metrics;
- torn writes: a node killed mid-PUT and restarted, a partial and an orphan fragment and a stale
  temp file planted: nothing but the right bytes is ever served, and the collector removes the
  garbage while every referenced fragment stays.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import anyio
import botocore.exceptions
import httpx
import pytest
from headwater.objstore.metadata.client import MetadataClient
from headwater.objstore.records import Layout, ObjectRecord, objects_ns
from headwater.objstore.storage import fragment as fr

from headwater import config as hwconfig
from tests.data import data

KiB = 1024
STRIPE = 64 * KiB
K, M = 4, 2
CLUSTER_OPTIONS = dict(
    k=K, m=M, stripe_size=STRIPE, inline_max_size=4 * KiB, min_part_size=100 * KiB, rpc_timeout_seconds=5,
    extra_objstore={"retire_grace_seconds": 3, "scrub_rate": "32MiB", "scrub_interval_seconds": 1},
    repair={"interval_seconds": 1, "gc_interval_seconds": 1, "rebuild_rate": "64MiB"},
)


@pytest.fixture(scope="module")
def s3(cluster):
    return cluster.s3_client(0, response_checksum_validation="when_required")


@pytest.fixture
def heal(cluster, s3):
    """Restart every storage node a test killed, and wait until writes work again (the gateway
    holds a failed node out of placements for a few seconds)."""
    yield
    for d in cluster.storage:
        p = cluster.procs.get(d.id)
        if p is None or p.poll() is not None:
            cluster.restart_node(d.id)
    s3.create_bucket(Bucket="heal") if "heal" not in {b["Name"] for b in s3.list_buckets()["Buckets"]} else None

    def writable():
        try:
            s3.put_object(Bucket="heal", Key="probe", Body=data(3 * STRIPE, 9))
        except botocore.exceptions.ClientError:
            return False
        return True

    wait_for("writes to work again", writable, 30, every=0.5)


# --- looking at the cluster ---------------------------------------------------------------------

def admin_get(cluster, daemon_id: str, path: str):
    d = cluster.daemon(daemon_id)
    r = httpx.get(f"http://{d.host}:{d.admin_port}{path}", timeout=5)
    return r.json() if path == "/healthz" else r.text


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def repair_state(cluster) -> dict:
    return admin_get(cluster, "repair", "/healthz")


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_fully_repaired(cluster, timeout: float = 90.0) -> dict:
    """Until a reconstructor pass that *started* after now ends with nothing degraded."""
    start = repair_state(cluster)["passes"]

    def done():
        st = repair_state(cluster)
        return st if st["passes"] >= start + 2 and st["degraded_objects"] == 0 else None

    return wait_for("a reconstructor pass with no degraded object", done, timeout)


def layouts(cluster, bucket: str, keys) -> dict[str, list[Layout]]:
    """Each key's layouts, read from the metadata ring through its public client."""
    cfg = hwconfig.load(cluster.config_path)

    async def main():
        out = {}
        async with MetadataClient(cfg, writer_id=f"probe-{os.getpid()}") as meta:
            for key in keys:
                e = await meta.get(objects_ns(bucket), key)
                assert e is not None, f"{key}: no record"
                out[key] = list(ObjectRecord.from_value(e.value).layouts)
        return out

    return anyio.run(main)


def frag_path(cluster, node_id: str, fid: str) -> Path:
    return cluster.daemon(node_id).data_dir / fr.fragment_relpath(fid)


def assert_full_redundancy(cluster, lays: dict[str, list[Layout]]) -> None:
    """Every layout names k+m distinct nodes and every fragment is there and verifies."""
    for key, ls in lays.items():
        for lay in ls:
            assert None not in lay.nodes, f"{key}: layout {lay.oid} still has unplaced fragments {lay.nodes}"
            assert len(set(lay.nodes)) == K + M, f"{key}: nodes repeat in {lay.nodes}"
            for i, node in enumerate(lay.nodes):
                blocks = fr.read_blocks(frag_path(cluster, node, lay.fid(i)), lay.fid(i), 0, lay.stripes)
                assert len(blocks) == lay.stripes


def read_all_exact(s3, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert got == body, f"{key}: WRONG BYTES ({len(got)} vs {len(body)})"


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


# --- 1. nodes killed during a stream of PUTs and GETs -------------------------------------------

class Traffic(threading.Thread):
    """PUTs of fresh objects and GETs of acknowledged ones until stopped; records what was
    acknowledged and any wrong bytes."""

    def __init__(self, cluster, bucket: str, seed: int):
        super().__init__(daemon=True)
        self.s3 = cluster.s3_client(0, response_checksum_validation="when_required")
        self.bucket = bucket
        self.rng = random.Random(seed)
        self.seed = seed
        self.acked: dict[str, bytes] = {}
        self.when: dict[str, tuple[float, float]] = {}  # key -> (PUT sent, PUT acknowledged)
        self.wrong: list[str] = []
        self.failed_puts = 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            key = f"t{self.seed}-{i}"
            body = data(self.rng.randrange(5 * KiB, 9 * STRIPE), self.seed * 100_000 + i)
            try:
                sent = time.monotonic()
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
                self.when[key] = (sent, time.monotonic())
                self.acked[key] = body
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                self.failed_puts += 1
                time.sleep(0.2)
            if self.acked:
                k = self.rng.choice(list(self.acked))
                try:
                    got = self.s3.get_object(Bucket=self.bucket, Key=k)["Body"].read()
                except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                    continue  # a clean failure is allowed while nodes die; wrong bytes are not
                if got != self.acked[k]:
                    self.wrong.append(k)


def test_killed_nodes_come_back_and_redundancy_is_restored(cluster, s3, heal):
    bucket = "kills"
    s3.create_bucket(Bucket=bucket)
    traffic = Traffic(cluster, bucket, seed=1)
    traffic.start()
    try:
        time.sleep(1.5)
        cluster.kill_node("storage-1", signal.SIGKILL)   # writes go on with k+1 = 5 nodes
        killed = time.monotonic()
        time.sleep(4)
        cluster.kill_node("storage-2", signal.SIGKILL)   # m nodes down: reads only
        time.sleep(2)
        back = time.monotonic()
        cluster.restart_node("storage-1")
        cluster.restart_node("storage-2")
        time.sleep(3)
    finally:
        traffic.stop.set()
        traffic.join(timeout=60)
    assert not traffic.wrong, f"wrong bytes served for {traffic.wrong}"
    assert len(traffic.acked) >= 5, f"too few writes acknowledged ({len(traffic.acked)})"
    # Written while storage-1 was down, so written without it. (Their layouts may already be
    # repaired by now: the reconstructor runs all along.)
    degraded = [k for k, (sent, acked) in traffic.when.items() if sent > killed and acked < back]
    wait_fully_repaired(cluster)
    lays = layouts(cluster, bucket, traffic.acked)
    assert_full_redundancy(cluster, lays)
    # objects acknowledged with one node down were written with k+1 fragments; the
    # reconstructor placed the missing one on the returning node and rewrote their records
    assert degraded, "no write landed while storage-1 was down: the test proved nothing"
    assert repair_state(cluster)["fragments_relocated"] >= len(degraded)
    # `headwater status` shows it: degraded objects and stripes, repair progress, scrub age
    rows = {r["id"]: r for r in cluster.status()}
    assert rows["repair"]["healthy"] and rows["repair"]["details"]["degraded_stripes"] == 0
    assert all(rows[d.id]["details"].get("scrub_last_pass_end") for d in cluster.storage)
    text = cluster.headwater("status", "-c", str(cluster.config_path), timeout=30).stdout
    assert "every stripe has its full redundancy" in text and "scrubbed" in text, text
    # redundancy really is back: lose two other nodes, read everything
    cluster.kill_node("storage-3", signal.SIGKILL)
    cluster.kill_node("storage-4", signal.SIGKILL)
    read_all_exact(s3, bucket, traffic.acked)


# --- 2. bit rot and truncation --------------------------------------------------------------------

def test_flipped_byte_and_truncated_fragment_are_found_rebuilt_and_counted(cluster, s3, heal):
    bucket = "rot"
    s3.create_bucket(Bucket=bucket)
    objs = {"flip": data(6 * STRIPE + 77, 21), "cut": data(5 * STRIPE + 3, 22)}
    for k, v in objs.items():
        s3.put_object(Bucket=bucket, Key=k, Body=v)
    # A PUT is acknowledged at k+1 fragments: one append may have met a pooled connection to a
    # node the previous test restarted. The reconstructor places the missing one; this test's
    # later kills need all six.
    wait_for("every fragment placed", lambda: all(
        None not in lay.nodes for ls in layouts(cluster, bucket, objs).values() for lay in ls), 60)
    lays = layouts(cluster, bucket, objs)
    flip_lay, cut_lay = lays["flip"][0], lays["cut"][0]
    flip_node, cut_node = flip_lay.nodes[1], cut_lay.nodes[4]
    before = admin_get(cluster, "repair", "/metrics")
    scrub_before = metric(admin_get(cluster, flip_node, "/metrics"), "headwater_storage_scrub_corrupt")
    p = frag_path(cluster, flip_node, flip_lay.fid(1))
    flip_byte(p, p.stat().st_size // 2)
    q = frag_path(cluster, cut_node, cut_lay.fid(4))
    os.truncate(q, q.stat().st_size // 2)

    # the scrubber finds the flipped byte (only a full read can) and quarantines the file
    wait_for("the scrubber to count the flipped byte", lambda: metric(
        admin_get(cluster, flip_node, "/metrics"), "headwater_storage_scrub_corrupt") > scrub_before, 30)
    assert (cluster.daemon(flip_node).data_dir / "quarantine" / flip_lay.fid(1)).exists()

    def rebuilt():
        for node, lay, i in ((flip_node, flip_lay, 1), (cut_node, cut_lay, 4)):
            try:
                fr.read_blocks(frag_path(cluster, node, lay.fid(i)), lay.fid(i), 0, lay.stripes)
            except (fr.FragmentError, fr.BadRequest):
                return False
        return True

    wait_for("both fragments rebuilt and verifying", rebuilt, 60)
    after = admin_get(cluster, "repair", "/metrics")
    assert metric(after, "headwater_repair_fragments_rebuilt") >= metric(before, "headwater_repair_fragments_rebuilt") + 2
    assert metric(after, "headwater_repair_bytes_rebuilt") > metric(before, "headwater_repair_bytes_rebuilt")
    assert metric(admin_get(cluster, flip_node, "/metrics"), "headwater_storage_quarantined") >= 1
    # the rebuilt fragments carry the objects: lose two others of each, read byte-exact
    victims = {n for n in flip_lay.nodes if n != flip_node}
    victims = sorted(victims & {n for n in cut_lay.nodes if n != cut_node})[:2]
    for v in victims:
        cluster.kill_node(v, signal.SIGKILL)
    read_all_exact(s3, bucket, objs)


# --- 3. torn writes and garbage -----------------------------------------------------------------

def test_torn_writes_serve_no_garbage_and_orphans_are_collected(cluster, s3, heal):
    bucket = "torn"
    s3.create_bucket(Bucket=bucket)
    acked: dict[str, bytes] = {}
    errors: list[str] = []
    stop = threading.Event()

    def writer():
        c = cluster.s3_client(0)
        i = 0
        while not stop.is_set():
            i += 1
            body = data(40 * STRIPE + i, 300 + i)  # 2.5 MiB: the kill lands mid-write
            try:
                c.put_object(Bucket=bucket, Key=f"big-{i}", Body=body)
                acked[f"big-{i}"] = body
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                errors.append(str(e))

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(1.0)
    cluster.kill_node("storage-5", signal.SIGKILL)   # between appends and fsync, for some write
    time.sleep(1.0)
    cluster.restart_node("storage-5")
    time.sleep(1.0)
    stop.set()
    t.join(timeout=60)
    assert acked, f"no write acknowledged: {errors[:3]}"

    # garbage planted as a crash would leave it: an orphan fragment, a partial one, a temp file
    orphan_node, partial_node = "storage-2", "storage-3"
    op = frag_path(cluster, orphan_node, "deadbeef" * 4 + ".2")
    op.parent.mkdir(parents=True, exist_ok=True)
    w = fr.FragmentWriter(cluster.daemon(orphan_node).data_dir / "tmp" / "plant", "deadbeef" * 4 + ".2",
                          STRIPE // K, {"k": K, "m": M, "stripe": STRIPE})
    w.append(0, [os.urandom(STRIPE // K) for _ in range(3)])
    w.commit(op, 3)
    pp = frag_path(cluster, partial_node, "feedface" * 4 + ".0")
    pp.parent.mkdir(parents=True, exist_ok=True)
    pp.write_bytes(op.read_bytes()[:1000])
    stale = cluster.daemon("storage-4").data_dir / "tmp" / ("cafebabe" * 4 + ".1")
    stale.write_bytes(b"half a fragment")
    old = time.time() - 7200
    os.utime(stale, (old, old))

    read_all_exact(s3, bucket, acked)  # nothing torn is ever served
    wait_for("the collector to remove the planted garbage",
             lambda: not op.exists() and not pp.exists() and not stale.exists(), 60)
    gc = repair_state(cluster)["gc"]
    # the partial file may go either way: quarantined by its node's scrubber (no footer) or
    # deleted by the collector (no record), whichever looks first
    quarantined = (cluster.daemon(partial_node).data_dir / "quarantine" / pp.name).exists()
    assert gc["fragments_deleted"] >= (1 if quarantined else 2) and gc["tmp_removed"] >= 1
    assert metric(admin_get(cluster, "repair", "/metrics"), "headwater_gc_fragments_deleted") >= 1
    # and it removed nothing that a record names: the acknowledged objects are whole, redundantly
    wait_fully_repaired(cluster)
    assert_full_redundancy(cluster, layouts(cluster, bucket, acked))
    read_all_exact(s3, bucket, acked)
