"""Client-side verification helpers over API responses (pure: ledger.merkle and ledger.note)."""

from __future__ import annotations

from typing import Any

from ledger.merkle import verify_consistency, verify_leaf_inclusion
from ledger.note import Checkpoint, Verifier, open_note


def verify_checkpoint_note(note: str, *verifier_keys: str) -> Checkpoint:
    """Verify a signed checkpoint against trusted verifier keys; return the parsed checkpoint."""
    signed = open_note(note, [Verifier.parse(k) for k in verifier_keys])
    return Checkpoint.parse(signed.body)


def verify_inclusion_response(resp: Any, root: bytes) -> None:
    """An InclusionResponse proves its leaf is at its index in the tree with this root."""
    verify_leaf_inclusion(bytes(resp.leaf), resp.index, resp.tree_size, list(resp.proof), root)


def verify_consistency_response(resp: Any, root1: bytes, root2: bytes) -> None:
    verify_consistency(resp.first, resp.second, root1, root2, list(resp.proof))
