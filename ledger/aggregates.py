"""Regional aggregates: what a region tells the world about its payments, and nothing more.

An AGGREGATE entry (``EventKind.AGGREGATE = 11``, docs/formats.md §15) carries running totals over
the log's leaves ``[0, to_index)``, one row per (ledger, psp_id): transfers, volume, fees,
reconciliation residuals and reconciliation exceptions. No account id, transfer id, reference or
commitment appears in it: only ledgers (currencies), PSP ids and sums.

The leader folds the leaves committed since the previous aggregate into it and proposes the
result (node/aggregator.py); apply checks only continuity (``from_index`` = the previous
aggregate's ``to_index``) and bounds. Whether the numbers are right is a pure function of the log
anyone can evaluate: ``check(previous, leaves, claimed)`` — the auditor's "is this aggregate
consistent with that log".

Pure: bytes in, values and typed verdicts out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from ledger.codec import (
    AUX_TAG_ORIGIN,
    AUX_TAG_RECONCILE,
    EncodingError,
    Leaf,
    decode_callback,
    decode_transfer,
    iter_aux,
)
from ledger.types import EventKind, Result, TransferFlags

AGGREGATE_VERSION: Final = 1
HEADER: Final = struct.Struct("<BQQQQH")  # version, previous leaf, from_index, to_index, as_of_ns, row count
ROW: Final = struct.Struct("<IIQ16s16s16sQ")  # ledger, psp_id, transfers, volume, fees, residuals, exceptions
ROWS_MAX: Final = 4096
ORIGIN_ADJUSTMENT: Final = 1  # aux tag 4 origin: a rule adjustment (a fee)
ORIGIN_RESIDUAL: Final = 2  # aux tag 4 origin: a reconciliation residual
RECONCILE_EXCEPTION: Final = 3  # aux tag 3 status
U128_MAX: Final = (1 << 128) - 1
U64_MAX: Final = (1 << 64) - 1
NO_PREVIOUS: Final = U64_MAX  # previous leaf of the first aggregate


class AggregateError(ValueError):
    """An aggregate record does not decode (or a total left its field's range)."""


@dataclass(frozen=True, slots=True)
class AggregateRow:
    ledger: int
    psp_id: int
    transfers: int = 0  # OK CREATE_TRANSFER leaves that start a payment (single-phase or pending)
    volume: int = 0  # Σ amount of those (a post or void settles an earlier one: neither is counted)
    fees: int = 0  # Σ amount of rule adjustments (LEDGER_TRANSFER, origin 1)
    residuals: int = 0  # Σ amount of reconciliation residuals (LEDGER_TRANSFER, origin 2)
    exceptions: int = 0  # reconciliation exceptions (callback leaves with status 3; ledger 0: a callback names none)


@dataclass(frozen=True, slots=True)
class Aggregate:
    previous_leaf: int | None  # leaf index of the aggregate before this one (None: the first)
    from_index: int  # leaves folded in by this entry: [from_index, to_index)
    to_index: int
    as_of_ns: int  # timestamp of leaf to_index - 1 (0 for an empty log)
    rows: tuple[AggregateRow, ...] = field(default=())  # sorted by (ledger, psp_id), totals over [0, to_index)

    def encode(self) -> bytes:
        prev = NO_PREVIOUS if self.previous_leaf is None else self.previous_leaf
        parts = [HEADER.pack(AGGREGATE_VERSION, prev, self.from_index, self.to_index, self.as_of_ns, len(self.rows))]
        for r in self.rows:
            parts.append(ROW.pack(r.ledger, r.psp_id, r.transfers, r.volume.to_bytes(16, "little"),
                                  r.fees.to_bytes(16, "little"), r.residuals.to_bytes(16, "little"), r.exceptions))
        return b"".join(parts)

    @staticmethod
    def decode(raw: bytes) -> Aggregate:
        if len(raw) < HEADER.size:
            raise AggregateError(f"aggregate record is {len(raw)} bytes, shorter than its {HEADER.size}-byte header")
        version, prev, first, to, as_of, n = HEADER.unpack_from(raw)
        if version != AGGREGATE_VERSION:
            raise AggregateError(f"aggregate version {version} is unknown")
        if n > ROWS_MAX or len(raw) != HEADER.size + n * ROW.size:
            raise AggregateError(f"aggregate record is {len(raw)} bytes; {n} rows need {HEADER.size + n * ROW.size}")
        if first > to:
            raise AggregateError(f"aggregate window [{first}, {to}) is reversed")
        rows = []
        for i in range(n):
            lg, psp, count, vol, fees, res, exc = ROW.unpack_from(raw, HEADER.size + i * ROW.size)
            rows.append(AggregateRow(lg, psp, count, int.from_bytes(vol, "little"), int.from_bytes(fees, "little"),
                                     int.from_bytes(res, "little"), exc))
        keys = [(r.ledger, r.psp_id) for r in rows]
        if keys != sorted(set(keys)):
            raise AggregateError("aggregate rows must be sorted by (ledger, psp_id) without repeats")
        return Aggregate(None if prev == NO_PREVIOUS else prev, first, to, as_of, tuple(rows))


def _add(totals: dict[tuple[int, int], list[int]], key: tuple[int, int], column: int, amount: int) -> None:
    totals.setdefault(key, [0, 0, 0, 0, 0])[column] += amount


def _fold_leaf(totals: dict[tuple[int, int], list[int]], leaf: Leaf) -> None:
    if leaf.kind == EventKind.CREATE_TRANSFER and leaf.result == Result.OK:
        t = decode_transfer(leaf.body)
        if not t.flags & (TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER):
            _add(totals, (t.ledger, t.psp_id), 0, 1)  # posts and voids settle an earlier transfer: not new money
            _add(totals, (t.ledger, t.psp_id), 1, t.amount)
    elif leaf.kind == EventKind.LEDGER_TRANSFER and leaf.result == Result.OK:
        t = decode_transfer(leaf.body)
        for tag, value in iter_aux(leaf.aux):
            if tag == AUX_TAG_ORIGIN and value[:1] in (bytes((ORIGIN_ADJUSTMENT,)), bytes((ORIGIN_RESIDUAL,))):
                _add(totals, (t.ledger, t.psp_id), 2 if value[0] == ORIGIN_ADJUSTMENT else 3, t.amount)
    elif leaf.kind == EventKind.SETTLEMENT_CALLBACK:
        for tag, value in iter_aux(leaf.aux):
            if tag == AUX_TAG_RECONCILE and value[:1] == bytes((RECONCILE_EXCEPTION,)):
                _add(totals, (0, decode_callback(leaf.body).psp_id), 4, 1)


def fold(previous: Aggregate | None, leaves: Iterable[Leaf], to_index: int, previous_leaf: int | None = None,
         ) -> Aggregate:
    """The next aggregate: ``previous`` (the entry at leaf ``previous_leaf``) plus the leaves
    ``[previous.to_index, to_index)``, in order."""
    start = previous.to_index if previous else 0
    totals = {(r.ledger, r.psp_id): [r.transfers, r.volume, r.fees, r.residuals, r.exceptions]
              for r in (previous.rows if previous else ())}
    expect, as_of = start, previous.as_of_ns if previous else 0
    for leaf in leaves:
        if leaf.index != expect:
            raise AggregateError(f"leaf {leaf.index} out of order: expected {expect}")
        if leaf.kind != EventKind.AGGREGATE:
            try:
                _fold_leaf(totals, leaf)
            except EncodingError as e:
                raise AggregateError(f"leaf {leaf.index}: {e}") from None
        expect, as_of = expect + 1, leaf.timestamp_ns
    if expect != to_index:
        raise AggregateError(f"leaves end at {expect}, the window at {to_index}")
    rows = tuple(AggregateRow(lg, psp, *vals) for (lg, psp), vals in sorted(totals.items()))
    for r in rows:
        if max(r.volume, r.fees, r.residuals) > U128_MAX or max(r.transfers, r.exceptions) > U64_MAX:
            raise AggregateError(f"a total of ledger {r.ledger} psp {r.psp_id} overflows its field")
    return Aggregate(previous_leaf, start, to_index, as_of, rows)


@dataclass(frozen=True, slots=True)
class AggregateVerdict:
    ok: bool
    reason: str
    expected: Aggregate | None = None


def check(previous: Aggregate | None, leaves: Iterable[Leaf], claimed: Aggregate) -> AggregateVerdict:
    """Is ``claimed`` exactly ``previous`` (the entry at ``claimed.previous_leaf``) plus these leaves?
    (the auditor's question)."""
    start = previous.to_index if previous else 0
    if claimed.from_index != start:
        return AggregateVerdict(False, f"aggregate starts at leaf {claimed.from_index}, the previous one ended at "
                                f"{start}")
    try:
        expected = fold(previous, leaves, claimed.to_index, claimed.previous_leaf)
    except AggregateError as e:
        return AggregateVerdict(False, str(e))
    if expected != claimed:
        bad = [f"ledger {c.ledger} psp {c.psp_id}" for c in claimed.rows if c not in expected.rows]
        bad += [f"missing ledger {e.ledger} psp {e.psp_id}" for e in expected.rows
                if (e.ledger, e.psp_id) not in {(c.ledger, c.psp_id) for c in claimed.rows}]
        return AggregateVerdict(False, "aggregate differs from the log: " + (", ".join(bad) or "window or time"),
                                expected)
    return AggregateVerdict(True, f"leaves [{claimed.from_index}, {claimed.to_index}) fold to it", expected)
