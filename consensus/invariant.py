"""Broken invariants stop the process (DESIGN.md §5): the node restarts from durable state.

``assert`` is stripped by ``python -O``; this is not.
"""

from __future__ import annotations

from typing import NoReturn


class InvariantViolation(RuntimeError):
    """A state the algorithm promises can never happen did happen: the node must stop."""


def invariant(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def fail(msg: str) -> NoReturn:
    raise InvariantViolation(msg)
