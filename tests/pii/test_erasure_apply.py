"""The ERASE_SUBJECT record kind in the apply path: leaves, result codes, tables, codec framing, replay."""

from __future__ import annotations

import pytest

from ledger.apply.erasure import erasure_of, erasures_after
from ledger.codec import (
    Batch,
    EncodingError,
    Proposal,
    decode_leaf,
    decode_proposal,
    encode_proposal,
    validate_batch,
)
from ledger.lmdb_store import LmdbStore
from ledger.pii import ErasureReason, encode_erasure
from ledger.state import LedgerState
from ledger.types import EventKind, Result
from tests.ledger.harness import Ledger

C1, C2 = b"\x11" * 32, b"\x22" * 32


def erase(*records: bytes) -> Batch:
    return Batch(EventKind.ERASE_SUBJECT, b"".join(records))


def test_erasure_is_a_leaf_and_marks_the_commitment() -> None:
    lg = Ledger()
    out = lg.block(erase(encode_erasure(C1, ErasureReason.SUBJECT_REQUEST)))
    assert out.batches[0].results == [Result.OK]
    with lg.store.read() as txn:
        leaf = decode_leaf(txn.get("leaves", out.batches[0].log_indexes[0].to_bytes(8, "big")) or b"")
        assert leaf.kind == EventKind.ERASE_SUBJECT and leaf.body == encode_erasure(C1, 1)
        assert erasure_of(txn, C1) == (out.header.height, ErasureReason.SUBJECT_REQUEST)
        assert erasure_of(txn, C2) is None
        assert erasures_after(txn, 0) == [(out.header.height, C1, 1)]
        assert erasures_after(txn, out.header.height) == []


def test_result_codes() -> None:
    lg = Ledger()
    bad_reserved = C2 + b"\x01\x00" + b"\x01" + bytes(13)
    out = lg.block(erase(encode_erasure(C1, 1), encode_erasure(C1, 2), C2 + b"\x63\x00" + bytes(14),
                         bad_reserved, encode_erasure(bytes(32), 1)))
    assert out.batches[0].results == [Result.OK, Result.SUBJECT_ALREADY_ERASED, Result.ERASURE_REASON_UNKNOWN,
                                      Result.RESERVED_FIELD, Result.ID_MUST_NOT_BE_ZERO]
    later = lg.block(erase(encode_erasure(C1, 3)))
    assert later.batches[0].results == [Result.SUBJECT_ALREADY_ERASED]
    with lg.store.read() as txn:
        assert erasure_of(txn, C1) == (out.header.height, ErasureReason.SUBJECT_REQUEST)
        assert erasure_of(txn, C2) is None


def test_clients_cannot_submit_erasures_but_proposals_carry_them() -> None:
    with pytest.raises(EncodingError, match="cannot be submitted by clients"):
        validate_batch(EventKind.ERASE_SUBJECT, encode_erasure(C1, 1), b"", b"")
    p = Proposal(5, (erase(encode_erasure(C1, 1), encode_erasure(C2, 2)),))
    assert decode_proposal(encode_proposal(p)) == p


def test_erasure_survives_restart_on_lmdb(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = LmdbStore(str(tmp_path / "l"), 16 << 20)
    state = LedgerState(store)
    state.apply_block(Proposal(10, (erase(encode_erasure(C1, 4)),)))
    store.close()
    store = LmdbStore(str(tmp_path / "l"), 16 << 20)
    with store.read() as txn:
        assert erasure_of(txn, C1) == (1, ErasureReason.UNLAWFUL_PROCESSING)
    assert LedgerState(store).head.tree_size == 1
    store.close()
