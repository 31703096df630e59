"""Faults of a 3-node region of real processes under load, each ending with the one checker:
kill -9 / SIGSTOP / SIGTERM of leader and followers and all nodes down; a partition that isolates
the leader (loopback link shim, tests/faults/netshim.py); an old copy of a data directory
restored; a voter that lost its whole data directory."""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.client import LedgerClient
from sovledger.cluster import Cluster, NodeEntry
from sovledger_pb import peer_pb2, peer_pb2_grpc
from tests.faults.harness import Load, check, create_accounts
from tests.faults.netshim import Shim
from tests.integration.nodeproc import kill_region

pytestmark = pytest.mark.integration


class ShimCluster(Cluster):
    """A Cluster whose peer links run through the shim (so they can be cut)."""

    shim: Shim

    def peers_for(self, me: NodeEntry) -> str:
        return ",".join(f"{n.node_id}={self.shim.address(me.node_id, n.node_id)}" for n in self.nodes if n is not me)


@pytest.fixture
def region(tmp_path: Path) -> Iterator[ShimCluster]:
    cluster = ShimCluster(tmp_path / "region")
    cluster.create(3, "eu-west", [])
    cluster.shim = Shim({n.node_id: n.port for n in cluster.nodes})
    for n in cluster.nodes:
        cluster.start(n)
    leader, _ = cluster.wait_leader(30)
    create_accounts(leader.target)
    try:
        yield cluster
    finally:
        kill_region(cluster)
        cluster.shim.close()


def leader_target(cluster: Cluster) -> str | None:
    n = cluster.leader()
    return n.target if n else None


def finish(cluster: Cluster, load: Load, scenario: str) -> int:
    ledger = load.finish()
    leader, _ = cluster.wait_leader(30)
    return check({n.node_id: n.target for n in cluster.nodes}, ledger, leader=leader.node_id, scenario=scenario)


def follower(cluster: Cluster) -> NodeEntry:
    leader, _ = cluster.wait_leader(30)
    return next(n for n in cluster.nodes if n is not leader)


@pytest.mark.faults_slow
def test_process_faults_of_leader_and_followers_and_all_down(region: ShimCluster) -> None:
    load = Load(lambda: leader_target(region), seed=11, batches_max=2000, seconds_max=400).start()
    load.wait_acked(600)
    for who in ("leader", "follower"):
        for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
            node = region.wait_leader(30)[0] if who == "leader" else follower(region)
            region.kill(node, sig)
            if sig == signal.SIGSTOP:
                if who == "leader":
                    region.wait_leader(30)
                load.wait_acked(400)
                region.kill(node, signal.SIGCONT)
            else:
                if sig == signal.SIGTERM:
                    _wait_dead(region, node)
                load.wait_acked(400)
                region.start(node)
            load.wait_acked(400)
    for n in region.nodes:  # all down at once, then all back
        region.kill(n, signal.SIGKILL)
    for n in region.nodes:
        region.start(n)
    load.wait_acked(600)
    finish(region, load, "kill -9 / SIGSTOP / SIGTERM of leader and followers, all down")


def _wait_dead(cluster: Cluster, node: NodeEntry, timeout_s: float = 20) -> None:
    from sovledger.cluster import _alive

    deadline = time.monotonic() + timeout_s
    while _alive(node.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    cluster.kill(node, signal.SIGKILL)


@pytest.mark.faults_slow
def test_partition_isolating_the_leader_then_healed(region: ShimCluster) -> None:
    load = Load(lambda: leader_target(region), seed=12, batches_max=2000, seconds_max=300).start()
    load.wait_acked(600)
    old, _ = region.wait_leader(30)
    region.shim.isolate(old.node_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the majority side elects a new leader
        new = next((n for n in region.nodes if n is not old and (st := region.status(n)) and st.role == "leader"),
                   None)
        if new is not None:
            break
        time.sleep(0.1)
    assert new is not None, "the majority side elected no leader"
    load.wait_acked(600, timeout_s=90)
    region.shim.heal_all()
    load.wait_acked(600, timeout_s=90)
    finish(region, load, "partition isolating the leader, then healed")


def test_old_data_directory_restored_never_signs_old_state(region: ShimCluster, tmp_path: Path) -> None:
    load = Load(lambda: leader_target(region), seed=13, batches_max=2000, seconds_max=300).start()
    load.wait_acked(600)
    victim = follower(region)
    region.stop([victim])
    backup = tmp_path / "backup"
    shutil.copytree(victim.data_dir, backup)  # the whole directory, guard file included
    region.start(victim)
    load.wait_acked(1000)
    region.stop([victim])
    leader, _ = region.wait_leader(30)
    with LedgerClient(leader.target) as c:
        floor = c.checkpoint().tree_size
    shutil.rmtree(victim.data_dir)
    shutil.copytree(backup, victim.data_dir)
    region.start(victim)
    sizes = _signed_sizes(victim.target, floor, 90)  # every checkpoint the restored node serves, from its start
    assert sizes, "the restored node never served a checkpoint"
    assert min(sizes) >= floor, f"the restored node signed size {min(sizes)}, below the region's {floor}"
    log = Path(victim.log).read_text()
    assert "not signing tree size" in log and "catching up first" in log, log[-2000:]
    load.wait_acked(400)
    finish(region, load, "old data directory restored")


def _signed_sizes(target: str, floor: int, timeout_s: float) -> list[int]:
    """Checkpoint sizes the node serves from its start until it signed at or above ``floor``."""
    sizes: list[int] = []
    deadline = time.monotonic() + timeout_s
    with LedgerClient(target, timeout_s=2, stale_reads=True) as c:
        while time.monotonic() < deadline and not (sizes and sizes[-1] >= floor):
            with contextlib.suppress(grpc.RpcError):  # not started yet, or nothing signed while catching up
                sizes.append(int(c.checkpoint().tree_size))
            time.sleep(0.05)
    return sizes


def test_wiped_voter_refuses_then_rejoins_as_learner_and_is_promoted(region: ShimCluster) -> None:
    load = Load(lambda: leader_target(region), seed=14, batches_max=2000, seconds_max=300).start()
    load.wait_acked(600)
    victim = follower(region)
    region.kill(victim, signal.SIGKILL)
    shutil.rmtree(victim.data_dir)  # the whole directory: store, Raft state, node key, guard
    region.start(victim)
    _wait_exit(region, victim)
    log = Path(victim.log).read_text()
    assert "refusing to start" in log and "--rejoin" in log and "voter" in log, log[-2000:]
    region.start(victim, ["--rejoin"])
    leader, _ = region.wait_leader(30)
    with LedgerClient(leader.target) as c:
        size = c.checkpoint().tree_size
    _wait_size(victim.target, size)
    admin = peer_pb2_grpc.RegionAdminStub(grpc.insecure_channel(leader.target))
    ops = peer_pb2.MembershipRequest
    deadline = time.monotonic() + 30
    while True:  # promote once caught up (the leader refuses a learner that lags)
        try:
            admin.ChangeMembership(ops(op=ops.ADD_VOTER, node_id=victim.node_id,
                                       address=region.shim.address(leader.node_id, victim.node_id)), timeout=10)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the rejoined node was never promoted"
            time.sleep(0.2)
    load.wait_acked(600)
    finish(region, load, "wiped voter rejoined as a learner and promoted")


def _wait_exit(cluster: Cluster, node: NodeEntry, timeout_s: float = 60) -> None:
    from sovledger.cluster import _alive

    deadline = time.monotonic() + timeout_s
    while _alive(node.pid):
        assert time.monotonic() < deadline, "the wiped voter did not refuse to start"
        time.sleep(0.1)


def _wait_size(target: str, size: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with LedgerClient(target, timeout_s=5, stale_reads=True) as c:
        while True:
            try:
                if c.status().tree_size >= size:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{target} did not catch up to {size}"
            time.sleep(0.1)
