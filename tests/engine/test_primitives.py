"""The native primitives against the Python reference: BLAKE3 (vs the blake3 package), the block's
leaf-hash chain (vs ledger.hashing) and the Merkle compact-range append (vs ledger.merkle)."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import hashing, native
from ledger.merkle import CompactRange

pytestmark = pytest.mark.skipif(not native.available(), reason="native engine not built (no C compiler)")

if native.available():
    from ledger._native import _engine

# lengths around the BLAKE3 block (64) and chunk (1024) boundaries, and multi-level chunk trees
EDGE_LENGTHS = sorted({0, 1, *(k * 64 + d for k in range(1, 17) for d in (-1, 0, 1)),
                       *(k * 1024 + d for k in (1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33) for d in (-1, 0, 1))})


@pytest.mark.parametrize("n", EDGE_LENGTHS)
def test_blake3_edge_lengths(n: int) -> None:
    data = bytes((i * 7 + n) & 0xFF for i in range(n))
    assert _engine.blake3(data) == blake3.blake3(data).digest()


@given(st.binary(max_size=5000))
def test_blake3_random(data: bytes) -> None:
    assert _engine.blake3(data) == blake3.blake3(data).digest()


def test_blake3_large() -> None:
    data = bytes(range(256)) * 4099  # ~1 MiB, not a whole number of chunks
    assert _engine.blake3(data) == blake3.blake3(data).digest()


@given(st.binary(min_size=32, max_size=32), st.lists(st.binary(max_size=1500), max_size=40))
def test_hash_and_chain(prev: bytes, leaves: list[bytes]) -> None:
    assert _engine.hash_and_chain(prev, leaves) == hashing.hash_and_chain(prev, leaves)


@given(st.integers(0, 5000), st.lists(st.binary(min_size=32, max_size=32), max_size=70), st.integers(0, 3),
       st.binary(min_size=32, max_size=32))
def test_merkle_append(start: int, leaf_hashes: list[bytes], min_level: int, seed: bytes) -> None:
    base = CompactRange()
    base.append_many([hashing.leaf_hash(seed + i.to_bytes(4, "little")) for i in range(start)])
    py, nat = base.copy(), base.copy()
    py_out = py.append_many(leaf_hashes, min_level)
    previous = native.active()
    native.select("native")
    try:
        nat_out = native.append_many(nat, leaf_hashes, min_level)
    finally:
        native.select(previous)
    assert nat_out == py_out
    assert (nat.size, nat.hashes, nat.root()) == (py.size, py.hashes, py.root())


@given(st.binary(min_size=32, max_size=32),
       st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=136, max_size=136)), max_size=30))
def test_state_hash(previous: bytes, changed: list[tuple[bytes, bytes]]) -> None:
    assert _engine.state_hash(previous, changed) == hashing.state_hash(previous, changed)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="prev_link must be 32 bytes"):
        _engine.hash_and_chain(b"short", [])
    with pytest.raises(TypeError, match="every leaf must be bytes"):
        _engine.hash_and_chain(bytes(32), ["text"])
    with pytest.raises(ValueError, match="a leaf hash must be 32 bytes"):
        _engine.merkle_append([], 0, [b"x"], 0)
    with pytest.raises(TypeError, match=r"\(id bytes, state bytes\) pair"):
        _engine.state_hash(bytes(32), [b"not a pair"])


def test_engine_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="SOVLEDGER_ENGINE='rust' is not an engine"):
        native.select("rust")
