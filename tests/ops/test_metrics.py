"""Every metric docs/operations.md documents is exported by a real region's leader, and the Grafana
dashboard in docker/ queries only documented metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from clients.client import LedgerClient
from ledger.types import Account, Result, Transfer, TransferFlags
from sovledger.cluster import Cluster
from tests.integration.nodeproc import ROOT, free_port, kill_region

pytestmark = pytest.mark.integration

ROW = re.compile(r"^\| `(sovledger_[a-z_]+)` \| (histogram|counter|gauge) \|", re.M)


def documented() -> dict[str, str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("### Metrics"):]
    names = dict(ROW.findall(section))
    assert len(names) >= 15, "the metrics table in docs/operations.md was not found"
    return names


def exported_series(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_every_documented_metric_is_exported(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "region")
    cluster.create(3, "eu-west", [])
    metrics = {}
    for n in cluster.nodes:
        metrics[n.node_id] = f"127.0.0.1:{free_port()}"
        cluster.start(n, ["--metrics", metrics[n.node_id]])
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            assert [r.result for r in c.create_accounts([Account(1, 1, 1), Account(2, 1, 1)])] == [0, 0]
            res = c.create_transfers([Transfer(id=10, debit_account_id=1, credit_account_id=2, amount=5, ledger=1,
                                               code=1, flags=TransferFlags.PENDING, timeout_s=1, psp_id=42)])
            assert [r.result for r in res] == [Result.OK]
        series: set[str] = set()
        deadline = time.monotonic() + 30  # the expiry block comes a second later
        while time.monotonic() < deadline:
            text = scrape(metrics[leader.node_id])
            series = exported_series(text)
            if re.search(r'^sovledger_expiry_blocks_total [1-9]', text, re.M):
                break
            time.sleep(0.2)
        missing = []
        for name, kind in documented().items():
            want = f"{name}_bucket" if kind == "histogram" else name
            if want not in series:
                missing.append(want)
        assert not missing, f"documented but not exported: {missing}"
        assert re.search(r'sovledger_results_total\{kind="create_transfer",psp="42",result="ok"\} 1\.0', text)
        assert 'sovledger_raft_role{role="leader"} 1.0' in text
    finally:
        kill_region(cluster)


def test_dashboard_uses_only_documented_metrics() -> None:
    names = documented()
    dash = json.loads((ROOT / "docker" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        for used in re.findall(r"sovledger_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", used)
            assert used in names or base in names, f"dashboard uses undocumented metric {used}"
