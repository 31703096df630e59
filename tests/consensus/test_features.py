"""Leader transfer, ReadIndex, snapshots, membership and learners, the Ready contract, config."""

from __future__ import annotations

import random

import pytest

from consensus.config import ConfigError
from consensus.errors import ConfChangeRefused, ProposalDropped
from consensus.invariant import InvariantViolation
from consensus.raft import Config, RawNode
from consensus.storage import MemoryStorage
from consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Index,
    ProgressState,
    Role,
)
from tests.consensus.harness import MT, Net, nid

# -- leader transfer (thesis §3.10) -------------------------------------------------------------------


def test_leader_transfer_hands_over_without_losing_entries() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[nid(1)].propose(b"before")
    net.settle()
    net.nodes[nid(1)].transfer_leader(3)
    with pytest.raises(ProposalDropped):
        net.nodes[nid(1)].propose(b"during")  # no proposals while handing over
    net.settle()
    assert net.leaders() == [3]
    assert net.of_type(MT.TIMEOUT_NOW, frm=1, to=3)
    net.nodes[nid(3)].propose(b"after")
    net.settle()
    net.tick(1)
    assert net.applied[nid(1)] == net.applied[nid(2)] == net.applied[nid(3)] == [b"before", b"after"]


def test_leader_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.nodes[nid(1)].propose(b"x%d" % k)
    net.settle()
    net.heal()
    net.nodes[nid(1)].transfer_leader(3)
    net.settle()
    net.tick(2)
    assert net.leaders() == [3]
    assert net.applied[nid(3)] == [b"x%d" % k for k in range(5)]


def test_leader_transfer_is_aborted_after_an_election_timeout() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(3)
    net.nodes[nid(1)].transfer_leader(3)
    with pytest.raises(ProposalDropped):
        net.nodes[nid(1)].propose(b"x")
    net.tick(11, only=[1, 2])
    net.nodes[nid(1)].propose(b"x")  # the transfer gave up: proposals are accepted again
    assert net.leaders() == [1]


def test_leader_transfer_to_a_non_voter_is_refused() -> None:
    net = Net(3, voters=[1, 2], learners=[3])
    net.elect(1)
    with pytest.raises(ConfChangeRefused):
        net.nodes[nid(1)].transfer_leader(3)


# -- ReadIndex (thesis §6.4) ------------------------------------------------------------------------


def test_read_index_needs_a_heartbeat_quorum_round_and_returns_the_commit_index() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[nid(1)].propose(b"a")
    net.settle()
    net.sent.clear()
    net.nodes[nid(1)].read_index(b"r1")
    assert not net.reads[nid(1)]
    net.settle()
    assert [(r.index, r.request_ctx) for r in net.reads[nid(1)]] == [(net.nodes[nid(1)].commit, b"r1")]
    assert {m.to for m in net.of_type(MT.HEARTBEAT, frm=1) if m.context == b"r1"} == {2, 3}


def test_read_index_on_a_deposed_leader_never_completes() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    net.nodes[nid(1)].read_index(b"stale")
    net.tick(30)
    assert not [r for r in net.reads[nid(1)] if r.request_ctx == b"stale"]


def test_read_index_waits_for_the_first_commit_of_the_leaders_term() -> None:
    net = Net(3)
    leader = net.nodes[nid(1)]
    leader.campaign()
    for _ in range(10):
        net.deliver(net.drain(nid(1)) + net.drain(nid(2)) + net.drain(nid(3)))
        if leader.role == Role.LEADER:
            break
    assert leader.log_term(leader.commit) != leader.term
    leader.read_index(b"early")
    net.settle()
    assert [(r.index, r.request_ctx) for r in net.reads[nid(1)]] == [(leader.commit, b"early")]
    assert leader.log_term(leader.commit) == leader.term


def test_follower_read_index_raises_or_forwards() -> None:
    net = Net(3)
    net.elect(1)
    with pytest.raises(ProposalDropped) as e:
        net.nodes[nid(2)].read_index(b"r")
    assert e.value.leader == 1
    net.nodes[nid(2)].read_index(b"fwd", forward=True)
    net.settle()
    assert [(r.index, r.request_ctx) for r in net.reads[nid(2)]] == [(net.nodes[nid(1)].commit, b"fwd")]


# -- snapshots --------------------------------------------------------------------------------------


def test_snapshot_catch_up_for_a_follower_behind_the_compacted_log() -> None:
    net = Net(3)
    net.elect(1)
    net.down.add(nid(3))
    for k in range(20):
        net.nodes[nid(1)].propose(b"s%d" % k)
    net.settle()
    net.tick(1)
    st = net.storage[nid(1)]
    applied = net.applied_index[nid(1)]
    st.create_snapshot(Index(applied), st.cs, b"app-state")
    assert st.first_index() == applied + 1
    net.down.clear()
    net.tick(3)
    snaps = net.of_type(MT.SNAP, frm=1, to=3)
    assert snaps and snaps[0].snapshot is not None and snaps[0].snapshot.data == b"app-state"
    assert net.storage[nid(3)].snap.index == applied
    pr = net.nodes[nid(1)].raft.tracker.progress[nid(3)]
    assert pr.state == ProgressState.REPLICATE and pr.match == net.nodes[nid(1)].last_index()
    net.nodes[nid(1)].propose(b"after")
    net.settle()
    net.tick(1)
    assert net.applied[nid(3)] == [b"after"]  # the rest came inside the snapshot


def test_snapshot_that_is_lost_is_sent_again() -> None:
    net = Net(3)
    net.elect(1)
    net.down.add(nid(3))
    for k in range(5):
        net.nodes[nid(1)].propose(b"s%d" % k)
    net.settle()
    st = net.storage[nid(1)]
    st.create_snapshot(Index(net.applied_index[nid(1)]), st.cs, b"")
    net.down.clear()
    net.drop = lambda m: m.type == MT.SNAP
    net.tick(3)
    net.nodes[nid(1)].report_snapshot(3, ok=False)
    net.heal()
    net.tick(3)
    assert net.storage[nid(3)].snap.index == st.snap.index


# -- membership (thesis §4.1) -----------------------------------------------------------------------


def test_add_learner_then_promote_when_caught_up() -> None:
    # node 4 starts with an empty log and the region's configuration, which does not include it (the
    # initial configuration is not in the log, so a joining node must be told it: node/ uses --peers)
    net = Net(4, voters=[1, 2, 3])
    assert not net.nodes[nid(4)].raft.promotable()
    leader = net.elect(1)
    for k in range(3):
        leader.propose(b"e%d" % k)
    net.settle()
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid(4)))
    net.settle()
    net.tick(3)
    assert net.nodes[nid(1)].learners == {4}
    assert net.applied[nid(4)] == [b"e0", b"e1", b"e2"]  # the learner receives the log
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, nid(4)))
    net.settle()
    net.tick(2)
    assert all(net.nodes[nid(i)].voters == {1, 2, 3, 4} for i in (1, 2, 3, 4))


def test_promoting_a_learner_that_has_not_caught_up_is_refused() -> None:
    net = Net(3, voters=[1, 2], learners=[3])
    leader = net.elect(1)
    net.down.add(nid(3))
    leader.propose(b"x")
    net.settle()
    with pytest.raises(ConfChangeRefused):
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, nid(3)))


def test_at_most_one_pending_conf_change() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.tick(1)
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid(7)))
    with pytest.raises(ConfChangeRefused):
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid(8)))
    net.settle()
    net.tick(1)
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid(8)))  # applied: next one is fine


def test_a_new_leader_takes_no_conf_change_before_applying_its_start() -> None:
    """The errata fix for single-server changes: a leader must commit (and apply) an entry of its term
    before proposing a change, or a change from an old term could be overlooked."""
    net = Net(3)
    net.elect(1)
    net.nodes[nid(1)].propose(b"x")
    net.deliver([m for m in net.drain(nid(1)) if m.to == 2])  # node 2 gets x, not its commit
    net.down.add(nid(1))
    leader = net.nodes[nid(2)]
    for _ in range(100):  # stop the moment it wins, before it commits anything of its term
        if leader.role == Role.LEADER:
            break
        leader.tick()
        net.nodes[nid(3)].tick()
        net.deliver(net.drain(nid(2)) + net.drain(nid(3)))
    assert leader.role == Role.LEADER
    assert leader.applied < leader.last_index() - 1
    with pytest.raises(ConfChangeRefused):
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid(9)))


def test_removed_leader_steps_down_and_the_rest_elect_a_new_one() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.tick(1)
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, nid(1)))
    net.settle()
    net.tick(1)
    assert leader.role == Role.FOLLOWER
    net.tick(40, only=[2, 3])
    assert net.leaders() and set(net.leaders()) <= {2, 3}


def test_removing_the_last_voter_is_refused() -> None:
    net = Net(1)
    leader = net.elect(1)
    with pytest.raises(ConfChangeRefused):
        leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, nid(1)))


def test_conf_change_encoding_round_trips() -> None:
    cc = ConfChange(ConfChangeType.ADD_VOTER, nid(5), b"127.0.0.1:7005")
    assert ConfChange.decode(cc.encode()) == cc


# -- the Ready contract -------------------------------------------------------------------------------


def test_ready_hands_out_each_entry_once_and_hard_state_only_on_change() -> None:
    net = Net(1)
    n = net.nodes[nid(1)]
    n.campaign()
    rd = n.ready()
    assert rd.hard_state is not None and rd.must_sync and len(rd.entries) == 1
    net.storage[nid(1)].persist(rd.hard_state, rd.entries, None)
    n.advance(rd)
    rd2 = n.ready()  # the leader's own persistence committed the entry
    assert rd2.entries == () and rd2.hard_state is not None and rd2.hard_state.commit == 1
    assert not rd2.must_sync  # only the commit index changed: no fsync needed
    assert [e.index for e in rd2.committed_entries] == [1]
    n.advance(rd2)
    assert not n.has_ready()


def test_ready_twice_without_advance_is_local_misuse() -> None:
    net = Net(1)
    n = net.nodes[nid(1)]
    n.campaign()
    n.ready()
    with pytest.raises(InvariantViolation):
        n.ready()


def test_step_ignores_misaddressed_and_forged_messages() -> None:
    from consensus.types import Message, Term

    net = Net(3)
    n = net.nodes[nid(1)]
    n.step(Message(MT.APP, nid(2), nid(3), Term(9)))  # not for us
    n.step(Message(MT.APP, nid(1), nid(1), Term(9)))  # from ourselves
    n.step(Message(MT.APP, nid(1), nid(0), Term(9)))  # from nobody
    assert n.term == 0 and not n.has_ready()


def test_config_is_validated() -> None:
    st = MemoryStorage(ConfState((nid(1),)))
    with pytest.raises(ConfigError):
        Config(id=0, storage=st, rng=random.Random(1))
    with pytest.raises(ConfigError):
        Config(id=1, storage=st, rng=random.Random(1), election_tick=2, heartbeat_tick=2)
    with pytest.raises(ConfigError):
        Config(id=1, storage=st, rng=random.Random(1), max_inflight_msgs=0)


def test_status_reports_progress_on_the_leader() -> None:
    net = Net(3)
    net.elect(1)
    net.tick(1)
    st = net.nodes[nid(1)].status()
    assert st.role == Role.LEADER and st.leader == 1 and st.commit == st.applied == 1
    p2 = st.progress_of(nid(2))
    assert p2 is not None and p2.match == 1 and p2.state == ProgressState.REPLICATE
    assert net.nodes[nid(2)].status().progress == ()


def test_restart_resumes_from_storage_and_applied_index() -> None:
    net = Net(3)
    net.elect(1)
    for k in range(3):
        net.nodes[nid(1)].propose(b"k%d" % k)
    net.settle()
    net.tick(1)
    net.restart(2)
    n2: RawNode = net.nodes[nid(2)]
    assert n2.applied == net.applied_index[nid(2)] and n2.commit >= n2.applied
    assert not n2.ready().committed_entries  # nothing applied twice
