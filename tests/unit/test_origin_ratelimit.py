"""The origin's request-rate limits (``headwater.origin.auth.ratelimit``) on an injected clock,
and ``[origin.rate_limits]`` as cluster.toml gives it."""

from __future__ import annotations

import pytest

from headwater.config import ConfigError, loads
from headwater.origin.auth.ratelimit import RateLimiter, RateLimits, address_key
from headwater.origin.errors import RateLimited, wire_of
from headwater.tokenbucket import RateLimit


def limiter(**kw) -> RateLimiter:
    return RateLimiter(RateLimits(**kw), secret=b"k" * 16)


def test_token_requests_per_address_burst_then_rate():
    lim = limiter(token_requests=RateLimit(requests_per_s=2.0, burst=5.0))
    for _ in range(5):
        lim.check_token_request("192.0.2.1", 100.0)
    with pytest.raises(RateLimited) as e:
        lim.check_token_request("192.0.2.1", 100.0)
    assert wire_of(e.value) == (429, "too_many_requests") and e.value.retry_after_s == 1
    lim.check_token_request("192.0.2.2", 100.0)  # another address has its own budget
    lim.check_token_request("192.0.2.1", 100.5)  # refilled: one more at 2/s
    with pytest.raises(RateLimited):
        lim.check_token_request("192.0.2.1", 100.5)
    assert lim.refused == 2


def test_an_ipv6_host_is_counted_by_its_prefix_and_mapped_ipv4_as_ipv4():
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1")
    assert address_key("2001:db8::1") != address_key("2001:db8:0:1::1")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")
    assert address_key("garbage") == address_key("") == (0, 0)
    lim = limiter(token_requests=RateLimit(requests_per_s=1.0, burst=1.0))
    lim.check_token_request("2001:db8::1", 0.0)
    with pytest.raises(RateLimited):
        lim.check_token_request("2001:db8::2", 0.0)  # the same /64


def test_writes_per_client_and_retry_after():
    lim = limiter(writes_per_client=RateLimit(requests_per_s=0.25, burst=2.0))
    lim.check_write("alice", 0.0)
    lim.check_write("alice", 0.0)
    with pytest.raises(RateLimited) as e:
        lim.check_write("alice", 0.0)
    assert e.value.retry_after_s == 4  # one token at 0.25/s
    lim.check_write("bob", 0.0)
    lim.check_write("alice", 4.0)


def test_disabled_limits_nothing():
    lim = limiter(enabled=False, token_requests=RateLimit(requests_per_s=1.0, burst=1.0))
    for _ in range(10):
        lim.check_token_request("192.0.2.1", 0.0)
        lim.check_write("alice", 0.0)


def test_a_spray_of_addresses_costs_a_bounded_table():
    lim = limiter(max_addresses=64)
    for i in range(5000):
        lim.check_token_request(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(lim.addresses) <= 64


def test_config_defaults_and_errors():
    node = loads("[origin]\ntls = false\n", path="cluster.toml").origin
    assert node.rate_limits == RateLimits()
    node = loads("[origin]\ntls = false\n[origin.rate_limits]\ntoken_burst = 3\nwrites_per_client_per_second = 5\n",
                 path="cluster.toml").origin
    assert node.rate_limits.token_requests == RateLimit(requests_per_s=2.0, burst=3.0)
    assert node.rate_limits.writes_per_client.requests_per_s == 5.0
    for body, key in (("token_burst = 0.5", "token_burst"), ("writes_per_client_per_second = 0", "writes_per_client"),
                      ("max_clients = 0", "max_clients"), ("ipv6_prefix = 129", "ipv6_prefix"), ("tokens = 1", "tokens")):
        with pytest.raises(ConfigError, match=key):
            loads(f"[origin]\ntls = false\n[origin.rate_limits]\n{body}\n", path="cluster.toml")


def test_a_partial_limits_table_keeps_the_origins_defaults():
    """Setting one HTTP limit must not put the others back to the core's looser defaults (the
    shipped cluster.toml sets three: the origin then took 64 KiB headers instead of 32)."""
    from headwater.origin.config import ORIGIN_HTTP_LIMITS

    node = loads("[origin]\ntls = false\n[origin.limits]\nbody_timeout_seconds = 30\n", path="cluster.toml").origin
    assert node.limits.body_timeout_s == 30
    assert node.limits.max_header_bytes == ORIGIN_HTTP_LIMITS.max_header_bytes
    assert node.limits.min_body_rate_bytes_per_s == ORIGIN_HTTP_LIMITS.min_body_rate_bytes_per_s
    assert node.limits.max_body_bytes == node.max_upload_bytes
