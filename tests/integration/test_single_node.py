"""A real node process on 127.0.0.1: stream 100k transfers, kill -9 mid-stream, restart, re-send.

Afterwards every acknowledged transfer is present exactly once, balances equal a model, and the
checkpoint signed before the kill is consistent with the one after (consistency proof verified).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from clients.auditor.checks import verify_checkpoint_note, verify_consistency_response
from clients.client import BatchRefused, LedgerClient
from clients.workload import TransferGenerator, account_records
from ledger.codec import TRANSFER_STRUCT, decode_leaf
from ledger.types import EventKind, Result
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.integration

ACCOUNTS = 500
TOTAL = 100_000
BATCH = 2_000


def test_kill9_mid_stream_then_resend_everything(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    gen = TransferGenerator(ACCOUNTS, seed=42)
    batches = list(gen.batches(TOTAL, BATCH))
    acked: dict[int, tuple[int, int]] = {}  # transfer id -> (log index, block) acknowledged
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            res = c.submit_one(EventKind.CREATE_ACCOUNT, account_records(ACCOUNTS))
            assert set(res.results) == {Result.OK}
            # stream in the background; kill -9 once about a third is acknowledged
            before: dict[str, object] = {}

            def stream() -> None:
                try:
                    for (_recs, meta), r in zip(batches, c.submit_stream(
                            ((EventKind.CREATE_TRANSFER, recs, b"", b"") for recs, _ in batches), inflight=4),
                            strict=False):
                        assert not isinstance(r, BatchRefused), r
                        assert set(r.results) == {Result.OK}
                        for (tid, *_), idx, blk in zip(meta, r.log_indexes, r.blocks, strict=True):
                            acked[tid] = (idx, blk)
                except grpc.RpcError:
                    pass  # the node died under us: outcomes of unanswered batches are unknown

            t = threading.Thread(target=stream)
            t.start()
            deadline = time.monotonic() + 60
            while len(acked) < TOTAL // 3 and time.monotonic() < deadline and t.is_alive():
                time.sleep(0.01)
            cp = c.checkpoint()
            before["note"], before["size"], before["root"], before["vkey"] = (
                cp.note, cp.tree_size, cp.root, cp.verifier_key)
            time.sleep(0.05)
            node.kill9()
            t.join(30)
        assert 0 < len(acked) < TOTAL, "the kill must land mid-stream"
        print(f"acknowledged before kill -9: {len(acked)} of {TOTAL}")

        node.start()
        with LedgerClient(node.target) as c:
            c.wait_ready()
            # re-send everything with the same ids
            outcomes: Counter[Result] = Counter()
            for (_recs, meta), r in zip(batches, c.submit_stream(
                    ((EventKind.CREATE_TRANSFER, recs, b"", b"") for recs, _ in batches), inflight=4),
                    strict=True):
                assert not isinstance(r, BatchRefused), r
                for (tid, *_), code, idx, blk in zip(meta, r.results, r.log_indexes, r.blocks, strict=True):
                    outcomes[Result(code)] += 1
                    if tid in acked:  # acknowledged before: must be the original entry, unchanged
                        assert code == Result.TRANSFER_EXISTS
                        assert (idx, blk) == acked[tid]
            print(dict(outcomes))
            assert set(outcomes) <= {Result.OK, Result.TRANSFER_EXISTS}
            assert outcomes[Result.TRANSFER_EXISTS] >= len(acked)

            # every transfer exactly once in the log, with result ok
            cp2 = c.checkpoint()
            seen: Counter[bytes] = Counter()
            for raw in c.entries(0, cp2.tree_size):
                leaf = decode_leaf(raw)
                if leaf.kind == EventKind.CREATE_TRANSFER:
                    assert leaf.result == Result.OK
                    seen[leaf.body[:16]] += 1
            assert len(seen) == TOTAL and set(seen.values()) == {1}

            # balances equal the model
            model: Counter[int] = Counter()
            for _, meta in batches:
                for _tid, dr, cr, amount in meta:
                    model[dr] -= amount
                    model[cr] += amount
            states = c.lookup_accounts(list(range(1, ACCOUNTS + 1)))
            for aid, st in zip(range(1, ACCOUNTS + 1), states, strict=True):
                assert st is not None
                assert st.credits_posted - st.debits_posted == model[aid], f"account {aid}"

            # the checkpoint signed before the kill is consistent with the one after
            assert cp2.tree_size >= int(before["size"])  # type: ignore[call-overload]
            verify_checkpoint_note(str(before["note"]), str(before["vkey"]))
            verify_checkpoint_note(cp2.note, cp2.verifier_key)
            proof = c.consistency_proof(int(before["size"]), cp2.tree_size)  # type: ignore[call-overload]
            verify_consistency_response(proof, bytes(before["root"]), cp2.root)  # type: ignore[arg-type]
    finally:
        node.stop()


def test_bad_input_gets_clear_status_and_nothing_is_lost(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            c.submit_one(EventKind.CREATE_ACCOUNT, account_records(3))
            gen = TransferGenerator(3, seed=1)
            recs, _ = gen.records(10)
            good = c.submit_one(EventKind.CREATE_TRANSFER, recs)
            size = c.checkpoint().tree_size
            # malformed: not a multiple of the record size
            with pytest.raises(BatchRefused) as e:
                c.submit_one(EventKind.CREATE_TRANSFER, recs[:-1])
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "multiple" in str(e.value)
            # oversized message: refused by gRPC with RESOURCE_EXHAUSTED before reaching the ledger
            with pytest.raises(grpc.RpcError) as rpc:
                c.submit_one(EventKind.CREATE_TRANSFER, b"\x00" * (3 << 20) + b"\x00" * 176)
            assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # business errors are result codes, not statuses
            bad = list(TRANSFER_STRUCT.unpack(recs[:176]))
            bad[0] = (999).to_bytes(16, "little")
            bad[2] = bad[1]  # same debit and credit
            r = c.submit_one(EventKind.CREATE_TRANSFER, TRANSFER_STRUCT.pack(*bad))
            assert r.results == [Result.ACCOUNTS_MUST_BE_DIFFERENT]
            # nothing acknowledged was affected
            again = c.submit_one(EventKind.CREATE_TRANSFER, recs)
            assert set(again.results) == {Result.TRANSFER_EXISTS}
            assert again.log_indexes == good.log_indexes
            assert c.checkpoint().tree_size == size + 1  # only the rejected transfer's leaf
            # lookups with bad ids
            with pytest.raises(grpc.RpcError) as rpc:
                c.ledger.LookupTransfers(__import__("sovledger_pb.ledger_pb2").ledger_pb2.LookupRequest(ids=[b"x"]))
            assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as rpc:
                c.consistency_proof(10, 10**9)
            assert rpc.value.code() == grpc.StatusCode.OUT_OF_RANGE
    finally:
        node.stop()
