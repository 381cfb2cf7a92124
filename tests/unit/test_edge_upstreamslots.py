"""edge.upstreamslots: the bound on one worker's upstream fetches (the sans-IO pool), the app's
wait for a slot on an injected clock (no sleeps), the [[edge]] keys, and the refusal's answer."""

from __future__ import annotations

import anyio
import pytest
from headwater.clock import FakeClock
from headwater.config import ConfigError, loads
from headwater.http.errors import BodyCut
from headwater.edge.app import wait_for_slot
from headwater.edge.errors import UpstreamBusy, UpstreamError, headers_of, status_of
from headwater.edge.upstreamslots import SlotLimits, SlotPool, pools_for


def pool(capacity: int = 2, *, wait_s: float = 1.0, max_waiting: int = 4) -> SlotPool:
    return SlotPool("rest", capacity, wait_s, max_waiting)


# --- the pool -----------------------------------------------------------------------------------

def test_slots_up_to_the_capacity_then_a_queue_served_in_order():
    p = pool(2)
    assert p.take_nowait() and p.take_nowait() and not p.take_nowait()
    woken: list[str] = []
    first, second = p.enqueue(10.0), p.enqueue(10.5)
    assert first is not None and second is not None and first.deadline == 11.0
    first.wake, second.wake = (lambda: woken.append("first")), (lambda: woken.append("second"))
    p.release()  # handed straight to the first in the queue: still two in use
    assert first.granted and not second.granted and woken == ["first"] and p.in_use == 2
    p.release()
    assert second.granted and woken == ["first", "second"] and p.in_use == 2 and p.waiting == 0
    p.release()
    p.release()
    assert p.in_use == 0
    s = p.statistics()
    assert (s.taken, s.waited, s.peak_in_use, s.refused_full, s.refused_timeout) == (4, 2, 2, 0, 0)
    with pytest.raises(RuntimeError):
        p.release()


def test_no_barging_past_the_queue():
    """A slot freed while fetches wait is theirs: a newcomer does not take it first."""
    p = pool(1)
    assert p.take_nowait()
    waiting = p.enqueue(0.0)
    p.release()
    assert waiting is not None and waiting.granted
    assert not p.take_nowait()  # in use by the waiter now
    p.release()
    assert p.take_nowait()


def test_a_full_queue_refuses_at_once_and_so_does_a_pool_without_slots_or_wait():
    p = pool(1, max_waiting=2)
    assert p.take_nowait()
    assert p.enqueue(0.0) is not None and p.enqueue(0.0) is not None
    assert p.enqueue(0.0) is None
    assert p.statistics().refused_full == 1
    assert pool(0).enqueue(0.0) is None and not pool(0).take_nowait()  # max_rest_fetches = 0
    no_wait = pool(1, wait_s=0)
    assert no_wait.take_nowait() and no_wait.enqueue(0.0) is None


def test_a_prefetch_takes_only_a_spare_slot_and_never_queues():
    """Speculative work leaves a quarter of the slots to viewers and never goes before one."""
    p = SlotPool("fetch", 8, 1.0, 4)
    for _ in range(6):  # 8 - 8 // 4: the spare ones
        assert p.spare and p.take_spare()
    assert not p.spare and not p.take_spare() and p.in_use == 6
    assert p.take_nowait() and p.take_nowait() and p.in_use == 8  # viewers still get the rest
    assert p.waiting == 0 and p.statistics().refused_full == 0  # a declined prefetch queued nothing
    for _ in range(3):
        p.release()
    assert p.in_use == 5 and p.spare
    ticket = p.enqueue(0.0)  # ...and a viewer waiting anywhere in the pool stops them all
    assert ticket is not None and not p.spare and not p.take_spare()
    tiny = SlotPool("fetch", 2, 1.0, 4)  # a quarter of 2 is none: both may go to prefetches
    assert tiny.take_spare() and tiny.take_spare() and not tiny.take_spare()


def test_giving_up_a_ticket_and_a_slot_granted_meanwhile():
    p = pool(1)
    assert p.take_nowait()
    late, next_one = p.enqueue(0.0), p.enqueue(0.0)
    assert late is not None and next_one is not None
    p.give_up(late)  # its wait ran out: out of the queue, a refusal
    assert p.waiting == 1 and p.statistics().refused_timeout == 1
    p.release()
    assert next_one.granted
    # Granted, then cancelled before it used the slot: the slot goes to the next in line.
    after = p.enqueue(0.0)
    assert after is not None
    p.give_up(next_one, timed_out=False)
    assert after.granted and p.in_use == 1 and p.statistics().refused_timeout == 1
    p.give_up(late)  # (twice: nothing)
    assert p.statistics().refused_timeout == 1


def test_expire_gives_up_what_is_due():
    p = pool(1, wait_s=2.0)
    assert p.take_nowait()
    a, b = p.enqueue(0.0), p.enqueue(1.0)
    assert p.expire(1.9) == [] and p.expire(2.0) == [a] and p.waiting == 1
    assert p.expire(5.0) == [b] and p.statistics().refused_timeout == 2


def test_the_pools_of_a_worker():
    pools = pools_for(SlotLimits(max_upstream_fetches=8, max_rest_fetches=3, wait_s=0.5, max_waiting=7))
    assert {k: (v.capacity, v.wait_s, v.max_waiting) for k, v in pools.items()} == {
        "fetch": (8, 0.5, 7), "rest": (3, 0.5, 7)}


# --- the wait, on an injected clock ----------------------------------------------------------------

@pytest.mark.anyio
async def test_a_fetch_waits_for_a_released_slot_within_the_wait():
    clock = FakeClock()
    p = pool(1, wait_s=2.0)
    assert await wait_for_slot(p, clock) == "now"
    outcome: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _record(wait_for_slot(p, clock), outcome))
        await _until(lambda: clock.sleepers == 1)
        clock.advance(1.5)
        await anyio.lowlevel.checkpoint()
        assert outcome == []
        p.release()
    assert outcome == ["waited"] and p.in_use == 1 and clock.sleepers == 0


@pytest.mark.anyio
async def test_past_the_wait_a_fetch_is_refused_having_taken_nothing():
    clock = FakeClock()
    p = pool(1, wait_s=2.0)
    assert await wait_for_slot(p, clock) == "now"
    outcome: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _record(wait_for_slot(p, clock), outcome))
        await _until(lambda: clock.sleepers == 1)
        clock.advance(2.0)
    assert outcome == ["timeout"] and p.waiting == 0 and p.in_use == 1
    p.release()
    assert p.in_use == 0 and p.statistics().refused_timeout == 1


@pytest.mark.anyio
async def test_a_cancelled_wait_leaves_the_queue():
    clock = FakeClock()
    p = pool(1, wait_s=5.0)
    assert await wait_for_slot(p, clock) == "now"
    with anyio.move_on_after(0.05):  # (real time: the caller's own deadline, e.g. a viewer gone)
        await wait_for_slot(p, clock)
    assert p.waiting == 0 and p.in_use == 1 and p.statistics().refused_timeout == 0
    p.release()
    assert p.in_use == 0


@pytest.mark.anyio
async def test_a_full_queue_is_refused_without_waiting():
    clock = FakeClock()
    p = pool(1, max_waiting=0)
    assert await wait_for_slot(p, clock) == "now"
    assert await wait_for_slot(p, clock) == "queue_full" and clock.sleepers == 0


async def _record(wait, out: list[str]) -> None:
    out.append(await wait)


async def _until(condition) -> None:
    for _ in range(1000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never met")


# --- the refusal's answer ----------------------------------------------------------------------------

def test_a_refusal_is_a_503_with_retry_after_and_an_upstream_error():
    e = UpstreamBusy("busy", kind="fetch", retry_after_s=2)
    assert isinstance(e, UpstreamError)  # (a stale copy may answer instead: stale-if-error)
    assert status_of(e) == 503 and headers_of(e) == [("retry-after", "2")]
    assert headers_of(UpstreamBusy("busy", retry_after_s=0)) == [("retry-after", "1")]
    assert UpstreamBusy("x", kind="rest").detail == "SlowReaderOriginError"
    assert headers_of(UpstreamError("x")) == []


# --- [[edge]] --------------------------------------------------------------------------------------

EDGE = '''[[distributions]]
name = "video"
origin = "http://127.0.0.1:9"

[[edge]]
id = "pop-1"
tier = "pop"
port = 31001
admin_port = 31002
lat = 1.0
lon = 2.0
'''


def test_the_keys_and_their_defaults():
    assert loads(EDGE).edge[0].upstream_slots == SlotLimits()
    assert SlotLimits() == SlotLimits(max_upstream_fetches=512, max_rest_fetches=16, wait_s=1.0, max_waiting=256)
    cfg = loads(EDGE + 'max_upstream_fetches = 8\nmax_rest_fetches = 0\nupstream_wait_seconds = 0.25\n'
                       'upstream_wait_limit = 3\n').edge[0].upstream_slots
    assert cfg == SlotLimits(max_upstream_fetches=8, max_rest_fetches=0, wait_s=0.25, max_waiting=3)
    # max_rest_fetches defaults to no more than max_upstream_fetches
    assert loads(EDGE + 'max_upstream_fetches = 4\n').edge[0].upstream_slots.max_rest_fetches == 4


@pytest.mark.parametrize("extra,key", [
    ("max_upstream_fetches = 0\n", "edge[0].max_upstream_fetches"),
    ("max_upstream_fetches = 4\nmax_rest_fetches = 5\n", "edge[0].max_rest_fetches"),
    ("max_rest_fetches = -1\n", "edge[0].max_rest_fetches"),
    ("upstream_wait_seconds = -1\n", "edge[0].upstream_wait_seconds"),
    ('upstream_wait_seconds = "1s"\n', "edge[0].upstream_wait_seconds"),
    ("upstream_wait_limit = -2\n", "edge[0].upstream_wait_limit"),
])
def test_errors_name_the_key_and_line(extra, key):
    text = EDGE + extra
    with pytest.raises(ConfigError) as e:
        loads(text, path="cluster.toml")
    assert e.value.key == key
    name = key.rsplit(".", 1)[1]
    assert e.value.line == next(i for i, x in enumerate(text.splitlines(), 1) if x.startswith(name + " "))


# --- a viewer's answer cut short ----------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_body_cut_by_a_refusal_says_why_and_closes_what_is_under_it():
    from headwater.edge.app import _ViewerBody

    async def chunks():
        yield b"first"
        raise UpstreamBusy("no rest slot", kind="rest")

    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    body = _ViewerBody(chunks(), close)
    got = []
    with pytest.raises(BodyCut) as cut:  # the core's "cut on purpose": a line, no traceback
        async for chunk in body:
            got.append(chunk)
    assert isinstance(cut.value.__cause__, UpstreamBusy)
    assert got == [b"first"] and body.cut_detail == "SlowReaderOriginError"
    await body.aclose()
    assert closed == [True]
    unread = _ViewerBody(chunks(), close)  # never iterated (the viewer left first): still closed
    await unread.aclose()
    assert closed == [True, True] and unread.cut_detail is None
