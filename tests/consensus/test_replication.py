"""Log replication and commitment (Raft §5.3, §5.4), one test per claim."""

from __future__ import annotations

from consensus.types import Entry, EntryType, HardState, Index, Message, ProgressState, Role, Term
from tests.consensus.harness import MT, Net, nid


def test_replicated_entries_are_applied_in_order_on_every_node() -> None:
    net = Net(3)
    net.elect(1)
    for k in range(20):
        net.nodes[nid(1)].propose(b"p%d" % k)
    net.settle()
    net.tick(1)
    want = [b"p%d" % k for k in range(20)]
    assert net.applied[nid(1)] == net.applied[nid(2)] == net.applied[nid(3)] == want


def test_new_leader_appends_an_empty_entry_of_its_term() -> None:
    net = Net(3)
    leader = net.elect(2)
    e = leader.raft.log.slice(Index(1), Index(2))[0]
    assert e == Entry(leader.term, Index(1), EntryType.NORMAL, b"")
    assert leader.commit == 1  # committed once a quorum persisted it


def test_follower_refuses_proposals_with_a_leader_hint() -> None:
    from consensus.errors import ProposalDropped

    net = Net(3)
    net.elect(2)
    try:
        net.nodes[nid(1)].propose(b"x")
    except ProposalDropped as e:
        assert e.leader == 2
    else:
        raise AssertionError("a follower accepted a proposal")


def test_leader_counts_itself_only_after_persisting() -> None:
    """'Committed' means 'fsynced by a quorum': the leader's own copy counts after advance()."""
    net = Net(3)
    leader = net.elect(1)
    idx = leader.propose(b"x")
    rd = leader.ready()
    assert [e.index for e in rd.entries] == [idx] and rd.must_sync
    # a follower acknowledges before the leader finished persisting: 1 of 3 is not a quorum
    leader.step(Message(MT.APP_RESP, nid(1), nid(2), leader.term, index=idx))
    assert leader.commit < idx
    net.storage[nid(1)].persist(rd.hard_state, rd.entries, None)
    leader.advance(rd)
    assert leader.commit == idx


def test_log_matching_conflicting_follower_entries_are_overwritten() -> None:
    """§5.3: the leader forces followers' logs to duplicate its own; uncommitted conflicting entries
    are replaced, and logs then agree entry for entry."""
    net = Net(3, check_quorum=False)
    net.elect(1)
    net.nodes[nid(1)].propose(b"base")
    net.settle()
    net.isolate(1)
    for k in range(3):
        net.nodes[nid(1)].propose(b"orphan%d" % k)  # only the old leader has these
    net.settle()
    net.nodes[nid(2)].campaign()
    net.settle()
    net.tick(1)
    assert net.nodes[nid(2)].role == Role.LEADER
    net.nodes[nid(2)].propose(b"new")
    net.settle()
    net.heal()
    net.tick(3)
    logs = [[(e.index, e.term, e.data) for e in n.raft.log.slice(Index(1), Index(n.last_index() + 1))]
            for n in net.nodes.values()]
    assert logs[0] == logs[1] == logs[2]
    assert all(b"orphan" not in d for d in net.applied[nid(1)])
    assert net.applied[nid(1)] == [b"base", b"new"]


def test_leader_completeness_a_new_leader_holds_every_committed_entry() -> None:
    """§5.4: the election restriction makes every committed entry present in later leaders' logs."""
    for seed in range(10):
        net = Net(5, seed=seed)
        net.elect(1)
        for k in range(5):
            net.nodes[nid(1)].propose(b"c%d" % k)
        net.settle()
        committed = net.nodes[nid(1)].commit
        net.down.add(nid(1))
        net.tick(60)
        (new,) = net.leaders()
        log = net.nodes[new].raft.log
        assert log.last_index() >= committed
        assert [e.data for e in log.slice(Index(2), Index(committed + 1))] == [b"c%d" % k for k in range(5)]


def test_figure_8_a_leader_does_not_commit_an_old_term_entry_by_counting_replicas() -> None:
    """§5.4.2 / Figure 8. State (c): S1 and S2 hold a term-2 entry at index 2; S5 holds a term-3 entry
    there (it was leader of term 3, voted by S3, S4). S1 is elected in term 4 and copies its term-2
    entry to S3: it is now on a majority, but S5 could still win (its last term 3 > 2) and overwrite
    it, so it must NOT be committed by counting. It commits only when the leader's term-4 entry
    reaches a majority (state (e))."""
    net = Net(5, check_quorum=False, pre_vote=False, max_size_per_msg=1)
    e1 = Entry(Term(1), Index(1))
    logs = {1: [e1, Entry(Term(2), Index(2), data=b"t2")], 2: [e1, Entry(Term(2), Index(2), data=b"t2")],
            3: [e1], 4: [e1], 5: [e1, Entry(Term(3), Index(2), data=b"t3")]}
    hard = {1: (3, 0), 2: (3, 0), 3: (3, 5), 4: (3, 5), 5: (3, 5)}  # term 3 was S5's
    for i, ents in logs.items():
        net.storage[nid(i)].append(ents)
        net.storage[nid(i)].set_hard_state(HardState(Term(hard[i][0]), nid(hard[i][1]), Index(1)))
        net.restart(i)
    net.down = {nid(5)}  # S5 is down while S1 campaigns
    # the term-4 entry goes nowhere (S3's first probe passes: S3 rejects it, lacking index 2)
    def own_term(m: Message) -> bool:
        return any(e.term == 4 for e in m.entries) and not (m.to == 3 and m.index == 2)

    net.drop = lambda m: m.type == MT.APP and (own_term(m) or m.to == 4)
    s1 = net.elect(1)
    assert s1.term == 4
    assert [net.nodes[nid(i)].log_term(2) for i in (1, 2, 3)] == [2, 2, 2]  # a majority of 5 holds it
    assert s1.commit < 2, "an entry of an earlier term was committed by counting replicas"
    net.drop = lambda m: m.type == MT.APP and m.to == 4
    net.tick(2)  # heartbeat responses make the leader retry the dropped appends
    assert s1.commit >= 3 and s1.log_term(2) == 2  # committed indirectly, with the term-4 entry


def test_fast_backoff_skips_a_whole_conflicting_term_per_round_trip() -> None:
    """§5.3 optimisation: a rejection carries the follower's term at the hint, so the leader skips all
    of its entries of terms the follower cannot match."""
    net = Net(3, check_quorum=False)
    net.elect(1)
    net.isolate(3)
    for k in range(50):
        net.nodes[nid(1)].propose(b"a%d" % k)
    net.settle()
    net.nodes[nid(1)].raft.become_follower(net.nodes[nid(1)].term, nid(0))
    # node 3 gets a long divergent tail of its own term
    net.heal()
    net.cut = {(nid(3), nid(1)), (nid(1), nid(3)), (nid(2), nid(3)), (nid(3), nid(2))}
    n3 = net.nodes[nid(3)]
    n3.raft.become_candidate()
    n3.raft.become_leader()
    for k in range(50):
        n3.propose(b"z%d" % k)
    net.drain(nid(3))
    n3.raft.become_follower(n3.term, nid(0))
    net.heal()
    net.sent.clear()
    net.elect(2)
    net.tick(3)
    rejects = net.of_type(MT.APP_RESP, frm=3)
    assert sum(1 for m in rejects if m.reject) <= 3
    assert net.nodes[nid(3)].raft.log.last_index() == net.nodes[nid(2)].raft.log.last_index()


def test_probe_state_sends_one_append_at_a_time() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.isolate(2)
    pr = leader.raft.tracker.progress[nid(2)]
    pr.become_probe()
    pr.probe_sent = False
    net.sent.clear()
    for k in range(5):
        leader.propose(b"x%d" % k)
    net.settle()
    assert len([m for m in net.of_type(MT.APP, frm=1, to=2) if m.entries]) == 1
    assert pr.state == ProgressState.PROBE and pr.probe_sent


def test_replicate_state_bounds_the_in_flight_window() -> None:
    net = Net(3, max_inflight_msgs=3, max_size_per_msg=1)
    leader = net.elect(1)
    net.tick(1)
    net.drop = lambda m: m.type == MT.APP_RESP and m.frm == 2  # node 2 never acknowledges
    net.sent.clear()
    for k in range(10):
        leader.propose(b"y%d" % k)
    net.settle()
    pr = leader.raft.tracker.progress[nid(2)]
    assert pr.state == ProgressState.REPLICATE
    assert len([m for m in net.of_type(MT.APP, frm=1, to=2) if m.entries]) == 3  # then paused
    assert pr.is_paused()
    net.heal()
    net.tick(3)
    assert net.applied[nid(2)] == [b"y%d" % k for k in range(10)]


def test_committed_entries_are_never_overwritten() -> None:
    """A conflicting append below the commit index is an invariant violation, not a silent rewrite."""
    import pytest

    from consensus.invariant import InvariantViolation

    net = Net(3)
    net.elect(1)
    net.nodes[nid(1)].propose(b"c")
    net.settle()
    net.tick(1)
    n2 = net.nodes[nid(2)]
    committed = n2.commit
    bad = Message(MT.APP, nid(2), nid(1), n2.term, Term(n2.log_term(committed - 1)), Index(committed - 1),
                  (Entry(n2.term, Index(committed), EntryType.NORMAL, b"evil"),), Index(0))
    with pytest.raises(InvariantViolation):
        n2.raft.log.maybe_append(bad.index, Term(bad.log_term), Index(0), (Entry(Term(n2.term + 1), committed),))
    n2.step(bad)  # the same message from the leader's own term: matches nothing new, harmless
    assert n2.commit == committed
