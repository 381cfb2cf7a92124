"""A POP's front door: what is checked before a request costs anything (no cache lookup, no
upstream): the client limits and rules (:mod:`.limits`), then signed URLs and cookies
(:mod:`.signedurl`).

The client is the socket's peer address (``Request.client``, set by the HTTP core), never a
header: ``X-Forwarded-For`` and the like are the client's to forge. Only POPs have a front door:
regional caches and shields see POPs as their clients.

* Connections: :meth:`FrontDoor.on_connection` / :meth:`FrontDoor.on_disconnect` are the HTTP
  core's hooks (``serve(on_connection=...)``): the per-client connection cap and address-only
  block rules refuse a connection before a byte of it is read; :meth:`FrontDoor.on_flood`
  counts an HTTP/2 connection ended for flooding (``serve(on_flood=...)``), by the kind of
  frame that spent its budget.
* Countries: with a rule that names ``countries``, the client's country is looked up in
  ``[cdn.geo]`` (its CIDR rules, then the MaxMind database; memoised per address by
  :class:`~headwater.geo.locate.Locator`); an address the data cannot place has no country, and
  a rule with countries never matches it.
* Requests: :meth:`FrontDoor.admit` answers 403 (a block rule) or 429 with ``Retry-After`` (the
  client's token bucket, or a ``limit`` rule's); every refusal is counted in
  ``hw_edge_rejected_total{tier, reason}``.
* Signatures: :meth:`FrontDoor.verify` checks a distribution's or behaviour's ``trusted_keys``:
  a request without a valid signed URL or signed cookies is answered 403 with the reason in its
  body. Whatever the verdict, the request goes on without the signing query parameters and
  cookies, so they enter neither the cache key nor any request upstream (one cached object serves
  every signed URL for it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Callable, Sequence

from headwater.geo.locate import Locator

from headwater.http import Request, Response
from headwater.http.types import Headers
from headwater.metrics import Registry

from .config import CdnConfig, Distribution, Route
from .limits import Guard
from .signedurl import SIGNING_COOKIES, SigningKeys, Verifier, strip_signing_cookies

__all__ = ["FrontDoor"]

_COOKIE_PREFIXES = tuple(f"{c}=" for c in SIGNING_COOKIES)


class FrontDoor:
    """The limits and signature checks of one POP worker."""

    def __init__(self, cdn: CdnConfig, distributions: Sequence[Distribution], *, registry: Registry,
                 tier: str, monotonic: Callable[[], float], wall: Callable[[], float],
                 secret: bytes | None = None) -> None:
        self.guard = Guard(cdn.client_limits, cdn.rules, secret=secret)
        self._locator = Locator(cdn.geo) if cdn.geo is not None and any(r.countries for r in cdn.rules) else None
        self.monotonic = monotonic
        self.wall = wall
        self.tier = tier
        self.rejected = registry.counter("hw_edge_rejected_total",
                                         "Requests and connections refused at the POP, by reason.",
                                         labels=["tier", "reason"])
        # One verifier per distinct set of trusted key ids.
        self._verifiers: dict[tuple[str, ...], Verifier] = {}
        for d in distributions:
            for route in d.behaviours + (d.default_route,):
                ids = d.keys_for(route)
                if ids and ids not in self._verifiers:
                    self._verifiers[ids] = Verifier(SigningKeys(keys=tuple(
                        k for k in cdn.keys.keys if k.id in ids)))

    # --- connections (the HTTP core's hooks) ----------------------------------------------

    def country(self, client_ip: str) -> str | None:
        """The client's ISO country code, or None (no rule asks, or the geo data cannot place it)."""
        if self._locator is None or not client_ip:
            return None
        try:
            network = ipaddress.ip_network(client_ip)
        except ValueError:
            return None
        return self._locator.locate(network).country or None

    def on_connection(self, peer: tuple[str, int] | None) -> bool:
        client = peer[0] if peer else ""
        decision = self.guard.connection_opened(client, country=self.country(client))
        if decision.allowed:
            return True
        self.rejected.labels(self.tier, decision.reason).inc()
        return False

    def on_disconnect(self, peer: tuple[str, int] | None) -> None:
        self.guard.connection_closed(peer[0] if peer else "")

    def on_flood(self, peer: tuple[str, int] | None, kind: str) -> None:
        """An HTTP/2 connection ended for flooding (GOAWAY ENHANCE_YOUR_CALM): counted by the
        kind of frame that spent its budget, as ``h2_flood:<kind>``."""
        self.rejected.labels(self.tier, f"h2_flood:{kind}").inc()

    # --- requests ---------------------------------------------------------------------------

    def admit(self, request: Request, path: str | None = None) -> Response | None:
        """None to go on, else the 403/429 to answer. ``path``: what path rules are matched
        against (the app's canonical form of the request's path; default the raw path)."""
        limits = self.guard.limits
        if len(request.path) + len(request.query) > limits.max_url_bytes:
            self.rejected.labels(self.tier, "url_too_long").inc()
            return Response(414, [("content-type", "text/plain; charset=utf-8")],
                            f"the URL is longer than {limits.max_url_bytes} bytes\n".encode())
        if not limits.enabled:
            return None  # (what check_request answers then, without reading the request for it)
        client = request.client[0] if request.client else ""
        decision = self.guard.check_request(client_ip=client, method=request.method,
                                            path=request.path if path is None else path,
                                            now=self.monotonic(),
                                            user_agent=request.headers.get("user-agent") or "",
                                            country=self.country(client))
        if decision.allowed:
            return None
        self.rejected.labels(self.tier, decision.reason).inc()
        return Response(decision.status, [("content-type", "text/plain; charset=utf-8"), *decision.headers()],
                        decision.body())

    def verify(self, request: Request, dist: Distribution, route: Route) -> tuple[Request, Response | None]:
        """The request without its signing parameters and cookies, and the 403 to answer if the
        route needs a signature and the request has no valid one."""
        ids = dist.keys_for(route)
        if not ids:
            return request, None
        verifier = self._verifiers[ids]
        target = request.path + (f"?{request.query}" if request.query else "")
        cookie = ", ".join(request.headers.get_all("cookie")) or None
        access = verifier.verify(scheme=request.scheme, host=request.host or request.headers.get("host") or "",
                                 target=target, client_ip=request.client[0] if request.client else "",
                                 now=self.wall(), cookie_header=cookie)
        stripped = _without_signing(request, access.target)
        if access.allowed:
            return stripped, None
        assert access.denial is not None
        self.rejected.labels(self.tier, f"signature:{access.denial.value}").inc()
        return stripped, Response(403, [("content-type", "text/plain; charset=utf-8")], access.denial.body())


def _without_signing(request: Request, target: str) -> Request:
    path, _, query = target.partition("?")
    headers: Any = request.headers
    if any(v.lstrip().startswith(_COOKIE_PREFIXES) or "CloudFront-" in v for v in headers.get_all("cookie")):
        items = []
        for k, v in headers:
            if k == "cookie":
                kept = strip_signing_cookies(v)
                if kept is None:
                    continue
                v = kept
            items.append((k, v))
        headers = Headers.from_lower(items)
    if query == request.query and headers is request.headers:
        return request
    return dataclasses.replace(request, target=target, query=query, path=path, headers=headers)
