"""The HTTP/2 connection loop around ``h2.H2Connection``: a reader, a writer, one task per stream.

The reader feeds frames to the sans-IO connection and hands the events to the streams; each
stream task runs the app and queues its response in the connection within the flow-control
windows. One writer task alone sends what the connection has queued: woken by whoever queued
something, it takes everything queued since its last send, so the frames of all the streams that
ran in one turn of the loop leave in one write (one TLS record run, one syscall) instead of one
write, lock and wakeup per frame. While the writer sleeps, what one read queued (the answers
given at once, acks; under ``READER_SENDS_BELOW_BYTES``) is sent by the reader itself, which
saves the writer's wakeup per read; the reader's idle deadline is one scope per idle period, not
one per read.

What one stream can hold: its unread request body is bounded by the stream window we advertise
(the peer's window only reopens as the app reads), and its response by one chunk of the app's
body; what all of them queue ahead of the socket is bounded by ``OUTBOUND_HIGH_BYTES``: a stream
(or the reader, whose answers PING and SETTINGS make) that finds more queued waits for the writer
to send it, so a peer that does not read stops being read and stops being answered. A stream
whose send window stays shut for send_timeout_s, or opens slower than min_send_rate_bytes_per_s
over the time spent waiting for it, is reset (CANCEL) and its body closed; a socket that takes
nothing for that long is cut by the transport's watchdog, which fails the writer, and that ends
the connection. Flood budgets are the sans-IO connection's business: it ends the connection with
GOAWAY(ENHANCE_YOUR_CALM), and this loop then closes.

Reads wait no longer than the sans-IO connection's read deadline (a frame, header block or
preface begun and not finished in time: GOAWAY and close), nor, with no stream open, than
idle_timeout_s since the last stream ended: frames that open no stream do not keep it open.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections import deque
from typing import Any, Callable

import anyio
import anyio.abc
import anyio.lowlevel

from headwater.config import HttpLimits
from headwater.http import h2
from headwater.http.errors import (
    H2_ENHANCE_YOUR_CALM,
    H2_INTERNAL_ERROR,
    H2_NO_ERROR,
    BodyCut,
    ClientDisconnected,
    LocalProtocolError,
    ProtocolError,
    RequestTimeout,
    SendTimeout,
)
from headwater.http.exchange import (
    SHUTDOWN_GRACE_S,
    BodyReading,
    OpenFile,
    Service,
    aclose_iterable,
    discard_body,
    error_response,
    override_for_broken_body,
    report_sent,
    split_target,
)
from headwater.http.guards import RateFloor
from headwater.http.transport import DISCONNECTS, RECV_BYTES
from headwater.http.types import FileBody, Headers, Request, Response, TlsSession, new_request

__all__ = ["H2Shell", "H2_DRAIN_MAX_BYTES"]

log = logging.getLogger("headwater.http")

#: An HTTP/2 request body the app did not read is let in (and discarded) up to this size rather
#: than stopped with RST_STREAM(NO_ERROR): some clients (httpx/h2, curl) fail the whole request
#: when the reset races their last DATA frames, though RFC 9113 allows it. Flow control keeps
#: the cost to this many bytes.
H2_DRAIN_MAX_BYTES = 1024 * 1024

#: What the streams and the reader may queue in the connection ahead of the socket before they
#: wait for the writer: a few DATA frames of every busy stream, one write's worth.
OUTBOUND_HIGH_BYTES = 256 * 1024

#: What the reader sends itself when the writer sleeps (_send_for_writer): the answers and acks
#: of one read, as small hits give; more is the writer's, so that a large response's send,
#: blocked by a peer slow to read, does not stop the reading of the connection's other streams.
READER_SENDS_BELOW_BYTES = 64 * 1024

#: Stream tasks that, their stream done, wait for the next one rather than end: starting a task
#: in a task group costs more than a small app, and a client keeps streams coming in waves of
#: its concurrency.
PARKED_WORKERS = 16


def backend_types() -> tuple[type[anyio.CancelScope], type[anyio.Event]]:
    """The running backend's CancelScope and Event classes, to make them directly:
    ``anyio.CancelScope()`` and ``anyio.Event()`` look the backend up (sniffio) on every call,
    ~1.5 µs each, and a stream made several."""
    return type(anyio.CancelScope()), type(anyio.Event())


class H2Stream(BodyReading):
    """One HTTP/2 request in flight; also its RequestBody."""

    __slots__ = ("sid", "_h", "_chunks", "ended", "reset", "failed", "_wakeup", "in_receive",
                 "scope", "_expects_continue", "_content_length", "continue_sent", "received",
                 "_floor", "sent", "_metered", "_send_floor")

    def __init__(self, shell: H2Shell, req: h2.StreamRequest) -> None:
        self.sid = req.stream_id
        self._h = shell
        self._chunks: deque[list[Any]] = deque()  # [data, unacknowledged flow-controlled bytes]
        self.ended = req.end_stream
        self.reset = False
        self.failed: ProtocolError | None = None
        self._wakeup: anyio.Event | None = None
        self.in_receive = False
        # Made when a task runs the stream (a stream answered at once needs none); a reset
        # before that only sets ``reset``, which the task checks first.
        self.scope: anyio.CancelScope | None = None
        self._expects_continue = req.expects_continue
        self._content_length = req.content_length
        self.continue_sent = False
        self.received = 0
        self._floor: RateFloor | None = None
        # Response bytes queued, those counted by the send-rate floor, and the floor (made at
        # the first wait for a window).
        self.sent = 0
        self._metered = 0
        self._send_floor: RateFloor | None = None

    # fed by the connection's reader task

    def feed(self, data: bytes, flow: int) -> None:
        self.received += len(data)
        self._chunks.append([data, flow])
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def fail(self, error: ProtocolError) -> None:
        self.failed = error
        self._wake()

    def abort(self) -> None:
        """The peer reset the stream or left: wake a receiver with ClientDisconnected, or cancel."""
        self.reset = True
        if self.in_receive:
            self._wake()
        elif self.scope is not None:
            self.scope.cancel()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def discard(self) -> int:
        """Drop unread data; the flow-controlled bytes to hand back to the connection window."""
        n = sum(c[1] for c in self._chunks)
        self._chunks.clear()
        return n

    def send_floor(self, limits: HttpLimits) -> RateFloor | None:
        """The response's minimum send rate over its waits for flow-control windows."""
        if self._send_floor is None and limits.min_send_rate_bytes_per_s:
            self._send_floor = RateFloor(limits.min_send_rate_bytes_per_s, limits.min_send_rate_window_s)
        return self._send_floor

    # RequestBody

    @property
    def expects_continue(self) -> bool:
        return self._expects_continue

    @property
    def content_length(self) -> int | None:
        return self._content_length

    async def receive(self, max_bytes: int = 65536) -> bytes:
        h = self._h
        while True:
            if self.reset:
                if self.scope is not None:
                    self.scope.cancel()
                raise ClientDisconnected("the client reset the stream")
            if self._chunks:
                chunk = self._chunks[0]
                data: bytes = chunk[0]
                if len(data) > max_bytes:
                    out = data[:max_bytes]
                    chunk[0] = data[max_bytes:]
                    ack = len(out)
                    chunk[1] -= ack
                else:
                    out = data
                    ack = chunk[1]
                    self._chunks.popleft()
                h.conn.acknowledge(self.sid, ack)
                h.poke()
                # The writer sends the WINDOW_UPDATE; the checkpoint keeps an app that reads
                # a buffered body in a loop from holding the event loop.
                await anyio.lowlevel.checkpoint()
                return out
            if self.failed is not None:
                raise self.failed
            if self.ended:
                return b""
            if self._expects_continue and not self.continue_sent:
                self.continue_sent = True
                h.conn.send_informational(self.sid, 100)
                h.poke()
            await self._wait_for_data()

    async def _wait_for_data(self) -> None:
        limits = self._h.limits
        floor = self._floor
        if floor is None and limits.min_body_rate_bytes_per_s:
            floor = self._floor = RateFloor(limits.min_body_rate_bytes_per_s,
                                            limits.min_body_rate_window_s)
        now = time.monotonic()
        timeout = limits.body_timeout_s
        if floor is not None:
            timeout = min(timeout, floor.begin_wait(now) - now)
        before = self.received
        self._wakeup = wakeup = self._h.new_event()
        self.in_receive = True
        try:
            with anyio.move_on_after(timeout) as waited:
                await wakeup.wait()
        finally:
            self.in_receive = False
        if waited.cancelled_caught:
            self.failed = RequestTimeout("request body stalled past body_timeout_s")
        if floor is not None and not floor.end_wait(self.received - before, time.monotonic()):
            self.failed = RequestTimeout("request body below min_body_rate")


class H2Shell:
    """One HTTP/2 connection: ``run`` serves its streams until GOAWAY, idle timeout or EOF."""

    def __init__(self, service: Service, stream: anyio.abc.ByteStream, initial: bytes,
                 scheme: str, client: tuple[str, int] | None, local: tuple[str, int] | None,
                 tls: TlsSession | None = None) -> None:
        self.service = service
        self.tls = tls
        self.limits = service.limits
        self.stream = stream
        self.scheme = scheme
        self.client = client
        self.local = local
        self.conn = h2.H2Connection(service.limits, clock=service.clock)
        self.conn.initiate()
        self.initial = initial
        self.new_scope, self.new_event = backend_types()
        self.streams: dict[int, H2Stream] = {}
        # Streams waiting for a send window: their own stream's (woken by its WINDOW_UPDATE),
        # or the connection's (woken one at a time, in order, while it admits bytes: each
        # woken stream passes it on after one frame). One event for all woke every waiting
        # stream at every update, O(streams) per frame: with small client windows (h2's 64 KiB
        # default) many large streams over one connection crawled, and over TLS stalled.
        self._window_waiters: dict[int, anyio.Event] = {}
        self._connection_waiters: dict[int, anyio.Event] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        # Streams to start: (stream, its request event, the Request when already built, the
        # app's answer when it gave one at once but it could not be sent at once).
        self._queue: deque[tuple[H2Stream, h2.StreamRequest, Request | None, Response | None]] = deque()
        self._parked: list[anyio.Event] = []  # the idle workers' wakeups
        self._no_more_streams = False
        self._kick: anyio.Event | None = None  # the sleeping writer's; None while it works
        self._sent: anyio.Event | None = None  # for those waiting on the writer to send
        self._closing = False  # nothing more will be queued: the writer sends the rest, ends
        self._broken = False  # the writer's send failed: the connection is gone
        # The idle deadline (_watch_idle): when a stream was last open, whether one opened
        # since, the reader's scope while it reads, and whether the reader is sending (never
        # cancelled then). The watcher sleeps until _watch_at on _watch_wake; the reader sets it
        # when a frame begun has a deadline earlier than that (read_deadline).
        self._active_at = time.monotonic()
        self._opened = False
        self._idle_scope: anyio.CancelScope | None = None
        self._reader_sending = False
        self._watch_at = 0.0
        self._watch_wake: anyio.Event | None = None

    def poke(self) -> None:
        """Something was queued in the connection: wake the writer (it sends all there is)."""
        kick = self._kick
        if kick is not None:
            self._kick = None
            kick.set()

    async def room(self) -> None:
        """Return once the connection's unsent bytes are under OUTBOUND_HIGH_BYTES."""
        conn = self.conn
        while conn.pending_bytes() >= OUTBOUND_HIGH_BYTES:
            if self._broken:
                raise anyio.BrokenResourceError
            self.poke()
            sent = self._sent
            if sent is None:
                sent = self._sent = self.new_event()
            await sent.wait()
        if self._broken:
            raise anyio.BrokenResourceError

    async def _write_loop(self) -> None:
        conn = self.conn
        # One gathering write of the queued pieces (DATA frames are [header, body view] pairs)
        # where the stream has one; a TLS stream encrypts them joined, in one go.
        send_many = getattr(self.stream, "send_many", None)
        try:
            while True:
                pieces = conn.take_output()
                if pieces:
                    if send_many is not None:
                        await send_many(pieces)
                    else:
                        await self.stream.send(b"".join(pieces))
                    self._wake_senders()
                    continue
                self._wake_senders()
                if self._closing:
                    return
                kick = self._kick = self.new_event()
                await kick.wait()
        except DISCONNECTS:
            # The peer is gone (or the watchdog cut it): nothing more can be sent, so the
            # streams and the reader have nothing left to do.
            self._broken = True
            self._wake_senders()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()

    async def _send_for_writer(self) -> None:
        """What the read queued (the answers given at once, acks), sent by the reader itself
        while the writer sleeps: waking the writer for it cost a task switch, an event set and
        a new one to wait on, per read. The writer's wakeup is held meanwhile (so a stream
        that queues more during the send leaves it to this loop, which sends until nothing
        is queued) and handed back after; a send that fails ends the connection as the
        writer's would."""
        kick = self._kick
        self._kick = None
        conn = self.conn
        send_many = getattr(self.stream, "send_many", None)
        # The idle deadline's cancel waits while this sends (_watch_idle); a send that waits on
        # a peer not reading is ended by the watchdog, as the writer's.
        self._reader_sending = True
        try:
            while True:
                pieces = conn.take_output()
                if not pieces:
                    break
                if send_many is not None:
                    await send_many(pieces)
                else:
                    await self.stream.send(b"".join(pieces))
                self._wake_senders()
        except DISCONNECTS:
            self._broken = True
            self._wake_senders()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
        finally:
            self._reader_sending = False
            self._kick = kick
            if self._closing or conn.pending_bytes():
                self.poke()  # (cancelled mid-send, or closing: the writer takes it from here)

    def _wake_senders(self) -> None:
        sent = self._sent
        if sent is not None:
            self._sent = None
            sent.set()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._write_loop)
                try:
                    async with anyio.create_task_group() as tg:
                        self._tg = tg
                        watch = self.new_scope()
                        tg.start_soon(self._watch_idle, watch)
                        try:
                            await self._read_loop()
                        finally:
                            watch.cancel()
                            for st in list(self.streams.values()):
                                st.abort()
                            self._no_more_streams = True
                            for parked in self._parked:
                                parked.set()
                            self._parked.clear()
                finally:
                    # Every stream is done: GOAWAY, the writer sends what is queued and ends.
                    self.conn.close()
                    self._closing = True
                    self.poke()
        finally:
            # What is left when the writer could not send it (serve() is being cancelled),
            # then close.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(SHUTDOWN_GRACE_S):
                    try:
                        self.conn.close()
                        data = self.conn.data_to_send()
                        if data and not self._broken:
                            await self.stream.send(data)
                    except Exception:
                        pass
                    try:
                        await self.stream.aclose()
                    except Exception:
                        pass

    async def _read_loop(self) -> None:
        conn = self.conn
        if self.initial:
            self._dispatch(conn.receive_data(self.initial))
        self.poke()
        receive = self.stream.receive
        monotonic = time.monotonic
        clock = conn.clock
        self._active_at = monotonic()
        while not conn.closed:
            # One scope per idle period, not one per read (entering a scope with a deadline,
            # a timer armed and cancelled and the backend looked up, cost more than a small
            # request): _watch_idle cancels it at the idle deadline or at the read deadline of
            # a frame begun and not finished.
            full = False
            with self.new_scope() as scope:
                self._idle_scope = scope
                while not conn.closed:
                    try:
                        data = await receive(RECV_BYTES)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError, ssl.SSLError):
                        data = b""
                    self._dispatch(conn.receive_data(data))
                    # Idle is measured from the last stream's end, not from the last byte:
                    # frames that open no stream (PING, SETTINGS, WINDOW_UPDATE) do not keep a
                    # connection open.
                    if self._opened:
                        self._opened = False
                        self._active_at = monotonic()
                    # A frame, header block or preface begun must be read whole by its
                    # deadline, however it trickles in (the sans-IO connection keeps the clock).
                    deadline = conn.read_deadline()
                    if deadline is not None:
                        wake = self._watch_wake
                        if wake is not None and monotonic() + deadline - clock.monotonic() < self._watch_at:
                            wake.set()
                    if (self._kick is not None and not self._closing
                            and conn.pending_bytes() < READER_SENDS_BELOW_BYTES):
                        await self._send_for_writer()
                    else:
                        self.poke()
                    # Answers (PING and SETTINGS acks, refusals) are bounded with what the
                    # streams queue: a peer that does not read stops being read, so they
                    # cannot pile up. (Waited for outside the idle scope.)
                    if conn.pending_bytes() >= OUTBOUND_HIGH_BYTES:
                        full = True
                        break
            self._idle_scope = None
            if scope.cancelled_caught:
                expired = conn.expire()
                if expired:
                    log.info("HTTP/2 client %s: %s", self.client, expired[0].reason)
                    self._dispatch(expired)
                    return  # GOAWAY and close
                if not self.streams and monotonic() - self._active_at >= self.limits.idle_timeout_s:
                    return  # idle: GOAWAY and close
                continue  # (streams still run, or the deadline moved: another period)
            if full:
                try:
                    await self.room()
                except anyio.BrokenResourceError:
                    return  # the writer could not send: the peer is gone

    async def _watch_idle(self, scope: anyio.CancelScope) -> None:
        """Cancel the reader's idle scope once no stream has been open for idle_timeout_s, or
        once a frame, header block or preface begun is past its read deadline
        (``H2Connection.read_deadline``), never while the reader sends (a send cancelled part
        way breaks the connection: a TLS stream that lost a record's tail, a socket's partial
        write); the reader then ends the connection (``expire``) or closes it if idle."""
        idle_s = self.limits.idle_timeout_s
        monotonic = time.monotonic
        conn = self.conn
        clock = conn.clock
        with scope:
            while True:
                now = monotonic()
                if self.streams:
                    self._active_at = now  # not idle while a stream runs
                at = self._active_at + idle_s
                deadline = conn.read_deadline()
                if deadline is not None:
                    at = min(at, now + deadline - clock.monotonic())
                if at > now:
                    self._watch_at = at
                    wake = self._watch_wake = anyio.Event()
                    with anyio.move_on_after(at - now):
                        await wake.wait()  # (set by the reader when a frame begun moves `at`)
                    self._watch_wake = None
                    continue
                if self._reader_sending:
                    await anyio.sleep(min(idle_s, 0.05))  # (ends with the send, or the watchdog)
                    continue
                idle = self._idle_scope
                if idle is not None:
                    idle.cancel()
                # The reader expires or closes the connection, or goes on (a stream opened
                # meanwhile, a clock behind): look again a little later, not in a busy loop.
                await anyio.sleep(0.05)

    def _dispatch(self, events: list[h2.Event]) -> None:
        at_once: list[tuple[H2Stream, h2.StreamRequest]] | None = None
        for ev in events:
            kind = type(ev)
            if kind is h2.StreamData:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.feed(ev.data, ev.flow_controlled_length)  # type: ignore[union-attr]
                else:
                    self.conn.acknowledge(ev.stream_id, ev.flow_controlled_length)  # type: ignore[union-attr]
            elif kind is h2.StreamRequest:
                self._opened = True
                st = H2Stream(self, ev)  # type: ignore[arg-type]
                self.streams[st.sid] = st
                if self.service.answers_now and ev.end_stream:  # type: ignore[union-attr]
                    if at_once is None:
                        at_once = []
                    at_once.append((st, ev))  # type: ignore[arg-type]
                else:
                    self._start(st, ev, None, None)  # type: ignore[arg-type]
            elif kind is h2.StreamEnd:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.end()
            elif kind is h2.StreamReset:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.abort()
            elif kind is h2.WindowOpened:
                if ev.settings:  # type: ignore[union-attr]
                    for waiting in (self._window_waiters, self._connection_waiters):
                        for wakeup in waiting.values():
                            wakeup.set()
                        waiting.clear()
                elif ev.stream_id == 0:  # type: ignore[union-attr]
                    self._pass_window()
                else:
                    wakeup = self._window_waiters.pop(ev.stream_id, None)  # type: ignore[union-attr]
                    if wakeup is not None:
                        wakeup.set()
            elif kind is h2.StreamInvalid:
                st = self.streams.get(ev.stream_id)  # type: ignore[union-attr]
                if st is not None:
                    st.fail(ev.error)  # type: ignore[union-attr]
                else:
                    self._refuse(ev.stream_id, ev.error)  # type: ignore[union-attr]
            elif kind is h2.ConnectionEnded:
                if ev.error_code == H2_ENHANCE_YOUR_CALM:  # type: ignore[union-attr]
                    log.warning("HTTP/2 client %s flooded: GOAWAY(ENHANCE_YOUR_CALM): %s",
                                self.client, ev.reason)  # type: ignore[union-attr]
                    if ev.flood and self.service.on_flood is not None:  # type: ignore[union-attr]
                        self.service.on_flood(self.client, ev.flood)  # type: ignore[union-attr]
                for st in list(self.streams.values()):
                    st.abort()
        if at_once is not None:
            self._answer_at_once(at_once)

    def _start(self, st: H2Stream, req: h2.StreamRequest, request: Request | None,
               answer: Response | None) -> None:
        """Queue the stream for a worker: wake a parked one, or start one."""
        self._queue.append((st, req, request, answer))
        if self._parked:
            self._parked.pop().set()
        else:
            assert self._tg is not None
            self._tg.start_soon(self._worker)

    def _answer_at_once(self, streams: list[tuple[H2Stream, h2.StreamRequest]]) -> None:
        """Requests without a body that the app may answer at once (``Service.answer_now``,
        the edge's warm hits), after the whole read was dispatched (so a stream the same read
        reset is not answered): answered here, HEADERS and DATA queued for the writer, without
        a task, a scope or a wakeup. What cannot be answered so, because the app has no answer
        at once, or its body does not fit the send windows at once, or the queue ahead of the
        socket is full, goes to a worker as ever (with the Request, and the answer if any)."""
        conn = self.conn
        for st, req in streams:
            if st.reset or conn.closed or self._no_more_streams:
                self._start(st, req, None, None)  # (the worker ends it as it ends any reset stream)
                continue
            request = self._request(st, req)
            answer = self.service.answer_now(request)
            if answer is None:
                self._start(st, req, request, None)
                continue
            response = answer[0]
            if conn.pending_bytes() >= OUTBOUND_HIGH_BYTES:
                self._start(st, req, request, response)
                continue
            try:
                # (answer_now's body is bytes; not sent unless all of it fits the windows now)
                sent = conn.send_whole(st.sid, response.status, response.headers, response.body,  # type: ignore[arg-type]
                                       head_request=req.method == "HEAD", prepared=response.prepared)
            except LocalProtocolError:
                sent = False  # (the worker logs it and answers 500)
            if not sent:
                self._start(st, req, request, response)
                continue
            del self.streams[st.sid]
            conn.stream_finished(st.sid)
            if response.on_sent is not None:
                report_sent(response.on_sent, True)  # (all of it is in the outbound queue)

    def _request(self, st: H2Stream, req: h2.StreamRequest) -> Request:
        path, query = split_target(req.target)
        return new_request(req.method, req.target, path, query, Headers.from_lower(req.headers), st, "2",
                           req.scheme or self.scheme, self.client, self.local, req.authority, self.tls)

    def _pass_window(self) -> None:
        """Wake the first stream waiting for the connection's window, if it admits bytes."""
        waiting = self._connection_waiters
        if waiting and self.conn.connection_window() > 0:
            sid = next(iter(waiting))
            waiting.pop(sid).set()

    def _refuse(self, sid: int, error: ProtocolError) -> None:
        resp = error_response(error.http_status)
        body = resp.body
        assert isinstance(body, bytes)
        try:
            self.conn.send_response(sid, resp.status, resp.headers, body_length=len(body))
            self.conn.send_data(sid, body, end_stream=True)
            if not self.conn.request_complete(sid):
                self.conn.reset(sid, H2_NO_ERROR)
        except Exception:
            self.conn.reset(sid, error.h2_error_code)
        self.conn.stream_finished(sid)

    async def _worker(self) -> None:
        """Run queued streams, one at a time; then park for the next, or end.

        Every stream queued wakes a parked worker or starts one, so no stream waits behind
        another's app. Each stream runs in its own cancel scope: a reset ends only that one.
        """
        queue = self._queue
        while True:
            while queue:
                await self._run_stream(*queue.popleft())
            if self._no_more_streams or len(self._parked) >= PARKED_WORKERS:
                return
            wakeup = self.new_event()
            self._parked.append(wakeup)
            await wakeup.wait()

    async def _run_stream(self, st: H2Stream, req: h2.StreamRequest, request: Request | None,
                          answer: Response | None) -> None:
        """Run the app for the stream (unless its ``answer`` is known) and send the response."""
        conn = self.conn
        if request is None:
            request = self._request(st, req)
        # (an answer given at once carries its hook already: a reset before this runs reports it)
        hook: Callable[[bool], None] | None = answer.on_sent if answer is not None else None
        answered = False  # the app's response went out whole (for its on_sent)
        try:
            if st.reset:
                # Reset by the peer before this task ran (a batch of HEADERS + RST_STREAM read in
                # one go, as a rapid-reset flood sends them): nothing to answer, so the app is
                # not called — it could start an upstream fetch before its first checkpoint.
                return
            # One scope for the app and the sending (a reset cancels either): a scope costs
            # about as much as a small app.
            response: Response | None = None
            st.scope = self.new_scope()
            with st.scope:
                response = answer if answer is not None else (await self.service.run_app(request))[0]
                if response is not None:
                    hook = response.on_sent
                if response is not None and not st.reset and st.failed is None:
                    sending, response = response, None  # _write closes its body
                    await self._write(st, req, sending)
                    answered = not st.reset
            if response is not None:
                if st.reset or st.scope.cancelled_caught:
                    await discard_body(response.body)
                else:
                    response = await override_for_broken_body(response, st.failed)
                    st.scope = self.new_scope()
                    with st.scope:
                        await self._write(st, req, response)
        except SendTimeout as e:
            log.info("HTTP/2 stream %d from %s reset: %s", st.sid, self.client, e)
            conn.reset(st.sid, e.h2_error_code)
            st.reset = True
        except DISCONNECTS:
            pass
        except BodyCut as e:
            log.info("HTTP/2 stream %d from %s cut short: %s", st.sid, self.client, e)
            conn.reset(st.sid, e.h2_error_code)
        except Exception:
            log.exception("HTTP/2 stream %d failed", st.sid)
            conn.reset(st.sid, H2_INTERNAL_ERROR)
        finally:
            if hook is not None:
                report_sent(hook, answered)
            self.streams.pop(st.sid, None)
            self._window_waiters.pop(st.sid, None)
            self._connection_waiters.pop(st.sid, None)
            self._pass_window()  # in case it was woken for a window it will not use
            unread = st.discard()
            self._active_at = time.monotonic()
            if not st.reset:
                if not conn.request_complete(st.sid):
                    # Answered before the whole body came: a short rest is let in (and
                    # acknowledged as it arrives, the stream is no longer in self.streams);
                    # otherwise stop the upload with RST_STREAM(NO_ERROR), RFC 9113 8.1.
                    declared = st.content_length
                    if declared is None or declared - st.received >= H2_DRAIN_MAX_BYTES:
                        conn.reset(st.sid, H2_NO_ERROR)
                conn.acknowledge(st.sid, unread)
            conn.stream_finished(st.sid)
            self.poke()

    async def _write(self, st: H2Stream, req: h2.StreamRequest, response: Response) -> None:
        conn = self.conn
        body = response.body
        head_request = req.method == "HEAD"
        if isinstance(body, (bytes, bytearray, memoryview)):
            try:
                ended = conn.send_response(st.sid, response.status, response.headers,
                                           body_length=len(body), head_request=head_request)
            except LocalProtocolError:
                log.exception("unsendable response on stream %d", st.sid)
                return await self._write(st, req, error_response(500))
            if not ended:
                # bytes as is (the frames are views of it until sent); a mutable body copied
                await self._send_data(st, body if type(body) is bytes else bytes(body), end=True)
            else:
                self.poke()
        elif isinstance(body, FileBody):
            try:
                f = OpenFile(body)
            except (OSError, LocalProtocolError):
                log.exception("cannot send %s on stream %d", body.path, st.sid)
                return await self._write(st, req, error_response(500))
            try:
                ended = conn.send_response(st.sid, response.status, response.headers,
                                           body_length=f.length, head_request=head_request)
                if not ended:
                    async for chunk in f.chunks():
                        await self._send_data(st, chunk)
                    await self._send_data(st, b"", end=True)
                else:
                    self.poke()
            finally:
                f.close()
        else:
            try:
                ended = conn.send_response(st.sid, response.status, response.headers,
                                           body_length=None, head_request=head_request)
                if not ended:
                    async for chunk in body:
                        if chunk:
                            await self._send_data(st, chunk if type(chunk) is bytes else bytes(chunk))
                    await self._send_data(st, b"", end=True)
                else:
                    self.poke()
            finally:
                await aclose_iterable(body)

    async def _send_data(self, st: H2Stream, data: bytes, *, end: bool = False) -> None:
        """Queue DATA frames within the stream's and the connection's send windows.

        A window that stays shut for send_timeout_s raises SendTimeout (the stream is reset).
        Returns once the frames are queued and what all streams queued is under
        OUTBOUND_HIGH_BYTES (the writer sends it).
        """
        conn = self.conn
        view = memoryview(data)
        shut_since = math.inf  # since when the window has been shut (no progress)
        while True:
            if st.reset:
                raise ClientDisconnected("the client reset the stream")
            if not view:
                if end:
                    conn.end_stream(st.sid)
                    self.poke()
                return
            n = conn.outbound_window(st.sid)
            if n <= 0:
                now = time.monotonic()
                if shut_since == math.inf:
                    shut_since = now
                left = shut_since + self.limits.send_timeout_s - now
                if left <= 0:
                    raise SendTimeout(f"the send window stayed shut for {self.limits.send_timeout_s} s")
                if conn.connection_window() <= 0:
                    waiting = self._connection_waiters
                else:
                    waiting = self._window_waiters
                    self._pass_window()  # the connection's window is for others meanwhile
                wakeup = waiting.get(st.sid)
                if wakeup is None:
                    wakeup = waiting[st.sid] = self.new_event()
                self.poke()
                # Only the time spent waiting for the peer's windows counts toward the floor,
                # so a slow app never makes a client look slow (the bytes sent since the last
                # wait are counted at the end of this one).
                floor = st.send_floor(self.limits)
                if floor is not None:
                    left = min(left, floor.begin_wait(now) - now)
                with anyio.move_on_after(left):
                    await wakeup.wait()
                if waiting.get(st.sid) is wakeup:
                    del waiting[st.sid]
                if floor is not None:
                    if not floor.end_wait(st.sent - st._metered, time.monotonic()):
                        raise SendTimeout("the peer opened its windows slower than min_send_rate")
                    st._metered = st.sent
                continue
            shut_since = math.inf
            queued = conn.send_body(st.sid, view, end_stream=end)
            st.sent += queued
            view = view[queued:]
            last = end and not view
            self.poke()
            if self._connection_waiters:
                self._pass_window()
            if conn.pending_bytes() >= OUTBOUND_HIGH_BYTES:
                await self.room()
            if last:
                return
