"""Where the outcomes of a batch's rows go, as columns: no Python object per payment unless asked.

A sealed batch keeps an ``Origin``: its sink (per-payment futures for the object API, arrays for
the bulk path), the position of its first row in that sink, and — for the journal — which of its
rows are final. Outcomes arrive as numpy columns (``Columns``) for a subset of rows (a response, a
lookup, a re-send of the rest); the origin passes them on and says when every row is final, so
the journal can settle the batch in one write. Pure: no I/O, no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from clients.sdk_types import Resolution, TransferOutcome
from ledger.types import SUCCESS_CODES, Result

log = logging.getLogger("sovledger.sdk")

U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
Rows = npt.NDArray[np.int64]

#: ``Columns.how`` values, indexes into this tuple.
RESOLUTIONS: Final[tuple[Resolution, ...]] = ("response", "lookup", "resend_exists", "recovered")
HOW_RESPONSE, HOW_LOOKUP, HOW_RESEND_EXISTS, HOW_RECOVERED = range(4)
#: A row that ended with an error instead of a result code (in journals and bulk result arrays).
NO_RESULT: Final = 0xFFFF_FFFF

_SUCCESS_TABLE = np.zeros(1 << 16, dtype=np.bool_)
_SUCCESS_TABLE[sorted(SUCCESS_CODES)] = True


def is_success(results: U32) -> npt.NDArray[np.bool_]:
    """Vectorised ``Result.is_success`` (codes beyond 16 bits are failures)."""
    return np.where(results < (1 << 16), _SUCCESS_TABLE[np.minimum(results, 0xFFFF)], False)


@dataclass(frozen=True, slots=True)
class Columns:
    """Final outcomes of some rows of a batch."""

    rows: Rows  # positions in the origin batch
    results: U32
    log_indexes: U64
    blocks: U64
    timestamps_ns: U64
    how: npt.NDArray[np.uint8]
    attempts: int

    def take(self, mask: npt.NDArray[np.bool_]) -> Columns:
        return Columns(self.rows[mask], self.results[mask], self.log_indexes[mask], self.blocks[mask],
                       self.timestamps_ns[mask], self.how[mask], self.attempts)


class Sink(Protocol):
    """Receives outcomes by position (``Origin.offset`` + row)."""

    def settled(self, positions: Rows, cols: Columns) -> None: ...
    def failed(self, positions: Rows, error: BaseException) -> None: ...


@dataclass(slots=True, eq=False)
class Origin:
    """A batch as first sealed; outlives the subsets of it that are re-sent."""

    sink: Sink
    offset: int
    n: int
    journal_key: int | None = None  # the journal's batch row, once journaled
    final: npt.NDArray[np.bool_] = field(init=False)
    results: U32 = field(init=False)
    log_indexes: U64 = field(init=False)
    blocks: U64 = field(init=False)
    unresolved: int = field(init=False)  # rows not final for the journal (unknown outcomes stay so)

    def __post_init__(self) -> None:
        self.final = np.zeros(self.n, dtype=np.bool_)
        self.results = np.full(self.n, NO_RESULT, dtype=np.uint32)
        self.log_indexes = np.zeros(self.n, dtype=np.uint64)
        self.blocks = np.zeros(self.n, dtype=np.uint64)
        self.unresolved = self.n

    def settle(self, cols: Columns) -> bool:
        """Final outcomes of some rows. Returns True when every row of the batch is now final."""
        fresh = ~self.final[cols.rows]
        if not fresh.all():
            cols = cols.take(fresh)
        r = cols.rows
        self.final[r] = True
        self.results[r] = cols.results
        self.log_indexes[r] = cols.log_indexes
        self.blocks[r] = cols.blocks
        self.unresolved -= len(r)
        self.sink.settled(r + self.offset, cols)
        return self.unresolved == 0 and len(r) > 0

    def fail(self, rows: Rows, error: BaseException, *, final: bool) -> bool:
        """Rows that end with an error: ``final`` when refused for good (nothing of them applied),
        not when the outcome is unknown (they stay unresolved for the journal). Returns True when
        every row of the batch is now final."""
        rows = rows[~self.final[rows]]
        if final:
            self.final[rows] = True
            self.unresolved -= len(rows)
        self.sink.failed(rows + self.offset, error)
        return final and self.unresolved == 0 and len(rows) > 0


# -- sinks ---------------------------------------------------------------------------------------------


class Deliver(Protocol):
    def __call__(self, value: TransferOutcome | BaseException, /) -> None: ...


#: ``lazy(delivers, rows, cols)``: complete these delivers with rows of ``cols`` without building outcomes
LazySettle = Callable[[list[Any], list[int], "Columns"], None]


class ObjectSink:
    """The per-payment API: one callback per position, given a ``TransferOutcome`` or an exception;
    ``on_progress(k)`` once per group of ``k`` outcomes (window accounting, not per payment)."""

    def __init__(self, ids: list[int], delivers: list[Deliver], on_progress: Callable[[int], None] | None = None,
                 lazy: LazySettle | None = None) -> None:
        self.ids = ids
        self.delivers = delivers
        self.on_progress = on_progress
        # set when every deliver is a clients.psp.futures.PaymentFuture: completes them from the columns
        self.lazy = lazy
        self._done = bytearray(len(ids))

    def settled(self, positions: Rows, cols: Columns) -> None:
        if self.lazy is not None:  # every deliver is a PaymentFuture: no outcome object until asked
            self._progress(self._settle_lazy(positions, cols))
            return
        rows = zip(positions.tolist(), cols.results.tolist(), cols.log_indexes.tolist(), cols.blocks.tolist(),
                   cols.timestamps_ns.tolist(), cols.how.tolist(), strict=True)
        k = 0
        for p, result, idx, blk, ts, how in rows:
            k += self._deliver(p, TransferOutcome(self.ids[p], Result(result), idx, blk, ts, cols.attempts,
                                                  RESOLUTIONS[how]))
        self._progress(k)

    def _settle_lazy(self, positions: Rows, cols: Columns) -> int:
        done, delivers = self._done, self.delivers
        futs, rows = [], []
        for k, p in enumerate(positions.tolist()):
            if not done[p]:
                done[p] = 1
                futs.append(delivers[p])
                rows.append(k)
        assert self.lazy is not None
        self.lazy(futs, rows, cols)
        return len(futs)

    def failed(self, positions: Rows, error: BaseException) -> None:
        self._progress(sum(self._deliver(p, error) for p in positions.tolist()))

    def _progress(self, k: int) -> None:
        if k and self.on_progress is not None:
            self.on_progress(k)

    def _deliver(self, p: int, value: TransferOutcome | BaseException) -> int:
        if self._done[p]:
            return 0
        self._done[p] = 1
        try:
            self.delivers[p](value)
        except Exception:  # a caller's callback must not kill the engine
            log.exception("payment outcome callback raised")
        return 1


__all__ = [
    "HOW_LOOKUP", "HOW_RECOVERED", "HOW_RESEND_EXISTS", "HOW_RESPONSE", "NO_RESULT", "RESOLUTIONS", "Columns",
    "Deliver", "ObjectSink", "Origin", "Sink", "is_success",
]
