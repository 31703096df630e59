"""Pending expiry on a timer: an idle node expires a 1 s pending transfer without any new traffic.

A real node process; after the pending transfer is acknowledged nothing else is sent. The test
polls the transfer's status with a bounded deadline (this is about *whether* the idle leader
proposes the expiry block, not about how fast).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clients.client import LedgerClient
from ledger.types import Account, Result, Transfer, TransferFlags
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration

STATUS_PENDING, STATUS_EXPIRED = 1, 4


def test_idle_node_expires_a_pending_transfer(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            res = c.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
            assert [r.result for r in res] == [Result.OK, Result.OK]
            res = c.create_transfers([Transfer(id=77, debit_account_id=1, credit_account_id=2, amount=500,
                                               ledger=1, code=1, flags=TransferFlags.PENDING, timeout_s=1)])
            assert [r.result for r in res] == [Result.OK]
            (info,) = c.lookup_transfers([77])
            assert info.status == STATUS_PENDING
            height_after_pending = c.status().block
            deadline = time.monotonic() + 30  # generous bound for a loaded machine
            while time.monotonic() < deadline:
                (info,) = c.lookup_transfers([77])
                if info.status == STATUS_EXPIRED:
                    break
                time.sleep(0.2)
            assert info.status == STATUS_EXPIRED, "the idle node never expired the pending transfer"
            # the expiry came from a block of its own (no client traffic made it)
            assert c.status().block > height_after_pending
            (a1,) = c.lookup_accounts([1])
            assert a1 is not None and a1.debits_pending == 0 and a1.debits_posted == 0
    finally:
        node.stop()
