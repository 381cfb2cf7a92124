"""The edge's client side: fetching from the next tier or from a distribution's origin.

One :class:`UpstreamClient` per worker keeps connections alive to every upstream, on the kernel's
thin HTTP/1.1 client (:mod:`headwater.http.client` over the sans-IO
:mod:`headwater.http.client_h1`, llhttp's parser), chosen by measurement
(``python -m headwater.bench upstream_client``, loopback, one server process): 1 KiB fetches
one at a time 1,238/s against httpx's 194/s (147 against 1,842 us of client CPU each), 16 at once
2,069/s against 87/s; 2 MiB fetches 2.9 Gbit/s against 0.67 (a blocking socket with the same
parser and no event loop: 3,049/s and 3.2 Gbit/s). A fetch returns as soon as the response head is in
(:class:`UpstreamResponse`); its body is streamed with :meth:`UpstreamResponse.chunks`, one
socket read per piece (backpressure), every read bounded by the read timeout, and checked
against its framing: a body shorter or longer than its Content-Length or its chunks, a
connection reset mid-body or garbage in the head raise :class:`UpstreamBroken` (so the caller
never stores it), a stalled one :class:`UpstreamTimeout`; no connection at all
:class:`UpstreamUnavailable`.

:class:`OriginFetcher` is the shield's way to an origin: the URL of an HTTP(S) origin, or of the
object store's S3 gateway signed with SigV4 (:mod:`headwater.sigv4`), and failover to the secondary
origin on a 5xx, a connection failure or a timeout, with a circuit breaker that skips a primary
marked down (:mod:`.health`).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

from headwater.http.client import (
    ClientResponse,
    ClientSettings,
    HttpClient,
    client_ssl_context,
)
from headwater.http.errors import ConnectFailed, HttpError, ResponseTimeout

from .config import Distribution, Origin
from .errors import (
    PassBodyTooLarge,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .health import Health
from headwater.sigv4 import canonical_path, canonical_query, sign_request

__all__ = ["UpstreamResponse", "UpstreamClient", "ResolvedOrigin", "resolve_origin", "OriginFetcher",
           "HOP_BY_HOP"]

log = logging.getLogger("headwater.edge")

# Never forwarded in either direction (RFC 9110 7.6.1), plus what the client side sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})


def _upstream_error(source: str, e: HttpError, where: str) -> UpstreamError:
    """The edge's kind of a client failure: the one mapping from the kernel's client errors."""
    if isinstance(e, ResponseTimeout):
        return UpstreamTimeout(f"{source}: {where}: {e}")
    if isinstance(e, ConnectFailed):
        return UpstreamUnavailable(f"{source}: {e}")
    return UpstreamBroken(f"{source}: {where}: {e}")


class UpstreamResponse:
    """An upstream's answer: status and head now, the body streamed by :meth:`chunks`."""

    def __init__(self, response: ClientResponse, source: str) -> None:
        self._response = response
        self.source = source
        self.status = response.status
        connection_named: set[str] = set()
        for k, v in response.headers:
            if k == "connection":
                connection_named.update(t.strip().lower() for t in v.split(","))
        self.headers: list[tuple[str, str]] = [
            (k, v) for k, v in response.headers if k not in HOP_BY_HOP and k not in connection_named]
        self.content_length: int | None = response.content_length
        self.chunked = response.chunked
        # Neither length nor chunks: the body ends when the upstream closes, so a cut-short one
        # cannot be told from a whole one (HTTP/1.0-style origins only; the tiers never do this).
        self.until_close = response.until_close
        # Run once when the response is closed (the app's: the fetch's upstream slot goes back).
        self.on_close: Callable[[], None] | None = None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamBroken/UpstreamTimeout rather than end short."""
        receive = self._response.receive
        try:
            while chunk := await receive():
                yield chunk
        except HttpError as e:
            raise _upstream_error(self.source, e, f"body broken after {self._response.received} bytes") from None

    async def read(self, limit: int) -> bytes:
        """The whole body (at most ``limit`` bytes, else UpstreamBroken)."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self.chunks():
            total += len(chunk)
            if total > limit:
                await self.aclose()
                raise UpstreamBroken(f"{self.source}: body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        callback, self.on_close = self.on_close, None
        try:
            await self._response.aclose()
        finally:
            if callback is not None:
                callback()


# Request bodies the edge passes through (API calls beside the video) are read whole before they
# go upstream: bounded, so a client cannot make a worker hold more.
MAX_PASS_BODY = 8 * 1024 * 1024


async def _read_pass_body(content: AsyncIterator[bytes]) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in content:
        size += len(chunk)
        if size > MAX_PASS_BODY:
            raise PassBodyTooLarge(f"request bodies passed through are at most {MAX_PASS_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _ssl_context(verify: bool | str | os.PathLike[str] | ssl.SSLContext) -> ssl.SSLContext | None:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return None  # the client's own: the system's CAs, built on first https fetch
    if verify is False:
        ctx = client_ssl_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return client_ssl_context(verify)


class UpstreamClient:
    """Keep-alive connections to the upstreams of one worker, with bounded waits.

    ``verify``: True checks https origins against the system's CAs, a path against that CA file
    alone, an ``ssl.SSLContext`` is used as it is, False checks nothing (tests only)."""

    def __init__(self, *, connect_timeout_s: float = 2.0, read_timeout_s: float = 10.0,
                 max_connections: int = 512, max_idle: int = 64, idle_timeout_s: float = 30.0,
                 verify: bool | str | os.PathLike[str] | ssl.SSLContext = True) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._client = HttpClient(
            ClientSettings(connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
                           max_connections_per_origin=max_connections, max_idle_per_origin=max_idle,
                           idle_timeout_s=idle_timeout_s),
            ssl_context=_ssl_context(verify))

    @property
    def http(self) -> HttpClient:
        """The kernel client under it (its ``statistics()``: connects, reuses, retries)."""
        return self._client

    async def fetch(self, method: str, url: str, headers: Sequence[tuple[str, str]], *, source: str,
                    timeout_s: float | None = None, content: AsyncIterator[bytes] | None = None) -> UpstreamResponse:
        """Send the request (``content``: a passed-through request's body, read whole first, at
        most ``MAX_PASS_BODY`` bytes); return once the response head is in. Raises UpstreamError
        kinds, or PassBodyTooLarge."""
        body = b"" if content is None else await _read_pass_body(content)
        try:
            response = await self._client.request(method, url, headers, body=body, timeout_s=timeout_s)
        except HttpError as e:
            raise _upstream_error(source, e, "no answer") from None
        return UpstreamResponse(response, source)

    async def run(self) -> None:
        """The read-timeout watchdog of the client's connections: run it in the worker's task
        group (without it every read pays for a cancel scope of its own)."""
        await self._client.run()

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedOrigin:
    """An origin made concrete: the base URL, the Host to send, and credentials for SigV4."""

    label: str
    base_url: str
    host_header: str
    path_prefix: str
    access_key: str = ""
    secret_key: str = ""
    region: str = ""

    @property
    def signed(self) -> bool:
        return bool(self.access_key)


def resolve_origin(cluster: Any, origin: Origin, label: str) -> ResolvedOrigin:
    """``origin`` against this cluster: an s3:// origin's gateway address and keys."""
    if origin.kind == "http":
        default = 443 if origin.scheme == "https" else 80
        host = origin.host if origin.port == default else f"{origin.host}:{origin.port}"
        if ":" in origin.host:  # an IPv6 literal
            host = f"[{origin.host}]" + ("" if origin.port == default else f":{origin.port}")
        return ResolvedOrigin(label=label, base_url=f"{origin.scheme}://{host}", host_header=host,
                              path_prefix=origin.path_prefix)
    if origin.endpoint:
        base = origin.endpoint.rstrip("/")
        host = urlsplit(base).netloc
    else:
        gateway = cluster.gateway
        host = f"{gateway.host}:{gateway.port}"
        scheme = "https" if getattr(gateway, "tls_cert", None) else "http"
        base = f"{scheme}://{host}"
    access, secret = origin.access_key, origin.secret_key
    if not access:
        users = tuple(getattr(cluster, "users", ()) or ())
        if users:
            access, secret = users[0].access_key, users[0].secret_key
    region = origin.region
    if not region:
        objstore = getattr(cluster, "objstore", None)
        region = getattr(objstore, "region", "") or "us-east-1"
    return ResolvedOrigin(label=label, base_url=base, host_header=host,
                          path_prefix=f"/{origin.bucket}{origin.path_prefix}",
                          access_key=access, secret_key=secret, region=region)


class OriginFetcher:
    """The shield's fetches from one distribution's origin group (primary, then secondary).

    A circuit breaker (:class:`~.health.Health`, the rule the tiers use): ``fall`` failures in a
    row (no answer, or a 5xx) mark an origin down for ``down_s`` seconds, during which fetches
    skip it and go to the other one at once, rather than every miss waiting on a dead primary
    first; after that the next fetch tries it again (a success brings it back, a failure restarts
    the wait; the fetches meanwhile keep skipping it: one probe at a time). When every origin is
    down they are all tried, in order: a request is never refused only because of old failures.
    """

    def __init__(self, cluster: Any, dist: Distribution, client: UpstreamClient,
                 clock: Callable[[], float] = time.time, *, fall: int = 3, down_s: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.dist = dist
        self.client = client
        self.clock = clock
        self.origins = [resolve_origin(cluster, dist.origin, "origin")]
        if dist.secondary is not None:
            self.origins.append(resolve_origin(cluster, dist.secondary, "secondary origin"))
        self.health = Health((o.label for o in self.origins), fall=fall, down_s=down_s, clock=monotonic)
        # Fetches sent to the secondary because the primary failed or was down.
        self.failovers = 0

    def attempts(self, with_body: bool = False) -> list[ResolvedOrigin]:
        """The origins one fetch tries, in order: the live ones (primary first; a down one whose
        time is over is this fetch's probe), or every one when none is live. A request with a
        body is sent once, to the primary."""
        if with_body:
            return self.origins[:1]
        live = [o for o in self.origins if self.health.take(o.label)]
        return live or list(self.origins)

    def request_for(self, origin: ResolvedOrigin, method: str, path: str, query: str,
                    headers: Sequence[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
        """The URL and headers of one origin request (signed for an S3 origin)."""
        full_path = origin.path_prefix + path
        if origin.signed:
            # Sent exactly as signed: S3 verifies the path as it arrives, encoded once.
            full_path, query = canonical_path(full_path), canonical_query(query)
        url = origin.base_url + full_path + (f"?{query}" if query else "")
        out = [("host", origin.host_header)] + [(k, v) for k, v in headers if k != "host"]
        if origin.signed:
            # Sign every header we send but the ones proxies are known to rewrite.
            extra = tuple((k, v) for k, v in out if k in ("range", "if-none-match", "if-modified-since",
                                                           "if-match", "if-unmodified-since"))
            out += sign_request(method, origin.host_header, full_path, query, access_key=origin.access_key,
                                secret_key=origin.secret_key, region=origin.region, now=self.clock(),
                                extra_headers=extra)
        return url, out

    def _failed(self, origin: ResolvedOrigin, why: object) -> None:
        if self.health.failed(origin.label):
            log.warning("%s of %s marked down for %.1f s: %s", origin.label, self.dist.name, self.health.down_s,
                        why, extra={"event": "edge.origin_down", "distribution": self.dist.name,
                                    "origin": origin.label})

    async def fetch(self, method: str, path: str, query: str,
                    headers: Sequence[tuple[str, str]], content: Any = None) -> UpstreamResponse:
        """From the primary; from the secondary (when there is one) if the primary answers 5xx,
        cannot be reached, times out or is marked down. The last failure is raised when both
        fail. A request with a body (``content``, passed through once) is sent to the primary
        only."""
        failure: UpstreamError | None = None
        bad: UpstreamResponse | None = None  # a 5xx kept in case the secondary fails worse
        origins = self.attempts(with_body=content is not None)
        if origins[0] is not self.origins[0]:
            self.failovers += 1  # the primary is down: straight to the secondary
        for i, origin in enumerate(origins):
            url, sent = self.request_for(origin, method, path, query, headers)
            try:
                response = await self.client.fetch(method, url, sent, source=f"{self.dist.name} {origin.label}",
                                                   timeout_s=self.dist.origin_timeout_s, content=content)
            except UpstreamError as e:
                failure = e
                self._failed(origin, e)
            else:
                if response.status < 500:
                    self.health.succeeded(origin.label)
                else:
                    self._failed(origin, f"status {response.status}")
                if response.status < 500 or i == len(origins) - 1:
                    if bad is not None:
                        await bad.aclose()
                    return response
                if bad is not None:
                    await bad.aclose()
                bad = response
            if i < len(origins) - 1:
                if origin is self.origins[0]:
                    self.failovers += 1
                log.warning("%s of %s failed (%s): trying the %s", origin.label, self.dist.name,
                            failure if bad is None else f"status {bad.status}", origins[i + 1].label,
                            extra={"event": "edge.origin_failover", "distribution": self.dist.name})
        if bad is not None:
            return bad
        assert failure is not None
        raise failure
