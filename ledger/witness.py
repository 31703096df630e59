"""Witnessing, the pure part: "may I cosign this checkpoint", "does this note meet a witness policy",
"can these two checkpoints both be true". Bytes in, typed verdicts out; no I/O, no clock.

Semantics follow C2SP tlog-witness and tlog-cosignature (docs/federation.md, docs/formats.md §14):

- an add-checkpoint request is ``"old " N "\\n"``, the consistency proof as base64 lines, one empty
  line, then the signed checkpoint note. N is the size of the checkpoint the client believes the
  witness last cosigned for the origin (0 for none);
- the witness answers OLD_SIZE_MISMATCH (C2SP: 409 Conflict) with its own size when N differs, so
  the client can retry with a proof from that size;
- it never cosigns a checkpoint that it cannot prove consistent with the one it cosigned before:
  a smaller tree is a ROLLBACK, a bad proof is BAD_PROOF, and a signed checkpoint of the same size
  with another root is a SPLIT_VIEW — then the verdict carries the evidence (both signed notes).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ledger.hashing import EMPTY_ROOT
from ledger.merkle import ProofError, verify_consistency
from ledger.note import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    NoteError,
    Verifier,
    cosignature_message,
    open_note,
    split_note,
)

PROOF_HASHES_MAX: Final = 64  # a consistency proof of a tree below 2^63 entries has fewer
REQUEST_BYTES_MAX: Final = 64 << 10
EVIDENCE_FORMAT: Final = "sovledger-split-view/1"


class WitnessFormatError(ValueError):
    """The request is not a well-formed add-checkpoint body (INVALID_ARGUMENT at the edge)."""


class Outcome(enum.IntEnum):
    """The witness's answer to an add-checkpoint request (on the wire: witness.proto ``Verdict``)."""

    COSIGNED = 1
    OLD_SIZE_MISMATCH = 2  # C2SP 409: the client's "old" is not the witness's latest size
    UNKNOWN_ORIGIN = 3  # C2SP 404: not a log of the federation
    BAD_SIGNATURE = 4  # C2SP 403: no valid signature by the origin's checkpoint keys
    BAD_PROOF = 5  # C2SP 422: the consistency proof does not verify
    ROLLBACK = 6  # C2SP 400: smaller than what the witness already cosigned
    SPLIT_VIEW = 7  # a validly signed checkpoint of a cosigned size with another root: evidence kept


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    note: str

    def encode(self) -> bytes:
        lines = [f"old {self.old_size}", *(base64.b64encode(h).decode() for h in self.proof), ""]
        return ("\n".join(lines) + "\n").encode() + self.note.encode()

    @staticmethod
    def parse(body: bytes) -> AddCheckpoint:
        if len(body) > REQUEST_BYTES_MAX:
            raise WitnessFormatError(f"add-checkpoint body is {len(body)} bytes, above {REQUEST_BYTES_MAX}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WitnessFormatError("add-checkpoint body is not UTF-8") from None
        head, sep, note = text.partition("\n\n")
        if not sep:
            raise WitnessFormatError("add-checkpoint body needs 'old N', proof lines, an empty line, then the note")
        first, *hashes = head.split("\n")
        size_s = first.removeprefix("old ")
        if first == size_s or not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
            raise WitnessFormatError(f"first line must be 'old N' with N a decimal size, got {first[:40]!r}")
        if len(hashes) > PROOF_HASHES_MAX:
            raise WitnessFormatError(f"consistency proof has {len(hashes)} hashes, at most {PROOF_HASHES_MAX}")
        proof = []
        for i, h in enumerate(hashes, start=2):
            try:
                raw = base64.b64decode(h, validate=True)
            except binascii.Error:
                raise WitnessFormatError(f"line {i}: proof hash is not base64") from None
            if len(raw) != 32:
                raise WitnessFormatError(f"line {i}: proof hash is {len(raw)} bytes, expected 32")
            proof.append(raw)
        return AddCheckpoint(int(size_s), tuple(proof), note)


@dataclass(frozen=True, slots=True)
class Cosigned:
    """What a witness remembers per origin: the latest checkpoint it cosigned (the signed note)."""

    origin: str
    size: int
    root: bytes
    note: str


@dataclass(frozen=True, slots=True)
class SplitView:
    """Two checkpoints of one origin, each validly signed by the origin's keys, that cannot both be true."""

    origin: str
    notes: tuple[str, str]
    reason: str
    proof: tuple[bytes, ...] = ()  # the consistency proof the log offered (empty: equal sizes)

    def to_json(self) -> bytes:
        doc = {"format": EVIDENCE_FORMAT, "origin": self.origin, "reason": self.reason,
               "checkpoints": list(self.notes), "proof": [base64.b64encode(h).decode() for h in self.proof]}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @staticmethod
    def from_json(raw: bytes) -> SplitView:
        try:
            doc = json.loads(raw)
            if doc["format"] != EVIDENCE_FORMAT:
                raise WitnessFormatError(f"evidence format {doc['format']!r} is not {EVIDENCE_FORMAT}")
            a, b = doc["checkpoints"]
            proof = tuple(base64.b64decode(h, validate=True) for h in doc["proof"])
            return SplitView(str(doc["origin"]), (str(a), str(b)), str(doc["reason"]), proof)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise WitnessFormatError(f"not split-view evidence: {e}") from None


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str
    witness_size: int = 0  # the witness's latest cosigned size for the origin (OLD_SIZE_MISMATCH)
    checkpoint: Checkpoint | None = None  # set when COSIGNED: the body to cosign
    evidence: SplitView | None = None  # set when SPLIT_VIEW


def _parse_note(note: str) -> Checkpoint:
    try:
        body, _ = split_note(note)
        return Checkpoint.parse(body)
    except NoteError as e:
        raise WitnessFormatError(f"checkpoint note: {e}") from None


def decide(request: AddCheckpoint, keys: Mapping[str, Sequence[Verifier]],
           last: Callable[[str], Cosigned | None]) -> Verdict:
    """May this witness cosign ``request``? ``keys``: origin → its checkpoint keys (the federation);
    ``last(origin)``: what it cosigned before. Raises WitnessFormatError on a malformed note."""
    cp = _parse_note(request.note)
    origin_keys = keys.get(cp.origin)
    if not origin_keys:
        return Verdict(Outcome.UNKNOWN_ORIGIN, f"origin {cp.origin!r} is not a log of this federation")
    try:
        open_note(request.note, list(origin_keys))
    except NoteError as e:
        return Verdict(Outcome.BAD_SIGNATURE, f"checkpoint of {cp.origin}: {e}")
    known = last(cp.origin)
    known_size = known.size if known else 0
    if request.old_size != known_size:
        return Verdict(Outcome.OLD_SIZE_MISMATCH, f"this witness last cosigned {cp.origin} at size {known_size}, "
                       f"not {request.old_size}: resend with a proof from {known_size}", known_size)
    if cp.size < known_size:
        return Verdict(Outcome.ROLLBACK, f"checkpoint size {cp.size} is below the cosigned size {known_size}",
                       known_size)
    if known is not None and cp.size == known.size and cp.root != known.root:
        evidence = SplitView(cp.origin, (known.note, request.note),
                             f"two signed checkpoints of size {cp.size} with different roots")
        return Verdict(Outcome.SPLIT_VIEW, evidence.reason, known_size, evidence=evidence)
    try:
        verify_consistency(known_size, cp.size, known.root if known else EMPTY_ROOT, cp.root, request.proof)
    except ProofError as e:
        return Verdict(Outcome.BAD_PROOF, f"consistency proof {known_size} → {cp.size} fails: {e}", known_size)
    return Verdict(Outcome.COSIGNED, f"consistent with size {known_size}", known_size, checkpoint=cp)


# -- auditor side: witness policy and split views ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """``k-of-n``: at least k distinct witnesses among the n named must have cosigned."""

    k: int
    n: int

    @staticmethod
    def parse(text: str) -> Policy:
        k_s, sep, n_s = text.partition("-of-")
        if not sep or not k_s.isdigit() or not n_s.isdigit() or not 1 <= int(k_s) <= int(n_s):
            raise ValueError(f"witness policy {text!r} must be K-of-N with 1 <= K <= N (e.g. 2-of-3)")
        return Policy(int(k_s), int(n_s))


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    met: bool
    cosigned_by: tuple[str, ...]  # names of the witnesses whose cosignature verified
    bad: tuple[str, ...]  # names whose cosignature line did not verify
    reason: str


def check_policy(note: str, witnesses: Sequence[Verifier], policy: Policy) -> PolicyVerdict:
    """Count the valid cosignatures by distinct known witness keys on a checkpoint note.

    The note's own log signature is checked elsewhere (``open_note`` with the origin's keys)."""
    if len(witnesses) < policy.n:
        return PolicyVerdict(False, (), (), f"policy {policy.k}-of-{policy.n} names more witnesses than the "
                             f"federation lists ({len(witnesses)})")
    body, sigs = split_note(note)
    known = {(w.name, w.key_id): w for w in witnesses if w.alg == ALG_COSIGNATURE_V1}
    good: list[str] = []
    bad: list[str] = []
    for sig in sigs:
        w = known.get((sig.name, sig.key_id))
        if w is None:
            continue
        if len(sig.signature) == 72:
            (ts,) = struct.unpack(">Q", sig.signature[:8])
            if w.verify(cosignature_message(body, ts), sig.signature[8:]):
                if w.name not in good:
                    good.append(w.name)
                continue
        bad.append(w.name)
    met = len(good) >= policy.k
    reason = (f"{len(good)} of {len(known)} witnesses cosigned (need {policy.k})"
              + (f"; bad cosignatures by {', '.join(bad)}" if bad else ""))
    return PolicyVerdict(met, tuple(good), tuple(bad), reason)


def check_pair(a: str, b: str, keys: Sequence[Verifier], proof: Sequence[bytes] | None) -> SplitView | None:
    """Two notes of one origin, both validly signed by ``keys``: None when they can both be true.

    Equal sizes must have equal roots. Different sizes need ``proof``, a consistency proof from the
    smaller to the larger that the log served; a missing or failing proof is a split view."""
    notes = sorted((a, b), key=lambda n: _parse_note(n).size)
    small, large = (_parse_note(n) for n in notes)
    for n in notes:
        open_note(n, list(keys))  # raises NoteError: not both signed by the log, so not evidence
    if small.origin != large.origin:
        raise WitnessFormatError(f"checkpoints of two origins ({small.origin}, {large.origin})")
    if small.size == large.size:
        if small.root == large.root:
            return None
        return SplitView(small.origin, (notes[0], notes[1]),
                         f"two signed checkpoints of size {small.size} with different roots")
    try:
        verify_consistency(small.size, large.size, small.root, large.root, proof or ())
    except ProofError as e:
        return SplitView(small.origin, (notes[0], notes[1]),
                         f"no consistency between sizes {small.size} and {large.size}: {e}", tuple(proof or ()))
    return None
