"""The authorization matrix on real node processes started by `sovledger cluster up` (TLS on):
every RPC × every kind of caller → the status code the policy in docs/security.md promises.

The expected table below is written out by hand (not derived from node/authz.py), so a change to
the code table that is not also a decision here fails this test.
"""

from __future__ import annotations

import grpc
import pytest

from clients.client import LedgerClient
from clients.workload import account_records
from ledger.ownership import account_id_for
from ledger.types import EventKind
from node.authz import MATRIX
from tests.security.calls import CALLS, code_of
from tests.security.region import IDENTITIES, Region

pytestmark = pytest.mark.integration

# U = refused at the TLS handshake (UNAVAILABLE), UA = UNAUTHENTICATED (revoked), PD = PERMISSION_DENIED,
# NF = NOT_FOUND, IA = INVALID_ARGUMENT (allowed, but the harmless request names no real node),
# AE = ALREADY_EXISTS (PSP B puts a subject PSP A owns), DL = DATA_LOSS (a peer's empty copy is refused)
EXPECTED = """
rpc                                              none other_ca psp_a psp_b auditor operator peer removed_peer revoked
/sovledger.v1.Ledger/Submit                      U    U        OK    OK    PD      OK       PD   PD           UA
/sovledger.v1.Ledger/LookupTransfers             U    U        OK    OK    OK      OK       PD   PD           UA
/sovledger.v1.Ledger/LookupAccounts              U    U        OK    PD    OK      OK       PD   PD           UA
/sovledger.v1.Ledger/AccountHistory              U    U        OK    PD    OK      OK       PD   PD           UA
/sovledger.v1.Audit/GetCheckpoint                U    U        PD    PD    OK      OK       OK   PD           UA
/sovledger.v1.Audit/GetInclusionProof            U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.v1.Audit/GetConsistencyProof          U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.v1.Audit/StreamEntries                U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.v1.Audit/StreamBlocks                 U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.v1.Admin/Status                       U    U        OK    OK    OK      OK       OK   OK           UA
/sovledger.v1.Admin/RotateKey                    U    U        PD    PD    PD      IA       PD   PD           UA
/grpc.health.v1.Health/Check                     U    U        OK    OK    OK      OK       OK   OK           UA
/grpc.health.v1.Health/Watch                     U    U        OK    OK    OK      OK       OK   OK           UA
/sovledger.v1.Rules/ListRuleSets                 U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.v1.Rules/ShowRuleSet                  U    U        PD    PD    NF      NF       PD   PD           UA
/sovledger.v1.Rules/ValidateRuleSet              U    U        PD    PD    PD      OK       PD   PD           UA
/sovledger.v1.Rules/DryRun                       U    U        PD    PD    PD      OK       PD   PD           UA
/sovledger.v1.Rules/Report                       U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.peer.v1.Peer/Send                     U    U        PD    PD    PD      PD       OK   PD           UA
/sovledger.peer.v1.Peer/FetchSnapshot            U    U        PD    PD    PD      PD       OK   PD           UA
/sovledger.peer.v1.RegionAdmin/TransferLeader    U    U        PD    PD    PD      IA       PD   PD           UA
/sovledger.peer.v1.RegionAdmin/ChangeMembership  U    U        PD    PD    PD      IA       PD   PD           UA
/sovledger.v1.Operations/Backup                  U    U        PD    PD    PD      OK       PD   PD           UA
/sovledger.vault.v1.Vault/Put                    U    U        OK    AE    PD      PD       PD   PD           UA
/sovledger.vault.v1.Vault/Get                    U    U        OK    NF    OK      OK       PD   PD           UA
/sovledger.vault.v1.Vault/Erase                  U    U        PD    PD    PD      NF       PD   PD           UA
/sovledger.vault.v1.VaultPeer/Replicate          U    U        PD    PD    PD      PD       DL   PD           UA
/sovledger.vault.v1.VaultPeer/Inventory          U    U        PD    PD    PD      PD       OK   PD           UA
/sovledger.vault.v1.VaultPeer/Fetch              U    U        PD    PD    PD      PD       OK   PD           UA
/sovledger.witness.v1.Witness/AddCheckpoint      U    U        PD    PD    PD      PD       PD   PD           UA
/sovledger.witness.v1.Witness/GetCosigned        U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.witness.v1.Witness/GetEvidence        U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.witness.v1.Witness/GetRegionCheckpoint U   U        PD    PD    OK      OK       PD   PD           UA
/sovledger.witness.v1.Witness/GetAggregates      U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.netting.v1.Netting/Offer              U    U        PD    PD    PD      PD       PD   PD           UA
/sovledger.netting.v1.Netting/Lookup             U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.netting.v1.Netting/Open               U    U        PD    PD    OK      OK       PD   PD           UA
/sovledger.netting.v1.Netting/Join               U    U        PD    PD    PD      IA       PD   PD           UA
/sovledger.netting.v1.Netting/Prove              U    U        PD    PD    IA      IA       PD   PD           UA
"""

CODES = {"U": grpc.StatusCode.UNAVAILABLE, "UA": grpc.StatusCode.UNAUTHENTICATED, "OK": grpc.StatusCode.OK,
         "PD": grpc.StatusCode.PERMISSION_DENIED, "NF": grpc.StatusCode.NOT_FOUND,
         "IA": grpc.StatusCode.INVALID_ARGUMENT, "AE": grpc.StatusCode.ALREADY_EXISTS,
         "DL": grpc.StatusCode.DATA_LOSS}


def _expected() -> dict[str, dict[str, grpc.StatusCode]]:
    header, *rows = (line.split() for line in EXPECTED.strip().splitlines())
    assert tuple(header[1:]) == IDENTITIES
    return {row[0]: {who: CODES[c] for who, c in zip(header[1:], row[1:], strict=True)} for row in rows}


def test_every_rpc_is_in_the_table_and_walked() -> None:
    assert set(_expected()) == set(MATRIX) == set(CALLS)


def test_matrix_on_a_cluster_up_region(region: Region) -> None:
    with LedgerClient(region.leader, tls=region.tls["psp_a"]) as c:  # PSP A's account 1 exists
        c.submit_one(EventKind.CREATE_ACCOUNT, account_records(2, first_id=account_id_for(1, 1)))
    channels = {who: region.channel(who) for who in IDENTITIES}
    got = {rpc: {who: code_of(call, channels[who]) for who in IDENTITIES} for rpc, call in CALLS.items()}
    for ch in channels.values():
        ch.close()
    wrong = [f"{rpc} as {who}: got {got[rpc][who].name}, expected {want.name}"
             for rpc, row in _expected().items() for who, want in row.items() if got[rpc][who] != want]
    assert not wrong, "\n".join(wrong)
