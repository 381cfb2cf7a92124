"""Adding a storage node to a running cluster: the rebalancer fills it in the background.

EC 4+2 on 6 storage nodes (every object on every node), a repair daemon with the rebalancer
passing every second at 2 MiB/s, and a 2-second retire grace. Objects are written, a 7th
node is added as an operator would (cluster.toml, then the gateway and repair daemon
restarted), and while the rebalancer moves fragments a client keeps writing, reading,
overwriting and deleting, checking every byte. Afterwards: the new node holds its fair share,
every acknowledged object reads back exact, and no fragment file is left that no record names.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time

import anyio
import botocore.exceptions
import httpx
from headwater.objstore.layouts import walk_layouts
from headwater.objstore.metadata.client import MetadataClient
from headwater.objstore.storage import fragment as fr

from headwater import config as hwconfig
from tests.data import data

KiB = 1024
STRIPE = 64 * KiB
K, M = 4, 2
GRACE_S = 2
CLUSTER_OPTIONS = dict(
    k=K, m=M, stripe_size=STRIPE, inline_max_size=4 * KiB, min_part_size=100 * KiB, rpc_timeout_seconds=5,
    extra_objstore={"retire_grace_seconds": GRACE_S, "scrub_rate": 0},
    repair={"interval_seconds": 5, "gc_interval_seconds": 1, "rebuild_rate": "64MiB",
            "rebalance_interval_seconds": 1, "rebalance_rate": "2MiB"},
)
BUCKET = "grow"


def rebalance_state(cluster) -> dict:
    d = cluster.daemon("repair")
    return httpx.get(f"http://{d.host}:{d.admin_port}/healthz", timeout=5).json()["rebalance"]


def wait_for(what: str, check, timeout: float, every: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def named_fragments(cluster) -> dict[tuple[str, str], int]:
    """(node, fid) -> fragment payload bytes, for every fragment some layout names."""
    cfg = hwconfig.load(cluster.config_path)

    async def main():
        out = {}
        async with MetadataClient(cfg, writer_id=f"probe-{os.getpid()}") as meta:
            async for ref in walk_layouts(meta):
                lay = ref.layout
                size = lay.stripes * lay.scheme.fragment_bytes
                for i, node in enumerate(lay.nodes):
                    if node is not None:
                        out[(node, lay.fid(i))] = size
        return out

    return anyio.run(main)


def on_disk(cluster) -> set[tuple[str, str]]:
    return {(d.id, p.name) for d in cluster.storage for p in cluster.fragment_files(d.id)}


class Workload(threading.Thread):
    """One client: PUTs of new keys, GETs, overwrites and deletes of old ones (the ones being
    moved), until stopped. ``expected`` is what every acknowledged operation says each key holds."""

    def __init__(self, cluster, expected: dict[str, bytes | None], seed: int):
        super().__init__(daemon=True)
        self.s3 = cluster.s3_client(0, response_checksum_validation="when_required")
        self.expected = expected
        self.rng = random.Random(seed)
        self.wrong: list[str] = []
        self.errors: list[str] = []
        self.counts = {"put": 0, "get": 0, "overwrite": 0, "delete": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            op = self.rng.choices(("put", "get", "overwrite", "delete"), (3, 5, 1, 1))[0]
            live = [k for k, v in self.expected.items() if v is not None]
            try:
                if op == "put" or not live:
                    key, body = f"new-{i}", data(self.rng.randrange(5 * KiB, 5 * STRIPE), 50_000 + i)
                    self.expected.pop(key, None)
                    self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                    self.expected[key] = body
                    op = "put"
                elif op == "get":
                    key = self.rng.choice(list(self.expected))
                    want = self.expected[key]
                    try:
                        got = self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                    except botocore.exceptions.ClientError as e:
                        if want is None and e.response["Error"]["Code"] == "NoSuchKey":
                            got = None
                        else:
                            raise
                    if got != want:
                        self.wrong.append(key)
                elif op == "overwrite":
                    key = self.rng.choice(live)
                    body = data(self.rng.randrange(5 * KiB, 5 * STRIPE), 90_000 + i)
                    self.expected.pop(key)  # unknown until acknowledged
                    self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                    self.expected[key] = body
                else:
                    key = self.rng.choice(live)
                    self.expected.pop(key)
                    self.s3.delete_object(Bucket=BUCKET, Key=key)
                    self.expected[key] = None
                self.counts[op] += 1
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                self.errors.append(f"{op}: {e}")


def test_added_node_is_filled_in_the_background_while_clients_read_and_write(cluster):
    s3 = cluster.s3_client(0, response_checksum_validation="when_required")
    s3.create_bucket(Bucket=BUCKET)
    rng = random.Random(7)
    expected: dict[str, bytes | None] = {}
    for i in range(80):
        body = data(rng.randrange(5 * KiB, 6 * STRIPE), i)
        s3.put_object(Bucket=BUCKET, Key=f"old-{i}", Body=body)
        expected[f"old-{i}"] = body
    # on 6 nodes 4+2 already sits where placement wants it: passes move nothing
    wait_for("a rebalance pass", lambda: rebalance_state(cluster)["passes"] >= 2, 20)
    assert rebalance_state(cluster)["fragments_moved"] == 0

    new = cluster.add_storage_node()
    work = Workload(cluster, expected, seed=3)
    work.start()
    try:
        wait_for("moves to start", lambda: rebalance_state(cluster)["fragments_moved"] > 0, 20, every=0.1)
        moved_at_start = rebalance_state(cluster)["fragments_moved"]
        # keep the client busy while the rebalancer works, until it has filled the new node
        wait_for("the new node to be filled", lambda: (
            (st := rebalance_state(cluster))["passes"] > 0 and not st["pass_running"] and st["last_pass_moved"] == 0
            and st["fragments_moved"] > moved_at_start), 40, every=0.5)
    finally:
        work.stop.set()
        work.join(timeout=60)
    assert not work.wrong, f"wrong bytes (or a deleted key served) for {work.wrong}"
    assert not work.errors, work.errors[:5]
    assert work.counts["overwrite"] and work.counts["delete"] and work.counts["put"], work.counts

    # the new node holds its fair share of the fragments (as many as placement gives each node:
    # moves only go toward it, so objects' sizes and hashes leave a few percent either way)
    named = named_fragments(cluster)
    load = {d.id: 0 for d in cluster.storage}
    count = {d.id: 0 for d in cluster.storage}
    for (node, _fid), size in named.items():
        load[node] += size
        count[node] += 1
    mean, mean_count = sum(load.values()) / len(load), sum(count.values()) / len(count)
    assert count[new.id] >= 0.85 * mean_count, count
    assert load[new.id] >= 0.8 * mean, load
    assert max(load.values()) <= 1.25 * mean, load
    st = rebalance_state(cluster)
    assert st["fragments_moved"] > 40 and st["bytes_moved"] > 0, st
    assert st["failures"] == 0, st
    print(f"\nrebalance: {st}\nclient: {work.counts}, moved before the client started: {moved_at_start}; "
          f"load: {load}, fragments: {count}")

    # every acknowledged object, byte-exact; deleted ones gone
    for key, want in expected.items():
        if want is None:
            try:
                s3.get_object(Bucket=BUCKET, Key=key)
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "NoSuchKey"
            else:
                raise AssertionError(f"{key}: deleted, still served")
        else:
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == want, key

    # after the grace, exactly the fragments the records name are on disk, each intact
    def settled():
        named = named_fragments(cluster)
        disk = on_disk(cluster)
        return (named, disk) if set(named) == disk else None

    try:
        named, _ = wait_for("no fragment file that no record names", settled, 30, every=1)
    except AssertionError:
        named, disk = named_fragments(cluster), on_disk(cluster)
        raise AssertionError(f"unnamed on disk: {sorted(disk - set(named))[:10]}; "
                             f"named, missing: {sorted(set(named) - disk)[:10]}") from None
    for node, fid in named:
        path = cluster.daemon(node).data_dir / fr.fragment_relpath(fid)
        fr.read_blocks(path, fid, 0, 1)

    # progress is in /metrics and `headwater status`
    d = cluster.daemon("repair")
    text = httpx.get(f"http://{d.host}:{d.admin_port}/metrics", timeout=5).text
    m = re.search(r"^headwater_rebalance_fragments_moved ([0-9.e+]+)$", text, re.M)
    assert m and float(m.group(1)) == st["fragments_moved"]
    out = cluster.headwater("status", "-c", str(cluster.config_path), timeout=30).stdout
    assert "rebalance moved" in out, out
