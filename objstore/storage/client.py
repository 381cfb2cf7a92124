"""What other daemons import to talk to a storage node: typed async calls over RPC."""

from __future__ import annotations

import functools
from typing import Any, Sequence

from headwater.rpc import ClusterSecret, PendingCall, Reply, RpcClient, RpcError
from headwater.splice import PipeBuffer, PipeSpan

from .fragment import FragmentCorrupt, FragmentNotFound, StorageFull, check_fid, verify_prefixed

__all__ = ["StorageClient", "PendingRead", "FragmentCorrupt", "FragmentNotFound", "StorageFull"]


class StorageClient:
    """Typed calls to one storage node; one multiplexed connection, opened lazily.

    ``async with StorageClient("s1", host, port, secret=s) as sc: await sc.append(fid, 0, block, ...)``;
    ``unix_path`` (the node's ``StorageNodeConfig.local_rpc_socket()``) is tried before TCP.
    """

    def __init__(self, node_id: str, host: str, port: int, *, secret: ClusterSecret, timeout: float = 30.0,
                 connect_timeout: float = 3.0, unix_path: str | None = None):
        self.node_id = node_id
        self.timeout = timeout
        self.rpc = RpcClient(host, port, secret=secret, connect_timeout=connect_timeout, default_timeout=timeout,
                             unix_path=unix_path)

    def __repr__(self) -> str:
        return f"StorageClient({self.node_id!r}, {self.rpc.host}:{self.rpc.port})"

    async def __aenter__(self) -> StorageClient:
        await self.rpc.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self.rpc.__aexit__(*exc_info)

    async def aclose(self) -> None:
        await self.rpc.aclose()

    async def _call(self, method: str, args: dict, payload: Any = b"", timeout: float | None = None) -> Reply:
        try:
            return await self.rpc.call(method, args, payload, timeout=timeout)
        except RpcError as e:
            e.details.setdefault("node", self.node_id)
            raise

    async def append(self, fid: str, index: int, block: bytes | memoryview, *, block_bytes: int,
                     meta: dict | None = None, timeout: float | None = None) -> None:
        """Append block ``index`` (the stripe number, sequential from 0) of fragment ``fid``.
        Block 0 creates the temp file (and carries ``meta``); re-sending block 0 starts over."""
        await self.append_many(fid, index, [block], block_bytes=block_bytes, meta=meta, timeout=timeout)

    async def append_many(self, fid: str, first: int, blocks: Sequence[bytes | memoryview], *,
                          block_bytes: int, meta: dict | None = None,
                          timeout: float | None = None) -> None:
        """Append consecutive blocks ``first, first+1, ...`` in one round trip."""
        check_fid(fid)
        args: dict[str, Any] = {"fid": fid, "index": first, "block_bytes": block_bytes,
                                "lengths": [len(b) for b in blocks]}
        if meta is not None and first == 0:
            args["meta"] = meta
        # The blocks go out as one payload, back to back, never joined into a new buffer.
        await self._call("frag.append", args, list(blocks), timeout)

    async def commit(self, fid: str, nblocks: int, *, timeout: float | None = None) -> int:
        """fsync, rename into place, fsync the directory; returns the file size. BadRequest if
        the node holds a different number of blocks."""
        r = await self._call("frag.commit", {"fid": check_fid(fid), "nblocks": nblocks}, timeout=timeout)
        return r.result["size_bytes"]

    async def abort(self, fid: str, *, timeout: float | None = None) -> bool:
        r = await self._call("frag.abort", {"fid": check_fid(fid)}, timeout=timeout)
        return r.result["aborted"]

    async def read(self, fid: str, first: int = 0, count: int = 1, *, pending: bool = False,
                   timeout: float | None = None) -> list[memoryview]:
        """Blocks ``first .. first+count-1``, each verified by the node (FragmentCorrupt if not);
        ``pending``: of the upload of ``fid`` still in progress there, if any."""
        args: dict[str, Any] = {"fid": check_fid(fid), "first": first, "count": count}
        if pending:
            args["pending"] = True
        r = await self._call("frag.read", args, timeout=timeout)
        return _blocks(r)

    async def start_read(self, fid: str, first: int = 0, count: int = 1, *,
                         timeout: float | None = None, into_pipe: bool = False) -> PendingRead:
        """Send a read now; ``await pending.blocks()`` later (prefetching while streaming).

        ``into_pipe``: the blocks of a large reply come as :class:`~headwater.splice.PipeSpan`,
        still in the kernel, to be taken in order (a GET splicing them to its client). Without
        it the read is ``prefixed``: a page-cached range comes unread with each block's prefix,
        and every block is verified here as soon as the reply is whole, the bytes still warm from
        their receive (``blocks()`` raises FragmentCorrupt as the node would; then call
        :meth:`suspect`); the node verifies the rest."""
        args: dict[str, Any] = {"fid": check_fid(fid), "first": first, "count": count}
        if not into_pipe:
            args["prefixed"] = True
        try:
            call = await self.rpc.start_call("frag.read", args,
                                             timeout=self.timeout if timeout is None else timeout,
                                             into_pipe=into_pipe,
                                             on_reply=None if into_pipe else functools.partial(_verified, fid, first))
        except RpcError as e:
            e.details.setdefault("node", self.node_id)
            raise
        return PendingRead(self.node_id, call)

    async def suspect(self, fid: str, block: int, *, timeout: float | None = None) -> None:
        """Tell the node that block ``block`` of ``fid`` failed its check here (a prefixed read):
        it counts a corrupt read and has its scrubber verify the fragment."""
        await self._call("frag.suspect", {"fid": check_fid(fid), "block": block}, timeout=timeout)

    async def stat(self, fid: str, *, timeout: float | None = None) -> dict:
        return (await self._call("frag.stat", {"fid": check_fid(fid)}, timeout=timeout)).result

    async def stat_many(self, fids: Sequence[str], *, timeout: float | None = None) -> list[dict]:
        """One stat per fid, in order: ``{fid, nblocks, complete, ...}`` or ``{fid, error: code}``
        (``fragment_not_found``, ``fragment_corrupt``)."""
        r = await self._call("frag.stat_many", {"fids": [check_fid(f) for f in fids]}, timeout=timeout)
        return r.result["stats"]

    async def list(self, after: str = "", limit: int = 1000, *,
                   timeout: float | None = None) -> tuple[list[tuple[str, int, float]], str | None]:
        """A page of committed fragments ``[(fid, size_bytes, mtime)]`` and the next cursor (None
        at the end)."""
        r = await self._call("frag.list", {"after": after, "limit": limit}, timeout=timeout)
        return [(e[0], e[1], e[2]) for e in r.result["entries"]], r.result["next"]

    async def collect(self, *, timeout: float | None = None) -> int:
        """Ask the node to remove its stale temp files now; returns how many went."""
        return (await self._call("node.collect", {}, timeout=timeout)).result["removed"]

    async def delete(self, fid: str, *, if_mtime: float | None = None, timeout: float | None = None) -> bool:
        """Remove a committed fragment; with ``if_mtime`` only the file ``list`` gave that mtime."""
        args: dict = {"fid": check_fid(fid)}
        if if_mtime is not None:
            args["if_mtime"] = if_mtime
        r = await self._call("frag.delete", args, timeout=timeout)
        return r.result["deleted"]

    async def info(self, *, timeout: float | None = None) -> dict:
        return (await self._call("node.info", {}, timeout=timeout)).result


def _blocks(r: Reply) -> list:
    """Split a frag.read reply's payload into its blocks, without copying (as views, or as
    spans of a payload still in pipes)."""
    lengths = r.result["lengths"]
    if type(r.payload) is PipeBuffer:
        stride = r.result.get("stride") or (lengths[0] if lengths else 0)
        return [PipeSpan(r.payload, j * stride, n) for j, n in enumerate(lengths)]
    mv = memoryview(r.payload)
    if len(lengths) <= 1:
        return [mv] if lengths else []
    stride = r.result.get("stride") or lengths[0]  # blocks sit `stride` bytes apart
    return [mv[j * stride:j * stride + n] for j, n in enumerate(lengths)]


class _Verified(Reply):
    """A prefixed read's reply once its blocks are verified: ``payload`` is the list of them."""

    __slots__ = ()


def _verified(fid: str, first: int, r: Reply) -> Reply:
    """A ``prefixed`` reply's blocks verified as soon as the reply is whole (the RPC reader's
    ``on_reply``: its bytes were just received, so the hash reads them from the cache); any
    other reply as it came."""
    if type(r.result) is not dict or r.result.get("prefixed") is not True:
        return r
    try:
        blocks = verify_prefixed(fid, first, r.result.get("lengths"), r.payload)
        return _Verified(r.result, blocks)  # type: ignore[arg-type]
    except FragmentCorrupt as e:
        e.details["found_by"] = "reader"  # the node has not seen it: suspect() tells it
        raise


class PendingRead:
    """A fragment read in flight (see ``StorageClient.start_read``)."""

    __slots__ = ("node_id", "_call")

    def __init__(self, node_id: str, call: PendingCall):
        self.node_id = node_id
        self._call = call

    async def blocks(self) -> list[memoryview]:
        try:
            r = await self._call.result()
            if type(r) is _Verified:
                return r.payload
            return _blocks(r)
        except RpcError as e:
            e.details.setdefault("node", self.node_id)
            raise

    def discard(self) -> None:
        self._call.discard()
