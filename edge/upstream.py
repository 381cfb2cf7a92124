"""The edge's client side: fetching from the next tier or from a distribution's origin.

One :class:`UpstreamClient` per worker keeps connections alive to every upstream (httpx's pool:
see docs for the measurement that chose it). A fetch returns as soon as the response head is in
(:class:`UpstreamResponse`); its body is streamed with :meth:`UpstreamResponse.chunks`, every
read bounded by the read timeout, and checked against its framing: a body shorter than its
Content-Length, a connection reset mid-body or garbage in the head raise :class:`UpstreamBroken`
(so the caller never stores it), a stalled one :class:`UpstreamTimeout`.

:class:`OriginFetcher` is the shield's way to an origin: the URL of an HTTP(S) origin, or of the
object store's S3 gateway signed with SigV4 (:mod:`.sigv4`), and failover to the secondary
origin on a 5xx, a connection failure or a timeout.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

import httpx

from .config import Distribution, Origin
from .errors import UpstreamBroken, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .sigv4 import canonical_path, canonical_query, sign_request

__all__ = ["UpstreamResponse", "UpstreamClient", "ResolvedOrigin", "resolve_origin", "OriginFetcher",
           "HOP_BY_HOP"]

log = logging.getLogger("headwater.edge")

# Never forwarded in either direction (RFC 9110 7.6.1), plus what the client side sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})

READ_BYTES = 256 * 1024


class UpstreamResponse:
    """An upstream's answer: status and head now, the body streamed by :meth:`chunks`."""

    def __init__(self, response: httpx.Response, source: str) -> None:
        self._response = response
        self.source = source
        self.status = response.status_code
        connection_named = {t.strip().lower() for v in response.headers.get_list("connection") for t in v.split(",")}
        self.headers: list[tuple[str, str]] = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw
            if k.decode("latin-1").lower() not in HOP_BY_HOP and k.decode("latin-1").lower() not in connection_named]
        length = response.headers.get("content-length")
        self.content_length: int | None = None
        if length is not None:
            if not length.isdigit():
                raise UpstreamBroken(f"{source}: Content-Length {length!r} is not a number")
            self.content_length = int(length)
        self.chunked = "chunked" in response.headers.get("transfer-encoding", "").lower()

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamBroken/UpstreamTimeout rather than end short."""
        received = 0
        try:
            async for chunk in self._response.aiter_raw(READ_BYTES):
                received += len(chunk)
                if self.content_length is not None and received > self.content_length:
                    raise UpstreamBroken(f"{self.source}: body longer than its Content-Length")
                yield chunk
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"{self.source}: body stalled ({type(e).__name__})") from None
        except httpx.HTTPError as e:
            raise UpstreamBroken(f"{self.source}: broken body after {received} bytes ({type(e).__name__}: {e})") from None
        if self.content_length is not None and received != self.content_length:
            raise UpstreamBroken(f"{self.source}: body of {received} bytes, Content-Length {self.content_length}")

    async def read(self, limit: int) -> bytes:
        """The whole body (at most ``limit`` bytes, else UpstreamBroken)."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self.chunks():
            total += len(chunk)
            if total > limit:
                raise UpstreamBroken(f"{self.source}: body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        await self._response.aclose()


class UpstreamClient:
    """Keep-alive connections to the upstreams of one worker, with bounded waits."""

    def __init__(self, *, connect_timeout_s: float = 2.0, read_timeout_s: float = 10.0,
                 max_connections: int = 512, verify: Any = True) -> None:
        self.timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s,
                                     pool=connect_timeout_s)
        self._client = httpx.AsyncClient(
            timeout=self.timeout, trust_env=False, follow_redirects=False, verify=verify,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections // 2))

    async def fetch(self, method: str, url: str, headers: Sequence[tuple[str, str]], *, source: str,
                    timeout_s: float | None = None, content: Any = None) -> UpstreamResponse:
        """Send the request (``content``: a passed-through request's body, an async iterator of
        bytes); return once the response head is in. Raises UpstreamError kinds."""
        timeout = self.timeout if timeout_s is None else httpx.Timeout(timeout_s, connect=min(timeout_s, self.timeout.connect or timeout_s))
        request = self._client.build_request(method, url, headers=list(headers), timeout=timeout, content=content)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"{source}: no answer ({type(e).__name__})") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
            if isinstance(e, httpx.RemoteProtocolError) and "Server disconnected" not in str(e):
                raise UpstreamBroken(f"{source}: {e}") from None
            raise UpstreamUnavailable(f"{source}: {type(e).__name__}: {e}") from None
        except httpx.HTTPError as e:
            raise UpstreamBroken(f"{source}: {type(e).__name__}: {e}") from None
        try:
            return UpstreamResponse(response, source)
        except UpstreamError:
            await response.aclose()
            raise

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
        host = httpx.URL(base).netloc.decode()
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
    """The shield's fetches from one distribution's origin group (primary, then secondary)."""

    def __init__(self, cluster: Any, dist: Distribution, client: UpstreamClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.dist = dist
        self.client = client
        self.clock = clock
        self.origins = [resolve_origin(cluster, dist.origin, "origin")]
        if dist.secondary is not None:
            self.origins.append(resolve_origin(cluster, dist.secondary, "secondary origin"))
        self.failovers = 0

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

    async def fetch(self, method: str, path: str, query: str,
                    headers: Sequence[tuple[str, str]], content: Any = None) -> UpstreamResponse:
        """From the primary; from the secondary (when there is one) if the primary answers 5xx,
        cannot be reached or times out. The last failure is raised when both fail. A request
        with a body (``content``, passed through once) is sent to the primary only."""
        failure: UpstreamError | None = None
        bad: UpstreamResponse | None = None  # a 5xx kept in case the secondary fails worse
        origins = self.origins if content is None else self.origins[:1]
        for i, origin in enumerate(origins):
            url, sent = self.request_for(origin, method, path, query, headers)
            try:
                response = await self.client.fetch(method, url, sent, source=f"{self.dist.name} {origin.label}",
                                                   timeout_s=self.dist.origin_timeout_s, content=content)
            except UpstreamError as e:
                failure = e
            else:
                if response.status < 500 or i == len(origins) - 1:
                    if bad is not None:
                        await bad.aclose()
                    return response
                if bad is not None:
                    await bad.aclose()
                bad = response
            if i < len(origins) - 1:
                self.failovers += 1
                log.warning("origin of %s failed (%s): trying the secondary", self.dist.name,
                            failure if bad is None else f"status {bad.status}",
                            extra={"event": "edge.origin_failover", "distribution": self.dist.name})
        if bad is not None:
            return bad
        assert failure is not None
        raise failure
