"""Reconciliation records: exception records, rounding-account sums, and the report over them.

The state machine (ledger/state.py) matches settlement callbacks against transfers and writes
these records in the block's transaction; this module defines their bytes and reads them back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from ledger.store import ReadTxn

# exception kinds (the first byte of an `exceptions` value)
EXC_RULE_FLAG: Final = 1
EXC_RULE_HOLD: Final = 2
EXC_OUTSIDE_TOLERANCE: Final = 3
EXC_LATE_AFTER_EXPIRY: Final = 4
EXC_EXPIRED_UNRECONCILED: Final = 5
EXC_TRANSFER_NOT_FOUND: Final = 6
EXC_ALREADY_RECONCILED: Final = 7
EXC_NOT_RECONCILABLE: Final = 8
EXC_RESIDUAL_FAILED: Final = 9
EXC_PSP_MISMATCH: Final = 10
EXC_NAMES: Final = {
    EXC_RULE_FLAG: "rule_flag", EXC_RULE_HOLD: "rule_hold", EXC_OUTSIDE_TOLERANCE: "outside_tolerance",
    EXC_LATE_AFTER_EXPIRY: "late_after_expiry", EXC_EXPIRED_UNRECONCILED: "expired_unreconciled",
    EXC_TRANSFER_NOT_FOUND: "transfer_not_found", EXC_ALREADY_RECONCILED: "already_reconciled",
    EXC_NOT_RECONCILABLE: "not_reconcilable", EXC_RESIDUAL_FAILED: "residual_failed",
    EXC_PSP_MISMATCH: "psp_mismatch",
}

# reconciliation status in the callback leaf's aux (tag 3)
RECON_EXACT: Final = 1
RECON_TOLERANCE: Final = 2
RECON_EXCEPTION: Final = 3

# kind, transfer id (16, LE as in records), expected u128, observed u128, block timestamp, id length; then id
EXC_STRUCT: Final = struct.Struct("<B16s16s16sQB")
# debits u128, credits u128, count
ROUNDING_STRUCT: Final = struct.Struct("<16s16sQ")
DAY_NS: Final = 86_400 * 1_000_000_000


def encode_exception(kind: int, transfer_id: bytes, expected: int, observed: int, ts: int,
                     rule_id: bytes = b"") -> bytes:
    return EXC_STRUCT.pack(kind, transfer_id, expected.to_bytes(16, "little"), observed.to_bytes(16, "little"),
                           ts, len(rule_id)) + rule_id


@dataclass(frozen=True, slots=True)
class ExceptionRecord:
    leaf_index: int
    kind: int
    transfer_id: int
    expected: int
    observed: int
    timestamp_ns: int
    rule_id: str

    def to_json(self) -> dict[str, Any]:
        return {"leaf_index": self.leaf_index, "kind": EXC_NAMES.get(self.kind, str(self.kind)),
                "transfer_id": str(self.transfer_id), "expected": str(self.expected),
                "observed": str(self.observed), "timestamp_ns": self.timestamp_ns, "rule_id": self.rule_id}


def decode_exception(leaf_index: int, raw: bytes) -> ExceptionRecord:
    kind, tid, exp, obs, ts, n = EXC_STRUCT.unpack_from(raw)
    rid = raw[EXC_STRUCT.size : EXC_STRUCT.size + n].decode("utf-8")
    return ExceptionRecord(leaf_index, kind, int.from_bytes(tid, "little"), int.from_bytes(exp, "little"),
                           int.from_bytes(obs, "little"), ts, rid)


def encode_rounding(debits: int, credits: int, count: int) -> bytes:
    return ROUNDING_STRUCT.pack(debits.to_bytes(16, "little"), credits.to_bytes(16, "little"), count)


def decode_rounding(raw: bytes) -> tuple[int, int, int]:
    d, c, n = ROUNDING_STRUCT.unpack(raw)
    return int.from_bytes(d, "little"), int.from_bytes(c, "little"), n


@dataclass(frozen=True, slots=True)
class RoundingRow:
    account_id: int
    day: int  # days since the Unix epoch, in leader time
    debits: int
    credits: int
    count: int

    @property
    def net(self) -> int:
        """credits − debits: zero when the period's residual postings net out."""
        return self.credits - self.debits

    def to_json(self) -> dict[str, Any]:
        return {"account_id": str(self.account_id), "day": self.day, "debits": str(self.debits),
                "credits": str(self.credits), "net": str(self.net), "count": self.count}


def report(txn: ReadTxn, exceptions_limit: int = 1000) -> dict[str, Any]:
    """Rounding accounts per period (day) and their totals, plus the open exceptions."""
    rows = []
    totals: dict[int, int] = {}
    for key, value in txn.range("rounding"):
        d, c, n = decode_rounding(value)
        row = RoundingRow(int.from_bytes(key[:16], "little"), int.from_bytes(key[16:], "big"), d, c, n)
        rows.append(row)
        totals[row.account_id] = totals.get(row.account_id, 0) + row.net
    exceptions = [decode_exception(int.from_bytes(k, "big"), v)
                  for k, v in txn.range("exceptions", limit=exceptions_limit)]
    return {
        "rounding": [r.to_json() for r in rows],
        "rounding_totals": {str(k): str(v) for k, v in sorted(totals.items())},
        "open_exceptions": [e.to_json() for e in exceptions],
    }
