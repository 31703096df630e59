"""The auditor's typed failures: one class per failure kind, one exit code per failure class.

Every failure carries a message that names where (node, index, block) and what mismatched, and the
same facts as data (``to_json``) for ``--json`` output. Exit codes are listed in docs/auditor.md.
"""

from __future__ import annotations

from typing import Any, Final

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_BAD_SIGNATURE: Final = 10
EXIT_INCONSISTENT: Final = 11
EXIT_LOG_MISMATCH: Final = 12
EXIT_BLOCK_MISMATCH: Final = 13
EXIT_BALANCE_MISMATCH: Final = 14
EXIT_PSP_SIGNATURE: Final = 15
EXIT_WITNESS_POLICY: Final = 16
EXIT_SPLIT_VIEW: Final = 17


def ab(raw: bytes | None, n: int = 16) -> str:
    """Hex-abbreviated bytes for messages: the first ``n`` hex digits and an ellipsis."""
    if raw is None:
        return "-"
    h = raw.hex()
    return h if len(h) <= n else h[:n] + "…"


class AuditFailure(Exception):
    """A verification failure. ``exit_code`` is the class; ``data`` says where and what mismatched."""

    exit_code = 1
    kind = "failure"

    def __init__(self, message: str, **data: Any) -> None:
        self.message = message
        self.data = data
        super().__init__(message)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": type(self).__name__, "kind": self.kind, "exit_code": self.exit_code,
                               "message": self.message}
        for k, v in self.data.items():
            out[k] = v.hex() if isinstance(v, bytes) else v
        return out


class UsageError(AuditFailure):
    """Bad arguments, a missing or malformed trust store or export file: nothing was verified."""

    exit_code, kind = EXIT_USAGE, "usage"


class Unreachable(AuditFailure):
    exit_code, kind = EXIT_UNREACHABLE, "unreachable"  # the node did not answer (or stopped mid-stream)


class CheckpointSignatureError(AuditFailure):
    """The checkpoint is not signed by a trusted node key (or a signature is bad, or the origin differs)."""

    exit_code, kind = EXIT_BAD_SIGNATURE, "bad_signature"


class InconsistentLog(AuditFailure):
    """The log is not an append-only extension of what was trusted or seen elsewhere."""

    exit_code, kind = EXIT_INCONSISTENT, "inconsistent"


class RollbackDetected(InconsistentLog):
    """A signed checkpoint smaller than the trusted one: the log went backwards."""

    kind = "rollback"


class ForkDetected(InconsistentLog):
    """Two signed views that cannot both be prefixes of one log (same size, different roots; or a
    replica serving other leaves under a consistent root). Carries both notes as evidence."""

    kind = "fork"


class LogMismatch(AuditFailure):
    """A leaf, the hash chain or the Merkle tree does not match what was committed to."""

    exit_code, kind = EXIT_LOG_MISMATCH, "log_mismatch"


class LeafMalformed(LogMismatch):
    kind = "leaf_malformed"  # the bytes do not frame as a leaf (lengths, aux TLVs)


class LeafMismatch(LogMismatch):
    """A well-framed leaf with a wrong field: version, index, timestamp, kind or body length."""

    kind = "leaf_mismatch"


class TreeMismatch(LogMismatch):
    """The Merkle root recomputed from the leaves differs from the header's or the checkpoint's;
    ``suspects`` names the leaves whose inclusion proofs fail (online only)."""

    kind = "tree_mismatch"


class ChainMismatch(LogMismatch):
    kind = "chain_mismatch"  # the hash chain over the leaves differs from the header's or checkpoint's head


class LogTruncated(LogMismatch):
    """Fewer leaves or headers than the signed checkpoint covers."""

    kind = "truncated"


class BlockHeaderMismatch(AuditFailure):
    exit_code, kind = EXIT_BLOCK_MISMATCH, "block_header_mismatch"  # a header field or the block hash chain


class BalanceMismatch(AuditFailure):
    """Balances replayed from the recorded effects differ from a state hash or from LookupAccounts,
    or an effect refers to an account or pending transfer the log never created."""

    exit_code, kind = EXIT_BALANCE_MISMATCH, "balance_mismatch"


class PspSignatureInvalid(AuditFailure):
    exit_code, kind = EXIT_PSP_SIGNATURE, "psp_signature_invalid"  # a trusted PSP key, a bad signature


class WitnessPolicyUnmet(AuditFailure):
    """The checkpoint lacks the cosignatures the witness policy (``--witnesses K-of-N``) demands."""

    exit_code, kind = EXIT_WITNESS_POLICY, "witness_policy"


class SplitViewDetected(AuditFailure):
    """Two checkpoints of one origin, each signed by the log's keys, that cannot both be true: the
    log showed different histories to different parties. ``evidence_file`` holds both notes."""

    exit_code, kind = EXIT_SPLIT_VIEW, "split_view"
