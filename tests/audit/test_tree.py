"""The replay's level-at-a-time append gives the same compact range as ledger.merkle's leaf-at-a-time one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clients.auditor.tree import extend
from ledger.hashing import leaf_hash
from ledger.merkle import CompactRange, naive_root


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.integers(0, 70), max_size=8))
def test_extend_matches_append_many_and_the_naive_root(chunks: list[int]) -> None:
    ours, ref = CompactRange(), CompactRange()
    hashes: list[bytes] = []
    for n in chunks:
        new = [leaf_hash(len(hashes).to_bytes(8, "little") + bytes([k])) for k in range(n)]
        hashes += new
        extend(ours, list(new))
        ref.append_many(new)
        assert (ours.size, ours.hashes) == (ref.size, ref.hashes)
        assert ours.root() == naive_root(hashes)
