"""The background-loop skeleton on a fake clock: books, interval, backoff, idle work, no sleeps.

Runs on both anyio backends (the kernel's rule). ``FakeClock(autojump=True)`` makes every sleep
jump the clock to its deadline, so a loop of passes runs at full speed while each pass sees the
times a real run would.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import anyio
import pytest

from headwater import log
from headwater.background import BackgroundLoop
from headwater.clock import FakeClock

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


class Loop(BackgroundLoop[int]):
    """Passes that take ``work_s`` on the clock and fail when the script says so."""

    name = "test"

    def __init__(self, clock: FakeClock, *, interval_s: float = 10.0, script: list[bool] | None = None,
                 stop_after: int = 5, stop_idles: int = 0, work_s: float = 2.0, **kw: Any) -> None:
        super().__init__(interval_s=interval_s, clock=clock, **kw)
        self.script = list(script or [])  # True: this pass fails
        self.starts: list[float] = []     # monotonic start of every pass attempted
        self.stop_after = stop_after
        self.stop_idles = stop_idles
        self.work_s = work_s
        self.idles: list[float] = []
        self.idle_fails = 0
        self.scope: anyio.CancelScope | None = None
        self.seen_running: list[tuple[bool, float | None]] = []

    async def one_pass(self) -> int:
        self.starts.append(self.clock.monotonic())
        if len(self.starts) >= self.stop_after and self.scope is not None:
            self.scope.cancel()
        self.seen_running.append((self.running, self.pass_started))
        await self.clock.sleep(self.work_s / 2)
        self.progress = 0.5
        await self.clock.sleep(self.work_s / 2)
        if self.script and self.script.pop(0):
            raise Boom("disk on fire")
        return len(self.starts)

    def summary(self, result: int) -> dict[str, Any]:
        return {"n": result}

    async def idle(self) -> None:
        self.idles.append(self.clock.monotonic())
        if len(self.idles) == self.stop_idles and self.scope is not None:
            self.scope.cancel()
        if self.idle_fails:
            self.idle_fails -= 1
            raise OSError("idle hiccup")


async def forever(loop: Loop) -> None:
    with anyio.CancelScope() as scope:
        loop.scope = scope
        await loop.run_forever()


@pytest.fixture
def stream():
    out = io.StringIO()
    log.configure(level="info", stream=out, daemon="test-1")
    yield out
    log.reset()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_run_once_keeps_the_books(stream):
    clock = FakeClock(autojump=True)
    loop = Loop(clock)
    assert loop.loop_stats()["passes"] == 0 and loop.last_pass_end is None
    wall0, mono0 = clock.time(), clock.monotonic()
    assert await loop.run_once() == 1
    assert loop.seen_running == [(True, wall0)]  # running, with its start, while the pass ran
    assert loop.passes == 1 and not loop.running and loop.pass_started is None and loop.progress == 1.0
    assert loop.last_pass_start == wall0 and loop.last_pass_end == wall0 + 2.0
    assert loop.last_pass_seconds == 2.0 and clock.monotonic() == mono0 + 2.0
    st = loop.loop_stats()
    assert st["passes"] == 1 and st["failures"] == 0 and st["pass_running"] == 0 and st["last_pass_end"] == wall0 + 2
    [line] = lines(stream)
    assert line["event"] == "test.pass_done" and line["n"] == 1 and line["seconds"] == 2.0
    assert line["level"] == "info" and line["daemon"] == "test-1"


async def test_run_once_raises_and_counts_nothing_as_done():
    clock = FakeClock(autojump=True)
    loop = Loop(clock, script=[True])
    with pytest.raises(Boom):
        await loop.run_once()
    assert loop.passes == 0 and loop.last_pass_end is None and not loop.running and loop.pass_started is None
    assert loop.failure_count == 0  # run_once is for tests: run_forever does the failure books


async def test_run_forever_spaces_passes_by_the_interval_after_each_pass():
    clock = FakeClock(autojump=True)
    loop = Loop(clock, interval_s=10.0, stop_after=4)
    t0 = clock.monotonic()
    await forever(loop)
    # each pass takes 2 s, then 10 s pause: starts 12 s apart
    assert [s - t0 for s in loop.starts] == [0.0, 12.0, 24.0, 36.0]
    assert loop.passes == 3  # the fourth was cancelled mid-way
    assert not loop.running


async def test_a_failed_pass_is_logged_counted_and_retried_after_a_backoff(stream):
    clock = FakeClock(autojump=True)
    loop = Loop(clock, interval_s=10.0, script=[True, True, True, True, True, False, True, False],
                stop_after=9, classify=lambda e: "fire" if isinstance(e, Boom) else "other")
    t0 = clock.monotonic()
    await forever(loop)
    gaps = [b - a - 2.0 for a, b in zip(loop.starts, loop.starts[1:])]
    # 1, 2, 4, 8 s, then the interval caps it; a good pass resets it; a new failure starts at 1 s
    assert gaps == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 1.0, 10.0]
    assert loop.starts[0] == t0
    assert loop.failed_passes == 6 and loop.failures == {"fire": 6} and loop.failure_count == 6
    assert loop.passes == 2 and loop.failures_in_row == 0
    failed = [x for x in lines(stream) if x["event"] == "test.pass_failed"]
    assert len(failed) == 6
    first = failed[0]
    assert first["level"] == "warning" and first["reason"] == "fire" and first["retry_in_s"] == 1.0
    assert first["failures_in_row"] == 1 and first["error"] == "Boom: disk on fire"
    assert "Traceback" in first["traceback"] and "disk on fire" in first["msg"]
    assert [x["retry_in_s"] for x in failed] == [1.0, 2.0, 4.0, 8.0, 10.0, 1.0]


async def test_backoff_with_a_zero_interval_still_waits():
    loop = Loop(FakeClock(), interval_s=0.0)
    assert [loop.backoff(n) for n in (1, 2, 3)] == [1.0, 1.0, 1.0]
    loop = Loop(FakeClock(), interval_s=3600.0, backoff_s=0.5)
    assert [loop.backoff(n) for n in (1, 2, 5, 40)] == [0.5, 1.0, 8.0, 3600.0]


async def test_idle_work_runs_every_tick_between_passes_and_survives_failures(stream):
    clock = FakeClock(autojump=True)
    loop = Loop(clock, interval_s=3.0, tick_s=1.0, stop_after=3)
    loop.idle_fails = 2
    t0 = clock.monotonic()
    await forever(loop)
    # passes at 0, 5, 10 (2 s of work + 3 s pause); idle after each second of the pauses
    assert [s - t0 for s in loop.starts] == [0.0, 5.0, 10.0]
    assert [i - t0 for i in loop.idles] == [3.0, 4.0, 5.0, 8.0, 9.0, 10.0]
    assert loop.failures == {"OSError": 2} and loop.passes == 2
    failed = [x for x in lines(stream) if x["event"] == "test.failed"]
    assert [(x["what"], x["error"]) for x in failed] == [("work between passes", "OSError: idle hiccup")] * 2


async def test_a_disabled_loop_runs_no_pass_but_does_its_idle_work():
    clock = FakeClock(autojump=True)
    loop = Loop(clock, interval_s=60.0, tick_s=1.0, stop_idles=5)
    loop.enabled = False
    t0 = clock.monotonic()
    await forever(loop)
    assert loop.starts == [] and loop.passes == 0
    assert [i - t0 for i in loop.idles] == [1.0, 2.0, 3.0, 4.0, 5.0]


async def test_interval_is_on_the_injected_clock():
    clock = FakeClock()  # moves only when told to
    loop = Loop(clock, interval_s=30.0, work_s=0.0, stop_after=100)
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run_forever)
        await anyio.wait_all_tasks_blocked()
        assert loop.passes == 1 and clock.sleepers == 1
        clock.advance(29.9)
        await anyio.wait_all_tasks_blocked()
        assert loop.passes == 1
        clock.advance(0.1)
        await anyio.wait_all_tasks_blocked()
        assert loop.passes == 2
        tg.cancel_scope.cancel()


async def test_cancellation_is_never_taken_for_a_failed_pass():
    clock = FakeClock(autojump=True)
    loop = Loop(clock, stop_after=1)
    await forever(loop)  # the first pass cancels the loop's scope
    assert loop.failed_passes == 0 and loop.failure_count == 0 and loop.passes == 0


async def test_default_logger_and_no_summary_line(stream):
    class Quiet(BackgroundLoop[None]):
        name = "quiet"

        async def one_pass(self) -> None:
            return None

        def summary(self, result: None) -> None:
            return None

    q = Quiet(interval_s=1.0, clock=FakeClock(autojump=True))
    await q.run_once()
    assert q.passes == 1 and stream.getvalue() == ""
    assert Quiet.logger.name == "headwater.background" and logging.getLogger("headwater").level == logging.INFO
