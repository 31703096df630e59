"""Apply PII erasure events: the log records that a subject's data was destroyed (commitment + reason).

An ERASE_SUBJECT record (48 bytes, ledger/pii.py) carries no personal data. Applying it marks the
commitment as erased in two tables written in the block's one transaction, so the fact travels
with snapshots: a replica that was down learns it either by replaying the entry or by installing a
store copy, and its vault then shreds the subject's key and record (node/vault_node.py). The read
helpers (``erasure_of``, ``erasures_after``) are what the node's vault asks. Erasure
changes no balance and no transfer: every proof over the log stays valid.
"""

from __future__ import annotations

import struct
from typing import Final

from ledger.apply.scratch import Block, Event
from ledger.codec import Batch
from ledger.pii import ERASURE_SIZE, ErasureReason, PiiError, decode_erasure
from ledger.schema import U64BE, Table
from ledger.store import ReadTxn, WriteTxn
from ledger.types import EventKind, Result

_ERASED_VALUE: Final = struct.Struct(">QH")  # Table.PII_ERASED value: block height, reason


def apply_erasures(blk: Block, batch: Batch, events: list[Event]) -> None:
    """One leaf per 48-byte record, in order; OK ones are recorded in both erasure tables."""
    records = batch.records
    for i in range(len(records) // ERASURE_SIZE):
        raw = records[i * ERASURE_SIZE : (i + 1) * ERASURE_SIZE]
        events.append(Event(EventKind.ERASE_SUBJECT, _erase(blk.txn, blk.height, raw), raw, b"", ()))


def _erase(txn: WriteTxn, height: int, raw: bytes) -> int:
    if raw[34:] != bytes(14):
        return Result.RESERVED_FIELD
    try:
        commitment, reason = decode_erasure(raw)
    except PiiError:
        return Result.ERASURE_REASON_UNKNOWN
    if commitment == bytes(32):
        return Result.ID_MUST_NOT_BE_ZERO
    if txn.get(Table.PII_ERASED, commitment) is not None:
        return Result.SUBJECT_ALREADY_ERASED
    txn.put(Table.PII_ERASED, commitment, _ERASED_VALUE.pack(height, reason))
    txn.put(Table.PII_ERASURES, U64BE.pack(height) + commitment, int(reason).to_bytes(2, "little"))
    return Result.OK


def erasure_of(txn: ReadTxn, commitment: bytes) -> tuple[int, ErasureReason] | None:
    """(block height, reason) if the log has erased this commitment."""
    raw = txn.get(Table.PII_ERASED, commitment)
    if raw is None:
        return None
    height, reason = _ERASED_VALUE.unpack(raw)
    return height, ErasureReason(reason)


def erasures_after(txn: ReadTxn, height: int) -> list[tuple[int, bytes, int]]:
    """(block height, commitment, reason) of every erasure applied in a block above ``height``."""
    return [(U64BE.unpack(k[:8])[0], k[8:], int.from_bytes(v, "little"))
            for k, v in txn.range(Table.PII_ERASURES, U64BE.pack(height + 1))]
