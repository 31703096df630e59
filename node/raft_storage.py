"""Durable Raft storage in the node's LMDB environment (table ``raft``), implementing the consensus
``Storage`` protocol for the Raft core.

Persistence contract (docs/consensus.md): the driver calls ``persist()`` with a Ready's hard state,
entries and snapshot, and only after it returns (LMDB commit = fsync) sends that Ready's messages.
Keys in ``raft``: ``hs`` hard state, ``cs`` conf state, ``snap`` snapshot metadata, ``first``; the
entries live in ``raftlog`` (u64 BE index → encoded entry).
An in-memory tail cache keeps reads of recent entries off LMDB; it is bounded in bytes
(``CACHE_BYTES_MAX``), since one entry is a whole block of up to several MiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from consensus import codec as rc
from consensus.storage import Compacted, Unavailable
from consensus.types import ConfState, Entry, HardState, Index, NodeId, Snapshot, SnapshotMetadata, Term
from ledger.schema import Table, decode_index, index_key
from ledger.store import Store

K_HS: Final = b"hs"
K_CS: Final = b"cs"
K_SNAP: Final = b"snap"
K_FIRST: Final = b"first"
CACHE_BYTES_MAX: Final = 64 << 20  # bytes of entry data held in the tail cache


class LmdbRaftStorage:
    def __init__(self, store: Store, initial_conf: ConfState) -> None:
        self._store = store
        with store.read() as txn:
            hs = txn.get(Table.RAFT, K_HS)
            cs = txn.get(Table.RAFT, K_CS)
            snap = txn.get(Table.RAFT, K_SNAP)
            last = txn.last(Table.RAFTLOG)
            first = txn.get(Table.RAFT, K_FIRST)
        self._hard_state = rc.decode_hard_state(hs) if hs else HardState(term=Term(0), vote=NodeId(0), commit=Index(0))
        self._conf_state = rc.decode_conf_state(cs) if cs else initial_conf
        self._snap_meta = (rc.decode_snapshot_metadata(snap) if snap
                           else SnapshotMetadata(index=Index(0), term=Term(0), conf_state=self._conf_state))
        self._first = decode_index(first) if first else self._snap_meta.index + 1
        self._last = self._first - 1
        if last is not None:
            self._last = decode_index(last[0])
        self._cache: dict[int, Entry] = {}  # insertion order = index order (appends only grow)
        self._cache_bytes = 0

    # -- Storage protocol ------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf_state

    def first_index(self) -> int:
        return self._first

    def last_index(self) -> int:
        return self._last

    def term(self, i: int) -> int:
        if i == self._snap_meta.index:
            return self._snap_meta.term
        if i < self._first:
            raise Compacted()
        if i > self._last:
            raise Unavailable()
        return self._entry(i).term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo < self._first:
            raise Compacted()
        if hi > self._last + 1:
            raise Unavailable()
        out: list[Entry] = []
        size = 0
        for i in range(lo, hi):
            e = self._entry(i)
            size += len(e.data) + 32
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(e)
        return out

    def snapshot(self) -> Snapshot:
        return Snapshot(metadata=self._snap_meta, data=b"")

    # -- driver side ------------------------------------------------------------------------------

    def _entry(self, i: int) -> Entry:
        e = self._cache.get(i)
        if e is not None:
            return e
        with self._store.read() as txn:
            raw = txn.get(Table.RAFTLOG, index_key(i))
        if raw is None:
            raise Unavailable()
        return rc.decode_entry(raw)

    def persist(self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None) -> None:
        """Durably store a Ready's state (one LMDB transaction, fsynced on commit)."""
        if hard_state is None and not entries and snapshot is None:
            return
        with self._store.write() as txn:
            if snapshot is not None and snapshot.metadata.index > self._snap_meta.index:
                meta = snapshot.metadata
                txn.put(Table.RAFT, K_SNAP, rc.encode_snapshot_metadata(meta))
                txn.put(Table.RAFT, K_CS, rc.encode_conf_state(meta.conf_state))
                for i in range(self._first, self._last + 1):
                    txn.delete(Table.RAFTLOG, index_key(i))
                txn.put(Table.RAFT, K_FIRST, index_key(meta.index + 1))
            if entries:
                first_new = entries[0].index
                for i in range(first_new, self._last + 1):  # truncate a conflicting suffix
                    txn.delete(Table.RAFTLOG, index_key(i))
                txn.put_many(Table.RAFTLOG, [(index_key(e.index), rc.encode_entry(e)) for e in entries])
            if hard_state is not None:
                txn.put(Table.RAFT, K_HS, rc.encode_hard_state(hard_state))
        # committed: update the in-memory view
        if snapshot is not None and snapshot.metadata.index > self._snap_meta.index:
            self._snap_meta = snapshot.metadata
            self._conf_state = snapshot.metadata.conf_state
            self._first = snapshot.metadata.index + 1
            self._last = snapshot.metadata.index
            self._clear_cache()
        if entries:
            for i in range(entries[0].index, self._last + 1):
                self._uncache(i)
            for e in entries:
                self._cache[e.index] = e
                self._cache_bytes += len(e.data)
            self._last = entries[-1].index
            self._trim_cache()
        if hard_state is not None:
            self._hard_state = hard_state

    def _uncache(self, i: int) -> None:
        e = self._cache.pop(i, None)
        if e is not None:
            self._cache_bytes -= len(e.data)

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    def _trim_cache(self) -> None:
        """Evict the oldest entries until the cache fits its byte budget (the newest one always stays)."""
        while self._cache_bytes > CACHE_BYTES_MAX and len(self._cache) > 1:
            self._uncache(next(iter(self._cache)))

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes

    def reset_to_snapshot(self, meta: SnapshotMetadata) -> None:
        """After a snapshot replaced the whole store: the log is empty and starts after ``meta``."""
        self._snap_meta = meta
        self._conf_state = meta.conf_state
        self._first = meta.index + 1
        self._last = meta.index
        self._clear_cache()

    def set_conf_state(self, cs: ConfState) -> None:
        with self._store.write() as txn:
            txn.put(Table.RAFT, K_CS, rc.encode_conf_state(cs))
        self._conf_state = cs

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to ``index`` (already applied to the ledger)."""
        if index < self._first:
            return
        meta = SnapshotMetadata(index=Index(index), term=Term(term), conf_state=self._conf_state)
        with self._store.write() as txn:
            for i in range(self._first, index + 1):
                txn.delete(Table.RAFTLOG, index_key(i))
            txn.put(Table.RAFT, K_FIRST, index_key(index + 1))
            txn.put(Table.RAFT, K_SNAP, rc.encode_snapshot_metadata(meta))
        for i in range(self._first, index + 1):
            self._uncache(i)
        self._snap_meta = meta
        self._first = index + 1
