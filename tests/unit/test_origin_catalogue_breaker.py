"""The circuit breaker in front of the catalogue's database (origin/catalogue/breaker.py), on a
fake clock; the config keys of a search while the database is away; the feed's pruning bound."""

from __future__ import annotations

import threading

import pytest

from headwater.clock import FakeClock
from headwater.config import ConfigError, Reader
from headwater.origin.catalogue.breaker import Breaker, BreakerState
from headwater.origin.catalogue.config import read_catalogue


def test_closed_lets_every_caller_through():
    b = Breaker(5.0, clock=FakeClock())
    assert all(b.allow() for _ in range(10))
    assert not b.succeeded()  # nothing to close
    assert b.statistics().opened == 0 and b.statistics().skipped == 0


def test_a_failure_skips_the_database_for_the_interval_then_one_caller_probes():
    clock = FakeClock()
    b = Breaker(5.0, clock=clock)
    assert b.allow()
    assert b.failed()  # the outage begins (log it once)
    assert b.state is BreakerState.OPEN
    for _ in range(100):  # every search within the interval: no wait on the database
        assert not b.allow()
    clock.advance(4.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow()  # one probe
    assert b.state is BreakerState.PROBING
    assert not b.allow() and not b.allow()  # the others do not wait behind it
    assert not b.failed()  # still the same outage
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.advance(5.0)
    assert b.allow()
    assert b.succeeded()  # the outage ends
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()
    st = b.statistics()
    assert st.opened == 1 and st.skipped == 100 + 1 + 2 + 1


def test_a_probe_that_never_reports_lets_another_caller_probe_after_the_interval():
    clock = FakeClock()
    b = Breaker(2.0, clock=clock)
    b.failed()
    clock.advance(2.0)
    assert b.allow()  # this caller's thread dies without reporting
    clock.advance(1.0)
    assert not b.allow()
    clock.advance(1.0)
    assert b.allow()


def test_a_success_reported_unasked_closes_it_at_once():
    """The background worker reaches the database between searches: the next search is fresh."""
    clock = FakeClock()
    b = Breaker(60.0, clock=clock)
    b.failed()
    assert not b.allow()
    assert b.succeeded()
    assert b.allow()


def test_at_most_one_caller_per_interval_across_threads():
    clock = FakeClock()
    b = Breaker(1.0, clock=clock)
    b.failed()
    clock.advance(1.0)
    allowed = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        allowed.extend(ok for _ in range(200) if (ok := b.allow()))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed == [True]


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        Breaker(0.0)


def test_config_of_a_search_while_the_database_is_away(tmp_path):
    r = Reader("cluster.toml", "", root=tmp_path)
    base = {"backend": "postgresql", "dsn": "host=x"}
    cfg = read_catalogue(r, base, "origin.catalogue", tmp_path)
    assert (cfg.search_wait_s, cfg.search_retry_s, cfg.search_stale_max_s) == (1.0, 5.0, 3600.0)
    cfg = read_catalogue(r, {**base, "search_wait_seconds": 0.5, "search_retry_seconds": 10,
                             "search_stale_max_seconds": 0}, "origin.catalogue", tmp_path)
    assert (cfg.search_wait_s, cfg.search_retry_s, cfg.search_stale_max_s) == (0.5, 10.0, 0.0)
    for key, value in (("search_wait_seconds", 0), ("search_wait_seconds", 61), ("search_retry_seconds", -1),
                       ("search_stale_max_seconds", -1), ("search_stale_max_seconds", float("nan")),
                       ("search_stale_max_seconds", 40 * 86400), ("search_retry_seconds", "5"),
                       ("search_wait_seconds", True)):
        with pytest.raises(ConfigError, match=f"origin.catalogue.{key}"):
            read_catalogue(r, {**base, key: value}, "origin.catalogue", tmp_path)


def test_the_feed_keeps_every_row_a_catching_up_index_reads():
    from headwater.origin.catalogue import localsearch, postgres
    assert postgres.FEED_KEEP_ROWS >= localsearch.REBUILD_BEHIND + localsearch.CATCH_UP_IN_SEARCH_MAX
