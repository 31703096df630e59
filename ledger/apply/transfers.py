"""Transfers: one path for single-phase, pending, post and void, with an optional rules hook.

``apply_transfers`` runs a fast loop for the common case (a plain single-phase transfer between
existing accounts that passes every check) and hands anything else — any flag, any failure, any
doubt, any matched rule — to ``create_transfer``, which checks everything in the precedence of
docs/results.md. The fast loop mutates nothing until every check has passed, so handing over is
always safe; a rule verdict it already computed is handed over too, so no rule is evaluated twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ledger.apply import native_transfers
from ledger.apply.accounts import CREDITS_MUST_NOT_EXCEED_DEBITS, DEBITS_MUST_NOT_EXCEED_CREDITS, HISTORY, history_of
from ledger.apply.batches import apply_chains, failure_maker, signature_auxes
from ledger.apply.effects import after_success, apply_adjustment, rule_outcome
from ledger.apply.scratch import Block, Event, balance_restorer, popper
from ledger.codec import (
    MAX16,
    T_AMOUNT_HI,
    T_AMOUNT_LO,
    T_CODE,
    T_CREDIT,
    T_DEBIT,
    T_EXTERNAL_REF,
    T_FLAGS,
    T_ID,
    T_LEDGER,
    T_PENDING_ID,
    T_PII,
    T_PSP,
    T_TIMEOUT,
    T_USER_DATA,
    TRANSFER_SIZE,
    TRANSFER_STRUCT,
    ZERO16,
    Batch,
    TransferRecord,
)
from ledger.invariant import invariant
from ledger.rules.compiler import NO_MATCH, Verdict
from ledger.schema import AccountState, Table, TransferRef, expiry_key, id_key
from ledger.types import TRANSFER_FLAGS_KNOWN, U64_MAX, U128_MAX, EventKind, Result, TransferFlags, TransferStatus

LINKED: Final = int(TransferFlags.LINKED)
PENDING: Final = int(TransferFlags.PENDING)
POST: Final = int(TransferFlags.POST_PENDING_TRANSFER)
VOID: Final = int(TransferFlags.VOID_PENDING_TRANSFER)
_UNKNOWN_FLAGS: Final = 0xFFFF & ~TRANSFER_FLAGS_KNOWN
NS: Final = 1_000_000_000


def apply_transfers(blk: Block, batch: Batch, events: list[Event]) -> None:
    if native_transfers.takes(blk, batch):  # the compiled engine (ledger/apply/native_transfers.py)
        native_transfers.apply(blk, batch, events)
        return
    records = batch.records
    recs = list(TRANSFER_STRUCT.iter_unpack(records))
    sigs = signature_auxes(batch)
    linked = [r[T_FLAGS] & LINKED for r in recs]
    if any(linked):
        apply_chains(
            blk, events, linked,
            lambda i: create_transfer(blk, recs[i], records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE],
                                      sigs[i] if sigs else b""),
            failure_maker(EventKind.CREATE_TRANSFER, records, TRANSFER_SIZE, sigs),
        )
        return
    _apply_unlinked(blk, recs, records, sigs, events)


def _apply_unlinked(blk: Block, recs: list[TransferRecord], records: bytes, sigs: list[bytes],
                    events: list[Event]) -> None:
    """The hot path (see the module doc)."""
    get_account = blk.account
    accounts = blk.accounts
    transfers = blk.transfers
    bodies = blk.bodies
    stored = blk.txn.getter(Table.TRANSFERS)
    height = blk.height
    append = events.append
    kind = EventKind.CREATE_TRANSFER
    single = TransferStatus.SINGLE_PHASE
    ok = Result.OK  # enum attribute lookups are slow in a hot loop
    rules = blk.rules
    decide = rules.decide if rules is not None and rules.active else None  # the rules hook
    side = blk.side
    ts0 = blk.ts0
    for i, rec in enumerate(recs):
        raw = records[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE]
        aux = sigs[i] if sigs else b""
        tid, dr, cr, amount, amount_hi, pid, _ud, _ext, _pii, ledger, _psp, timeout, code, flags = rec
        if (flags or amount_hi or not amount or not code or timeout or dr == cr or pid != ZERO16
                or tid in (ZERO16, MAX16) or tid in transfers):
            append(create_transfer(blk, rec, raw, aux))
            continue
        dra = accounts.get(dr) or get_account(dr)
        cra = accounts.get(cr) or get_account(cr)
        if (dra is None or cra is None or dra.ledger != ledger or cra.ledger != ledger
                or dr == MAX16 or cr == MAX16 or stored(id_key(tid)) is not None):
            append(create_transfer(blk, rec, raw, aux))
            continue
        debits_posted = dra.debits_posted + amount
        credits_posted = cra.credits_posted + amount
        if (debits_posted + dra.debits_pending) >> 128 or (credits_posted + cra.credits_pending) >> 128:
            append(create_transfer(blk, rec, raw, aux))
            continue
        if ((dra.flags & DEBITS_MUST_NOT_EXCEED_CREDITS
             and debits_posted + dra.debits_pending > dra.credits_posted)
                or (cra.flags & CREDITS_MUST_NOT_EXCEED_DEBITS
                    and credits_posted + cra.credits_pending > cra.debits_posted)):
            append(create_transfer(blk, rec, raw, aux))
            continue
        if decide is not None:
            verdict = decide(rec, dra, cra, ts0, height, side)
            if verdict[0] != NO_MATCH:  # a rule matched or failed: the general path applies the outcome
                append(create_transfer(blk, rec, raw, aux, verdict))
                continue
        dra.debits_posted = debits_posted
        cra.credits_posted = credits_posted
        ref = TransferRef(0, height, 0, single)
        transfers[tid] = ref
        bodies[tid] = raw
        if rules is not None:
            after_success(blk, rec, amount)
        hist = history_of(dr, dra, cr, cra) if (dra.flags | cra.flags) & HISTORY else ()
        append(Event(kind, ok, raw, aux, hist, ref, tid))


def _check_fields(rec: TransferRecord, kinds: int) -> Result:
    """The checks of a new transfer that need no state, in precedence order."""
    dr, cr, amount = rec[T_DEBIT], rec[T_CREDIT], rec[T_AMOUNT_LO] | (rec[T_AMOUNT_HI] << 64)
    if dr == ZERO16:
        return Result.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if dr == MAX16:
        return Result.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if cr == ZERO16:
        return Result.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if cr == MAX16:
        return Result.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if dr == cr:
        return Result.ACCOUNTS_MUST_BE_DIFFERENT
    if rec[T_PENDING_ID] != ZERO16:
        return Result.PENDING_ID_MUST_BE_ZERO
    if rec[T_TIMEOUT] and not kinds:
        return Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if amount == 0:
        return Result.AMOUNT_MUST_NOT_BE_ZERO
    if rec[T_LEDGER] == 0:
        return Result.LEDGER_MUST_NOT_BE_ZERO
    if rec[T_CODE] == 0:
        return Result.CODE_MUST_NOT_BE_ZERO
    return Result.OK


def _check_balances(dra: AccountState, cra: AccountState, amount: int, pending: bool) -> Result:
    """Overflow checks of a new transfer, in precedence order."""
    if pending:
        if dra.debits_pending + amount > U128_MAX:
            return Result.OVERFLOWS_DEBITS_PENDING
        if cra.credits_pending + amount > U128_MAX:
            return Result.OVERFLOWS_CREDITS_PENDING
    else:
        if dra.debits_posted + amount > U128_MAX:
            return Result.OVERFLOWS_DEBITS_POSTED
        if cra.credits_posted + amount > U128_MAX:
            return Result.OVERFLOWS_CREDITS_POSTED
    if dra.debits_pending + dra.debits_posted + amount > U128_MAX:
        return Result.OVERFLOWS_DEBITS
    if cra.credits_pending + cra.credits_posted + amount > U128_MAX:
        return Result.OVERFLOWS_CREDITS
    return Result.OK


def _check_limits(dra: AccountState, cra: AccountState, amount: int) -> Result:
    if (dra.flags & DEBITS_MUST_NOT_EXCEED_CREDITS
            and dra.debits_pending + dra.debits_posted + amount > dra.credits_posted):
        return Result.EXCEEDS_CREDITS
    if (cra.flags & CREDITS_MUST_NOT_EXCEED_DEBITS
            and cra.credits_pending + cra.credits_posted + amount > cra.debits_posted):
        return Result.EXCEEDS_DEBITS
    return Result.OK


def create_transfer(blk: Block, rec: TransferRecord, raw: bytes, aux: bytes, verdict: Verdict | None = None) -> Event:
    """The general path: every check in precedence order, the rule hook, then the effects.

    ``verdict``: the rule set's verdict when the fast loop already evaluated it (same state)."""
    tid, dr, cr, alo, ahi, _pid, _ud, _ext, _pii, ledger, _psp, timeout, _code, flags = rec
    kinds = flags & (PENDING | POST | VOID)
    result = (Result.RESERVED_FLAG if flags & _UNKNOWN_FLAGS else Result.ID_MUST_NOT_BE_ZERO if tid == ZERO16
              else Result.ID_MUST_NOT_BE_INT_MAX if tid == MAX16
              else Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE if kinds & (kinds - 1) else Result.OK)
    if result == Result.OK and kinds & (POST | VOID):
        return _post_or_void(blk, rec, raw, aux)
    if result == Result.OK:
        result = _check_fields(rec, kinds)
    if result != Result.OK:
        return Event(EventKind.CREATE_TRANSFER, result, raw, aux, ())
    dra = blk.account(dr)
    cra = blk.account(cr) if dra is not None else None
    result = (Result.DEBIT_ACCOUNT_NOT_FOUND if dra is None else Result.CREDIT_ACCOUNT_NOT_FOUND if cra is None
              else Result.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER if dra.ledger != cra.ledger
              else Result.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS if ledger != dra.ledger else Result.OK)
    if result != Result.OK:
        return Event(EventKind.CREATE_TRANSFER, result, raw, aux, ())
    assert dra is not None and cra is not None
    existing = blk.transfer(tid)
    if existing is not None:
        return transfer_exists(blk, tid, existing, raw, aux)
    amount = alo | (ahi << 64)
    expires = blk.ts0 + timeout * NS if timeout else 0
    result = _check_balances(dra, cra, amount, bool(kinds))
    if result == Result.OK and expires > U64_MAX:
        result = Result.OVERFLOWS_TIMEOUT
    if result == Result.OK:
        result = _check_limits(dra, cra, amount)
    if result != Result.OK:
        return Event(EventKind.CREATE_TRANSFER, result, raw, aux, ())
    rules = blk.rules
    if rules is None or not rules.active:
        return _create(blk, rec, raw, aux, dra, cra, amount, kinds, expires)
    outcome = rule_outcome(blk, rec, dra, cra, amount, kinds, expires, verdict)
    aux += outcome.aux
    if outcome.result != Result.OK:
        return Event(EventKind.CREATE_TRANSFER, outcome.result, raw, aux, ())
    ev = _create(blk, rec, raw, aux, dra, cra, amount, outcome.kinds, outcome.expires)
    ev.exception = outcome.exception
    if outcome.plan is not None:
        ev.follow = apply_adjustment(blk, outcome.plan, dra, aux)
    return ev


def _create(blk: Block, rec: TransferRecord, raw: bytes, aux: bytes, dra: AccountState, cra: AccountState,
            amount: int, kinds: int, expires: int) -> Event:
    """The effects of a new (single-phase or pending) transfer; nothing before this mutated state."""
    tid, dr, cr = rec[T_ID], rec[T_DEBIT], rec[T_CREDIT]
    undo = blk.undo
    if undo is not None:
        undo.append(balance_restorer(dra))
        undo.append(balance_restorer(cra))
        undo.append(popper(blk.transfers, tid))
    blk.bodies[tid] = raw
    if kinds:
        dra.debits_pending += amount
        cra.credits_pending += amount
        ref = TransferRef(0, blk.height, 0, TransferStatus.PENDING, expires)
        if expires:
            key = expiry_key(expires, tid)
            blk.expiry_puts.append(key)
            blk.on_undo(lambda: blk.expiry_puts.remove(key))
    else:
        dra.debits_posted += amount
        cra.credits_posted += amount
        ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
    blk.transfers[tid] = ref
    if blk.rules is not None:
        after_success(blk, rec, amount)
    return Event(EventKind.CREATE_TRANSFER, Result.OK, raw, aux, history_of(dr, dra, cr, cra), ref, tid)


def transfer_exists(blk: Block, tid: bytes, existing: TransferRef, raw: bytes, aux: bytes) -> Event:
    original = blk.leaf_body(tid, existing)
    code = Result.TRANSFER_EXISTS if original == raw else _transfer_exists_code(original, raw)
    ev = Event(EventKind.CREATE_TRANSFER, code, raw, aux, ())
    if code == Result.TRANSFER_EXISTS:
        ev.existing = existing
    return ev


# (position in the transfer tuple, result when it differs), in precedence order
_TRANSFER_FIELD_CHECKS: Final = (
    (T_FLAGS, Result.EXISTS_WITH_DIFFERENT_TRANSFER_FLAGS), (T_DEBIT, Result.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    (T_CREDIT, Result.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID), (T_AMOUNT_LO, Result.EXISTS_WITH_DIFFERENT_AMOUNT),
    (T_AMOUNT_HI, Result.EXISTS_WITH_DIFFERENT_AMOUNT), (T_PENDING_ID, Result.EXISTS_WITH_DIFFERENT_PENDING_ID),
    (T_USER_DATA, Result.EXISTS_WITH_DIFFERENT_TRANSFER_USER_DATA), (T_TIMEOUT, Result.EXISTS_WITH_DIFFERENT_TIMEOUT),
    (T_CODE, Result.EXISTS_WITH_DIFFERENT_TRANSFER_CODE), (T_LEDGER, Result.EXISTS_WITH_DIFFERENT_TRANSFER_LEDGER),
    (T_EXTERNAL_REF, Result.EXISTS_WITH_DIFFERENT_EXTERNAL_REF), (T_PII, Result.EXISTS_WITH_DIFFERENT_PII_COMMITMENT),
    (T_PSP, Result.EXISTS_WITH_DIFFERENT_PSP),
)


def _transfer_exists_code(original: bytes, raw: bytes) -> Result:
    a = TRANSFER_STRUCT.unpack(original)
    b = TRANSFER_STRUCT.unpack(raw)
    for pos, code in _TRANSFER_FIELD_CHECKS:
        if a[pos] != b[pos]:
            return code
    return Result.TRANSFER_EXISTS


# -- post and void of a pending transfer ------------------------------------------------------------


def _check_post_or_void(rec: TransferRecord, pending: TransferRecord, pref: TransferRef) -> Result:
    """The checks against the pending transfer ``pending`` (its record) before the id lookup."""
    _tid, dr, cr, _alo, _ahi, _pid, _ud, _ext, _pii, ledger, _psp, _timeout, code, _flags = rec
    # a transfer held by a rule is pending without the flag: its ref's status says so
    if not pending[T_FLAGS] & PENDING and pref.status == TransferStatus.SINGLE_PHASE:
        return Result.PENDING_TRANSFER_NOT_PENDING
    if dr != ZERO16 and dr != pending[T_DEBIT]:
        return Result.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
    if cr != ZERO16 and cr != pending[T_CREDIT]:
        return Result.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
    if ledger != 0 and ledger != pending[T_LEDGER]:
        return Result.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
    if code != 0 and code != pending[T_CODE]:
        return Result.PENDING_TRANSFER_HAS_DIFFERENT_CODE
    return Result.OK


def _check_amount_and_status(blk: Block, amount: int, pending_amount: int, posting: bool,
                             pref: TransferRef) -> Result:
    if posting and amount > pending_amount:
        return Result.EXCEEDS_PENDING_TRANSFER_AMOUNT
    if not posting and amount not in (0, pending_amount):
        return Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    if pref.status == TransferStatus.POSTED:
        return Result.PENDING_TRANSFER_ALREADY_POSTED
    if pref.status == TransferStatus.VOIDED:
        return Result.PENDING_TRANSFER_ALREADY_VOIDED
    if pref.status == TransferStatus.EXPIRED or (pref.expires_at_ns and pref.expires_at_ns <= blk.ts0):
        return Result.PENDING_TRANSFER_EXPIRED
    return Result.OK


def _post_or_void(blk: Block, rec: TransferRecord, raw: bytes, aux: bytes) -> Event:
    tid, _dr, _cr, alo, ahi, pid, _ud, _ext, _pii, _ledger, _psp, timeout, _code, flags = rec
    pref = None if pid in (ZERO16, MAX16, tid) or timeout else blk.transfer(pid)
    result = (Result.PENDING_ID_MUST_NOT_BE_ZERO if pid == ZERO16 else Result.PENDING_ID_MUST_NOT_BE_INT_MAX
              if pid == MAX16 else Result.PENDING_ID_MUST_BE_DIFFERENT if pid == tid
              else Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER if timeout
              else Result.PENDING_TRANSFER_NOT_FOUND if pref is None else Result.OK)
    if result != Result.OK:
        return Event(EventKind.CREATE_TRANSFER, result, raw, aux, ())
    assert pref is not None
    pending = TRANSFER_STRUCT.unpack(blk.leaf_body(pid, pref))
    result = _check_post_or_void(rec, pending, pref)
    if result != Result.OK:
        return Event(EventKind.CREATE_TRANSFER, result, raw, aux, ())
    existing = blk.transfer(tid)
    if existing is not None:
        return transfer_exists(blk, tid, existing, raw, aux)
    pending_amount = pending[T_AMOUNT_LO] | (pending[T_AMOUNT_HI] << 64)
    posting = bool(flags & POST)
    amount = alo | (ahi << 64)
    if posting and amount == 0:
        amount = pending_amount
    result = _check_amount_and_status(blk, amount, pending_amount, posting, pref)
    if result != Result.OK:
        return Event(EventKind.CREATE_TRANSFER, result, raw, aux, ())
    p_dr, p_cr = pending[T_DEBIT], pending[T_CREDIT]
    dra = blk.account(p_dr)
    cra = blk.account(p_cr)
    invariant(dra is not None and cra is not None, "accounts of a pending transfer vanished")
    assert dra is not None and cra is not None  # for the type checker; invariant above guards
    if posting and (dra.debits_posted + amount > U128_MAX):
        return Event(EventKind.CREATE_TRANSFER, Result.OVERFLOWS_DEBITS_POSTED, raw, aux, ())
    if posting and (cra.credits_posted + amount > U128_MAX):
        return Event(EventKind.CREATE_TRANSFER, Result.OVERFLOWS_CREDITS_POSTED, raw, aux, ())
    _settle_pending(blk, pid, pref, dra, cra, pending_amount, amount if posting else -1)
    blk.bodies[tid] = raw
    ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
    blk.transfers[tid] = ref
    blk.on_undo(popper(blk.transfers, tid))
    return Event(EventKind.CREATE_TRANSFER, Result.OK, raw, aux, history_of(p_dr, dra, p_cr, cra), ref, tid)


def _settle_pending(blk: Block, pid: bytes, pref: TransferRef, dra: AccountState, cra: AccountState,
                    pending_amount: int, posted: int) -> None:
    """Release a pending transfer's reservation; ``posted`` >= 0 posts that amount, -1 voids."""
    undo = blk.undo
    if undo is not None:
        undo.append(balance_restorer(dra))
        undo.append(balance_restorer(cra))
        undo.append(_ref_restorer(blk, pid, pref))
    invariant(dra.debits_pending >= pending_amount and cra.credits_pending >= pending_amount,
              "pending balance below a pending amount")
    dra.debits_pending -= pending_amount
    cra.credits_pending -= pending_amount
    if posted >= 0:
        dra.debits_posted += posted
        cra.credits_posted += posted
    pref.status = TransferStatus.POSTED if posted >= 0 else TransferStatus.VOIDED
    blk.transfers[pid] = pref
    if pref.expires_at_ns:
        key = expiry_key(pref.expires_at_ns, pid)
        blk.expiry_dels.append(key)
        blk.on_undo(lambda: blk.expiry_dels.remove(key))


def _ref_restorer(blk: Block, tid: bytes, ref: TransferRef) -> Callable[[], None]:
    status = ref.status
    previous = blk.transfers.get(tid)

    def restore() -> None:
        ref.status = status
        if previous is None:
            blk.transfers.pop(tid, None)
        else:
            blk.transfers[tid] = previous

    return restore
