"""Broken-invariant checks that stay on under ``python -O``.

An invariant failure means the process's own state can no longer be trusted: the right reaction is
to stop and restart from durable state, never to carry on. Expected operating errors and business
outcomes use typed errors (``ledger.errors``) and result codes (``ledger.types.Result``) instead.
"""

from __future__ import annotations

from typing import NoReturn


class InvariantViolation(RuntimeError):
    """Raised when an internal invariant does not hold. Never caught to continue."""


def invariant(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def fail(message: str) -> NoReturn:
    raise InvariantViolation(message)
