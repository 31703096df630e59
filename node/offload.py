"""CPU-heavy client work off the event loop that drives Raft.

Rule-set validation and dry runs, proofs, lookups and block ranges are computed in a small thread
pool, so ticks and heartbeats never wait behind a client. The pool's queue is bounded: beyond
``QUEUE_MAX`` waiting calls a request is refused at once with ``Overloaded`` (RESOURCE_EXHAUSTED)
rather than piling up. Only reads run here: the store thread stays the only writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from node.errors import Overloaded

THREADS: Final = 2
QUEUE_MAX: Final = 32

_T = TypeVar("_T")


class Offload:
    def __init__(self, threads: int = THREADS, queue_max: int = QUEUE_MAX) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="client-work")
        self._queue_max = queue_max
        self._pending = 0

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on a worker thread; Overloaded when too many calls are already waiting."""
        if self._pending >= self._queue_max:
            raise Overloaded(f"{self._pending} heavy requests are already being computed on this node "
                             "(validation, dry runs, proofs, lookups); retry with back-off")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
