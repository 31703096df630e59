"""The expiry timer's decisions on a real (in-memory) store with a fake clock and committer."""

from __future__ import annotations

import asyncio

from ledger.codec import Proposal
from ledger.state import LedgerState
from ledger.store import MemoryStore
from ledger.types import Account, Transfer, TransferFlags
from node.expiry import ExpiryTimer, earliest_expiry_ns
from tests.ledger.harness import NS, Ledger


def test_timer_proposes_only_when_due_and_leader_and_never_spins() -> None:
    led = Ledger(store=MemoryStore())
    led.accounts(Account(1, 1, 1), Account(2, 1, 1))
    led.transfers(Transfer(id=9, debit_account_id=1, credit_account_id=2, amount=3, ledger=1, code=1,
                           flags=TransferFlags.PENDING, timeout_s=2))
    due = earliest_expiry_ns(led.store)
    assert due is not None
    clock = {"now": due - NS}
    leader = {"yes": False}
    proposals: list[Proposal] = []
    state: LedgerState = led.state

    async def commit(p: Proposal) -> None:
        proposals.append(p)
        state.apply_block(p)

    async def scenario() -> None:
        timer = ExpiryTimer(led.store, commit, lambda: leader["yes"], clock_ns=lambda: clock["now"])
        timer.start()
        await asyncio.sleep(0.05)
        assert proposals == []  # not due yet
        clock["now"] = due
        await asyncio.sleep(0.05)
        assert proposals == []  # due, but not the leader
        leader["yes"] = True
        for _ in range(100):
            if proposals:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        await timer.stop()

    asyncio.run(scenario())
    assert len(proposals) == 1 and proposals[0].batches == ()
    assert earliest_expiry_ns(led.store) is None  # the empty block expired it
