"""The periodic settlement cycle on real nodes: the first region's leader settles what is open in both regions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ledger.netting import ObligationStatus, settlement_account_id
from ledger.types import Result
from tests.netting.federation import LEDGERS, LocalFederation

pytestmark = pytest.mark.integration


def test_the_coordinator_settles_periodically(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, ["eu-west", "us-east"], ["--settle-every", "1"])
    try:
        fed.start()
        fed.create_accounts()
        payments = {}
        for oid in range(1, 9):
            debtor, creditor = ("eu-west", "us-east") if oid % 3 else ("us-east", "eu-west")
            assert fed.pay(oid, debtor, creditor, 100 * oid, LEDGERS[oid % 2], 60) == Result.OK
            payments[oid] = (debtor, creditor)
        deadline = time.monotonic() + 60
        while any(fed.lookup(d, [oid])[0].status != ObligationStatus.SETTLED for oid, (d, _c) in payments.items()):
            assert time.monotonic() < deadline, "the periodic cycle did not settle every obligation"
            time.sleep(0.5)
        for oid, (_d, c) in payments.items():
            assert fed.lookup(c, [oid])[0].status == ObligationStatus.SETTLED
        for lg in LEDGERS:  # the two settlement accounts mirror each other: the net position
            settle = int.from_bytes(settlement_account_id(lg), "little")
            eu, us = fed.balances("eu-west", [settle])[0], fed.balances("us-east", [settle])[0]
            assert eu[1] - eu[3] == -(us[1] - us[3]) != 0
        assert fed.customer_sums() == {lg: (0, 0) for lg in LEDGERS}
        assert "settlement cycle: batch" in fed.nodes["eu-west"].log_text()
    finally:
        fed.stop()
