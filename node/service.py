"""gRPC servicers: Ledger (PSP ingest and lookups), Audit (checkpoints, proofs, entries), Admin.

Handlers stay thin: validate framing, hand work to the ingest pipeline or the reader, and map
expected errors to a status in one place (node.errors.abort / batch_status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc

from ledger.codec import LEAF_HEADER_SIZE, TRANSFER_SIZE, Batch, EncodingError, validate_batch
from ledger.invariant import InvariantViolation
from ledger.reader import HISTORY_PAGE_MAX, LedgerReader
from ledger.screening import ScreeningConfig
from ledger.state import BatchOutcome, BlockOutcome
from ledger.types import BATCH_ITEMS_MAX
from node import psp_guard
from node.authz import caller
from node.errors import BadRequest, DataLoss, NodeError, OutOfRange, Overloaded, abort, batch_status
from node.offload import Offload
from node.pii_edge import screen_batch
from node.pipeline import BATCH_OVERHEAD_BYTES, Ingest
from node.psp_auth import PspAuthenticator, PspAuthError
from node.signing import CheckpointService, InconsistentCheckpoint
from sovledger_pb import ANSWERS_BATCHED, ANSWERS_METADATA_KEY
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("sovledger.service")

ENTRIES_CHUNK = 1000
FOLLOW_POLL_S = 0.05  # how often an idle follow stream looks for newly signed entries


STALE_READ_KEY = "sovledger-read"
# Request bytes all Submit streams together may hold until answered (queued, in a block being
# committed, or waiting for a slow reader). Each stream's window is bounded in batches, but the
# number of streams is not: without this, N streams x 32 batches x 3 MiB. 256 MiB lets five
# streams keep full windows of the largest batches; beyond it a batch is refused (RESOURCE_EXHAUSTED).
WINDOW_BYTES_MAX: Final = 256 << 20


class WindowBudget:
    """Bytes held by every stream's in-flight window, against one node-wide limit (event loop only)."""

    def __init__(self, limit_bytes: int = WINDOW_BYTES_MAX) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    def take(self, n: int) -> bool:
        if self.held_bytes + n > self.limit_bytes and self.held_bytes:
            return False
        self.held_bytes += n
        return True

    def release(self, n: int) -> None:
        self.held_bytes -= n


def request_bytes(req: pb.SubmitRequest) -> int:
    return len(req.records) + len(req.signatures) + BATCH_OVERHEAD_BYTES


Pending = asyncio.Future[tuple[BatchOutcome, BlockOutcome]] | pb.BatchStatus  # a request's answer-to-be
Answer = tuple[int, Pending, int]  # batch id, its answer-to-be, its request bytes
# A stream's window: its requests' answers-to-be in request order; None ends it.
Inflight = asyncio.Queue[Answer | None]
# A batched response answers at most this many requests and this many records (what one full
# batch's answer holds), so its message stays within what one answer may already be.
ANSWERS_PER_MESSAGE_MAX: Final = 256
ANSWERED_RECORDS_MAX: Final = BATCH_ITEMS_MAX


def _wants_batched(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == ANSWERS_METADATA_KEY and value == ANSWERS_BATCHED:
            return True
    return False


def _response(batch_id: int, pending: Pending) -> pb.SubmitResponse:
    """The answer to one request whose future is done (or that was refused at once)."""
    if isinstance(pending, pb.BatchStatus):
        return pb.SubmitResponse(batch_id=batch_id, status=pending)
    try:
        outcome, block = pending.result()
    except Exception as e:
        return pb.SubmitResponse(batch_id=batch_id, status=batch_status(e))
    return pb.SubmitResponse(batch_id=batch_id, results=outcome.results, log_indexes=outcome.log_indexes,
                             blocks=outcome.blocks, timestamp_ns=block.header.timestamp_ns)


def _known(pending: Pending) -> bool:
    return isinstance(pending, pb.BatchStatus) or pending.done()


async def _answers(inflight: Inflight, batched: bool) -> AsyncGenerator[tuple[pb.SubmitResponse, int], None]:
    """A stream's response messages in request order, each with the request bytes it answers.

    Waits only for the head of the window; once its block is answered the answers of that block
    follow without suspending. ``batched``: the answers already known behind the head travel in
    the head's ``more`` (bounded by ``ANSWERS_PER_MESSAGE_MAX`` and ``ANSWERED_RECORDS_MAX``); the
    first one not yet known is kept for the next message."""
    item = await inflight.get()
    while item is not None:
        batch_id, pending, size = item
        if not isinstance(pending, pb.BatchStatus) and not pending.done():
            with contextlib.suppress(Exception):  # its error is answered by _response
                await pending
        head = _response(batch_id, pending)
        if not batched:
            yield head, size
            item = await inflight.get()
            continue
        more, freed, taken, item = _known_behind(inflight, len(head.results))
        if more:
            head.more.extend(more)
        yield head, size + freed
        if not taken:
            item = await inflight.get()


def _known_behind(inflight: Inflight, records: int) -> tuple[list[pb.SubmitResponse], int, bool, Answer | None]:
    """Answers already known at the front of the window (without waiting), their request bytes, and
    whether the next item was taken off the queue (then it is returned: not known yet, over the
    bounds, or the stream's end)."""
    more: list[pb.SubmitResponse] = []
    freed = 0
    while not inflight.empty():
        nxt = inflight.get_nowait()
        if nxt is None or len(more) + 1 >= ANSWERS_PER_MESSAGE_MAX or not _known(nxt[1]):
            return more, freed, True, nxt
        answer = _response(nxt[0], nxt[1])
        records += len(answer.results)
        if records > ANSWERED_RECORDS_MAX:
            return more, freed, True, nxt
        more.append(answer)
        freed += nxt[2]
    return more, freed, False, None


async def _no_barrier() -> None:
    return None


class LedgerService(pb_grpc.LedgerServicer):
    """Lookups are linearizable: served by the leader after a ReadIndex round (in a region), or
    by any replica from its local state when the caller sends metadata ``sovledger-read: stale``."""

    def __init__(self, ingest: Ingest, reader: LedgerReader, stream_inflight_max: int,
                 leader_check: Callable[[], None] | None = None,
                 read_barrier: Callable[[], Awaitable[None]] | None = None, *,
                 psp_auth: PspAuthenticator, gate: psp_guard.SubmitGate | None = None,
                 offload: Offload | None = None, screening: ScreeningConfig | None = None,
                 window: WindowBudget | None = None) -> None:
        self.window = window or WindowBudget()
        self._screening = screening or ScreeningConfig()  # personal data never reaches the log
        self._ingest = ingest
        self._gate = gate or psp_guard.SubmitGate(reader, None)
        self._offload = offload or Offload()
        # without configured keys a signed batch is refused (unknown key) rather than logged with
        # signatures nobody checked
        self._psp_auth = psp_auth
        self._reader = reader
        self._inflight_max = stream_inflight_max
        self._leader_check = leader_check or (lambda: None)
        self._read_barrier = read_barrier or _no_barrier

    async def _read_gate(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == STALE_READ_KEY and value == "stale":
                return
        await self._read_barrier()

    async def Submit(self, request_iterator: AsyncIterator[pb.SubmitRequest],
                     context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.SubmitResponse]:
        # Responses go out in request order. The bounded queue is the per-stream in-flight window:
        # when it is full we stop reading, and HTTP/2 flow control pushes back on the client.
        # Per request the hot path is synchronous (no coroutine per request unless a signature must
        # be verified in the pool): a one-payment request costs a read, a few checks, a queue entry,
        # a future resolved with its whole block, and its answer (docs: bench/README.md). A client
        # that asked for batched answers gets the answers already known in one message.
        inflight: Inflight = asyncio.Queue(self._inflight_max)
        held = [0]  # bytes of this stream's requests not yet answered (node-wide budget: self.window)
        task = asyncio.get_running_loop().create_task(
            self._read_stream(request_iterator, caller(context), inflight, held))
        try:
            async with contextlib.aclosing(_answers(inflight, _wants_batched(context))) as answers:
                async for response, size in answers:
                    held[0] -= size
                    self.window.release(size)
                    yield response
        finally:
            task.cancel()
            self.window.release(held[0])
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _read_stream(self, request_iterator: AsyncIterator[pb.SubmitRequest], who: Any,
                           inflight: Inflight, held: list[int]) -> None:
        try:
            async for req in request_iterator:
                size = request_bytes(req)
                if not self.window.take(size):
                    await inflight.put((req.batch_id, self._window_full(), 0))
                    continue
                held[0] += size
                pending = self._admit(req, who)
                if isinstance(pending, Batch):  # signed (or signatures required): verify first
                    pending = await self._verified(pending, who)
                if inflight.full():  # the window is full: stop reading until the head is answered
                    await inflight.put((req.batch_id, pending, size))
                else:  # no coroutine per request when there is room
                    inflight.put_nowait((req.batch_id, pending, size))
        finally:
            await inflight.put(None)

    def _window_full(self) -> pb.BatchStatus:
        return batch_status(Overloaded(
            f"the node holds {self.window.held_bytes} bytes of unanswered batches from all streams "
            f"(limit {self.window.limit_bytes}); retry with backoff or keep fewer batches in flight"))

    def _admit(self, req: pb.SubmitRequest, who: Any) -> Pending | Batch:
        """The synchronous checks; queues the batch when no signature needs verifying. Returns the
        batch's future, its refusal, or the batch itself when signatures must be verified first."""
        try:
            self._leader_check()
            batch = validate_batch(req.kind, req.records, req.signatures, req.signer_key_id,
                                   sign_group=req.sign_group)
            self._gate.check(who, batch)
            screen_batch(batch, self._screening)
            if batch.signatures or self._psp_auth.require_signatures:
                return batch
            return self._gate.submit(who, batch, self._ingest.submit)
        except (NodeError, EncodingError, PspAuthError) as e:
            return batch_status(e)

    async def _verified(self, batch: Batch, who: Any) -> Pending:
        try:
            await self._psp_auth.verify_batch(batch)
            return self._gate.submit(who, batch, self._ingest.submit)
        except (NodeError, EncodingError, PspAuthError) as e:
            return batch_status(e)

    async def LookupTransfers(self, request: pb.LookupRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> pb.LookupTransfersResponse:
        try:
            await self._read_gate(context)
            ids = _ids(request.ids)
            found = await self._offload.run(self._reader.transfers, ids)
            psp_guard.check_read_transfers(caller(context), ids, [f.leaf if f else None for f in found])
        except Exception as e:
            await abort(context, e)
        out = pb.LookupTransfersResponse()
        for tid, f in zip(ids, found, strict=True):
            if f is None:
                out.transfers.add(id=tid, found=False)
            else:
                out.transfers.add(
                    id=tid, found=True, record=f.leaf[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + TRANSFER_SIZE],
                    timestamp_ns=f.ref.timestamp_ns, log_index=f.ref.leaf_index, block=f.ref.block,
                    status=f.ref.status,
                )
        return out

    async def LookupAccounts(self, request: pb.LookupRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> pb.LookupAccountsResponse:
        try:
            await self._read_gate(context)
            ids = _ids(request.ids)
            psp_guard.check_read_accounts(caller(context), ids)
            states = await self._offload.run(self._reader.accounts, ids)
        except Exception as e:
            await abort(context, e)
        out = pb.LookupAccountsResponse()
        for aid, st in zip(ids, states, strict=True):
            out.accounts.add(id=aid, found=st is not None, state=st or b"")
        return out

    async def AccountHistory(self, request: pb.HistoryRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> pb.HistoryResponse:
        try:
            await self._read_gate(context)
            (aid,) = _ids([request.account_id])
            psp_guard.check_read_accounts(caller(context), [aid])
            if request.limit > HISTORY_PAGE_MAX:
                raise BadRequest(f"limit {request.limit} is above the page maximum {HISTORY_PAGE_MAX}")
            after = None if request.first_page else request.after_index
            entries, more = await self._offload.run(self._reader.history, aid, after, request.limit or 100)
        except Exception as e:
            await abort(context, e)
        return pb.HistoryResponse(entries=[pb.Entry(index=i, leaf=leaf) for i, leaf in entries], more=more)


def _ids(raw: Any) -> list[bytes]:
    ids = list(raw)
    if len(ids) > BATCH_ITEMS_MAX:
        raise BadRequest(f"at most {BATCH_ITEMS_MAX} ids per lookup, got {len(ids)}")
    for i, x in enumerate(ids):
        if len(x) != 16:
            raise BadRequest(f"id #{i} is {len(x)} bytes; ids are 16-byte little-endian u128")
    return ids


class AuditService(pb_grpc.AuditServicer):
    def __init__(self, reader: LedgerReader, checkpoints: CheckpointService, offload: Offload | None = None) -> None:
        self._reader = reader
        self._checkpoints = checkpoints
        self._offload = offload or Offload()

    async def GetCheckpoint(self, request: pb.CheckpointRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.CheckpointResponse:
        try:
            cp = self._checkpoints.latest()
        except InconsistentCheckpoint as e:  # below the peers' newest checkpoint: catching up first
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"this node has no checkpoint to serve yet: {e}; "
                                "ask another node or retry shortly")
            raise
        return pb.CheckpointResponse(note=cp.note, tree_size=cp.size, root=cp.root, block=cp.block,
                                     verifier_key=self._checkpoints.verifier_key)

    async def GetInclusionProof(self, request: pb.InclusionRequest,
                                context: grpc.aio.ServicerContext[Any, Any]) -> pb.InclusionResponse:
        try:
            note = ""
            size = request.tree_size
            if not size:
                cp = self._checkpoints.latest()
                size, note = cp.size, cp.note
            if request.WhichOneof("target") == "transfer_id":
                (tid,) = _ids([request.transfer_id])
                index = self._reader.transfer_index(tid)
            elif request.WhichOneof("target") == "index":
                index = request.index
            else:
                raise BadRequest("set either index or transfer_id")
            leaf, proof = await self._offload.run(self._reader.inclusion_proof, index, size)
        except Exception as e:
            await abort(context, e)
        return pb.InclusionResponse(index=index, tree_size=size, leaf=leaf, proof=proof, note=note)

    async def GetConsistencyProof(self, request: pb.ConsistencyRequest,
                                  context: grpc.aio.ServicerContext[Any, Any]) -> pb.ConsistencyResponse:
        try:
            second = request.second or self._checkpoints.latest().size
            proof = await self._offload.run(self._reader.consistency_proof, request.first, second)
        except Exception as e:
            await abort(context, e)
        return pb.ConsistencyResponse(first=request.first, second=second, proof=proof)

    async def StreamEntries(self, request: pb.EntriesRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.EntriesChunk]:
        if request.follow:
            async for followed in self._follow(request.start, request.end, context):
                yield followed
            return
        end = request.end or self._checkpoints.latest().size
        tree = self._reader.head().tree_size
        if request.start > end or end > tree:
            await abort(context, OutOfRange(
                f"entries [{request.start}, {end}) are outside the tree of size {tree}"))
        pos = request.start
        try:
            for chunk in self._reader.leaves(request.start, end, ENTRIES_CHUNK):
                yield pb.EntriesChunk(start=pos, leaves=chunk)
                pos += len(chunk)
        except InvariantViolation as e:  # this replica's store lost entries: say so plainly
            log.critical("serving entries: %s", e)
            await abort(context, DataLoss(f"this node's log is damaged near entry {pos}: {e}"))

    async def _follow(self, start: int, end: int,
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.EntriesChunk]:
        """Entries from ``start`` on, as they are signed; ends at ``end`` (0 = never). One chunk at a
        time: ``yield`` waits for HTTP/2 flow control, so a slow reader bounds what the node holds."""
        pos = start
        while not end or pos < end:
            size = self._checkpoints.latest().size
            stop = min(size, end) if end else size
            if pos >= stop:
                await asyncio.sleep(FOLLOW_POLL_S)
                continue
            try:
                (chunk,) = self._reader.leaves(pos, min(stop, pos + ENTRIES_CHUNK), ENTRIES_CHUNK)
            except InvariantViolation as e:
                log.critical("following entries: %s", e)
                await context.abort(grpc.StatusCode.DATA_LOSS, f"this node's log is damaged near entry {pos}: {e}")
            yield pb.EntriesChunk(start=pos, leaves=chunk)
            pos += len(chunk)

    async def StreamBlocks(self, request: pb.BlocksRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.BlocksChunk]:
        top = self._reader.head().height + 1  # a range past the head ends at the head (no endless stream)
        end = min(request.end or top, top)
        pos = max(1, request.start)
        while pos < end:
            stop = min(end, pos + ENTRIES_CHUNK)
            try:
                headers = await self._offload.run(self._reader.blocks, pos, stop)
            except Exception as e:
                await abort(context, e)
            yield pb.BlocksChunk(headers=headers)
            pos = stop


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, status: Callable[[], pb.StatusResponse],
                 rotate_key: Callable[[pb.RotateKeyRequest], Awaitable[pb.RotateKeyResponse]] | None = None) -> None:
        self._status = status
        self._rotate_key = rotate_key
        self._rotating = asyncio.Lock()  # one rotation at a time: each is signed by the key in force

    async def RotateKey(self, request: pb.RotateKeyRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.RotateKeyResponse:
        if self._rotate_key is None:
            await abort(context, BadRequest("this node cannot rotate its key"))
        assert self._rotate_key is not None
        async with self._rotating:
            try:
                return await self._rotate_key(request)
            except Exception as e:
                await abort(context, e)

    async def Status(self, request: pb.StatusRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.StatusResponse:
        return self._status()
