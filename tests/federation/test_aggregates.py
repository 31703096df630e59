"""Aggregates: the pure fold/check (ledger/aggregates.py) on leaves a real state machine wrote, and
the AGGREGATE kind's apply rules (continuity, bounds) and wire framing."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.aggregates import Aggregate, AggregateError, AggregateRow, check, fold
from ledger.codec import Batch, EncodingError, Proposal, decode_leaf, decode_proposal, encode_proposal, validate_batch
from ledger.reader import LedgerReader
from ledger.types import Account, EventKind, Result, Transfer, TransferFlags
from tests.federation.aggregate_scenarios import ok_then
from tests.ledger.harness import Ledger

USD, EUR = 840, 978


def _ledger() -> Ledger:
    lg = Ledger()
    accounts = [Account(id=i, ledger=USD if i < 10 else EUR, code=1, asset_scale=2) for i in (1, 2, 3, 11, 12)]
    assert lg.accounts(*accounts) == [Result.OK] * 5
    T = TransferFlags
    batch = [
        Transfer(100, 1, 2, 500, USD, 1, psp_id=7), Transfer(101, 2, 3, 250, USD, 1, psp_id=8),
        Transfer(102, 11, 12, 900, EUR, 1, psp_id=7), Transfer(103, 1, 2, 40, USD, 1, flags=T.PENDING, psp_id=7),
        Transfer(104, 0, 0, 0, 0, 0, flags=T.POST_PENDING_TRANSFER, pending_id=103, psp_id=7),
        Transfer(105, 1, 12, 1, USD, 1, psp_id=7),  # ledger mismatch: not ok, not counted
    ]
    lg.transfers(*batch)
    return lg


def _leaves(lg: Ledger) -> list:  # type: ignore[type-arg]
    reader = LedgerReader(lg.store)
    return [decode_leaf(raw) for chunk in reader.leaves(0, reader.head().tree_size) for raw in chunk]


def test_fold_counts_ok_transfers_per_ledger_and_psp() -> None:
    leaves = _leaves(_ledger())
    agg = fold(None, leaves, len(leaves))
    rows = {(r.ledger, r.psp_id): r for r in agg.rows}
    assert rows[(USD, 7)] == AggregateRow(USD, 7, transfers=2, volume=540)  # 500 + pending 40; not the post
    assert rows[(USD, 8)] == AggregateRow(USD, 8, transfers=1, volume=250)
    assert rows[(EUR, 7)] == AggregateRow(EUR, 7, transfers=1, volume=900)
    assert len(rows) == 3  # no account ids anywhere: only ledgers, PSP ids and sums
    assert agg.as_of_ns == leaves[-1].timestamp_ns and Aggregate.decode(agg.encode()) == agg


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 11), max_size=4))
def test_folding_in_windows_equals_folding_at_once(cuts: list[int]) -> None:
    leaves = _leaves(_ledger())
    whole = fold(None, leaves, len(leaves))
    prev: Aggregate | None = None
    for i, end in enumerate(sorted({min(c, len(leaves)) for c in cuts} | {len(leaves)})):
        start = prev.to_index if prev else 0
        nxt = fold(prev, leaves[start:end], end, i - 1 if prev else None)
        assert check(prev, leaves[start:end], nxt).ok
        prev = nxt
    assert prev is not None and prev.rows == whole.rows and prev.to_index == whole.to_index


def test_check_names_what_differs() -> None:
    leaves = _leaves(_ledger())
    good = fold(None, leaves, len(leaves))
    inflated = dataclasses.replace(good, rows=tuple(dataclasses.replace(r, volume=r.volume + 1) if r.psp_id == 8
                                                    else r for r in good.rows))
    verdict = check(None, leaves, inflated)
    assert not verdict.ok and "ledger 840 psp 8" in verdict.reason and verdict.expected == good
    assert not check(None, leaves[:-1], good).ok  # the window says more leaves than were given
    assert not check(good, [], dataclasses.replace(good, from_index=0)).ok  # does not continue the chain


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
                          st.integers(0, 2**128 - 1)), max_size=6, unique_by=lambda t: (t[0], t[1])),
       st.integers(0, 2**40), st.booleans())
def test_record_round_trip(rows: list[tuple[int, int, int, int]], n: int, first: bool) -> None:
    agg = Aggregate(None if first else n // 2, n, n + 5, n * 7,
                    tuple(AggregateRow(lg, p, c, v, v // 3, v // 7, c // 2) for lg, p, c, v in sorted(rows)))
    assert Aggregate.decode(agg.encode()) == agg


def test_malformed_records() -> None:
    raw = Aggregate(None, 0, 4, 1, (AggregateRow(1, 2), AggregateRow(1, 1))).encode()
    with pytest.raises(AggregateError, match="sorted"):
        Aggregate.decode(raw)
    with pytest.raises(AggregateError, match="rows need"):
        Aggregate.decode(Aggregate(None, 0, 4, 1, (AggregateRow(1, 2),)).encode()[:-1])
    with pytest.raises(AggregateError, match="reversed"):
        Aggregate.decode(Aggregate(None, 5, 4, 1).encode())


def test_apply_chain_and_proposal_framing() -> None:
    lg = _ledger()
    leaves = _leaves(lg)
    first = fold(None, leaves, len(leaves))
    raw = first.encode()
    assert decode_proposal(encode_proposal(Proposal(5, (Batch(EventKind.AGGREGATE, raw),)))).batches[0].records == raw
    out = lg.block(Batch(EventKind.AGGREGATE, raw))
    assert out.batches[0].results == [Result.OK]
    index = out.batches[0].log_indexes[0]
    # continuing: names the first entry and starts where it ended
    assert ok_then(Aggregate(0, 0, 1, 0)) == Result.OK
    nxt = fold(first, [], len(leaves), index)
    assert lg.block(Batch(EventKind.AGGREGATE, nxt.encode())).batches[0].results == [Result.OK]
    reach = Aggregate(None, 0, 10_000, 0)  # a window past its own leaf
    assert Result(Ledger().block(Batch(EventKind.AGGREGATE, reach.encode())).batches[0].results[0]) == \
        Result.AGGREGATE_OUT_OF_ORDER
    with pytest.raises(EncodingError, match="cannot be submitted by clients"):
        validate_batch(EventKind.AGGREGATE, raw, b"", b"")


def test_the_auditor_replays_a_log_with_aggregate_entries() -> None:
    """AGGREGATE leaves are part of the log every auditor replays (variable body, no balance effect)."""
    from clients.auditor.replay import LogVerifier, iter_blocks
    from ledger.note import Checkpoint, open_note
    from tests.audit.memlog import mixed_log

    log = mixed_log()
    reader = LedgerReader(log.store)
    leaves = [decode_leaf(raw) for chunk in reader.leaves(0, reader.head().tree_size) for raw in chunk]
    agg = fold(None, leaves, len(leaves))
    log.block(Batch(EventKind.AGGREGATE, agg.encode()))
    v = LogVerifier(psp_keys=[])
    for h, ls in iter_blocks(log.headers(), iter(log.leaves())):
        v.feed_block(h, ls)
    v.finish(Checkpoint.parse(open_note(log.note(), [log.signer.verifier]).body))
    assert v.size == len(leaves) + 1 and decode_leaf(log.leaves()[-1]).result == Result.OK
