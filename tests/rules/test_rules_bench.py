"""bench.rules end to end at a tiny size (no timing assertions): both rates, the target lines."""

from __future__ import annotations

import pytest

from bench import rules as bench_rules
from ledger.codec import TRANSFER_SIZE, decode_transfer
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


def test_interleaved_and_separate_methods_run_and_print_both(capsys: pytest.CaptureFixture[str]) -> None:
    batches = bench_rules._workload(60, 2, 150, 2)
    operator = Signer.generate("bench-smoke")
    rates = bench_rules.run_interleaved((0, 20), batches, 60, operator)
    assert sorted(rates) == [0, 20] and all(w > 0 and c > 0 for w, c in rates.values())
    out = bench_rules.compare_methods(batches, 60, operator, 1)
    assert sorted(out) == ["interleaved 0", "interleaved 20", "separate 0", "separate 20"]
    assert all(len(v) == 1 and v[0] > 0 for v in out.values())
    printed = capsys.readouterr().out
    assert "20-rule drop per round, separate" in printed and "20-rule drop per round, interleaved" in printed


def test_warm_up_blocks_use_other_ids_and_run_before_the_timed_ones() -> None:
    """--warm-blocks: the warm-up workload's ids start where asked (no clash with the timed blocks, whose
    transfers would otherwise fail as duplicates), and run_apply takes them."""
    timed = bench_rules._workload(60, 2, 100, 1)
    warm = bench_rules._workload(60, 2, 100, 2, first_id=1 << 40)
    ids = {decode_transfer(b[i:i + TRANSFER_SIZE]).id for b in timed + warm for i in range(0, len(b), TRANSFER_SIZE)}
    assert len(ids) == 400 and decode_transfer(warm[0][:TRANSFER_SIZE]).id == 1 << 40
    wall, cpu = bench_rules.run_apply(20, timed, 60, Signer.generate("bench-smoke"), warm)
    assert wall > 0 and cpu > 0
