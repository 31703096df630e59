"""One scenario per AGGREGATE result code (docs/results.md), for tests/ledger/test_results.py."""

from __future__ import annotations

from collections.abc import Callable

from ledger.aggregates import Aggregate
from ledger.codec import Batch
from ledger.types import EventKind, Result
from tests.ledger.harness import Ledger


def _apply(lg: Ledger, raw: bytes) -> Result:
    out = lg.block(Batch(EventKind.AGGREGATE, raw))
    return Result(out.batches[0].results[0])


def ok_then(second: Aggregate) -> Result:
    """A first aggregate over the empty log is ok; returns the second one's result."""
    lg = Ledger()
    assert _apply(lg, Aggregate(None, 0, 0, 0).encode()) == Result.OK
    return _apply(lg, second.encode())


AGGREGATE_SCENARIOS: dict[Result, Callable[[], Result]] = {
    Result.AGGREGATE_MALFORMED: lambda: _apply(Ledger(), b"\x02" + bytes(34)),
    # the second entry must name leaf 0 (the first aggregate) and start at leaf 0 (where it ended)
    Result.AGGREGATE_OUT_OF_ORDER: lambda: ok_then(Aggregate(None, 0, 0, 0)),
}
