"""Authenticated node-to-node RPC over real sockets: outsiders are refused before any call.

The hostile probe of the issue, replayed: a raw socket speaking msgpack frames with no secret, and
a real RpcClient holding another cluster's secret (or another cluster's name), try ``kv.get``,
``kv.write``, ``frag.read`` and ``frag.delete`` against real storage and metadata nodes. Then the
bounds: a silent peer, an oversized frame before authentication, a frame trickled byte by byte.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from pathlib import Path

import anyio
import msgpack
import pytest

from headwater.objstore.metadata.errors import QuorumUnavailable, WriteOutcomeUnknown
from headwater.objstore.metadata.partition import PartitionMap
from headwater.rpc import AuthFailed, ClusterSecret, Reply, RpcClient, RpcServer, cluster_secret
from headwater.rpc import auth
from headwater.rpc.frame import PREFIX_BYTES, FrameDecoder, encode_frame, request_header
from tests.cluster import TEST_SECRET_ENV

from .test_metadata import meta_cluster, settle
from .test_storage_node import start as start_storage

pytestmark = pytest.mark.anyio

OTHER_SECRET_ENV = "HEADWATER_TEST_OTHER_CLUSTER_SECRET"


def outsiders(name: str) -> dict[str, ClusterSecret]:
    """Secrets that must all be refused: another cluster's secret, and ours under another name."""
    ours = os.environ[TEST_SECRET_ENV].encode()
    return {"other secret": ClusterSecret.from_secret(name, os.urandom(32)),
            "other cluster name": ClusterSecret.from_secret(name + "-elsewhere", ours)}


async def raw_call(port: int, method: str, args: dict, payload: bytes = b"") -> tuple[list, bytes]:
    """What the issue's hostile probe did: connect and send a REQUEST frame straight away.
    Returns the frames the server sent back, and whether it then closed (b"" at the end)."""
    frames: list = []
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        for buf in encode_frame(request_header(1, method, args, 5.0), payload):
            await s.send(bytes(buf))
        decoder = FrameDecoder()
        with anyio.fail_after(10):
            while True:
                try:
                    data = await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return frames, b""
                decoder.feed(data)
                while (f := decoder.next_frame()) is not None:
                    frames.append(f.header)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(frames: list) -> None:
    """Only a REFUSED frame came back, never a RESPONSE or ERROR to the call."""
    assert [f[0] for f in frames] == [auth.REFUSED], frames


async def test_outsiders_cannot_touch_a_storage_node(anyio_backend, tmp_path):
    async with anyio.create_task_group() as tg:
        sn = await start_storage(tg, tmp_path)
        node = sn.node
        async with sn.client() as c:
            await c.append("obj1.p0.f0", 0, b"secret fragment bytes", block_bytes=4096)
            await c.commit("obj1.p0.f0", 1)
        before = tree_digest(tmp_path / "s1")
        served = dict(node.rpc.counters)

        for method, args, payload in (("frag.read", {"fid": "obj1.p0.f0", "first": 0, "count": 1}, b""),
                                      ("frag.delete", {"fid": "obj1.p0.f0"}, b""),
                                      ("frag.append", {"fid": "obj2.p0.f0", "index": 0, "block_bytes": 4},
                                       b"evil"),
                                      ("frag.list", {}, b"")):
            frames, _ = await raw_call(node.rpc_port, method, args, payload)
            assert_refused(frames)
            for why, secret in outsiders("headwater").items():
                async with RpcClient("127.0.0.1", node.rpc_port, secret=secret) as rc:
                    with pytest.raises(AuthFailed) as ei:
                        await rc.call(method, args, payload, timeout=5)
                    assert ei.value.details.get("sent") is False, why

        assert node.rpc.counters["requests"] == served["requests"]  # no handler ever ran
        assert node.rpc.counters["auth_refused"] >= 4 * 3
        assert tree_digest(tmp_path / "s1") == before
        async with sn.client() as c:  # the cluster's own clients still get through
            assert await c.read("obj1.p0.f0", 0, 1) == [b"secret fragment bytes"]
        tg.cancel_scope.cancel()


async def test_outsiders_cannot_touch_a_metadata_node(anyio_backend, tmp_path):
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        await meta.put("buckets", "photos", {"owner": "alice"})
        p = PartitionMap.from_cluster(mc.cfg).partition_of("buckets", "photos")
        stats = [dict(mc.node(i).stats) for i in range(3)]
        for i in range(3):
            port = mc.cfg.metadata[i].port
            for method, args in (("kv.get", {"p": p, "ns": "buckets", "key": "photos"}),
                                 ("kv.scan", {"ns": "buckets", "parts": [p]}),
                                 ("kv.write", {"p": p, "kind": 0, "ns": "buckets", "key": "photos",
                                               "v": [2**60, "evil"], "value": {"owner": "mallory"}})):
                frames, _ = await raw_call(port, method, args)
                assert_refused(frames)
                for secret in outsiders(mc.cfg.name).values():
                    async with RpcClient("127.0.0.1", port, secret=secret) as rc:
                        with pytest.raises(AuthFailed):
                            await rc.call(method, args, timeout=5)
        for i in range(3):
            now = mc.node(i).stats
            assert (now["gets"], now["writes"], now["scans"]) == (
                stats[i]["gets"], stats[i]["writes"], stats[i]["scans"])
        assert (await meta.get("buckets", "photos")).value == {"owner": "alice"}


async def _put_retrying(meta, bucket: str, key: str, record: dict, attempts: int = 20) -> None:
    """A put as a gateway makes it: retried while the two remaining nodes' group settles (its
    deadlines are the in-process cluster's short ones, which a loaded machine can overrun)."""
    for attempt in range(attempts):
        try:
            await meta.put(bucket, key, record)
            return
        except (QuorumUnavailable, WriteOutcomeUnknown):
            if attempt == attempts - 1:
                raise
            await anyio.sleep(0.2)


async def test_a_node_with_the_wrong_secret_does_not_join(anyio_backend, tmp_path, caplog, monkeypatch):
    from headwater.objstore.metadata.node import run_metadata_node

    monkeypatch.setenv(OTHER_SECRET_ENV, os.urandom(32).hex())
    caplog.set_level(logging.WARNING, logger="headwater.rpc")
    async with meta_cluster(tmp_path) as mc, mc.client() as meta:
        await meta.put("obj/b", "before", {"n": 1})
        await mc.stop(2)
        wrong = mc.cfg.replace(secret_env=OTHER_SECRET_ENV)
        caplog.clear()
        async with anyio.create_task_group() as tg:
            bad = await tg.start(lambda task_status: run_metadata_node(wrong, wrong.metadata[2], admin=False,
                                                                       task_status=task_status))
            for k in range(5):  # the other two go on without it
                await _put_retrying(meta, "obj/b", f"after-{k}", {"n": k})

            def refused() -> bool:
                text = caplog.text
                # Its clients cannot verify its peers (the server proves first); its server hears
                # from its peers' clients why they hang up.
                return ("the server did not prove knowledge of the cluster secret" in text
                        and "$HEADWATER_TEST_OTHER_CLUSTER_SECRET" in text
                        and "rpc meta-2: peer" in text and "could not verify this server's proof" in text)

            await settle(refused, timeout=10)
            p = PartitionMap.from_cluster(mc.cfg).partition_of("obj/b", "after-4")
            assert bad.store.get("obj/b", p, "after-4") is None  # it learnt nothing
            assert not any(g.is_leader for g in bad.groups.values())
            assert sum(mc.node(i).server.counters["auth_refused"] for i in (0, 1)) > 0
            assert bad.server.counters["auth_ok"] == 0
            tg.cancel_scope.cancel()
        # The secret itself never reaches a log line.
        assert os.environ[OTHER_SECRET_ENV] not in caplog.text
        assert os.environ[TEST_SECRET_ENV] not in caplog.text


# --- bounds ------------------------------------------------------------------------------------

SECRET = ClusterSecret.from_secret("bounds", os.urandom(32))


def bounded_server(**kw) -> RpcServer:
    srv = RpcServer("bounds", secret=SECRET, **kw)
    calls = {"n": 0}

    async def echo(args, payload):
        calls["n"] += 1
        return Reply(args, payload)

    srv.add("echo", echo)
    srv.calls = calls  # type: ignore[attr-defined]
    return srv


async def authenticated_stream(port: int) -> anyio.abc.ByteStream:
    """A raw stream past the handshake, for peers that then misbehave."""
    s = await anyio.connect_tcp("127.0.0.1", port)
    hs = auth.ClientHandshake(SECRET)
    await s.send(hs.data_to_send())
    while not hs.established:
        hs.receive_data(await s.receive(hs.wanted()))
        out = hs.data_to_send()
        if out:
            await s.send(out)
    return s


async def closed_within(s: anyio.abc.ByteStream, seconds: float) -> float:
    t0 = anyio.current_time()
    with anyio.fail_after(seconds):
        try:
            while await s.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return anyio.current_time() - t0


async def test_silent_peer_is_dropped_after_the_handshake_deadline(anyio_backend):
    srv = bounded_server(handshake_timeout_s=0.5)
    async with anyio.create_task_group() as tg:
        port = await tg.start(srv.serve, "127.0.0.1", 0)
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            assert await closed_within(s, 5) >= 0.4
        assert srv.counters["handshake_timeouts"] == 1
        tg.cancel_scope.cancel()


async def test_oversized_frame_before_auth_is_refused_unbuffered(anyio_backend):
    srv = bounded_server()
    async with anyio.create_task_group() as tg:
        port = await tg.start(srv.serve, "127.0.0.1", 0)
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(struct.pack("!II", 60 << 20, 16) + b"\0" * 4096)
            t0 = anyio.current_time()
            try:
                with anyio.fail_after(5):
                    for _ in range(64):  # keep pushing: the server must not be reading it
                        await s.send(b"\0" * 65536)
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                pass
            assert await closed_within(s, 5) + (anyio.current_time() - t0) < 5
        assert srv.counters["auth_refused"] == 1
        assert srv.counters["bytes_in"] <= auth.HANDSHAKE_MAX_FRAME_BYTES + PREFIX_BYTES
        assert srv.calls["n"] == 0
        tg.cancel_scope.cancel()


async def test_partial_frame_peer_is_dropped_but_idle_connections_stay(anyio_backend):
    srv = bounded_server(frame_timeout_s=0.5)
    async with anyio.create_task_group() as tg:
        port = await tg.start(srv.serve, "127.0.0.1", 0)
        # Idle for several frame timeouts, then a whole call: still served.
        async with RpcClient("127.0.0.1", port, secret=SECRET) as c:
            assert (await c.call("echo", {"a": 1}, b"x")).payload == b"x"
            await anyio.sleep(1.5)
            assert (await c.call("echo", {"a": 2}, b"y")).payload == b"y"
            assert c.counters["connects"] == 1
        # A peer that starts a 1 MiB frame and trickles it is dropped after the bound.
        s = await authenticated_stream(port)
        async with s:
            header = request_header(1, "echo", {}, 30.0)
            await s.send(struct.pack("!II", len(header) + (1 << 20), len(header)) + header)

            async def trickle():
                try:
                    while True:
                        await s.send(b"\0" * 100)
                        await anyio.sleep(0.05)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass

            async with anyio.create_task_group() as peer:
                peer.start_soon(trickle)
                took = await closed_within(s, 5)
                peer.cancel_scope.cancel()
            assert 0.4 <= took < 3
        assert srv.counters["frame_timeouts"] == 1
        assert srv.calls["n"] == 2
        tg.cancel_scope.cancel()


async def test_client_drops_a_server_that_stalls_mid_reply(anyio_backend):
    """The client side has the same bound: a reply frame begun must finish."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def stalling_server(s):
        hs = auth.ServerHandshake(SECRET)
        while not hs.established:
            hs.receive_data(await s.receive(hs.wanted()))
            out = hs.data_to_send()
            if out:
                await s.send(out)
        await s.receive()  # the request
        header = msgpack.packb([1, 1, None])
        await s.send(struct.pack("!II", len(header) + 1000, len(header)) + header + b"\0" * 10)
        await anyio.sleep(30)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, stalling_server)
        async with RpcClient("127.0.0.1", port, secret=SECRET, frame_timeout_s=0.5) as c:
            t0 = anyio.current_time()
            with pytest.raises(Exception) as ei:
                await c.call("echo", {}, b"", timeout=20)
            assert "still incomplete" in str(ei.value)
            assert anyio.current_time() - t0 < 3
        tg.cancel_scope.cancel()


async def test_cluster_secret_from_the_config_reaches_every_server(anyio_backend):
    from headwater.config import ClusterConfig

    secret = cluster_secret(ClusterConfig(secret_env=TEST_SECRET_ENV))
    assert secret.cluster == "headwater" and secret.source == f"${TEST_SECRET_ENV}"
    assert os.environ[TEST_SECRET_ENV] not in repr(secret)
