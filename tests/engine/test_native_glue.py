"""The native engine's glue to the Python objects: direct slot access (ledger/_native/slots.h), the
state-hash input laid out in C, and the block's leaf hashes, chain and tree nodes in one pass.

The engine reads and writes AccountState / TransferRef / Event slots at their offsets and creates
refs and events without the dataclass ``__init__`` once ``native_transfers.bind()`` has bound the
classes; everything else goes through the generic attribute protocol. Both ways must leave
byte-identical stores: the seeded corpus runs with the classes unbound, and bound without direct
construction, against the Python reference (the rest of tests/engine runs fully bound).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import hashing, native
from ledger.apply import native_transfers
from ledger.apply.scratch import Event
from ledger.codec import Batch, encode_account
from ledger.hashing import hash_and_chain
from ledger.merkle import CompactRange
from ledger.schema import AccountState, TransferRef, index_key, node_key
from ledger.types import EventKind, Result
from tests.engine.test_differential import ACCOUNTS, Pair, workload

pytestmark = pytest.mark.skipif(not native.available(), reason="native engine not built (no C compiler)")


def test_the_ledger_classes_are_bound() -> None:
    """The default build binds all three classes, so the rest of tests/engine covers the slot path."""
    assert native_transfers.bind() == (True, True, True)
    assert native_transfers._constructible(TransferRef, native_transfers.REF_FIELDS)
    assert native_transfers._constructible(Event, native_transfers.EVENT_FIELDS)


def test_a_class_with_more_than_field_assignment_is_not_constructed_directly() -> None:
    @dataclass(slots=True)
    class Checked:
        leaf_index: int
        block: int
        timestamp_ns: int
        status: int
        expires_at_ns: int = 0

        def __post_init__(self) -> None:
            if self.status > 4:
                raise ValueError("status")

    @dataclass(slots=True)
    class Wider:
        leaf_index: int
        block: int
        timestamp_ns: int
        status: int
        expires_at_ns: int = 0
        note: str = ""

    assert not native_transfers._constructible(Checked, native_transfers.REF_FIELDS)
    assert not native_transfers._constructible(Wider, native_transfers.REF_FIELDS)
    assert not native_transfers._constructible(AccountState, native_transfers.REF_FIELDS)  # not a dataclass


class Plain:
    """No slots at all: binding it leaves the engine on the generic attribute protocol."""


@pytest.fixture(params=["unbound", "no-construct"])
def binding(request: pytest.FixtureRequest) -> Iterator[str]:
    engine = native.engine()
    if request.param == "unbound":
        assert engine.bind_types(Plain, Plain, Plain, False, False) == (False, False, False)
    else:
        assert engine.bind_types(AccountState, TransferRef, Event, False, False) == (True, True, True)
    try:
        yield request.param
    finally:
        assert native_transfers.bind() == (True, True, True)


@pytest.mark.parametrize("seed", range(2))
def test_generic_attribute_path_is_byte_identical(tmp_path: Path, binding: str, seed: int) -> None:
    pair = Pair(tmp_path)
    try:
        pair.block((Batch(EventKind.CREATE_ACCOUNT, b"".join(encode_account(a) for a in ACCOUNTS)),))
        for i, transfers in enumerate(workload(seed, blocks=25, per_block=30)):
            pair.transfers(transfers, advance_s=1 + i % 3)
        pair.assert_stores_identical()
        assert {Result.OK, Result.TRANSFER_EXISTS, Result.LINKED_EVENT_FAILED} <= pair.results
    finally:
        pair.close()


pairs = st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=136, max_size=136)), max_size=40)


@settings(max_examples=40)
@given(previous=st.binary(min_size=32, max_size=32), changed=pairs)
def test_state_input_hashes_to_the_reference_state_hash(previous: bytes, changed: list[tuple[bytes, bytes]]) -> None:
    changed.sort()
    expected = hashing.state_hash(previous, changed)
    engine = native.engine()
    assert engine.state_input(previous, changed) == b"\x04" + previous + b"".join(a + s for a, s in changed)
    assert hashing.blake3_digest(engine.state_input(previous, changed)) == expected
    assert engine.state_hash(previous, changed) == expected
    prior = native.active()
    try:
        native.select("native")
        assert native.state_hash(previous, changed) == expected
    finally:
        native.select(prior)


def test_state_input_rejects_what_is_not_id_state_pairs() -> None:
    engine = native.engine()
    with pytest.raises(TypeError, match="id bytes, state bytes"):
        engine.state_input(bytes(32), [(b"a" * 16, 7)])
    with pytest.raises(ValueError, match="32 bytes"):
        engine.state_input(b"short", [])


@settings(max_examples=60)
@given(before=st.integers(0, 300), leaves=st.lists(st.binary(min_size=0, max_size=300), max_size=70),
       prev=st.binary(min_size=32, max_size=32))
def test_seal_hashes_equal_chain_then_tree_append(before: int, leaves: list[bytes], prev: bytes) -> None:
    """One pass over a block's leaves = hash_and_chain, then CompactRange.append_many(min_level=1) keyed by
    node_key, from a tree of any size (so subtrees complete across the block boundary)."""
    tree = CompactRange()
    tree.append_many([bytes([i % 256]) * 32 for i in range(before)])
    pairs = [(index_key(before + i), leaf) for i, leaf in enumerate(leaves)]
    hashes, link = hash_and_chain(prev, leaves)
    ref = tree.copy()
    nodes = [(node_key(level, i), h) for level, i, h in ref.append_many(hashes, min_level=1)]
    got = tree.copy()
    link2, got.hashes, got.size, nodes2 = native.engine().seal_hashes(prev, pairs, got.hashes, got.size)
    assert (link2, nodes2, got.size, got.hashes) == (link, nodes, ref.size, ref.hashes)
    prior = native.active()
    try:
        for engine in native.ENGINES:
            native.select(engine)
            t = tree.copy()
            assert native.seal_hashes(prev, pairs, t) == (link, nodes)
            assert (t.size, t.hashes) == (ref.size, ref.hashes)
    finally:
        native.select(prior)


def test_find_transfers_looks_in_the_block_then_the_store() -> None:
    ref = TransferRef(7, 3, 11, 1)
    in_block = {b"\x01" * 16: ref}
    stored_rows = {bytes(range(16))[::-1]: b"row"}  # id_key: the id's bytes reversed
    asked: list[bytes] = []

    def stored(key: bytes) -> bytes | None:
        asked.append(key)
        return stored_rows.get(key)

    tids = [b"\x01" * 16, bytes(range(16)), b"\x02" * 16]
    found = native.engine().find_transfers(tids, in_block, stored)
    assert found == [(b"\x01" * 16, ref, None), (bytes(range(16)), None, b"row")]
    assert asked == [bytes(range(16))[::-1], b"\x02" * 16]  # the block's own transfer is not looked up
    with pytest.raises(TypeError, match="16 bytes"):
        native.engine().find_transfers([b"short"], {}, stored)


def test_find_transfers_asks_the_store_once_for_the_batch() -> None:
    ref = TransferRef(7, 3, 11, 1)
    in_block = {b"\x01" * 16: ref}
    stored_rows = {bytes(range(16))[::-1]: b"row"}
    calls: list[list[bytes]] = []

    def get_many(keys: list[bytes]) -> list[bytes | None]:
        calls.append(list(keys))
        return [stored_rows.get(k) for k in keys]

    tids = [b"\x02" * 16, b"\x01" * 16, bytes(range(16))]
    found = native.engine().find_transfers(tids, in_block, get_many, True)
    assert found == [(b"\x01" * 16, ref, None), (bytes(range(16)), None, b"row")]
    assert calls == [[b"\x02" * 16, bytes(range(16))[::-1]]]  # one call, the block's transfer left out
    assert native.engine().find_transfers([b"\x01" * 16], in_block, get_many, True) == [(b"\x01" * 16, ref, None)]
    assert len(calls) == 1  # everything in the block: no store call at all
    with pytest.raises(TypeError, match="one row or None per key"):
        native.engine().find_transfers([b"\x02" * 16], {}, lambda keys: [], True)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000])
@pytest.mark.parametrize("shape", ["random", "small-ints", "shared-prefix"])
def test_rows_come_out_in_python_key_order(n: int, shape: str) -> None:
    """changed_accounts and transfer_rows sort by key in C (qsort for few, a radix sort that skips
    bytes every key shares for more): the order Python's sorted gives the same keys."""
    rng = random.Random(n)

    def key(i: int) -> bytes:
        if shape == "small-ints":
            return (i * 7 + 1).to_bytes(16, "little")
        if shape == "shared-prefix":
            return b"\x05" * 9 + rng.randbytes(3) + b"\x00" * 3 + bytes([i % 256])
        return rng.randbytes(16)

    ids = list(dict.fromkeys(key(i) for i in range(n)))
    refs = {tid: TransferRef(i, 2, 3, 1, 0) for i, tid in enumerate(ids)}
    rows = native.engine().transfer_rows(refs)
    assert [k for k, _ in rows] == sorted(tid[::-1] for tid in ids)  # id_key: the id reversed
    assert [v for _, v in rows] == [refs[k[::-1]].encode() for k, _ in rows]
    accounts = {aid: AccountState(aid * 4, i, 0, 0, 1, 9) for i, aid in enumerate(ids)}
    changed = native.engine().changed_accounts(accounts, {})
    assert [k for k, _ in changed] == sorted(ids)
    assert [v for _, v in changed] == [accounts[k].encode() for k, _ in changed]


@pytest.mark.parametrize("length", [0, 62, 63, 64, 202, 266, 1022, 1023, 1100])
@pytest.mark.parametrize("count", [7, 8, 9, 17, 40])
def test_seal_hashes_eight_leaves_at_once_match_one_at_a_time(length: int, count: int) -> None:
    """Runs of eight equal-length leaves are hashed together (AVX2 where the CPU has it; a leaf with the
    domain byte up to one 1024-byte chunk): the same link, nodes and tree as the reference and as the
    one-at-a-time path (seal_hashes' last argument), including a run broken by one other length."""
    rng = random.Random(length * 100 + count)
    leaves = [rng.randbytes(length) for _ in range(count)]
    if count > 9:
        leaves[9] = rng.randbytes(length + 1)
    pairs = [(index_key(5 + i), leaf) for i, leaf in enumerate(leaves)]
    tree = CompactRange()
    tree.append_many([bytes([i]) * 32 for i in range(5)])
    hashes, link = hash_and_chain(b"\x07" * 32, leaves)
    ref = tree.copy()
    nodes = [(node_key(level, i), h) for level, i, h in ref.append_many(hashes, min_level=1)]
    for scalar in (False, True):
        got = native.engine().seal_hashes(b"\x07" * 32, pairs, tree.hashes, tree.size, scalar)
        assert got == (link, ref.hashes, ref.size, nodes)
