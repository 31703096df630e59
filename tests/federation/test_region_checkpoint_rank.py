"""clients/federation.py: which of the region members' notes the auditor takes (``region_checkpoint``).

Only the leader gathers cosignatures; a follower answers its newest plain checkpoint. Seen in
`make test-faults` (test_federation_3x3): a follower a few entries ahead of the leader's last gathering
round won on size, and `audit witness --witnesses 5-of-6` failed with "0 of 6 witnesses cosigned".
"""

from __future__ import annotations

from clients.federation import _rank
from ledger.hashing import leaf_hash
from ledger.merkle import naive_root
from ledger.note import Checkpoint, Signer, cosign, cosigner_verifier, sign_note

ORIGIN = "sovledger/eu-west"
LOG = Signer("eu-west/node-1", bytes([7]) * 32)
WITNESSES = [Signer(f"us-east/node-{i}/witness", bytes([20 + i]) * 32) for i in range(1, 4)]
KEYS = [cosigner_verifier(w) for w in WITNESSES]


def _note(size: int, cosigners: int = 0, by: Signer = LOG) -> str:
    body = Checkpoint(ORIGIN, size, naive_root([leaf_hash(b"%d" % i) for i in range(size)]), ("block 1",)).to_body()
    note = sign_note(body, by)
    for w in WITNESSES[:cosigners]:
        note += cosign(body, w, 1_700_000_000)
    return note


def _best(*notes: str) -> str:
    return max(notes, key=lambda n: _rank(n, KEYS))


def test_a_cosigned_note_beats_a_newer_plain_one() -> None:
    leader, follower = _note(10, cosigners=3), _note(12)
    assert _best(follower, leader) == leader
    assert _best(leader, follower) == leader


def test_among_cosigned_notes_the_newest_then_the_most_cosigned() -> None:
    older, newer_one, newer_two = _note(10, 3), _note(11, 1), _note(11, 2)
    assert _best(older, newer_one, newer_two) == newer_two


def test_without_any_cosigned_note_the_newest_plain_one() -> None:
    assert _best(_note(3), _note(5), _note(4)) == _note(5)


def test_a_second_region_signature_is_not_a_cosignature() -> None:
    """Two region keys (a key rotation) sign a note: still plain, so the cosigned one wins."""
    twice = sign_note(Checkpoint.parse(_note(12).split("\n\n")[0].encode() + b"\n").to_body(), LOG,
                      Signer("eu-west/node-2", bytes([9]) * 32))
    assert _rank(twice, KEYS) == (0, 12, 0)
    assert _best(twice, _note(10, 1)) == _note(10, 1)


def test_a_cosignature_that_does_not_verify_does_not_count() -> None:
    """A line under a witness's name and key id over another checkpoint: the note stays plain."""
    forged = _note(12) + cosign(Checkpoint(ORIGIN, 99, bytes(32), ("block 9",)).to_body(), WITNESSES[0], 1)
    assert _rank(forged, KEYS) == (0, 12, 0)
    assert _best(forged, _note(10, 1)) == _note(10, 1)


def test_a_malformed_note_ranks_last() -> None:
    assert _rank("not a note", KEYS) == (-1, 0, 0)
    assert _best("not a note", _note(1)) == _note(1)
