"""Expected operating errors and their one mapping to gRPC status codes (the edge).

Business outcomes (insufficient funds, exists …) are result codes inside responses, never errors.
Broken invariants are never mapped: they stop the process.
"""

from __future__ import annotations

import grpc

from ledger.codec import EncodingError
from ledger.reader import LookupError_, RangeError
from ledger.store import StoreFull
from node.psp_auth import PspAuthError


class NodeError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class Overloaded(NodeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StoreUnavailable(NodeError):
    """The store refused a write (full map or disk); the node refuses new work until fixed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotLeader(NodeError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, leader_hint: str) -> None:
        self.leader_hint = leader_hint
        where = f"the leader is {leader_hint}" if leader_hint else "no leader is known yet; retry shortly"
        super().__init__(f"this node is not the region's leader: {where}")


class BadRequest(NodeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthorised(NodeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Refused(NodeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class TransferTimeout(NodeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for an expected error."""
    if isinstance(exc, NodeError):
        return exc.code, str(exc)
    if isinstance(exc, StoreFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, EncodingError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}"
    if isinstance(exc, LookupError_):
        return grpc.StatusCode.NOT_FOUND, str(exc.args[0] if exc.args else exc)
    if isinstance(exc, RangeError):
        return grpc.StatusCode.OUT_OF_RANGE, str(exc)
    if isinstance(exc, PspAuthError):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
