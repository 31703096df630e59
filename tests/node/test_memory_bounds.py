"""Memory is bounded in bytes, not in counts: a Raft entry is a whole block (up to several MiB), so
a cache or queue that counts entries can hold GiBs. Real LMDB for the entry cache; the peer link's
queue is exercised without a server (the peer is down, which is exactly when a queue fills)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from consensus.types import ConfState, Entry, EntryType, Index, NodeId, Term
from ledger.codec import TRANSFER_SIZE, Batch, Proposal
from ledger.lmdb_store import LmdbStore
from ledger.schema import Table
from ledger.types import BATCH_ITEMS_MAX, EventKind
from node import memory, metrics, pipeline, raft_storage, service, transport
from node.errors import Overloaded
from node.pipeline import Ingest
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


def _mapped_rss(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    real, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) == 6 and head[5] == real
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def test_the_map_trimmer_drops_the_store_maps_resident_pages_and_reads_stay_correct(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"), 1 << 30)
    rows = [(i.to_bytes(8, "big"), bytes([i % 251]) * 4000) for i in range(8000)]  # ~32 MB of pages
    with store.write() as txn:
        txn.put_many(Table.RAFTLOG, rows)
    with store.read() as txn:
        assert [txn.get(Table.RAFTLOG, k) for k, _ in rows] == [v for _, v in rows]  # touches every page
    data_file = str(tmp_path / "db" / "data.mdb")
    touched = _mapped_rss(data_file)
    assert touched >= 24 << 20
    trimmer = memory.MapTrimmer(data_file, budget_bytes=0)
    assert trimmer.maybe_trim() and trimmer.trims == 1
    assert _mapped_rss(data_file) < touched // 8
    assert trimmer.trimmed_bytes >= touched // 2
    with store.read() as txn:  # the pages come back from the page cache, unchanged
        assert [txn.get(Table.RAFTLOG, k) for k, _ in rows[::97]] == [v for _, v in rows[::97]]
    store.close()


def test_the_trimmer_leaves_the_map_alone_below_its_budget(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "db"), 1 << 30)
    trimmer = memory.MapTrimmer(str(tmp_path / "db" / "data.mdb"), budget_bytes=1 << 50)
    assert not trimmer.maybe_trim() and trimmer.trims == 0 and trimmer.looks == 1
    store.close()


def test_the_trimmer_looks_after_every_block_so_one_block_is_all_the_map_can_outgrow_its_budget(
        tmp_path: Path) -> None:
    """The store thread calls ``maybe_trim()`` after each block: whatever the throughput, the map's
    resident pages above the budget are never more than what one block touched. Here each "block"
    reads ~4 MiB of fresh pages through the map; after each look the map is back under the budget
    (the budget counts libraries too, so the test compares the map's own resident bytes)."""
    store = LmdbStore(str(tmp_path / "db"), 1 << 30)
    blocks = [[((b << 16 | i).to_bytes(8, "big"), bytes([i % 251]) * 4000) for i in range(1000)] for b in range(6)]
    with store.write() as txn:
        for rows in blocks:
            txn.put_many(Table.RAFTLOG, rows)
    data_file = str(tmp_path / "db" / "data.mdb")
    trimmer = memory.MapTrimmer(data_file, budget_bytes=0)
    trimmer.trim()
    peaks = []
    for rows in blocks:
        with store.read() as txn:
            assert all(txn.get(Table.RAFTLOG, k) == v for k, v in rows)  # one block's worth of pages
        peaks.append(_mapped_rss(data_file))
        assert trimmer.maybe_trim()  # a look right after the block, not after a count or a second
        assert _mapped_rss(data_file) < 1 << 20, "the look left the block's pages mapped"
    assert trimmer.looks == len(blocks) and trimmer.trims == len(blocks) + 1
    assert min(peaks) >= 3 << 20 and max(peaks) < 6 << 20  # each block touched its own pages, no more
    store.close()


def test_the_map_watch_trims_pages_read_outside_blocks(tmp_path: Path) -> None:
    """An idle node serving reads applies no block: the watch on the event loop looks once a period."""
    store = LmdbStore(str(tmp_path / "db"), 1 << 30)
    rows = [(i.to_bytes(8, "big"), bytes([i % 251]) * 4000) for i in range(2000)]
    with store.write() as txn:
        txn.put_many(Table.RAFTLOG, rows)
    data_file = str(tmp_path / "db" / "data.mdb")
    trimmer = memory.MapTrimmer(data_file, budget_bytes=0)
    with store.read() as rtxn:
        assert all(rtxn.get(Table.RAFTLOG, k) == v for k, v in rows)
    assert _mapped_rss(data_file) >= 6 << 20

    async def run() -> None:
        watch = memory.MapWatch(trimmer, interval_s=0.01)
        watch.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + 10.0
        while trimmer.trims == 0:
            assert loop.time() < end, "the watch never looked"
            await asyncio.sleep(0.01)
        await watch.stop()

    asyncio.run(run())
    assert _mapped_rss(data_file) < 1 << 20
    store.close()


def test_the_ingest_queue_is_bounded_in_bytes_for_tiny_batches() -> None:
    async def never(_p: Proposal) -> Any:
        await asyncio.Event().wait()

    async def run() -> tuple[Ingest, int]:
        ingest = Ingest(never, BATCH_ITEMS_MAX, 2.0, 1 << 30, queue_bytes_max=1 << 20)  # never started
        one = Batch(EventKind.CREATE_TRANSFER, bytes(TRANSFER_SIZE))
        accepted = 0
        with pytest.raises(Overloaded, match="bytes waiting"):
            for _ in range(1 << 20):
                ingest.submit(one)
                accepted += 1
        return ingest, accepted

    ingest, accepted = asyncio.run(run())
    assert ingest.queued_bytes <= 1 << 20
    assert accepted == (1 << 20) // (TRANSFER_SIZE + pipeline.BATCH_OVERHEAD_BYTES)


def test_the_window_budget_is_shared_by_all_streams_and_returns_what_was_released() -> None:
    budget = service.WindowBudget(limit_bytes=1000)
    assert budget.take(600) and not budget.take(600) and budget.take(400)
    budget.release(600)
    assert budget.held_bytes == 400 and budget.take(600) and not budget.take(1)
    # one request larger than the whole budget still passes when nothing else is held
    empty = service.WindowBudget(limit_bytes=10)
    assert empty.take(11)


def test_result_metric_psp_labels_are_capped() -> None:
    saved = set(metrics._psp_labels)
    try:
        metrics._psp_labels.clear()
        labels = {metrics.psp_label(p) for p in range(metrics.PSP_LABELS_MAX + 50)}
        assert len(labels) == metrics.PSP_LABELS_MAX + 1 and "other" in labels
        assert metrics.psp_label(3) == "3"  # a PSP seen before keeps its own label
    finally:
        metrics._psp_labels.clear()
        metrics._psp_labels.update(saved)
