"""The leader's periodic AGGREGATE entries (ledger/aggregates.py, docs/federation.md).

Every ``aggregate_every_ms`` the leader reads the leaves committed since the newest aggregate, folds
them into its totals (off the event loop) and proposes the next AGGREGATE record through the normal
ingest path: it is committed by the region's quorum like any entry. A follower does nothing; a new
leader continues the chain from the log (the window must start where the last one ended, or the
entry is refused with AGGREGATE_OUT_OF_ORDER and the next round starts again from the log).
Serving: the newest aggregate below a tree size, with its inclusion proof.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ledger.aggregates import Aggregate, fold
from ledger.apply.aggregates import last_aggregate
from ledger.codec import Batch, decode_leaf
from ledger.reader import LedgerReader
from ledger.types import EventKind, Result
from node.loops import LeaderRounds
from node.pipeline import Ingest

log = logging.getLogger("sovledger.aggregates")


class Aggregator(LeaderRounds):
    """The leader's round every ``every_ms`` (0: never started)."""

    failure_message = "aggregates: round failed: %s"

    def __init__(self, reader: LedgerReader, every_ms: int, ingest: Callable[[], Ingest | None],
                 is_leader: Callable[[], bool]) -> None:
        super().__init__("aggregates", every_ms / 1000, is_leader, log)
        self.reader = reader
        self.every_ms = every_ms
        self._ingest = ingest

    def start(self) -> None:
        if self.every_ms > 0:
            super().start()

    async def round(self) -> int | None:
        return await self.aggregate_once()

    def _previous(self) -> tuple[Aggregate | None, int]:
        """The newest aggregate and the index right after its leaf (0 without one)."""
        with self.reader.store.read() as txn:
            last = last_aggregate(txn)
        if last is None:
            return None, 0
        return Aggregate.decode(decode_leaf(self.reader.leaf(last[1])).body), last[1] + 1

    def next_aggregate(self) -> Aggregate | None:
        """Fold the leaves since the newest aggregate (None when nothing but aggregates was added)."""
        previous, after = self._previous()
        size = self.reader.head().tree_size
        if size <= after:
            return None
        start = previous.to_index if previous else 0
        leaves = (decode_leaf(raw) for chunk in self.reader.leaves(start, size) for raw in chunk)
        return fold(previous, leaves, size, after - 1 if previous else None)

    async def aggregate_once(self) -> int | None:
        """Propose the next aggregate; returns its leaf index when the log accepted it."""
        agg = await asyncio.to_thread(self.next_aggregate)
        ingest = self._ingest()
        if agg is None or ingest is None:
            return None
        outcome, _block = await ingest.submit(Batch(EventKind.AGGREGATE, agg.encode()))
        result, index = outcome.results[0], outcome.log_indexes[0]
        if result != Result.OK:
            log.warning("aggregates: entry %d refused: %s", index, Result(result).name.lower())
            return None
        log.info("aggregates: entry %d covers leaves [%d, %d), %d rows", index, agg.from_index, agg.to_index,
                 len(agg.rows))
        return int(index)

    def newest_below(self, size: int) -> int | None:
        """Leaf index of the newest ok aggregate inside a tree of ``size`` (walks the chain back)."""
        with self.reader.store.read() as txn:
            last = last_aggregate(txn)
        index = last[1] if last else None
        while index is not None and index >= size:
            index = Aggregate.decode(decode_leaf(self.reader.leaf(index)).body).previous_leaf
        return index
