"""bench.rules end to end at a tiny size (no timing assertions): both rates, the target lines."""

from __future__ import annotations

import pytest

from bench import rules as bench_rules
from ledger.note import Signer


def test_rules_bench_applies_and_prints_the_target_on_both_clocks(capsys: pytest.CaptureFixture[str]) -> None:
    batches = bench_rules._workload(60, 2, 150, 1)
    operator = Signer.generate("bench-smoke")
    best: dict[int, float] = {}
    best_cpu: dict[int, float] = {}
    for n in (0, 20):
        best[n], best_cpu[n] = bench_rules.run_apply(n, batches, 60, operator)
        assert best[n] > 0 and best_cpu[n] > 0
    drop = 100 * (1 - best_cpu[20] / best_cpu[0])
    bench_rules.print_targets(best, best_cpu, {"rust_dict_activation": 1.0}, [drop, drop + 10.0, drop + 2.0])
    out = capsys.readouterr().out
    assert "per CPU-second" in out and "per wall-second" in out
    assert out.count("20 rules >=") == 2 and "baseline" in out
    # the verdict line: the median of the paired rounds (here the middle value, drop + 2)
    assert f"drop median {drop + 2.0:.1f}% over 3 rounds" in out
