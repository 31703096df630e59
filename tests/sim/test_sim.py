"""The seeded simulator as a test: >= 1000 seeds of faults (safety checkers after every step), each
followed by a liveness phase, plus exact replay of a seed; and the same with the real ledger as the
replicated state machine (ledger mode), whose checkers are shown to catch a non-deterministic replica."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consensus.types import NodeId
from tests.sim.ledger_app import LedgerApp
from tests.sim.simulator import Options, SafetyViolation, Simulator, run

CHUNK = 50


@pytest.mark.parametrize("start", range(0, 1000, CHUNK))
def test_three_nodes_safety_then_liveness(start: int) -> None:
    for seed in range(start, start + CHUNK):
        run(seed, Options(nodes=3, steps=600))


@pytest.mark.parametrize("start", range(100_000, 100_200, CHUNK))
def test_five_nodes_safety_then_liveness(start: int) -> None:
    for seed in range(start, start + CHUNK):
        run(seed, Options(nodes=5, steps=600))


def test_faults_really_happen() -> None:
    """The swarm is only worth something if it exercises the hard paths."""
    totals = {"crashes": 0, "snapshots": 0, "conf_changes": 0, "transfers": 0, "reads": 0, "early_sends": 0}
    terms = 0
    for seed in range(40):
        sim = run(seed, Options(nodes=3, steps=600))
        terms += len(sim.leaders)
        for k in totals:
            totals[k] += sim.stats[k]
    assert all(v > 0 for v in totals.values()), totals
    assert terms > 80  # leaders change often


def test_a_seed_replays_to_the_same_trace() -> None:
    a, b = run(4242), run(4242)
    assert a.trace.hexdigest() == b.trace.hexdigest()
    assert a.step_no == b.step_no and a.stats == b.stats
    assert run(4243).trace.hexdigest() != a.trace.hexdigest()


def test_liveness_without_faults_is_quick() -> None:
    sim = Simulator(7, Options(faults=False))
    ticks = sim.run_liveness()
    assert ticks <= 4 * 10 * 2  # a few election timeouts


def test_checkers_catch_a_driver_that_sends_before_fsync() -> None:
    """A broken driver (messages leave before the fsync) must be caught by some seed: the checkers
    have teeth. (A liveness or safety failure both count: acknowledged data was lost.)"""
    caught = 0
    for seed in range(200):
        try:
            run(seed, Options(nodes=3, steps=600, bug_send_before_sync=True, crash_in_window=0.05))
        except SafetyViolation:
            caught += 1
    assert caught > 0


# -- ledger mode: the real ledger state machine (tests/sim/ledger_app.py) --------------------------------

LEDGER_EXERCISED = ("snapshots", "crashes", "ledger_ok", "ledger_exists", "ledger_failed", "ledger_posted",
                    "ledger_voided", "ledger_expired", "ledger_compared")


def _ledger_swarm(seeds: range, nodes: int) -> None:
    """Every seed passes the checkers (real ledger heads at equal applied index, snapshot heads,
    balanced and byte-identical ledgers at the end), and the chunk exercises the hard paths:
    snapshots installed, crashes, transfers applied, retried, refused, posted, voided, expired."""
    totals = dict.fromkeys(LEDGER_EXERCISED, 0)
    for seed in seeds:
        sim = run(seed, Options(nodes=nodes, steps=600, ledger=True))
        for k in totals:
            totals[k] += sim.stats[k]
    assert all(v > 0 for v in totals.values()), totals


@pytest.mark.parametrize("start", range(0, 200, CHUNK))
def test_ledger_three_nodes(start: int) -> None:
    _ledger_swarm(range(start, start + CHUNK), nodes=3)


@pytest.mark.parametrize("start", range(100_000, 100_050, 25))
def test_ledger_five_nodes(start: int) -> None:
    _ledger_swarm(range(start, start + 25), nodes=5)


def test_ledger_seed_replays_to_the_same_trace() -> None:
    a, b = run(4242, Options(ledger=True)), run(4242, Options(ledger=True))
    assert a.trace.hexdigest() == b.trace.hexdigest()
    assert a.stats == b.stats
    assert [n.app.head for n in a.nodes.values()] == [n.app.head for n in b.nodes.values()]
    assert a.stats["ledger_blocks"] > 0 and a.stats["ledger_ok"] > 0


def test_checkers_catch_a_replica_that_applies_with_its_own_clock() -> None:
    """A non-deterministic ledger replica (node 2 ignores the leader's timestamp and uses its own clock)
    must be caught: the per-entry head check compares real ledger block hashes."""
    for seed in range(5):
        with pytest.raises(SafetyViolation, match="different application head"):
            run(seed, Options(nodes=3, steps=600, ledger=True, bug_ledger_clock_node=2))


def _tampered(change: Callable[[bytes], bytes]) -> Simulator:
    sim = run(11, Options(nodes=3, steps=300, ledger=True, membership=False))
    sim.check_ledgers()  # settled: all three members at one applied index, compared
    assert sim.stats["ledger_compared"] == 2
    app = sim.nodes[NodeId(2)].app
    assert isinstance(app, LedgerApp)
    with app.store.read() as txn:
        key, value = next(iter(txn.range("accounts")))
    with app.store.write() as txn:
        txn.put("accounts", key, change(value))
    return sim


def test_end_check_catches_different_account_tables() -> None:
    sim = _tampered(lambda v: v[:-8] + bytes(8))  # another creation timestamp, balances untouched
    with pytest.raises(SafetyViolation, match="different account tables"):
        sim.check_ledgers()


def test_end_check_catches_unbalanced_ledger() -> None:
    def more_credits(v: bytes) -> bytes:
        b = bytearray(v)
        b[112:120] = (int.from_bytes(b[112:120], "little") + 1).to_bytes(8, "little")  # credits posted lo
        return bytes(b)

    sim = _tampered(more_credits)
    with pytest.raises(SafetyViolation, match="does not balance"):
        sim.check_ledgers()
