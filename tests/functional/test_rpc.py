"""The RPC client and server over real loopback sockets, on asyncio(+uvloop) and trio."""

from __future__ import annotations

import os
import random
import socket
import struct

import anyio
import pytest

from anyio.abc import SocketAttribute

from headwater.rpc import (AuthFailed, BadRequest, ClusterSecret, DeadlineExceeded, NoSuchMethod, RemoteError, Reply,
                           RpcClient, RpcError, RpcServer, Unavailable, register_error)
from headwater.rpc.stream import UNIX_SEND_BUFFER_BYTES, listen_unix

pytestmark = pytest.mark.anyio

SECRET = ClusterSecret.from_secret("test", os.urandom(32))


@register_error
class QuotaExceeded(RpcError):
    code = "test_quota_exceeded"


def make_server() -> tuple[RpcServer, dict]:
    srv = RpcServer("test", secret=SECRET)
    seen: dict = {"cancelled": 0}

    async def echo(args, payload):
        return Reply({"args": args, "n": len(payload)}, payload)

    async def sleep(args, payload):
        try:
            await anyio.sleep(args.get("s", 0))
        except anyio.get_cancelled_exc_class():
            seen["cancelled"] += 1
            raise
        return args.get("tag")

    async def blob(args, payload):
        return Reply(None, os.urandom(16) * (args["n"] // 16))

    async def quota(args, payload):
        raise QuotaExceeded("over quota", used=args["used"], limit=10)

    async def boom(args, payload):
        raise ValueError("kaput")

    async def bad(args, payload):
        raise BadRequest("nope", field="x")

    async def unpackable(args, payload):
        return object()

    for name, h in [("echo", echo), ("sleep", sleep), ("blob", blob), ("quota", quota),
                    ("boom", boom), ("bad", bad), ("unpackable", unpackable)]:
        srv.add(name, h)
    return srv, seen


async def start(tg, srv: RpcServer, port: int = 0) -> int:
    return await tg.start(srv.serve, "127.0.0.1", port)


async def test_round_trip(anyio_backend):
    srv, _ = make_server()
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            r = await c.call("echo", {"a": 1, "b": [1, "x"]}, b"hello")
            assert r.result == {"args": {"a": 1, "b": [1, "x"]}, "n": 5}
            assert r.payload == b"hello"
            r = await c.call("echo")
            assert r.result == {"args": {}, "n": 0} and r.payload == b""
            r = await c.call("echo", {}, memoryview(b"abcdef")[1:4])
            assert r.payload == b"bcd"
            assert (await c.call("sleep", {"tag": "plain"})).result == "plain"
        tg.cancel_scope.cancel()


async def test_many_concurrent_calls_are_multiplexed(anyio_backend):
    srv, _ = make_server()
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            results = {}

            async def one(i):
                delay = random.random() * 0.05
                payload = i.to_bytes(4, "big") * (i % 50)
                r = await c.call("sleep", {"s": delay, "tag": i})
                e = await c.call("echo", {"i": i}, payload)
                assert e.payload == payload and e.result["args"] == {"i": i}
                results[i] = r.result

            async with anyio.create_task_group() as calls:
                for i in range(300):
                    calls.start_soon(one, i)
            assert results == {i: i for i in range(300)}
            assert c.counters["connects"] == 1  # one connection carried them all
        tg.cancel_scope.cancel()


async def test_big_payloads_both_ways(anyio_backend):
    srv, _ = make_server()
    big = os.urandom(16 * 1024 * 1024)
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            async with anyio.create_task_group() as calls:
                async def put():
                    r = await c.call("echo", {}, big)
                    assert r.result["n"] == len(big) and r.payload == big

                async def get():
                    r = await c.call("blob", {"n": 16 * 1024 * 1024})
                    assert len(r.payload) == 16 * 1024 * 1024

                for _ in range(2):
                    calls.start_soon(put)
                    calls.start_soon(get)
        tg.cancel_scope.cancel()


async def test_frame_limit(anyio_backend):
    srv, _ = make_server()
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET, max_frame_bytes=1024) as c:
            with pytest.raises(BadRequest):
                await c.call("echo", {}, b"x" * 2000)
            assert (await c.call("echo", {}, b"x" * 100)).result["n"] == 100
        # The server drops a connection whose peer announces an oversized frame, and keeps serving.
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(struct.pack("!II", 2**31, 1))
            await anyio.to_thread.run_sync(lambda: raw.settimeout(5) or raw.recv(1))
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            assert (await c.call("echo", {}, b"ok")).payload == b"ok"
        tg.cancel_scope.cancel()


async def test_deadline_exceeded_and_server_gives_up(anyio_backend):
    srv, seen = make_server()
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            t0 = anyio.current_time()
            with pytest.raises(DeadlineExceeded) as ei:
                await c.call("sleep", {"s": 30}, timeout=0.2)
            assert anyio.current_time() - t0 < 1.0
            assert ei.value.retryable
            with anyio.fail_after(2):
                while seen["cancelled"] < 1:
                    await anyio.sleep(0.01)
            # The connection is still good after a call timed out.
            assert (await c.call("sleep", {"tag": 5}, timeout=2)).result == 5
            # default_timeout applies when no timeout is given.
            c.default_timeout = 0.1
            with pytest.raises(DeadlineExceeded):
                await c.call("sleep", {"s": 30})
        tg.cancel_scope.cancel()


async def test_caller_cancellation_cancels_the_handler(anyio_backend):
    srv, seen = make_server()
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            with anyio.move_on_after(0.2):
                await c.call("sleep", {"s": 30})
            with anyio.fail_after(2):
                while seen["cancelled"] < 1:
                    await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def test_server_down_is_unavailable_fast(anyio_backend):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with RpcClient("127.0.0.1", port, secret=SECRET, connect_timeout=5) as c:
        t0 = anyio.current_time()
        with pytest.raises(Unavailable) as ei:
            await c.call("echo", timeout=10)
        assert anyio.current_time() - t0 < 0.5
        assert ei.value.retryable


async def test_reconnects_after_server_restart(anyio_backend):
    srv, _ = make_server()
    async with RpcClient("127.0.0.1", 1, secret=SECRET) as c:  # port set below
        async with anyio.create_task_group() as tg:
            port = await start(tg, srv)
            c.port = port
            assert (await c.call("echo", {}, b"1")).payload == b"1"

            # A call in flight when the server goes away gets Unavailable.
            async def stop_soon():
                await anyio.sleep(0.1)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_soon)
            with pytest.raises(Unavailable):
                await c.call("sleep", {"s": 30}, timeout=5)
        with pytest.raises(Unavailable):
            await c.call("echo", {}, b"2", timeout=5)

        srv2, _ = make_server()
        async with anyio.create_task_group() as tg:
            await start(tg, srv2, port)
            assert (await c.call("echo", {}, b"3")).payload == b"3"
            assert c.counters["connects"] == 2
            tg.cancel_scope.cancel()


async def test_typed_errors_cross_the_wire(anyio_backend):
    srv, _ = make_server()
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            with pytest.raises(QuotaExceeded) as ei:
                await c.call("quota", {"used": 11})
            assert ei.value.message == "over quota"
            assert ei.value.details == {"used": 11, "limit": 10}
            assert ei.value.code == "test_quota_exceeded"
            with pytest.raises(NoSuchMethod):
                await c.call("missing")
            with pytest.raises(BadRequest) as ei:
                await c.call("bad")
            assert ei.value.details == {"field": "x"}
            with pytest.raises(RemoteError, match="ValueError: kaput"):
                await c.call("boom")
            with pytest.raises(RemoteError, match="cannot be sent"):
                await c.call("unpackable")
            with pytest.raises(BadRequest):
                await c.call("echo", {"x": object()})
            # Errors do not poison the connection.
            assert (await c.call("echo", {}, b"ok")).payload == b"ok"
            assert c.counters["connects"] == 1
        tg.cancel_scope.cancel()


async def test_closed_client_and_missing_context(anyio_backend):
    c = RpcClient("127.0.0.1", 9, secret=SECRET)
    with pytest.raises(RuntimeError, match="async with"):
        await c.call("echo")
    async with RpcClient("127.0.0.1", 9, secret=SECRET) as c2:
        await c2.aclose()
        with pytest.raises(Unavailable):
            await c2.call("echo")


def test_register_error_checks():
    with pytest.raises(TypeError):
        register_error(ValueError)

    class NoCode(RpcError):
        pass

    with pytest.raises(TypeError):
        register_error(NoCode)

    class Clash(RpcError):
        code = "bad_request"

    with pytest.raises(ValueError):
        register_error(Clash)


async def test_a_frame_the_kernel_cannot_take_at_once_is_left_to_send_buffers_in_order():
    from headwater.rpc.stream import RpcStream

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer, reader = RpcStream(a), RpcStream(b)
    data = random.Random(7).randbytes(1 << 20)
    try:
        assert writer.send_nowait([b"", b"small"]) == []  # taken whole, empty buffers skipped
        assert await reader.receive(16) == b"small"
        rest = writer.send_nowait([data[:1000], memoryview(data)[1000:]])
        left = sum(len(v) for v in rest)
        assert 0 < left < len(data)  # the kernel took a part and nothing waited
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(data):
                got.extend(await reader.receive(65536))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await writer.send_buffers(rest)
        assert bytes(got) == data
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_an_at_once_handler_answers_in_the_reader_or_leaves_the_request_to_a_task(anyio_backend):
    """``RpcServer.add(..., at_once=)``: what the at-once function returns or raises is the reply,
    with no task; LATER, a malformed request or a non-numeric deadline go to the task handler,
    which answers or refuses them as it would alone."""
    from headwater.rpc import LATER
    srv = RpcServer("test", secret=SECRET)
    ran = {"now": 0, "task": 0}

    def now(args, payload):
        if args.get("wait"):
            return LATER
        ran["now"] += 1
        if args.get("fail"):
            raise QuotaExceeded("over quota", used=args["fail"], limit=10)
        return Reply({"now": args.get("x")}, payload)

    async def task(args, payload):
        ran["task"] += 1
        await anyio.sleep(0)
        return {"task": args.get("x")}

    srv.add("get", task, at_once=now)
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            r = await c.call("get", {"x": 1}, b"pay")
            assert r.result == {"now": 1} and r.payload == b"pay"
            assert (await c.call("get", {"x": 2, "wait": True})).result == {"task": 2}
            with pytest.raises(QuotaExceeded) as e:
                await c.call("get", {"fail": 11})
            assert e.value.details["used"] == 11
            assert ran == {"now": 2, "task": 1}
            # Replies of both kinds interleave on one connection, each to its caller.
            async with anyio.create_task_group() as calls:
                got: dict[int, object] = {}

                async def one(i: int) -> None:
                    got[i] = (await c.call("get", {"x": i, "wait": i % 2 == 0})).result

                for i in range(40):
                    calls.start_soon(one, i)
            assert got == {i: ({"task": i} if i % 2 == 0 else {"now": i}) for i in range(40)}
            assert srv.statistics()["requests"] == 43
        tg.cancel_scope.cancel()
    # A request whose args are not a map, or whose deadline is not a number, never reaches the
    # at-once function: the task path refuses it.
    from headwater.rpc.client import _Pending
    from headwater.rpc.frame import REQUEST, _packb, encode_frame
    before = ran["now"]
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            conn = await c._connection(anyio.current_time() + 5)
            for rid, args, timeout in ((10_001, [1, 2], 5.0), (10_002, {"x": 1}, "soon")):
                pending = _Pending()
                conn.pending[rid] = pending
                await c._send(conn, encode_frame(_packb([REQUEST, rid, "get", args, timeout])),
                              anyio.current_time() + 5)
                with anyio.fail_after(5):
                    await pending.event.wait()
                assert isinstance(pending.error, BadRequest), pending.error
        tg.cancel_scope.cancel()
    assert ran["now"] == before


async def test_an_rpc_stream_reads_what_comes_after_it_drained_the_socket_and_wakes_on_close(anyio_backend):
    """RpcStream's wait to read (on asyncio, a registration kept with the loop; a receive that
    drained the socket waits before its next recv): bytes sent while nobody waits, or after
    the reader waits, are read; ``aclose`` from another task ends a waiting receive at once."""
    from headwater.rpc.stream import accept, connect, listen
    listener = listen("127.0.0.1", 0)
    try:
        port = listener.getsockname()[1]
        client = await connect("127.0.0.1", port)
        server = await accept(listener)
        async with client, server:
            await client.send(b"one")
            assert await server.receive(100) == b"one"  # short: the socket is drained
            await client.send(b"two")  # arrives while nobody waits
            await anyio.sleep(0.05)
            assert await server.receive(100) == b"two"
            async with anyio.create_task_group() as tg:
                async def later() -> None:
                    await anyio.sleep(0.05)
                    await client.send(b"three")
                tg.start_soon(later)
                with anyio.fail_after(5):
                    assert await server.receive(100) == b"three"
            got: list[type] = []

            async def waiting() -> None:
                try:
                    await server.receive(100)
                except Exception as e:  # noqa: BLE001 - the test looks at which
                    got.append(type(e))

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiting)
                    await anyio.sleep(0.05)
                    await server.aclose()
            assert got == [anyio.ClosedResourceError]
    finally:
        listener.close()


async def test_a_client_given_the_servers_unix_socket_calls_through_it_and_falls_back_to_tcp(anyio_backend, tmp_path):
    srv, _ = make_server()
    path = tmp_path / "rpc.sock"
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        assert await tg.start(srv.serve_unix, path) == str(path)
        assert stat_mode(path) == 0o600  # this user's alone (and the handshake still applies)
        async with RpcClient("127.0.0.1", port, secret=SECRET, unix_path=str(path)) as c:
            r = await c.call("blob", {"n": 4 * 1024 * 1024})
            assert len(r.payload) == 4 * 1024 * 1024
            assert (await c.call("echo", {}, b"x" * 300_000)).result["n"] == 300_000
            assert c.counters["unix_connects"] == 1 and c.counters["connects"] == 1
            assert c._conn is not None and c._conn.stream.extra(SocketAttribute.family) == socket.AF_UNIX
            # Its send buffer grown as far as the kernel lets (it doubles what is asked).
            sock = c._conn.stream.extra(SocketAttribute.raw_socket)
            with open("/proc/sys/net/core/wmem_max") as f:
                cap = int(f.read())
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * min(cap, UNIX_SEND_BUFFER_BYTES)
        # No socket there (a node on another host, not started, or serving TCP alone): TCP.
        async with RpcClient("127.0.0.1", port, secret=SECRET, unix_path=str(tmp_path / "none.sock")) as c:
            assert (await c.call("echo", {}, b"t")).payload == b"t"
            assert c.counters["unix_connects"] == 0
            assert c._conn is not None and c._conn.stream.extra(SocketAttribute.family) == socket.AF_INET
        # A socket file nobody listens on any more (the server stopped without removing it).
        stale = tmp_path / "stale.sock"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(stale))
        async with RpcClient("127.0.0.1", port, secret=SECRET, unix_path=str(stale)) as c:
            assert (await c.call("echo", {}, b"s")).payload == b"s"
            assert c.counters["unix_connects"] == 0
        tg.cancel_scope.cancel()
    assert not path.exists()  # the server removes its socket when it stops


async def test_the_unix_socket_asks_for_the_cluster_secret_as_tcp_does(anyio_backend, tmp_path):
    srv, _ = make_server()
    path = tmp_path / "rpc.sock"
    async with anyio.create_task_group() as tg:
        port = await start(tg, srv)
        await tg.start(srv.serve_unix, path)
        other = ClusterSecret.from_secret("test", os.urandom(32))
        async with RpcClient("127.0.0.1", port, secret=other, unix_path=str(path)) as c:
            with pytest.raises(AuthFailed):
                await c.call("echo", {}, b"x", timeout=5)
            assert c.counters["unix_connects"] == 1
        # Bytes that are no handshake: the connection is dropped, no handler runs.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(struct.pack(">I", 12) + b"not a frame!" * 50)
            s.settimeout(5)
            with anyio.fail_after(10):
                try:
                    while await anyio.to_thread.run_sync(s.recv, 65536):
                        pass
                except ConnectionResetError:
                    pass  # dropped with our bytes unread
        assert srv.counters["requests"] == 0 and srv.counters["auth_refused"] >= 2
        tg.cancel_scope.cancel()


def test_listen_unix_replaces_a_stale_socket_but_not_another_file(tmp_path):
    stale = tmp_path / "rpc.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    listener = listen_unix(stale)
    listener.close()
    other = tmp_path / "data"
    other.write_bytes(b"keep me")
    with pytest.raises(OSError):
        listen_unix(other)
    assert other.read_bytes() == b"keep me"
    with pytest.raises(OSError):  # longer than a socket address can hold
        listen_unix(tmp_path / ("x" * 120))


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o777


async def test_a_file_range_goes_out_from_its_file_in_order_and_its_file_is_closed(tmp_path):
    """A ``FileRange`` among a frame's buffers is sent with sendfile, between the buffers around
    it, in order, also when the kernel takes only part of it at a time; once all of it went its
    descriptor is closed. encode_frame never joins it into a buffer, however small."""
    from headwater.rpc import FileRange
    from headwater.rpc.frame import encode_frame
    from headwater.rpc.stream import RpcStream

    data = random.Random(11).randbytes(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer, reader = RpcStream(a), RpcStream(b)
    fd = os.open(path, os.O_RDONLY)
    lo, hi = 12345, 12345 + (2 << 20)
    try:
        rest = writer.send_nowait([b"head", FileRange(fd, lo, hi - lo), memoryview(b"tail")])
        assert rest and isinstance(rest[0], FileRange) and rest[0].fd == fd  # part went, no wait
        got = bytearray()
        want = b"head" + data[lo:hi] + b"tail"

        async def drain() -> None:
            while len(got) < len(want):
                got.extend(await reader.receive(65536))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await writer.send_buffers(rest)
        assert bytes(got) == want
        with pytest.raises(OSError):
            os.fstat(fd)  # closed by the stream once sent
        small = os.open(path, os.O_RDONLY)
        buffers = encode_frame(b"\x90", FileRange(small, 0, 10))
        assert len(buffers) == 2 and isinstance(buffers[1], FileRange)
        buffers[1].close()
    finally:
        await writer.aclose()
        await reader.aclose()
