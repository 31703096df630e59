"""What the leader knows about each follower (etcd's tracker package), and quorum arithmetic.

A follower's ``Progress`` is in one of three states (``ProgressState``):

- PROBE: the leader does not know where the logs match; it sends one append and waits for the answer
  (or a heartbeat response) before sending another, backing ``next`` off on each rejection;
- REPLICATE: the match point is known; appends are pipelined optimistically, at most
  ``max_inflight_msgs`` unacknowledged at a time (the flow-control window);
- SNAPSHOT: the follower needs entries that were compacted; a snapshot is on its way and nothing else
  is sent until it is acknowledged or reported failed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from consensus.types import ZERO_INDEX, ConfState, Index, NodeId, ProgressState, ProgressStatus


class Inflights:
    """The last index of each unacknowledged append, oldest first (a bounded window)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[Index] = deque()

    def add(self, last: Index) -> None:
        self._q.append(last)

    def free_le(self, index: Index) -> None:
        """An acknowledgement up to ``index`` frees every append that ended at or before it."""
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def reset(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


@dataclass
class Progress:
    match: Index
    next: Index
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False  # PROBE: an append is outstanding, wait for its answer or a heartbeat response
    pending_snapshot: Index = ZERO_INDEX  # SNAPSHOT: the index of the snapshot sent
    recent_active: bool = False  # heard from within the last election timeout (CheckQuorum)
    is_learner: bool = False
    snapshot_checks: int = 0  # SNAPSHOT: election timeouts passed without an answer

    def _reset_state(self, state: ProgressState) -> None:
        self.snapshot_checks = 0
        self.probe_sent = False
        self.pending_snapshot = Index(0)
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # after a snapshot, the follower holds at least the snapshot: start probing right after it
        floor = self.pending_snapshot if self.state == ProgressState.SNAPSHOT else Index(0)
        self._reset_state(ProgressState.PROBE)
        self.next = Index(max(self.match + 1, floor + 1))

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = Index(self.match + 1)

    def become_snapshot(self, index: Index) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, n: Index) -> bool:
        """An acknowledgement up to ``n``; returns whether ``match`` moved (stale acks do not)."""
        updated = n > self.match
        if updated:
            self.match = n
            self.probe_sent = False
        self.next = Index(max(self.next, n + 1))
        return updated

    def maybe_decr_to(self, rejected: Index, match_hint: Index) -> bool:
        """A rejection of the append after ``rejected``; ``match_hint`` is the follower's guess of the
        highest index that may match. Returns False for a stale rejection (one we already acted on)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = Index(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = Index(max(min(rejected, match_hint + 1), self.match + 1))
        self.probe_sent = False
        return True

    def sent_entries(self, last: Index | None) -> None:
        """An append went out carrying entries up to ``last`` (None: no entries)."""
        if self.state == ProgressState.REPLICATE:
            if last is not None:
                self.next = Index(last + 1)
                self.inflights.add(last)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def status(self) -> ProgressStatus:
        return ProgressStatus(self.match, self.next, self.state, self.is_learner, self.recent_active)


class VoteResult(IntEnum):
    PENDING = 0
    WON = 1
    LOST = 2


@dataclass
class ProgressTracker:
    """The configuration (voters, learners), per-node progress (leader only) and the votes of the
    current election."""

    voters: set[NodeId]
    learners: set[NodeId]
    max_inflight: int
    progress: dict[NodeId, Progress] = field(default_factory=dict)
    votes: dict[NodeId, bool] = field(default_factory=dict)

    @staticmethod
    def from_conf(cs: ConfState, max_inflight: int) -> ProgressTracker:
        return ProgressTracker(set(cs.voters), set(cs.learners), max_inflight)

    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def members(self) -> set[NodeId]:
        return self.voters | self.learners

    def new_progress(self, node: NodeId, next_index: Index) -> Progress:
        # a node just added counts as recently active, so CheckQuorum does not fire before it answers
        return Progress(Index(0), next_index, Inflights(self.max_inflight), recent_active=True,
                        is_learner=node in self.learners)

    def reset_progress(self, next_index: Index) -> None:
        self.progress = {n: self.new_progress(n, next_index) for n in sorted(self.members())}

    def committed(self) -> Index:
        """The highest index a quorum of voters has (Raft §5.3: the leader's commit candidate)."""
        if not self.voters:
            return Index(0)
        matches = sorted((self.progress[v].match if v in self.progress else Index(0) for v in self.voters),
                         reverse=True)
        return matches[self.quorum() - 1]

    def record_vote(self, node: NodeId, granted: bool) -> None:
        # the first answer counts; duplicated or replayed responses never count twice
        if node in self.voters:
            self.votes.setdefault(node, granted)

    def tally(self) -> VoteResult:
        granted = sum(1 for n, v in self.votes.items() if v and n in self.voters)
        rejected = sum(1 for n, v in self.votes.items() if not v and n in self.voters)
        if granted >= self.quorum():
            return VoteResult.WON
        if rejected > len(self.voters) - self.quorum():
            return VoteResult.LOST
        return VoteResult.PENDING

    def quorum_active(self, me: NodeId) -> bool:
        active = sum(1 for v in self.voters if v == me or (v in self.progress and self.progress[v].recent_active))
        return active >= self.quorum()
