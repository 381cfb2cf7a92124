"""Licence rate limits (drm/licence/ratelimit.py) and policy (policy.py) on a fake clock."""

from __future__ import annotations

import pytest

from headwater.drm.errors import Forbidden, TooManyRequests
from headwater.drm.licence.policy import Policy, TitlePolicy, licence_end
from headwater.drm.licence.ratelimit import LicenceLimits, LicenceRateLimiter, address_key
from headwater.tokenbucket import RateLimit

T0 = 1000.0


def limiter(**kw) -> LicenceRateLimiter:
    limits = LicenceLimits(per_address=RateLimit(requests_per_s=2.0, burst=4.0),
                           per_user=RateLimit(requests_per_s=1.0, burst=2.0), **kw)
    return LicenceRateLimiter(limits, secret=b"k" * 16)


def test_address_bucket_refills():
    lim = limiter()
    for _ in range(4):
        lim.check_address("10.0.0.1", T0)
    with pytest.raises(TooManyRequests) as e:
        lim.check_address("10.0.0.1", T0)
    assert e.value.retry_after_s == 1
    lim.check_address("10.0.0.2", T0)       # another address has its own bucket
    lim.check_address("10.0.0.1", T0 + 0.5)  # one token back after 0.5 s at 2/s
    with pytest.raises(TooManyRequests):
        lim.check_address("10.0.0.1", T0 + 0.5)


def test_user_bucket_and_ipv6_prefix():
    lim = limiter()
    lim.check_user("alice", T0)
    lim.check_user("alice", T0)
    with pytest.raises(TooManyRequests, match="user"):
        lim.check_user("alice", T0 + 0.1)
    lim.check_user("bob", T0 + 0.1)
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff")
    assert address_key("::ffff:10.0.0.1") == address_key("10.0.0.1")
    assert address_key("junk") == address_key("more junk") == (0, 0)


def test_tables_are_bounded_and_a_spray_frees_no_flooder():
    lim = limiter(max_addresses=64)
    for _ in range(4):
        lim.check_address("10.9.9.9", T0)
    for i in range(10_000):
        lim.check_address(f"10.1.{i // 256}.{i % 256}", T0)
    assert len(lim.addresses) <= 64
    with pytest.raises(TooManyRequests):
        lim.check_address("10.9.9.9", T0)


def test_disabled():
    lim = limiter(enabled=False)
    for _ in range(100):
        lim.check_address("10.0.0.1", T0)
        lim.check_user("alice", T0)


def test_policy():
    p = Policy(default=TitlePolicy(), titles={"2": TitlePolicy(types=frozenset({"temporary", "persistent-license"}),
                                                               licence_duration_s=60, single_use=True,
                                                               require_device=True)})
    p.check({"1"}, "temporary", device=None)
    with pytest.raises(Forbidden, match="persistent"):
        p.check({"1"}, "persistent-license", device="tv")
    with pytest.raises(Forbidden, match="device"):
        p.check({"2"}, "persistent-license", device=None)
    p.check({"2"}, "persistent-license", device="tv")
    assert p.single_use({"1", "2"}) and not p.single_use({"1"})
    assert licence_end(p, {"1", "2"}, iat=T0, exp=T0 + 3600, rental_end=None) == T0 + 60
    assert licence_end(p, {"1"}, iat=T0, exp=T0 + 3600, rental_end=T0 + 100) == T0 + 100
