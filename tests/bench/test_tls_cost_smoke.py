"""bench/tls_cost.py runs end to end at a tiny size (both nodes, both modes) and writes strict JSON.
No timing assertions: the ratio is reported, never judged here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import tls_cost

pytestmark = pytest.mark.integration


def test_tls_cost_bench_runs_small(tmp_path: Path) -> None:
    assert tls_cost.main(["--transfers", "300", "--rounds", "1", "--results-dir", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("tls_cost-*.json")
    data = json.loads(out.read_text())
    assert set(data["median_tx_per_s"]) == {"insecure", "tls"}
    assert data["tls_over_insecure"] > 0 and "cpu_tls_over_insecure" in data
