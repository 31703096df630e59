"""The auditor's and the PSP-signature benches run end to end at tiny sizes (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from bench import audit_verify, psp_verify


def test_audit_verify_bench_replays_and_prints_its_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_verify.main(["--transfers", "3000", "--accounts", "200", "--block", "1000", "--repeat", "1",
                              "--signed", "500", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["entries"] == 3200 and out["blocks"] == 4 and out["seed"] == audit_verify.SEED
    assert out["entries_per_s"] > 0 and out["hash_floor_per_s"] > 0 and out["target_per_s"] == 300_000
    assert out["entries_per_cpu_s"] > 0 and out["hash_floor_per_cpu_s"] > 0
    assert out["target_met_cpu"] == (out["entries_per_cpu_s"] >= 300_000)


@pytest.mark.integration
def test_psp_verify_bench_isolated_and_ingest(capsys: pytest.CaptureFixture[str]) -> None:
    assert psp_verify.main(["--batches", "1", "--batch", "300", "--repeat", "1", "--ingest", "--ingest-batches",
                            "3", "--time-limit", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["threads"] for r in out["results"]] == [1, 2]
    assert all(r["ceiling_per_s"] > 0 and r["verify_batch_per_s"] > 0 for r in out["results"])
    signed, grouped, unsigned = out["ingest"]
    assert signed["signed"] and grouped["signed"] and not unsigned["signed"]
    assert grouped["mode"] == f"batch-signed/{psp_verify.GROUP}"
    assert signed["acked"] == grouped["acked"] == unsigned["acked"] == 900
    assert signed["refused"] == grouped["refused"] == unsigned["refused"] == 0
