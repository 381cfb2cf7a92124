"""The RPC client: many concurrent calls multiplexed over one lazily (re)connected TCP connection.

``call`` may be used from any number of tasks at once. The connection is opened on first use and
re-opened on the first call after it is lost (over the server's Unix socket first when the
client was given one, ``unix_path``, falling back to TCP); calls in flight when it drops get
:class:`Unavailable`. A refused connection raises :class:`Unavailable` at once, a silent peer after
``connect_timeout``. A connection is usable once both ends have proved knowledge of the cluster
secret (:class:`~headwater.rpc.auth.ClientHandshake`), within the call's deadline; a peer that
fails it raises :class:`AuthFailed` (an Unavailable: nothing was sent). Each call has a deadline (``timeout``, else ``default_timeout``) that is also
sent to the server, and a caller that gives up sends CANCEL so the server stops working on it.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable

import anyio
import anyio.abc

from headwater.splice import PipeBuffer

from .auth import HANDSHAKE_TIMEOUT_S, ClientHandshake, ClusterSecret, HandshakeError, HandshakeRefused
from .errors import AuthFailed, BadRequest, DeadlineExceeded, RpcError, Unavailable, from_wire
from .frame import (DEFAULT_MAX_FRAME_BYTES, ERROR, RESPONSE, FrameDecoder, FrameError,
                    FramePayload, cancel_header, encode_frame, request_header)
from .server import DEFAULT_FRAME_TIMEOUT_S, FrameWatch, LogThrottle, Reply
from .stream import RpcStream, connect, connect_unix, receive_into_decoder

__all__ = ["RpcClient", "PendingCall"]

log = logging.getLogger("headwater.rpc")

_NETWORK_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

# A node retrying a peer that refuses it logs why once per peer and reason every 10 s.
_auth_log_throttle = LogThrottle()


class _Pending:
    __slots__ = ("event", "reply", "error", "into_pipe", "on_reply")

    def __init__(self, into_pipe: bool = False, on_reply: Callable[[Reply], Reply] | None = None) -> None:
        self.event = anyio.Event()
        self.reply: Reply | None = None
        self.error: RpcError | None = None
        self.into_pipe = into_pipe  # a large reply payload is wanted as a PipeBuffer
        self.on_reply = on_reply  # see RpcClient.start_call


class _Connection:
    """One TCP connection and the calls waiting on it."""

    __slots__ = ("stream", "send_lock", "pending", "lost", "closed_event", "peer")

    def __init__(self, stream: RpcStream, peer: str):
        self.stream = stream
        self.peer = peer
        # fast_acquire: an uncontended send does not yield to the loop on the way in; the call
        # yields anyway while it waits for its reply (one loop pass less per call).
        self.send_lock = anyio.Lock(fast_acquire=True)
        self.pending: dict[int, _Pending] = {}
        self.lost: str | None = None  # why the connection is unusable, once it is
        self.closed_event = anyio.Event()

    def fail(self, reason: str) -> None:
        """Mark lost and wake every waiting call with Unavailable."""
        if self.lost is None:
            self.lost = reason
        for p in self.pending.values():
            if p.reply is None and p.error is None:
                p.error = Unavailable(f"connection to {self.peer} lost: {self.lost}", peer=self.peer)
                p.event.set()
        self.pending.clear()


class RpcClient:
    """A client for one :class:`~headwater.rpc.server.RpcServer` address.

    Use as ``async with RpcClient(host, port) as c: reply = await c.call("m", {...}, payload)``.
    ``unix_path``: the server's Unix socket on this host (:meth:`RpcServer.serve_unix`), tried
    before host:port at each connect; where it is missing or refuses, TCP is used.
    """

    def __init__(self, host: str, port: int, *, secret: ClusterSecret, connect_timeout: float = 3.0,
                 default_timeout: float = 30.0, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S, unix_path: str | None = None):
        if not isinstance(secret, ClusterSecret):
            raise TypeError("RpcClient needs the cluster secret (headwater.rpc.auth.cluster_secret(cfg))")
        self.secret = secret
        self.frame_timeout_s = frame_timeout_s
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self.max_frame_bytes = max_frame_bytes
        self._peer = f"{host}:{port}"
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None
        self._connect_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self.counters = {"calls": 0, "errors": 0, "connects": 0, "unix_connects": 0, "bytes_out": 0,
                         "bytes_in": 0, "auth_failures": 0}

    def __repr__(self) -> str:
        return f"RpcClient({self._peer!r})"

    async def __aenter__(self) -> RpcClient:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._closed = False
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg, self._tg = self._tg, None
        await self.aclose()
        if tg is None:
            return None
        tg.cancel_scope.cancel()
        return await tg.__aexit__(*exc_info)

    async def aclose(self) -> None:
        """Close the connection; calls in flight get Unavailable. Further calls raise Unavailable."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail("client closed")
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(conn.stream)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.lost is None

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "in_flight": len(self._conn.pending) if self._conn else 0}

    # --- calls ---------------------------------------------------------------------------------

    async def call(self, method: str, args: dict | None = None,
                   payload: FramePayload = b"", *,
                   timeout: float | None = None) -> Reply:
        """Call ``method`` and return its :class:`Reply`; raises the server's typed error,
        :class:`DeadlineExceeded` after ``timeout`` seconds, :class:`Unavailable` if the peer
        cannot be reached or the connection drops."""
        if timeout is None:
            timeout = self.default_timeout
        self.counters["calls"] += 1
        rid = next(self._ids)
        deadline = anyio.current_time() + timeout
        pending: _Pending | None = None
        conn: _Connection | None = None
        sent = False
        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                conn = await self._connection(deadline)
                remaining = deadline - anyio.current_time()
                try:
                    header = request_header(rid, method, args, max(0.0, remaining))
                    buffers = encode_frame(header, payload, max_frame_bytes=self.max_frame_bytes)
                except (FrameError, TypeError, ValueError, OverflowError) as e:
                    raise BadRequest(str(e), method=method) from None
                pending = _Pending()
                conn.pending[rid] = pending
                await self._send(conn, buffers, deadline)
                sent = True
                await pending.event.wait()
            if scope.cancelled_caught and not pending_done(pending):
                raise DeadlineExceeded(f"{method} to {self._peer} took longer than {timeout:g}s",
                                       peer=self._peer, method=method)
        except BaseException:
            self.counters["errors"] += 1
            if sent and conn is not None and not pending_done(pending) and conn.lost is None:
                # We gave up (deadline or our own cancellation): tell the server to stop.
                await self._send_cancel(conn, rid)
            raise
        finally:
            if conn is not None:
                conn.pending.pop(rid, None)
        assert pending is not None
        if pending.error is not None:
            self.counters["errors"] += 1
            raise pending.error
        assert pending.reply is not None
        return pending.reply

    async def start_call(self, method: str, args: dict | None = None,
                         payload: FramePayload = b"", *,
                         timeout: float | None = None, into_pipe: bool = False,
                         on_reply: Callable[[Reply], Reply] | None = None) -> PendingCall:
        """Send a request now and collect its reply later with ``await pending.result()``.

        This lets a caller keep several requests in flight from one task (a GET prefetching the
        next stripes while it streams the current ones) without spawning tasks. A caller that
        no longer wants the reply calls ``pending.discard()``.

        ``into_pipe``: a reply payload of 64 KiB or more comes as a
        :class:`~headwater.splice.PipeBuffer` (spliced from the socket, never in this process's
        memory), to be sent on with splice; smaller ones as bytes, as always.

        ``on_reply``: called by the connection's reader with the reply as soon as it is whole
        (its payload just received, still in the CPU's caches: a caller that checks the bytes
        checks them there, not once they have been pushed out by later replies); what it
        returns is what ``result()`` gives, and an RpcError it raises is the call's error.
        """
        if timeout is None:
            timeout = self.default_timeout
        self.counters["calls"] += 1
        rid = next(self._ids)
        deadline = anyio.current_time() + timeout
        with anyio.CancelScope(deadline=deadline) as scope:
            conn = await self._connection(deadline)
            try:
                header = request_header(rid, method, args, max(0.0, deadline - anyio.current_time()))
                buffers = encode_frame(header, payload, max_frame_bytes=self.max_frame_bytes)
            except (FrameError, TypeError, ValueError, OverflowError) as e:
                raise BadRequest(str(e), method=method) from None
            pending = _Pending(into_pipe, on_reply)
            conn.pending[rid] = pending
            try:
                await self._send(conn, buffers, deadline)
            except BaseException:
                conn.pending.pop(rid, None)
                self.counters["errors"] += 1
                raise
        if scope.cancelled_caught:
            conn.pending.pop(rid, None)
            self.counters["errors"] += 1
            raise DeadlineExceeded(f"{method} to {self._peer} took longer than {timeout:g}s",
                                   peer=self._peer, method=method)
        return PendingCall(self, conn, rid, pending, deadline, method, timeout)

    async def _send(self, conn: _Connection, buffers: list, deadline: float) -> None:
        async with conn.send_lock:  # waiting for the lock is cancellable
            if conn.lost is not None:
                raise Unavailable(f"connection to {self._peer} lost: {conn.lost}", peer=self._peer)
            try:
                # Nearly every frame goes out at once: no scope is needed for what does not wait.
                rest = conn.stream.send_nowait(buffers)
                if rest:
                    # Once started, a frame is written whole: shield it, and if the deadline
                    # passes mid-frame the connection cannot be reused, so it is dropped.
                    with anyio.CancelScope(shield=True, deadline=deadline) as scope:
                        await conn.stream.send_buffers(rest)
                    if scope.cancelled_caught:
                        self._lose(conn, "deadline passed mid-frame")
                        raise DeadlineExceeded(f"sending to {self._peer} did not finish before the deadline",
                                               peer=self._peer)
            except _NETWORK_ERRORS as e:
                self._lose(conn, f"send failed: {e!r}")
                raise Unavailable(f"connection to {self._peer} lost while sending", peer=self._peer) from None
            self.counters["bytes_out"] += sum(len(b) for b in buffers)

    async def _send_cancel(self, conn: _Connection, rid: int) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await self._send(conn, encode_frame(cancel_header(rid)), anyio.current_time() + 1.0)
            except RpcError:
                pass

    # --- connection ----------------------------------------------------------------------------

    async def _connection(self, deadline: float) -> _Connection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        if self._closed:
            raise Unavailable(f"client for {self._peer} is closed", peer=self._peer)
        if self._tg is None:
            raise RuntimeError("RpcClient must be used as `async with RpcClient(...) as client`")
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.lost is None:
                return conn
            budget = max(0.0, min(self.connect_timeout, deadline - anyio.current_time()))
            try:
                with anyio.fail_after(budget):
                    stream = await self._open()
            except TimeoutError:
                if anyio.current_time() >= deadline:
                    raise DeadlineExceeded(f"connecting to {self._peer} took past the deadline",
                                           peer=self._peer) from None
                raise Unavailable(f"connecting to {self._peer} timed out after {self.connect_timeout:g}s",
                                  peer=self._peer, sent=False) from None
            except OSError as e:
                raise Unavailable(f"cannot connect to {self._peer}: {e.strerror or e}",
                                  peer=self._peer, sent=False) from None
            # The handshake needs the server's event loop (the kernel accepted the connection), so
            # a busy peer may take longer than connect_timeout: it has the call's deadline, and
            # at most as long as the server would wait for it.
            budget = max(0.0, min(HANDSHAKE_TIMEOUT_S, deadline - anyio.current_time()))
            try:
                with anyio.fail_after(budget):
                    early = await self._authenticate(stream)
            except TimeoutError:
                await anyio.aclose_forcefully(stream)
                if anyio.current_time() >= deadline:
                    raise DeadlineExceeded(f"authenticating with {self._peer} took past the deadline",
                                           peer=self._peer) from None
                raise Unavailable(f"{self._peer} did not complete authentication in {budget:g}s",
                                  peer=self._peer, sent=False) from None
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
            conn = _Connection(stream, self._peer)
            if self._closed:
                await anyio.aclose_forcefully(stream)
                raise Unavailable(f"client for {self._peer} is closed", peer=self._peer)
            self._conn = conn
            self.counters["connects"] += 1
            self._tg.start_soon(self._reader, conn, early)
            return conn

    async def _open(self) -> RpcStream:
        """A new connection: the Unix socket if there is one to try and it answers, else TCP."""
        if self.unix_path is not None:
            try:
                stream = connect_unix(self.unix_path)
            except OSError:
                pass  # not there (another host's path, a node not started), or refusing
            else:
                self.counters["unix_connects"] += 1
                return stream
        return await connect(self.host, self.port)

    async def _authenticate(self, stream: RpcStream) -> bytes:
        """Prove the secret to the server and check its proof; the bytes that followed (if any).

        Raises AuthFailed (after telling the server why, when this side refused it), or
        Unavailable if the connection drops midway."""
        hs = ClientHandshake(self.secret)
        failure: HandshakeError | None = None
        try:
            await stream.send(hs.data_to_send())
            while not hs.established and failure is None:
                data = await stream.receive(hs.wanted())
                try:
                    hs.receive_data(data)
                except HandshakeError as e:
                    failure = e
                out = hs.data_to_send()
                if out:
                    await stream.send(out)
        except _NETWORK_ERRORS as e:
            if failure is None:
                await anyio.aclose_forcefully(stream)
                raise Unavailable(f"{self._peer} closed the connection during authentication ({e!r}): "
                                  "is it a headwater RPC port?", peer=self._peer, sent=False) from None
        if failure is not None:
            await anyio.aclose_forcefully(stream)
            self.counters["auth_failures"] += 1
            if isinstance(failure, HandshakeRefused):
                why = f"{self._peer} refused this node: {failure.reason}"
            else:
                why = f"{self._peer} failed authentication: {failure.reason}"
            held = _auth_log_throttle.allow((self._peer, failure.reason))
            if held is not None:
                log.warning("rpc: %s%s", why, f" ({held} more like it held back)" if held else "")
            raise AuthFailed(why, peer=self._peer, sent=False)
        return hs.unused_data()

    def _lose(self, conn: _Connection, reason: str) -> None:
        conn.fail(reason)
        if self._conn is conn:
            self._conn = None
        if self._tg is not None:
            self._tg.start_soon(anyio.aclose_forcefully, conn.stream)

    async def _reader(self, conn: _Connection, early: bytes = b"") -> None:
        decoder = FrameDecoder(max_frame_bytes=self.max_frame_bytes)
        decoder.feed(early)
        pending = conn.pending

        def into_pipe(header: list) -> bool:
            p = pending.get(header[1]) if header[0] == RESPONSE and len(header) > 1 else None
            return p is not None and p.into_pipe

        decoder.into_pipe = into_pipe
        reason = "closed by peer"
        try:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as reading:
                    watch = FrameWatch(self.frame_timeout_s, reading)
                    tg.start_soon(watch.run)
                    try:
                        await self._read_frames(conn, decoder, watch)
                    except anyio.EndOfStream:
                        pass
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                        reason = f"receive failed: {e!r}"
                    except (FrameError, TypeError, ValueError, IndexError) as e:
                        reason = f"bad frame from server: {e}"
                        log.warning("rpc: %s: %s", self._peer, reason)
                tg.cancel_scope.cancel()
            if watch.tripped:
                reason = (f"a reply frame begun {self.frame_timeout_s:g}s ago is still incomplete "
                          f"({decoder.buffered} bytes buffered)")
                log.warning("rpc: %s: %s", self._peer, reason)
        finally:
            conn.fail(reason)
            if self._conn is conn:
                self._conn = None
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(conn.stream)

    async def _read_frames(self, conn: _Connection, decoder: FrameDecoder, watch: FrameWatch) -> None:
        stream = conn.stream
        while conn.lost is None:
            got = False
            while (frame := decoder.next_frame()) is not None:
                got = True
                h = frame.header
                kind = h[0]
                p = conn.pending.get(h[1]) if len(h) > 1 else None
                if p is None:
                    if type(frame.payload) is PipeBuffer:
                        frame.payload.close()
                    continue  # a reply for a call that already gave up
                if kind == RESPONSE and len(h) >= 3:
                    if p.on_reply is None:
                        p.reply = Reply(h[2], frame.payload)
                    else:
                        try:
                            p.reply = p.on_reply(Reply(h[2], frame.payload))
                        except RpcError as e:
                            p.error = e
                elif kind == ERROR and len(h) >= 5:
                    p.error = from_wire(h[2], h[3], h[4])
                else:
                    continue
                del conn.pending[h[1]]
                p.event.set()
            if got:
                watch.completed(decoder.buffered)
            else:
                watch.partial(decoder.buffered)
            self.counters["bytes_in"] += await receive_into_decoder(stream, decoder)


def pending_done(p: _Pending | None) -> bool:
    return p is not None and (p.reply is not None or p.error is not None)


class PendingCall:
    """A request already on the wire (from ``RpcClient.start_call``) whose reply is awaited later."""

    __slots__ = ("_client", "_conn", "_rid", "_pending", "_deadline", "_method", "_timeout")

    def __init__(self, client: RpcClient, conn: _Connection, rid: int, pending: _Pending, deadline: float,
                 method: str, timeout: float):
        self._client = client
        self._conn = conn
        self._rid = rid
        self._pending = pending
        self._deadline = deadline
        self._method = method
        self._timeout = timeout

    async def result(self) -> Reply:
        """The reply; raises the server's typed error, DeadlineExceeded or Unavailable."""
        client, conn, pending = self._client, self._conn, self._pending
        try:
            with anyio.CancelScope(deadline=self._deadline) as scope:
                await pending.event.wait()
            if scope.cancelled_caught and not pending_done(pending):
                raise DeadlineExceeded(f"{self._method} to {client._peer} took longer than {self._timeout:g}s",
                                       peer=client._peer, method=self._method)
        except BaseException:
            client.counters["errors"] += 1
            if not pending_done(pending) and conn.lost is None:
                await client._send_cancel(conn, self._rid)
            raise
        finally:
            conn.pending.pop(self._rid, None)
        if pending.error is not None:
            client.counters["errors"] += 1
            raise pending.error
        assert pending.reply is not None
        return pending.reply

    def discard(self) -> None:
        """Forget the call: its reply, if it comes, is dropped by the reader."""
        self._conn.pending.pop(self._rid, None)
        reply = self._pending.reply
        if reply is not None and type(reply.payload) is PipeBuffer:
            reply.payload.close()
