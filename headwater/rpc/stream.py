"""An RPC connection's byte stream straight over a non-blocking socket (asyncio and trio alike).

Bulk fragment bytes are most of what the object store's RPC carries: a PUT sends each storage
node 1 MiB frames (a header and four 256 KiB blocks), a GET receives them back. Over anyio's
own streams each buffer of a frame was one ``send`` (a checkpoint and a drain wait each), and
each received 256 KiB became a fresh ``bytes`` that the frame decoder then copied once more into
the payload. Here a frame goes out as one ``sendmsg`` of all its buffers (header and block views,
nothing joined), and a large payload is received with ``recv_into`` straight into the buffer the
handler gets (:meth:`FrameDecoder.payload_target <headwater.rpc.frame.FrameDecoder.payload_target>`):
the kernel's copy is the only one.

The stream waits for readiness only when the socket has nothing to give or take (as the HTTP
core's ``SocketStream``), and yields to the scheduler every few operations that did not block,
so one fast peer cannot starve the others. ``aclose`` wakes a task waiting on the socket
(``anyio.notify_closing``) before closing it.

On asyncio the wait to read is :class:`_Readable`: the socket stays registered with the loop
while a reader keeps coming back (``anyio.wait_readable`` registered and removed it for every
wait: two ``epoll_ctl`` and its own event each time, once per reply a gateway's metadata call
waits for, and per request on the node), and after a small receive that drained the socket (a
reply or request frame) the next one waits first instead of trying a ``recv`` bound to fail
(the registration is level-triggered, so bytes that came meanwhile are seen at once). Trio
keeps ``anyio.wait_readable``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from typing import Any, Callable, Mapping, Sequence

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio
from anyio.abc import SocketAttribute

from headwater.http.transport import bind_socket
from headwater.splice import PipeBuffer

from .frame import FileRange, FrameDecoder

__all__ = ["RpcStream", "connect", "connect_unix", "listen", "listen_unix", "accept"]

_IMMEDIATE_OPS_PER_CHECKPOINT = 16
# Linux takes at most IOV_MAX (1024) buffers per sendmsg.
_MAX_BUFFERS = 1024
_IN_PROGRESS = {errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY}
UNIX_SEND_BUFFER_BYTES = 4 * 1024 * 1024


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _unix_send_buffer(sock: socket.socket) -> None:
    """A connected Unix socket's send buffer is all it queues (net.core.wmem_default, ~208 KiB,
    where TCP grows its own up to tcp_wmem's 4 MiB): a 1 MiB frame went out in five sendmsg calls
    and woke the receiver three times. The kernel caps this at net.core.wmem_max."""
    if sock.family == socket.AF_UNIX:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER_BYTES)
        except OSError:
            pass


class _Readable:
    """Readability of one socket on an asyncio loop, registered with the loop once rather than
    per wait. Level-triggered: when it fires with nobody waiting, it unregisters (else it would
    fire on every pass of the loop until someone reads); the next wait registers it again."""

    __slots__ = ("_loop", "_fd", "_waiter", "_registered")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int):
        self._loop = loop
        self._fd = fd
        self._waiter: asyncio.Future[None] | None = None
        self._registered = False

    def _fire(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            self._loop.remove_reader(self._fd)
            self._registered = False
        elif not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        if not self._registered:
            self._loop.add_reader(self._fd, self._fire)
            self._registered = True
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def close(self) -> None:
        """Unregister (before the socket closes) and wake a waiter."""
        if self._registered:
            self._registered = False
            self._loop.remove_reader(self._fd)
        self._fire()


class RpcStream(anyio.abc.ByteStream):
    """A connected TCP (or Unix) socket as an anyio byte stream, plus ``send_buffers`` and
    ``receive_into``."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        _nodelay(sock)
        self._sock = sock
        self._immediate = 0
        self._closed = False
        # The asyncio wait to read (see the module docstring); None on trio, or before the
        # first wait tells which loop runs.
        self._readable: _Readable | None = None
        self._asyncio: bool | None = None
        # The last receive took less than it asked for: the socket is most likely drained.
        self._drained = False

    async def _wait_readable(self) -> None:
        if self._asyncio is None:
            self._asyncio = sniffio.current_async_library() == "asyncio"
            if self._asyncio:
                self._readable = _Readable(asyncio.get_running_loop(), self._sock.fileno())
        readable = self._readable
        if readable is None:
            await self._wait(anyio.wait_readable)
            return
        self._immediate = 0
        await readable.wait()
        self._check_open()

    async def _fairness(self) -> None:
        self._immediate += 1
        if self._immediate >= _IMMEDIATE_OPS_PER_CHECKPOINT:
            self._immediate = 0
            await anyio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    async def _wait(self, wait: Callable[[socket.socket], Any]) -> None:
        self._immediate = 0
        try:
            await wait(self._sock)
        except (OSError, ValueError) as e:  # closed under us: the descriptor is gone
            self._check_open()
            raise anyio.BrokenResourceError from e
        self._check_open()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self._check_open()
        sock = self._sock
        if self._drained and self._readable is not None:
            await self._wait_readable()
        while True:
            try:
                data = sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()
                continue
            except OSError as e:
                self._check_open()
                raise anyio.BrokenResourceError from e
            if not data:
                raise anyio.EndOfStream
            self._drained = len(data) < max_bytes
            if not self._drained:
                await self._fairness()
            return data

    async def receive_into(self, target: memoryview) -> int:
        """Receive at most ``len(target)`` bytes into ``target``; how many came (never 0).

        Bulk payloads: a short read here is the kernel's buffer running dry while the peer is
        still sending, so the next ``recv`` is tried before waiting (unlike ``receive``)."""
        self._check_open()
        sock = self._sock
        while True:
            try:
                n = sock.recv_into(target)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()
                continue
            except OSError as e:
                self._check_open()
                raise anyio.BrokenResourceError from e
            if not n:
                raise anyio.EndOfStream
            await self._fairness()
            return n

    async def receive_into_pipe(self, target: PipeBuffer) -> int:
        """Splice the next bytes of ``target``'s payload from the socket into its pipes; how many
        came (never 0). As ``receive_into``, a short splice tries again before waiting."""
        self._check_open()
        fd = self._sock.fileno()
        while True:
            try:
                n = target.fill_from(fd)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()
                continue
            except OSError as e:
                self._check_open()
                raise anyio.BrokenResourceError from e
            if not n:
                raise anyio.EndOfStream
            await self._fairness()
            return n

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        await self.send_buffers([item])

    async def send_buffers(self, buffers: Sequence[bytes | bytearray | memoryview | FileRange]) -> None:
        """Send every buffer, in order, back to back: one ``sendmsg`` while the kernel takes them
        (a :class:`~headwater.rpc.frame.FileRange` by ``os.sendfile``)."""
        views = self.send_nowait(buffers)
        while views:
            await self._wait(anyio.wait_writable)
            views = self.send_nowait(views)
        await self._fairness()

    def send_nowait(self, buffers: Sequence[bytes | bytearray | memoryview | FileRange]) -> list:
        """Send as much of ``buffers`` as the kernel takes now, in order, without waiting; the
        views (and file ranges) left unsent (empty when everything went). For a caller that only
        needs a wait, and the cancel scope around it, when the socket's buffer is full."""
        self._check_open()
        sock = self._sock
        views = [b if isinstance(b, (memoryview, FileRange)) else memoryview(b) for b in buffers if len(b)]
        while views:
            head = views[0]
            if isinstance(head, FileRange):
                try:
                    n = os.sendfile(sock.fileno(), head.fd, head.offset, head.count)
                except (BlockingIOError, InterruptedError):
                    return views
                except OSError as e:
                    self._check_open()
                    raise anyio.BrokenResourceError from e
                if n == 0:  # the file ends before the range: the frame can never be completed
                    raise anyio.BrokenResourceError(f"{head!r} is past the end of its file")
                if head.advance(n):
                    del views[0]
                continue
            end = 1
            while end < len(views) and end < _MAX_BUFFERS and not isinstance(views[end], FileRange):
                end += 1
            try:
                # MSG_MORE before a file range: on TCP the header shares a segment with its bytes.
                n = sock.sendmsg(views[:end], (), socket.MSG_MORE if end < len(views) else 0)
            except (BlockingIOError, InterruptedError):
                return views
            except OSError as e:
                self._check_open()
                raise anyio.BrokenResourceError from e
            # Drop what went out: whole buffers, then the front of a partly sent one.
            i = 0
            while i < len(views) and n >= len(views[i]):
                n -= len(views[i])
                i += 1
            del views[:i]
            if n:
                views[0] = views[0][n:]
        return views

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._readable is not None:
                self._readable.close()
            try:
                anyio.notify_closing(self._sock)
            except RuntimeError:  # pragma: no cover - no event loop (closing at interpreter exit)
                pass
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        return {
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: sock.getsockname,
            SocketAttribute.remote_address: sock.getpeername,
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_port: lambda: sock.getpeername()[1],
        }


async def connect(host: str, port: int) -> RpcStream:
    """A TCP connection to host:port (the first address that answers), as an :class:`RpcStream`.
    Raises OSError as ``anyio.connect_tcp`` does; cancellable (wrap it in a deadline)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err and err not in _IN_PROGRESS:
                raise OSError(err, os.strerror(err))
            if err:
                await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
        except OSError as e:
            sock.close()
            last = e
            continue
        except BaseException:
            sock.close()
            raise
        return RpcStream(sock)
    raise last if last is not None else OSError(f"no address for {host}:{port}")


def connect_unix(path: str | os.PathLike[str]) -> RpcStream:
    """A connection to the Unix stream socket at ``path`` (a server on this host, see
    :func:`listen_unix`). A Unix connect completes at once or fails at once (EAGAIN when the
    listener's backlog is full): raises OSError, and the caller falls back to TCP."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        _unix_send_buffer(sock)
        sock.connect(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    return RpcStream(sock)


def listen_unix(path: str | os.PathLike[str], *, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking Unix stream socket at ``path`` for :func:`accept`,
    readable and writable by this user alone (a peer still has to pass the cluster-secret
    handshake). A socket file left there by an earlier run is replaced; any other file is not
    (OSError). Raises OSError where the path is too long for a socket address (108 bytes)."""
    path = os.fspath(path)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket for :func:`accept` (the HTTP core's, as its
    servers bind theirs: SO_REUSEADDR, and SO_REUSEPORT for workers sharing the port)."""
    return bind_socket(host, port, reuse_port=reuse_port, backlog=backlog)


async def accept(listener: socket.socket) -> RpcStream:
    """The next connection on ``listener`` (from :func:`listen`)."""
    while True:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            await anyio.wait_readable(listener)
            continue
        except OSError as e:
            if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                continue  # reset before we took it: the next one
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                await anyio.sleep(0.1)  # out of descriptors or memory: wait for some to be freed
                continue
            raise
        _unix_send_buffer(sock)
        return RpcStream(sock)


#: How much a plain receive may take when no large payload is in progress.
RECEIVE_BYTES = 256 * 1024


async def receive_into_decoder(stream: RpcStream, decoder: FrameDecoder) -> int:
    """Receive the next bytes of ``decoder``'s frames from ``stream``; returns how many came.

    A large payload in progress (fragment blocks) is received in place, into the buffer its
    handler gets; otherwise the frame in progress and a little more are received and fed.
    """
    target = decoder.payload_target()
    if target is not None:
        if type(target) is PipeBuffer:
            n = await stream.receive_into_pipe(target)
        else:
            n = await stream.receive_into(target)
        decoder.filled(n)
        return n
    data = await stream.receive(decoder.receive_size(RECEIVE_BYTES))
    decoder.feed(data)
    return len(data)
