"""node/loops.py: the one start/stop/round boilerplate of the node's background loops.

Real asyncio event loops, no mocks: the leader flag is a plain callable the test flips, and the
loops' rounds record what happened. Waits are bounded by a deadline, never asserted on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from node.loops import BackgroundLoop, LeaderRounds

DEADLINE_S = 10.0


async def _until(cond: Callable[[], bool]) -> None:
    """Wait (bounded) until ``cond()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not cond():
        assert loop.time() < end, "condition not reached within the deadline"
        await asyncio.sleep(0.005)


class Counting(LeaderRounds):
    failure_message = "counting round failed: %s"

    def __init__(self, is_leader: Callable[[], bool], fail_first: int = 0) -> None:
        super().__init__("counting", 0.001, is_leader, logging.getLogger("test.loops"))
        self.rounds = 0
        self.fail_first = fail_first

    async def round(self) -> int:
        self.rounds += 1
        if self.rounds <= self.fail_first:
            raise RuntimeError(f"round {self.rounds} failed")
        return self.rounds


def test_rounds_run_only_while_leader_and_stop_when_leadership_is_lost() -> None:
    leader = [False]

    async def run() -> tuple[int, int, int]:
        loop = Counting(lambda: leader[0])
        loop.start()
        await asyncio.sleep(0.05)  # many periods as a follower: no round
        as_follower = loop.rounds
        leader[0] = True
        await _until(lambda: loop.rounds >= 3)
        leader[0] = False  # leadership lost: the rounds stop, the loop keeps watching
        await asyncio.sleep(0.01)  # a round already past its leader check may still finish
        after_loss = loop.rounds
        await asyncio.sleep(0.05)
        still = loop.rounds
        assert loop.running
        await loop.stop()
        return as_follower, after_loss, still

    as_follower, after_loss, still = asyncio.run(run())
    assert as_follower == 0
    assert after_loss >= 3 and still == after_loss


def test_a_failed_round_is_logged_and_retried_next_period(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> Counting:
        loop = Counting(lambda: True, fail_first=2)
        loop.start()
        await _until(lambda: loop.rounds >= 4)
        await loop.stop()
        return loop

    with caplog.at_level(logging.WARNING, logger="test.loops"):
        loop = asyncio.run(run())
    failures = [r.getMessage() for r in caplog.records if r.name == "test.loops"]
    assert failures == ["counting round failed: round 1 failed", "counting round failed: round 2 failed"]
    assert loop.rounds >= 4 and not loop.running


def test_stop_cancels_the_task_and_is_safe_when_never_started_or_called_twice() -> None:
    async def run() -> None:
        idle = Counting(lambda: True)
        await idle.stop()  # never started
        loop = Counting(lambda: True)
        loop.start()
        loop.start()  # a second start while running: still one task
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "counting"]
        assert len(tasks) == 1
        await _until(lambda: loop.rounds >= 1)
        await loop.stop()
        assert tasks[0].cancelled() and not loop.running
        await loop.stop()  # twice
        frozen = loop.rounds
        await asyncio.sleep(0.02)
        assert loop.rounds == frozen

    asyncio.run(run())


class Crashing(BackgroundLoop):
    async def _run(self) -> None:
        raise ValueError("the store went away")


def test_a_loop_ended_by_an_error_is_logged_when_it_ends_and_stop_does_not_raise(
        caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> bool:
        loop = Crashing("crashing", logging.getLogger("test.loops"))
        loop.start()
        await _until(lambda: not loop.running)
        await loop.stop()  # a clean shutdown even so
        return loop.running

    with caplog.at_level(logging.ERROR, logger="test.loops"):
        assert asyncio.run(run()) is False
    assert [r.getMessage() for r in caplog.records if r.name == "test.loops"] == [
        "crashing stopped by an unexpected error: ValueError('the store went away')"]


def test_a_cancelled_loop_finishes_its_cleanup_before_stop_returns() -> None:
    cleaned: list[str] = []

    class Cleaning(BackgroundLoop):
        async def _run(self) -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                cleaned.append("done")

    async def run() -> None:
        loop = Cleaning("cleaning")
        loop.start()
        await asyncio.sleep(0)  # let the task reach its sleep
        await loop.stop()
        assert cleaned == ["done"]

    asyncio.run(run())
