"""RFC 6962 / RFC 9162 Merkle tree over ledger/hashing.py: incremental root, proofs, verification.

- ``CompactRange``: the right edge of the tree (perfect-subtree roots), appended to per block.
- Proof generation reads complete subtree hashes through a ``NodeReader`` (the store keeps them).
- Verification is pure and says *why* a proof failed (typed ``ProofError`` subclasses).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

import blake3

from ledger.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash

_b3 = blake3.blake3


class NodeReader(Protocol):
    def get_node(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree covering leaves [index·2^level, (index+1)·2^level)."""
        ...


# -- errors -----------------------------------------------------------------------------------


class ProofError(Exception):
    """A proof does not verify. Subclasses carry what mismatched."""


class IndexOutOfRange(ProofError):
    def __init__(self, index: int, size: int) -> None:
        self.index, self.size = index, size
        super().__init__(f"leaf index {index} is outside a tree of size {size}")


class SizeOrderError(ProofError):
    def __init__(self, size1: int, size2: int) -> None:
        self.size1, self.size2 = size1, size2
        super().__init__(f"consistency needs size1 <= size2, got {size1} > {size2}")


class ProofSizeMismatch(ProofError):
    def __init__(self, what: str, expected: str, got: int) -> None:
        self.expected, self.got = expected, got
        super().__init__(f"{what} proof has {got} hashes, expected {expected}")


class RootMismatch(ProofError):
    def __init__(self, what: str, expected: bytes, computed: bytes) -> None:
        self.expected, self.computed = expected, computed
        super().__init__(f"{what} computes root {computed.hex()[:16]}…, expected {expected.hex()[:16]}…")


# -- compact range ----------------------------------------------------------------------------


class CompactRange:
    """Roots of the perfect subtrees that make up a tree of ``size`` leaves, biggest first."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError(f"a compact range of size {size} has {bin(size).count('1')} hashes, got {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.hashes)

    def append(self, leaf_hash_: bytes) -> list[tuple[int, int, bytes]]:
        return self.append_many([leaf_hash_])

    def append_many(self, leaf_hashes: Sequence[bytes], min_level: int = 0) -> list[tuple[int, int, bytes]]:
        """Append leaves; return every subtree that became complete as (level, index, hash),
        the leaves themselves at level 0 unless ``min_level`` > 0."""
        out: list[tuple[int, int, bytes]] = []
        add = out.append
        stack = self.hashes
        push = stack.append
        pop = stack.pop
        size = self.size
        for lh in leaf_hashes:
            if min_level == 0:
                add((0, size, lh))
            push(lh)
            idx = size
            level = 0
            size += 1
            while idx & 1:
                right = pop()
                h = _b3(b"\x01" + pop() + right).digest()
                push(h)
                level += 1
                idx >>= 1
                if level >= min_level:
                    add((level, idx, h))
        self.size = size
        return out

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def to_bytes(self) -> bytes:
        return struct.pack("<Q", self.size) + b"".join(self.hashes)

    @staticmethod
    def from_bytes(raw: bytes) -> CompactRange:
        (size,) = struct.unpack_from("<Q", raw)
        hashes = [raw[i : i + HASH_SIZE] for i in range(8, len(raw), HASH_SIZE)]
        return CompactRange(size, hashes)


# -- proof generation -------------------------------------------------------------------------


def _split(n: int) -> int:
    """Largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(reader: NodeReader, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for the ranges that RFC 9162 PATH/SUBPROOF produce."""
    n = end - start
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return reader.get_node(n.bit_length() - 1, start // n)
    k = _split(n)
    return node_hash(subtree_root(reader, start, start + k), subtree_root(reader, start + k, end))


def root_at(reader: NodeReader, size: int) -> bytes:
    return subtree_root(reader, 0, size)


def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    if not 0 <= index < size:
        raise IndexOutOfRange(index, size)
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:  # walk down from the root; siblings are collected top-down
        k = _split(end - start)
        if index < start + k:
            proof.append(subtree_root(reader, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(reader, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(reader: NodeReader, size1: int, size2: int) -> list[bytes]:
    if size1 > size2:
        raise SizeOrderError(size1, size2)
    if size1 == 0 or size1 == size2:
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(subtree_root(reader, start, end))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtree_root(reader, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(reader, start, start + k))
            start += k
            m -= k
            complete = False
    proof.reverse()
    return proof


class MemoryNodes:
    """A NodeReader over a list of leaf hashes (tests, clients with the whole log)."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [list(leaf_hashes)]
        self._rebuild()

    def append(self, lh: bytes) -> None:
        self.levels[0].append(lh)
        self._rebuild()

    def _rebuild(self) -> None:
        level = 0
        while len(self.levels[level]) > 1:
            below = self.levels[level]
            pairs = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(self.levels) == level + 1:
                self.levels.append([])
            self.levels[level + 1] = pairs
            level += 1
        del self.levels[level + 1 :]

    def get_node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]


def naive_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH straight from RFC 6962 section 2.1 (reference for tests)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(naive_root(leaf_hashes[:k]), naive_root(leaf_hashes[k:]))


# -- verification (RFC 9162 2.1.3.2 and 2.1.4.2) ----------------------------------------------


def root_from_inclusion(leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    if not 0 <= index < size:
        raise IndexOutOfRange(index, size)
    fn, sn, r = index, size - 1, leaf_hash_
    for p in proof:
        if sn == 0:
            raise ProofSizeMismatch("inclusion", f"fewer for index {index} in size {size}", len(proof))
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofSizeMismatch("inclusion", f"more for index {index} in size {size}", len(proof))
    return r


def verify_inclusion(leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    computed = root_from_inclusion(leaf_hash_, index, size, proof)
    if computed != root:
        raise RootMismatch(f"inclusion proof for leaf {index} in tree of size {size}", root, computed)


def verify_leaf_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    verify_inclusion(leaf_hash(leaf), index, size, proof, root)


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    if size1 > size2:
        raise SizeOrderError(size1, size2)
    if size1 == size2:
        if proof:
            raise ProofSizeMismatch("consistency", "0 for equal sizes", len(proof))
        if root1 != root2:
            raise RootMismatch(f"trees of equal size {size1}", root1, root2)
        return
    if size1 == 0:
        if proof:
            raise ProofSizeMismatch("consistency", "0 from the empty tree", len(proof))
        return
    if not proof:
        raise ProofSizeMismatch("consistency", "at least 1", 0)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofSizeMismatch("consistency", f"fewer for sizes {size1} → {size2}", len(proof))
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofSizeMismatch("consistency", f"more for sizes {size1} → {size2}", len(proof))
    if fr != root1:
        raise RootMismatch(f"consistency proof {size1} → {size2} (old tree)", root1, fr)
    if sr != root2:
        raise RootMismatch(f"consistency proof {size1} → {size2} (new tree)", root2, sr)
