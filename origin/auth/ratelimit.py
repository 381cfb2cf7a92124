"""Request-rate limits of the origin, sans-IO: ``[origin.rate_limits]``.

Two budgets, each a kernel :class:`~headwater.tokenbucket.TokenBuckets` table (bounded whatever
the number of keys a hostile crowd presents):

- **Token requests per client address** (``POST /oauth/token``), taken before the body is read
  or any secret compared: a guesser gets ``token_burst`` tries and then ``token_requests_per_second``,
  whatever client id it names, and its flood costs no hashing. Keyed by address (an IPv6 client
  by its /``ipv6_prefix``), not by client id: a per-id budget would let anyone lock a real
  client out of its tokens by guessing at its id.
- **Writes per client** (``POST``/``PATCH``/``DELETE`` on ``/uploads`` and on the JSON API,
  ``/api/titles...``), one budget for both, taken once the token says who the client is (its
  ``sub``) and before any byte of the body is read: a tus write costs an fsync of the spool and
  a record write (a PATCH of one byte as much as one of a part), a title write a catalogue
  transaction (and a job or a CDN purge), so a client sending many tiny writes is slowed to
  ``writes_per_client_per_second``.
  With the built-in issuer the ``sub`` is the OAuth2 client, shared by every user of that app,
  as ``max_uploads_per_client`` is.

A refusal is :class:`~headwater.origin.errors.RateLimited` (429, ``too_many_requests``) with
``Retry-After``. Time is the caller's (monotonic seconds, injected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from headwater.config import Reader
from headwater.tokenbucket import RateLimit, TokenBuckets, address_key

from ..errors import RateLimited

__all__ = ["RateLimits", "RateLimiter", "address_key", "read_rate_limits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """``[origin.rate_limits]``."""

    enabled: bool = True
    token_requests: RateLimit = field(default_factory=lambda: RateLimit(requests_per_s=2.0, burst=60.0))
    writes_per_client: RateLimit = field(default_factory=lambda: RateLimit(requests_per_s=50.0, burst=200.0))
    max_addresses: int = 100_000
    max_clients: int = 100_000
    ipv6_prefix: int = 64



class RateLimiter:
    """The budgets of one origin process (see the module docstring)."""

    def __init__(self, limits: RateLimits, *, secret: bytes | None = None) -> None:
        self.limits = limits
        self.addresses = TokenBuckets(limits.max_addresses, secret=secret)
        self.clients = TokenBuckets(limits.max_clients, secret=secret)
        self.refused = 0

    def check_token_request(self, client_ip: str | None, now: float) -> None:
        """Take one token request for ``client_ip``; RateLimited without one."""
        if not self.limits.enabled:
            return
        key = address_key(client_ip or "", self.limits.ipv6_prefix)
        self._take(self.addresses, key, self.limits.token_requests, now, "too many token requests from this address")

    def check_write(self, client: str, now: float) -> None:
        """Take one write (tus or JSON API) for ``client`` (a token's ``sub``); RateLimited
        without one."""
        if not self.limits.enabled:
            return
        self._take(self.clients, ("w", client), self.limits.writes_per_client, now,
                   "too many write requests from this client")

    def _take(self, table: TokenBuckets, key: tuple, limit: RateLimit, now: float, message: str) -> None:
        wait = table.take(key, limit, now)
        if wait:
            self.refused += 1
            raise RateLimited(message, retry_after_s=max(1, math.ceil(wait)))


_KEYS = {"enabled", "token_requests_per_second", "token_burst", "writes_per_client_per_second",
         "writes_per_client_burst", "max_addresses", "max_clients", "ipv6_prefix"}


def read_rate_limits(r: Reader, data: Mapping[str, Any], p: str) -> RateLimits:
    """The ``[origin.rate_limits]`` table (every default is :class:`RateLimits`'s)."""
    r.check_keys(data, p, _KEYS)
    d = RateLimits()
    limits = {}
    for name, default in (("token", d.token_requests), ("writes_per_client", d.writes_per_client)):
        rate_key = "token_requests_per_second" if name == "token" else f"{name}_per_second"
        rate = r.positive(data, rate_key, p, default.requests_per_s)
        burst = r.positive(data, f"{name}_burst", p, default.burst)
        if burst < 1:
            raise r.error(f"{p}.{name}_burst", "must be at least 1")
        limits[name] = RateLimit(requests_per_s=rate, burst=burst)
    sizes = {}
    for name in ("max_addresses", "max_clients"):
        sizes[name] = r.get(data, name, p, int, 100_000)
        if sizes[name] < 1:
            raise r.error(f"{p}.{name}", "must be at least 1")
    prefix = r.get(data, "ipv6_prefix", p, int, 64)
    if not 1 <= prefix <= 128:
        raise r.error(f"{p}.ipv6_prefix", "must be between 1 and 128")
    return RateLimits(enabled=r.get(data, "enabled", p, bool, True), token_requests=limits["token"],
                      writes_per_client=limits["writes_per_client"],
                      ipv6_prefix=prefix, **sizes)
