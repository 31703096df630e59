"""Scenario tests named after the Raft paper's claims and the classic traps."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from consensus.codec import (
    MessageDecodeError,
    decode_conf_state,
    decode_entry,
    decode_hard_state,
    decode_message,
    encode_conf_state,
    encode_entry,
    encode_hard_state,
    encode_message,
)
from consensus.raft import ConfChangeRefused, Config, ProposalDropped, RawNode
from consensus.storage import MemoryStorage
from consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Role,
)

MT = MessageType


class Net:
    """In-test network: nodes over MemoryStorage, a filter decides which messages are delivered."""

    def __init__(self, n: int, seed: int = 1, check_quorum: bool = True, pre_vote: bool = True) -> None:
        self.ids = list(range(1, n + 1))
        self.storage = {i: MemoryStorage(ConfState(tuple(self.ids))) for i in self.ids}
        self.opts = {"check_quorum": check_quorum, "pre_vote": pre_vote}
        self.nodes = {i: self._node(i, seed) for i in self.ids}
        self.applied: dict[int, list[bytes]] = {i: [] for i in self.ids}
        self.drop: Callable[[Message], bool] = lambda m: False
        self.sent: list[Message] = []
        self.reads: dict[int, list[tuple[int, bytes]]] = {i: [] for i in self.ids}

    def _node(self, i: int, seed: int) -> RawNode:
        return RawNode(Config(id=i, storage=self.storage[i], rng=random.Random(seed * 100 + i), **self.opts))

    def restart(self, i: int) -> None:
        self.nodes[i] = self._node(i, 999)

    def settle(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            msgs: list[Message] = []
            for i, n in self.nodes.items():
                while n.has_ready():
                    rd = n.ready()
                    self.storage[i].persist(rd.hard_state, list(rd.entries), None)
                    msgs.extend(rd.messages)
                    self.applied[i].extend(e.data for e in rd.committed_entries if e.data)
                    self.reads[i].extend((r.index, r.request_ctx) for r in rd.read_states)
                    n.advance(rd)
            if not msgs:
                return
            self.sent.extend(msgs)
            for m in msgs:
                if not self.drop(m):
                    self.nodes[m.to].step(m)

    def elect(self, i: int) -> None:
        self.nodes[i].campaign()
        self.settle()
        assert self.nodes[i].role == Role.LEADER

    def tick_all(self, n: int, only: list[int] | None = None) -> None:
        for _ in range(n):
            for i in only or self.ids:
                self.nodes[i].tick()
            self.settle()

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.role == Role.LEADER]


def test_election_safety_one_leader_per_term() -> None:
    for seed in range(20):
        net = Net(5, seed)
        net.tick_all(40)
        by_term: dict[int, set[int]] = {}
        for i in net.leaders():
            by_term.setdefault(net.nodes[i].term, set()).add(i)
        assert net.leaders(), f"seed {seed}: nobody was elected"
        assert all(len(v) == 1 for v in by_term.values())


def test_log_replication_and_state_machine_safety() -> None:
    net = Net(3)
    net.elect(1)
    for k in range(20):
        net.nodes[1].propose(f"p{k}".encode())
    net.settle()
    net.tick_all(2)  # heartbeats carry the commit index
    assert net.applied[1] == net.applied[2] == net.applied[3] == [f"p{k}".encode() for k in range(20)]


def test_follower_refuses_proposals_with_leader_hint() -> None:
    net = Net(3)
    net.elect(2)
    with pytest.raises(ProposalDropped) as e:
        net.nodes[1].propose(b"x")
    assert e.value.leader == 2


def test_figure_8_leader_commits_only_entries_of_its_own_term_by_counting() -> None:
    net = Net(3, check_quorum=False, pre_vote=False)
    net.elect(1)
    net.nodes[1].propose(b"t1")
    net.drop = lambda m: True  # the entry reaches nobody
    net.settle()
    # node 1 now holds an uncommitted entry of term 1 at index 2; a new term starts on node 1
    net.drop = lambda m: m.type in (MT.APP,)  # votes flow, appends do not
    net.nodes[1].campaign()
    net.settle()
    leader = net.nodes[1]
    assert leader.role == Role.LEADER and leader.term >= 2
    old_index = 2
    assert leader.log_term(old_index) == 1
    # a follower acknowledges only the old-term entry: counting it must not commit it
    leader.step(Message(MT.APP_RESP, 1, 2, leader.term, index=old_index))
    assert leader.commit < old_index
    # once an entry of the leader's own term is replicated, everything before it commits
    leader.step(Message(MT.APP_RESP, 1, 2, leader.term, index=leader.last_index()))
    net.drop = lambda m: False
    net.settle()
    assert leader.commit == leader.last_index() >= old_index + 1


def test_vote_is_not_granted_twice_in_a_term_even_after_restart() -> None:
    net = Net(3, check_quorum=False, pre_vote=False)
    n3 = net.nodes[3]
    n3.step(Message(MT.VOTE, 3, 1, 5, log_term=0, index=0))
    net.settle()
    assert HardState(5, 1, 0) == net.storage[3].hs  # the vote is durable before the response goes out
    net.restart(3)
    net.sent.clear()
    net.nodes[3].step(Message(MT.VOTE, 3, 2, 5, log_term=0, index=0))
    net.drop = lambda m: True
    net.settle()
    replies = [m for m in net.sent if m.type == MT.VOTE_RESP and m.to == 2]
    assert replies and replies[0].reject


def test_duplicated_vote_responses_do_not_count_twice() -> None:
    net = Net(5, check_quorum=False, pre_vote=False)
    net.drop = lambda m: True
    c = net.nodes[1]
    c.campaign()
    net.settle()
    grant = Message(MT.VOTE_RESP, 1, 2, c.term)
    for _ in range(5):
        c.step(grant)  # the same vote, five times
    assert c.role == Role.CANDIDATE
    c.step(Message(MT.VOTE_RESP, 1, 3, c.term))
    assert c.role == Role.LEADER


def test_stale_leader_steps_down_and_its_entries_do_not_commit() -> None:
    net = Net(3)
    net.elect(1)
    net.drop = lambda m: 1 in (m.frm, m.to)  # isolate the leader
    net.nodes[1].propose(b"lost")
    net.tick_all(40, only=[2, 3])
    assert net.leaders() in ([1, 2], [1, 3]) or set(net.leaders()) - {1}
    new = next(i for i in net.leaders() if i != 1)
    net.nodes[new].propose(b"kept")
    net.settle()
    net.drop = lambda m: False
    net.tick_all(5)
    assert net.nodes[1].role == Role.FOLLOWER
    assert b"lost" not in net.applied[2] and b"kept" in net.applied[1]


def test_partitioned_node_cannot_disrupt_a_healthy_leader() -> None:
    """PreVote + CheckQuorum: a node that keeps campaigning alone never bumps the region's term."""
    net = Net(3)
    net.elect(1)
    term = net.nodes[1].term
    net.drop = lambda m: 3 in (m.frm, m.to)
    net.tick_all(60, only=[1, 2, 3])
    assert net.nodes[3].term == term  # pre-votes failed, so its term never moved
    net.drop = lambda m: False
    net.tick_all(10)
    assert net.leaders() == [1] and net.nodes[1].term == term


def test_removed_node_that_keeps_campaigning_is_ignored() -> None:
    net = Net(3, pre_vote=False)  # even without pre-vote: leader stickiness (check quorum)
    net.elect(1)
    term = net.nodes[1].term
    for _ in range(5):  # node 3 was removed and does not know it: it asks for votes at higher terms
        net.nodes[2].step(Message(MT.VOTE, 2, 3, term + 7, log_term=9, index=99))
        net.nodes[1].step(Message(MT.VOTE, 1, 3, term + 7, log_term=9, index=99))
        net.tick_all(1, only=[1, 2])
    assert net.leaders() == [1] and net.nodes[1].term == term


def test_leader_with_lost_quorum_steps_down() -> None:
    net = Net(3)
    net.elect(1)
    net.drop = lambda m: 1 in (m.frm, m.to)
    net.tick_all(25, only=[1])
    assert net.nodes[1].role == Role.FOLLOWER


def test_codec_round_trips_and_rejects_garbage() -> None:
    m = Message(MT.APP, 2, 1, 7, 6, 41, (Entry(7, 42, EntryType.NORMAL, b"x" * 10),), 40, False, 0)
    assert decode_message(encode_message(m)) == m
    e = Entry(3, 9, EntryType.CONF_CHANGE, b"cc")
    assert decode_entry(encode_entry(e)) == e
    assert decode_hard_state(encode_hard_state(HardState(1, 2, 3))) == HardState(1, 2, 3)
    cs = ConfState((1, 2, 3), (4,))
    assert decode_conf_state(encode_conf_state(cs)) == cs
    for bad in (b"", b"\x02" + encode_message(m)[1:], encode_message(m)[:-3], encode_message(m) + b"x"):
        with pytest.raises(MessageDecodeError):
            decode_message(bad)


def test_read_index_needs_a_quorum_round_and_returns_the_commit_index() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"a")
    net.settle()
    net.nodes[1].read_index(b"r1")
    net.settle()
    assert net.reads[1] == [(net.nodes[1].commit, b"r1")]
    # an isolated (stale) leader cannot confirm its leadership: the read never completes
    net.drop = lambda m: 1 in (m.frm, m.to)
    net.nodes[1].read_index(b"r2")
    net.settle()
    assert (net.nodes[1].commit, b"r2") not in net.reads[1]
    with pytest.raises(ProposalDropped):
        net.nodes[2].read_index(b"r3")  # followers refuse: reads go through the leader


def test_leader_transfer_hands_over_without_losing_entries() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"before")
    net.settle()
    net.nodes[1].transfer_leader(3)
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"during")  # no proposals while handing over
    net.settle()
    assert net.leaders() == [3]
    net.nodes[3].propose(b"after")
    net.settle()
    net.tick_all(2)
    assert net.applied[1] == net.applied[2] == net.applied[3] == [b"before", b"after"]


def _conf(net: Net, leader: int, cc: ConfChange) -> None:
    net.nodes[leader].propose_conf_change(cc)
    net.settle()
    net.tick_all(2)
    for n in net.nodes.values():  # every replica applies the committed change
        n.apply_conf_change(cc)


def test_learner_receives_the_log_never_votes_and_is_promoted_when_caught_up() -> None:
    net = Net(3)
    # node 3 starts as a learner: the others' configuration does not count it as a voter
    for i in (1, 2, 3):
        net.nodes[i].voters = {1, 2}
        net.nodes[i].learners = {3}
    net.elect(1)
    net.nodes[1].apply_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 3))  # leader tracks its progress
    for k in range(5):
        net.nodes[1].propose(f"e{k}".encode())
    net.settle()
    net.tick_all(2)
    assert net.applied[3] == [f"e{k}".encode() for k in range(5)]  # the learner has the log
    net.nodes[3].campaign()
    assert net.nodes[3].role == Role.FOLLOWER  # never campaigns
    net.sent.clear()
    net.nodes[3].step(Message(MT.VOTE, 3, 2, net.nodes[1].term + 1, log_term=99, index=99))
    net.settle()
    assert all(m.reject for m in net.sent if m.type == MT.VOTE_RESP and m.frm == 3)  # never votes
    _conf(net, 1, ConfChange(ConfChangeType.ADD_VOTER, 3))
    assert net.nodes[1].voters == {1, 2, 3}
    with pytest.raises(ConfChangeRefused):
        net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 9))
        net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 8))  # one at a time


def test_removed_leader_steps_down() -> None:
    net = Net(3)
    net.elect(1)
    _conf(net, 1, ConfChange(ConfChangeType.REMOVE_VOTER, 1))
    assert net.nodes[1].role == Role.FOLLOWER
    net.tick_all(40, only=[2, 3])
    assert net.leaders() and set(net.leaders()) <= {2, 3}
