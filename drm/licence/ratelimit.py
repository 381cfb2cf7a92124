"""Licence rate limits: a token bucket per client address and one per user. Sans-IO.

The address is checked before anything costs CPU (a flood of forged tokens from one address is
refused before a signature is verified); the user once the token says who it is (a leaked token
shared by a crowd is slowed as one user). Both tables are the kernel's bounded set-associative
:class:`~headwater.tokenbucket.TokenBuckets`, so a spray of addresses or user names costs at most
``max_addresses`` / ``max_users`` buckets. An IPv6 client is counted by its /64 (a host owns
one), an IPv4 client by its address; garbage addresses are one shared client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from headwater.tokenbucket import RateLimit, TokenBuckets, address_key

from ..errors import TooManyRequests

__all__ = ["LicenceLimits", "LicenceRateLimiter", "address_key"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenceLimits:
    """``[licence.rate_limits]``."""

    enabled: bool = True
    per_address: RateLimit = field(default_factory=lambda: RateLimit(requests_per_s=20.0, burst=60.0))
    per_user: RateLimit = field(default_factory=lambda: RateLimit(requests_per_s=5.0, burst=30.0))
    max_addresses: int = 100_000
    max_users: int = 100_000
    ipv6_prefix: int = 64



class LicenceRateLimiter:
    """The two tables of one licence server process."""

    def __init__(self, limits: LicenceLimits, *, secret: bytes | None = None) -> None:
        self.limits = limits
        self.addresses = TokenBuckets(limits.max_addresses, secret=secret)
        self.users = TokenBuckets(limits.max_users, secret=secret)

    def check_address(self, client_ip: str, now: float) -> None:
        """Take a token for ``client_ip``; TooManyRequests (with Retry-After) without one."""
        if not self.limits.enabled:
            return
        wait = self.addresses.take(address_key(client_ip, self.limits.ipv6_prefix), self.limits.per_address, now)
        if wait:
            raise TooManyRequests("too many licence requests from this address",
                                  retry_after_s=max(1, math.ceil(wait)))

    def check_user(self, user: str, now: float) -> None:
        """Take a token for ``user``; TooManyRequests (with Retry-After) without one."""
        if not self.limits.enabled:
            return
        wait = self.users.take(("u", user), self.limits.per_user, now)
        if wait:
            raise TooManyRequests("too many licence requests for this user", retry_after_s=max(1, math.ceil(wait)))
