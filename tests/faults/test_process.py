"""Faults around one node process: a second process on its data directory, hostile RPC inputs and
connection floods. Each ends with the one checker over everything the clients were told."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ledger.types import BATCH_ITEMS_MAX, EventKind
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.faults.harness import Load, check, create_accounts, node_refused
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "n1").start()
    create_accounts(n.target)
    yield n
    n.stop()


def test_second_process_on_one_directory_exits_naming_the_holder(node: NodeProcess) -> None:
    load = Load(lambda: node.target, seed=5, batches_max=30).start()
    load.wait_acked(400)
    second = NodeProcess(node.data_dir)  # same directory, another port
    with pytest.raises(RuntimeError):
        second.start(timeout_s=30)
    line = node_refused(second.log_text())
    assert node.proc is not None and f"pid {node.proc.pid}" in line and "in use" in line, line
    load.thread.join(120)
    check({"node-1": node.target}, load.finish(), scenario="second process on one data directory")


def _hostile_calls(ch: grpc.Channel) -> list[tuple[str, Callable[[], Any], set[grpc.StatusCode]]]:
    led, aud = pb_grpc.LedgerStub(ch), pb_grpc.AuditStub(ch)
    bad = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}

    def submit(req: pb.SubmitRequest) -> Callable[[], Any]:
        def call() -> Any:
            (resp,) = list(led.Submit(iter([req]), timeout=10))
            if resp.status.code:
                raise _Refused(resp.status.code)
            return resp
        return call

    k = pb.EventKind.ValueType(EventKind.CREATE_TRANSFER)
    return [
        ("records not a multiple of the record size", submit(pb.SubmitRequest(batch_id=1, kind=k, records=b"x" * 7)),
         bad),
        ("empty batch", submit(pb.SubmitRequest(batch_id=2, kind=k, records=b"")), bad),
        ("unknown event kind", submit(pb.SubmitRequest(batch_id=3, kind=pb.EventKind.ValueType(99),
                                                       records=b"\0" * 128)), bad),
        ("too many records", submit(pb.SubmitRequest(batch_id=4, kind=k, records=b"\0" * 128 * (BATCH_ITEMS_MAX + 1))),
         bad),
        ("signatures that do not fit", submit(pb.SubmitRequest(batch_id=5, kind=k, records=b"\0" * 128,
                                                               signatures=b"s" * 3)), bad | {
            grpc.StatusCode.PERMISSION_DENIED}),
        ("lookup id of 3 bytes", lambda: led.LookupTransfers(pb.LookupRequest(ids=[b"abc"]), timeout=10), bad),
        ("lookup of 100k ids", lambda: led.LookupAccounts(pb.LookupRequest(ids=[bytes(16)] * 100_000), timeout=10),
         bad),
        ("history of a 5-byte account", lambda: led.AccountHistory(pb.HistoryRequest(account_id=b"12345"),
                                                                   timeout=10), bad),
        ("proof of index 2^64-1", lambda: aud.GetInclusionProof(pb.InclusionRequest(index=2**64 - 1), timeout=10),
         bad),
        ("consistency first > second", lambda: aud.GetConsistencyProof(
            pb.ConsistencyRequest(first=10, second=5), timeout=10), bad),
        ("entries beyond the tree", lambda: list(aud.StreamEntries(pb.EntriesRequest(start=0, end=2**63),
                                                                   timeout=10)), bad),
    ]


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def test_hostile_rpc_inputs_get_clear_errors_and_change_nothing(node: NodeProcess) -> None:
    load = Load(lambda: node.target, seed=6, batches_max=10).start()
    with grpc.insecure_channel(node.target) as ch:
        for name, call, allowed in _hostile_calls(ch):
            try:
                call()
            except grpc.RpcError as e:
                assert e.code() in allowed, f"{name}: {e.code()} {e.details()}"
                assert e.details(), f"{name}: no message"
            except _Refused as e:
                assert any(c.value[0] == e.code for c in allowed), f"{name}: batch status {e.code}"
            else:
                pytest.fail(f"{name}: accepted")
    load.thread.join(120)
    check({"node-1": node.target}, load.finish(), scenario="hostile RPC inputs")


def test_connection_flood_is_bounded_and_the_node_keeps_serving(node: NodeProcess) -> None:
    """300 half-open TCP connections and 100 idle gRPC channels (bounded count, held ≤ 5 s); payments
    sent while the flood is held are served."""
    load = Load(lambda: node.target, seed=7, batches_max=15)
    socks: list[socket.socket] = []
    channels: list[grpc.Channel] = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            s.send(b"PRI * HTTP/2.0\r\n")  # a preface that never completes
            socks.append(s)
        for _ in range(100):
            ch = grpc.insecure_channel(node.target)
            grpc.channel_ready_future(ch).result(timeout=10)
            channels.append(ch)
        t_end = time.monotonic() + 5
        load.start()  # after the flood is in place, so every payment is served while it is held
        load.wait_acked(200, timeout_s=60)
        time.sleep(max(0.0, t_end - time.monotonic()))
    finally:
        for s in socks:
            s.close()
        for ch in channels:
            ch.close()
    load.thread.join(120)
    check({"node-1": node.target}, load.finish(), scenario="connection flood")
