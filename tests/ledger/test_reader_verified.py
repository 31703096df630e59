"""Serve nothing unverified: every leaf the reader returns is checked against its committed hash."""

from __future__ import annotations

import struct

import pytest

from ledger.reader import DamagedEntry, LedgerReader, RangeError
from ledger.types import Account, Transfer
from tests.ledger.harness import Ledger

U64BE = struct.Struct(">Q")


def _ledger(transfers: int) -> Ledger:
    lg = Ledger()
    lg.accounts(Account(1, 1, 1), Account(2, 1, 1))
    for i in range(transfers):
        lg.transfer(Transfer(100 + i, 1, 2, 5, 1, 1))
    return lg


def _damage(lg: Ledger, index: int) -> None:
    with lg.store.write() as txn:
        raw = bytearray(txn.get("leaves", U64BE.pack(index)) or b"")
        raw[-3] ^= 1
        txn.put("leaves", U64BE.pack(index), bytes(raw))


@pytest.mark.parametrize("size_parity", [0, 1])
def test_every_read_path_refuses_a_damaged_leaf_and_names_it(size_parity: int) -> None:
    lg = _ledger(6 + size_parity)  # 8 or 9 leaves: the last one paired, or alone on the tree's edge
    reader = LedgerReader(lg.store)
    size = reader.head().tree_size
    last = size - 1
    assert reader.leaf(last) and reader.transfers([(100 + last - 2).to_bytes(16, "little")])[0] is not None
    _damage(lg, last)
    reads = [lambda: reader.leaf(last), lambda: list(reader.leaves(0, size)),
             lambda: reader.inclusion_proof(last, size), lambda: reader.inclusion_proof(last - 1, size),
             lambda: reader.transfers([(100 + last - 2).to_bytes(16, "little")])]
    for read in reads:
        with pytest.raises(DamagedEntry, match=f"entry {last}|entry {last - 1} or {last}"):
            read()
    assert reader.leaf(0)  # untouched pairs still answer


def test_a_damaged_index_row_pointing_at_another_transfer_is_refused() -> None:
    lg = _ledger(4)
    reader = LedgerReader(lg.store)
    tid = (101).to_bytes(16, "little")
    other = reader.transfers([(102).to_bytes(16, "little")])[0]
    assert other is not None
    with lg.store.write() as txn:  # the row of 101 now points at 102's entry
        txn.put("transfers", tid[::-1], txn.get("transfers", (102).to_bytes(16, "little")[::-1]) or b"")
    with pytest.raises(DamagedEntry, match="points at another transfer"):
        reader.transfers([tid])


def test_reading_beyond_the_tree_is_a_range_error() -> None:
    reader = LedgerReader(_ledger(1).store)
    with pytest.raises(RangeError):
        list(reader.leaves(0, 10))
