"""Heartbeats of every Raft group a node leads, sent to each peer as one RPC per heartbeat.

An idle node leading a third of 8 groups used to send each of its 2 peers 10 ``raft.append``
calls a second per group, and answer as many: most of an idle metadata node's CPU went to
these calls. The groups' heartbeats fall due at the same instants (the core divides its clock
into heartbeat slots), so the replicators of all groups ask for them within a moment of each
other. :class:`HeartbeatBatcher` holds each one for ``linger_s`` and sends all that are for the
same peer as one ``raft.heartbeats`` call, whose answer carries each group's reply in order
(CockroachDB coalesces heartbeats between two stores the same way). Appends that carry entries
do not wait here: only ``raft.append`` calls without entries come through.

The receiving node (:func:`serve_heartbeats`) runs each item as its own ``raft.append`` call,
concurrently, and answers each with the reply or with the error it raised; one item's failure
is its group's alone. An item that changes nothing to be written first (an idle heartbeat) is
answered in the call's own task (``at_once``): an idle node used to start a task per group per
heartbeat for it, and wake each group's persister and replicators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import anyio
import anyio.abc

from headwater.rpc import NoSuchMethod

__all__ = ["HeartbeatBatcher", "HeartbeatFailed", "is_heartbeat", "serve_heartbeats", "MAX_BATCH"]

# At most this many heartbeats in one call; the receiver refuses more (it runs them all at once).
MAX_BATCH = 1024

Send = Callable[[str, str, dict[str, Any], float], Awaitable[Any]]


class HeartbeatFailed(Exception):
    """The peer could not take one group's heartbeat (it named the error)."""


def is_heartbeat(method: str, args: dict[str, Any]) -> bool:
    """An append without entries (``append_to_wire``'s fifth field): one for the batcher."""
    if method != "raft.append":
        return False
    m = args.get("m")
    return isinstance(m, list) and len(m) == 7 and not m[4]


@dataclass(slots=True)
class _Item:
    args: dict[str, Any]
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Any = None
    error: BaseException | None = None


class HeartbeatBatcher:
    """Sends the heartbeats for one peer that arrive within ``linger_s`` of the first as one call.
    ``run`` must be running (it owns the senders); until it is, calls go out one by one."""

    def __init__(self, send: Send, *, linger_s: float = 0.003):
        self._send = send
        self.linger_s = linger_s
        self._queues: dict[str, list[_Item]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.stats = {"heartbeat_calls": 0, "heartbeats_batched": 0}

    async def run(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started(self)
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    async def call(self, peer: str, args: dict[str, Any], timeout: float) -> Any:
        """Send one ``raft.append`` heartbeat to ``peer``; its reply, or what sending raised."""
        if self._tg is None:
            return await self._send(peer, "raft.append", args, timeout)
        item = _Item(args)
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = []
            self._tg.start_soon(self._flush, peer, timeout)
        queue.append(item)
        # The sender resolves every item of its batch, whatever happens to this caller.
        await item.done.wait()
        if item.error is not None:
            raise item.error
        return item.reply

    async def _flush(self, peer: str, timeout: float) -> None:
        await anyio.sleep(self.linger_s)
        items = self._queues.pop(peer)
        self.stats["heartbeat_calls"] += 1
        self.stats["heartbeats_batched"] += len(items)
        try:
            if len(items) == 1:
                replies: list[Any] = [await self._send(peer, "raft.append", items[0].args, timeout)]
            else:
                try:
                    answer = await self._send(peer, "raft.heartbeats", {"b": [it.args for it in items]}, timeout)
                    replies = answer["r"]
                except NoSuchMethod:
                    # A peer of an earlier version (a rolling upgrade): one call per heartbeat.
                    replies = await self._one_by_one(peer, items, timeout)
                if len(replies) != len(items):
                    raise HeartbeatFailed(f"{peer} answered {len(replies)} of {len(items)} heartbeats")
        except Exception as e:
            for it in items:
                it.error = e
        else:
            for it, r in zip(items, replies):
                if isinstance(r, dict) and "error" in r:
                    it.error = HeartbeatFailed(f"{peer}: {r['error']}")
                else:
                    it.reply = r
        finally:
            for it in items:
                if it.reply is None and it.error is None:
                    it.error = HeartbeatFailed(f"the heartbeat call to {peer} was cancelled")
                it.done.set()


    async def _one_by_one(self, peer: str, items: list[_Item], timeout: float) -> list[Any]:
        replies: list[Any] = [None] * len(items)

        async def one(i: int) -> None:
            try:
                replies[i] = await self._send(peer, "raft.append", items[i].args, timeout)
            except Exception as e:
                replies[i] = {"error": repr(e)[:200]}

        async with anyio.create_task_group() as tg:
            for i in range(len(items)):
                tg.start_soon(one, i)
        return replies


AtOnce = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[Any]"]


async def serve_heartbeats(args: dict[str, Any], on_append: Callable[[dict[str, Any], bytes], Awaitable[Any]],
                           at_once: AtOnce | None = None) -> dict[str, Any]:
    """Answer a ``raft.heartbeats`` call: each item through ``on_append`` (the ``raft.append``
    handler), all at once; ``{"r": [reply or {"error": text}, ...]}`` in the items' order.
    ``at_once`` (optional) answers an item without a task: its reply (a dict), or an awaitable
    of it when the item must wait (for a write); only those get a task each, so an idle
    heartbeat costs a function call, not a task. Raises ValueError on a malformed call."""
    batch = args.get("b")
    if not isinstance(batch, list) or not all(isinstance(a, dict) for a in batch):
        raise ValueError("b must be a list of raft.append arguments")
    if len(batch) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} heartbeats in one call, not {len(batch)}")
    replies: list[Any] = [None] * len(batch)
    waiting: list[tuple[int, Awaitable[Any]]] = []
    for i, a in enumerate(batch):
        if at_once is None:
            waiting.append((i, on_append(a, b"")))
            continue
        try:
            r = at_once(a)
        except Exception as e:
            replies[i] = {"error": f"{type(e).__name__}: {e}"[:200]}
            continue
        if isinstance(r, dict):
            replies[i] = r
        else:
            waiting.append((i, r))
    if not waiting:
        return {"r": replies}

    async def one(i: int, pending: Awaitable[Any]) -> None:
        try:
            replies[i] = await pending
        except Exception as e:
            replies[i] = {"error": f"{type(e).__name__}: {e}"[:200]}

    async with anyio.create_task_group() as tg:
        for i, pending in waiting:
            tg.start_soon(one, i, pending)
    return {"r": replies}
