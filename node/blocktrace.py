"""Opt-in per-block latency trace of the replication path (off unless ``SOVLEDGER_BLOCK_TRACE`` is set).

With ``SOVLEDGER_BLOCK_TRACE=DIR`` every node appends ``raft-index stage seconds`` lines to
``DIR/trace-<pid>.txt`` (``time.monotonic()``, one clock for all processes of the machine), so a
run's stages can be lined up across the leader and its followers (``bench/blocktrace_report.py``).
Stages, in path order:

  leader:   proposed → persisted (own fsync done) → sent (appends handed to the transport) →
            committed (the commit index passed it) → applied → answered (the proposer's future)
  follower: received (an append carrying it arrived) → persisted → acked (the response was sent) →
            committed → applied

The trace is bounded (``EVENTS_MAX`` events; later ones are dropped) and written once, at stop.
Recording costs one list append per stage per block; when off, one attribute test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

EVENTS_MAX: Final = 400_000
ENV: Final = "SOVLEDGER_BLOCK_TRACE"


class BlockTrace:
    def __init__(self, directory: str | None) -> None:
        self._dir = directory
        self._events: list[tuple[int, str, float]] = []
        self.on = bool(directory)

    @classmethod
    def from_env(cls) -> BlockTrace:
        return cls(os.environ.get(ENV) or None)

    def mark(self, index: int, stage: str) -> None:
        if len(self._events) < EVENTS_MAX:
            self._events.append((index, stage, time.monotonic()))

    def mark_range(self, first: int, last: int, stage: str) -> None:
        now = time.monotonic()
        room = EVENTS_MAX - len(self._events)
        self._events.extend((i, stage, now) for i in range(first, min(last + 1, first + max(0, room))))

    def write(self) -> None:
        if not self._dir or not self._events:
            return
        path = Path(self._dir) / f"trace-{os.getpid()}.txt"
        with path.open("a") as f:
            f.writelines(f"{i} {stage} {t:.6f}\n" for i, stage, t in self._events)
        self._events.clear()
