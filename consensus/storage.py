"""The storage the core reads its stable log from (etcd's Storage), and an in-memory implementation.

The core never writes storage: the driver persists each Ready (hard state, entries) before sending
its messages, then calls ``advance``.
"""

from __future__ import annotations

from typing import Protocol

from consensus.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata


class Compacted(Exception):
    pass


class Unavailable(Exception):
    pass


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...
    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]: ...
    def term(self, i: int) -> int: ...
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def snapshot(self) -> Snapshot: ...


class MemoryStorage:
    """Storage in memory, with compaction: ``ents`` hold indexes ``snap.index + 1`` onwards."""

    def __init__(self, conf: ConfState) -> None:
        self.hs = HardState()
        self.cs = conf
        self.snap = SnapshotMetadata(0, 0, conf)
        self.ents: list[Entry] = []

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hs, self.cs

    def first_index(self) -> int:
        return self.snap.index + 1

    def last_index(self) -> int:
        return self.snap.index + len(self.ents)

    def term(self, i: int) -> int:
        if i == self.snap.index:
            return self.snap.term
        if i < self.snap.index:
            raise Compacted()
        if i > self.last_index():
            raise Unavailable()
        return self.ents[i - self.snap.index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self.snap.index:
            raise Compacted()
        if hi > self.last_index() + 1:
            raise Unavailable()
        out: list[Entry] = []
        size = 0
        for e in self.ents[lo - self.snap.index - 1 : hi - self.snap.index - 1]:
            size += len(e.data) + 32
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(e)
        return out

    def snapshot(self) -> Snapshot:
        return Snapshot(metadata=self.snap)

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (the application has applied them)."""
        if index <= self.snap.index:
            return
        term = self.term(index)
        self.ents = self.ents[index - self.snap.index :]
        self.snap = SnapshotMetadata(index, term, self.cs)

    def persist(self, hs: HardState | None, entries: list[Entry], snap: Snapshot | None) -> None:
        if snap is not None and snap.metadata.index > self.snap.index:
            self.snap = snap.metadata
            self.cs = snap.metadata.conf_state
            self.ents = []
        if entries:
            del self.ents[entries[0].index - self.snap.index - 1 :]
            self.ents.extend(entries)
        if hs is not None:
            self.hs = hs
