"""headwater.http.guards: the flood budget on a fake clock, the rate floor on plain numbers; and
headwater.http.send_floor on a loopback TCP pair (real acks, times passed in)."""

from __future__ import annotations

import contextlib
import math
import socket
import time

import pytest

from headwater.clock import FakeClock
from headwater.config import HttpLimits
from headwater.http.guards import FloodBudget, RateFloor
from headwater.http.send_floor import SendFloor, bytes_acked


def test_flood_budget_allows_a_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    budget = FloodBudget(rate_per_s=10, burst=5, clock=clock)
    assert all(budget.spend() for _ in range(5))
    assert not budget.spend()
    clock.advance(0.1)  # one token back
    assert budget.spend() and not budget.spend()
    clock.advance(100)  # never above the burst
    assert budget.spend(5) and not budget.spend()


def test_flood_budget_refuses_a_cost_it_cannot_cover_and_takes_nothing() -> None:
    clock = FakeClock()
    budget = FloodBudget(rate_per_s=1, burst=10, clock=clock)
    assert budget.spend(8)
    assert not budget.spend(3)
    assert budget.tokens == pytest.approx(2)
    assert budget.spend(2)


def test_flood_budget_steady_legitimate_rate_never_runs_out() -> None:
    clock = FakeClock()
    budget = FloodBudget(rate_per_s=100, burst=400, clock=clock)
    for _ in range(10_000):  # 50 frames a second for 200 s
        clock.advance(0.02)
        assert budget.spend()


def test_flood_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        FloodBudget(rate_per_s=-1, burst=1)
    with pytest.raises(ValueError):
        FloodBudget(rate_per_s=1, burst=0)


def test_rate_floor_trickle_fails_at_the_end_of_the_first_window() -> None:
    floor = RateFloor(bytes_per_s=1024, window_s=10)
    now = 0.0
    deadline = floor.begin_wait(now)
    assert deadline == 10.0  # even with no byte at all, the wait cannot outlast the window
    now = 9.0
    assert floor.end_wait(1, now)  # one byte after 9 s: the window is not over yet
    assert floor.begin_wait(now) == 10.0
    assert not floor.end_wait(0, 10.0)  # the deadline: 1 byte in 10 s


def test_rate_floor_counts_only_time_spent_waiting_on_the_peer() -> None:
    floor = RateFloor(bytes_per_s=1000, window_s=1)
    now = 0.0
    for _ in range(100):  # the app is slow (5 s between reads), the peer is not (0.1 s, 200 bytes)
        floor.begin_wait(now)
        now += 0.1
        assert floor.end_wait(200, now)
        now += 5.0


def test_rate_floor_passes_a_window_and_judges_the_next_one_afresh() -> None:
    floor = RateFloor(bytes_per_s=100, window_s=1)
    floor.begin_wait(0.0)
    assert floor.end_wait(500, 0.4)  # this window has its 100 bytes already
    assert floor.begin_wait(0.4) == pytest.approx(2.0)  # so only the next window may fail
    assert floor.end_wait(0, 1.5)
    floor.begin_wait(1.5)
    assert not floor.end_wait(50, 2.0)  # 50 bytes in the second window


def test_rate_floor_reset_and_disabled() -> None:
    floor = RateFloor(bytes_per_s=100, window_s=1)
    floor.begin_wait(0.0)
    floor.end_wait(0, 0.9)
    floor.reset()  # a new body starts from nothing
    floor.begin_wait(0.9)
    assert floor.end_wait(100, 1.8)
    off = RateFloor(bytes_per_s=0, window_s=1)
    assert off.begin_wait(5.0) == math.inf
    off_now = 5.0
    for _ in range(10):
        off.begin_wait(off_now)
        off_now += 100
        assert off.end_wait(0, off_now)


def test_rate_floor_says_when_a_wait_closes_a_window() -> None:
    floor = RateFloor(bytes_per_s=100, window_s=1)
    floor.begin_wait(0.0)
    assert not floor.window_ends_by(0.5)
    assert floor.end_wait(0, 0.5)  # (no bytes needed yet: the window is still open)
    floor.begin_wait(5.0)  # time not spent waiting does not count
    assert not floor.window_ends_by(5.25)
    assert floor.window_ends_by(5.5)


def _filled_pair() -> tuple[socket.socket, socket.socket]:
    """A loopback TCP pair whose server side has sent until the kernel took no more."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            server.send(b"x" * 65536)
    time.sleep(0.05)  # the acks of what the client's buffer took
    return server, client


def test_send_floor_counts_what_the_peer_acknowledged_not_what_the_kernel_buffered() -> None:
    server, client = _filled_pair()
    with server, client:
        floor = SendFloor(server, bytes_per_s=1000, window_s=1)
        floor.blocked(0.0)
        assert floor.deadline == 1.0
        assert floor.unblocked(0.5)  # (mid-window: nothing judged)
        floor.blocked(0.5)
        assert floor.deadline == 1.0
        # The kernel holds far more than 1000 bytes of ours, but the peer read none of it.
        assert not floor.due(1.0)


def test_send_floor_passes_a_reader_above_it_and_moves_its_deadline() -> None:
    server, client = _filled_pair()
    with server, client:
        floor = SendFloor(server, bytes_per_s=1000, window_s=1)
        floor.blocked(0.0)
        got = 0
        while got < 200_000:  # the client reads; the server's kernel sends the rest as it can
            got += len(client.recv(65536))
        time.sleep(0.05)
        assert floor.due(1.0)
        assert floor.deadline == 2.0
        assert floor.unblocked(1.5)
        assert floor.deadline == math.inf


def test_send_floor_off_and_for_non_tcp_sockets() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert SendFloor.for_limits(a, HttpLimits()) is None  # a Unix socket: the kernel cannot tell
        assert bytes_acked(a) is None
    with socket.socket() as s:
        assert SendFloor.for_limits(s, HttpLimits(min_send_rate_bytes_per_s=0)) is None
        assert SendFloor.for_limits(s, HttpLimits()) is not None
