"""The grpc.aio driver of the send window: one Submit stream at a time, with I/O and nothing else to decide.

``put`` → prepare (sign + journal, in order) → ``SendWindow`` → stream (≤ window batches in flight).
The window decides what a response, a refusal or a broken stream means; this module writes,
reads, looks ids up, journals and sleeps accordingly. A broken stream makes every unanswered batch
*uncertain*: its ids are looked up, found ones are settled from the lookup, the rest go back to the
queue in their original order (same ids).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np

from clients.client import BATCHED_ANSWERS, answers_in
from clients.psp.config import Clock, SdkConfig
from clients.psp.durable import JournalWriter
from clients.psp.outcomes import Columns, Origin
from clients.psp.routing import Router
from clients.psp.window import (
    DELIBERATE_REFUSALS,
    Batch,
    EngineStats,
    Fail,
    Found,
    SendWindow,
    UnexpectedResponse,
    outcomes_of_response,
    settle_by_lookup,
)
from clients.sdk_errors import (
    LedgerStatusError,
    NotLeaderError,
    OutcomeUnknownError,
    SdkError,
    UnavailableError,
    error_for_rpc,
    error_for_status,
    error_for_trailers,
)
from clients.sdk_types import RetryPolicy
from ledger.types import EventKind
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("sovledger.sdk")

_READ_POLL_S = 0.25  # how often a waiting read checks the writer and the response timeout


@dataclass(frozen=True, slots=True)
class EngineContext:
    """What an engine needs from its SDK, handed over explicitly."""

    router: Router
    retry: RetryPolicy
    config: SdkConfig
    clock: Clock
    stub: Callable[[str], pb_grpc.LedgerStub]
    prepare: Callable[[Batch], Awaitable[None]]
    connect: Callable[[str], Awaitable[bool]]  # is a connection to the target up (waits briefly)?
    lookup: Callable[[Sequence[int]], Awaitable[list[pb.TransferInfo]]]
    journal: JournalWriter
    batch_ids: Iterator[int]


def submit_request(b: Batch) -> pb.SubmitRequest:
    return pb.SubmitRequest(batch_id=b.batch_id, kind=int(b.kind),  # type: ignore[arg-type]
                            records=b.records, signatures=b.signatures,
                            signer_key_id=b.key_id if b.signatures else b"",
                            sign_group=b.sign_group if b.signatures else 0)


class _RoundEnd(Exception):
    """Internal: the stream round ended (broken or deliberately stopped)."""


@dataclass(slots=True)
class _Round:
    """One Submit stream to one target."""

    target: str
    call: Any  # grpc.aio bidi call (write/read)
    stop_writing: asyncio.Event = field(default_factory=asyncio.Event)
    retry_later: list[Batch] = field(default_factory=list)
    unanswered: list[Batch] = field(default_factory=list)
    broken: LedgerStatusError | None = None
    backoff_s: float = 0.0


class Engine:
    """Sends batches in order on a Submit stream to the current leader; survives everything it can."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.window = SendWindow(ctx.config.window_batches, ctx.retry, ctx.config.response_timeout_s)
        self._prep_q: asyncio.Queue[Batch | None] = asyncio.Queue()
        self._poke = asyncio.Event()
        self._closing = False
        loop = asyncio.get_running_loop()
        self._prep_task = loop.create_task(self._prep_loop())
        self._run_task = loop.create_task(self._run())

    @property
    def stats(self) -> EngineStats:
        return self.window.stats

    # -- feeding ----------------------------------------------------------------------------------

    def put(self, batch: Batch) -> None:
        if self._closing:
            raise SdkError("session is closed")
        self._prep_q.put_nowait(batch)

    async def close(self) -> None:
        """No more batches; return when every batch has been settled (and its outcome journaled)."""
        if not self._closing:
            self._closing = True
            self._prep_q.put_nowait(None)
        await asyncio.gather(self._prep_task, self._run_task)
        await self.ctx.journal.barrier()

    async def abort(self) -> None:
        for t in (self._prep_task, self._run_task):
            if not t.done():
                t.cancel()
        await asyncio.gather(self._prep_task, self._run_task, return_exceptions=True)

    async def _prep_loop(self) -> None:
        while True:
            batch = await self._prep_q.get()
            if batch is None:
                self._poke.set()
                return
            try:
                await self.ctx.prepare(batch)
            except Exception as e:  # journal or signing failed: nothing was sent
                log.error("could not prepare a batch: %s", e)
                batch.fail_all(SdkError(f"payment not sent: preparing the batch failed: {e}"), final=False)
                continue
            self.window.enqueue(batch, self.ctx.clock())
            self._poke.set()

    def _finished_feeding(self) -> bool:
        return self._closing and self._prep_task.done() and not self.window.ready

    # -- rounds -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self.window.ready:
                if self._finished_feeding():
                    return
                self._poke.clear()
                await self._poke.wait()
                continue
            target = self.ctx.router.current()
            backoff_s = await self._round(target) if await self.ctx.connect(target) else await self._unreachable(target)
            if backoff_s > 0:
                await asyncio.sleep(backoff_s)

    async def _unreachable(self, target: str) -> float:
        """No connection to ``target``: nothing was sent, so nothing is uncertain; try the next node."""
        log.warning("cannot connect to %s; trying the region's next node", target)
        self.ctx.router.failed(target)
        expired, backoff_s = self.window.on_unreachable(self.ctx.clock())
        for b in expired:
            err = UnavailableError(f"no node of the region reachable within {self.ctx.retry.deadline_s}s",
                                   target=target)
            await self._fail(b, err)
        return backoff_s

    async def _round(self, target: str) -> float:
        """One Submit stream to ``target``. Returns the back-off to sleep before the next round."""
        rnd = _Round(target, self.ctx.stub(target).Submit(metadata=BATCHED_ANSWERS))  # type: ignore[call-arg]
        wtask = asyncio.get_running_loop().create_task(self._writer(rnd))
        cancelled = False
        try:
            await self._read_responses(rnd, wtask)
        except (_RoundEnd, UnexpectedResponse, grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            await self._on_broken(rnd, e)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._end_round(rnd, wtask, cancelled)
        return rnd.backoff_s

    async def _writer(self, rnd: _Round) -> None:
        while not rnd.stop_writing.is_set():
            if self.window.can_send():
                b = self.window.next_send(next(self.ctx.batch_ids), self.ctx.clock())
                await rnd.call.write(submit_request(b))
                continue
            if self._finished_feeding():
                await rnd.call.done_writing()
                return
            self._poke.clear()
            await self._poke.wait()

    async def _read_responses(self, rnd: _Round, wtask: asyncio.Task[None]) -> None:
        while (message := await self._read_one(rnd, wtask)) is not None:
            for resp in answers_in(message):  # one message may answer several batches, in order
                b = self.window.on_response(resp.batch_id, self.ctx.clock())
                self._poke.set()
                if resp.status.code == 0:
                    self.ctx.router.succeeded(rnd.target)
                    self.window.on_accepted()
                    await self._settle(b, resp)
                else:
                    await self._on_refusal(rnd, b, resp.status)

    async def _read_one(self, rnd: _Round, wtask: asyncio.Task[None]) -> pb.SubmitResponse | None:
        """The next response; None when the round is over with nothing in flight."""
        read = asyncio.ensure_future(rnd.call.read())
        while not read.done():
            await asyncio.wait([read, wtask] if not wtask.done() else [read], timeout=_READ_POLL_S,
                               return_when=asyncio.FIRST_COMPLETED)
            if wtask.done() and not wtask.cancelled() and wtask.exception() is not None and not read.done():
                read.cancel()
                raise _RoundEnd("write failed")
            if self.window.overdue(self.ctx.clock()):
                read.cancel()
                raise _RoundEnd(f"no response in {self.ctx.config.response_timeout_s}s")
            if rnd.stop_writing.is_set() and not self.window.inflight:
                read.cancel()
                return None
        resp = read.result()
        if resp is grpc.aio.EOF:
            if self.window.inflight:
                raise _RoundEnd("stream ended with batches unanswered")
            return None
        return resp  # type: ignore[no-any-return]

    async def _on_refusal(self, rnd: _Round, b: Batch, status: pb.BatchStatus) -> None:
        err = error_for_status(status.code, status.message, status.leader_hint, rnd.target, status.reason)
        if err.retryable:
            rnd.stop_writing.set()  # the rest of this stream would be refused too
            self._poke.set()
        action = self.window.on_refusal(b, err, self.ctx.clock())
        if isinstance(action, Fail):
            await self._fail(b, err)
            return
        rnd.retry_later.append(b)
        if isinstance(err, NotLeaderError):
            self.ctx.router.failed(rnd.target, err.leader_hint)
        rnd.backoff_s = max(rnd.backoff_s, action.backoff_s)

    async def _on_broken(self, rnd: _Round, e: BaseException) -> None:
        if isinstance(e, grpc.aio.AioRpcError):
            broken = error_for_rpc(e, rnd.target)
        else:
            broken = await _final_status(rnd.call, rnd.target) or UnavailableError(
                str(e) or type(e).__name__, target=rnd.target)
        log.warning("stream to %s broke (%s); %d batch(es) unanswered", rnd.target, broken, len(self.window.inflight))
        rnd.unanswered, rnd.backoff_s = self.window.on_broken()
        rnd.broken = broken
        self.ctx.router.failed(rnd.target, broken.leader_hint)

    async def _end_round(self, rnd: _Round, wtask: asyncio.Task[None], cancelled: bool) -> None:
        rnd.stop_writing.set()
        wtask.cancel()
        rnd.call.cancel()
        await asyncio.gather(wtask, return_exceptions=True)
        unanswered = rnd.unanswered + self.window.drain_inflight()
        requeue = rnd.retry_later
        if unanswered and not cancelled:
            requeue += await self._resolve_uncertain(unanswered, rnd.broken)
        if requeue:
            self.window.requeue(requeue)
            self._poke.set()

    # -- settling ---------------------------------------------------------------------------------

    async def _settled(self, origin: Origin, cols: Columns) -> None:
        if origin.settle(cols):
            await self.ctx.journal.batch_done(origin)

    async def _failed(self, b: Batch, error: BaseException, *, final: bool) -> None:
        if b.fail_all(error, final=final) and b.kind == EventKind.CREATE_TRANSFER:
            await self.ctx.journal.batch_done(b.origin)

    async def _settle(self, b: Batch, resp: pb.SubmitResponse) -> None:
        final, confirm = outcomes_of_response(b, resp.results, resp.log_indexes, resp.blocks, resp.timestamp_ns)
        if len(final.rows):
            await self._settled(b.origin, final)
        if confirm is not None:
            await self._confirm_failures(b, confirm)

    async def _confirm_failures(self, b: Batch, failing: Columns) -> None:
        """Failing codes for a batch an earlier send of which may have committed: look them up first."""
        positions = np.searchsorted(b.rows, failing.rows).tolist()
        try:
            found = await self._lookup(b, positions)
        except LedgerStatusError:
            found = [None] * len(positions)
        committed = settle_by_lookup(b, positions, found)
        if len(committed.rows):
            await self._settled(b.origin, committed)
        await self._settled(b.origin, failing)  # rows settled by the lookup above are skipped

    async def _fail(self, b: Batch, err: LedgerStatusError) -> None:
        """A batch refused for good. If an earlier send may have applied it, it is not a failure."""
        if b.uncertain:
            await self._failed(b, OutcomeUnknownError(b.ids, err), final=False)
            return
        await self._failed(b, err, final=True)

    async def _lookup(self, b: Batch, positions: Sequence[int]) -> list[Found | None]:
        infos = await self.ctx.lookup([int.from_bytes(b.record(k)[:16], "little") for k in positions])
        return [Found(i.record, i.log_index, i.block, i.timestamp_ns) if i.found else None for i in infos]

    async def _resolve_uncertain(self, batches: list[Batch], cause: LedgerStatusError | None) -> list[Batch]:
        """Batches sent without a response: settle what committed (lookup), return the rest to re-send."""
        out: list[Batch] = []
        for b in batches:
            if b.kind != EventKind.CREATE_TRANSFER:
                out.append(b)  # accounts: re-sending is idempotent (`exists` is success)
            elif await self._resolve_one(b, cause):
                out.append(b)
        return out

    async def _resolve_one(self, b: Batch, cause: LedgerStatusError | None) -> bool:
        """Settle the rows of ``b`` that committed; True when the rest of it is to be sent again."""
        if self.window.give_up(b, self.ctx.clock()):
            await self._failed(b, OutcomeUnknownError(b.ids, cause), final=False)
            return False
        try:
            found = await self._lookup(b, range(len(b)))
        except LedgerStatusError as e:
            log.warning("lookup after a broken stream failed: %s", e)
            await self._failed(b, OutcomeUnknownError(b.ids, e), final=False)
            return False
        committed = settle_by_lookup(b, range(len(b)), found)
        self.window.stats.resolved_by_lookup += len(committed.rows)
        if len(committed.rows):
            await self._settled(b.origin, committed)
        rest = ~np.isin(b.rows, committed.rows)
        if not rest.any():
            return False
        b.keep(rest)
        if cause is not None and cause.code in DELIBERATE_REFUSALS:
            # the node deliberately refused the stream (not a crash) and these are not in the ledger
            await self._failed(b, cause, final=True)
            return False
        if not b.signed:  # a group-signed batch lost some rows: sign the rest anew (journaled already)
            await self.ctx.prepare(b)
        return True


async def _final_status(call: Any, target: str) -> LedgerStatusError | None:
    """The status (with leader hint and reason) a finished stream ended with, when it ended with an error."""
    if not call.done():
        return None
    try:
        code = await call.code()
        if code == grpc.StatusCode.OK:
            return None
        return error_for_trailers(code, await call.details() or "", await call.trailing_metadata(), target)
    except Exception:
        return None


__all__ = ["Engine", "EngineContext", "submit_request"]
