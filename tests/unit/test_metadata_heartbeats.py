"""The heartbeat batcher: each peer gets one call for the heartbeats that fall due together.

``HeartbeatBatcher`` is the shell's, so these tests drive it on a real event loop with a
recording transport in place of the RPC client (the functional metadata tests run it between
real nodes); ``serve_heartbeats`` is the receiving end, driven with a plain handler.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from headwater.objstore.metadata.heartbeats import MAX_BATCH, HeartbeatBatcher, HeartbeatFailed, is_heartbeat, \
    serve_heartbeats
from headwater.rpc import NoSuchMethod, Unavailable

pytestmark = pytest.mark.anyio


def hb(group: str) -> dict[str, Any]:
    return {"g": group, "m": [1, "a", 0, 0, [], 0, 1]}


class Peers:
    """Stands in for the RPC client: answers like a node's handlers, records each call."""

    def __init__(self, *, batches: bool = True, down: tuple[str, ...] = ()):
        self.calls: list[tuple[str, str, int]] = []
        self.batches, self.down = batches, down

    async def send(self, peer: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        self.calls.append((peer, method, len(args["b"]) if method == "raft.heartbeats" else 1))
        await anyio.sleep(0.001)
        if peer in self.down:
            raise Unavailable(f"{peer} is down")
        if method == "raft.heartbeats":
            if not self.batches:
                raise NoSuchMethod("no raft.heartbeats here")
            return await serve_heartbeats(args, self.append)
        return await self.append(args, b"")

    async def append(self, args: dict[str, Any], payload: bytes) -> dict[str, Any]:
        if args["g"] == "gone":
            raise Unavailable("no replica of gone")
        return {"term": 1, "success": True, "match": 0, "round": args["m"][6], "g": args["g"]}


async def burst(b: HeartbeatBatcher, calls: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}

    async def one(peer: str, group: str) -> None:
        try:
            out[peer, group] = await b.call(peer, hb(group), 1.0)
        except Exception as e:
            out[peer, group] = e

    async with anyio.create_task_group() as tg:
        await tg.start(b.run)
        async with anyio.create_task_group() as callers:
            for peer, group in calls:
                callers.start_soon(one, peer, group)
        tg.cancel_scope.cancel()
    return out


async def test_heartbeats_due_together_go_to_each_peer_in_one_call() -> None:
    peers = Peers()
    out = await burst(HeartbeatBatcher(peers.send), [("b", "g0"), ("b", "g1"), ("c", "g0"), ("b", "g2"), ("c", "g1")])
    assert sorted(peers.calls) == [("b", "raft.heartbeats", 3), ("c", "raft.heartbeats", 2)]
    assert all(r["g"] == g for (_, g), r in out.items())  # each caller gets its own group's reply


async def test_a_lone_heartbeat_is_a_plain_append_and_one_groups_failure_is_its_own() -> None:
    peers = Peers()
    out = await burst(HeartbeatBatcher(peers.send), [("b", "g0")])
    assert peers.calls == [("b", "raft.append", 1)] and out["b", "g0"]["g"] == "g0"
    out = await burst(HeartbeatBatcher(peers.send), [("b", "g0"), ("b", "gone")])
    assert isinstance(out["b", "gone"], HeartbeatFailed) and out["b", "g0"]["g"] == "g0"


async def test_a_peer_down_fails_every_heartbeat_for_it_and_an_old_peer_gets_them_one_by_one() -> None:
    out = await burst(HeartbeatBatcher(Peers(down=("b",)).send), [("b", "g0"), ("b", "g1"), ("c", "g0")])
    assert isinstance(out["b", "g0"], Unavailable) and isinstance(out["b", "g1"], Unavailable)
    assert out["c", "g0"]["g"] == "g0"
    old = Peers(batches=False)
    out = await burst(HeartbeatBatcher(old.send), [("b", "g0"), ("b", "g1")])
    assert [m for _, m, _ in old.calls] == ["raft.heartbeats", "raft.append", "raft.append"]
    assert out["b", "g0"]["g"] == "g0" and out["b", "g1"]["g"] == "g1"


async def test_without_run_each_heartbeat_goes_alone() -> None:
    peers = Peers()
    assert (await HeartbeatBatcher(peers.send).call("b", hb("g0"), 1.0))["g"] == "g0"
    assert peers.calls == [("b", "raft.append", 1)]


async def test_the_receiver_refuses_malformed_and_oversized_batches() -> None:
    peers = Peers()
    for bad in ({}, {"b": "x"}, {"b": [1, 2]}, {"b": [hb("g0")] * (MAX_BATCH + 1)}):
        with pytest.raises(ValueError):
            await serve_heartbeats(bad, peers.append)


def test_only_appends_without_entries_are_heartbeats() -> None:
    assert is_heartbeat("raft.append", hb("g0"))
    assert not is_heartbeat("raft.append", {"g": "g0", "m": [1, "a", 0, 0, [[1, b"x"]], 0, 1]})
    assert not is_heartbeat("raft.vote", hb("g0"))


async def test_the_receiver_answers_at_once_what_it_can_and_waits_only_for_the_rest() -> None:
    """``at_once`` answers idle heartbeats in the call's own task; an item it hands back as an
    awaitable (a write to wait for) gets a task, and one that raises is that group's error
    alone. Replies stay in the items' order, whichever way each was answered."""
    peers = Peers()
    in_tasks: list[str] = []
    released = anyio.Event()

    async def slow(args: dict[str, Any]) -> dict[str, Any]:
        in_tasks.append(args["g"])
        await released.wait()
        return {"term": 1, "success": True, "match": 5, "round": 1, "g": args["g"]}

    def at_once(args: dict[str, Any]) -> Any:
        if args["g"] == "busy":
            return slow(args)
        if args["g"] == "broken":
            raise RuntimeError("no such replica")
        return {"term": 1, "success": True, "match": 0, "round": 1, "g": args["g"]}

    async def unused(args: dict[str, Any], payload: bytes) -> Any:
        raise AssertionError("every item goes through at_once")

    batch = {"b": [hb("g0"), hb("busy"), hb("broken"), hb("g3")]}
    out: dict[str, Any] = {}

    async def serve() -> None:
        out.update(await serve_heartbeats(batch, unused, at_once))

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await anyio.wait_all_tasks_blocked()
        assert in_tasks == ["busy"] and not out  # the call waits for the one that must wait
        released.set()
    replies = out["r"]
    assert [r.get("g") for r in replies] == ["g0", "busy", None, "g3"]
    assert replies[1]["match"] == 5
    assert "no such replica" in replies[2]["error"]
    # Without at_once every item is an on_append call, as before.
    assert [r["g"] for r in (await serve_heartbeats({"b": [hb("g0"), hb("g1")]}, peers.append))["r"]] == ["g0", "g1"]
