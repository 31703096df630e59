"""Leader transfer and single-server membership changes on a real 3-node region."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import grpc
import pytest

from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind, Result
from sovledger.cluster import Cluster, _cmd_member
from sovledger_pb import peer_pb2, peer_pb2_grpc
from tests.integration.nodeproc import kill_region, start_region, wait_tree_size

pytestmark = pytest.mark.integration


def _write(cluster: Cluster, gen: TransferGenerator, n: int = 200) -> int:
    leader, _ = cluster.wait_leader(30)
    with LedgerClient(leader.target, timeout_s=10) as c:
        r = c.submit_one(EventKind.CREATE_TRANSFER, gen.records(n)[0])
        assert set(r.results) == {Result.OK}
        return int(c.checkpoint().tree_size)


def _caught_up(target: str, size: int, timeout_s: float = 30) -> bool:
    return wait_tree_size(target, size, timeout_s) >= size


def test_transfer_leader_then_add_learner_promote_and_remove(tmp_path: Path) -> None:
    cluster = start_region(tmp_path / "region")
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(20))
        gen = TransferGenerator(20, seed=9)
        _write(cluster, gen)

        # leader transfer to a chosen follower
        target = next(n for n in cluster.nodes if n is not leader)
        admin = peer_pb2_grpc.RegionAdminStub(grpc.insecure_channel(leader.target))
        admin.TransferLeader(peer_pb2.TransferLeaderRequest(node_id=target.node_id), timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (cluster.leader() or leader).node_id != target.node_id:
            time.sleep(0.05)
        assert cluster.leader() is not None and cluster.leader().node_id == target.node_id  # type: ignore[union-attr]
        size = _write(cluster, gen)

        # a follower refuses admin commands with the leader's address
        with pytest.raises(grpc.RpcError) as e:
            admin.TransferLeader(peer_pb2.TransferLeaderRequest(node_id=leader.node_id), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE

        # a fourth node joins as a learner, catches up, never leads, then is promoted
        args = argparse.Namespace(data=str(cluster.data), action="add", node=None)
        assert _cmd_member(args) == 0
        cluster = Cluster(cluster.data)
        newcomer = cluster.nodes[-1]
        assert newcomer.node_id == "node-4"
        assert _caught_up(newcomer.target, size), "the learner did not catch up"
        with LedgerClient(newcomer.target) as c:
            assert c.status().role == "follower"
        assert _cmd_member(argparse.Namespace(data=str(cluster.data), action="promote", node="node-4")) == 0
        size = _write(cluster, gen)
        assert _caught_up(newcomer.target, size)

        # remove one of the original voters: the region of three keeps committing
        gone = next(n for n in cluster.nodes if n.node_id != newcomer.node_id and n is not cluster.leader())
        assert _cmd_member(argparse.Namespace(data=str(cluster.data), action="remove", node=gone.node_id)) == 0
        cluster = Cluster(cluster.data)
        assert gone.node_id not in [n.node_id for n in cluster.nodes]
        size = _write(cluster, gen)
        for n in cluster.nodes:
            assert _caught_up(n.target, size), f"{n.node_id} fell behind after the removal"
    finally:
        kill_region(cluster)
