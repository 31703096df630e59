"""Catch-up through a snapshot: a far-behind node, and a wiped node that rejoins as a learner."""

from __future__ import annotations

import argparse
import shutil
import signal
import time
from pathlib import Path

import pytest

from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind, Result
from sovledger.cluster import Cluster, _cmd_member
from tests.integration.nodeproc import kill_region, start_region, wait_tree_size

pytestmark = pytest.mark.integration

KEEP = ["--raft-log-keep", "8"]  # a tiny Raft log, so that lagging nodes need snapshots


def _write_blocks(cluster: Cluster, gen: TransferGenerator, blocks: int) -> int:
    leader, _ = cluster.wait_leader(30)
    with LedgerClient(leader.target, timeout_s=15) as c:
        for _ in range(blocks):
            r = c.submit_one(EventKind.CREATE_TRANSFER, gen.records(100)[0])
            assert set(r.results) == {Result.OK}
        return int(c.checkpoint().tree_size)


def _wait_size(target: str, size: int, timeout_s: float = 60) -> int:
    return wait_tree_size(target, size, timeout_s)


def test_far_behind_and_wiped_nodes_catch_up_through_snapshots(tmp_path: Path) -> None:
    cluster = start_region(tmp_path / "region", extra=KEEP)
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(50))
        gen = TransferGenerator(50, seed=4)
        lagging = next(n for n in cluster.nodes if n is not leader)
        cluster.kill(lagging, signal.SIGKILL)
        size = _write_blocks(cluster, gen, 60)  # far more than the kept log
        cluster.start(lagging, KEEP)
        assert _wait_size(lagging.target, size) >= size
        assert "snapshot installed" in Path(lagging.log).read_text(), "caught up without a snapshot?"

        # wipe a node: take it out, erase its data, let it rejoin as a learner, promote it
        victim = next(n for n in cluster.nodes if n is not cluster.leader())
        assert _cmd_member(argparse.Namespace(data=str(cluster.data), action="remove", node=victim.node_id)) == 0
        cluster = Cluster(cluster.data)
        shutil.rmtree(victim.data_dir)
        size = _write_blocks(cluster, gen, 30)
        args = argparse.Namespace(data=str(cluster.data), action="add", node=None)
        assert _cmd_member(args) == 0
        cluster = Cluster(cluster.data)
        newcomer = cluster.nodes[-1]
        cluster.kill(newcomer, signal.SIGTERM)
        time.sleep(0.3)
        cluster.start(newcomer, ["--join", *KEEP])
        assert _wait_size(newcomer.target, size) >= size
        assert "snapshot installed" in Path(newcomer.log).read_text()
        assert _cmd_member(argparse.Namespace(data=str(cluster.data), action="promote", node=newcomer.node_id)) == 0
        size = _write_blocks(cluster, gen, 5)
        for n in cluster.nodes:  # every replica equal, checkpoint bodies identical
            assert _wait_size(n.target, size) >= size
        bodies = set()
        for n in cluster.nodes:
            with LedgerClient(n.target, stale_reads=True) as c:
                cp = c.checkpoint()
                bodies.add(cp.note.split("\n\n")[0])
        assert len(bodies) == 1
    finally:
        kill_region(cluster)
