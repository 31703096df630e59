"""Minutes of full load with a follower down: the live nodes' memory stays within its bound.

The long form of ``tests/node/test_memory_region.py`` (same region, load and bounds; that one runs
30 s of load inside ``make test``). Here the dead peer's send queue, the entry cache and the map
trimmer all run for long enough to wrap many times; the bound is a limit on memory, not on time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.node.test_memory_region import check_bounds, run_with_follower_down

pytestmark = [pytest.mark.integration, pytest.mark.faults_slow]


def test_a_follower_down_for_minutes_under_full_load_keeps_live_nodes_within_bound(tmp_path: Path) -> None:
    samples, row = run_with_follower_down(180.0, tmp_path)
    check_bounds(samples, row)
