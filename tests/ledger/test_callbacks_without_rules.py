"""Settlement callbacks in a region that never deployed a rule set: a callback consumes its id and marks
its transfer reconciled exactly as under rules, so a retry or a second callback for the same transfer
is not reconciled again, also after a restart (docs/rules.md §4)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import native
from ledger.codec import SettlementCallback
from ledger.lmdb_store import LmdbStore
from ledger.schema import Table, id_key
from ledger.types import Result
from tests.rules.helpers import RulesLedger, acct, xfer


@pytest.fixture(params=["python", "native"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = native.active()
    if native.select(request.param) != request.param:
        native.select(previous)
        pytest.fail(f"the {request.param} engine is not available (make setup builds it)")
    yield request.param
    native.select(previous)


def test_callbacks_are_consumed_without_a_rule_set(engine: str, tmp_path: Path) -> None:
    lg = RulesLedger(store=LmdbStore(str(tmp_path), 1 << 26))
    lg.accounts(acct(1), acct(2))
    assert lg.transfers(xfer(1, amount=10), xfer(2, amount=7)) == [Result.OK, Result.OK]
    cb = SettlementCallback(callback_id=50, transfer_id=1, observed_amount=10)
    assert lg.callbacks(cb) == [Result.OK]
    assert lg.callbacks(cb) == [Result.CALLBACK_EXISTS]  # a retry of the same callback
    assert lg.callbacks(SettlementCallback(callback_id=51, transfer_id=1, observed_amount=10)) == [
        Result.RECONCILE_ALREADY_RECONCILED]
    lg.reopen()  # state from the store only
    assert lg.callbacks(SettlementCallback(callback_id=52, transfer_id=1, observed_amount=10)) == [
        Result.RECONCILE_ALREADY_RECONCILED]
    assert lg.callbacks(SettlementCallback(callback_id=50, transfer_id=1, observed_amount=10)) == [
        Result.CALLBACK_EXISTS]
    # the second transfer is untouched by all of that; an exception consumes its id too
    assert lg.callbacks(SettlementCallback(callback_id=53, transfer_id=2, observed_amount=9)) == [
        Result.RECONCILE_OUTSIDE_TOLERANCE]
    assert lg.callbacks(SettlementCallback(callback_id=53, transfer_id=2, observed_amount=9)) == [
        Result.CALLBACK_EXISTS]
    with lg.store.read() as txn:
        assert txn.get(Table.RECONCILED, id_key((1).to_bytes(16, "little"))) is not None
        assert txn.get(Table.RECONCILED, id_key((2).to_bytes(16, "little"))) is None
        assert len(list(txn.range(Table.EXCEPTIONS))) == 3  # 51, 52 and 53
