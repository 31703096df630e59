"""Hostile or careless inputs against a real node process (issue #12 item 9): each gets a clear,
bounded answer — no RecursionError, no endless stream, no connection held open forever."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import sovledger_pb
from clients.workload import account_records
from ledger.types import EventKind
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(Path(tmp_path_factory.mktemp("hostile")) / "n1").start()
    try:
        with grpc.insecure_channel(n.target) as ch:
            req = pb.SubmitRequest(batch_id=1, kind=int(EventKind.CREATE_ACCOUNT), records=account_records(3))
            (resp,) = list(pb_grpc.LedgerStub(ch).Submit(iter([req]), timeout=30))
            assert resp.status.code == 0
        yield n
    finally:
        n.stop()


@pytest.mark.parametrize("method", ["ValidateRuleSet", "DryRun"])
def test_deeply_nested_json_is_invalid_argument_with_a_clear_message(node: NodeProcess, method: str) -> None:
    document = b"[" * 100_000 + b"]" * 100_000
    with grpc.insecure_channel(node.target) as ch:
        stub = pb_grpc.RulesStub(ch)
        request = (pb.ValidateRuleSetRequest(document=document) if method == "ValidateRuleSet"
                   else pb.DryRunRequest(document=document, transfer=b"\0" * 128))
        with pytest.raises(grpc.RpcError) as err:
            getattr(stub, method)(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nests too deeply" in (err.value.details() or "")
    assert (sovledger_pb.REASON_METADATA_KEY, "REASON_MALFORMED") in tuple(err.value.trailing_metadata() or ())
    assert "RecursionError" not in node.log_text()


def test_stream_blocks_past_the_head_ends_at_the_head(node: NodeProcess) -> None:
    with grpc.insecure_channel(node.target) as ch:
        audit = pb_grpc.AuditStub(ch)
        height = pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=10).block
        chunks = list(audit.StreamBlocks(pb.BlocksRequest(start=1, end=2**64 - 1), timeout=20))
    assert sum(len(c.headers) for c in chunks) >= height >= 1
    assert all(c.headers for c in chunks)  # no empty chunks


def test_half_open_connections_are_closed(node: NodeProcess) -> None:
    # connections that never speak (no TLS/HTTP-2 handshake) are dropped after the handshake timeout
    socks = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(100)]
    try:
        open_ = {s.fileno(): s for s in socks}
        deadline = time.monotonic() + 30
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_.values()), [], [], 0.5)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    open_.pop(s.fileno())
        assert not open_, f"{len(open_)} of 100 silent connections still open after 30 s"
        with grpc.insecure_channel(node.target) as ch:  # and the node still serves
            assert pb_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=10).block >= 1
    finally:
        for s in socks:
            s.close()
