"""What happens to a batch before it may be sent: PSP signing and the journal (fsync) — and the
journal writes after an outcome is known. One journal thread keeps the writes in order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any

from nacl.signing import SigningKey

from clients.journal import Journal, JournalEntry, PendingBatch
from clients.psp.outcomes import Origin
from clients.psp.window import Batch
from clients.sdk_types import TransferOutcome
from ledger.codec import TRANSFER_SIZE
from ledger.note import Signer
from ledger.psp_group import group_messages
from ledger.types import EventKind

log = logging.getLogger("sovledger.sdk")


class JournalWriter:
    """Asynchronous, ordered access to an optional journal; every method is a no-op without one."""

    def __init__(self, journal: Journal | None, owned: bool) -> None:
        self.journal = journal
        self._owned = owned
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sdk-journal")
        self._tail: asyncio.Future[Any] | None = None

    async def _write(self, fn: Callable[..., None], *args: Any, wait: bool) -> None:
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        self._tail = fut
        if wait:
            await fut
        else:
            fut.add_done_callback(_log_journal_error)

    async def pending(self, batch: Batch) -> None:
        """Journal (fsync) a batch before it is sent: waits for the write; remembers the journal row."""
        if self.journal is None:
            return
        fut = asyncio.get_running_loop().run_in_executor(
            self._pool, self.journal.record_batch, batch.records, batch.signatures, batch.key_id, batch.sign_group)
        self._tail = fut
        batch.origin.journal_key = await fut

    async def batch_done(self, origin: Origin) -> None:
        """Every payment of a journaled batch is final: one write of its outcomes (not waited for)."""
        if self.journal is not None and origin.journal_key is not None:
            await self._write(self.journal.settle_batch, origin.journal_key, origin.results.copy(),
                              origin.log_indexes.copy(), origin.blocks.copy(), wait=False)

    async def payments_settled(self, outcomes: Sequence[TransferOutcome]) -> None:
        """Outcomes of single payments (journaled one by one, by ``Journal.record_pending``)."""
        if self.journal is not None and outcomes:
            await self._write(self.journal.record_outcomes, outcomes, wait=False)

    async def unresolved(self) -> list[JournalEntry]:
        """Pending single payments (journaled one by one, not in batches)."""
        if self.journal is None:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.journal.unresolved_payments)

    async def pending_batches(self) -> list[PendingBatch]:
        if self.journal is None:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.journal.pending_batches)

    async def barrier(self) -> None:
        """Return when every write issued so far is done."""
        if self._tail is not None:
            await asyncio.wait([self._tail])

    async def close(self) -> None:
        await self.barrier()
        self._pool.shutdown(wait=True)
        if self.journal is not None and self._owned:
            self.journal.close()


def _log_journal_error(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("journal write failed: %s", fut.exception())


class Preparer:
    """Sign (in a thread pool: PyNaCl releases the GIL) and journal a batch before its first send."""

    def __init__(self, signer: Signer | None, journal: JournalWriter, threads: int = 2, sign_group: int = 0) -> None:
        self.signing_key = SigningKey(signer.seed) if signer else None
        self.sign_group = sign_group
        self.key_id = signer.key_id if signer else b""
        self.journal = journal
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="sdk-sign") if signer else None
        self._threads = threads

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _sign(self, records: bytes) -> bytes:
        sign = self.signing_key.sign  # type: ignore[union-attr]
        return b"".join(sign(records[k : k + TRANSFER_SIZE]).signature for k in range(0, len(records), TRANSFER_SIZE))

    def _sign_groups(self, records: bytes) -> bytes:
        sign = self.signing_key.sign  # type: ignore[union-attr]
        msgs = group_messages(EventKind.CREATE_TRANSFER, records, TRANSFER_SIZE, self.sign_group)
        return b"".join(sign(m).signature for m in msgs)

    async def sign(self, records: bytes) -> bytes:
        """Ed25519 signatures of every record (or of every signing group's root with ``sign_group``),
        concatenated; the rows are cut into one chunk per thread (at group boundaries)."""
        n = len(records) // TRANSFER_SIZE
        loop = asyncio.get_running_loop()
        if self.sign_group:
            groups = -(-n // self.sign_group)
            step = -(-groups // self._threads) * self.sign_group * TRANSFER_SIZE
            parts = await asyncio.gather(*(loop.run_in_executor(self._pool, self._sign_groups, records[k : k + step])
                                           for k in range(0, len(records), step)))
            return b"".join(parts)
        step = -(-n // self._threads) * TRANSFER_SIZE
        parts = await asyncio.gather(*(loop.run_in_executor(self._pool, self._sign, records[k : k + step])
                                       for k in range(0, len(records), step)))
        return b"".join(parts)

    async def __call__(self, batch: Batch) -> None:
        if batch.kind != EventKind.CREATE_TRANSFER:
            return
        if not batch.signed:
            if self.signing_key is not None:
                batch.signatures = await self.sign(batch.records)
                batch.key_id = self.key_id
                batch.sign_group = self.sign_group
            batch.signed = True
        if not batch.recovering and batch.origin.journal_key is None:
            await self.journal.pending(batch)


__all__ = ["JournalWriter", "Preparer"]
