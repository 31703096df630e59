"""The Raft driver: runs the pure consensus core (consensus/) against real storage, network and time.

Ready loop, in this order (the persistence contract, docs/consensus.md):
  1. persist hard state, entries and snapshot to LMDB (fsync)         — store thread
  2. send the Ready's messages to peers (never blocks: bounded queues)  — event loop
  3. apply committed entries: each NORMAL entry is one block proposal;  — store thread
     ``LedgerState.apply_block`` writes ledger state and the applied index in one transaction
  4. advance

A client's batch is acknowledged when its block is applied here, which implies the entry was
committed, i.e. stored durably (fsynced) by a quorum. Every replica applies the same proposals with
the leader-assigned timestamp inside, so all compute identical leaves, roots and balances. Each
entry also carries the proposer's latest applied (height, block hash): a replica that has applied
that height compares hashes, and a divergence stops the node loudly.

Raft entry data = proposer id u64 ‖ request id u64 ‖ check height u64 ‖ check block hash (32) ‖
encoded proposal (docs/formats.md §7).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from consensus.codec import decode_message, encode_message
from consensus.raft import ConfChangeRefused, ProposalDropped, RawNode, Ready
from consensus.raft import Config as RaftConfig
from consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    NodeId,
    Role,
    SnapshotMetadata,
)
from ledger.codec import Proposal, decode_proposal, encode_proposal
from ledger.invariant import fail
from ledger.state import BlockOutcome, LedgerState
from ledger.store import Store, StoreFull
from node import metrics
from node.blocktrace import BlockTrace
from node.committer import ReplicaStatus
from node.errors import Indeterminate, NodeError, NotLeader, Refused, StoreUnavailable, TransferTimeout, fail_future
from node.raft_storage import LmdbRaftStorage

log = logging.getLogger("sovledger.raft")

ENTRY_HEADER: Final = struct.Struct("<QQQ32s")
STORE_RETRY_MIN_S: Final = 0.2
STORE_RETRY_MAX_S: Final = 5.0
# committed entry bytes the ready loop hands to the apply task before it waits for the apply to catch up
APPLY_BACKLOG_BYTES: Final = 32 << 20
# How long a thread holding the GIL keeps it while another waits (CPython's default is 5 ms). The store
# thread applies blocks (much of it Python) while the event loop must answer peers at once: each loop
# wake-up would otherwise wait up to 5 ms for the GIL, and a block's Raft round has several of them.
# A follower with nothing else to apply starts on a just-committed block after about as long as its
# own last block took (at most this long): the leader, which applies the same block at the same
# moment and answers the clients only after it, gets the cores meanwhile (3 replicas, 2 cores).
FOLLOWER_APPLY_DEFER_MAX_S: Final = 0.05
GIL_SWITCH_INTERVAL_S: Final = float(os.environ.get("SOVLEDGER_GIL_SWITCH_S", "0.001"))
_T = TypeVar("_T")


def _has_conf_change(entries: list[Entry]) -> bool:
    return any(e.type == EntryType.CONF_CHANGE for e in entries)


def node_number(node_id: str) -> int:
    """``node-3`` → 3 (Raft ids are numbers; names stay human)."""
    tail = node_id.rsplit("-", 1)[-1]
    if not tail.isdigit() or int(tail) == 0:
        raise ValueError(f"node id {node_id!r} must end in a positive number, e.g. node-1")
    return int(tail)


class Replicator:
    def __init__(self, *, self_id: int, voters: list[int], learners: list[int] | None = None,
                 addresses: dict[int, str], store: Store,
                 state: LedgerState, pool: ThreadPoolExecutor, tick_ms: int, election_ticks: int,
                 heartbeat_ticks: int, on_block: Callable[[LedgerState], None],
                 transport_factory: Callable[[int, dict[int, str], Callable[[int], None]], Any],
                 max_message_bytes: int = 2 << 20, log_keep_entries: int = 256,
                 snapshot_installer: Callable[[int, int], Awaitable[int]] | None = None) -> None:
        self.self_id = self_id
        self.addresses = addresses
        self.state = state
        self._pool = pool
        self._tick_s = tick_ms / 1000.0
        self._on_block = on_block
        self.storage = LmdbRaftStorage(store, ConfState(voters=tuple(sorted(NodeId(v) for v in voters)),
                                                        learners=tuple(sorted(NodeId(v) for v in learners or ()))))
        seed = int.from_bytes(os.urandom(8), "little")  # the driver may use real randomness
        cfg = RaftConfig(
            id=self_id, election_tick=election_ticks, heartbeat_tick=heartbeat_ticks, storage=self.storage,
            applied=state.applied_index, max_inflight_msgs=32, max_size_per_msg=max_message_bytes,
            check_quorum=True, pre_vote=True,
            rng=random.Random(seed),
        )
        self.raw = RawNode(cfg)
        peers = {pid: addr for pid, addr in addresses.items() if pid != self_id}
        self.transport = transport_factory(self_id, peers, self._unreachable)
        self._wake = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[BlockOutcome]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_event = asyncio.Event()
        self._requests = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self.role = "follower"
        self.term = 0
        self.leader_id = 0
        self.last_leader_change = time.monotonic()
        self.store_full: StoreFull | None = None  # while a store write keeps failing (retried)
        # health: a region without a leader this long (3 election timeouts) cannot commit
        self._no_leader_grace_s = 3 * election_ticks * self._tick_s
        self._last_applied_raft = state.applied_index  # includes empty and conf-change entries
        self._conf_applied = 0  # last conf-change entry handed out (not in the ledger's applied index)
        self._log_keep = log_keep_entries
        self._install_snapshot = snapshot_installer
        self.snapshots_installed = 0
        self.trace = BlockTrace.from_env()
        self.on_member_removed: list[Callable[[], None]] = []  # called once a removal is applied
        # committed entries on their way to the apply task (_apply_loop), and its state
        self._apply_queue: asyncio.Queue[tuple[list[Entry], asyncio.Future[None]]] = asyncio.Queue()
        self._apply_backlog = 0  # bytes of entry data handed to the apply task, not applied yet
        self._apply_last: asyncio.Future[None] | None = None
        self._apply_failed: BaseException | None = None
        self._persisting = asyncio.Event()  # clear while the ready loop waits for a Raft persist
        self._persisting.set()
        self._deferred_hs: HardState | None = None  # a commit-index-only change not written yet
        self._last_apply_s = 0.0  # how long this node's last block apply took (follower apply deferral)
        self._req_index: dict[int, int] = {}  # request id → Raft index, while traced

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.transport.start()
        self.trace.start()
        self._tasks = [loop.create_task(self._ticker(), name="raft-tick"),
                       loop.create_task(self._ready_loop(), name="raft-ready"),
                       loop.create_task(self._apply_loop(), name="raft-apply")]

    async def hand_over(self, timeout_s: float = 3.0) -> None:
        """Before a clean stop: a leader hands leadership to its most caught-up active voter, so
        the region does not wait an election timeout. Best effort; stopping goes on either way.

        A voter that said it is stopping too (the whole region going down) is no candidate, and a
        target that goes away during the transfer ends the wait at once instead of after ``timeout_s``."""
        if self.role != "leader":
            return
        st = self.raw.status()
        stopping = getattr(self.transport, "stopping", lambda _peer: False)
        candidates = [(p.match, n) for n, p in st.progress
                      if n != self.self_id and n in st.conf_state.voters and p.recent_active and not p.learner
                      and not stopping(n)]
        if not candidates:
            log.info("raft: stopping as leader with no active follower to hand over to")
            return
        target = max(candidates)[1]
        try:
            took = await self.transfer_leadership(target, timeout_s, give_up_if_gone=True)
        except NodeError as e:
            log.warning("raft: could not hand leadership over before stopping: %s", e)
            return
        log.info("raft: handed leadership to node %d before stopping (%.2fs)", target, took)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.transport.stop()
        self.trace.stop()
        self._fail_waiting(Indeterminate("node is shutting down; retry with the same ids"))

    # -- inputs ---------------------------------------------------------------------------------

    def deliver(self, payload: bytes) -> None:
        try:
            msg = decode_message(payload)
        except Exception as e:  # a peer sent garbage: drop it, Raft retransmits
            log.warning("dropping undecodable peer message: %s", e)
            return
        if self.trace.on and msg.entries:
            self.trace.mark_range(msg.entries[0].index, msg.entries[-1].index, "received")
        self.raw.step(msg)
        self._wake.set()

    def _unreachable(self, peer: int) -> None:
        self.raw.report_unreachable(peer)

    def leader_address(self) -> str:
        return self.addresses.get(self.leader_id, "")

    def check_leader(self) -> None:
        if self.role != "leader":
            raise NotLeader(self.leader_address())

    async def propose(self, proposal: Proposal) -> BlockOutcome:
        if self.store_full is not None:
            raise StoreUnavailable(str(self.store_full))
        self.check_leader()
        req = next(self._requests)
        head = self.state.head
        data = ENTRY_HEADER.pack(self.self_id, req, head.height, head.block_hash) + encode_proposal(proposal)
        fut: asyncio.Future[BlockOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        try:
            index = self.raw.propose(data)
        except ProposalDropped as e:
            self._waiting.pop(req, None)
            raise NotLeader(self.leader_address()) from e
        if self.trace.on:
            self.trace.mark(index, "proposed")
            self._req_index[req] = index
        self._wake.set()
        with metrics.RAFT_COMMIT.time():
            return await fut

    async def read_barrier(self, timeout_s: float = 5.0) -> None:
        """Linearizable read gate (ReadIndex): returns once this node is confirmed leader by a quorum
        and has applied everything committed when the read arrived; raises NotLeader otherwise."""
        self.check_leader()
        ctx = next(self._requests).to_bytes(8, "little")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            self.raw.read_index(ctx)
        except ProposalDropped as e:
            self._reads.pop(ctx, None)
            raise NotLeader(self.leader_address()) from e
        self._wake.set()
        try:
            index = await asyncio.wait_for(fut, timeout_s)
            while self.state.applied_index < index and self._last_applied_raft < index:
                self._applied_event.clear()
                await asyncio.wait_for(self._applied_event.wait(), timeout_s)
        except TimeoutError:
            raise NotLeader(self.leader_address()) from None
        finally:
            self._reads.pop(ctx, None)

    def transfer_leader(self, to: int) -> None:
        self.check_leader()
        try:
            self.raw.transfer_leader(to)
        except ConfChangeRefused as e:
            raise Refused(str(e)) from e
        self._wake.set()

    async def transfer_leadership(self, to: int, timeout_s: float = 8.0, give_up_if_gone: bool = False) -> float:
        """Hand leadership to ``to`` and wait until it leads; returns the seconds it took.

        The core aborts a transfer that does not finish within an election timeout (its TIMEOUT_NOW
        may be lost like any message), so the request is re-issued (a no-op while one is running)
        until ``timeout_s``. ``give_up_if_gone`` (a stopping leader's hand-over): stop waiting as soon
        as the link to ``to`` fails or ``to`` says it is stopping."""
        self.check_leader()
        started = time.monotonic()
        gone = getattr(self.transport, "gone_since", None) if give_up_if_gone else None
        while True:
            if gone is not None and self.leader_id != to and gone(to, started):
                raise TransferTimeout(f"node {to} went away during the hand-over (it is stopping too, or down)")
            if self.leader_id == to:
                return time.monotonic() - started
            if self.role != "leader":
                if self.leader_id:
                    raise Refused(f"leadership moved to node {self.leader_id}, not {to}; retry the transfer "
                                  f"on the new leader {self.leader_address()}")
            else:
                self.transfer_leader(to)
            if time.monotonic() - started > timeout_s:
                raise TransferTimeout(f"node {to} did not take over within {timeout_s:.0f}s (is it up and "
                                      "caught up?); the current leader keeps serving")
            await asyncio.sleep(0.05)

    def change_membership(self, cc: ConfChange) -> None:
        self.check_leader()
        try:
            self.raw.propose_conf_change(cc)
        except ConfChangeRefused as e:
            raise Refused(str(e)) from e
        except ProposalDropped as e:
            raise NotLeader(self.leader_address()) from e
        self._wake.set()

    def _on_conf_applied(self, cc: ConfChange) -> None:
        address = cc.context.decode()
        if cc.type in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER) and address:
            self.addresses[cc.node_id] = address
            if cc.node_id != self.self_id:
                self.transport.add_peer(cc.node_id, address, self._unreachable)
        elif cc.type == ConfChangeType.REMOVE_VOTER and cc.node_id != self.self_id:
            self.transport.remove_peer(cc.node_id)  # a removed member is no longer dialled
            self.addresses.pop(cc.node_id, None)
            for removed in self.on_member_removed:  # e.g. the vault's copy channels
                removed()
        log.info("raft: membership change applied: %s node %d %s", cc.type.name, cc.node_id, address)

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(self.role, self.term, self.leader_id, self.state.applied_index)

    def cannot_commit(self) -> str:
        if self.store_full is not None:
            return f"the store is full; committed entries wait to be applied: {self.store_full}"
        leaderless = self.leader_id == 0 or self.role in ("candidate", "pre-candidate")
        if leaderless and time.monotonic() - self.last_leader_change > self._no_leader_grace_s:
            return f"no leader for {time.monotonic() - self.last_leader_change:.0f}s (no quorum reachable?)"
        return ""

    # -- the loop -------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            self.raw.tick()
            self._wake.set()

    async def _ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.raw.has_ready():
                await self._handle_ready(self.raw.ready())

    async def _handle_ready(self, rd: Ready) -> None:
        """One Ready: persist, send, hand committed entries to the apply task, advance.

        A leader sends its appends before its own fsync (Raft thesis §10.2.1): followers store them
        while the leader does, and the core counts the leader towards a quorum only once this
        persist returned (``advance`` → ``update_self_match``). Anything else — votes, append
        responses — goes out only after the fsync, as the persistence contract requires. The apply
        runs beside this loop (``_apply_loop``), so a block being applied never holds back the
        next block's persist, sends or commit; a committed membership change is applied before
        ``advance`` (the core must not allow the next change before it), and the backlog handed
        to the apply task is bounded in bytes (``APPLY_BACKLOG_BYTES``)."""
        if self._apply_failed is not None:
            raise self._apply_failed
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        early = self.role == "leader" and rd.snapshot is None and not self._vote_changes(rd)
        if early:
            self._send(rd)
        if rd.snapshot is not None:
            await self._drain_apply()
            await self._adopt_snapshot(rd.snapshot.metadata)
        await self._persist(rd)
        if self.trace.on and rd.entries:
            self.trace.mark_range(rd.entries[0].index, rd.entries[-1].index, "persisted")
        if not early:
            self._send(rd)
        if rd.committed_entries:
            entries = list(rd.committed_entries)
            if self.trace.on:
                self.trace.mark_range(entries[0].index, entries[-1].index, "committed")
            done = self._hand_to_apply(entries)
            if self._apply_backlog > APPLY_BACKLOG_BYTES or _has_conf_change(entries):
                await done
        for rs in rd.read_states:  # read_barrier itself waits until the apply reached the index
            fut = self._reads.get(rs.request_ctx)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        self.raw.advance(rd)

    async def _persist(self, rd: Ready) -> None:
        """Store a Ready (fsync). A Ready that changes only the commit index (``must_sync`` false:
        the commit index is recomputed after a restart) is not written on its own: its hard state
        rides along with the next write, so that neither a store transaction per commit nor an apply
        holding the store thread delays this Ready's messages."""
        if not (rd.entries or rd.snapshot is not None or rd.must_sync):
            if rd.hard_state is not None:
                self._deferred_hs = rd.hard_state
            return
        hs, self._deferred_hs = rd.hard_state or self._deferred_hs, None
        self._persisting.clear()  # the apply task lets a pending fsync go first
        try:
            await self._store_call(self.storage.persist, hs, list(rd.entries), rd.snapshot)
        finally:
            self._persisting.set()

    def _vote_changes(self, rd: Ready) -> bool:
        hs, stored = rd.hard_state, self.storage.initial_state()[0]
        return hs is not None and (hs.term != stored.term or hs.vote != stored.vote)

    def _send(self, rd: Ready) -> None:
        for m in rd.messages:
            self.transport.send(m.to, encode_message(m))
        if self.trace.on and rd.entries:
            stage = "sent" if self.role == "leader" else "acked"
            self.trace.mark_range(rd.entries[0].index, rd.entries[-1].index, stage)

    def _hand_to_apply(self, entries: list[Entry]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._apply_backlog += sum(len(e.data) for e in entries)
        self._apply_queue.put_nowait((entries, done))
        self._apply_last = done
        return done

    async def _drain_apply(self) -> None:
        if self._apply_last is not None:
            await self._apply_last

    async def _apply_loop(self) -> None:
        """Applies committed entries in log order, one block per store-thread job; a pending Raft
        persist (an fsync someone waits for) goes first, and an idle follower lets the leader apply
        a fresh block first (``FOLLOWER_APPLY_DEFER_MAX_S``; never a membership change). A failure
        (a divergence) stops the loop and, through ``_handle_ready``, the driver: nothing after it
        is applied."""
        while True:
            entries, done = await self._apply_queue.get()
            try:
                if self.role != "leader" and self._apply_queue.empty() and not _has_conf_change(entries):
                    await asyncio.sleep(min(self._last_apply_s, FOLLOWER_APPLY_DEFER_MAX_S))
                for e in entries:
                    await self._persisting.wait()
                    started = time.monotonic()
                    await self._apply([e])
                    if e.data:
                        self._last_apply_s = time.monotonic() - started
                    self._apply_backlog -= len(e.data)
                    self._last_applied_raft = e.index
                    self._applied_event.set()
                await self._maybe_compact()
            except asyncio.CancelledError:
                done.cancel()
                raise
            except Exception as exc:
                log.critical("raft: applying committed entries failed, this replica stops: %s", exc)
                self._apply_failed = exc
                self._wake.set()
                done.set_exception(exc)
                done.exception()  # retrieved here; the ready loop re-raises _apply_failed
                raise
            done.set_result(None)

    async def _maybe_compact(self) -> None:
        """Keep the Raft log short: entries far below the applied index live on in the ledger itself;
        a follower that needs them gets a snapshot of the ledger store instead."""
        upto = self._last_applied_raft - self._log_keep
        if upto - self.storage.first_index() < self._log_keep:
            return
        await self._store_call(lambda: self.storage.compact(upto, self.storage.term(upto)))

    async def _adopt_snapshot(self, meta: SnapshotMetadata) -> None:
        if self._install_snapshot is None:
            fail("received a snapshot but this node cannot install one")
        leader = self.raw.leader
        log.info("raft: installing a snapshot at index %d from node %d", meta.index, leader)
        applied = await self._install_snapshot(leader, meta.index)
        self.storage.reset_to_snapshot(meta)
        self._last_applied_raft = max(applied, meta.index)
        self.snapshots_installed += 1
        log.info("raft: snapshot installed: ledger at Raft index %d, block %d, %d entries", applied,
                 self.state.head.height, self.state.head.tree_size)

    def _on_soft_state(self, role: Role, leader: int) -> None:
        new_role = {Role.LEADER: "leader", Role.CANDIDATE: "candidate"}.get(role, "follower")
        if getattr(Role, "PRE_CANDIDATE", None) is not None and role == Role.PRE_CANDIDATE:
            new_role = "pre-candidate"
        if leader != self.leader_id or new_role != self.role:
            self.last_leader_change = time.monotonic()
            log.info("raft: role %s, leader %s, term %d", new_role, leader or "unknown", self.term)
        was_leader = self.role == "leader"
        self.role = new_role
        self.leader_id = leader
        if was_leader and new_role != "leader":
            self._fail_waiting(Indeterminate(
                f"leadership moved (leader now {self.leader_address() or 'unknown'}); the outcome of "
                "in-flight batches is unknown: retry with the same ids"))

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            fail_future(fut, exc)

    async def _store_call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a store write on the store thread; while the store is full (map or disk), retry with
        back-off instead of dying: what Raft committed stays committed and is applied once space
        is back, and health says NOT_SERVING meanwhile (``cannot_commit``)."""
        loop = asyncio.get_running_loop()
        backoff = STORE_RETRY_MIN_S
        while True:
            try:
                result = await loop.run_in_executor(self._pool, fn, *args)
            except StoreFull as e:
                if self.store_full is None:
                    log.error("store write failed, retrying until space is freed: %s", e)
                self.store_full = e
                await asyncio.sleep(backoff)
                backoff = min(STORE_RETRY_MAX_S, backoff * 2)
                continue
            if self.store_full is not None:
                log.info("the store takes writes again")
                self.store_full = None
            return result

    async def _apply(self, entries: list[Entry]) -> None:
        results: list[tuple[str, Any]] = []  # kept across retries: entries applied before a failure
        loop = asyncio.get_running_loop()

        def answered(req: int, outcome: BlockOutcome) -> None:  # store thread, right after a block
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: nobody to answer
                loop.call_soon_threadsafe(self._answer, req, outcome)

        await self._store_call(self._apply_entries, entries, results, answered)
        for kind, value in results:
            if kind == "conf":
                cs = self.raw.apply_conf_change(value)
                await self._store_call(self.storage.set_conf_state, cs)
                self._on_conf_applied(value)

    def _answer(self, req: int, outcome: BlockOutcome) -> None:
        if self.trace.on:
            self.trace.mark(self._req_index.pop(req, 0), "answered")
        fut = self._waiting.pop(req, None)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    def _apply_entries(self, entries: list[Entry], out: list[tuple[str, Any]],
                       answered: Callable[[int, BlockOutcome], None]) -> None:
        """Store thread: apply each committed entry exactly once, in log order (appending to ``out``).
        A block this node proposed is answered as soon as it is applied and signed, not after the
        other entries of the same Ready (a backlog of committed blocks would otherwise hold back the
        first one's acknowledgement by the apply time of all the others)."""
        state = self.state
        for e in entries:
            if e.index <= max(state.applied_index, self._conf_applied):
                continue  # already applied (before a restart, or before a store-full retry)
            if e.type == EntryType.CONF_CHANGE:
                out.append(("conf", ConfChange.decode(e.data)))
                self._conf_applied = e.index
                continue
            if not e.data:
                continue  # the new leader's empty entry
            proposer, req, check_height, check_hash = ENTRY_HEADER.unpack_from(e.data)
            self._check_divergence(e.index, check_height, check_hash)
            if self.trace.on:
                self.trace.mark(e.index, "apply_start")
            with metrics.BLOCK_APPLY.time():
                outcome = state.apply_block(decode_proposal(e.data[ENTRY_HEADER.size :]), applied_index=e.index)
            self._on_block(state)
            if self.trace.on:
                self.trace.mark(e.index, "applied")
            if proposer == self.self_id:
                answered(req, outcome)

    def _check_divergence(self, index: int, height: int, expected: bytes) -> None:
        if height == 0 or height > self.state.head.height:
            return
        if height == self.state.head.height:
            mine = self.state.head.block_hash
        else:
            from ledger.reader import LedgerReader

            mine = self._block_hash_at(LedgerReader(self.state.store), height)
        if mine != expected:
            fail(f"replica divergence at block {height} (raft entry {index}): this node has "
                 f"{mine.hex()[:16]}…, the proposer had {expected.hex()[:16]}… — stopping; re-seed this node")

    @staticmethod
    def _block_hash_at(reader: Any, height: int) -> bytes:
        from ledger.hashing import block_hash

        return block_hash(reader.block(height).encode())
