"""Identity comes from the certificate, never from a field: psp_id spoofing, account ownership,
who may submit which kind of batch, and reads of another PSP's records — on a `cluster up` region."""

from __future__ import annotations

import grpc
import pytest

from clients.client import BatchRefused, LedgerClient
from clients.workload import LEDGER_USD, account_records
from ledger.codec import encode_deploy, encode_transfer
from ledger.ownership import account_id_for
from ledger.types import EventKind, Result, Transfer
from sovledger_pb import ledger_pb2 as pb
from tests.security.region import Region

pytestmark = pytest.mark.integration


def _transfer(tid: int, debit: int, credit: int, psp_id: int) -> bytes:
    return encode_transfer(Transfer(id=tid, debit_account_id=debit, credit_account_id=credit, amount=5,
                                    ledger=LEDGER_USD, code=1, psp_id=psp_id))


def _refused(client: LedgerClient, kind: EventKind, records: bytes) -> BatchRefused:
    with pytest.raises(BatchRefused) as err:
        client.submit_one(kind, records)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED, err.value
    return err.value


def test_psp_cannot_spoof_psp_id_or_touch_other_psps_accounts(region: Region) -> None:
    a_acct, b_acct = account_id_for(1, 500), account_id_for(2, 500)
    with LedgerClient(region.leader, tls=region.tls["psp_a"]) as a, \
            LedgerClient(region.leader, tls=region.tls["psp_b"]) as b:
        a.submit_one(EventKind.CREATE_ACCOUNT, account_records(1, first_id=a_acct))
        b.submit_one(EventKind.CREATE_ACCOUNT, account_records(1, first_id=b_acct))

        spoof = _refused(a, EventKind.CREATE_TRANSFER, _transfer(9001, a_acct, b_acct, psp_id=2))
        assert "transfer #0 (id 9001) has psp_id 2" in str(spoof) and "PSP 1" in str(spoof)
        theft = _refused(a, EventKind.CREATE_TRANSFER, _transfer(9002, b_acct, a_acct, psp_id=1))
        assert f"debits account {b_acct} of PSP 2" in str(theft)
        squat = _refused(a, EventKind.CREATE_ACCOUNT, account_records(1, first_id=account_id_for(2, 777)))
        assert "account #0" in str(squat) and "belongs to PSP 2" in str(squat)

        # paying another PSP's customer (credit) from an own account is what PSPs are for
        ok = a.submit_one(EventKind.CREATE_TRANSFER, _transfer(9003, a_acct, b_acct, psp_id=1)).items()
        assert ok[0].result == Result.OK
        assert [t.found for t in a.lookup_transfers([9001, 9002, 9003])] == [False, False, True]

        # reads: B may not look at A's transfer or account
        with pytest.raises(grpc.RpcError) as read:
            b.ledger.LookupTransfers(pb.LookupRequest(ids=[(9003).to_bytes(16, "little")]), timeout=10)
        assert read.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "transfer 9003 belongs to PSP 1" in (read.value.details() or "")


def test_only_operators_deploy_rules_and_only_psps_move_money(region: Region) -> None:
    with LedgerClient(region.leader, tls=region.tls["operator"]) as op:
        err = _refused(op, EventKind.CREATE_ACCOUNT, account_records(1, first_id=account_id_for(1, 900)))
        assert "for PSPs" in str(err)
    deploy = encode_deploy(b"\0" * 4, b"\0" * 64, b'{"rules": []}')
    with LedgerClient(region.leader, tls=region.tls["psp_a"]) as psp:
        err = _refused(psp, EventKind.DEPLOY_RULESET, deploy)
        assert "rule deploys are for operators" in str(err)
