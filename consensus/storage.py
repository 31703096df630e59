"""The stable storage the core reads (etcd's ``Storage``), and an in-memory implementation.

The core never writes storage. The driver persists each ``Ready`` (hard state, entries, snapshot)
before sending its messages, then calls ``RawNode.advance`` (see ``consensus.raft.Ready``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from consensus.errors import Compacted, SnapshotTemporarilyUnavailable, StorageError, Unavailable
from consensus.invariant import invariant
from consensus.types import ConfState, Entry, HardState, Index, Snapshot, SnapshotMetadata, Term

__all__ = [
    "Compacted",
    "MemoryStorage",
    "SnapshotTemporarilyUnavailable",
    "Storage",
    "StorageError",
    "Unavailable",
    "entry_size",
    "limit_size",
]

ENTRY_OVERHEAD_BYTES = 32  # what an entry costs on the wire besides its data (roughly its header)


def entry_size(e: Entry) -> int:
    return len(e.data) + ENTRY_OVERHEAD_BYTES


def limit_size(ents: Sequence[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within ``max_bytes`` — but always at least one entry, so progress is possible
    even when a single entry is larger than the limit."""
    if max_bytes is None:
        return list(ents)
    out: list[Entry] = []
    size = 0
    for e in ents:
        size += entry_size(e)
        if out and size > max_bytes:
            break
        out.append(e)
    return out


class Storage(Protocol):
    """Read access to the persisted log. Indexes ``first_index()..last_index()`` are available;
    ``term(first_index() - 1)`` is the term of the latest snapshot (the log's "dummy" entry)."""

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, at most ``max_bytes`` (at least one). Raises ``Compacted`` or
        ``Unavailable``."""
        ...

    # Return types are plain ``int``: storage is an outer boundary (node/ implements it over LMDB) and
    # the core brands what it reads as Term/Index itself.
    def term(self, i: Index) -> int:
        """Raises ``Compacted`` below ``first_index() - 1`` and ``Unavailable`` above ``last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot; may raise ``SnapshotTemporarilyUnavailable`` (the leader retries)."""
        ...


class MemoryStorage:
    """``Storage`` in memory, with the write side a driver needs. ``_ents`` hold indexes
    ``snapshot.index + 1`` onwards."""

    def __init__(self, conf_state: ConfState | None = None) -> None:
        cs = conf_state if conf_state is not None else ConfState()
        self.hs = HardState()
        self.cs = cs  # the latest applied configuration (the driver records it on each conf change)
        self._snapshot = Snapshot(SnapshotMetadata(Index(0), Term(0), cs))
        self._ents: list[Entry] = []

    # -- the Storage protocol ---------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hs, self.cs

    @property
    def snap(self) -> SnapshotMetadata:
        return self._snapshot.metadata

    def first_index(self) -> Index:
        return Index(self.snap.index + 1)

    def last_index(self) -> Index:
        return Index(self.snap.index + len(self._ents))

    def term(self, i: Index) -> Term:
        base = self.snap.index
        if i < base:
            raise Compacted(f"index {i} < snapshot index {base}")
        if i == base:
            return self.snap.term
        if i > self.last_index():
            raise Unavailable(f"index {i} > last index {self.last_index()}")
        return self._ents[i - base - 1].term

    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        base = self.snap.index
        if lo <= base:
            raise Compacted(f"index {lo} <= snapshot index {base}")
        if hi > self.last_index() + 1:
            raise Unavailable(f"entries up to {hi - 1} asked, last index {self.last_index()}")
        return limit_size(self._ents[lo - base - 1 : hi - base - 1], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- the write side ---------------------------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        self.hs = hs

    def set_conf_state(self, cs: ConfState) -> None:
        self.cs = cs

    def append(self, entries: Sequence[Entry]) -> None:
        """Append, replacing any conflicting suffix (entries at or after ``entries[0].index``)."""
        if not entries:
            return
        first = entries[0].index
        invariant(first <= self.last_index() + 1, f"append at {first} leaves a gap after {self.last_index()}")
        for a, b in itertools.pairwise(entries):
            invariant(b.index == a.index + 1, "appended entries are not contiguous")
        if first <= self.snap.index:  # the head is already inside the snapshot
            entries = [e for e in entries if e.index > self.snap.index]
            if not entries:
                return
            first = entries[0].index
        del self._ents[first - self.snap.index - 1 :]
        self._ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by ``snap`` (a follower installing the leader's snapshot)."""
        if snap.metadata.index <= self.snap.index:
            return  # older than what we have: nothing to do
        self._snapshot = snap
        self.cs = snap.metadata.conf_state
        self._ents = []

    def create_snapshot(self, index: Index, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the application's state at ``index`` (<= applied) as the latest snapshot; the
        entries it covers are dropped (the log then starts at ``index + 1``)."""
        invariant(index <= self.last_index(), f"snapshot at {index} beyond last index {self.last_index()}")
        if index <= self.snap.index:
            return self._snapshot
        self._snapshot_keep_entries(Snapshot(SnapshotMetadata(index, self.term(index), conf_state), data))
        return self._snapshot

    def _snapshot_keep_entries(self, snap: Snapshot) -> None:
        keep = [e for e in self._ents if e.index > snap.metadata.index]
        self._snapshot = snap
        self._ents = keep

    def compact(self, index: Index) -> None:
        """Drop entries up to ``index`` (which the application has applied). If no snapshot covers
        ``index`` yet, a metadata-only one is recorded there: the driver moves the state out of band."""
        if index <= self.snap.index:
            return
        invariant(index <= self.last_index(), f"compact {index} beyond last index {self.last_index()}")
        self._snapshot_keep_entries(Snapshot(SnapshotMetadata(index, self.term(index), self.cs)))

    def persist(self, hs: HardState | None, entries: Sequence[Entry], snap: Snapshot | None) -> None:
        """One Ready's durable part, in the contract's order: snapshot, entries, hard state."""
        if snap is not None:
            self.apply_snapshot(snap)
        self.append(entries)
        if hs is not None:
            self.hs = hs
