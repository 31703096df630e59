"""Rule effects on the transfer path, risk state, and rule set deployment (docs/rules.md).

Everything here writes to the block's ``SideState`` (rules and reconciliation scratch) or, for an
adjustment, to ledger scratch through the same undo log as the transfer that caused it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ledger import risk as risk_features
from ledger.apply.accounts import CREDITS_MUST_NOT_EXCEED_DEBITS, DEBITS_MUST_NOT_EXCEED_CREDITS, history_of
from ledger.apply.scratch import Block, Event, balance_restorer, popper, restore_key
from ledger.codec import (
    T_CREDIT,
    T_DEBIT,
    T_EXTERNAL_REF,
    T_ID,
    T_PSP,
    TRANSFER_STRUCT,
    ZERO16,
    ZERO32,
    EncodingError,
    TransferRecord,
    decode_deploy,
    origin_aux,
    rule_outcome_aux,
)
from ledger.hashing import derived_id
from ledger.note import Verifier
from ledger.reconcile import EXC_RULE_FLAG, EXC_RULE_HOLD, encode_exception
from ledger.risk import KEY_IN, KEY_OUT, new_state, psp_key
from ledger.rules.compiler import EVALUATION_FAILED, NO_MATCH, Verdict, compile_ruleset
from ledger.rules.model import Action, Rule, RuleSetError, parse_canonical, signing_message
from ledger.schema import AccountState, TransferRef
from ledger.types import U64_MAX, U128_MAX, EventKind, Result, TransferFlags, TransferStatus

ORIGIN_ADJUSTMENT: Final = 1  # origin aux of ledger-written transfers (docs/formats.md)
ORIGIN_RESIDUAL: Final = 2
_PENDING: Final = int(TransferFlags.PENDING)
_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Adjustment:
    """An adjustment transfer planned by an `adjust` rule, checked before any effect."""

    tid: bytes
    account_id: bytes
    account: AccountState
    amount: int
    raw: bytes
    source: bytes
    debit: bytes


@dataclass(slots=True)
class RuleOutcome:
    """What the deciding rule does to a transfer that passed the ledger's own checks."""

    result: int = Result.OK
    aux: bytes = b""  # the rule-outcome aux appended to the transfer's leaf
    kinds: int = 0  # the transfer's kind flags after the rule (a hold makes it pending)
    expires: int = 0
    exception: bytes | None = None
    plan: Adjustment | None = None


def rule_outcome(blk: Block, rec: TransferRecord, dra: AccountState, cra: AccountState,
                 amount: int, kinds: int, expires: int, verdict: Verdict | None) -> RuleOutcome:
    """Evaluate the rule set (unless ``verdict`` is already known) and check what the deciding rule does."""
    rules = blk.rules
    assert rules is not None
    if verdict is None:
        verdict = rules.decide(rec, dra, cra, blk.ts0, blk.height, blk.side)
    idx, errored = verdict
    if idx == NO_MATCH:
        return RuleOutcome(kinds=kinds, expires=expires)
    if idx == EVALUATION_FAILED:
        return RuleOutcome(Result.RULE_EVALUATION_FAILED)
    rule = rules.rules[idx]
    rid = rule.id.encode()
    if errored:
        return RuleOutcome(Result.RULE_ERROR, rule_outcome_aux(Action.ERROR, rule.code, rid))
    act = rule.action
    out = RuleOutcome(Result.OK, rule_outcome_aux(act, rule.code, rid), kinds, expires)
    tid = rec[T_ID]
    if act == Action.REJECT:
        out.result = Result.RULE_REJECTED
    elif act == Action.HOLD:
        out.result = _hold(blk, out, dra, cra, amount, rule)
        out.exception = encode_exception(EXC_RULE_HOLD, tid, amount, amount, blk.ts0, rid)
    elif act == Action.FLAG:
        out.exception = encode_exception(EXC_RULE_FLAG, tid, amount, amount, blk.ts0, rid)
    elif act == Action.ADJUST:
        ok, out.plan = _plan_adjustment(blk, rec, dra, amount, rule)
        if not ok:
            out.result = Result.RULE_ADJUSTMENT_FAILED
    return out


def _hold(blk: Block, out: RuleOutcome, dra: AccountState, cra: AccountState, amount: int, rule: Rule) -> int:
    """A hold makes the transfer pending (if it was not) with the rule's timeout (if it had none)."""
    if not out.kinds:
        if dra.debits_pending + amount > U128_MAX:
            return Result.OVERFLOWS_DEBITS_PENDING
        if cra.credits_pending + amount > U128_MAX:
            return Result.OVERFLOWS_CREDITS_PENDING
        out.kinds = _PENDING
    if not out.expires:
        out.expires = blk.ts0 + rule.hold_timeout_s * _NS
        if out.expires > U64_MAX:
            return Result.OVERFLOWS_TIMEOUT
    return Result.OK


def _plan_adjustment(blk: Block, rec: TransferRecord, dra: AccountState, amount: int,
                     rule: Rule) -> tuple[bool, Adjustment | None]:
    """Check the adjustment transfer before any effect: (possible, plan or None when it is zero)."""
    adj = rule.adjustment(amount)
    if adj == 0:
        return True, None
    tid, dr, cr = rec[T_ID], rec[T_DEBIT], rec[T_CREDIT]
    acct = rule.adjust_account.to_bytes(16, "little")
    if acct == dr:
        return False, None
    adja = blk.account(acct)
    if adja is None or adja.ledger != dra.ledger:
        return False, None
    extra = amount if acct == cr else 0
    debits = dra.debits_pending + dra.debits_posted + amount + adj
    credits = adja.credits_pending + adja.credits_posted + extra + adj
    if debits > U128_MAX or credits > U128_MAX:
        return False, None
    if dra.flags & DEBITS_MUST_NOT_EXCEED_CREDITS and debits > dra.credits_posted:
        return False, None
    if adja.flags & CREDITS_MUST_NOT_EXCEED_DEBITS and credits > adja.debits_posted:
        return False, None
    adj_tid = derived_id(b"adjust", tid)
    if blk.transfer(adj_tid) is not None:
        return False, None
    raw = TRANSFER_STRUCT.pack(adj_tid, dr, acct, adj & U64_MAX, adj >> 64, ZERO16, tid, ZERO32, ZERO32,
                               dra.ledger, rec[T_PSP], 0, rule.adjust_code, 0)
    return True, Adjustment(adj_tid, acct, adja, adj, raw, tid, dr)


def apply_adjustment(blk: Block, plan: Adjustment, dra: AccountState, rule_aux: bytes) -> Event:
    adja = plan.account
    blk.on_undo(balance_restorer(adja))
    blk.on_undo(popper(blk.transfers, plan.tid))
    dra.debits_posted += plan.amount
    adja.credits_posted += plan.amount
    ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
    blk.transfers[plan.tid] = ref
    blk.bodies[plan.tid] = plan.raw
    aux = origin_aux(ORIGIN_ADJUSTMENT, plan.source) + rule_aux
    return Event(EventKind.LEDGER_TRANSFER, Result.OK, plan.raw, aux,
                 history_of(plan.debit, dra, plan.account_id, adja), ref, plan.tid)


def after_success(blk: Block, rec: TransferRecord, amount: int) -> None:
    """Risk state and the external-ref index follow committed successful transfers only."""
    rules = blk.rules
    if rules is None:
        return
    ts = blk.ts0
    side = blk.side
    risk = side.risk
    plain = blk.undo is None  # outside a linked chain nothing needs undoing
    record = risk_features.record  # compiled unless SOVLEDGER_ENGINE=python (ledger/risk.py)
    if rules.track_out:  # the common case inline: the state is already in this block's scratch
        key = KEY_OUT + rec[T_DEBIT]
        st = risk.get(key)
        if st is not None and plain:
            record(st, ts, amount)
        else:
            _risk_add(blk, key, ts, amount)
    if rules.track_in:
        key = KEY_IN + rec[T_CREDIT]
        st = risk.get(key)
        if st is not None and plain:
            record(st, ts, amount)
        else:
            _risk_add(blk, key, ts, amount)
    if rules.track_psp:
        key = psp_key(rec[T_PSP])
        st = risk.get(key)
        if st is not None and plain:
            record(st, ts, amount)
        else:
            _risk_add(blk, key, ts, amount)
    if rules.track_pairs:
        _pair_paid(blk, rec[T_DEBIT], rec[T_CREDIT], plain)
    if rec[T_EXTERNAL_REF] != ZERO32:
        key = rec[T_PSP].to_bytes(4, "big") + rec[T_EXTERNAL_REF]
        previous = side.extrefs.get(key)
        side.extrefs[key] = rec[T_ID]
        blk.on_undo(lambda: restore_key(side.extrefs, key, previous))


def _pair_paid(blk: Block, debit_id: bytes, credit_id: bytes, plain: bool) -> None:
    """A successful transfer paid this pair: new if never seen; journaled either way (ledger/risk_log.py)."""
    side = blk.side
    pk = debit_id + credit_id
    if not side.seen(debit_id, credit_id):
        side.pairs.add(pk)
        if not plain:
            blk.on_undo(lambda: side.pairs.discard(pk))
    if pk not in side.paid:
        side.paid.add(pk)
        if not plain:
            blk.on_undo(lambda: side.paid.discard(pk))


def _risk_add(blk: Block, key: bytes, ts: int, amount: int) -> None:
    side = blk.side
    st = side.block_state(key)  # the block's list (handed over by the C risk table if the C hook changed it)
    if st is None:
        base = side.state(key)
        st = list(base) if base is not None else new_state()  # copy: the cache keeps committed state
        side.risk[key] = st
        if blk.undo is not None:
            blk.undo.append(popper(side.risk, key))
    elif blk.undo is not None:
        before = list(st)
        blk.undo.append(lambda: st.__setitem__(slice(None), before))
    risk_features.record(st, ts, amount)


def deploy(blk: Block, raw: bytes, operators: dict[bytes, Verifier]) -> Event:
    """A rule set deployment: signed by an operator key, compiled and checked, effective next block."""
    try:
        key_id, signature, canonical = decode_deploy(raw)
    except EncodingError:
        return Event(EventKind.DEPLOY_RULESET, Result.RULESET_INVALID, raw, b"", ())
    verifier = operators.get(key_id)
    if verifier is None or not verifier.verify(signing_message(canonical), signature):
        return Event(EventKind.DEPLOY_RULESET, Result.RULESET_BAD_SIGNATURE, raw, b"", ())
    try:
        compiled = compile_ruleset(parse_canonical(canonical))
    except RuleSetError as e:
        return Event(EventKind.DEPLOY_RULESET, e.result, raw, b"", ())
    current = blk.side.new_rules or blk.rules
    if (current is not None and current.ruleset.name == compiled.ruleset.name
            and compiled.ruleset.version <= current.ruleset.version):
        return Event(EventKind.DEPLOY_RULESET, Result.RULESET_VERSION_MUST_INCREASE, raw, b"", ())
    blk.side.new_rules = compiled
    ev = Event(EventKind.DEPLOY_RULESET, Result.OK, raw, b"", ())
    ev.ruleset = canonical
    return ev


def operator_map(operator_keys: Sequence[Verifier]) -> dict[bytes, Verifier]:
    return {v.key_id: v for v in operator_keys}
