"""A follower checks a leader's snapshot before it touches anything local (node/snapshots.py):
signed by a pinned peer key when the node has ``peer_keys``, root equal to the signed root, and an
extension of the follower's own log (never behind it, never a fork of it). Real LMDB copies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.workload import TransferGenerator, account_records
from ledger.codec import Batch, Proposal
from ledger.lmdb_store import LmdbStore
from ledger.note import Checkpoint, Signer, sign_note
from ledger.state import LedgerState
from ledger.types import EventKind
from node.snapshots import SnapshotRejected, verify_and_prepare

ORIGIN = "sovledger/test"
MAP = 64 << 20


def build(path: Path, blocks: int, seed: int = 1) -> tuple[LmdbStore, LedgerState]:
    store = LmdbStore(str(path), MAP)
    state = LedgerState(store)
    state.apply_block(Proposal(1_000, (Batch(EventKind.CREATE_ACCOUNT, account_records(10)),)), applied_index=1)
    gen = TransferGenerator(10, seed=seed)
    for b in range(blocks):
        recs, _ = gen.records(50)
        state.apply_block(Proposal(2_000 + b, (Batch(EventKind.CREATE_TRANSFER, recs),)), applied_index=2 + b)
    return store, state


def snapshot_of(store: LmdbStore, state: LedgerState, into: Path, signer: Signer) -> str:
    store.copy_to(str(into))
    cp = Checkpoint(ORIGIN, state.head.tree_size, state.range.root())
    return sign_note(cp.to_body(), signer)


Leader = tuple[LmdbStore, LedgerState, Signer]


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[Leader]:
    store, state = build(tmp_path / "leader", 6)
    yield store, state, Signer.generate("test/node-1")
    store.close()


def test_a_good_snapshot_from_a_pinned_peer_extends_the_local_log(tmp_path: Path, leader: Leader) -> None:
    store, state, key = leader
    note = snapshot_of(store, state, tmp_path / "copy", key)
    local, lstate = build(tmp_path / "follower", 2)  # same seed: a prefix of the leader's log
    try:
        applied = verify_and_prepare(tmp_path / "copy", note, key.verifier.to_string(), ORIGIN, MAP, 7,
                                     trusted_keys=[key.verifier.to_string()], local_size=lstate.head.tree_size,
                                     local_root=lstate.range.root())
    finally:
        local.close()
    assert applied == 7


def test_a_snapshot_signed_by_a_key_outside_peer_keys_is_refused(tmp_path: Path, leader: Leader) -> None:
    store, state, key = leader
    impostor = Signer.generate("test/node-1")  # same name, other key: shipped along with the copy
    note = snapshot_of(store, state, tmp_path / "copy", impostor)
    with pytest.raises(SnapshotRejected, match="peer_keys"):
        verify_and_prepare(tmp_path / "copy", note, impostor.verifier.to_string(), ORIGIN, MAP, 7,
                           trusted_keys=[key.verifier.to_string()])
    # without pinned keys the shipped key is trusted on first use
    assert verify_and_prepare(tmp_path / "copy", note, impostor.verifier.to_string(), ORIGIN, MAP, 7) == 7


def test_a_snapshot_that_forks_from_the_local_log_is_refused(tmp_path: Path, leader: Leader) -> None:
    store, state, key = leader
    note = snapshot_of(store, state, tmp_path / "copy", key)
    local, lstate = build(tmp_path / "follower", 2, seed=99)  # other transfers: a different history
    try:
        with pytest.raises(SnapshotRejected, match="forks from this replica's own log"):
            verify_and_prepare(tmp_path / "copy", note, key.verifier.to_string(), ORIGIN, MAP, 7,
                               local_size=lstate.head.tree_size, local_root=lstate.range.root())
    finally:
        local.close()


def test_a_snapshot_behind_the_local_log_is_refused(tmp_path: Path) -> None:
    small, sstate = build(tmp_path / "leader", 1)
    key = Signer.generate("test/node-1")
    note = snapshot_of(small, sstate, tmp_path / "copy", key)
    small.close()
    local, lstate = build(tmp_path / "follower", 4)
    try:
        with pytest.raises(SnapshotRejected, match="roll the log back"):
            verify_and_prepare(tmp_path / "copy", note, key.verifier.to_string(), ORIGIN, MAP, 2,
                               local_size=lstate.head.tree_size, local_root=lstate.range.root())
    finally:
        local.close()


def test_a_copy_whose_root_differs_from_the_signed_one_is_refused(tmp_path: Path, leader: Leader) -> None:
    store, state, key = leader
    store.copy_to(str(tmp_path / "copy"))
    forged = Checkpoint(ORIGIN, state.head.tree_size, bytes(32))
    note = sign_note(forged.to_body(), key)
    with pytest.raises(SnapshotRejected, match="Merkle root"):
        verify_and_prepare(tmp_path / "copy", note, key.verifier.to_string(), ORIGIN, MAP, 7)
