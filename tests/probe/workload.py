"""A single-writer-per-key S3 workload for probe tests under faults, its ledger, and the check
of what the bucket holds afterwards.

Client threads PUT, DELETE and GET their own keys through the gateway (with boto3, as an S3
client sees it) while a test kills, freezes or moves metadata nodes. A test module subclasses
``Writer`` with its op mix (``one()``); ``Workload`` runs ``n`` of them.

Each key is written by one thread only, so what it may hold is known exactly: an acknowledged
PUT or DELETE fixes it, an unacknowledged one (503, or a broken connection) adds a possibility,
and a read narrows it again (a Raft write whose answer was lost is ordered before the writer's
next request, or never applied). A connection that broke leaves the key loose: that request may
still land at any later time. The ``Ledger`` keeps each key's state, the counts and every answer
with its time (503 windows, stalls); ``verify`` reads every key back and lists the bucket.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from tests.cluster import Cluster, client_error

# Longer than any answer the gateway can take (a few metadata calls of metadata_timeout_seconds,
# 5 s in these probes): a client-side timeout would leave a request running in the gateway after
# the client moved on.
READ_TIMEOUT_S = 30.0

# A request whose connection broke or timed out: it may or may not have taken effect.
CLIENT_GONE = (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError,
               botocore.exceptions.ConnectionClosedError, botocore.exceptions.ResponseStreamingError,
               botocore.exceptions.IncompleteReadError)


def s3_client(cluster: Cluster, *, pool: int = 2, read_timeout: float = READ_TIMEOUT_S):
    """A boto3 client of the cluster's first user that makes each request once."""
    u = cluster.users[0]
    # total_max_attempts: botocore's "max_attempts" counts retries, so max_attempts=1 retries a
    # 503 or a timeout once, behind the test's back.
    cfg = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"},
                 connect_timeout=5, read_timeout=read_timeout, signature_version="s3v4",
                 response_checksum_validation="when_required", max_pool_connections=pool)
    return boto3.client("s3", endpoint_url=cluster.endpoint, region_name=cluster.region,
                        aws_access_key_id=u.access_key, aws_secret_access_key=u.secret_key, config=cfg)


def body_for(tag: str, size: int) -> bytes:
    """``size`` bytes that name the write they came from on their first line (the line cut
    short if ``size`` is shorter)."""
    head = tag.encode() + b"\n"
    if size <= len(head):
        return head[:size]
    return head + random.Random(tag).randbytes(size - len(head))


# --- what the ledger keeps of a body -------------------------------------------------------------

def describe(value: bytes | None) -> str:
    """A body (None: absent) for a failure message: its length, first line and md5."""
    if value is None:
        return "absent"
    first = value.split(b"\n", 1)[0][:40]
    return f"{len(value)} bytes {first!r} md5 {hashlib.md5(value).hexdigest()[:8]}"


def digest(body: bytes) -> tuple[str, int]:
    return hashlib.md5(body).hexdigest(), len(body)


def describe_digest(value: tuple[str, int] | None) -> str:
    return "absent" if value is None else f"{value[1]} bytes md5 {value[0][:8]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Values:
    """What the ledger keeps of each body: ``of(body)``, compared with ``of`` what a GET
    returns; ``size`` and ``show`` of a value (``show(None)``: absent) for the counts and the
    failure messages."""

    of: Callable[[bytes], Any]
    size: Callable[[Any], int]
    show: Callable[[Any], str]

    def shown(self, values: set) -> list[str]:
        return sorted(self.show(v) for v in values)


BODIES = Values(of=lambda body: body, size=len, show=describe)            # the bytes themselves
DIGESTS = Values(of=digest, size=lambda v: v[1], show=describe_digest)    # (md5, length): for MiB bodies


# --- the ledger ----------------------------------------------------------------------------------

@dataclass(slots=True)
class KeyState:
    """What one key may hold now, given its single writer's history."""

    possible: set = field(default_factory=lambda: {None})   # values it may hold; None = absent
    written: set = field(default_factory=set)               # every value ever PUT to it
    loose: bool = False   # a request lost its connection: it may take effect at any later time

    def allowed(self) -> set:
        return self.written | {None} if self.loose else self.possible

    @property
    def acked(self) -> bool:
        """An acknowledged PUT fixed what it holds."""
        return len(self.possible) == 1 and None not in self.possible


class Answer:
    """What a request came to, as the ledger records it."""

    ACKED = "acked"        # a PUT or DELETE acknowledged
    READ = "read"          # a GET answered: the object, or 404
    UNAVAILABLE = "503"    # outcome unknown
    LOST = "lost"          # outcome unknown: the connection broke or timed out
    REFUSED = "refused"    # any other error


@dataclass(slots=True)
class Ledger:
    """Every key's state, every answer with its time, and the counts; shared by the client
    threads."""

    values: Values = BODIES
    keys: dict[str, KeyState] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    events: list[tuple[float, int, str]] = field(default_factory=list)  # (monotonic, client, Answer)
    violations: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self, key: str) -> KeyState:
        with self.lock:
            return self.keys.setdefault(key, KeyState())

    def note(self, client: int, answer: str, count: str) -> None:
        """Record ``client``'s ``answer`` now, and count it under ``count``."""
        with self.lock:
            self.events.append((time.monotonic(), client, answer))
            self.counts[count] = self.counts.get(count, 0) + 1

    def tally(self, answer: str, t0: float = -math.inf, t1: float = math.inf) -> int:
        """How many ``answer``s came in [t0, t1)."""
        with self.lock:
            return sum(1 for t, _, a in self.events if a == answer and t0 <= t < t1)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Acknowledged requests (reads included), 503s, the longest time with no acknowledged
        request (from ``t0`` to ``t1``) and the longest run of 503s one client had, in [t0, t1]."""
        with self.lock:
            ev = [e for e in self.events if t0 <= e[0] <= t1]
        oks = [t for t, _, a in ev if a in (Answer.ACKED, Answer.READ)]
        gaps = [b - a for a, b in zip([t0, *oks], [*oks, t1])]
        streak: dict[int, int] = {}
        longest = 0
        for _, c, a in ev:
            streak[c] = streak.get(c, 0) + 1 if a == Answer.UNAVAILABLE else 0
            longest = max(longest, streak[c])
        return {"seconds": round(t1 - t0, 2), "acked": len(oks),
                "503": sum(1 for e in ev if e[2] == Answer.UNAVAILABLE),
                "lost": sum(1 for e in ev if e[2] == Answer.LOST), "stall_s": round(max(gaps), 2),
                "503_streak": longest}


# --- the client threads --------------------------------------------------------------------------

class Writer:
    """One client thread on its own keys. A subclass chooses each request in ``one()`` and makes
    it with ``put``, ``delete`` or ``get``, which fold the answer into the ledger; a GET answered
    with what the key cannot hold is a violation."""

    def __init__(self, cluster: Cluster, bucket: str, ledger: Ledger, index: int, seed: int):
        self.s3 = s3_client(cluster)
        self.bucket, self.ledger, self.index = bucket, ledger, index
        self.rng = random.Random(seed * 1000 + index)
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
        raise NotImplementedError

    def put(self, key: str, body: bytes, kind: str = "put") -> None:
        value = self.ledger.values.of(body)
        self.ledger.state(key).written.add(value)
        self._write(key, value, kind, lambda: self.s3.put_object(Bucket=self.bucket, Key=key, Body=body))

    def delete(self, key: str) -> None:
        self._write(key, None, "delete", lambda: self.s3.delete_object(Bucket=self.bucket, Key=key))

    def _write(self, key: str, value: Any, kind: str, request: Callable[[], Any]) -> None:
        led, st = self.ledger, self.ledger.state(key)
        try:
            request()
        except botocore.exceptions.ClientError as e:
            status, code = client_error(e)
            if status != 503:
                led.note(self.index, Answer.REFUSED, f"{kind} {status} {code}")
                with led.lock:
                    led.unexpected.append(f"{kind.upper()} {key}: {status} {code} {e}"[:500])
                return
            led.note(self.index, Answer.UNAVAILABLE, f"{kind} 503")
            st.possible.add(value)
            return
        except CLIENT_GONE as e:
            led.note(self.index, Answer.LOST, f"{kind} {type(e).__name__}")
            st.possible.add(value)
            st.loose = True
            return
        st.possible = {value}
        led.note(self.index, Answer.ACKED, f"{kind} acked")

    def get(self, key: str) -> None:
        led, st = self.ledger, self.ledger.state(key)
        try:
            got = led.values.of(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except botocore.exceptions.ClientError as e:
            status, code = client_error(e)
            if status == 503:
                led.note(self.index, Answer.UNAVAILABLE, "get 503")
                return
            if (status, code) != (404, "NoSuchKey"):
                led.note(self.index, Answer.REFUSED, f"get {status} {code}")
                with led.lock:
                    led.unexpected.append(f"GET {key}: {status} {code} {e}"[:500])
                return
            got = None
        except CLIENT_GONE as e:
            led.note(self.index, Answer.LOST, f"get {type(e).__name__}")
            return
        led.note(self.index, Answer.READ, "get ok")
        if got not in st.allowed():
            with led.lock:
                led.violations.append(f"GET {key} during the run: {led.values.show(got)}; may hold only "
                                      f"{led.values.shown(st.allowed())}")
        elif not st.loose:
            st.possible = {got}


class Workload:
    """``n`` writers, ``writer(cluster, bucket, ledger, index, seed)``, each in a thread of its
    own on ``bucket``, from the start of the ``with`` block until ``stop()`` or its end."""

    def __init__(self, cluster: Cluster, bucket: str, n: int, *,
                 writer: Callable[[Cluster, str, Ledger, int, int], Writer], values: Values = BODIES,
                 seed: int | None = None):
        self.seed = random.randrange(2**32) if seed is None else seed
        self.ledger = Ledger(values=values)
        self.stop_event = threading.Event()
        self.writers = [writer(cluster, bucket, self.ledger, i, self.seed) for i in range(n)]
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
        assert not any(t.is_alive() for t in self.threads), "a writer thread hangs"

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- afterwards ----------------------------------------------------------------------------------

def verify(cluster: Cluster, bucket: str, ledger: Ledger, *, threads: int = 1,
           retry_for: float = 20.0) -> dict[str, int]:
    """Every key holds a value its history allows (every acknowledged write exact), and a
    listing names exactly the keys that hold something: none missing, none listed that reads as
    absent, none no one wrote. 503s are retried for ``retry_for`` seconds; the GETs run in
    ``threads`` threads."""
    deadline = time.monotonic() + retry_for
    problems = list(ledger.violations)
    held: dict[str, Any] = {}
    retried = [0]
    lock = threading.Lock()
    show = ledger.values.show

    def check(keys: list[str]) -> None:
        s3 = s3_client(cluster)
        for key in keys:
            st = ledger.keys[key]
            while True:
                try:
                    got: Any = ledger.values.of(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
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
                            problems.append(f"GET {key} afterwards: {client_error(e)} {e}; may hold "
                                            f"{ledger.values.shown(st.allowed())}")
                        got = ...
                except CLIENT_GONE as e:
                    with lock:
                        problems.append(f"GET {key} afterwards: {e!r}")
                    got = ...
                break
            if got is ...:
                continue
            with lock:
                held[key] = got
                if got not in st.allowed():
                    problems.append(f"{key} holds {show(got)} afterwards; may hold only "
                                    f"{ledger.values.shown(st.allowed())}"
                                    + (" (an ACKNOWLEDGED write lost)" if st.acked else ""))

    keys = sorted(ledger.keys)
    workers = [threading.Thread(target=check, args=(keys[i::threads],), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in workers), "a GET hangs"
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
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
    return {"keys": len(ledger.keys), "acked": sum(1 for st in ledger.keys.values() if st.acked),
            "present": len(present), "bytes": sum(ledger.values.size(held[k]) for k in present),
            "retried_503": retried[0]}
