"""Metadata ring membership change on real daemons, with an S3 client running throughout.

Three metadata nodes, three storage nodes (EC 2+1) and the gateway, each its own process. While
client threads PUT (new keys and overwrites, small and multi-MiB) and GET through the gateway,
an operator:

1. adds a fourth metadata node: a ``[[metadata]]`` entry in cluster.toml, that daemon alone
   started (empty data_dir: it joins the ring and holds nothing), then the real
   ``headwater meta rebalance`` CLI; afterwards ``headwater meta status`` exits 0 and shows the
   new node a voter of exactly the groups placement gives it;
2. replaces a founding node: ``drain = true`` on the one that leads the most groups (so leaders
   remove themselves), ``headwater meta rebalance`` again, ``meta status`` shows the drained node
   in no group; then it is killed with SIGKILL and its entry removed from cluster.toml.

The gateway keeps its original cluster.toml until the end (it follows the groups through the
nodes' hints); then it is restarted with the new file and must read everything (it routes by
the new placement). What must hold:

* the client makes progress during each rebalance; 503s (a leader that removes itself means an
  election, one or two election timeouts) come in short bursts: counted and bounded, not zero;
* every acknowledged PUT reads back byte-exact (md5 and length) and is listed, before and after
  the gateway restart; a PUT that got no answer (503) left either nothing or its exact bytes.

Each key has one writer thread, so what it may hold is known exactly (see
test_metadata_faults.py). The slow variant (``-m slow``) does three rounds of add-one,
drain-one, so that no founding node is left and the gateway's original cluster.toml names only
dead nodes. Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from headwater import config as hwconfig
from headwater.objstore.metadata.partition import PartitionMap, group_name
from tests.cluster import Cluster, client_error

KiB, MiB = 1024, 1024 * 1024
ELECTION_TIMEOUT_S = 0.5
METADATA_TIMEOUT_S = 5.0
CLUSTER_OPTIONS = dict(k=2, m=1, storage_nodes=3, stripe_size=256 * KiB, inline_max_size=4 * KiB,
                       min_part_size=5 * MiB, rpc_timeout_seconds=5,
                       extra_objstore={"raft_election_timeout_seconds": ELECTION_TIMEOUT_S,
                                       "metadata_timeout_seconds": METADATA_TIMEOUT_S})
READ_TIMEOUT_S = 30.0
CLIENTS = 4
SMALL = [0, 1, 300, 4 * KiB, 4 * KiB + 1, 20_000, 150_000, 600_000]
LARGE = [MiB + 3, 2 * MiB + 17, 3 * MiB]
LARGE_SHARE = 0.05
# The longest the client may go without a single acknowledged request while groups move. A
# leader that removes itself means an election (1-2 election timeouts, about 0.5 s seen here);
# the bound leaves room for a loaded machine but not for requests that run out their whole
# metadata deadline.
MAX_STALL_S = METADATA_TIMEOUT_S
# 503s in a row for one client: each burst is one election; a few in a row at most.
MAX_503_STREAK = 4

CLIENT_GONE = (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError,
               botocore.exceptions.ConnectionClosedError, botocore.exceptions.ResponseStreamingError,
               botocore.exceptions.IncompleteReadError)


def s3_client(cluster: Cluster):
    u = cluster.users[0]
    # total_max_attempts (not max_attempts) = 1: botocore retries nothing behind the test's back.
    cfg = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"},
                 connect_timeout=5, read_timeout=READ_TIMEOUT_S, signature_version="s3v4",
                 response_checksum_validation="when_required", max_pool_connections=2)
    return boto3.client("s3", endpoint_url=cluster.endpoint, region_name=cluster.region,
                        aws_access_key_id=u.access_key, aws_secret_access_key=u.secret_key, config=cfg)


def body_for(tag: str, size: int) -> bytes:
    head = tag.encode() + b"\n"
    if size <= len(head):
        return head[:size]
    return head + random.Random(tag).randbytes(size - len(head))


Value = tuple[str, int] | None   # (md5, length) of a body, None = absent


def value_of(body: bytes) -> tuple[str, int]:
    return hashlib.md5(body).hexdigest(), len(body)


def show(v: Value) -> str:
    return "absent" if v is None else f"{v[1]} bytes md5 {v[0][:8]}"


@dataclass(slots=True)
class KeyState:
    possible: set = field(default_factory=lambda: {None})   # values the key may hold now
    written: set = field(default_factory=set)               # every value ever PUT to it
    loose: bool = False       # a request lost its connection: it may land at any later time

    def allowed(self) -> set:
        return self.written | {None} if self.loose else self.possible

    @property
    def acked(self) -> bool:
        """An acknowledged PUT fixed what it holds."""
        return len(self.possible) == 1 and None not in self.possible


@dataclass(slots=True)
class Ledger:
    keys: dict[str, KeyState] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    events: list[tuple[float, int, str]] = field(default_factory=list)  # (monotonic, client, "ok"/"503"/...)
    violations: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, client: int, what: str, count: str) -> None:
        with self.lock:
            self.events.append((time.monotonic(), client, what))
            self.counts[count] = self.counts.get(count, 0) + 1

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Acknowledged requests, 503s, the longest time with no acknowledged request (from
        ``t0`` to ``t1``) and the longest run of 503s one client had, in [t0, t1]."""
        with self.lock:
            ev = [e for e in self.events if t0 <= e[0] <= t1]
        oks = [t for t, _, w in ev if w == "ok"]
        gaps = [b - a for a, b in zip([t0, *oks], [*oks, t1])]
        streak: dict[int, int] = {}
        longest = 0
        for _, c, w in ev:
            streak[c] = streak.get(c, 0) + 1 if w == "503" else 0
            longest = max(longest, streak[c])
        return {"seconds": round(t1 - t0, 2), "acked": len(oks), "503": sum(1 for e in ev if e[2] == "503"),
                "lost": sum(1 for e in ev if e[2] == "lost"), "stall_s": round(max(gaps), 2),
                "503_streak": longest}


class Writer:
    """One client thread on its own keys: PUT of a new key, overwrite, GET; small bodies mostly,
    a multi-MiB one now and then. Every answer is folded into the ledger; a GET that returns
    what the key cannot hold is a violation."""

    def __init__(self, cluster: Cluster, bucket: str, ledger: Ledger, index: int, seed: int):
        self.s3 = s3_client(cluster)
        self.bucket, self.ledger, self.index = bucket, ledger, index
        self.rng = random.Random(seed * 1000 + index)
        self.own: list[str] = []
        self.seq = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.one()
            except Exception as e:  # a bug in the test or the server: report it, keep going
                with self.ledger.lock:
                    self.ledger.unexpected.append(f"w{self.index}: {e!r}"[:500])
                time.sleep(0.1)

    def one(self) -> None:
        self.seq += 1
        op = self.rng.choices(["new", "overwrite", "get"], [45, 15, 40])[0] if self.own else "new"
        if op == "get":
            return self.read(self.rng.choice(self.own))
        if op == "new":
            key = f"w{self.index}/k{self.seq}"
            self.own.append(key)
        else:
            key = self.rng.choice(self.own)
        st = self.ledger.keys.setdefault(key, KeyState())
        size = self.rng.choice(LARGE) if self.rng.random() < LARGE_SHARE else self.rng.choice(SMALL)
        body = body_for(f"{key}#{self.seq}", size)
        value = value_of(body)
        st.written.add(value)
        kind = "put large" if size >= MiB else "put"
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        except botocore.exceptions.ClientError as e:
            status, code = client_error(e)
            if status != 503:
                self.ledger.note(self.index, "refused", f"{kind} {status} {code}")
                with self.ledger.lock:
                    self.ledger.unexpected.append(f"PUT {key}: {status} {code} {e}"[:500])
                return
            self.ledger.note(self.index, "503", f"{kind} 503")
            st.possible.add(value)
            return
        except CLIENT_GONE as e:
            self.ledger.note(self.index, "lost", f"{kind} {type(e).__name__}")
            st.possible.add(value)
            st.loose = True
            return
        st.possible = {value}
        self.ledger.note(self.index, "ok", f"{kind} acked")

    def read(self, key: str) -> None:
        st = self.ledger.keys[key]
        try:
            got: Value = value_of(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except botocore.exceptions.ClientError as e:
            status, code = client_error(e)
            if status == 503:
                self.ledger.note(self.index, "503", "get 503")
                return
            if (status, code) != (404, "NoSuchKey"):
                self.ledger.note(self.index, "refused", f"get {status} {code}")
                with self.ledger.lock:
                    self.ledger.unexpected.append(f"GET {key}: {status} {code} {e}"[:500])
                return
            got = None
        except CLIENT_GONE as e:
            self.ledger.note(self.index, "lost", f"get {type(e).__name__}")
            return
        self.ledger.note(self.index, "ok", "get ok")
        if got not in st.allowed():
            with self.ledger.lock:
                self.ledger.violations.append(f"GET {key} during the run: {show(got)}; may hold only "
                                              f"{sorted(map(show, st.allowed()), key=str)}")
        elif not st.loose:
            st.possible = {got}


class Workload:
    def __init__(self, cluster: Cluster, bucket: str, n: int):
        self.seed = random.randrange(2**32)
        self.ledger = Ledger()
        self.stop_event = threading.Event()
        self.writers = [Writer(cluster, bucket, self.ledger, i, self.seed) for i in range(n)]
        self.threads = [threading.Thread(target=w.run, args=(self.stop_event,), name=f"writer-{w.index}",
                                         daemon=True) for w in self.writers]

    def __enter__(self) -> Workload:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=READ_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self.threads), "a client thread hangs"

    def __exit__(self, *exc: object) -> None:
        self.stop()


def verify(cluster: Cluster, bucket: str, ledger: Ledger, retry_for: float = 20.0) -> dict[str, int]:
    """Every key holds a value its history allows (every acknowledged PUT byte-exact), and a
    listing names exactly the keys that hold something. 503s are retried for ``retry_for`` s.
    The GETs run in ``CLIENTS`` threads."""
    deadline = time.monotonic() + retry_for
    problems = list(ledger.violations)
    held: dict[str, Value] = {}
    retried = [0]
    lock = threading.Lock()

    def check(keys: list[str]) -> None:
        s3 = s3_client(cluster)
        for key in keys:
            st = ledger.keys[key]
            while True:
                try:
                    got: Any = value_of(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                except botocore.exceptions.ClientError as e:
                    if client_error(e) == (404, "NoSuchKey"):
                        got = None
                    elif client_error(e)[0] == 503 and time.monotonic() < deadline:
                        with lock:
                            retried[0] += 1
                        time.sleep(0.2)
                        continue
                    else:
                        with lock:
                            problems.append(f"GET {key}: {client_error(e)} {e}")
                        got = ...
                except CLIENT_GONE as e:
                    with lock:
                        problems.append(f"GET {key}: {e!r}")
                    got = ...
                break
            if got is ...:
                continue
            with lock:
                held[key] = got
                if got not in st.allowed():
                    problems.append(f"{key} holds {show(got)}; may hold only "
                                    f"{sorted(map(show, st.allowed()), key=str)}"
                                    + (" (an ACKNOWLEDGED write lost)" if st.acked else ""))

    keys = sorted(ledger.keys)
    threads = [threading.Thread(target=check, args=(keys[i::CLIENTS],), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a GET hangs"
    s3 = s3_client(cluster)
    listed: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        listed |= {o["Key"] for o in page.get("Contents", [])}
    present = {k for k, v in held.items() if v is not None}
    for what, bad in (("readable keys not listed", present - listed),
                      ("listed keys that read as absent", {k for k in listed - present if k in held}),
                      ("listed keys no one wrote", listed - set(ledger.keys))):
        if bad:
            problems.append(f"{len(bad)} {what}: {sorted(bad)[:10]}")
    acked = [k for k, st in ledger.keys.items() if st.acked]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
    return {"keys": len(ledger.keys), "acked": len(acked), "present": len(present),
            "bytes": sum(v[1] for v in held.values() if v is not None), "retried_503": retried[0]}


# --- the operator's side -------------------------------------------------------------------------

def meta(cluster: Cluster, action: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return cluster.headwater("meta", action, "-c", str(cluster.config_path), timeout=timeout)


def status_table(out: str) -> dict[str, dict[str, Any]]:
    """``headwater meta status`` rows: group -> {leader, voters, placement, state}."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines and lines[0].split()[:4] == ["GROUP", "LEADER", "VOTERS", "PLACEMENT"], out
    rows = {}
    for ln in lines[1:]:
        parts = ln.split(None, 4)
        if len(parts) < 5 or not parts[0].startswith("g"):
            continue
        g, leader, voters, placement, state = parts
        rows[g] = {"leader": leader, "voters": set(voters.split(",")) - {"-"},
                   "placement": set(placement.split(",")), "state": state}
    return rows


def placement(cluster: Cluster) -> PartitionMap:
    return PartitionMap.from_cluster(hwconfig.load(cluster.config_path))


def raft_groups(cluster: Cluster, node: str) -> dict[str, dict[str, Any]]:
    r = cluster.healthz(cluster.daemon(node), timeout=2.0)
    assert r is not None and r.status_code == 200, f"{node} /healthz: {r}"
    return r.json()["raft"]


def run_rebalance(cluster: Cluster, ledger: Ledger, what: str) -> tuple[subprocess.CompletedProcess, dict]:
    t0 = time.monotonic()
    res = meta(cluster, "rebalance")
    t1 = time.monotonic()
    assert res.returncode == 0, (f"meta rebalance ({what}) exited {res.returncode}\nstdout:\n{res.stdout}\n"
                                 f"stderr:\n{res.stderr}\n" + "\n".join(cluster.log_tail(d.id, 20)
                                                                         for d in cluster.metadata))
    # The client's view of the move, and of the few seconds after it (a request caught by the
    # last step may answer after the CLI has returned).
    time.sleep(1.0)
    return res, {"during": ledger.window(t0, t1), "after": ledger.window(t1, time.monotonic())}


def check_status(cluster: Cluster) -> dict[str, dict[str, Any]]:
    res = meta(cluster, "status")
    rows = status_table(res.stdout)
    assert res.returncode == 0, f"meta status exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    ring = placement(cluster)
    assert set(rows) == {group_name(g) for g in range(ring.groups)}, res.stdout
    for g in range(ring.groups):
        row = rows[group_name(g)]
        assert row["voters"] == row["placement"] == set(ring.members_of(g)), res.stdout
        assert row["leader"] in row["voters"] and row["state"] == "in place", res.stdout
    return rows


# --- the test --------------------------------------------------------------------------------------

@pytest.fixture
def cluster(request, tmp_path_factory):
    """A cluster of its own for each test: the test changes its metadata membership."""
    from tests.conftest import _cluster_fixture
    yield from _cluster_fixture(request, tmp_path_factory)


def replace_round(cluster: Cluster, led: Ledger, founders: list[str]) -> dict[str, Any]:
    """Add a metadata node and rebalance; drain the busiest remaining founder (else the oldest
    node) and rebalance; kill it and drop its entry. Checks ``meta status`` after each step."""
    out: dict[str, Any] = {"timings": {}}
    # 1. a new metadata node: joins the ring, holds nothing until the rebalance
    t = time.monotonic()
    new = cluster.add_metadata_node()
    out["timings"]["start " + new.id] = time.monotonic() - t
    assert raft_groups(cluster, new.id) == {}, "a node that joined holds groups before any rebalance"
    before = meta(cluster, "status")
    assert before.returncode == 1, f"meta status before the rebalance: want exit 1 (groups to move)\n{before.stdout}"
    t = time.monotonic()
    res, out["add"] = run_rebalance(cluster, led, "add " + new.id)
    out["timings"]["rebalance add"] = time.monotonic() - t
    rows = check_status(cluster)
    ring = placement(cluster)
    mine = {group_name(g) for g in range(ring.groups) if new.id in ring.members_of(g)}
    assert mine and {g for g, r in rows.items() if new.id in r["voters"]} == mine, rows
    for d in cluster.metadata:   # each node holds exactly the groups placement gives it
        want = {group_name(g) for g in range(ring.groups) if d.id in ring.members_of(g)}
        assert set(raft_groups(cluster, d.id)) == want, f"{d.id}: {raft_groups(cluster, d.id)}, want {sorted(want)}"

    # 2. drain the founder that leads the most groups: leaders remove themselves
    current = [d.id for d in cluster.metadata]
    candidates = [f for f in founders if f in current] or [n for n in current if n != new.id][:1]
    lead = {f: sum(1 for g in raft_groups(cluster, f).values() if g["role"] == "leader") for f in candidates}
    drained = max(candidates, key=lambda f: (lead[f], f))
    cluster.set_drain(drained)
    t = time.monotonic()
    res2, out["drain"] = run_rebalance(cluster, led, "drain " + drained)
    out["timings"]["rebalance drain"] = time.monotonic() - t
    assert f"drained: {drained}" in res2.stdout, res2.stdout
    rows = check_status(cluster)
    assert not any(drained in r["voters"] or drained in r["state"] for r in rows.values()), rows
    assert raft_groups(cluster, drained) == {}, f"{drained} still holds {raft_groups(cluster, drained)}"
    cluster.kill_node(drained, signal.SIGKILL)
    check_status(cluster)   # its entry still there (drain = true), the node gone: all in place
    # the operator removes the drained node's entry; still all in place
    cluster.remove_metadata_node(drained)
    check_status(cluster)
    out.update(new=new.id, drained=drained, led=lead, stdout=res.stdout + res2.stdout, killed_at=time.monotonic())
    return out


def membership_change(cluster: Cluster, rounds: int, run_after_s: float) -> None:
    s3 = s3_client(cluster)
    bucket = "members"
    s3.create_bucket(Bucket=bucket)
    founders = [d.id for d in cluster.metadata]
    done: list[dict[str, Any]] = []
    with Workload(cluster, bucket, CLIENTS) as w:
        led = w.ledger
        time.sleep(1.5)
        assert led.counts.get("put acked", 0) > 0, f"no PUT acknowledged before the change: {led.counts}"
        for _ in range(rounds):
            done.append(replace_round(cluster, led, founders))
            time.sleep(run_after_s)
            done[-1]["killed"] = led.window(done[-1]["killed_at"], time.monotonic())
    assert not led.unexpected, "unexpected answers:\n" + "\n".join(led.unexpected[:20])

    timings: dict[str, float] = {}
    t = time.monotonic()
    result = verify(cluster, bucket, led)
    timings["verify"] = time.monotonic() - t
    # the gateway restarted with the new cluster.toml routes by the new placement
    t = time.monotonic()
    cluster.restart_node(cluster.gateway.id)
    result_restarted = verify(cluster, bucket, led)
    timings["restart + verify"] = time.monotonic() - t

    print(f"\nseed {w.seed}; counts {led.counts}")
    for r in done:
        print(f"added {r['new']}, drained {r['drained']} (groups led {r['led']}):\n"
              f"  client during/after the add rebalance: {r['add']}\n"
              f"  client during/after the drain rebalance: {r['drain']}\n"
              f"  client after {r['drained']} was killed: {r['killed']}\n"
              f"  timings {({k: round(v, 1) for k, v in r['timings'].items()})}")
    print(f"verified {result}; after the gateway restart {result_restarted}; "
          f"timings {({k: round(v, 1) for k, v in timings.items()})}\n"
          f"meta rebalance said:\n{''.join(r['stdout'] for r in done)}")

    for r in done:
        for what in ("add", "drain"):
            win = r[what]
            assert win["during"]["acked"] > 0, f"the client made no progress during the {what} rebalance: {win}"
            for part in ("during", "after"):
                assert win[part]["stall_s"] <= MAX_STALL_S, (
                    f"no request acknowledged for {win[part]['stall_s']}s {part} the {what} rebalance: {win}")
                assert win[part]["503_streak"] <= MAX_503_STREAK, (
                    f"a burst of 503s {part} the {what} rebalance: {win}")
        k = r["killed"]
        assert k["acked"] > 0 and k["503"] == 0 and k["stall_s"] <= MAX_STALL_S, (
            f"after the drained (no longer a member) {r['drained']} was killed: {k}")
    assert led.counts.get("put large acked", 0) > 0, f"no multi-MiB PUT acknowledged: {led.counts}"
    assert result["acked"] > 50, result


def test_add_then_replace_a_metadata_node_under_load(cluster):
    """Add meta-4 and rebalance, drain the busiest founder and rebalance, kill it; the client
    runs throughout, and every acknowledged object is intact, before and after a gateway restart."""
    membership_change(cluster, rounds=1, run_after_s=3.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replace_every_founding_metadata_node_under_load(cluster):
    """Three rounds of add-one, drain-one: at the end no founding node is left (a node added
    last joins through nodes that were not founders), and the gateway, which has run since the
    start on the original cluster.toml naming only dead nodes, still serves everything through
    the hints; then restarted with the new file, too."""
    membership_change(cluster, rounds=3, run_after_s=2.0)
