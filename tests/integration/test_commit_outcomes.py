"""A committed block is answered as committed, whatever fails after the commit; a full disk gives one
clear RESOURCE_EXHAUSTED (REASON_STORE_FULL) and the node recovers without a restart (issue #12,
items 1 and 4). Real node processes; the signing fault is injected through the signer's fault hook."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.workload import TransferGenerator, account_records
from ledger.codec import u128_bytes
from ledger.types import EventKind, Result
from node.signing import FAULT_ENV
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _submit(stub: pb_grpc.LedgerStub, kind: EventKind, records: bytes, batch_id: int) -> pb.SubmitResponse:
    (resp,) = list(stub.Submit(iter([pb.SubmitRequest(batch_id=batch_id, kind=int(kind), records=records)]),
                               timeout=30))
    return resp


def _wait_health(ch: grpc.Channel, want: int, timeout_s: float = 20.0) -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    deadline = time.monotonic() + timeout_s
    got = -1
    while time.monotonic() < deadline:
        got = stub.Check(health_pb2.HealthCheckRequest(service="sovledger.v1.Ledger"), timeout=5).status
        if got == want:
            break
        time.sleep(0.1)
    return got


def test_signing_failure_after_commit_answers_committed_and_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = tmp_path / "disk-full-for-the-signer"
    monkeypatch.setenv(FAULT_ENV, str(fault))
    node = NodeProcess(tmp_path / "n1").start()
    try:
        with grpc.insecure_channel(node.target) as ch:
            stub = pb_grpc.LedgerStub(ch)
            audit = pb_grpc.AuditStub(ch)
            assert _submit(stub, EventKind.CREATE_ACCOUNT, account_records(20), 1).status.code == 0
            signed_before = audit.GetCheckpoint(pb.CheckpointRequest(), timeout=10).tree_size
            fault.touch()  # from now on the signer guard cannot be written (ENOSPC)
            gen = TransferGenerator(20, seed=11)
            acked: list[bytes] = []
            for i in range(5):
                recs, meta = gen.records(50)
                resp = _submit(stub, EventKind.CREATE_TRANSFER, recs, 10 + i)
                assert resp.status.code == 0, resp.status.message  # committed: answered as committed
                assert set(resp.results) == {Result.OK}
                acked += [u128_bytes(m[0]) for m in meta]
            assert _wait_health(ch, NOT_SERVING) == NOT_SERVING  # health shows the signer is stuck
            assert audit.GetCheckpoint(pb.CheckpointRequest(), timeout=10).tree_size == signed_before
            found = stub.LookupTransfers(pb.LookupRequest(ids=acked), timeout=10).transfers
            assert all(t.found for t in found) and len(found) == 250
            fault.unlink()  # space is back: signing resumes without a restart
            assert _wait_health(ch, SERVING) == SERVING
            cp = audit.GetCheckpoint(pb.CheckpointRequest(), timeout=10)
            assert cp.tree_size == signed_before + 250
        assert "the block is committed" in node.log_text()
    finally:
        node.stop()


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {e}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_disk_full_is_store_full_never_internal_and_recovers_without_restart(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "24m") as disk:
        # the map (64 MiB) is larger than the disk: the disk fills first, as in production
        node = NodeProcess(disk / "n1", extra=["--map-size", str(64 << 20)]).start()
        try:
            _fill_refuse_and_recover(node, disk)
        finally:
            node.stop()


def _fill_refuse_and_recover(node: NodeProcess, disk: Path) -> None:
    filler = disk / "filler"
    with grpc.insecure_channel(node.target) as ch:
        stub = pb_grpc.LedgerStub(ch)
        assert _submit(stub, EventKind.CREATE_ACCOUNT, account_records(50), 1).status.code == 0
        st = os.statvfs(disk)
        with open(filler, "wb") as f:  # leave ~1.5 MiB free
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (3 << 19)))
        gen = TransferGenerator(50, seed=7)
        acked: list[tuple[bytes, int]] = []
        refused: pb.BatchStatus | None = None
        for i in range(60):  # bounded: 60 x 500 transfers is far beyond 1.5 MiB
            recs, meta = gen.records(500)
            resp = _submit(stub, EventKind.CREATE_TRANSFER, recs, 10 + i)
            if resp.status.code != 0:
                refused = resp.status
                break
            acked += [(u128_bytes(m[0]), idx) for m, idx in zip(meta, resp.log_indexes, strict=True)]
        assert refused is not None, "the disk never filled"
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], refused.message
        assert refused.reason == pb.REASON_STORE_FULL
        # every acknowledged transfer is in the log where it was acknowledged
        got = stub.LookupTransfers(pb.LookupRequest(ids=[a for a, _ in acked][-8000:]), timeout=10).transfers
        assert [t.log_index for t in got] == [i for _, i in acked][-8000:]
        assert _wait_health(ch, NOT_SERVING) == NOT_SERVING
        filler.unlink()  # space is freed: the node takes writes again, no restart
        deadline = time.monotonic() + 30
        status = refused
        while status.code != 0 and time.monotonic() < deadline:
            time.sleep(0.3)
            status = _submit(stub, EventKind.CREATE_TRANSFER, gen.records(10)[0], 900).status
            assert status.code in (0, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), status.message
        assert status.code == 0
        assert _wait_health(ch, SERVING) == SERVING
    assert "internal error" not in node.log_text().lower()
