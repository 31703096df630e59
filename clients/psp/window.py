"""The SDK's window and retry logic as a pure state machine: events in, actions out, no I/O.

In the manner of h2's connection object: the driver (``clients.psp.driver``) feeds what happened
(an item was sent by the caller, a timer fired, a batch went out, a response came back, the stream
broke) together with the time it read from its clock, and carries out what it is told (seal a
batch, arm a timer, settle, retry after a back-off, fail). Nothing here reads a clock, sleeps,
touches a socket or a file, so every decision can be tested with plain numbers.

Two machines:

- ``SessionWindow``: what a session has buffered and how many payments are unacknowledged
  (back-pressure). The asyncio session and the threaded session share it.
- ``SendWindow``: the batches waiting to be sent and in flight on one stream, with the retry
  budget; it decides what a response, a refusal or a broken stream means for each batch.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt

from clients.psp.futures import PaymentFuture, settle_futures
from clients.psp.outcomes import (
    HOW_LOOKUP,
    HOW_RECOVERED,
    HOW_RESEND_EXISTS,
    HOW_RESPONSE,
    Columns,
    Deliver,
    ObjectSink,
    Origin,
    Rows,
    is_success,
)
from clients.sdk_errors import LedgerStatusError, NotLeaderError
from clients.sdk_types import RetryPolicy
from ledger.codec import RECORD_SIZE
from ledger.types import EventKind, Result

# A stream that ends with one of these was refused on purpose by the node (not a crash or a transport
# failure): payments the lookup did not find are reported as refused. Any other status on a broken
# stream (UNAVAILABLE, INTERNAL "from Core", UNKNOWN, CANCELLED …) is treated as a transport failure.
DELIBERATE_REFUSALS = frozenset({
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED,
})
# Items with these result codes were applied by an earlier identical event: the payment is in the ledger.
_EXISTS = frozenset({Result.TRANSFER_EXISTS, Result.EXISTS})


# -- batches -------------------------------------------------------------------------------------------


_seqs = itertools.count(1)


@dataclass(slots=True, eq=False)
class Batch:
    """Rows on their way as one SubmitRequest: canonical records (and signatures) as bytes, no
    object per row. ``rows`` are the positions of these records in ``origin`` (a re-send of the
    undecided rest of a batch carries a subset)."""

    kind: EventKind
    records: bytes
    origin: Origin
    rows: Rows
    signatures: bytes = b""
    key_id: bytes = b""
    recovering: bool = False  # re-sent from the journal: exists means OK
    signed: bool = False  # signatures already attached (journal/recovery)
    sign_group: int = 0  # 0: ``signatures`` per record; G: per group of G records (ledger/psp_group.py)
    seq: int = field(default_factory=lambda: next(_seqs))
    attempts: int = 0
    uncertain: bool = False  # a send of it may have been applied (indeterminate once)
    first_sent: float | None = None
    queued_at: float | None = None
    sent_at: float = 0.0
    batch_id: int = 0

    @classmethod
    def of(cls, kind: EventKind, records: bytes, origin: Origin, *, signatures: bytes = b"", key_id: bytes = b"",
           recovering: bool = False, signed: bool = False, sign_group: int = 0) -> Batch:
        return cls(kind, records, origin, np.arange(origin.n, dtype=np.int64), signatures, key_id,
                   recovering, signed, sign_group if signatures else 0)

    @property
    def size(self) -> int:
        return RECORD_SIZE[self.kind]

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, k: int) -> bytes:
        return self.records[k * self.size : (k + 1) * self.size]

    @property
    def ids(self) -> list[int]:
        size = self.size
        return [int.from_bytes(self.records[k : k + 16], "little") for k in range(0, len(self.records), size)]

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        """Only the rows where ``mask`` is set stay in this batch (to be sent again)."""
        keep = np.flatnonzero(mask)
        self.records = b"".join(self.record(int(k)) for k in keep)
        if self.sign_group:  # a group's signature covers all of it: the rest must be signed anew
            self.signatures, self.key_id, self.sign_group, self.signed = b"", b"", 0, False
        elif self.signatures:
            self.signatures = b"".join(self.signatures[k * 64 : (k + 1) * 64] for k in keep.tolist())
        self.rows = self.rows[keep]

    def fail_all(self, error: BaseException, *, final: bool) -> bool:
        return self.origin.fail(self.rows, error, final=final)


# -- session window: buffering and back-pressure -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealBatch:
    """Action: hand this batch to the engine."""

    batch: Batch


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Action: call ``SessionWindow.on_timer`` again after ``delay_s``."""

    delay_s: float


SessionAction = SealBatch | ArmTimer


class SessionWindow:
    """Buffer of one session plus its count of unacknowledged payments. Not thread-safe by itself:
    the threaded session calls it under its lock."""

    def __init__(self, batch_size_max: int, batch_delay_s: float, window_items: int,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.batch_size_max = batch_size_max
        self.on_progress = on_progress  # told how many of a sealed batch's payments got their outcome
        self.batch_delay_s = batch_delay_s
        self.window_items = window_items
        self.unacked = 0
        self.sent = 0
        self.acked = 0
        self._ids: list[int] = []
        self._records: list[bytes] = []
        self._delivers: list[Deliver] = []
        self._mixed = False  # the open batch has a deliver that is not a PaymentFuture
        self._opened_at = 0.0
        self._timer_armed = False  # at most one timer per session, whatever the number of batches

    def has_room(self) -> bool:
        return self.unacked < self.window_items

    def idle(self) -> bool:
        return self.unacked == 0

    def add(self, transfer_id: int, record: bytes, deliver: Deliver, now: float) -> SessionAction | None:
        """A payment was admitted (the caller checked ``has_room``)."""
        self.unacked += 1
        self.sent += 1
        self._ids.append(transfer_id)
        self._records.append(record)
        self._delivers.append(deliver)
        if type(deliver) is not PaymentFuture:
            self._mixed = True
        if len(self._ids) >= self.batch_size_max:
            return self._seal()
        if len(self._ids) == 1:
            self._opened_at = now
            return self._arm(self.batch_delay_s)
        return None

    def on_timer(self, now: float) -> SessionAction | None:
        """The batch-delay timer fired: seal when the open batch is old enough, else wait the rest."""
        self._timer_armed = False
        if not self._ids:
            return None
        left = self._opened_at + self.batch_delay_s - now
        return self._arm(left) if left > 0 else self._seal()

    def _arm(self, delay_s: float) -> ArmTimer | None:
        if self._timer_armed:
            return None
        self._timer_armed = True
        return ArmTimer(delay_s)

    def flush(self) -> SessionAction | None:
        return self._seal() if self._ids else None

    def admit_bulk(self, n: int) -> None:
        """``n`` payments sealed by the caller as their own batches (the bulk path) now count too."""
        self.unacked += n
        self.sent += n

    def on_outcome(self, n: int = 1) -> None:
        self.unacked -= n
        self.acked += n

    def _seal(self) -> SealBatch:
        ids, records, delivers = self._ids, self._records, self._delivers
        self._ids, self._records, self._delivers = [], [], []
        lazy = None if self._mixed else settle_futures
        self._mixed = False
        origin = Origin(ObjectSink(ids, delivers, self.on_progress, lazy), 0, len(ids))
        return SealBatch(Batch.of(EventKind.CREATE_TRANSFER, b"".join(records), origin))


# -- send window: in flight, retries, broken streams ---------------------------------------------------


@dataclass(slots=True)
class EngineStats:
    """Counters of one session's engine (tests, progress displays)."""

    batches_sent: int = 0  # first sends
    resends: int = 0  # batches sent again (refusal, broken stream)
    broken_streams: int = 0
    indeterminate_batches: int = 0
    resolved_by_lookup: int = 0  # payments settled by LookupTransfers after a broken stream
    recent_batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def on_send(self, b: Batch) -> None:
        if b.attempts == 1:
            self.batches_sent += 1
            self.recent_batch_sizes.append(len(b))
        else:
            self.resends += 1


class UnexpectedResponse(Exception):
    """A response that does not answer the oldest batch in flight: the stream is out of step."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Action: the batch goes back to the queue; stop this stream and sleep ``backoff_s`` first."""

    batch: Batch
    backoff_s: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Action: the batch is refused for good (or its retry budget is spent)."""

    batch: Batch
    error: LedgerStatusError


RefusalAction = Retry | Fail


class SendWindow:
    """Batches ready to send (in ``seq`` order) and in flight on the current stream."""

    def __init__(self, window_batches: int, retry: RetryPolicy, response_timeout_s: float) -> None:
        self.window_batches = window_batches
        self.retry = retry
        self.response_timeout_s = response_timeout_s
        self.ready: deque[Batch] = deque()
        self.inflight: deque[Batch] = deque()
        self.round_failures = 0
        self.stats = EngineStats()
        self._last_answer = float("-inf")

    def enqueue(self, batch: Batch, now: float) -> None:
        batch.queued_at = now
        self.ready.append(batch)

    def on_unreachable(self, now: float) -> tuple[list[Batch], float]:
        """No connection to the target (nothing was sent): no attempt is counted, but ready batches
        whose retry deadline (since they were queued) has passed are taken out and returned to be
        failed. Returns them and the back-off before the next round."""
        self.round_failures += 1
        expired = [b for b in self.ready if self.give_up(b, now)]
        if expired:
            self.ready = deque(b for b in self.ready if not self.give_up(b, now))
        return expired, self.retry.delay_s(self.round_failures)

    def requeue(self, batches: Sequence[Batch]) -> None:
        """Batches to send again keep their place: everything ready is sorted by first submission."""
        if batches:
            self.ready = deque(sorted([*self.ready, *batches], key=lambda x: x.seq))

    def can_send(self) -> bool:
        return bool(self.ready) and len(self.inflight) < self.window_batches

    def next_send(self, batch_id: int, now: float) -> Batch:
        b = self.ready.popleft()
        b.batch_id = batch_id
        b.attempts += 1
        self.stats.on_send(b)
        b.sent_at = now
        if b.first_sent is None:
            b.first_sent = now
        self.inflight.append(b)
        return b

    def overdue(self, now: float) -> bool:
        """No answer for ``response_timeout_s`` while batches wait: the stream is treated as broken.

        Measured from the oldest batch's send or the last answer, whichever is later: a node that
        answers batch after batch is slow, not dead, however long its queue."""
        if not self.inflight:
            return False
        return now - max(self.inflight[0].sent_at, self._last_answer) > self.response_timeout_s

    def on_response(self, batch_id: int, now: float) -> Batch:
        if not self.inflight or batch_id != self.inflight[0].batch_id:
            raise UnexpectedResponse(f"response for unexpected batch {batch_id}")
        self._last_answer = now
        return self.inflight.popleft()

    def on_accepted(self) -> None:
        self.round_failures = 0

    def on_refusal(self, b: Batch, err: LedgerStatusError, now: float) -> RefusalAction:
        """A BatchStatus refusal: retry the batch (same ids) or fail it."""
        if not err.retryable or self.give_up(b, now):
            return Fail(b, err)
        if isinstance(err, NotLeaderError) and err.leader_hint:
            return Retry(b, 0.0)  # follow the leader at once
        return Retry(b, max(self.retry.delay_s(b.attempts), err.retry_after_s))

    def on_broken(self) -> tuple[list[Batch], float]:
        """The stream broke: every unanswered batch is uncertain. Returns them and the back-off."""
        unanswered = list(self.inflight)
        self.inflight.clear()
        self.stats.broken_streams += 1
        self.stats.indeterminate_batches += len(unanswered)
        self.round_failures += 1
        for b in unanswered:
            b.uncertain = True
        return unanswered, self.retry.delay_s(self.round_failures)

    def drain_inflight(self) -> list[Batch]:
        """The round ended (normally or cancelled): what is still in flight has no answer."""
        out = list(self.inflight)
        self.inflight.clear()
        for b in out:
            b.uncertain = True
        return out

    def give_up(self, b: Batch, now: float) -> bool:
        """The retry budget of a batch is spent: ``max_attempts`` sends, or ``deadline_s`` since its
        first send (since it was queued, when it could not be sent at all)."""
        r = self.retry
        since = b.first_sent if b.first_sent is not None else b.queued_at
        return b.attempts >= r.max_attempts or (since is not None and now - since > r.deadline_s)


# -- reading answers ---------------------------------------------------------------------------------

_EXISTS_CODES = np.array(sorted(int(r) for r in _EXISTS), dtype=np.uint32)


def outcomes_of_response(b: Batch, results: Sequence[int], log_indexes: Sequence[int], blocks: Sequence[int],
                         timestamp_ns: int) -> tuple[Columns, Columns | None]:
    """Outcomes of an accepted batch as columns: (final ones, failures to confirm by lookup first).

    A re-sent payment answered ``exists`` is in the ledger exactly once: OK. A failing code for a
    batch an earlier send of which may still commit is not final until a lookup confirms it.
    """
    res = np.array(results, dtype=np.uint32)
    n = len(b)
    if len(res) != n or len(log_indexes) != n or len(blocks) != n:
        raise UnexpectedResponse(f"a response with {len(res)} results for a batch of {n}")
    how = np.full(n, HOW_RECOVERED if b.recovering else HOW_RESPONSE, dtype=np.uint8)
    if b.attempts > 1 or b.uncertain or b.recovering:
        exists = np.isin(res, _EXISTS_CODES)
        res[exists] = int(Result.OK)
        how[exists] = HOW_RESEND_EXISTS
    cols = Columns(b.rows, res, np.array(log_indexes, dtype=np.uint64), np.array(blocks, dtype=np.uint64),
                   np.full(n, timestamp_ns, dtype=np.uint64), how, b.attempts)
    if not b.uncertain or b.kind != EventKind.CREATE_TRANSFER:
        return cols, None
    failing = ~is_success(res)
    if not failing.any():
        return cols, None
    return cols.take(~failing), cols.take(failing)


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup says about one payment."""

    record: bytes
    log_index: int
    block: int
    timestamp_ns: int


def settle_by_lookup(b: Batch, positions: Sequence[int], found: Sequence[Found | None]) -> Columns:
    """Rows (batch positions ``positions``) whose very record is in the ledger, as OK outcomes ("lookup").

    Not found, or another record under this id (a re-send then reports ``exists_with_different_*``),
    is left out.
    """
    hits = [(k, f) for k, f in zip(positions, found, strict=True) if f is not None and f.record == b.record(k)]
    ks = np.array([k for k, _ in hits], dtype=np.int64)
    return Columns(b.rows[ks], np.zeros(len(hits), dtype=np.uint32),
                   np.array([f.log_index for _, f in hits], dtype=np.uint64),
                   np.array([f.block for _, f in hits], dtype=np.uint64),
                   np.array([f.timestamp_ns for _, f in hits], dtype=np.uint64),
                   np.full(len(hits), HOW_LOOKUP, dtype=np.uint8), b.attempts)


__all__ = [
    "DELIBERATE_REFUSALS", "ArmTimer", "Batch", "EngineStats", "Fail", "Found", "Retry", "SealBatch", "SendWindow",
    "SessionWindow", "UnexpectedResponse", "outcomes_of_response", "settle_by_lookup",
]
