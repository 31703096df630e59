"""Both engines under rule sets: identical results, leaves, block headers, state hashes and every LMDB
table (risk windows, payer-payee pairs, external refs, exceptions, callbacks included).

Under a rule set the native engine applies transfer batches with its rules hook (a rule-decided record
goes to the reference path, the rest stays native; ledger/apply/native_transfers.py), so these
workloads make rules decide often and everywhere: limits, velocity and deviation features, new-payee
flags, holds (a pending transfer the next blocks post, void or let expire), adjustments, rule errors,
rejects in the middle of linked chains, reconciliation callbacks within and outside tolerance bands,
and a second deployment that changes the rule set mid-run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger import native
from ledger.apply import native_transfers
from ledger.codec import (
    Batch,
    Proposal,
    SettlementCallback,
    encode_account,
    encode_callback,
    encode_transfer,
)
from ledger.types import Account, EventKind, Result, Transfer
from ledger.types import AccountFlags as AF
from ledger.types import TransferFlags as TF
from tests.engine.test_differential import Pair
from tests.rules.helpers import OPERATOR, deploy_record

pytestmark = pytest.mark.skipif(not native.available(), reason="native engine not built (no C compiler)")

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
ACCOUNTS = (
    Account(1, ledger=1, code=1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS),
    Account(2, ledger=1, code=1, flags=AF.HISTORY),
    Account(3, ledger=1, code=1),
    Account(4, ledger=1, code=1),
    Account(5, ledger=1, code=1, flags=AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
    Account(6, ledger=2, code=1),
    Account(7, ledger=1, code=1),
)
# (rule, weight in the pool): every action, every feature family, an erring expression
RULE_POOL: tuple[dict[str, Any], ...] = (
    {"id": "floor", "expr": "debit.balance - transfer.amount < -2000", "action": "reject", "code": 11},
    {"id": "velocity", "expr": "risk.debit.count_1m >= 4", "action": "reject", "code": 12},
    {"id": "psp-sum", "expr": "risk.psp.sum_1h > 3000 && transfer.psp_id == 2", "action": "flag"},
    {"id": "payee-new", "expr": "risk.new_payee && transfer.amount > 150", "action": "flag"},
    {"id": "big", "expr": "transfer.amount >= 400", "action": "hold", "hold_timeout_s": 2},
    {"id": "fee", "expr": "transfer.code == 3", "action": "adjust", "adjust_account": 7, "adjust_code": 9,
     "adjust_fixed": 2, "adjust_bps": 100},
    {"id": "fee-bad", "expr": "transfer.code == 4", "action": "adjust", "adjust_account": 6, "adjust_code": 9,
     "adjust_fixed": 1},
    {"id": "div", "expr": "transfer.amount / (transfer.code - 2) > 1000", "action": "reject", "code": 13},
    {"id": "spike", "expr": "risk.history_n >= 3 && risk.amount_dev_bps > 5000", "action": "flag"},
    {"id": "credit-hot", "expr": "risk.credit.sum_24h > 5000 && credit.credits_posted > 0", "action": "flag"},
    {"id": "ref", "expr": "transfer.external_ref.startsWith('x') && transfer.amount > 300", "action": "reject",
     "code": 14},
    {"id": "spent", "expr": "debit.debits_posted + debit.debits_pending >= 2500 && transfer.code == 2",
     "action": "reject", "code": 16},
    {"id": "owed", "expr": "credit.credits_pending > 600", "action": "flag"},
    {"id": "none", "expr": "transfer.code == 999", "action": "reject", "code": 15},
)
TOLERANCES = {"on_expiry": "flag", "tolerances": [{"ledger": 1, "psp_id": 0, "abs_minor": 3, "bps": 0,
                                                   "rounding_account": 4}]}


def ruleset_doc(picks: list[int], version: int) -> dict[str, Any]:
    rules = [dict(RULE_POOL[i], priority=n) for n, i in enumerate(picks)]
    return {"name": "diff", "version": version, "rules": rules, "reconciliation": TOLERANCES}


def transfer_from(rnd: random.Random, next_id: int, pending: list[int], chains: bool) -> Transfer:
    """Well-formed transfers mostly (rules see them), some two-phase, a few malformed."""
    roll = rnd.random()
    if roll < 0.12 and pending:
        flags = rnd.choice((TF.POST_PENDING_TRANSFER, TF.VOID_PENDING_TRANSFER))
        return Transfer(next_id, 0, 0, rnd.choice((0, 0, 5)), ledger=0, code=0, flags=flags,
                        pending_id=rnd.choice(pending))
    if roll < 0.17:
        return Transfer(next_id, rnd.choice((0, 1, 9)), rnd.choice((1, 6)), rnd.choice((0, 10)), ledger=1, code=1)
    dr, cr = rnd.sample((1, 2, 3, 4, 5, 7), 2)
    return Transfer(
        next_id, dr, cr, rnd.choice((1, 7, 60, 160, 420, 900)), ledger=1, code=rnd.choice((1, 1, 1, 2, 3, 4)),
        flags=rnd.choice((0, 0, 0, 0, TF.PENDING, TF.LINKED * chains, TF.LINKED * chains)),
        timeout_s=rnd.choice((0, 0, 1, 3)),
        psp_id=rnd.choice((0, 1, 2)), external_ref=rnd.choice((b"", b"", b"x%d" % next_id, b"y%d" % next_id)),
    )


def callback_for(rnd: random.Random, cid: int, t: Transfer) -> SettlementCallback:
    """A settlement callback naming ``t`` by id or by external ref: exact, within the band, or outside it."""
    observed = max(0, t.amount + rnd.choice((0, 0, 2, -2, 7)))
    if t.external_ref and rnd.random() < 0.5:
        return SettlementCallback(cid, external_ref=t.external_ref, observed_amount=observed, psp_id=t.psp_id)
    return SettlementCallback(cid, transfer_id=t.id, observed_amount=observed, psp_id=t.psp_id)


class RulesPair(Pair):
    """The same proposals applied by both engines, each to its own LMDB store, under rule sets."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, [OPERATOR.verifier])

    def block(self, *batches: Batch, advance_s: int = 1) -> None:  # type: ignore[override]
        super().block(batches, advance_s)

    def deploy(self, picks: list[int], version: int) -> None:
        self.block(Batch(EventKind.DEPLOY_RULESET, deploy_record(ruleset_doc(picks, version))))

    def block_failing(self, batch: Batch, match: str, advance_s: int = 5) -> None:
        """Apply ``batch`` as the next block on each engine, expecting an injected ``OSError`` matching
        ``match`` (nothing is committed; ``now`` does not move)."""
        previous = native.active()
        try:
            for name, state in self.states.items():
                native.select(name)
                with pytest.raises(OSError, match=match):
                    state.apply_block(Proposal(self.now + advance_s * 10**9, (batch,)))
        finally:
            native.select(previous)


def run_workload(pair: RulesPair, seed: int, blocks: int, per_block: int, picks: list[int]) -> None:
    rnd = random.Random(seed)
    pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)))
    pair.block(Batch(EventKind.CREATE_TRANSFER, b"".join(
        encode_transfer(Transfer(90 + a, 3, a, 5000, ledger=1, code=1)) for a in (1, 2, 4))))
    pair.deploy(picks, 1)
    next_id, sent, pending = 100, [], []
    for b in range(blocks):
        if b == blocks // 2:  # a new rule set takes effect from the next block
            pair.deploy(list(reversed(picks))[: max(1, len(picks) - 1)], 2)
        transfers = []
        chains = rnd.random() < 0.3  # a batch with a linked chain is the reference's under rules (takes())
        for _ in range(rnd.randint(1, per_block)):
            t = transfer_from(rnd, next_id, pending, chains)
            transfers.append(t)
            if t.flags & TF.PENDING or t.amount >= 400:  # pending, or held by the "big" rule
                pending.append(t.id)
            next_id += 1
        if transfers[-1].flags & TF.LINKED and rnd.random() < 0.8:  # most chains close
            transfers.append(Transfer(next_id, 3, 2, 1, ledger=1, code=1))
            next_id += 1
        sent += [t for t in transfers if t.ledger == 1 and t.amount]
        batches = [Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers))]
        n_cbs = rnd.randint(0, 3) if sent else 0  # a callback needs a sent payment
        cbs = [callback_for(rnd, 10_000 + 100 * b + k, rnd.choice(sent)) for k in range(n_cbs)]
        if cbs:
            batches.append(Batch(EventKind.SETTLEMENT_CALLBACK, b"".join(encode_callback(c) for c in cbs)))
        pair.block(*batches, advance_s=rnd.choice((1, 1, 2, 30)))
    pair.assert_stores_identical()


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    p = RulesPair(tmp_path)
    yield p
    p.close()


@pytest.mark.parametrize("seed", range(3))
def test_seeded_rule_workloads(pair: RulesPair, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    hooked: list[int] = []  # the engine really ran rule-set batches with its hook (observed, not replaced)
    real = native_transfers._apply_native

    def observed(blk: Any, records: bytes, sigs: list[bytes], events: list[Any], hook: Any) -> None:
        hooked.append(hook is not None)
        real(blk, records, sigs, events, hook)

    monkeypatch.setattr(native_transfers, "_apply_native", observed)
    run_workload(pair, seed, blocks=16, per_block=40, picks=list(range(len(RULE_POOL))))
    assert sum(hooked) >= 8
    # the corpus reaches the rule outcomes, so the comparison above covers them
    for code in (Result.OK, Result.RULE_REJECTED, Result.RULE_ERROR, Result.RULE_ADJUSTMENT_FAILED,
                 Result.LINKED_EVENT_FAILED, Result.EXCEEDS_DEBITS, Result.RECONCILE_LATE_AFTER_EXPIRY):
        assert code in pair.results, f"seed {seed} never produced {code.name}"


@settings(max_examples=20, deadline=None)
@example(seed=106, blocks=2, per_block=1, picks=[0])  # a block whose callbacks had no sent payment to name
@given(seed=st.integers(0, 2**32 - 1), blocks=st.integers(2, 6), per_block=st.integers(1, 30),
       picks=st.lists(st.integers(0, len(RULE_POOL) - 1), min_size=1, max_size=8, unique=True))
def test_hypothesis_rule_workloads(tmp_path_factory: pytest.TempPathFactory, seed: int, blocks: int,
                                   per_block: int, picks: list[int]) -> None:
    p = RulesPair(tmp_path_factory.mktemp("rules-pair"))
    try:
        run_workload(p, seed, blocks, per_block, picks)
    finally:
        p.close()


def test_many_rule_decisions_in_one_batch(pair: RulesPair) -> None:
    """More rule-decided records than the engine resumes after (SPLITS_MAX): the rest on the reference."""
    pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)))
    pair.deploy([1, 4, 5], 1)  # velocity rejects, holds, adjustments
    n = 4 * native_transfers.SPLITS_MAX
    transfers = [Transfer(1000 + i, 3 + i % 2, 2, (400, 5, 7)[i % 3], ledger=1, code=(1, 3)[i % 2]) for i in range(n)]
    pair.block(Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers)))
    pair.assert_stores_identical()
    assert {Result.RULE_REJECTED, Result.OK} <= pair.results


def test_takes_keeps_linked_batches_under_rules_on_the_reference(pair: RulesPair) -> None:
    """A batch with a linked chain under a rule set is the reference's; without one the engine's."""
    from ledger.apply.scratch import Block

    plain = Batch(EventKind.CREATE_TRANSFER, encode_transfer(Transfer(1, 1, 2, 5, ledger=1, code=1)))
    linked = Batch(EventKind.CREATE_TRANSFER, encode_transfer(Transfer(1, 1, 2, 5, ledger=1, code=1))
                   + encode_transfer(Transfer(2, 1, 2, 5, ledger=1, code=1, flags=TF.LINKED))
                   + encode_transfer(Transfer(3, 1, 2, 5, ledger=1, code=1)))
    previous = native.select("native")
    try:
        under_rules = Block.__new__(Block)
        under_rules.rules = object()  # type: ignore[assignment]
        no_rules = Block.__new__(Block)
        no_rules.rules = None
        assert native_transfers.takes(under_rules, plain)
        assert not native_transfers.takes(under_rules, linked)
        assert native_transfers.takes(no_rules, linked)
    finally:
        native.select(previous)


def test_rules_see_balances_moved_earlier_in_the_same_batch(pair: RulesPair) -> None:
    """The hook shows each transfer the balances the records before it left (not the batch's start)."""
    pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)))
    pair.block(Batch(EventKind.DEPLOY_RULESET, deploy_record({"name": "diff", "version": 1, "rules": [
        {"id": "spent", "expr": "debit.debits_posted >= 50", "action": "reject", "code": 21},
        {"id": "owed", "expr": "credit.credits_pending + credit.credits_posted >= 75", "action": "reject",
         "code": 22}]})))
    transfers = [Transfer(500 + i, 3 + i % 2, 7 - 5 * (i % 2), 10, ledger=1, code=1,
                          flags=TF.PENDING * (i % 3 == 0)) for i in range(30)]
    pair.block(Batch(EventKind.CREATE_TRANSFER, b"".join(encode_transfer(t) for t in transfers)))
    pair.assert_stores_identical()
    assert Result.RULE_REJECTED in pair.results


def test_signed_batch_split_at_rule_decisions(pair: RulesPair) -> None:
    """A PSP-signed batch (per-record and group-signed) split at rule-decided records keeps each
    record's own signature aux on both sides of every split."""
    pair.block(Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)))
    pair.deploy([4, 5, 1], 1)  # holds, adjustments, velocity rejects
    transfers = [Transfer(700 + i, 3 + i % 2, 2, (400, 5, 7)[i % 3], ledger=1, code=(1, 3)[i % 2], psp_id=1)
                 for i in range(12)]
    recs = b"".join(encode_transfer(t) for t in transfers)
    for key_id in (b"k" * 4, b"k" * 8):  # the C aux builders and the reference's
        per_record = Batch(EventKind.CREATE_TRANSFER, recs, signer_key_id=key_id,
                           signatures=bytes(range(64)) * len(transfers))
        grouped = Batch(EventKind.CREATE_TRANSFER, recs, signer_key_id=key_id, signatures=bytes(range(64)) * 3,
                        sign_group=5)
        pair.block(per_record, grouped)  # the second: retries of the first, each with its group aux
    pair.assert_stores_identical()
    assert {Result.OK, Result.RULE_REJECTED, Result.TRANSFER_EXISTS} <= pair.results
