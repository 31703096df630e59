"""Read-side queries over a store: lookups, history, raw entries, blocks and Merkle proofs.

Every method opens its own read transaction (a consistent LMDB snapshot), so readers never block
the single writer and never see half a block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from ledger.codec import LEAF_HEADER_SIZE, BlockHeader
from ledger.hashing import leaf_hash, node_hash
from ledger.invariant import InvariantViolation, invariant
from ledger.merkle import CompactRange, consistency_proof, inclusion_proof, root_at
from ledger.schema import (
    META_HEAD,
    META_RANGE,
    Head,
    Table,
    TransferRef,
    decode_index,
    history_leaf_key,
    id_key,
    index_key,
    node_at,
)
from ledger.store import ReadTxn, Store

HISTORY_PAGE_MAX: Final = 1000


class LookupError_(KeyError):
    """A requested item does not exist (mapped to NOT_FOUND at the edge)."""


class RangeError(ValueError):
    """A requested index/size is outside the tree (mapped to OUT_OF_RANGE / INVALID_ARGUMENT)."""


class DamagedEntry(InvariantViolation):
    """A stored leaf no longer matches the hash committed for it (mapped to DATA_LOSS at the edge).

    An InvariantViolation: this replica's store is damaged and must not serve the entry."""

    def __init__(self, index: int, detail: str, or_index: int | None = None) -> None:
        self.index = index
        which = f"entry {index}" if or_index is None else f"entry {index} or {or_index}"
        self.which, self.detail = which, detail
        super().__init__(f"stored {which} is damaged ({detail}); this node serves nothing unverified: "
                         "read from another replica and restore this node's data directory")


def verified_leaves(txn: ReadTxn, start: int, stop: int) -> list[bytes]:
    """Leaves [start, stop), each checked against the hash committed for it, else ``DamagedEntry``.

    Level 0 hashes are not stored: a leaf pair (2k, 2k+1) is checked against the stored level-1
    node k; the last leaf of an odd-sized tree against the compact range's lone leaf hash."""
    if start >= stop:
        return []
    raw_head = txn.get(Table.META, META_HEAD)
    size = Head.decode(raw_head).tree_size if raw_head else 0
    if stop > size:
        raise RangeError(f"entries up to {stop} requested, the tree holds {size}")
    lo, hi = start & ~1, min(size, (stop + 1) & ~1)
    leaves = {decode_index(k): v for k, v in txn.range(Table.LEAVES, index_key(lo), index_key(hi))}
    for i in range(lo, hi, 2):
        if i + 1 < size:
            _check_pair(txn, leaves, i)
        else:
            _check_lone(txn, leaves, i, size)
    return [leaves[i] for i in range(start, stop)]


def _check_pair(txn: ReadTxn, leaves: dict[int, bytes], i: int) -> None:
    left, right = leaves.get(i), leaves.get(i + 1)
    if left is None or right is None:
        raise DamagedEntry(i if left is None else i + 1, "missing from the store")
    stored = node_at(txn.get, 1, i >> 1)
    if stored is None:
        raise DamagedEntry(i, "the tree node over the pair is missing", or_index=i + 1)
    if node_hash(leaf_hash(left), leaf_hash(right)) != stored:
        raise DamagedEntry(i, "the pair does not hash to its committed tree node", or_index=i + 1)


def _check_lone(txn: ReadTxn, leaves: dict[int, bytes], i: int, size: int) -> None:
    leaf = leaves.get(i)
    if leaf is None:
        raise DamagedEntry(i, "missing from the store")
    raw = txn.get(Table.META, META_RANGE)
    rng = CompactRange.from_bytes(raw) if raw else None
    if rng is None or rng.size != size or leaf_hash(leaf) != rng.hashes[-1]:
        raise DamagedEntry(i, "does not hash to the committed tree edge")


@dataclass(frozen=True, slots=True)
class TransferLookup:
    ref: TransferRef
    leaf: bytes


class _TxnNodes:
    """NodeReader over a read transaction: level 0 re-hashes the stored leaf, others are stored."""

    def __init__(self, txn: ReadTxn) -> None:
        self._txn = txn

    def get_node(self, level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hash(verified_leaves(self._txn, index, index + 1)[0])
        h = node_at(self._txn.get, level, index)
        invariant(h is not None, f"tree node ({level}, {index}) missing while building a proof")
        assert h is not None
        return h


class LedgerReader:
    def __init__(self, store: Store) -> None:
        self.store = store

    def head(self) -> Head:
        with self.store.read() as txn:
            raw = txn.get(Table.META, META_HEAD)
        return Head.decode(raw) if raw else Head()

    def transfers(self, ids: list[bytes]) -> list[TransferLookup | None]:
        out: list[TransferLookup | None] = []
        with self.store.read() as txn:
            for tid, raw in zip(ids, txn.get_many(Table.TRANSFERS, [id_key(i) for i in ids]), strict=True):
                if raw is None:
                    out.append(None)
                    continue
                ref = TransferRef.decode(raw)
                leaf = verified_leaves(txn, ref.leaf_index, ref.leaf_index + 1)[0]
                if leaf[LEAF_HEADER_SIZE : LEAF_HEADER_SIZE + 16] != tid:  # a damaged index row
                    raise DamagedEntry(ref.leaf_index, f"the index row of transfer {tid[::-1].hex()} points at "
                                                       "another transfer's entry")
                out.append(TransferLookup(ref, leaf))
        return out

    def accounts(self, ids: list[bytes]) -> list[bytes | None]:
        with self.store.read() as txn:
            return txn.get_many(Table.ACCOUNTS, ids)

    def history(self, account_id: bytes, after_index: int | None, limit: int) -> tuple[list[tuple[int, bytes]], bool]:
        """Leaves that touched the account, ascending, strictly after ``after_index``."""
        limit = max(1, min(limit or HISTORY_PAGE_MAX, HISTORY_PAGE_MAX))
        start = account_id + (b"" if after_index is None else index_key(after_index + 1))
        end = account_id + b"\xff" * 8
        out: list[tuple[int, bytes]] = []
        with self.store.read() as txn:
            keys = [k for k, _ in txn.range(Table.HISTORY, start, end, limit + 1)]
            for k in keys[:limit]:
                index = decode_index(history_leaf_key(k))
                out.append((index, verified_leaves(txn, index, index + 1)[0]))
        return out, len(keys) > limit

    def leaves(self, start: int, end: int, chunk: int = 1000) -> Iterator[list[bytes]]:
        pos = start
        while pos < end:
            stop = min(end, pos + chunk)
            with self.store.read() as txn:
                batch = verified_leaves(txn, pos, stop)
            yield batch
            pos = stop

    def leaf(self, index: int) -> bytes:
        with self.store.read() as txn:
            if index >= self._tree_size(txn):
                raise LookupError_(f"no leaf at index {index}")
            return verified_leaves(txn, index, index + 1)[0]

    def blocks(self, start: int, end: int) -> list[bytes]:
        with self.store.read() as txn:
            return [v for _, v in txn.range(Table.BLOCKS, index_key(start), index_key(end))]

    def block(self, height: int) -> BlockHeader:
        with self.store.read() as txn:
            raw = txn.get(Table.BLOCKS, index_key(height))
        if raw is None:
            raise LookupError_(f"no block at height {height}")
        return BlockHeader.decode(raw)

    def root_at(self, size: int) -> bytes:
        with self.store.read() as txn:
            self._check_size(txn, size)
            return root_at(_TxnNodes(txn), size)

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, list[bytes]]:
        with self.store.read() as txn:
            self._check_size(txn, size)
            if not 0 <= index < size:
                raise RangeError(f"leaf index {index} is not inside a tree of size {size}")
            leaf = verified_leaves(txn, index, index + 1)[0]
            return leaf, inclusion_proof(_TxnNodes(txn), index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self.store.read() as txn:
            self._check_size(txn, second)
            if not 0 <= first <= second:
                raise RangeError(f"consistency proof needs 0 <= first ({first}) <= second ({second})")
            return consistency_proof(_TxnNodes(txn), first, second)

    def check_tree_nodes(self, size: int, chunk: int = 4096) -> None:
        """Every stored tree node of the first ``size`` leaves against the hash of the leaves under it, else
        ``DamagedEntry`` (``--verify-full``: proofs and roots read only some of the nodes)."""
        tree = CompactRange()
        for leaves in self.leaves(0, size, chunk):
            made = tree.append_many([leaf_hash(leaf) for leaf in leaves], min_level=1)
            with self.store.read() as txn:
                for level, index, h in made:
                    if node_at(txn.get, level, index) != h:
                        raise DamagedEntry(index << level, f"the tree node at level {level} over entries "
                                                           f"[{index << level}, {(index + 1) << level}) does "
                                                           "not hash to them", or_index=((index + 1) << level) - 1)

    def transfer_index(self, transfer_id: bytes) -> int:
        with self.store.read() as txn:
            raw = txn.get(Table.TRANSFERS, id_key(transfer_id))
        if raw is None:
            raise LookupError_(f"transfer {id_key(transfer_id).hex()} not found")
        return TransferRef.decode(raw).leaf_index

    @staticmethod
    def _tree_size(txn: ReadTxn) -> int:
        raw = txn.get(Table.META, META_HEAD)
        return Head.decode(raw).tree_size if raw else 0

    @staticmethod
    def _check_size(txn: ReadTxn, size: int) -> None:
        current = LedgerReader._tree_size(txn)
        if size > current:
            raise RangeError(f"tree size {size} is beyond the current tree ({current} leaves)")
