"""Pure checks over what a node serves: signed checkpoints, append-only against the trust store,
replayed balances against LookupAccounts, single proofs from API responses, leaf descriptions.

No I/O: the callers (``clients.auditor.verify``, ``prove``, ``compare``, the demo, tests) fetch the
bytes and pass them in; a consistency proof is fetched through a callable handed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clients.auditor.failures import (
    BalanceMismatch,
    CheckpointSignatureError,
    ForkDetected,
    InconsistentLog,
    RollbackDetected,
    UsageError,
    ab,
)
from clients.auditor.trust import TrustedCheckpoint
from ledger.codec import EncodingError, decode_account_state, decode_leaf, decode_transfer
from ledger.hashing import leaf_hash
from ledger.keyrotation import KeyChain, RotationError, UntrustedCheckpointKey, decode_rotation
from ledger.merkle import ProofError, verify_consistency, verify_leaf_inclusion
from ledger.note import (
    BadSignature,
    Checkpoint,
    NoteError,
    NoTrustedSignature,
    Verifier,
    open_note,
    split_note,
)
from ledger.types import EventKind, Result

# -- checkpoints ------------------------------------------------------------------------------------


def verify_note(note: str, verifiers: list[Verifier], origin: str | None, source: str) -> Checkpoint:
    """A checkpoint note signed by at least one of ``verifiers`` (any bad signature by one of them fails)."""
    try:
        signed = open_note(note, verifiers)
    except BadSignature as e:
        raise CheckpointSignatureError(
            f"{source}: checkpoint signature by {e.name} (key id {e.key_id.hex()}) does not verify over the note "
            "body", node=source, key=e.name, key_id=e.key_id, note=note) from None
    except NoTrustedSignature:
        try:
            names = [f"{s.name} ({s.key_id.hex()})" for s in split_note(note)[1]]
        except NoteError:
            names = []
        trusted = [f"{v.name} ({v.key_id.hex()})" for v in verifiers]
        raise CheckpointSignatureError(
            f"{source}: checkpoint is signed by {', '.join(names) or 'nobody'}, none of them trusted "
            f"(trusted: {', '.join(trusted)}); if the node rotated its checkpoint key, `audit verify --full` follows "
            "the KEY_ROTATION entries from the trusted keys", node=source, signers=names, trusted=trusted,
            note=note) from None
    except NoteError as e:
        raise CheckpointSignatureError(f"{source}: checkpoint note is malformed: {e}", node=source, note=note) from None
    try:
        cp = Checkpoint.parse(signed.body)
    except NoteError as e:
        raise CheckpointSignatureError(f"{source}: signed body is not a checkpoint: {e}", node=source) from None
    if origin is not None and cp.origin != origin:
        raise CheckpointSignatureError(f"{source}: checkpoint origin {cp.origin!r}, the trust store is for "
                                       f"{origin!r}", node=source, expected=origin, got=cp.origin)
    return cp


def checkpoint_unverified(note: str, origin: str, source: str) -> Checkpoint:
    """The checkpoint a note carries, its signatures not checked yet (``verify_chained`` does, after the replay)."""
    try:
        cp = Checkpoint.parse(split_note(note)[0])
    except NoteError as e:
        raise CheckpointSignatureError(f"{source}: checkpoint note is malformed: {e}", node=source, note=note) from None
    if cp.origin != origin:
        raise CheckpointSignatureError(f"{source}: checkpoint origin {cp.origin!r}, the trust store is for "
                                       f"{origin!r}", node=source, expected=origin, got=cp.origin)
    return cp


def verify_chained(note: str, cp: Checkpoint, trusted: list[Verifier], rotations: list[tuple[int, bytes]],
                   source: str) -> KeyChain:
    """Follow the log's KEY_ROTATION entries (leaf index, body) from the trusted keys, in log order, and
    require the checkpoint to be signed by a key of that chain valid at its size. Returns the chain."""
    chain = KeyChain.from_trusted(cp.origin, trusted)
    for index, body in rotations:
        try:
            chain.feed(index, decode_rotation(body))
        except RotationError as e:
            raise CheckpointSignatureError(f"{source}: leaf {index}: KEY_ROTATION entry with result ok does not "
                                           f"decode: {e}", node=source, index=index) from None
    try:
        chain.check_checkpoint(note, cp.size, source)
    except UntrustedCheckpointKey as e:
        raise CheckpointSignatureError(str(e), node=source, note=note) from None
    return chain


def check_against_trusted(cp: Checkpoint, note: str, trusted: TrustedCheckpoint | None, source: str,
                          consistency: Callable[[int, int], list[bytes]] | None) -> str:
    """Append-only check against the last trusted checkpoint; returns a one-line description."""
    if trusted is None:
        return "no earlier checkpoint trusted (first verification)"
    if cp.size < trusted.size:
        raise RollbackDetected(
            f"{source}: rollback: signed checkpoint has tree size {cp.size}, smaller than the trusted size "
            f"{trusted.size} (root {ab(cp.root)} vs trusted {ab(trusted.root)})", node=source,
            expected=trusted.size, got=cp.size, trusted_note=trusted.note, note=note)
    if cp.size == trusted.size:
        if cp.root != trusted.root:
            raise ForkDetected(
                f"{source}: fork: two signed checkpoints of size {cp.size} with different roots: trusted "
                f"{ab(trusted.root)}, now {ab(cp.root)}", node=source, size=cp.size, expected=trusted.root,
                got=cp.root, trusted_note=trusted.note, note=note)
        return f"same tree as trusted (size {cp.size})"
    if consistency is None:  # offline: the replay checks the root at the trusted size
        return f"extends trusted size {trusted.size} (root at that size checked during the replay)"
    n = _proved(consistency, (trusted.size, trusted.root), (cp.size, cp.root), cp, note, trusted, source,
                f"signed checkpoint of size {cp.size} is not an extension of the trusted checkpoint of size "
                f"{trusted.size}")
    return f"consistent with trusted size {trusted.size} ({n}-hash proof verified)"


def _proved(consistency: Callable[[int, int], list[bytes]], old: tuple[int, bytes], new: tuple[int, bytes],
            cp: Checkpoint, note: str, trusted: TrustedCheckpoint, source: str, failure: str) -> int:
    """Fetch and verify the consistency proof from tree ``old`` (size, root) to tree ``new``; its length.
    A failing proof is InconsistentLog with ``failure`` as the message."""
    proof = consistency(old[0], new[0])
    try:
        verify_consistency(old[0], new[0], old[1], new[1], proof)
    except ProofError as e:
        raise InconsistentLog(f"{source}: {failure}: {e}", node=source, trusted_size=trusted.size, size=cp.size,
                              trusted_note=trusted.note, note=note) from None
    return len(proof)


def check_cosigned_against_trusted(cp: Checkpoint, note: str, own: Checkpoint, own_note: str,
                                   trusted: TrustedCheckpoint | None, source: str,
                                   consistency: Callable[[int, int], list[bytes]]) -> str:
    """``audit verify --witnesses``: the region's cosigned checkpoint ``cp`` against the trust store.

    Witnesses cosign with a lag, so a cosigned checkpoint smaller than the trusted one is not a
    rollback by itself. Then the node's OWN signed checkpoint ``own`` is held to the plain rule
    (``check_against_trusted``: smaller than trusted is a rollback; otherwise it must extend the trusted
    tree) and the cosigned one must be a prefix of the trusted tree (consistency proof from the node,
    ``cp.size`` → ``trusted.size``, verified against both roots; a failing one is InconsistentLog).
    Returns a one-line description; the caller reports the lag (exit 0, docs/auditor.md) and never moves
    the trust store back."""
    if trusted is None or cp.size >= trusted.size:
        return check_against_trusted(cp, note, trusted, source, consistency)
    held = check_against_trusted(own, own_note, trusted, source, consistency)
    n = _proved(consistency, (cp.size, cp.root), (trusted.size, trusted.root), cp, note, trusted, source,
                f"the region's cosigned checkpoint of size {cp.size} is not a prefix of the trusted checkpoint "
                f"of size {trusted.size}")
    return (f"the region's cosigned checkpoint (size {cp.size}) is behind your trusted checkpoint (size "
            f"{trusted.size}): wait for the witnesses to cosign a newer one; it is a prefix of the trusted tree "
            f"({n}-hash proof verified), and the node's own checkpoint (size {own.size}): {held}")


def checkpoint_block_height(cp: Checkpoint) -> int:
    """The block height named by the checkpoint's ``block`` line (blocks are aligned to it)."""
    ext = cp.extension("block")
    if ext is None:
        raise CheckpointSignatureError("signed checkpoint has no 'block' extension line; cannot align blocks")
    return int(ext.split(" ")[0])


def verify_checkpoint_note(note: str, *verifier_keys: str) -> Checkpoint:
    """Verify a signed checkpoint against trusted verifier keys (C2SP key strings); return it parsed.

    Raises ``ledger.note`` errors unchanged (the demo and tests use this without the audit failures)."""
    signed = open_note(note, [Verifier.parse(k) for k in verifier_keys])
    return Checkpoint.parse(signed.body)


# -- proofs from API responses ----------------------------------------------------------------------


def verify_inclusion_response(resp: Any, root: bytes) -> None:
    """An InclusionResponse proves its leaf is at its index in the tree with this root."""
    verify_leaf_inclusion(bytes(resp.leaf), resp.index, resp.tree_size, list(resp.proof), root)


def verify_consistency_response(resp: Any, root1: bytes, root2: bytes) -> None:
    """A ConsistencyResponse proves the tree with ``root2`` extends the one with ``root1``."""
    verify_consistency(resp.first, resp.second, root1, root2, list(resp.proof))


# -- balances and leaves ----------------------------------------------------------------------------


def compare_accounts(replayed: dict[bytes, bytes], node: dict[bytes, bytes | None], node_name: str) -> None:
    """Replayed account states vs the node's LookupAccounts answers: the first difference is an error."""
    for aid in sorted(replayed, key=lambda k: k[::-1]):
        want = replayed[aid]
        got = node.get(aid)
        acct = int.from_bytes(aid, "little")
        if got is None:
            raise BalanceMismatch(f"account {acct}: created in the log, {node_name} does not know it",
                                  account=acct, node=node_name)
        if got != want:
            w, g = decode_account_state(want), decode_account_state(got)
            diffs = [(f, getattr(w, f), getattr(g, f)) for f in
                     ("debits_pending", "debits_posted", "credits_pending", "credits_posted", "timestamp_ns")
                     if getattr(w, f) != getattr(g, f)]
            if w.account != g.account:
                diffs.append(("record", ab(want[:64]), ab(got[:64])))
            detail = ", ".join(f"{f}: replayed {x}, node {y}" for f, x, y in diffs)
            raise BalanceMismatch(f"account {acct}: {detail} ({node_name})", account=acct, node=node_name,
                                  fields=[{"field": f, "replayed": str(x), "node": str(y)} for f, x, y in diffs])


def describe_leaf(raw: bytes) -> dict[str, Any]:
    """A leaf decoded for humans (tables, fork evidence); never raises."""
    try:
        leaf = decode_leaf(raw)
    except EncodingError as e:
        return {"malformed": str(e), "bytes": ab(raw, 48), "leaf_hash": leaf_hash(raw).hex()}
    try:
        result = Result(leaf.result).name.lower()
    except ValueError:
        result = str(leaf.result)
    out: dict[str, Any] = {"index": leaf.index, "kind": leaf.kind.name, "result": result,
                           "timestamp_ns": leaf.timestamp_ns, "leaf_hash": leaf_hash(raw).hex()}
    body = leaf.body
    if leaf.kind in (EventKind.CREATE_TRANSFER, EventKind.LEDGER_TRANSFER):
        t = decode_transfer(body)
        out.update(id=t.id, debit=t.debit_account_id, credit=t.credit_account_id, amount=t.amount, flags=t.flags)
    elif leaf.kind == EventKind.CREATE_ACCOUNT:
        out.update(id=int.from_bytes(body[:16], "little"))
    elif leaf.kind == EventKind.EXPIRE_PENDING:
        out.update(id=int.from_bytes(body, "little"))
    if leaf.psp_signature:
        out["psp_key_id"] = leaf.psp_signature[0].hex()
    return out



def parse_u128(text: str) -> int:
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise UsageError(f"transfer id {text!r} is neither decimal nor 0x-hex") from None
    if not 0 < value < 1 << 128:
        raise UsageError(f"transfer id {text} is outside 1..2^128-1")
    return value
