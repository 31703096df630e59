"""Synthetic micro-payment workloads: accounts and transfer records, generated fast and reproducibly.

Amounts are integers in minor units drawn from a micro-payment mix (mostly cents, a long tail up
to a few dollars); ids are unique and deterministic for a seed, so a re-run re-sends the same ids.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from clients.ids import reserve_ids
from clients.psp.columns import encode_transfers, id_columns
from ledger.codec import ACCOUNT_STRUCT, TRANSFER_STRUCT

LEDGER_USD = 840
ACCOUNT_CODE = 1
TRANSFER_CODE = 1
_ZERO16 = bytes(16)
_ZERO32 = bytes(32)
_RES23 = bytes(23)


def account_records(n: int, first_id: int = 1, ledger: int = LEDGER_USD, flags: int = 0) -> bytes:
    return b"".join(
        ACCOUNT_STRUCT.pack((first_id + i).to_bytes(16, "little"), _ZERO16, ledger, ACCOUNT_CODE, flags, 2,
                            _RES23)
        for i in range(n)
    )


def micro_amount(rng: random.Random) -> int:
    """Cents: 70% 1–99, 25% 100–499, 5% 500–2000."""
    x = rng.random()
    if x < 0.70:
        return rng.randint(1, 99)
    if x < 0.95:
        return rng.randint(100, 499)
    return rng.randint(500, 2000)


@dataclass
class TransferGenerator:
    accounts: int
    first_account_id: int = 1
    first_transfer_id: int = 1 << 64  # well away from account ids, for readability
    seed: int = 1
    psps: int = 4
    ledger: int = LEDGER_USD

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._next_id = self.first_transfer_id
        self._acct = [(self.first_account_id + i).to_bytes(16, "little") for i in range(self.accounts)]

    def records(self, n: int) -> tuple[bytes, list[tuple[int, int, int, int]]]:
        """n transfer records and, per record, (id, debit, credit, amount) for models and checks."""
        rng = self._rng
        pack = TRANSFER_STRUCT.pack
        acct = self._acct
        na = self.accounts
        out = []
        meta = []
        for _ in range(n):
            dr = rng.randrange(na)
            cr = rng.randrange(na - 1)
            if cr >= dr:
                cr += 1
            amount = micro_amount(rng)
            tid = self._next_id
            self._next_id += 1
            out.append(pack(tid.to_bytes(16, "little"), acct[dr], acct[cr], amount, 0, _ZERO16, _ZERO16,
                            _ZERO32, _ZERO32, self.ledger, 1 + tid % self.psps, 0, TRANSFER_CODE, 0))
            meta.append((tid, self.first_account_id + dr, self.first_account_id + cr, amount))
        return b"".join(out), meta

    def batches(self, total: int, per_batch: int) -> Iterator[tuple[bytes, list[tuple[int, int, int, int]]]]:
        sent = 0
        while sent < total:
            n = min(per_batch, total - sent)
            yield self.records(n)
            sent += n


def micro_amounts(rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    """``micro_amount``'s mix, n at a time: 70% 1–99, 25% 100–499, 5% 500–2000 cents."""
    x = rng.random(n)
    return np.where(x < 0.70, rng.integers(1, 100, n), np.where(x < 0.95, rng.integers(100, 500, n),
                                                               rng.integers(500, 2001, n)))


@dataclass
class ColumnarPayments:
    """Micro-payments as packed canonical records, built from numpy columns (no object per payment):
    fresh time-ordered ids (``clients.ids``), uniform distinct accounts, ``psps`` PSP ids."""

    accounts: int
    first_account_id: int = 1
    psps: int = 4
    seed: int | None = None
    ledger: int = LEDGER_USD
    psp_id: int | None = None  # every payment from this one PSP id (a TLS client's own), else 1..psps
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        if self.accounts < 2:
            raise ValueError("at least two accounts are needed")
        self.rng = np.random.default_rng(self.seed)

    def records(self, n: int) -> bytes:
        rng = self.rng
        lo, hi = id_columns(reserve_ids(n), n)
        dr = rng.integers(0, self.accounts, n)
        cr = rng.integers(0, self.accounts - 1, n)
        cr += cr >= dr  # never the debit account
        first_lo, first_hi = self.first_account_id & ((1 << 64) - 1), self.first_account_id >> 64
        if first_lo + self.accounts > 1 << 64:
            raise ValueError("the account range must not cross a 64-bit word boundary")
        return encode_transfers(id_lo=lo, id_hi=hi, debit_account_id=dr.astype(np.uint64) + np.uint64(first_lo),
                                credit_account_id=cr.astype(np.uint64) + np.uint64(first_lo), account_id_hi=first_hi,
                                amount=micro_amounts(rng, n),
                                ledger=self.ledger, code=TRANSFER_CODE,
                                psp_id=self.psp_id if self.psp_id is not None else rng.integers(1, self.psps + 1, n))
