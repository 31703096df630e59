"""Read-side queries over a store: lookups, history, raw entries, blocks and Merkle proofs.

Every method opens its own read transaction (a consistent LMDB snapshot), so readers never block
the single writer and never see half a block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from ledger.codec import BlockHeader
from ledger.hashing import leaf_hash
from ledger.invariant import invariant
from ledger.merkle import consistency_proof, inclusion_proof, root_at
from ledger.schema import (
    META_HEAD,
    Head,
    Table,
    TransferRef,
    decode_index,
    history_leaf_key,
    id_key,
    index_key,
    node_key,
)
from ledger.store import ReadTxn, Store

HISTORY_PAGE_MAX: Final = 1000


class LookupError_(KeyError):
    """A requested item does not exist (mapped to NOT_FOUND at the edge)."""


class RangeError(ValueError):
    """A requested index/size is outside the tree (mapped to OUT_OF_RANGE / INVALID_ARGUMENT)."""


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
            leaf = self._txn.get(Table.LEAVES, index_key(index))
            invariant(leaf is not None, f"leaf {index} missing while building a proof")
            assert leaf is not None
            return leaf_hash(leaf)
        h = self._txn.get(Table.NODES, node_key(level, index))
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
                leaf = txn.get(Table.LEAVES, index_key(ref.leaf_index))
                invariant(leaf is not None, f"transfer {tid.hex()} points at missing leaf {ref.leaf_index}")
                assert leaf is not None
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
                leaf = txn.get(Table.LEAVES, history_leaf_key(k))
                assert leaf is not None
                out.append((decode_index(history_leaf_key(k)), leaf))
        return out, len(keys) > limit

    def leaves(self, start: int, end: int, chunk: int = 1000) -> Iterator[list[bytes]]:
        pos = start
        while pos < end:
            stop = min(end, pos + chunk)
            with self.store.read() as txn:
                batch = [v for _, v in txn.range(Table.LEAVES, index_key(pos), index_key(stop))]
            invariant(len(batch) == stop - pos, f"leaves {pos}..{stop} incomplete in store")
            yield batch
            pos = stop

    def leaf(self, index: int) -> bytes:
        with self.store.read() as txn:
            raw = txn.get(Table.LEAVES, index_key(index))
        if raw is None:
            raise LookupError_(f"no leaf at index {index}")
        return raw

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
            leaf = txn.get(Table.LEAVES, index_key(index))
            assert leaf is not None
            return leaf, inclusion_proof(_TxnNodes(txn), index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self.store.read() as txn:
            self._check_size(txn, second)
            if not 0 <= first <= second:
                raise RangeError(f"consistency proof needs 0 <= first ({first}) <= second ({second})")
            return consistency_proof(_TxnNodes(txn), first, second)

    def transfer_index(self, transfer_id: bytes) -> int:
        with self.store.read() as txn:
            raw = txn.get(Table.TRANSFERS, id_key(transfer_id))
        if raw is None:
            raise LookupError_(f"transfer {id_key(transfer_id).hex()} not found")
        return TransferRef.decode(raw).leaf_index

    @staticmethod
    def _check_size(txn: ReadTxn, size: int) -> None:
        raw = txn.get(Table.META, META_HEAD)
        current = Head.decode(raw).tree_size if raw else 0
        if size > current:
            raise RangeError(f"tree size {size} is beyond the current tree ({current} leaves)")
