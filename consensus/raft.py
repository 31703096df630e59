"""The Raft core: leader election (randomized timeouts, PreVote), log replication with a bounded
in-flight window and fast back-off, commitment by counting replicas for entries of the leader's own
term only (Raft §5.4.2, Figure 8), CheckQuorum (a leader that cannot hear a quorum steps down, and
followers that hear a leader ignore disruptive campaigns), single-server membership changes.

Not implemented here (see docs/consensus.md): log compaction with snapshot transfer, leader
transfer, ReadIndex, learner catch-up before promotion.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from consensus.codec import decode_conf_state, encode_conf_state
from consensus.storage import Compacted, Storage, Unavailable
from consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)
from consensus.types import (
    MessageType as MT,
)


class ConfChangeRefused(Exception):
    """A membership change or leader transfer that cannot be done now (the message says why)."""


class ProposalDropped(Exception):
    def __init__(self, leader: int) -> None:
        self.leader = leader
        super().__init__(f"not leader (leader {leader})")


@dataclass
class Config:
    id: int
    storage: Storage
    rng: random.Random
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    max_size_per_msg: int = 16 << 20
    max_inflight_msgs: int = 256
    check_quorum: bool = True
    pre_vote: bool = True


@dataclass
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    entries: list[Entry]
    messages: list[Message]
    committed_entries: list[Entry]
    snapshot: Snapshot | None = None
    must_sync: bool = True
    read_states: list[ReadState] = field(default_factory=list)


@dataclass
class Progress:
    match: int = 0
    next: int = 1
    probe: bool = True
    inflight: list[int] = field(default_factory=list)
    active: bool = False
    paused: bool = False


class RawNode:
    def __init__(self, cfg: Config) -> None:
        self.id = cfg.id
        self.cfg = cfg
        self.storage = cfg.storage
        self.rng = cfg.rng
        hs, cs = self.storage.initial_state()
        self.voters = set(cs.voters)
        self.learners = set(cs.learners)
        self.term = hs.term
        self.vote = hs.vote
        self.commit = hs.commit
        self.applied = max(cfg.applied, self.storage.first_index() - 1)
        self.unstable: list[Entry] = []
        self.offset = self.storage.last_index() + 1
        self.role = Role.FOLLOWER
        self.leader = 0
        self.votes: dict[int, bool] = {}
        self.prs: dict[int, Progress] = {}
        self.msgs: list[Message] = []
        self.elapsed = 0
        self.hb_elapsed = 0
        self._reset_timeout()
        self._prev_soft = SoftState(0, Role.FOLLOWER)
        self._prev_hard = HardState(self.term, self.vote, self.commit)
        self._handed = 0  # last unstable index handed out in a Ready
        self.read_states: list[ReadState] = []
        self.transferee = 0  # leader transfer in progress to this node
        self.transfer_elapsed = 0
        self.pending_conf_index = 0  # at most one unapplied membership change at a time
        self.pending_snapshot: Snapshot | None = None  # adopted from the leader, not yet handed out
        self._adopted: SnapshotMetadata | None = None  # the latest snapshot adopted (its index and term)
        self._reads: dict[bytes, tuple[int, set[int]]] = {}  # ctx -> (commit index, acks)

    # -- log ------------------------------------------------------------------------------------

    def last_index(self) -> int:
        return self.unstable[-1].index if self.unstable else self.offset - 1

    def log_term(self, i: int) -> int:
        if i == 0:
            return 0
        if self._adopted is not None and i <= self._adopted.index:  # adopted snapshot, maybe not persisted yet
            return self._adopted.term if i == self._adopted.index else 0
        if self.unstable and self.offset <= i <= self.unstable[-1].index:
            return self.unstable[i - self.offset].term
        try:
            return self.storage.term(i)
        except (Compacted, Unavailable):
            return 0

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        out: list[Entry] = []
        if lo < self.offset:
            out.extend(self.storage.entries(lo, min(hi, self.offset), max_bytes))
        if hi > self.offset and self.unstable:
            out.extend(self.unstable[max(lo, self.offset) - self.offset : hi - self.offset])
        return out

    def _append(self, ents: list[Entry]) -> None:
        if not ents:
            return
        first = ents[0].index
        if first == self.last_index() + 1:
            self.unstable.extend(ents)
        elif first <= self.offset:
            self.offset = first
            self.unstable = list(ents)
            self._handed = min(self._handed, first - 1)
        else:
            self.unstable = self.unstable[: first - self.offset] + list(ents)
            self._handed = min(self._handed, first - 1)

    def _up_to_date(self, last_term: int, last_index: int) -> bool:
        mt = self.log_term(self.last_index())
        return last_term > mt or (last_term == mt and last_index >= self.last_index())

    # -- roles ----------------------------------------------------------------------------------

    def _reset_timeout(self) -> None:
        self.timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)

    def _reset(self, term: int) -> None:
        self.transferee = 0
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader = 0
        self.elapsed = 0
        self.hb_elapsed = 0
        self.votes = {}
        self._reset_timeout()

    def _become_follower(self, term: int, leader: int) -> None:
        self._reads.clear()
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self.last_index()
        self.prs = {p: Progress(match=0, next=last + 1) for p in self.voters | self.learners if p != self.id}
        self._append([Entry(self.term, last + 1, EntryType.NORMAL, b"")])
        self._bcast_append()

    def _quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def campaign(self, pre: bool | None = None, transfer: bool = False) -> None:
        if self.id not in self.voters:
            return  # learners and removed nodes never campaign
        pre = self.cfg.pre_vote if pre is None else pre
        if pre:
            self.role = Role.PRE_CANDIDATE
            self.votes = {self.id: True}
            self.leader = 0
            self.elapsed = 0
            self._reset_timeout()
            term = self.term + 1
            kind = MT.PRE_VOTE
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            self.votes = {self.id: True}
            term = self.term
            kind = MT.VOTE
        if len([v for v in self.votes.values() if v]) >= self._quorum():
            if pre:
                self.campaign(pre=False)
            else:
                self._become_leader()
            return
        li = self.last_index()
        ctx = b"transfer" if transfer else b""  # lets voters bypass their leader lease
        for p in self.voters:
            if p != self.id:
                self.msgs.append(Message(kind, p, self.id, term, self.log_term(li), li, context=ctx))

    # -- inputs ---------------------------------------------------------------------------------

    def tick(self) -> None:
        self.elapsed += 1
        if self.role == Role.LEADER:
            if self.transferee:
                self.transfer_elapsed += 1
                if self.transfer_elapsed >= self.cfg.election_tick:
                    self.transferee = 0  # the target did not take over in time: abort
            self.hb_elapsed += 1
            if self.hb_elapsed >= self.cfg.heartbeat_tick:
                self.hb_elapsed = 0
                for p, pr in self.prs.items():
                    self.msgs.append(Message(MT.HEARTBEAT, p, self.id, self.term,
                                             commit=min(pr.match, self.commit)))
            if self.elapsed >= self.cfg.election_tick:
                self.elapsed = 0
                if self.cfg.check_quorum:
                    active = 1 + sum(1 for p, pr in self.prs.items() if pr.active and p in self.voters)
                    for pr in self.prs.values():
                        pr.active = False
                    if active < self._quorum():
                        self._become_follower(self.term, 0)
            return
        if self.elapsed >= self.timeout and self.id in self.voters:
            self.campaign()

    def propose(self, data: bytes) -> None:
        if self.role != Role.LEADER or self.transferee:
            raise ProposalDropped(self.leader if not self.transferee else self.transferee)
        self._append([Entry(self.term, self.last_index() + 1, EntryType.NORMAL, data)])
        self._bcast_append()

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Single-server change (add voter, remove voter, add learner); one pending at a time."""
        if self.role != Role.LEADER or self.transferee:
            raise ProposalDropped(self.leader)
        if self.pending_conf_index > self.applied:
            raise ConfChangeRefused("another membership change is not applied yet")
        if cc.type == ConfChangeType.ADD_VOTER and cc.node_id in self.learners:
            pr = self.prs.get(cc.node_id)
            if pr is None or pr.match < self.commit:
                raise ConfChangeRefused(f"learner {cc.node_id} has not caught up (match "
                                        f"{pr.match if pr else 0} < commit {self.commit})")
        self._append([Entry(self.term, self.last_index() + 1, EntryType.CONF_CHANGE, cc.encode())])
        self.pending_conf_index = self.last_index()
        self._bcast_append()

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to ``to`` (Raft thesis §3.10): stop taking proposals, bring it up to
        date, then tell it to campaign at once."""
        if self.role != Role.LEADER:
            raise ProposalDropped(self.leader)
        if to == self.id:
            return
        if to not in self.voters:
            raise ConfChangeRefused(f"node {to} is not a voter")
        self.transferee = to
        self.transfer_elapsed = 0
        pr = self.prs[to]
        if pr.match == self.last_index():
            self.msgs.append(Message(MT.TIMEOUT_NOW, to, self.id, self.term))
        else:
            self._send_append(to)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        if cc.type == ConfChangeType.ADD_VOTER:
            self.voters.add(cc.node_id)
            self.learners.discard(cc.node_id)
        elif cc.type == ConfChangeType.ADD_LEARNER:
            self.learners.add(cc.node_id)
        else:
            self.voters.discard(cc.node_id)
            self.learners.discard(cc.node_id)
            self.prs.pop(cc.node_id, None)
            if cc.node_id == self.id and self.role == Role.LEADER:
                self._become_follower(self.term, 0)  # a removed leader steps down
        if self.role == Role.LEADER:
            for p in self.voters | self.learners:
                if p != self.id and p not in self.prs:
                    self.prs[p] = Progress(next=self.last_index() + 1)
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def read_index(self, ctx: bytes) -> None:
        """ReadIndex (Raft thesis §6.4): confirm leadership with a heartbeat round, then the read may
        be served at the commit index of the request time. Raises ProposalDropped when not leader or
        before the leader has committed an entry of its own term."""
        if self.role != Role.LEADER or self.log_term(self.commit) != self.term:
            raise ProposalDropped(self.leader)
        if len(self.voters) == 1:
            self.read_states.append(ReadState(self.commit, ctx))
            return
        self._reads[ctx] = (self.commit, {self.id})
        for p in self.prs:
            if p in self.voters:
                self.msgs.append(Message(MT.HEARTBEAT, p, self.id, self.term,
                                         commit=min(self.prs[p].match, self.commit), context=ctx))

    def report_unreachable(self, peer: int) -> None:
        pr = self.prs.get(peer)
        if pr is not None and not pr.probe:
            pr.probe = True
            pr.next = pr.match + 1
            pr.inflight.clear()

    def step(self, m: Message) -> None:
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                in_lease = (self.cfg.check_quorum and self.leader != 0 and m.context != b"transfer"
                            and self.elapsed < self.cfg.election_tick)
                if in_lease:
                    return  # a healthy leader exists: ignore disruptive campaigns
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            else:
                leader = m.frm if m.type in (MT.APP, MT.HEARTBEAT) else 0
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            if m.type in (MT.APP, MT.HEARTBEAT):
                # a stale leader: tell it our term so it steps down
                self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term))
            elif m.type == MT.PRE_VOTE:
                self.msgs.append(Message(MT.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return
        handler = {
            MT.VOTE: self._on_vote, MT.PRE_VOTE: self._on_vote, MT.VOTE_RESP: self._on_vote_resp,
            MT.PRE_VOTE_RESP: self._on_vote_resp, MT.APP: self._on_app, MT.HEARTBEAT: self._on_heartbeat,
            MT.APP_RESP: self._on_app_resp, MT.HEARTBEAT_RESP: self._on_heartbeat_resp,
            MT.TIMEOUT_NOW: self._on_timeout_now, MT.SNAP: self._on_snap,
        }[m.type]
        handler(m)

    def _on_timeout_now(self, m: Message) -> None:
        if self.id in self.voters:
            self.campaign(pre=False, transfer=True)

    def _on_vote(self, m: Message) -> None:
        pre = m.type == MT.PRE_VOTE
        resp = MT.PRE_VOTE_RESP if pre else MT.VOTE_RESP
        if self.id not in self.voters:  # learners do not vote
            self.msgs.append(Message(resp, m.frm, self.id, self.term, reject=True))
            return
        can = (self.vote == m.frm) or (self.vote == 0 and self.leader == 0) or (pre and m.term > self.term)
        if can and self._up_to_date(m.log_term, m.index):
            self.msgs.append(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self.elapsed = 0
                self.vote = m.frm
        else:
            self.msgs.append(Message(resp, m.frm, self.id, self.term, reject=True))

    def _on_vote_resp(self, m: Message) -> None:
        pre = m.type == MT.PRE_VOTE_RESP
        if (pre and self.role != Role.PRE_CANDIDATE) or (not pre and self.role != Role.CANDIDATE):
            return
        self.votes.setdefault(m.frm, not m.reject)  # duplicates do not count twice
        granted = sum(1 for v in self.votes.values() if v)
        rejected = sum(1 for v in self.votes.values() if not v)
        if granted >= self._quorum():
            if pre:
                self.campaign(pre=False)
            else:
                self._become_leader()
        elif rejected >= self._quorum():
            self._become_follower(self.term, 0)

    def _on_app(self, m: Message) -> None:
        self.elapsed = 0
        self.leader = m.frm
        if self.role != Role.FOLLOWER:
            self._become_follower(m.term, m.frm)
        if m.index < self.commit:
            self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term, index=self.commit))
            return
        if self.log_term(m.index) != m.log_term or m.index > self.last_index():
            hint = min(m.index, self.last_index())
            # fast back-off: skip back over the whole conflicting term
            t = self.log_term(hint)
            while hint > self.commit and self.log_term(hint - 1) == t and t > m.log_term:
                hint -= 1
            self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term, index=m.index, reject=True,
                                     reject_hint=hint))
            return
        new = [e for e in m.entries if e.index > self.commit]  # committed entries already match
        for e in list(new):
            if e.index <= self.last_index() and self.log_term(e.index) == e.term:
                new = new[1:]
                continue
            break
        if new:
            if new[0].index <= self.commit:
                raise RuntimeError("conflict below commit index")
            self._append(new)
        last_new = m.index + len(m.entries)
        self.commit = max(self.commit, min(m.commit, last_new))
        self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term, index=last_new))

    def _on_heartbeat(self, m: Message) -> None:
        self.elapsed = 0
        self.leader = m.frm
        if self.role != Role.FOLLOWER:
            self._become_follower(m.term, m.frm)
        if m.commit > self.commit:
            self.commit = min(m.commit, self.last_index())
        self.msgs.append(Message(MT.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context))

    def _on_app_resp(self, m: Message) -> None:
        if self.role != Role.LEADER:
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        pr.active = True
        if m.reject:
            if m.index > pr.match:
                pr.next = max(pr.match + 1, min(m.reject_hint + 1, m.index))
                pr.probe = True
                pr.inflight.clear()
                self._send_append(m.frm)
            return
        if m.index > pr.match:
            pr.match = m.index
            pr.next = max(pr.next, m.index + 1)
            pr.probe = False
            pr.inflight = [i for i in pr.inflight if i > m.index]
            self._maybe_commit()
            if m.frm == self.transferee and pr.match == self.last_index():
                self.msgs.append(Message(MT.TIMEOUT_NOW, m.frm, self.id, self.term))
        pr.paused = False
        self._send_append(m.frm)

    def _on_heartbeat_resp(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if self.role != Role.LEADER or pr is None:
            return
        pr.active = True
        pr.paused = False
        pending = self._reads.get(m.context) if m.context else None
        if pending is not None and m.frm in self.voters:
            pending[1].add(m.frm)
            if len(pending[1]) >= self._quorum():
                del self._reads[m.context]
                self.read_states.append(ReadState(pending[0], m.context))
        if pr.match < self.last_index():
            if pr.probe:
                pr.inflight.clear()  # the probe may have been lost: send it again
            elif len(pr.inflight) >= self.cfg.max_inflight_msgs:
                pr.inflight.pop(0)  # window full of possibly lost appends: let one more through
            self._send_append(m.frm)

    # -- replication ----------------------------------------------------------------------------

    def _bcast_append(self) -> None:
        for p in self.prs:
            self._send_append(p)
        self._maybe_commit()

    def _send_append(self, to: int) -> None:
        pr = self.prs[to]
        while True:
            if pr.probe and pr.inflight:
                return
            if len(pr.inflight) >= self.cfg.max_inflight_msgs:
                return
            if pr.next < self.storage.first_index():  # the entries it needs were compacted away
                self._send_snapshot(to, pr)
                return
            last = self.last_index()
            if pr.next > last:
                if pr.probe and pr.match < last:  # a probe with no entries finds the match point
                    prev = pr.next - 1
                    self.msgs.append(Message(MT.APP, to, self.id, self.term, self.log_term(prev), prev, (),
                                             self.commit))
                    pr.inflight.append(prev)
                return  # nothing new; commit indexes travel with heartbeats
            prev = pr.next - 1
            ents = self.entries(pr.next, last + 1, self.cfg.max_size_per_msg) if pr.next <= last else []
            self.msgs.append(Message(MT.APP, to, self.id, self.term, self.log_term(prev), prev, tuple(ents),
                                     self.commit))
            if not ents:
                return
            sent_last = ents[-1].index
            pr.inflight.append(sent_last)
            if pr.probe:
                return
            pr.next = sent_last + 1

    def _send_snapshot(self, to: int, pr: Progress) -> None:
        meta = self.storage.snapshot().metadata
        self.msgs.append(Message(MT.SNAP, to, self.id, self.term, meta.term, meta.index, (), self.commit,
                                 context=encode_conf_state(meta.conf_state)))
        pr.probe = True
        pr.inflight = [meta.index]  # one snapshot at a time; the follower's response resumes appends
        pr.next = meta.index + 1

    def _on_snap(self, m: Message) -> None:
        """Follower: adopt a snapshot. The driver installs the state machine data it names (from the
        leader) before persisting this Ready; our log then starts after the snapshot's index."""
        self.elapsed = 0
        self.leader = m.frm
        if m.index <= self.commit:
            self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term, index=self.commit))
            return
        conf = decode_conf_state(m.context)
        meta = SnapshotMetadata(index=m.index, term=m.log_term, conf_state=conf)
        self.pending_snapshot = Snapshot(metadata=meta)
        self._adopted = meta
        self.unstable = []
        self.offset = m.index + 1
        self._handed = m.index
        self.commit = m.index
        self.applied = m.index
        self.voters = set(conf.voters)
        self.learners = set(conf.learners)
        self.msgs.append(Message(MT.APP_RESP, m.frm, self.id, self.term, index=m.index))

    def _maybe_commit(self) -> None:
        stable = self.offset - 1  # the leader counts itself only for what it has persisted
        matches = sorted([stable] + [pr.match for p, pr in self.prs.items() if p in self.voters], reverse=True)
        if self.id not in self.voters:
            matches = sorted([pr.match for p, pr in self.prs.items() if p in self.voters], reverse=True)
        if not matches:
            return
        n = matches[self._quorum() - 1]
        if n > self.commit and self.log_term(n) == self.term:  # only entries of our own term (Figure 8)
            self.commit = n
            for p, pr in self.prs.items():  # tell followers at once, so they apply without a tick
                if not pr.probe:
                    self.msgs.append(Message(MT.APP, p, self.id, self.term, self.log_term(pr.next - 1), pr.next - 1,
                                             (), self.commit))

    # -- ready ----------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        if self.pending_snapshot is not None:
            return True
        if self.msgs or self.read_states or (self.unstable and self.unstable[-1].index > self._handed):
            return True
        if HardState(self.term, self.vote, self.commit) != self._prev_hard:
            return True
        if SoftState(self.leader, self.role) != self._prev_soft:
            return True
        return min(self.commit, self.offset - 1) > self.applied

    def ready(self) -> Ready:
        soft = SoftState(self.leader, self.role)
        hard = HardState(self.term, self.vote, self.commit)
        ents = [e for e in self.unstable if e.index > self._handed]
        hi = min(self.commit, self.offset - 1)
        committed = self.entries(self.applied + 1, hi + 1) if hi > self.applied else []
        rd = Ready(soft if soft != self._prev_soft else None, hard if hard != self._prev_hard else None,
                   ents, self.msgs, committed, snapshot=self.pending_snapshot, read_states=self.read_states)
        self.pending_snapshot = None
        self.msgs = []
        self.read_states = []
        self._prev_soft = soft
        if rd.hard_state is not None:
            self._prev_hard = hard
        if ents:
            self._handed = ents[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.committed_entries:
            self.applied = max(self.applied, rd.committed_entries[-1].index)
        if rd.snapshot is not None:
            return  # the log now starts after the snapshot (set when it was adopted)
        if rd.entries:
            last = rd.entries[-1]
            # entries up to `last` are now in storage (unless replaced meanwhile)
            if self.log_term(last.index) == last.term and last.index >= self.offset:
                cut = last.index - self.offset + 1
                self.unstable = self.unstable[cut:]
                self.offset = last.index + 1
            if self.role == Role.LEADER:
                self._maybe_commit()
                for p in self.prs:
                    self._send_append(p)

    def status(self) -> dict[str, object]:
        return {"id": self.id, "term": self.term, "commit": self.commit, "applied": self.applied,
                "role": self.role.name, "leader": self.leader}
