"""What happens to a batch before it may be sent: PSP signing and the journal (fsync) — and the
journal writes after an outcome is known. One journal thread keeps the writes in order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any

from nacl.signing import SigningKey

from clients.journal import Journal, JournalEntry
from clients.psp.window import Batch, Item
from clients.sdk_types import PreparedTransfer, TransferOutcome
from ledger.note import Signer
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

    async def pending(self, prepared: Sequence[PreparedTransfer]) -> None:
        """Journaled (fsynced) before the batch is sent: waits for the write."""
        if self.journal is not None:
            await self._write(self.journal.record_pending, prepared, wait=True)

    async def outcomes(self, outcomes: Sequence[TransferOutcome]) -> None:
        if self.journal is not None and outcomes:
            await self._write(self.journal.record_outcomes, outcomes, wait=False)

    async def refused(self, transfer_ids: Sequence[int], detail: str) -> None:
        """Reported to the caller as not applied: recover() must never send these later."""
        if self.journal is not None and transfer_ids:
            await self._write(self.journal.record_refused, transfer_ids, detail, wait=False)

    async def unresolved(self) -> list[JournalEntry]:
        if self.journal is None:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.journal.unresolved)

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
    """Sign (off the loop: PyNaCl releases the GIL) and journal a batch before its first send."""

    def __init__(self, signer: Signer | None, journal: JournalWriter) -> None:
        self.signing_key = SigningKey(signer.seed) if signer else None
        self.key_id = signer.key_id if signer else b""
        self.journal = journal

    def _sign_items(self, items: Sequence[Item]) -> None:
        key = self.signing_key
        if key is None:
            return
        for it in items:
            it.signature = key.sign(it.record).signature
            it.key_id = self.key_id

    async def __call__(self, batch: Batch) -> None:
        if batch.kind != EventKind.CREATE_TRANSFER:
            return
        if not batch.signed:
            if self.signing_key is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._sign_items, batch.items)
            batch.signed = True
        if not batch.recovering:
            await self.journal.pending(
                [PreparedTransfer(i.transfer_id, i.record, i.signature, i.key_id) for i in batch.items])


__all__ = ["JournalWriter", "Preparer"]
