"""The state machine against a deliberately simple model, over random operation sequences.

The model knows nothing about result codes beyond success/failure; it tracks balances,
idempotency (ids are consumed only by successful events), linked chains (all or nothing) and
two-phase transfers (reserve, post fully/partly, void). Every block, both must agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from ledger.codec import Batch, encode_transfer
from ledger.state import LedgerState
from ledger.store import MemoryStore
from ledger.types import Account, EventKind, Result, Transfer
from ledger.types import AccountFlags as AF
from ledger.types import TransferFlags as TF
from tests.ledger.harness import Ledger

ACCOUNTS = (1, 2, 3, 4)
LIMITED = 1  # account 1 may not go below zero (debits must not exceed credits)


@dataclass
class Model:
    bal: dict[int, list[int]] = field(default_factory=lambda: {a: [0, 0, 0, 0] for a in ACCOUNTS})
    transfers: dict[int, tuple[Transfer, str]] = field(default_factory=dict)  # id -> (t, status)

    def apply(self, t: Transfer) -> bool:
        if t.id in self.transfers:
            return self.transfers[t.id][0] == t  # identical retry succeeds without effect
        if t.flags & (TF.POST_PENDING_TRANSFER | TF.VOID_PENDING_TRANSFER):
            return self._post_or_void(t)
        if t.debit_account_id == t.credit_account_id:
            return False
        dr, cr = self.bal[t.debit_account_id], self.bal[t.credit_account_id]
        if t.debit_account_id == LIMITED and dr[0] + dr[1] + t.amount > dr[3]:
            return False
        if t.flags & TF.PENDING:
            dr[0] += t.amount
            cr[2] += t.amount
            self.transfers[t.id] = (t, "pending")
        else:
            dr[1] += t.amount
            cr[3] += t.amount
            self.transfers[t.id] = (t, "posted")
        return True

    def _post_or_void(self, t: Transfer) -> bool:
        if t.pending_id == t.id or t.pending_id not in self.transfers:
            return False
        p, status = self.transfers[t.pending_id]
        if status != "pending":
            return False
        posting = bool(t.flags & TF.POST_PENDING_TRANSFER)
        amount = t.amount or p.amount
        if posting and amount > p.amount:
            return False
        if not posting and t.amount not in (0, p.amount):
            return False
        dr, cr = self.bal[p.debit_account_id], self.bal[p.credit_account_id]
        dr[0] -= p.amount
        cr[2] -= p.amount
        if posting:
            dr[1] += amount
            cr[3] += amount
        self.transfers[t.pending_id] = (p, "posted" if posting else "voided")
        self.transfers[t.id] = (t, "posted")
        return True

    def apply_batch(self, ts: list[Transfer]) -> list[bool]:
        out: list[bool] = []
        i = 0
        while i < len(ts):
            j = i
            while j < len(ts) and ts[j].flags & TF.LINKED:
                j += 1
            if j == len(ts):  # open chain
                return out + [False] * (len(ts) - i)
            saved = copy.deepcopy((self.bal, self.transfers))
            oks = [self.apply(t) for t in ts[i : j + 1]]
            if not all(oks):
                self.bal, self.transfers = saved
                oks = [False] * len(oks)
            out.extend(oks)
            i = j + 1
        return out


ids = st.integers(min_value=1, max_value=25)
amounts = st.integers(min_value=1, max_value=60)


@st.composite
def transfer(draw: st.DrawFn) -> Transfer:
    kind = draw(st.sampled_from(["single", "single", "pending", "post", "void"]))
    linked = TF.LINKED if draw(st.integers(0, 4)) == 0 else 0
    tid = draw(ids)
    if kind in ("post", "void"):
        flag = TF.POST_PENDING_TRANSFER if kind == "post" else TF.VOID_PENDING_TRANSFER
        amount = draw(st.sampled_from([0, 0, 5, 1000])) if kind == "post" else draw(st.sampled_from([0, 0, 7]))
        return Transfer(id=tid, debit_account_id=0, credit_account_id=0, amount=amount, ledger=0, code=0,
                        flags=flag | linked, pending_id=draw(ids))
    dr = draw(st.sampled_from(ACCOUNTS))
    cr = draw(st.sampled_from(ACCOUNTS))
    flags = (TF.PENDING if kind == "pending" else 0) | linked
    return Transfer(id=tid, debit_account_id=dr, credit_account_id=cr, amount=draw(amounts), ledger=1,
                    code=1, flags=flags)


@given(st.lists(st.lists(transfer(), min_size=1, max_size=12), min_size=1, max_size=12))
def test_state_machine_matches_model(blocks: list[list[Transfer]]) -> None:
    lg = Ledger()
    accounts = [Account(a, ledger=1, code=1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS if a == LIMITED else 0)
                for a in ACCOUNTS]
    assert lg.accounts(*accounts) == [Result.OK] * len(ACCOUNTS)
    model = Model()
    for ts in blocks:
        got = lg.transfers(*ts)
        want = model.apply_batch(ts)
        assert [r.is_success for r in got] == want, (ts, got)
        for a in ACCOUNTS:
            assert list(lg.balance(a)) == model.bal[a], f"account {a}"
    # replay determinism: the same proposals on a fresh store give identical heads
    fresh = LedgerState(MemoryStore())
    replay_ts = Ledger(store=fresh.store)
    replay_ts.accounts(*accounts)
    for ts in blocks:
        replay_ts.transfers(*ts)
    assert replay_ts.state.head == lg.state.head


def test_chain_is_atomic_and_ids_not_consumed_on_failure() -> None:
    lg = Ledger()
    lg.accounts(Account(1, 1, 1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS), Account(2, 1, 1))
    chain = [
        Transfer(10, 2, 1, 100, 1, 1, flags=TF.LINKED),  # fund 1
        Transfer(11, 1, 2, 150, 1, 1),  # overdraws 1: the whole chain fails
    ]
    assert lg.transfers(*chain) == [Result.LINKED_EVENT_FAILED, Result.EXCEEDS_CREDITS]
    assert lg.balance(1) == (0, 0, 0, 0)
    # the ids were not consumed: the corrected chain succeeds with the same ids
    chain[1] = Transfer(11, 1, 2, 50, 1, 1)
    assert lg.transfers(*chain) == [Result.OK, Result.OK]
    assert lg.balance(1) == (0, 50, 0, 100)


def test_pending_posts_partially_and_releases_the_rest() -> None:
    lg = Ledger()
    lg.accounts(Account(1, 1, 1), Account(2, 1, 1))
    assert lg.transfer(Transfer(5, 1, 2, 100, 1, 1, flags=TF.PENDING)) == Result.OK
    assert lg.balance(1) == (100, 0, 0, 0)
    assert lg.transfer(Transfer(6, 0, 0, 30, 0, 0, flags=TF.POST_PENDING_TRANSFER, pending_id=5)) == Result.OK
    assert lg.balance(1) == (0, 30, 0, 0)
    assert lg.balance(2) == (0, 0, 0, 30)


def test_pending_expires_deterministically_with_an_expiry_entry() -> None:
    lg = Ledger()
    lg.accounts(Account(1, 1, 1), Account(2, 1, 1))
    assert lg.transfer(Transfer(5, 1, 2, 100, 1, 1, flags=TF.PENDING, timeout_s=10)) == Result.OK
    before = lg.state.head.tree_size
    lg.block(advance_s=5)
    assert lg.balance(1) == (100, 0, 0, 0)  # not yet
    out = lg.block(advance_s=6)
    assert lg.balance(1) == (0, 0, 0, 0)
    assert out.header.leaf_count == 1 and lg.state.head.tree_size == before + 1  # the expiry leaf
    assert lg.transfer(Transfer(6, 0, 0, 0, 0, 0, flags=TF.VOID_PENDING_TRANSFER, pending_id=5)) == (
        Result.PENDING_TRANSFER_EXPIRED
    )


def test_post_in_the_same_block_as_its_pending() -> None:
    lg = Ledger()
    lg.accounts(Account(1, 1, 1), Account(2, 1, 1))
    res = lg.transfers(
        Transfer(5, 1, 2, 100, 1, 1, flags=TF.PENDING),
        Transfer(6, 0, 0, 0, 0, 0, flags=TF.POST_PENDING_TRANSFER, pending_id=5),
    )
    assert res == [Result.OK, Result.OK]
    assert lg.balance(1) == (0, 100, 0, 0)
    lg.reopen()  # statuses and refs were persisted with their leaf indexes
    assert lg.transfer(Transfer(7, 0, 0, 0, 0, 0, flags=TF.VOID_PENDING_TRANSFER, pending_id=5)) == (
        Result.PENDING_TRANSFER_ALREADY_POSTED
    )


def test_exact_retry_returns_original_index_and_block_without_new_leaf() -> None:
    lg = Ledger()
    lg.accounts(Account(1, 1, 1), Account(2, 1, 1))
    t = Transfer(5, 1, 2, 100, 1, 1)
    first = lg.block(Batch(EventKind.CREATE_TRANSFER, encode_transfer(t)))
    size = lg.state.head.tree_size
    again = lg.block(Batch(EventKind.CREATE_TRANSFER, encode_transfer(t)))
    assert again.batches[0].results == [Result.TRANSFER_EXISTS]
    assert again.batches[0].log_indexes == first.batches[0].log_indexes
    assert again.batches[0].blocks == first.batches[0].blocks
    assert lg.state.head.tree_size == size
    assert lg.balance(1) == (0, 100, 0, 0)
