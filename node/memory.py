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

import asyncio
import ctypes
import logging
import os
import threading
from collections.abc import Callable
from typing import Final

from node.loops import BackgroundLoop

log = logging.getLogger("sovledger.memory")

# The resident part of the LMDB map a node keeps before trimming. Large enough for the B-tree's
# upper levels and a few seconds of recently appended pages (which the next blocks touch again),
# small enough that a node with every other bound full stays well under 1 GiB.
MAP_RESIDENT_BYTES_MAX: Final = 256 << 20
# When the trimmer looks: after EVERY block the store thread applies (the one place the map grows
# with the ledger), so file-backed RSS exceeds the budget by at most what one block touches — a block
# is bounded by ``block_items_max`` (8,189 records in a region), whatever the throughput. A look is one
# pread of /proc/self/statm on a descriptor kept open (~1 µs, against a block's fsync of a millisecond
# or more). Reads outside blocks (lookups, proofs, an auditor paging the log on an idle node) are
# caught by ``MapWatch``: one look every WATCH_INTERVAL_S from the event loop.
WATCH_INTERVAL_S: Final = 1.0
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


def _statm_reader() -> Callable[[], int] | None:
    """A cheap reader of this process's shared resident bytes (file-backed plus shared memory; the
    third field of /proc/self/statm, in pages); None where /proc is not available."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def read() -> int:
        return int(os.pread(fd, 256, 0).split()[2]) * page

    return read


class MapTrimmer:
    """Keeps the resident part of a read-only file map (LMDB's ``data.mdb``) near a byte budget.

    ``maybe_trim()`` runs on the store thread after every block (and from ``MapWatch`` once a
    second): it reads the process's shared resident bytes (``RssFile`` + ``RssShmem``; a node has no
    shared memory of its own) and, above ``budget_bytes``, drops the map's pages from this process
    (the kernel keeps them in its page cache). Dropping pages is safe while another thread reads
    through the map: the mapping is read-only and shared, so a page touched again is mapped back
    from the page cache, unchanged. So the file-backed RSS a sampler sees is at most the budget plus
    what one block (or one second of reads outside blocks) touched."""

    def __init__(self, data_file: str, budget_bytes: int = MAP_RESIDENT_BYTES_MAX) -> None:
        self._file = data_file
        self.budget_bytes = budget_bytes
        self._madvise = _madvise()
        self._resident = _statm_reader()
        self._lock = threading.Lock()  # the store thread and MapWatch on the event loop
        self.looks = 0
        self.trims = 0
        self.trimmed_bytes = 0  # file-backed RSS released, summed over trims

    def maybe_trim(self) -> bool:
        """One look: trims when file-backed RSS is above the budget; True when it trimmed."""
        if self._madvise is None or self._resident is None:
            return False
        with self._lock:
            self.looks += 1
            before = self._resident()
            if before <= self.budget_bytes:
                return False
            return self._trim(before)

    def trim(self) -> bool:
        """Drop every page of the map from this process now; False if the map is not found."""
        if self._madvise is None:
            return False
        with self._lock:
            return self._trim(self._resident() if self._resident else 0)

    def _trim(self, before: int) -> bool:
        assert self._madvise is not None
        ranges = mapped_ranges(self._file)
        for lo, hi in ranges:
            if self._madvise(lo, hi - lo, MADV_DONTNEED) != 0:
                log.warning("madvise on the store map failed: %s", os.strerror(ctypes.get_errno()))
                return False
        if not ranges:
            return False
        self.trims += 1
        if self._resident is not None:
            self.trimmed_bytes += max(0, before - self._resident())
        return True


class MapWatch(BackgroundLoop):
    """Once every ``interval_s`` on the event loop, one look of the trimmer: pages read through the
    map outside blocks (an idle node serving reads) are trimmed too."""

    def __init__(self, trimmer: MapTrimmer, interval_s: float = WATCH_INTERVAL_S) -> None:
        super().__init__("map-watch", log)
        self._trimmer = trimmer
        self._interval_s = interval_s

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self._trimmer.maybe_trim()
