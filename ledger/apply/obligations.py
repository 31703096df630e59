"""Apply cross-region OBLIGATION (kind 9) and SETTLEMENT (kind 10) records.

A cross-region payment is two legs in two logs tied by one id (docs/federation.md):

- debtor region, INITIATE (from the PSP): payer → ``due-to(creditor)`` as a *pending* amount that
  never expires on its own; the deadline for the creditor region is fixed here (block ``t0`` +
  window);
- creditor region, ACCEPT (its node): the decision. Before the deadline and with the payee and
  ``due-from(debtor)`` in place, ``due-from`` → payee is posted at once; otherwise the refusal is
  recorded. Either way the id is decided here for ever: a later ACCEPT changes nothing;
- debtor region, RESOLVE (its node, carrying the creditor's decision and the index of its leaf):
  posts the pending leg on ACCEPTED, voids it on REFUSED.

The creditor's log is the single point of decision, so a partition can delay the debtor's leg
but never leave one leg posted and the other voided. A SETTLEMENT batch moves every obligation of
this region in it out of its clearing account into the ledger's settlement account, and marks it
settled. Byte forms: ledger/netting.py, docs/formats.md §16.
"""

from __future__ import annotations

import struct
from typing import Final

from ledger.apply.accounts import CREDITS_MUST_NOT_EXCEED_DEBITS, DEBITS_MUST_NOT_EXCEED_CREDITS, history_of
from ledger.apply.scratch import Block, Event
from ledger.codec import Batch
from ledger.invariant import invariant
from ledger.netting import (
    OBLIGATION_RECORD_SIZE,
    WINDOW_S_MAX,
    NettingError,
    NettingFailure,
    Obligation,
    ObligationRecord,
    ObligationStatus,
    Role,
    Verdict,
    clearing_account_id,
    decode_obligation,
    decode_record,
    settlement_account_id,
    settlement_digest,
    verify_settlement,
)
from ledger.schema import U64BE, AccountState, Table
from ledger.store import ReadTxn, Store
from ledger.types import U128_MAX, EventKind, Result

NS: Final = 1_000_000_000
DEBTOR: Final = 1
CREDITOR: Final = 2
_MALFORMED: Final = frozenset({NettingFailure.MALFORMED, NettingFailure.DUPLICATE_OBLIGATION, NettingFailure.UNSORTED})
_ROW: Final = struct.Struct("<BBQ")  # status, side, leaf index; then the obligation (96) and the payer (16)


def apply_obligations(blk: Block, batch: Batch, events: list[Event]) -> None:
    """One leaf per 144-byte record, in order."""
    records = batch.records
    for i in range(len(records) // OBLIGATION_RECORD_SIZE):
        raw = records[i * OBLIGATION_RECORD_SIZE : (i + 1) * OBLIGATION_RECORD_SIZE]
        result, touched = _obligation(blk, raw, blk.next_leaf_index(events))
        events.append(Event(EventKind.OBLIGATION, result, raw, b"", touched))


def _obligation(blk: Block, raw: bytes, leaf_index: int) -> tuple[int, tuple[bytes, ...]]:
    try:
        rec = decode_record(raw)
        ob = decode_obligation(rec.obligation)
    except NettingError:
        return Result.OBLIGATION_MALFORMED, ()
    if rec.role == Role.INITIATE:
        return _initiate(blk, rec, ob, leaf_index)
    if rec.role == Role.ACCEPT:
        return _accept(blk, rec, ob, leaf_index)
    return _resolve(blk, rec, ob, leaf_index)


def _initiate(blk: Block, rec: ObligationRecord, ob: Obligation, leaf_index: int) -> tuple[int, tuple[bytes, ...]]:
    if ob.deadline_ns or rec.verdict or rec.evidence_index or not 0 < rec.window_s <= WINDOW_S_MAX:
        return Result.OBLIGATION_MALFORMED, ()
    if obligation_row(blk.txn, ob.id) is not None:
        return Result.OBLIGATION_EXISTS, ()
    clearing = clearing_account_id("due-to", ob.creditor, ob.ledger)
    found = _pair(blk, rec.payer, clearing, ob.ledger, False)
    if isinstance(found, Result):
        return found, ()
    payer, due_to = found
    a = ob.amount
    if (payer.debits_pending + payer.debits_posted + a) > U128_MAX:
        return Result.OVERFLOWS_DEBITS, ()
    if (due_to.credits_pending + due_to.credits_posted + a) > U128_MAX:
        return Result.OVERFLOWS_CREDITS, ()
    if payer.flags & DEBITS_MUST_NOT_EXCEED_CREDITS and (
            payer.debits_pending + payer.debits_posted + a > payer.credits_posted):
        return Result.EXCEEDS_CREDITS, ()
    if due_to.flags & CREDITS_MUST_NOT_EXCEED_DEBITS and (
            due_to.credits_pending + due_to.credits_posted + a > due_to.debits_posted):
        return Result.EXCEEDS_DEBITS, ()
    payer.debits_pending += a
    due_to.credits_pending += a
    deadline = Obligation(ob.id, a, ob.ledger, ob.debtor, ob.creditor, ob.payee, blk.ts0 + rec.window_s * NS)
    _put_row(blk, ObligationStatus.PENDING, DEBTOR, leaf_index, deadline.encode(), rec.payer)
    return Result.OK, history_of(rec.payer, payer, clearing, due_to)


def _accept(blk: Block, rec: ObligationRecord, ob: Obligation, leaf_index: int) -> tuple[int, tuple[bytes, ...]]:
    if rec.verdict or rec.evidence_index or rec.window_s or rec.psp_id or any(rec.payer):
        return Result.OBLIGATION_MALFORMED, ()
    if obligation_row(blk.txn, ob.id) is not None:
        return Result.OBLIGATION_EXISTS, ()
    result, touched = _credit_payee(blk, ob)
    status = ObligationStatus.OPEN if result == Result.OK else ObligationStatus.VOIDED
    _put_row(blk, status, CREDITOR, leaf_index, rec.obligation, bytes(16))  # decided here, for ever
    return result, touched


def _credit_payee(blk: Block, ob: Obligation) -> tuple[int, tuple[bytes, ...]]:
    if blk.ts0 >= ob.deadline_ns:
        return Result.OBLIGATION_DEADLINE_PASSED, ()
    clearing = clearing_account_id("due-from", ob.debtor, ob.ledger)
    found = _pair(blk, clearing, ob.payee, ob.ledger, True)
    if isinstance(found, Result):
        return found, ()
    due_from, payee = found
    a = ob.amount
    if due_from.debits_pending + due_from.debits_posted + a > U128_MAX:
        return Result.OVERFLOWS_DEBITS, ()
    if payee.credits_pending + payee.credits_posted + a > U128_MAX:
        return Result.OVERFLOWS_CREDITS, ()
    if payee.flags & CREDITS_MUST_NOT_EXCEED_DEBITS and (
            payee.credits_pending + payee.credits_posted + a > payee.debits_posted):
        return Result.EXCEEDS_DEBITS, ()
    due_from.debits_posted += a
    payee.credits_posted += a
    return Result.OK, history_of(clearing, due_from, ob.payee, payee)


def _resolve(blk: Block, rec: ObligationRecord, ob: Obligation, leaf_index: int) -> tuple[int, tuple[bytes, ...]]:
    if rec.verdict == Verdict.NONE or rec.window_s or rec.psp_id or any(rec.payer):
        return Result.OBLIGATION_MALFORMED, ()
    row = obligation_row(blk.txn, ob.id)
    if row is None or row[0] != ObligationStatus.PENDING or row[3] != rec.obligation:
        return Result.OBLIGATION_NOT_PENDING, ()
    payer_id = row[4]  # from the INITIATE entry: the RESOLVE record names no payer
    clearing = clearing_account_id("due-to", ob.creditor, ob.ledger)
    payer, due_to = blk.account(payer_id), blk.account(clearing)
    assert payer is not None and due_to is not None  # they held the pending amount
    a = ob.amount
    payer.debits_pending -= a
    due_to.credits_pending -= a
    status = ObligationStatus.VOIDED
    if rec.verdict == Verdict.ACCEPTED:
        payer.debits_posted += a
        due_to.credits_posted += a
        status = ObligationStatus.OPEN
    _put_row(blk, status, DEBTOR, leaf_index, rec.obligation, payer_id)  # the RESOLVE leaf proves the outcome
    return Result.OK, history_of(payer_id, payer, clearing, due_to)


def _pair(blk: Block, debit: bytes, credit: bytes, ledger: int,
          clearing_debits: bool) -> tuple[AccountState, AccountState] | Result:
    """The two accounts of a leg, or the result code saying why not (``clearing_debits``: which one is clearing)."""
    dra, cra = blk.account(debit), blk.account(credit)
    clearing, plain = Result.OBLIGATION_CLEARING_ACCOUNT_NOT_FOUND, Result.OBLIGATION_ACCOUNT_NOT_FOUND
    missing_debit, missing_credit = (clearing, plain) if clearing_debits else (plain, clearing)
    if dra is None:
        return missing_debit
    if cra is None:
        return missing_credit
    if dra.ledger != ledger or cra.ledger != ledger:
        return Result.OBLIGATION_LEDGER_MISMATCH
    return dra, cra


def _put_row(blk: Block, status: int, side: int, leaf_index: int, obligation: bytes, payer: bytes) -> None:
    """The obligation's row and its entry in the status index (the old entry goes when the status moves)."""
    txn, oid = blk.txn, obligation[:16]
    old = txn.get(Table.OBLIGATIONS, oid)
    if old is not None and (old[0], old[1]) != (status, side):
        txn.delete(Table.OBLIGATION_STATUS, old[:2] + oid)
    txn.put(Table.OBLIGATIONS, oid, _ROW.pack(status, side, leaf_index) + obligation + payer)
    txn.put(Table.OBLIGATION_STATUS, bytes((status, side)) + oid, b"")


def index_obligations(store: Store) -> int:
    """Build the status index of a store written before it existed (one write transaction); the number of
    obligations indexed (0 on a current store: two reads). Every obligation has exactly one index entry,
    so an empty index beside a non-empty table means the index was never built."""
    with store.read() as rtxn:
        if rtxn.last(Table.OBLIGATIONS) is None or rtxn.last(Table.OBLIGATION_STATUS) is not None:
            return 0
    with store.write() as txn:
        keys = sorted(raw[:2] + oid for oid, raw in txn.range(Table.OBLIGATIONS))
        txn.put_many(Table.OBLIGATION_STATUS, [(k, b"") for k in keys])
    return len(keys)


def obligation_row(txn: ReadTxn, oid: bytes) -> tuple[int, int, int, bytes, bytes] | None:
    """(status, side, leaf index, obligation bytes, payer) of an obligation this region holds."""
    raw = txn.get(Table.OBLIGATIONS, oid)
    if raw is None:
        return None
    status, side, index = _ROW.unpack_from(raw)
    return status, side, index, raw[_ROW.size : _ROW.size + 96], raw[_ROW.size + 96 :]


def obligations_with(txn: ReadTxn, status: ObligationStatus, side: int | None = None,
                     limit: int | None = None) -> list[tuple[int, int, Obligation]]:
    """(side, leaf index, obligation) of the obligations in ``status`` (on ``side`` if given), by side then id,
    at most ``limit``: read through the status index, so settled history costs nothing here."""
    start = bytes((status,)) if side is None else bytes((status, side))
    end = bytes((status + 1,)) if side is None else bytes((status, side + 1))
    out = []
    for key, _ in txn.range(Table.OBLIGATION_STATUS, start, end, limit):
        raw = txn.get(Table.OBLIGATIONS, key[2:])
        invariant(raw is not None and raw[:2] == key[:2], "the obligation status index disagrees with its table")
        assert raw is not None
        _st, row_side, index = _ROW.unpack_from(raw)
        out.append((row_side, index, decode_obligation(raw[_ROW.size : _ROW.size + 96])))
    return out


def apply_settlements(blk: Block, batch: Batch, events: list[Event]) -> None:
    """One leaf for the batch's one record (a canonical settlement batch)."""
    result, touched = _settle(blk, batch.records, blk.next_leaf_index(events))
    events.append(Event(EventKind.SETTLEMENT, result, batch.records, b"", touched))


def _settle(blk: Block, raw: bytes, leaf_index: int) -> tuple[int, tuple[bytes, ...]]:
    verdict = verify_settlement(raw)
    if verdict.batch is None or verdict.failure in _MALFORMED:
        return Result.SETTLEMENT_MALFORMED, ()
    if not verdict.ok:
        return Result.SETTLEMENT_NOT_NETTING, ()
    batch_id = settlement_digest(raw)[:16]
    if blk.txn.get(Table.SETTLEMENTS, batch_id) is not None:
        return Result.SETTLEMENT_EXISTS, ()
    moves: dict[tuple[bytes, bytes], int] = {}
    mine: list[tuple[int, int, bytes, bytes]] = []
    for ob in verdict.batch.obligations:
        row = obligation_row(blk.txn, ob.id)
        if row is None:
            continue  # between two other regions
        status, side, index, obligation, payer = row
        if status != ObligationStatus.OPEN or obligation != ob.encode():
            return Result.SETTLEMENT_OBLIGATION_NOT_OPEN, ()
        mine.append((side, index, obligation, payer))
        settle = settlement_account_id(ob.ledger)
        pair = ((clearing_account_id("due-to", ob.creditor, ob.ledger), settle) if side == DEBTOR
                else (settle, clearing_account_id("due-from", ob.debtor, ob.ledger)))
        moves[pair] = moves.get(pair, 0) + ob.amount
    if not mine:
        return Result.SETTLEMENT_NOT_INVOLVED, ()
    result = _check_moves(blk, moves)
    if result != Result.OK:
        return result, ()
    touched: list[bytes] = []
    for (debit, credit), amount in sorted(moves.items()):
        dra, cra = blk.account(debit), blk.account(credit)
        assert dra is not None and cra is not None
        dra.debits_posted += amount
        cra.credits_posted += amount
        touched += [t for t in history_of(debit, dra, credit, cra) if t not in touched]
    for side, index, obligation, payer in mine:
        _put_row(blk, ObligationStatus.SETTLED, side, index, obligation, payer)
    blk.txn.put(Table.SETTLEMENTS, batch_id, U64BE.pack(leaf_index))
    return Result.OK, tuple(touched)


def _check_moves(blk: Block, moves: dict[tuple[bytes, bytes], int]) -> Result:
    """Every account exists and no balance overflows, summed over all moves (nothing is applied yet)."""
    debits: dict[bytes, int] = {}
    credits: dict[bytes, int] = {}
    for (debit, credit), amount in moves.items():
        debits[debit] = debits.get(debit, 0) + amount
        credits[credit] = credits.get(credit, 0) + amount
    for aid in set(debits) | set(credits):
        a = blk.account(aid)
        if a is None:
            return Result.SETTLEMENT_ACCOUNT_NOT_FOUND
        if a.debits_pending + a.debits_posted + debits.get(aid, 0) > U128_MAX:
            return Result.OVERFLOWS_DEBITS
        if a.credits_pending + a.credits_posted + credits.get(aid, 0) > U128_MAX:
            return Result.OVERFLOWS_CREDITS
    return Result.OK


def settlement_leaf(txn: ReadTxn, batch_id: bytes) -> int | None:
    """The leaf index of an applied settlement batch in this log."""
    raw = txn.get(Table.SETTLEMENTS, batch_id)
    return None if raw is None else int(U64BE.unpack(raw)[0])
