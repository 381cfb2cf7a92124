"""The origin breaker (sans-IO: Health and OriginFetcher.attempts with an injected clock), and
the timeouts that let the shield fail over before the lower tiers give up (defaults, and configs
refused with the key named)."""

from __future__ import annotations

import pytest

from headwater.config import ConfigError, Reader, load
from headwater.edge.config import (
    FAILOVER_MARGIN_S,
    ORIGIN_TIMEOUT_S,
    ORIGIN_TIMEOUT_WITH_SECONDARY_S,
    Distribution,
    EdgeConfig,
    Origin,
    failover_budget_s,
    read_distributions,
)
from headwater.edge.health import Health
from headwater.edge.upstream import OriginFetcher

PRIMARY = Origin(url="http://127.0.0.1:1", kind="http", host="127.0.0.1", port=1)
SECONDARY = Origin(url="http://127.0.0.1:2", kind="http", host="127.0.0.1", port=2)


def test_health_marks_down_after_fall_failures_and_one_request_decides_after_down_time():
    now = [0.0]
    h = Health(["a", "b"], fall=2, down_s=5.0, clock=lambda: now[0])
    assert h.failed("a") is False and h.is_up("a")
    h.succeeded("a")  # a success in between: the count starts again
    assert h.failed("a") is False
    assert h.failed("a") is True and not h.is_up("a") and h.state() == {"a": "down", "b": "up"}
    now[0] = 4.9
    assert not h.is_up("a")
    now[0] = 5.0
    assert h.is_up("a")  # the probe
    assert h.failed("a") is True and not h.is_up("a")  # failed: down again at once
    now[0] = 10.0
    h.succeeded("a")
    assert h.is_up("a") and h.failed("a") is False  # back, with a fresh count


def test_health_refuses_a_fall_below_one():
    with pytest.raises(ValueError):
        Health(["a"], fall=0)


def fetcher(now: list[float], secondary: bool = True) -> OriginFetcher:
    dist = Distribution(name="video", origin=PRIMARY, secondary=SECONDARY if secondary else None)
    # No client: attempts() is sans-IO (the fetches themselves are the functional tests').
    return OriginFetcher(None, dist, client=None, fall=2, down_s=10.0,  # type: ignore[arg-type]
                         monotonic=lambda: now[0])


def test_the_breaker_skips_a_down_primary_until_its_down_time_is_over():
    now = [100.0]
    f = fetcher(now)
    primary, secondary = f.origins
    assert f.attempts() == [primary, secondary]
    f.health.failed(primary.label)
    assert f.attempts() == [primary, secondary]  # one failure: still first
    f.health.failed(primary.label)
    assert f.attempts() == [secondary]  # down: not waited on
    assert f.attempts(with_body=True) == [primary]  # a body goes once, to the primary
    now[0] += 10.0
    assert f.attempts() == [primary, secondary]  # probed again
    f.health.failed(primary.label)
    assert f.attempts() == [secondary]


def test_one_fetch_probes_a_down_primary_while_the_others_keep_skipping_it():
    now = [0.0]
    f = fetcher(now)
    primary, secondary = f.origins
    f.health.failed(primary.label)
    f.health.failed(primary.label)
    now[0] = 10.0
    assert f.attempts() == [primary, secondary]  # the probe
    assert f.attempts() == [secondary] and f.attempts() == [secondary]  # fetches meanwhile
    f.health.succeeded(primary.label)  # the probe answered
    assert f.attempts() == [primary, secondary]
    f.health.failed(primary.label)
    f.health.failed(primary.label)
    now[0] = 20.0
    assert f.attempts() == [primary, secondary]
    now[0] = 30.0  # the probe never reported (cancelled): another after one more down time
    assert f.attempts() == [primary, secondary]


def test_every_origin_down_still_tries_them_all_in_order():
    now = [0.0]
    f = fetcher(now)
    for o in f.origins:
        f.health.failed(o.label)
        f.health.failed(o.label)
    assert f.attempts() == f.origins
    single = fetcher(now, secondary=False)
    single.health.failed("origin")
    single.health.failed("origin")
    assert single.attempts() == single.origins


def test_the_default_lower_tier_read_timeout_outlasts_the_default_failover():
    """Issue 10: at the defaults a POP and a regional waited 10 s on a shield whose origin timeout
    was 10 s, so a hung primary was a 504 although the secondary was healthy."""
    lower = EdgeConfig(id="pop-1", tier="pop", port=1, admin_port=2)
    shield = EdgeConfig(id="shield-1", tier="shield", port=3, admin_port=4)
    dist = Distribution(name="video", origin=PRIMARY, secondary=SECONDARY,
                        origin_timeout_s=ORIGIN_TIMEOUT_WITH_SECONDARY_S)
    assert failover_budget_s(dist, shield.connect_timeout_s) + FAILOVER_MARGIN_S <= lower.read_timeout_s


def test_the_origin_timeout_defaults_short_only_with_a_secondary():
    r = Reader("cluster.toml", "")
    alone, paired = read_distributions(r, [
        {"name": "alone", "origin": "http://127.0.0.1:1"},
        {"name": "paired", "origin": "http://127.0.0.1:1", "secondary_origin": "http://127.0.0.1:2"}])
    assert alone.origin_timeout_s == ORIGIN_TIMEOUT_S == 10.0
    assert paired.origin_timeout_s == ORIGIN_TIMEOUT_WITH_SECONDARY_S == 4.0


CONFIG = """
[cluster]
name = "t"
data_dir = "var"

[[distributions]]
name = "video"
origin = "http://127.0.0.1:8080"
{secondary}
origin_timeout_seconds = 5

[[edge]]
id = "pop-1"
tier = "pop"
port = 18081
admin_port = 19081
lat = 1.0
lon = 1.0
{pop_read}

[[edge]]
id = "shield-1"
tier = "shield"
port = 18095
admin_port = 19095
"""


def load_config(tmp_path, secondary: bool, pop_read: float | None):
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG.format(secondary='secondary_origin = "http://127.0.0.1:8081"' if secondary else "",
                                  pop_read="" if pop_read is None else f"read_timeout_seconds = {pop_read}"))
    return load(str(path))


def test_a_lower_read_timeout_shorter_than_the_failover_is_refused_with_the_key_named(tmp_path):
    # 2 x (2 s connect + 5 s origin timeout) + 1 s = 15 s: 14 is refused, 15 and the default pass
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, True, 14)
    assert "edge[0].read_timeout_seconds" in str(e.value) and "15 s" in str(e.value)
    assert load_config(tmp_path, True, 15).edge[0].read_timeout_s == 15
    load_config(tmp_path, True, None)
    load_config(tmp_path, False, 3)  # no secondary: nothing to fail over to
