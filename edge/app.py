"""The edge's request path: one HTTP app per worker, the same for every tier.

For a GET or HEAD: pick the distribution by Host, its cache behaviour by path, the cache key;
look the key up in the RAM tier then the disk tier (:mod:`headwater.edge.store`); decide by the
RFC 9111 rules (:mod:`.rules`, over edge-cache's :mod:`headwater.edge.cache`) whether the stored
response is fresh, must be revalidated, may be served stale while it is refreshed in the
background (``stale-while-revalidate``) or instead of an error (``stale-if-error``).

A miss or a revalidation joins the key's :class:`~.collapse.Flight` (one upstream fetch per key
per worker; across workers the disk store's in-flight claim): the fetch runs in the worker's task
group, writes the body into the stores as it streams it to every waiting request, and commits
only a complete, well-framed body (a truncated or over-long body aborts the entry: nothing
partial is ever served as a hit). Upstream is the next tier (a regional chosen by rendezvous
hashing, or the shield) or, at the shield, the distribution's origin group with failover.

Every response carries ``X-Cache`` (``Hit from pop-1``, ``Miss from pop-1``, ``RefreshHit from
pop-1``, ``StaleHit from pop-1``, ``Error from pop-1``), ``Age``, ``Via`` and ``Server-Timing``
(this tier's entry, then the upstream tiers' on a miss); each request is one structured access
log line with CloudFront's standard fields, and counted in the metrics per tier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

import anyio
import msgpack

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.http import Request, Response, error_response
from headwater.http.types import FileBody
from headwater.metrics import Registry

from . import rules
from .cache.model import StoredResponse
from .collapse import Collapser, Flight, FlightHead
from .config import Distribution, EdgeConfig
from .errors import (CollapsedFetchFailed, EdgeError, LoopDetected, MethodNotAllowed, NoDistribution,
                     UpstreamError, UpstreamUnavailable, status_of)
from .tiers import TierRouter
from .upstream import OriginFetcher, UpstreamClient, UpstreamResponse

__all__ = ["EdgeApp", "EdgeMetrics", "encode_meta", "decode_meta"]

log = logging.getLogger("headwater.edge")

# Set by this tier on each response, never stored (each tier sets its own).
_OWN_FIELDS = frozenset({"x-cache", "server-timing", "age", "content-length", "date"})


def encode_meta(stored: StoredResponse) -> bytes:
    """The store's metadata bytes for ``stored`` (msgpack of its record)."""
    return msgpack.packb(stored.to_record(), use_bin_type=True)


def decode_meta(meta: bytes) -> StoredResponse | None:
    """The StoredResponse in ``meta``, or None when it cannot be read (treated as a miss)."""
    try:
        return StoredResponse.from_record(msgpack.unpackb(meta, raw=False))
    except Exception:
        return None


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

    def answered(self, result: str, nbytes: int) -> None:
        self.requests.labels(self.tier, result).inc()
        if nbytes:
            self.bytes.labels(self.tier, result).inc(nbytes)


@dataclass(slots=True)
class _Context:
    """One cache key's fetch: what the flight needs of the request that started it."""

    request: Request
    dist: Distribution
    behaviour: Any
    key: bytes
    stale: StoredResponse | None  # the stored response being revalidated, if any


def _via_ids(request: Request) -> list[str]:
    ids = []
    for value in request.headers.get_all("via"):
        for part in value.split(","):
            fields = part.split()
            if len(fields) >= 2:
                ids.append(fields[1])
    return ids


class EdgeApp:
    """The request path of one edge worker (any tier)."""

    def __init__(self, *, node: EdgeConfig, distributions: Sequence[Distribution], stores: Sequence[Any],
                 upstream: UpstreamClient, next_tier: TierRouter | None, origins: Mapping[str, OriginFetcher],
                 registry: Registry, spawn: Callable[..., Any], clock: Clock = SYSTEM_CLOCK,
                 access_log: Any = None, purges: Any = None) -> None:
        self.node = node
        self.distributions = tuple(distributions)
        self._by_host = {h: d for d in self.distributions for h in d.hostnames}
        self.stores = tuple(stores)
        # The disk tier (shared by the workers) is the last store; a POP's RAM tier comes first.
        self.disk = self.stores[-1] if self.stores and getattr(self.stores[-1], "shared", True) else None
        self.upstream = upstream
        self.next_tier = next_tier
        self.origins = dict(origins)
        self.collapser = Collapser(node.collapse_window_bytes)
        self.metrics = EdgeMetrics(registry, node.tier)
        self.spawn = spawn
        self.clock = clock
        self.access_log = access_log
        # Invalidation (.invalidation.Invalidation): the catch-up gate, the purged-entry check on
        # hits, the purge fields between tiers. None: no purges (unit tests of the request path).
        self.purges = purges
        self.via = f"1.1 {node.id} (headwater)"
        self.counts = {"hits": 0, "misses": 0, "refresh_hits": 0, "stale": 0, "errors": 0}
        self.active = 0

    # --- entry -------------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
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
        if isinstance(e, UpstreamError):
            log.warning("%s: %s", self.node.id, e, extra={"event": "edge.upstream_failed"})
        r = error_response(status_of(e), str(e) if not isinstance(e, UpstreamError) else "upstream failed")
        r.headers += [("x-cache", f"Error from {self.node.id}"), ("via", self.via)]
        return r

    def _finish(self, request: Request, response: Response, result: str, started: float) -> None:
        taken = time.perf_counter() - started
        size = 0
        for k, v in response.headers:
            if k == "content-length" and v.isdigit():
                size = int(v)
            elif k == "server-timing" and not v.startswith("edge;"):
                pass
        if request.method == "HEAD":
            size = 0
        self.metrics.answered(result, size)
        if self.access_log is not None:
            self.access_log.info(
                "edge.access", **{"x-edge-location": self.node.id, "c-ip": (request.client or ("", 0))[0],
                                  "cs-method": request.method, "cs(Host)": request.host,
                                  "cs-uri-stem": request.path, "cs-uri-query": request.query or "-",
                                  "sc-status": response.status, "sc-bytes": size,
                                  "cs(User-Agent)": request.headers.get("user-agent", "-"),
                                  "x-edge-result-type": result, "time-taken": round(taken, 6),
                                  "cs-protocol-version": f"HTTP/{request.http_version}",
                                  "cs-protocol": request.scheme})

    # --- the request path --------------------------------------------------------------------

    def distribution(self, request: Request) -> Distribution:
        host = (request.host or request.headers.get("host") or "").lower()
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
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method} is not served by the edge (GET and HEAD are)")
        if self.node.id in _via_ids(request):
            raise LoopDetected(f"the request has already passed through {self.node.id}")
        dist = self.distribution(request)
        use_cache = await self.purges.admit(request, dist) if self.purges is not None else True
        behaviour = rules.behaviour_for(dist, request.path)
        key = rules.key_for(dist, request, behaviour)
        now = self.clock.time()
        found = self._lookup(key, request, dist.name) if use_cache else None
        if found is not None:
            hit, stored, size = found
            decision = rules.decide(request, stored, now, behaviour)
            if decision is rules.FRESH:
                self.counts["hits"] += 1
                return self._from_hit(request, hit, stored, size, now, "Hit"), "Hit"
            if decision is rules.STALE_WHILE_REVALIDATE:
                self.counts["stale"] += 1
                self._start_flight(_Context(request, dist, behaviour, key, stored))
                return self._from_hit(request, hit, stored, size, now, "StaleHit"), "StaleHit"
            hit.close()
            return await self._via_flight(_Context(request, dist, behaviour, key, stored), now)
        return await self._via_flight(_Context(request, dist, behaviour, key, None), now)

    def _lookup(self, key: bytes, request: Request, dist: str) -> tuple[Any, StoredResponse, int] | None:
        """The first store's usable hit: readable metadata, a matching Vary key, not purged."""
        for store in self.stores:
            hit = store.get(key)
            if hit is None:
                continue
            stored = decode_meta(hit.info.meta)
            if stored is None or not rules.vary_matches(request, stored):
                hit.close()
                continue
            if self.purges is not None and self.purges.purged(dist, key, stored):
                hit.close()
                self.purges.forget(key)  # from every tier: none of them may serve it
                return None
            return hit, stored, hit.info.size
        return None

    # --- hits --------------------------------------------------------------------------------

    def _headers(self, stored: StoredResponse, *, age: float, result: str, upstream_timing: str = "",
                 started: float | None = None, hit_dist: str | None = None) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in stored.headers if k not in _OWN_FIELDS and k != "via"]
        via = ", ".join(v for k, v in stored.headers if k == "via")
        out.append(("via", f"{via}, {self.via}" if via else self.via))
        out.append(("age", str(int(age))))
        out.append(("x-cache", f"{result} from {self.node.id}"))
        timing = f'edge;desc="{result} from {self.node.id}"'
        if started is not None:
            timing += f";dur={(time.perf_counter() - started) * 1000:.1f}"
        out.append(("server-timing", timing + (f", {upstream_timing}" if upstream_timing else "")))
        if self.purges is not None:
            out = self.purges.outgoing(out, stored, hit_dist)
        return out

    def _from_hit(self, request: Request, hit: Any, stored: StoredResponse, size: int, now: float,
                  result: str) -> Response:
        headers = self._headers(stored, age=rules.current_age(stored, now), result=result,
                                hit_dist=self.distribution(request).name if self.purges is not None else None)
        if rules.not_modified(request, stored):
            hit.close()
            return Response(304, [(k, v) for k, v in headers if k not in ("content-type", "content-encoding")], b"")
        status, start, length = stored.status, 0, size
        if stored.status == 200:
            wanted = rules.range_for(request, stored, size)
            if wanted is rules.UNSATISFIABLE:
                hit.close()
                return Response(416, [("content-range", f"bytes */{size}"), ("content-length", "0"),
                                      ("x-cache", f"{result} from {self.node.id}"), ("via", self.via)], b"")
            if wanted is not None:
                start, end = wanted
                status, length = 206, end - start + 1
                headers.append(("content-range", f"bytes {start}-{end}/{size}"))
        headers.append(("content-length", str(length)))
        if request.method == "HEAD":
            hit.close()
            return Response(status, headers, b"")
        return Response(status, headers, self._hit_body(hit, start, length, size))

    def _hit_body(self, hit: Any, start: int, length: int, size: int) -> Any:
        data = hit.data
        if data is not None:
            return data if (start, length) == (0, size) else data[start:start + length]
        if hit.complete:
            file = hit.file_body()
            if file is not None:
                return FileBody(path=file.path, fd=file.fd, offset=file.offset + start, length=length)
        return _slice(hit.chunks(), start, length, hit.close)

    # --- misses and revalidations ------------------------------------------------------------

    def _start_flight(self, ctx: _Context) -> tuple[Flight, bool]:
        flight, leader = self.collapser.join(ctx.key)
        if leader:
            self.spawn(self._run_flight, flight, ctx)
        else:
            self.metrics.collapsed.labels(self.node.tier).inc()
        return flight, leader

    async def _via_flight(self, ctx: _Context, now: float) -> tuple[Response, str]:
        started = time.perf_counter()
        flight, _ = self._start_flight(ctx)
        try:
            head = await flight.wait_head()
        except UpstreamError:
            if ctx.stale is not None and rules.stale_if_error_ok(ctx.stale, self.clock.time(), ctx.behaviour):
                found = self._lookup(ctx.key, ctx.request, ctx.dist.name)
                if found is not None:
                    self.counts["stale"] += 1
                    hit, stored, size = found
                    return self._from_hit(ctx.request, hit, stored, size, self.clock.time(), "StaleHit"), "StaleHit"
            raise
        kind, stored, timing = head.extra
        if kind == "refreshed":
            found = self._lookup(ctx.key, ctx.request, ctx.dist.name)
            if found is not None:
                self.counts["refresh_hits"] += 1
                hit, stored, size = found
                return self._from_hit(ctx.request, hit, stored, size, self.clock.time(), "RefreshHit"), "RefreshHit"
            raise UpstreamUnavailable("the refreshed entry is gone from the store")
        self.counts["misses"] += 1
        headers = self._headers(stored, age=rules.current_age(stored, self.clock.time()), result="Miss",
                                upstream_timing=timing, started=started)
        if head.content_length is not None:
            headers.append(("content-length", str(head.content_length)))
        if ctx.request.method == "HEAD":
            return Response(head.status, headers, b""), "Miss"
        fallback = self._fallback(ctx.key) if head.stored and self.stores else None
        return Response(head.status, headers, flight.follow(fallback)), "Miss"

    def _fallback(self, key: bytes) -> Callable[[int], AsyncIterator[bytes]]:
        """For a waiter that fell behind its flight's window: the stored entry from ``offset``."""
        store = self.stores[-1]

        async def read_from(offset: int) -> AsyncIterator[bytes]:
            hit = store.get(key)
            if hit is None:
                hit = await store.wait_filling(key, timeout=self.node.read_timeout_s)
            if hit is None:
                raise CollapsedFetchFailed("the shared response left the store before it was read")
            async for chunk in _slice(hit.chunks(), offset, None, hit.close):
                yield chunk
        return read_from

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
            claim = self.disk.claim(ctx.key)
            if claim is None and await self._follow_peer(flight, ctx):
                return
        try:
            await self._fetch_upstream(flight, ctx, claim)
        finally:
            if claim is not None:
                claim.release()

    async def _follow_peer(self, flight: Flight, ctx: _Context) -> bool:
        """Another worker process is fetching the key: share its growing entry. False when it
        gave up (or its response is not being stored): then this worker fetches itself."""
        hit = await self.disk.wait_filling(ctx.key, timeout=self.node.read_timeout_s)
        if hit is None:
            return False
        stored = decode_meta(hit.info.meta)
        if stored is None:
            hit.close()
            return False
        self.metrics.collapsed.labels(self.node.tier).inc()
        flight.publish_head(FlightHead(status=stored.status, headers=stored.headers,
                                       content_length=rules.declared_length(stored), stored=True,
                                       extra=("fetched", stored, "")))
        try:
            async for chunk in hit.chunks():
                flight.feed(chunk)
        finally:
            hit.close()
        flight.finish()
        return True

    async def _fetch_upstream(self, flight: Flight, ctx: _Context, claim: Any) -> None:
        purges = self.purges
        origin_seq = purges.origin_seq(ctx.dist.name) if purges is not None else None  # before the request
        request_time = self.clock.time()
        headers = rules.forward_headers(ctx.request, ctx.behaviour)
        headers.append(("via", ", ".join(ctx.request.headers.get_all("via") + [self.via])))
        if purges is not None:
            headers += purges.upstream_headers(ctx.dist.name)
        if ctx.stale is not None:
            headers += rules.conditional_headers(ctx.stale)
        response = await self._send(ctx, headers)
        try:
            response_time = self.clock.time()
            timing = response.header("server-timing") or ""
            kept = [(k, v) for k, v in response.headers if k not in ("x-cache", "server-timing")]
            if purges is not None:
                kept = purges.stamp(kept, origin_seq)
            if response.status == 304 and ctx.stale is not None:
                merged = rules.merge_304(ctx.stale, kept, request_time, response_time)
                meta = encode_meta(merged)
                for store in self.stores:
                    store.update_meta(ctx.key, meta)
                flight.publish_head(FlightHead(status=200, headers=merged.headers, content_length=None,
                                               stored=True, extra=("refreshed", merged, timing)))
                flight.finish()
                return
            if response.status >= 500 and ctx.stale is not None:
                # An error instead of the revalidation: the waiters may serve the stale copy.
                raise UpstreamUnavailable(f"{response.source} answered {response.status}")
            stored = rules.stored_from(ctx.request, response.status, kept, request_time=request_time,
                                       response_time=response_time, body_size=response.content_length or 0)
            why_not = rules.why_not_storable(ctx.request, stored, ctx.behaviour)
            if why_not is None and purges is not None and not purges.storable_tags(kept):
                why_not = "surrogate_key"
            writers = []
            if why_not is None:
                meta = encode_meta(stored)
                for store in self.stores:
                    try:
                        writers.append(store.begin(ctx.key, meta, claim=claim if store is self.disk else None))
                    except Exception as e:  # a store that declines (too large, busy) is skipped
                        log.info("%s: store %s declined %r: %s", self.node.id, type(store).__name__, ctx.key, e)
            else:
                self.metrics.not_stored.labels(self.node.tier, why_not).inc()
                if ctx.stale is not None:  # the new answer replaces the old one: drop what is stored
                    for store in self.stores:
                        store.remove(ctx.key)
            flight.publish_head(FlightHead(status=response.status, headers=stored.headers,
                                           content_length=response.content_length, stored=bool(writers),
                                           extra=("fetched", stored, timing)))
            try:
                async for chunk in response.chunks():
                    for w in list(writers):
                        try:
                            w.write(chunk)
                        except Exception as e:  # EntryTooLarge: this tier will not keep it
                            log.info("%s: store stopped writing %r: %s", self.node.id, ctx.key, e)
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
        finally:
            await response.aclose()

    async def _send(self, ctx: _Context, headers: list[tuple[str, str]]) -> UpstreamResponse:
        """The request to the next tier (trying the key's next preference when one is down) or,
        at the top, to the distribution's origin group."""
        request = ctx.request
        if self.next_tier is None:
            self.metrics.fetches.labels(self.node.tier, "origin").inc()
            try:
                return await self.origins[ctx.dist.name].fetch("GET", request.path, request.query, headers)
            except UpstreamError as e:
                self.metrics.upstream_errors.labels(self.node.tier, type(e).__name__).inc()
                raise
        host = request.host or request.headers.get("host") or ctx.dist.name
        last: UpstreamError | None = None
        for upstream in self.next_tier.order(ctx.key)[:2]:
            url = f"http://{upstream.host}:{upstream.port}{request.path}" + (f"?{request.query}" if request.query else "")
            self.metrics.fetches.labels(self.node.tier, upstream.id).inc()
            try:
                response = await self.upstream.fetch("GET", url, [("host", host)] + headers, source=upstream.id)
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
        if self.purges is not None:
            doc.update(self.purges.health())
        return doc


async def _slice(chunks: AsyncIterator[bytes], start: int, length: int | None,
                 close: Callable[[], None]) -> AsyncIterator[bytes]:
    """``length`` bytes (None: all) of ``chunks`` from ``start``; ``close`` once done."""
    pos = 0
    end = None if length is None else start + length
    try:
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
