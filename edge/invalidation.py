"""Invalidation over the wire: the socket side of :mod:`.purge` (whose docstring is the protocol).

One :class:`Invalidation` per edge worker. What it does, by tier:

- **The purge home** (:func:`purge_home`: the first shield of cluster.toml; with no shield the
  first regional, else the first POP, as ``headwater edge serve`` runs) holds each distribution's
  :class:`~.purge.PurgeLog`, the source of truth. ``POST /_hw/invalidate`` appends to a copy of
  the log, writes the copy to ``<cache_dir>/purge/<dist>.log.json`` (temporary file, fsync,
  rename, fsync of the folder) and only then makes it the live log and answers: a purge is never
  seen by anyone (replicas, the hit path) before it is durable, so a home that crashes and
  restarts never renumbers a purge a replica already holds. ``GET /_hw/purges`` answers
  ``since(seq)`` and, when nothing is newer, holds the request (a long poll, at most
  ``[cdn.purge] long_poll_seconds``) until a purge arrives.
- **Every other tier** keeps a replica per distribution, persisted the same way
  (``<dist>.replica-w<worker>.json``), and runs one :class:`PurgePuller` per distribution (a
  :class:`~headwater.background.BackgroundLoop`) that pulls the feed and applies batches in the
  order it fetched them, then removes the purged entries from the RAM and disk stores (a sweep
  that frees space; correctness rests on the hit-path check below). A batch that reports
  ``reset`` (the home's log was recreated) drops every stored entry of the distribution.
  ``POST /_hw/invalidate`` sent here is forwarded, signed, to the home; the answer waits (up to
  :data:`FORWARD_WAIT_S`) until this tier's puller has applied it, so the caller reads its own
  purge at the tier it asked.

Catching up before serving: a tier that starts (or was down) loads its persisted replica and is
*not ready* until a pull answered ``more = false``. Until then ``/healthz`` says
``"status": "catching_up"`` (503, so the GeoDNS steers viewers elsewhere) and each request waits
up to :data:`CATCH_UP_WAIT_S` for the catch-up, then gets 503 (:class:`NotCaughtUp`). Chosen over
serving at once because a POP that was down during a purge would otherwise serve the purged object
from its disk tier until its first pull. The cost: a tier cannot serve after a restart while the
home is unreachable.

The hit path (called by :mod:`.app`, cheap when nothing newer was purged):

- entries carry ``hw-purge-seq`` (the ``purge_seq`` of :mod:`.purge`) and the origin's
  ``surrogate-key`` among their stored header fields: a stored response is purged iff
  :func:`~.purge.is_purged` says so for its path (taken from its cache key), tags and number.
  :meth:`Invalidation.purged` answers that; a purged entry is removed and treated as a miss, so
  nothing purged is served even between a purge and the sweep;
- :meth:`Invalidation.stamp` sets ``hw-purge-seq`` on what a fetch stores: at a tier that fetches
  from the origin, its log's ``last_seq`` taken before the request; elsewhere the upstream tier's
  ``Hw-Purge-Seq``;
- :meth:`Invalidation.outgoing` writes ``Hw-Purge-Seq`` on responses to the next tier down (on a
  hit raised to this tier's ``last_seq``: the entry was checked against it) and strips it and
  ``Surrogate-Key`` at a POP, whose clients are viewers;
- requests to the next tier up carry ``Hw-Purge-Min-Seq`` (this tier's ``last_seq``); a regional
  that has not applied that much waits up to :data:`MIN_SEQ_WAIT_S` for its puller, and if it is
  still behind answers from upstream without using its cache (:meth:`Invalidation.admit`). A POP
  ignores the field (viewers could send it to bust its cache).

Credentials: both routes require a request signed with the cluster secret (:mod:`.adminauth`);
without valid ones the answer is 401/403 and nothing changes. The other admin routes (/healthz,
/metrics) change nothing and stay open to probes and scrapers.

Limits: request bodies up to :data:`MAX_BODY_BYTES` (CloudFront's 3,000 paths); feed answers up
to :data:`MAX_FEED_BYTES` (the home halves a batch until it fits, and says ``more``); a long poll
is bounded by ``long_poll_seconds`` and the admin port's connection cap.

Workers: the home runs one (its log is that process's; :func:`~.config.check_edge` refuses more);
with ``workers > 1`` on a POP or regional each worker pulls and keeps its own replica, and sweeps
the shared disk tier. The sweep scans each store once per applied batch, in the event loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence
from urllib.parse import parse_qs, quote

import anyio
import httpx

from headwater.background import BackgroundLoop
from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import ClusterConfig, ConfigError
from headwater.http.types import BodyTooLarge, Request, Response

from .adminauth import AdminAuthError, AdminKey, AdminVerifier
from .cache.cachekey import normalise_path
from .cache.model import StoredResponse
from .config import CdnConfig, Distribution, EdgeConfig, purge_home
from .entry import decode_entry
from .errors import EdgeError
from .purge import (InvalidPurge, Purge, PurgeBatch, PurgeConfig, PurgeGap, PurgeLog, parse_invalidation_request,
                    parse_surrogate_keys)

__all__ = ["Invalidation", "PurgePuller", "NotCaughtUp", "purge_home", "purge_path_of_key", "stored_seq",
           "SEQ_FIELD", "INVALIDATE_PATH", "FEED_PATH", "MIN_SEQ_FIELD", "SURROGATE_FIELD", "CATCH_UP_WAIT_S",
           "MIN_SEQ_WAIT_S", "FORWARD_WAIT_S",
           "MAX_BODY_BYTES", "MAX_FEED_BYTES", "write_atomically"]

log = logging.getLogger("headwater.edge")

SEQ_FIELD = "hw-purge-seq"
MIN_SEQ_FIELD = "hw-purge-min-seq"
SURROGATE_FIELD = "surrogate-key"
INVALIDATE_PATH = "/_hw/invalidate"
FEED_PATH = "/_hw/purges"

CATCH_UP_WAIT_S = 2.0   # a request at a tier still catching up waits this long, then 503
MIN_SEQ_WAIT_S = 1.0    # a regional asked for purges it has not applied waits this long for them
FORWARD_WAIT_S = 10.0   # an invalidation forwarded to the home waits this long to be applied here
MAX_BODY_BYTES = 1024 * 1024
MAX_FEED_BYTES = 8 * 1024 * 1024
_MAX_SEQ_DIGITS = 18


class NotCaughtUp(EdgeError):
    """This tier has not yet applied the purges issued while it was down: it cannot vouch for
    its cache, so it does not serve (yet)."""

    http_status = 503


class PullFailed(EdgeError):
    """The purge feed could not be read from the home (its answer is in the message)."""

    http_status = 502


# --- where the log lives, and what an entry's purge path is ---------------------------------------

def purge_path_of_key(key: bytes) -> tuple[str, str]:
    """``(distribution, path[?query])`` of a cache key, the spelling invalidation paths match.

    Both key layouts are read: the request path's ``dist NUL path[?query]`` and edge-cache's
    ``dist NUL path NUL query NUL …``; the path is normalised as edge-cache's keys spell it, so a
    purge names an object one way however its requests encoded it.
    """
    text = key.decode("latin-1")
    dist, _, rest = text.partition("\0")
    if "\0" in rest:
        path, _, more = rest.partition("\0")
        query = more.partition("\0")[0]
        return dist, normalise_path(path) + (f"?{query}" if query else "")
    path, q, query = rest.partition("?")
    return dist, normalise_path(path) + (f"?{query}" if q else "")


def _normalise_purge_path(path: str) -> str:
    if path.endswith("*"):
        return normalise_path(path[:-1]) + "*"
    base, q, query = path.partition("?")
    return normalise_path(base) + (f"?{query}" if q else "")


_SEQ_MEMO_MAX = 4096
# id(stored) -> (stored, its seq): a stored response is immutable and, decoded once per entry
# (entry.decode_entry), the same object on every hit; checked on every hit, it is read once.
_seqs: dict[int, tuple[StoredResponse, int]] = {}


def stored_seq(stored: StoredResponse) -> int:
    """The ``purge_seq`` an entry was stored with (0 when absent or unreadable: the oldest)."""
    memo = _seqs.get(id(stored))
    if memo is not None and memo[0] is stored:
        return memo[1]
    raw = stored.get(SEQ_FIELD)
    seq = int(raw) if raw is not None and raw.isdigit() and len(raw) <= _MAX_SEQ_DIGITS else 0
    if len(_seqs) >= _SEQ_MEMO_MAX:
        _seqs.clear()
    _seqs[id(stored)] = (stored, seq)
    return seq


def _tags(stored: StoredResponse) -> list[str]:
    return " ".join(stored.get_all(SURROGATE_FIELD)).split()


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never a mix, also across a crash: a
    temporary file written and fsynced, renamed over ``path``, and the folder fsynced."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- one distribution's log ---------------------------------------------------------------------

class _Distribution:
    """A distribution's log (the home's, or this tier's replica), its file, and its waiters."""

    def __init__(self, name: str, log: PurgeLog, path: Path, *, ready: bool) -> None:
        self.name = name
        self.log = log
        self.path = path
        self.ready = ready
        self.changed = anyio.Event()   # set (and replaced) whenever the log moves
        self.ready_event = anyio.Event()
        if ready:
            self.ready_event.set()
        self.lock = anyio.Lock()       # the home: one append at a time

    def bump(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def mark_ready(self) -> None:
        if not self.ready:
            self.ready = True
            self.ready_event.set()

    async def wait_ready(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self.ready_event.wait()
        return self.ready

    async def wait_seq(self, seq: int, timeout: float, epoch: str | None = None) -> bool:
        """Until the log holds ``seq`` (of ``epoch`` when given), at most ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            while not self._holds(seq, epoch):
                await self.changed.wait()
        return self._holds(seq, epoch)

    def _holds(self, seq: int, epoch: str | None) -> bool:
        return self.log.last_seq >= seq and (epoch is None or self.log.epoch == epoch)

    def state(self) -> dict[str, Any]:
        return {"last_seq": self.log.last_seq, "floor_seq": self.log.floor_seq, "epoch": self.log.epoch,
                "purges": len(self.log), "ready": self.ready}


class PurgePuller(BackgroundLoop[int]):
    """One distribution's puller at a tier that is not the home: each pass pulls one batch
    (a long poll once caught up) and applies it; a failed pass is retried after a backoff."""

    name = "edge.purge_pull"

    def __init__(self, owner: Invalidation, dist: _Distribution, *, clock: Clock) -> None:
        # The long poll is the wait between passes; the interval only spaces passes that return
        # at once (a home answering without holding, long_poll_seconds = 0).
        interval = owner.config.pull_interval_s if owner.config.long_poll_s <= 0 else 0.01
        super().__init__(interval_s=interval, clock=clock, backoff_s=0.5)
        self.owner = owner
        self.dist = dist

    async def one_pass(self) -> int:
        return await self.owner.pull(self.dist)

    def summary(self, added: int) -> dict[str, Any] | None:
        return {"distribution": self.dist.name, "added": added, "last_seq": self.dist.log.last_seq} if added else None


# --- the service ---------------------------------------------------------------------------------

class Invalidation:
    """Purges for one edge worker: the logs, the pullers, the admin routes and the hit-path checks."""

    def __init__(self, *, cluster: ClusterConfig, node: EdgeConfig, distributions: Sequence[Distribution],
                 stores: Sequence[Any], top: bool, worker: int = 0, clock: Clock = SYSTEM_CLOCK,
                 key: AdminKey | None | Callable[[], AdminKey] = None,
                 epoch: Callable[[], str] = lambda: secrets.token_hex(8), refused: str | None = None) -> None:
        cdn = getattr(cluster, "cdn", None)
        self.config: PurgeConfig = cdn.purge if isinstance(cdn, CdnConfig) else PurgeConfig()
        self.node = node
        self.names = tuple(d.name for d in distributions)
        self.stores = tuple(stores)
        self.top = top  # this tier fetches from the origin: it stamps entries with its own log
        self.worker = worker
        self.clock = clock
        home = purge_home(cluster)
        self.home = home
        self.is_home = home is None or home.id == node.id
        self.strip = node.tier == "pop"      # a POP answers viewers: no purge fields go out
        self.honour_min_seq = not self.is_home and node.tier != "pop"
        self._epoch = epoch
        self._folder = Path(node.cache_dir) / "purge"
        self.dists: dict[str, _Distribution] = {}
        self._by_prefix: dict[bytes, _Distribution] = {}
        self._client: httpx.AsyncClient | None = None
        why = "no cluster secret is configured on this host"
        if refused is not None:  # this worker takes no purge whatever the secret (``refused`` says why)
            why, key = refused, None
        elif callable(key):
            try:
                key = key()
            except (ConfigError, ValueError, OSError) as e:
                why, key = f"no usable cluster secret ({e})", None
        self.key: AdminKey | None = key
        self.verifier = AdminVerifier(key, window_s=60.0, why_no_key=why)
        # The worker's in-flight upstream fetches by cache key (the app's Collapser.flights): a
        # purge detaches those it may cover, so a request after it never shares a fetch begun
        # before it (the fetch goes on for the requests that came earlier).
        self.flights: dict[bytes, Any] = {}
        self.counts = {"purges_accepted": 0, "purges_applied": 0, "entries_removed": 0, "resets": 0,
                       "admin_refused": 0, "pulls": 0}

    # --- life ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Load (or create) every distribution's log; a replica starts not ready."""
        for name in self.names:
            if self.is_home:
                path = self._folder / f"{name}.log.json"
                log_ = await anyio.to_thread.run_sync(self._load, path, name)
                if log_ is None:
                    # A new lineage: replicas holding numbers of a lost log see another epoch and reset.
                    log_ = PurgeLog(name, epoch=self._epoch(), retention_s=self.config.retention_s,
                                    max_purges=self.config.max_purges)
                    await anyio.to_thread.run_sync(write_atomically, path, log_.dumps())
                    # Nothing vouches for what this tier stored under a lost log: drop it, as
                    # the replicas do when they see the new epoch.
                    self._sweep(name, None)
                self.dists[name] = _Distribution(name, log_, path, ready=True)
                self._by_prefix[name.encode()] = self.dists[name]
            else:
                path = self._folder / f"{name}.replica-w{self.worker}.json"
                log_ = await anyio.to_thread.run_sync(self._load, path, name)
                if log_ is None:
                    # No epoch yet: the first batch resets it, dropping whatever the stores hold
                    # of this distribution (nothing vouches for it).
                    log_ = PurgeLog(name, epoch="", retention_s=self.config.retention_s,
                                    max_purges=self.config.max_purges)
                self.dists[name] = _Distribution(name, log_, path, ready=False)
                self._by_prefix[name.encode()] = self.dists[name]
        if not self.is_home and self.home is not None:
            timeout = httpx.Timeout(self.node.connect_timeout_s + self.config.long_poll_s + self.node.read_timeout_s,
                                    connect=self.node.connect_timeout_s)
            self._client = httpx.AsyncClient(trust_env=False, timeout=timeout, follow_redirects=False)

    def _load(self, path: Path, name: str) -> PurgeLog | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            loaded = PurgeLog.loads(data, retention_s=self.config.retention_s, max_purges=self.config.max_purges)
        except InvalidPurge as e:
            log.error("%s: purge log %s is unreadable (%s): starting a new one", self.node.id, path, e,
                      extra={"event": "edge.purge_log_unreadable", "path": str(path)})
            return None
        if loaded.distribution != name:
            return None
        return loaded

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def pullers(self) -> list[PurgePuller]:
        """The loops to run (none at the home)."""
        if self.is_home:
            return []
        return [PurgePuller(self, d, clock=self.clock) for d in self.dists.values()]

    @property
    def ready(self) -> bool:
        return all(d.ready for d in self.dists.values())

    # --- the hit path -------------------------------------------------------------------------

    def settled(self, dist: Distribution) -> bool:
        """Whether ``admit`` would answer True for any request under ``dist`` without waiting:
        caught up, and no requester's ``Hw-Purge-Min-Seq`` to honour (a POP's case, on every
        hit: the caller then skips the coroutine)."""
        d = self.dists.get(dist.name)
        return d is None or (d.ready and not self.honour_min_seq)

    async def admit(self, request: Request, dist: Distribution) -> bool:
        """Before a request uses the cache: wait for the catch-up (NotCaughtUp past the bound);
        False when this regional cannot vouch for its cache at the requester's ``Hw-Purge-Min-Seq``."""
        d = self.dists.get(dist.name)
        if d is None:
            return True
        if not d.ready and not await d.wait_ready(CATCH_UP_WAIT_S):
            raise NotCaughtUp(f"{self.node.id} is catching up on purges issued while it was down")
        if self.honour_min_seq:
            raw = request.headers.get(MIN_SEQ_FIELD)
            if raw is not None and raw.isdigit() and len(raw) <= _MAX_SEQ_DIGITS:
                wanted = int(raw)
                if wanted > d.log.last_seq and not await d.wait_seq(wanted, MIN_SEQ_WAIT_S):
                    return False
        return True

    def _of_key(self, key: bytes) -> _Distribution | None:
        """The distribution a (readable) cache key belongs to: its first field."""
        return self._by_prefix.get(key.partition(b"\0")[0])

    def purge_state(self, key: bytes) -> Any:
        """What ``purged`` reads for the entries under the readable cache ``key``: its
        distribution's state (whose ``log.last_seq`` moves as purges arrive, and whose ``log``
        may be replaced), or None when no purge log covers the key. A caller that checks one
        entry on every hit keeps it, and asks ``purged`` only once ``log.last_seq`` has passed
        the entry's ``stored_seq``: nothing newer was purged until then."""
        return self._of_key(key)

    def purged(self, key: bytes, stored: StoredResponse) -> bool:
        """Whether the response stored under the readable cache ``key`` was purged since."""
        d = self._of_key(key)
        if d is None:
            return False
        seq = stored_seq(stored)
        if seq >= d.log.last_seq:  # the common case: nothing newer was purged
            return False
        return d.log.is_purged(purge_path_of_key(key)[1], _tags(stored), seq)

    def origin_seq(self, dist_name: str) -> int | None:
        """At a tier that fetches from the origin, its log's ``last_seq`` now (take it before
        the request is sent); None elsewhere (the upstream tier says)."""
        d = self.dists.get(dist_name)
        return d.log.last_seq if self.top and d is not None else None

    def stamp(self, headers: Iterable[tuple[str, str]], origin_seq: int | None) -> list[tuple[str, str]]:
        """The upstream response's fields as this tier stores them, ``hw-purge-seq`` set."""
        out = []
        upstream = None
        for k, v in headers:
            if k == SEQ_FIELD:
                upstream = v
            else:
                out.append((k, v))
        if origin_seq is not None:
            seq = origin_seq  # an origin never says which purges its answer reflects
        else:
            ok = upstream is not None and upstream.isdigit() and len(upstream) <= _MAX_SEQ_DIGITS
            seq = int(upstream) if ok else 0  # type: ignore[arg-type]
        out.append((SEQ_FIELD, str(seq)))
        return out

    @staticmethod
    def storable_tags(headers: Iterable[tuple[str, str]]) -> bool:
        """False when ``Surrogate-Key`` exceeds the limits: such a response could not be purged
        by all its tags, so it is not stored."""
        values = [v for k, v in headers if k == SURROGATE_FIELD]
        if not values:
            return True
        try:
            parse_surrogate_keys(" ".join(values))
        except InvalidPurge:
            return False
        return True

    def outgoing(self, headers: list[tuple[str, str]], stored: StoredResponse | None,
                 hit_key: bytes | None) -> list[tuple[str, str]]:
        """The purge fields of a response this tier sends: none to viewers (a POP); to the next
        tier down the entry's ``Hw-Purge-Seq``, raised to this tier's ``last_seq`` on a hit."""
        if self.strip:
            return [(k, v) for k, v in headers if k != SEQ_FIELD and k != SURROGATE_FIELD]
        if hit_key is None or stored is None:
            return headers
        d = self._of_key(hit_key)
        if d is None:
            return headers
        seq = max(stored_seq(stored), d.log.last_seq)
        return [(k, v) for k, v in headers if k != SEQ_FIELD] + [(SEQ_FIELD, str(seq))]

    def upstream_headers(self, dist_name: str) -> list[tuple[str, str]]:
        """Fields of a request to the next tier up: the purges this tier has applied."""
        d = self.dists.get(dist_name)
        if d is None or self.top:
            return []
        return [(MIN_SEQ_FIELD, str(d.log.last_seq))]

    # --- pulling (every tier but the home) -------------------------------------------------------

    async def pull(self, d: _Distribution) -> int:
        """One pull of ``d``'s feed from the home, applied; the number of purges added."""
        assert self._client is not None and self.home is not None
        wait = self.config.long_poll_s if d.ready else 0.0
        target = (f"{FEED_PATH}?distribution={quote(d.name)}&since={d.log.last_seq}"
                  f"&epoch={quote(d.log.epoch)}&wait={wait:g}")
        status, body = await self._admin_call("GET", target, b"", limit=MAX_FEED_BYTES + 64 * 1024)
        self.counts["pulls"] += 1
        if status != 200:
            raise PullFailed(f"{self.home.id} answered the purge feed with {status}: {body[:200]!r}")
        try:
            batch = PurgeBatch.from_json(body)
        except InvalidPurge as e:
            raise PullFailed(f"{self.home.id} sent an unreadable purge batch: {e}") from None
        before = d.log.last_seq
        try:
            applied = d.log.apply(batch)
        except PurgeGap as e:
            raise PullFailed(str(e)) from None
        if applied.reset:
            self.counts["resets"] += 1
            log.warning("%s: the purge log of %s was replaced (epoch %s): dropping its cached entries",
                        self.node.id, d.name, batch.epoch, extra={"event": "edge.purge_reset", "distribution": d.name})
            self._sweep(d.name, None)
        elif applied.added:
            self._sweep(d.name, [p for p in batch.purges if p.seq > before])
        if applied.added or applied.reset:
            d.log.compact(self.clock.time())
            self.counts["purges_applied"] += applied.added
            await anyio.to_thread.run_sync(write_atomically, d.path, d.log.dumps())
        if not batch.more:
            d.mark_ready()
        d.bump()
        return applied.added

    async def _admin_call(self, method: str, target: str, body: bytes, *, limit: int) -> tuple[int, bytes]:
        """A signed request to the home's admin port; its status and (bounded) body."""
        assert self._client is not None and self.home is not None
        if self.key is None:
            raise PullFailed(f"{self.node.id} cannot sign requests to {self.home.id}: {self.verifier.why_no_key}")
        headers = {"authorization": self.key.authorization(method, target, body, now=self.clock.time())}
        if body:
            headers["content-type"] = "application/json"
        url = f"http://{self.home.host}:{self.home.admin_port}{target}"
        try:
            async with self._client.stream(method, url, headers=headers, content=body or None) as r:
                parts, size = [], 0
                async for chunk in r.aiter_raw():
                    size += len(chunk)
                    if size > limit:
                        raise PullFailed(f"{self.home.id}'s answer is larger than {limit} bytes")
                    parts.append(chunk)
                return r.status_code, b"".join(parts)
        except httpx.HTTPError as e:
            raise PullFailed(f"{self.home.id} ({url}): {type(e).__name__}: {e}") from None

    def _sweep(self, dist_name: str, purges: Sequence[Purge] | None) -> int:
        """Remove from every store the entries of ``dist_name`` that ``purges`` cover (None: all)."""
        removed = 0
        with_tags = purges is not None and any(p.tags for p in purges)

        def pred(key: bytes, meta: bytes) -> bool:
            # The store may hold a long key under its digest: the readable key is in the meta.
            entry = decode_entry(meta)
            dist, path = purge_path_of_key(key if entry is None else entry.key)
            if dist != dist_name:
                return False
            if purges is None or entry is None:
                return True
            if not with_tags and not any(p.matches(path) for p in purges):
                return False
            stored = entry.stored
            seq, tags = stored_seq(stored), _tags(stored)
            return any(p.seq > seq and p.matches(path, tags) for p in purges)

        detached = []
        for key in list(self.flights):
            dist, path = purge_path_of_key(key)
            # A fetch's tags are unknown until its head is in: a tag purge detaches every fetch.
            if dist == dist_name and (purges is None or with_tags or any(p.matches(path) for p in purges)):
                del self.flights[key]
                detached.append(key)
        for store in self.stores:
            try:
                for key in store.keys_matching(pred):
                    removed += bool(store.remove(key))
                for key in detached:  # and its fill in flight (the disk tier's claim)
                    store.remove(key)
            except Exception:
                log.exception("%s: sweeping purged entries of %s failed", self.node.id, dist_name)
        self.counts["entries_removed"] += removed
        return removed

    # --- the admin routes ----------------------------------------------------------------------

    def admin_app(self, fallback: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """The admin port's app: the purge routes here, everything else (/healthz, /metrics) to
        ``fallback``."""

        async def app(request: Request) -> Response:
            if request.path == INVALIDATE_PATH:
                return await self._route(request, "POST", self._invalidate)
            if request.path == FEED_PATH:
                return await self._route(request, "GET", self._feed)
            return await fallback(request)

        return app

    async def _route(self, request: Request, method: str,
                     handler: Callable[[Request, bytes], Awaitable[Response]]) -> Response:
        if request.method != method:
            return _json(405, {"error": f"{request.path} takes {method}"}, [("allow", method)])
        try:
            body = await request.body.read_all(MAX_BODY_BYTES)
        except BodyTooLarge:
            return _json(413, {"error": f"the body is larger than {MAX_BODY_BYTES} bytes"})
        try:
            self.verifier.check(request.method, request.target, body, request.headers.get("authorization"),
                                now=self.clock.time())
        except AdminAuthError as e:
            self.counts["admin_refused"] += 1
            log.warning("%s: admin request %s %s refused: %s", self.node.id, request.method, request.path, e.reason,
                        extra={"event": "edge.admin_refused", "status": e.http_status,
                               "client": (request.client or ("", 0))[0]})
            extra = [("www-authenticate", "HW-HMAC-SHA256")] if e.http_status == 401 else []
            return _json(e.http_status, {"error": e.reason}, extra)
        try:
            return await handler(request, body)
        except InvalidPurge as e:
            return _json(400, {"error": str(e)})
        except PullFailed as e:
            return _json(502, {"error": str(e)})

    def _distribution(self, name: str | None) -> _Distribution:
        if name is None:
            if len(self.dists) == 1:
                return next(iter(self.dists.values()))
            raise InvalidPurge(f"name the distribution ({', '.join(self.dists) or 'none configured'})")
        d = self.dists.get(name)
        if d is None:
            raise _UnknownDistribution(name)
        return d

    async def _invalidate(self, request: Request, body: bytes) -> Response:
        name, paths, tags = parse_invalidation_request(body, max_items=self.config.max_items_per_request)
        try:
            d = self._distribution(name)
        except _UnknownDistribution as e:
            return _json(404, {"error": f"no distribution {e.args[0]!r}"})
        paths = tuple(dict.fromkeys(_normalise_purge_path(p) for p in paths))
        if self.is_home:
            purge = await self._append(d, paths, tags)
            return _json(201, {"distribution": d.name, "seq": purge.seq, "epoch": d.log.epoch, "at": self.node.id,
                               "paths": list(purge.paths), "tags": list(purge.tags)})
        assert self.home is not None
        doc = {"distribution": d.name, "paths": list(paths), "tags": list(tags)}
        status, answer = await self._admin_call("POST", INVALIDATE_PATH, json.dumps(doc).encode(), limit=64 * 1024)
        try:
            reply = json.loads(answer)
        except ValueError:
            reply = None
        if status != 201 or not isinstance(reply, dict) or not isinstance(reply.get("seq"), int):
            return _json(502 if status < 500 or status >= 600 else status,
                         {"error": f"{self.home.id} answered {status}: {answer[:300].decode('utf-8', 'replace')}"})
        applied = await d.wait_seq(reply["seq"], FORWARD_WAIT_S, reply.get("epoch"))
        return _json(201, {**reply, "at": self.node.id, "applied_here": applied})

    async def _append(self, d: _Distribution, paths: tuple[str, ...], tags: tuple[str, ...]) -> Purge:
        """The home: the purge numbered, made durable, then published (see the module docstring)."""
        async with d.lock:
            now = self.clock.time()
            # A copy is appended and persisted first: the live log (what pullers and the hit path
            # read) never holds a purge that a crash could take back.
            draft = PurgeLog.loads(d.log.dumps(), retention_s=self.config.retention_s,
                                   max_purges=self.config.max_purges)
            draft.compact(now)
            purge = draft.append(paths, tags, now=now)
            await anyio.to_thread.run_sync(write_atomically, d.path, draft.dumps())
            d.log = draft
        self.counts["purges_accepted"] += 1
        log.info("%s: purge %d of %s: %d paths, %d tags", self.node.id, purge.seq, d.name, len(purge.paths),
                 len(purge.tags), extra={"event": "edge.purge_accepted", "distribution": d.name, "seq": purge.seq})
        self._sweep(d.name, [purge])
        d.bump()
        return purge

    async def _feed(self, request: Request, body: bytes) -> Response:
        q = parse_qs(request.query, keep_blank_values=True)

        def one(name: str) -> str | None:
            values = q.get(name)
            return values[0] if values else None

        if not self.is_home:
            return _json(404, {"error": f"the purge feed is served by {self.home.id if self.home else '-'}"})
        try:
            d = self._distribution(one("distribution"))
        except _UnknownDistribution as e:
            return _json(404, {"error": f"no distribution {e.args[0]!r}"})
        since_raw, wait_raw, epoch = one("since") or "0", one("wait") or "0", one("epoch")
        if not since_raw.isdigit() or len(since_raw) > _MAX_SEQ_DIGITS:
            raise InvalidPurge("since must be a sequence number")
        try:
            wait = float(wait_raw)
        except ValueError:
            raise InvalidPurge("wait must be a number of seconds") from None
        if not 0 <= wait < float("inf"):
            raise InvalidPurge("wait must be a number of seconds")
        since = int(since_raw)
        wait = min(wait, self.config.long_poll_s)
        # Hold only a replica that is exactly up to date with this very log; any other (behind,
        # ahead: a log gone back, another epoch) gets its answer at once.
        if wait > 0 and since == d.log.last_seq and (epoch is None or epoch == d.log.epoch):
            await d.wait_seq(since + 1, wait)
        return Response(200, _json_headers(), _bounded_batch(d.log, since, self.config.batch_limit))

    # --- health ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What /healthz shows of purges (and ``status`` while catching up)."""
        doc: dict[str, Any] = {"purge": {"home": self.home.id if self.home else None,
                                         **{n: d.state() for n, d in self.dists.items()}}}
        if not self.ready:
            doc["status"] = "catching_up"
        return doc

    def stats(self) -> dict[str, Any]:
        return {**self.counts, **{f"purge_last_seq_{n}": d.log.last_seq for n, d in self.dists.items()}}


class _UnknownDistribution(Exception):
    pass


def _bounded_batch(log_: PurgeLog, since: int, limit: int) -> bytes:
    """``since(since)`` as JSON, halved until it fits :data:`MAX_FEED_BYTES` (``more`` then set)."""
    batch = log_.since(since, limit=limit)
    data = batch.to_json()
    while len(data) > MAX_FEED_BYTES and len(batch.purges) > 1:
        keep = batch.purges[:len(batch.purges) // 2]
        batch = dataclasses.replace(batch, purges=keep, more=True)
        data = batch.to_json()
    return data


def _json_headers() -> list[tuple[str, str]]:
    return [("content-type", "application/json"), ("cache-control", "no-store")]


def _json(status: int, doc: Mapping[str, Any], extra: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    return Response(status, _json_headers() + [("content-length", str(len(body)))] + (extra or []), body)
