"""MemoryStorage behaves like etcd's: typed errors at the edges, suffix replacement, snapshots."""

from __future__ import annotations

import pytest

from consensus.errors import Compacted, Unavailable
from consensus.invariant import InvariantViolation
from consensus.storage import MemoryStorage, limit_size
from consensus.types import ConfState, Entry, HardState, Index, NodeId, Snapshot, SnapshotMetadata, Term


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(Term(t), Index(start + k), data=b"d%d" % (start + k)) for k, t in enumerate(terms)]


def test_append_replaces_a_conflicting_suffix() -> None:
    s = MemoryStorage()
    s.append(ents(1, 1, 1, 2))
    s.append(ents(3, 3, start=3))
    assert [e.term for e in s.entries(Index(1), Index(5))] == [1, 1, 3, 3]
    with pytest.raises(InvariantViolation):
        s.append(ents(4, start=9))  # a gap


def test_indexes_outside_the_log_raise_typed_errors() -> None:
    s = MemoryStorage()
    s.append(ents(1, 1, 2, 2, 2))
    s.create_snapshot(Index(2), ConfState((NodeId(1),)), b"state")
    assert s.first_index() == 3 and s.last_index() == 5 and s.term(Index(2)) == 1
    with pytest.raises(Compacted):
        s.term(Index(1))
    with pytest.raises(Compacted):
        s.entries(Index(2), Index(4))
    with pytest.raises(Unavailable):
        s.term(Index(6))
    with pytest.raises(Unavailable):
        s.entries(Index(3), Index(7))
    assert s.snapshot().data == b"state"


def test_entries_respect_max_bytes_but_return_at_least_one() -> None:
    s = MemoryStorage()
    s.append(ents(1, 1, 1))
    assert len(s.entries(Index(1), Index(4), max_bytes=1)) == 1
    assert len(s.entries(Index(1), Index(4), max_bytes=10_000)) == 3
    assert limit_size([], 5) == []


def test_compact_records_a_metadata_only_snapshot() -> None:
    s = MemoryStorage(ConfState((NodeId(1), NodeId(2))))
    s.append(ents(1, 1, 2))
    s.compact(Index(2))
    assert s.first_index() == 3 and s.snap == SnapshotMetadata(Index(2), Term(1), s.cs)
    s.compact(Index(1))  # older: nothing to do


def test_apply_snapshot_replaces_the_log() -> None:
    s = MemoryStorage()
    s.append(ents(1, 1))
    cs = ConfState((NodeId(1), NodeId(2), NodeId(3)))
    s.apply_snapshot(Snapshot(SnapshotMetadata(Index(10), Term(4), cs), b"x"))
    assert s.first_index() == 11 and s.last_index() == 10 and s.initial_state()[1] == cs
    s.set_hard_state(HardState(Term(4), NodeId(2), Index(10)))
    assert s.initial_state()[0].vote == 2
