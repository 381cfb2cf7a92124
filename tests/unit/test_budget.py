"""The byte budget a process's requests share (headwater/budget.py), on both anyio backends."""

from __future__ import annotations

import anyio
import pytest

from headwater.budget import BudgetExhausted, ByteBudget

pytestmark = pytest.mark.anyio


async def test_takes_and_gives_within_the_total():
    b = ByteBudget(100)
    assert await b.take(60) == 60 and b.free == 40
    assert b.try_take(50) is None and b.try_take(40) == 40 and b.free == 0
    b.give(100)
    assert b.free == 100
    b.give(5)  # never above the total
    assert b.free == 100


async def test_a_take_larger_than_the_budget_takes_it_all():
    b = ByteBudget(100)
    assert await b.take(500) == 100 and b.free == 0


async def test_a_waiter_is_served_when_bytes_come_back_in_arrival_order():
    b = ByteBudget(100)
    await b.take(100)
    got: list[str] = []

    async def taker(name: str, n: int) -> None:
        await b.take(n, timeout=5)
        got.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(taker, "large", 80)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(taker, "small", 10)
        await anyio.wait_all_tasks_blocked()
        assert b.try_take(10) is None  # nobody jumps the queue, even with room
        b.give(50)
        await anyio.wait_all_tasks_blocked()
        # 50 free: the large waiter is first and needs 80; the small one waits behind it
        assert got == [] and b.free == 50
        b.give(50)
    assert sorted(got) == ["large", "small"] and b.free == 10


async def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue():
    b = ByteBudget(100)
    await b.take(100)
    with pytest.raises(BudgetExhausted):
        await b.take(1, timeout=0.01)
    assert b.statistics() == {"total": 100, "free": 0, "waiting": 0, "waits": 1, "refusals": 1}
    b.give(100)
    assert b.try_take(100) == 100


async def test_a_cancelled_waiter_gives_nothing_away():
    b = ByteBudget(100)
    await b.take(90)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.take, 50)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert b.free == 10 and b.statistics()["waiting"] == 0
    assert b.try_take(10) == 10
