"""A region's life on real node processes (issue #12 item 9): a leader stopped with SIGTERM hands
leadership to a caught-up follower and exits without tracebacks; a removed member is no longer
dialled; health is NOT_SERVING while the region cannot commit and SERVING again once it can; peer
links never get GOAWAY too_many_pings; a region stopped all at once does not keep its leader waiting
for a hand-over to a member that is stopping too."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.client import LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind, Result
from sovledger.cluster import Cluster, NodeEntry
from sovledger_pb import peer_pb2, peer_pb2_grpc
from tests.integration.nodeproc import kill_region, start_region

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(node: NodeEntry) -> int:
    with grpc.insecure_channel(node.target) as ch:
        req = health_pb2.HealthCheckRequest(service="sovledger.v1.Ledger")
        return int(health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status)


def _wait_health(node: NodeEntry, want: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    got = _health(node)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = _health(node)
    return got


def _log(node: NodeEntry) -> str:
    return Path(node.log).read_text(errors="replace")


def _write(cluster: Cluster, gen: TransferGenerator) -> None:
    leader, _ = cluster.wait_leader(30)
    with LedgerClient(leader.target, timeout_s=15) as c:
        assert set(c.submit_one(EventKind.CREATE_TRANSFER, gen.records(100)[0]).results) == {Result.OK}


def _stop(cluster: Cluster, node: NodeEntry) -> None:
    cluster.stop([node], timeout_s=20)


def test_sigterm_hands_over_then_removed_member_is_not_dialled_and_health_follows_quorum(tmp_path: Path) -> None:
    cluster = start_region(tmp_path / "region")
    try:
        leader, _ = cluster.wait_leader(30)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(20))
        gen = TransferGenerator(20, seed=4)
        _write(cluster, gen)

        # SIGTERM the leader: it hands over to a follower, which leads without an election timeout
        _stop(cluster, leader)
        text = _log(leader)
        handed = re.search(r"handed leadership to node (\d+)", text)
        assert handed, f"no hand-over in the leader's log:\n{text[-2000:]}"
        new_leader, _ = cluster.wait_leader(30)
        assert new_leader.node_id == f"node-{handed.group(1)}"
        assert "never retrieved" not in text and "Traceback" not in text, text[-3000:]
        _write(cluster, gen)

        # remove the stopped member: the others stop dialling its address
        admin = peer_pb2_grpc.RegionAdminStub(grpc.insecure_channel(new_leader.target))
        admin.ChangeMembership(peer_pb2.MembershipRequest(op=peer_pb2.MembershipRequest.REMOVE_VOTER,
                                                          node_id=leader.node_id), timeout=10)
        _write(cluster, gen)  # commits after the removal; followers may apply it a little later
        _wait_applied_everywhere(cluster, [n for n in cluster.nodes if n is not leader])
        assert _nobody_dials(leader.port, 4.0), "a removed member is still being dialled"

        # two voters left: with one of them gone the other cannot commit, and says so
        survivor, other = (n for n in cluster.nodes if n is not leader)
        cluster.kill(other, signal.SIGKILL)
        assert _wait_health(survivor, NOT_SERVING) == NOT_SERVING
        cluster.start(other)
        assert _wait_health(survivor, SERVING) == SERVING
        _write(cluster, gen)
        for n in (survivor, other):
            assert "too_many_pings" not in _log(n)

        # the whole region stops at once: the leader does not wait out its hand-over timeout for a
        # follower that is stopping too (node/replication.py hand_over, node/transport.py gone_since)
        last_leader, _ = cluster.wait_leader(30)
        cluster.stop([survivor, other], timeout_s=20)
        text = _log(last_leader)
        assert "did not take over within" not in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    finally:
        kill_region(cluster)


def _wait_applied_everywhere(cluster: Cluster, nodes: list[NodeEntry], timeout_s: float = 30.0) -> None:
    """Wait until each node has applied what the leader has applied now (a follower acknowledges an
    entry before it applies it, so a committed membership change may still be unapplied there)."""
    leader, _ = cluster.wait_leader(30)
    with LedgerClient(leader.target) as c:
        want = c.status().applied_index
    for n in nodes:
        deadline = time.monotonic() + timeout_s
        with LedgerClient(n.target) as c:
            got = c.status().applied_index
            while got < want and time.monotonic() < deadline:
                time.sleep(0.05)
                got = c.status().applied_index
        assert got >= want, f"{n.node_id} applied {got} < {want} within {timeout_s:.0f}s"


def _nobody_dials(port: int, seconds: float) -> bool:
    """Listen on a removed member's port: a node still dialling it connects within its back-off (≤ 2 s)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        s.settimeout(seconds)
        try:
            conn, _ = s.accept()
        except TimeoutError:
            return True
        conn.close()
        return False
