"""Memory is bounded in bytes, not in counts: a Raft entry is a whole block (up to several MiB), so
a cache or queue that counts entries can hold GiBs. Real LMDB for the entry cache; the peer link's
queue is exercised without a server (the peer is down, which is exactly when a queue fills)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from consensus.types import ConfState, Entry, EntryType, Index, NodeId, Term
from ledger.lmdb_store import LmdbStore
from node import raft_storage, transport
from node.raft_storage import LmdbRaftStorage

BLOCK = 1 << 20  # one entry's payload: a block of ~6000 transfer records


def entry(i: int, size: int = BLOCK) -> Entry:
    return Entry(term=Term(1), index=Index(i), type=EntryType.NORMAL, data=bytes([i % 251]) * size)


def test_entry_cache_stays_within_its_byte_budget_and_reads_back_evicted_entries(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"), 1 << 30)
    st = LmdbRaftStorage(store, ConfState(voters=(NodeId(1),)))
    n = raft_storage.CACHE_BYTES_MAX // BLOCK * 3
    for i in range(1, n + 1):
        st.persist(None, [entry(i)], None)
        assert st.cache_bytes <= raft_storage.CACHE_BYTES_MAX
    assert st.cache_bytes >= raft_storage.CACHE_BYTES_MAX - BLOCK  # it does cache the recent tail
    # evicted entries come back from LMDB, identical
    assert st.entries(1, 4) == [entry(1), entry(2), entry(3)]
    assert st.entries(n, n + 1) == [entry(n)]
    # a conflicting suffix replaced: the cache accounts for what it dropped
    st.persist(None, [entry(n - 1, 10)], None)
    assert st.last_index() == n - 1
    assert st.entries(n - 1, n) == [entry(n - 1, 10)]
    assert st.cache_bytes <= raft_storage.CACHE_BYTES_MAX
    store.close()


def test_a_down_peer_queue_is_bounded_in_bytes_and_reports_unreachable() -> None:
    unreachable: list[int] = []

    async def run() -> transport._PeerLink:
        link = transport._PeerLink(1, 2, "127.0.0.1:1", unreachable.append)  # never started: the peer is down
        for _ in range(transport.QUEUE_BYTES_MAX // BLOCK * 4):
            link.send(b"x" * BLOCK)
        return link

    link = asyncio.run(run())
    assert link.queued_bytes <= transport.QUEUE_BYTES_MAX
    assert link.queue.qsize() == transport.QUEUE_BYTES_MAX // BLOCK
    assert link.dropped == transport.QUEUE_BYTES_MAX // BLOCK * 3
    assert unreachable and set(unreachable) == {2}


def test_one_message_larger_than_the_budget_still_goes_when_the_queue_is_empty() -> None:
    async def run() -> transport._PeerLink:
        link = transport._PeerLink(1, 2, "127.0.0.1:1", lambda _p: None)
        link.send(b"y" * (transport.QUEUE_BYTES_MAX + 1))
        return link

    link = asyncio.run(run())
    assert link.queue.qsize() == 1 and link.dropped == 0
