"""The storage the core reads its stable log from (etcd's Storage), and an in-memory implementation.

The core never writes storage: the driver persists each Ready (hard state, entries) before sending
its messages, then calls ``advance``.
"""

from __future__ import annotations

from typing import Protocol

from consensus.types import ConfState, Entry, HardState, Snapshot


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
    def __init__(self, conf: ConfState) -> None:
        self.hs = HardState()
        self.cs = conf
        self.ents: list[Entry] = []

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hs, self.cs

    def first_index(self) -> int:
        return 1

    def last_index(self) -> int:
        return len(self.ents)

    def term(self, i: int) -> int:
        if i == 0:
            return 0
        if i > len(self.ents):
            raise Unavailable()
        return self.ents[i - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self.ents[lo - 1 : hi - 1]

    def snapshot(self) -> Snapshot:
        return Snapshot()

    def persist(self, hs: HardState | None, entries: list[Entry], snap: Snapshot | None) -> None:
        if entries:
            del self.ents[entries[0].index - 1 :]
            self.ents.extend(entries)
        if hs is not None:
            self.hs = hs
