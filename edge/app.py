"""The edge's request path: one HTTP app per worker, the same for every tier.

For a GET or HEAD: a POP's front door first (:mod:`.access`: client limits and rules, then the
signed URL or cookies a behaviour requires; nothing below runs for a refused request); then the
distribution by Host, its cache behaviour by path (:class:`~.config.Route`), the cache key; the
key is looked up in the RAM tier then the disk tier (:mod:`headwater.edge.store`), with Vary
variants under ``variant_key_for``; RFC 9111 decides (edge-cache's :mod:`headwater.edge.cache`:
``decide``, ``storable``, ``merge_304``, ``served_headers``, ``plan_range`` ...) whether the stored
response is fresh, must be revalidated, may be served stale while it is refreshed in the
background (``stale-while-revalidate``) or instead of an error (``stale-if-error``).

A miss or a revalidation joins the key's :class:`~.collapse.Flight` (one upstream fetch per key
per worker; across workers the disk store's in-flight claim): the fetch runs in the worker's task
group, writes the body into the stores as it streams it to every waiting request, and commits
only a complete, well-framed body (a truncated or over-long body aborts the entry: nothing
partial is ever served as a hit). Upstream is the next tier (a regional chosen by rendezvous
hashing, or the shield) or, at the shield, the distribution's origin group with failover; the
request sent is ``upstream_target`` with ``forwarded_headers`` (what the behaviour keys on or
forwards, nothing else).

Large objects: under a behaviour with ``slice_size``, objects are fetched with upstream Range
requests one slice at a time (``cache.slices``). The first fetch tells the object's size; an
object larger than one slice is kept as a record of the whole (empty body) plus one entry per
slice, and a client's Range is answered from the slices it touches, fetching only those.

Other methods, where a behaviour allows them, are passed through uncached; a successful unsafe
one invalidates what it changed (RFC 9111 4.4) in this tier's stores.

Every response carries ``X-Cache`` (``Hit from pop-1``, ``Miss from pop-1``, ``RefreshHit from
pop-1``, ``StaleHit from pop-1``, ``Error from pop-1``, ``LimitExceeded from pop-1``), ``Age``,
``Via`` and ``Server-Timing`` (this tier's entry, then the upstream tiers' on a miss); each
request is one structured access log line with CloudFront's standard fields, and counted in the
metrics per tier.

The common hit has a shortcut (:class:`_WarmHit`): once a fresh RAM-tier entry has answered a
request, the next request with the same Host and target that carries none of the fields a hit
reads is answered from what was worked out then (the key, the entry, its freshness lifetime, its
served fields, written out for HTTP/1.1), after the same checks that could change the answer (the
front door, the very same entry in the RAM tier, no purge since, still fresh). Anything else takes
the full path above.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import anyio

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.http import Request, Response, error_response
from headwater.http.errors import BodyCut, LocalProtocolError
from headwater.http.h1 import prepare_fields
from headwater.http.ranges import parse_range_header
from headwater.http.types import FileBody, PreparedFields
from headwater.metrics import Registry

from .access import FrontDoor
from .cache import (
    Action,
    Behaviour,
    StoredResponse,
    cache_key,
    conditional_headers,
    current_age,
    decide,
    forwarded_headers,
    invalidation_paths,
    key_prefix,
    merge_304,
    must_revalidate,
    parse_cache_control,
    plan_range,
    response_cache_control,
    served_headers,
    stale_if_error_allowed,
    storable,
    stored_response,
    strip_for_storage,
    upstream_target,
    validates,
    variant_key_for,
    vary_matches,
    whole_plan,
)
from .cache.cachekey import normalise_path
from .cache.slices import (
    SliceError,
    pieces,
    read_slice_response,
    same_representation,
    slice_key,
    slice_request_headers,
    whole_headers,
)
from .collapse import Collapser, Flight, FlightHead
from .config import Distribution, EdgeConfig
from .entry import (
    Entry,
    decode_entry,
    decode_meta,
    encode_meta,
    readable_key,
    store_key,
)
from .errors import (
    BadTarget,
    CollapsedFetchFailed,
    EdgeError,
    LoopDetected,
    MethodNotAllowed,
    NoDistribution,
    RevalidationFailed,
    UpstreamBroken,
    UpstreamBusy,
    UpstreamError,
    UpstreamUnavailable,
    headers_of,
    status_of,
)
from .invalidation import MIN_SEQ_FIELD, stored_seq
from .preconditions import not_modified
from .compress import CompressionConfig, Compressor, keep_weak_etag, with_vary, without_vary_on_encoding
from .prefetch import PrefetchConfig, PrefetchPlanner
from .promote import PROMOTED, Promoter, PromotionConfig, copy_data, copy_entry
from .tiers import TierRouter
from .upstream import OriginFetcher, UpstreamClient, UpstreamResponse
from .upstreamslots import SlotPool, pools_for

__all__ = ["EdgeApp", "EdgeMetrics", "encode_meta", "decode_meta"]

log = logging.getLogger("headwater.edge")

# Set by each tier on its own responses: never stored, never passed on from upstream.
_OWN_FIELDS = frozenset({"x-cache", "server-timing", "content-length", "via"})
_SAFE = frozenset({"GET", "HEAD"})
# Request fields a passed-through request carries besides what the behaviour forwards.
_PASS_FIELDS = ("content-type", "content-length", "content-encoding")
_HOST_MEMO_MAX = 1024
_SERVED_MEMO_MAX = 4096
_WARM_MEMO_MAX = 4096
# Request fields any step of a hit reads (the loop check, conditionals, Range, the client's own
# Cache-Control, the purge floor): a request carrying one takes the full path (_WarmHit).
_WARM_READS = frozenset({"via", "range", "if-range", "if-none-match", "if-modified-since", "if-match",
                         "if-unmodified-since", "cache-control", "pragma", MIN_SEQ_FIELD})
# Not copied from the viewer's request into a prefetch's: its Range and conditionals are its own.
_PREFETCH_DROPPED = frozenset({"range", "if-range", "if-none-match", "if-modified-since", "if-match",
                               "if-unmodified-since", "content-length", "transfer-encoding"})


class EdgeMetrics:
    """The edge's Prometheus series, labelled by tier (and by result where it says more)."""

    def __init__(self, registry: Registry, tier: str) -> None:
        self.tier = tier
        self.requests = registry.counter("hw_edge_requests_total", "Requests answered, by tier and result.",
                                         labels=["tier", "result"])
        self.bytes = registry.counter("hw_edge_response_bytes_total", "Body bytes answered, by tier and result.",
                                      labels=["tier", "result"])
        self.fetches = registry.counter("hw_edge_upstream_fetches_total",
                                        "Fetches from the next tier or the origin, by tier and target.",
                                        labels=["tier", "target"])
        self.collapsed = registry.counter("hw_edge_collapsed_total",
                                          "Requests that shared another request's upstream fetch.", labels=["tier"])
        self.upstream_errors = registry.counter("hw_edge_upstream_errors_total",
                                                "Upstream fetches that failed, by kind.", labels=["tier", "kind"])
        self.not_stored = registry.counter("hw_edge_not_stored_total",
                                           "Upstream bodies not stored, by reason.", labels=["tier", "reason"])
        self.rest_fetches = registry.counter(
            "hw_edge_rest_fetches_total", "Fetches by range of the rest of a response, for a viewer that fell "
            "behind the fetch it shared when no store held the bytes it missed.", labels=["tier"])
        self.slot_waits = registry.counter(
            "hw_edge_upstream_slot_waits_total", "Upstream fetches that queued for a slot (every slot of the "
            "worker's pool in use: max_upstream_fetches, or max_rest_fetches for kind rest).", labels=["tier", "kind"])
        self.slot_refusals = registry.counter(
            "hw_edge_upstream_slot_refusals_total", "Upstream fetches refused for want of a slot (the queue full, "
            "or upstream_wait_seconds over): a 503, or a viewer's answer cut short (kind rest).",
            labels=["tier", "kind", "reason"])
        self.invalidated = registry.counter("hw_edge_invalidated_total",
                                            "Entries removed by unsafe requests passed through (RFC 9111 4.4).",
                                            labels=["tier"])
        self.prefetch = registry.counter("hw_edge_prefetch_total",
                                         "Segment prefetches (edge.prefetch), by result.", labels=["tier", "result"])
        self.promotions = registry.counter("hw_edge_promotions_total",
                                           "Disk-tier hits copied into the RAM tier (edge.promote).", labels=["tier"])
        self.promotions_declined = registry.counter(
            "hw_edge_promotions_declined_total", "Disk-tier hits not copied into the RAM tier, by reason.",
            labels=["tier", "reason"])
        self._answered: dict[str, tuple[Any, Any]] = {}

    def answered(self, result: str, nbytes: int) -> None:
        children = self._answered.get(result)
        if children is None:  # (labels() per request cost as much as the rest of the counting)
            children = self._answered[result] = (self.requests.labels(self.tier, result),
                                                 self.bytes.labels(self.tier, result))
        children[0].inc()
        if nbytes:
            children[1].inc(nbytes)


@dataclass(slots=True)
class _Context:
    """One fetch: what the flight needs of the request that started it.

    ``key`` is the readable key of the entry the fetch fills (the object, one of its Vary
    variants, or one slice). For a slice fetch, ``slice`` is its index, ``object_key`` the
    object's key, ``whole`` the object's record when known (None: this fetch finds out the size)
    and ``validator`` what ``If-Range`` carries.
    """

    request: Request
    dist: Distribution
    behaviour: Behaviour
    key: bytes
    stale: StoredResponse | None = None
    prefetch: bool = False  # a prefetch's fetch: stored in the disk tier only
    slice: int | None = None
    object_key: bytes = b""
    whole: StoredResponse | None = None
    validator: str | None = None
    # The request looked the key up (not bypassing the stores for a purge catch-up) and found
    # nothing usable: an entry the disk tier holds at claim time was committed since.
    looked_up: bool = False


@dataclass(slots=True)
class _Found:
    """A usable stored entry: the store's hit and what its metadata says."""

    hit: Any
    entry: Entry
    size: int
    tier: str = "ram"  # the store it was found in: "ram" or "disk" (Server-Timing's tier)


@dataclass(slots=True, eq=False)
class _WarmHit:
    """A RAM-tier entry a request for this Host and target was last answered from, fresh, with
    everything that does not change between its hits worked out once: the distribution, the
    cache key, the entry, when it goes stale, and the served fields around ``Age``.

    Valid for a later request with the same Host and target only if that request carries none of
    ``reads`` (what the key, the loop check, the conditionals, Range and the client's own
    Cache-Control would read: a request with any of them takes the full path), the RAM tier
    still hands back the very same hit (an entry replaced, refreshed or evicted is another one,
    or none), no purge since covers it, and it is still fresh. What the full path would then do
    is exactly this: a ``Hit`` with these fields.
    """

    dist: Distribution
    matched: str  # the path the front door's rules see
    methods: frozenset[str]
    reads: frozenset[str]
    key: bytes
    store_key: bytes
    # The RamHit (shared by the entry's hits), weakly: an evicted entry's body must not stay
    # alive in this memo.
    hit: weakref.ref[Any]
    stored: StoredResponse
    initial_age: float  # current_age = initial_age + (now - response_time), once now is past it
    response_time: float
    lifetime: float
    before_age: tuple[tuple[str, str], ...]
    after_age: tuple[tuple[str, str], ...]  # Via, X-Cache, Server-Timing, Content-Length
    # The same written out for HTTP/1.1 once (Response.prepared: these lines around Age's, and
    # the flags of all of them).
    before_lines: str
    after_lines: str
    prepared_flags: tuple[int | None, bool, bool, bool]
    # Invalidation.purge_state of the key (None: no purge log covers it) and the entry's seq.
    purge_state: Any
    seq: int
    size: int
    # The Age field and prepared lines last served, by whole seconds of age (Age moves once a
    # second: the hits of that second share them).
    age: int = -1
    age_field: tuple[str, str] = ("age", "")
    prepared: PreparedFields | None = None


def _via_ids(request: Request) -> list[str]:
    ids: list[str] = []
    if request.headers.get("via") is None:
        return ids  # (a viewer's request: no Via)
    for value in request.headers.get_all("via"):
        for part in value.split(","):
            fields = part.split()
            if len(fields) >= 2:
                ids.append(fields[1])
    return ids


_SLASHES = re.compile(r"(?:/|\\|%2[Ff]|%5[Cc])+")


def _matched_path(path: str) -> str:
    """The path that rules and behaviours (which of them needs a signature) are matched against:
    the path the upstream is sent (``normalise_path``: ``/%70rivate/x`` is ``/private/x``) with
    every run of ``/``, ``\\``, ``%2F`` and ``%5C`` read as one ``/``, as origins resolve it
    (nginx merges slashes, S3 decodes ``%2F``). Matched on the raw path, ``/%70rivate/x`` and
    ``//private/x`` fell under the default behaviour and were fetched without a signature.
    Dot segments (``/a/../private/x``, also as ``%2e%2e``) resolve differently at every origin:
    refused (400). A path that is not ``/...`` too: appended to the upstream's URL, it could
    name another host."""
    if path[:1] != "/":
        raise BadTarget(f"request-target {path[:64]!r} is not a path")
    if "%" not in path and "\\" not in path and "//" not in path and "/." not in path:
        return path  # (the common case, on every hit: nothing to read differently)
    merged = _SLASHES.sub("/", normalise_path(path))
    for segment in merged.split("/"):
        if segment in (".", ".."):
            raise BadTarget(f"dot segments are not served: {path[:64]!r}")
    return merged


def _personal(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether a response is meant for the one request that caused it: it sets a cookie, or a
    Cache-Control (the viewer's, or the one this CDN obeys) says ``private``."""
    cc_values = []
    for k, v in headers:
        if k == "set-cookie":
            return True
        if k == "cache-control":
            cc_values.append(v)
    if cc_values and parse_cache_control(", ".join(cc_values)).private:
        return True
    return response_cache_control(tuple(headers)).private


def _as_get(request: Request) -> Request:
    """``request`` as the GET the edge sends upstream for it (a HEAD is fetched as a GET)."""
    return request if request.method == "GET" else dataclasses.replace(request, method="GET")


def _declared_length(headers: Sequence[tuple[str, str]]) -> int | None:
    for k, v in headers:
        if k == "content-length" and v.isdigit():
            return int(v)
    return None


def _validator(stored: StoredResponse) -> str | None:
    """The strong validator later slice fetches (and a slow waiter's fetch of the rest of a
    response, ``_rest_from_upstream``) carry in If-Range."""
    etag = stored.get("etag")
    if etag is not None and not etag.strip().startswith("W/"):
        return etag.strip()
    return stored.get("last-modified")


# cs-protocol-version as CloudFront writes it (HTTP/1.1, HTTP/2.0), by the core's http_version.
_PROTOCOL_VERSIONS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2.0"}


def _range_of(content_range: str | None) -> tuple[int | str, int | str]:
    """(first, last) byte of a ``Content-Range: bytes a-b/n``, else ("-", "-") as CloudFront logs."""
    if content_range and content_range.startswith("bytes "):
        first, _, rest = content_range[6:].partition("-")
        last = rest.partition("/")[0]
        if first.isdigit() and last.isdigit():
            return int(first), int(last)
    return "-", "-"


class EdgeApp:
    """The request path of one edge worker (any tier)."""

    def __init__(self, *, node: EdgeConfig, distributions: Sequence[Distribution], stores: Sequence[Any],
                 upstream: UpstreamClient, next_tier: TierRouter | None, origins: Mapping[str, OriginFetcher],
                 registry: Registry, spawn: Callable[..., Any], clock: Clock = SYSTEM_CLOCK,
                 access_log: Any = None, front_door: FrontDoor | None = None,
                 boundary: Callable[[], str] = lambda: secrets.token_hex(16), purges: Any = None,
                 promotion: PromotionConfig | None = None, prefetch: PrefetchConfig | None = None,
                 compression: CompressionConfig | None = None) -> None:
        self.node = node
        self.distributions = tuple(distributions)
        self._by_host = {h: d for d in self.distributions for h in d.hostnames}
        self._dist_by_raw_host: dict[str, Distribution] = {}
        # Per stored response and result: the served fields before and after Age (_headers).
        self._served: dict[tuple[int, str], tuple[StoredResponse, list[tuple[str, str]],
                                                  list[tuple[str, str]]]] = {}
        self.stores = tuple(stores)
        # The disk tier (shared by the workers) is the last store; a POP's RAM tier comes first.
        self.disk = self.stores[-1] if self.stores and getattr(self.stores[-1], "shared", True) else None
        self.upstream = upstream
        self.next_tier = next_tier
        self.origins = dict(origins)
        self.collapser = Collapser(node.collapse_window_bytes)
        # Upstream fetches open at once, per worker (.upstreamslots): every kind, and rest fetches.
        self.slots: dict[str, SlotPool] = pools_for(node.upstream_slots)
        self.metrics = EdgeMetrics(registry, node.tier)
        self.spawn = spawn
        self.clock = clock
        self.access_log = access_log
        self.front_door = front_door
        self.boundary = boundary
        # Invalidation (.invalidation.Invalidation): the catch-up gate, the purged-entry check on
        # hits, the purge fields between tiers. None: no purges (unit tests of the request path).
        self.purges = purges
        self.via = f"1.1 {node.id} (headwater)"
        # A POP's RAM tier (the first store, when the disk tier follows it) and what promotes to it.
        self.ram = self.stores[0] if len(self.stores) > 1 and self.stores[0] is not self.disk else None
        self.promoter = Promoter(promotion or PromotionConfig(), ram_max_entry_bytes=self.ram.max_entry_bytes,
                                 now=clock.monotonic()) if self.ram is not None else None
        # Compressed variants (.compress) under behaviours with compress = true.
        self.compressor = Compressor(compression or CompressionConfig())
        # Segment prefetch (.prefetch): a POP's, under behaviours with prefetch > 0.
        self.prefetch = PrefetchPlanner(prefetch or PrefetchConfig()) if node.tier == "pop" else None
        # Fresh RAM hits by (Host, target), for the next request for them (_WarmHit).
        self._warm: dict[tuple[str, str], _WarmHit] = {}
        self.counts = {"hits": 0, "misses": 0, "refresh_hits": 0, "stale": 0, "errors": 0, "refused": 0}
        self.active = 0
        # x-edge-request-id: unique per request across processes and restarts (a random prefix
        # a process, then its count), without a random draw per request.
        self._request_id_prefix = f"{secrets.token_hex(8)}-"
        self._requests_logged = 0

    # --- entry -------------------------------------------------------------------------------

    def answer_now(self, request: Request) -> Response | None:
        """What ``__call__`` answers to ``request`` when it is a warm hit (_WarmHit) or refused by
        the front door on the way to one, worked out without waiting (the HTTP/1.1 core may then
        answer it from the loop's read callback); None, having done nothing, otherwise."""
        warm = self._warm.get((request.host, request.target))
        if warm is None:
            return None
        started = time.perf_counter()
        answer = self._warm_hit(request, warm)
        if answer is None:
            return None
        response, result, size = answer
        self._finish(request, response, result, started, size)
        return response

    async def __call__(self, request: Request) -> Response:
        response = self.answer_now(request)
        if response is not None:
            return response
        started = time.perf_counter()
        self.active += 1
        try:
            try:
                response, result = await self._serve(request)
            except EdgeError as e:
                response, result = self._error(e), "Error"
            self._finish(request, response, result, started)
            return response
        finally:
            self.active -= 1

    def _error(self, e: EdgeError) -> Response:
        self.counts["errors"] += 1
        if isinstance(e, UpstreamBusy):  # (counted in hw_edge_upstream_slot_refusals_total)
            log.info("%s: %s", self.node.id, e, extra={"event": "edge.upstream_busy"})
        elif isinstance(e, UpstreamError):
            log.warning("%s: %s", self.node.id, e, extra={"event": "edge.upstream_failed"})
        message = "upstream busy" if isinstance(e, UpstreamBusy) else \
            "upstream failed" if isinstance(e, UpstreamError) else str(e)
        r = error_response(status_of(e), message)
        r.headers += headers_of(e) + [("x-cache", f"Error from {self.node.id}"), ("via", self.via)]
        return r

    def _refused(self, response: Response) -> tuple[Response, str]:
        self.counts["refused"] += 1
        result = "LimitExceeded" if response.status == 429 else "Error"
        response.headers += [("x-cache", f"{result} from {self.node.id}"), ("via", self.via)]
        return response, result

    def _finish(self, request: Request, response: Response, result: str, started: float,
                size: int | None = None) -> None:
        """Count the answer and write its access line; ``size``: its body bytes when known."""
        if size is None:
            size = 0
            if request.method != "HEAD":
                for k, v in reversed(response.headers):  # (the last one counts: it comes last)
                    if k == "content-length" and v.isdigit():
                        size = int(v)
                        break
        self.metrics.answered(result, size)
        if self.access_log is not None and self.access_log.enabled("info"):
            first_byte = time.perf_counter() - started
            # The line is written when the HTTP core has handed the answer's last byte on
            # (Response.on_sent): time-taken is until then, as CloudFront's (to its "output
            # queue"); time-to-first-byte is until the head went to the core, now.
            response.on_sent = lambda sent: self._log_access(request, response, result, started, size,
                                                             first_byte, sent)

    def _log_access(self, request: Request, response: Response, result: str, started: float, size: int,
                    first_byte: float, sent: bool) -> None:
        """One access line, CloudFront's standard log fields by their names (a subset: no
        cookies, whose values are the viewer's). An answer cut short (the viewer left, the stream
        was reset) is an Error whose detailed type is ClientCommError, as CloudFront logs it."""
        assert self.access_log is not None
        taken = time.perf_counter() - started
        self._requests_logged += 1
        client = request.client or ("", 0)
        ctype = clen = crange = None
        for k, v in response.headers:
            if k == "content-type":
                ctype = v
            elif k == "content-length":
                clen = v
            elif k == "content-range":
                crange = v
        start, end = _range_of(crange)
        # Cut short by the edge itself (an upstream slot refused: _ViewerBody), else the viewer left.
        cut = getattr(response.body, "cut_detail", None) or "ClientCommError"
        tls = request.tls
        # cs-protocol is the connection's (TLS or not), not the scheme an HTTP/2 client claims.
        self.access_log.info(
            "edge.access", **{"x-edge-location": self.node.id, "c-ip": client[0], "c-port": client[1],
                              "x-edge-request-id": f"{self._request_id_prefix}{self._requests_logged:x}",
                              "cs-method": request.method, "cs(Host)": request.host,
                              "x-host-header": request.headers.get("host", request.host or "-"),
                              "cs-uri-stem": request.path, "cs-uri-query": request.query or "-",
                              "sc-status": response.status, "sc-bytes": size,
                              "sc-content-type": ctype or "-", "sc-content-len": clen or "-",
                              "sc-range-start": start, "sc-range-end": end,
                              "cs(Referer)": request.headers.get("referer", "-"),
                              "cs(User-Agent)": request.headers.get("user-agent", "-"),
                              "x-forwarded-for": request.headers.get("x-forwarded-for", "-"),
                              "x-edge-result-type": result if sent else "Error",
                              "x-edge-detailed-result-type": result if sent else cut,
                              "time-taken": round(taken, 6), "time-to-first-byte": round(first_byte, 6),
                              "cs-protocol-version": _PROTOCOL_VERSIONS.get(request.http_version,
                                                                            f"HTTP/{request.http_version}"),
                              "cs-protocol": "https" if tls is not None else "http",
                              "ssl-protocol": tls.protocol if tls is not None else "-",
                              "ssl-cipher": tls.cipher if tls is not None else "-"})

    # --- the request path --------------------------------------------------------------------

    def distribution(self, request: Request) -> Distribution:
        raw = request.host or request.headers.get("host") or ""
        dist = self._dist_by_raw_host.get(raw)
        if dist is not None:
            return dist
        dist = self._distribution(raw)
        if len(self._dist_by_raw_host) >= _HOST_MEMO_MAX:  # (the Host is the client's: bounded)
            self._dist_by_raw_host.clear()
        self._dist_by_raw_host[raw] = dist
        return dist

    def _distribution(self, raw: str) -> Distribution:
        host = raw.lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        dist = self._by_host.get(host.rstrip("."))
        if dist is not None:
            return dist
        # A Host no distribution names goes to the first one (a local cluster is reached by its
        # address); the Host never enters the cache key, so this cannot poison another's entry.
        if self.distributions:
            return self.distributions[0]
        raise NoDistribution(f"no distribution answers for {host!r}")

    async def _serve(self, request: Request) -> tuple[Response, str]:
        matched = _matched_path(request.path)
        door = self.front_door
        if door is not None:
            refused = door.admit(request, path=matched)
            if refused is not None:
                return self._refused(refused)
        if self.node.id in _via_ids(request):
            raise LoopDetected(f"the request has already passed through {self.node.id}")
        dist = self.distribution(request)
        route = dist.route(matched)
        if door is not None:
            request, refused = door.verify(request, dist, route)
            if refused is not None:
                return self._refused(refused)
        behaviour = route.cache
        if request.method not in _SAFE:
            if request.method not in dist.methods_for(route):
                raise MethodNotAllowed(f"{request.method} is not allowed here (GET and HEAD are)")
            return await self._pass(request, dist, behaviour)
        if behaviour.compress:
            response, result = await self._cached(request, dist, behaviour)
            with_vary(response.headers)  # (the key holds the encoding the request chose)
            return response, result
        # Whether a fresh RAM hit of this request may be remembered for the next (_WarmHit):
        # not when a signature is checked (verify reads the query and cookies, and may strip them).
        warm_path = None if door is not None and dist.keys_for(route) else matched
        return await self._cached(request, dist, behaviour, warm_path)

    async def _cached(self, request: Request, dist: Distribution, behaviour: Behaviour,
                      warm_path: str | None = None) -> tuple[Response, str]:
        """A GET or HEAD under ``behaviour``: from the stores, or through a flight. ``warm_path``:
        the matched path, when a fresh RAM hit may be remembered for the next such request."""
        key = cache_key(request, behaviour, distribution=dist.name)
        purges = self.purges
        use_cache = True if purges is None or purges.settled(dist) else await purges.admit(request, dist)
        now = self.clock.time()
        found, fill_key = self._lookup(key, request) if use_cache else (None, key)
        if found is not None and found.tier == "disk" and self.promoter is not None:
            self._promote(found)
        if behaviour.prefetch and self.prefetch is not None and request.method == "GET":
            self._prefetch_after(request, dist, behaviour, fill_key)
        if found is None:
            if request.method not in behaviour.cached_methods:
                return await self._pass(request, dist, behaviour)
            ctx = _Context(request, dist, behaviour, fill_key, looked_up=use_cache)
            if behaviour.slice_size:
                return await self._sliced_miss(ctx, now)
            return await self._via_flight(ctx)
        entry = found.entry
        stored = entry.stored
        decision = decide(request, stored, now, behaviour)
        action = decision.action
        if action is Action.PASS:
            found.hit.close()
            return await self._pass(request, dist, behaviour)
        if entry.slice_size:
            found.hit.close()
            ctx = _Context(request, dist, behaviour, entry.key)
            if action in (Action.FRESH, Action.STALE_WHILE_REVALIDATE):
                result = "Hit" if action is Action.FRESH else "StaleHit"
                self.counts["hits" if action is Action.FRESH else "stale"] += 1
                return self._sliced_response(ctx, stored, decision.age, result), result
            # A stale sliced object is fetched afresh from its first needed slice; slices of the
            # same representation already stored are kept (their validators are compared).
            return await self._sliced_miss(ctx, now)
        if action is Action.FRESH:
            self.counts["hits"] += 1
            if warm_path is not None and found.tier == "ram":
                self._remember_warm(request, warm_path, dist, behaviour, key, found, decision.lifetime)
            return self._from_hit(request, found, decision.age, "Hit"), "Hit"
        if action is Action.STALE_WHILE_REVALIDATE:
            self.counts["stale"] += 1
            self._start_flight(_Context(request, dist, behaviour, entry.key, stored))
            return self._from_hit(request, found, decision.age, "StaleHit"), "StaleHit"
        found.hit.close()
        return await self._via_flight(_Context(request, dist, behaviour, entry.key, stored))

    def _get(self, store: Any, key: bytes) -> _Found | None:
        """``key``'s entry in ``store`` if its metadata is readable and names ``key`` itself (a
        digest store key shared by another key reads as a miss)."""
        hit = store.get(store_key(key))
        if hit is None:
            return None
        if not hit.complete:
            # A growing entry (a fetch is writing it): not a hit. Its info.size is what is written
            # so far, not the body's size; the request joins that fetch instead (the flight in
            # this process, or the peer's growing entry through _follow_peer).
            hit.close()
            return None
        entry = decode_entry(hit.info.meta)
        if entry is None or entry.key != key:
            hit.close()
            return None
        if self.purges is not None and self.purges.purged(key, entry.stored):
            hit.close()
            self._remove(key)  # from every tier: none of them may serve it
            return None
        return _Found(hit, entry, hit.info.size, "disk" if store is self.disk else "ram")

    def _lookup(self, key: bytes, request: Request) -> tuple[_Found | None, bytes]:
        """The first store's usable entry for ``request`` (the object's, or the Vary variant it
        selects), and the key a miss fills (the variant's key when another variant is stored)."""
        fill = key
        for store in self.stores:
            found = self._get(store, key)
            if found is None:
                continue
            stored = found.entry.stored
            if not stored.vary_key or vary_matches(request, stored):
                return found, key
            found.hit.close()
            fill = variant_key_for(key, request, stored)
            variant = self._get(store, fill)
            if variant is not None:
                if vary_matches(request, variant.entry.stored):
                    return variant, fill
                variant.hit.close()
        return None, fill

    def _remove(self, key: bytes) -> None:
        for store in self.stores:
            store.remove(store_key(key))

    def _promote(self, found: _Found) -> None:
        """A disk-tier hit: copy it into the RAM tier if the promoter says so (:mod:`.promote`)."""
        promoter, key = self.promoter, store_key(found.entry.key)
        result = promoter.consider(key, found.size, self.clock.monotonic())
        if result != PROMOTED:
            self.metrics.promotions_declined.labels(self.node.tier, result).inc()
            return
        data = found.hit.data
        if data is not None:  # (a small disk body comes verified and in memory)
            try:
                if copy_data(self.ram, key, found.hit.info.meta, data):
                    self.metrics.promotions.labels(self.node.tier).inc()
            finally:
                promoter.done(key)
            return

        async def copy() -> None:
            try:
                if await copy_entry(self.disk, self.ram, key):
                    self.metrics.promotions.labels(self.node.tier).inc()
            except Exception as e:  # a corrupt or vanished entry: it stays a disk hit (or a miss)
                log.info("%s: promotion of %r failed: %s", self.node.id, key, e)
            finally:
                promoter.done(key)
        self.spawn(copy)

    # --- hits --------------------------------------------------------------------------------

    def _remember_warm(self, request: Request, matched: str, dist: Distribution, behaviour: Behaviour,
                       key: bytes, found: _Found, lifetime: float) -> None:
        """Remember a fresh RAM hit for the next request with this Host and target (_WarmHit), when
        nothing but those two (and the fields in ``reads``) chose it."""
        hit, entry = found.hit, found.entry
        stored = entry.stored
        if (self.ram is None or stored.status != 200 or entry.key != key or entry.slice_size or stored.vary_key
                or type(hit.data) is not bytes
                or not request.host or behaviour.compress or behaviour.slice_size
                or (behaviour.prefetch and self.prefetch is not None)
                or behaviour.key_headers.mode not in ("none", "allow")
                or (self.purges is not None and not self.purges.strip)):
            return
        reads = _WARM_READS | behaviour.key_headers.names
        if behaviour.key_cookies.mode != "none":
            reads |= {"cookie"}
        for name, _ in request.headers:
            if name in reads:
                return
        if stored.body_size != found.size:
            stored = dataclasses.replace(stored, body_size=found.size)
        # The fields _from_hit serves for it, split around Age (built by the same code).
        served = self._headers(stored, age=0, result="Hit", hit_key=entry.key)
        served.append(("server-timing", f'tier;desc="{found.tier}"'))
        served += whole_plan(stored.body_size).headers
        at = next(i for i, (k, _) in enumerate(served) if k == "age")
        try:
            before, after = prepare_fields(served[:at]), prepare_fields(served[at + 1:])
            flags = before.joined("", after)[1:]
        except (LocalProtocolError, ValueError):
            return  # (a stored field HTTP/1.1 cannot send: the full path answers, as ever)
        purge_state, seq = None, 0
        if self.purges is not None:
            purge_state, seq = self.purges.purge_state(key), stored_seq(entry.stored)
        if len(self._warm) >= _WARM_MEMO_MAX:  # (Host and target are the client's: bounded)
            self._warm.clear()
        self._warm[(request.host, request.target)] = _WarmHit(
            dist=dist, matched=matched, methods=behaviour.cached_methods & _SAFE, reads=frozenset(reads),
            key=key, store_key=store_key(key), hit=weakref.ref(hit), stored=entry.stored,
            initial_age=current_age(stored, stored.response_time), response_time=stored.response_time,
            lifetime=lifetime, before_age=tuple(served[:at]), after_age=tuple(served[at + 1:]),
            before_lines=before.lines, after_lines=after.lines, prepared_flags=flags,  # type: ignore[arg-type]
            purge_state=purge_state, seq=seq, size=stored.body_size)

    def _warm_hit(self, request: Request, warm: _WarmHit) -> tuple[Response, str, int | None] | None:
        """``request`` answered from ``warm`` as the full path would answer it: (response, result,
        body bytes or None: read them from the response); None when the full path must decide
        (before the front door is asked: it is asked once per request, and it counts)."""
        if request.method not in warm.methods:
            return None
        reads = warm.reads
        for name, _ in request.headers:
            if name in reads:
                return None
        purges = self.purges
        if purges is not None and not purges.settled(warm.dist):
            return None
        now = self.clock.time()
        resident = now - warm.response_time
        age = warm.initial_age + resident if resident > 0 else warm.initial_age
        if age >= warm.lifetime:
            return None  # stale: revalidate or serve stale, as the full path decides
        ram = self.ram
        hit = warm.hit()
        state = warm.purge_state
        if hit is None or not ram.holds(warm.store_key, hit) or (  # type: ignore[union-attr]
                state is not None and warm.seq < state.log.last_seq
                and purges.purged(warm.key, warm.stored)):  # type: ignore[union-attr]
            self._warm.pop((request.host, request.target), None)  # (replaced, evicted or purged)
            return None
        door = self.front_door
        if door is not None:
            refused = door.admit(request, path=warm.matched)
            if refused is not None:
                response, result = self._refused(refused)
                return response, result, None
        ram.get(warm.store_key)  # type: ignore[union-attr]  # (the hit, counted and touched as ever)
        self.counts["hits"] += 1
        whole = int(age)
        if whole != warm.age:
            value = str(whole)
            warm.prepared = PreparedFields(f"{warm.before_lines}age: {value}\r\n{warm.after_lines}",
                                           *warm.prepared_flags)
            warm.age_field, warm.age = ("age", value), whole
        headers = [*warm.before_age, warm.age_field, *warm.after_age]
        prepared = warm.prepared
        if request.method == "HEAD":
            return Response(200, headers, b"", prepared), "Hit", 0
        return Response(200, headers, hit.data, prepared), "Hit", warm.size

    def _headers(self, stored: StoredResponse, *, age: float, result: str, upstream_timing: str = "",
                 started: float | None = None, hit_key: bytes | None = None) -> list[tuple[str, str]]:
        if started is None and not upstream_timing:
            # A hit: the same fields around Age every time for this stored response, built once.
            memo = self._served.get((id(stored), result))
            if memo is None or memo[0] is not stored:
                before = [h for h in served_headers(stored, 0) if h[0] not in _OWN_FIELDS and h[0] != "age"]
                after = self._own_fields(stored, result, "", None)
                if self.purges is not None and self.purges.strip:
                    # A POP strips the purge fields whatever the purge log says: once, here.
                    before = self.purges.outgoing(before, None, None)
                    after = self.purges.outgoing(after, None, None)
                if len(self._served) >= _SERVED_MEMO_MAX:
                    self._served.clear()
                memo = self._served[(id(stored), result)] = (stored, before, after)
            out = [*memo[1], ("age", str(int(age))), *memo[2]]
            if self.purges is not None and not self.purges.strip:
                # Not memoised: what it stamps follows the purge log.
                out = self.purges.outgoing(out, stored, hit_key)
            return out
        out = [h for h in served_headers(stored, age) if h[0] not in _OWN_FIELDS]
        out += self._own_fields(stored, result, upstream_timing, started)
        if self.purges is not None:
            out = self.purges.outgoing(out, stored, hit_key)
        return out

    def _own_fields(self, stored: StoredResponse, result: str, upstream_timing: str,
                    started: float | None) -> list[tuple[str, str]]:
        """Via, X-Cache and Server-Timing of this tier's response."""
        out = []
        via = ", ".join(v for k, v in stored.headers if k == "via")
        out.append(("via", f"{via}, {self.via}" if via else self.via))
        out.append(("x-cache", f"{result} from {self.node.id}"))
        timing = f'edge;desc="{result} from {self.node.id}"'
        if started is not None:
            timing += f";dur={(time.perf_counter() - started) * 1000:.1f}"
        out.append(("server-timing", timing + (f", {upstream_timing}" if upstream_timing else "")))
        return out

    def _planned(self, request: Request, stored: StoredResponse, headers: list[tuple[str, str]]) -> Any:
        """``headers`` completed by the Range plan for ``request`` (a 304 for the client's own
        matching conditional: then None)."""
        if not_modified(request.headers, stored):
            return None
        if request.headers.get("range") is None:
            # What plan_range answers without Range (the common hit), without its pass over the
            # request: the whole body. Its one field, content-length, is never among the stored
            # fields served.
            plan = whole_plan(stored.body_size, stored.status)
            headers += plan.headers
            return plan
        # The boundary (fresh randomness) only matters to a multipart answer.
        plan = plan_range(request.method, request.headers, stored, boundary=self.boundary())
        names = {k for k, _ in plan.headers}
        headers[:] = [h for h in headers if h[0] not in names] + list(plan.headers)
        return plan

    def _not_modified(self, headers: list[tuple[str, str]]) -> Response:
        return Response(304, [h for h in headers if h[0] not in ("content-type", "content-encoding")], b"")

    def _from_hit(self, request: Request, found: _Found, age: float, result: str) -> Response:
        hit, stored = found.hit, found.entry.stored
        if stored.body_size != found.size:  # a length-less upstream body: the store counted it
            stored = dataclasses.replace(stored, body_size=found.size)
        headers = self._headers(stored, age=age, result=result, hit_key=found.entry.key)
        if self.ram is not None:  # a POP says which of its tiers answered
            headers.append(("server-timing", f'tier;desc="{found.tier}"'))
        plan = self._planned(request, stored, headers)
        if plan is None:
            hit.close()
            return self._not_modified(headers)
        if request.method == "HEAD" or plan.status == 416 or not plan.parts:
            hit.close()
            return Response(plan.status, headers, b"")
        if len(plan.parts) == 1:
            start, length = plan.parts[0]
            return Response(plan.status, headers, self._hit_body(hit, start, length, found.size))
        return Response(plan.status, headers, self._multipart(hit, plan.parts))

    def _hit_body(self, hit: Any, start: int, length: int, size: int) -> Any:
        data = hit.data
        if data is not None:
            return data if (start, length) == (0, size) else data[start:start + length]
        if hit.complete:
            file = hit.file_body()
            if file is not None:
                return FileBody(path=file.path, fd=file.fd, offset=file.offset + start, length=length)
        return _window(hit.chunks(), start, length, hit.close)

    async def _multipart(self, hit: Any, parts: Sequence[Any]) -> AsyncIterator[bytes]:
        try:
            for part in parts:
                if isinstance(part, bytes):
                    yield part
                elif hit.data is not None:
                    yield hit.data[part[0]:part[0] + part[1]]
                else:
                    async for chunk in hit.chunks(part[0], part[1]):
                        yield chunk
        finally:
            hit.close()

    # --- misses and revalidations ------------------------------------------------------------

    def _start_flight(self, ctx: _Context) -> tuple[Flight, bool]:
        flight, leader = self.collapser.join(ctx.key)
        if leader:
            self.spawn(self._run_flight, flight, ctx)
        else:
            self.metrics.collapsed.labels(self.node.tier).inc()
        return flight, leader

    def _stale_answer(self, ctx: _Context) -> tuple[Response, str] | None:
        """The stored response instead of an upstream failure, if stale-if-error allows it."""
        now = self.clock.time()
        if ctx.stale is None or not stale_if_error_allowed(ctx.stale, now, ctx.behaviour):
            return None
        found, _ = self._lookup(ctx.key, ctx.request)
        if found is None:
            return None
        self.counts["stale"] += 1
        return self._from_hit(ctx.request, found, current_age(found.entry.stored, now), "StaleHit"), "StaleHit"

    async def _via_flight(self, ctx: _Context) -> tuple[Response, str]:
        started = time.perf_counter()
        flight, leader = self._start_flight(ctx)
        try:
            head = await flight.wait_head()
        except UpstreamError as e:
            answer = self._stale_answer(ctx)
            if answer is not None:
                return answer
            if isinstance(e, UpstreamBusy):
                raise  # 503 and Retry-After: this edge's overload, not the upstream's failure
            if ctx.stale is not None and must_revalidate(ctx.stale):
                raise RevalidationFailed(f"a stored response that must be revalidated could not be: {e}") from e
            raise
        kind, stored, timing, _ = head.extra
        if kind == "refreshed":
            found, _ = self._lookup(ctx.key, ctx.request)
            if found is not None:
                self.counts["refresh_hits"] += 1
                return self._from_hit(ctx.request, found, current_age(found.entry.stored, self.clock.time()),
                                      "RefreshHit"), "RefreshHit"
            raise UpstreamUnavailable("the refreshed entry is gone from the store")
        if not leader and stored.vary_key and not vary_matches(ctx.request, stored):
            # Collapsed onto a fetch for another variant: this request's variant is fetched
            # (and stored) under its own key.
            return await self._via_flight(dataclasses.replace(
                ctx, key=variant_key_for(ctx.key, ctx.request, stored), stale=None))
        if not leader and not head.stored and _personal(stored.headers):
            # One viewer's answer (it sets a cookie, or says private): shared with the requests
            # collapsed onto its fetch, it handed one session to all of them. Each asks itself.
            return await self._pass(ctx.request, ctx.dist, ctx.behaviour)
        self.counts["misses"] += 1
        headers = self._headers(stored, age=current_age(stored, self.clock.time()), result="Miss",
                                upstream_timing=timing, started=started)
        if head.content_length is not None:
            headers.append(("content-length", str(head.content_length)))
        if ctx.request.method == "HEAD":
            return Response(head.status, headers, b""), "Miss"
        # A whole, uncompressed 200 can be fetched again from any offset by range.
        rest: Callable[[int], AsyncIterator[bytes]] | None = None
        if head.status == 200 and not ctx.behaviour.compress:
            rest = functools.partial(self._rest_from_upstream, ctx, stored)
        fallback = self._fallback(ctx.key, rest) if head.stored and self.stores else rest
        return Response(head.status, headers, _ViewerBody(flight.follow(fallback))), "Miss"

    def _fallback(self, key: bytes, rest: Callable[[int], AsyncIterator[bytes]] | None = None,
                  ) -> Callable[[int], AsyncIterator[bytes]]:
        """For a waiter that fell behind its flight's window: the stored entry from ``offset``;
        when the store no longer holds it (it grew past the store's largest entry, or was
        evicted), ``rest`` from that offset, if given."""
        store = self.stores[-1]

        async def read_from(offset: int) -> AsyncIterator[bytes]:
            hit = store.get(store_key(key))
            if hit is None:
                hit = await store.wait_filling(store_key(key), timeout=self.node.read_timeout_s)
            if hit is None:
                if rest is None:
                    raise CollapsedFetchFailed("the shared response left the store before it was read")
                async for chunk in rest(offset):
                    yield chunk
                return
            async for chunk in _window(hit.chunks(), offset, None, hit.close):
                yield chunk
        return read_from

    async def _rest_from_upstream(self, ctx: _Context, stored: StoredResponse, offset: int) -> AsyncIterator[bytes]:
        """The body of ``stored`` from ``offset``, fetched again by range for a waiter that fell
        behind its flight when nothing holds the bytes it missed (the flight keeps only a
        window: a slow viewer must not hold a whole large body in memory). ``If-Range`` with the
        response's strong validator: an upstream whose object changed since answers 200, and the
        viewer's response is cut short rather than spliced from two versions. A rest fetch takes a
        ``rest`` slot (.upstreamslots): past ``max_rest_fetches`` and the wait, the viewer's answer
        is cut short too (logged as CloudFront's SlowReaderOriginError), rather than one more
        upstream connection per slow viewer."""
        validator = _validator(stored)
        if validator is None:
            raise CollapsedFetchFailed("fell behind a shared fetch whose response is not stored and has "
                                       "no strong validator to fetch the rest by range")
        try:
            response = await self._send(ctx, "GET", self._request_headers(ctx) + [
                ("range", f"bytes={offset}-"), ("if-range", validator)], rest=True)
        except UpstreamBusy as e:  # (the viewer's _ViewerBody notes why its answer is cut)
            log.info("%s: %s: a viewer %d bytes into %r is cut short", self.node.id, e, offset, ctx.key,
                     extra={"event": "edge.rest_refused"})
            raise
        try:
            content_range = response.header("content-range") or ""
            if response.status != 206 or not content_range.startswith(f"bytes {offset}-"):
                raise CollapsedFetchFailed(f"the rest of the response from byte {offset} was not had by range "
                                           f"(upstream answered {response.status} {content_range})")
            async for chunk in response.chunks():
                yield chunk
        finally:
            await response.aclose()

    async def _run_flight(self, flight: Flight, ctx: _Context) -> None:
        try:
            await self._fetch(flight, ctx)
        except Exception as e:
            if not flight.done:
                flight.finish(e)
            if not isinstance(e, EdgeError):
                log.exception("%s: fetch of %r failed", self.node.id, ctx.key)
        except BaseException:
            if not flight.done:
                flight.finish(UpstreamUnavailable("the worker is stopping"))
            raise
        finally:
            self.collapser.land(flight)

    async def _fetch(self, flight: Flight, ctx: _Context) -> None:
        """The flight's one upstream fetch: into the stores and to every waiter."""
        claim = None
        if self.disk is not None and ctx.stale is None:
            claim = self.disk.claim(store_key(ctx.key))
            if claim is not None and ctx.looked_up and ctx.slice is None and self._stored_since(ctx):
                # Another worker's fetch committed the entry (and gave up its claim) between this
                # request's lookup and this claim: read what it stored, do not fetch it again.
                claim.release()
                claim = None
            if claim is None and await self._follow_peer(flight, ctx):
                return
            if claim is not None:
                self.spawn(self._keep_claim, claim, flight)
        try:
            if ctx.slice is not None:
                await self._fetch_slice(flight, ctx, claim)
            else:
                await self._fetch_whole(flight, ctx, claim)
        finally:
            if claim is not None:
                claim.release()

    async def _keep_claim(self, claim: Any, flight: Flight) -> None:
        """Renew ``claim`` while its flight runs. The writer renews it as bytes arrive, but an
        upstream that pauses (before its headers, or mid-body: a slow or held origin) for longer
        than the lease would otherwise look dead to this POP's other workers: they would cut the
        answers they stream from the growing entry, or fetch the object a second time."""
        period = self.disk.settings.lease_s / 3  # type: ignore[union-attr]
        while not flight.done:
            await self.clock.sleep(period)
            if flight.done or not claim.renew():
                return

    def _stored_since(self, ctx: _Context) -> bool:
        """Whether the disk tier now holds a complete entry for ``ctx.key`` this request may be
        answered from as it is (its variant, and fresh for it)."""
        found = self._get(self.disk, ctx.key)
        if found is None:
            return False
        try:
            stored = found.entry.stored
            if stored.vary_key and not vary_matches(ctx.request, stored):
                return False
            return decide(ctx.request, stored, self.clock.time(), ctx.behaviour).action is Action.FRESH
        finally:
            found.hit.close()

    async def _follow_peer(self, flight: Flight, ctx: _Context) -> bool:
        """Another worker process is fetching the key: share its growing entry. False when it
        gave up (or its response is not being stored): then this worker fetches itself."""
        hit = await self.disk.wait_filling(store_key(ctx.key), timeout=self.node.read_timeout_s)
        if hit is None:
            return False
        entry = decode_entry(hit.info.meta)
        whole = None
        if ctx.slice is not None:
            object_entry = self._get(self.disk, ctx.object_key)
            if object_entry is not None:
                object_entry.hit.close()
                whole = object_entry.entry.stored if object_entry.entry.slice_size else None
        if entry is None or entry.key != ctx.key or (ctx.slice is not None and whole is None):
            hit.close()
            return False
        self.metrics.collapsed.labels(self.node.tier).inc()
        stored = entry.stored
        extra = ("slice", whole, "", ctx.slice * ctx.behaviour.slice_size) if ctx.slice is not None \
            else ("fetched", stored, "", 0)
        flight.publish_head(FlightHead(status=stored.status, headers=stored.headers,
                                       content_length=_declared_length(stored.headers), stored=True,
                                       extra=extra))
        try:
            async for chunk in hit.chunks():
                flight.feed(chunk)
        finally:
            hit.close()
        flight.finish()
        return True

    def _request_headers(self, ctx: _Context) -> list[tuple[str, str]]:
        request = ctx.request
        headers = forwarded_headers(request, ctx.behaviour)
        client = request.client[0] if request.client else None
        if client is not None:
            # Only a POP's client is the viewer; behind it, the chain so far (from our own tiers).
            chain = request.headers.get("x-forwarded-for") if self.node.tier != "pop" else None
            headers.append(("x-forwarded-for", f"{chain}, {client}" if chain else client))
        # A POP's client is outside: its Via is not passed on. Forged ("1.1 shield-1"), it made
        # the upper tier answer 508 to a fetch that every request collapsed onto it shared.
        upstream_via = request.headers.get_all("via") if self.node.tier != "pop" else []
        headers.append(("via", ", ".join(upstream_via + [self.via])))
        if self.purges is not None:
            headers += self.purges.upstream_headers(ctx.dist.name)
        return headers

    def _writers(self, key: bytes, meta: bytes, claim: Any, *, disk_only: bool = False) -> list[Any]:
        writers = []
        for store in self.stores:
            if disk_only and store is not self.disk and self.disk is not None:
                continue
            try:
                writers.append(store.begin(store_key(key), meta, claim=claim if store is self.disk else None))
            except Exception as e:  # a store that declines (too large, busy) is skipped
                log.info("%s: store %s declined %r: %s", self.node.id, type(store).__name__, key, e)
        return writers

    async def _stream(self, flight: Flight, response: UpstreamResponse, writers: list[Any],
                      skip: int = 0, take: int | None = None) -> None:
        """The response body (``take`` bytes from ``skip``; None: to its end) into ``writers`` and
        to the flight's waiters; the writers commit only if all of it arrived."""
        try:
            async for chunk in _window(response.chunks(), skip, take, lambda: None):
                for w in list(writers):
                    try:
                        w.write(chunk)
                    except Exception as e:  # EntryTooLarge: this tier will not keep it
                        log.info("%s: store stopped writing %r: %s", self.node.id, flight.key, e)
                        writers.remove(w)
                flight.feed(chunk)
        except BaseException as e:
            for w in writers:
                w.abort()
            if isinstance(e, UpstreamError):
                self.metrics.not_stored.labels(self.node.tier, "broken_body").inc()
                self.metrics.upstream_errors.labels(self.node.tier, type(e).__name__).inc()
            raise
        for w in writers:
            w.commit()
        flight.finish()

    def _kept(self, response: UpstreamResponse) -> list[tuple[str, str]]:
        kept = [(k, v) for k, v in response.headers if k not in ("x-cache", "server-timing")]
        if self.purges is not None:  # hw-purge-seq: the purges this response is known to reflect
            kept = self.purges.stamp(kept, getattr(response, "origin_seq", None))
        return kept

    async def _fetch_whole(self, flight: Flight, ctx: _Context, claim: Any) -> None:
        request_time = self.clock.time()
        headers = self._request_headers(ctx)
        stale = ctx.stale
        if stale is not None:
            headers += conditional_headers(stale)
        response = await self._send(ctx, "GET", headers)
        if ctx.behaviour.compress:  # an identity body for a key that wants br or gzip
            response = self.compressor.wrap(response, ctx.request.headers)
        try:
            response_time = self.clock.time()
            timing = response.header("server-timing") or ""
            kept = self._kept(response)
            if ctx.behaviour.compress:
                kept = without_vary_on_encoding(kept)
            if response.status == 304 and stale is not None:
                if ctx.behaviour.compress:
                    kept = keep_weak_etag(stale.headers, kept)
                if not validates(stale, kept):
                    # A 304 for another representation: fetch it whole instead.
                    await response.aclose()
                    ctx.stale = None
                    self._remove(ctx.key)
                    await self._fetch_whole(flight, ctx, claim)
                    return
                merged = merge_304(stale, kept, request_time=request_time, response_time=response_time)
                meta = encode_meta(merged, ctx.key)
                for store in self.stores:
                    store.update_meta(store_key(ctx.key), meta)
                flight.publish_head(FlightHead(status=200, headers=merged.headers, content_length=None,
                                               stored=True, extra=("refreshed", merged, timing, 0)))
                flight.finish()
                return
            if response.status >= 500 and stale is not None and stale_if_error_allowed(
                    stale, response_time, ctx.behaviour):
                # An error instead of the revalidation: the waiters serve the stale copy.
                raise UpstreamUnavailable(f"{response.source} answered {response.status}")
            writers = self._publish_and_store(flight, ctx, response, kept, request_time, response_time, timing,
                                              claim)
            await self._stream(flight, response, writers)
        finally:
            await response.aclose()

    def _publish_and_store(self, flight: Flight, ctx: _Context, response: UpstreamResponse,
                           kept: list[tuple[str, str]], request_time: float, response_time: float, timing: str,
                           claim: Any, *, status: int | None = None, key: bytes | None = None,
                           length: int | None = None) -> list[Any]:
        """Decide whether the response is stored (under ``key``, default ``ctx.key``), publish
        the head to the waiters, and return the stores' writers (none: not stored)."""
        status = response.status if status is None else status
        length = response.content_length if length is None else length
        key = ctx.key if key is None else key
        as_get = _as_get(ctx.request)
        stored = stored_response(as_get, status, kept, request_time=request_time, response_time=response_time,
                                 body_size=length or 0)
        writers: list[Any] = []
        if storable(as_get, stored, ctx.behaviour) and (self.purges is None or self.purges.storable_tags(kept)):
            stored = strip_for_storage(stored)
            writers = self._writers(key, encode_meta(stored, key), claim, disk_only=ctx.prefetch)
        else:
            self.metrics.not_stored.labels(self.node.tier, "not_storable").inc()
            if ctx.stale is not None and status < 500:  # the new answer replaces the old one
                self._remove(key)
        flight.publish_head(FlightHead(status=status, headers=stored.headers, content_length=length,
                                       stored=bool(writers), extra=("fetched", stored, timing, 0)))
        return writers

    async def _take_slot(self, pool: SlotPool) -> None:
        """A slot of ``pool`` (:func:`wait_for_slot`), counted; else UpstreamBusy."""
        outcome = await wait_for_slot(pool, self.clock)
        if outcome in ("waited", "timeout"):
            self.metrics.slot_waits.labels(self.node.tier, pool.kind).inc()
        if outcome in _TAKEN:
            return
        self.metrics.slot_refusals.labels(self.node.tier, pool.kind, outcome).inc()
        why = f"{pool.waiting} already waiting" if outcome == "queue_full" else f"none within {pool.wait_s:g} s"
        raise UpstreamBusy(f"all {pool.capacity} {pool.kind} slots upstream in use, {why}", kind=pool.kind,
                           retry_after_s=math.ceil(pool.wait_s))

    async def _send(self, ctx: _Context, method: str, headers: list[tuple[str, str]],
                    content: Any = None, *, rest: bool = False) -> UpstreamResponse:
        """The request to the next tier or the origin (:meth:`_send_now`), once this worker has
        an upstream slot for it (and a ``rest`` slot for a rest fetch); the slots go back when
        the response is closed. UpstreamBusy when there is none within the wait."""
        taken: list[SlotPool] = []

        def release() -> None:
            for pool in taken:
                pool.release()
        try:
            if ctx.prefetch:
                fetch = self.slots["fetch"]
                if not fetch.take_spare():  # (rare: _prefetch_run looked a moment ago)
                    raise UpstreamBusy(f"no spare upstream slot for a prefetch ({fetch.in_use} of "
                                       f"{fetch.capacity} in use, {fetch.waiting} waiting)")
                taken.append(fetch)
            for pool in (() if ctx.prefetch else (self.slots["rest"], self.slots["fetch"]) if rest
                         else (self.slots["fetch"],)):
                await self._take_slot(pool)
                taken.append(pool)
            if rest:
                self.metrics.rest_fetches.labels(self.node.tier).inc()
            response = await self._send_now(ctx, method, headers, content)
        except BaseException:
            release()
            raise
        response.on_close = release
        return response

    async def _send_now(self, ctx: _Context, method: str, headers: list[tuple[str, str]],
                        content: Any = None) -> UpstreamResponse:
        """The request to the next tier (trying the key's next preference when one is down) or,
        at the top, to the distribution's origin group."""
        request = ctx.request
        target = upstream_target(request, ctx.behaviour)
        if self.next_tier is None:
            self.metrics.fetches.labels(self.node.tier, "origin").inc()
            path, _, query = target.partition("?")
            # Taken before the request is sent: the purges its answer is known to reflect.
            origin_seq = self.purges.origin_seq(ctx.dist.name) if self.purges is not None else None
            try:
                response = await self.origins[ctx.dist.name].fetch(method, path, query, headers, content=content)
                response.origin_seq = origin_seq  # read by _kept
                return response
            except UpstreamError as e:
                self.metrics.upstream_errors.labels(self.node.tier, type(e).__name__).inc()
                raise
        host = request.host or request.headers.get("host") or ctx.dist.name
        last: UpstreamError | None = None
        for upstream in self.next_tier.order(ctx.object_key or ctx.key)[:2 if content is None else 1]:
            url = f"http://{upstream.host}:{upstream.port}{target}"
            self.metrics.fetches.labels(self.node.tier, upstream.id).inc()
            try:
                response = await self.upstream.fetch(method, url, [("host", host)] + headers, source=upstream.id,
                                                     content=content)
            except UpstreamError as e:
                self.metrics.upstream_errors.labels(self.node.tier, type(e).__name__).inc()
                if self.next_tier.failed(upstream.id):
                    log.warning("%s: upstream %s marked down: %s", self.node.id, upstream.id, e,
                                extra={"event": "edge.upstream_down", "upstream": upstream.id})
                last = e
                if not isinstance(e, UpstreamUnavailable):
                    break  # a timeout may be load: do not double it on the next one
                continue
            self.next_tier.succeeded(upstream.id)
            return response
        assert last is not None
        raise last

    # --- segment prefetch (.prefetch) ----------------------------------------------------------

    def _prefetch_after(self, request: Request, dist: Distribution, behaviour: Behaviour, key: bytes) -> None:
        """A viewer's GET under a prefetching behaviour: count it if a prefetch fetched it, and
        start a run for the segments after it (if the planner allows one now)."""
        planner = self.prefetch
        if planner.requested(key):
            self.metrics.prefetch.labels(self.node.tier, "used").inc()
        if behaviour.slice_size:
            return  # (sliced objects are large files, not segments)
        paths = planner.namer.following(request.path, behaviour.prefetch)
        if not paths:
            return
        started = planner.start(key, self.clock.monotonic())
        if started == "start":
            self.spawn(self._prefetch_run, request, dist, behaviour, paths)
        elif started == "busy":
            self.metrics.prefetch.labels(self.node.tier, "busy").inc()

    async def _prefetch_run(self, request: Request, dist: Distribution, behaviour: Behaviour,
                            paths: list[str]) -> None:
        """Fetch ``paths`` one after another through the collapsing path, into the disk tier;
        skip what is stored or being fetched; stop at the first error or 404."""
        planner = self.prefetch
        try:
            for path in paths:
                target = path + ("?" + request.query if request.query else "")
                headers = [(k, v) for k, v in request.headers if k not in _PREFETCH_DROPPED]
                ask = dataclasses.replace(request, method="GET", path=path, target=target,
                                          headers=type(request.headers)(headers))
                key = cache_key(ask, behaviour, distribution=dist.name)
                result = "fetched"
                if key in self.collapser.flights:
                    result = "in_flight"
                else:
                    for store in self.stores:
                        found = self._get(store, key)
                        if found is not None:
                            found.hit.close()
                            # A cached 404 ends the run as a fetched one does.
                            result = "cached" if found.entry.stored.status < 400 else "not_found"
                            break
                if result == "not_found":
                    planner.count(result)
                    self.metrics.prefetch.labels(self.node.tier, result).inc()
                    return
                if result != "fetched":
                    planner.count(result)
                    self.metrics.prefetch.labels(self.node.tier, result).inc()
                    continue
                if not self.slots["fetch"].spare:  # viewers need the upstream slots: stop guessing
                    planner.count("no_slot")
                    self.metrics.prefetch.labels(self.node.tier, "no_slot").inc()
                    return
                flight, _ = self._start_flight(_Context(ask, dist, behaviour, key, prefetch=True))
                planner.fetched(key)
                try:
                    head = await flight.wait_head()
                    await flight.wait_done()
                except EdgeError:
                    head = None
                if head is None or flight.error is not None or head.status >= 400:
                    planner.forget(key)
                    result = ("not_found" if head is not None and head.status in (404, 410)
                              else "no_slot" if isinstance(flight.error, UpstreamBusy) else "error")
                    planner.count(result)
                    self.metrics.prefetch.labels(self.node.tier, result).inc()
                    return
                if not head.stored:
                    planner.forget(key)
                    result = "not_stored"
                planner.count(result)
                self.metrics.prefetch.labels(self.node.tier, result).inc()
        finally:
            planner.finish()

    # --- large objects: slices -----------------------------------------------------------------

    def _first_slice(self, request: Request, slice_size: int) -> int:
        """The slice a miss fetches first: the one holding the client's first wanted byte."""
        raw = request.headers.get("range")
        specs = parse_range_header(raw) if raw is not None and request.method == "GET" else None
        if specs:
            starts = [a for a, _ in specs if a is not None]
            if starts and len(starts) == len(specs):  # (a suffix range needs the size first)
                return min(starts) // slice_size
        return 0

    async def _sliced_miss(self, ctx: _Context, now: float) -> tuple[Response, str]:
        """A miss under a slicing behaviour: fetch the first needed slice, which tells the size."""
        started = time.perf_counter()
        index = self._first_slice(ctx.request, ctx.behaviour.slice_size)
        sctx = dataclasses.replace(ctx, key=slice_key(ctx.key, index), slice=index, object_key=ctx.key,
                                   whole=None, validator=None, stale=None)
        flight, _ = self._start_flight(sctx)
        head = await flight.wait_head()
        kind, stored, timing, base = head.extra
        self.counts["misses"] += 1
        if kind == "slice":
            return self._sliced_response(ctx, stored, current_age(stored, self.clock.time()), "Miss", timing,
                                         started), "Miss"
        # The object came whole (it fits in one slice, or the upstream ignored Range).
        headers = self._headers(stored, age=current_age(stored, self.clock.time()), result="Miss",
                                upstream_timing=timing, started=started)
        if head.content_length is not None:
            headers.append(("content-length", str(head.content_length)))
        if ctx.request.method == "HEAD":
            return Response(head.status, headers, b""), "Miss"
        fallback = self._fallback(ctx.key) if head.stored and self.stores else None
        return Response(head.status, headers, _ViewerBody(flight.follow(fallback))), "Miss"

    def _sliced_response(self, ctx: _Context, whole: StoredResponse, age: float, result: str,
                         timing: str = "", started: float | None = None) -> Response:
        headers = self._headers(whole, age=age, result=result, upstream_timing=timing, started=started)
        plan = self._planned(ctx.request, whole, headers)
        if plan is None:
            return self._not_modified(headers)
        if ctx.request.method == "HEAD" or plan.status == 416 or not plan.parts:
            return Response(plan.status, headers, b"")
        # (later slices are fetched as the answer goes out: one refused cuts it short)
        return Response(plan.status, headers, _ViewerBody(self._sliced_body(ctx, whole, plan.parts)))

    async def _sliced_body(self, ctx: _Context, whole: StoredResponse, parts: Sequence[Any]) -> AsyncIterator[bytes]:
        size = ctx.behaviour.slice_size
        for part in parts:
            if isinstance(part, bytes):
                yield part
                continue
            start, length = part
            for piece in pieces(start, start + length - 1, size):
                async for chunk in self._slice_data(ctx, whole, piece.index, piece.offset, piece.length):
                    yield chunk

    async def _slice_data(self, ctx: _Context, whole: StoredResponse, index: int, offset: int,
                          length: int) -> AsyncIterator[bytes]:
        """``length`` bytes from ``offset`` of slice ``index``: from a fetch of it in progress here,
        else from the stores, else fetched (the fetch joins any concurrent one)."""
        key = slice_key(ctx.key, index)
        flight = self.collapser.flights.get(key)
        if flight is None or flight.done:
            for store in self.stores:
                found = self._get(store, key)
                if found is None:
                    continue
                if same_representation(found.entry.stored.headers, whole.headers):
                    async for chunk in self._slice_hit(found, offset, length):
                        yield chunk
                    return
                found.hit.close()
            sctx = dataclasses.replace(ctx, key=key, slice=index, object_key=ctx.key, whole=whole,
                                       validator=_validator(whole), stale=None)
            flight, _ = self._start_flight(sctx)
        head = await flight.wait_head()
        kind, _, _, base = head.extra
        skip = index * ctx.behaviour.slice_size + offset - base
        if head.status not in (200, 206) or skip < 0:
            raise CollapsedFetchFailed(f"slice {index} could not be fetched (status {head.status})")
        fallback = self._fallback(key) if head.stored and kind == "slice" else None
        async for chunk in _window(flight.follow(fallback), skip, length, lambda: None):
            yield chunk

    async def _slice_hit(self, found: _Found, offset: int, length: int) -> AsyncIterator[bytes]:
        hit = found.hit
        if offset + length > found.size:
            hit.close()
            raise CollapsedFetchFailed("a stored slice is shorter than the object's record says")
        if hit.data is not None:
            hit.close()
            yield hit.data[offset:offset + length]
            return
        try:
            async for chunk in hit.chunks(offset, length):
                yield chunk
        finally:
            hit.close()

    async def _fetch_slice(self, flight: Flight, ctx: _Context, claim: Any) -> None:
        """One slice's fetch (``Range`` upstream). The first fetch of an object (``ctx.whole``
        None) finds its size: an object that fits one slice, or that the upstream sends whole,
        is stored whole under the object's key; a larger one gets its record (empty body) under
        the object's key and this slice under the slice's key."""
        assert ctx.slice is not None
        size, index = ctx.behaviour.slice_size, ctx.slice
        request_time = self.clock.time()
        headers = self._request_headers(ctx) + list(slice_request_headers(index, size, validator=ctx.validator))
        response = await self._send(ctx, "GET", headers)
        try:
            response_time = self.clock.time()
            timing = response.header("server-timing") or ""
            kept = self._kept(response)
            if response.status not in (200, 206):
                # Not a slice (416 past the end, 404, 5xx ...): the waiters get it as it is, unstored.
                stored = stored_response(_as_get(ctx.request), response.status, kept, request_time=request_time,
                                         response_time=response_time, body_size=response.content_length or 0)
                flight.publish_head(FlightHead(status=response.status, headers=stored.headers,
                                               content_length=response.content_length, stored=False,
                                               extra=("fetched", stored, timing, 0)))
                await self._stream(flight, response, [])
                return
            try:
                got = read_slice_response(response.status, kept, index, size)
            except SliceError as e:
                raise UpstreamBroken(f"{response.source}: {e}") from None
            first = ctx.whole is None
            if not first and not same_representation(kept, ctx.whole.headers):  # type: ignore[union-attr]
                # The object changed under its slices: drop its record, the next request refetches.
                self._remove(ctx.object_key)
                raise UpstreamBroken(f"{response.source}: the object changed while it was fetched in slices")
            if first and (got.whole or got.total <= size):
                whole_fields = kept if got.whole else list(whole_headers(kept, got.total))
                writers = self._publish_and_store(flight, ctx, response, whole_fields, request_time, response_time,
                                                  timing, None, status=200, key=ctx.object_key, length=got.total)
                await self._stream(flight, response, writers)
                return
            if got.whole:
                # The upstream ignores Range: keep only this slice's bytes of the whole body.
                skip, take = index * size, min(size, got.total - index * size)
                slice_fields = list(whole_headers(kept, got.total))
            else:
                skip, take = 0, got.length
                slice_fields = kept
            whole = ctx.whole
            as_get = _as_get(ctx.request)
            if whole is None:
                whole = stored_response(as_get, 200, whole_headers(kept, got.total), request_time=request_time,
                                        response_time=response_time, body_size=got.total)
                if storable(as_get, whole, ctx.behaviour):
                    whole = strip_for_storage(whole)
                    for w in self._writers(ctx.object_key, encode_meta(whole, ctx.object_key, size), None):
                        w.commit()
            piece = stored_response(as_get, 206, slice_fields, request_time=request_time,
                                    response_time=response_time, body_size=take)
            writers = []
            if storable(as_get, whole, ctx.behaviour):
                writers = self._writers(ctx.key, encode_meta(piece, ctx.key), claim)
            flight.publish_head(FlightHead(status=206, headers=piece.headers, content_length=take,
                                           stored=bool(writers), extra=("slice", whole, timing, index * size)))
            await self._stream(flight, response, writers, skip, take if got.whole else None)
        finally:
            await response.aclose()

    # --- other methods -----------------------------------------------------------------------

    async def _pass(self, request: Request, dist: Distribution, behaviour: Behaviour) -> tuple[Response, str]:
        """An uncached request passed through as it is; a successful unsafe one invalidates the
        URIs it changed in this tier's stores."""
        started = time.perf_counter()
        ctx = _Context(request, dist, behaviour, cache_key(request, behaviour, distribution=dist.name))
        headers = self._request_headers(ctx)
        for name in _PASS_FIELDS:
            headers += [(name, v) for v in request.headers.get_all(name)]
        # (An HTTP/2 body has no declared length: only a declared 0 means there is none.)
        has_body = request.method not in _SAFE and request.body.content_length != 0
        content = _body(request) if has_body else None
        response = await self._send(ctx, request.method, headers, content)
        host = request.host or request.headers.get("host") or ""
        for path in invalidation_paths(request.method, response.status, request.path, response.headers,
                                       scheme=request.scheme, authority=host):
            self._invalidate(key_prefix(dist.name, path))
        timing = response.header("server-timing") or ""
        out = [h for h in self._kept(response) if h[0] not in _OWN_FIELDS]
        if self.purges is not None:
            out = self.purges.outgoing(out, None, None)
        out.append(("via", self.via))
        out.append(("x-cache", f"Miss from {self.node.id}"))
        out.append(("server-timing", f'edge;desc="Pass from {self.node.id}";dur='
                    f'{(time.perf_counter() - started) * 1000:.1f}' + (f", {timing}" if timing else "")))
        if response.content_length is not None:
            out.append(("content-length", str(response.content_length)))
        if request.method == "HEAD":
            await response.aclose()
            return Response(response.status, out, b""), "Pass"
        return Response(response.status, out, _ViewerBody(_closing(response), response.aclose)), "Pass"

    def _invalidate(self, prefix: bytes) -> None:
        for store in self.stores:
            for k in store.keys_matching(lambda k, meta: readable_key(k, meta).startswith(prefix)):
                if store.remove(k):
                    self.metrics.invalidated.labels(self.node.tier).inc()

    # --- what /healthz shows -----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"tier": self.node.tier, **self.counts,
                               "in_flight": len(self.collapser.flights),
                               "load": round(self.active / max(1, self.node.limits.max_connections), 4)}
        if self.next_tier is not None:
            doc["upstreams"] = self.next_tier.state()
        cached = 0
        for store in self.stores:
            try:
                cached += store.stats().bytes
            except Exception:
                pass
        doc["cached_bytes"] = cached
        if self.front_door is not None:
            stats = self.front_door.guard.statistics()
            doc["refused_by_reason"] = dict(stats.rejected)
        if self.purges is not None:
            doc.update(self.purges.health())
        if self.prefetch is not None:
            served = sum(self.counts[k] for k in ("hits", "misses", "refresh_hits", "stale"))
            doc["prefetch"] = self.prefetch.health(served)
        if self.promoter is not None:
            doc["promotions"] = dict(self.promoter.results)
        doc["upstream_slots"] = {kind: dataclasses.asdict(pool.statistics()) for kind, pool in self.slots.items()}
        return doc


_TAKEN = frozenset({"now", "waited"})


async def wait_for_slot(pool: SlotPool, clock: Clock) -> str:
    """Take a slot of ``pool``: at once (``"now"``), or once one is released to this fetch within
    the pool's wait, in order (``"waited"``), timed on ``clock``; else ``"queue_full"`` or
    ``"timeout"``, having taken none. Cancelled while waiting, it takes none either (a slot
    handed over meanwhile goes on to the next waiter)."""
    if pool.take_nowait():
        return "now"
    ticket = pool.enqueue(clock.monotonic())
    if ticket is None:
        return "queue_full"
    granted = anyio.Event()
    ticket.wake = granted.set
    try:
        async with anyio.create_task_group() as tg:
            async def time_out() -> None:
                await clock.sleep(ticket.deadline - clock.monotonic())
                tg.cancel_scope.cancel()
            tg.start_soon(time_out)
            await granted.wait()
            tg.cancel_scope.cancel()
    except BaseException:
        pool.give_up(ticket, timed_out=False)
        raise
    if ticket.granted:
        return "waited"
    pool.give_up(ticket)
    return "timeout"


class _ViewerBody:
    """A streamed answer's body as the HTTP core iterates and closes it, noting why the edge cut
    it short: ``cut_detail``, CloudFront's detailed result type for the access line, when an
    upstream fetch it needed was refused for want of a slot (UpstreamBusy; a rest fetch: the
    viewer read too slowly, SlowReaderOriginError). None: if cut, the viewer left
    (ClientCommError). ``close`` runs when the core lets go of it, even unread (an upstream
    response under it is closed, and its slot released)."""

    __slots__ = ("chunks", "close", "cut_detail")

    def __init__(self, chunks: AsyncIterator[bytes], close: Callable[[], Any] | None = None) -> None:
        self.chunks = chunks
        self.close = close
        self.cut_detail: str | None = None

    def __aiter__(self) -> _ViewerBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.chunks.__anext__()
        except UpstreamBusy as e:
            # A bound of ours, not a crash: the core cuts the answer and logs a line (BodyCut).
            self.cut_detail = e.detail
            raise BodyCut(str(e)) from e

    async def aclose(self) -> None:
        try:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self.close is not None:
                await self.close()


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.body:
        yield chunk


async def _closing(response: UpstreamResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.chunks():
            yield chunk
    finally:
        await response.aclose()


async def _window(chunks: AsyncIterator[bytes], start: int, length: int | None,
                  close: Callable[[], None]) -> AsyncIterator[bytes]:
    """``length`` bytes (None: all) of ``chunks`` from ``start``; ``close`` once done."""
    pos = 0
    end = None if length is None else start + length
    try:
        if end is not None and end <= start:
            return
        async for chunk in chunks:
            lo, hi = pos, pos + len(chunk)
            pos = hi
            if hi <= start:
                continue
            piece = chunk[max(0, start - lo):(len(chunk) if end is None else min(len(chunk), end - lo))]
            if piece:
                yield piece
            if end is not None and pos >= end:
                break
    finally:
        close()
