"""A seeded, deterministic simulator for the consensus core: one process, one seed, a fake clock.

Everything random derives from ``random.Random(seed)`` through child generators (network, faults,
client, one per node incarnation), so a seed replays exactly: ``python -m tests.sim --seed N``.

What is simulated:

- N nodes (3 or 5) running ``RawNode`` under a driver that keeps the persistence contract: write
  snapshot + entries + hard state, fsync when ``must_sync``, send, apply, ``advance`` — except that
  a leader sends before its own write and fsync, as node/replication.py does (Raft thesis §10.2.1;
  ``Options.leader_sends_first``);
- storage (``SimStorage``) that separates *written* from *fsynced*: a crash keeps only what was
  fsynced; the application state machine (with its applied index and configuration) is durable per
  applied entry, as the ledger's LMDB transaction is. By default it is a toy (``App``: a running
  sha256 chain over applied entries); with ``Options(ledger=True)`` (``python -m tests.sim --ledger``)
  it is the real ledger (``tests/sim/ledger_app.py``: ``LedgerState`` over a ``MemoryStore``, one
  block per entry, snapshots carrying the store's tables) and the client proposes real blocks —
  an accounts block, then transfers with client-chosen ids, retries, limit failures, pending
  transfers that are posted, voided or expire, linked chains — stamped with the proposer's fake
  clock (nodes' clocks are skewed, so leader changes move time backwards);
- a network that drops, duplicates, reorders and delays messages, and partitions nodes (symmetric,
  asymmetric, isolating one node, minority/majority) and heals; every message crosses the codec;
- crashes (between steps, after writing before fsync, after fsync before sending) and restarts from
  durable state; log compaction (so snapshots are sent and installed); membership changes (remove a
  voter, re-add it as a learner, promote it); leader transfers; ReadIndex requests;
- a client that proposes to whichever node is leader. An entry is *acknowledged* once the leader
  applied it.

Checkers run after every step (``Simulator.check``) and on every persisted or applied entry:

- election safety: at most one leader per term;
- log matching: one (index, term) names one entry with one predecessor term, and a periodic full
  pairwise comparison of logs;
- leader completeness: every acknowledged entry is in the log (or snapshot) of every later leader;
- state-machine safety: no two nodes apply different entries at one index;
- no acknowledged entry is lost: every node that applies its index applies it, every later leader has it;
- identical application heads at equal applied index (in ledger mode: the ledger's block hash, which
  commits to the previous block, the Merkle root, the chain head, the state hash and the timestamp);
- ReadIndex linearizability: a read's index covers every entry acknowledged before the read began;
- ledger mode, after each phase (``final_checks``): every node's debits equal its credits (pending and
  posted), and nodes at equal applied index hold byte-identical account tables (and whole stores);
  after the liveness phase the client stops and every member must apply the whole committed log
  (``settle``), so that the end check compares all members.

Failures raise ``SafetyViolation`` with the seed, the step and the tail of the event trace.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from consensus.codec import decode_message, encode_message
from consensus.errors import ConfChangeRefused, ProposalDropped
from consensus.raft import Config, RawNode, Ready
from consensus.storage import MemoryStorage
from consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    Role,
    Snapshot,
    Term,
)
from ledger.types import Result, TransferStatus
from tests.sim.ledger_app import LedgerApp, LedgerWorkload, dump_tables

ELECTION_TICK = 10
HEARTBEAT_TICK = 2
CLOCK_EPOCH_NS = 1_700_000_000 * 10**9  # the fake wall clock (ledger timestamps) at step 0
STEP_NS = 10_000_000  # one step is 10 ms of fake time
CLOCK_SKEW_NS = 40_000_000  # each node's clock is off by up to this much


class SafetyViolation(AssertionError):
    pass


class Crash(Exception):
    """A node crashed in the middle of handling a Ready (a fault injected by the simulator)."""


# -- storage ------------------------------------------------------------------------------------------


def _clone(s: MemoryStorage) -> MemoryStorage:
    c = MemoryStorage(s.cs)
    c.hs = s.hs
    c._snapshot = s._snapshot
    c._ents = list(s._ents)
    return c


class SimStorage:
    """``Storage`` whose writes reach the "disk" only when synced: reads see what was written (the
    page cache); ``crash()`` keeps what was fsynced."""

    def __init__(self, cs: ConfState) -> None:
        self.view = MemoryStorage(cs)
        self.durable = MemoryStorage(cs)
        self.unsynced: list[Callable[[MemoryStorage], object]] = []

    # Storage protocol: reads come from the written view
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.view.initial_state()

    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        return self.view.entries(lo, hi, max_bytes)

    def term(self, i: Index) -> Term:
        return self.view.term(i)

    def first_index(self) -> Index:
        return self.view.first_index()

    def last_index(self) -> Index:
        return self.view.last_index()

    def snapshot(self) -> Snapshot:
        return self.view.snapshot()

    # writes
    def write(self, op: Callable[[MemoryStorage], object]) -> None:
        op(self.view)
        self.unsynced.append(op)

    def sync(self) -> None:
        for op in self.unsynced:
            op(self.durable)
        self.unsynced.clear()

    def crash(self) -> None:
        self.view = _clone(self.durable)
        self.unsynced.clear()


# -- the application state machine ----------------------------------------------------------------------


@dataclass
class App:
    """Durable per applied entry (one transaction: state, applied index, configuration)."""

    conf_state: ConfState
    applied: int = 0
    head: bytes = b"\x00" * 32

    def apply(self, index: int, data: bytes, normal: bool = True) -> None:
        self.head = hashlib.sha256(self.head + index.to_bytes(8, "little") + data).digest()
        self.applied = index

    def recover(self) -> None:
        pass  # nothing cached beyond the durable state

    def snapshot_data(self) -> bytes:
        return self.applied.to_bytes(8, "little") + self.head

    def install(self, snap: Snapshot) -> None:
        self.applied = int.from_bytes(snap.data[:8], "little")
        self.head = snap.data[8:40]
        self.conf_state = snap.metadata.conf_state


Application: TypeAlias = App | LedgerApp


# -- nodes ----------------------------------------------------------------------------------------------


@dataclass
class SimNode:
    id: NodeId
    storage: SimStorage
    app: Application
    raw: RawNode
    up: bool = True
    incarnation: int = 0
    reads: list[tuple[int, bytes]] = field(default_factory=list)
    wiped: bool = False  # lost its whole state; the guard keeps it from starting as a voter again


@dataclass
class Options:
    nodes: int = 3
    steps: int = 600
    faults: bool = True
    membership: bool = True
    compaction: bool = True
    drop: float = 0.05
    duplicate: float = 0.03
    max_delay: int = 3
    liveness_bound_ticks: int = 30 * ELECTION_TICK
    bug_send_before_sync: bool = False  # a broken driver, to prove the checkers catch it
    # a leader's messages leave before its own fsync, as node/replication.py does (safe: the core
    # counts the leader toward a quorum only after advance); False: every message after the fsync
    leader_sends_first: bool = True
    pre_vote: bool = True
    check_quorum: bool = True
    crash_in_window: float = 0.002  # crash probability between write and fsync, and between fsync and send
    ledger: bool = False  # the real ledger as the state machine, and a client proposing real blocks
    bug_ledger_clock_node: int = 0  # this node's ledger applies blocks with its own clock (a planted bug)
    # a voter loses its whole state (storage and application) at most once per run, with this
    # probability per step; the guard (node/startup.py) keeps it down instead of letting it vote with
    # no memory; ``bug_wiped_voter_rejoins`` removes the guard: it restarts at once as an empty voter
    wipe: float = 0.0
    bug_wiped_voter_rejoins: bool = False
    # an apply step raises (disk error, a bug) on one node with this probability: the node stops
    # before the apply commits and restarts from durable state; ``bug_apply_poison``: every replica
    # raises on entries holding these bytes (a poison entry), which halts the region
    apply_raises: float = 0.0
    bug_apply_poison: bytes = b""


class Simulator:
    def __init__(self, seed: int, opts: Options | None = None) -> None:
        self.seed = seed
        self.opts = opts or Options()
        root = random.Random(seed)
        self.root = root
        self.net_rng = random.Random(root.getrandbits(64))
        self.fault_rng = random.Random(root.getrandbits(64))
        self.client_rng = random.Random(root.getrandbits(64))
        self.faults = self.opts.faults
        self.ids = [NodeId(i) for i in range(1, self.opts.nodes + 1)]
        self.skew = {i: 0 for i in self.ids}
        self.work: LedgerWorkload | None = None
        if self.opts.ledger:
            work_rng = random.Random(root.getrandbits(64))
            self.skew = {i: work_rng.randint(-CLOCK_SKEW_NS, CLOCK_SKEW_NS) for i in self.ids}
            self.work = LedgerWorkload(work_rng)
        self.step_no = 0
        cs = ConfState(tuple(self.ids))
        self.nodes: dict[NodeId, SimNode] = {}
        for i in self.ids:
            storage = SimStorage(cs)
            self.nodes[i] = self._boot(i, storage, self._new_app(i, cs), 0)
        self.net: list[tuple[int, int, Message]] = []  # (deliver at step, sequence, message)
        self.seq = 0
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.trace = hashlib.sha256()
        self.events: deque[tuple[object, ...]] = deque(maxlen=60)
        self.proposed = 0
        self.client_paused = False
        self.wiped_once = False
        self.read_seq = 0
        # checker state
        self.leaders: dict[int, NodeId] = {}  # term -> leader
        self.seen_leader: set[tuple[NodeId, int]] = set()
        self.applied_at: dict[int, tuple[int, bytes]] = {}  # index -> (entry type, data)
        self.head_at: dict[int, bytes] = {0: b"\x00" * 32}
        self.entry_at: dict[tuple[int, int], tuple[int, bytes, int]] = {}  # (index, term) -> (type, data, prev term)
        self.acked: dict[int, tuple[int, bytes, int]] = {}  # index -> (entry term, data, leader term)
        self.reads_started: dict[bytes, int] = {}  # read ctx -> highest acknowledged index at request time
        self.stats = {"snapshots": 0, "crashes": 0, "conf_changes": 0, "transfers": 0, "reads": 0,
                      "early_sends": 0}  # Readies whose new entries a leader sent before its fsync
        if self.opts.ledger:
            for k in ("ledger_blocks", "ledger_ok", "ledger_exists", "ledger_failed", "ledger_compared",
                      "ledger_pending", "ledger_posted", "ledger_voided", "ledger_expired"):
                self.stats[k] = 0

    def _new_app(self, i: NodeId, cs: ConfState) -> Application:
        if not self.opts.ledger:
            return App(cs)
        if i == self.opts.bug_ledger_clock_node:
            return LedgerApp(cs, local_clock=lambda: self.clock_ns(i))
        return LedgerApp(cs)

    def clock_ns(self, i: NodeId) -> int:
        """Node ``i``'s wall clock: fake time, skewed per node (ledger timestamps come from it)."""
        return CLOCK_EPOCH_NS + self.step_no * STEP_NS + self.skew[i]

    # -- boot and crash ---------------------------------------------------------------------------

    def _boot(self, i: NodeId, storage: SimStorage, app: Application, incarnation: int) -> SimNode:
        storage.view.cs = app.conf_state  # the configuration is durable with the applied index
        storage.durable.cs = app.conf_state
        cfg = Config(id=i, storage=storage, rng=random.Random(self.root.getrandbits(64)),
                     election_tick=ELECTION_TICK, heartbeat_tick=HEARTBEAT_TICK, applied=app.applied,
                     max_inflight_msgs=4, max_size_per_msg=256, pre_vote=self.opts.pre_vote,
                     check_quorum=self.opts.check_quorum)
        return SimNode(i, storage, app, RawNode(cfg), incarnation=incarnation)

    def crash(self, n: SimNode) -> None:
        n.up = False
        n.storage.crash()
        self.stats["crashes"] += 1
        self.event("crash", n.id)

    def wipe(self, n: SimNode) -> None:
        """The node loses everything: storage, Raft hard state and application state."""
        if n.up:
            self.crash(n)
        cs = ConfState(tuple(self.ids))
        n.storage, n.app, n.wiped = SimStorage(cs), self._new_app(n.id, cs), True
        self.event("wipe", n.id)
        if self.opts.bug_wiped_voter_rejoins:  # no guard: back at once, term 0, no vote record
            n.wiped = False
            self.restart(n)

    def restart(self, n: SimNode) -> None:
        if n.wiped:
            return  # the guard: an empty store the region lists as a voter refuses to start
        n.app.recover()
        fresh = self._boot(n.id, n.storage, n.app, n.incarnation + 1)
        self.nodes[n.id] = fresh
        self.event("restart", n.id)

    # -- tracing ----------------------------------------------------------------------------------

    def event(self, *what: object) -> None:
        self.events.append((self.step_no, *what))
        self.trace.update(repr(what).encode())

    def fail(self, what: str) -> None:
        tail = "\n".join("  " + " ".join(str(x) for x in e) for e in list(self.events)[-25:])
        ledger = " --ledger" if self.opts.ledger else ""
        if self.opts.bug_ledger_clock_node:
            ledger += f" --bug-ledger-clock {self.opts.bug_ledger_clock_node}"
        raise SafetyViolation(f"seed {self.seed} step {self.step_no}: {what}\n"
                              f"replay: python -m tests.sim --seed {self.seed} --nodes {self.opts.nodes} "
                              f"--steps {self.opts.steps}{ledger}\nlast events:\n{tail}")

    # -- one step ---------------------------------------------------------------------------------

    def step(self) -> None:
        self.step_no += 1
        for i in self.ids:
            n = self.nodes[i]
            if n.up and (not self.faults or self.fault_rng.random() < 0.95):  # clocks drift a little
                n.raw.tick()
        self._deliver()
        self._client()
        if self.faults:
            self._faults()
        for i in self.ids:
            self._drain(self.nodes[i])
        self.check()

    def _drain(self, n: SimNode) -> None:
        while n.up and n.raw.has_ready():
            rd = n.raw.ready()
            try:
                self._handle_ready(n, rd)
            except Crash:
                self.crash(n)
                return
            n.raw.advance(rd)
            self._maybe_compact(n)

    def _maybe_crash(self, p: float) -> None:
        if self.faults and self.fault_rng.random() < p:
            raise Crash()

    def _handle_ready(self, n: SimNode, rd: Ready) -> None:
        if rd.soft_state is not None:
            self.event("role", n.id, rd.soft_state.role.name, rd.soft_state.leader, n.raw.term)
        if rd.snapshot is not None:
            self._install_snapshot(n, rd.snapshot)
        self._record_entries(n, rd.entries)
        entries, hs = list(rd.entries), rd.hard_state
        # node/replication.py: a leader sends its appends before its own fsync (it counts itself only
        # after advance); anything a vote or term change rides on waits for the fsync
        early = self.opts.bug_send_before_sync or (self.opts.leader_sends_first and self._may_send_early(n, rd))
        if early:
            self._send_all(n, rd.messages)
            self.stats["early_sends"] += bool(entries and rd.messages)
        n.storage.write(lambda s: s.append(entries))
        if hs is not None:
            n.storage.write(lambda s: s.set_hard_state(hs))
        self._maybe_crash(self.opts.crash_in_window)  # written, not fsynced: lost
        if rd.must_sync:
            n.storage.sync()
        self._maybe_crash(self.opts.crash_in_window)  # fsynced, never sent
        if not early:
            self._send_all(n, rd.messages)
        for e in rd.committed_entries:
            self._apply(n, e)
        for rs in rd.read_states:
            self._check_read(n, rs.index, rs.request_ctx)

    @staticmethod
    def _may_send_early(n: SimNode, rd: Ready) -> bool:
        if n.raw.role != Role.LEADER or rd.snapshot is not None:
            return False
        hs, stored = rd.hard_state, n.storage.initial_state()[0]
        return hs is None or (hs.term, hs.vote) == (stored.term, stored.vote)

    def _send_all(self, n: SimNode, msgs: tuple[Message, ...]) -> None:
        for m in msgs:
            delay = self.net_rng.randrange(self.opts.max_delay + 1) if self.faults else self.net_rng.randrange(2)
            self.seq += 1
            self.net.append((self.step_no + delay, self.seq, m))

    def _install_snapshot(self, n: SimNode, snap: Snapshot) -> None:
        """Install the state and persist the snapshot atomically (one durable transaction)."""
        meta = snap.metadata
        n.storage.write(lambda s: s.apply_snapshot(snap))
        n.storage.sync()
        try:
            n.app.install(snap)
        except ValueError as e:
            self.fail(f"node {n.id} cannot install the snapshot at {meta.index}: {e}")
        expected = self.head_at.get(meta.index)
        if expected is not None and expected != n.app.head:
            self.fail(f"node {n.id} installed a snapshot at {meta.index} whose head differs from the applied one")
        self.stats["snapshots"] += 1
        self.event("snapshot", n.id, meta.index, meta.term)

    # -- applying -----------------------------------------------------------------------------------

    def _apply(self, n: SimNode, e: Entry) -> None:
        if e.index <= n.app.applied:
            return  # already applied before a restart or inside a snapshot
        if e.index != n.app.applied + 1:
            self.fail(f"node {n.id} applies {e.index} after {n.app.applied}: a gap")
        seen = self.applied_at.setdefault(e.index, (e.type, e.data))
        if seen != (e.type, e.data):
            self.fail(f"state machine safety: node {n.id} applies {e.data!r} at {e.index}, another node applied "
                      f"{seen[1]!r}")
        first = e.index not in self.head_at
        if (self.opts.bug_apply_poison and self.opts.bug_apply_poison in e.data) or (
                self.faults and self.fault_rng.random() < self.opts.apply_raises):
            self.event("apply-raises", n.id, e.index)
            raise Crash()  # nothing of this entry was applied; the node stops and restarts
        n.app.apply(e.index, e.data, normal=e.type == EntryType.NORMAL)
        head = self.head_at.setdefault(e.index, n.app.head)
        if head != n.app.head:
            self.fail(f"node {n.id} has a different application head at applied index {e.index}")
        if first and isinstance(n.app, LedgerApp) and n.app.last_outcome is not None:
            self._count_outcome(n.app)
        if e.type == EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            n.app.conf_state = n.raw.apply_conf_change(cc)
            self.event("conf", n.id, e.index, cc.type.name, cc.node_id)
        self.trace.update(b"%d:%d:" % (n.id, e.index) + e.data)
        if n.raw.role == Role.LEADER and e.type == EntryType.NORMAL and e.data and e.index not in self.acked:
            self.acked[e.index] = (e.term, e.data, n.raw.term)
            self.event("ack", n.id, e.index, e.term, e.data)

    def _count_outcome(self, app: LedgerApp) -> None:
        assert app.last_outcome is not None
        self.stats["ledger_blocks"] += 1
        for batch in app.last_outcome.batches:
            for r in batch.results:
                if r == Result.OK:
                    self.stats["ledger_ok"] += 1
                elif r in (Result.EXISTS, Result.TRANSFER_EXISTS):
                    self.stats["ledger_exists"] += 1
                else:
                    self.stats["ledger_failed"] += 1

    def _maybe_compact(self, n: SimNode) -> None:
        if not self.opts.compaction or self.fault_rng.random() >= 0.01:
            return
        upto = Index(n.app.applied)  # the application can only snapshot its current state
        if upto <= n.storage.first_index() or upto > n.storage.last_index():
            return
        data, cs = n.app.snapshot_data(), n.app.conf_state
        n.storage.write(lambda s: s.create_snapshot(upto, cs, data))
        n.storage.sync()
        self.event("compact", n.id, upto)

    # -- network ------------------------------------------------------------------------------------

    def _deliver(self) -> None:
        due = [x for x in self.net if x[0] <= self.step_no]
        if not due:
            return
        self.net = [x for x in self.net if x[0] > self.step_no]
        if self.faults:
            self.net_rng.shuffle(due)  # reorder
        for _, _, m in due:
            self._deliver_one(m)

    def _deliver_one(self, m: Message) -> None:
        dst = self.nodes[m.to]
        lost = ((m.frm, m.to) in self.cut or not dst.up
                or (self.faults and self.net_rng.random() < self.opts.drop))
        if m.type == MessageType.SNAP:
            sender = self.nodes[m.frm]
            if sender.up:  # the transport reports how the snapshot went
                sender.raw.report_snapshot(m.to, not lost)
        if lost:
            return
        wire = decode_message(encode_message(m))  # every message crosses the codec
        dst.raw.step(wire)
        if self.faults and self.net_rng.random() < self.opts.duplicate:
            dst.raw.step(wire)

    # -- client and faults ------------------------------------------------------------------------

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for n in self.nodes.values():
            if n.up and n.raw.role == Role.LEADER and (best is None or n.raw.term > best.raw.term):
                best = n
        return best

    def _client(self) -> None:
        rng = self.client_rng
        if rng.random() >= 0.3 or self.client_paused:
            return
        n = self.leader()
        if n is None:
            return
        x = rng.random()
        try:
            if x < 0.9:
                self.proposed += 1
                n.raw.propose(self._ledger_proposal(n) if self.work else b"%d:%d" % (self.seed, self.proposed))
            elif x < 0.95:
                self.read_seq += 1
                ctx = b"r%d" % self.read_seq
                self.reads_started[ctx] = max(self.acked, default=0)
                n.raw.read_index(ctx)
            elif self.faults and self.opts.membership:
                self._membership(n, rng)
        except (ProposalDropped, ConfChangeRefused):
            pass

    def _ledger_proposal(self, n: SimNode) -> bytes:
        """The leader stamps the block with its clock; until the accounts exist, propose them (again)."""
        assert self.work is not None and isinstance(n.app, LedgerApp)
        ts = self.clock_ns(n.id)
        if not n.app.has_account(self.work.funding):
            return self.work.setup(ts)
        return self.work.block(ts)

    def _membership(self, n: SimNode, rng: random.Random) -> None:
        cs = n.raw.status().conf_state
        learners = [x for x in cs.learners]
        removed = [x for x in self.ids if x not in cs.voters and x not in cs.learners]
        others = [v for v in cs.voters if v != n.id]
        if rng.random() < 0.3 and others:
            n.raw.transfer_leader(rng.choice(others))
            self.stats["transfers"] += 1
            return
        if learners:
            cc = ConfChange(ConfChangeType.ADD_VOTER, learners[0])
        elif removed:
            cc = ConfChange(ConfChangeType.ADD_LEARNER, removed[0])
        elif len(cs.voters) >= 3 and others:
            cc = ConfChange(ConfChangeType.REMOVE_VOTER, rng.choice(others))
        else:
            return
        n.raw.propose_conf_change(cc)
        self.stats["conf_changes"] += 1
        self.event("propose-conf", n.id, cc.type.name, cc.node_id)

    def _faults(self) -> None:
        rng = self.fault_rng
        x = rng.random()
        if x < 0.004:
            up = [n for n in self.nodes.values() if n.up]
            if up:
                self.crash(rng.choice(up))
        elif x < 0.012:
            down = [n for n in self.nodes.values() if not n.up]
            if down:
                self.restart(rng.choice(down))
        elif x < 0.018:
            self._partition(rng)
        elif x < 0.024:
            self.cut.clear()
            self.event("heal")
        elif x < 0.024 + self.opts.wipe and not self.wiped_once:
            self.wiped_once = True
            self.wipe(self.nodes[rng.choice(self.ids)])

    def _partition(self, rng: random.Random) -> None:
        kind = rng.randrange(4)
        if kind == 0:  # one link, one way
            a, b = rng.sample(self.ids, 2)
            self.cut.add((a, b))
        elif kind == 1:  # one link, both ways
            a, b = rng.sample(self.ids, 2)
            self.cut |= {(a, b), (b, a)}
        elif kind == 2:  # isolate one node
            a = rng.choice(self.ids)
            self.cut |= {(a, b) for b in self.ids if b != a} | {(b, a) for b in self.ids if b != a}
        else:  # a minority and a majority
            side = set(rng.sample(self.ids, len(self.ids) // 2))
            self.cut |= {(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)}
        self.event("partition", kind, tuple(sorted(self.cut)))

    def heal(self) -> None:
        self.faults = False
        self.cut.clear()
        for n in list(self.nodes.values()):
            if not n.up:
                self.restart(n)
        self.event("heal-all")

    # -- checkers -----------------------------------------------------------------------------------

    def _record_entries(self, n: SimNode, entries: tuple[Entry, ...]) -> None:
        """Log matching, incrementally: an (index, term) pair names one entry and one predecessor term."""
        for e in entries:
            prev = n.raw.log_term(e.index - 1) if e.index > 1 else 0
            got = (int(e.type), e.data, prev)
            seen = self.entry_at.setdefault((e.index, e.term), got)
            if seen != got and not (seen[:2] == got[:2] and 0 in (seen[2], prev)):  # 0: compacted, unknown
                self.fail(f"log matching: node {n.id} holds a different entry (or history) at index {e.index} "
                          f"term {e.term}")

    def check(self) -> None:
        for n in self.nodes.values():
            if not n.up:
                continue
            r = n.raw
            if r.role == Role.LEADER:
                self._check_leader(n)
            if r.commit > r.last_index():
                self.fail(f"node {n.id} commit {r.commit} beyond its last index {r.last_index()}")
        if self.step_no % 50 == 0:
            self.check_logs()

    def _check_leader(self, n: SimNode) -> None:
        term = int(n.raw.term)
        other = self.leaders.setdefault(term, n.id)
        if other != n.id:
            self.fail(f"election safety: two leaders in term {term}: {other} and {n.id}")
        if (n.id, term) not in self.seen_leader:
            self.seen_leader.add((n.id, term))
            self.event("leader", n.id, term)
            self.check_completeness(n)

    def check_completeness(self, n: SimNode) -> None:
        """Leader completeness (Raft §5.4): every entry acknowledged in an earlier term is in this
        leader's log — or inside its snapshot, whose head must then match."""
        first = n.raw.raft.log.first_index()
        for index, (eterm, data, ack_term) in self.acked.items():
            if ack_term >= n.raw.term:
                continue
            if index < first:
                continue  # compacted: the snapshot's head was checked against the applied heads
            if n.raw.log_term(index) != eterm:
                self.fail(f"leader completeness: leader {n.id} (term {n.raw.term}) lacks acknowledged entry {index}")
            got = n.raw.raft.log.slice(Index(index), Index(index + 1))[0]
            if got.data != data:
                self.fail(f"leader {n.id} holds other data at acknowledged index {index}")

    def check_logs(self) -> None:
        """Log matching, in full: if two logs agree on the term at some index, they agree before it."""
        live = [n for n in self.nodes.values() if n.up]
        for a in live:
            for b in live:
                if a.id < b.id:
                    self._compare_logs(a, b)

    def _compare_logs(self, a: SimNode, b: SimNode) -> None:
        la, lb = a.raw.raft.log, b.raw.raft.log
        lo = max(la.first_index(), lb.first_index())
        hi = min(la.last_index(), lb.last_index())
        agree = False
        for i in range(hi, lo - 1, -1):
            ta, tb = la.term_or_zero(Index(i)), lb.term_or_zero(Index(i))
            if agree and ta != tb:
                self.fail(f"log matching: nodes {a.id} and {b.id} agree at a later index but differ at {i}")
            if ta == tb:
                agree = True
                ea = la.slice(Index(i), Index(i + 1))[0]
                eb = lb.slice(Index(i), Index(i + 1))[0]
                if ea != eb:
                    self.fail(f"log matching: nodes {a.id} and {b.id} hold different entries at {i} term {ta}")

    def _check_read(self, n: SimNode, index: int, ctx: bytes) -> None:
        """Linearizable reads: the read index covers every write acknowledged before the read began."""
        self.stats["reads"] += 1
        before = self.reads_started.get(ctx, 0)
        if index < before:
            self.fail(f"read {ctx!r} at node {n.id} got index {index} < {before}, acknowledged before it began")

    # -- liveness -----------------------------------------------------------------------------------

    def run_liveness(self) -> int:
        """After healing everything, a leader must be elected and a new entry committed and applied by
        every member within ``liveness_bound_ticks``. Returns the ticks it took."""
        self.heal()
        marker = b"" if self.work else b"liveness:%d" % self.seed
        proposed_at = Index(0)
        for t in range(self.opts.liveness_bound_ticks):
            self.step()
            n = self.leader()
            if n is None:
                continue
            if not marker and self.work:  # a block, stamped by the first leader, re-proposed as is
                marker = self.work.marker(self.clock_ns(n.id))
            if not self._holds(n, proposed_at, marker):  # not proposed yet, or lost with an old leader
                try:
                    proposed_at = n.raw.propose(marker)
                except ProposalDropped:
                    continue
            members = self._members(n)
            if all(self.applied_at.get(proposed_at) == (EntryType.NORMAL, marker)
                   and self.nodes[i].app.applied >= proposed_at for i in members):
                return t + 1
        self.fail(f"liveness: no leader committed a new entry on every member within "
                  f"{self.opts.liveness_bound_ticks} ticks after healing")
        return -1

    def settle(self) -> int:
        """After the liveness phase (no faults): the client stops and every member must apply
        everything committed, so that the end checks compare all members at one applied index.
        Returns the ticks it took."""
        self.client_paused = True
        for t in range(self.opts.liveness_bound_ticks):
            self.step()
            n = self.leader()
            if n is None:
                continue
            applied = {self.nodes[i].app.applied for i in self._members(n)}
            if applied == {n.raw.commit} and n.raw.commit == n.raw.last_index():
                return t + 1
        self.fail(f"liveness: the members did not all apply the committed log within "
                  f"{self.opts.liveness_bound_ticks} ticks without faults")
        return -1

    def _holds(self, n: SimNode, index: Index, data: bytes) -> bool:
        if index == 0:
            return False
        if self.applied_at.get(index) == (EntryType.NORMAL, data):
            return True
        log = n.raw.raft.log
        if index < log.first_index() or index > log.last_index():
            return False
        return log.slice(index, Index(index + 1))[0].data == data

    def _members(self, leader: SimNode) -> list[NodeId]:
        """Members that must make progress (a wiped one waits for its operator: it refused to start)."""
        cs = leader.raw.status().conf_state
        return [i for i in (*cs.voters, *cs.learners) if not self.nodes[i].wiped]

    def final_checks(self) -> None:
        self.check_logs()
        for n in self.nodes.values():
            if n.up and n.raw.role == Role.LEADER:
                self.check_completeness(n)
        if self.opts.ledger:
            self.check_ledgers()

    def check_ledgers(self) -> None:
        """Every ledger balances (debits = credits, pending and posted); nodes at equal applied index
        hold byte-identical account tables and byte-identical stores."""
        groups: dict[int, list[SimNode]] = {}
        for n in self.nodes.values():  # down nodes too: their applied state is durable
            app = n.app
            assert isinstance(app, LedgerApp)
            dp, cp, dpo, cpo = app.totals()
            if dp != cp or dpo != cpo:
                self.fail(f"node {n.id}: ledger does not balance at applied index {app.applied}: debits "
                          f"pending {dp} posted {dpo}, credits pending {cp} posted {cpo}")
            groups.setdefault(app.applied, []).append(n)
        compared = 0
        for applied, group in groups.items():
            a = group[0]
            assert isinstance(a.app, LedgerApp)
            accounts, store = a.app.accounts_bytes(), dump_tables(a.app.store)
            for b in group[1:]:
                assert isinstance(b.app, LedgerApp)
                if b.app.accounts_bytes() != accounts:
                    self.fail(f"nodes {a.id} and {b.id} hold different account tables at applied index {applied}")
                if dump_tables(b.app.store) != store:
                    self.fail(f"nodes {a.id} and {b.id} hold different ledger stores at applied index {applied}")
                compared += 1
        self.stats["ledger_compared"] = compared
        top = max(self.nodes.values(), key=lambda n: n.app.applied).app
        assert isinstance(top, LedgerApp)
        statuses = top.transfer_statuses()
        for name, status in (("pending", TransferStatus.PENDING), ("posted", TransferStatus.POSTED),
                             ("voided", TransferStatus.VOIDED), ("expired", TransferStatus.EXPIRED)):
            self.stats["ledger_" + name] = statuses.get(status, 0)


def run(seed: int, opts: Options | None = None, liveness: bool = True) -> Simulator:
    sim = Simulator(seed, opts)
    for _ in range(sim.opts.steps):
        sim.step()
    sim.final_checks()
    if liveness:
        sim.run_liveness()
        if sim.opts.ledger:
            sim.settle()
        sim.final_checks()
    return sim
