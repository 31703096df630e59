"""One harmless call per RPC the node serves (the matrix test walks them with every identity)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.ownership import account_id_for
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from sovledger_pb import netting_pb2 as npb
from sovledger_pb import netting_pb2_grpc as npb_grpc
from sovledger_pb import peer_pb2 as ppb
from sovledger_pb import peer_pb2_grpc as ppb_grpc
from sovledger_pb import vault_pb2 as vpb
from sovledger_pb import vault_pb2_grpc as vpb_grpc
from sovledger_pb import witness_pb2 as wpb
from sovledger_pb import witness_pb2_grpc as wpb_grpc

T = 10.0
ACCOUNT_OF_A = account_id_for(1, 1).to_bytes(16, "little")
#: the first identity allowed to put it owns it (PSP A: the matrix walks identities in order)
SUBJECT = (0x5EC0).to_bytes(16, "little")
NO_SUBJECT = (0x5EC1).to_bytes(16, "little")  # never put: erase/fetch find nothing (harmless)


def _none() -> Iterator[Any]:
    return iter(())


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


CALLS: dict[str, Callable[[grpc.Channel], Any]] = {
    "/sovledger.netting.v1.Netting/Offer": lambda ch: npb_grpc.NettingStub(ch).Offer(npb.OfferRequest(), timeout=T),
    "/sovledger.netting.v1.Netting/Lookup": lambda ch: npb_grpc.NettingStub(ch).Lookup(
        npb.LookupRequest(), timeout=T),
    "/sovledger.netting.v1.Netting/Open": lambda ch: npb_grpc.NettingStub(ch).Open(npb.OpenRequest(), timeout=T),
    "/sovledger.netting.v1.Netting/Join": lambda ch: npb_grpc.NettingStub(ch).Join(npb.JoinRequest(), timeout=T),
    "/sovledger.netting.v1.Netting/Prove": lambda ch: npb_grpc.NettingStub(ch).Prove(
        npb.ProveRequest(index=1 << 62), timeout=T),
    "/sovledger.v1.Ledger/Submit": lambda ch: _drain(pb_grpc.LedgerStub(ch).Submit(_none(), timeout=T)),
    "/sovledger.v1.Ledger/LookupTransfers": lambda ch: pb_grpc.LedgerStub(ch).LookupTransfers(
        pb.LookupRequest(), timeout=T),
    "/sovledger.v1.Ledger/LookupAccounts": lambda ch: pb_grpc.LedgerStub(ch).LookupAccounts(
        pb.LookupRequest(ids=[ACCOUNT_OF_A]), timeout=T),
    "/sovledger.v1.Ledger/AccountHistory": lambda ch: pb_grpc.LedgerStub(ch).AccountHistory(
        pb.HistoryRequest(account_id=ACCOUNT_OF_A, first_page=True, limit=10), timeout=T),
    "/sovledger.v1.Audit/GetCheckpoint": lambda ch: pb_grpc.AuditStub(ch).GetCheckpoint(
        pb.CheckpointRequest(), timeout=T),
    "/sovledger.v1.Audit/GetInclusionProof": lambda ch: pb_grpc.AuditStub(ch).GetInclusionProof(
        pb.InclusionRequest(index=0), timeout=T),
    "/sovledger.v1.Audit/GetConsistencyProof": lambda ch: pb_grpc.AuditStub(ch).GetConsistencyProof(
        pb.ConsistencyRequest(first=1), timeout=T),
    "/sovledger.v1.Audit/StreamEntries": lambda ch: _drain(pb_grpc.AuditStub(ch).StreamEntries(
        pb.EntriesRequest(start=0, end=1), timeout=T)),
    "/sovledger.v1.Audit/StreamBlocks": lambda ch: _drain(pb_grpc.AuditStub(ch).StreamBlocks(
        pb.BlocksRequest(start=1, end=2), timeout=T)),
    "/sovledger.v1.Admin/Status": lambda ch: pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=T),
    "/sovledger.v1.Admin/RotateKey": lambda ch: pb_grpc.AdminStub(ch).RotateKey(
        pb.RotateKeyRequest(node_id="not-a-node"), timeout=T),
    "/grpc.health.v1.Health/Check": lambda ch: health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(), timeout=T),
    "/grpc.health.v1.Health/Watch": lambda ch: next(iter(health_pb2_grpc.HealthStub(ch).Watch(
        health_pb2.HealthCheckRequest(), timeout=T))),
    "/sovledger.v1.Rules/ListRuleSets": lambda ch: pb_grpc.RulesStub(ch).ListRuleSets(
        pb.ListRuleSetsRequest(), timeout=T),
    "/sovledger.v1.Rules/ShowRuleSet": lambda ch: pb_grpc.RulesStub(ch).ShowRuleSet(
        pb.ShowRuleSetRequest(), timeout=T),
    "/sovledger.v1.Rules/ValidateRuleSet": lambda ch: pb_grpc.RulesStub(ch).ValidateRuleSet(
        pb.ValidateRuleSetRequest(document=b'{"rules": []}'), timeout=T),
    "/sovledger.v1.Rules/DryRun": lambda ch: pb_grpc.RulesStub(ch).DryRun(
        pb.DryRunRequest(transfer=bytes(176)), timeout=T),
    "/sovledger.v1.Rules/Report": lambda ch: pb_grpc.RulesStub(ch).Report(pb.RulesReportRequest(), timeout=T),
    "/sovledger.peer.v1.Peer/Send": lambda ch: ppb_grpc.PeerStub(ch).Send(_none(), timeout=T),
    "/sovledger.peer.v1.Peer/FetchSnapshot": lambda ch: _drain(ppb_grpc.PeerStub(ch).FetchSnapshot(
        ppb.SnapshotRequest(index=0), timeout=T)),
    "/sovledger.peer.v1.RegionAdmin/TransferLeader": lambda ch: ppb_grpc.RegionAdminStub(ch).TransferLeader(
        ppb.TransferLeaderRequest(node_id="not-a-node"), timeout=T),
    "/sovledger.peer.v1.RegionAdmin/ChangeMembership": lambda ch: ppb_grpc.RegionAdminStub(ch).ChangeMembership(
        ppb.MembershipRequest(op=ppb.MembershipRequest.REMOVE_VOTER, node_id="not-a-node"), timeout=T),
    "/sovledger.v1.Operations/Backup": lambda ch: _drain(pb_grpc.OperationsStub(ch).Backup(
        pb.BackupRequest(), timeout=T)),
    # Put before Get: PSP A stores SUBJECT under its certificate's psp_id; PSP B may neither
    # overwrite it (ALREADY_EXISTS) nor read it (NOT_FOUND), though the request names no PSP
    "/sovledger.vault.v1.Vault/Put": lambda ch: vpb_grpc.VaultStub(ch).Put(
        vpb.PutRequest(subject_id=SUBJECT, fields={"name": "Matrix Person"}), timeout=T),
    "/sovledger.vault.v1.Vault/Get": lambda ch: vpb_grpc.VaultStub(ch).Get(
        vpb.GetRequest(subject_id=SUBJECT), timeout=T),
    "/sovledger.vault.v1.Vault/Erase": lambda ch: vpb_grpc.VaultStub(ch).Erase(
        vpb.EraseRequest(subject_id=NO_SUBJECT, reason=1), timeout=T),
    "/sovledger.vault.v1.VaultPeer/Replicate": lambda ch: vpb_grpc.VaultPeerStub(ch).Replicate(
        vpb.SealedCopy(), timeout=T),  # an empty copy: refused as damaged, nothing stored
    "/sovledger.vault.v1.VaultPeer/Inventory": lambda ch: vpb_grpc.VaultPeerStub(ch).Inventory(
        vpb.InventoryRequest(), timeout=T),
    "/sovledger.vault.v1.VaultPeer/Fetch": lambda ch: vpb_grpc.VaultPeerStub(ch).Fetch(
        vpb.FetchRequest(subject_id=NO_SUBJECT), timeout=T),
    # regions together (docs/federation.md); the test region has no federation: nothing to witness
    "/sovledger.witness.v1.Witness/AddCheckpoint": lambda ch: wpb_grpc.WitnessStub(ch).AddCheckpoint(
        wpb.AddCheckpointRequest(body=b"old 0\n\n"), timeout=T),
    "/sovledger.witness.v1.Witness/GetCosigned": lambda ch: wpb_grpc.WitnessStub(ch).GetCosigned(
        wpb.OriginRequest(origin="sovledger/elsewhere"), timeout=T),
    "/sovledger.witness.v1.Witness/GetEvidence": lambda ch: wpb_grpc.WitnessStub(ch).GetEvidence(
        wpb.OriginRequest(origin="sovledger/elsewhere"), timeout=T),
    "/sovledger.witness.v1.Witness/GetRegionCheckpoint": lambda ch: wpb_grpc.WitnessStub(ch).GetRegionCheckpoint(
        wpb.RegionCheckpointRequest(), timeout=T),
    "/sovledger.witness.v1.Witness/GetAggregates": lambda ch: wpb_grpc.WitnessStub(ch).GetAggregates(
        wpb.AggregatesRequest(), timeout=T),
}


def code_of(call: Callable[[grpc.Channel], Any], ch: grpc.Channel) -> grpc.StatusCode:
    try:
        call(ch)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
