"""The committed payer–payee pairs as sorted immutable runs (tables ``pair_runs`` / ``pair_run_dir``,
docs/formats.md; docs/rules.md §6, ninth pass).

A fold (ledger/risk_log.py) writes the journal's distinct pairs, sorted, as one new *run*: chunks of up to
``CHUNK`` pairs, key ``run id u64 BE ‖ the chunk's last pair`` (so the one chunk that can hold a pair ``pk``
is the first key ≥ ``run id ‖ pk``), value the chunk's pairs (32 bytes each, sorted); and a directory row
``run id u64 BE -> pair count u64 LE``. Nothing is looked up at fold time: runs may overlap.

**Merge rule (size-tiered).** The fold's run gets id ``newest id + 1`` (1 in an empty directory); then,
while the ``MERGE_WIDTH`` (4) newest runs have ``count(oldest of them) <= 2 × count(newest)``, the four are
replaced by their merge (sorted, each pair once) under the next id. The rule reads only stored counts, so
every node and both engines write the same bytes at the same height, also after a restart. Folds of similar
size are merged four at a time, so a pair is rewritten about log4(pairs / fold) times (merging the two
newest whenever the older is at most twice the newer rewrote it about log2 times); the rule leaves every
run more than twice the size of the run three places newer, so at most 3 × (log2(pairs) + 1) runs (in
practice about 3 × log4). Ids only grow (the newest run always survives a fold).

**Committed pairs** = the legacy table ``risk_pairs`` (written by folds before runs existed; read, never
written) ∪ every run ∪ the journal. ``PairRuns`` is one snapshot's directory with a per-process Bloom filter
per run, and one for the legacy table (ledger/_native/pair_runs.c: keyed, never stored, built when first
needed); a lookup of an absent pair costs one C call. The merge has a C
fast path and this module's ``merge_pairs`` as the reference (the same bytes, tests/engine/test_pair_runs.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ledger import native
from ledger.invariant import invariant
from ledger.schema import Table
from ledger.store import ReadTxn, WriteTxn

CHUNK: Final = 127  # pairs per pair_runs value (4064 bytes: one 4 KiB overflow page with its header)
PAIR_LEN: Final = 32
RUN_ID: Final = struct.Struct(">Q")
COUNT: Final = struct.Struct("<Q")
MERGE_RATIO: Final = 2
MERGE_WIDTH: Final = 4  # runs merged at once (module doc)
LEGACY: Final = -1  # the filters' key of the legacy risk_pairs table (run ids start at 1)

try:  # the merge and the filters in C (built with the package; absent without a C compiler)
    from ledger._native import _risk

    c_merge: Any = getattr(_risk, "merge_pairs", None)
    PairFilter: Any = getattr(_risk, "PairFilter", None)
    filter_hits: Any = getattr(_risk, "filter_hits", None)
    c_chunk_has: Any = getattr(_risk, "chunk_has", None)
except ImportError:  # pragma: no cover - a build without the extension
    c_merge = PairFilter = filter_hits = c_chunk_has = None


def split(packed: bytes) -> list[bytes]:
    """The 32-byte pairs of a packed run (ValueError if it is not whole pairs)."""
    if len(packed) % PAIR_LEN:
        raise ValueError("merge_pairs: packed pairs are 32 bytes each")
    return [packed[i:i + PAIR_LEN] for i in range(0, len(packed), PAIR_LEN)]


def merge_pairs(a: bytes, b: bytes) -> bytes:
    """The sorted union of two sorted packed runs, each pair once (the reference of the C merge_pairs)."""
    pa, pb = split(a), split(b)
    for run in (pa, pb):
        if any(run[i] > run[i + 1] for i in range(len(run) - 1)):
            raise ValueError("merge_pairs: a run's pairs are not sorted")
    return b"".join(sorted(set(pa) | set(pb)))


def merger() -> Callable[[bytes, bytes], bytes]:
    """The merge of the engine in use: C with the native engine, else the Python reference."""
    return c_merge if c_merge is not None and native.active() == "native" else merge_pairs


def directory(txn: ReadTxn) -> list[tuple[int, int]]:
    """(run id, pair count) of every run, oldest (smallest id) first."""
    return [(RUN_ID.unpack(k)[0], COUNT.unpack(v)[0]) for k, v in txn.range(Table.PAIR_RUN_DIR)]


def run_pairs(txn: ReadTxn, rid: int) -> bytes:
    """A run's packed pairs, sorted."""
    return b"".join(v for _, v in txn.range(Table.PAIR_RUNS, RUN_ID.pack(rid), RUN_ID.pack(rid + 1)))


def chunk_has_py(chunk: bytes, pk: bytes) -> bool:
    """Whether a sorted packed chunk holds ``pk`` (a binary search; the reference of the C chunk_has)."""
    lo, hi = 0, len(chunk) // PAIR_LEN
    while lo < hi:
        mid = (lo + hi) // 2
        got = chunk[mid * PAIR_LEN:(mid + 1) * PAIR_LEN]
        if got == pk:
            return True
        if got < pk:
            lo = mid + 1
        else:
            hi = mid
    return False


chunk_has: Callable[[bytes, bytes], bool] = c_chunk_has if c_chunk_has is not None else chunk_has_py


def new_filter(packed: bytes) -> Any:
    """A run's per-process filter, or None (no C build: every lookup reads the run)."""
    return PairFilter(packed) if PairFilter is not None else None


@dataclass(slots=True)
class PairRuns:
    """One snapshot's runs (ids and counts, oldest first), whether ``risk_pairs`` holds anything, and the
    per-process filters by run id (a run's pairs never change while its id is in the directory, and ids are
    never reused in a store: a filter stays right for every snapshot that lists the id)."""

    runs: list[tuple[int, int]]
    legacy: bool
    filters: dict[int, Any] = field(default_factory=dict)
    build: bool = True  # build a missing filter from the store (False: a one-off reader seeks the run instead)
    _tuple: tuple[Any, ...] | None = None
    _txn: Any = None  # the transaction ``_get`` reads (``has``)
    _get: Callable[[bytes], bytes | None] | None = None

    @staticmethod
    def read(txn: ReadTxn, filters: dict[int, Any] | None = None, build: bool = True) -> PairRuns:
        """The snapshot's directory; ``filters``: committed filters to reuse (shared, filled lazily)."""
        return PairRuns(directory(txn), txn.last(Table.RISK_PAIRS) is not None,
                        filters if filters is not None else {}, build)

    def filter_tuple(self, txn: ReadTxn) -> tuple[Any, ...]:
        """One filter (or None) per run, in directory order, then the legacy table's when it is not empty; a
        missing one is built from the store now."""
        if self._tuple is None:
            build = self.build and PairFilter is not None
            for rid, _ in self.runs:
                if build and rid not in self.filters:
                    self.filters[rid] = new_filter(run_pairs(txn, rid))
            if build and self.legacy and LEGACY not in self.filters:  # never written now: one filter for good
                self.filters[LEGACY] = new_filter(b"".join(k for k, _ in txn.range(Table.RISK_PAIRS)))
            legacy = (self.filters.get(LEGACY),) if self.legacy else ()
            self._tuple = tuple(self.filters.get(rid) for rid, _ in self.runs) + legacy
        return self._tuple

    def has(self, txn: ReadTxn, pk: bytes) -> bool:
        """Whether ``pk`` is in ``risk_pairs`` or a run (the journal is the caller's: the C table pins it, the
        Python paths' overlay and a dry run's rows hold it): ``getter``'s lookup, its cursor kept per ``txn``."""
        if self._txn is not txn:
            self._get, self._txn = self.getter(txn), txn
        assert self._get is not None
        return self._get(pk) is not None

    def getter(self, txn: ReadTxn) -> Callable[[bytes], bytes | None]:
        """The one lookup of stored pairs (the C RiskTable's pair getter, ``has``): b"" if the pair is in a run
        or the legacy table, else None. Each is read only on a hit of its filter: an absent pair costs the one
        ``filter_hits`` call."""
        prefixes = [RUN_ID.pack(rid) for rid, _ in self.runs]
        nruns = len(prefixes)
        legacy = txn.getter(Table.RISK_PAIRS)
        hits = filter_hits if filter_hits is not None else (lambda fs, _pk: range(len(fs)))
        seek, has = txn.seeker(Table.PAIR_RUNS), chunk_has
        filters: tuple[Any, ...] | None = None  # built at the first lookup: a block that reads no pair builds none

        def get(pk: bytes) -> bytes | None:
            nonlocal filters
            if filters is None:
                filters = self.filter_tuple(txn)
            for i in hits(filters, pk):  # almost always none for an absent pair
                if i == nruns:  # the legacy table's filter (last): one get
                    return b"" if legacy(pk) is not None else None
                prefix = prefixes[i]
                found = seek(prefix + pk)  # the only chunk of the run that can hold pk
                if found is not None and found[0][:8] == prefix and has(found[1], pk):
                    return b""
            return None

        return get

    def all_pairs(self, txn: ReadTxn) -> set[bytes]:
        """Every stored pair, legacy and runs (tools and tests)."""
        pairs = {k for k, _ in txn.range(Table.RISK_PAIRS)}
        for rid, _ in self.runs:
            pairs.update(split(run_pairs(txn, rid)))
        return pairs


def _put_run(txn: WriteTxn, rid: int, packed: bytes) -> None:
    prefix = RUN_ID.pack(rid)
    step = CHUNK * PAIR_LEN
    chunks = []
    for i in range(0, len(packed), step):
        chunk = packed[i:i + step]
        chunks.append((prefix + chunk[-PAIR_LEN:], chunk))
    txn.put_many(Table.PAIR_RUNS, chunks, append=True)  # the newest id: every key sorts after the table's
    txn.put(Table.PAIR_RUN_DIR, prefix, COUNT.pack(len(packed) // PAIR_LEN))


def _take_run(txn: WriteTxn, rid: int) -> bytes:
    """A run's packed pairs, its chunks and directory row deleted (it is being merged): one pass."""
    keys, chunks = [], []
    for key, value in txn.range(Table.PAIR_RUNS, RUN_ID.pack(rid), RUN_ID.pack(rid + 1)):
        keys.append(key)
        chunks.append(value)
    for key in keys:
        txn.delete(Table.PAIR_RUNS, key)
    txn.delete(Table.PAIR_RUN_DIR, RUN_ID.pack(rid))
    return b"".join(chunks)


def add_run(txn: WriteTxn, packed: bytes, before: PairRuns | None = None,
            merge: Callable[[bytes, bytes], bytes] | None = None) -> PairRuns:
    """Write a fold's sorted distinct pairs as a new run and merge by the rule (module doc); the runs after,
    with the filters of the runs kept from ``before`` (the committed ones, or read from ``txn``; the new run's is
    built when a lookup first needs it).
    The result is for the caller to publish when the transaction commits (an abort must not see it)."""
    if before is None:
        before = PairRuns.read(txn)
    if not packed:
        return before
    invariant(directory(txn) == before.runs, "the cached pair runs differ from the store's directory")
    merge = merge or merger()
    stack: list[tuple[int, int, bytes | None]] = [(rid, n, None) for rid, n in before.runs]
    next_id = (stack[-1][0] + 1) if stack else 1
    stack.append((next_id, len(packed) // PAIR_LEN, packed))
    next_id += 1
    while len(stack) >= MERGE_WIDTH and stack[-MERGE_WIDTH][1] <= MERGE_RATIO * stack[-1][1]:
        group = stack[-MERGE_WIDTH:]
        del stack[-MERGE_WIDTH:]
        parts = [data if data is not None else _take_run(txn, rid) for rid, _, data in group]
        while len(parts) > 1:  # pairwise, as a tree (the union is the same in any order)
            parts = [merge(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                     for i in range(0, len(parts), 2)]
        stack.append((next_id, len(parts[0]) // PAIR_LEN, parts[0]))
        next_id += 1
    top_id, _, top = stack[-1]
    assert top is not None  # the newest run is always new: the fold's or a merge
    _put_run(txn, top_id, top)
    runs = [(rid, n) for rid, n, _ in stack]
    # the new run's filter is built at its first lookup (filter_tuple): a ledger whose rules never read a pair
    # (or not before the next fold merges the run away) never hashes its pairs
    filters = {rid: before.filters[rid] for rid in [LEGACY, *(rid for rid, _ in runs)] if rid in before.filters}
    return PairRuns(runs, before.legacy, filters)
