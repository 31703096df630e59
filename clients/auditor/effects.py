"""Balance effects of the log's ok entries other than plain transfers: accounts, two-phase transfers,
expiry, settlement callbacks, ledger transfers. Replayed from the *recorded* results (effects only,
never decisions). Pure; feeds ``clients.auditor.balances.Balances``.

A change is one signed int over an account's four u128 fields, in account-state order:
debits_pending (bits 0-127), debits_posted (128-255), credits_pending (256-383), credits_posted
(384-511).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from clients.auditor.balances import ID_SIZE, Balances
from clients.auditor.failures import BalanceMismatch
from ledger.codec import AUX_LEN, AUX_TAG_RECONCILE, LEAF_HEADER_SIZE, iter_aux
from ledger.netting import (
    OBLIGATION_SIZE,
    Role,
    Verdict,
    clearing_account_id,
    decode_obligation,
    decode_settlement,
    settlement_account_id,
)
from ledger.types import EventKind, TransferFlags

# bit offset of each u128 field in a change (debits_pending is at 0)
DEBITS_POSTED, CREDITS_PENDING, CREDITS_POSTED = 128, 256, 384
_F_PENDING, _F_POST, _F_VOID = (int(f) for f in (TransferFlags.PENDING, TransferFlags.POST_PENDING_TRANSFER,
                                                 TransferFlags.VOID_PENDING_TRANSFER))
# A transfer body (ledger.codec.TRANSFER_STRUCT) from its start: id, debit, credit, amount lo, amount hi,
# pending id, then user data, external ref, PII commitment, ledger, PSP id, timeout, code (94 bytes skipped), flags.
TRANSFER_HEAD: Final = struct.Struct("<16s16s16sQQ16s94xH")
_RECONCILE_ID: Final = slice(1, 1 + ID_SIZE)  # reconcile aux: status u8, then the transfer id


def unknown_account(index: int, aid: bytes) -> BalanceMismatch:
    return BalanceMismatch(
        f"leaf {index}: result ok but account {int.from_bytes(aid, 'little')} was never created in the log",
        index=index, account=int.from_bytes(aid, "little"))


class Effects:
    """Applies one ok leaf's effect; keeps the pending transfers (id -> debit row, credit row, amount)."""

    def __init__(self, balances: Balances) -> None:
        self.balances = balances
        self.pending: dict[bytes, tuple[int, int, int]] = {}
        self.obligations: dict[bytes, tuple[bool, bytes]] = {}  # open ones: id -> (this log is the debtor, bytes)
        self._initiated: dict[bytes, tuple[int, int, int, bytes]] = {}  # pending legs: debit, credit, amount, bytes
        self._by_kind: dict[int, Callable[[int, int, bytes, int, bool], None]] = {
            EventKind.CREATE_ACCOUNT: self._account, EventKind.CREATE_TRANSFER: self._transfer,
            EventKind.LEDGER_TRANSFER: self._ledger_transfer, EventKind.EXPIRE_PENDING: self._expire,
            EventKind.SETTLEMENT_CALLBACK: self._callback, EventKind.OBLIGATION: self._obligation,
            EventKind.SETTLEMENT: self._settlement,
        }

    def apply(self, index: int, ts: int, kind: int, raw: bytes, blen: int, held: bool) -> None:
        fn = self._by_kind.get(kind)
        if fn is not None:
            fn(index, ts, raw, blen, held)

    def row(self, aid: bytes, index: int) -> int:
        r = self.balances.index.get(aid)
        if r is None:
            raise unknown_account(index, aid)
        return r

    def _move(self, debit: int, credit: int, debit_change: int, credit_change: int) -> None:
        add = self.balances.add_packed
        add(debit, debit_change)
        add(credit, credit_change)

    def _account(self, index: int, ts: int, raw: bytes, blen: int, held: bool) -> None:
        body = raw[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + blen]
        if not self.balances.create(body[:ID_SIZE], body, ts):
            raise BalanceMismatch(f"leaf {index}: account {int.from_bytes(body[:ID_SIZE], 'little')} created twice",
                                  index=index)

    def _transfer(self, index: int, ts: int, raw: bytes, blen: int, held: bool) -> None:
        tid, dr, cr, lo, hi, pid, fl = TRANSFER_HEAD.unpack_from(raw, LEAF_HEADER_SIZE)
        amount = lo | hi << 64
        if fl & (_F_POST | _F_VOID):
            p = self.pending.pop(pid, None)
            if p is None:
                raise BalanceMismatch(
                    f"leaf {index}: result ok posts/voids pending transfer {int.from_bytes(pid, 'little')}, "
                    "which the log does not show as pending", index=index, pending_id=pid)
            pdr, pcr, pamt = p
            amt = (amount or pamt) if fl & _F_POST else 0
            self._move(pdr, pcr, (amt << DEBITS_POSTED) - pamt,
                       (amt << CREDITS_POSTED) - (pamt << CREDITS_PENDING))
        elif fl & _F_PENDING or held:
            d, c = self.row(dr, index), self.row(cr, index)
            self._move(d, c, amount, amount << CREDITS_PENDING)
            self.pending[tid] = (d, c, amount)
        else:
            self._move(self.row(dr, index), self.row(cr, index), amount << DEBITS_POSTED, amount << CREDITS_POSTED)

    def _ledger_transfer(self, index: int, ts: int, raw: bytes, blen: int, held: bool) -> None:
        _tid, dr, cr, lo, hi, _pid, _fl = TRANSFER_HEAD.unpack_from(raw, LEAF_HEADER_SIZE)
        amount = lo | hi << 64
        self._move(self.row(dr, index), self.row(cr, index), amount << DEBITS_POSTED, amount << CREDITS_POSTED)

    def _expire(self, index: int, ts: int, raw: bytes, blen: int, held: bool) -> None:
        tid = raw[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + blen]
        p = self.pending.pop(tid, None)
        if p is None:
            raise BalanceMismatch(f"leaf {index}: expires transfer {int.from_bytes(tid, 'little')}, which the "
                                  "log does not show as pending", index=index, pending_id=tid)
        self._move(p[0], p[1], -p[2], -(p[2] << CREDITS_PENDING))

    def _callback(self, index: int, ts: int, raw: bytes, blen: int, held: bool) -> None:
        for tag, value in iter_aux(raw[LEAF_HEADER_SIZE + blen + AUX_LEN.size :]):
            if tag == AUX_TAG_RECONCILE and len(value) >= _RECONCILE_ID.stop:
                p = self.pending.pop(value[_RECONCILE_ID], None)
                if p is not None:  # settlement confirms a pending transfer: posted in full
                    self._move(p[0], p[1], (p[2] << DEBITS_POSTED) - p[2],
                               (p[2] << CREDITS_POSTED) - (p[2] << CREDITS_PENDING))

    def _obligation(self, index: int, ts: int, raw: bytes, blen: int, held: bool) -> None:
        """A cross-region leg (docs/formats.md §16): pending payer leg, creditor's decision, or the resolution."""
        body = raw[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + blen]
        ob = decode_obligation(body[:OBLIGATION_SIZE])
        role, verdict, payer = body[96], body[97], body[112:128]
        a = ob.amount
        if role == Role.INITIATE:
            d, c = self.row(payer, index), self.row(clearing_account_id("due-to", ob.creditor, ob.ledger), index)
            self._move(d, c, a, a << CREDITS_PENDING)
            self._initiated[ob.id] = (d, c, a, b"")
        elif role == Role.ACCEPT:
            d = self.row(clearing_account_id("due-from", ob.debtor, ob.ledger), index)
            self._move(d, self.row(ob.payee, index), a << DEBITS_POSTED, a << CREDITS_POSTED)
            self.obligations[ob.id] = (False, body[:OBLIGATION_SIZE])
        else:
            leg = self._initiated.pop(ob.id, None)
            if leg is None:
                raise BalanceMismatch(f"leaf {index}: resolves obligation {ob.id.hex()}, which the log does not "
                                      "show as pending", index=index)
            post = a if verdict == Verdict.ACCEPTED else 0
            self._move(leg[0], leg[1], (post << DEBITS_POSTED) - a, (post << CREDITS_POSTED) - (a << CREDITS_PENDING))
            if post:
                self.obligations[ob.id] = (True, body[:OBLIGATION_SIZE])

    def _settlement(self, index: int, ts: int, raw: bytes, blen: int, held: bool) -> None:
        """Every obligation of this log in the batch leaves its clearing account for the settlement account."""
        for ob in decode_settlement(raw[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + blen]).obligations:
            mine = self.obligations.pop(ob.id, None)
            if mine is None:
                continue
            settle = self.row(settlement_account_id(ob.ledger), index)
            a = ob.amount
            if mine[0]:
                self._move(self.row(clearing_account_id("due-to", ob.creditor, ob.ledger), index), settle,
                           a << DEBITS_POSTED, a << CREDITS_POSTED)
            else:
                self._move(settle, self.row(clearing_account_id("due-from", ob.debtor, ob.ledger), index),
                           a << DEBITS_POSTED, a << CREDITS_POSTED)
