"""Apply AGGREGATE records (ledger/aggregates.py): the log keeps a chain of windows.

Commit time checks framing and continuity only: the entry names the last ok aggregate's leaf, its
window starts where that one ended and ends no later than the aggregate's own leaf. The totals are
the leader's claim; the log makes them checkable by anyone (``ledger.aggregates.check``).
Refusals are result codes in the log.
"""

from __future__ import annotations

import struct
from typing import Final

from ledger.aggregates import Aggregate, AggregateError
from ledger.apply.scratch import Block, Event
from ledger.codec import Batch
from ledger.schema import META_AGGREGATE, Table
from ledger.store import ReadTxn
from ledger.types import EventKind, Result

LAST: Final = struct.Struct("<QQ")  # to_index, leaf index of the last ok aggregate


def last_aggregate(txn: ReadTxn) -> tuple[int, int] | None:
    """(to_index, leaf index) of the newest ok AGGREGATE entry, if any."""
    raw = txn.get(Table.META, META_AGGREGATE)
    if raw is None:
        return None
    to_index, index = LAST.unpack(raw)
    return int(to_index), int(index)


def apply_aggregates(blk: Block, batch: Batch, events: list[Event]) -> None:
    raw = batch.records
    index = blk.next_leaf_index(events)
    try:
        agg = Aggregate.decode(raw)
    except AggregateError:
        events.append(Event(EventKind.AGGREGATE, Result.AGGREGATE_MALFORMED, raw, b"", ()))
        return
    last = last_aggregate(blk.txn)
    if agg.from_index != (last[0] if last else 0) or agg.previous_leaf != (last[1] if last else None) \
            or agg.to_index > index:
        events.append(Event(EventKind.AGGREGATE, Result.AGGREGATE_OUT_OF_ORDER, raw, b"", ()))
        return
    blk.txn.put(Table.META, META_AGGREGATE, LAST.pack(agg.to_index, index))  # in the block's one transaction
    events.append(Event(EventKind.AGGREGATE, Result.OK, raw, b"", ()))
