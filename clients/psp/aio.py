"""The asyncio SDK of a region: unary calls with failover, whole-batch submits, journal recovery."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import grpc.aio

from clients.channels import open_channel
from clients.connect import ClientTls
from clients.journal import Journal
from clients.psp.bulk import ArraySink, BulkOutcomes
from clients.psp.config import MONOTONIC, Clock, SdkConfig
from clients.psp.driver import Engine, EngineContext
from clients.psp.durable import JournalWriter, Preparer
from clients.psp.outcomes import ObjectSink, Origin
from clients.psp.routing import Router
from clients.psp.session import AsyncSession, future_deliver
from clients.psp.window import Batch
from clients.sdk_errors import NotLeaderError, error_for_rpc
from clients.sdk_types import PreparedTransfer, RetryPolicy, TransferOutcome
from ledger.codec import RECORD_SIZE, SIGNATURE_SIZE, decode_account_state, encode_account, encode_transfer, u128_bytes
from ledger.note import Signer
from ledger.types import BATCH_ITEMS_MAX, Account, AccountBalance, EventKind, Transfer
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("sovledger.sdk")

T = TypeVar("T")


class AsyncLedgerSDK:
    """Asyncio client of a region. Create inside a running loop (``async with AsyncLedgerSDK(...)``)."""

    def __init__(self, targets: str | Sequence[str], *, signer: Signer | None = None,
                 journal: Journal | str | os.PathLike[str] | None = None, retry: RetryPolicy | None = None,
                 config: SdkConfig | None = None, clock: Clock = MONOTONIC, tls: ClientTls | None = None) -> None:
        """``tls``: the PSP's client certificate (clients.connect); None only for --insecure nodes."""
        self._tls = tls
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        self.router = Router(targets)
        self.retry = retry or RetryPolicy()
        self.config = (config or SdkConfig()).validate()
        self.clock = clock
        self.signer = signer
        owned = journal is not None and not isinstance(journal, Journal)
        self.journal = Journal(journal) if journal is not None and not isinstance(journal, Journal) else journal
        self.journal_writer = JournalWriter(self.journal, owned)
        self._prepare = Preparer(signer, self.journal_writer, sign_group=self.config.sign_group)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._batch_ids = itertools.count(1)

    async def __aenter__(self) -> AsyncLedgerSDK:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.journal_writer.barrier()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        await self.journal_writer.close()
        self._prepare.close()

    def engine(self, config: SdkConfig | None = None) -> Engine:
        """A new send engine (one per session or submit call) over this SDK's region, journal and signer."""
        return Engine(EngineContext(self.router, self.retry, config or self.config, self.clock, self.stub,
                                    self._prepare, self.connected, self.lookup_transfers, self.journal_writer,
                                    self._batch_ids))

    # -- channels and unary calls ----------------------------------------------------------------

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            ch = self._channels[target] = open_channel(target, self._tls)
        return ch

    def stub(self, target: str) -> pb_grpc.LedgerStub:
        return pb_grpc.LedgerStub(self._channel(target))

    async def connected(self, target: str) -> bool:
        """Whether a connection to ``target`` is up, waiting for it at most ``connect_timeout_s``."""
        try:
            await asyncio.wait_for(self._channel(target).channel_ready(), self.config.connect_timeout_s)
        except TimeoutError:
            return False
        return True

    async def _unary(self, call: Callable[[pb_grpc.LedgerStub], Awaitable[T]]) -> T:
        """A unary call (a lookup: a read, safe to repeat) at the current target, retried across the
        region on transient errors until ``retry.deadline_s`` has passed since the call began. A
        deadline, not ``max_attempts``: a node restarting refuses each try at once, so a count of
        tries runs out in seconds whatever its restart takes (a loaded machine takes longer)."""
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            target = self.router.current()
            try:
                result = await call(self.stub(target))
            except grpc.aio.AioRpcError as e:
                err = error_for_rpc(e, target)
                transient = err.retryable or err.code == grpc.StatusCode.INTERNAL  # e.g. "Internal error from Core"
                if not transient or self.clock() - started > self.retry.deadline_s:
                    raise err from None
                self.router.failed(target, err.leader_hint)
                await asyncio.sleep(0 if isinstance(err, NotLeaderError) and err.leader_hint
                                    else max(self.retry.delay_s(attempt), err.retry_after_s))
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

    # -- high-level API ---------------------------------------------------------------------------

    def session(self, config: SdkConfig | None = None) -> AsyncSession:
        return AsyncSession(self, (config or self.config).validate())

    async def submit(self, transfers: Sequence[Transfer], *, raise_on_failure: bool = False) -> list[TransferOutcome]:
        """Submit transfers (any number; batches of ≤ 8189) and wait for every outcome, in order.

        Raises a ``LedgerStatusError`` subclass when a batch was refused for good, ``OutcomeUnknownError``
        when an outcome stayed unknown beyond the retry budget, and with ``raise_on_failure`` the typed
        ``TransferFailed`` of the first payment with a failing result code.
        """
        items = [(t.id, encode_transfer(t), b"", b"") for t in transfers]
        return await self._submit_items(EventKind.CREATE_TRANSFER, items, raise_on_failure=raise_on_failure)

    async def submit_prepared(self, prepared: Sequence[PreparedTransfer], *, recovering: bool = False
                              ) -> list[TransferOutcome]:
        """Submit already-encoded (and possibly signed) transfers — journal recovery, replays."""
        items = [(p.transfer_id, p.record, p.signature, p.key_id) for p in prepared]
        return await self._submit_items(EventKind.CREATE_TRANSFER, items, raise_on_failure=False,
                                        recovering=recovering)

    async def create_accounts(self, accounts: Sequence[Account]) -> list[TransferOutcome]:
        """Create accounts (``exists`` counts as success); outcomes carry the account id."""
        items = [(a.id, encode_account(a), b"", b"") for a in accounts]
        return await self._submit_items(EventKind.CREATE_ACCOUNT, items, raise_on_failure=False)

    async def ensure_accounts(self, accounts: Sequence[Account]) -> None:
        """Create accounts unless they exist; raise ``TransferFailed`` for any other result."""
        for o in await self.create_accounts(accounts):
            o.raise_for_result()

    async def _submit_items(self, kind: EventKind, rows: Sequence[tuple[int, bytes, bytes, bytes]], *,
                            raise_on_failure: bool, recovering: bool = False) -> list[TransferOutcome]:
        """Batches of ≤ ``batch_size_max`` items, one signer key per batch; outcomes in input order."""
        loop = asyncio.get_running_loop()
        engine = self.engine()
        futs: list[asyncio.Future[TransferOutcome]] = []
        by_key: dict[bytes, list[tuple[int, bytes, bytes, asyncio.Future[TransferOutcome]]]] = {}
        for tid, record, signature, key_id in rows:
            fut: asyncio.Future[TransferOutcome] = loop.create_future()
            futs.append(fut)
            by_key.setdefault(key_id, []).append((tid, record, signature, fut))
        step = self.config.batch_size_max
        for key_id, group in by_key.items():
            for i in range(0, len(group), step):
                chunk = group[i : i + step]
                origin = Origin(ObjectSink([r[0] for r in chunk], [future_deliver(r[3]) for r in chunk]), 0, len(chunk))
                engine.put(Batch.of(kind, b"".join(r[1] for r in chunk), origin,
                                    signatures=b"".join(r[2] for r in chunk), key_id=key_id, recovering=recovering,
                                    signed=bool(key_id) or self.signer is None))
        return await _gather_outcomes(engine, futs, raise_on_failure=raise_on_failure)

    async def submit_records(self, records: bytes, *, signatures: bytes = b"", key_id: bytes = b"",
                             kind: EventKind = EventKind.CREATE_TRANSFER, raise_errors: bool = True,
                             journal_key: int | None = None, sign_group: int = 0) -> BulkOutcomes:
        """The bulk path: a packed buffer of canonical records (n × 176 bytes for transfers) in, outcome
        arrays out — no Python object per payment. Same batching, retries, journal and signing as
        ``submit``; ``signatures`` (n × 64) and ``key_id`` when the records are signed already
        (with ``sign_group`` G: one signature per group of G records, docs/formats.md).

        Raises the first batch's error (like ``submit``) unless ``raise_errors`` is False, in which
        case rows without a result have ``NO_RESULT`` and their exceptions are in ``.errors``.
        """
        out = BulkOutcomes.empty(records, kind)
        engine = self.engine()
        for batch in self.cut_batches(out, ArraySink(out), signatures, key_id, recovering=journal_key is not None,
                                      sign_group=sign_group):
            batch.origin.journal_key = journal_key
            engine.put(batch)
        try:
            await engine.close()
        finally:
            await engine.abort()
        return out.raise_for_errors() if raise_errors else out

    def cut_batches(self, out: BulkOutcomes, sink: ArraySink, signatures: bytes, key_id: bytes, *,
                    recovering: bool = False, sign_group: int = 0) -> list[Batch]:
        """Batches of ≤ ``batch_size_max`` records of a bulk buffer, each row's outcome going to ``sink``
        (with pre-made group signatures: cut at group boundaries)."""
        size, records, n = RECORD_SIZE[out.kind], out.records, len(out)
        group = sign_group if signatures else 0
        per = group or 1  # records per signature
        if n == 0 or len(records) != n * size or group < 0 or (
                signatures and len(signatures) != -(-n // per) * SIGNATURE_SIZE):
            raise ValueError(f"records must be a non-empty multiple of {size} bytes; signatures empty or "
                             f"{SIGNATURE_SIZE} bytes per record (per group of sign_group records)")
        step = self.config.batch_size_max if not group else max(1, self.config.batch_size_max // group) * group
        batches = []
        for first in range(0, n, step):
            m = min(step, n - first)
            sigs = signatures[first // per * SIGNATURE_SIZE : -(-(first + m) // per) * SIGNATURE_SIZE]
            batches.append(Batch.of(out.kind, records[first * size : (first + m) * size], Origin(sink, first, m),
                                    signatures=sigs, key_id=key_id if sigs else b"", recovering=recovering,
                                    signed=bool(sigs) or self.signer is None, sign_group=group))
        return batches

    async def recover(self) -> list[TransferOutcome]:
        """Re-send every unresolved journal entry with its original id, bytes and signature.

        Run at start-up, before new payments. Idempotency makes this safe whatever the crash point:
        an entry that had committed comes back as ``transfer_exists`` (reported and journaled as OK).
        """
        pending = await self.journal_writer.unresolved()
        batches = await self.journal_writer.pending_batches()
        if not pending and not batches:
            return []
        log.info("journal: recovering %d unresolved payment(s) and %d batch(es)", len(pending), len(batches))
        outcomes = await self.submit_prepared([e.prepared() for e in pending], recovering=True) if pending else []
        await self.journal_writer.payments_settled(outcomes)
        for b in batches:  # each settles its own journal row
            bulk = await self.submit_records(b.records, signatures=b.signatures, key_id=b.key_id, journal_key=b.key,
                                             sign_group=b.sign_group)
            outcomes += bulk.outcomes()
        await self.journal_writer.barrier()
        return outcomes


async def _gather_outcomes(engine: Engine, futs: list[asyncio.Future[TransferOutcome]], *,
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


__all__ = ["AsyncLedgerSDK"]
