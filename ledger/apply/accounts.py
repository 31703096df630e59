"""Account creation, checked in the precedence of docs/results.md."""

from __future__ import annotations

from typing import Final

from ledger.apply.batches import apply_chains, failure_maker, signature_auxes
from ledger.apply.scratch import Block, Event
from ledger.codec import ACCOUNT_SIZE, ACCOUNT_STRUCT, MAX16, ZERO16, Batch
from ledger.schema import AccountState, Table, TransferRef
from ledger.types import ACCOUNT_FLAGS_KNOWN, AccountFlags, EventKind, Result

LINKED: Final = int(AccountFlags.LINKED)
DEBITS_MUST_NOT_EXCEED_CREDITS: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CREDITS_MUST_NOT_EXCEED_DEBITS: Final = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
HISTORY: Final = int(AccountFlags.HISTORY)
_UNKNOWN_FLAGS: Final = 0xFFFF & ~ACCOUNT_FLAGS_KNOWN
_RESERVED23: Final = bytes(23)
# positions in an ACCOUNT_STRUCT.unpack tuple
A_USER_DATA: Final = 1
A_FLAGS: Final = 4

AccountRecord = tuple[bytes, bytes, int, int, int, int, bytes]


def apply_accounts(blk: Block, batch: Batch, events: list[Event]) -> None:
    records = batch.records
    recs: list[AccountRecord] = list(ACCOUNT_STRUCT.iter_unpack(records))
    sigs = signature_auxes(batch)
    apply_chains(
        blk, events, [r[A_FLAGS] & LINKED for r in recs],
        lambda i: create_account(blk, recs[i], records[i * ACCOUNT_SIZE : (i + 1) * ACCOUNT_SIZE],
                                 sigs[i] if sigs else b""),
        failure_maker(EventKind.CREATE_ACCOUNT, records, ACCOUNT_SIZE, sigs),
    )


def _check_fields(rec: AccountRecord) -> Result:
    aid, _ud, ledger, code, flags, _scale, reserved = rec
    if reserved != _RESERVED23:
        return Result.RESERVED_FIELD
    if flags & _UNKNOWN_FLAGS:
        return Result.RESERVED_FLAG
    if aid == ZERO16:
        return Result.ID_MUST_NOT_BE_ZERO
    if aid == MAX16:
        return Result.ID_MUST_NOT_BE_INT_MAX
    if flags & DEBITS_MUST_NOT_EXCEED_CREDITS and flags & CREDITS_MUST_NOT_EXCEED_DEBITS:
        return Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if ledger == 0:
        return Result.LEDGER_MUST_NOT_BE_ZERO
    if code == 0:
        return Result.CODE_MUST_NOT_BE_ZERO
    return Result.OK


def create_account(blk: Block, rec: AccountRecord, raw: bytes, aux: bytes) -> Event:
    aid, _ud, ledger, _code, flags, scale, _reserved = rec
    result = _check_fields(rec)
    if result != Result.OK:
        return Event(EventKind.CREATE_ACCOUNT, result, raw, aux, ())
    existing = blk.account(aid)
    if existing is not None:
        ev = Event(EventKind.CREATE_ACCOUNT, _account_exists(existing, rec), raw, aux, ())
        if ev.result == Result.EXISTS:  # an exact retry: no new leaf, the original index and block
            ev.existing = _account_ref(blk, aid)
        return ev
    known_scale = blk.scales.get(ledger, blk.committed.scales.get(ledger))
    if known_scale is not None and known_scale != scale:
        return Event(EventKind.CREATE_ACCOUNT, Result.ASSET_SCALE_MISMATCH, raw, aux, ())
    ts = blk.ts0  # replaced by the leaf timestamp at numbering; kept deterministic either way
    acct = AccountState(raw, 0, 0, 0, 0, ts)
    blk.accounts[aid] = acct
    blk.new_accounts.add(aid)
    ref = TransferRef(0, blk.height, 0, 0)  # leaf index and timestamp filled at numbering
    blk.account_refs[aid] = ref
    if known_scale is None:
        blk.scales[ledger] = scale
    blk.on_undo(lambda: _forget_account(blk, aid, ledger, known_scale is None))
    return Event(EventKind.CREATE_ACCOUNT, Result.OK, raw, aux, (aid,) if flags & HISTORY else (), ref=ref,
                 account=acct)


def _account_ref(blk: Block, aid: bytes) -> TransferRef | None:
    ref = blk.account_refs.get(aid)
    if ref is None:
        raw = blk.txn.get(Table.ACCOUNT_REFS, aid)
        ref = TransferRef.decode(raw) if raw is not None else None
    return ref


def _forget_account(blk: Block, aid: bytes, ledger: int, scale_was_new: bool) -> None:
    blk.accounts.pop(aid, None)
    blk.new_accounts.discard(aid)
    blk.account_refs.pop(aid, None)
    if scale_was_new:
        blk.scales.pop(ledger, None)


def _account_exists(existing: AccountState, rec: AccountRecord) -> Result:
    _id, ud, ledger, code, flags, scale, _res = rec
    if flags != existing.flags:
        return Result.EXISTS_WITH_DIFFERENT_FLAGS
    if ud != ACCOUNT_STRUCT.unpack(existing.record)[A_USER_DATA]:
        return Result.EXISTS_WITH_DIFFERENT_USER_DATA
    if ledger != existing.ledger:
        return Result.EXISTS_WITH_DIFFERENT_LEDGER
    if code != existing.code:
        return Result.EXISTS_WITH_DIFFERENT_CODE
    if scale != existing.scale:
        return Result.EXISTS_WITH_DIFFERENT_ASSET_SCALE
    return Result.EXISTS


def history_of(dr: bytes, dra: AccountState, cr: bytes, cra: AccountState) -> tuple[bytes, ...]:
    """Accounts whose history index gets this entry: only those created with the HISTORY flag."""
    if not (dra.flags | cra.flags) & HISTORY:
        return ()
    return tuple(aid for aid, a in ((dr, dra), (cr, cra)) if a.flags & HISTORY)
