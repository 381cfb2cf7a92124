"""HTTP/2 answers given at once: an app with ``answer_now`` (the edge's warm hits) has a request
without a body answered where its HEADERS were read, with no task per stream; a stream reset in
the same read is not answered, and what does not fit the send windows at once, or has no answer
at once, still goes through a stream task. An h2 library client over h2c, on both backends.
"""

from __future__ import annotations

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from headwater.config import HttpLimits
from headwater.http import serve
from tests.functional.test_http_inline import BODY, NowApp

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def _exchange(app: NowApp, requests: list[tuple[str, str]], *, window: int = 65535,
                    reset: bool = False) -> dict[int, list]:
    """Send ``requests`` ((method, path) each) in one write on one h2c connection, optionally
    each followed by its RST_STREAM; the events per stream until all ended or were reset."""
    events: dict[int, list] = {}
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=0, task_status=task_status))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        client.initiate_connection()
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(client.data_to_send())
            with anyio.fail_after(5):  # the server's SETTINGS (and so our window) first
                while not any(isinstance(e, h2.events.SettingsAcknowledged)
                              for e in client.receive_data(await s.receive())):
                    pass
            sids = []
            for method, path in requests:
                sid = client.get_next_available_stream_id()
                sids.append(sid)
                events[sid] = []
                client.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                                          (":authority", "t")], end_stream=True)
                if reset:
                    client.reset_stream(sid)
            await s.send(client.data_to_send())
            done: set[int] = set(sids) if reset else set()
            with anyio.move_on_after(1 if reset else 5):
                while len(done) < len(sids):
                    for e in client.receive_data(await s.receive()):
                        sid = getattr(e, "stream_id", None)
                        if sid in events:
                            events[sid].append(e)
                        if isinstance(e, h2.events.DataReceived):
                            client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                        if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                            done.add(sid)
                    await s.send(client.data_to_send())
        tg.cancel_scope.cancel()
    return events


def _answer(events: list) -> tuple[dict[bytes, bytes], bytes]:
    [resp] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    return dict(resp.headers), b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))


async def test_requests_without_a_body_are_answered_at_once() -> None:
    app = NowApp()
    got = await _exchange(app, [("GET", "/now"), ("HEAD", "/now"), ("GET", "/other"), ("GET", "/now")])
    assert (app.now, app.awaited) == (3, 1)  # /other: no answer at once, the app awaited
    first, head, other, last = (_answer(got[sid]) for sid in sorted(got))
    assert first[0][b":status"] == b"200" and first[0][b"x-seen"] == b"-" and first[1] == BODY
    assert first[0][b"content-length"] == b"1500" and b"date" in first[0]
    assert head[0][b":status"] == b"200" and head[1] == b""
    assert other[0][b":status"] == b"404" and other[1] == b"no"
    assert last[1] == BODY and last[0].keys() == first[0].keys()


async def test_a_stream_reset_in_the_same_read_is_not_answered() -> None:
    app = NowApp()
    got = await _exchange(app, [("GET", "/now")] * 5, reset=True)
    assert (app.now, app.awaited) == (0, 0)
    assert not any(isinstance(e, h2.events.ResponseReceived) for evs in got.values() for e in evs)


async def test_a_body_past_the_send_window_goes_through_a_stream_task() -> None:
    app = NowApp()
    got = await _exchange(app, [("GET", "/now")], window=1000)  # BODY is 1500 bytes
    [events] = got.values()
    headers, body = _answer(events)
    assert headers[b":status"] == b"200" and body == BODY
    assert (app.now, app.awaited) == (1, 0)  # answered at once, sent by the task as the window opened


async def test_an_answer_that_fails_is_a_500() -> None:
    app = NowApp()
    got = await _exchange(app, [("GET", "/boom"), ("GET", "/now")])
    boom, now = (_answer(got[sid]) for sid in sorted(got))
    assert boom[0][b":status"] == b"500" and now[1] == BODY


async def _open_h2c(port: int) -> tuple[anyio.abc.SocketStream, h2.connection.H2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    s = await anyio.connect_tcp("127.0.0.1", port)
    await s.send(client.data_to_send())
    with anyio.fail_after(5):
        while not any(isinstance(e, h2.events.SettingsAcknowledged) for e in client.receive_data(await s.receive())):
            pass
    await s.send(client.data_to_send())
    return s, client


async def test_idle_timeout_counts_from_the_last_read_not_from_the_first() -> None:
    """The reader keeps one idle scope per idle_timeout_s, not one per read: a connection whose
    requests keep coming for several idle periods stays open (a scope running out while reads
    came is replaced), and one that goes quiet gets GOAWAY after idle_timeout_s from its last
    request, not later."""
    app = NowApp()
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve(app, host="127.0.0.1", port=0,
                                                        limits=HttpLimits(idle_timeout_s=0.5),
                                                        task_status=task_status))
        s, client = await _open_h2c(port)
        async with s:
            start = anyio.current_time()
            answered = 0
            with anyio.fail_after(10):
                while anyio.current_time() - start < 1.6:  # three idle periods and more
                    sid = client.get_next_available_stream_id()
                    client.send_headers(sid, [(":method", "GET"), (":path", "/now"), (":scheme", "http"),
                                              (":authority", "t")], end_stream=True)
                    await s.send(client.data_to_send())
                    ended = False
                    while not ended:
                        events = client.receive_data(await s.receive())
                        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
                        ended = any(isinstance(e, h2.events.StreamEnded) for e in events)
                    await s.send(client.data_to_send())
                    last_sent = anyio.current_time()  # (what the server read last, at the latest)
                    answered += 1
                    await anyio.sleep(0.15)
                terminated = False
                while not terminated:  # then quiet: GOAWAY, and the server closes
                    try:
                        data = await s.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
                    terminated = any(isinstance(e, h2.events.ConnectionTerminated) for e in client.receive_data(data))
                waited = anyio.current_time() - last_sent
            assert terminated and 0.3 < waited < 2.0, waited
            assert answered >= 8 and app.now == answered
        tg.cancel_scope.cancel()
