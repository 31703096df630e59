"""Ingest: batches from many client streams are grouped into blocks and committed in order.

A block closes when it holds ``block_items_max`` items or ``block_delay_ms`` after its first batch
arrived. While one block is being committed (applied + fsynced, in a worker thread) the next one
fills up, so the fsync cost is shared by everything that arrived meanwhile (group commit). With
``linger_blocks`` blocks already being committed, a block that is not full stays open past its delay
until one of them is answered: a block that would only wait behind them anyway takes everything
that arrives meanwhile instead of closing small (many one-payment requests then share one block's
fixed cost: the fsyncs, the checkpoint signature, the Raft round). Full blocks pipeline up to
``inflight_blocks_max``.

Bounded everywhere: the queue holds at most ``queue_items_max`` items and ``QUEUE_BYTES_MAX`` bytes
(records and signatures plus ``BATCH_OVERHEAD_BYTES`` per batch — a queue of one-payment batches
costs far more per item than one of full batches); beyond either a batch is refused at once with
``Overloaded`` (RESOURCE_EXHAUSTED) instead of growing memory.

A full store (map or disk) refuses a block as a whole (nothing of it is applied). New work is then
refused with ``StoreUnavailable`` for ``STORE_RETRY_S``; after that the next block tries again, and
the first one that commits ends the refusal — space freed on the disk needs no restart.

A batch's future resolves only after its block is durably committed — the single-node committer
fsyncs; the replicated committer waits for a quorum's fsync and the local apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from ledger.codec import Batch, Proposal
from ledger.state import BatchOutcome, BlockOutcome
from node import metrics
from node.errors import Indeterminate, Overloaded, StoreUnavailable, fail_future

log = logging.getLogger("sovledger.ingest")

Committer = Callable[[Proposal], Awaitable[BlockOutcome]]

STORE_RETRY_S = 1.0  # after a store-full refusal, how long new work is refused before a block retries
# Bytes the queue may hold. 64 MiB is ~2.5 s of a region's best rate in full batches, so it never
# limits a healthy node; it is what a burst of tiny batches (each costing BATCH_OVERHEAD_BYTES) hits.
QUEUE_BYTES_MAX: Final = 64 << 20
# What one queued batch costs beyond its record bytes: the Batch, its future, the pending entry,
# the done-callback (measured with tracemalloc: ~0.9 KiB; rounded up).
BATCH_OVERHEAD_BYTES: Final = 1024


def batch_bytes(batch: Batch) -> int:
    """What a queued batch holds in memory, for the byte bounds."""
    return len(batch.records) + len(batch.signatures) + BATCH_OVERHEAD_BYTES


@dataclass(slots=True)
class _Pending:
    batch: Batch
    future: asyncio.Future[tuple[BatchOutcome, BlockOutcome]]
    queued_at: float  # time.perf_counter() when submitted: the batch's ack latency metric


def _observe_acks(settled: list[_Pending]) -> None:
    """Ack latency of settled batches, observed in one loop per block (not a callback per future)."""
    now = time.perf_counter()
    observe = metrics.BATCH_ACK.observe
    for p in settled:
        observe(now - p.queued_at)


class Ingest:
    def __init__(self, commit: Committer, block_items_max: int, block_delay_ms: float,
                 queue_items_max: int, clock_ns: Callable[[], int] = time.time_ns,
                 inflight_blocks_max: int = 1, queue_bytes_max: int = QUEUE_BYTES_MAX,
                 linger_blocks: int | None = None) -> None:
        self._commit = commit
        self._block_items_max = block_items_max
        self._block_delay_s = block_delay_ms / 1000.0
        self._queue_items_max = queue_items_max
        self._clock_ns = clock_ns
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._queue_bytes_max = queue_bytes_max
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight = asyncio.Semaphore(inflight_blocks_max)
        # with this many blocks being committed, a block that is not full waits for one of them
        self._linger_blocks = linger_blocks or inflight_blocks_max
        self._committing = 0
        self._commits: set[asyncio.Task[None]] = set()
        # set when the store is full: refuse new work for store_retry_s, then let one block try again
        self._refusal: Exception | None = None
        self._refused_at = 0.0
        self.store_retry_s = STORE_RETRY_S
        self.blocks_committed = 0
        self.items_committed = 0

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ingest")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = list(self._queue)
        self._queue.clear()
        for p in left:
            fail_future(p.future, Indeterminate("node is shutting down; retry on another node"))
        _observe_acks(left)

    @property
    def store_full(self) -> bool:
        """True from a block refused by a full store until a block commits again."""
        return self._refusal is not None

    def submit(self, batch: Batch) -> asyncio.Future[tuple[BatchOutcome, BlockOutcome]]:
        """Queue a batch; the future yields its outcome once its block is durable."""
        if self._refusal is not None and time.monotonic() - self._refused_at < self.store_retry_s:
            raise self._refusal
        n = batch.count
        size = batch_bytes(batch)
        if self._queued_items + n > self._queue_items_max:
            raise Overloaded(
                f"ingest queue full ({self._queued_items} items waiting, limit {self._queue_items_max}); "
                "retry with backoff or slow down"
            )
        if self._queued_bytes + size > self._queue_bytes_max and self._queue:
            raise Overloaded(
                f"ingest queue full ({self._queued_bytes} bytes waiting, limit {self._queue_bytes_max}); "
                "retry with backoff, slow down, or send fewer, larger batches"
            )
        fut: asyncio.Future[tuple[BatchOutcome, BlockOutcome]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(batch, fut, time.perf_counter()))
        self._queued_items += n
        self._queued_bytes += size
        if len(self._queue) == 1 or self._queued_items >= self._block_items_max:
            self._wakeup.set()  # the first batch of a block, or a full block: not every batch
        return fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._fill()
            while self._committing >= self._linger_blocks and not self._full():
                # group commit: enough blocks are on their way; a partial block keeps filling until
                # one of them is answered (or it is full) instead of closing small and waiting anyway
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._inflight.acquire()  # bounded pipelining: at most N blocks being committed
            taken = self._take()
            if not taken:
                self._inflight.release()
                continue
            # the proposal (and its timestamp) is built here, in order; commits may overlap
            proposal = Proposal(self._clock_ns(), tuple(p.batch for p in taken))
            self._committing += 1
            task = asyncio.get_running_loop().create_task(self._commit_block(taken, proposal))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    def _full(self) -> bool:
        return self._queued_items >= self._block_items_max

    async def _fill(self) -> None:
        """Wait until the block is full or its delay since the first batch has passed (submit wakes
        this only when the block is full: not once per batch)."""
        if self._full():
            return
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._block_delay_s)

    def _take(self) -> list[_Pending]:
        taken: list[_Pending] = []
        items = 0
        while self._queue:
            n = self._queue[0].batch.count
            if taken and items + n > self._block_items_max:
                break
            p = self._queue.popleft()
            self._queued_items -= n
            self._queued_bytes -= batch_bytes(p.batch)
            if p.future.cancelled():  # its stream ended: nobody waits for it
                _observe_acks([p])
                continue
            taken.append(p)
            items += n
        return taken

    async def _commit_block(self, taken: list[_Pending], proposal: Proposal) -> None:
        try:
            outcome = await self._commit(proposal)
        except Exception as e:  # nothing of this block is durable: every batch gets the error
            if isinstance(e, StoreUnavailable):
                self._refusal, self._refused_at = e, time.monotonic()
            log.error("block commit failed: %s", e)
            for p in taken:
                fail_future(p.future, e)
            _observe_acks(taken)
            return
        finally:
            self._inflight.release()
            self._committing -= 1
            self._wakeup.set()  # a lingering block may close now
        if self._refusal is not None:
            log.info("the store takes writes again: accepting new work")
            self._refusal = None
        self.blocks_committed += 1
        self.items_committed += proposal.item_count
        metrics.count_block((p.batch, o.results) for p, o in zip(taken, outcome.batches, strict=True))
        for p, batch_outcome in zip(taken, outcome.batches, strict=True):
            if not p.future.done():
                p.future.set_result((batch_outcome, outcome))
        _observe_acks(taken)
