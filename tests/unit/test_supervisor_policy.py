"""The supervisor's restart policy and the fake clock it is tested with: no sleeps."""

import anyio
import pytest

from headwater.clock import Clock, FakeClock, SystemClock
from headwater.config import loads
from headwater.supervisor import BackoffPolicy, child_specs


def test_backoff_doubles_up_to_the_cap():
    clock = FakeClock()
    p = BackoffPolicy(clock=clock, initial_s=0.5, factor=2, max_s=5, reset_after_s=60)
    delays = []
    for _ in range(7):
        p.started()
        clock.advance(1)  # crashes after a second: never stable
        delays.append(p.exited())
    assert delays == [0.5, 1, 2, 4, 5, 5, 5]
    assert p.restarts == 7
    assert p.consecutive_failures == 7


def test_a_stable_run_forgives_earlier_crashes():
    clock = FakeClock()
    p = BackoffPolicy(clock=clock, initial_s=1, factor=3, max_s=100, reset_after_s=60)
    for _ in range(3):
        p.started()
        clock.advance(2)
        p.exited()
    p.started()
    clock.advance(59.9)
    assert p.exited() == 27  # 59.9 s is not yet stable
    p.started()
    clock.advance(60)
    assert p.exited() == 1  # ran a full minute: back to the first delay
    assert p.restarts == 5
    assert p.consecutive_failures == 1


def test_wall_clock_jumps_do_not_matter():
    clock = FakeClock()
    p = BackoffPolicy(clock=clock, initial_s=1, reset_after_s=10)
    p.started()
    clock.set_time(0)  # NTP steps the wall clock back a long way
    assert p.exited() == 1
    assert p.uptime() == 0


def test_invalid_policy():
    with pytest.raises(ValueError):
        BackoffPolicy(clock=FakeClock(), initial_s=10, max_s=1)
    with pytest.raises(ValueError):
        BackoffPolicy(clock=FakeClock(), factor=0.5)


def test_child_specs_order_and_gateway_workers():
    cfg = loads("""
[objstore.ec]
k = 1
m = 1
[[users]]
access_key = "abc"
secret_key = "12345678"
[gateway]
port = 9000
admin_port = 9001
workers = 3
[[storage]]
id = "s1"
port = 9101
admin_port = 9111
[[storage]]
id = "s2"
port = 9102
admin_port = 9112
[[metadata]]
id = "m1"
port = 9201
admin_port = 9301
""", path="/tmp/x/cluster.toml")
    specs = child_specs(cfg)
    assert [s.name for s in specs] == ["m1", "s1", "s2", "s3#0", "s3#1", "s3#2"]
    assert specs[3].argv("py", cfg.path)[-2:] == ["--worker", "0"]
    assert specs[0].argv("py", cfg.path) == ["py", "-m", "headwater", "node", "m1", "-c", "/tmp/x/cluster.toml"]


def test_clocks_satisfy_the_protocol():
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)
    c = FakeClock(start=100.0)
    c.advance(1.5)
    assert (c.time(), c.time_ns()) == (101.5, 101_500_000_000)
    with pytest.raises(ValueError):
        c.advance(-1)


@pytest.mark.anyio
async def test_fake_clock_wakes_sleepers_in_deadline_order():
    clock = FakeClock()
    woke = []

    async def sleeper(name, seconds):
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic() - 1000.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 5)
        tg.start_soon(sleeper, "early", 2)
        while clock.sleepers < 2:
            await anyio.sleep(0)
        clock.advance(1)
        await anyio.sleep(0)
        assert woke == []
        clock.advance(1)
        while not woke:
            await anyio.sleep(0)
        assert woke == [("early", 2)]
        clock.advance(10)
    assert woke == [("early", 2), ("late", 12)]


@pytest.mark.anyio
async def test_fake_clock_forgets_cancelled_sleepers_and_autojumps():
    clock = FakeClock()
    with anyio.move_on_after(0.01):
        await clock.sleep(100)
    assert clock.sleepers == 0
    jumping = FakeClock(autojump=True)
    before = jumping.monotonic()
    for _ in range(10):
        await jumping.sleep(30)
    assert jumping.monotonic() - before == 300
