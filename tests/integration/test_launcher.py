"""`sovledger cluster` as an operator types it: up, status (table and --json), kill, restart,
transfer, down — real node processes on 127.0.0.1, the CLI run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clients.client import LedgerClient
from clients.connect import ClientTls
from clients.workload import account_records
from ledger.ownership import account_id_for
from ledger.types import EventKind
from tests.integration.nodeproc import ROOT

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'proto'}", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "sovledger", "cluster", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def status(data: Path) -> list[dict[str, Any]]:
    out = cli("status", "--data", str(data), "--json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def wait_for(cond: Any, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_cluster_up_status_kill_restart_transfer_down(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    up = cli("up", "--nodes", "3", "--data", str(data), "--json")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads(up.stdout.strip().splitlines()[-1])
        assert len(info["targets"]) == 3 and info["leader"] in info["targets"]
        assert (data / "psp.key").exists() and "leader node-" in up.stdout
        psp = ClientTls.from_file(str(data / "ca" / "psp-1.toml"))  # `cluster up` speaks TLS
        with LedgerClient(info["leader"], tls=psp) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(10, first_id=account_id_for(1, 1)))

        # every node up, one leader, same checkpoint once the followers applied
        def same_checkpoint_no_lag() -> bool:  # one `status` call per poll: both conditions on one snapshot
            rows = status(data)
            return len({r["checkpoint"]["root"] for r in rows if r["checkpoint"]}) == 1 and all(
                r["lag"] == 0 for r in rows)

        assert wait_for(same_checkpoint_no_lag)
        rows = status(data)
        assert [r["up"] for r in rows] == [True] * 3
        assert sorted(r["role"] for r in rows) == ["follower", "follower", "leader"]
        assert all(r["checkpoint"]["size"] == rows[0]["tree_size"] for r in rows)
        table = cli("status", "--data", str(data))
        assert table.returncode == 0 and "checkpoint" in table.stdout and "leader" in table.stdout

        # kill a follower: status shows it down; restart it: it comes back and catches up
        victim = next(r["node"] for r in rows if r["role"] == "follower")
        assert cli("kill", victim, "--data", str(data)).returncode == 0
        assert next(r for r in status(data) if r["node"] == victim)["up"] is False
        with LedgerClient(info["leader"], tls=psp) as c:
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(10, first_id=account_id_for(1, 100)))
        restarted = cli("restart", victim, "--data", str(data))
        assert restarted.returncode == 0, restarted.stderr
        assert wait_for(lambda: all(r["up"] and r["lag"] == 0 for r in status(data)))

        # hand leadership to the restarted node
        moved = cli("transfer", victim, "--data", str(data))
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert next(r for r in status(data) if r["node"] == victim)["role"] == "leader"
    finally:
        down = cli("down", "--data", str(data))
    assert down.returncode == 0 and "stopped 3 node(s)" in down.stdout
    assert [r["up"] for r in status(data)] == [False] * 3
