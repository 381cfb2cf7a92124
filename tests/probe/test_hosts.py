"""A whole host lost: the cluster runs as three "hosts", one is cut off the network, and the
store keeps serving reads and writes; every acknowledged object reads back byte-exact, before,
during and after the cut.

Each host runs one metadata node and two storage nodes bound to its own address: in network
namespaces joined by a bridge where the machine allows it, else on 127.0.N.x addresses (see
``tests/hosts.py``). The mode that ran is printed (``-s``) and recorded as the ``hosts_mode``
property (``pytest --junitxml`` keeps it). The gateway runs on the test's own host.

EC 2+1 over 3 hosts: placement puts the 3 fragments of a stripe on 3 different hosts, so losing
a host costs one fragment of each (tolerated), and the 4 storage nodes left still meet the
write quorum (3). With 3 metadata nodes on 3 hosts, a majority survives the cut.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import botocore.exceptions
import pytest

from tests.cluster import Cluster
from tests.data import data
from tests.hosts import SimulatedHosts

KiB = 1024
STRIPE = 64 * KiB
HOSTS = 3
RPC_TIMEOUT_S = 3
# The metadata deadline as short as the storage RPCs': the metadata client must leave a leader
# that fell silent for the one elected after it within that deadline (a third of it per attempt).
OPTIONS = dict(k=2, m=1, storage_nodes=2 * HOSTS, metadata_nodes=HOSTS, stripe_size=STRIPE,
               inline_max_size=4 * KiB, rpc_timeout_seconds=RPC_TIMEOUT_S,
               extra_objstore={"metadata_timeout_seconds": RPC_TIMEOUT_S})
# How long one operation may keep failing after the cut while the gateway (and the metadata
# ring) notice the host is gone: a few RPC deadlines.
SETTLE_S = 30.0




def host_of(node_id: str) -> int:
    """meta-h+1 and storage-2h+1, storage-2h+2 live on host h."""
    kind, n = node_id.rsplit("-", 1)
    return int(n) - 1 if kind == "meta" else (int(n) - 1) // 2


@pytest.fixture(scope="module")
def hosts_cluster(tmp_path_factory):
    hosts = SimulatedHosts(HOSTS)
    print(f"\nhosts: {hosts.describe()}")
    try:
        c = Cluster(tmp_path_factory.mktemp("hosts"), **OPTIONS)
        for d in [*c.metadata, *c.storage]:
            h = host_of(d.id)
            c.place_on_host(d.id, hosts.addresses[h], netns=hosts.netns(h), name=f"host{h}")
        try:
            c.start()
            yield c, hosts
        finally:
            for h in range(HOSTS):
                hosts.heal(h)
            c.stop()
    finally:
        hosts.close()


def retry(op, what: str, timeout: float = SETTLE_S):
    """Run ``op`` until it succeeds or ``timeout`` passes; returns (result, failures before)."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            return op(), failures
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            failures += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout:.0f}s ({failures} tries): {e}") from e
            time.sleep(0.5)


class Flow:
    """PUTs back to back from a thread: what was acknowledged, what failed, how long each took."""

    def __init__(self, s3) -> None:
        self.s3 = s3
        self.acked: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.started: list[float] = []
        self.acked_started: list[float] = []
        self.slowest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "a PUT of the flow never finished"

    def acked_during_cut(self, cut_at: float) -> int:
        return sum(1 for t in self.acked_started if t > cut_at)

    def wait_acked_during_cut(self, cut_at: float, count: int, timeout: float) -> None:
        """Until ``count`` PUTs begun after the cut are acknowledged, or ``timeout`` passes: a PUT
        in flight at the cut may wait out an RPC deadline or two, so how many begin in a fixed
        time is the machine's speed, not the store's behaviour."""
        deadline = time.monotonic() + timeout
        while self.acked_during_cut(cut_at) < count and not self.failures and time.monotonic() < deadline:
            time.sleep(0.05)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key, body = f"flow/{n}", data(256 * KiB + n, 500 + n)
            began = time.monotonic()
            self.started.append(began)
            try:
                self.s3.put_object(Bucket="hosts", Key=key, Body=body)
                self.acked[key] = body
                self.acked_started.append(began)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                self.failures.append(f"{key}: {e}")
            self.slowest_s = max(self.slowest_s, time.monotonic() - began)
            n += 1


def read_back(s3, acked: dict[str, bytes]) -> int:
    """Every acknowledged object, byte-exact; returns how many reads had to be retried."""
    retried = 0
    for key, body in acked.items():
        got, failures = retry(lambda: s3.get_object(Bucket="hosts", Key=key)["Body"].read(), f"GET {key}")
        retried += failures
        assert got == body, f"{key}: wrong bytes"
    return retried


def test_losing_a_whole_host(hosts_cluster, record_property):
    c, hosts = hosts_cluster
    record_property("hosts_mode", hosts.describe())
    s3 = c.s3_client(0, response_checksum_validation="when_required")

    # The layout is one `headwater status` finds safe for EC 2+1: a host costs one fragment.
    status = c.headwater("status", "-c", str(c.config_path))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "on 6 storage nodes, 3 hosts" in status.stdout and "host loss (host" in status.stdout
    assert "warning:" not in status.stdout, status.stdout

    s3.create_bucket(Bucket="hosts")
    acked: dict[str, bytes] = {}
    for i, size in enumerate([100, 70 * KiB, 200 * KiB + 3, 600 * KiB + 11, 1024 * KiB]):
        body = data(size, i)
        s3.put_object(Bucket="hosts", Key=f"before/{i}", Body=body)
        acked[f"before/{i}"] = body

    # Every stripe's fragments sit on three different hosts.
    hosts_by_oid: dict[str, list[int]] = defaultdict(list)
    for d in c.storage:
        for path in c.fragment_files(d.id):
            hosts_by_oid[path.name.rsplit(".", 1)[0]].append(host_of(d.id))
    assert hosts_by_oid and all(sorted(h) == [0, 1, 2] for h in hosts_by_oid.values()), dict(hosts_by_oid)

    # A writer PUTs back to back from before the cut until after it, so PUTs are in flight
    # when the host goes: each must route around it (handoff nodes) rather than fail.
    flow = Flow(c.s3_client(0, response_checksum_validation="when_required"))
    flow.start()
    time.sleep(1.0)

    # Cut host 0 off: meta-1, storage-1 and storage-2 fall silent.
    lost = [d for d in c.daemons if d.role != "gateway" and host_of(d.id) == 0]
    hosts.cut(0, pids=lambda: [c.procs[d.id].pid for d in lost])
    cut_at = time.monotonic()
    time.sleep(2 * RPC_TIMEOUT_S)  # the flow's PUTs meet the cut before the writes below

    # Writes go on: the first may wait out the gateway noticing, the rest must just work.
    write_failures = 0
    for i, size in enumerate([50 * KiB, 300 * KiB + 5, 700 * KiB, 5 * KiB, 130 * KiB]):
        key, body = f"during/{i}", data(size, 100 + i)
        _, failures = retry(lambda: s3.put_object(Bucket="hosts", Key=key, Body=body), f"PUT {key}")
        write_failures += failures
        acked[key] = body
    flow.wait_acked_during_cut(cut_at, 3, timeout=SETTLE_S)
    flow.stop()
    acked.update(flow.acked)
    read_retries = read_back(s3, acked)
    listed = retry(lambda: s3.list_objects_v2(Bucket="hosts")["Contents"], "LIST")[0]
    assert sorted(o["Key"] for o in listed) == sorted(acked)
    served_s = time.monotonic() - cut_at
    print(f"host 0 cut off: {len(acked)} objects read back byte-exact, {write_failures} PUT and "
          f"{read_retries} GET attempts failed before succeeding; the flow wrote {len(flow.acked)} "
          f"({flow.acked_during_cut(cut_at)} begun after the cut), slowest PUT {flow.slowest_s:.1f}s, "
          f"failed {flow.failures}; {served_s:.1f}s")
    record_property("host_cut_failed_attempts", write_failures + read_retries + len(flow.failures))
    # No window of refusals: not one PUT or GET failed (botocore's own retries aside), and PUTs
    # went on after the cut (before handoff, a 2+1 cluster answered 503 for 30 s and more).
    assert not flow.failures, flow.failures
    assert write_failures == 0 and read_retries == 0, (write_failures, read_retries)
    assert flow.acked_during_cut(cut_at) >= 3, (cut_at, flow.started)

    # The host comes back: everything acknowledged is still there, and writes still work.
    hosts.heal(0)
    body = data(400 * KiB, 999)
    retry(lambda: s3.put_object(Bucket="hosts", Key="after", Body=body), "PUT after heal")
    acked["after"] = body
    read_back(s3, acked)
