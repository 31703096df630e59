"""Many concurrent Submit streams of one payment per request against a real node process.

The node groups the streams' requests into shared blocks (node/pipeline.py, group commit) and answers
each request from its block (node/service.py); half the streams ask for several answers per
response message, half are old clients with one per message. This checks, with a kill -9 in the
middle, that every answer is that payment's own outcome (result, leaf, block), that no acknowledged payment is lost,
and that answers stay in request order per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from clients.client import BATCHED_ANSWERS, LedgerClient, answers_in
from ledger.codec import encode_account, encode_transfer
from ledger.types import Account, EventKind, Result, Transfer
from sovledger_pb import ledger_pb2 as pb
from sovledger_pb import ledger_pb2_grpc as pb_grpc
from tests.integration.nodeproc import NodeProcess

STREAMS = 32
PER_STREAM = 40
WINDOW = 8
ACCOUNTS = 8
MISSING = 999  # an account id that does not exist: such a payment fails with its own result code


def _payment(stream: int, k: int) -> tuple[int, bytes]:
    tid = 1_000_000 + stream * 1000 + k
    debit = MISSING if k % 13 == 7 else 1 + (stream + k) % ACCOUNTS
    credit = 1 + (stream + k + 1) % ACCOUNTS
    return tid, encode_transfer(Transfer(id=tid, debit_account_id=debit, credit_account_id=credit,
                                         amount=1 + k, ledger=1, code=1))


def _expected(k: int) -> int:
    return int(Result.DEBIT_ACCOUNT_NOT_FOUND) if k % 13 == 7 else int(Result.OK)


Answers = dict[int, pb.SubmitResponse]  # transfer id -> the node's answer


async def _one_stream(stub: Any, stream: int, answers: Answers, order: list[int]) -> None:
    slots = asyncio.Semaphore(WINDOW)
    payments = [_payment(stream, k) for k in range(PER_STREAM)]

    async def requests() -> AsyncIterator[pb.SubmitRequest]:
        for k, (_tid, rec) in enumerate(payments):
            await slots.acquire()
            yield pb.SubmitRequest(batch_id=k + 1, kind=pb.CREATE_TRANSFERS, records=rec)

    # even streams ask for batched answers (several per message), odd ones are old clients
    call = stub.Submit(requests(), timeout=60, metadata=BATCHED_ANSWERS if stream % 2 == 0 else None)
    try:
        async for message in call:
            assert stream % 2 == 0 or not message.more
            for resp in answers_in(message):
                slots.release()
                order.append(resp.batch_id)
                answers[payments[resp.batch_id - 1][0]] = resp
            if len(order) == PER_STREAM:
                break
    except grpc.aio.AioRpcError:
        pass  # the node was killed: the unanswered payments' outcomes are unknown
    finally:
        call.cancel()


async def _all_streams(target: str, answers: Answers, kill_after: int | None, node: NodeProcess) -> None:
    orders: list[list[int]] = [[] for _ in range(STREAMS)]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LedgerStub(channel)
        tasks = [asyncio.create_task(_one_stream(stub, s, answers, orders[s])) for s in range(STREAMS)]
        if kill_after is not None:
            for _ in range(6000):
                if len(answers) >= kill_after or all(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.005)
            node.kill9()
        await asyncio.gather(*tasks)
    for order in orders:  # answers come back in request order on every stream
        assert order == list(range(1, len(order) + 1))


def _check_answer(tid: int, resp: pb.SubmitResponse) -> None:
    k = tid % 1000
    assert not resp.status.code, resp.status.message
    assert list(resp.results) == [_expected(k)], (tid, list(resp.results))
    assert len(resp.log_indexes) == len(resp.blocks) == 1


def test_many_one_payment_streams_each_answer_is_its_own_and_acked_survive_kill9(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        with LedgerClient(node.target) as c:
            c.wait_ready()
            recs = b"".join(encode_account(Account(id=i, ledger=1, code=1)) for i in range(1, ACCOUNTS + 1))
            assert set(c.submit_one(EventKind.CREATE_ACCOUNT, recs).results) == {Result.OK}
        first: Answers = {}
        asyncio.run(_all_streams(node.target, first, STREAMS * PER_STREAM // 3, node))
        assert first, "nothing was answered before the kill"
        for tid, resp in first.items():
            _check_answer(tid, resp)
        ok_indexes = [r.log_indexes[0] for r in first.values() if r.results[0] == Result.OK]
        assert len(set(ok_indexes)) == len(ok_indexes)  # one leaf per accepted payment

        node.start()
        with LedgerClient(node.target) as c:  # every acknowledged payment survived, at its leaf
            c.wait_ready()
            found = c.lookup_transfers(sorted(first))
        for info in found:
            resp = first[int.from_bytes(info.id, "little")]
            if resp.results[0] == Result.OK:
                assert info.found and info.log_index == resp.log_indexes[0] and info.block == resp.blocks[0]

        second: Answers = {}  # everything again: acked ones are exact retries of the same leaf
        asyncio.run(_all_streams(node.target, second, None, node))
        assert len(second) == STREAMS * PER_STREAM
        seen: set[int] = set()
        for tid, resp in second.items():
            assert not resp.status.code, resp.status.message
            (code,) = resp.results
            before = first.get(tid)
            if _expected(tid % 1000) != Result.OK:
                assert code == _expected(tid % 1000)
            elif before is not None:
                assert code == Result.TRANSFER_EXISTS and resp.log_indexes[0] == before.log_indexes[0]
            else:  # unanswered before the kill: committed then (exists) or not (ok now)
                assert code in (Result.OK, Result.TRANSFER_EXISTS)
            if code in (Result.OK, Result.TRANSFER_EXISTS):
                assert resp.log_indexes[0] not in seen
                seen.add(resp.log_indexes[0])
    finally:
        node.stop()
