"""The error edge on real node processes: every expected refusal carries a machine-readable reason
(trailing metadata ``sovledger-reason`` for RPC failures, ``BatchStatus.reason`` inside a Submit
stream), so clients never parse message text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import sovledger_pb
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.integration.nodeproc import NodeProcess, free_port

pytestmark = pytest.mark.integration


def _submit(stub: pb_grpc.LedgerStub, kind: EventKind, records: bytes, batch_id: int = 1) -> pb.SubmitResponse:
    (resp,) = list(stub.Submit(iter([pb.SubmitRequest(batch_id=batch_id, kind=int(kind), records=records)]),
                               timeout=30))
    return resp


def _trailing(err: grpc.RpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ())}  # type: ignore[attr-defined]


@pytest.fixture
def single(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        yield node
    finally:
        node.stop()


def test_malformed_batch_and_requests_carry_reason_malformed(single: NodeProcess) -> None:
    with grpc.insecure_channel(single.target) as ch:
        stub = pb_grpc.LedgerStub(ch)
        resp = _submit(stub, EventKind.CREATE_TRANSFER, b"\x01" * 7)  # not a whole record
        assert resp.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert resp.status.reason == pb.REASON_MALFORMED
        assert resp.status.message  # says what is wrong
        ok = _submit(stub, EventKind.CREATE_ACCOUNT, account_records(2), batch_id=2)
        assert ok.status.code == 0 and ok.status.reason == pb.REASON_UNSPECIFIED
        with pytest.raises(grpc.RpcError) as bad_id:
            stub.LookupTransfers(pb.LookupRequest(ids=[b"abc"]), timeout=10)
        assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _trailing(bad_id.value)[sovledger_pb.REASON_METADATA_KEY] == "REASON_MALFORMED"
        with pytest.raises(grpc.RpcError) as missing:
            pb_grpc.RulesStub(ch).ShowRuleSet(pb.ShowRuleSetRequest(hash=b"\x00" * 32), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert _trailing(missing.value)[sovledger_pb.REASON_METADATA_KEY] == "REASON_NOT_FOUND"
        with pytest.raises(grpc.RpcError) as past_end:
            list(pb_grpc.AuditStub(ch).StreamEntries(pb.EntriesRequest(start=0, end=10_000), timeout=10))
        assert past_end.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert _trailing(past_end.value)[sovledger_pb.REASON_METADATA_KEY] == "REASON_OUT_OF_RANGE"


def test_store_full_batch_carries_reason_store_full(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1", extra=["--map-size", str(3 << 20)]).start()
    try:
        with grpc.insecure_channel(node.target) as ch:
            stub = pb_grpc.LedgerStub(ch)
            assert _submit(stub, EventKind.CREATE_ACCOUNT, account_records(50)).status.code == 0
            gen = TransferGenerator(50, seed=5)
            refused: pb.BatchStatus | None = None
            for i in range(200):  # bounded: 200 x 500 transfers is far beyond a 3 MiB map
                status = _submit(stub, EventKind.CREATE_TRANSFER, gen.records(500)[0], batch_id=i + 2).status
                if status.code != 0:
                    refused = status
                    break
            assert refused is not None, "the map never filled"
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert refused.reason == pb.REASON_STORE_FULL
            again = _submit(stub, EventKind.CREATE_TRANSFER, gen.records(1)[0], batch_id=999).status
            assert (again.code, again.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], pb.REASON_STORE_FULL)
    finally:
        node.stop()


def test_not_leader_carries_reason_in_batch_status_and_metadata(tmp_path: Path) -> None:
    # a region member whose peers never come up: it cannot elect a leader, so it is not one
    peers = f"node-2=127.0.0.1:{free_port()},node-3=127.0.0.1:{free_port()}"
    node = NodeProcess(tmp_path / "n1", extra=["--node-id", "node-1", "--peers", peers]).start()
    try:
        with grpc.insecure_channel(node.target) as ch:
            stub = pb_grpc.LedgerStub(ch)
            status = _submit(stub, EventKind.CREATE_ACCOUNT, account_records(1)).status
            assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert status.reason == pb.REASON_NOT_LEADER
            with pytest.raises(grpc.RpcError) as read:
                stub.LookupAccounts(pb.LookupRequest(ids=[b"\x01" * 16]), timeout=10)
            assert read.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _trailing(read.value)[sovledger_pb.REASON_METADATA_KEY] == "REASON_NOT_LEADER"
    finally:
        node.stop()
