"""Pair runs inside the ledger, both engines (ledger/pair_runs.py): a ledger whose pairs are in the legacy
``risk_pairs`` and in runs, across a restart; a fold block that aborts must leave the committed runs and
their per-process filters as they were (its run id is reused by the next fold with other pairs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import native, pair_runs, risk_log
from ledger.apply import driver
from ledger.codec import Batch
from ledger.dry_run import dry_run
from ledger.lmdb_store import LmdbStore
from ledger.pair_runs import PairRuns, directory
from ledger.schema import Table
from ledger.state import LedgerState
from ledger.types import EventKind, Result
from tests.engine.test_risk_journal import needs_table, new_pair, transfer
from tests.engine.test_rules_differential import RulesPair
from tests.rules.helpers import OPERATOR


def pk(dr: int, cr: int) -> bytes:
    return dr.to_bytes(16, "little") + cr.to_bytes(16, "little")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[RulesPair]:
    p = new_pair(tmp_path / "runs")
    yield p
    p.close()


def one(p: RulesPair, tid: int, dr: int, cr: int, amount: int) -> set[int]:
    """The results of one block paying one transfer (rule ``new-big``: a new payee above 700 is rejected)."""
    p.results.clear()
    p.block(Batch(EventKind.CREATE_TRANSFER, transfer(tid, dr, cr, amount)), advance_s=70)
    return set(p.results)


@needs_table
def test_pairs_in_the_legacy_table_and_in_runs_are_known_after_a_restart(
        pair: RulesPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folds write runs (1 -> 2, 6 -> 7); a legacy ``risk_pairs`` row (4 -> 5, written as an old ledger's
    fold did) is added while the ledger is down. After the restart, with filters built from the store,
    none of them is a new payee and 1 -> 3 is; ``risk_pairs`` is never written; both engines agree."""
    monkeypatch.setattr(risk_log, "FOLD_BLOCKS", 1)
    assert one(pair, 1, 1, 2, 10) == {Result.OK}
    assert one(pair, 2, 6, 7, 10) == {Result.OK}
    pair.close()
    for name in native.ENGINES:
        store = LmdbStore(str(tmp_path / "runs" / name), map_size_bytes=64 << 20)
        with store.write() as txn:
            txn.put(Table.RISK_PAIRS, pk(4, 5), b"")
        pair.stores[name] = store
        pair.states[name] = LedgerState(store, [OPERATOR.verifier])
    with pair.stores["native"].read() as txn:
        assert [n for _, n in directory(txn)] == [1, 1]  # runs 1 and 2 (fewer than four: not merged)
    rules = pair.states["native"].rules
    assert rules is not None
    for filters in (None, {}):  # a dry run seeking the runs, and with a (shared, empty) filter cache
        with pair.stores["native"].read() as txn:
            seen = {(dr, cr): not dry_run(txn, rules, transfer(99, dr, cr, 10), pair.now, 9, filters)
                    .activation["risk_new_payee"] for dr, cr in ((1, 2), (4, 5), (6, 7), (1, 3))}
        assert seen == {(1, 2): True, (4, 5): True, (6, 7): True, (1, 3): False}
    assert sorted(filters) == [pair_runs.LEGACY, 1, 2]  # the dry run built the filters into the cache it was given
    assert one(pair, 3, 1, 2, 800) == {Result.OK}
    assert one(pair, 4, 4, 5, 800) == {Result.OK}
    assert one(pair, 5, 6, 7, 800) == {Result.OK}
    assert one(pair, 6, 1, 3, 800) == {Result.RULE_REJECTED}
    assert one(pair, 7, 4, 5, 900) == {Result.OK}
    pair.assert_stores_identical()
    for name in native.ENGINES:
        with pair.stores[name].read() as txn:
            assert list(txn.range(Table.RISK_PAIRS)) == [(pk(4, 5), b"")]
            assert PairRuns.read(txn).all_pairs(txn) == {pk(1, 2), pk(6, 7), pk(4, 5)}  # 1 -> 3 rejected: unpaid


@needs_table
def test_an_aborted_fold_leaves_the_committed_runs_and_filters(
        pair: RulesPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs 1 and 2 hold 1 -> 2 (fewer than four runs: not merged). A fold block paying 3 -> 4 aborts (its run
    would be id 3); the retried fold pays 8 -> 9 instead and commits run 3 with other pairs. 8 -> 9 is then
    known (a filter of the aborted run kept under id 3 would call it new) and 3 -> 4 is new, on both engines
    (the Python paths read the runs through the filters at every lookup)."""
    monkeypatch.setattr(risk_log, "FOLD_BLOCKS", 1)
    assert one(pair, 1, 1, 2, 10) == {Result.OK}
    assert one(pair, 2, 1, 2, 800) == {Result.OK}  # looked up: the filter of run 1 is built
    committed = {n: s._committed.pairs for n, s in pair.states.items()}
    filters = {n: dict(c.filters) if c is not None else None for n, c in committed.items()}
    real_seal = driver.seal

    def failing_seal(*args: Any) -> Any:
        real_seal(*args)
        assert args[0].side.folded and args[0].side.runs_after is not None
        raise OSError("injected: the disk refused the commit")

    monkeypatch.setattr(driver, "seal", failing_seal)
    pair.block_failing(Batch(EventKind.CREATE_TRANSFER, transfer(3, 3, 4, 10)), "injected")
    monkeypatch.setattr(driver, "seal", real_seal)
    for name, state in pair.states.items():
        assert state._committed.pairs is committed[name]
        got = state._committed.pairs
        if got is None:
            assert filters[name] is None
            continue
        # what it held is kept as it was; a filter the aborted block built lazily is one of a committed run
        # (runs 1 and 2 here), never one of the fold's (id 3)
        assert all(got.filters[rid] is f for rid, f in (filters[name] or {}).items())
        assert set(got.filters) <= {rid for rid, _ in got.runs} | {pair_runs.LEGACY}, got.filters
    assert one(pair, 4, 8, 9, 10) == {Result.OK}
    with pair.stores["native"].read() as txn:
        runs = directory(txn)
        assert [rid for rid, _ in runs] == [1, 2, 3] and PairRuns.read(txn).all_pairs(txn) == {pk(1, 2), pk(8, 9)}
    assert one(pair, 5, 8, 9, 800) == {Result.OK}
    assert one(pair, 6, 3, 4, 800) == {Result.RULE_REJECTED}
    pair.assert_stores_identical()
