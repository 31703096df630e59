"""Typed errors of the PSP SDK: one class per gRPC status, one per family of failing result codes.

Two kinds, kept apart on purpose:

- ``LedgerStatusError`` subclasses: the node refused a whole batch or call (nothing of it was
  applied) — ``NotLeaderError(leader_hint)``, ``OverloadedError``, ``InvalidBatchError`` … mapped
  from the status code and the node's machine-readable reason (``ErrorReason``, carried in
  ``BatchStatus.reason`` or the ``sovledger-reason`` trailing metadata), never from message text.
- ``TransferFailed`` subclasses: the ledger evaluated the payment and recorded a failing result
  code (business outcome). Raised only when the caller asks for it (``outcome.raise_for_result()``,
  ``submit(..., raise_on_failure=True)``).

``OutcomeUnknownError`` is neither: the SDK could not learn whether a payment committed (region
unreachable for longer than the retry budget). It is never a failure; the journal keeps the entry
unresolved and ``recover()`` settles it later with the same id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Protocol

import grpc

from ledger.types import Result
from sovledger_pb import LEADER_METADATA_KEY, REASON_METADATA_KEY, RETRY_AFTER_METADATA_KEY
from sovledger_pb import ledger_pb2 as pb


class OutcomeLike(Protocol):
    """What a ``TransferFailed`` needs of an outcome (``clients.sdk_types.TransferOutcome``)."""

    @property
    def transfer_id(self) -> int: ...
    @property
    def result(self) -> Result: ...
    @property
    def log_index(self) -> int: ...


class SdkError(Exception):
    """Base class of every error the SDK raises."""


# -- status errors (whole batch / call refused) -------------------------------------------------------


class LedgerStatusError(SdkError):
    """The node answered a batch or call with a non-OK gRPC status; nothing of it was applied."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    retryable: bool = False

    def __init__(self, message: str = "", code: grpc.StatusCode | None = None, leader_hint: str = "",
                 target: str = "", reason: int = pb.REASON_UNSPECIFIED, retry_after_s: float = 0.0) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.leader_hint = leader_hint
        self.target = target
        self.reason = reason  # an ErrorReason value; 0 when the node did not say
        self.retry_after_s = retry_after_s  # the node's "retry after" for a rate-limited PSP, else 0
        where = f" (from {target})" if target else ""
        super().__init__(f"{self.code.name}: {message}{where}")


class UnavailableError(LedgerStatusError):
    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class NotLeaderError(UnavailableError):
    """This node is not the region's leader; ``leader_hint`` is host:port of the leader when known."""

    def __init__(self, leader_hint: str = "", message: str = "", target: str = "",
                 reason: int = pb.REASON_NOT_LEADER) -> None:
        super().__init__(message or f"not the leader (leader: {leader_hint or 'unknown'})",
                         leader_hint=leader_hint, target=target, reason=reason)


class DeadlineExceededError(LedgerStatusError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class OverloadedError(LedgerStatusError):
    """The node's ingest queue is full (RESOURCE_EXHAUSTED): retry with backoff or slow down."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class StoreFullError(LedgerStatusError):
    """The node's store is full (RESOURCE_EXHAUSTED, reason STORE_FULL): an operator must act; not retried."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class InvalidBatchError(LedgerStatusError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDeniedError(LedgerStatusError):
    """E.g. a PSP signature that does not verify, an unknown PSP key, or a missing signature."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(LedgerStatusError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PreconditionFailedError(LedgerStatusError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFoundError(LedgerStatusError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(LedgerStatusError):
    code = grpc.StatusCode.ALREADY_EXISTS


class OutOfRangeError(LedgerStatusError):
    code = grpc.StatusCode.OUT_OF_RANGE


class AbortedError(LedgerStatusError):
    code = grpc.StatusCode.ABORTED
    retryable = True


class CancelledError(LedgerStatusError):
    code = grpc.StatusCode.CANCELLED
    retryable = True  # a node shutting down cancels its streams


class UnimplementedError(LedgerStatusError):
    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(LedgerStatusError):
    code = grpc.StatusCode.INTERNAL


class DataLossError(LedgerStatusError):
    code = grpc.StatusCode.DATA_LOSS


class UnknownStatusError(LedgerStatusError):
    code = grpc.StatusCode.UNKNOWN
    retryable = True  # e.g. a node's stream handler died mid-way: the outcome is resolved, then re-sent


STATUS_ERRORS: Final[dict[grpc.StatusCode, type[LedgerStatusError]]] = {
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidBatchError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNKNOWN: UnknownStatusError,
}


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode for its integer value (BatchStatus.code)."""
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c
    return grpc.StatusCode.UNKNOWN


# Reasons that pick a narrower class than the status code alone.
_REASON_ERRORS: Final[dict[int, type[LedgerStatusError]]] = {
    pb.REASON_STORE_FULL: StoreFullError,
    pb.REASON_OVERLOADED: OverloadedError,
    pb.REASON_RATE_LIMITED: OverloadedError,
}


def error_for_status(code: grpc.StatusCode | int, message: str = "", leader_hint: str = "", target: str = "",
                     reason: int = pb.REASON_UNSPECIFIED, retry_after_s: float = 0.0) -> LedgerStatusError:
    """The typed error for a status (a BatchStatus or a failed call). OK is not an error.

    The class follows the code and the node's ``reason``; the message is only carried along. A node
    that sends no reason: UNAVAILABLE with a leader hint is ``NotLeaderError``, the rest follow the code.
    """
    if isinstance(code, int):
        code = status_code(code)
    if code == grpc.StatusCode.OK:
        raise ValueError("status OK is not an error")
    if reason == pb.REASON_NOT_LEADER or (
            reason == pb.REASON_UNSPECIFIED and code == grpc.StatusCode.UNAVAILABLE and leader_hint):
        return NotLeaderError(leader_hint, message, target, reason)
    cls = _REASON_ERRORS.get(reason) or STATUS_ERRORS.get(code, UnknownStatusError)
    return cls(message, code=code, leader_hint=leader_hint, target=target, reason=reason,
               retry_after_s=retry_after_s)


def error_for_rpc(exc: grpc.RpcError, target: str = "") -> LedgerStatusError:
    """Typed error for a failed call, from its code and trailing metadata (leader, reason, retry-after)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    try:
        metadata = exc.trailing_metadata()
    except Exception:
        metadata = ()
    return error_for_trailers(code or grpc.StatusCode.UNKNOWN, details, metadata, target)


def error_for_trailers(code: grpc.StatusCode, details: str, metadata: Iterable[Any] | None,
                       target: str = "") -> LedgerStatusError:
    """Typed error for a call that ended with ``code`` and these trailing metadata."""
    md = {key: value.decode() if isinstance(value, bytes) else str(value) for key, value in metadata or ()}
    return error_for_status(code, details, md.get(LEADER_METADATA_KEY, ""), target,
                            reason_value(md.get(REASON_METADATA_KEY, "")),
                            _retry_after_s(md.get(RETRY_AFTER_METADATA_KEY, "")))


def reason_value(name: str) -> int:
    """``ErrorReason`` value of its name as sent in trailing metadata; unknown or absent → UNSPECIFIED."""
    try:
        return int(pb.ErrorReason.Value(name)) if name else pb.REASON_UNSPECIFIED
    except ValueError:
        return pb.REASON_UNSPECIFIED


def _retry_after_s(ms: str) -> float:
    return int(ms) / 1000 if ms.isdigit() else 0.0


def leader_hint_of(exc: BaseException) -> str:
    try:
        md = exc.trailing_metadata()  # type: ignore[attr-defined]
    except Exception:
        return ""
    for key, value in md or ():
        if key == LEADER_METADATA_KEY:
            return str(value)
    return ""


class OutcomeUnknownError(SdkError):
    """The SDK could not learn whether these payments committed (not a failure).

    Raised only when the region stayed unreachable beyond the retry budget while an outcome was
    indeterminate. The journal keeps them unresolved; ``recover()`` re-sends them with the same ids.
    """

    def __init__(self, transfer_ids: list[int], cause: BaseException | None = None) -> None:
        self.transfer_ids = transfer_ids
        self.cause = cause
        super().__init__(f"outcome of {len(transfer_ids)} payment(s) unknown (not failed): {cause}; "
                         "they stay in the journal and are settled by recover() with the same ids")


# -- result-code failures (business outcomes) ---------------------------------------------------------


class TransferFailed(SdkError):
    """The ledger evaluated a payment and recorded a failing result code."""

    def __init__(self, outcome: OutcomeLike) -> None:
        self.outcome = outcome
        self.result = outcome.result
        super().__init__(f"transfer {outcome.transfer_id:#034x} failed: {outcome.result.name.lower()} "
                         f"({int(outcome.result)}), log index {outcome.log_index}")


class LinkedEventFailed(TransferFailed):
    """Another event of its linked chain failed (or the chain was left open)."""


class TransferInvalid(TransferFailed):
    """A field is invalid (reserved, zero, int-max, mutually exclusive flags …)."""


class AccountNotFound(TransferFailed):
    """The debit or credit account does not exist."""


class LedgerMismatch(TransferFailed):
    """Accounts and transfer are not on the same ledger (currency)."""


class PendingTransferError(TransferFailed):
    """Post/void against a pending transfer that is missing, different, or already settled."""


class ExistsWithDifferentFields(TransferFailed):
    """The id is already used by another payment with different fields (an id-reuse bug)."""


class BalanceLimitExceeded(TransferFailed):
    """exceeds_credits / exceeds_debits: insufficient funds under the account's balance limit."""


class AmountOverflow(TransferFailed):
    """A u128 balance or the timeout would overflow."""


class RuleRejected(TransferFailed):
    """A rule of the active rule set rejected the payment (or failed to evaluate)."""


class RulesetRefused(TransferFailed):
    """A rule set deployment was refused."""


class ReconciliationFailed(TransferFailed):
    """A settlement callback could not be matched or reconciled."""


def _ranges(*spans: tuple[int, int]) -> set[int]:
    return {c for lo, hi in spans for c in range(lo, hi + 1)}


_RESULT_FAMILY: Final[list[tuple[set[int], type[TransferFailed]]]] = [
    (_ranges((1, 2)), LinkedEventFailed),
    (_ranges((3, 9), (40, 50)), TransferInvalid),
    (_ranges((20, 20), (62, 63)), LedgerMismatch),
    (_ranges((60, 61)), AccountNotFound),
    (_ranges((64, 74)), PendingTransferError),
    (_ranges((21, 25), (80, 91), (141, 141)), ExistsWithDifferentFields),
    (_ranges((107, 108)), BalanceLimitExceeded),
    (_ranges((100, 106)), AmountOverflow),
    (_ranges((120, 122)), RuleRejected),
    (_ranges((130, 133)), RulesetRefused),
    (_ranges((142, 149)), ReconciliationFailed),
]


def failure_class(result: Result | int) -> type[TransferFailed] | None:
    """The ``TransferFailed`` subclass for a failing result code; None for success codes."""
    r = Result(result)
    if r.is_success:
        return None
    for codes, cls in _RESULT_FAMILY:
        if int(r) in codes:
            return cls
    return TransferFailed


def failure_for(outcome: OutcomeLike) -> TransferFailed | None:
    cls = failure_class(outcome.result)
    return None if cls is None else cls(outcome)


__all__ = [
    "STATUS_ERRORS", "AbortedError", "AccountNotFound", "AlreadyExistsError", "AmountOverflow",
    "BalanceLimitExceeded", "CancelledError", "DataLossError", "DeadlineExceededError",
    "ExistsWithDifferentFields", "InternalError", "InvalidBatchError", "LedgerMismatch", "LedgerStatusError",
    "LinkedEventFailed", "NotFoundError", "NotLeaderError", "OutOfRangeError", "OutcomeLike", "OutcomeUnknownError",
    "OverloadedError", "PendingTransferError", "PermissionDeniedError", "PreconditionFailedError",
    "ReconciliationFailed", "RuleRejected", "RulesetRefused", "SdkError", "StoreFullError", "TransferFailed",
    "TransferInvalid", "UnauthenticatedError", "UnavailableError", "UnimplementedError", "UnknownStatusError",
    "error_for_rpc", "error_for_status", "error_for_trailers", "failure_class", "failure_for",
    "leader_hint_of", "reason_value", "status_code",
]
