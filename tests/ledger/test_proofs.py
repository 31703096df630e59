"""Merkle root, inclusion and consistency proofs against the naive RFC 6962 reference (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.hashing import leaf_hash
from ledger.merkle import (
    CompactRange,
    IndexOutOfRange,
    MemoryNodes,
    ProofError,
    RootMismatch,
    consistency_proof,
    inclusion_proof,
    naive_root,
    verify_consistency,
    verify_inclusion,
)

leaves = st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=300)


@given(leaves)
def test_compact_range_matches_naive_and_emits_every_complete_node(data: list[bytes]) -> None:
    lhs = [leaf_hash(d) for d in data]
    cr = CompactRange()
    nodes = cr.append_many(lhs)
    assert cr.root() == naive_root(lhs)
    ref = MemoryNodes(lhs)
    assert all(ref.get_node(level, i) == h for level, i, h in nodes)
    assert len(nodes) == sum(len(lvl) for lvl in ref.levels)
    assert CompactRange.from_bytes(cr.to_bytes()).root() == cr.root()


@given(leaves, st.data())
def test_inclusion_proofs_verify_and_tampering_fails(data: list[bytes], pick: st.DataObject) -> None:
    lhs = [leaf_hash(d) for d in data]
    n = len(lhs)
    ref = MemoryNodes(lhs)
    root = naive_root(lhs)
    i = pick.draw(st.integers(0, n - 1))
    proof = inclusion_proof(ref, i, n)
    verify_inclusion(lhs[i], i, n, proof, root)
    with pytest.raises(RootMismatch):
        verify_inclusion(leaf_hash(b"forged"), i, n, proof, root)
    if proof:
        bad = list(proof)
        bad[pick.draw(st.integers(0, len(bad) - 1))] = b"\x00" * 32
        with pytest.raises(ProofError):
            verify_inclusion(lhs[i], i, n, bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(lhs[i], i, n, proof[:-1], root)
    with pytest.raises(IndexOutOfRange):
        verify_inclusion(lhs[i], n, n, proof, root)


@given(leaves, st.data())
def test_consistency_proofs_verify_and_tampering_fails(data: list[bytes], pick: st.DataObject) -> None:
    lhs = [leaf_hash(d) for d in data]
    n = len(lhs)
    m = pick.draw(st.integers(0, n))
    ref = MemoryNodes(lhs)
    proof = consistency_proof(ref, m, n)
    verify_consistency(m, n, naive_root(lhs[:m]), naive_root(lhs), proof)
    if 0 < m < n:
        with pytest.raises(ProofError):
            verify_consistency(m, n, leaf_hash(b"other"), naive_root(lhs), proof)
        bad = list(proof)
        bad[pick.draw(st.integers(0, len(bad) - 1))] = b"\x00" * 32
        with pytest.raises(ProofError):
            verify_consistency(m, n, naive_root(lhs[:m]), naive_root(lhs), bad)


def test_all_small_consistency_pairs() -> None:
    lhs = [leaf_hash(bytes([i])) for i in range(40)]
    ref = MemoryNodes(lhs)
    for n in range(1, 41):
        for m in range(0, n + 1):
            verify_consistency(m, n, naive_root(lhs[:m]), naive_root(lhs[:n]),
                               consistency_proof(MemoryNodes(lhs[:n]), m, n))
    assert ref.get_node(0, 0) == lhs[0]
