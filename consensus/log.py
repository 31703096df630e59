"""The Raft log as the core sees it: stable storage plus an unstable tail not yet persisted.

Indexes, lowest to highest::

    first_index-1 (snapshot)  ...  applied <= applying <= committed  ...  stable last | unstable ... last_index

``unstable`` holds entries (and possibly a snapshot from the leader) that the driver has not persisted
yet; ``in_progress`` marks the part already handed out in a ``Ready`` so it is not handed out twice.
"""

from __future__ import annotations

from consensus.errors import Compacted, StorageError, Unavailable
from consensus.invariant import invariant
from consensus.storage import Storage, limit_size
from consensus.types import Entry, EntryType, Index, Snapshot, Term


class Unstable:
    def __init__(self, offset: Index) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset  # index of entries[0]
        self.offset_in_progress = offset  # entries below this were handed to the driver
        self.snapshot_in_progress = False

    def maybe_first_index(self) -> Index | None:
        return Index(self.snapshot.metadata.index + 1) if self.snapshot is not None else None

    def maybe_last_index(self) -> Index | None:
        if self.entries:
            return Index(self.offset + len(self.entries) - 1)
        return self.snapshot.metadata.index if self.snapshot is not None else None

    def maybe_term(self, i: Index) -> Term | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == i:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def next_entries(self) -> list[Entry]:
        return self.entries[self.offset_in_progress - self.offset :]

    def next_snapshot(self) -> Snapshot | None:
        return None if self.snapshot is None or self.snapshot_in_progress else self.snapshot

    def accept_in_progress(self) -> None:
        if self.entries:
            self.offset_in_progress = Index(self.entries[-1].index + 1)
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: Index, term: Term) -> None:
        """Entries up to ``index`` are on disk — unless they were replaced since the Ready was made,
        which the term check detects (then a later Ready persists the replacement)."""
        if self.maybe_term(index) != term or index < self.offset:
            return
        drop = index + 1 - self.offset
        self.entries = self.entries[drop:]
        self.offset = Index(index + 1)
        self.offset_in_progress = Index(max(self.offset_in_progress, self.offset))

    def stable_snap_to(self, index: Index) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snap: Snapshot) -> None:
        self.offset = Index(snap.metadata.index + 1)
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = snap
        self.snapshot_in_progress = False

    def truncate_and_append(self, ents: list[Entry]) -> None:
        first = ents[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif first <= self.offset:
            # the whole unstable tail is replaced; storage's conflicting suffix is overwritten on persist
            self.offset = first
            self.entries = list(ents)
        else:
            self.entries = self.entries[: first - self.offset] + list(ents)
        self.offset_in_progress = Index(min(self.offset_in_progress, first))

    def slice(self, lo: Index, hi: Index) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: Storage, applied: Index) -> None:
        self.storage = storage
        first, last = storage.first_index(), storage.last_index()
        self.unstable = Unstable(Index(last + 1))
        self.committed = Index(first - 1)
        self.applying = Index(first - 1)  # handed to the driver to apply, not yet reported applied
        self.applied = Index(first - 1)
        if applied > self.applied:
            invariant(applied <= last, f"applied {applied} is beyond the persisted log's last index {last}")
            self.applied = self.applying = applied

    # -- indexes and terms ----------------------------------------------------------------------

    def first_index(self) -> Index:
        i = self.unstable.maybe_first_index()
        return i if i is not None else Index(self.storage.first_index())

    def last_index(self) -> Index:
        i = self.unstable.maybe_last_index()
        return i if i is not None else Index(self.storage.last_index())

    def stable_last_index(self) -> Index:
        """The highest index the driver has reported persisted (a leader counts itself only up to here)."""
        if self.unstable.snapshot is not None:
            return Index(0)  # only followers adopt snapshots, and they never count themselves
        return Index(self.unstable.offset - 1)

    def term(self, i: Index) -> Term:
        """Raises ``Compacted``/``Unavailable`` outside ``[first_index - 1, last_index]``."""
        dummy = self.first_index() - 1
        if i < dummy:
            raise Compacted(f"index {i} < {dummy}")
        if i > self.last_index():
            raise Unavailable(f"index {i} > {self.last_index()}")
        t = self.unstable.maybe_term(i)
        return t if t is not None else Term(self.storage.term(i))

    def term_or_zero(self, i: Index) -> Term:
        try:
            return self.term(i)
        except StorageError:
            return Term(0)

    def last_term(self) -> Term:
        return self.term(self.last_index())

    def match_term(self, i: Index, t: Term) -> bool:
        try:
            return self.term(i) == t
        except StorageError:
            return False

    def is_up_to_date(self, last_index: Index, last_term: Term) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        ours = self.last_term()
        return last_term > ours or (last_term == ours and last_index >= self.last_index())

    # -- reading entries ------------------------------------------------------------------------

    def slice(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; raises ``Compacted`` if ``lo`` is below the first index."""
        invariant(lo <= hi, f"slice [{lo}, {hi}) is inverted")
        if lo == hi:
            return []
        invariant(hi <= self.last_index() + 1, f"slice up to {hi - 1} beyond last index {self.last_index()}")
        if lo < self.first_index():
            raise Compacted(f"index {lo} compacted (first {self.first_index()})")
        out: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            out = self.storage.entries(lo, Index(min(hi, off)), max_bytes)
            if len(out) < min(hi, off) - lo:  # the size limit cut the stable part short
                return out
        if hi > off:
            out += self.unstable.slice(Index(max(lo, off)), hi)
        return limit_size(out, max_bytes)

    def entries_from(self, lo: Index, max_bytes: int | None) -> list[Entry]:
        if lo > self.last_index():
            return []
        return self.slice(lo, Index(self.last_index() + 1), max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.committed >= max(self.applying + 1, self.first_index())

    def next_committed_entries(self, max_bytes: int | None) -> list[Entry]:
        lo = Index(max(self.applying + 1, self.first_index()))
        if self.committed < lo:
            return []
        return self.slice(lo, Index(self.committed + 1), max_bytes)

    def has_unapplied_conf_change(self) -> bool:
        """A committed membership change that is not applied yet: campaigning now would use a stale
        configuration (etcd refuses too)."""
        lo = Index(max(self.applied + 1, self.first_index()))
        if self.committed < lo:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in self.slice(lo, Index(self.committed + 1)))

    # -- writing --------------------------------------------------------------------------------

    def append(self, ents: list[Entry]) -> Index:
        if not ents:
            return self.last_index()
        invariant(ents[0].index - 1 >= self.committed,
                  f"append at {ents[0].index} would overwrite committed index {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: tuple[Entry, ...]) -> Index:
        """The first index of ``ents`` whose term differs from ours (or that we do not have); 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return Index(0)

    def maybe_append(self, index: Index, log_term: Term, committed: Index, ents: tuple[Entry, ...]) -> Index | None:
        """The AppendEntries consistency check (Raft §5.3). Returns the last index known to match the
        leader, or None when our log does not hold (``index``, ``log_term``)."""
        if not self.match_term(index, log_term):
            return None
        last_new = Index(index + len(ents))
        conflict = self.find_conflict(ents)
        if conflict:
            invariant(conflict > self.committed,
                      f"entry {conflict} conflicts with committed entry (committed {self.committed})")
            self.append(list(ents[conflict - index - 1 :]))
        self.commit_to(Index(min(committed, last_new)))
        return last_new

    def find_conflict_by_term(self, index: Index, term: Term) -> tuple[Index, Term]:
        """Fast back-off (Raft §5.3, "the follower can include the term of the conflicting entry"):
        the highest index <= ``index`` whose term is <= ``term``, and that term (0 if unknown)."""
        while index > 0:
            try:
                ours = self.term(index)
            except StorageError:
                return index, Term(0)
            if ours <= term:
                return index, ours
            index = Index(index - 1)
        return Index(0), Term(0)

    def commit_to(self, index: Index) -> None:
        if index > self.committed:
            invariant(index <= self.last_index(),
                      f"commit {index} beyond last index {self.last_index()}: the log was lost or corrupted")
            self.committed = index

    def maybe_commit(self, index: Index, term: Term) -> bool:
        """Commit ``index`` if it is of ``term`` (the leader's own term: Figure 8)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: Index) -> None:
        invariant(index <= self.committed, f"applied {index} beyond committed {self.committed}")
        if index > self.applied:
            self.applied = index
        if index > self.applying:
            self.applying = index

    def accept_applying(self, index: Index) -> None:
        self.applying = Index(max(self.applying, index))

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.metadata.index
        self.unstable.restore(snap)

    def stable_to(self, index: Index, term: Term) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: Index) -> None:
        self.unstable.stable_snap_to(index)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()
