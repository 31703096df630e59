"""Leader election (Raft §5.2, §5.4.1; thesis §4.2.3, §6.2, §9.6), one test per claim."""

from __future__ import annotations

import random

import pytest

from consensus.raft import Config, RawNode
from consensus.storage import MemoryStorage
from consensus.types import ConfState, HardState, Index, Message, NodeId, Role, Term
from tests.consensus.harness import MT, Net, nid


def vote_req(to: int, frm: int, term: int, last_term: int = 0, last_index: int = 0, pre: bool = False) -> Message:
    return Message(MT.PRE_VOTE if pre else MT.VOTE, nid(to), nid(frm), Term(term), Term(last_term),
                   Index(last_index))


def test_election_safety_at_most_one_leader_per_term() -> None:
    """§5.2: each node votes once per term, a leader needs a majority, so at most one leader per term."""
    for seed in range(30):
        net = Net(5, seed=seed, pre_vote=seed % 2 == 0)
        rng = random.Random(seed)
        by_term: dict[int, set[int]] = {}
        for _ in range(60):
            net.drop = lambda m, r=rng: r.random() < 0.2  # type: ignore[misc]
            net.tick(1)
            for i in net.leaders():
                by_term.setdefault(net.nodes[i].term, set()).add(i)
        assert by_term, f"seed {seed}: nobody was elected"
        assert all(len(v) == 1 for v in by_term.values()), by_term


def test_randomized_election_timeout_is_in_election_tick_to_twice() -> None:
    seen = set()
    for seed in range(200):
        n = RawNode(Config(id=1, storage=MemoryStorage(ConfState((nid(1), nid(2), nid(3)))),
                           rng=random.Random(seed)))
        ticks = 0
        while n.role == Role.FOLLOWER:
            n.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 5


def test_single_voter_elects_itself_and_commits_on_persist() -> None:
    net = Net(1)
    leader = net.elect(1)
    leader.propose(b"x")
    net.settle()
    assert net.applied[nid(1)] == [b"x"]


def test_vote_is_not_granted_twice_in_a_term() -> None:
    net = Net(3, check_quorum=False, pre_vote=False)
    n3 = net.nodes[nid(3)]
    n3.step(vote_req(3, 1, 5))
    n3.step(vote_req(3, 2, 5))
    net.deliver([])
    replies = net.drain(nid(3))
    assert [(m.to, m.reject) for m in replies if m.type == MT.VOTE_RESP] == [(1, False), (2, True)]


def test_vote_is_not_granted_twice_after_restart_from_persisted_hard_state() -> None:
    """The vote is in the Ready's hard state, persisted before the grant leaves; a restarted node
    reads it back and refuses a second candidate in the same term."""
    net = Net(3, check_quorum=False, pre_vote=False)
    net.nodes[nid(3)].step(vote_req(3, 1, 5))
    replies = net.drain(nid(3))
    assert any(m.type == MT.VOTE_RESP and not m.reject for m in replies)
    assert net.storage[nid(3)].hs == HardState(Term(5), nid(1), Index(0))
    net.restart(3)
    net.nodes[nid(3)].step(vote_req(3, 2, 5))
    replies = net.drain(nid(3))
    assert [m.reject for m in replies if m.type == MT.VOTE_RESP] == [True]
    net.nodes[nid(3)].step(vote_req(3, 1, 5))  # the same candidate asking again gets the same answer
    assert [m.reject for m in net.drain(nid(3)) if m.type == MT.VOTE_RESP] == [False]


def test_vote_grant_requires_the_persisted_vote_first() -> None:
    """The grant and the vote are in the same Ready, and the Ready says it must be fsynced."""
    net = Net(3, check_quorum=False, pre_vote=False)
    net.nodes[nid(2)].step(vote_req(2, 1, 3))
    rd = net.nodes[nid(2)].ready()
    assert rd.hard_state is not None and rd.hard_state.vote == 1 and rd.must_sync
    assert any(m.type == MT.VOTE_RESP and not m.reject for m in rd.messages)


def test_election_restriction_refuses_a_candidate_with_a_less_up_to_date_log() -> None:
    """§5.4.1: a vote goes only to a candidate whose log is at least as up to date."""
    net = Net(3, check_quorum=False, pre_vote=False)
    net.elect(1)
    net.nodes[nid(1)].propose(b"a")
    net.settle()
    n2 = net.nodes[nid(2)]
    n2.step(vote_req(2, 3, n2.term + 1, last_term=1, last_index=1))  # behind: last index 1 < ours
    assert [m.reject for m in net.drain(nid(2)) if m.type == MT.VOTE_RESP] == [True]
    n2.step(vote_req(2, 3, n2.term + 1, last_term=n2.term, last_index=n2.last_index()))
    assert [m.reject for m in net.drain(nid(2)) if m.type == MT.VOTE_RESP] == [False]


def test_duplicated_vote_responses_do_not_double_count() -> None:
    net = Net(5, check_quorum=False, pre_vote=False)
    c = net.nodes[nid(1)]
    c.campaign()
    net.drain(nid(1))
    grant = Message(MT.VOTE_RESP, nid(1), nid(2), c.term)
    for _ in range(5):
        c.step(grant)
    assert c.role == Role.CANDIDATE  # 2 of 5, however often node 2 says it
    c.step(Message(MT.VOTE_RESP, nid(1), nid(3), c.term))
    assert c.role == Role.LEADER  # type: ignore[comparison-overlap]  # (mypy narrows the property)


def test_a_quorum_of_rejections_ends_the_candidacy() -> None:
    net = Net(3, check_quorum=False, pre_vote=False)
    c = net.nodes[nid(1)]
    c.campaign()
    net.drain(nid(1))
    c.step(Message(MT.VOTE_RESP, nid(1), nid(2), c.term, reject=True))
    c.step(Message(MT.VOTE_RESP, nid(1), nid(3), c.term, reject=True))
    assert c.role == Role.FOLLOWER


def test_stale_leader_steps_down_on_higher_term_and_its_entries_do_not_commit() -> None:
    """§5.1: a message with a higher term turns a leader into a follower."""
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    net.nodes[nid(1)].propose(b"lost")
    net.settle()
    net.tick(40, only=[2, 3])
    new = next(i for i in net.leaders() if i != 1)
    net.nodes[new].propose(b"kept")
    net.settle()
    net.heal()
    net.tick(5)
    assert net.nodes[nid(1)].role == Role.FOLLOWER and net.nodes[nid(1)].leader == new
    assert b"lost" not in net.applied[nid(1)] and b"kept" in net.applied[nid(1)]


def test_stale_term_append_is_answered_with_the_current_term() -> None:
    net = Net(3)
    n2 = net.nodes[nid(2)]
    n2.step(Message(MT.HEARTBEAT, nid(2), nid(1), Term(4)))
    net.drain(nid(2))
    n2.step(Message(MT.APP, nid(2), nid(3), Term(2)))
    out = net.drain(nid(2))
    assert [(m.type, m.term) for m in out] == [(MT.APP_RESP, 4)]


def test_prevote_a_partitioned_node_rejoining_cannot_disrupt_a_healthy_leader() -> None:
    """Thesis §9.6: the isolated node's pre-votes fail, so its term never moves and the leader stays."""
    net = Net(3)
    net.elect(1)
    term = net.nodes[nid(1)].term
    net.isolate(3)
    net.tick(100)
    assert net.nodes[nid(3)].term == term and net.nodes[nid(3)].role == Role.PRE_CANDIDATE
    net.heal()
    net.tick(10)
    assert net.leaders() == [1] and all(n.term == term for n in net.nodes.values())


def test_without_prevote_a_rejoining_node_does_disrupt() -> None:
    """The counterfactual that shows why PreVote exists."""
    net = Net(3, pre_vote=False, check_quorum=False)
    net.elect(1)
    term = net.nodes[nid(1)].term
    net.isolate(3)
    net.tick(50)
    assert net.nodes[nid(3)].term > term + 1
    net.heal()
    net.tick(30)
    assert net.nodes[nid(1)].term > term


def test_checkquorum_a_leader_that_loses_its_quorum_steps_down() -> None:
    """Thesis §6.2."""
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    net.tick(25)
    assert net.nodes[nid(1)].role == Role.FOLLOWER


def test_checkquorum_followers_ignore_vote_requests_while_a_leader_is_alive() -> None:
    """Thesis §4.2.3 (leader stickiness)."""
    net = Net(3, pre_vote=False)
    net.elect(1)
    term = net.nodes[nid(1)].term
    net.nodes[nid(2)].step(vote_req(2, 3, term + 5, last_term=term, last_index=99))
    assert net.nodes[nid(2)].term == term
    assert not [m for m in net.drain(nid(2)) if m.type == MT.VOTE_RESP]


def test_removed_node_that_keeps_campaigning_cannot_disrupt() -> None:
    """A removed node does not hear the leader any more and campaigns with ever higher terms; voters in
    their lease ignore it (even without PreVote)."""
    net = Net(3, pre_vote=False)
    net.elect(1)
    from consensus.types import ConfChange, ConfChangeType

    net.nodes[nid(1)].propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, nid(3)))
    net.settle()
    net.tick(2)
    assert net.nodes[nid(1)].voters == {1, 2}
    term = net.nodes[nid(1)].term
    for k in range(5):
        for to in (1, 2):
            net.nodes[nid(to)].step(vote_req(to, 3, term + 7 + k, last_term=99, last_index=99))
        net.tick(3, only=[1, 2])
    assert net.leaders() == [1] and net.nodes[nid(1)].term == term
    net.nodes[nid(1)].propose(b"still works")
    net.settle()
    net.tick(1)
    assert b"still works" in net.applied[nid(2)]


def test_learner_never_campaigns_and_its_vote_never_counts() -> None:
    net = Net(3, voters=[1, 2], learners=[3], check_quorum=False)
    for _ in range(100):
        net.nodes[nid(3)].tick()
    net.nodes[nid(3)].campaign()
    assert net.nodes[nid(3)].role == Role.FOLLOWER and not net.drain(nid(3))
    # candidate 1 counts only voters: a grant from the learner does not make it leader
    c = net.nodes[nid(1)]
    c.campaign()
    net.drain(nid(1))
    c.step(Message(MT.PRE_VOTE_RESP, nid(1), nid(3), Term(c.term + 1)))
    assert c.role == Role.PRE_CANDIDATE
    c.step(Message(MT.PRE_VOTE_RESP, nid(1), nid(2), Term(c.term + 1)))
    assert c.role == Role.CANDIDATE  # type: ignore[comparison-overlap]  # (mypy narrows the property)


def test_pre_vote_does_not_change_the_voters_term_or_vote() -> None:
    net = Net(3)
    n2 = net.nodes[nid(2)]
    n2.step(vote_req(2, 1, 3, pre=True))
    out = net.drain(nid(2))
    assert [(m.type, m.reject, m.term) for m in out] == [(MT.PRE_VOTE_RESP, False, 3)]
    assert n2.term == 0 and n2.raft.vote == 0


@pytest.mark.parametrize("pre_vote", [True, False])
def test_leader_is_elected_from_any_start(pre_vote: bool) -> None:
    net = Net(5, pre_vote=pre_vote)
    net.tick(40)
    assert len(net.leaders()) == 1
    assert isinstance(net.leaders()[0], int) and NodeId(net.leaders()[0]) in net.ids
