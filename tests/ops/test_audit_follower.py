"""`sovledger audit verify --full` against a follower: the log verifies there, so the audit passes
(balances are compared with that node's own state), instead of failing with exit 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind
from sovledger.cluster import Cluster
from tests.integration.nodeproc import kill_region, wait_tree_size
from tests.ops.test_backup import cli

pytestmark = pytest.mark.integration


def test_full_audit_against_a_follower_passes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "region")
    cluster.create(3, "eu-west", [])
    for n in cluster.nodes:
        cluster.start(n)
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            assert set(c.submit_one(EventKind.CREATE_ACCOUNT, account_records(50)).results) == {0}
            recs, _ = TransferGenerator(50, seed=3).records(500)
            c.submit_one(EventKind.CREATE_TRANSFER, recs)
            size = c.checkpoint().tree_size
        follower = next(n for n in cluster.nodes if n is not leader)
        wait_tree_size(follower.target, size)
        trust = tmp_path / "trust.json"
        init = cli("audit", "trust", "init", "--node", follower.target, "--trust", str(trust), "--insecure")
        assert init.returncode == 0, init.stderr
        r = cli("audit", "verify", "--node", follower.target, "--trust", str(trust), "--full", "--insecure")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "own state" in r.stdout
    finally:
        kill_region(cluster)
