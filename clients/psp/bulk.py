"""The bulk path's results: outcome columns for a packed buffer of records, per-payment objects on demand.

``ArraySink`` receives the outcomes of every batch cut from one buffer (``submit_records``,
``Session.send_records``) straight into numpy arrays; ``BulkOutcomes`` is what the caller gets:
``results``, ``log_indexes``, ``blocks``, ``timestamps_ns`` as arrays in record order, ``ok`` as
a mask, and ``outcome(i)`` / ``outcomes()`` when objects are wanted after all. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from clients.psp.outcomes import NO_RESULT, RESOLUTIONS, U32, U64, Columns, Rows, is_success
from clients.sdk_types import TransferOutcome
from ledger.codec import RECORD_SIZE
from ledger.types import EventKind, Result


@dataclass(eq=False)
class BulkOutcomes:
    """Outcomes of ``n`` records, in the order of the records.

    A row that ended with an exception (refused batch, unknown outcome) has ``results[i] ==
    NO_RESULT``; its exception is in ``errors`` (one entry per group of rows sharing it).
    """

    records: bytes
    kind: EventKind
    results: U32
    log_indexes: U64
    blocks: U64
    timestamps_ns: U64
    how: npt.NDArray[np.uint8]
    attempts: npt.NDArray[np.uint16]
    errors: list[tuple[Rows, BaseException]] = field(default_factory=list)

    @classmethod
    def empty(cls, records: bytes, kind: EventKind = EventKind.CREATE_TRANSFER) -> BulkOutcomes:
        n = len(records) // RECORD_SIZE[kind]
        return cls(records, kind, np.full(n, NO_RESULT, dtype=np.uint32), np.zeros(n, dtype=np.uint64),
                   np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint8),
                   np.zeros(n, dtype=np.uint16))

    def __len__(self) -> int:
        return len(self.results)

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        """True where the payment's effect is in the ledger."""
        return is_success(self.results)

    def transfer_id(self, i: int) -> int:
        size = RECORD_SIZE[self.kind]
        return int.from_bytes(self.records[i * size : i * size + 16], "little")

    def error(self, i: int) -> BaseException | None:
        for rows, exc in self.errors:
            if i in rows:
                return exc
        return None

    def outcome(self, i: int) -> TransferOutcome:
        """The ``TransferOutcome`` of record ``i``; raises its exception when it has no result."""
        if self.results[i] == NO_RESULT:
            raise self.error(i) or RuntimeError(f"record {i} has no outcome yet")
        return TransferOutcome(self.transfer_id(i), Result(int(self.results[i])), int(self.log_indexes[i]),
                               int(self.blocks[i]), int(self.timestamps_ns[i]), int(self.attempts[i]),
                               RESOLUTIONS[int(self.how[i])])

    def outcomes(self) -> list[TransferOutcome]:
        """Every outcome as an object (the convenient API's shape); raises the first error."""
        self.raise_for_errors()
        return [self.outcome(i) for i in range(len(self))]

    def raise_for_errors(self) -> BulkOutcomes:
        if self.errors:
            raise self.errors[0][1]
        return self


class ArraySink:
    """A ``Sink`` writing into a ``BulkOutcomes``; tells ``on_progress`` how many rows got an outcome
    and ``on_complete`` once every row has one."""

    def __init__(self, outcomes: BulkOutcomes, on_progress: Callable[[int], None] | None = None,
                 on_complete: Callable[[BulkOutcomes], None] | None = None) -> None:
        self.out = outcomes
        self._left = len(outcomes)
        self._on_progress = on_progress
        self._on_complete = on_complete

    def settled(self, positions: Rows, cols: Columns) -> None:
        o = self.out
        o.results[positions] = cols.results
        o.log_indexes[positions] = cols.log_indexes
        o.blocks[positions] = cols.blocks
        o.timestamps_ns[positions] = cols.timestamps_ns
        o.how[positions] = cols.how
        o.attempts[positions] = cols.attempts
        self._progress(len(positions))

    def failed(self, positions: Rows, error: BaseException) -> None:
        if len(positions):
            self.out.errors.append((positions, error))
            self._progress(len(positions))

    def _progress(self, k: int) -> None:
        self._left -= k
        if self._on_progress is not None:
            self._on_progress(k)
        if self._left == 0 and self._on_complete is not None:
            self._on_complete(self.out)


__all__ = ["ArraySink", "BulkOutcomes"]
