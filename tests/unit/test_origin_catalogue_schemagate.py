"""The PostgreSQL catalogue's schema gate (origin/catalogue/schemagate.py), on a fake clock: the
migration runs exactly once, at the first call the database answers; until then calls answer
"unavailable" at once (one try per retry interval); a caller never runs while another
migrates, and never queues behind it for longer than the bounded wait."""

from __future__ import annotations

import threading
import time

import pytest

from headwater.clock import FakeClock
from headwater.origin.catalogue.errors import BackendUnavailable
from headwater.origin.catalogue.schemagate import SchemaGate


class _Database:
    """An opener whose database is down until ``up`` is set; counts the migrations it ran."""

    def __init__(self) -> None:
        self.up = False
        self.tries = 0
        self.migrations = 0
        self.hold: threading.Event | None = None  # set: the migration waits for it
        self.migrating = threading.Event()

    def open_once(self) -> None:
        self.tries += 1
        if not self.up:
            raise BackendUnavailable("connection refused")
        self.migrating.set()
        if self.hold is not None:
            self.hold.wait(10)
        self.migrations += 1


def test_unavailable_at_once_until_the_database_answers_then_migrated_exactly_once():
    clock = FakeClock()
    db = _Database()
    gate = SchemaGate(db.open_once, retry_s=1.0, wait_s=0.2, clock=clock)
    with pytest.raises(BackendUnavailable):
        gate.check()
    assert db.tries == 1 and not gate.is_open
    # Within the retry interval: no caller tries the database (no wait on it).
    for _ in range(50):
        with pytest.raises(BackendUnavailable, match="not answered since"):
            gate.check()
    assert db.tries == 1
    clock.advance(1.0)
    with pytest.raises(BackendUnavailable):
        gate.check()  # one probe per interval
    assert db.tries == 2 and gate.failures == 2
    db.up = True
    with pytest.raises(BackendUnavailable):
        gate.check()  # still within the interval after the failed probe
    clock.advance(1.0)
    gate.check()
    assert gate.is_open and db.migrations == 1
    for _ in range(100):
        gate.check()
    clock.advance(100.0)
    gate.check()
    assert db.migrations == 1 and db.tries == 3


def test_no_caller_passes_while_another_migrates_and_none_waits_past_the_bound():
    db = _Database()
    db.up = True
    db.hold = threading.Event()
    gate = SchemaGate(db.open_once, retry_s=1.0, wait_s=0.2, clock=FakeClock())
    opened: list[BaseException | None] = []

    def first() -> None:
        try:
            gate.check()
            opened.append(None)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            opened.append(e)

    t = threading.Thread(target=first)
    t.start()
    assert db.migrating.wait(5)
    # Another caller meanwhile: not let through (the schema is not there yet), nor held.
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="being migrated"):
        gate.check()
    assert time.monotonic() - t0 < 2
    assert not gate.is_open
    db.hold.set()
    t.join(10)
    assert opened == [None] and gate.is_open
    gate.check()
    assert db.migrations == 1


def test_a_migration_that_fails_on_a_reachable_database_is_raised_and_retried():
    calls = []

    def open_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("migration 9 failed")

    gate = SchemaGate(open_once, retry_s=1.0, wait_s=0.2, clock=FakeClock())
    with pytest.raises(RuntimeError):
        gate.check()
    assert not gate.is_open
    gate.check()
    assert gate.is_open and len(calls) == 2
