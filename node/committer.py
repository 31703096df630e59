"""Committers: what turns a block proposal into a durable, applied block.

Two implementations share one interface (``Committer``): ``LocalCommitter`` here for a node
without peers — a block is durable once its LMDB transaction has committed (fsync) — and
``node.replication.Replicator`` for a region, where a block is durable once a quorum stored it.
The node wires one of them into ingest, the read gate and status; nothing else tells them apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from ledger.codec import Proposal
from ledger.state import BlockOutcome, LedgerState
from ledger.store import StoreFull
from node import metrics
from node.errors import StoreUnavailable

log = logging.getLogger("sovledger.node")


@dataclass
class ReplicaStatus:
    role: str
    term: int
    leader_id: int
    applied_index: int


class Committer(Protocol):
    def start(self) -> None: ...

    async def hand_over(self) -> None:
        """Before a clean stop: pass leadership on, if there is anyone to pass it to."""
        ...

    async def stop(self) -> None: ...

    async def propose(self, proposal: Proposal) -> BlockOutcome:
        """Resolve once the block is durable and applied here; raise a node error otherwise."""
        ...

    def check_leader(self) -> None:
        """Raise NotLeader unless this node may accept writes."""
        ...

    async def read_barrier(self) -> None:
        """Return once a read on this node's state is linearizable."""
        ...

    def status(self) -> ReplicaStatus: ...

    def leader_address(self) -> str: ...

    def cannot_commit(self) -> str:
        """Why new blocks cannot commit right now (no leader or quorum, store full); '' if they can."""
        ...


@dataclass(eq=False)
class LocalCommitter:
    """Single-node committer: applies each block in the store thread; it is always the leader."""

    _state: LedgerState
    _pool: ThreadPoolExecutor
    _address: str
    _on_block: Callable[[LedgerState], None]  # after each applied block, in the store thread

    def start(self) -> None:
        return None

    async def hand_over(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def propose(self, proposal: Proposal) -> BlockOutcome:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._apply, proposal)
        except StoreFull as e:  # nothing of the block was applied; ingest refuses new work a while
            log.error("%s", e)
            raise StoreUnavailable(str(e)) from e

    def _apply(self, proposal: Proposal) -> BlockOutcome:
        with metrics.BLOCK_APPLY.time():
            outcome = self._state.apply_block(proposal)
        self._on_block(self._state)
        return outcome

    def check_leader(self) -> None:
        return None

    async def read_barrier(self) -> None:
        return None

    def status(self) -> ReplicaStatus:
        return ReplicaStatus("leader", 0, 0, self._state.head.height)

    def leader_address(self) -> str:
        return self._address

    def cannot_commit(self) -> str:
        return ""  # alone it is its own quorum; a full store shows in ingest
