"""Knobs of the PSP SDK and the clock it reads (injected, so tests can drive time)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ledger.types import BATCH_ITEMS_MAX

#: Seconds from an arbitrary origin, never going back (``time.monotonic`` unless a test injects one).
Clock = Callable[[], float]
MONOTONIC: Clock = time.monotonic


@dataclass(frozen=True, slots=True)
class SdkConfig:
    """Knobs of a session; defaults suit a PSP streaming micro-payments."""

    batch_size_max: int = BATCH_ITEMS_MAX  # seal a batch at this many items (≤ 8189)
    batch_delay_s: float = 0.005  # … or this long after its first item
    window_items: int = 4 * BATCH_ITEMS_MAX  # unacknowledged payments per session (back-pressure)
    window_batches: int = 8  # batches in flight on the stream (the node allows 32 per stream)
    response_timeout_s: float = 15.0  # no answer on the stream this long while batches wait → broken
    call_timeout_s: float = 10.0  # unary calls (lookups)
    connect_timeout_s: float = 1.0  # a node not connected this long → try the next one (nothing sent)
    # with a signer: 0 signs every record; G >= 1 signs one Merkle root per group of G records (docs/formats.md)
    sign_group: int = 0

    def validate(self) -> SdkConfig:
        if not 1 <= self.batch_size_max <= BATCH_ITEMS_MAX:
            raise ValueError(f"batch_size_max must be in 1..{BATCH_ITEMS_MAX}")
        if not 0 < self.batch_delay_s <= 10:
            raise ValueError("batch_delay_s must be in (0, 10]")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be > 0")
        if not 0 <= self.sign_group <= BATCH_ITEMS_MAX:
            raise ValueError(f"sign_group must be 0 (a signature per record) or a group size in 1..{BATCH_ITEMS_MAX}")
        if self.window_items < 1 or self.window_batches < 1:
            raise ValueError("window_items and window_batches must be >= 1")
        return self


__all__ = ["MONOTONIC", "Clock", "SdkConfig"]
