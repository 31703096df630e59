"""ledger/witness.py: the pure witness decisions, against trees built from random leaves."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.hashing import leaf_hash
from ledger.merkle import MemoryNodes, consistency_proof, naive_root
from ledger.note import Checkpoint, Signer, cosign, cosigner_verifier, sign_note
from ledger.witness import (
    AddCheckpoint,
    Cosigned,
    Outcome,
    Policy,
    SplitView,
    WitnessFormatError,
    check_pair,
    check_policy,
    decide,
)

ORIGIN = "sovledger/eu-west"
LOG = Signer("eu-west/node-1", bytes([7]) * 32)
OTHER = Signer("eu-west/node-9", bytes([8]) * 32)  # not a key of the federation
KEYS = {ORIGIN: [LOG.verifier]}
WITNESSES = [Signer(f"us-east/node-{i}/witness", bytes([20 + i]) * 32) for i in range(1, 4)]


def _leaves(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(f"{salt}:{i}".encode()) for i in range(n)]


def _note(size: int, salt: int = 0, signer: Signer = LOG, origin: str = ORIGIN) -> str:
    root = naive_root(_leaves(size, salt))
    return sign_note(Checkpoint(origin, size, root, ("block 1",)).to_body(), signer)


def _proof(m: int, n: int, salt: int = 0) -> tuple[bytes, ...]:
    return tuple(consistency_proof(MemoryNodes(_leaves(n, salt)), m, n)) if 0 < m < n else ()


def _cosigned(size: int, salt: int = 0) -> Cosigned:
    return Cosigned(ORIGIN, size, naive_root(_leaves(size, salt)), _note(size, salt))


def _decide(req: AddCheckpoint, known: Cosigned | None) -> Outcome:
    return decide(req, KEYS, lambda o: known if o == ORIGIN else None).outcome


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40))
def test_cosigns_exactly_the_consistent_growth(m: int, n: int) -> None:
    """From a cosigned size m, a checkpoint of size n with the log's proof is cosigned iff n >= m."""
    known = _cosigned(m) if m else None
    verdict = decide(AddCheckpoint(m, _proof(m, n) if n > m else (), _note(n)), KEYS, lambda o: known)
    assert verdict.outcome == (Outcome.COSIGNED if n >= m else Outcome.ROLLBACK)
    if n >= m:
        assert verdict.checkpoint is not None and verdict.checkpoint.size == n


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40))
def test_never_cosigns_a_fork(m: int, n: int) -> None:
    """A checkpoint of another history (different leaves) is never cosigned, whatever proof comes."""
    known = _cosigned(m, salt=0)
    fork = _note(n, salt=1)
    for proof in (_proof(m, n, 1), _proof(m, n, 0), ()):
        outcome = _decide(AddCheckpoint(m, proof, fork), known)
        assert outcome != Outcome.COSIGNED
        if n == m:
            assert outcome == Outcome.SPLIT_VIEW


def test_split_view_carries_both_notes() -> None:
    known = _cosigned(5)
    fork = _note(5, salt=1)
    verdict = decide(AddCheckpoint(5, (), fork), KEYS, lambda o: known)
    assert verdict.outcome == Outcome.SPLIT_VIEW and verdict.evidence is not None
    assert verdict.evidence.notes == (known.note, fork)
    again = SplitView.from_json(verdict.evidence.to_json())
    assert again == verdict.evidence
    assert check_pair(*again.notes, [LOG.verifier], None) is not None


def test_other_outcomes() -> None:
    known = _cosigned(4)
    assert _decide(AddCheckpoint(3, _proof(3, 6), _note(6)), known) == Outcome.OLD_SIZE_MISMATCH
    v = decide(AddCheckpoint(0, (), _note(6)), KEYS, lambda o: known)
    assert v.outcome == Outcome.OLD_SIZE_MISMATCH and v.witness_size == 4
    assert _decide(AddCheckpoint(4, _proof(4, 6), _note(6, signer=OTHER)), known) == Outcome.BAD_SIGNATURE
    assert _decide(AddCheckpoint(0, (), _note(6, origin="sovledger/mars")), None) == Outcome.UNKNOWN_ORIGIN
    bad = list(_proof(4, 6))
    bad[0] = bytes(32)
    assert _decide(AddCheckpoint(4, tuple(bad), _note(6)), known) == Outcome.BAD_PROOF
    assert _decide(AddCheckpoint(4, (), _note(4)), known) == Outcome.COSIGNED  # the same one again
    assert _decide(AddCheckpoint(0, (), _note(0)), None) == Outcome.COSIGNED  # the empty log


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 30), st.lists(st.binary(min_size=32, max_size=32), max_size=8))
def test_request_round_trip(old: int, proof: list[bytes]) -> None:
    req = AddCheckpoint(old, tuple(proof), _note(3))
    assert AddCheckpoint.parse(req.encode()) == req


@pytest.mark.parametrize("body,match", [
    (b"old x\n\n", "old N"), (b"new 3\n\n", "old N"), (b"old 3\n", "empty line"),
    (b"old 3\nnot-base64!\n\n", "base64"), (b"old 3\nAAAA\n\n", "expected 32"), (b"old 01\n\n", "old N"),
    (b"\xff\xfe", "UTF-8"),
])
def test_malformed_requests(body: bytes, match: str) -> None:
    with pytest.raises(WitnessFormatError, match=match):
        AddCheckpoint.parse(body)


def test_malformed_note_is_a_format_error() -> None:
    with pytest.raises(WitnessFormatError, match="checkpoint note"):
        decide(AddCheckpoint(0, (), "no note\n"), KEYS, lambda o: None)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.sets(st.integers(0, 2)), st.integers(0, 2**40))
def test_policy_counts_distinct_valid_cosignatures(k: int, signers: set[int], ts: int) -> None:
    note = _note(9)
    body = note[: note.index("\n\n") + 1].encode()
    for i in sorted(signers):
        note += cosign(body, WITNESSES[i], ts)
    verifiers = [cosigner_verifier(w) for w in WITNESSES]
    v = check_policy(note, verifiers, Policy(k, 3))
    assert v.met == (len(signers) >= k)
    assert len(v.cosigned_by) == len(signers)


def test_policy_refuses_forged_and_foreign_cosignatures() -> None:
    note = _note(9)
    body = note[: note.index("\n\n") + 1].encode()
    other_body = _note(9, salt=1)[: note.index("\n\n") + 1].encode()
    forged = cosign(other_body, WITNESSES[0], 5)  # a cosignature over another checkpoint
    stranger = cosign(body, Signer("us-east/node-1/witness", bytes([99]) * 32), 5)  # same name, other key
    v = check_policy(note + forged + stranger + cosign(body, WITNESSES[1], 5),
                     [cosigner_verifier(w) for w in WITNESSES], Policy(2, 3))
    assert not v.met and v.cosigned_by == (WITNESSES[1].name,) and v.bad == (WITNESSES[0].name,)
    with pytest.raises(ValueError, match="K-of-N"):
        Policy.parse("3-of-2")
    assert Policy.parse("2-of-3") == Policy(2, 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.booleans())
def test_check_pair(m: int, n: int, same_history: bool) -> None:
    a, b = _note(m), _note(n, salt=0 if same_history else 1)
    lo, hi = min(m, n), max(m, n)
    proof = _proof(lo, hi, 0 if same_history else 1) if lo != hi else ()
    result = check_pair(a, b, [LOG.verifier], proof)
    assert (result is None) == same_history
