"""The asyncio streaming session: a ``SessionWindow`` plus an engine, both on the event loop.

The threaded ``clients.psp.sync.Session`` is a thin adapter over this same object: it admits
payments from its own threads through ``admit`` (the window is guarded by a lock) and hands the
resulting actions to the loop with ``dispatch``; batching and windowing exist once, here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from clients.psp.bulk import ArraySink, BulkOutcomes
from clients.psp.config import SdkConfig
from clients.psp.outcomes import Deliver
from clients.psp.window import Batch, EngineStats, SealBatch, SessionAction, SessionWindow
from clients.sdk_errors import SdkError
from clients.sdk_types import TransferOutcome
from ledger.codec import TRANSFER_SIZE, encode_transfer
from ledger.types import Transfer

if TYPE_CHECKING:
    from clients.psp.aio import AsyncLedgerSDK


class WindowCounters:
    """Read-only counters of a session's window (the asyncio and the threaded session show the same)."""

    window: SessionWindow
    stats: EngineStats  # the engine's counters (batches, re-sends, broken streams, lookups)

    @property
    def unacknowledged(self) -> int:
        return self.window.unacked

    @property
    def sent(self) -> int:
        return self.window.sent

    @property
    def acked(self) -> int:
        return self.window.acked


class AsyncSession(WindowCounters):
    """A streaming session: ``await send(t)`` returns a future of the payment's outcome.

    ``send`` waits while ``window_items`` payments are unacknowledged (back-pressure). Use as an
    async context manager, or call ``await close()`` (which flushes).
    """

    def __init__(self, sdk: AsyncLedgerSDK, config: SdkConfig) -> None:
        self.config = config
        self._clock = sdk.clock
        self._cut = sdk.cut_batches
        self._sizes = TRANSFER_SIZE
        self._journal = sdk.journal_writer
        self._engine = sdk.engine(config)
        self.stats = self._engine.stats
        self._loop = asyncio.get_running_loop()
        self.window = SessionWindow(config.batch_size_max, config.batch_delay_s, config.window_items, self._progress)
        self._lock = threading.Lock()  # the window is shared with a threaded adapter's callers
        self._acked_event = asyncio.Event()  # set whenever an outcome arrives
        self._ack_listeners: list[Callable[[], None]] = []
        self._closed = False

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
        await self._wait_until(self.window.has_room)
        fut: asyncio.Future[TransferOutcome] = self._loop.create_future()
        if callback is not None:
            fut.add_done_callback(callback)
        self.dispatch(self.admit(transfer.id, record, future_deliver(fut)))
        return fut

    # -- the window, shared with the threaded adapter ------------------------------------------------

    def admit(self, transfer_id: int, record: bytes, deliver: Deliver) -> SessionAction | None:
        """Buffer one payment (any thread; the caller made sure the window has room)."""
        if self._closed:
            raise SdkError("session is closed")
        with self._lock:
            return self.window.add(transfer_id, record, deliver, self._clock())

    def try_admit(self, transfer_id: int, record: bytes, deliver: Deliver) -> tuple[bool, SessionAction | None]:
        """``admit`` if the window has room (any thread): (admitted, action) — one lock, checked and counted."""
        if self._closed:
            raise SdkError("session is closed")
        with self._lock:
            if not self.window.has_room():
                return False, None
            return True, self.window.add(transfer_id, record, deliver, self._clock())

    def dispatch(self, action: SessionAction | None) -> None:
        """Carry out a window action (loop thread)."""
        if action is None:
            return
        if isinstance(action, SealBatch):
            self._engine.put(action.batch)
        else:
            self._loop.call_later(action.delay_s, self._on_timer)

    # -- the bulk path ------------------------------------------------------------------------------

    async def send_records(self, records: bytes, *, signatures: bytes = b"", key_id: bytes = b""
                           ) -> asyncio.Future[BulkOutcomes]:
        """Queue a packed buffer of transfer records (n × 176 bytes) on this session's stream; the
        future gives their outcome arrays. Waits while the window cannot take them (a buffer larger
        than the whole window goes alone)."""
        n = len(records) // self._sizes
        await self._wait_until(lambda: self.window.unacked == 0 or self.window.unacked + n <= self.window.window_items)
        fut: asyncio.Future[BulkOutcomes] = self._loop.create_future()
        self.put_batches(self.admit_records(records, signatures, key_id, _set_result(fut)))
        return fut

    def admit_records(self, records: bytes, signatures: bytes, key_id: bytes,
                      on_complete: Callable[[BulkOutcomes], None]) -> list[Batch]:
        """Count a bulk buffer in the window and cut it into batches (any thread; no I/O)."""
        if self._closed:
            raise SdkError("session is closed")
        out = BulkOutcomes.empty(records)
        batches = self._cut(out, ArraySink(out, self._progress, on_complete), signatures, key_id)
        with self._lock:
            self.window.admit_bulk(len(out))
        return batches

    def put_batches(self, batches: list[Batch]) -> None:
        """Hand batches to the engine (loop thread)."""
        for b in batches:
            self._engine.put(b)

    def _progress(self, k: int) -> None:
        """``k`` payments got their outcome (loop thread): room in the window."""
        with self._lock:
            self.window.on_outcome(k)
        self._acked_event.set()
        for listener in self._ack_listeners:
            listener()

    def on_ack(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the loop thread) after every outcome."""
        self._ack_listeners.append(listener)

    def seal_now(self) -> None:
        """Send what is buffered (loop thread)."""
        with self._lock:
            action = self.window.flush()
        self.dispatch(action)

    def _on_timer(self) -> None:
        with self._lock:
            action = self.window.on_timer(self._clock())
        self.dispatch(action)

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._acked_event.clear()
            await self._acked_event.wait()

    # -- flushing and closing -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Send what is buffered and wait until every payment sent so far has an outcome."""
        self.seal_now()
        await self._wait_until(self.window.idle)
        await self._journal.barrier()

    async def close(self) -> None:
        if self._closed:
            return
        self.seal_now()
        self._closed = True
        try:
            await self._engine.close()
        finally:
            await self._engine.abort()


def _set_result(fut: asyncio.Future[BulkOutcomes]) -> Callable[[BulkOutcomes], None]:
    def done(out: BulkOutcomes) -> None:
        if not fut.done():
            fut.set_result(out)

    return done


def future_deliver(fut: asyncio.Future[TransferOutcome]) -> Deliver:
    def deliver(value: TransferOutcome | BaseException) -> None:
        if fut.done():
            return
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)

    return deliver


__all__ = ["AsyncSession", "WindowCounters", "future_deliver"]
