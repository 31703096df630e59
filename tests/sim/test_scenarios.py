"""The classic traps, scripted on the simulator's pieces (storage that loses unsynced writes, the
network, the checkers), plus swarms in the configurations where the traps are most likely."""

from __future__ import annotations

import random

import pytest

from consensus.raft import Config, RawNode
from consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Index,
    Message,
    MessageType,
    NodeId,
    Role,
    Term,
)
from tests.sim.simulator import Options, SafetyViolation, SimStorage, Simulator, run

MT = MessageType
VOTERS = ConfState((NodeId(1), NodeId(2), NodeId(3)))


def _voter(storage: SimStorage) -> RawNode:
    return RawNode(Config(id=3, storage=storage, rng=random.Random(3), pre_vote=False, check_quorum=False))


def _answer(n: RawNode, storage: SimStorage, candidate: int, fsync: bool) -> list[Message]:
    """Drive one Ready by the contract — or crash before the fsync (then nothing was sent)."""
    n.step(Message(MT.VOTE, NodeId(3), NodeId(candidate), Term(5)))
    rd = n.ready()
    hs = rd.hard_state
    if hs is not None:  # None: nothing changed (a refusal)
        assert rd.must_sync
        storage.write(lambda s: s.set_hard_state(hs))
    if not fsync:
        storage.crash()
        return []
    storage.sync()
    out = list(rd.messages)
    n.advance(rd)
    return out


def test_vote_lost_on_restart_before_fsync_was_never_announced() -> None:
    """A vote written but not fsynced is lost in a crash; that is safe only because the grant had not
    been sent. After the restart the node may vote for someone else in that term."""
    storage = SimStorage(VOTERS)
    n = _voter(storage)
    assert _answer(n, storage, candidate=1, fsync=False) == []
    n = _voter(storage)  # restart from what survived
    assert n.raft.vote == 0 and n.term == 0
    out = _answer(n, storage, candidate=2, fsync=True)
    assert [(m.to, m.reject) for m in out if m.type == MT.VOTE_RESP] == [(2, False)]


def test_vote_persisted_before_the_grant_survives_restart() -> None:
    """Once the grant left, the vote is on disk: after a crash the node refuses a second candidate."""
    storage = SimStorage(VOTERS)
    n = _voter(storage)
    out = _answer(n, storage, candidate=1, fsync=True)
    assert [(m.to, m.reject) for m in out if m.type == MT.VOTE_RESP] == [(1, False)]
    storage.crash()
    n = _voter(storage)
    assert n.raft.vote == 1 and n.term == 5
    out = _answer(n, storage, candidate=2, fsync=True)
    assert [(m.to, m.reject) for m in out if m.type == MT.VOTE_RESP] == [(2, True)]


def _sim(seed: int = 1, **kw: object) -> Simulator:
    return Simulator(seed, Options(faults=False, membership=False, compaction=False, **kw))  # type: ignore[arg-type]


def _until(sim: Simulator, cond: object, steps: int = 400) -> None:
    for _ in range(steps):
        sim.step()
        if callable(cond) and cond():
            return
    raise AssertionError("condition not reached")


def test_stale_leader_steps_down_and_nothing_it_proposed_alone_is_applied() -> None:
    sim = _sim()
    _until(sim, lambda: sim.leader() is not None)
    old = sim.leader()
    assert old is not None
    others = [i for i in sim.ids if i != old.id]
    sim.cut = {(old.id, o) for o in others} | {(o, old.id) for o in others}
    old.raw.propose(b"stale-write")
    _until(sim, lambda: any(sim.nodes[i].raw.role == Role.LEADER for i in others))
    sim.cut.clear()
    _until(sim, lambda: sim.nodes[old.id].raw.role == Role.FOLLOWER and sim.nodes[old.id].raw.leader != old.id)
    for _ in range(100):
        sim.step()
    assert all(data != b"stale-write" for _, data in sim.applied_at.values())
    sim.run_liveness()


def test_duplicated_vote_responses_never_elect_two_leaders() -> None:
    """Every message delivered twice (and reordered): the checkers see one leader per term."""
    for seed in range(60):
        run(seed, Options(steps=300, duplicate=1.0, pre_vote=seed % 2 == 0))


def test_removed_node_that_keeps_campaigning_cannot_disrupt() -> None:
    sim = _sim(seed=3, pre_vote=False)  # without PreVote: only leader stickiness protects
    _until(sim, lambda: sim.leader() is not None)
    leader = sim.leader()
    assert leader is not None
    victim = next(i for i in sim.ids if i != leader.id)
    for _ in range(30):  # the new leader applies its first entry before taking a change
        sim.step()
    leader.raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, victim))
    _until(sim, lambda: victim not in leader.raw.voters)
    term = leader.raw.term
    # the removed node never learns it was removed: cut it off from the news, let it campaign
    sim.cut = {(i, victim) for i in sim.ids if i != victim}
    for _ in range(300):
        sim.step()
    assert sim.nodes[victim].raw.term > term  # it did campaign, at ever higher terms
    assert leader.raw.role == Role.LEADER and leader.raw.term == term
    sim.cut.clear()
    for _ in range(100):
        sim.step()
    assert leader.raw.role == Role.LEADER and leader.raw.term == term


@pytest.mark.parametrize(("pre_vote", "check_quorum"), [(False, False), (True, False), (False, True)])
def test_figure_8_prone_swarm_without_prevote_or_checkquorum(pre_vote: bool, check_quorum: bool) -> None:
    """Without PreVote/CheckQuorum terms churn much more, which is where Figure 8 histories (an old
    term's entry on a majority, overwritten later) arise; the commit rule must hold throughout."""
    for seed in range(200, 260):
        run(seed, Options(steps=600, pre_vote=pre_vote, check_quorum=check_quorum))


def test_a_failure_names_the_seed_the_step_and_the_trace() -> None:
    sim = _sim(seed=9)
    sim.step()
    with pytest.raises(SafetyViolation) as e:
        sim.fail("demo")
    text = str(e.value)
    assert "seed 9 step 1" in text and "python -m tests.sim --seed 9" in text and "last events" in text


def test_read_index_never_returns_less_than_an_earlier_acknowledged_write() -> None:
    sim = _sim(seed=5)
    _until(sim, lambda: sim.leader() is not None)
    for _ in range(50):
        sim.step()
    leader = sim.leader()
    assert leader is not None
    idx = leader.raw.propose(b"w")
    _until(sim, lambda: Index(idx) in sim.acked)
    sim.reads_started[b"rx"] = idx
    leader.raw.read_index(b"rx")
    _until(sim, lambda: sim.stats["reads"] > 0)


# -- a voter that loses its state; an apply step that raises (issue #12 items 2 and 8) -----------------


def _double_vote_script(bug: bool) -> Simulator:
    """Nodes 1 and 2 campaign in term 1, cut off from each other. Node 3 votes for 1 (1 leads), then
    loses its whole state; 2's term-1 vote request, held back until then, reaches the wiped node."""
    sim = Simulator(4, Options(faults=False, membership=False, compaction=False, pre_vote=False,
                               check_quorum=False, bug_wiped_voter_rejoins=bug))
    one, two, three = (sim.nodes[NodeId(i)] for i in (1, 2, 3))
    sim.cut = {(NodeId(1), NodeId(2)), (NodeId(2), NodeId(1))}
    one.raw.campaign()
    sim._drain(one)
    two.raw.campaign()
    sim._drain(two)
    held = [x for x in sim.net if x[2].frm == 2 and x[2].to == 3]
    sim.net = [x for x in sim.net if x not in held]
    _until(sim, lambda: sim.nodes[NodeId(1)].raw.role == Role.LEADER, steps=5)
    sim.wipe(three)
    sim.cut |= {(NodeId(1), NodeId(3))}  # the new leader's news does not reach node 3 first
    sim.net = [(sim.step_no, seq, m) for _, seq, m in held] + sim.net
    for _ in range(6):
        sim.step()
    return sim


def test_wiped_voter_that_votes_again_is_caught_by_the_checker() -> None:
    """Without the guard the wiped voter grants a second vote in term 1: two leaders in one term."""
    with pytest.raises(SafetyViolation, match="two leaders in term 1"):
        _double_vote_script(bug=True)


def test_wiped_voter_kept_down_by_the_guard_never_votes_twice() -> None:
    sim = _double_vote_script(bug=False)
    assert not sim.nodes[NodeId(3)].up and sim.nodes[NodeId(3)].wiped
    assert sim.nodes[NodeId(2)].raw.role != Role.LEADER or sim.nodes[NodeId(2)].raw.term > 1
    sim.run_liveness()  # the other two carry on


def test_swarm_with_a_wiped_voter_stays_safe_and_live() -> None:
    wiped = sum(run(seed, Options(steps=500, membership=False, wipe=0.01)).wiped_once for seed in range(300, 320))
    assert wiped >= 10, f"only {wiped} of 20 runs wiped a voter: the scenario is not exercised"


def test_apply_step_that_raises_once_restarts_from_durable_state() -> None:
    raised = 0
    for seed in range(400, 420):
        sim = run(seed, Options(steps=500, apply_raises=0.01))
        raised += any(e[1] == "apply-raises" for e in sim.events) or sim.stats["crashes"] > 0
    assert raised >= 10, f"only {raised} of 20 runs crashed a node: the scenario is not exercised"
    for seed in range(420, 424):
        run(seed, Options(steps=300, apply_raises=0.01, ledger=True))


def test_apply_step_that_raises_on_every_replica_halts_and_the_checker_says_so() -> None:
    """A poison entry (every replica raises applying it) must never be committed; if it is, the region
    halts, and the liveness checker catches that instead of passing quietly."""
    sim = _sim(seed=6, bug_apply_poison=b"poison")
    _until(sim, lambda: sim.leader() is not None)
    leader = sim.leader()
    assert leader is not None
    leader.raw.propose(b"poison")
    for _ in range(50):
        sim.step()
    with pytest.raises(SafetyViolation, match="liveness"):
        sim.run_liveness()
