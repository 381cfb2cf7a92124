"""Moving object bytes between the gateway and the storage nodes: stripes out, stripes back.

``StoragePool`` holds one RPC client per storage node and remembers which nodes failed recently.
``LayoutWriter`` cuts a byte stream into stripes, erasure-codes each and sends fragment i of every
stripe to node i; ``read_layout`` streams a byte range back, reading data fragments first and
decoding from parity only when some are missing or corrupt.

Handoff (as Swift's handoff nodes): fragment i's node is its *home*
(:func:`placement.assign`); a home known down is replaced before the PUT starts by the next up
node of the object's handoff order (:func:`placement.handoff_order`), and a node that fails
during the PUT (refused, silent past the deadline, or refusing the append or the commit) is
replaced in the same PUT by the next one: the blocks the failed node had taken are rebuilt for
the handoff node from k other fragments of the upload in progress (``frag.read`` with
``pending``), then the PUT goes on. The layout names the node each fragment is really on and,
in ``homes``, the home of each one that is away; the reconstructor moves them home later.

What a PUT acknowledges: every one of the k+m fragments of every stripe committed (fsynced) on
a distinct node, home or handoff. Only when fewer than k+m storage nodes answer at all does it
fall back to the scheme's write quorum (``[objstore.ec] write_quorum``, default k+1, which is
Swift's EC quorum, ndata + 1): it then says so (``degraded_writes`` counter, a
``object.degraded_write`` warning) and a reader has one spare fragment per stripe, not m, until
the reconstructor rebuilds the rest.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from contextlib import AsyncExitStack
from typing import AsyncIterator, Callable, Iterable, Sequence

import anyio
import anyio.abc
import anyio.to_thread

from headwater.budget import BudgetExhausted, ByteBudget
from headwater.config import ClusterConfig
from headwater.rpc import DeadlineExceeded, RpcError, Unavailable, cluster_secret
from headwater.splice import PipeSpan

from . import parity, stripe
from .config import ErasureScheme
from .errors import StoreError
from .placement import Assignment, NodeSite, PlacementError, assign, place
from .records import Layout
from .storage.client import PendingRead, StorageClient
from .stripe import Buffer

__all__ = ["StoragePool", "ReadTiming", "LayoutWriter", "read_layout", "WriteFailed", "ReadFailed",
           "ReadsBusy", "delete_layouts"]

log = logging.getLogger(__name__)

# How long a node that failed stays out of new placements and reads at least; after that it
# comes back only once it answers a probe (every PROBE_INTERVAL_S, each given PROBE_TIMEOUT_S),
# so a node that stays cut off never costs another PUT a fragment (and a 2+1 PUT its quorum).
DOWN_HOLD_S = 5.0
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
# Stripes fetched per read RPC: bounds memory per GET to about READ_BATCH * stripe * (k+m)/k.
READ_BATCH = 4
# Batches a GET reads ahead of the one it sends while the read buffer is at least half free (one
# when it is not). Each batch is a round trip to k nodes whose latency (a thread hand-off and a
# wake-up on each side) varies far more than its cost: one batch ahead left the client waiting
# on the slowest node of every batch. Two, not more: each is 4 MiB per GET, and the gateway's
# RSS with 8 streams in and out (bench objstore) must stay under 300 MiB.
READ_AHEAD = 2
# A GET that starts while no other GET of this process reads stripes reads batches of this many
# stripes, with READ_AHEAD_ALONE of them ahead: one read RPC per node per 8 MiB, not 4, cuts
# what the storage nodes spend per GB by a third or more (each read costs a node its wake-up,
# open, header and footer reads, cachestat and reply: 0.43-0.52 -> 0.26-0.37 s/GB with one
# client, bench/README.md objget7) and the gateway's per-batch work, for 16 MiB held (12 with
# 4-stripe batches two ahead). Only alone: with 8 streams a worker, 8-stripe batches took the
# gateway's RSS over its goal (objget6).
READ_BATCH_ALONE = 8
READ_AHEAD_ALONE = 1
# How long a GET waits for a node to take its report of a corrupt block (frag.suspect).
SUSPECT_TIMEOUT_S = 2.0
# User bytes sent to the storage nodes per append round trip. A round trip costs about the same
# whatever its size, so one stripe per trip left PUT latency-bound (nodes and gateway idle);
# batching stripes up to this many bytes fills the pipe. 8 MiB, not 4: each round trip costs
# the node a wake-up, a task, a thread hand-off and a reply, and the gateway a task and a wake-up
# per node, which on a loaded 2-core machine came to ~0.7-1 s of CPU per GB at 4 MiB (bench
# objstore, 8 clients: see bench/README.md, objput4). Bounds memory per PUT to ~2.5x this: the
# batch in flight with its parity, and the stripes of the next one (parity is made as it goes).
WRITE_BATCH_BYTES = 8 * 1024 * 1024
# Batches each digest lane of a PUT may hold queued beside the one its thread is hashing before
# the writer waits for it. A lane is handed a whole batch's stripes at once, as the batch goes
# out (one thread hand-off per batch, not per stripe: each wakes a thread, then the loop), so a
# late thread has the time the next batch takes to arrive to catch up; none queued keeps what
# a lane holds to the stripes the batches hold anyway (the gateway's RSS with 8 streams, bench
# objstore, goal < 300 MiB).
DIGEST_BACKLOG_BATCHES = 0


class WriteFailed(StoreError):
    """Too few fragments could be stored for the write to be durable."""

    s3_code = "SlowDown"
    log_level = logging.WARNING
    log_event = "s3.write_failed"


class ReadFailed(StoreError):
    """Fewer than k fragments of a stripe could be read back intact."""

    s3_code = "ServiceUnavailable"
    log_event = "s3.read_failed"


class ReadsBusy(StoreError):
    """Every byte of the read buffer is held by GETs whose clients have not taken them yet."""

    s3_code = "SlowDown"
    log_level = logging.WARNING
    log_event = "s3.reads_busy"


class ReadTiming:
    """Where a gateway worker's GETs of stored layouts spent their time, summed over them: the
    first batch's wait (request to first bytes), the waits for later batches' replies (the
    storage nodes behind the client) and the time the client took to take the bytes handed to
    it (the client, or the send, behind the nodes). For telling a GET that waits on its reads
    from one that waits on its client (``/healthz`` of a gateway worker, ``read_timing``).
    ``piped_bytes``: what was handed on still in pipes (``read_layout(spliced=True)``)."""

    __slots__ = ("reads", "batches", "first_wait_s", "wait_s", "send_s", "piped_bytes", "clock")

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.reads = 0
        self.batches = 0
        self.first_wait_s = 0.0
        self.wait_s = 0.0
        self.send_s = 0.0
        self.piped_bytes = 0

    def statistics(self) -> dict[str, float]:
        return {"reads": self.reads, "batches": self.batches, "first_wait_s": round(self.first_wait_s, 6),
                "wait_s": round(self.wait_s, 6), "send_s": round(self.send_s, 6),
                "piped_bytes": self.piped_bytes}


class StoragePool:
    """RPC clients for every storage node, plus a memory of which nodes are failing.

    A node an RPC found unreachable is *down*: left out of placements and reads for at least
    ``DOWN_HOLD_S``, and after that until it answers a probe, which a background task sends it
    every ``probe_interval_s`` while the pool is open.
    """

    def __init__(self, cluster: ClusterConfig, *, clock: Callable[[], float] = time.monotonic,
                 read_budget: ByteBudget | None = None, read_wait_s: float = 10.0,
                 probe_interval_s: float = PROBE_INTERVAL_S, splice_reads: bool = False):
        self.cluster = cluster
        self.clock = clock
        # What every GET of this process may hold in stripes read ahead of its client, and how
        # long a GET waits for its share before answering 503 (None: unbounded, for repair).
        self.read_budget = read_budget
        self.read_wait_s = read_wait_s
        # A GET's response body is read with read_layout(spliced=...) ([gateway] splice_reads).
        self.splice_reads = splice_reads
        self.sites = [NodeSite(id=s.id, zone=s.zone, rack=s.rack, host=s.node_host or s.id)
                      for s in cluster.storage]
        self._clients: dict[str, StorageClient] = {}
        self._down_until: dict[str, float] = {}   # down nodes -> when a probe may readmit them
        self.probe_interval_s = probe_interval_s
        self._stack = AsyncExitStack()
        self.stats = {"fragment_read_errors": 0, "fragment_write_errors": 0, "degraded_reads": 0,
                      "handoff_writes": 0, "degraded_writes": 0}
        self.read_timing = ReadTiming()
        self.reads_in_progress = 0  # read_layout calls under way (a GET alone reads larger batches)

    async def __aenter__(self) -> StoragePool:
        await self._stack.__aenter__()
        timeout = self.cluster.objstore.rpc_timeout_s
        secret = cluster_secret(self.cluster)
        for s in self.cluster.storage:
            unix = s.local_rpc_socket() if self.cluster.objstore.storage_unix_sockets else None
            client = StorageClient(s.id, s.host, s.port, secret=secret, timeout=timeout, unix_path=unix)
            self._clients[s.id] = await self._stack.enter_async_context(client)
        self._prober = await self._stack.enter_async_context(anyio.create_task_group())
        self._prober.start_soon(self._probe_forever)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._prober.cancel_scope.cancel()
        await self._stack.__aexit__(*exc)

    def client(self, node_id: str) -> StorageClient:
        return self._clients[node_id]

    def mark_down(self, node_id: str) -> None:
        self._down_until[node_id] = self.clock() + DOWN_HOLD_S

    def mark_up(self, node_id: str) -> None:
        self._down_until.pop(node_id, None)

    def down(self) -> set[str]:
        return set(self._down_until)

    async def probe_once(self) -> None:
        """Ask each down node whose hold is over whether it answers; readmit those that do."""
        now = self.clock()
        due = [n for n, t in self._down_until.items() if t <= now]

        async def probe(node: str) -> None:
            try:
                await self._clients[node].info(timeout=PROBE_TIMEOUT_S)
            except RpcError:
                self._down_until[node] = self.clock() + DOWN_HOLD_S
            else:
                log.info("storage node %s answers again", node, extra={"event": "node.readmitted", "node": node})
                self.mark_up(node)

        async with anyio.create_task_group() as tg:
            for node in due:
                tg.start_soon(probe, node)

    async def _probe_forever(self) -> None:
        while True:
            await anyio.sleep(self.probe_interval_s)
            if self._down_until:
                await self.probe_once()

    def place(self, oid: str, width: int) -> list[str]:
        return place(oid, width, self.sites, down=self.down())

    def assign(self, oid: str, scheme: ErasureScheme) -> Assignment:
        """Nodes for fragments 0..k+m-1: each its home, or a handoff node where the home is known
        down; None where no up node is left (then at least the write quorum must be placed)."""
        try:
            a = assign(oid, scheme.width, self.sites, down=self.down())
        except PlacementError as e:
            raise WriteFailed(str(e)) from None
        placed = sum(1 for n in a.nodes if n is not None)
        if placed < write_quorum(scheme):
            raise WriteFailed(f"{placed} storage nodes are up; {scheme.describe()} needs "
                              f"{write_quorum(scheme)} to write")
        return a

    def place_degraded(self, oid: str, scheme: ErasureScheme) -> list[str | None]:
        """The nodes :meth:`assign` picks (handoffs in place of down homes)."""
        return list(self.assign(oid, scheme).nodes)


def new_oid() -> str:
    return uuid.uuid4().hex


def write_quorum(scheme: ErasureScheme) -> int:
    """Fragments that must be stored before a write is acknowledged.

    ``[objstore.ec] write_quorum`` when set, else k+1 (k when m = 0): k alone would leave no
    redundancy at all; k+1 survives one more loss while the reconstructor restores the rest,
    which is what lets a write go on with a node down. See ``ErasureScheme.write_fragments``.
    """
    return scheme.write_fragments


class LayoutWriter:
    """Writes one run of bytes (a whole object or one part) as erasure-coded stripes.

    Use as ``async with LayoutWriter(pool, scheme) as w:`` then ``await w.write(chunk)``
    repeatedly and ``layout = await w.finish()``. Leaving the block without finishing (an error,
    a cancellation, a client gone) removes every fragment written so far.

    Stripes are pipelined: while the caller's stripes fill a batch, the batch before it travels
    to the storage nodes. Parity is made on the event loop with ISA-L (~0.1 ms per MiB without
    the GIL) as a batch goes out, once the one before is acknowledged, so the batch being filled
    holds no parity yet; with zfec each stripe is encoded on a worker thread as it is cut.
    Fragments of one file still arrive in order, because a batch is sent only once the one before
    it is acknowledged.

    ``digests``, if given, are hash updates (an MD5's, a SHA-256's, a checksum's ``update``)
    each called with every byte written, stripe by stripe and in order, in a *lane*: a task
    feeding them on worker threads (hashlib releases the GIL for large buffers), behind the
    encode and send rather than in front of them. The lane is handed each batch's stripes as the
    batch goes out (one thread hand-off per batch), and may hold ``DIGEST_BACKLOG_BATCHES``
    queued beside the batch it is hashing before ``write`` waits for it. Every call has returned
    once ``finish`` has (the lane finishes beside the commit's fsyncs); nothing is committed to
    the metadata here, so a caller that finds a hash wrong afterwards discards the layout and
    nothing was visible.
    """

    def __init__(self, pool: StoragePool, scheme: ErasureScheme, *,
                 digests: Sequence[Callable[[Buffer], None]] = ()):
        self.pool = pool
        self.scheme = scheme
        self.oid = new_oid()
        plan = pool.assign(self.oid, scheme)
        self.nodes: list[str | None] = list(plan.nodes)
        self.homes: list[str] = list(plan.homes)
        # Handoff nodes not used yet, in order: taken by fragments whose node fails mid-PUT.
        self._spare: list[str] = list(plan.handoffs)
        # Every node asked to hold a fragment, even those dropped after a failed call: one that
        # failed mid-append (a full disk, say) still holds a temp file that abort must remove.
        self._placed: list[str | None] = list(self.nodes)
        self._strays: list[tuple[int, str]] = []  # replaced nodes that may hold a temp file
        self._committing = False
        # One lane feeds every digest, one after the other: a thread hand-off is dear here (a
        # wake-up of another vCPU, then of the loop, ~12 % of the gateway's GIL time at one per
        # lane and batch), dearer than the parallelism of two lanes, which only one stream on an
        # idle machine could use (MD5 + SHA-256 of a batch take ~9 ms, its arrival ~25).
        self._lanes = [_DigestLane(tuple(digests), DIGEST_BACKLOG_BATCHES)] if digests else []
        # Stripes cut since the last batch went out, not yet handed to the lanes.
        self._unhashed: list[bytes] = []
        # Parity on the event loop only where it is cheap (ISA-L); zfec's takes ~1.5 ms per MiB.
        self._encode_inline = parity.isal_available() or scheme.m == 0
        # Written bytes not yet cut into a stripe: immutable buffers, joined once per stripe.
        self._pieces: collections.deque[bytes | memoryview] = collections.deque()
        self._buffered = 0
        # The stripe being hashed and encoded on a worker thread: its done event and outcome.
        self._encoding: anyio.Event | None = None
        self._encoded: list | BaseException | None = None
        self._stripes = 0
        self._size = 0
        self._finished = False
        self._inflight: anyio.Event | None = None
        # Stripes not yet sent: their blocks, or (encoded inline) the stripe itself, whose parity
        # is made only once the batch before has gone, so a full batch waits without its parity.
        self._batch: list[list | bytes] = []
        self._batch_size = max(1, WRITE_BATCH_BYTES // scheme.stripe_bytes)
        self._tg: anyio.abc.TaskGroup | None = None
        self._meta = {"k": scheme.k, "m": scheme.m, "stripe": scheme.stripe_bytes}

    async def __aenter__(self) -> LayoutWriter:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for lane in self._lanes:
            self._tg.start_soon(lane.run)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool | None:
        assert self._tg is not None
        if exc is not None:
            self._tg.cancel_scope.cancel()
        for lane in self._lanes:
            lane.close()  # else a lane left open (no finish) would keep the task group waiting
        # The sends catch their own errors, so the caller's exception is kept out of the task
        # group: it propagates as itself (an S3 error stays an S3 error), not inside a group.
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            if not self._finished:
                await self.abort()
        return None

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not (isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly)):
            data = bytes(data)  # a buffer the caller may reuse: keep a copy, not a view
        self._pieces.append(data)
        self._buffered += len(data)
        self._size += len(data)
        sb = self.scheme.stripe_bytes
        while self._buffered >= sb:
            await self._send_stripe(self._take(sb))

    def _take(self, n: int) -> bytes:
        """The first ``n`` buffered bytes as one ``bytes`` (the one copy a stripe costs here)."""
        parts: list[bytes | memoryview] = []
        need = n
        while need:
            p = self._pieces[0]
            if len(p) <= need:
                parts.append(self._pieces.popleft())
                need -= len(p)
            else:
                mv = p if isinstance(p, memoryview) else memoryview(p)
                parts.append(mv[:need])
                self._pieces[0] = mv[need:]
                need = 0
        self._buffered -= n
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    async def _send_stripe(self, data: bytes) -> None:
        """Queue ``data`` (the next stripe) for the digest lanes and batch it (encoded as the batch
        goes out); with zfec a full stripe is encoded on a worker thread now, and this returns
        once the stripe before it is done, not this one."""
        if self._lanes:
            self._unhashed.append(data)
        await self._settle()
        if self._encode_inline or len(data) < 128 * 1024:
            await self._add(data)  # encoded by _flush
            return
        done = anyio.Event()
        self._encoding, self._encoded = done, None
        assert self._tg is not None, "use LayoutWriter as an async context manager"
        self._tg.start_soon(self._encode_in_thread, data, done)

    async def _encode_in_thread(self, data: bytes, done: anyio.Event) -> None:
        try:
            self._encoded = await anyio.to_thread.run_sync(stripe.encode, self.scheme, data)
        except BaseException as e:  # noqa: BLE001 - handed to the writer's own task by _settle
            self._encoded = e
            if not isinstance(e, Exception):
                raise
        finally:
            done.set()

    async def _settle(self) -> None:
        """Wait for the stripe on the worker thread, if any, and batch its blocks."""
        if self._encoding is None:
            return
        await self._encoding.wait()
        self._encoding, result, self._encoded = None, self._encoded, None
        if isinstance(result, BaseException):
            raise result
        assert result is not None
        await self._add(result)

    async def _add(self, blocks: list | bytes) -> None:
        self._batch.append(blocks)
        if len(self._batch) >= self._batch_size:
            await self._flush()

    async def _hash(self) -> None:
        """Hand the stripes cut since the last call to every digest lane, as one parcel."""
        if not self._unhashed:
            return
        parcel, self._unhashed = self._unhashed, []
        for lane in self._lanes:
            await lane.put(parcel)

    async def _flush(self) -> None:
        """Send the batched stripes once the previous batch is acknowledged."""
        await self._hash()
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        await self._drain()
        batch = [b if isinstance(b, list) else stripe.encode(self.scheme, b) for b in batch]
        done = anyio.Event()
        self._inflight = done
        assert self._tg is not None, "use LayoutWriter as an async context manager"
        self._tg.start_soon(self._send_blocks, self._stripes, batch, done)
        self._stripes += len(batch)

    async def _drain(self) -> None:
        """Wait for the stripe in flight, then check enough of its fragments were stored."""
        if self._inflight is not None:
            await self._inflight.wait()
            self._inflight = None
        self._check_quorum()

    async def _send_blocks(self, first: int, batch: list[list], done: anyio.Event) -> None:
        """Fragment i of every stripe in ``batch`` to node i, in one round trip per node."""
        block_bytes = self.scheme.fragment_bytes

        async def send(i: int, node: str) -> None:
            blocks = [b[i] for b in batch]
            try:
                await self.pool.client(node).append_many(f"{self.oid}.{i}", first, blocks,
                                                         block_bytes=block_bytes, meta=self._meta)
            except RpcError as e:
                log.warning("fragment append to %s failed: %s", node, e,
                            extra={"event": "fragment.append_failed", "node": node, "fid": f"{self.oid}.{i}",
                                   "error": str(e)})
                self._lose(i, node, e)
                await self._hand_off(i, first, blocks)

        try:
            async with anyio.create_task_group() as tg:
                for i, node in enumerate(self.nodes):
                    if node is not None:
                        tg.start_soon(send, i, node)
        finally:
            done.set()

    def _lose(self, i: int, node: str, e: RpcError) -> None:
        """Fragment i's node failed a call: no longer named for it."""
        self.pool.stats["fragment_write_errors"] += 1
        if isinstance(e, (Unavailable, DeadlineExceeded)):
            # Refused, or silent past the deadline (a host cut off): out of placements for a
            # while, or every write would wait the deadline out on it again.
            self.pool.mark_down(node)
        else:  # it answered (a full disk, say): its temp file is abort's to remove
            self._strays.append((i, node))
        if self._placed[i] == node:
            self._placed[i] = None
        self.nodes[i] = None

    async def _hand_off(self, i: int, first: int, blocks: Sequence) -> bool:
        """Give fragment i to the next up handoff node: the blocks before ``first`` rebuilt from
        k other fragments of this upload, then ``blocks`` (stripes ``first``..). Returns whether
        a node took it; if none could, fragment i stays unplaced and the quorum check decides."""
        fid = f"{self.oid}.{i}"
        while self._spare:
            target = self._spare.pop(0)
            if target in self.pool.down():
                continue
            self._placed[i] = target
            try:
                await self._backfill(i, target, first)
                if blocks:
                    await self.pool.client(target).append_many(fid, first, blocks,
                                                               block_bytes=self.scheme.fragment_bytes,
                                                               meta=self._meta)
            except RpcError as e:
                log.warning("handoff of %s to %s failed: %s", fid, target, e,
                            extra={"event": "fragment.handoff_failed", "node": target, "fid": fid,
                                   "error": str(e)})
                self._lose(i, target, e)
                continue
            except ReadFailed as e:
                # Fewer than k other fragments readable: nothing to rebuild the node's share from.
                log.warning("handoff of %s impossible: %s", fid, e,
                            extra={"event": "fragment.handoff_failed", "fid": fid, "error": str(e)})
                self._strays.append((i, target))
                self._placed[i] = None
                return False
            self.nodes[i] = target
            self.pool.stats["handoff_writes"] += 1
            log.info("fragment %s handed off to %s (home %s)", fid, target, self.homes[i],
                     extra={"event": "fragment.handoff", "fid": fid, "node": target, "home": self.homes[i]})
            return True
        return False

    async def _backfill(self, i: int, target: str, upto: int) -> None:
        """Append blocks 0..upto-1 of fragment i to ``target``, rebuilt from other fragments of
        this upload as their nodes hold them so far (data fragments first, so a lost parity
        costs an encode, not a decode). Reads go ``WRITE_BATCH_BYTES`` of stripes at a time."""
        per_round = max(1, WRITE_BATCH_BYTES // self.scheme.stripe_bytes)
        k = self.scheme.k
        bad: set[int] = set()
        for first in range(0, upto, per_round):
            count = min(per_round, upto - first)
            got: dict[int, list] = {}
            for j, node in enumerate(list(self.nodes)):
                if len(got) == k:
                    break
                if j == i or node is None or j in bad or node in self.pool.down():
                    continue
                try:
                    got[j] = await self.pool.client(node).read(f"{self.oid}.{j}", first, count, pending=True)
                except RpcError:
                    bad.add(j)  # the append to it will fail and hand it off in turn
            if len(got) < k or any(len(b) != count for b in got.values()):
                raise ReadFailed(f"{self.oid}: stripes {first}..{first + count - 1}: only {len(got)} "
                                 f"of {k} fragments readable to rebuild fragment {i}")
            made = await anyio.to_thread.run_sync(_rebuild_block, self.scheme, got, count, i)
            await self.pool.client(target).append_many(f"{self.oid}.{i}", first, made,
                                                       block_bytes=self.scheme.fragment_bytes,
                                                       meta=self._meta)

    def _check_quorum(self) -> None:
        alive = sum(1 for n in self.nodes if n is not None)
        if alive < write_quorum(self.scheme):
            raise WriteFailed(f"only {alive} of {self.scheme.width} fragments could be stored")

    async def finish(self) -> Layout:
        if self._size == 0:
            # An empty part: nothing to store, no fragment anywhere.
            self._finished = True
            return Layout(oid=self.oid, size=0, k=self.scheme.k, m=self.scheme.m,
                          stripe_bytes=self.scheme.stripe_bytes, nodes=(None,) * self.scheme.width)
        if self._buffered:
            await self._send_stripe(self._take(self._buffered))
        await self._hash()
        for lane in self._lanes:
            lane.close()  # the lanes finish their backlog while the last batch and commit run
        await self._settle()
        await self._flush()
        await self._drain()

        self._committing = True

        failed: list[int] = []

        async def commit(i: int, node: str) -> None:
            try:
                await self.pool.client(node).commit(f"{self.oid}.{i}", self._stripes)
            except RpcError as e:
                log.warning("fragment commit on %s failed: %s", node, e,
                            extra={"event": "fragment.commit_failed", "node": node, "fid": f"{self.oid}.{i}",
                                   "error": str(e)})
                self._lose(i, node, e)
                failed.append(i)

        async with anyio.create_task_group() as tg:
            for i, node in enumerate(self.nodes):
                if node is not None:
                    tg.start_soon(commit, i, node)
        # A node lost at the commit: the whole fragment rebuilt onto a handoff node, committed.
        for i in failed:
            while await self._hand_off(i, self._stripes, ()):
                node = self.nodes[i]
                assert node is not None
                try:
                    await self.pool.client(node).commit(f"{self.oid}.{i}", self._stripes)
                    break
                except RpcError as e:
                    self._lose(i, node, e)
        self._check_quorum()
        for lane in self._lanes:
            await lane.wait()
        self._finished = True
        stored = sum(1 for n in self.nodes if n is not None)
        if stored < self.scheme.width:
            self.pool.stats["degraded_writes"] += 1
            log.warning("object %s acknowledged with %d of %d fragments per stripe (write quorum %d): "
                        "too few storage nodes answered", self.oid, stored, self.scheme.width,
                        write_quorum(self.scheme),
                        extra={"event": "object.degraded_write", "oid": self.oid, "fragments": stored,
                               "width": self.scheme.width})
        homes = tuple(h if self.nodes[i] != h else None for i, h in enumerate(self.homes))
        return Layout(oid=self.oid, size=self._size, k=self.scheme.k, m=self.scheme.m,
                      stripe_bytes=self.scheme.stripe_bytes, nodes=tuple(self.nodes),
                      homes=homes if any(h is not None for h in homes) else ())

    async def abort(self) -> None:
        """Remove whatever was written; safe to call after a failure or a cancellation."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for i, node in enumerate(self._placed):
                    if node is None:
                        continue
                    client = self.pool.client(node)
                    if self._finished:
                        tg.start_soon(_quietly, client.delete, f"{self.oid}.{i}")
                        continue
                    # Some nodes may have committed before the quorum failed, or be committing
                    # still (a commit we gave up on runs to its end there).
                    tg.start_soon(_remove, client, f"{self.oid}.{i}", self._committing)
                for i, node in self._strays:
                    if node in self._placed:
                        continue  # named again for some fragment: handled above
                    client = self.pool.client(node)
                    tg.start_soon(_remove, client, f"{self.oid}.{i}", self._committing or self._finished)


class _DigestLane:
    """Hash ``updates`` fed every stripe of a write, in order, on worker threads.

    ``put`` queues a parcel of stripes (waiting while ``backlog`` parcels are queued already);
    ``run``, a task of the writer, hands each parcel to a worker thread, which feeds it to each
    update in turn. ``close`` says no more is coming; ``wait`` returns once everything queued
    was hashed, and raises what an update did.
    """

    def __init__(self, updates: Sequence[Callable[[Buffer], None]], backlog: int):
        self.updates = updates
        self._send, self._receive = anyio.create_memory_object_stream[list[Buffer]](backlog)
        self._done = anyio.Event()
        self._error: BaseException | None = None

    async def put(self, parcel: list[Buffer]) -> None:
        try:
            await self._send.send(parcel)
        except anyio.BrokenResourceError:
            await self.wait()  # the lane ended on an error: that error, not this one
            raise

    def close(self) -> None:
        self._send.close()

    async def run(self) -> None:
        try:
            async with self._receive:
                async for parcel in self._receive:
                    await anyio.to_thread.run_sync(self._feed, parcel)
                    del parcel
        except Exception as e:  # noqa: BLE001 - raised by wait(), in the writer's own task
            self._error = e
        finally:
            self._done.set()

    def _feed(self, parcel: list[Buffer]) -> None:
        for update in self.updates:
            for piece in parcel:
                update(piece)

    async def wait(self) -> None:
        await self._done.wait()
        if self._error is not None:
            raise self._error


def _rebuild_block(scheme: ErasureScheme, got: dict[int, list], count: int, want: int) -> list[bytes]:
    """Block ``want`` of ``count`` stripes from k other blocks of each (index -> per stripe)."""
    return [stripe.rebuild(scheme, {j: b[n] for j, b in got.items()}, [want])[want] for n in range(count)]


async def _quietly(fn: Callable, *args: object) -> None:
    try:
        with anyio.fail_after(10):
            await fn(*args)
    except (RpcError, TimeoutError) as e:
        log.info("cleanup call failed (garbage collector will remove it): %s", e)


async def _remove(client: StorageClient, fid: str, committed_too: bool) -> None:
    """Abort the upload of ``fid`` on a node, then (``committed_too``) delete the committed file.
    In that order: a commit still running there holds the upload until its rename is done, and
    the abort answers only then, so the delete comes after the rename, never before it."""
    await _quietly(client.abort, fid)
    if committed_too:
        await _quietly(client.delete, fid)


async def delete_layouts(pool: StoragePool, layouts: Sequence[Layout]) -> None:
    """Best-effort removal of the fragments of replaced or deleted objects."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            for lay in layouts:
                for i, node in enumerate(lay.nodes):
                    if node is not None:
                        tg.start_soon(_quietly, pool.client(node).delete, lay.fid(i))


def _read_failed(pool: StoragePool, lay: Layout, index: int, e: RpcError) -> None:
    log.warning("fragment %s on %s unreadable: %s", lay.fid(index), lay.nodes[index], e,
                extra={"event": "fragment.read_failed", "node": lay.nodes[index], "fid": lay.fid(index),
                       "error": str(e)})
    pool.stats["fragment_read_errors"] += 1
    if isinstance(e, (Unavailable, DeadlineExceeded)):
        pool.mark_down(lay.nodes[index])  # type: ignore[arg-type]


async def _report_corrupt(pool: StoragePool, lay: Layout, index: int, e: RpcError) -> None:
    """Tell the node a block it sent unread failed its check here (its scrubber then verifies
    the fragment), as its own check would have; briefly: the read goes on without it."""
    try:
        with anyio.fail_after(SUSPECT_TIMEOUT_S):
            client = pool.client(lay.nodes[index])  # type: ignore[arg-type]
            await client.suspect(lay.fid(index), e.details.get("block", -1))
    except (RpcError, TimeoutError) as err:
        log.info("could not report corrupt %s to %s: %s", lay.fid(index), lay.nodes[index], err)


async def _start_reads(pool: StoragePool, lay: Layout, first: int, count: int,
                       indexes: Iterable[int], *, down_too: bool = False,
                       into_pipe: bool = False) -> dict[int, PendingRead]:
    """Put reads of blocks ``first .. first+count-1`` of the given fragments on the wire (those
    on nodes marked down only with ``down_too``; ``into_pipe``: see ``read_layout``)."""
    calls: dict[int, PendingRead] = {}
    down = set() if down_too else pool.down()
    for i in indexes:
        node = lay.nodes[i]
        if node is None or node in down:
            continue
        try:
            calls[i] = await pool.client(node).start_read(lay.fid(i), first, count, into_pipe=into_pipe)
        except RpcError as e:
            _read_failed(pool, lay, i, e)
    return calls


async def _collect(pool: StoragePool, lay: Layout, count: int, calls: dict[int, PendingRead],
                   got: dict[int, list]) -> None:
    for i, call in calls.items():
        try:
            blocks = await call.blocks()
        except RpcError as e:
            _read_failed(pool, lay, i, e)
            if e.details.get("found_by") == "reader":
                await _report_corrupt(pool, lay, i, e)
            continue
        if len(blocks) == count:
            got[i] = blocks


async def _finish_reads(pool: StoragePool, lay: Layout, first: int, count: int,
                        calls: dict[int, PendingRead]) -> list[list]:
    """Stripes ``first .. first+count-1``, each as the buffers that make up its user bytes (the
    last stripe unpadded), from the reads in ``calls`` (data fragments), falling back to parity
    fragments when some are missing.

    With every data fragment at hand a stripe is just its k data blocks in order (zfec is
    systematic), so they are handed on as they are, uncopied, for the socket to send.
    """
    scheme = lay.scheme
    got: dict[int, list] = {}
    await _collect(pool, lay, count, calls, got)
    if len(got) < scheme.k:
        # zfec is systematic: only a missing or corrupt data fragment costs a decode.
        pool.stats["degraded_reads"] += 1
        extra = await _start_reads(pool, lay, first, count, range(scheme.k, scheme.width))
        await _collect(pool, lay, count, extra, got)
    if len(got) < scheme.k:
        # Last resort before failing the read: fragments on nodes marked down. A node restarted
        # within its hold answers (it is readmitted by the prober only later); one still dead
        # costs the attempt, on a read that would otherwise fail anyway.
        held = [i for i in range(scheme.width) if i not in got and lay.nodes[i] in pool.down()]
        if held:
            extra = await _start_reads(pool, lay, first, count, held, down_too=True)
            await _collect(pool, lay, count, extra, got)
    if len(got) < scheme.k:
        raise ReadFailed(f"object {lay.oid}: only {len(got)} of {scheme.k} needed fragments readable")
    whole = all(i in got for i in range(scheme.k))
    if not whole:
        # A decode needs the bytes: blocks still in pipes are read out (each node's in order).
        got = {i: [bytes(b) if type(b) is PipeSpan else b for b in blocks] for i, blocks in got.items()}
    out = []
    for j in range(count):
        s = first + j
        length = min(lay.stripe_bytes, lay.size - s * lay.stripe_bytes)
        if whole:
            out.append(_truncate([got[i][j] for i in range(scheme.k)], length))
        else:
            out.append([stripe.decode(scheme, {i: b[j] for i, b in got.items()}, length)])
    return out


def _truncate(pieces: list, length: int) -> list:
    """The first ``length`` bytes of the concatenation of ``pieces``, as views."""
    out = []
    for p in pieces:
        if length <= 0:
            break
        mv = p if type(p) is PipeSpan else memoryview(p)
        out.append(mv[:length] if len(mv) > length else mv)
        length -= len(mv)
    return out


def _window(pieces: list, lo: int, hi: int) -> list:
    """Bytes ``lo .. hi-1`` of the concatenation of ``pieces``, as views."""
    out = []
    pos = 0
    for p in pieces:
        n = len(p)
        a, b = max(lo - pos, 0), min(hi - pos, n)
        if a < b:
            out.append(p[a:b] if (a, b) != (0, n) else p)
        pos += n
        if pos >= hi:
            break
    return out


async def read_layout(pool: StoragePool, lay: Layout, start: int, end: int, *,
                      spliced: bool = False) -> AsyncIterator[bytes | PipeSpan]:
    """Yield bytes ``start .. end-1`` of ``lay``, touching only the stripes the range covers.

    ``spliced`` (a GET's response body): where every data fragment answers, the pieces are
    :class:`~headwater.splice.PipeSpan` of the storage nodes' replies, never received into this
    process, for the HTTP core to splice to the client's socket (``bytes(piece)`` where it
    cannot). Each piece must be taken (sent or read) before the next one is asked for.

    The next batches of stripes are requested before the current one is yielded, so the storage
    nodes read while the client receives. With a read budget, a batch's bytes are taken from it
    before its reads go out and given back once the client has taken them; read-ahead happens
    only while the budget has room, so a GET that finds the budget spent for ``read_wait_s``
    fails with :class:`ReadsBusy` (503). One batch is read ahead whenever there is room; up to
    ``READ_AHEAD`` while at least half the budget is free, so a stalled client holds
    ``READ_AHEAD + 1`` batches at most, and only while the buffer is mostly unused: once half is
    held, every GET goes back to one batch ahead. A read that starts while no other is under
    way in this process reads ``READ_BATCH_ALONE`` stripes a batch, ``READ_AHEAD_ALONE`` ahead.
    """
    if end <= start:
        return
    sb = lay.stripe_bytes
    s0, s1 = start // sb, (end - 1) // sb
    # Decided once, at the start: a GET that began alone keeps its batches when others join
    # (4 MiB more held than theirs, by at most one GET a worker at a time).
    alone = pool.reads_in_progress == 0
    per_batch, most_ahead = (READ_BATCH_ALONE, READ_AHEAD_ALONE) if alone else (READ_BATCH, READ_AHEAD)
    batches = [(s, min(per_batch, s1 - s + 1)) for s in range(s0, s1 + 1, per_batch)]
    data_indexes = range(lay.k)
    budget = pool.read_budget
    held = 0
    # Batches whose reads are on the wire, in order: (index in batches, calls, bytes held).
    ahead: collections.deque[tuple[int, dict[int, PendingRead], int]] = collections.deque()

    async def take(count: int) -> int:
        if budget is None:
            return 0
        try:
            return await budget.take(count * sb, timeout=pool.read_wait_s)
        except BudgetExhausted as e:
            raise ReadsBusy(f"read buffer full: {e}") from None

    def room_for(n: int) -> int | None:
        """Bytes taken for read-ahead batch ``n``, or None when it must wait."""
        depth = len(ahead)
        if depth >= most_ahead:
            return None
        if budget is None:
            return 0
        if depth >= 1 and budget.free < budget.total // 2:
            return None
        return budget.try_take(batches[n][1] * sb)

    async def read_ahead(after: int) -> None:
        n = after + 1 + len(ahead)
        while n < len(batches):
            got = room_for(n)
            if got is None:
                return
            # Appended before the await: a failure while starting still gives the bytes back.
            entry = (n, {}, got)
            ahead.append(entry)
            entry[1].update(await _start_reads(pool, lay, *batches[n], data_indexes, into_pipe=spliced))
            n += 1

    timing = pool.read_timing
    clock = timing.clock
    started = clock()
    timing.reads += 1
    pool.reads_in_progress += 1
    try:
        got = await take(batches[0][1])
        ahead.append((0, {}, got))
        ahead[0][1].update(await _start_reads(pool, lay, *batches[0], data_indexes, into_pipe=spliced))
        for n, (first, count) in enumerate(batches):
            if not ahead:  # no room to read ahead last time: read this batch now
                got = await take(count)
                ahead.append((n, {}, got))
                ahead[0][1].update(await _start_reads(pool, lay, first, count, data_indexes, into_pipe=spliced))
            index, current, held = ahead.popleft()
            assert index == n, "read-ahead batches are kept in order"
            asked = clock()
            stripes = await _finish_reads(pool, lay, first, count, current)
            now = clock()
            if n == 0:
                timing.first_wait_s += now - started
            else:
                timing.wait_s += now - asked
            await read_ahead(n)
            handed = clock()
            for j, pieces in enumerate(stripes):
                base = (first + j) * sb
                for piece in _window(pieces, max(start - base, 0), end - base):
                    if type(piece) is PipeSpan:
                        timing.piped_bytes += piece.length
                    yield piece
            del stripes
            timing.send_s += clock() - handed
            timing.batches += 1
            if budget is not None:
                budget.give(held)
            held = 0
    finally:
        pool.reads_in_progress -= 1
        for _, calls, got in ahead:
            for call in calls.values():
                call.discard()
            held += got
        if budget is not None:
            budget.give(held)
