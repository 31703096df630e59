"""Health: the gRPC health service says SERVING only while this node can do its job.

A watcher re-evaluates a few plain checks every ``PERIOD_S`` and flips the status (for the
empty service name and ``sovledger.v1.Ledger``) when the answer changes:
- the region can commit (the committer has had a leader and quorum recently),
- the store takes writes (no store-full refusal pending),
- checkpoint signing works (a failed signature is retried here, on the store thread).
A committed block never waits for any of this: health only reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from grpc_health.v1 import health, health_pb2

from ledger.state import LedgerState
from node.committer import Committer
from node.pipeline import Ingest
from node.signing import CheckpointService

log = logging.getLogger("sovledger.health")

PERIOD_S = 0.5
SERVICES = ("", "sovledger.v1.Ledger")


class HealthWatch:
    def __init__(self, committer: Callable[[], Committer], ingest: Callable[[], Ingest | None],
                 checkpoints: CheckpointService, state: LedgerState, pool: ThreadPoolExecutor) -> None:
        self.servicer = health.aio.HealthServicer()
        self._committer = committer
        self._ingest = ingest
        self._checkpoints = checkpoints
        self._state = state
        self._pool = pool
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None
        self.reason = ""

    def problem(self) -> str:
        """Why this node should not get traffic now ('' when it should)."""
        cannot = self._committer().cannot_commit()
        if cannot:
            return cannot
        ingest = self._ingest()
        if ingest is not None and ingest.store_full:
            return "the store is full: new work is refused until a write succeeds"
        failure = self._checkpoints.failure
        if failure is not None:
            return f"checkpoint signing fails: {failure}"
        return ""

    async def set(self, ok: bool, why: str = "") -> None:
        if ok != self.serving:
            log.log(logging.INFO if ok else logging.WARNING, "health: %s%s",
                    "SERVING" if ok else "NOT_SERVING", f" ({why})" if why else "")
        self.serving, self.reason = ok, why
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in SERVICES:
            await self.servicer.set(service, status)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.set(False, "shutting down")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PERIOD_S)
            if self._checkpoints.failure is not None:
                await loop.run_in_executor(self._pool, lambda: self._checkpoints.retry(self._state.head))
            why = self.problem()
            if (not why) != self.serving:
                await self.set(not why, why)
