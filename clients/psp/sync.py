"""The threaded SDK: the asyncio SDK on a private event-loop thread, and a thin blocking session
adapter over the same ``AsyncSession`` window."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Self, TypeVar

from clients.connect import ClientTls
from clients.journal import Journal
from clients.psp.aio import AsyncLedgerSDK
from clients.psp.bulk import BulkOutcomes
from clients.psp.columns import encode_transfer_fast
from clients.psp.config import MONOTONIC, Clock, SdkConfig
from clients.psp.futures import PaymentFuture
from clients.psp.session import AsyncSession, WindowCounters
from clients.sdk_errors import SdkError
from clients.sdk_types import PreparedTransfer, RetryPolicy, TransferOutcome
from ledger.codec import TRANSFER_SIZE
from ledger.note import Signer
from ledger.types import Account, AccountBalance, Transfer
from sovledger_pb import ledger_pb2 as pb

T = TypeVar("T")


class _ClosedOnExit:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LedgerSDK(_ClosedOnExit):
    """Thread-friendly client of a region; all network work runs on one private event-loop thread.

    >>> sdk = LedgerSDK(["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"])   # doctest: +SKIP
    >>> outcomes = sdk.submit([Transfer(...), ...])                              # doctest: +SKIP
    """

    def __init__(self, targets: str | Sequence[str], *, signer: Signer | None = None,
                 journal: Journal | str | os.PathLike[str] | None = None, retry: RetryPolicy | None = None,
                 config: SdkConfig | None = None, clock: Clock = MONOTONIC, tls: ClientTls | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sovledger-sdk", daemon=True)
        self._thread.start()

        async def make() -> AsyncLedgerSDK:
            return AsyncLedgerSDK(targets, signer=signer, journal=journal, retry=retry, config=config, clock=clock,
                                  tls=tls)

        self.aio: AsyncLedgerSDK = self.run(make())
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine on the SDK's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def journal(self) -> Journal | None:
        return self.aio.journal

    @property
    def router_leader(self) -> str | None:
        return self.aio.router.leader

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.run(self.aio.close(), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def submit(self, transfers: Sequence[Transfer], *, raise_on_failure: bool = False) -> list[TransferOutcome]:
        return self.run(self.aio.submit(transfers, raise_on_failure=raise_on_failure))

    def submit_records(self, records: bytes, *, signatures: bytes = b"", key_id: bytes = b"",
                       raise_errors: bool = True, sign_group: int = 0) -> BulkOutcomes:
        """The bulk path (``AsyncLedgerSDK.submit_records``): packed records in, outcome arrays out."""
        return self.run(self.aio.submit_records(records, signatures=signatures, key_id=key_id,
                                                raise_errors=raise_errors, sign_group=sign_group))

    def submit_prepared(self, prepared: Sequence[PreparedTransfer]) -> list[TransferOutcome]:
        return self.run(self.aio.submit_prepared(prepared))

    def create_accounts(self, accounts: Sequence[Account]) -> list[TransferOutcome]:
        return self.run(self.aio.create_accounts(accounts))

    def ensure_accounts(self, accounts: Sequence[Account]) -> None:
        self.run(self.aio.ensure_accounts(accounts))

    def lookup_transfers(self, ids: Sequence[int]) -> list[pb.TransferInfo]:
        return self.run(self.aio.lookup_transfers(ids))

    def lookup_accounts(self, ids: Sequence[int]) -> list[AccountBalance | None]:
        return self.run(self.aio.lookup_accounts(ids))

    def recover(self) -> list[TransferOutcome]:
        return self.run(self.aio.recover())

    def session(self, config: SdkConfig | None = None) -> Session:
        return Session(self, (config or self.aio.config).validate())


class Session(WindowCounters, _ClosedOnExit):
    """Synchronous streaming session. ``send(t)`` blocks while the window is full and returns a
    ``concurrent.futures.Future[TransferOutcome]``; ``callback(future)`` runs on the SDK's thread
    when the outcome is known (keep it short). Thread-safe."""

    def __init__(self, sdk: LedgerSDK, config: SdkConfig) -> None:
        self._sdk = sdk
        self.config = config

        async def make() -> AsyncSession:
            return AsyncSession(sdk.aio, config)

        self._aio = sdk.run(make())
        self.window = self._aio.window
        self.stats = self._aio.stats
        self._cond = threading.Condition()
        self._aio.on_ack(self._notify)
        self._closed = False

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def send(self, transfer: Transfer,
             callback: Callable[[concurrent.futures.Future[TransferOutcome]], None] | None = None,
             timeout_s: float | None = None) -> concurrent.futures.Future[TransferOutcome]:
        """Queue one payment; blocks while ``window_items`` payments are unacknowledged."""
        if self._closed:
            raise SdkError("session is closed")
        record = encode_transfer_fast(transfer)
        fut = deliver = PaymentFuture(self._cond, transfer.id)
        if callback is not None:
            fut.add_done_callback(callback)
        admitted, action = self._aio.try_admit(transfer.id, record, deliver)  # the common case: one lock
        if not admitted:
            with self._cond:
                if not self._cond.wait_for(self.window.has_room, timeout_s):
                    raise TimeoutError(f"window of {self.config.window_items} payments stayed full for {timeout_s}s")
                action = self._aio.admit(transfer.id, record, deliver)
        if action is not None:
            self._sdk.loop.call_soon_threadsafe(self._aio.dispatch, action)
        return fut

    def send_records(self, records: bytes, *, signatures: bytes = b"", key_id: bytes = b"",
                     timeout_s: float | None = None) -> concurrent.futures.Future[BulkOutcomes]:
        """The bulk path: queue a packed buffer of transfer records (n × 176 bytes); the future gives
        their outcome arrays. Blocks while the window cannot take them."""
        if self._closed:
            raise SdkError("session is closed")
        n = len(records) // TRANSFER_SIZE
        fut: concurrent.futures.Future[BulkOutcomes] = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()
        w = self.window
        with self._cond:
            if not self._cond.wait_for(lambda: w.unacked == 0 or w.unacked + n <= w.window_items, timeout_s):
                raise TimeoutError(f"window of {w.window_items} payments stayed full for {timeout_s}s")
            batches = self._aio.admit_records(records, signatures, key_id, fut.set_result)
        self._sdk.loop.call_soon_threadsafe(self._aio.put_batches, batches)
        return fut

    def send_many(self, transfers: Iterable[Transfer]) -> list[concurrent.futures.Future[TransferOutcome]]:
        return [self.send(t) for t in transfers]

    def flush(self, timeout_s: float | None = None) -> None:
        """Send what is buffered now and block until every payment sent so far has an outcome."""
        self._sdk.loop.call_soon_threadsafe(self._aio.seal_now)
        with self._cond:
            if not self._cond.wait_for(self.window.idle, timeout_s):
                raise TimeoutError(f"{self.unacknowledged} payments still unacknowledged after {timeout_s}s")
        self._sdk.run(self._sdk.aio.journal_writer.barrier(), timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._sdk.run(self._aio.close(), timeout_s)


__all__ = ["LedgerSDK", "Session"]
