"""Invalidation: CloudFront-style paths, surrogate-key (tag) purge, and the purge log. Sans-IO.

What can be purged
------------------
* **Paths**, as CloudFront's invalidation API takes them: an exact path (``/titles/1/a.mpd``,
  optionally with the query string the cache keys on: ``/a.mpd?lang=en``), or a path ending in
  ``*`` (``/titles/1/*``, ``/titles/1/seg-*``, ``/*`` for everything). ``*`` is allowed only as the
  last character (CloudFront: "a path that ends with the * wildcard"); paths are case-sensitive,
  start with ``/``, are ASCII without spaces or controls (percent-encode the rest, as the cache key
  spells it) and at most :data:`MAX_PATH_CHARS` long. An exact path matches only that path and
  query; ``/a.mpd*`` matches every query string of it.
* **Tags**: an origin response's ``Surrogate-Key`` header lists space-separated tags
  (:func:`parse_surrogate_keys`); purging a tag purges every stored response that carried it. The
  daemon stores the tags with the entry and strips the header before answering viewers.

The purge log, and why entries carry a sequence number and not a time
---------------------------------------------------------------------
Each distribution has one :class:`PurgeLog`. Its source of truth is at the **origin shield**:
``append`` gives each purge the next sequence number (1, 2, 3 ...). Every other tier holds a
replica that ``apply``-s batches pulled with ``since(seq)``.

Every stored response records ``purge_seq``: the purge sequence number its *content* is known to
reflect — at the shield, the shield's ``last_seq`` taken just before the request to the origin
was sent; at every other tier, the ``Hw-Purge-Seq`` the upstream tier sent with the response (see
the protocol below). A stored entry is purged iff some purge with ``seq > purge_seq`` matches its
path or one of its tags: :meth:`PurgeLog.is_purged` / :func:`is_purged`. Comparing sequence
numbers, not times, makes the answer independent of clock skew between hosts and correct when a
tier passes on content it stored before a purge it had not applied yet: that content carries the
older number, so the newer purge still catches it wherever it lands.

Cost on the hit path: O(number of distinct wildcard prefix lengths + number of the entry's tags)
dictionary lookups, independent of how many purges the log holds. The patterns are compiled into
three maps — exact path → newest seq, tag → newest seq, and wildcard prefix → newest seq keyed by
prefix length (a flattened prefix trie: for each length L that some prefix has, one lookup of the
path's first L characters) — and an entry stored at or after the newest purge (the common case)
returns after one comparison.

Compaction: purges older than ``retention_s`` are dropped and ``floor_seq`` rises to the newest
dropped one. An entry whose ``purge_seq < floor_seq`` counts as purged (a purge it predates was
forgotten, so the log can no longer vouch for it): compaction never lets purged content through,
it can only cause a refetch. With ``retention_s`` above the longest time an entry is ever served
(max TTL + stale-while-revalidate + stale-if-error) it causes none. ``max_purges`` bounds memory
the same way, compacting the oldest early.

Protocol between tiers (carried by the edge-daemon; this module is its state)
------------------------------------------------------------------------------
1. ``POST /_hw/invalidate`` with ``{"distribution": "video", "paths": [...], "tags": [...]}`` is
   accepted by **any** tier and must carry the admin credentials (no credentials: 401 and nothing
   changes). :func:`parse_invalidation_request` validates the body. The shield appends to its log
   (persisting it with :meth:`PurgeLog.dumps` before answering) and answers
   ``{"seq": N, "epoch": E}``; any other tier forwards the POST, authenticated, to the shield,
   then pulls until it has applied N before it answers, so the caller reads its own purge there.
2. Every POP and regional pulls ``GET /_hw/purges?distribution=D&since=S&wait=W`` from the
   shield: the answer is :meth:`PurgeBatch.to_json` of ``since(S)`` (at most ``batch_limit``
   purges, ``more`` set when the client should ask again at once). With ``wait``, the shield holds
   the request up to W seconds until ``last_seq > S`` (a long poll: purges reach every tier in
   about one round trip, without a push channel). The tier ``apply``-s the batch, persists its
   replica, and repeats. One puller per distribution applies batches in the order it fetched
   them (an older batch applied after a newer one looks like a log gone backwards, below); the
   invalidate handler of step 1 waits for that puller to reach N rather than pulling itself.
3. A tier starting up (or one that was down) loads its persisted replica and pulls ``since`` its
   ``last_seq`` until ``more`` is false **before it serves**; until then it answers 503. A replica
   older than the shield's ``floor_seq`` adopts the floor (its older entries then count as
   purged). A batch from a log with another ``epoch`` (the shield's log was lost and recreated),
   or whose ``last_seq`` is below the replica's (the log went back), makes ``apply`` report
   ``reset``: the tier must drop every stored entry of the distribution. (A log restored from a
   backup must be given a new epoch: once it has numbered new purges past the replicas'
   ``last_seq``, reused numbers can no longer be told apart.)
4. Every response between tiers carries ``Hw-Purge-Seq: N``, the ``purge_seq`` the receiving tier
   stores with it: the stored entry's own ``purge_seq`` raised to the sender's ``last_seq`` when
   the sender checked it against its log (a hit), or the number it got from its own upstream (a
   miss). A request carries ``Hw-Purge-Min-Seq: M`` (the requester's ``last_seq``): a tier behind
   M pulls first, and if it cannot reach the shield it passes the request upstream rather than
   answer from a cache it cannot vouch for.
5. Besides the hit-path check, a tier may sweep its store with :meth:`Purge.matches` to free the
   space at once; correctness never depends on that sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from headwater.config import Reader

__all__ = [
    "InvalidPurge",
    "PurgeGap",
    "Purge",
    "PurgeBatch",
    "Applied",
    "PurgeLog",
    "PurgeConfig",
    "is_purged",
    "validate_path",
    "parse_surrogate_keys",
    "parse_invalidation_request",
    "read_purge_config",
    "MAX_PATH_CHARS",
    "MAX_TAG_CHARS",
    "MAX_SURROGATE_KEYS",
]

MAX_PATH_CHARS = 4096
MAX_TAG_CHARS = 1024       # Fastly's limit per surrogate key
MAX_SURROGATE_KEYS = 1024  # tags one response may carry


class InvalidPurge(ValueError):
    """A purge request, path or Surrogate-Key header that cannot be used (a 400, said clearly)."""


class PurgeGap(Exception):
    """A batch that does not follow on from the replica (a hole in the sequence, a wrong
    distribution): the replica is unchanged and must pull again."""


def validate_path(path: Any) -> str:
    """``path`` if it is a valid invalidation path, else InvalidPurge saying why."""
    if not isinstance(path, str):
        raise InvalidPurge("an invalidation path must be a string")
    if not path.startswith("/"):
        raise InvalidPurge(f"invalidation path {path[:80]!r} must start with /")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidPurge(f"invalidation path longer than {MAX_PATH_CHARS} characters")
    if not path.isascii() or any(c <= " " or c == "\x7f" for c in path):
        raise InvalidPurge(f"invalidation path {path[:80]!r} must be ASCII without spaces or "
                           f"control characters (percent-encode the rest)")
    if "*" in path[:-1]:
        raise InvalidPurge(f"invalidation path {path[:80]!r}: * is allowed only at the end")
    return path


def _validate_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not tag:
        raise InvalidPurge("a tag must be a non-empty string")
    if len(tag) > MAX_TAG_CHARS:
        raise InvalidPurge(f"a tag is longer than {MAX_TAG_CHARS} characters")
    if not tag.isascii() or any(c <= " " or c == "\x7f" for c in tag):
        raise InvalidPurge(f"tag {tag[:80]!r} must be visible ASCII without spaces")
    return tag


def parse_surrogate_keys(value: str) -> tuple[str, ...]:
    """The tags of a ``Surrogate-Key`` header value (space-separated, duplicates dropped, order
    kept). InvalidPurge when they exceed the limits: the daemon should then not store the
    response, since it could not be purged by all its tags."""
    tags = tuple(dict.fromkeys(value.split()))
    if len(tags) > MAX_SURROGATE_KEYS:
        raise InvalidPurge(f"Surrogate-Key lists more than {MAX_SURROGATE_KEYS} keys")
    for t in tags:
        _validate_tag(t)
    return tags


def parse_invalidation_request(body: bytes, *, max_items: int = 3000) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """``POST /_hw/invalidate``'s JSON body → (distribution or None, paths, tags).

    ``{"distribution": "video", "paths": ["/titles/1/*"], "tags": ["title-1"]}``; at least one
    path or tag, at most ``max_items`` together (CloudFront takes 3,000 paths per invalidation).
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidPurge(f"the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidPurge("the body must be a JSON object")
    unknown = set(doc) - {"distribution", "paths", "tags"}
    if unknown:
        raise InvalidPurge(f"unknown field(s): {', '.join(sorted(unknown))}")
    dist = doc.get("distribution")
    if dist is not None and not isinstance(dist, str):
        raise InvalidPurge("distribution must be a string")
    paths, tags = doc.get("paths", []), doc.get("tags", [])
    if not isinstance(paths, list) or not isinstance(tags, list):
        raise InvalidPurge("paths and tags must be arrays")
    if not paths and not tags:
        raise InvalidPurge("nothing to purge: give paths or tags")
    if len(paths) + len(tags) > max_items:
        raise InvalidPurge(f"at most {max_items} paths and tags per request")
    return (dist, tuple(dict.fromkeys(validate_path(p) for p in paths)),
            tuple(dict.fromkeys(_validate_tag(t) for t in tags)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Purge:
    """One accepted invalidation: its sequence number in the distribution's log, when the shield
    accepted it (wall clock, for compaction and logs), and what it purges."""

    seq: int
    at: float
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def matches(self, path: str, tags: Iterable[str] = ()) -> bool:
        """Whether this purge covers a stored response at ``path`` carrying ``tags``."""
        for p in self.paths:
            if p.endswith("*"):
                if path.startswith(p[:-1]):
                    return True
            elif path == p:
                return True
        return bool(self.tags) and not set(self.tags).isdisjoint(tags)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "paths": list(self.paths), "tags": list(self.tags)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Purge:
        seq, at = d.get("seq"), d.get("at")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise InvalidPurge("a purge's seq must be a positive integer")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise InvalidPurge("a purge's at must be a number")
        paths, tags = d.get("paths", []), d.get("tags", [])
        if not isinstance(paths, list) or not isinstance(tags, list):
            raise InvalidPurge("a purge's paths and tags must be arrays")
        return cls(seq=seq, at=float(at), paths=tuple(validate_path(p) for p in paths),
                   tags=tuple(_validate_tag(t) for t in tags))


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeBatch:
    """What ``since(seq)`` answers: the purges after ``seq`` (up to a limit), the log's identity
    (``epoch``), its ``floor_seq`` and ``last_seq``, and whether ``more`` purges follow."""

    distribution: str
    epoch: str
    floor_seq: int
    last_seq: int
    purges: tuple[Purge, ...]
    more: bool = False

    def to_json(self) -> bytes:
        return json.dumps({"distribution": self.distribution, "epoch": self.epoch,
                           "floor_seq": self.floor_seq, "last_seq": self.last_seq, "more": self.more,
                           "purges": [p.to_dict() for p in self.purges]},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PurgeBatch:
        """Parse a batch from the wire; InvalidPurge when it is not one."""
        try:
            d = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidPurge(f"a purge batch is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise InvalidPurge("a purge batch must be a JSON object")
        try:
            dist, epoch = d["distribution"], d["epoch"]
            floor, last, more, purges = d["floor_seq"], d["last_seq"], d.get("more", False), d["purges"]
        except KeyError as e:
            raise InvalidPurge(f"a purge batch lacks {e.args[0]}") from None
        if not (isinstance(dist, str) and isinstance(epoch, str) and _is_seq(floor) and _is_seq(last)
                and isinstance(more, bool) and isinstance(purges, list)):
            raise InvalidPurge("a purge batch has a field of the wrong type")
        if not all(isinstance(p, dict) for p in purges):
            raise InvalidPurge("a purge batch's purges must be objects")
        return cls(distribution=dist, epoch=epoch, floor_seq=floor, last_seq=last, more=more,
                   purges=tuple(Purge.from_dict(p) for p in purges))


def _is_seq(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """What ``apply`` did: purges added, and ``reset`` when the log was replaced (another epoch, or
    the same one gone backwards): then the tier must drop every stored entry of the distribution."""

    added: int
    reset: bool = False


class PurgeLog:
    """A distribution's purge log: the shield's source of truth, or a tier's replica of it.

    ``epoch`` names this log's lineage (random, from the daemon's injected randomness, when the
    shield creates the log); sequence numbers only compare within one epoch. ``retention_s`` and
    ``max_purges`` bound what is kept (see the module docstring); time is always passed in.
    """

    def __init__(self, distribution: str, *, epoch: str, retention_s: float = 2 * 86400.0,
                 max_purges: int = 100_000) -> None:
        if retention_s <= 0 or max_purges < 1:
            raise ValueError("retention_s must be positive and max_purges at least 1")
        self.distribution = distribution
        self.epoch = epoch
        self.retention_s = retention_s
        self.max_purges = max_purges
        self._purges: list[Purge] = []   # ascending seq, contiguous from floor_seq + 1
        self._floor = 0
        self._last = 0
        self._exact: dict[str, int] = {}
        self._prefix: dict[str, int] = {}
        self._lengths: list[int] = []     # distinct prefix lengths, ascending
        self._tags: dict[str, int] = {}

    # --- state -------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest purge's sequence number (0: none yet)."""
        return self._last

    @property
    def floor_seq(self) -> int:
        """Purges up to this number were compacted away; entries older than it count as purged."""
        return self._floor

    def __len__(self) -> int:
        return len(self._purges)

    def purges(self) -> tuple[Purge, ...]:
        return tuple(self._purges)

    # --- the source of truth (the shield) -------------------------------------------------------

    def append(self, paths: Iterable[str] = (), tags: Iterable[str] = (), *, now: float) -> Purge:
        """Accept one invalidation: validated, numbered ``last_seq + 1``, indexed at once."""
        ps = tuple(dict.fromkeys(validate_path(p) for p in paths))
        ts = tuple(dict.fromkeys(_validate_tag(t) for t in tags))
        if not ps and not ts:
            raise InvalidPurge("nothing to purge: give paths or tags")
        purge = Purge(seq=self._last + 1, at=float(now), paths=ps, tags=ts)
        self._add(purge)
        self._bound()
        return purge

    def since(self, seq: int, *, limit: int = 1000) -> PurgeBatch:
        """The purges after ``seq``, at most ``limit`` of them (``more`` says others follow).

        A ``seq`` below ``floor_seq`` gets everything kept; the batch's ``floor_seq`` tells the
        replica that what it missed before it was compacted.
        """
        start = max(seq, self._floor)
        # _purges is contiguous: seq s sits at index s - floor - 1.
        first = start - self._floor
        chunk = tuple(self._purges[first:first + max(1, limit)]) if start < self._last else ()
        more = bool(chunk) and chunk[-1].seq < self._last
        return PurgeBatch(distribution=self.distribution, epoch=self.epoch, floor_seq=self._floor,
                          last_seq=self._last, purges=chunk, more=more)

    # --- replicas (every other tier) --------------------------------------------------------------

    def apply(self, batch: PurgeBatch) -> Applied:
        """Bring this replica up to ``batch`` (idempotent: purges it has are skipped).

        PurgeGap if the batch is for another distribution or leaves a hole; a batch of another
        epoch replaces this log's state and reports ``reset``.
        """
        if batch.distribution != self.distribution:
            raise PurgeGap(f"a batch for {batch.distribution!r} offered to {self.distribution!r}")
        # Another epoch, or the same one gone backwards (the shield's log restored from an older
        # copy): sequence numbers this replica holds may be reused for other purges, so start over.
        reset = batch.epoch != self.epoch or batch.last_seq < self._last
        # Check everything before changing anything, so a refused batch leaves the replica as it was.
        base = 0 if reset else self._last
        expected = max(base, batch.floor_seq) + 1
        fresh = [p for p in batch.purges if p.seq > base]
        if fresh and fresh[0].seq != expected or any(b.seq != a.seq + 1 for a, b in zip(fresh, fresh[1:])):
            raise PurgeGap(f"batch for {self.distribution!r} starts at "
                           f"{fresh[0].seq if fresh else '-'}, expected {expected}")
        if reset:
            self.epoch = batch.epoch
            self._purges.clear()
            self._floor = self._last = 0
        if batch.floor_seq > self._last:
            # Purges this replica never saw were compacted at the source: adopt the floor.
            self._purges.clear()
            self._floor = self._last = batch.floor_seq
        if not self._purges:
            self._reindex()
        for p in fresh:
            self._add(p)
        self._bound()
        return Applied(added=len(fresh), reset=reset)

    # --- the hit path ------------------------------------------------------------------------------

    def is_purged(self, path: str, tags: Iterable[str], stored_seq: int) -> bool:
        """Whether a response stored with ``purge_seq = stored_seq`` at ``path`` with ``tags``
        has been purged since (see the module docstring)."""
        if stored_seq >= self._last:
            return False
        if stored_seq < self._floor:
            return True
        if self._exact.get(path, 0) > stored_seq:
            return True
        n = len(path)
        prefix = self._prefix
        for length in self._lengths:
            if length > n:
                break
            if prefix.get(path[:length], 0) > stored_seq:
                return True
        if self._tags:
            for t in tags:
                if self._tags.get(t, 0) > stored_seq:
                    return True
        return False

    # --- compaction and persistence ----------------------------------------------------------------

    def compact(self, now: float) -> int:
        """Drop purges older than ``retention_s`` at ``now``; returns how many went."""
        cutoff = now - self.retention_s
        n = 0
        while n < len(self._purges) and self._purges[n].at < cutoff:
            n += 1
        if n:
            self._drop_oldest(n)
        return n

    def dumps(self) -> bytes:
        """The whole state, for the daemon to persist (atomically) after every change."""
        return json.dumps({"distribution": self.distribution, "epoch": self.epoch,
                           "floor_seq": self._floor, "last_seq": self._last,
                           "purges": [p.to_dict() for p in self._purges]},
                          separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes, *, retention_s: float = 2 * 86400.0, max_purges: int = 100_000) -> PurgeLog:
        """A log from :meth:`dumps`; InvalidPurge when the bytes are not one."""
        batch = PurgeBatch.from_json(data)
        log = cls(batch.distribution, epoch=batch.epoch, retention_s=retention_s, max_purges=max_purges)
        log._floor = log._last = batch.floor_seq
        for p in batch.purges:
            if p.seq != log._last + 1:
                raise InvalidPurge("a persisted purge log has a hole in its sequence")
            log._add(p)
        if log._last != batch.last_seq:
            raise InvalidPurge("a persisted purge log's last_seq does not match its purges")
        log._bound()
        return log

    # --- internals -------------------------------------------------------------------------------

    def _add(self, p: Purge) -> None:
        self._purges.append(p)
        self._last = p.seq
        self._index(p)

    def _index(self, p: Purge) -> None:
        for path in p.paths:
            if path.endswith("*"):
                stem = path[:-1]
                if stem not in self._prefix:
                    if len(stem) not in self._lengths:
                        self._lengths.append(len(stem))
                        self._lengths.sort()
                self._prefix[stem] = p.seq
            else:
                self._exact[path] = p.seq
        for t in p.tags:
            self._tags[t] = p.seq

    def _reindex(self) -> None:
        self._exact.clear()
        self._prefix.clear()
        self._tags.clear()
        self._lengths.clear()
        for p in self._purges:
            self._index(p)

    def _bound(self) -> None:
        excess = len(self._purges) - self.max_purges
        if excess > 0:
            self._drop_oldest(excess)

    def _drop_oldest(self, n: int) -> None:
        self._floor = self._purges[n - 1].seq
        del self._purges[:n]
        # Rebuilding is O(kept purges); compaction is rare (a background loop), never per request.
        self._reindex()


def is_purged(path: str, tags: Iterable[str], stored_seq: int, log: PurgeLog) -> bool:
    """Whether a stored response (``path``, its surrogate ``tags``, its ``purge_seq``) is purged."""
    return log.is_purged(path, tags, stored_seq)


# --- config ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeConfig:
    """``[cdn.purge]``: how long purges are kept, how many, and how tiers pull them."""

    retention_s: float = 2 * 86400.0
    max_purges: int = 100_000
    max_items_per_request: int = 3000
    batch_limit: int = 1000
    pull_interval_s: float = 1.0
    long_poll_s: float = 25.0


def read_purge_config(r: Reader, data: Mapping[str, Any] | None, prefix: str = "cdn.purge") -> PurgeConfig:
    """``[cdn.purge]``: ``retention_seconds``, ``max_purges``, ``max_items_per_request``,
    ``batch_limit``, ``pull_interval_seconds``, ``long_poll_seconds`` (all optional)."""
    d = PurgeConfig()
    if data is None:
        return d
    if not isinstance(data, dict):
        raise r.error(prefix, "expected a table")
    r.check_keys(data, prefix, {"retention_seconds", "max_purges", "max_items_per_request",
                                "batch_limit", "pull_interval_seconds", "long_poll_seconds"})

    def count(key: str, default: int) -> int:
        v = r.get(data, key, prefix, int, default)
        if v < 1:
            raise r.error(f"{prefix}.{key}", f"{v} must be at least 1")
        return v

    return PurgeConfig(
        retention_s=r.positive(data, "retention_seconds", prefix, d.retention_s),
        max_purges=count("max_purges", d.max_purges),
        max_items_per_request=count("max_items_per_request", d.max_items_per_request),
        batch_limit=count("batch_limit", d.batch_limit),
        pull_interval_s=r.positive(data, "pull_interval_seconds", prefix, d.pull_interval_s),
        long_poll_s=r.non_negative(data, "long_poll_seconds", prefix, d.long_poll_s),
    )
