"""The Raft state machine (etcd's ``raft`` struct): roles, terms, votes, replication, commitment.

Pure: input is ``tick()``, ``step(msg)`` and the local requests; output is the ``msgs`` and
``read_states`` outboxes plus the log's unstable part, which ``RawNode`` packs into a ``Ready``.
Membership changes and leader transfer live in ``consensus/membership.py``, ReadIndex in
``consensus/reads.py`` (functions of this ``Raft``; its methods of the same names call them).

Section numbers refer to the Raft paper (Ongaro & Ousterhout 2014) and Ongaro's thesis (2014).
"""

from __future__ import annotations

from collections.abc import Callable

from consensus import membership, reads
from consensus.config import Config
from consensus.errors import Compacted, ProposalDropped, SnapshotTemporarilyUnavailable
from consensus.invariant import invariant
from consensus.log import RaftLog
from consensus.progress import Progress, ProgressTracker, VoteResult
from consensus.readonly import ReadOnly
from consensus.types import (
    NO_LEADER,
    TERMLESS,
    ZERO_INDEX,
    ZERO_TERM,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Index,
    Message,
    MessageType,
    NodeId,
    ProgressState,
    ReadState,
    Role,
    Snapshot,
    Term,
)

MT = MessageType
Handler = Callable[[Message], None]

# Vote requests carrying this context come from a leader transfer: voters let them past their lease.
CAMPAIGN_TRANSFER = b"CampaignTransfer"


class Raft:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.log = RaftLog(cfg.storage, cfg.applied_index)
        hs, cs = cfg.storage.initial_state()
        self.tracker = ProgressTracker.from_conf(cs, cfg.max_inflight_msgs)
        self.term = hs.term
        self.vote = hs.vote
        # anything the application applied was committed, even if that commit index was not fsynced
        self.log.commit_to(Index(max(hs.commit, self.log.applied)))
        self.role = Role.FOLLOWER
        self.lead = NO_LEADER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = cfg.election_tick
        self.lead_transferee = NO_LEADER
        self.pending_conf_index = Index(0)  # a conf change at or below this index is not applied yet
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_read_index: list[tuple[NodeId, bytes]] = []  # reads waiting for a commit in our term
        self._handlers: dict[Role, dict[MessageType, Handler]] = self._role_handlers()
        self.become_follower(self.term, NO_LEADER)

    def _role_handlers(self) -> dict[Role, dict[MessageType, Handler]]:
        candidate: dict[MessageType, Handler] = {
            MT.APP: self._candidate_hears_leader, MT.HEARTBEAT: self._candidate_hears_leader,
            MT.SNAP: self._candidate_hears_leader, MT.VOTE_RESP: self._on_vote_resp,
            MT.PRE_VOTE_RESP: self._on_vote_resp,
        }
        return {
            Role.FOLLOWER: {
                MT.APP: self._follower_on_append, MT.HEARTBEAT: self._follower_on_heartbeat,
                MT.SNAP: self._follower_on_snapshot, MT.TIMEOUT_NOW: self._on_timeout_now,
                MT.READ_INDEX_RESP: self._on_read_index_resp, MT.TRANSFER_LEADER: self._forward_to_leader,
                MT.READ_INDEX: self._forward_to_leader,
            },
            Role.PRE_CANDIDATE: candidate,
            Role.CANDIDATE: candidate,
            Role.LEADER: {
                MT.APP_RESP: self._on_append_resp, MT.HEARTBEAT_RESP: self._on_heartbeat_resp,
                MT.READ_INDEX: self._on_read_index_request, MT.TRANSFER_LEADER: self._on_transfer_request,
            },
        }

    # -- helpers ----------------------------------------------------------------------------------

    def send(self, kind: MessageType, to: NodeId, term: Term | None = None, *, log_term: Term = ZERO_TERM,
             index: Index = ZERO_INDEX, entries: tuple[Entry, ...] = (), commit: Index = ZERO_INDEX,
             reject: bool = False, reject_hint: Index = ZERO_INDEX, context: bytes = b"",
             snapshot: Snapshot | None = None) -> None:
        self.msgs.append(Message(kind, to, self.id, self.term if term is None else term, log_term, index, entries,
                                 commit, reject, reject_hint, context, snapshot))

    def promotable(self) -> bool:
        """Only voters campaign: learners and removed nodes never do."""
        return self.id in self.tracker.voters

    def _reset_randomized_timeout(self) -> None:
        # Raft §5.2: randomized in [election_tick, 2*election_tick) so split votes are rare
        self.randomized_election_timeout = self.cfg.election_tick + self.cfg.rng.randrange(self.cfg.election_tick)

    def _reset(self, term: Term) -> None:
        if term != self.term:
            self.term = term
            self.vote = NO_LEADER
        self.lead = NO_LEADER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.lead_transferee = NO_LEADER
        self.tracker.votes = {}
        self.tracker.progress = {}
        self.read_only = ReadOnly()
        self.pending_read_index = []
        self.uncommitted_size = 0

    # -- role transitions -------------------------------------------------------------------------

    def become_follower(self, term: Term, lead: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def become_pre_candidate(self) -> None:
        invariant(self.role != Role.LEADER, "a leader cannot become a pre-candidate")
        # PreVote (thesis §9.6): neither the term nor the vote changes until the pre-vote is won
        self.tracker.votes = {}
        self.role = Role.PRE_CANDIDATE
        self.lead = NO_LEADER
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def become_candidate(self) -> None:
        invariant(self.role != Role.LEADER, "a leader cannot become a candidate")
        self._reset(Term(self.term + 1))
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        invariant(self.role == Role.CANDIDATE, f"only a candidate becomes leader (role {self.role.name})")
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        last = self.log.last_index()
        self.tracker.reset_progress(Index(last + 1))
        me = self.tracker.progress.get(self.id)
        if me is not None:
            me.become_replicate()
            me.maybe_update(self.log.stable_last_index())
        # Conservatively treat every entry we hold as a possibly pending conf change: no new change
        # until we have applied everything up to our own start (fixes the single-server change bug of
        # the thesis §4.1 errata, where a change from an old term could be overlooked).
        self.pending_conf_index = last
        # Raft §5.4.2 / §8: an entry of our own term lets the earlier entries commit (Figure 8)
        self.log.append([Entry(self.term, Index(last + 1), EntryType.NORMAL, b"")])

    # -- ticks ------------------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._check_quorum():
                return
            self._expire_snapshots()
            self.lead_transferee = NO_LEADER  # the transfer did not finish within an election timeout
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.bcast_heartbeat(b"")

    def _check_quorum(self) -> bool:
        """CheckQuorum (thesis §6.2): a leader that has not heard from a quorum within an election
        timeout steps down, so clients stop talking to a leader that cannot commit anything."""
        if not self.tracker.quorum_active(self.id):
            self.become_follower(self.term, NO_LEADER)
            return False
        for node, pr in self.tracker.progress.items():
            if node != self.id:
                pr.recent_active = False
        return True

    def _expire_snapshots(self) -> None:
        """A snapshot (or its answer) can be lost without the transport noticing: after two election
        timeouts without an answer go back to probing, which sends a new snapshot if still needed."""
        for node, pr in self.tracker.progress.items():
            if node != self.id and pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_checks += 1
                if pr.snapshot_checks >= 2:
                    pr.become_probe()

    # -- elections --------------------------------------------------------------------------------

    def hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        if self.log.has_unapplied_conf_change():
            return  # our configuration is about to change: campaigning now could use the stale one
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_term, kind = Term(self.term + 1), MT.PRE_VOTE
        else:
            self.become_candidate()
            vote_term, kind = self.term, MT.VOTE
        self.tracker.record_vote(self.id, True)
        if self.tracker.tally() == VoteResult.WON:  # a one-voter configuration
            self._won(pre, transfer)
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        last = self.log.last_index()
        last_term = self.log.last_term()
        for v in sorted(self.tracker.voters):
            if v != self.id:
                self.send(kind, v, vote_term, log_term=last_term, index=last, context=ctx)

    def _won(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._campaign(pre=False, transfer=transfer)
        else:
            self.become_leader()
            self.bcast_append()

    def _on_vote_request(self, m: Message) -> None:
        """RequestVote (Raft §5.2, §5.4.1). One vote per term, persisted before the answer leaves."""
        pre = m.type == MT.PRE_VOTE
        resp = MT.PRE_VOTE_RESP if pre else MT.VOTE_RESP
        can_vote = (self.vote == m.frm  # a retransmitted request: answer it again
                    or (self.vote == NO_LEADER and self.lead == NO_LEADER)
                    or (pre and m.term > self.term))  # a pre-vote for a future term binds nothing
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # our term here equals m.term for a real vote (we stepped to it), not for a pre-vote
            self.send(resp, m.frm, m.term)
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.send(resp, m.frm, reject=True)

    def _on_vote_resp(self, m: Message) -> None:
        pre = self.role == Role.PRE_CANDIDATE
        if m.type != (MT.PRE_VOTE_RESP if pre else MT.VOTE_RESP):
            return  # a response to an earlier round of the other kind
        self.tracker.record_vote(m.frm, not m.reject)
        result = self.tracker.tally()
        if result == VoteResult.WON:
            self._won(pre, transfer=False)
        elif result == VoteResult.LOST:
            self.become_follower(self.term, NO_LEADER)

    def _on_timeout_now(self, m: Message) -> None:
        # leader transfer (thesis §3.10): campaign at once, skipping PreVote
        self.hup(transfer=True)

    # -- step: terms first, then the role's handler -------------------------------------------------

    def step(self, m: Message) -> None:
        if m.to != self.id or m.frm == NO_LEADER or m.frm == self.id:
            return  # misaddressed or forged: not for us
        if m.type not in TERMLESS:
            if m.term > self.term and not self._on_higher_term(m):
                return
            if m.term < self.term:
                self._on_lower_term(m)
                return
        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._on_vote_request(m)
            return
        handler = self._handlers[self.role].get(m.type)
        if handler is not None:
            handler(m)

    def _in_lease(self) -> bool:
        """We heard from a leader less than an election timeout ago (leader stickiness, thesis §4.2.3)."""
        return self.cfg.check_quorum and self.lead != NO_LEADER and self.election_elapsed < self.cfg.election_tick

    def _on_higher_term(self, m: Message) -> bool:
        """Returns False when the message must be ignored."""
        if m.type in (MT.VOTE, MT.PRE_VOTE) and m.context != CAMPAIGN_TRANSFER and self._in_lease():
            # a partitioned or removed node campaigning: the current leader is alive, ignore it
            return False
        if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
            return True  # pre-votes never change terms; a won pre-vote moves us on by itself
        lead = m.frm if m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP) else NO_LEADER
        self.become_follower(m.term, lead)
        return True

    def _on_lower_term(self, m: Message) -> None:
        if m.type in (MT.APP, MT.HEARTBEAT):
            # a stale leader (Raft §5.1): tell it our term so it steps down
            self.send(MT.APP_RESP, m.frm)
        elif m.type == MT.PRE_VOTE:
            # so the pre-candidate learns our term instead of retrying for ever
            self.send(MT.PRE_VOTE_RESP, m.frm, reject=True)

    # -- follower side ----------------------------------------------------------------------------

    def _heard_leader(self, m: Message) -> None:
        self.election_elapsed = 0
        self.lead = m.frm

    def _candidate_hears_leader(self, m: Message) -> None:
        # a leader of our term exists (Raft §5.2): stand down and handle its message as a follower
        self.become_follower(m.term, m.frm)
        self._handlers[Role.FOLLOWER][m.type](m)

    def _follower_on_append(self, m: Message) -> None:
        self._heard_leader(m)
        if not _well_formed_append(m):
            return
        if m.index < self.log.committed:
            self.send(MT.APP_RESP, m.frm, index=self.log.committed)
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(MT.APP_RESP, m.frm, index=last_new)
            return
        # fast back-off (Raft §5.3): hint the last index whose term is <= the leader's term at m.index
        hint, hint_term = self.log.find_conflict_by_term(Index(min(m.index, self.log.last_index())), m.log_term)
        self.send(MT.APP_RESP, m.frm, index=m.index, reject=True, reject_hint=hint, log_term=hint_term)

    def _follower_on_heartbeat(self, m: Message) -> None:
        self._heard_leader(m)
        # the leader sends min(our match, its commit); clamping keeps a lost log from crashing us here
        self.log.commit_to(Index(min(m.commit, self.log.last_index())))
        self.send(MT.HEARTBEAT_RESP, m.frm, context=m.context)

    def _follower_on_snapshot(self, m: Message) -> None:
        self._heard_leader(m)
        if m.snapshot is None:
            return
        if self._restore(m.snapshot):
            self.send(MT.APP_RESP, m.frm, index=self.log.last_index())
        else:
            self.send(MT.APP_RESP, m.frm, index=self.log.committed)

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.metadata
        if meta.index <= self.log.committed:
            return False  # we already have everything it holds
        if self.log.match_term(meta.index, meta.term):
            # our log already holds the snapshot's last entry: just move the commit index
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snap)
        self.tracker = ProgressTracker.from_conf(meta.conf_state, self.cfg.max_inflight_msgs)
        return True

    def _on_read_index_resp(self, m: Message) -> None:
        self.read_states.append(ReadState(m.index, m.context))

    def _forward_to_leader(self, m: Message) -> None:
        if self.lead != NO_LEADER:
            self.msgs.append(Message(m.type, self.lead, m.frm, Term(0), context=m.context))

    # -- leader side: replication -----------------------------------------------------------------

    def bcast_append(self) -> None:
        for node in self.tracker.progress:
            if node != self.id:
                self.maybe_send_append(node, send_if_empty=True)

    def bcast_heartbeat(self, ctx: bytes) -> None:
        for node, pr in self.tracker.progress.items():
            if node != self.id:
                # never tell a follower a commit index beyond what it is known to hold
                self.send(MT.HEARTBEAT, node, commit=Index(min(pr.match, self.log.committed)), context=ctx)

    def maybe_send_append(self, to: NodeId, send_if_empty: bool) -> bool:
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        prev = Index(pr.next - 1)
        try:
            prev_term = self.log.term(prev)
            ents = self.log.entries_from(pr.next, self.cfg.max_size_per_msg)
        except Compacted:
            return self._send_snapshot(to, pr)  # the follower needs entries that are gone
        if not ents and not send_if_empty:
            return False
        self.send(MT.APP, to, log_term=prev_term, index=prev, entries=tuple(ents), commit=self.log.committed)
        pr.sent_entries(ents[-1].index if ents else None)
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a node we have not heard from lately
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        invariant(snap.metadata.index > 0, "the log is compacted but there is no snapshot")
        pr.become_snapshot(snap.metadata.index)
        self.send(MT.SNAP, to, snapshot=snap)
        return True

    def _on_append_resp(self, m: Message) -> None:
        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            self._on_append_reject(m, pr)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index) and not (pr.match == m.index and pr.state == ProgressState.PROBE):
            return  # a stale acknowledgement
        self._progress_acked(pr, m.index)
        if self.maybe_commit():
            self.bcast_append()
        elif was_paused:
            self.maybe_send_append(m.frm, send_if_empty=True)
        while self.maybe_send_append(m.frm, send_if_empty=False):
            pass  # fill the in-flight window
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self.send(MT.TIMEOUT_NOW, m.frm)  # the transfer target is caught up: let it campaign now

    def _on_append_reject(self, m: Message, pr: Progress) -> None:
        next_probe = m.reject_hint
        if m.log_term > 0:
            # skip our own entries of terms the follower cannot have (the leader half of fast back-off)
            next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
        if pr.maybe_decr_to(m.index, next_probe):
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            self.maybe_send_append(m.frm, send_if_empty=True)

    def _progress_acked(self, pr: Progress, index: Index) -> None:
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()  # the snapshot arrived: resume appends right after it
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(index)

    def _on_heartbeat_resp(self, m: Message) -> None:
        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False  # the follower is reachable: allow the next probe
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()  # the window may be full of lost appends: let one more through
        if pr.match < self.log.last_index() or pr.state == ProgressState.PROBE:
            self.maybe_send_append(m.frm, send_if_empty=True)
        if m.context:
            reads.read_ack(self, m.frm, m.context)

    def update_self_match(self) -> None:
        """The leader counts itself only for entries it has persisted: "committed" means "fsynced by
        a quorum" (the driver reports persistence through ``advance``)."""
        me = self.tracker.progress.get(self.id)
        if me is not None:
            me.maybe_update(self.log.stable_last_index())

    def maybe_commit(self) -> bool:
        """Raft §5.3/§5.4.2: commit the highest index a quorum holds — only if it is of our own term;
        entries of earlier terms commit indirectly (Figure 8)."""
        self.update_self_match()
        if not self.log.maybe_commit(self.tracker.committed(), self.term):
            return False
        reads.release_pending_reads(self)
        return True

    # -- proposals and membership ---------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise ProposalDropped(self.lead)
        if self.lead_transferee != NO_LEADER:
            raise ProposalDropped(self.lead_transferee, "leadership transfer in progress")

    def propose(self, data: bytes) -> Index:
        self._check_can_propose()
        size = len(data)
        limit = self.cfg.max_uncommitted_entries_size
        if limit and self.uncommitted_size > 0 and self.uncommitted_size + size > limit:
            raise ProposalDropped(self.id, "too much uncommitted data")
        self.uncommitted_size += size
        return self._append_and_send(EntryType.NORMAL, data)

    def _append_and_send(self, kind: EntryType, data: bytes) -> Index:
        index = Index(self.log.last_index() + 1)
        self.log.append([Entry(self.term, index, kind, data)])
        self.bcast_append()
        return index

    # membership, leader transfer and ReadIndex live in consensus/membership.py and consensus/reads.py

    def propose_conf_change(self, cc: ConfChange) -> Index:
        return membership.propose_conf_change(self, cc)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return membership.apply_conf_change(self, cc)

    def transfer_leader(self, to: NodeId) -> None:
        membership.transfer_leader(self, to)

    def _on_transfer_request(self, m: Message) -> None:
        if m.frm in self.tracker.voters:
            self.transfer_leader(m.frm)

    def read_index(self, frm: NodeId, ctx: bytes) -> None:
        reads.read_index(self, frm, ctx)

    def _on_read_index_request(self, m: Message) -> None:
        if m.frm in self.tracker.members():
            self.read_index(m.frm, m.context)

    # -- transport feedback ---------------------------------------------------------------------------

    def report_unreachable(self, node: NodeId) -> None:
        pr = self.tracker.progress.get(node)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()  # appends in flight were probably lost: find the match point again

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        pr = self.tracker.progress.get(node)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = Index(0)
        pr.become_probe()
        # wait for the follower's answer (success) or the next heartbeat (failure) before appending
        pr.probe_sent = True


def _well_formed_append(m: Message) -> bool:
    """Entries must continue at ``index + 1`` without gaps and with terms that never decrease and never
    exceed the sender's term. A leader never sends anything else; drop it rather than crash."""
    expect, term = m.index + 1, m.log_term
    for e in m.entries:
        if e.index != expect or e.term < term or e.term > m.term:
            return False
        expect, term = e.index + 1, e.term
    return True
