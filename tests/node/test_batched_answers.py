"""Batched Submit answers (node/service.py): several answers per response message, opt-in per call.

A real LedgerService on a real grpc.aio server (127.0.0.1), a real Ingest and the real ledger state
machine on LMDB in a temp dir; the only fault injected is the committer's gate (tests/node/
test_group_commit.py), which holds a block until the test opens it so that several requests of one
stream are answered by the same block.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.client import BatchResult, LedgerClient
from ledger.codec import encode_transfer
from ledger.reader import LedgerReader
from ledger.types import EventKind, Result, Transfer
from node import service
from node.pipeline import Ingest
from node.psp_auth import PspAuthenticator
from node.service import LedgerService
from sovledger_pb import ANSWERS_BATCHED, ANSWERS_METADATA_KEY
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.node.test_group_commit import GatedCommitter, _setup, _until

BATCHED = ((ANSWERS_METADATA_KEY, ANSWERS_BATCHED),)
MISSING = 999  # no such account: that payment fails with its own result code


def _request(batch_id: int, tid: int) -> pb.SubmitRequest:
    debit = MISSING if tid % 5 == 3 else 1 + tid % 4
    rec = encode_transfer(Transfer(id=tid, debit_account_id=debit, credit_account_id=1 + (tid + 1) % 4,
                                   amount=1 + tid % 7, ledger=1, code=1))
    return pb.SubmitRequest(batch_id=batch_id, kind=pb.CREATE_TRANSFERS, records=rec)


def _expected(tid: int) -> int:
    return int(Result.DEBIT_ACCOUNT_NOT_FOUND) if tid % 5 == 3 else int(Result.OK)


@asynccontextmanager
async def _node(tmp: Path) -> AsyncIterator[tuple[GatedCommitter, Ingest, LedgerService, str]]:
    c = GatedCommitter(tmp / "db")
    _setup(c, 4)
    ingest = Ingest(c, block_items_max=8189, block_delay_ms=1.0, queue_items_max=1 << 20,
                    inflight_blocks_max=2, linger_blocks=1)
    ingest.start()
    svc = LedgerService(ingest, LedgerReader(c.store), 64, psp_auth=PspAuthenticator([], False))
    server = grpc.aio.server()
    pb_grpc.add_LedgerServicer_to_server(svc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield c, ingest, svc, f"127.0.0.1:{port}"
    finally:
        c.gate.set()
        await server.stop(None)
        await ingest.stop()


def _flat(messages: list[pb.SubmitResponse]) -> Iterator[pb.SubmitResponse]:
    for m in messages:
        yield m
        for inner in m.more:
            assert not inner.more, "answers are never nested further"
            yield inner


async def _stream(stub: Any, requests: list[pb.SubmitRequest], metadata: Any,
                  c: GatedCommitter, ingest: Ingest) -> list[pb.SubmitResponse]:
    """Sends ``requests`` while the gate holds the first block, opens it, returns the messages."""
    queue: asyncio.Queue[pb.SubmitRequest | None] = asyncio.Queue()

    async def gen() -> AsyncIterator[pb.SubmitRequest]:
        while (r := await queue.get()) is not None:
            yield r

    call = stub.Submit(gen(), timeout=30, metadata=metadata)
    queue.put_nowait(requests[0])
    await _until(lambda: len(c.proposals) == 1)  # block 1 (the first request) is being committed
    for r in requests[1:]:
        queue.put_nowait(r)
    await _until(lambda: ingest.queued_items == sum(1 for r in requests[1:] if len(r.records) % 176 == 0))
    c.gate.set()  # block 1 answers; all the others are in block 2
    messages = []
    answered = 0
    async for m in call:
        messages.append(m)
        answered += 1 + len(m.more)
        if answered == len(requests):
            break
    queue.put_nowait(None)
    call.cancel()
    return messages


def test_batched_answers_each_own_outcome_in_order_and_old_clients_get_one_per_message(tmp_path: Path) -> None:
    async def run() -> None:
        async with _node(tmp_path) as (c, ingest, svc, target), grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.LedgerStub(ch)
            reqs = [_request(i, 5000 + i) for i in range(1, 41)]
            reqs.insert(17, pb.SubmitRequest(batch_id=100, kind=pb.CREATE_TRANSFERS, records=b"\x01" * 7))
            messages = await _stream(stub, reqs, BATCHED, c, ingest)
            # the head waited for block 1; everything else was known at once: one message
            assert [1 + len(m.more) for m in messages] == [1, 40]
            answers = list(_flat(messages))
            assert [a.batch_id for a in answers] == [r.batch_id for r in reqs]
            refused = answers[17]
            assert refused.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "not a multiple" in refused.status.message and not refused.results
            heights = {a.blocks[0] for a in answers if a.results}
            assert len(heights) == 2
            leaves = []
            for a in answers:
                if a.batch_id == 100:
                    continue
                assert not a.status.code and list(a.results) == [_expected(5000 + a.batch_id)]
                leaves.append(a.log_indexes[0])
            assert len(set(leaves)) == len(leaves)  # every payment points at its own leaf ...
            found = LedgerReader(c.store).transfers([(5000 + i).to_bytes(16, "little") for i in range(1, 41)])
            for i, f in enumerate(found, 1):  # ... and that leaf holds that payment
                a = next(x for x in answers if x.batch_id == i)
                assert (f is not None) == (a.results[0] == Result.OK)
                if f is not None:
                    assert f.ref.leaf_index == a.log_indexes[0] and f.ref.block == a.blocks[0]
            assert svc.window.held_bytes == 0  # every answered request's bytes released

            c.gate.clear()
            c.proposals.clear()  # the same payments again, without the metadata: old clients
            old = await _stream(stub, [_request(i, 5000 + i) for i in range(1, 21)], (), c, ingest)
            assert [len(m.more) for m in old] == [0] * 20
            assert [m.batch_id for m in old] == list(range(1, 21))
            for m in old:
                exp = _expected(5000 + m.batch_id)
                assert list(m.results) == [int(Result.TRANSFER_EXISTS) if exp == Result.OK else exp]
            assert svc.window.held_bytes == 0

    asyncio.run(run())


def test_batched_answers_respect_the_per_message_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ANSWERS_PER_MESSAGE_MAX answers and ANSWERED_RECORDS_MAX records per message; the rest
    follow in the next messages, still in order."""
    monkeypatch.setattr(service, "ANSWERS_PER_MESSAGE_MAX", 4)

    async def run() -> None:
        async with _node(tmp_path) as (c, ingest, _svc, target), grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.LedgerStub(ch)
            messages = await _stream(stub, [_request(i, 7000 + i) for i in range(1, 12)], BATCHED, c, ingest)
            assert [1 + len(m.more) for m in messages] == [1, 4, 4, 2]
            assert [a.batch_id for a in _flat(messages)] == list(range(1, 12))

            monkeypatch.setattr(service, "ANSWERS_PER_MESSAGE_MAX", 256)
            monkeypatch.setattr(service, "ANSWERED_RECORDS_MAX", 3)
            c.gate.clear()
            c.proposals.clear()
            messages = await _stream(stub, [_request(i, 8000 + i) for i in range(1, 9)], BATCHED, c, ingest)
            assert [1 + len(m.more) for m in messages] == [1, 3, 3, 1]
            assert [a.batch_id for a in _flat(messages)] == list(range(1, 9))

    asyncio.run(run())


def test_ledger_client_reads_every_answer_of_a_batched_message_in_order(tmp_path: Path) -> None:
    """clients.client.LedgerClient asks for batched answers and yields one result per batch, in order."""

    async def run() -> None:
        async with _node(tmp_path) as (c, _ingest, svc, target):
            batches = [(EventKind.CREATE_TRANSFER, _request(i, 9000 + i).records, b"", b"") for i in range(1, 17)]

            def send() -> list[Any]:
                with LedgerClient(target) as client:
                    return list(client.submit_stream(batches, inflight=16, timeout_s=30))

            results = asyncio.get_running_loop().run_in_executor(None, send)
            # every request read (block 1 held at the gate): the answers come in at most two blocks, so
            # some message carries several of them
            size = service.request_bytes(pb.SubmitRequest(records=batches[0][1]))
            await _until(lambda: svc.window.held_bytes == 16 * size and len(c.proposals) == 1, 20_000)
            c.gate.set()
            out = await results
            assert len(out) == 16 and all(isinstance(r, BatchResult) for r in out)
            assert [r.batch_id for r in out] == sorted(r.batch_id for r in out)
            found = LedgerReader(c.store).transfers([(9000 + i).to_bytes(16, "little") for i in range(1, 17)])
            for i, (r, f) in enumerate(zip(out, found, strict=True), 1):
                assert r.results == [_expected(9000 + i)]
                if f is not None:
                    assert r.log_indexes == [f.ref.leaf_index] and r.blocks == [f.ref.block]
                else:
                    assert r.results != [int(Result.OK)]

    asyncio.run(run())
