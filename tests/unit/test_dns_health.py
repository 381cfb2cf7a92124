"""POP health, sans-IO: rise/fall hysteresis, load and fullness, generations, timestamps on a
fake clock (no sleeps), the snapshot's JSON round trip and the ``[dns.health]`` reader."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import pytest

from headwater.clock import FakeClock
from headwater.config import ConfigError, Reader
from headwater.dns.health.config import HealthConfig, read_health
from headwater.dns.health.tracker import HealthTracker, StaticHealthView, parse_load


@dataclass(frozen=True)
class P:
    name: str
    healthz: str = "http://127.0.0.1:1/healthz"
    max_load: float | None = None


POPS = (P("a", max_load=0.8), P("b"), P("c"))


def make(rise: int = 2, fall: int = 3) -> tuple[HealthTracker, FakeClock]:
    clock = FakeClock(start=1_000_000.0)
    return HealthTracker(POPS, rise, fall, clock), clock


def test_a_pop_starts_unknown_and_counts_as_up() -> None:
    t, _ = make()
    assert all(t.is_up(p.name) for p in POPS)
    assert t.state("a") == "unknown" and t.health("a").last_change is None
    g = t.generation
    assert t.record("a", True) is False       # confirmed up: the view did not change
    assert t.state("a") == "up" and t.generation == g
    assert t.is_up("not-configured")          # a name the tracker does not know is not down


def test_fall_failures_in_a_row_take_a_pop_down() -> None:
    t, clock = make(fall=3)
    g = t.generation
    clock.advance(5)
    assert t.record("b", False, error="HTTP 503") is False
    assert t.record("b", False) is False
    assert t.is_up("b") and t.generation == g
    clock.advance(5)
    assert t.record("b", False, error="timed out") is True
    assert not t.is_up("b") and t.state("b") == "down"
    assert t.generation == g + 1
    h = t.health("b")
    assert h.failures == 3 and h.successes == 0 and h.probes == 3
    assert h.last_change == 1_000_010.0 and h.last_probe == 1_000_010.0 and h.last_error == "timed out"
    # more failures change nothing more
    assert t.record("b", False) is False and t.generation == g + 1


def test_a_good_probe_resets_the_failure_count() -> None:
    t, _ = make(fall=2)
    for _ in range(5):
        t.record("c", False)
        t.record("c", True)
    assert t.is_up("c") and t.health("c").failures == 0


def test_rise_good_probes_in_a_row_bring_a_pop_back() -> None:
    t, clock = make(rise=2, fall=1)
    t.record("a", False)
    assert not t.is_up("a")
    went_down = t.health("a").last_change
    g = t.generation
    clock.advance(2)
    assert t.record("a", True) is False and not t.is_up("a")   # one of two
    t.record("a", False)                                        # a flap resets the count
    assert t.record("a", True) is False and not t.is_up("a")
    clock.advance(2)
    assert t.record("a", True) is True and t.is_up("a")
    assert t.generation == g + 1
    assert t.health("a").last_change == 1_000_004.0 != went_down


def test_load_is_recorded_and_a_full_pop_changes_the_view() -> None:
    t, _ = make()
    g = t.generation
    t.record("a", True, 0.5)
    assert t.load("a") == 0.5 and not t.is_full("a") and t.generation == g
    assert t.record("a", True, 0.8) is True                     # at max_load 0.8: full
    assert t.is_full("a") and t.generation == g + 1
    assert t.record("a", True, 0.9) is False                    # still full
    t.record("a", False)                                        # a failed probe keeps the last load
    assert t.load("a") == 0.9 and t.is_full("a")
    assert t.record("a", True, None) is True                    # no load reported: not full
    assert t.load("a") is None and not t.is_full("a")
    t.record("b", True, 7.0)                                    # no max_load: never full
    assert not t.is_full("b")


def test_parse_load_accepts_only_finite_non_negative_numbers() -> None:
    assert parse_load(0.25) == 0.25 and parse_load(1) == 1.0
    for bad in (None, True, "0.5", -0.1, float("nan"), float("inf"), [0.5]):
        assert parse_load(bad) is None


def test_set_pops_keeps_the_state_of_pops_kept_by_name() -> None:
    t, _ = make(fall=1)
    t.record("a", False)
    g = t.generation
    t.set_pops([P("a", max_load=0.8), P("d")])
    assert [p.name for p in t.pops] == ["a", "d"]
    assert not t.is_up("a") and t.state("d") == "unknown" and t.generation > g
    with pytest.raises(KeyError):
        t.record("b", True)
    with pytest.raises(ValueError):
        t.set_pops([P("x"), P("x")])


def test_the_snapshot_round_trips_through_json() -> None:
    t, _ = make(fall=1)
    t.record("a", True, 0.85)
    t.record("b", False, error="HTTP 500")
    data = t.to_json()
    view = StaticHealthView.from_json(data)
    assert view.generation == t.generation
    assert view.is_full("a") and view.load("a") == 0.85 and view.state("a") == "up"
    assert not view.is_up("b") and view.health("b").last_error == "HTTP 500"
    assert view.is_up("c") and view.state("c") == "unknown"
    # hostile or broken input is dropped, never trusted
    junk = StaticHealthView.from_json({"pops": {"a": {"state": "exploded", "load": "lots"}, "b": 3}})
    assert junk.state("a") == "unknown" and junk.load("a") is None and junk.is_up("b")


def test_rise_and_fall_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HealthTracker(POPS, 0, 1, FakeClock())


CONFIG = """\
[dns.health]
interval_seconds = 2
timeout_seconds = 1
rise = 2
fall = 3
"""


def read(text: str) -> HealthConfig:
    return read_health(Reader("cluster.toml", text), tomllib.loads(text)["dns"]["health"])


def test_health_config() -> None:
    assert read(CONFIG) == HealthConfig(interval_s=2.0, timeout_s=1.0, rise=2, fall=3)
    assert read("[dns.health]\n") == HealthConfig()


@pytest.mark.parametrize("old, new, key", [
    ("timeout_seconds = 1", "timeout_seconds = 3", "dns.health.timeout_seconds"),
    ("interval_seconds = 2", "interval_seconds = 0", "dns.health.interval_seconds"),
    ("rise = 2", "rise = 0", "dns.health.rise"),
    ("fall = 3", "fall = 1.5", "dns.health.fall"),
    ("fall = 3", "fail = 3", "dns.health.fail"),
])
def test_health_config_errors_name_the_key_and_line(old: str, new: str, key: str) -> None:
    text = CONFIG.replace(old, new)
    with pytest.raises(ConfigError) as info:
        read(text)
    line = next(n for n, raw in enumerate(text.splitlines(), 1) if raw == new)
    assert info.value.key == key and info.value.line == line, str(info.value)
