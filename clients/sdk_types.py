"""Value types of the PSP SDK: payment outcomes, the retry policy, prepared (encoded) payments."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from clients.sdk_errors import failure_for
from ledger.types import Result

Resolution = Literal["response", "lookup", "resend_exists", "recovered"]


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """The final, durable outcome of one payment.

    ``result`` is the ledger's stable result code (docs/results.md); ``log_index`` and ``block``
    locate its leaf (for an exact retry, the original one). ``resolution`` says how the SDK learnt
    it: the node's response, a lookup after an indeterminate send, or a re-send answered with
    ``transfer_exists`` (reported as ``OK``: the payment is in the ledger exactly once).
    """

    transfer_id: int
    result: Result
    log_index: int
    block: int
    timestamp_ns: int = 0
    attempts: int = 1
    resolution: Resolution = "response"

    @property
    def ok(self) -> bool:
        """True when the payment's effect is in the ledger."""
        return self.result.is_success

    def raise_for_result(self) -> TransferOutcome:
        """Raise the typed ``TransferFailed`` subclass for a failing result code; return self otherwise."""
        err = failure_for(self)
        if err is not None:
            raise err
        return self


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and by total time.

    Applies to UNAVAILABLE (not leader, node down), DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED from
    overload, ABORTED, and broken streams. Every retry re-sends the same ids (idempotent).
    """

    max_attempts: int = 12
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    multiplier: float = 2.0
    deadline_s: float = 60.0  # total time one batch may spend retrying
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_s(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): uniform in [cap/2, cap] ("equal jitter")."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * self.multiplier ** max(0, attempt - 1))
        return cap / 2 + self.rng.random() * cap / 2


@dataclass(frozen=True, slots=True)
class PreparedTransfer:
    """A payment as it travels and is journaled: id, canonical 176-byte record, optional signature."""

    transfer_id: int
    record: bytes
    signature: bytes = b""
    key_id: bytes = b""


__all__ = ["PreparedTransfer", "Resolution", "RetryPolicy", "TransferOutcome"]
