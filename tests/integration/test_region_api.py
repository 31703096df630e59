"""Client-facing behaviour of a 3-node region: leader hints, linearizable and stale reads."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

import sovledger_pb
from clients.client import BatchRefused, LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.codec import u128_bytes
from ledger.types import EventKind, Result
from sovledger_pb import ledger_pb2 as pb
from tests.integration.nodeproc import kill_region, start_region

pytestmark = pytest.mark.integration


def test_followers_redirect_writes_and_reads_unless_stale_is_asked(tmp_path: Path) -> None:
    cluster = start_region(tmp_path / "region")
    try:
        leader, _ = cluster.wait_leader(30)
        follower = next(n for n in cluster.nodes if n is not leader)
        with LedgerClient(leader.target) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(5))
            recs, meta = TransferGenerator(5, seed=1).records(20)
            r = c.submit_one(EventKind.CREATE_TRANSFER, recs)
            assert set(r.results) == {Result.OK}
            assert c.lookup_transfers([meta[0][0]])[0].found  # linearizable read on the leader
        with LedgerClient(follower.target) as f:
            f.wait_ready()
            # a follower names the leader once it has heard from it (the leader's stream to it may
            # still be in its reconnect back-off right after start)
            deadline = time.monotonic() + 10
            while f.status().leader != leader.target and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(BatchRefused) as e:
                f.submit_one(EventKind.CREATE_TRANSFER, recs)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.leader_hint == leader.target
            req = pb.LookupRequest(ids=[u128_bytes(meta[0][0])])
            with pytest.raises(grpc.RpcError) as rpc:
                f.ledger.LookupTransfers(req, timeout=5)
            assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
            trailing = tuple(rpc.value.trailing_metadata() or ())
            assert (sovledger_pb.LEADER_METADATA_KEY, leader.target) in trailing
            assert (sovledger_pb.REASON_METADATA_KEY, "REASON_NOT_LEADER") in trailing
            assert leader.target in (rpc.value.details() or "")
            stale = f.ledger.LookupTransfers(req, timeout=5, metadata=(("sovledger-read", "stale"),))
            # the follower may lag; within a moment it has the transfer
            assert stale.transfers[0].id == u128_bytes(meta[0][0])
            st = f.status()
            assert st.role == "follower" and st.leader == leader.target
    finally:
        kill_region(cluster)
