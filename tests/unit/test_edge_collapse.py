"""The in-worker fan-out of one upstream fetch: streaming to every waiter, the window, the
fallback for a waiter that falls behind, failures."""

from __future__ import annotations

import anyio
import pytest

from headwater.edge.collapse import Collapser, FlightHead
from headwater.edge.errors import CollapsedFetchFailed, UpstreamTimeout

HEAD = FlightHead(status=200, headers=(("content-length", "4"),), content_length=4, stored=True)


async def collect(it) -> bytes:
    return b"".join([c async for c in it])


@pytest.mark.anyio
async def test_waiters_stream_chunks_as_they_arrive_and_one_fetch_is_counted():
    c = Collapser(window_bytes=1 << 20)
    flight, leader = c.join(b"k")
    assert leader
    others = [c.join(b"k") for _ in range(3)]
    assert all(f is flight and not lead for f, lead in others)
    assert (c.fetches, c.collapsed) == (1, 3)
    seen: list[bytes] = []

    async def waiter() -> None:
        await flight.wait_head()
        async for chunk in flight.follow():
            seen.append(chunk)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(waiter)
        await anyio.sleep(0)
        flight.publish_head(HEAD)
        flight.feed(b"ab")
        await anyio.wait_all_tasks_blocked()
        assert seen == [b"ab"] * 4  # the first chunk reached every waiter before the body ended
        flight.feed(b"cd")
        flight.finish()
    assert b"".join(seen) == b"abcd" * 4 or sorted(seen) == sorted([b"ab"] * 4 + [b"cd"] * 4)
    c.land(flight)
    assert c.join(b"k")[1] is True


@pytest.mark.anyio
async def test_a_waiter_behind_the_window_reads_the_rest_from_the_fallback():
    flight, _ = Collapser(window_bytes=4).join(b"k")
    flight.publish_head(HEAD)
    for part in (b"0123", b"4567", b"89"):
        flight.feed(part)
    flight.finish()
    body = b"0123456789"
    asked: list[int] = []

    async def fallback(offset: int):
        asked.append(offset)
        yield body[offset:]

    assert await collect(flight.follow(fallback)) == body
    assert asked == [0]
    with pytest.raises(CollapsedFetchFailed):
        await collect(flight.follow(None))
    assert await collect(flight.follow(None, start=9)) == b"9"  # inside the window: no fallback needed


@pytest.mark.anyio
async def test_a_failed_fetch_fails_its_waiters():
    flight, _ = Collapser(window_bytes=10).join(b"k")
    flight.finish(UpstreamTimeout("slow"))
    with pytest.raises(UpstreamTimeout):
        await flight.wait_head()
    flight2, _ = Collapser(window_bytes=10).join(b"k")
    flight2.publish_head(HEAD)
    flight2.feed(b"ab")
    flight2.finish(UpstreamTimeout("stalled"))
    with pytest.raises(CollapsedFetchFailed):
        await collect(flight2.follow())
