"""Checkpoint key rotation at commit (ledger/apply/rotation.py) and the auditor's chain of keys
(ledger/keyrotation.py), on a real LMDB store in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.codec import Batch, EncodingError, Proposal, validate_batch
from ledger.keyrotation import (
    ROTATION_SIZE,
    KeyChain,
    KeyRotation,
    UntrustedCheckpointKey,
    decode_rotation,
    make_rotation,
)
from ledger.lmdb_store import LmdbStore
from ledger.note import Checkpoint, Signer, sign_note
from ledger.state import LedgerState
from ledger.types import EventKind, Result

ORIGIN = "sovledger/test"
NAME = "test/node-1"
NS = 1_000_000_000


class Replica:
    def __init__(self, path: Path) -> None:
        self.store = LmdbStore(str(path), 1 << 26)
        self.state = LedgerState(self.store)
        self.now = 1_700_000_000 * NS

    def block(self, *records: bytes) -> tuple[list[int], list[int], bytes]:
        self.now += NS
        out = self.state.apply_block(Proposal(self.now, tuple(Batch(EventKind.KEY_ROTATION, r) for r in records)))
        results = [r for b in out.batches for r in b.results]
        indexes = [i for b in out.batches for i in b.log_indexes]
        return results, indexes, out.block_hash


@pytest.fixture
def replica(tmp_path: Path) -> Replica:
    return Replica(tmp_path / "a")


def test_record_round_trips_and_signature_verifies() -> None:
    k1, k2 = Signer.generate(NAME), Signer.generate(NAME)
    rot = make_rotation(ORIGIN, 1, k1, k2, effective_size=7)
    raw = rot.encode()
    assert len(raw) == ROTATION_SIZE == 276
    back = decode_rotation(raw)
    assert back == rot and back.signature_ok()
    assert back.takeover(3) == 7 and back.takeover(10) == 11
    forged = KeyRotation(rot.origin, rot.key_name, rot.node, rot.old, rot.new, 0, rot.signature)
    assert not forged.signature_ok()  # the effective size is covered by the signature


def test_rotation_is_recorded_and_chains(replica: Replica) -> None:
    k1, k2, k3 = (Signer.generate(NAME) for _ in range(3))
    (r,), (i,), _ = replica.block(make_rotation(ORIGIN, 1, k1, k2).encode())
    assert r == Result.OK
    assert replica.state.node_key(1) == (k2.key_id, k2.verifier.public_key, i + 1, i)
    (r,), (i2,), _ = replica.block(make_rotation(ORIGIN, 1, k2, k3).encode())
    assert r == Result.OK
    assert replica.state.node_key(1) == (k3.key_id, k3.verifier.public_key, i2 + 1, i2)
    assert replica.state.node_key(2) is None


def test_rotation_signed_by_a_key_that_is_not_current_is_refused(replica: Replica, tmp_path: Path) -> None:
    k1, k2, k3 = (Signer.generate(NAME) for _ in range(3))
    first = make_rotation(ORIGIN, 1, k1, k2).encode()
    stale = make_rotation(ORIGIN, 1, k1, k3).encode()  # k1 was replaced by k2
    results, _, h1 = replica.block(first, stale)
    assert results == [Result.OK, Result.KEY_ROTATION_NOT_CURRENT_KEY]
    assert replica.state.node_key(1) is not None and replica.state.node_key(1)[0] == k2.key_id  # type: ignore[index]
    # deterministic: another replica applying the same proposal gets the same results and block hash
    other = Replica(tmp_path / "b")
    other.now = replica.now - NS
    results2, _, h2 = other.block(first, stale)
    assert results2 == results and h2 == h1


def test_bad_signature_and_malformed_records_get_result_codes(replica: Replica) -> None:
    k1, k2 = Signer.generate(NAME), Signer.generate(NAME)
    raw = bytearray(make_rotation(ORIGIN, 1, k1, k2).encode())
    raw[-1] ^= 1  # signature
    bad_key_id = bytearray(make_rotation(ORIGIN, 1, k1, k2).encode())
    bad_key_id[64 + 64 + 4] ^= 1  # old key id no longer matches its public key
    results, _, _ = replica.block(bytes(raw), bytes(bad_key_id))
    assert results == [Result.KEY_ROTATION_BAD_SIGNATURE, Result.KEY_ROTATION_MALFORMED]
    assert replica.state.node_key(1) is None


def test_precedence_signature_before_current_key(replica: Replica) -> None:
    k1, k2, k3 = (Signer.generate(NAME) for _ in range(3))
    stale = bytearray(make_rotation(ORIGIN, 1, k1, k3).encode())
    stale[-1] ^= 1  # both: signed by a replaced key, and the signature is bad
    results, _, _ = replica.block(make_rotation(ORIGIN, 1, k1, k2).encode(), bytes(stale))
    assert results == [Result.OK, Result.KEY_ROTATION_BAD_SIGNATURE]


def test_clients_cannot_submit_a_rotation() -> None:
    k1, k2 = Signer.generate(NAME), Signer.generate(NAME)
    with pytest.raises(EncodingError, match="cannot be submitted by clients"):
        validate_batch(EventKind.KEY_ROTATION, make_rotation(ORIGIN, 1, k1, k2).encode(), b"", b"")


def _note(size: int, *signers: Signer) -> str:
    return sign_note(Checkpoint(ORIGIN, size, bytes(32), ()).to_body(), *signers)


def test_chain_trusts_keys_announced_by_trusted_keys_in_log_order() -> None:
    k1, k2, k3 = (Signer.generate(NAME) for _ in range(3))
    chain = KeyChain.from_trusted(ORIGIN, [k1.verifier])
    assert chain.feed(10, make_rotation(ORIGIN, 1, k1, k2))  # k2 takes over at size 11
    assert chain.feed(20, make_rotation(ORIGIN, 1, k2, k3))  # k3 at size 21
    assert chain.check_checkpoint(_note(5, k1), 5, "t") == [k1.verifier.to_string()]
    assert chain.check_checkpoint(_note(15, k2), 15, "t") == [k2.verifier.to_string()]
    assert chain.check_checkpoint(_note(30, k3), 30, "t") == [k3.verifier.to_string()]
    with pytest.raises(UntrustedCheckpointKey, match=r"trusted only for sizes 0\.\.10 "):
        chain.check_checkpoint(_note(30, k1), 30, "t")  # a retired key signing past its takeover


def test_checkpoint_by_an_unannounced_key_is_refused_with_a_clear_message() -> None:
    k1, intruder = Signer.generate(NAME), Signer.generate(NAME)
    chain = KeyChain.from_trusted(ORIGIN, [k1.verifier])
    with pytest.raises(UntrustedCheckpointKey) as e:
        chain.check_checkpoint(_note(3, intruder), 3, "node-x")
    msg = str(e.value)
    assert f"{NAME}+{intruder.key_id.hex()}" in msg and "neither the trust store holds" in msg


def test_rotation_announced_by_an_untrusted_key_is_not_chained() -> None:
    k1, other, k3 = (Signer.generate(NAME) for _ in range(3))
    chain = KeyChain.from_trusted(ORIGIN, [k1.verifier])
    assert not chain.feed(4, make_rotation(ORIGIN, 1, other, k3))
    assert chain.unchained == [(4, k3.verifier.to_string())]
    with pytest.raises(UntrustedCheckpointKey):
        chain.check_checkpoint(_note(9, k3), 9, "t")
    assert not chain.feed(5, make_rotation("sovledger/elsewhere", 1, k1, k3))  # another log's announcement
