"""A node's memory budget: what it may hold, in bytes, and the one part the kernel fills for it.

Measured on a 3-node region with one follower down under full load (docs/operations.md,
"Memory"): once the bounded caches and queues are full, a node's *anonymous* memory stays flat;
what kept growing was *file-backed* resident memory — the pages of LMDB's memory map of
``data.mdb`` that the process has touched (LMDB reads every page through the map, and copies each
page it changes from there). That is page cache, shared and reclaimable, but it counts in the
process's RSS and grows with the ledger (~430 bytes per transfer), so an operator watching RSS sees
an apparent leak. ``MapTrimmer`` keeps it near ``MAP_RESIDENT_BYTES_MAX`` by telling the kernel,
now and then, that the node no longer needs the map's pages (``madvise(MADV_DONTNEED)``); the data
stays in the page cache and in the file, and a page touched again comes back with a minor fault.

The map is opened read-only (LMDB without ``writemap`` writes with ``pwrite``), so no page of it is
ever dirty in this process: dropping the mapping of a page never loses a write.

The budget, in bytes (each bound lives beside its code; the sum is what a node may hold beyond
its ~100 MB baseline of code, libraries and the interpreter):

- Raft entry tail cache: 64 MiB (``node.raft_storage.CACHE_BYTES_MAX``)
- send queue per peer: 48 MiB (``node.transport.QUEUE_BYTES_MAX``)
- ingest queue, records plus a per-batch cost: 64 MiB (``node.pipeline.QUEUE_BYTES_MAX``)
- requests held by all Submit streams together: 256 MiB (``node.service.WINDOW_BYTES_MAX``)
- file-backed RSS, the map plus ~55 MB of libraries: 256 MiB (``MAP_RESIDENT_BYTES_MAX``, here)
- label sets of the per-PSP result metric: 512 (``node.metrics.PSP_LABELS_MAX``)
- the ledger's committed account / risk caches: ~60 / ~27 MiB (``ledger.apply.scratch``)
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger("sovledger.memory")

# The resident part of the LMDB map a node keeps before trimming. Large enough for the B-tree's
# upper levels and a few seconds of recently appended pages (which the next blocks touch again),
# small enough that a node with every other bound full stays well under 1 GiB.
MAP_RESIDENT_BYTES_MAX: Final = 256 << 20
# How often the store thread looks at its resident size (one read of /proc/self/status, ~20 µs):
# every second, and sooner once this many leaves were appended since the last look — appends touch
# ~260-430 bytes of map per leaf, so the map outgrows its budget by at most ~4-7 MiB (plus one block)
# between looks whatever the throughput.
TRIM_CHECK_INTERVAL_S: Final = 1.0
TRIM_CHECK_LEAVES: Final = 16_384
MADV_DONTNEED: Final = 4  # Linux <sys/mman.h>


def proc_memory(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS``, ``RssAnon``, ``RssFile``, ``RssShmem`` and ``VmHWM`` of a process, in bytes
    (from /proc/PID/status; empty where /proc is not available)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def mapped_ranges(path: str, maps_file: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """Address ranges [start, end) where this process maps the file ``path``."""
    real = os.path.realpath(path)
    ranges: list[tuple[int, int]] = []
    try:
        with open(maps_file) as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip() == real:
                    lo, hi = parts[0].split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return ranges


def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


class MapTrimmer:
    """Keeps the resident part of a read-only file map (LMDB's ``data.mdb``) near a byte budget.

    ``maybe_trim()`` runs on the store thread after a block; every ``interval_s``, or sooner once
    ``check_leaves`` leaves were appended, it reads the process's file-backed RSS and, above
    ``budget_bytes``, drops the map's pages from this process (the kernel keeps them in its page
    cache)."""

    def __init__(self, data_file: str, budget_bytes: int = MAP_RESIDENT_BYTES_MAX,
                 interval_s: float = TRIM_CHECK_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 check_leaves: int = TRIM_CHECK_LEAVES) -> None:
        self._file = data_file
        self.budget_bytes = budget_bytes
        self._interval_s = interval_s
        self._clock = clock
        self._next_check = 0.0
        self._check_leaves = check_leaves
        self._next_leaves = 0
        self._madvise = _madvise()
        self.trims = 0
        self.trimmed_bytes = 0  # file-backed RSS released, summed over trims

    def maybe_trim(self, leaves: int = 0) -> bool:
        """After a block; ``leaves`` is the log's size now (a look is due every ``check_leaves``)."""
        now = self._clock()
        if (now < self._next_check and leaves < self._next_leaves) or self._madvise is None:
            return False
        self._next_check = now + self._interval_s
        self._next_leaves = leaves + self._check_leaves
        before = proc_memory().get("RssFile", 0)
        if before <= self.budget_bytes:
            return False
        return self.trim(before)

    def trim(self, before: int | None = None) -> bool:
        """Drop every page of the map from this process now; False if the map is not found."""
        if self._madvise is None:
            return False
        before = proc_memory().get("RssFile", 0) if before is None else before
        ranges = mapped_ranges(self._file)
        for lo, hi in ranges:
            if self._madvise(lo, hi - lo, MADV_DONTNEED) != 0:
                log.warning("madvise on the store map failed: %s", os.strerror(ctypes.get_errno()))
                return False
        if not ranges:
            return False
        self.trims += 1
        self.trimmed_bytes += max(0, before - proc_memory().get("RssFile", 0))
        return True
