"""``RawNode``: the driver's interface to the Raft core (etcd's ``rawnode.go``), and ``Ready``.

The driver loop, and the persistence contract it must keep::

    while node.has_ready():
        rd = node.ready()
        1. persist rd.snapshot (install its state), rd.entries, rd.hard_state — durably (fsync when
           rd.must_sync) — a stored suffix that conflicts with rd.entries is replaced;
        2. send rd.messages (only now: they may promise what step 1 made durable — a vote, an ack);
        3. apply rd.committed_entries in order (and serve rd.read_states once applied >= their index);
        4. node.advance(rd)

Input at any time (also between ``ready`` and ``advance``): ``tick``, ``step``, ``propose``, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.config import Config, ConfigError
from consensus.core import Raft
from consensus.errors import ConfChangeRefused, ProposalDropped
from consensus.invariant import invariant
from consensus.types import (
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SoftState,
    Status,
    Term,
)

__all__ = ["ConfChangeRefused", "Config", "ConfigError", "ProposalDropped", "RawNode", "Ready"]


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver (see the module docstring for the order)."""

    soft_state: SoftState | None  # leader/role, only when changed (not persisted)
    hard_state: HardState | None  # term/vote/commit, only when changed: persist before sending
    entries: tuple[Entry, ...]  # append to stable storage (replacing a conflicting suffix) before sending
    messages: tuple[Message, ...]  # send after persisting
    committed_entries: tuple[Entry, ...]  # apply in order, after persisting
    snapshot: Snapshot | None = None  # install and persist before ``entries``
    read_states: tuple[ReadState, ...] = field(default=())  # serve once applied >= index
    must_sync: bool = False  # entries, snapshot, term or vote changed: the write must be fsynced


class RawNode:
    def __init__(self, cfg: Config) -> None:
        self.raft = Raft(cfg)
        self._prev_soft = self._soft()
        self._prev_hard = cfg.storage.initial_state()[0]
        self._outstanding = False  # a Ready was handed out and not advanced yet

    # -- input --------------------------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of logical time (the driver's clock calls this; the core never reads a clock)."""
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (with PreVote first if configured). Learners and removed nodes never
        campaign."""
        self.raft.hup(transfer=False)

    def step(self, m: Message) -> None:
        """A message from a peer. Never raises on peer input: misaddressed, stale or malformed messages
        are dropped or answered as Raft prescribes."""
        self.raft.step(m)

    def propose(self, data: bytes) -> Index:
        """Append ``data`` to the log (leader only). Returns the index it will have if committed.
        Raises ``ProposalDropped`` (with the leader hint) when not leader or transferring leadership."""
        return self.raft.propose(data)

    def propose_conf_change(self, cc: ConfChange) -> Index:
        """Propose a single-server membership change. Raises ``ProposalDropped`` when not leader and
        ``ConfChangeRefused`` when another change is not applied yet or the change is unsafe now."""
        return self.raft.propose_conf_change(cc)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Call when applying a committed CONF_CHANGE entry; persist the returned configuration with the
        applied index (it is what ``Storage.initial_state`` must return after a restart)."""
        return self.raft.apply_conf_change(cc)

    def read_index(self, ctx: bytes, forward: bool = False) -> None:
        """Request a linearizable read tagged ``ctx``; a ``ReadState(index, ctx)`` appears in a later
        Ready once a quorum has confirmed this node's leadership. On a follower: ``ProposalDropped``,
        or with ``forward=True`` the request goes to the leader and the ReadState appears here."""
        r = self.raft
        if r.role == Role.LEADER:
            r.read_index(r.id, ctx)
        elif forward and r.lead:
            r.msgs.append(Message(MessageType.READ_INDEX, r.lead, r.id, Term(0), context=ctx))
        else:
            raise ProposalDropped(r.lead)

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to ``to``. Raises ``ProposalDropped`` when not leader, ``ConfChangeRefused``
        when ``to`` is not a voter."""
        self.raft.transfer_leader(NodeId(to))

    def report_unreachable(self, node: int) -> None:
        """The transport could not deliver to ``node``: go back to probing it."""
        self.raft.report_unreachable(NodeId(node))

    def report_snapshot(self, node: int, ok: bool) -> None:
        """The driver finished (or failed) sending a snapshot to ``node``."""
        self.raft.report_snapshot(NodeId(node), ok)

    # -- output -------------------------------------------------------------------------------------

    def _soft(self) -> SoftState:
        return SoftState(self.raft.lead, self.raft.role)

    def _hard(self) -> HardState:
        r = self.raft
        return HardState(r.term, r.vote, r.log.committed)

    def has_ready(self) -> bool:
        r = self.raft
        log = r.log
        return bool(
            r.msgs or r.read_states
            or self._soft() != self._prev_soft
            or self._hard() != self._prev_hard
            or log.unstable.next_snapshot() is not None
            or log.unstable.next_entries()
            or log.has_next_committed_entries()
        )

    def ready(self) -> Ready:
        invariant(not self._outstanding, "ready() called again before advance()")
        r = self.raft
        log = r.log
        soft, hard = self._soft(), self._hard()
        entries = tuple(log.unstable.next_entries())
        snap = log.unstable.next_snapshot()
        committed = tuple(log.next_committed_entries(r.cfg.committed_bytes_per_ready()))
        changed_vote = hard.term != self._prev_hard.term or hard.vote != self._prev_hard.vote
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries, messages=tuple(r.msgs), committed_entries=committed, snapshot=snap,
            read_states=tuple(r.read_states), must_sync=bool(entries) or snap is not None or changed_vote,
        )
        r.msgs, r.read_states = [], []
        log.unstable.accept_in_progress()
        if committed:
            log.accept_applying(committed[-1].index)
        self._prev_soft, self._prev_hard = soft, hard
        self._outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        r = self.raft
        self._outstanding = False
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.metadata.index)
            r.log.applied_to(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            r.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)
            applied_bytes = sum(len(e.data) for e in rd.committed_entries)
            r.uncommitted_size = max(0, r.uncommitted_size - applied_bytes)
        if r.role == Role.LEADER and r.maybe_commit():
            r.bcast_append()  # our own persistence completed a quorum: tell the followers

    # -- introspection ------------------------------------------------------------------------------

    def status(self) -> Status:
        r = self.raft
        prs = r.tracker.progress.items() if r.role == Role.LEADER else ()
        progress = tuple(sorted((n, p.status()) for n, p in prs))
        return Status(r.id, r.term, r.vote, r.log.committed, r.log.applied, r.role, r.lead, r.lead_transferee,
                      r.tracker.conf_state(), progress)

    @property
    def id(self) -> NodeId:
        return self.raft.id

    @property
    def role(self) -> Role:
        return self.raft.role

    @property
    def term(self) -> Term:
        return self.raft.term

    @property
    def leader(self) -> NodeId:
        return self.raft.lead

    @property
    def commit(self) -> Index:
        return self.raft.log.committed

    @property
    def applied(self) -> Index:
        return self.raft.log.applied

    @property
    def voters(self) -> set[NodeId]:
        return set(self.raft.tracker.voters)

    @voters.setter
    def voters(self, ids: set[NodeId]) -> None:
        """Bootstrap/test helper: replace the voter set before the node starts participating."""
        self.raft.tracker.voters = set(ids)

    @property
    def learners(self) -> set[NodeId]:
        return set(self.raft.tracker.learners)

    @learners.setter
    def learners(self, ids: set[NodeId]) -> None:
        self.raft.tracker.learners = set(ids)

    def last_index(self) -> Index:
        return self.raft.log.last_index()

    def log_term(self, i: int) -> Term:
        """The term of entry ``i`` in this node's log (0 if it does not have it or it was compacted)."""
        return self.raft.log.term_or_zero(Index(i))
