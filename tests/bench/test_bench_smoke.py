"""Smoke test: the benchmark modules run end to end at tiny sizes and write well-formed JSON and PNGs.

No timing assertions (timing never decides pass/fail). PostgreSQL and etcd are not started here
(they may need apt installs); their encoders and the skip path are checked without servers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import blake3
import pytest

from bench import engine, fold_shape, pair_scale, peers, plot, region, report, scale
from bench import sdk as sdk_bench
from ledger import native, risk
from ledger.codec import TRANSFER_SIZE

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


def _strict_json(path: Path) -> dict[str, Any]:
    def bad(const: str) -> Any:
        raise AssertionError(f"{path.name}: non-finite number {const} in JSON")

    data = json.loads(path.read_text(), parse_constant=bad)
    assert isinstance(data, dict)
    m = data["machine"]
    assert m["cpus"] and m["python"] and m["kernel"] and "cpu_model" in m
    return data


def _one(d: Path, kind: str) -> Path:
    files = sorted(d.glob(f"{kind}-*.json"))
    assert len(files) == 1, files
    return files[0]


def _check_rows(rows: list[dict[str, Any]]) -> None:
    assert rows
    for r in rows:
        assert r["transfers"] > 0
        assert r["tx_per_s"] > 0 and math.isfinite(r["p99_ms"])
        assert set(r["results"]) == {"ok"}, r["results"]  # funded, debit-limited accounts: all succeed


@pytest.mark.timeout(240)
def test_region_peers_plot_scale_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert region.main(["--scale", "0", "--half-rate-seconds", "0.3", "--time-limit", "20",
                        "--results-dir", str(out)]) == 0
    reg = _strict_json(_one(out, "region"))
    _check_rows(reg["single"])
    _check_rows(reg["region"])
    assert [r["batch"] for r in reg["region"]] == [100, 1000, 8189]
    assert {(h["setup"], h["batch"]) for h in reg["half_rate"]} == {("single", 100), ("single", 1000),
                                                                     ("region", 100), ("region", 1000)}
    assert set(reg["ratios"]) == {"100", "1000", "8189"}
    streams = {h["setup"]: h for h in reg["streams"]}
    assert set(streams) == {"single", "region"}
    _check_rows(list(streams.values()))
    assert all(h["streams"] == 64 and h["payments_per_request"] == 1 for h in streams.values())
    assert set(reg["region"][-1]["rss_mib"]) == {"leader", "follower-1", "follower-2"}
    assert all(v["rss"] > 0 for v in reg["region"][-1]["rss_mib"].values())

    assert peers.main(["--scale", "0", "--skip", "sovledger-3,postgres,etcd", "--no-install", "--time-limit", "20",
                       "--results-dir", str(out)]) == 0
    pr = _strict_json(_one(out, "peers"))
    _check_rows(pr["systems"]["sovledger-1"]["rows"])
    assert pr["systems"]["postgres"] == {"skipped": "--skip"}
    assert pr["baseline_tx_per_s"] > 0

    assert plot.main(["--dir", str(out)]) == 0
    png = sorted(out.glob("bench-*.png"))
    assert png and png[0].read_bytes()[:8] == PNG
    combined = _strict_json(_one(out, "bench"))
    assert combined["region"] and combined["peers"]

    assert scale.main(["--transfers", "20000", "--chunk", "10000", "--results-dir", str(out)]) == 0
    sc = _strict_json(_one(out, "scale"))
    assert [c["million"] for c in sc["chunks"]] == [1, 2]
    assert sc["chunks"][-1]["total"] == 20000
    assert all(c["disk_bytes_per_transfer"] > 0 for c in sc["chunks"])
    assert all(c["rss_mib"]["rss"] > 0 and c["rss_mib"]["anon"] > 0 for c in sc["chunks"])
    assert math.isfinite(sc["degradation_raw_pct"]) and math.isfinite(sc["degradation_normalised_pct"])
    assert sorted(out.glob("scale-*.png"))[0].read_bytes()[:8] == PNG

    assert "### region" in report.summarize(out) and "### scale" in report.summarize(out)
    issue = report.issue_table(out)
    assert "64 streams × 1 payment" in issue and "RSS per node" in issue and "PostgreSQL" in issue


@pytest.mark.timeout(180)
def test_sdk_bench_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert sdk_bench.main(["--quick", "--time-limit", "20", "--results-dir", str(out)]) == 0
    data = _strict_json(_one(out, "sdk"))
    assert data["node_capacity"]["tx_per_s"] > 0 and set(data["node_capacity"]["results"]) == {"ok"}
    rows = data["rows"]
    assert {(r["against"], r["path"], r["mode"]) for r in rows} == {
        (a, p, m) for a in ("node", "null") for p in sdk_bench.PATHS for m in sdk_bench.MODES}
    for r in rows:  # every payment of every row acknowledged OK, CPU measured
        assert r["transfers"] > 0 and r["ok"] == r["transfers"], r
        assert r["client_cpu_us"] > 0 and r["tx_per_s"] > 0


def test_postgres_copy_payload_and_hash_chain() -> None:
    led = peers.PgLedger(conn=None)
    recs = region.transfer_stream(3)
    payload, lo, hi = led.encode(recs)
    assert (lo, hi) == (1, 3)
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00") and payload.endswith(b"\xff\xff")
    row = peers._COPY_ROW.size
    assert len(payload) == len(peers._COPY_HEADER) + 3 * row + 2
    chain = bytes(32)
    for i in range(3):
        chain = blake3.blake3(chain + recs[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE]).digest()
    assert led.chain == chain and payload[-2 - 32 : -2] == chain
    _, lo2, _ = led.encode(region.transfer_stream(1, first_id=(1 << 64) + 3))
    assert lo2 == 4  # sequence and chain continue across batches


def test_etcd_txn_encoding() -> None:
    put = peers.etcd_put(b"k" * 3, b"v" * 200)
    assert put == b"\x0a\x03kkk" + b"\x12\xc8\x01" + b"v" * 200  # key=1, value=2 (varint length 200)
    txn = peers.etcd_txn([put, put])
    inner = b"\x12" + bytes([len(put) & 0x7F | 0x80, len(put) >> 7]) + put  # RequestOp.request_put = 2
    outer = b"\x12" + bytes([len(inner) & 0x7F | 0x80, len(inner) >> 7]) + inner  # TxnRequest.success = 2
    assert txn == outer * 2


def test_missing_peer_is_skipped_without_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    monkeypatch.setattr(peers, "pg_bindir", lambda: None)
    monkeypatch.setattr(peers.shutil, "which", lambda _name: None)
    with pytest.raises(peers.Skip, match="not installed"), peers.postgres_instance(Console(), install=False):
        pass
    with pytest.raises(peers.Skip, match="not installed"), peers.etcd_cluster(Console(), install=False):
        pass


@pytest.mark.timeout(120)
def test_engine_bench_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    if not native.available():
        pytest.skip("native engine not built (no C compiler)")
    before = native.active()
    assert engine.main(["--transfers", "600", "--block", "200", "--json"]) == 0
    assert native.active() == before  # the bench puts the engine setting back
    row = json.loads(capsys.readouterr().out)
    assert row["transfers"] == 600
    assert set(row["apply_us_per_transfer"]) == {"python", "native"}


@pytest.mark.timeout(120)
def test_store_bench_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import store
    from ledger import lmdb_store

    write, put_many = lmdb_store.LmdbStore.write, lmdb_store._LmdbWrite.put_many
    assert store.main(["--transfers", "600", "--block", "200", "--json"]) == 0
    assert (lmdb_store.LmdbStore.write, lmdb_store._LmdbWrite.put_many) == (write, put_many)  # unwrapped again
    res = json.loads(capsys.readouterr().out)
    assert res["transfers"] == 600 and res["blocks"] == 3
    apply = res["phases"]["apply"]
    assert apply["commits_per_block"] == 1 and res["phases"]["raft"]["commits_per_block"] == 1
    for table in ("leaves", "transfers", "nodes"):  # one row per transfer each (nodes: amortised, n - 1 per n)
        assert 0.9 < apply["tables"][table]["rows_per_transfer"] <= 1.0
    assert res["phases"]["raft"]["tables"]["raftlog"]["bytes_per_transfer"] > 176  # the records, once


@pytest.mark.timeout(120)
def test_intake_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import intake

    before = native.active()
    assert intake.main(["--batch", "100", "--signatures", "8", "--repeat", "1", "--json",
                        "--results-dir", str(tmp_path)]) == 0
    assert native.active() == before  # the bench puts the engine setting back
    out = json.loads(capsys.readouterr().out)
    _strict_json(_one(tmp_path, "intake"))
    steps = {r["step"]: r for r in out["rows"]}
    assert len(steps) == 8 and all(r["python_us"] > 0 for r in steps.values())
    paired = [r for r in steps.values() if r["native_us"] is not None]
    assert len(paired) == (4 if native.available() else 0)


def test_guard_store_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import guard_store

    assert guard_store.main(["--stores", "3", "--rounds", "2", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["round 1", "round 2"]
    assert all("json+rename" in ln and "two-slot" in ln for ln in lines)
    assert list(tmp_path.iterdir()) == []  # its files are removed


@pytest.mark.skipif(risk.RiskTable is None, reason="the C risk table is not built (no C compiler)")
def test_fold_shape_bench_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    """The journal sort bench: each shape's row build and fold run (and the fold equals the reference)."""
    assert fold_shape.main(["--rounds", "1", "--pairs", "300"]) == 0
    out = capsys.readouterr().out
    assert all(shape in out for shape in ("spread", "one payer", "random ids"))


def test_pair_scale_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The pair store bench at tiny sizes: one row per size, the empty table first, both layouts timed, the
    lookup figure at the size asked, a JSON file."""
    assert pair_scale.main(["--sizes", "2000", "--batch", "300", "--lookup-at", "2000",
                            "--results-dir", str(tmp_path)]) == 0
    data = json.loads(next(tmp_path.glob("pair_scale-*.json")).read_text())
    assert [r["table_pairs"] for r in data["rows"]] == [0, 2000]
    assert all(r["old_ns"] > 0 and r["new_ns"] > 0 and r["window_new_ns"] > 0 for r in data["rows"])
    assert data["rows"][0]["folds"] == 6  # 0 -> 2000 leaves room for six folds of 300 before the next size
    assert data["lookups"]["table_pairs"] == 2000 and data["lookups"]["new_absent_ns"] > 0
    out = capsys.readouterr().out
    assert "new/old" in out and "absent" in out
