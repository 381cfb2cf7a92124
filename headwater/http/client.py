"""A thin HTTP/1.1 client on anyio: keep-alive connection pools around the sans-IO
:class:`~headwater.http.client_h1.H1ClientConnection`.

One :class:`HttpClient` per process keeps a pool per origin (scheme, host, port):

- at most ``max_connections_per_origin`` connections in use at once (a request waits for a free
  one no longer than the connect timeout), at most ``max_idle_per_origin`` kept idle, each for at
  most ``idle_timeout_s``; an idle connection the server has closed (or sent anything on) is
  noticed before it is reused (a poll of its socket) and dropped;
- a request on a reused connection that fails before any byte of its response arrived (the
  server closed it in the meantime) is retried once on a fresh connection when its method is
  idempotent; nothing else is retried;
- TLS for ``https`` origins with the system's CAs or a configured CA file
  (:func:`client_ssl_context`), the origin's name checked against its certificate;
- every connect bounded by ``connect_timeout_s`` and every read by the read timeout (with
  :meth:`HttpClient.run` running, as deadline stamps a watchdog enforces every tick, as the
  server core does: a cancel scope per read costs more than the rest of a 1 KiB fetch; without
  it, a cancel scope per read):
  :class:`~headwater.http.errors.ResponseTimeout`; no connection, or one lost before the
  response: :class:`~headwater.http.errors.ConnectFailed`; a response that breaks HTTP (bad head,
  bad chunk, short or long body, connection lost mid-body):
  :class:`~headwater.http.errors.BadResponse`.

``request`` returns once the response head is in (:class:`ClientResponse`); the body is read as
it arrives with ``receive`` / ``chunks``, one socket read per call, so a slow consumer slows the
server (backpressure) rather than filling memory. A response's connection goes back to the pool
as soon as its body ends; ``aclose`` a response in every case (a response closed before its end
closes its connection).
"""

from __future__ import annotations

import ipaddress
import math
import os
import select
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable, NoReturn
from urllib.parse import urlsplit

import anyio
import sniffio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from headwater.clock import SYSTEM_CLOCK, Clock
from headwater.config import KiB
from headwater.http.client_h1 import (
    IDEMPOTENT_METHODS,
    NEED_DATA,
    BodyData,
    ClientLimits,
    ConnectionClosed,
    H1ClientConnection,
    Informational,
    ResponseEnd,
    ResponseHead,
    ResponseInvalid,
)
from headwater.http.errors import BadResponse, ConnectFailed, ResponseTimeout
from headwater.http.protocol_stream import ProtocolStream, open_protocol_stream
from headwater.http.transport import SocketStream

__all__ = ["ClientSettings", "HttpClient", "ClientResponse", "PoolStatistics", "client_ssl_context"]

_STREAM_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ssl.SSLError)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """The client's bounds; one per :class:`HttpClient`."""

    connect_timeout_s: float = 2.0
    read_timeout_s: float = 10.0
    """Each read of a response (head or body), and each write of a request."""
    max_connections_per_origin: int = 256
    max_idle_per_origin: int = 32
    idle_timeout_s: float = 30.0
    """Below the keep-alive timeouts servers use (ours 75 s, nginx 75 s, Apache 5 s is shorter:
    its closes are caught by the poll before reuse and by the one retry)."""
    read_bytes: int = 256 * KiB
    limits: ClientLimits = field(default_factory=ClientLimits)


def client_ssl_context(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """TLS 1.2+ client context verifying the server: against ``ca_file`` alone when given (a
    private origin's CA, as nginx's ``proxy_ssl_trusted_certificate``), else the system's CAs.
    Offers only http/1.1 by ALPN."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass(slots=True, kw_only=True)
class PoolStatistics:
    """Counters over the client's life (``HttpClient.statistics()``)."""

    connects: int = 0
    reuses: int = 0
    retries: int = 0
    dropped_idle: int = 0
    idle: int = 0
    active: int = 0


class _Connection:
    __slots__ = ("stream", "transport", "fd", "h1", "idle_since")

    def __init__(self, stream: ByteStream, transport: SocketStream | ProtocolStream, fd: int,
                 h1: H1ClientConnection) -> None:
        self.stream = stream  # the transport, or TLS over it
        self.transport = transport  # where the deadline stamps are
        self.fd = fd
        self.h1 = h1
        self.idle_since = 0.0

    def has_input(self) -> bool:
        """True when the idle connection has anything to read: the server closed it (or broke the
        protocol by talking out of turn). Either way it cannot carry a request."""
        transport = self.transport
        if isinstance(transport, ProtocolStream):
            if transport.has_input:
                return True
        poller = select.poll()
        try:
            poller.register(self.fd, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


async def _close(conn: _Connection, watched: set) -> None:
    watched.discard(conn.transport)
    with anyio.CancelScope(shield=True):
        try:
            await conn.stream.aclose()
        except _STREAM_ERRORS:
            pass


class _Pool:
    """The connections to one origin."""

    __slots__ = ("idle", "slots", "active")

    def __init__(self, max_connections: int) -> None:
        self.idle: deque[_Connection] = deque()
        self.slots = anyio.Semaphore(max_connections)
        self.active = 0


class ClientResponse:
    """A response: status and head now, the body read by :meth:`receive` / :meth:`chunks`."""

    def __init__(self, client: HttpClient, pool: _Pool, conn: _Connection, head: ResponseHead,
                 timeout_s: float) -> None:
        self._client = client
        self._pool = pool
        self._conn: _Connection | None = conn
        self._timeout_s = timeout_s
        self.head = head
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.http_version = head.http_version
        self.content_length = head.content_length
        self.chunked = head.chunked
        self.until_close = head.until_close
        self.trailers: list[tuple[str, str]] = []
        self.received = 0
        self.complete = False

    def header(self, name: str) -> str | None:
        """The first field named ``name`` (lower case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def receive(self) -> bytes:
        """The next piece of the body as it arrives; ``b""`` once it is complete.

        Raises BadResponse for a body cut short or longer than its framing, ResponseTimeout
        when a read takes longer than the timeout."""
        conn = self._conn
        if conn is None:
            if self.complete:
                return b""
            raise BadResponse("the response was closed before its end")
        h1 = conn.h1
        while True:
            ev = h1.next_event()
            if ev is NEED_DATA:
                try:
                    await self._client._read_into(conn, self._timeout_s, mid_body=True)
                except BaseException:  # a timeout, a lost connection, a cancellation: not reusable
                    self._conn = None
                    await self._client._discard(self._pool, conn)
                    raise
                continue
            kind = type(ev)
            if kind is BodyData:
                self.received += len(ev.data)  # type: ignore[union-attr]
                return ev.data  # type: ignore[union-attr]
            if kind is ResponseEnd:
                self.trailers = ev.trailers  # type: ignore[union-attr]
                self.complete = True
                self._conn = None
                await self._client._release(self._pool, conn)
                return b""
            self._conn = None
            await self._client._discard(self._pool, conn)
            if kind is ResponseInvalid:
                raise ev.error  # type: ignore[union-attr]
            raise BadResponse(f"unexpected {kind.__name__} in a response body")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (see :meth:`receive`)."""
        while chunk := await self.receive():
            yield chunk

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (else BadResponse, and the connection closed)."""
        parts: list[bytes] = []
        total = 0
        while chunk := await self.receive():
            total += len(chunk)
            if total > limit:
                await self.aclose()
                raise BadResponse(f"body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Done with the response: a complete one's connection is already back in the pool; one
        closed before its end closes its connection (the rest of the body is never read)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._client._discard(self._pool, conn)


class HttpClient:
    """Keep-alive HTTP/1.1 connections to any number of origins (see the module docstring)."""

    def __init__(self, settings: ClientSettings = ClientSettings(), *, ssl_context: ssl.SSLContext | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self._ssl_context = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._stats = PoolStatistics()
        self._closed = False
        self._watched: set[SocketStream | ProtocolStream] = set()
        self._watchdog_running = False
        shortest = min(settings.connect_timeout_s, settings.read_timeout_s)
        self.tick_s = min(1.0, max(0.02, shortest / 10))

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # built on first use: loading the system CAs takes ~10 ms
            self._ssl_context = client_ssl_context()
        return self._ssl_context

    def statistics(self) -> PoolStatistics:
        """Connections opened, reused, retried and dropped; idle and in use now."""
        s = self._stats
        s.idle = sum(len(p.idle) for p in self._pools.values())
        s.active = sum(p.active for p in self._pools.values())
        return PoolStatistics(**{k: getattr(s, k) for k in PoolStatistics.__slots__})

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]], *, body: bytes = b"",
                      timeout_s: float | None = None) -> ClientResponse:
        """Send the request; return once the final response head is in.

        ``url`` is ``http[s]://host[:port]/target``; ``headers`` must name the Host. Each read
        waits at most ``timeout_s`` (default: the read timeout), the connect at most the connect
        timeout (never longer than ``timeout_s``)."""
        if self._closed:
            raise ConnectFailed("the client is closed")
        scheme, host, port, target = _split(url)
        timeout = self.settings.read_timeout_s if timeout_s is None else timeout_s
        connect_timeout = min(self.settings.connect_timeout_s, timeout)
        headers = list(headers)
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self.settings.max_connections_per_origin)
        try:
            pool.slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(connect_timeout):
                    await pool.slots.acquire()
            except TimeoutError:
                raise ResponseTimeout(f"{host}:{port}: no free connection within {connect_timeout} s") from None
        pool.active += 1
        try:
            for attempt in (0, 1):
                conn = await self._take_idle(pool) if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(scheme, host, port, connect_timeout)
                else:
                    self._stats.reuses += 1
                try:
                    head = await self._exchange(conn, method, target, headers, body, timeout)
                except _StaleConnection as e:
                    await _close(conn, self._watched)
                    if reused and attempt == 0 and method in IDEMPOTENT_METHODS:
                        self._stats.retries += 1
                        continue
                    raise ConnectFailed(f"{host}:{port}: connection lost before the response ({e})") from None
                except BaseException:
                    await _close(conn, self._watched)
                    raise
                return ClientResponse(self, pool, conn, head, timeout)
            raise AssertionError("unreachable")
        except BaseException:
            pool.active -= 1
            pool.slots.release()
            raise

    async def aclose(self) -> None:
        """Close every idle connection; responses still open close theirs when closed."""
        self._closed = True
        for pool in self._pools.values():
            while pool.idle:
                await _close(pool.idle.pop(), self._watched)

    # --- the pool ----------------------------------------------------------------------------

    async def _take_idle(self, pool: _Pool) -> _Connection | None:
        now = self.clock.monotonic()
        idle = pool.idle
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed by now
            if now - conn.idle_since > self.settings.idle_timeout_s or conn.has_input():
                self._stats.dropped_idle += 1
                await _close(conn, self._watched)
                continue
            return conn
        return None

    async def _release(self, pool: _Pool, conn: _Connection) -> None:
        pool.active -= 1
        pool.slots.release()
        h1 = conn.h1
        if not h1.keep_alive or self._closed or len(pool.idle) >= self.settings.max_idle_per_origin:
            await _close(conn, self._watched)
            return
        h1.start_next_cycle()
        now = self.clock.monotonic()
        conn.idle_since = now
        idle = pool.idle
        while idle and now - idle[0].idle_since > self.settings.idle_timeout_s:
            self._stats.dropped_idle += 1
            await _close(idle.popleft(), self._watched)
        idle.append(conn)

    async def _discard(self, pool: _Pool, conn: _Connection) -> None:
        pool.active -= 1
        pool.slots.release()
        await _close(conn, self._watched)

    async def run(self) -> NoReturn:
        """Enforce the read timeouts and stuck sends of every connection, once a ``tick_s``
        (run it in the owner's task group for as long as the client is used). Without it each
        read is bounded by a cancel scope instead, which costs more than the rest of a fetch."""
        self._watchdog_running = True
        try:
            while True:
                await anyio.sleep(self.tick_s)
                now = time.monotonic()
                stalled_before = now - self.settings.read_timeout_s
                for t in self._watched:
                    if t.read_deadline < now:
                        t.expire_read()
                    if t.send_blocked_since < stalled_before:
                        t.abort()
        finally:
            self._watchdog_running = False

    async def _connect(self, scheme: str, host: str, port: int, timeout: float) -> _Connection:
        tls = scheme == "https"
        try:
            with anyio.fail_after(timeout):
                sock = await _open_socket(host, port)
                try:
                    if sniffio.current_async_library() == "asyncio":
                        transport: SocketStream | ProtocolStream = await open_protocol_stream(
                            sock, self.settings.read_timeout_s)
                    else:
                        transport = SocketStream(sock)
                except BaseException:
                    sock.close()
                    raise
                stream: ByteStream = transport
                if tls:
                    try:
                        stream = await TLSStream.wrap(transport, hostname=host, ssl_context=self.ssl_context,
                                                      standard_compatible=False)
                    except BaseException:
                        with anyio.CancelScope(shield=True):
                            await transport.aclose()
                        raise
        except TimeoutError:
            raise ResponseTimeout(f"{host}:{port}: no connection within {timeout} s") from None
        except _STREAM_ERRORS as e:
            raise ConnectFailed(f"{host}:{port}: {type(e).__name__}: {e}") from None
        self._stats.connects += 1
        self._watched.add(transport)
        return _Connection(stream, transport, sock.fileno(), H1ClientConnection(self.settings.limits))

    # --- one exchange ------------------------------------------------------------------------

    async def _exchange(self, conn: _Connection, method: str, target: str, headers: list[tuple[str, str]],
                        body: bytes, timeout: float) -> ResponseHead:
        h1 = conn.h1
        wire = h1.send_request(method, target, headers, body=body)
        try:
            if self._watchdog_running:
                await conn.stream.send(wire)
            else:
                with anyio.fail_after(timeout):
                    await conn.stream.send(wire)
        except TimeoutError:
            raise ResponseTimeout(f"request not taken within {timeout} s") from None
        except _STREAM_ERRORS as e:
            if conn.transport.send_expired:
                raise ResponseTimeout(f"request not taken within {timeout} s") from None
            raise _StaleConnection(f"{type(e).__name__}: {e}") from None
        while True:
            ev = h1.next_event()
            if ev is NEED_DATA:
                await self._read_into(conn, timeout, mid_body=False)
                continue
            kind = type(ev)
            if kind is ResponseHead:
                return ev  # type: ignore[return-value]
            if kind is Informational:
                continue
            if kind is ConnectionClosed:
                raise _StaleConnection("closed by the server")
            if kind is ResponseInvalid:
                raise ev.error  # type: ignore[union-attr]
            raise BadResponse(f"unexpected {kind.__name__} before the response head")

    async def _read_into(self, conn: _Connection, timeout: float, *, mid_body: bool) -> None:
        """One read of the socket into the connection's parser (``b""`` at end of file)."""
        transport = conn.transport
        try:
            if self._watchdog_running:
                transport.read_deadline = time.monotonic() + timeout
                try:
                    data = await conn.stream.receive(self.settings.read_bytes)
                finally:
                    transport.read_deadline = math.inf
            else:
                with anyio.fail_after(timeout):
                    data = await conn.stream.receive(self.settings.read_bytes)
        except anyio.EndOfStream:
            data = b""
        except TimeoutError:
            data = None
        except _STREAM_ERRORS as e:
            if transport.read_expired:
                data = None
            elif not conn.h1.response_started:
                raise _StaleConnection(f"{type(e).__name__}: {e}") from None
            else:
                raise BadResponse(f"connection lost in the response: {type(e).__name__}: {e}") from None
        if data is None or (not data and transport.read_expired):
            raise ResponseTimeout(f"no data from the server within {timeout} s"
                                  + (" in the middle of the body" if mid_body else ""))
        conn.h1.receive_data(data)


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to ``host`` (each of its addresses in turn)."""
    try:
        ip = ipaddress.ip_address(host)
        addresses = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
    except ValueError:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [(family, addr[:2] if family == socket.AF_INET else addr) for family, _, _, _, addr in infos]
    error: OSError = OSError(f"no address for {host}")
    for family, addr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                sock.connect(addr)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise error


class _StaleConnection(Exception):
    """The connection failed before any byte of the response: safe to retry elsewhere."""


_DEFAULT_PORTS = {"http": 80, "https": 443}
_SPLIT_CACHE: dict[str, tuple[str, str, int]] = {}
_SPLIT_CACHE_MAX = 4096


def _split(url: str) -> tuple[str, str, int, str]:
    """scheme, host, port and request target of ``url`` (the origin part memoised)."""
    start = url.find("://") + 3
    cut = min((i for i in (url.find("/", start), url.find("?", start), url.find("#", start)) if i >= 0),
              default=-1)
    base, target = (url, "/") if cut < 0 else (url[:cut], url[cut:])
    found = _SPLIT_CACHE.get(base)
    if found is None:
        parts = urlsplit(base)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ConnectFailed(f"{url!r}: expected an http:// or https:// URL")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ConnectFailed(f"{url!r}: bad port") from None
        found = (parts.scheme, parts.hostname, port)
        if len(_SPLIT_CACHE) < _SPLIT_CACHE_MAX:
            _SPLIT_CACHE[base] = found
    if "#" in target:
        target = target[:target.index("#")]
    if target.startswith("?"):
        target = "/" + target
    return found[0], found[1], found[2], target
