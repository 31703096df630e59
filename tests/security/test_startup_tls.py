"""A node's start-up checks speak the region's mTLS like everything else (node/startup.py): it learns
its peers' newest signed checkpoint with its own node certificate (so a restored old copy never
signs below it), a wiped voter is recognised through TLS, and --rejoin changes the membership only
with an operator's credentials. Real TLS region from `sovledger cluster up`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clients.client import LedgerClient
from clients.workload import account_records
from ledger.ownership import account_id_for
from ledger.types import EventKind
from node import startup
from node.config import NodeConfig, PeerConfig
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.security.region import Region

pytestmark = pytest.mark.integration


def _config(region: Region, node_id: str, tmp: Path, rejoin: bool = False) -> NodeConfig:
    nodes = json.loads((region.data / "cluster.json").read_text())["nodes"]
    peers = tuple(PeerConfig(n["node_id"], f"127.0.0.1:{n['port']}") for n in nodes
                  if n["node_id"] not in (node_id, region.removed))
    c = region.ca_dir
    return NodeConfig(data_dir=str(tmp), node_id=node_id, peers=peers, join=rejoin, rejoin=rejoin,
                      tls_ca=str(c / "ca.pem"), tls_cert=str(c / f"node-{node_id}.pem"),
                      tls_key=str(c / f"node-{node_id}.key"))


def _grow(region: Region, first: int) -> int:
    """Commit one entry (a PSP creating one of its own accounts); the new tree size."""
    with LedgerClient(region.leader, tls=region.tls["psp_a"]) as a:
        a.submit_one(EventKind.CREATE_ACCOUNT, account_records(1, first_id=account_id_for(1, first)))
        with region.channel("auditor") as ch:
            return int(pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=10).tree_size)


def test_member_learns_the_peers_checkpoint_floor_over_mtls(region: Region, tmp_path: Path) -> None:
    size_now = _grow(region, 4242)
    cfg = _config(region, region.member, tmp_path)
    deadline = time.monotonic() + 30
    while (floor := startup.peer_checkpoint_floor(cfg))[0] < size_now:  # the peers sign it within a block or two
        assert time.monotonic() < deadline, f"floor {floor} never reached the committed size {size_now} over mTLS"
        time.sleep(0.2)
    assert floor[1] and floor[1] != region.member


def test_removed_member_learns_nothing(region: Region, tmp_path: Path) -> None:
    cfg = _config(region, region.removed, tmp_path)
    assert startup.peer_checkpoint_floor(cfg) == (0, "")


def test_wiped_voter_is_recognised_over_tls_and_rejoin_needs_an_operator(region: Region, tmp_path: Path) -> None:
    cfg = _config(region, region.member, tmp_path)
    with pytest.raises(startup.StartupRefused, match="--rejoin"):
        startup.check_membership(cfg, holds_ledger=False)
    rejoin = _config(region, region.member, tmp_path, rejoin=True)
    with pytest.raises(startup.StartupRefused, match="--rejoin-tls-config"):
        startup.check_membership(rejoin, holds_ledger=False)
