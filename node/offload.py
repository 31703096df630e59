"""CPU-heavy client work off the event loop that drives Raft.

Proofs, lookups, block ranges, rule dry runs and reports are computed in a small thread pool, so
ticks and heartbeats never wait behind a client. Work that holds the GIL for long stretches —
compiling a rule set (the CEL compiler is native code that keeps the GIL) — runs in a separate
process instead (``run_isolated``), started on first use. Both queues are bounded: beyond
``QUEUE_MAX`` waiting calls a request is refused at once with ``Overloaded`` (RESOURCE_EXHAUSTED)
rather than piling up. Only reads run here: the store thread stays the only writer. The worker process
exits by itself when the node is gone (``exit_with_parent``): a node killed with SIGKILL leaves no worker.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Final, TypeVar

from node.errors import Overloaded

THREADS: Final = 2
QUEUE_MAX: Final = 32

_T = TypeVar("_T")


def exit_with_parent(parent: int) -> None:
    """Worker initializer: the worker exits once the node that started it is gone. A node killed with
    SIGKILL cannot shut its pool down, and its worker would wait for work forever, one per crash."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Offload:
    def __init__(self, threads: int = THREADS, queue_max: int = QUEUE_MAX) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="client-work")
        self._processes: ProcessPoolExecutor | None = None
        self._queue_max = queue_max
        self._pending = 0

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on a worker thread; Overloaded when too many calls are already waiting."""
        return await self._submit(self._pool, fn, *args)

    async def run_isolated(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` in a worker process (``fn`` and its arguments and result must pickle)."""
        if self._processes is None:
            self._processes = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=exit_with_parent, initargs=(os.getpid(),))
        return await self._submit(self._processes, fn, *args)

    async def _submit(self, pool: ThreadPoolExecutor | ProcessPoolExecutor, fn: Callable[..., _T],
                      *args: object) -> _T:
        if self._pending >= self._queue_max:
            raise Overloaded(f"{self._pending} heavy requests are already being computed on this node "
                             "(validation, dry runs, proofs, lookups); retry with back-off")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)
