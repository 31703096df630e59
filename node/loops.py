"""Background loops on the node's event loop: one asyncio task each, started once, cancelled on stop.

``BackgroundLoop`` owns the task: ``start()`` creates it (named, for debugging and ``asyncio`` task
dumps), ``stop()`` cancels it and waits until it has ended, and never raises — a loop that ended by
an exception of its own is logged when it ends, not at shutdown. ``LeaderRounds`` is the common
shape on top of it: every ``interval_s`` seconds, while this node leads its region, run one
``round()``; a round that fails is logged and tried again a period later (the log is the state, so a
lost round loses nothing). A follower's loop only sleeps.

Used by ``node/expiry.py`` (``ExpiryTimer``, its own schedule), ``node/aggregator.py``
(``Aggregator``), ``node/netting.py`` (``ObligationRelay``, ``SettlementTimer``), ``node/witness.py``
(the witness gatherer) and ``node/vault_service.py`` (``PeerCopies``, the vault's catch-up loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

_log = logging.getLogger("sovledger.loops")


class BackgroundLoop:
    """One named task running ``_run()``; subclasses implement ``_run``."""

    def __init__(self, name: str, logger: logging.Logger = _log) -> None:
        self.name = name
        self._log = logger
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task on the running event loop (a second call while it runs does nothing)."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end; safe to call when never started or already stopped."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # an exception was logged by _ended
            await task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("%s stopped by an unexpected error: %r", self.name, exc, exc_info=exc)

    async def _run(self) -> None:
        raise NotImplementedError


class LeaderRounds(BackgroundLoop):
    """Every ``interval_s``, while ``is_leader()``, one ``round()``; a failed round is logged at
    ``failure_level`` with ``failure_message`` (one ``%s``: the error) and retried next period."""

    failure_message = "round failed: %s"
    failure_level = logging.WARNING

    def __init__(self, name: str, interval_s: float, is_leader: Callable[[], bool],
                 logger: logging.Logger = _log) -> None:
        super().__init__(name, logger)
        self.interval_s = interval_s
        self._is_leader = is_leader

    async def round(self) -> object:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self._is_leader():
                continue
            try:
                await self.round()
            except Exception as e:  # a failed round is retried at the next period
                self._log.log(self.failure_level, self.failure_message, e)
