"""Pending expiry on a timer: an idle leader proposes an empty block when a pending timeout is due.

The state machine expires pending transfers at the start of the first block whose timestamp
reaches their ``expires_at_ns`` (docs/formats.md). On a busy region some block always comes along;
on an idle one nothing would. This timer closes that gap: the leader reads the earliest key of
the ``expiry`` index and, once the wall clock has passed it, commits a proposal with no batches.
The block's timestamp comes from the proposal like any other, so every replica expires the same
transfers in the same block — the timer only decides *when* a block is proposed, never what it does.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ledger.codec import Proposal
from ledger.store import Store
from node import metrics
from node.loops import BackgroundLoop

log = logging.getLogger("sovledger.expiry")

_U64BE: Final = struct.Struct(">Q")
POLL_MAX_S: Final = 1.0  # a new pending transfer may time out sooner than the one we wait for
RETRY_S: Final = 0.5


def earliest_expiry_ns(store: Store) -> int | None:
    """The smallest ``expires_at_ns`` in the expiry index, or None when nothing is pending with a timeout."""
    with store.read() as txn:
        for key, _ in txn.range("expiry", b"", None, limit=1):
            return int(_U64BE.unpack_from(key)[0])
    return None


class ExpiryTimer(BackgroundLoop):
    """Runs on the node's event loop; ``is_leader`` gates proposing (followers only watch)."""

    def __init__(self, store: Store, commit: Callable[[Proposal], Awaitable[Any]],
                 is_leader: Callable[[], bool], clock_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__("expiry-timer", log)
        self._store = store
        self._commit = commit
        self._is_leader = is_leader
        self._clock_ns = clock_ns
        self.blocks_proposed = 0

    async def _run(self) -> None:
        last_due: int | None = None  # the timeout our last committed empty block was for
        while True:
            due = earliest_expiry_ns(self._store)  # one short read transaction
            now = self._clock_ns()
            if due is not None and due <= now and self._is_leader():
                if due == last_due:
                    # our block for it committed, yet it is still indexed (a block ahead of ours is
                    # being applied): never spin on empty blocks; one more try after a pause
                    last_due = None
                    await asyncio.sleep(POLL_MAX_S)
                elif await self._propose_empty():
                    last_due = due
                continue
            wait_s = POLL_MAX_S if due is None or due <= now else min(POLL_MAX_S, (due - now) / 1e9)
            await asyncio.sleep(max(wait_s, 0.01))

    async def _propose_empty(self) -> bool:
        try:
            await self._commit(Proposal(self._clock_ns(), ()))
        except Exception as e:  # not leader any more, store full, shutting down: try again later
            log.info("expiry block not committed (%s); retrying in %.1fs", e, RETRY_S)
            await asyncio.sleep(RETRY_S)
            return False
        self.blocks_proposed += 1
        metrics.EXPIRY_BLOCKS.inc()
        return True
