"""Settlement callbacks: reconcile a PSP's settlement against the logged transfer (docs/rules.md).

A callback either reconciles (exactly, or within a tolerance with a residual transfer to the
rounding account) or becomes an exception for review; both consume the callback id, so a retry is
idempotent. Callback scratch (ids, bodies, reconciled transfers, rounding sums) lives in the
block's ``SideState``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ledger.apply.accounts import CREDITS_MUST_NOT_EXCEED_DEBITS, DEBITS_MUST_NOT_EXCEED_CREDITS, history_of
from ledger.apply.effects import ORIGIN_RESIDUAL
from ledger.apply.scratch import Block, Event
from ledger.codec import (
    CALLBACK_SIZE,
    CALLBACK_STRUCT,
    MAX16,
    T_AMOUNT_HI,
    T_AMOUNT_LO,
    T_CREDIT,
    T_DEBIT,
    T_FLAGS,
    T_LEDGER,
    T_PSP,
    TRANSFER_STRUCT,
    ZERO16,
    ZERO32,
    Batch,
    origin_aux,
    reconcile_aux,
)
from ledger.hashing import derived_id
from ledger.invariant import invariant
from ledger.reconcile import (
    DAY_NS,
    EXC_ALREADY_RECONCILED,
    EXC_EXPIRED_UNRECONCILED,
    EXC_LATE_AFTER_EXPIRY,
    EXC_NOT_RECONCILABLE,
    EXC_OUTSIDE_TOLERANCE,
    EXC_PSP_MISMATCH,
    EXC_RESIDUAL_FAILED,
    EXC_TRANSFER_NOT_FOUND,
    RECON_EXACT,
    RECON_EXCEPTION,
    RECON_TOLERANCE,
    encode_exception,
)
from ledger.schema import AccountState, Table, TransferRef, expiry_key, id_key
from ledger.types import U64_MAX, U128_MAX, EventKind, Result, TransferFlags, TransferStatus

_ZERO12: Final = bytes(12)
_POST_OR_VOID: Final = int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)
_KIND: Final = EventKind.SETTLEMENT_CALLBACK
# a reconciliation exception: (result, exception kind) — the pair is fixed per outcome
_NOT_FOUND: Final = (Result.RECONCILE_TRANSFER_NOT_FOUND, EXC_TRANSFER_NOT_FOUND)
_PSP_MISMATCH: Final = (Result.RECONCILE_PSP_MISMATCH, EXC_PSP_MISMATCH)
_ALREADY: Final = (Result.RECONCILE_ALREADY_RECONCILED, EXC_ALREADY_RECONCILED)
_LATE: Final = (Result.RECONCILE_LATE_AFTER_EXPIRY, EXC_LATE_AFTER_EXPIRY)
_NOT_RECONCILABLE: Final = (Result.RECONCILE_NOT_RECONCILABLE, EXC_NOT_RECONCILABLE)
_OUTSIDE: Final = (Result.RECONCILE_OUTSIDE_TOLERANCE, EXC_OUTSIDE_TOLERANCE)
_RESIDUAL_FAILED: Final = (Result.RECONCILE_RESIDUAL_FAILED, EXC_RESIDUAL_FAILED)


@dataclass(slots=True)
class _Callback:
    """One callback being applied: its fields and its ref (the id is consumed whatever the outcome)."""

    raw: bytes
    cid: bytes
    tid: bytes
    observed: int
    psp: int
    ref: TransferRef


@dataclass(slots=True)
class _Residual:
    account_id: bytes
    account: AccountState
    diff: int


def apply_callbacks(blk: Block, batch: Batch, events: list[Event]) -> None:
    records = batch.records
    for i in range(len(records) // CALLBACK_SIZE):
        events.append(_callback(blk, records[i * CALLBACK_SIZE : (i + 1) * CALLBACK_SIZE]))


def _callback(blk: Block, raw: bytes) -> Event:
    cid, tid, ext, lo, hi, psp, reserved = CALLBACK_STRUCT.unpack(raw)
    result = (Result.RESERVED_FIELD if reserved != _ZERO12 else Result.ID_MUST_NOT_BE_ZERO if cid == ZERO16
              else Result.ID_MUST_NOT_BE_INT_MAX if cid == MAX16 else Result.OK)
    if result != Result.OK:
        return Event(_KIND, result, raw, b"", ())
    side = blk.side
    existing = side.callbacks.get(cid)
    if existing is None:
        stored = blk.txn.get(Table.CALLBACKS, id_key(cid))
        existing = TransferRef.decode(stored) if stored is not None else None
    if existing is not None:
        same = blk.leaf_body(cid, existing, side.callback_bodies) == raw
        ev = Event(_KIND, Result.CALLBACK_EXISTS if same else Result.CALLBACK_EXISTS_WITH_DIFFERENT_FIELDS,
                   raw, b"", ())
        if same:
            ev.existing = existing
        return ev
    if tid == ZERO16:
        if ext == ZERO32:
            return Event(_KIND, Result.CALLBACK_TARGET_MISSING, raw, b"", ())
        key = psp.to_bytes(4, "big") + ext
        found = side.extrefs.get(key) or blk.txn.get(Table.EXTREFS, key)
        tid = found if found is not None else ZERO16
    return _reconcile(blk, _Callback(raw, cid, tid, lo | hi << 64, psp, TransferRef(0, blk.height, 0, 0)))


def _consume(blk: Block, cb: _Callback) -> None:
    blk.side.callbacks[cb.cid] = cb.ref
    blk.side.callback_bodies[cb.cid] = cb.raw


def _exception(blk: Block, cb: _Callback, outcome: tuple[Result, int], expected: int = 0) -> Event:
    """An exception is a callback too: its id is consumed, so a retry stays idempotent."""
    _consume(blk, cb)
    result, exc = outcome
    ev = Event(_KIND, result, cb.raw, reconcile_aux(RECON_EXCEPTION, cb.tid, expected, cb.observed), (),
               cb.ref, cb.cid)
    ev.exception = encode_exception(exc, cb.tid, expected, cb.observed, blk.ts0)
    return ev


def _reconcile(blk: Block, cb: _Callback) -> Event:
    tid = cb.tid
    ref = blk.transfer(tid) if tid != ZERO16 else None
    if ref is None:
        return _exception(blk, cb, _NOT_FOUND)
    body = TRANSFER_STRUCT.unpack(blk.leaf_body(tid, ref))
    expected = body[T_AMOUNT_LO] | body[T_AMOUNT_HI] << 64
    status = ref.status
    problem = (_PSP_MISMATCH if body[T_PSP] != cb.psp
               else _ALREADY if tid in blk.side.reconciled or blk.txn.get(Table.RECONCILED, id_key(tid)) is not None
               else _LATE if status == TransferStatus.EXPIRED
               else _NOT_RECONCILABLE if body[T_FLAGS] & _POST_OR_VOID or status == TransferStatus.VOIDED
               else None)
    if problem is not None:
        return _exception(blk, cb, problem, expected)
    dr, cr, ledger = body[T_DEBIT], body[T_CREDIT], body[T_LEDGER]
    dra = blk.account(dr)
    cra = blk.account(cr)
    invariant(dra is not None and cra is not None, "accounts of a stored transfer vanished")
    assert dra is not None and cra is not None
    residual: _Residual | None = None
    if cb.observed != expected:
        found = _plan_residual(blk, cb, ledger, (dr, cr), cra, expected, status)
        if not isinstance(found, _Residual):
            return _exception(blk, cb, found, expected)
        residual = found
    if status == TransferStatus.PENDING:  # settlement confirms a pending transfer: post it in full
        if dra.debits_posted + expected > U128_MAX or cra.credits_posted + expected > U128_MAX:
            return _exception(blk, cb, _RESIDUAL_FAILED, expected)
        _post_in_full(blk, tid, ref, dra, cra, expected)
    _consume(blk, cb)
    blk.side.reconciled[tid] = cb.ref
    ev = Event(_KIND, Result.OK, cb.raw,
               reconcile_aux(RECON_EXACT if residual is None else RECON_TOLERANCE, tid, expected, cb.observed),
               history_of(dr, dra, cr, cra), cb.ref, cb.cid)
    if residual is not None:
        ev.follow = _post_residual(blk, cb, cr, cra, residual, cb.observed < expected, ledger)
    return ev


def _plan_residual(blk: Block, cb: _Callback, ledger: int, parties: tuple[bytes, bytes], cra: AccountState,
                   expected: int, status: int) -> _Residual | tuple[Result, int]:
    """Within the tolerance: the residual transfer to plan; otherwise the exception to log."""
    rules = blk.rules
    tol = rules.tolerance(ledger, cb.psp) if rules is not None else None
    if tol is None or not tol.within(expected, cb.observed):
        return _OUTSIDE
    racct = tol.rounding_account.to_bytes(16, "little")
    rac = blk.account(racct) if racct not in parties else None
    if rac is None or rac.ledger != ledger:
        return _RESIDUAL_FAILED
    diff = abs(cb.observed - expected)
    posting = expected if status == TransferStatus.PENDING else 0  # credits the payee posts now
    # settled less: move the shortfall from the payee to the rounding account; more: the reverse
    rdr, rcr = (cra, rac) if cb.observed < expected else (rac, cra)
    if (rdr.debits_pending + rdr.debits_posted + diff > U128_MAX
            or rcr.credits_pending + rcr.credits_posted + diff > U128_MAX
            or (rdr.flags & DEBITS_MUST_NOT_EXCEED_CREDITS and rdr.debits_pending + rdr.debits_posted + diff
                > rdr.credits_posted + (posting if rdr is cra else 0))
            or (rcr.flags & CREDITS_MUST_NOT_EXCEED_DEBITS
                and rcr.credits_pending + rcr.credits_posted + diff > rcr.debits_posted)):
        return _RESIDUAL_FAILED
    return _Residual(racct, rac, diff)


def _post_in_full(blk: Block, tid: bytes, ref: TransferRef, dra: AccountState, cra: AccountState,
                  amount: int) -> None:
    dra.debits_pending -= amount
    cra.credits_pending -= amount
    dra.debits_posted += amount
    cra.credits_posted += amount
    ref.status = TransferStatus.POSTED
    blk.transfers[tid] = ref
    if ref.expires_at_ns:
        blk.expiry_dels.append(expiry_key(ref.expires_at_ns, tid))


def _post_residual(blk: Block, cb: _Callback, cr: bytes, cra: AccountState, residual: _Residual,
                   shortfall: bool, ledger: int) -> Event:
    racct, rac, diff = residual.account_id, residual.account, residual.diff
    dr_id, dra, cr_id, cra2 = (cr, cra, racct, rac) if shortfall else (racct, rac, cr, cra)
    rtid = derived_id(b"residual", cb.cid)
    raw = TRANSFER_STRUCT.pack(rtid, dr_id, cr_id, diff & U64_MAX, diff >> 64, ZERO16, cb.cid, ZERO32, ZERO32,
                               ledger, cb.psp, 0, 1, 0)
    dra.debits_posted += diff
    cra2.credits_posted += diff
    ref = TransferRef(0, blk.height, 0, TransferStatus.SINGLE_PHASE)
    blk.transfers[rtid] = ref
    blk.bodies[rtid] = raw
    day = (blk.ts0 // DAY_NS).to_bytes(8, "big")
    sums = blk.side.rounding.setdefault(racct + day, [0, 0, 0])
    sums[0 if not shortfall else 1] += diff  # the rounding account is debited (excess) or credited (shortfall)
    sums[2] += 1
    return Event(EventKind.LEDGER_TRANSFER, Result.OK, raw, origin_aux(ORIGIN_RESIDUAL, cb.cid),
                 history_of(dr_id, dra, cr_id, cra2), ref, rtid)


def expiry_exception(pid: bytes, amount: int, ts: int) -> bytes:
    """The exception record of a pending transfer that expired unreconciled (rule sets with on_expiry flag)."""
    return encode_exception(EXC_EXPIRED_UNRECONCILED, pid, amount, 0, ts)
