"""The Raft driver (node/replication.py): what overlaps with what on the way to an acknowledgement.

Real Replicators on real LMDB stores in a temp dir, wired by an in-process transport (payloads are
handed to the peer's ``deliver`` on the same event loop). The faults injected are delays: a block
apply or a leader's own Raft persist held at a gate the test opens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from consensus.types import Entry, HardState, Snapshot
from ledger.codec import Batch, Proposal, encode_account
from ledger.lmdb_store import LmdbStore
from ledger.state import LedgerState
from ledger.types import Account, EventKind
from node.replication import Replicator

T0 = 1_700_000_000_000_000_000


class LocalTransport:
    """Delivers to the other Replicators of the test in this process (and nothing else)."""

    def __init__(self, region: dict[int, Replicator], self_id: int, peers: dict[int, str],
                 on_unreachable: Callable[[int], None]) -> None:
        self.region, self.peers, self.sent = region, peers, 0

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def send(self, to: int, payload: bytes) -> None:
        self.sent += 1
        asyncio.get_running_loop().call_soon(self.region[to].deliver, payload)


@contextmanager
def region(tmp: Path, n: int) -> Iterator[tuple[dict[int, Replicator], list[ThreadPoolExecutor]]]:
    reps: dict[int, Replicator] = {}
    pools = [ThreadPoolExecutor(1) for _ in range(n)]
    addresses = {i: f"127.0.0.1:{20000 + i}" for i in range(1, n + 1)}
    try:
        for i in range(1, n + 1):
            store = LmdbStore(str(tmp / f"n{i}"), 1 << 27)
            reps[i] = Replicator(
                self_id=i, voters=list(addresses), addresses=dict(addresses), store=store, state=LedgerState(store),
                pool=pools[i - 1], tick_ms=10, election_ticks=6000, heartbeat_ticks=1,
                on_block=lambda state: None,
                transport_factory=lambda me, peers, unreachable: LocalTransport(reps, me, peers, unreachable))
        yield reps, pools
    finally:
        for p in pools:
            p.shutdown(wait=True)


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def accounts(first: int, count: int) -> Proposal:
    recs = b"".join(encode_account(Account(id=i, ledger=1, code=1)) for i in range(first, first + count))
    return Proposal(T0 + first, (Batch(EventKind.CREATE_ACCOUNT, recs),))


async def _started(reps: dict[int, Replicator]) -> Replicator:
    for r in reps.values():
        r.start()
    leader = reps[1]  # long election timeouts: node 1 campaigns now, nobody else for a minute
    leader.raw.campaign()
    leader._wake.set()
    await until(lambda: leader.role == "leader" and leader.raw.commit >= 1, "node 1 to lead")
    # both followers acknowledged the leader's first entry: neither is paused in the probe state
    await until(lambda: all(p.match >= 1 for n, p in leader.raw.status().progress if n != leader.self_id),
                "both followers to hold the leader's first entry")
    return leader


async def _stop(reps: dict[int, Replicator]) -> None:
    for r in reps.values():
        await r.stop()


def test_a_block_being_applied_does_not_hold_back_the_next_ones_commit(tmp_path: Path) -> None:
    """While block 1 is stuck in its apply, block 2 is still replicated and committed (the ready
    loop does not wait for the apply); both are answered, in log order, once the apply goes on."""
    async def main() -> None:
        with region(tmp_path, 3) as (reps, _):
            leader = await _started(reps)
            gate, real = threading.Event(), leader.state.apply_block

            def slow_apply(proposal: Proposal, applied_index: int = 0) -> Any:
                assert gate.wait(60), "the test never opened the gate"
                return real(proposal, applied_index)

            leader.state.apply_block = slow_apply  # type: ignore[method-assign]
            first = asyncio.ensure_future(leader.propose(accounts(1, 3)))
            await until(lambda: leader.raw.commit >= 2, "block 1 to commit")
            second = asyncio.ensure_future(leader.propose(accounts(10, 2)))
            await until(lambda: leader.raw.commit >= 3, "block 2 to commit while block 1 is being applied")
            assert not first.done() and not second.done()
            # a quorum stored it: here the two followers (the leader's own persist queues behind the apply)
            assert sum(r.storage.last_index() >= 3 for r in reps.values()) >= 2
            gate.set()
            one, two = await asyncio.wait_for(asyncio.gather(first, second), 10)
            assert (one.header.height, two.header.height) == (1, 2)
            await until(lambda: all(r.state.head.height == 2 for r in reps.values()), "every replica to apply")
            assert len({r.state.head.block_hash for r in reps.values()}) == 1
            await _stop(reps)

    asyncio.run(main())


def test_the_leader_sends_before_its_own_fsync_and_counts_itself_only_after(tmp_path: Path) -> None:
    """A leader's appends go out while its own persist is still running; the two followers' acks
    make the block committed (a quorum durably stored it), but the leader applies and answers only
    after its own persist returned."""
    async def main() -> None:
        with region(tmp_path, 3) as (reps, _):
            leader = await _started(reps)
            gate, real = threading.Event(), leader.storage.persist
            held: list[int] = []

            def slow_persist(hs: HardState | None, entries: list[Entry], snap: Snapshot | None) -> None:
                if entries:
                    held.append(entries[-1].index)
                    assert gate.wait(60), "the test never opened the gate"
                real(hs, entries, snap)

            leader.storage.persist = slow_persist  # type: ignore[method-assign,assignment]
            block = asyncio.ensure_future(leader.propose(accounts(1, 3)))
            await until(lambda: bool(held), "the leader's persist to start")
            index = held[0]
            followers = [r for i, r in reps.items() if i != 1]
            await until(lambda: all(f.storage.last_index() >= index for f in followers),
                        "both followers to store the entry while the leader's fsync is held")
            await until(lambda: leader.raw.commit >= index,
                        f"the followers' acks to commit the entry (leader {leader.raw.status()})")
            await asyncio.sleep(0.05)
            assert not block.done() and leader.state.head.height == 0  # not applied before its own persist
            gate.set()
            outcome = await asyncio.wait_for(block, 10)
            assert outcome.header.height == 1 and leader.storage.last_index() >= index
            await _stop(reps)

    asyncio.run(main())
