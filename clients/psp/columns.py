"""Canonical transfer records from columns (numpy arrays), without a Python object per transfer.

``TRANSFER_DTYPE`` is the 176-byte transfer record of ``docs/formats.md`` as a numpy structured
type: a u128 is two little-endian u64 words (low word first), so an array of it *is* a packed
buffer of canonical records. ``encode_transfers`` fills one from columns and checks every value's
range the way ``ledger.codec.encode_transfer`` does, and ``id_columns`` spreads a block of ids
reserved from ``clients.ids`` into those words.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np
import numpy.typing as npt

from ledger.codec import TRANSFER_SIZE, encode_transfer
from ledger.types import Transfer

TRANSFER_DTYPE: Final = np.dtype([
    ("id", "<u8", (2,)), ("debit_account_id", "<u8", (2,)), ("credit_account_id", "<u8", (2,)),
    ("amount", "<u8", (2,)), ("pending_id", "<u8", (2,)), ("user_data", "<u8", (2,)),
    ("external_ref", "V32"), ("pii_commitment", "V32"),
    ("ledger", "<u4"), ("psp_id", "<u4"), ("timeout_s", "<u4"), ("code", "<u2"), ("flags", "<u2"),
])
if TRANSFER_DTYPE.itemsize != TRANSFER_SIZE:  # pragma: no cover - a layout change must fail loudly
    raise ImportError(f"TRANSFER_DTYPE is {TRANSFER_DTYPE.itemsize} bytes, the record {TRANSFER_SIZE}")

Column = int | npt.ArrayLike
_U64_MAX: Final = (1 << 64) - 1


def _column(value: Column, n: int, limit: int, name: str) -> npt.NDArray[np.uint64]:
    """``value`` (a scalar or n values) as n unsigned integers, each checked to be in 0..limit."""
    a = np.asarray(value)
    if a.ndim > 1 or (a.ndim == 1 and len(a) != n):
        raise ValueError(f"{name}: expected {n} values, got shape {a.shape}")
    if a.dtype.kind not in "iub":
        raise ValueError(f"{name}: integers required, got {a.dtype}")
    if a.size and ((a.dtype.kind == "i" and int(a.min()) < 0) or int(a.max()) > limit):
        raise ValueError(f"{name} must be in 0..{limit}")
    return np.broadcast_to(a.astype(np.uint64), (n,))


def id_columns(first: int, n: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(low words, high words) of the n consecutive u128 ids ``first``, ``first + 1`` …"""
    if first < 0 or first + n - 1 >> 128:
        raise ValueError("ids must fit 128 bits")
    lo0 = np.uint64(first & _U64_MAX)
    lo = lo0 + np.arange(n, dtype=np.uint64)  # wraps modulo 2^64 …
    hi = np.uint64(first >> 64) + (lo < lo0).astype(np.uint64)  # … and carries into the high word
    return lo, hi


def encode_transfers(*, id_lo: Column, id_hi: Column = 0, debit_account_id: Column, credit_account_id: Column,
                     amount: Column, ledger: Column, code: Column, psp_id: Column = 0, flags: Column = 0,
                     timeout_s: Column = 0, user_data: Column = 0, account_id_hi: Column = 0,
                     n: int | None = None) -> bytes:
    """Packed canonical transfer records (n × 176 bytes) from columns; scalars apply to every row.

    Account ids are given as their low u64 word plus ``account_id_hi``, the high word of both
    accounts (e.g. a PSP's own accounts, ``ledger.ownership``); amounts and ``user_data`` as u64;
    ``pending_id``, ``external_ref`` and ``pii_commitment`` are zero. For anything else build
    ``Transfer`` objects or fill a ``TRANSFER_DTYPE`` array directly.
    """
    if n is None:
        n = len(np.asarray(id_lo))
    rec = np.zeros(n, dtype=TRANSFER_DTYPE)
    rec["id"][:, 0] = _column(id_lo, n, _U64_MAX, "id_lo")
    rec["id"][:, 1] = _column(id_hi, n, _U64_MAX, "id_hi")
    rec["debit_account_id"][:, 0] = _column(debit_account_id, n, _U64_MAX, "debit_account_id")
    rec["credit_account_id"][:, 0] = _column(credit_account_id, n, _U64_MAX, "credit_account_id")
    hi = _column(account_id_hi, n, _U64_MAX, "account_id_hi")
    rec["debit_account_id"][:, 1] = hi
    rec["credit_account_id"][:, 1] = hi
    rec["amount"][:, 0] = _column(amount, n, _U64_MAX, "amount")
    rec["user_data"][:, 0] = _column(user_data, n, _U64_MAX, "user_data")
    rec["ledger"] = _column(ledger, n, 0xFFFF_FFFF, "ledger")
    rec["psp_id"] = _column(psp_id, n, 0xFFFF_FFFF, "psp_id")
    rec["timeout_s"] = _column(timeout_s, n, 0xFFFF_FFFF, "timeout_s")
    rec["code"] = _column(code, n, 0xFFFF, "code")
    rec["flags"] = _column(flags, n, 0xFFFF, "flags")
    return rec.tobytes()


def transfer_ids(records: bytes) -> list[int]:
    """The u128 ids of a packed buffer of transfer records, in order."""
    words = np.frombuffer(records, dtype=TRANSFER_DTYPE)["id"]
    return [lo | hi << 64 for lo, hi in words.tolist()]


__all__ = ["TRANSFER_DTYPE", "encode_transfers", "id_columns", "transfer_ids"]


# -- one record from one object, fast ------------------------------------------------------------------

_WORDS: Final = struct.Struct("<QQQQQQQQQQQQ32s32sIIIHH")  # the record with every u128 as two u64 words
if _WORDS.size != TRANSFER_SIZE:  # pragma: no cover
    raise ImportError("the word layout of the transfer record is not 176 bytes")


def encode_transfer_fast(t: Transfer) -> bytes:
    """``ledger.codec.encode_transfer``, byte for byte, in one ``struct.pack`` (the per-object API's
    encoder). ``struct`` range-checks every word, so an out-of-range value (negative, beyond u128, a
    u32 field beyond 2^32 − 1 …) falls back to ``encode_transfer``, which raises its precise error."""
    ext, pii = t.external_ref, t.pii_commitment
    if len(ext) > 32 or (pii and len(pii) != 32):
        return encode_transfer(t)
    m = _U64_MAX
    try:
        return _WORDS.pack(t.id & m, t.id >> 64, t.debit_account_id & m, t.debit_account_id >> 64,
                           t.credit_account_id & m, t.credit_account_id >> 64, t.amount & m, t.amount >> 64,
                           t.pending_id & m, t.pending_id >> 64, t.user_data & m, t.user_data >> 64, ext, pii,
                           t.ledger, t.psp_id, t.timeout_s, t.code, t.flags)
    except (struct.error, TypeError):
        return encode_transfer(t)
