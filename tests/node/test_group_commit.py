"""Group commit in the ingest pipeline (node/pipeline.py): many one-payment batches share blocks.

The committer here is the real ledger state machine (LedgerState on a real LMDB store in a temp
dir) behind a gate the test opens, so that "a block is being committed" lasts exactly as long as the
test says — the one fault injected is that delay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ledger.codec import Batch, Proposal, encode_account, encode_transfer
from ledger.lmdb_store import LmdbStore
from ledger.reader import LedgerReader
from ledger.state import BlockOutcome, LedgerState
from ledger.types import Account, EventKind, Result, Transfer
from node.pipeline import Ingest

T0 = 1_700_000_000_000_000_000


class GatedCommitter:
    """Applies each proposal with the real state machine once ``gate`` is open; records proposals."""

    def __init__(self, path: Path) -> None:
        self.store = LmdbStore(str(path), 1 << 28)
        self.state = LedgerState(self.store)
        self.gate = asyncio.Event()
        self.proposals: list[Proposal] = []

    async def __call__(self, proposal: Proposal) -> BlockOutcome:
        self.proposals.append(proposal)
        await self.gate.wait()
        return self.state.apply_block(proposal)


def _setup(committer: GatedCommitter, accounts: int) -> None:
    recs = b"".join(encode_account(Account(id=i, ledger=1, code=1)) for i in range(1, accounts + 1))
    committer.state.apply_block(Proposal(T0, (Batch(EventKind.CREATE_ACCOUNT, recs),)))


def _payment(tid: int, debit: int, credit: int, amount: int = 5) -> Batch:
    rec = encode_transfer(Transfer(id=tid, debit_account_id=debit, credit_account_id=credit, amount=amount,
                                   ledger=1, code=1))
    return Batch(EventKind.CREATE_TRANSFER, rec)


async def _until(cond: Any, limit: int = 2000) -> None:
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def test_a_partial_block_keeps_filling_while_one_is_committed_then_takes_all(tmp_path: Path) -> None:
    """linger_blocks=1: while block 1 is being committed, 300 one-payment batches arrive; they do not
    close small blocks of their own at the 1 ms delay but all go into block 2, and each batch's
    future gets its own payment's outcome (result, log index, block)."""

    async def run() -> None:
        c = GatedCommitter(tmp_path / "db")
        _setup(c, 4)
        ingest = Ingest(c, block_items_max=8189, block_delay_ms=1.0, queue_items_max=1 << 20,
                        inflight_blocks_max=2, linger_blocks=1)
        ingest.start()
        try:
            first = ingest.submit(_payment(1000, 1, 2))
            await _until(lambda: len(c.proposals) == 1)
            later = [ingest.submit(_payment(2000 + i, 1 + i % 4, 1 + (i + 1) % 4)) for i in range(300)]
            # a duplicate id in the same block: the second is refused as an existing transfer
            dup = ingest.submit(_payment(2000, 1, 2))
            await asyncio.sleep(0.05)  # 50 delays of 1 ms: without lingering these would be new blocks
            assert len(c.proposals) == 1 and ingest.queued_items == 301
            c.gate.set()
            out = await asyncio.gather(first, *later, dup)
            assert [len(p.batches) for p in c.proposals] == [1, 301]
            (b1, block1), *rest = out
            assert b1.results == [int(Result.OK)] and b1.blocks == [block1.header.height]
            indexes = []
            for i, (bo, blk) in enumerate(rest):
                assert blk.header.height == block1.header.height + 1
                assert len(bo.results) == len(bo.log_indexes) == 1
                indexes.append(bo.log_indexes[0])
                if i < 300:
                    assert bo.results == [int(Result.OK)], i
            dup_index = indexes.pop()  # an exact retry: EXISTS, pointing at the original's leaf
            assert rest[-1][0].results == [int(Result.TRANSFER_EXISTS)] and dup_index == indexes[0]
            assert len(set(indexes)) == len(indexes)  # every other batch points at its own leaf
            found = LedgerReader(c.store).transfers([(2000 + i).to_bytes(16, "little") for i in range(300)])
            for i, f in enumerate(found):  # and that leaf holds that batch's transfer
                assert f is not None and f.ref.leaf_index == indexes[i]
        finally:
            c.gate.set()
            await ingest.stop()

    asyncio.run(run())


def test_full_blocks_do_not_linger_and_pipeline_up_to_the_in_flight_bound(tmp_path: Path) -> None:
    """A full block closes at once even while another is being committed (up to
    ``inflight_blocks_max`` blocks), so large batches keep the pipeline full."""

    async def run() -> None:
        c = GatedCommitter(tmp_path / "db")
        _setup(c, 2)
        ingest = Ingest(c, block_items_max=8189, block_delay_ms=1.0, queue_items_max=1 << 20,
                        inflight_blocks_max=2, linger_blocks=1)
        ingest.start()
        try:
            batches = [b"".join(encode_transfer(Transfer(id=10_000 * (k + 1) + i, debit_account_id=1,
                                                         credit_account_id=2, amount=1, ledger=1, code=1))
                                for i in range(8189)) for k in range(3)]
            futs = [ingest.submit(Batch(EventKind.CREATE_TRANSFER, b)) for b in batches]
            await _until(lambda: len(c.proposals) == 2)
            await asyncio.sleep(0.02)
            assert len(c.proposals) == 2  # the third waits for an in-flight slot, not for lingering
            c.gate.set()
            out = await asyncio.gather(*futs)
            assert [len(p.batches) for p in c.proposals] == [1, 1, 1]
            assert all(bo.results == [int(Result.OK)] * 8189 for bo, _ in out)
        finally:
            c.gate.set()
            await ingest.stop()

    asyncio.run(run())
