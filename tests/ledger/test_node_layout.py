"""The tree-node table's end-major key layout (docs/formats.md §8) and the migration of a store written
under the legacy layout: real LMDB stores in temp dirs, real blocks of transfers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clients.workload import TransferGenerator, account_records
from ledger import native
from ledger.apply import driver
from ledger.codec import Batch, Proposal
from ledger.hashing import leaf_hash
from ledger.lmdb_store import LmdbStore
from ledger.merkle import naive_root, verify_consistency, verify_inclusion
from ledger.reader import DamagedEntry, LedgerReader
from ledger.schema import TABLES, Table, legacy_node_key, node_key
from ledger.state import LedgerState
from ledger.store import Store
from ledger.types import EventKind

ACCOUNTS = 50
BLOCKS = (7, 1, 33, 64, 5, 130)  # odd sizes: subtrees complete across block boundaries


def proposals(first_ts: int = 1_700_000_000 * 10**9) -> list[Proposal]:
    gen = TransferGenerator(ACCOUNTS, seed=5)
    out = [Proposal(first_ts, (Batch(EventKind.CREATE_ACCOUNT, account_records(ACCOUNTS)),))]
    for n, size in enumerate(BLOCKS):
        recs, _ = gen.records(size)
        out.append(Proposal(first_ts + (n + 1) * 10**9, (Batch(EventKind.CREATE_TRANSFER, recs),)))
    return out


def build(path: Path, props: list[Proposal]) -> LmdbStore:
    store = LmdbStore(str(path), map_size_bytes=64 << 20)
    state = LedgerState(store)
    for p in props:
        assert not any(r for b in state.apply_block(p).batches for r in b.results)
    return store


def dump(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    with store.read() as txn:
        return {t: list(txn.range(t)) for t in TABLES}


def to_legacy(store: Store) -> int:
    """Rewrite the store's nodes under the legacy keys (level u8 ‖ index u64 BE), as an older writer left them."""
    with store.read() as txn:
        rows = list(txn.range(Table.NODES))
    with store.write() as txn:
        for key, h in rows:
            txn.delete(Table.NODES, key)
            end, level = int.from_bytes(key[:8], "big"), key[8]
            txn.put(Table.NODES, legacy_node_key(level, (end >> level) - 1), h)
    return len(rows)


@pytest.fixture(params=native.ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    prior = native.active()
    native.select(request.param)
    yield request.param
    native.select(prior)


def test_every_complete_subtree_is_stored_under_its_end_major_key(tmp_path: Path, engine: str) -> None:
    store = build(tmp_path / "s", proposals())
    reader = LedgerReader(store)
    size = reader.head().tree_size
    with store.read() as txn:
        keys = [k for k, _ in txn.range(Table.NODES)]
    expected = sorted(node_key(level, i) for level in range(1, size.bit_length()) for i in range(size >> level))
    assert keys == expected
    assert all(k[0] == 0 for k in keys)  # apart from the legacy key space (first byte = level >= 1)
    hashes = [leaf_hash(leaf) for chunk in reader.leaves(0, size) for leaf in chunk]
    for level, i in ((1, 0), (3, 5), (size.bit_length() - 1, 0)):
        with store.read() as txn:
            assert txn.get(Table.NODES, node_key(level, i)) == naive_root(hashes[i << level:(i + 1) << level])
    store.close()


def test_a_legacy_store_is_read_as_is_then_migrated_by_its_writer(tmp_path: Path, engine: str) -> None:
    props = proposals()
    twin = build(tmp_path / "twin", props)  # written in the current layout throughout
    old = build(tmp_path / "old", props[:4])
    moved = to_legacy(old)
    assert moved > 0
    reader = LedgerReader(old)  # an offline reader (backup, restore check) on the unmigrated store
    size = reader.head().tree_size
    leaves = [leaf for chunk in reader.leaves(0, size) for leaf in chunk]  # verified against level-1 nodes
    root = reader.root_at(size)
    assert root == naive_root([leaf_hash(x) for x in leaves])
    leaf, proof = reader.inclusion_proof(size // 3, size)
    verify_inclusion(leaf_hash(leaf), size // 3, size, proof, root)
    state = LedgerState(old)  # the writer's first open rewrites every legacy key
    assert state.migrated_nodes == moved
    for p in props[4:]:
        state.apply_block(p)
    assert dump(old) == dump(twin)  # byte-identical to a store that never had the legacy layout
    after = LedgerReader(old)
    head = after.head().tree_size
    verify_consistency(size, head, root, after.root_at(head), after.consistency_proof(size, head))
    assert LedgerState(old).migrated_nodes == 0
    old.close()
    twin.close()


def test_a_migration_interrupted_between_chunks_reads_and_resumes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    props = proposals()
    twin = build(tmp_path / "twin", props)
    old = build(tmp_path / "old", props)
    moved = to_legacy(old)
    monkeypatch.setattr(driver, "NODE_MIGRATION_CHUNK", 40)
    real_write = old.write
    chunks = 0

    @contextmanager
    def crash_on_the_third_chunk() -> Iterator[object]:
        nonlocal chunks
        chunks += 1
        if chunks == 3:
            raise OSError("power cut")  # fault injection: the process dies before this chunk's txn
        with real_write() as txn:
            yield txn

    monkeypatch.setattr(old, "write", crash_on_the_third_chunk)
    with pytest.raises(OSError, match="power cut"):
        LedgerState(old)
    with old.read() as txn:
        keys = [k for k, _ in txn.range(Table.NODES)]
    assert sum(k[0] == 0 for k in keys) == 80 and len(keys) == moved  # two chunks moved, nothing lost
    reader = LedgerReader(old)
    size = reader.head().tree_size
    assert reader.root_at(size) == LedgerReader(twin).root_at(size)  # a mixed table still reads
    assert len([leaf for chunk in reader.leaves(0, size) for leaf in chunk]) == size
    monkeypatch.setattr(old, "write", real_write)
    assert LedgerState(old).migrated_nodes == moved - 80
    assert dump(old) == dump(twin)
    old.close()
    twin.close()


def test_check_tree_nodes_finds_a_damaged_node_off_every_root_path(tmp_path: Path) -> None:
    store = build(tmp_path / "s", proposals())
    reader = LedgerReader(store)
    size = reader.head().tree_size
    reader.check_tree_nodes(size)  # intact
    level, index = 2, 3  # a node no block's root of this workload reads: only a full check sees it
    with store.write() as txn:
        h = txn.get(Table.NODES, node_key(level, index))
        assert h is not None
        txn.put(Table.NODES, node_key(level, index), bytes([h[0] ^ 1]) + h[1:])
    assert reader.root_at(size) == reader.block(reader.head().height).merkle_root  # roots still read fine …
    with pytest.raises(DamagedEntry, match="level 2 over entries \\[12, 16\\)"):
        reader.check_tree_nodes(size)  # … the full check does not
    store.close()
