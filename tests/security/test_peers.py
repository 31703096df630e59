"""Peers authenticate each other: impersonation, forged Raft messages and snapshot fetches by
callers that are not current members are refused, and the region keeps its leader and term."""

from __future__ import annotations

import json

import grpc
import pytest

from clients.channels import open_sync_channel as channel
from clients.client import LedgerClient
from clients.workload import account_records
from consensus.codec import encode_message
from consensus.types import Index, Message, MessageType, NodeId, Term
from ledger.ownership import account_id_for
from ledger.types import EventKind
from sovledger import ca
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from sovledger_pb import peer_pb2 as ppb
from sovledger_pb import peer_pb2_grpc as ppb_grpc
from tests.security.region import Region, tls_of

pytestmark = pytest.mark.integration

HUGE_TERM = Term((1 << 64) - 1)


def _heartbeat(frm: int, to: int) -> ppb.RaftEnvelope:
    msg = Message(MessageType.HEARTBEAT, to=NodeId(to), frm=NodeId(frm), term=HUGE_TERM, commit=Index(0))
    return ppb.RaftEnvelope(from_id=frm, message=encode_message(msg))


def _send(ch: grpc.Channel, env: ppb.RaftEnvelope) -> grpc.StatusCode:
    try:
        ppb_grpc.PeerStub(ch).Send(iter([env]), timeout=10)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _status(region: Region) -> pb.StatusResponse:
    with region.channel("operator") as ch:
        st: pb.StatusResponse = pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=10)
    return st


def _num(node_id: str) -> int:
    return int(node_id.rsplit("-", 1)[1])


def test_forged_peer_messages_are_refused_and_the_leader_stays(region: Region) -> None:
    before = _status(region)
    leader = before.node_id
    with region.channel("non_member") as ch:  # our CA, a node name that is not a member
        assert _send(ch, _heartbeat(9, _num(leader))) == grpc.StatusCode.PERMISSION_DENIED
    with region.channel("removed_peer") as ch:  # a member the operator removed
        assert _send(ch, _heartbeat(_num(region.removed), _num(leader))) == grpc.StatusCode.PERMISSION_DENIED
    with region.channel("peer") as ch:  # a member speaking as another member
        assert _send(ch, _heartbeat(_num(region.removed), _num(leader))) == grpc.StatusCode.PERMISSION_DENIED
    with region.channel("psp_a") as ch:
        assert _send(ch, _heartbeat(_num(region.member), _num(leader))) == grpc.StatusCode.PERMISSION_DENIED
    after = _status(region)
    assert (after.node_id, after.role, after.term) == (leader, "leader", before.term)


def test_a_foreign_ca_cannot_pose_as_a_member(region: Region, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("impostor-ca")
    ca.init_ca(other, "impostor")
    ca.issue(other, "node", region.member)  # same node name, wrong CA
    with channel(region.leader, tls_of(other, "node", region.member)) as ch:
        assert _send(ch, _heartbeat(_num(region.member), 1)) == grpc.StatusCode.UNAVAILABLE


def test_snapshot_fetch_by_a_non_member_is_refused(region: Region) -> None:
    for who in ("non_member", "removed_peer", "auditor", "operator"):
        with region.channel(who) as ch:
            with pytest.raises(grpc.RpcError) as err:
                for _ in ppb_grpc.PeerStub(ch).FetchSnapshot(ppb.SnapshotRequest(index=0), timeout=10):
                    pass
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, who


def test_a_plaintext_client_cannot_connect_to_a_cluster_up_node(region: Region) -> None:
    with grpc.insecure_channel(region.leader) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _status(region).role == "leader"  # the same node answers a client with a certificate


def test_a_new_member_joins_with_its_certificate_and_catches_up(region: Region) -> None:
    from tests.security.region import cli, wait_for

    added = cli("cluster", "member", "add", "--data", str(region.data))
    assert added.returncode == 0, added.stdout + added.stderr
    new_id = added.stdout.split(" at ")[0].split()[-1]
    assert (region.ca_dir / f"node-{new_id}.pem").exists()  # the launcher issued its certificate
    assert new_id not in (region.member, region.removed)  # a removed member's id is never reused

    def promote() -> bool:  # the leader refuses until the learner has caught up
        return cli("cluster", "member", "promote", new_id, "--data", str(region.data)).returncode == 0

    assert wait_for(promote, 60)

    rows = json.loads(cli("cluster", "status", "--data", str(region.data), "--json").stdout)
    leader = next(r["target"] for r in rows if r["role"] == "leader")
    with LedgerClient(leader, tls=region.tls["psp_b"]) as c:  # a block the new member must replicate
        c.submit_one(EventKind.CREATE_ACCOUNT, account_records(1, first_id=account_id_for(2, 4242)))

    def caught_up() -> bool:
        rows = json.loads(cli("cluster", "status", "--data", str(region.data), "--json").stdout)
        top = max(r["tree_size"] or 0 for r in rows)
        mine = [r for r in rows if r["node"] == new_id]
        return bool(mine) and mine[0]["up"] and top > 0 and mine[0]["tree_size"] == top

    assert wait_for(caught_up, 60)
