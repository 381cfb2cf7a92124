"""Linearizability of single-key operations while nodes are killed and restarted.

Client threads run random GET / PUT / DELETE / conditional PUT (``If-None-Match: *``,
``If-Match: <etag>``) on a few keys, each PUT with a value no one else writes (so a read names
the write it saw), and record every op with its invocation and completion times. A nemesis
thread SIGKILLs and restarts storage nodes (at most m=2 down at once) and, in some tests, one
metadata node at a time. Then tests/linearizability.py checks the history key by key: every
key must behave as one atomic register.

Outcomes: 2xx, 404 on GET, and 412 (or 404 on If-Match) are known; a 5xx, a timeout or a
broken connection leaves the op's outcome unknown (it may or may not have taken effect); 409
ConditionalRequestConflict is S3's "not applied" and is left out of the history.

The metadata ring is Raft (one consensus group per replica set, linearizable reads through
the leader), so the full model must hold under every fault here, including a metadata leader
killed mid-write. The slow soaks run it for ``HEADWATER_SOAK_SECONDS`` (default 600), one of
them also killing the gateway (every write's client). ``HEADWATER_CONSISTENCY_SECONDS`` sets the
default test's length (20). Run with ``-s`` to see each run's summary: ops, unknown outcomes,
faults injected, and on a violation the ops that prove it.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.cluster import Cluster
from tests.linearizability import CheckResult, Kind, Recorder, check

KiB = 1024
CLUSTER_OPTIONS = dict(k=4, m=2, stripe_size=64 * KiB, inline_max_size=2 * KiB, min_part_size=100 * KiB,
                       rpc_timeout_seconds=3,
                       extra_objstore={"raft_election_timeout_seconds": 0.5, "metadata_timeout_seconds": 4})
M = 2                       # storage nodes that may be down at once
REQUEST_TIMEOUT_S = 5.0     # boto3 connect and read timeouts; one attempt
SOAK_SECONDS = float(os.environ.get("HEADWATER_SOAK_SECONDS", "600"))
UNKNOWN_HORIZON_S = 30.0    # if the strict check is inconclusive: unknown outcomes settle within this

# A refused or timed-out connect means the request never left, provided botocore makes exactly
# one attempt: its retries={"max_attempts": 1} still retries once (it counts retries), and a
# PUT stored by a gateway killed before answering came back as the retry's refused connect.
# That, not the store, was the "read of a value whose PUT failed" seen in gateway-kill runs.
# Measured with total_max_attempts=1: 0 of 531 PUTs that failed so were stored (25 of 1,028
# with the hidden retry). HEADWATER_CONNECT_ERRORS_UNKNOWN=1 counts them unknown anyway.
NOT_SENT_ERRORS = ((botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)
                   if os.environ.get("HEADWATER_CONNECT_ERRORS_UNKNOWN") != "1" else ())
UNKNOWN_ERRORS = (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError,
                  botocore.exceptions.ConnectionClosedError, botocore.exceptions.ResponseStreamingError,
                  botocore.exceptions.IncompleteReadError)

ALL_KINDS = {Kind.READ: 40, Kind.WRITE: 20, Kind.DELETE: 10, Kind.PUT_IF_ABSENT: 15, Kind.PUT_IF_MATCH: 15}
UNCONDITIONAL = {Kind.READ: 55, Kind.WRITE: 35, Kind.DELETE: 10}


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    seconds: float
    clients: int = 6
    keys: int = 5
    kinds: dict = field(default_factory=lambda: dict(ALL_KINDS))
    kill_storage: bool = True
    kill_metadata: bool = False
    kill_gateway: bool = False
    single_writer: bool = False     # client i writes only key i % keys (reads any key)
    fault_interval_s: tuple[float, float] = (1.5, 3.5)
    seed: int = field(default_factory=lambda: random.randrange(2**32))


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultInjected:
    at: float
    action: str    # "kill" / "restart"
    node: str


@dataclass(slots=True, kw_only=True)
class Run:
    workload: Workload
    history: list
    faults: list[FaultInjected]
    unexpected: list[str]
    conflicts: int
    result: CheckResult | None = None
    started: float = 0.0

    def summary(self) -> str:
        h = self.history
        known = [o for o in h if not o.unknown]
        by_kind = {k.value: sum(1 for o in h if o.kind is k) for k in Kind}
        applied = {k.value: sum(1 for o in known if o.kind is k and o.result)
                   for k in (Kind.PUT_IF_ABSENT, Kind.PUT_IF_MATCH)}
        present = sum(1 for o in known if o.kind is Kind.READ and o.result is not None)
        kills = [f for f in self.faults if f.action == "kill"]
        lines = [f"seed {self.workload.seed}: {len(h)} ops ({len(h) - len(known)} unknown outcome, "
                 f"{self.conflicts} 409 left out) by kind {by_kind}; conditional puts applied {applied}; "
                 f"reads that found a value {present}",
                 f"{len(kills)} kills: " + ", ".join(f"{f.node}@{f.at - self.started:.1f}s" for f in kills)]
        if self.result is not None:
            lines.append(self.result.explain())
        return "\n".join(lines)


# --- values --------------------------------------------------------------------------------------

def body_for(tag: str) -> bytes:
    """The object written for value ``tag``: the tag on the first line, then padding derived from
    it; every other tag's body is erasure-coded (bigger than inline_max_size), the rest inline."""
    size = 6 * KiB if hashlib.sha256(tag.encode()).digest()[0] % 2 else 200
    pad = hashlib.sha256(tag.encode()).hexdigest().encode()
    return (tag.encode() + b"\n" + pad * (size // len(pad) + 1))[:size]


def etag_for(tag: str) -> str:
    return '"' + hashlib.md5(body_for(tag)).hexdigest() + '"'


def tag_of(body: bytes) -> str:
    """The value a GET returned; bytes that match no write's body name a value never written."""
    tag = body.split(b"\n", 1)[0].decode(errors="replace")
    return tag if body == body_for(tag) else f"CORRUPT({len(body)} bytes, starts {body[:24]!r})"


# --- the clients ---------------------------------------------------------------------------------

def client_for(cluster: Cluster):
    u = cluster.users[0]
    cfg = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"},
                 connect_timeout=REQUEST_TIMEOUT_S, read_timeout=REQUEST_TIMEOUT_S, signature_version="s3v4",
                 response_checksum_validation="when_required", max_pool_connections=2)
    return boto3.client("s3", endpoint_url=cluster.endpoint, region_name=cluster.region,
                        aws_access_key_id=u.access_key, aws_secret_access_key=u.secret_key, config=cfg)


class Clients:
    def __init__(self, cluster: Cluster, bucket: str, w: Workload, rec: Recorder, stop: threading.Event):
        self.cluster, self.bucket, self.w, self.rec, self.stop = cluster, bucket, w, rec, stop
        self.keys = [f"k{i}" for i in range(w.keys)]
        self.unexpected: list[str] = []
        self.conflicts = 0
        self._lock = threading.Lock()

    def run(self, process: int) -> None:
        s3 = client_for(self.cluster)
        rng = random.Random(self.w.seed * 1000 + process)
        kinds, weights = zip(*self.w.kinds.items())
        seen: dict[str, str] = {}     # key -> the last value this client read or wrote
        seq = 0
        while not self.stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            key = rng.choice(self.keys)
            if self.w.single_writer and kind is not Kind.READ:
                key = self.keys[process % len(self.keys)]
            seq += 1
            tag = f"p{process}-{seq}"
            expected = seen.get(key) or f"p{process}-never"
            try:
                self.one(s3, process, kind, key, tag, expected, seen)
            except Exception as e:  # a bug in the harness or the server: report, keep going
                with self._lock:
                    self.unexpected.append(f"p{process} {kind.value} {key}: {e!r}")
                time.sleep(0.1)

    def one(self, s3, process: int, kind: Kind, key: str, tag: str, expected: str, seen: dict) -> None:
        conditional = kind in (Kind.PUT_IF_ABSENT, Kind.PUT_IF_MATCH)
        writes = kind is not Kind.READ and kind is not Kind.DELETE
        i = self.rec.invoke(process=process, key=key, kind=kind, value=tag if writes else None,
                            expected=expected if kind is Kind.PUT_IF_MATCH else None)
        b = self.bucket
        try:
            if kind is Kind.READ:
                value = tag_of(s3.get_object(Bucket=b, Key=key)["Body"].read())
                self.rec.ok(i, value)
                seen[key] = value
            elif kind is Kind.DELETE:
                s3.delete_object(Bucket=b, Key=key)
                self.rec.ok(i)
            else:
                extra = ({"IfNoneMatch": "*"} if kind is Kind.PUT_IF_ABSENT
                         else {"IfMatch": etag_for(expected)} if kind is Kind.PUT_IF_MATCH else {})
                s3.put_object(Bucket=b, Key=key, Body=body_for(tag), **extra)
                self.rec.ok(i, True if conditional else None)
                seen[key] = tag
        except botocore.exceptions.ClientError as e:
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            code = e.response["Error"].get("Code")
            if kind is Kind.READ and status == 404 and code == "NoSuchKey":
                self.rec.ok(i, None)
                seen.pop(key, None)
            elif conditional and (status == 412 or (kind is Kind.PUT_IF_MATCH and status == 404)):
                self.rec.ok(i, False)
            elif conditional and status == 409:
                self.rec.discard(i)
                with self._lock:
                    self.conflicts += 1
            elif status >= 500:
                self.rec.unknown(i)
                time.sleep(0.05)
            else:
                self.rec.unknown(i)
                raise
        except NOT_SENT_ERRORS:
            self.rec.discard(i)
            time.sleep(0.1)
        except UNKNOWN_ERRORS:
            self.rec.unknown(i)
            time.sleep(0.05)


# --- the nemesis ---------------------------------------------------------------------------------

def nemesis(cluster: Cluster, w: Workload, stop: threading.Event, faults: list[FaultInjected],
            errors: list[str]) -> None:
    """Kill and restart nodes until ``stop``; never more than M storage nodes or one metadata
    node down. Everything is running again when it returns. (While the gateway is down the only
    move is to restart it: ``restart_node`` waits for the S3 port.)"""
    rng = random.Random(w.seed + 1)
    gateway = cluster.gateway.id
    down: list[str] = []

    def kill(node: str) -> None:
        faults.append(FaultInjected(at=time.monotonic(), action="kill", node=node))
        cluster.kill_node(node, signal.SIGKILL)
        down.append(node)

    def restart(node: str) -> None:
        faults.append(FaultInjected(at=time.monotonic(), action="restart", node=node))
        cluster.restart_node(node)
        down.remove(node)

    try:
        while not stop.wait(rng.uniform(*w.fault_interval_s)):
            if gateway in down:
                restart(gateway)
                continue
            storage_down = [n for n in down if n.startswith("storage")]
            meta_down = [n for n in down if n.startswith("meta")]
            actions = [("restart", n) for n in down]
            if w.kill_storage and len(storage_down) < M:
                actions += [("kill", d.id) for d in cluster.storage if d.id not in down]
            if w.kill_metadata and not meta_down:
                actions += [("kill", d.id) for d in cluster.metadata] * 2
            if w.kill_gateway:
                actions += [("kill", gateway)] * 2
            if actions:
                action, node = rng.choice(actions)
                (kill if action == "kill" else restart)(node)
    except Exception as e:
        errors.append(f"nemesis: {e!r}"[:2000])
    finally:
        for node in sorted(down, key=lambda n: n != gateway):
            try:
                restart(node)
            except Exception as e:
                errors.append(f"nemesis could not restart {node}: {e!r}"[:2000])


# --- a run ---------------------------------------------------------------------------------------

def run_workload(cluster: Cluster, bucket: str, w: Workload) -> Run:
    rec = Recorder()
    stop = threading.Event()
    faults: list[FaultInjected] = []
    clients = Clients(cluster, bucket, w, rec, stop)
    threads = [threading.Thread(target=clients.run, args=(p,), name=f"client-{p}", daemon=True)
               for p in range(w.clients)]
    nem = threading.Thread(target=nemesis, args=(cluster, w, stop, faults, clients.unexpected), name="nemesis",
                           daemon=True)
    started = time.monotonic()
    for t in threads:
        t.start()
    if w.kill_storage or w.kill_metadata or w.kill_gateway:
        nem.start()
    time.sleep(w.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=3 * REQUEST_TIMEOUT_S)
    if nem.ident is not None:
        nem.join(timeout=120)
    final_reads(cluster, bucket, clients, rec)
    run = Run(workload=w, history=rec.history(), faults=faults, unexpected=clients.unexpected,
              conflicts=clients.conflicts, started=started)
    run.result = check(run.history, timeout_s=max(20.0, w.seconds / 10))
    if run.result.ok is None:  # too many unknown outcomes for the strict model in the time given
        run.result = check(run.history, timeout_s=max(20.0, w.seconds / 10), unknown_horizon_s=UNKNOWN_HORIZON_S)
    print("\n" + run.summary())
    return run


def final_reads(cluster: Cluster, bucket: str, clients: Clients, rec: Recorder) -> None:
    """With every node back: read each key once more (a lost acknowledged write shows here)."""
    s3 = client_for(cluster)
    deadline = time.monotonic() + 30
    for key in clients.keys:
        while True:
            i = rec.invoke(process=clients.w.clients, key=key, kind=Kind.READ)
            try:
                rec.ok(i, tag_of(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
                break
            except botocore.exceptions.ClientError as e:
                if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                    rec.ok(i, None)
                    break
                rec.discard(i)
            except UNKNOWN_ERRORS:
                rec.discard(i)
            if time.monotonic() > deadline:
                clients.unexpected.append(f"{key} unreadable 30 s after every node came back")
                break
            time.sleep(0.5)


def assert_linearizable(run: Run) -> None:
    assert not run.unexpected, "unexpected errors:\n" + "\n".join(run.unexpected[:20])
    assert run.result is not None
    assert run.result.ok is not None, run.summary()
    assert run.result.ok, run.summary()
    assert len(run.history) > 100, f"too few ops to mean anything\n{run.summary()}"
    w = run.workload
    assert run.faults or not (w.kill_storage or w.kill_metadata or w.kill_gateway)


# --- the tests ----------------------------------------------------------------------------------

def test_linearizable_under_node_faults(cluster, bucket):
    """Every op kind, six clients on five keys, storage nodes and a metadata node killed (-9)
    and restarted: every key behaves as an atomic register."""
    w = Workload(seconds=float(os.environ.get("HEADWATER_CONSISTENCY_SECONDS", "20")), kill_metadata=True,
                 fault_interval_s=(1.0, 2.5))
    assert_linearizable(run_workload(cluster, bucket, w))


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_soak(cluster, bucket):
    """The same for HEADWATER_SOAK_SECONDS (default 600)."""
    w = Workload(seconds=SOAK_SECONDS, kill_metadata=True)
    assert_linearizable(run_workload(cluster, bucket, w))


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_soak_with_gateway_kills(cluster, bucket):
    """The soak with the gateway (every write's client) killed and restarted too: writes in
    flight when it dies have unknown outcomes, and must still resolve one way everywhere."""
    w = Workload(seconds=SOAK_SECONDS, kill_metadata=True, kill_gateway=True)
    assert_linearizable(run_workload(cluster, bucket, w))
