"""Expected operating errors and their one mapping to gRPC (the edge).

Every servicer hands an expected error to ``abort(context, exc)`` (unary and streaming RPCs) or
``batch_status(exc)`` (a batch refused inside a Submit stream). Only this module chooses a status
code. Each expected error also carries a machine-readable ``ErrorReason``: sent as trailing
metadata ``sovledger-reason`` (the enum value's name) and in ``BatchStatus.reason``; a NotLeader
also names the leader (``sovledger-leader`` / ``BatchStatus.leader_hint``).

Business outcomes (insufficient funds, exists …) are result codes inside responses, never errors.
Broken invariants are never mapped: they stop the process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn, TypeAlias

import grpc

import sovledger_pb
from ledger.codec import EncodingError
from ledger.reader import DamagedEntry, LookupError_, RangeError
from ledger.store import StoreFull
from node.psp_auth import PspAuthError
from sovledger_pb import ledger_pb2 as pb

log = logging.getLogger("sovledger.errors")

Reason: TypeAlias = "pb.ErrorReason.ValueType"


class NodeError(Exception):
    """An expected error; each kind names its status code and reason once, in its class line."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason = pb.REASON_INTERNAL

    def __init_subclass__(cls, code: grpc.StatusCode | None = None, reason: Reason | None = None) -> None:
        super().__init_subclass__()
        if code is not None and reason is not None:
            cls.code, cls.reason = code, reason


_RX = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(NodeError, code=_RX, reason=pb.REASON_OVERLOADED):
    """The ingest queue is full: retry with back-off."""


class StoreUnavailable(NodeError, code=_RX, reason=pb.REASON_STORE_FULL):
    """The store refused a write (full map or disk); the node refuses new work until fixed."""


class Indeterminate(NodeError, code=_RX, reason=pb.REASON_OVERLOADED):
    """The outcome of an in-flight batch is unknown (leadership moved, or the node is stopping):
    retry with the same ids — duplicates are answered as such."""


class NotLeader(NodeError, code=grpc.StatusCode.UNAVAILABLE, reason=pb.REASON_NOT_LEADER):
    def __init__(self, leader_hint: str) -> None:
        self.leader_hint = leader_hint
        where = f"the leader is {leader_hint}" if leader_hint else "no leader is known yet; retry shortly"
        super().__init__(f"this node is not the region's leader: {where}")


class BadRequest(NodeError, code=grpc.StatusCode.INVALID_ARGUMENT, reason=pb.REASON_MALFORMED):
    """The request can never succeed as sent."""


class Unauthorised(NodeError, code=grpc.StatusCode.PERMISSION_DENIED, reason=pb.REASON_PERMISSION_DENIED):
    """The caller may not do this."""


class Unauthenticated(NodeError, code=grpc.StatusCode.UNAUTHENTICATED, reason=pb.REASON_UNAUTHENTICATED):
    """No valid client certificate, or a revoked one (docs/security.md)."""


class RateLimited(NodeError, code=grpc.StatusCode.RESOURCE_EXHAUSTED, reason=pb.REASON_RATE_LIMITED):
    """A PSP is over its fair share (node/fair_share.py); ``retry_after_ms`` says when to retry."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Refused(NodeError, code=grpc.StatusCode.FAILED_PRECONDITION, reason=pb.REASON_REFUSED):
    """Refused in the node's current state."""


class TransferTimeout(NodeError, code=grpc.StatusCode.DEADLINE_EXCEEDED, reason=pb.REASON_TIMEOUT):
    """An operator command did not finish in time."""


class NotFound(NodeError, code=grpc.StatusCode.NOT_FOUND, reason=pb.REASON_NOT_FOUND):
    """The requested item does not exist."""


class OutOfRange(NodeError, code=grpc.StatusCode.OUT_OF_RANGE, reason=pb.REASON_OUT_OF_RANGE):
    """The requested range lies outside the log."""


class DataLoss(NodeError, code=grpc.StatusCode.DATA_LOSS, reason=pb.REASON_DATA_LOSS):
    """This replica's store is damaged where a request reads it; it serves nothing unverified."""


# expected errors raised below the node layer (ledger/, psp_auth): code, reason, message prefix
_FOREIGN: tuple[tuple[type[BaseException], grpc.StatusCode, Reason, str], ...] = (
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED, pb.REASON_STORE_FULL, ""),
    (DamagedEntry, grpc.StatusCode.DATA_LOSS, pb.REASON_DATA_LOSS, ""),
    (EncodingError, grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_MALFORMED, "malformed request: "),
    (RangeError, grpc.StatusCode.OUT_OF_RANGE, pb.REASON_OUT_OF_RANGE, ""),
    (PspAuthError, grpc.StatusCode.PERMISSION_DENIED, pb.REASON_PERMISSION_DENIED, ""),
)


def classify(exc: BaseException) -> tuple[grpc.StatusCode, Reason, str]:
    """The status code, reason and message a client sees for ``exc``."""
    if isinstance(exc, NodeError):
        return exc.code, exc.reason, str(exc)
    if isinstance(exc, LookupError_):  # a KeyError: str() would quote the message
        return grpc.StatusCode.NOT_FOUND, pb.REASON_NOT_FOUND, str(exc.args[0] if exc.args else exc)
    for kind, code, reason, prefix in _FOREIGN:
        if isinstance(exc, kind):
            return code, reason, f"{prefix}{exc}"
    return grpc.StatusCode.INTERNAL, pb.REASON_INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for an expected error."""
    code, _reason, message = classify(exc)
    return code, message


def _metadata(exc: BaseException, reason: Reason) -> tuple[tuple[str, str], ...]:
    pairs = [(sovledger_pb.REASON_METADATA_KEY, pb.ErrorReason.Name(reason))]
    if isinstance(exc, NotLeader) and exc.leader_hint:
        pairs.append((sovledger_pb.LEADER_METADATA_KEY, exc.leader_hint))
    if isinstance(exc, RateLimited):
        pairs.append((sovledger_pb.RETRY_AFTER_METADATA_KEY, str(exc.retry_after_ms)))
    return tuple(pairs)


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the RPC with the status for ``exc``, its reason (and leader) in trailing metadata."""
    code, reason, message = classify(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error in handler", exc_info=exc)
    context.set_trailing_metadata(_metadata(exc, reason))
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def fail_future(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Settle ``fut`` with ``exc`` for whoever awaits it; if nobody does any more (its RPC ended),
    that is expected, not a "Future exception was never retrieved" traceback at exit."""
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # marks it retrieved; an awaiting task still gets the exception


def batch_status(exc: BaseException) -> pb.BatchStatus:
    """The in-stream answer for a batch refused as a whole (nothing of it is in the log)."""
    code, reason, message = classify(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error for a batch", exc_info=exc)
    hint = exc.leader_hint if isinstance(exc, NotLeader) else ""
    return pb.BatchStatus(code=code.value[0], message=message, leader_hint=hint, reason=reason)
