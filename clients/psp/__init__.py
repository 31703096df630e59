"""The PSP streaming SDK: batching, a bounded window, retries, leader failover, exactly-once outcomes.

Layers, innermost first (docs/sdk.md has the long version):

- ``window``: the pure window/retry state machine (events in, actions out, clock passed in);
- ``driver``: the grpc.aio driver of one Submit stream at a time (``Engine``);
- ``durable``: signing and the journal around a batch; ``routing``: leader and channels;
- ``aio``/``session``: ``AsyncLedgerSDK`` and ``AsyncSession`` for asyncio applications;
- ``sync``: ``LedgerSDK`` and ``Session`` for threaded code, a thin adapter over the same session.

What the SDK guarantees:

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

from clients.psp.aio import AsyncLedgerSDK
from clients.psp.config import Clock, SdkConfig
from clients.psp.session import AsyncSession
from clients.psp.sync import LedgerSDK, Session
from clients.psp.window import EngineStats
from clients.sdk_types import PreparedTransfer, RetryPolicy, TransferOutcome

__all__ = [
    "AsyncLedgerSDK",
    "AsyncSession",
    "Clock",
    "EngineStats",
    "LedgerSDK",
    "PreparedTransfer",
    "RetryPolicy",
    "SdkConfig",
    "Session",
    "TransferOutcome",
]
