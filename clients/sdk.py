"""The PSP streaming SDK: batching, a bounded window, retries, leader failover, exactly-once outcomes.

Two front ends over one asyncio engine (grpc.aio):

- ``AsyncLedgerSDK`` / ``AsyncSession`` for asyncio applications;
- ``LedgerSDK`` / ``Session`` for threaded code: the same engine runs on a private event-loop
  thread, ``session.send(t)`` blocks while the window is full and returns a
  ``concurrent.futures.Future``.

What the engine guarantees (docs/sdk.md has the long version):

- **Batching**: a session seals a batch at ``batch_size_max`` items (≤ 8189) or ``batch_delay_s``
  after its first item, whichever comes first.
- **Back-pressure**: at most ``window_items`` payments are unacknowledged (buffered + in flight);
  beyond that ``send`` blocks (sync) or waits (async). At most ``window_batches`` batches are in
  flight on the stream.
- **Retries** on UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED (overload) / ABORTED and on
  broken streams, with exponential backoff and jitter (``RetryPolicy``), always with the same ids.
- **Leader discovery**: follow ``BatchStatus.leader_hint`` or the ``sovledger-leader`` trailing
  metadata; otherwise rotate through the region's targets.
- **Indeterminate outcomes** (the stream broke after a batch was sent, before its response) are
  never reported as failures: the SDK looks the ids up (LookupTransfers). Found → committed, its
  index and block are reported. Not found → re-sent with the same ids; ``transfer_exists`` on a
  re-send is success (reported as OK, ``resolution="resend_exists"``).
- **Journal** (optional, ``clients.journal.Journal``): each payment is journaled (fsync) before it
  is sent and settled after; ``recover()`` re-sends what a crashed process left unresolved.
- **Signing** (optional): Ed25519 over each 176-byte canonical record with the PSP's key
  (``ledger.note.Signer``); the batch carries ``signatures`` and the 4-byte ``signer_key_id``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from nacl.signing import SigningKey

from clients.journal import Journal
from clients.sdk_errors import (
    LedgerStatusError,
    NotLeaderError,
    OutcomeUnknownError,
    SdkError,
    UnavailableError,
    error_for_rpc,
    error_for_status,
)
from clients.sdk_types import PreparedTransfer, Resolution, RetryPolicy, TransferOutcome
from ledger.codec import (
    decode_account_state,
    encode_account,
    encode_transfer,
    u128_bytes,
)
from ledger.note import Signer
from ledger.types import BATCH_ITEMS_MAX, Account, AccountBalance, EventKind, Result, Transfer
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("sovledger.sdk")

MAX_MESSAGE_BYTES = 3 << 20
LEADER_METADATA_KEY = "sovledger-leader"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # a restarted or failed-over node should be reachable again within ~100 ms, not gRPC's default 1 s+
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
# A stream that ends with one of these was refused on purpose by the node (not a crash or a transport
# failure): payments the lookup did not find are reported as refused. Any other status on a broken
# stream (UNAVAILABLE, INTERNAL "from Core", UNKNOWN, CANCELLED …) is treated as a transport failure.
DELIBERATE_REFUSALS = frozenset({
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED,
})
# Items with these result codes were applied by an earlier identical event: the payment is in the ledger.
_EXISTS = frozenset({Result.TRANSFER_EXISTS, Result.EXISTS})

T = TypeVar("T")
Deliver = Callable[[TransferOutcome | BaseException], None]


@dataclass(frozen=True, slots=True)
class SdkConfig:
    """Knobs of a session; defaults suit a PSP streaming micro-payments."""

    batch_size_max: int = BATCH_ITEMS_MAX  # seal a batch at this many items (≤ 8189)
    batch_delay_s: float = 0.005  # … or this long after its first item
    window_items: int = 4 * BATCH_ITEMS_MAX  # unacknowledged payments per session (back-pressure)
    window_batches: int = 8  # batches in flight on the stream (the node allows 32 per stream)
    response_timeout_s: float = 15.0  # no response for a sent batch this long → the stream is broken
    call_timeout_s: float = 10.0  # unary calls (lookups)

    def validate(self) -> SdkConfig:
        if not 1 <= self.batch_size_max <= BATCH_ITEMS_MAX:
            raise ValueError(f"batch_size_max must be in 1..{BATCH_ITEMS_MAX}")
        if not 0 < self.batch_delay_s <= 10:
            raise ValueError("batch_delay_s must be in (0, 10]")
        if self.window_items < 1 or self.window_batches < 1:
            raise ValueError("window_items and window_batches must be >= 1")
        return self


# -- items and batches ------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Item:
    """One payment (or account) on its way: canonical bytes plus how to report its outcome."""

    transfer_id: int
    record: bytes
    deliver: Deliver
    signature: bytes = b""
    key_id: bytes = b""
    done: bool = False

    def finish(self, value: TransferOutcome | BaseException) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.deliver(value)
        except Exception:  # a caller's callback must not kill the engine
            log.exception("payment outcome callback raised")


_seqs = itertools.count(1)


@dataclass(slots=True, eq=False)
class _Batch:
    kind: EventKind
    items: list[_Item]
    recovering: bool = False  # re-sent from the journal: exists means OK
    signed: bool = False  # signatures already attached (journal/recovery)
    seq: int = field(default_factory=lambda: next(_seqs))
    attempts: int = 0
    uncertain: bool = False  # a send of it may have been applied (indeterminate once)
    first_sent: float = 0.0
    sent_at: float = 0.0
    batch_id: int = 0

    def request(self) -> pb.SubmitRequest:
        sigs = b"".join(i.signature for i in self.items)
        key_id = self.items[0].key_id if sigs else b""
        return pb.SubmitRequest(batch_id=self.batch_id, kind=int(self.kind),  # type: ignore[arg-type]
                                records=b"".join(i.record for i in self.items), signatures=sigs,
                                signer_key_id=key_id)


# -- routing ------------------------------------------------------------------------------------------


class _Router:
    """Which node to talk to: the known leader, else the next target of the region (round robin)."""

    def __init__(self, targets: Sequence[str]) -> None:
        if not targets:
            raise ValueError("at least one target HOST:PORT is needed")
        self.targets = list(dict.fromkeys(targets))
        self._next = 0
        self.leader: str | None = None

    def current(self) -> str:
        return self.leader or self.targets[self._next % len(self.targets)]

    def succeeded(self, target: str) -> None:
        self.leader = target

    def failed(self, target: str, leader_hint: str = "") -> None:
        if leader_hint and leader_hint != target:
            if leader_hint not in self.targets:
                self.targets.append(leader_hint)  # a member we were not told about
            self.leader = leader_hint
            return
        self.leader = None
        if target in self.targets:
            self._next = self.targets.index(target) + 1
        else:
            self._next += 1


# -- the asyncio SDK ----------------------------------------------------------------------------------


class AsyncLedgerSDK:
    """Asyncio client of a region. Create inside a running loop (``async with AsyncLedgerSDK(...)``)."""

    def __init__(self, targets: str | Sequence[str], *, signer: Signer | None = None,
                 journal: Journal | str | os.PathLike[str] | None = None, retry: RetryPolicy | None = None,
                 config: SdkConfig | None = None) -> None:
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        self.router = _Router(targets)
        self.retry = retry or RetryPolicy()
        self.config = (config or SdkConfig()).validate()
        self.signer = signer
        self._signing_key = SigningKey(signer.seed) if signer else None
        self._key_id = signer.key_id if signer else b""
        self._owns_journal = journal is not None and not isinstance(journal, Journal)
        self.journal = Journal(journal) if journal is not None and not isinstance(journal, Journal) else journal
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._journal_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sdk-journal")
        self._journal_tail: asyncio.Future[Any] | None = None
        self._batch_ids = itertools.count(1)

    async def __aenter__(self) -> AsyncLedgerSDK:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._journal_barrier()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._journal_pool.shutdown(wait=True)
        if self.journal is not None and self._owns_journal:
            self.journal.close()

    # -- channels and unary calls ----------------------------------------------------------------

    def _stub(self, target: str) -> pb_grpc.LedgerStub:
        ch = self._channels.get(target)
        if ch is None:
            ch = self._channels[target] = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        return pb_grpc.LedgerStub(ch)

    async def _unary(self, call: Callable[[pb_grpc.LedgerStub], Awaitable[T]]) -> T:
        """A unary call at the current target, retried across the region on transient errors."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            target = self.router.current()
            try:
                result = await call(self._stub(target))
            except grpc.aio.AioRpcError as e:
                err = error_for_rpc(e, target)
                transient = err.retryable or err.code == grpc.StatusCode.INTERNAL  # e.g. "Internal error from Core"
                if not transient or attempt >= self.retry.max_attempts or (
                        time.monotonic() - started > self.retry.deadline_s):
                    raise err from None
                self.router.failed(target, err.leader_hint)
                await asyncio.sleep(0 if isinstance(err, NotLeaderError) and err.leader_hint
                                    else self.retry.delay_s(attempt))
                continue
            self.router.succeeded(target)
            return result

    async def lookup_transfers(self, ids: Sequence[int]) -> list[pb.TransferInfo]:
        """Linearizable lookups (the leader answers); up to any number of ids, chunked by 8189."""
        out: list[pb.TransferInfo] = []
        for i in range(0, len(ids), BATCH_ITEMS_MAX):
            req = pb.LookupRequest(ids=[u128_bytes(x) for x in ids[i : i + BATCH_ITEMS_MAX]])

            def call(s: pb_grpc.LedgerStub, r: pb.LookupRequest = req) -> Awaitable[pb.LookupTransfersResponse]:
                return s.LookupTransfers(r, timeout=self.config.call_timeout_s)  # type: ignore[return-value]

            resp = await self._unary(call)
            out.extend(resp.transfers)
        return out

    async def lookup_accounts(self, ids: Sequence[int]) -> list[AccountBalance | None]:
        out: list[AccountBalance | None] = []
        for i in range(0, len(ids), BATCH_ITEMS_MAX):
            req = pb.LookupRequest(ids=[u128_bytes(x) for x in ids[i : i + BATCH_ITEMS_MAX]])

            def call(s: pb_grpc.LedgerStub, r: pb.LookupRequest = req) -> Awaitable[pb.LookupAccountsResponse]:
                return s.LookupAccounts(r, timeout=self.config.call_timeout_s)  # type: ignore[return-value]

            resp = await self._unary(call)
            out.extend(decode_account_state(a.state) if a.found else None for a in resp.accounts)
        return out

    # -- journal (one thread, writes in order) ----------------------------------------------------

    async def _journal_write(self, fn: Callable[..., None], *args: Any, wait: bool) -> None:
        if self.journal is None:
            return
        fut = asyncio.get_running_loop().run_in_executor(self._journal_pool, fn, *args)
        self._journal_tail = fut
        if wait:
            await fut
        else:
            fut.add_done_callback(_log_journal_error)

    async def _journal_barrier(self) -> None:
        if self._journal_tail is not None:
            await asyncio.wait([self._journal_tail])

    # -- preparing payments -----------------------------------------------------------------------

    def _sign_items(self, items: Sequence[_Item]) -> None:
        key = self._signing_key
        if key is None:
            return
        for it in items:
            it.signature = key.sign(it.record).signature
            it.key_id = self._key_id

    async def _prepare(self, batch: _Batch) -> None:
        """Sign (off the loop: PyNaCl releases the GIL) and journal before the first send."""
        if batch.kind == EventKind.CREATE_TRANSFER and not batch.signed:
            if self._signing_key is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._sign_items, batch.items)
            batch.signed = True
        if batch.kind == EventKind.CREATE_TRANSFER and self.journal is not None and not batch.recovering:
            prepared = [PreparedTransfer(i.transfer_id, i.record, i.signature, i.key_id) for i in batch.items]
            await self._journal_write(self.journal.record_pending, prepared, wait=True)

    # -- high-level API ---------------------------------------------------------------------------

    def session(self, config: SdkConfig | None = None) -> AsyncSession:
        return AsyncSession(self, (config or self.config).validate())

    async def submit(self, transfers: Sequence[Transfer], *, raise_on_failure: bool = False) -> list[TransferOutcome]:
        """Submit transfers (any number; batches of ≤ 8189) and wait for every outcome, in order.

        Raises a ``LedgerStatusError`` subclass when a batch was refused for good, ``OutcomeUnknownError``
        when an outcome stayed unknown beyond the retry budget, and with ``raise_on_failure`` the typed
        ``TransferFailed`` of the first payment with a failing result code.
        """
        records = [(t.id, encode_transfer(t)) for t in transfers]
        return await self._submit_records(EventKind.CREATE_TRANSFER, records, raise_on_failure=raise_on_failure)

    async def submit_prepared(self, prepared: Sequence[PreparedTransfer], *, recovering: bool = False
                              ) -> list[TransferOutcome]:
        """Submit already-encoded (and possibly signed) transfers — journal recovery, replays."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[TransferOutcome]] = []
        engine = _Engine(self, self.config.window_batches)
        by_key: dict[bytes, list[_Item]] = {}
        for p in prepared:
            fut: asyncio.Future[TransferOutcome] = loop.create_future()
            futs.append(fut)
            by_key.setdefault(p.key_id, []).append(
                _Item(p.transfer_id, p.record, _future_deliver(fut), p.signature, p.key_id))
        for key_id, items in by_key.items():
            for i in range(0, len(items), self.config.batch_size_max):
                chunk = items[i : i + self.config.batch_size_max]
                engine.put(_Batch(EventKind.CREATE_TRANSFER, chunk, recovering=recovering,
                                  signed=bool(key_id) or self._signing_key is None))
        return await _gather_outcomes(engine, futs, raise_on_failure=False)

    async def create_accounts(self, accounts: Sequence[Account]) -> list[TransferOutcome]:
        """Create accounts (``exists`` counts as success); outcomes carry the account id."""
        records = [(a.id, encode_account(a)) for a in accounts]
        return await self._submit_records(EventKind.CREATE_ACCOUNT, records, raise_on_failure=False)

    async def ensure_accounts(self, accounts: Sequence[Account]) -> None:
        """Create accounts unless they exist; raise ``TransferFailed`` for any other result."""
        for o in await self.create_accounts(accounts):
            o.raise_for_result()

    async def _submit_records(self, kind: EventKind, records: Sequence[tuple[int, bytes]], *,
                              raise_on_failure: bool) -> list[TransferOutcome]:
        loop = asyncio.get_running_loop()
        engine = _Engine(self, self.config.window_batches)
        futs: list[asyncio.Future[TransferOutcome]] = []
        step = self.config.batch_size_max
        for i in range(0, len(records), step):
            items = []
            for tid, rec in records[i : i + step]:
                fut: asyncio.Future[TransferOutcome] = loop.create_future()
                futs.append(fut)
                items.append(_Item(tid, rec, _future_deliver(fut)))
            engine.put(_Batch(kind, items))
        return await _gather_outcomes(engine, futs, raise_on_failure=raise_on_failure)

    async def recover(self) -> list[TransferOutcome]:
        """Re-send every unresolved journal entry with its original id, bytes and signature.

        Run at start-up, before new payments. Idempotency makes this safe whatever the crash point:
        an entry that had committed comes back as ``transfer_exists`` (reported and journaled as OK).
        """
        if self.journal is None:
            return []
        pending = await asyncio.get_running_loop().run_in_executor(self._journal_pool, self.journal.unresolved)
        if not pending:
            return []
        log.info("journal: recovering %d unresolved payment(s)", len(pending))
        outcomes = await self.submit_prepared([e.prepared() for e in pending], recovering=True)
        await self._journal_barrier()
        return outcomes


def _log_journal_error(fut: concurrent.futures.Future[Any] | asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("journal write failed: %s", fut.exception())


def _future_deliver(fut: asyncio.Future[TransferOutcome]) -> Deliver:
    def deliver(value: TransferOutcome | BaseException) -> None:
        if fut.done():
            return
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)

    return deliver


async def _gather_outcomes(engine: _Engine, futs: list[asyncio.Future[TransferOutcome]], *,
                           raise_on_failure: bool) -> list[TransferOutcome]:
    try:
        await engine.close()
        results = await asyncio.gather(*futs, return_exceptions=True)
    finally:
        await engine.abort()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    outcomes: list[TransferOutcome] = list(results)  # type: ignore[arg-type]
    if raise_on_failure:
        for o in outcomes:
            o.raise_for_result()
    return outcomes


# -- the engine: one Submit stream at a time, with retries and indeterminate resolution -------------------


@dataclass(slots=True)
class EngineStats:
    """Counters of one session's engine (tests, progress displays)."""

    batches_sent: int = 0  # first sends
    resends: int = 0  # batches sent again (refusal, broken stream)
    broken_streams: int = 0
    indeterminate_batches: int = 0
    resolved_by_lookup: int = 0  # payments settled by LookupTransfers after a broken stream
    recent_batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def on_send(self, b: _Batch) -> None:
        if b.attempts == 1:
            self.batches_sent += 1
            self.recent_batch_sizes.append(len(b.items))
        else:
            self.resends += 1


class _RoundEnd(Exception):
    """Internal: the stream round ended (broken or deliberately stopped)."""


class _Engine:
    """Sends batches in order on a Submit stream to the current leader; survives everything it can.

    ``put`` → prepare (sign + journal, in order) → send queue → stream (≤ window batches in flight).
    A response settles its batch; a refusal is retried (same ids); a broken stream makes every
    unanswered batch *uncertain*: its ids are looked up, found ones are settled from the lookup,
    the rest go back to the front of the queue (same ids).
    """

    def __init__(self, sdk: AsyncLedgerSDK, window_batches: int) -> None:
        self.sdk = sdk
        self.window = window_batches
        self._prep_q: asyncio.Queue[_Batch | None] = asyncio.Queue()
        self._send: deque[_Batch] = deque()
        self._poke = asyncio.Event()
        self._closing = False
        self._prep_task = asyncio.get_running_loop().create_task(self._prep_loop())
        self._run_task = asyncio.get_running_loop().create_task(self._run())
        self._round_failures = 0
        self.stats = EngineStats()

    # -- feeding ----------------------------------------------------------------------------------

    def put(self, batch: _Batch) -> None:
        if self._closing:
            raise SdkError("session is closed")
        self._prep_q.put_nowait(batch)

    async def close(self) -> None:
        """No more batches; return when every batch has been settled."""
        if not self._closing:
            self._closing = True
            self._prep_q.put_nowait(None)
        await asyncio.gather(self._prep_task, self._run_task)
        await self.sdk._journal_barrier()  # outcomes are journaled when close() returns

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
                await self.sdk._prepare(batch)
            except Exception as e:  # journal or signing failed: nothing was sent
                log.error("could not prepare a batch: %s", e)
                for it in batch.items:
                    it.finish(SdkError(f"payment not sent: preparing the batch failed: {e}"))
                continue
            self._send.append(batch)
            self._poke.set()

    def _prep_done(self) -> bool:
        return self._prep_task.done()

    # -- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._send:
                if self._closing and self._prep_done() and not self._send:
                    return
                self._poke.clear()
                await self._poke.wait()
                continue
            target = self.sdk.router.current()
            backoff = await self._round(target)
            if backoff > 0:
                await asyncio.sleep(backoff)

    async def _round(self, target: str) -> float:
        """One Submit stream to ``target``. Returns the backoff to sleep before the next round."""
        stub = self.sdk._stub(target)
        call: Any = stub.Submit()  # type: ignore[call-arg]  # grpc.aio bidi call (write/read)
        inflight: deque[_Batch] = deque()
        stop_writing = asyncio.Event()
        wake_writer = self._poke
        retry_later: list[_Batch] = []
        backoff = 0.0
        cfg = self.sdk.config

        async def writer() -> None:
            while not stop_writing.is_set():
                if self._send and len(inflight) < self.window:
                    b = self._send.popleft()
                    b.batch_id = next(self.sdk._batch_ids)
                    b.attempts += 1
                    self.stats.on_send(b)
                    b.sent_at = time.monotonic()
                    b.first_sent = b.first_sent or b.sent_at
                    inflight.append(b)
                    await call.write(b.request())
                    continue
                if self._closing and self._prep_done() and not self._send:
                    await call.done_writing()
                    return
                wake_writer.clear()
                await wake_writer.wait()

        wtask = asyncio.get_running_loop().create_task(writer())
        broken: LedgerStatusError | None = None
        cancelled = False
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                while not read.done():
                    await asyncio.wait([read, wtask] if not wtask.done() else [read], timeout=0.25,
                                       return_when=asyncio.FIRST_COMPLETED)
                    if wtask.done() and wtask.exception() is not None and not read.done():
                        read.cancel()
                        raise _RoundEnd("write failed")
                    if inflight and time.monotonic() - inflight[0].sent_at > cfg.response_timeout_s:
                        read.cancel()
                        raise _RoundEnd(f"no response in {cfg.response_timeout_s}s")
                    if stop_writing.is_set() and not inflight:
                        read.cancel()
                        return backoff
                resp = read.result()
                if resp is grpc.aio.EOF:
                    if inflight:
                        raise _RoundEnd("stream ended with batches unanswered")
                    return backoff
                if not inflight or resp.batch_id != inflight[0].batch_id:
                    raise _RoundEnd(f"response for unexpected batch {resp.batch_id}")
                b = inflight.popleft()
                self._poke.set()
                if resp.status.code == 0:
                    self.sdk.router.succeeded(target)
                    self._round_failures = 0
                    await self._settle(b, resp)
                    continue
                err = error_for_status(resp.status.code, resp.status.message, resp.status.leader_hint, target)
                if err.retryable:
                    stop_writing.set()  # the rest of this stream would be refused too
                    self._poke.set()
                    if self._give_up(b):
                        await self._fail(b, err)
                    else:
                        retry_later.append(b)
                        if isinstance(err, NotLeaderError):
                            self.sdk.router.failed(target, err.leader_hint)
                            backoff = max(backoff, 0 if err.leader_hint else self.sdk.retry.delay_s(b.attempts))
                        else:
                            backoff = max(backoff, self.sdk.retry.delay_s(b.attempts))
                else:
                    await self._fail(b, err)
        except (_RoundEnd, grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            if isinstance(e, grpc.aio.AioRpcError):
                broken = error_for_rpc(e, target)
            else:
                broken = await _final_status(call, target) or UnavailableError(str(e) or type(e).__name__,
                                                                                target=target)
            log.warning("stream to %s broke (%s); %d batch(es) unanswered", target, broken, len(inflight))
            self.stats.broken_streams += 1
            self.stats.indeterminate_batches += len(inflight)
            self.sdk.router.failed(target, broken.leader_hint)
            self._round_failures += 1
            backoff = self.sdk.retry.delay_s(self._round_failures)
            if wtask.done() and not wtask.cancelled() and wtask.exception() is not None:
                log.debug("writer: %s", wtask.exception())
            return backoff
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            stop_writing.set()
            wtask.cancel()
            call.cancel()
            await asyncio.gather(wtask, return_exceptions=True)
            unanswered = list(inflight)
            inflight.clear()
            requeue = retry_later
            if unanswered and not cancelled:
                requeue += await self._resolve_uncertain(unanswered, broken)
            if requeue:
                self._send.extend(requeue)
                self._send = deque(sorted(self._send, key=lambda x: x.seq))
                self._poke.set()

    def _give_up(self, b: _Batch) -> bool:
        r = self.sdk.retry
        return b.attempts >= r.max_attempts or bool(b.first_sent and time.monotonic() - b.first_sent > r.deadline_s)

    # -- settling ---------------------------------------------------------------------------------

    async def _settle(self, b: _Batch, resp: pb.SubmitResponse) -> None:
        outcomes = []
        confirm: list[tuple[_Item, TransferOutcome]] = []
        resent = b.attempts > 1 or b.uncertain or b.recovering
        for it, code, idx, blk in zip(b.items, resp.results, resp.log_indexes, resp.blocks, strict=True):
            result = Result(code)
            resolution: Resolution = "recovered" if b.recovering else "response"
            if resent and result in _EXISTS:
                result, resolution = Result.OK, "resend_exists"
            o = TransferOutcome(it.transfer_id, result, idx, blk, resp.timestamp_ns, b.attempts, resolution)
            if b.uncertain and not result.is_success and b.kind == EventKind.CREATE_TRANSFER:
                confirm.append((it, o))  # an earlier send may still commit: confirm before failing
                continue
            outcomes.append(o)
            it.finish(o)
        if confirm:
            outcomes += await self._confirm_failures(confirm)
        if b.kind == EventKind.CREATE_TRANSFER:
            await self.sdk._journal_write(self.sdk.journal.record_outcomes if self.sdk.journal else _noop,
                                          outcomes, wait=False)

    async def _confirm_failures(self, pairs: list[tuple[_Item, TransferOutcome]]) -> list[TransferOutcome]:
        try:
            infos = await self.sdk.lookup_transfers([it.transfer_id for it, _ in pairs])
        except LedgerStatusError:
            infos = []
        found = {int.from_bytes(i.id, "little"): i for i in infos if i.found}
        out = []
        for it, o in pairs:
            info = found.get(it.transfer_id)
            if info is not None and info.record == it.record:
                o = TransferOutcome(it.transfer_id, Result.OK, info.log_index, info.block, info.timestamp_ns,
                                    o.attempts, "lookup")
            out.append(o)
            it.finish(o)
        return out

    async def _fail(self, b: _Batch, err: LedgerStatusError) -> None:
        """A batch refused for good. If an earlier send may have applied it, it is not a failure."""
        if b.uncertain:
            unknown = OutcomeUnknownError([i.transfer_id for i in b.items], err)
            for it in b.items:
                it.finish(unknown)
            return
        if b.kind == EventKind.CREATE_TRANSFER and self.sdk.journal is not None:
            # reported to the caller as not applied: recover() must never send it later
            await self.sdk._journal_write(self.sdk.journal.record_refused, [i.transfer_id for i in b.items],
                                          str(err), wait=False)
        for it in b.items:
            it.finish(err)

    async def _resolve_uncertain(self, batches: list[_Batch], cause: BaseException | None) -> list[_Batch]:
        """Batches sent without a response: settle what committed (lookup), return the rest to re-send."""
        out: list[_Batch] = []
        for b in batches:
            b.uncertain = True
            if b.kind != EventKind.CREATE_TRANSFER:
                out.append(b)  # accounts: re-sending is idempotent (`exists` is success)
                continue
            if self._give_up(b):
                unknown = OutcomeUnknownError([i.transfer_id for i in b.items], cause)
                for it in b.items:
                    it.finish(unknown)
                continue
            try:
                infos = await self.sdk.lookup_transfers([i.transfer_id for i in b.items])
            except LedgerStatusError as e:
                log.warning("lookup after a broken stream failed: %s", e)
                unknown = OutcomeUnknownError([i.transfer_id for i in b.items], e)
                for it in b.items:
                    it.finish(unknown)
                continue
            settled: list[TransferOutcome] = []
            rest: list[_Item] = []
            for it, info in zip(b.items, infos, strict=True):
                if info.found and info.record == it.record:
                    o = TransferOutcome(it.transfer_id, Result.OK, info.log_index, info.block, info.timestamp_ns,
                                        b.attempts, "lookup")
                    settled.append(o)
                    it.finish(o)
                    self.stats.resolved_by_lookup += 1
                else:  # not found (or another record under this id: the re-send reports exists_with_different_*)
                    rest.append(it)
            if settled:
                await self.sdk._journal_write(self.sdk.journal.record_outcomes if self.sdk.journal else _noop,
                                              settled, wait=False)
            if rest and isinstance(cause, LedgerStatusError) and cause.code in DELIBERATE_REFUSALS:
                # the node deliberately refused the stream (not a crash) and these are not in the ledger
                await self.sdk._journal_write(self.sdk.journal.record_refused if self.sdk.journal else _noop,
                                              [i.transfer_id for i in rest], str(cause), wait=False)
                for it in rest:
                    it.finish(cause)
            elif rest:
                b.items = rest
                out.append(b)
        return out


async def _final_status(call: Any, target: str) -> LedgerStatusError | None:
    """The status (and leader hint) a finished stream ended with, when it ended with an error."""
    if not call.done():
        return None
    try:
        code = await call.code()
        if code == grpc.StatusCode.OK:
            return None
        hint = ""
        for key, value in await call.trailing_metadata() or ():
            if key == LEADER_METADATA_KEY:
                hint = str(value)
        return error_for_status(code, await call.details() or "", hint, target)
    except Exception:
        return None


def _noop(*_args: Any) -> None:
    return None


# -- asyncio session ----------------------------------------------------------------------------------


class AsyncSession:
    """A streaming session: ``await send(t)`` returns a future of the payment's outcome.

    ``send`` waits while ``window_items`` payments are unacknowledged (back-pressure). Use as an
    async context manager, or call ``await close()`` (which flushes).
    """

    def __init__(self, sdk: AsyncLedgerSDK, config: SdkConfig) -> None:
        self._sdk = sdk
        self.config = config
        self._engine = _Engine(sdk, config.window_batches)
        self._buf: list[_Item] = []
        self._timer: asyncio.TimerHandle | None = None
        self._unacked = 0
        self._acked_event = asyncio.Event()  # set whenever an outcome arrives
        self._closed = False
        self.sent = 0
        self.acked = 0

    @property
    def unacknowledged(self) -> int:
        return self._unacked

    @property
    def stats(self) -> EngineStats:
        return self._engine.stats

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._acked_event.clear()
            await self._acked_event.wait()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, transfer: Transfer,
                   callback: Callable[[asyncio.Future[TransferOutcome]], None] | None = None
                   ) -> asyncio.Future[TransferOutcome]:
        if self._closed:
            raise SdkError("session is closed")
        record = encode_transfer(transfer)
        await self._wait_until(lambda: self._unacked < self.config.window_items)
        self._unacked += 1
        fut: asyncio.Future[TransferOutcome] = asyncio.get_running_loop().create_future()
        if callback is not None:
            fut.add_done_callback(callback)
        self._buf.append(_Item(transfer.id, record, self._deliverer(fut)))
        self.sent += 1
        if len(self._buf) >= self.config.batch_size_max:
            self._seal()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.config.batch_delay_s, self._seal)
        return fut

    def _deliverer(self, fut: asyncio.Future[TransferOutcome]) -> Deliver:
        inner = _future_deliver(fut)

        def deliver(value: TransferOutcome | BaseException) -> None:
            self._unacked -= 1
            self.acked += 1
            inner(value)
            self._acked_event.set()

        return deliver

    def _seal(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf:
            items, self._buf = self._buf, []
            self._engine.put(_Batch(EventKind.CREATE_TRANSFER, items))

    async def flush(self) -> None:
        """Send what is buffered and wait until every payment sent so far has an outcome."""
        self._seal()
        await self._wait_until(lambda: self._unacked == 0)
        await self._sdk._journal_barrier()

    async def close(self) -> None:
        if self._closed:
            return
        self._seal()
        self._closed = True
        try:
            await self._engine.close()
        finally:
            await self._engine.abort()


# -- the synchronous SDK (engine on a private event-loop thread) -------------------------------------------


class LedgerSDK:
    """Thread-friendly client of a region; all network work runs on one private event-loop thread.

    >>> sdk = LedgerSDK(["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"])   # doctest: +SKIP
    >>> outcomes = sdk.submit([Transfer(...), ...])                              # doctest: +SKIP
    """

    def __init__(self, targets: str | Sequence[str], *, signer: Signer | None = None,
                 journal: Journal | str | os.PathLike[str] | None = None, retry: RetryPolicy | None = None,
                 config: SdkConfig | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sovledger-sdk", daemon=True)
        self._thread.start()

        async def make() -> AsyncLedgerSDK:
            return AsyncLedgerSDK(targets, signer=signer, journal=journal, retry=retry, config=config)

        self.aio: AsyncLedgerSDK = self._run(make())
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    @property
    def journal(self) -> Journal | None:
        return self.aio.journal

    @property
    def router_leader(self) -> str | None:
        return self.aio.router.leader

    def __enter__(self) -> LedgerSDK:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self.aio.close(), 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def submit(self, transfers: Sequence[Transfer], *, raise_on_failure: bool = False) -> list[TransferOutcome]:
        return self._run(self.aio.submit(transfers, raise_on_failure=raise_on_failure))

    def submit_prepared(self, prepared: Sequence[PreparedTransfer]) -> list[TransferOutcome]:
        return self._run(self.aio.submit_prepared(prepared))

    def create_accounts(self, accounts: Sequence[Account]) -> list[TransferOutcome]:
        return self._run(self.aio.create_accounts(accounts))

    def ensure_accounts(self, accounts: Sequence[Account]) -> None:
        self._run(self.aio.ensure_accounts(accounts))

    def lookup_transfers(self, ids: Sequence[int]) -> list[pb.TransferInfo]:
        return self._run(self.aio.lookup_transfers(ids))

    def lookup_accounts(self, ids: Sequence[int]) -> list[AccountBalance | None]:
        return self._run(self.aio.lookup_accounts(ids))

    def recover(self) -> list[TransferOutcome]:
        return self._run(self.aio.recover())

    def session(self, config: SdkConfig | None = None) -> Session:
        return Session(self, (config or self.aio.config).validate())


class Session:
    """Synchronous streaming session. ``send(t)`` blocks while the window is full and returns a
    ``concurrent.futures.Future[TransferOutcome]``; ``callback(future)`` runs on the SDK's thread
    when the outcome is known (keep it short). Thread-safe."""

    def __init__(self, sdk: LedgerSDK, config: SdkConfig) -> None:
        self._sdk = sdk
        self.config = config
        self._loop = sdk._loop

        async def make() -> _Engine:
            return _Engine(sdk.aio, config.window_batches)

        self._engine = sdk._run(make())
        self._cond = threading.Condition()
        self._unacked = 0
        self._buf: list[_Item] = []
        self._buf_lock = threading.Lock()
        self._closed = False
        self.sent = 0
        self.acked = 0

    @property
    def unacknowledged(self) -> int:
        return self._unacked

    @property
    def stats(self) -> EngineStats:
        return self._engine.stats

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, transfer: Transfer,
             callback: Callable[[concurrent.futures.Future[TransferOutcome]], None] | None = None,
             timeout_s: float | None = None) -> concurrent.futures.Future[TransferOutcome]:
        """Queue one payment; blocks while ``window_items`` payments are unacknowledged."""
        if self._closed:
            raise SdkError("session is closed")
        record = encode_transfer(transfer)
        with self._cond:
            if not self._cond.wait_for(lambda: self._unacked < self.config.window_items, timeout_s):
                raise TimeoutError(f"window of {self.config.window_items} payments stayed full for {timeout_s}s")
            self._unacked += 1
        fut: concurrent.futures.Future[TransferOutcome] = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()
        if callback is not None:
            fut.add_done_callback(callback)
        item = _Item(transfer.id, record, self._deliverer(fut))
        full: list[_Item] | None = None
        with self._buf_lock:
            self._buf.append(item)
            self.sent += 1
            if len(self._buf) >= self.config.batch_size_max:
                full, self._buf = self._buf, []
            elif len(self._buf) == 1:
                self._loop.call_soon_threadsafe(self._arm_timer)
        if full is not None:
            self._loop.call_soon_threadsafe(self._put, full)
        return fut

    def send_many(self, transfers: Iterable[Transfer]) -> list[concurrent.futures.Future[TransferOutcome]]:
        return [self.send(t) for t in transfers]

    def _deliverer(self, fut: concurrent.futures.Future[TransferOutcome]) -> Deliver:
        def deliver(value: TransferOutcome | BaseException) -> None:
            with self._cond:
                self._unacked -= 1
                self.acked += 1
                self._cond.notify_all()
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)

        return deliver

    # loop-thread side
    def _arm_timer(self) -> None:
        self._loop.call_later(self.config.batch_delay_s, self._seal_from_timer)

    def _seal_from_timer(self) -> None:
        with self._buf_lock:
            items, self._buf = self._buf, []
        if items:
            self._put(items)

    def _put(self, items: list[_Item]) -> None:
        self._engine.put(_Batch(EventKind.CREATE_TRANSFER, items))

    def flush(self, timeout_s: float | None = None) -> None:
        """Send what is buffered now and block until every payment sent so far has an outcome."""
        self._loop.call_soon_threadsafe(self._seal_from_timer)
        with self._cond:
            if not self._cond.wait_for(lambda: self._unacked == 0, timeout_s):
                raise TimeoutError(f"{self._unacked} payments still unacknowledged after {timeout_s}s")
        self._sdk._run(self._sdk.aio._journal_barrier(), timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        if self._closed:
            return
        self._loop.call_soon_threadsafe(self._seal_from_timer)
        self._closed = True

        async def finish() -> None:
            await asyncio.sleep(0)  # let the seal above run first
            try:
                await self._engine.close()
            finally:
                await self._engine.abort()

        self._sdk._run(finish(), timeout_s)


__all__ = [
    "AsyncLedgerSDK",
    "AsyncSession",
    "EngineStats",
    "LedgerSDK",
    "PreparedTransfer",
    "RetryPolicy",
    "SdkConfig",
    "Session",
    "TransferOutcome",
]
