"""Map full: the node refuses new work with RESOURCE_EXHAUSTED, says what to do, and loses nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from clients.client import BatchRefused, LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.types import EventKind, Result
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration


def test_map_full_refuses_new_work_and_keeps_acknowledged(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1", extra=["--map-size", str(3 << 20)]).start()
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(50))
            gen = TransferGenerator(50, seed=3)
            acked: list[tuple[bytes, list[int]]] = []
            refusal: BatchRefused | None = None
            for _ in range(200):  # bounded: 200 x 500 transfers is far beyond a 3 MiB map
                recs, _meta = gen.records(500)
                try:
                    r = c.submit_one(EventKind.CREATE_TRANSFER, recs)
                except BatchRefused as e:
                    refusal = e
                    break
                assert set(r.results) == {Result.OK}
                acked.append((recs, r.log_indexes))
            assert refusal is not None, "the map never filled"
            assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "map_size_bytes" in str(refusal)
            # it keeps refusing, clearly, and stays readable
            with pytest.raises(BatchRefused) as again:
                c.submit_one(EventKind.CREATE_TRANSFER, gen.records(1)[0])
            assert again.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            cp = c.checkpoint()
            assert cp.tree_size == acked[-1][1][-1] + 1
        node.stop()
        # restart with a bigger map: everything acknowledged is there; retries are exact duplicates
        node.extra = ["--map-size", str(64 << 20)]
        node.start()
        with LedgerClient(node.target) as c:
            c.wait_ready()
            for recs, indexes in acked:
                r = c.submit_one(EventKind.CREATE_TRANSFER, recs)
                assert set(r.results) == {Result.TRANSFER_EXISTS}
                assert r.log_indexes == indexes
            r = c.submit_one(EventKind.CREATE_TRANSFER, gen.records(10)[0])
            assert set(r.results) == {Result.OK}
    finally:
        node.stop()
