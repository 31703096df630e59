"""`sovledger audit disclose ENTRY --pii FILE`: does this log entry commit to exactly this person's data?

Offline check, three steps, each with its own typed failure:
1. the checkpoint note is signed by a trusted region key (C2SP signed note, ledger/note.py);
2. the entry's leaf is included in that checkpoint's tree (RFC 6962 inclusion proof, BLAKE3);
3. the leaf is a transfer whose ``pii_commitment`` equals keyed-BLAKE3(salt-derived key, canonical
   PII) of the disclosed record (ledger/pii.py).
Only step 3 needs the personal data; the node is asked for the proof only (or, with ``--subject``,
the vault is asked for the data as an auditor, which fails with "erased" after an erasure).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.connect import add_tls_flags
from ledger.codec import LEAF_HEADER_SIZE, EncodingError, decode_leaf
from ledger.hashing import leaf_hash
from ledger.merkle import ProofError, verify_inclusion
from ledger.note import Checkpoint, NoteError, Verifier, open_note
from ledger.pii import CommitmentMismatch, PiiRecord, verify_commitment
from ledger.types import EventKind

_COMMITMENT = slice(LEAF_HEADER_SIZE + 128, LEAF_HEADER_SIZE + 160)  # pii_commitment inside a transfer leaf


class DisclosureFailed(Exception):
    """Base: the disclosure does not hold; the message says which step failed and why."""


class UntrustedCheckpoint(DisclosureFailed):
    pass


class NotIncluded(DisclosureFailed):
    pass


class NoCommitment(DisclosureFailed):
    pass


class WrongData(DisclosureFailed):
    pass


@dataclass(frozen=True, slots=True)
class DisclosureVerdict:
    index: int
    tree_size: int
    root: bytes
    commitment: bytes
    result: int  # the transfer's result code (a refused transfer still committed to the data)


def check_disclosure(index: int, leaf: bytes, proof: list[bytes], note: str, verifiers: list[Verifier],
                     record: PiiRecord, salt: bytes) -> DisclosureVerdict:
    try:
        cp = Checkpoint.parse(open_note(note, verifiers).body)
    except NoteError as e:
        raise UntrustedCheckpoint(f"the checkpoint is not signed by a trusted key of the region: {e}") from None
    try:
        decoded = decode_leaf(leaf)
    except EncodingError as e:
        raise NotIncluded(f"entry {index}: the leaf is malformed: {e}") from None
    if decoded.index != index:
        raise NotIncluded(f"asked for entry {index}, the leaf says it is entry {decoded.index}")
    try:
        verify_inclusion(leaf_hash(leaf), index, cp.size, proof, cp.root)
    except ProofError as e:
        raise NotIncluded(f"entry {index} is not proven in the signed tree of size {cp.size}: {e}") from None
    if decoded.kind not in (EventKind.CREATE_TRANSFER, EventKind.LEDGER_TRANSFER):
        raise NoCommitment(f"entry {index} is a {decoded.kind.name}, not a transfer: it commits to no personal data")
    commitment = leaf[_COMMITMENT]
    if commitment == bytes(32):
        raise NoCommitment(f"entry {index} is a transfer without a pii_commitment")
    try:
        verify_commitment(record, salt, commitment)
    except CommitmentMismatch as e:
        raise WrongData(f"entry {index} does not commit to this data: {e}") from None
    return DisclosureVerdict(index, cp.size, cp.root, commitment, decoded.result)


def cmd_disclose(args: argparse.Namespace) -> int:
    """Fetch the entry's proof from --node, the data from --pii FILE (or the vault), and check it."""
    from clients.client import LedgerClient
    from clients.connect import TlsConfigError, tls_from_args
    from clients.pii import PiiVault, VaultCallError, read_pii_file

    try:
        tls = tls_from_args(args, "auditor-auditor.toml")  # proofs and (with --subject) the vault, as auditor
        if args.pii:
            record, salt = read_pii_file(Path(args.pii))
        else:
            with PiiVault(args.node, args.timeout, tls) as vault:
                d = vault.get(int(args.subject, 0))
            record, salt = d.record, d.salt
        with LedgerClient(args.node, args.timeout, tls=tls) as client:
            resp = client.inclusion_proof(index=args.entry)
            verifiers = _verifiers(args, client)
        verdict = check_disclosure(args.entry, bytes(resp.leaf), [bytes(h) for h in resp.proof], resp.note,
                                   verifiers, record, salt)
    except (DisclosureFailed, VaultCallError, TlsConfigError, ValueError) as e:
        _print(args, {"ok": False, "error": type(e).__name__, "message": str(e)}, f"✗ {e}")
        return 1
    _print(args, {"ok": True, "index": verdict.index, "tree_size": verdict.tree_size, "root": verdict.root.hex(),
                  "commitment": verdict.commitment.hex(), "subject_id": str(record.subject_id),
                  "result": verdict.result},
           f"✓ entry {verdict.index} (in the signed tree of size {verdict.tree_size}, root {verdict.root.hex()}) "
           f"commits to the disclosed data of subject {record.subject_id:#x}: {verdict.commitment.hex()}")
    return 0


def _verifiers(args: argparse.Namespace, client: Any) -> list[Verifier]:
    if args.trust:
        from clients.auditor.trust import load

        verifiers: list[Verifier] = load(args.trust).node_verifiers
        return verifiers
    vkey = client.checkpoint().verifier_key
    print(f"warning: no --trust: checking the checkpoint against the key the node advertises ({vkey})",
          file=sys.stderr)
    return [Verifier.parse(vkey)]


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def add_disclose_parser(sub: Any) -> None:
    """Register `disclose` under the `audit` command's subparsers."""
    d = sub.add_parser("disclose", help="verify that a log entry commits to a subject's disclosed personal data")
    d.add_argument("entry", type=int, help="leaf index of the transfer")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--pii", help="disclosure file (from `sovledger pii get --out`)")
    src.add_argument("--subject", help="ask the region's vault for this subject (decimal or 0x-hex u128)")
    d.add_argument("--node", required=True, help="HOST:PORT of a node of the region")
    d.add_argument("--trust", help="trust store (default: the node's advertised key, with a warning)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--timeout", type=float, default=30.0)
    add_tls_flags(d)
    d.set_defaults(func=cmd_disclose)
