"""Canonical encodings: round trips (Hypothesis), exact layouts, and strict rejection of bad bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.codec import (
    ACCOUNT_SIZE,
    BLOCK_HEADER_SIZE,
    TRANSFER_SIZE,
    Batch,
    BlockHeader,
    EncodingError,
    Leaf,
    Proposal,
    decode_account,
    decode_leaf,
    decode_proposal,
    decode_transfer,
    encode_account,
    encode_leaf,
    encode_proposal,
    encode_transfer,
    psp_signature_aux,
    validate_batch,
)
from ledger.types import U32_MAX, U128_MAX, Account, EventKind, Transfer

u128 = st.integers(0, U128_MAX)
u32 = st.integers(0, U32_MAX)
u16 = st.integers(0, 0xFFFF)

accounts = st.builds(Account, id=u128, ledger=u32, code=u16, flags=u16, asset_scale=st.integers(0, 255),
                     user_data=u128)
transfers = st.builds(
    Transfer, id=u128, debit_account_id=u128, credit_account_id=u128, amount=u128, ledger=u32, code=u16,
    flags=u16, pending_id=u128, timeout_s=u32, user_data=u128, psp_id=u32,
    external_ref=st.binary(max_size=32).map(lambda b: b.rstrip(b"\x00")),
    pii_commitment=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32).filter(lambda b: any(b))),
)


@given(accounts)
def test_account_round_trip(a: Account) -> None:
    raw = encode_account(a)
    assert len(raw) == ACCOUNT_SIZE == 64
    assert decode_account(raw) == a


@given(transfers)
def test_transfer_round_trip(t: Transfer) -> None:
    raw = encode_transfer(t)
    assert len(raw) == TRANSFER_SIZE == 176
    assert decode_transfer(raw) == t


def test_transfer_layout_is_little_endian_and_fixed() -> None:
    t = Transfer(id=1, debit_account_id=2, credit_account_id=3, amount=(5 << 64) | 4, ledger=6, code=7,
                 flags=8, pending_id=9, timeout_s=10, user_data=11, psp_id=12, external_ref=b"ref")
    raw = encode_transfer(t)
    assert raw[0:16] == (1).to_bytes(16, "little")
    assert raw[48:64] == ((5 << 64) | 4).to_bytes(16, "little")  # u128 amount, little-endian
    assert raw[96:99] == b"ref" and raw[99:128] == bytes(29)
    assert int.from_bytes(raw[160:164], "little") == 6  # ledger
    assert int.from_bytes(raw[164:168], "little") == 12  # psp_id
    assert int.from_bytes(raw[172:174], "little") == 7  # code
    assert int.from_bytes(raw[174:176], "little") == 8  # flags


@given(st.sampled_from(list(EventKind)), st.integers(0, 200), st.integers(0, 2**64 - 1),
       st.integers(0, 2**64 - 1), st.binary(max_size=300))
def test_leaf_round_trip(kind: EventKind, result: int, index: int, ts: int, body: bytes) -> None:
    sizes = {EventKind.CREATE_ACCOUNT: 64, EventKind.CREATE_TRANSFER: 176, EventKind.EXPIRE_PENDING: 16,
             EventKind.DEPLOY_RULESET: 100, EventKind.SETTLEMENT_CALLBACK: 96, EventKind.LEDGER_TRANSFER: 176,
             EventKind.ERASE_SUBJECT: 48,
             EventKind.KEY_ROTATION: 276, EventKind.AGGREGATE: 35, EventKind.OBLIGATION: 144,
             EventKind.SETTLEMENT: 200}
    body = (body * 300)[: sizes[kind]] if body else bytes(sizes[kind])
    aux = psp_signature_aux(b"abcd", b"s" * 64)
    for a in (b"", aux):
        leaf = Leaf(kind, result, index, ts, body, a)
        assert decode_leaf(leaf.encode()) == leaf
    assert Leaf(kind, result, index, ts, body, aux).psp_signature == (b"abcd", b"s" * 64)


def test_leaf_rejects_truncation_and_trailing_bytes() -> None:
    raw = encode_leaf(EventKind.CREATE_TRANSFER, 0, 1, 2, bytes(176))
    with pytest.raises(EncodingError, match=r"truncated|shorter|does not match"):
        decode_leaf(raw[:-1])
    with pytest.raises(EncodingError, match="does not match"):
        decode_leaf(raw + b"\x00")
    with pytest.raises(EncodingError, match="version"):
        decode_leaf(b"\x02" + raw[1:])
    with pytest.raises(EncodingError, match="must be 176"):
        decode_leaf(encode_leaf(EventKind.CREATE_TRANSFER, 0, 1, 2, bytes(175)))


def test_block_header_round_trip() -> None:
    h = BlockHeader(3, 4, 5, 6, 11, b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 32, b"e" * 32)
    raw = h.encode()
    assert len(raw) == BLOCK_HEADER_SIZE
    assert BlockHeader.decode(raw) == h


@given(st.lists(st.tuples(st.sampled_from([EventKind.CREATE_ACCOUNT, EventKind.CREATE_TRANSFER]),
                          st.integers(1, 5), st.booleans()), max_size=5), st.integers(0, 2**64 - 1))
def test_proposal_round_trip(spec: list[tuple[EventKind, int, bool]], ts: int) -> None:
    batches = []
    for kind, n, signed in spec:
        size = 64 if kind == EventKind.CREATE_ACCOUNT else 176
        batches.append(Batch(kind, bytes(range(n * size % 256)) * 0 + b"\x07" * (n * size),
                             b"\x01" * (64 * n) if signed else b"", b"kid1" if signed else b""))
    p = Proposal(ts, tuple(batches))
    assert decode_proposal(encode_proposal(p)) == p


@pytest.mark.parametrize(("kind", "records", "sigs", "key", "message"), [
    (99, b"x" * 176, b"", b"", "unknown event kind"),
    (2, b"", b"", b"", "empty"),
    (2, b"x" * 175, b"", b"", "not a multiple"),
    (2, b"x" * 176 * 8190, b"", b"", "at most 8189"),
    (2, b"x" * 176, b"s" * 63, b"kid1", "signatures"),
    (2, b"x" * 176, b"s" * 64, b"", "signer_key_id"),
    (3, b"x" * 16, b"", b"", "cannot be submitted"),
])
def test_validate_batch_rejects_with_reason(kind: int, records: bytes, sigs: bytes, key: bytes,
                                            message: str) -> None:
    with pytest.raises(EncodingError, match=message):
        validate_batch(kind, records, sigs, key)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(EncodingError, match="amount"):
        encode_transfer(Transfer(1, 2, 3, U128_MAX + 1, 1, 1))
    with pytest.raises(EncodingError, match="pii_commitment"):
        encode_transfer(Transfer(1, 2, 3, 1, 1, 1, pii_commitment=b"short"))
    with pytest.raises(EncodingError, match="external_ref"):
        encode_transfer(Transfer(1, 2, 3, 1, 1, 1, external_ref=b"x" * 33))
