"""Balances replayed from the log's recorded effects, in one table whose rows are state-hash entries.

A row is exactly what the block's state hash covers for one account (docs/formats.md: state
hash, account state): ``id (16) ‖ account record (64) ‖ debits_pending, debits_posted, credits_pending,
credits_posted (4 × u128 LE) ‖ creation timestamp (u64 LE)`` — 152 bytes. So the state hash body of a
block is the changed rows, sorted by id, as one ``tobytes()``; the account state the node serves is
a row without its id.

Two ways in, one result:
- ``add_posted``: a block of plain single-phase transfers in bulk (numpy; integer limbs, never
  floats). Amounts are split into 32-bit limbs so per-account sums cannot overflow a u64, then
  added into the u128 fields with explicit carries.
- ``add_packed``: any other effect (two-phase, expiry, settlement, ledger transfers) as one signed
  Python int over the four fields (``amount << 128`` is debits_posted, …), applied when the block's
  state is settled. A field that leaves u128 is reported naming the account.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from clients.auditor.idtable import IdTable
from ledger.codec import ACCOUNT_SIZE

ID_SIZE: Final = 16
ROW_SIZE: Final = ID_SIZE + ACCOUNT_SIZE + 64 + 8  # 152
_BAL: Final = slice((ID_SIZE + ACCOUNT_SIZE) // 8, (ID_SIZE + ACCOUNT_SIZE + 64) // 8)  # u64 words 10-17 of a row
_ZERO_BALANCES: Final = bytes(64)
# u64 word of each u128 field's low half inside the balances
DEBITS_POSTED: Final = 2
CREDITS_POSTED: Final = 6
_M32: Final = np.uint64(0xFFFF_FFFF)
_S32: Final = np.uint64(32)
_U512: Final = 512

IntArray = npt.NDArray[np.intp]
U64Array = npt.NDArray[np.uint64]


class OutOfRange(Exception):
    """Replaying the effects took an account's balances outside u128 (``account``: its id)."""

    def __init__(self, account: bytes) -> None:
        self.account = account
        super().__init__(account.hex())


class Balances:
    """Account rows by id, the balances as of the last settled block, and this block's pending changes."""

    def __init__(self) -> None:
        self.rows = np.zeros((0, ROW_SIZE), np.uint8)  # a row's bytes; ``bal`` views words 10-17 as u64
        self.bal = self.rows.view(np.uint64)[:, _BAL]
        self.rank = np.zeros(0, np.intp)  # each row's position in id (byte) order: the state hash order
        self._table = IdTable(np.zeros((0, 2), np.uint64))  # bulk id -> row lookup
        self.settled = np.zeros((0, 8), np.uint64)  # balances at the last state hash
        self.count = 0
        self.index: dict[bytes, int] = {}
        self._new: list[bytes] = []  # rows created in this block, not yet in the table
        self._fresh: list[int] = []  # rows created in this block
        self._bulk: list[IntArray] = []  # rows touched by add_posted in this block
        self._packed: dict[int, int] = {}  # row -> signed change over the four fields, this block
        self._carry: list[int] = []  # rows whose bulk sums overflowed a u128 field

    # -- accounts -----------------------------------------------------------------------------------

    def create(self, aid: bytes, record: bytes, ts: int) -> bool:
        """A new account row (balances zero); False if the id exists."""
        if aid in self.index:
            return False
        r = self.index[aid] = self.count
        self.count = r + 1
        self._new.append(aid + record + _ZERO_BALANCES + ts.to_bytes(8, "little"))
        self._fresh.append(r)
        return True

    def _flush(self) -> None:
        """Write the rows created since the last flush into the table (grown by doubling)."""
        first = self.count - len(self._new)
        if self.count > len(self.rows):
            cap = max(1024, 2 * self.count)
            self.rows = np.concatenate((self.rows, np.zeros((cap - len(self.rows), ROW_SIZE), np.uint8)))
            self.bal = self.rows.view(np.uint64)[:, _BAL]
            self.settled = np.concatenate((self.settled, np.zeros((cap - len(self.settled), 8), np.uint64)))
        new = np.frombuffer(b"".join(self._new), np.uint8).reshape(-1, ROW_SIZE)
        self.rows[first : self.count] = new
        self._new = []
        ids = self.rows[: self.count, :ID_SIZE]
        be = ids.copy().view(">u8")  # an id's byte order is its big-endian order
        self.rank = np.empty(self.count, np.intp)
        self.rank[np.lexsort((be[:, 1], be[:, 0]))] = np.arange(self.count)
        self._table = IdTable(ids.copy().view("<u8"))

    def rows_of(self, ids: npt.NDArray[np.void]) -> IntArray | None:
        """Rows of 16-byte ids in bulk; None when one is unknown (then ask ``index``, which names it)."""
        if self._new:
            self._flush()
        return self._table.lookup(np.ascontiguousarray(ids).view("<u8").reshape(-1, 2))

    def states(self) -> dict[bytes, bytes]:
        """Replayed 136-byte account states by id (what LookupAccounts must return)."""
        self._flush()
        raw = self.rows[: self.count].tobytes()
        w = ROW_SIZE
        return {raw[o : o + ID_SIZE]: raw[o + ID_SIZE : o + w] for o in range(0, len(raw), w)}

    # -- changes ----------------------------------------------------------------------------------

    def add_packed(self, row: int, change: int) -> None:
        p = self._packed
        p[row] = p.get(row, 0) + change

    def add_posted(self, debit_rows: IntArray, credit_rows: IntArray, lo: U64Array, hi: U64Array) -> None:
        """Plain transfers in bulk: amount (lo, hi u64) to debits_posted of each debit row and
        credits_posted of each credit row (rows may repeat): per-row sums of 32-bit limbs (a sort and
        ``add.reduceat``, exact in u64 for fewer than 2^32 transfers), then one carrying add per row."""
        if self._new:
            self._flush()
        limbs = (lo & _M32, lo >> _S32, hi & _M32, hi >> _S32)
        for rows, field in ((debit_rows, DEBITS_POSTED), (credit_rows, CREDITS_POSTED)):
            order = np.argsort(rows, kind="stable")
            ordered = rows[order]
            starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
            sums = np.stack([np.add.reduceat(limb[order], starts) for limb in limbs])
            touched = ordered[starts]
            self._add_u128(touched, field, sums)
            self._bulk.append(touched)

    def _add_u128(self, rows: IntArray, field: int, sums: U64Array) -> None:
        """Add per-row sums of 32-bit limbs (each < 2^64) into the u128 field at limb ``field``."""
        bal = self.bal
        lo, hi = bal[rows, field], bal[rows, field + 1]
        x0 = (lo & _M32) + sums[0]
        x1 = (lo >> _S32) + sums[1] + (x0 >> _S32)
        x2 = (hi & _M32) + sums[2] + (x1 >> _S32)
        x3 = (hi >> _S32) + sums[3] + (x2 >> _S32)
        bal[rows, field] = (x0 & _M32) | ((x1 & _M32) << _S32)
        bal[rows, field + 1] = (x2 & _M32) | ((x3 & _M32) << _S32)
        over = (x3 >> _S32) != 0
        if over.any():
            self._carry.extend(rows[over].tolist())

    # -- end of block -----------------------------------------------------------------------------

    def settle(self) -> bytes:
        """Apply this block's packed changes; return the state hash body: the rows created or changed
        since the last settle, by id. Raises ``OutOfRange`` naming the lowest such account id."""
        if self._new:
            self._flush()
        bal = self.bal
        bad = list(self._carry)
        for r, change in self._packed.items():
            value = int.from_bytes(bal[r].tobytes(), "little") + change
            if value < 0 or value >> _U512:
                bad.append(r)
            else:
                bal[r] = np.frombuffer(value.to_bytes(64, "little"), np.uint64)
        if bad:
            raise OutOfRange(self.rows[min(bad, key=self.rank.__getitem__), :ID_SIZE].tobytes())
        parts = [*self._bulk, np.fromiter(self._packed, np.intp, len(self._packed)), np.array(self._fresh, np.intp)]
        touched = np.concatenate(parts)  # may repeat a row: dropped after sorting
        differs = (bal[touched] != self.settled[touched]).any(axis=1)
        if self._fresh:
            is_fresh = np.zeros(self.count, bool)
            is_fresh[self._fresh] = True
            differs |= is_fresh[touched]
        changed = touched[differs]
        changed = changed[np.argsort(self.rank[changed])]
        if len(changed) > 1:
            changed = changed[np.concatenate(([True], changed[1:] != changed[:-1]))]
        self.settled[changed] = bal[changed]
        self._fresh, self._bulk, self._packed, self._carry = [], [], {}, []
        body: bytes = self.rows[changed].tobytes()
        return body
