"""Clients for a set of peers named by id, opened on first use: nodes can learn of peers (a
metadata node added to a Raft group) after they started.

An :class:`RpcClient` owns a task group, which must be closed by the task that opened it; the
pool opens each client inside a task of its own, so any task may ask for a client and the pool
closes them all when its ``async with`` ends.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc

from .auth import ClusterSecret
from .client import RpcClient
from .errors import Unavailable

__all__ = ["ClientPool"]


class ClientPool:
    """``async with ClientPool(addresses, secret=s) as pool: await (await pool.get("meta-1")).call(...)``."""

    def __init__(self, addresses: dict[str, tuple[str, int]] | None = None, *, secret: ClusterSecret,
                 connect_timeout: float = 1.0, default_timeout: float = 2.0):
        self.secret = secret
        self.addresses: dict[str, tuple[str, int]] = dict(addresses or {})
        self._connect_timeout = connect_timeout
        self._default_timeout = default_timeout
        self._clients: dict[str, RpcClient] = {}
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> ClientPool:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        # The holders only ever end by this cancellation: close them without wrapping the
        # caller's own exception, if any, into a group.
        await tg.__aexit__(None, None, None)
        return None

    def learn(self, peer: str, address: tuple[str, int] | list[Any]) -> None:
        """Record ``peer``'s address (a client already open keeps the one it has)."""
        self.addresses[peer] = (str(address[0]), int(address[1]))

    def __contains__(self, peer: str) -> bool:
        return peer in self.addresses

    @property
    def open_peers(self) -> list[str]:
        return list(self._clients)

    async def get(self, peer: str) -> RpcClient:
        """The client for ``peer``. Raises Unavailable (nothing sent) if its address is unknown."""
        c = self._clients.get(peer)
        if c is not None:
            return c
        async with self._lock:
            c = self._clients.get(peer)
            if c is not None:
                return c
            addr = self.addresses.get(peer)
            if addr is None or self._tg is None:
                raise Unavailable(f"no address known for {peer}", sent=False)
            c = RpcClient(addr[0], addr[1], secret=self.secret, connect_timeout=self._connect_timeout,
                          default_timeout=self._default_timeout)
            await self._tg.start(self._hold, c)
            self._clients[peer] = c
            return c

    @staticmethod
    async def _hold(client: RpcClient, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
        async with client:
            task_status.started()
            await anyio.sleep_forever()
