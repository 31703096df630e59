"""The seeded simulator in `make test`: 1000 seeds of faults + a liveness check each, and replay."""

from __future__ import annotations

import pytest

from tests.raft.sim import run

CHUNK = 50


@pytest.mark.parametrize("start", range(0, 1000, CHUNK))
def test_safety_and_liveness_swarm(start: int) -> None:
    for seed in range(start, start + CHUNK):
        run(seed, steps=600)


@pytest.mark.parametrize("start", [10_000, 10_050])
def test_five_node_swarm(start: int) -> None:
    for seed in range(start, start + CHUNK):
        run(seed, steps=600, nodes=5)


def test_a_seed_replays_exactly() -> None:
    a, b = run(4242), run(4242)
    assert a.trace.hexdigest() == b.trace.hexdigest()
    assert a.step_no == b.step_no
    assert run(4243).trace.hexdigest() != a.trace.hexdigest()
