"""Opt-in per-block latency trace of the replication path (off unless ``SOVLEDGER_BLOCK_TRACE`` is set).

With ``SOVLEDGER_BLOCK_TRACE=DIR`` every node appends ``raft-index stage seconds`` lines to
``DIR/trace-<pid>.txt`` (``time.monotonic()``, one clock for all processes of the machine), so a
run's stages can be lined up across the leader and its followers (``bench/blocktrace_report.py``).
Stages, in path order:

  leader:   proposed → persisted (own fsync done) → sent (appends handed to the transport) →
            committed (the commit index passed it) → applied → answered (the proposer's future)
  follower: received (an append carrying it arrived) → persisted → acked (the response was sent) →
            committed → applied

With the trace on, the node also records garbage-collector pauses (``gc.callbacks``: stage ``gc``,
the index field holds the pause in µs) and event-loop stalls (a 5 ms sleeper that woke late by more
than 5 ms: stage ``stall``, index = lateness in µs), both stamped at their end.

The trace is bounded (``EVENTS_MAX`` events; later ones are dropped) and written once, at stop.
Recording costs one list append per stage per block; when off, one attribute test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path
from typing import Any, Final

EVENTS_MAX: Final = 400_000
STALL_PROBE_S: Final = 0.005
ENV: Final = "SOVLEDGER_BLOCK_TRACE"


class BlockTrace:
    def __init__(self, directory: str | None) -> None:
        self._dir = directory
        self._events: list[tuple[int, str, float]] = []
        self.on = bool(directory)
        self._gc_started = 0.0
        self._probe: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin recording GC pauses and loop stalls (call on the event loop)."""
        if not self.on:
            return
        gc.callbacks.append(self._on_gc)
        self._probe = asyncio.get_running_loop().create_task(self._stalls(), name="trace-stalls")

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._probe is not None:
            self._probe.cancel()
        self.write()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.monotonic()
        elif self._gc_started:
            self.mark(int((time.monotonic() - self._gc_started) * 1e6), "gc")

    async def _stalls(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(STALL_PROBE_S)
            late = time.monotonic() - t - STALL_PROBE_S
            if late > STALL_PROBE_S:
                self.mark(int(late * 1e6), "stall")

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
